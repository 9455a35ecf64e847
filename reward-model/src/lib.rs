//! Llama reward model (DESIGN §2, §7; issue 4): the policy's backbone plus a
//! scalar head read at the last real token, Bradley–Terry training with the
//! Llama-2 margin, reward normalization, scoring, and the Llama-2
//! safety + helpfulness combination. Saved as a Hugging Face
//! `LlamaForSequenceClassification` directory.
pub mod loss;
pub mod model;
pub mod data;
pub mod train;
pub mod combine;
pub mod cli;
