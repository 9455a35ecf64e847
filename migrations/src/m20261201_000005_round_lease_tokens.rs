//! A round's lease is held by whoever has the secret token its claim returned,
//! not by whoever knows the worker's name: `lease_token_hash` is the SHA-256
//! (hex) of that token (`NULL` while no lease is held). Rounds running when
//! this migration runs have no token; their workers lose the lease and the
//! round is claimed again once it expires.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("rounds")
                    .add_column_if_not_exists(string_null("lease_token_hash"))
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("rounds")
                    .drop_column("lease_token_hash")
                    .take(),
            )
            .await
    }
}
