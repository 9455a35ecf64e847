//! Database schema migrations (sea-orm-migration) for the annotation server.
//!
//! This crate is the only place the schema is defined; the entities in
//! `annotation-server` mirror it. Every migration runs unchanged on SQLite and
//! PostgreSQL, so only portable column types are used: timestamps are Unix
//! milliseconds (`BIGINT`), structured values are JSON stored as `TEXT`.
pub use sea_orm_migration::prelude::*;

mod m20250101_000001_initial;
mod m20250201_000002_round_leases;
mod m20251127_000003_assignment_indexes;
mod m20261201_000004_token_expiry;
mod m20261201_000005_round_lease_tokens;

/// All migrations, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20250101_000001_initial::Migration),
            Box::new(m20250201_000002_round_leases::Migration),
            Box::new(m20251127_000003_assignment_indexes::Migration),
            Box::new(m20261201_000004_token_expiry::Migration),
            Box::new(m20261201_000005_round_lease_tokens::Migration),
        ]
    }
}
