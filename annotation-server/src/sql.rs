//! Portable raw SQL for aggregate queries: written with `?` placeholders and
//! rewritten to `$1, $2, ...` for PostgreSQL.
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

/// Builds a statement for the connection's backend from `?`-placeholder SQL.
/// The SQL text must be a constant: values always travel as parameters.
pub fn stmt<C: ConnectionTrait>(db: &C, sql: &str, values: Vec<Value>) -> Statement {
    let backend = db.get_database_backend();
    let text = match backend {
        DbBackend::Postgres => {
            let mut out = String::with_capacity(sql.len() + 8);
            let mut n = 0;
            for ch in sql.chars() {
                if ch == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(ch);
                }
            }
            out
        }
        _ => sql.to_string(),
    };
    Statement::from_sql_and_values(backend, text, values)
}

/// `IN (?, ?, ...)` with `n` placeholders (at least one, so the SQL stays valid).
pub fn in_list(n: usize) -> String {
    format!("({})", vec!["?"; n.max(1)].join(", "))
}
