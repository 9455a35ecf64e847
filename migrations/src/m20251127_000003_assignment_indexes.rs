//! A partial index of the comparisons still open, in id order: assignment
//! takes the oldest open comparison with a free slot, and with this index that
//! is a short scan from the front of the open ones, however many are complete.
//! Without it PostgreSQL, whose statistics lag behind the labeling (every
//! comparison was open when it last analyzed), may walk the primary key over
//! all completed comparisons for every task it hands out.
//!
//! Also an index of skips by labeler: assignment reads a labeler's skips on
//! every claim, and the only skips index so far leads with the comparison.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // partial indexes are portable SQL on SQLite and PostgreSQL alike
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX IF NOT EXISTS idx_comparisons_open_id ON comparisons (id) \
                 WHERE state = 'open'",
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_skips_labeler_id")
                    .table("skips")
                    .col("labeler_id")
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_skips_labeler_id")
                    .table("skips")
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_comparisons_open_id")
                    .table("comparisons")
                    .to_owned(),
            )
            .await
    }
}
