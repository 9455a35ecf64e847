//! A prompt: chat messages (JSON), tags (JSON array), source.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "prompts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub external_id: Option<String>,
    /// JSON array of {role, content}
    #[sea_orm(column_type = "Text")]
    pub messages: String,
    /// JSON array of strings
    #[sea_orm(column_type = "Text")]
    pub tags: String,
    pub source: Option<String>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
