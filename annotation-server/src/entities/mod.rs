//! sea-orm entities mirroring the schema in the `migrations` crate.
#![allow(missing_docs)]
pub mod users;
pub mod api_tokens;
pub mod sessions;
pub mod rounds;
pub mod batches;
pub mod prompts;
pub mod responses;
pub mod comparisons;
pub mod comparison_responses;
pub mod labels;
pub mod skips;
pub mod leases;
pub mod audit_log;
