//! Policy training: every stage is a library job ([`job`]) with an `rlhf`
//! subcommand ([`cli`]), and alignment rounds ([`rounds`]) tie the stages to
//! the annotation server's labels.
//!
//! Data flows: TRL-format JSONL or the server's export → [`data`] (token
//! sequences with loss masks, preference pairs, prompts) → a stage on the
//! shared loop of `policy::train_loop` (AdamW, schedules, clipping,
//! micro-batches, metrics JSONL, atomic checkpoints, exact resume, Ctrl-C) →
//! a Hugging Face policy directory.
//!
//! - [`job`]: the jobs — `job::sft`, `job::rs`, `job::dpo`, `job::ppo` — each a
//!   serde config with its defaults and a `run(&job, device)`.
//! - [`cli`]: `rlhf sft|rs|dpo|ppo`, flags mapped to jobs.
//! - [`sft`]: the SFT stage (loss on response / assistant tokens only).
//! - [`rs`]: rejection sampling — K samples per prompt, best by reward.
//! - [`dpo`]: DPO losses (sigmoid / cDPO, robust, IPO, RPO's NLL) and stage.
//! - [`ppo`]: PPO with a value model, KL penalty (k1/k3, fixed/adaptive), GAE;
//!   [`ppo_math`] holds its pure math.
//! - [`reward`]: rewards from a reward model, Llama-2's safety + helpfulness
//!   combination, or a programmatic function.
//! - [`logprobs`]: per-token log-probabilities of sequences under a policy.
//! - [`policy_io`]: loading a policy with its tokenizer, and its files to save.
//! - [`data`]: TRL dataset formats (JSONL) → token sequences with loss masks.
//! - [`rounds`]: queued rounds, the worker, evaluation, export, demo tasks,
//!   simulated labelers and `rlhf demo`.
pub mod cli;
pub mod data;
pub mod dpo;
pub mod job;
pub mod logprobs;
pub mod policy_io;
pub mod ppo;
pub mod ppo_math;
pub mod reward;
pub mod rounds;
pub mod rs;
pub mod sft;
