//! A model response to a prompt.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "responses")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub prompt_id: i64,
    #[sea_orm(column_type = "Text")]
    pub text: String,
    pub model: Option<String>,
    pub round_id: Option<i64>,
    /// JSON object
    #[sea_orm(column_type = "Text")]
    pub sampling: Option<String>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
