//! The append-only audit log: who did what, when.
use crate::entities::audit_log;
use crate::error::AppResult;
use crate::time::now_ms;
use sea_orm::{ActiveModelTrait, ConnectionTrait, Set};

/// Longest string stored in an entry's detail (characters); longer ones are
/// cut, so that no request can make the log grow by more than a few KiB.
pub const MAX_FIELD_CHARS: usize = 256;
/// Most values kept per array or object in a detail.
pub const MAX_ITEMS: usize = 32;

/// Appends an entry. `detail` is free-form JSON (never secrets); its strings,
/// arrays and objects are capped ([`MAX_FIELD_CHARS`], [`MAX_ITEMS`]).
pub async fn record<C: ConnectionTrait>(
    db: &C,
    user_id: Option<i64>,
    action: &str,
    detail: serde_json::Value,
) -> AppResult<()> {
    audit_log::ActiveModel {
        user_id: Set(user_id),
        action: Set(cap_str(action)),
        detail: Set(cap(detail, 0).to_string()),
        created_at: Set(now_ms()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(())
}

/// `s`, cut to [`MAX_FIELD_CHARS`] characters with a note of what was cut.
fn cap_str(s: &str) -> String {
    match s.char_indices().nth(MAX_FIELD_CHARS) {
        None => s.to_string(),
        Some((end, _)) => format!("{}… ({} bytes cut)", &s[..end], s.len() - end),
    }
}

/// `v` with every string, array and object capped; nesting below 4 levels is
/// summarized.
fn cap(v: serde_json::Value, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) => Value::String(cap_str(&s)),
        Value::Array(_) | Value::Object(_) if depth >= 4 => Value::String("(nested)".into()),
        Value::Array(a) => a
            .into_iter()
            .take(MAX_ITEMS)
            .map(|x| cap(x, depth + 1))
            .collect(),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .take(MAX_ITEMS)
                .map(|(k, x)| (cap_str(&k), cap(x, depth + 1)))
                .collect(),
        ),
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_are_capped() {
        let long = "x".repeat(10_000);
        let v = cap(json!({"username": long, "list": vec![1; 100]}), 0);
        let name = v["username"].as_str().unwrap();
        assert!(name.starts_with(&"x".repeat(MAX_FIELD_CHARS)));
        assert!(name.len() < MAX_FIELD_CHARS + 40, "{name}");
        assert_eq!(v["list"].as_array().unwrap().len(), MAX_ITEMS);
        assert_eq!(cap(json!({"a": "é"}), 0), json!({"a": "é"}));
        assert_eq!(cap(json!([[[[[1]]]]]), 0), json!([[[["(nested)"]]]]));
    }
}
