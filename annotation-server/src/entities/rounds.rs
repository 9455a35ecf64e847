//! An alignment round (filled in by the rounds orchestration).
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
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
