//! Llama reward model (DESIGN §2, §7; issue 4): the policy's backbone plus a
//! scalar head read at the last real token, Bradley–Terry training with the
//! Llama-2 margin, reward normalization, scoring, and the Llama-2
//! safety + helpfulness combination. Saved as a Hugging Face
//! `LlamaForSequenceClassification` directory.
//!
//! - [`model::RewardModel`]: load/save (HF directory + `reward_normalization.json`),
//!   [`model::RewardModel::forward`] (differentiable, reads the last real token
//!   from the key mask), [`model::RewardModel::rewards`] (batched, normalized:
//!   what the trainer calls).
//! - [`loss`]: Bradley–Terry with the Llama-2 margin table, centering term.
//! - [`data`]: TRL JSONL / ranked comparisons / the annotation server's raw
//!   export over HTTP, to ordered pairs; tokenization.
//! - [`train`]: the training loop ([`train::train`], [`train::train_step`]),
//!   evaluation report, normalization, exact resume (`trainer_state/`).
//! - [`combine`]: [`combine::RewardFunction`] and Llama-2's safety + helpfulness reward.
//! - [`cli`]: `rlhf rm train|eval|score`.
pub mod cli;
pub mod combine;
pub mod data;
pub mod loss;
pub mod model;
pub mod train;
