//! One labeler's immutable judgment of one comparison.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "labels")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub comparison_id: i64,
    pub labeler_id: i64,
    /// JSON array of ranks by position
    #[sea_orm(column_type = "Text")]
    pub ranking: String,
    pub strength: String,
    pub safety: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub edited_response: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub note: Option<String>,
    pub time_spent_ms: Option<i64>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
