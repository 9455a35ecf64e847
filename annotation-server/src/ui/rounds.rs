//! The dashboard's rounds: a table of rounds with their progress and summary
//! metrics, the "queue a round" form, plots over rounds, and a page per round
//! with its configuration, state and per-round plots. Plots are SVG served by
//! the routes below and shown with `<img>`.
use super::html::{esc, page};
use super::session::{FormSession, PageSession, ResearcherOnly};
use super::{user_nav, UiError, UiResult};
use crate::api::{NewRound, Round, RoundMetrics, RoundStatus};
use crate::error::AppError;
use crate::plots;
use crate::rounds;
use crate::state::AppState;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect};
use std::collections::{BTreeSet, HashMap};

/// Recipes offered by the queue form.
pub const RECIPES: [&str; 5] = ["rs", "dpo", "ppo", "rs+ppo", "rs+dpo"];
/// Built-in tasks offered by the queue form.
pub const TASKS: [&str; 2] = ["review", "arithmetic"];

/// The queue form's fields, as typed (kept to re-show them after an error).
#[derive(Clone, Debug)]
pub struct QueueForm {
    name: String,
    recipe: String,
    task: String,
    prompts_per_round: String,
    k: String,
    labels_wanted: String,
    /// Blank: the task's built-in prompts (the worker imports them).
    prompt_source: String,
    /// A path on the worker's machine; blank: the series' last output or the worker's `--policy`.
    policy: String,
}

impl Default for QueueForm {
    fn default() -> Self {
        QueueForm {
            name: String::new(),
            recipe: "dpo".into(),
            task: "review".into(),
            prompts_per_round: "32".into(),
            k: "4".into(),
            labels_wanted: "1".into(),
            prompt_source: String::new(),
            policy: String::new(),
        }
    }
}

impl QueueForm {
    fn from_map(form: &HashMap<String, String>) -> QueueForm {
        let get = |k: &str| {
            form.get(k)
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        QueueForm {
            name: get("name"),
            recipe: get("recipe"),
            task: get("task"),
            prompts_per_round: get("prompts_per_round"),
            k: get("k"),
            labels_wanted: get("labels_wanted"),
            prompt_source: get("prompt_source"),
            policy: get("policy"),
        }
    }

    /// The round to create, or what to fix.
    fn to_round(&self) -> Result<NewRound, String> {
        rounds::validate_name(&self.name).map_err(|e| format!("Name: {e}."))?;
        if !RECIPES.contains(&self.recipe.as_str()) {
            return Err(format!("Recipe must be one of {}.", RECIPES.join(", ")));
        }
        if !TASKS.contains(&self.task.as_str()) {
            return Err(format!("Task must be one of {}.", TASKS.join(", ")));
        }
        let int = |v: &str, what: &str, lo: u64, hi: u64| -> Result<u64, String> {
            match v.parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(format!("{what} must be a whole number from {lo} to {hi}.")),
            }
        };
        let prompts = int(&self.prompts_per_round, "Prompts per round", 1, 100_000)?;
        let k = int(&self.k, "Samples per prompt (K)", 2, 16)?;
        let labels = int(&self.labels_wanted, "Labels wanted per comparison", 1, 100)?;
        if self.prompt_source.chars().count() > 200
            || self.prompt_source.chars().any(char::is_control)
        {
            return Err("Prompt source: at most 200 characters, no control characters.".into());
        }
        if self.policy.chars().count() > 4096 || self.policy.chars().any(char::is_control) {
            return Err(
                "Starting policy: a path of at most 4096 characters, no control characters.".into(),
            );
        }
        let mut config = serde_json::json!({
            "recipe": self.recipe,
            "task": self.task,
            "prompts_per_round": prompts,
            "k": k,
            "labels_wanted": labels,
        });
        // left out when blank: the worker fills them (see `rlhf worker --help`)
        if !self.prompt_source.is_empty() {
            config["prompt_source"] = self.prompt_source.clone().into();
        }
        if !self.policy.is_empty() {
            config["policy"] = self.policy.clone().into();
        }
        Ok(NewRound {
            name: self.name.clone(),
            config: Some(config),
            status: Some(RoundStatus::Queued.into()),
        })
    }
}

/// A path segment, percent-encoded (all but unreserved characters).
pub fn url_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A number for a table cell.
fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn select(name: &str, options: &[&str], chosen: &str) -> String {
    let opts: String = options
        .iter()
        .map(|o| {
            format!(
                "<option value=\"{0}\"{1}>{0}</option>",
                esc(o),
                if *o == chosen { " selected" } else { "" }
            )
        })
        .collect();
    format!("<select id=\"{name}\" name=\"{name}\">{opts}</select>")
}

/// The dashboard's rounds section: table, queue form, plots over rounds.
pub fn section(all: &[Round], csrf: &str, form: &QueueForm, error: Option<&str>) -> String {
    let typed: Vec<RoundMetrics> = all.iter().map(Round::metrics_typed).collect();
    let metrics: BTreeSet<&String> = typed.iter().flat_map(|m| m.summary.keys()).collect();
    let mut head = String::from(
        "<th>id</th><th>name</th><th>status</th><th>step</th><th>lease owner</th><th>updated</th>",
    );
    for m in &metrics {
        head.push_str(&format!("<th>{}</th>", esc(m)));
    }
    let mut rows = String::new();
    for (r, typed) in all.iter().zip(&typed).rev() {
        let progress = typed.progress.clone().unwrap_or_default();
        let cells: String = metrics
            .iter()
            .map(|m| {
                format!(
                    "<td>{}</td>",
                    typed.summary.get(*m).map(|v| num(*v)).unwrap_or_default()
                )
            })
            .collect();
        rows.push_str(&format!(
            "<tr id=\"round-{id}\"><td><a href=\"/dashboard/rounds/{id}\">{id}</a></td><td><a href=\"/dashboard/rounds/{id}\">{}</a></td>\
             <td class=\"status-{}\">{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td>{cells}</tr>",
            esc(&r.name),
            esc(&r.status),
            esc(&r.status),
            esc(&progress.detail),
            esc(&progress.step),
            esc(r.lease_owner.as_deref().unwrap_or("")),
            esc(&r.updated_at),
            id = r.id,
        ));
    }
    if all.is_empty() {
        rows.push_str(&format!(
            "<tr><td colspan=\"{}\">No rounds yet.</td></tr>",
            6 + metrics.len()
        ));
    }
    let err = error
        .map(|e| {
            format!(
                "<p class=\"error\" role=\"alert\" id=\"queue-error\">{}</p>",
                esc(e)
            )
        })
        .unwrap_or_default();
    let f = form;
    let queue = format!(
        "<form id=\"queue-round\" class=\"queue\" method=\"post\" action=\"/dashboard/rounds\"><h2>Queue a round</h2>{err}\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Name <input name=\"name\" value=\"{}\" required maxlength=\"200\"></label>\
         <label>Recipe {}</label><label>Task {}</label>\
         <label>Prompts per round <input name=\"prompts_per_round\" type=\"number\" min=\"1\" max=\"100000\" value=\"{}\" required></label>\
         <label>Samples per prompt (K) <input name=\"k\" type=\"number\" min=\"2\" max=\"16\" value=\"{}\" required></label>\
         <label>Labels wanted per comparison <input name=\"labels_wanted\" type=\"number\" min=\"1\" max=\"100\" value=\"{}\" required></label>\
         <label>Prompt source <input name=\"prompt_source\" value=\"{}\" maxlength=\"200\" placeholder=\"the task's prompts\"></label>\
         <label>Starting policy <input name=\"policy\" value=\"{}\" maxlength=\"4096\" placeholder=\"last round's output\"></label>\
         <button class=\"primary\" type=\"submit\">Queue</button>\
         <p class=\"progress\">A worker (<code>rlhf worker</code>) claims queued rounds and runs them. Blank prompt source: the task's built-in prompts; blank starting policy: the last finished round's output of the same prompt source, else the worker's <code>--policy</code>.</p></form>",
        esc(csrf),
        esc(&f.name),
        select("recipe", &RECIPES, &f.recipe),
        select("task", &TASKS, &f.task),
        esc(&f.prompts_per_round),
        esc(&f.k),
        esc(&f.labels_wanted),
        esc(&f.prompt_source),
        esc(&f.policy),
    );
    let figures: String = metrics
        .iter()
        .map(|m| {
            format!(
                "<figure><img src=\"/dashboard/plots/{}\" alt=\"{} over rounds\" width=\"{}\" height=\"{}\"></figure>",
                esc(&url_segment(m)),
                esc(m),
                plots::WIDTH,
                plots::HEIGHT
            )
        })
        .collect();
    let plots_html = if figures.is_empty() {
        String::new()
    } else {
        format!(
            "<h2>Metrics over rounds</h2><div class=\"plots\" id=\"round-plots\">{figures}</div>"
        )
    };
    format!(
        "<section id=\"rounds\"><h1>Rounds</h1><table id=\"rounds-table\"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>\
         {queue}{plots_html}</section>"
    )
}

/// `POST /dashboard/rounds`: queues a round from the form; errors re-show
/// the dashboard with the message and the typed values (422).
pub async fn queue_round(
    State(s): State<AppState>,
    FormSession {
        session: sess,
        form,
        ..
    }: FormSession<ResearcherOnly>,
) -> UiResult {
    let typed = QueueForm::from_map(&form);
    let req = match typed.to_round() {
        Ok(r) => r,
        Err(msg) => {
            return super::render_dashboard(
                &s,
                &sess,
                &typed,
                Some(&msg),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    };
    match rounds::create(&s.db, req, sess.user.id).await {
        Ok(r) => Ok(Redirect::to(&format!("/dashboard#round-{}", r.id)).into_response()),
        Err(e @ (AppError::Unprocessable(_) | AppError::BadRequest(_))) => {
            super::render_dashboard(
                &s,
                &sess,
                &typed,
                Some(&e.to_string()),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(e) => Err(e.into()),
    }
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, UiError> {
    p.map(|Path(v)| v)
        .map_err(|r| UiError(AppError::BadRequest(r.body_text())))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `GET /dashboard/rounds/{id}`: one round with its plots.
pub async fn round_page(
    State(s): State<AppState>,
    PageSession { session: sess, .. }: PageSession<ResearcherOnly>,
    id: Result<Path<i64>, PathRejection>,
) -> UiResult {
    let id = path(id)?;
    let r = rounds::get(&s.db, id).await?;
    let metrics = r.metrics_typed();
    let progress = metrics.progress.clone().unwrap_or_default();
    let summary: String = metrics
        .summary
        .iter()
        .map(|(k, v)| format!("<tr><th>{}</th><td>{}</td></tr>", esc(k), num(*v)))
        .collect();
    let summary = if summary.is_empty() {
        "<p>No summary metrics yet.</p>".to_string()
    } else {
        format!("<table id=\"summary\">{summary}</table>")
    };
    let figures: String = metrics
        .series
        .keys()
        .map(|name| {
            format!(
                "<figure><img src=\"/dashboard/rounds/{id}/plots/{}\" alt=\"{}\" width=\"{}\" height=\"{}\"></figure>",
                esc(&url_segment(name)),
                esc(name),
                plots::WIDTH,
                plots::HEIGHT
            )
        })
        .collect();
    let figures = if figures.is_empty() {
        "<p>No series yet.</p>".to_string()
    } else {
        format!("<div class=\"plots\" id=\"series-plots\">{figures}</div>")
    };
    let cancellable = r
        .status()
        .is_some_and(|from| rounds::may_set_by_hand(from, RoundStatus::Cancelled));
    let cancel = if cancellable {
        format!(
            "<form id=\"cancel-round\" class=\"queue\" method=\"post\" action=\"/dashboard/rounds/{id}/cancel\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Reason <input name=\"reason\" maxlength=\"500\" required></label>\
             <button type=\"submit\">Cancel round</button></form>",
            esc(&sess.csrf)
        )
    } else {
        String::new()
    };
    let body = format!(
        "<p><a href=\"/dashboard#rounds\">← Rounds</a></p><h1>Round {id}: {}</h1>\
         <table id=\"round-info\"><tr><th>status</th><td id=\"round-status\">{}</td></tr>\
         <tr><th>step</th><td>{}</td></tr><tr><th>detail</th><td>{}</td></tr>\
         <tr><th>lease owner</th><td>{}</td></tr><tr><th>lease expires</th><td>{}</td></tr>\
         <tr><th>created</th><td>{}</td></tr><tr><th>updated</th><td>{}</td></tr></table>{cancel}\
         <h2>Summary</h2>{summary}<h2>Series</h2>{figures}\
         <h2>Configuration</h2><pre class=\"text\" id=\"round-config\">{}</pre>\
         <details><summary>Worker state</summary><pre class=\"text\" id=\"round-state\">{}</pre></details>\
         <p>API (bearer token): <code>GET /api/rounds/{id}</code></p>",
        esc(&r.name),
        esc(&r.status),
        esc(&progress.step),
        esc(&progress.detail),
        esc(r.lease_owner.as_deref().unwrap_or("")),
        esc(r.lease_expires_at.as_deref().unwrap_or("")),
        esc(&r.created_at),
        esc(&r.updated_at),
        esc(&pretty(&r.config)),
        esc(&pretty(&r.state)),
    );
    Ok(Html(page(&format!("Round {id}"), &user_nav(&sess), &body)).into_response())
}

/// `POST /dashboard/rounds/{id}/cancel`: cancels a round (any status but
/// `done`), with the reason the form requires; the worker's next heartbeat
/// gets 409 and it stops.
pub async fn cancel_round(
    State(s): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
    FormSession {
        session: sess,
        form,
        ..
    }: FormSession<ResearcherOnly>,
) -> UiResult {
    let id = path(id)?;
    let reason = form.get("reason").map(|r| r.trim()).unwrap_or("");
    if reason.is_empty() {
        return Err(AppError::Unprocessable("give a reason for the cancel".into()).into());
    }
    let req = crate::api::RoundUpdate {
        status: Some(RoundStatus::Cancelled.into()),
        reason: Some(reason.to_string()),
        metrics: None,
    };
    rounds::update(&s.db, id, req, sess.user.id).await?;
    Ok(Redirect::to(&format!("/dashboard/rounds/{id}")).into_response())
}

fn svg(doc: String) -> axum::response::Response {
    (
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        doc,
    )
        .into_response()
}

/// `GET /dashboard/plots/{metric}`: one summary metric over all rounds (SVG).
pub async fn summary_plot(
    State(s): State<AppState>,
    _: PageSession<ResearcherOnly>,
    metric: Result<Path<String>, PathRejection>,
) -> UiResult {
    let metric = path(metric)?;
    let all = rounds::list(&s.db).await?;
    let points = plots::summary_over_rounds(&all)
        .remove(&metric)
        .unwrap_or_default();
    Ok(svg(plots::summary_chart_svg(&metric, &points)))
}

/// `GET /dashboard/rounds/{id}/plots/{series}`: one entry of a round's
/// `metrics.series` (SVG).
pub async fn series_plot(
    State(s): State<AppState>,
    _: PageSession<ResearcherOnly>,
    p: Result<Path<(i64, String)>, PathRejection>,
) -> UiResult {
    let (id, name) = path(p)?;
    let r = rounds::get(&s.db, id).await?;
    let points = r.metrics_typed().series.remove(&name).unwrap_or_default();
    Ok(svg(plots::series_chart_svg(&r, &name, &points)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_validation() {
        let mut f = QueueForm {
            name: "r1".into(),
            ..Default::default()
        };
        let r = f.to_round().unwrap();
        assert_eq!(r.status.as_deref(), Some("queued"));
        assert_eq!(r.config.unwrap()["k"], 4);
        f.k = "1".into();
        assert!(f.to_round().unwrap_err().contains("K"));
        f.k = "4".into();
        f.recipe = "<x>".into();
        assert!(f.to_round().is_err());
        f.recipe = "rs+dpo".into();
        f.name = " ".into();
        assert!(f.to_round().is_err());
    }

    #[test]
    fn segments_and_numbers() {
        assert_eq!(url_segment("a b/ü"), "a%20b%2F%C3%BC");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(0.12345), "0.1235");
        assert_eq!(num(1e-5), "1.000e-5");
    }
}
