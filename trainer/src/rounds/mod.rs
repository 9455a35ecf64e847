//! Alignment rounds: the orchestration around the training jobs. A
//! researcher queues a round on the annotation server (`rlhf round start`, or
//! the dashboard); a worker (`rlhf worker`) claims it under a lease and runs
//! its steps: sample responses → comparisons on the server → labels (people,
//! or the simulated labelers) → reward model → the recipe's training jobs →
//! evaluation → the round's output, which the next round of the series
//! starts from. `rlhf export` writes a round's output as a model, `rlhf demo`
//! runs the whole loop on a built-in task.
//!
//! - [`config`]: a round's configuration, defaults, recipe and state.
//! - [`series`]: the rounds of one prompt source; completing a queued round's configuration.
//! - [`prompts`]: the prompt pool, each round's window, the files the stages read.
//! - [`steps`]: the steps (a)–(g) of one round.
//! - [`heartbeat`]: the worker's connection; progress reports that keep the lease.
//! - [`lease`]: lease tokens kept on disk, so a restarted worker continues.
//! - [`worker`]: `rlhf worker`.
//! - [`cli`]: `rlhf round start|status|list|cancel`.
//! - [`eval`]: evaluation of a policy, and `rlhf eval`.
//! - [`export`]: `rlhf export`.
//! - [`tasks`]: built-in tasks with a gold reward (`review`, `arithmetic`).
//! - [`labelers`]: simulated labelers (`rlhf label simulate`).
//! - [`demo`]: `rlhf demo`.
pub mod cli;
pub mod config;
pub mod demo;
pub mod eval;
pub mod export;
pub mod heartbeat;
pub mod labelers;
pub mod lease;
pub mod prompts;
pub mod series;
pub mod steps;
pub mod tasks;
pub mod worker;
