//! A comparison a labeler skipped (never offered to them again).
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "skips")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub comparison_id: i64,
    pub labeler_id: i64,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
