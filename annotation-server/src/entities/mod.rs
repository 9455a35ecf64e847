//! sea-orm entities mirroring the schema in the `migrations` crate.
#![allow(missing_docs)]
pub mod api_tokens;
pub mod audit_log;
pub mod batches;
pub mod comparison_responses;
pub mod comparisons;
pub mod labels;
pub mod leases;
pub mod prompts;
pub mod responses;
pub mod rounds;
pub mod sessions;
pub mod skips;
pub mod users;
