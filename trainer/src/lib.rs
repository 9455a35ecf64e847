//! Policy training (DESIGN §7; issue 5): every stage is a library function and
//! an `rlhf` subcommand, and all but PPO run on the shared loop of
//! `policy::train_loop` (AdamW, schedules, clipping, micro-batches, metrics
//! JSONL, atomic checkpoints, exact resume, Ctrl-C).
//!
//! - [`sft`]: supervised fine-tuning, loss on response / assistant tokens only.
//! - [`rs`]: rejection sampling — K samples per prompt, best by reward, SFT on them.
//! - [`dpo`]: DPO (sigmoid / cDPO), robust DPO, IPO, RPO's NLL term.
//! - [`ppo`]: PPO with a value model, KL penalty (k1/k3, fixed/adaptive), GAE.
//! - [`reward`]: rewards from a reward model, Llama-2's safety + helpfulness
//!   combination, or a programmatic function.
//! - [`data`]: TRL dataset formats (JSONL) → token sequences with loss masks.
//! - [`cli`]: `rlhf sft|rs|dpo|ppo`.
pub mod cli;
pub mod data;
pub mod demo;
pub mod dpo;
pub mod eval;
pub mod export;
pub mod lease;
pub mod logprobs;
pub mod policy_io;
pub mod ppo;
pub mod ppo_math;
pub mod reward;
pub mod round;
pub mod rs;
pub mod sft;
pub mod simulate;
pub mod tasks;
pub mod worker;
