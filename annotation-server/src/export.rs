//! Streaming export of preference data as JSONL: TRL, HH-RLHF and raw labels.
//!
//! Comparisons are read in pages by keyset (`id > last`), each page with a
//! handful of bulk queries, and their rows written to the response in chunks
//! through a bounded channel: memory stays bounded by one page and a few
//! chunks, no connection is held between pages, and a slow client slows the
//! reader down.
use crate::api::{ChatMessage, ExportFormat, ExportQuery, HhRow, LabelView, RawRow, TrlRow};
use crate::assign::{parse_messages, parse_tags};
use crate::comparisons::{consensus_of, label_view, response_view, usernames};
use crate::entities::{
    batches, comparison_responses, comparisons, labels, prompts, responses, rounds,
};
use crate::error::{AppError, AppResult};
use crate::sql::{in_list, stmt};
use crate::time::parse_time;
use axum::body::{Body, Bytes};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Value,
};
use std::collections::HashMap;

/// Comparisons per page: a page's rows (prompts, up to 16 responses each,
/// labels) are what an export holds in memory at once.
const PAGE: usize = 32;

/// Validated export filters.
#[derive(Clone, Debug)]
pub struct Filter {
    format: ExportFormat,
    batch_id: Option<i64>,
    round_id: Option<i64>,
    since: Option<i64>,
    until: Option<i64>,
}

impl Filter {
    /// Validates the query string.
    pub fn from_query(q: &ExportQuery) -> AppResult<Filter> {
        let time = |name: &str, v: &Option<String>| -> AppResult<Option<i64>> {
            v.as_deref()
                .map(|s| {
                    parse_time(s).ok_or_else(|| {
                        AppError::BadRequest(format!(
                            "{name} must be RFC 3339 or YYYY-MM-DD, got {s:?}"
                        ))
                    })
                })
                .transpose()
        };
        Ok(Filter {
            format: q.format.unwrap_or(ExportFormat::Trl),
            batch_id: q.batch_id,
            round_id: q.round_id,
            since: time("since", &q.since)?,
            until: time("until", &q.until)?,
        })
    }

    /// The output format.
    pub fn format(&self) -> ExportFormat {
        self.format
    }

    /// 404 when the filter names a batch or round that does not exist (an
    /// empty export would look like one with nothing labeled yet).
    pub async fn check_exists(&self, db: &DatabaseConnection) -> AppResult<()> {
        if let Some(b) = self.batch_id {
            if batches::Entity::find_by_id(b).one(db).await?.is_none() {
                return Err(AppError::NotFound(format!("no batch {b}")));
            }
        }
        if let Some(r) = self.round_id {
            if rounds::Entity::find_by_id(r).one(db).await?.is_none() {
                return Err(AppError::NotFound(format!("no round {r}")));
            }
        }
        Ok(())
    }

    /// `label conditions` SQL and values (on alias `l`), shared by the page and label queries.
    fn label_conds(&self) -> (String, Vec<Value>) {
        let mut sql = String::new();
        let mut v = vec![];
        if let Some(s) = self.since {
            sql.push_str(" AND l.created_at >= ?");
            v.push(s.into());
        }
        if let Some(u) = self.until {
            sql.push_str(" AND l.created_at < ?");
            v.push(u.into());
        }
        (sql, v)
    }
}

/// Streams the export as a response body.
///
/// A task reads a page of comparisons at a time and writes its rows into
/// chunks of about 64 KiB, each sent through a channel of two: when the
/// client reads slowly (or not at all) the task waits at the channel, so the
/// memory held is one page of database rows plus a few chunks, whatever the
/// size of the export or the speed of the reader.
pub fn stream(db: DatabaseConnection, filter: Filter) -> Body {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let mut out = Sink {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let mut after = 0i64;
        loop {
            let written = match load_page(&db, &filter, after).await {
                Ok(Some(page)) => write_page(&page, &filter, &mut out)
                    .await
                    .map(|sent| sent.then_some(page.next)),
                Ok(None) => Ok(Some(None)),
                Err(e) => Err(e),
            };
            match written {
                Ok(Some(Some(next))) => after = next,
                // the end: send what is left
                Ok(Some(None)) => {
                    out.flush().await;
                    return;
                }
                // the client went away
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(error = %e, "export failed mid-stream");
                    // an error chunk aborts the response, so the client sees a
                    // broken transfer rather than a silently truncated file
                    let _ = out
                        .tx
                        .send(Err(std::io::Error::other("export failed")))
                        .await;
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Body::from_stream(stream)
}

/// Bytes gathered before a chunk is sent.
const CHUNK: usize = 64 * 1024;

/// Rows gathered into chunks for the response.
struct Sink {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Sink {
    /// Appends one JSON line; false when the client went away.
    async fn line<T: serde::Serialize>(&mut self, row: &T) -> AppResult<bool> {
        serde_json::to_writer(&mut self.buf, row).map_err(|e| AppError::Internal(e.to_string()))?;
        self.buf.push(b'\n');
        if self.buf.len() >= CHUNK {
            return Ok(self.flush().await);
        }
        Ok(true)
    }

    /// Sends what is gathered (waiting while the channel is full); false when
    /// the client went away.
    async fn flush(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.send(Ok(Bytes::from(chunk))).await.is_ok()
    }
}

/// One page of comparisons with everything their rows need.
struct Page {
    comps: Vec<comparisons::Model>,
    rounds: HashMap<i64, Option<i64>>,
    prompts: HashMap<i64, prompts::Model>,
    resp_of: HashMap<i64, Vec<responses::Model>>,
    labels_of: HashMap<i64, Vec<LabelView>>,
    /// The last comparison id, when more pages may follow.
    next: Option<i64>,
}

/// Reads the page of comparisons after id `after` (`None` when there are no more).
async fn load_page(db: &DatabaseConnection, f: &Filter, after: i64) -> AppResult<Option<Page>> {
    let (lsql, lvals) = f.label_conds();
    let mut sql = String::from(
        "SELECT DISTINCT c.id FROM comparisons c JOIN batches b ON b.id = c.batch_id \
         JOIN labels l ON l.comparison_id = c.id WHERE c.id > ?",
    );
    let mut vals: Vec<Value> = vec![after.into()];
    if let Some(b) = f.batch_id {
        sql.push_str(" AND c.batch_id = ?");
        vals.push(b.into());
    }
    if let Some(r) = f.round_id {
        sql.push_str(" AND b.round_id = ?");
        vals.push(r.into());
    }
    sql.push_str(&lsql);
    vals.extend(lvals.iter().cloned());
    sql.push_str(&format!(" ORDER BY c.id LIMIT {PAGE}"));
    let ids: Vec<i64> = db
        .query_all_raw(stmt(db, &sql, vals))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<i64>(0))
        .collect::<Result<_, _>>()?;
    if ids.is_empty() {
        return Ok(None);
    }
    let last = *ids.last().expect("non-empty");

    // the page's comparisons, batches, prompts, responses and labels, in bulk
    let comps = comparisons::Entity::find()
        .filter(comparisons::Column::Id.is_in(ids.clone()))
        .all(db)
        .await?;
    let batch_ids: Vec<i64> = comps.iter().map(|c| c.batch_id).collect();
    let rounds: HashMap<i64, Option<i64>> = batches::Entity::find()
        .filter(batches::Column::Id.is_in(batch_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|b| (b.id, b.round_id))
        .collect();
    let prompt_ids: Vec<i64> = comps.iter().map(|c| c.prompt_id).collect();
    let prompts: HashMap<i64, prompts::Model> = prompts::Entity::find()
        .filter(prompts::Column::Id.is_in(prompt_ids))
        .all(db)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let links = comparison_responses::Entity::find()
        .filter(comparison_responses::Column::ComparisonId.is_in(ids.clone()))
        .order_by_asc(comparison_responses::Column::ComparisonId)
        .order_by_asc(comparison_responses::Column::Position)
        .all(db)
        .await?;
    let resp: HashMap<i64, responses::Model> = responses::Entity::find()
        .filter(
            responses::Column::Id.is_in(links.iter().map(|l| l.response_id).collect::<Vec<_>>()),
        )
        .all(db)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut resp_of: HashMap<i64, Vec<responses::Model>> = HashMap::new();
    for l in &links {
        if let Some(r) = resp.get(&l.response_id) {
            resp_of.entry(l.comparison_id).or_default().push(r.clone());
        }
    }
    let label_sql = format!(
        "SELECT l.id FROM labels l WHERE l.comparison_id IN {}{lsql} ORDER BY l.comparison_id, l.id",
        in_list(ids.len())
    );
    let mut vals: Vec<Value> = ids.iter().map(|i| Value::from(*i)).collect();
    vals.extend(lvals);
    let label_ids: Vec<i64> = db
        .query_all_raw(stmt(db, &label_sql, vals))
        .await?
        .iter()
        .map(|r| r.try_get_by_index::<i64>(0))
        .collect::<Result<_, _>>()?;
    let label_rows = labels::Entity::find()
        .filter(labels::Column::Id.is_in(label_ids))
        .order_by_asc(labels::Column::ComparisonId)
        .order_by_asc(labels::Column::Id)
        .all(db)
        .await?;
    let names = usernames(db, label_rows.iter().map(|l| l.labeler_id)).await?;
    let mut labels_of: HashMap<i64, Vec<LabelView>> = HashMap::new();
    for l in &label_rows {
        let name = names.get(&l.labeler_id).map(String::as_str).unwrap_or("");
        labels_of
            .entry(l.comparison_id)
            .or_default()
            .push(label_view(l, name));
    }

    let mut comps = comps;
    comps.sort_by_key(|c| c.id);
    Ok(Some(Page {
        comps,
        rounds,
        prompts,
        resp_of,
        labels_of,
        next: (ids.len() == PAGE).then_some(last),
    }))
}

/// Writes a page's rows; false when the client went away.
async fn write_page(page: &Page, f: &Filter, out: &mut Sink) -> AppResult<bool> {
    for c in &page.comps {
        let (Some(p), Some(rs), Some(ls)) = (
            page.prompts.get(&c.prompt_id),
            page.resp_of.get(&c.id),
            page.labels_of.get(&c.id),
        ) else {
            continue;
        };
        let prompt = parse_messages(&p.messages);
        match f.format {
            ExportFormat::Raw => {
                for l in ls {
                    let row = RawRow {
                        label_id: l.id,
                        comparison_id: c.id,
                        batch_id: c.batch_id,
                        round_id: page.rounds.get(&c.batch_id).copied().flatten(),
                        prompt_id: p.id,
                        prompt: prompt.clone(),
                        tags: parse_tags(&p.tags),
                        responses: rs
                            .iter()
                            .enumerate()
                            .map(|(i, r)| response_view(i, r))
                            .collect(),
                        labeler_id: l.labeler_id,
                        labeler: l.username.clone(),
                        ranking: l.ranking.clone(),
                        strength: l.strength,
                        safety: l.safety,
                        edited_response: l.edited_response.clone(),
                        note: l.note.clone(),
                        time_spent_ms: l.time_spent_ms,
                        created_at: l.created_at.clone(),
                    };
                    if !out.line(&row).await? {
                        return Ok(false);
                    }
                }
            }
            ExportFormat::Trl | ExportFormat::Hh => {
                let Some(cons) = consensus_of(ls) else {
                    continue;
                };
                let k = cons.ranking.len().min(rs.len());
                for i in 0..k {
                    for j in 0..k {
                        // every strictly ordered pair of the consensus ranking
                        if cons.ranking[i] >= cons.ranking[j] {
                            continue;
                        }
                        let (chosen, rejected) = (&rs[i].text, &rs[j].text);
                        // nothing to learn from a pair of equal texts (new
                        // comparisons cannot have one; older data might)
                        if chosen.trim() == rejected.trim() {
                            continue;
                        }
                        let sent = if f.format == ExportFormat::Trl {
                            out.line(&TrlRow {
                                prompt: prompt.clone(),
                                chosen: vec![assistant(chosen)],
                                rejected: vec![assistant(rejected)],
                                margin: cons.mean_margin,
                            })
                            .await?
                        } else {
                            out.line(&HhRow {
                                chosen: transcript(&prompt, chosen),
                                rejected: transcript(&prompt, rejected),
                            })
                            .await?
                        };
                        if !sent {
                            return Ok(false);
                        }
                    }
                }
            }
        }
    }
    Ok(true)
}

fn assistant(text: &str) -> ChatMessage {
    ChatMessage {
        role: "assistant".into(),
        content: text.to_string(),
    }
}

/// An HH-RLHF transcript: `\n\nHuman: ...\n\nAssistant: ...`, ending with the
/// given response. System messages (which HH-RLHF does not have) become a
/// `System:` turn.
pub fn transcript(prompt: &[ChatMessage], response: &str) -> String {
    let mut s = String::new();
    for m in prompt {
        let who = match m.role.as_str() {
            "user" => "Human",
            "assistant" => "Assistant",
            _ => "System",
        };
        s.push_str(&format!("\n\n{who}: {}", m.content));
    }
    s.push_str(&format!("\n\nAssistant: {response}"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hh_transcript_shape() {
        let p = vec![
            ChatMessage {
                role: "user".into(),
                content: "Hi".into(),
            },
            ChatMessage {
                role: "assistant".into(),
                content: "Hello".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "2+2?".into(),
            },
        ];
        assert_eq!(
            transcript(&p, "4"),
            "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2+2?\n\nAssistant: 4"
        );
    }
}
