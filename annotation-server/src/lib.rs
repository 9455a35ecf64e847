//! Annotation server: labeler UI, researcher REST API, assignment, consensus
//! and export (see issue 3 and DESIGN.md section 6).
//!
//! With the default `server` feature this is the whole service; without it only
//! [`api`] (the shared request/response types, and with `client` the HTTP
//! client) is compiled, for crates that talk to the server over HTTP.
#![warn(missing_docs)]
// the hand-written OpenAPI document is one large `json!` literal
#![recursion_limit = "512"]

pub mod api;
#[cfg(feature = "plots")]
pub mod plots;

#[cfg(feature = "server")]
pub mod accounts;
#[cfg(feature = "server")]
pub mod assign;
#[cfg(feature = "server")]
pub mod audit;
#[cfg(feature = "server")]
pub mod auth;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod comparisons;
#[cfg(feature = "server")]
pub mod consensus;
#[cfg(feature = "server")]
pub mod db;
#[cfg(feature = "server")]
pub mod entities;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod export;
#[cfg(feature = "server")]
pub mod identity;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod openapi;
#[cfg(feature = "server")]
pub mod progress;
#[cfg(feature = "server")]
pub mod prompts;
#[cfg(feature = "server")]
pub mod ratelimit;
#[cfg(feature = "server")]
pub mod rounds;
#[cfg(feature = "server")]
pub mod routes;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod sql;
#[cfg(feature = "server")]
pub mod state;
#[cfg(feature = "server")]
pub mod time;
#[cfg(feature = "server")]
pub mod ui;
#[cfg(feature = "server")]
pub mod writer;
