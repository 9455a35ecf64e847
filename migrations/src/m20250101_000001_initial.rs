//! The initial schema: accounts, prompts, responses, comparisons, labels,
//! assignment state, rounds and the audit log.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A `BIGINT NOT NULL` Unix-milliseconds timestamp.
fn millis(name: &'static str) -> ColumnDef {
    big_integer(name)
}

/// A foreign key from `table.col` to `to_table.id`, deleting dependents on cascade
/// only where a parent can legitimately be deleted (sessions and tokens).
fn fk(
    table: &'static str,
    col: &'static str,
    to_table: &'static str,
    cascade: bool,
) -> ForeignKeyCreateStatement {
    let mut k = ForeignKey::create()
        .name(format!("fk_{table}_{col}"))
        .from(table, col)
        .to(to_table, "id")
        .take();
    if cascade {
        k.on_delete(ForeignKeyAction::Cascade);
    }
    k
}

fn index(table: &'static str, cols: &[&'static str], unique: bool) -> IndexCreateStatement {
    let mut i = Index::create()
        .name(format!("idx_{table}_{}", cols.join("_")))
        .table(table)
        .if_not_exists()
        .take();
    for c in cols {
        i.col(*c);
    }
    if unique {
        i.unique();
    }
    i
}

/// Tables in creation order (parents first); dropped in reverse.
const TABLES: &[&str] = &[
    "users",
    "api_tokens",
    "sessions",
    "rounds",
    "batches",
    "prompts",
    "responses",
    "comparisons",
    "comparison_responses",
    "labels",
    "skips",
    "leases",
    "audit_log",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let t = |name: &'static str| Table::create().table(name).if_not_exists().take();

        manager
            .create_table(
                t("users")
                    .col(big_pk_auto("id"))
                    .col(string_uniq("username"))
                    // labeler | researcher | admin
                    .col(string("role"))
                    // argon2id PHC string
                    .col(string("password_hash"))
                    .col(boolean("disabled").default(false))
                    .col(millis("created_at"))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                t("api_tokens")
                    .col(big_pk_auto("id"))
                    .col(big_integer("user_id"))
                    // SHA-256 of the token: tokens are 256-bit random, so a fast hash is enough
                    .col(string_uniq("token_hash"))
                    .col(string("name"))
                    .col(millis("created_at"))
                    .col(big_integer_null("last_used_at"))
                    .foreign_key(&mut fk("api_tokens", "user_id", "users", true))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                t("sessions")
                    .col(big_pk_auto("id"))
                    .col(string_uniq("token_hash"))
                    .col(big_integer("user_id"))
                    .col(string("csrf_token"))
                    .col(millis("expires_at"))
                    .col(millis("created_at"))
                    .foreign_key(&mut fk("sessions", "user_id", "users", true))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                t("rounds")
                    .col(big_pk_auto("id"))
                    .col(string("name"))
                    .col(text("config"))
                    .col(string("status"))
                    .col(text("metrics"))
                    .col(millis("created_at"))
                    .col(millis("updated_at"))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                t("batches")
                    .col(big_pk_auto("id"))
                    .col(string_uniq("name"))
                    .col(integer("labels_wanted"))
                    .col(big_integer_null("round_id"))
                    .col(millis("created_at"))
                    .foreign_key(&mut fk("batches", "round_id", "rounds", false))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                t("prompts")
                    .col(big_pk_auto("id"))
                    // the importer's own id, unique when given
                    .col(string_null("external_id"))
                    // JSON array of {role, content}; a plain-text prompt is one user message
                    .col(text("messages"))
                    // JSON array of strings, e.g. ["safety"]
                    .col(text("tags"))
                    .col(string_null("source"))
                    .col(millis("created_at"))
                    .take(),
            )
            .await?;
        manager
            .create_index(index("prompts", &["external_id"], true))
            .await?;
        manager
            .create_table(
                t("responses")
                    .col(big_pk_auto("id"))
                    .col(big_integer("prompt_id"))
                    .col(text("text"))
                    // checkpoint that generated it
                    .col(string_null("model"))
                    .col(big_integer_null("round_id"))
                    // JSON object of sampling settings (temperature, top_p, ...)
                    .col(text_null("sampling"))
                    .col(millis("created_at"))
                    .foreign_key(&mut fk("responses", "prompt_id", "prompts", false))
                    .foreign_key(&mut fk("responses", "round_id", "rounds", false))
                    .take(),
            )
            .await?;
        manager
            .create_table(
                t("comparisons")
                    .col(big_pk_auto("id"))
                    .col(big_integer("batch_id"))
                    .col(big_integer("prompt_id"))
                    .col(integer("labels_wanted"))
                    // labels submitted; equals COUNT(labels) for this comparison
                    .col(integer("labels_done").default(0))
                    // lease rows that hold a slot (expired ones too, until reaped)
                    .col(integer("leased").default(0))
                    // open | complete
                    .col(string("state"))
                    .col(millis("created_at"))
                    .foreign_key(&mut fk("comparisons", "batch_id", "batches", false))
                    .foreign_key(&mut fk("comparisons", "prompt_id", "prompts", false))
                    .take(),
            )
            .await?;
        manager
            .create_index(index("comparisons", &["state", "id"], false))
            .await?;
        manager
            .create_index(index("comparisons", &["batch_id"], false))
            .await?;
        manager
            .create_table(
                t("comparison_responses")
                    .col(big_pk_auto("id"))
                    .col(big_integer("comparison_id"))
                    .col(integer("position"))
                    .col(big_integer("response_id"))
                    .foreign_key(&mut fk(
                        "comparison_responses",
                        "comparison_id",
                        "comparisons",
                        false,
                    ))
                    .foreign_key(&mut fk(
                        "comparison_responses",
                        "response_id",
                        "responses",
                        false,
                    ))
                    .take(),
            )
            .await?;
        manager
            .create_index(index(
                "comparison_responses",
                &["comparison_id", "position"],
                true,
            ))
            .await?;
        manager
            .create_table(
                t("labels")
                    .col(big_pk_auto("id"))
                    .col(big_integer("comparison_id"))
                    .col(big_integer("labeler_id"))
                    // JSON array: rank of each response by position, 1 = best, ties share a rank
                    .col(text("ranking"))
                    // strength of the preference for the top pair (Llama-2's 4 levels)
                    .col(string("strength"))
                    .col(string_null("safety"))
                    .col(text_null("edited_response"))
                    .col(text_null("note"))
                    .col(big_integer_null("time_spent_ms"))
                    .col(millis("created_at"))
                    .foreign_key(&mut fk("labels", "comparison_id", "comparisons", false))
                    .foreign_key(&mut fk("labels", "labeler_id", "users", false))
                    .take(),
            )
            .await?;
        // one label per labeler per comparison, enforced by the database
        manager
            .create_index(index("labels", &["comparison_id", "labeler_id"], true))
            .await?;
        manager
            .create_index(index("labels", &["labeler_id", "created_at"], false))
            .await?;
        manager
            .create_table(
                t("skips")
                    .col(big_pk_auto("id"))
                    .col(big_integer("comparison_id"))
                    .col(big_integer("labeler_id"))
                    .col(millis("created_at"))
                    .foreign_key(&mut fk("skips", "comparison_id", "comparisons", false))
                    .foreign_key(&mut fk("skips", "labeler_id", "users", false))
                    .take(),
            )
            .await?;
        manager
            .create_index(index("skips", &["comparison_id", "labeler_id"], true))
            .await?;
        manager
            .create_table(
                t("leases")
                    .col(big_pk_auto("id"))
                    .col(big_integer("comparison_id"))
                    .col(big_integer("labeler_id"))
                    .col(millis("expires_at"))
                    .col(millis("created_at"))
                    .foreign_key(&mut fk("leases", "comparison_id", "comparisons", false))
                    .foreign_key(&mut fk("leases", "labeler_id", "users", false))
                    .take(),
            )
            .await?;
        manager
            .create_index(index("leases", &["comparison_id", "labeler_id"], true))
            .await?;
        manager
            .create_index(index("leases", &["labeler_id"], false))
            .await?;
        manager
            .create_index(index("leases", &["expires_at"], false))
            .await?;
        manager
            .create_table(
                t("audit_log")
                    .col(big_pk_auto("id"))
                    // no foreign key: the log outlives whatever it mentions
                    .col(big_integer_null("user_id"))
                    .col(string("action"))
                    .col(text("detail"))
                    .col(millis("created_at"))
                    .take(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in TABLES.iter().rev() {
            manager
                .drop_table(Table::drop().table(*name).if_exists().take())
                .await?;
        }
        Ok(())
    }
}
