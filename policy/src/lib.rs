//! The Llama policy of the RLHF pipeline: everything that loads, runs,
//! trains and saves a Hugging Face Llama checkpoint, in Rust on dfdx (on the
//! CPU, and on CUDA behind the `cuda` feature). The reward model and the
//! trainer stages build on it.
//!
//! # How data flows
//!
//! - **Checkpoint → model.** [`checkpoint::Checkpoint::load`] reads a
//!   Hugging Face directory: [`config::LlamaConfig`] from `config.json`, the
//!   weights through [`safetensors_io`] as host tensors under their HF names,
//!   which [`model::Llama::from_tensors`] checks and puts on the device; the
//!   tokenizer files travel along for [`tokenizer::Tokenizer`].
//! - **Text → tokens.** [`tokenizer::Tokenizer`] encodes plain text;
//!   [`chat`] renders a conversation with the checkpoint's chat template, as
//!   transformers does, and tells which tokens belong to which message.
//! - **Model → text.** [`generate::generate`] decodes batches of prompts with a
//!   KV cache (on the CPU, on host buffers outside dfdx) and samples per row;
//!   [`model::Llama::sequence_logprobs`] scores sequences.
//! - **Model → trained model.** [`model::Llama::hidden`] run with a tape
//!   records gradients; [`train`] holds the optimizer and its parts,
//!   [`train_loop`] the loop every stage shares, and [`train_state`] what a
//!   run needs to resume.
//! - **Model → checkpoint.** [`checkpoint::save_model`] writes the weights
//!   back under the same names ([`model::Llama::to_host_tensors`]), atomically
//!   ([`fs_atomic`]), into a directory [`out_dir`] allows.
//!
//! # Modules
//!
//! - [`bpe`]: trains a byte-level BPE tokenizer for a freshly made model.
//! - [`chat`]: chat messages, templates, rendering and token roles.
//! - [`checkpoint`]: loads and saves Hugging Face checkpoint directories.
//! - [`cli`]: the `rlhf policy` subcommands (init, info, convert, generate, logprobs, render).
//! - [`config`]: `config.json` as [`config::LlamaConfig`], and storage dtypes.
//! - `cpu` (private): the CPU's own kernels (`Linear`, RMSNorm, SwiGLU, RoPE,
//!   attention, log-softmax) and host-buffer decoding.
//! - [`device`]: which device to run on ([`device::DeviceKind`]) and running a command on it.
//! - [`fs_atomic`]: crash-safe file and directory writes.
//! - [`gguf`]: llama.cpp's GGUF files: header, metadata, tensor table and dequantization to f32.
//! - [`generate`]: batched sampling and greedy decoding, and the stop tokens of a checkpoint.
//! - [`model`]: the Llama forward pass, its parameters and the device kernels interface.
//! - [`out_dir`]: which output directories a command may write.
//! - [`safetensors_io`]: safetensors files in Hugging Face's layout, sharded or not.
//! - [`tokenizer`]: Hugging Face tokenizers with their special tokens and chat templates.
//! - [`train`]: gradients per parameter, clipping, AdamW and learning-rate schedules.
//! - [`train_loop`]: the training loop, its options, metrics and checkpoints.
//! - [`train_state`]: optimizer state and progress saved for resuming.
pub mod bpe;
pub mod chat;
pub mod checkpoint;
pub mod cli;
pub mod config;
mod cpu;
pub mod device;
pub mod fs_atomic;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod out_dir;
pub mod safetensors_io;
#[cfg(test)]
mod test_support;
pub mod tokenizer;
pub mod train;
pub mod train_loop;
pub mod train_state;
