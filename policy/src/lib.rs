//! Llama policy.
