//! Progress per batch and per labeler, and inter-annotator agreement.
use crate::api::{BatchAgreement, BatchProgress, LabelerAgreement, LabelerProgress};
use crate::comparisons::usernames;
use crate::consensus::{consensus, krippendorff_alpha_nominal, pair_choice, pair_units};
use crate::entities::{batches, labels, leases};
use crate::error::{AppError, AppResult};
use crate::sql::stmt;
use crate::time::rfc3339;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Value,
};
use std::collections::{BTreeMap, HashMap};

const BATCH_SQL: &str = "SELECT b.id, b.name, b.round_id, b.labels_wanted, b.created_at, \
    CAST(COUNT(c.id) AS BIGINT), \
    CAST(COALESCE(SUM(CASE WHEN c.state = 'complete' THEN 1 ELSE 0 END), 0) AS BIGINT), \
    CAST(COALESCE(SUM(c.labels_done), 0) AS BIGINT), \
    CAST(COALESCE(SUM(c.labels_wanted - c.labels_done), 0) AS BIGINT) \
    FROM batches b LEFT JOIN comparisons c ON c.batch_id = b.id";
const BATCH_GROUP: &str =
    " GROUP BY b.id, b.name, b.round_id, b.labels_wanted, b.created_at ORDER BY b.id";

type BatchRow = (i64, String, Option<i64>, i32, i64, i64, i64, i64, i64);

/// Progress of all batches (`batch = None`) or one.
pub async fn batches_progress(
    db: &DatabaseConnection,
    batch: Option<i64>,
) -> AppResult<Vec<BatchProgress>> {
    let (sql, values) = match batch {
        Some(id) => (
            format!("{BATCH_SQL} WHERE b.id = ?{BATCH_GROUP}"),
            vec![Value::from(id)],
        ),
        None => (format!("{BATCH_SQL}{BATCH_GROUP}"), vec![]),
    };
    let rows = db.query_all_raw(stmt(db, &sql, values)).await?;
    let mut out = vec![];
    for row in rows {
        let (id, name, round_id, labels_wanted, created_at, n, complete, done, remaining): BatchRow =
            row.try_get_many_by_index()?;
        out.push(BatchProgress {
            batch_id: id,
            name,
            round_id,
            labels_wanted,
            comparisons: n,
            complete,
            labels: done,
            remaining_labels: remaining,
            labelers: labelers_progress(db, Some(id)).await?,
            created_at: rfc3339(created_at),
        });
    }
    Ok(out)
}

/// One batch's progress (404 if missing).
pub async fn batch_progress(db: &DatabaseConnection, id: i64) -> AppResult<BatchProgress> {
    batches_progress(db, Some(id))
        .await?
        .pop()
        .ok_or_else(|| AppError::NotFound(format!("no batch {id}")))
}

/// Labels and skips per labeler, in one batch or overall.
pub async fn labelers_progress(
    db: &DatabaseConnection,
    batch: Option<i64>,
) -> AppResult<Vec<LabelerProgress>> {
    let mut counts: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
    for (table, slot) in [("labels", 0), ("skips", 1)] {
        let (sql, values) = match batch {
            Some(b) => (
                format!(
                    "SELECT t.labeler_id, CAST(COUNT(*) AS BIGINT) FROM {table} t \
                     JOIN comparisons c ON c.id = t.comparison_id WHERE c.batch_id = ? GROUP BY t.labeler_id"
                ),
                vec![Value::from(b)],
            ),
            None => (format!("SELECT t.labeler_id, CAST(COUNT(*) AS BIGINT) FROM {table} t GROUP BY t.labeler_id"), vec![]),
        };
        for row in db.query_all_raw(stmt(db, &sql, values)).await? {
            let (labeler, n): (i64, i64) = row.try_get_many_by_index()?;
            let e = counts.entry(labeler).or_default();
            if slot == 0 {
                e.0 = n
            } else {
                e.1 = n
            }
        }
    }
    let names = usernames(db, counts.keys().copied()).await?;
    Ok(counts
        .into_iter()
        .map(|(id, (labels, skips))| LabelerProgress {
            labeler_id: id,
            username: names.get(&id).cloned().unwrap_or_default(),
            labels,
            skips,
        })
        .collect())
}

/// Labels still wanted on open comparisons, and leases held (for /metrics).
pub async fn queue_depth(db: &DatabaseConnection) -> AppResult<(i64, i64)> {
    let sql = "SELECT CAST(COALESCE(SUM(labels_wanted - labels_done), 0) AS BIGINT) FROM comparisons WHERE state = 'open'";
    let depth = match db.query_one_raw(stmt(db, sql, vec![])).await? {
        Some(row) => row.try_get_by_index::<i64>(0)?,
        None => 0,
    };
    let held = leases::Entity::find().count(db).await? as i64;
    Ok((depth, held))
}

/// Krippendorff's α over the batch's pairwise choices, and each labeler's
/// agreement with the consensus, on comparisons with at least two labels.
pub async fn batch_agreement(db: &DatabaseConnection, batch_id: i64) -> AppResult<BatchAgreement> {
    if batches::Entity::find_by_id(batch_id)
        .one(db)
        .await?
        .is_none()
    {
        return Err(AppError::NotFound(format!("no batch {batch_id}")));
    }
    let multi: Vec<i64> = {
        let sql = "SELECT id FROM comparisons WHERE batch_id = ? AND labels_done >= 2 ORDER BY id";
        db.query_all_raw(stmt(db, sql, vec![batch_id.into()]))
            .await?
            .iter()
            .map(|r| r.try_get_by_index::<i64>(0))
            .collect::<Result<_, _>>()?
    };
    let mut units = vec![];
    let mut per: BTreeMap<i64, (usize, usize)> = BTreeMap::new();
    // bounded memory: a chunk of comparisons at a time
    for chunk in multi.chunks(500) {
        let rows = labels::Entity::find()
            .filter(labels::Column::ComparisonId.is_in(chunk.to_vec()))
            .order_by_asc(labels::Column::ComparisonId)
            .order_by_asc(labels::Column::Id)
            .all(db)
            .await?;
        let mut by_c: BTreeMap<i64, Vec<(i64, Vec<u32>)>> = BTreeMap::new();
        for l in rows {
            let r: Vec<u32> = serde_json::from_str(&l.ranking).unwrap_or_default();
            by_c.entry(l.comparison_id)
                .or_default()
                .push((l.labeler_id, r));
        }
        for labs in by_c.values() {
            let rankings: Vec<Vec<u32>> = labs.iter().map(|(_, r)| r.clone()).collect();
            units.extend(pair_units(&rankings));
            let Some(cons) = consensus(&rankings, &[]) else {
                continue;
            };
            let k = cons.ranking.len();
            for (labeler, r) in labs {
                if r.len() != k {
                    continue;
                }
                let e = per.entry(*labeler).or_default();
                for i in 0..k {
                    for j in i + 1..k {
                        e.0 += 1;
                        e.1 +=
                            usize::from(pair_choice(r, i, j) == pair_choice(&cons.ranking, i, j));
                    }
                }
            }
        }
    }
    let names: HashMap<i64, String> = usernames(db, per.keys().copied()).await?;
    Ok(BatchAgreement {
        batch_id,
        krippendorff_alpha: krippendorff_alpha_nominal(&units),
        units: units.iter().filter(|u| u.len() >= 2).count(),
        labelers: per
            .into_iter()
            .map(|(id, (pairs, agreed))| LabelerAgreement {
                labeler_id: id,
                username: names.get(&id).cloned().unwrap_or_default(),
                pairs,
                agreed,
                agreement: if pairs == 0 {
                    0.0
                } else {
                    agreed as f64 / pairs as f64
                },
            })
            .collect(),
    })
}
