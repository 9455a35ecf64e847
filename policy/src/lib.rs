//! The Llama policy: HF config and checkpoints, the model on dfdx (CPU, and
//! CUDA behind the `cuda` feature), generation, tokenizer and chat templates.
pub mod checkpoint;
pub mod config;
pub mod model;
pub mod cpu_linear;
mod cpu_decode;
pub mod cpu_ops;
pub mod safetensors_io;
pub mod tokenizer;
pub mod chat;
pub mod bpe;
pub mod generate;
pub mod train;
pub mod cli;
pub mod train_state;
pub mod train_loop;
