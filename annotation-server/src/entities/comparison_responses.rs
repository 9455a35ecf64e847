//! The responses of a comparison, by position.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "comparison_responses")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub comparison_id: i64,
    pub position: i32,
    pub response_id: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
