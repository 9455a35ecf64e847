//! The Llama policy: HF config and checkpoints, the model on dfdx (CPU, and
//! CUDA behind the `cuda` feature), generation, tokenizer and chat templates.
pub mod bpe;
pub mod chat;
pub mod checkpoint;
pub mod cli;
pub mod config;
mod cpu;
pub mod device;
pub mod fs_atomic;
pub mod generate;
pub mod model;
pub mod out_dir;
pub mod safetensors_io;
pub mod tokenizer;
pub mod train;
pub mod train_loop;
pub mod train_state;
