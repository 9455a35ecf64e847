//! An alignment round (filled in by the rounds orchestration): configuration,
//! status, metrics, the worker's lease and its resumable state.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rounds")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    /// JSON
    #[sea_orm(column_type = "Text")]
    pub config: String,
    pub status: String,
    /// JSON
    #[sea_orm(column_type = "Text")]
    pub metrics: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The worker holding the round's lease.
    pub lease_owner: Option<String>,
    /// When the lease ends (Unix ms).
    pub lease_expires_at: Option<i64>,
    /// SHA-256 (hex) of the lease token the claim returned (never the token).
    pub lease_token_hash: Option<String>,
    /// The worker's resumable state (JSON object).
    #[sea_orm(column_type = "Text")]
    pub state: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
