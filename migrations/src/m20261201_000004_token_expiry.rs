//! API tokens may expire: `expires_at` (Unix milliseconds, `NULL` = never).
//! Tokens are revoked by deleting their row, so no column is needed for that.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("api_tokens")
                    .add_column_if_not_exists(big_integer_null("expires_at"))
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table("api_tokens")
                    .drop_column("expires_at")
                    .take(),
            )
            .await
    }
}
