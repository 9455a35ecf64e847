//! Round leases and resumable state: a trainer worker claims a queued round
//! under a lease (`lease_owner`, `lease_expires_at`) and keeps the round's
//! progress in `state` (a JSON object), so a restarted worker continues it.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // one column per statement: SQLite's ALTER TABLE adds one at a time
        let cols = [
            string_null("lease_owner"),
            // Unix milliseconds
            big_integer_null("lease_expires_at"),
            text("state").default("{}").take(),
        ];
        for col in cols {
            manager
                .alter_table(
                    Table::alter()
                        .table("rounds")
                        .add_column_if_not_exists(col)
                        .take(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_rounds_status")
                    .table("rounds")
                    .col("status")
                    .if_not_exists()
                    .take(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_rounds_status")
                    .table("rounds")
                    .to_owned(),
            )
            .await?;
        for col in ["state", "lease_expires_at", "lease_owner"] {
            manager
                .alter_table(Table::alter().table("rounds").drop_column(col).take())
                .await?;
        }
        Ok(())
    }
}
