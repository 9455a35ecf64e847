//! The annotation server of the RLHF pipeline: the service through which
//! people label which of several model responses is better, and through which
//! the trainer hands out and tracks its rounds of work.
//!
//! # How data flows
//!
//! 1. **Prompts** are imported as JSONL ([`prompts`], `POST /api/prompts/import`).
//! 2. **Comparisons** (a prompt and 2–16 generated responses) are created in
//!    batches, each wanting some number of distinct labelers ([`comparisons`]).
//! 3. **Assignment**: a labeler asks for the next task and gets a comparison
//!    under a time-limited lease, never one they labeled or skipped, never more
//!    leases than labels still wanted ([`assign`], [`writer`]).
//! 4. **Labels**: the labeler submits a ranking, a strength and optionally a
//!    safety class, through the web UI ([`ui`]) or the API ([`routes::api`]).
//! 5. **Consensus and export**: labels are combined into a consensus ranking
//!    and agreement figures ([`consensus`], [`progress`]) and exported as TRL,
//!    HH-RLHF or raw JSONL for reward-model and policy training ([`export`]).
//!
//! Alongside, **rounds** ([`rounds`]) are the trainer's units of work: a
//! researcher queues one, a worker claims it under a lease, reports progress
//! and metrics in heartbeats, and finishes it; the dashboard plots the metrics.
//!
//! # Features
//!
//! With the default `server` feature this is the whole service; without it only
//! [`api`] (the shared request/response types, and with `client` the HTTP
//! client) and, with `plots`, [`plots`] are compiled, for crates that talk to
//! the server over HTTP.
//!
//! # Modules
//!
//! - [`api`]: request/response types of the REST API (and its blocking client).
//! - [`plots`]: SVG line charts of round metrics.
//! - [`accounts`]: users and API tokens, for the CLI and the admin API.
//! - [`assign`]: task leases and label submission, safe under concurrency.
//! - [`audit`]: the append-only audit log.
//! - [`auth`]: password hashes, token and session lookup, the bearer extractor.
//! - [`cli`]: the `serve`, `db`, `user` and `token` commands.
//! - [`comparisons`]: creating comparisons in bulk and reading them back.
//! - [`consensus`]: consensus rankings and inter-annotator agreement.
//! - [`db`]: connecting to SQLite or PostgreSQL and migrating.
//! - [`entities`]: sea-orm entities of the schema in the `migrations` crate.
//! - [`error`]: the handlers' error type and its JSON body.
//! - [`export`]: streaming JSONL export (TRL, HH-RLHF, raw).
//! - [`identity`]: the user a request acts for, and role checks.
//! - [`metrics`]: Prometheus metrics.
//! - [`openapi`]: the OpenAPI document served at `/api/openapi.json`.
//! - [`progress`]: progress per batch and labeler, queue depth.
//! - [`prompts`]: importing and listing prompts.
//! - [`ratelimit`]: the failed-login limiter.
//! - [`rounds`]: rounds, their claims, heartbeats and status rules.
//! - [`routes`]: the router, API handlers, extractors and middleware.
//! - [`server`]: binding, serving, graceful shutdown, the lease reaper.
//! - [`sql`]: portable raw SQL for aggregate queries.
//! - [`state`]: configuration and the state shared by handlers.
//! - [`time`]: timestamps (Unix ms stored, RFC 3339 shown).
//! - [`ui`]: the server-rendered labeling page and researcher dashboard.
//! - [`writer`]: the labeling hot path's (batched) writes.
#![warn(missing_docs)]

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
