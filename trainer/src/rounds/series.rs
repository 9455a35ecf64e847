//! A series of rounds (those of one prompt source): where it stands, and the
//! configuration a worker completes for a round queued without some settings.
use super::config::{RoundConfig, RoundState, WorkerDefaults};
use annotation_server::api::client::Client;
use annotation_server::api::{Round, RoundStatus};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `p` made absolute (against the current directory).
pub(super) fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
}

/// A round's state as its worker left it (empty for a round not started).
pub fn state_of(r: &Round) -> RoundState {
    serde_json::from_value(r.state.clone()).unwrap_or_default()
}

/// A setting of a round: from the configuration its worker completed, else as
/// queued (a round queued from the dashboard lacks paths until a worker runs it).
fn setting(r: &Round, completed: impl FnOnce(RoundConfig) -> String, key: &str) -> Option<String> {
    state_of(r)
        .config
        .map(completed)
        .or_else(|| {
            r.config
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .filter(|s| !s.is_empty())
}

/// A round's prompt source (which series it belongs to).
pub fn source_of(r: &Round) -> Option<String> {
    setting(r, |c| c.prompt_source, "prompt_source")
}

/// The policy a round's series started from.
pub fn initial_policy_of(r: &Round) -> Option<PathBuf> {
    setting(
        r,
        |c| c.initial_policy.display().to_string(),
        "initial_policy",
    )
    .map(PathBuf::from)
}

/// Where a series of rounds (those of one prompt source, before round `before`) stands.
pub(super) struct Series {
    /// The output of its last finished round.
    pub last_output: Option<PathBuf>,
    /// The policy its first round started from.
    pub initial: Option<PathBuf>,
    /// How many rounds it has.
    pub len: u64,
}

/// Where the series of prompt source `source` stands (its rounds before `before`, if given).
pub(super) fn series(client: &Client, source: &str, before: Option<i64>) -> Result<Series> {
    let rounds: Vec<Round> = client
        .rounds()?
        .into_iter()
        .filter(|r| source_of(r).as_deref() == Some(source) && before.is_none_or(|b| r.id < b))
        .collect();
    let last_done = rounds
        .iter()
        .filter(|r| r.status() == Some(RoundStatus::Done))
        .max_by_key(|r| r.id);
    let last_output = match last_done {
        Some(r) => Some(
            state_of(r)
                .output
                .with_context(|| format!("round {} is done but has no output", r.id))?,
        ),
        None => None,
    };
    let initial = rounds
        .iter()
        .min_by_key(|r| r.id)
        .and_then(initial_policy_of);
    Ok(Series {
        last_output,
        initial,
        len: rounds.len() as u64,
    })
}

pub(super) fn check_policy(p: &Path) -> Result<()> {
    if !p.join("config.json").is_file() {
        bail!(
            "{} is not a policy checkpoint (no config.json)",
            p.display()
        );
    }
    Ok(())
}

/// Completes the configuration of a round queued without some settings (the
/// dashboard form leaves out paths): keys missing from `round.config` come
/// from the worker's defaults; the prompt source defaults to the task's
/// built-in prompts (imported if the server lacks them); the starting policy
/// to the last finished round's output of the same prompt source, else the
/// worker's `--policy`; the work directory to `WORKDIR/round-<id>`.
pub fn complete_config(
    client: &Client,
    round: &Round,
    defaults: &WorkerDefaults,
) -> Result<RoundConfig> {
    let mut v = defaults.config.clone();
    match &round.config {
        serde_json::Value::Object(m) => v.extend(m.clone()),
        serde_json::Value::Null => {}
        _ => bail!("round {}: its config is not a JSON object", round.id),
    }
    let mut cfg: RoundConfig = serde_json::from_value(serde_json::Value::Object(v))
        .with_context(|| format!("round {}: bad config", round.id))?;
    if cfg.prompt_source.is_empty() {
        let name = cfg.task.as_deref().with_context(|| {
            format!(
                "round {}: neither a prompt source nor a task is set",
                round.id
            )
        })?;
        let task = super::tasks::task(name)?;
        cfg.prompt_format = "text".into();
        cfg.prompt_source = super::prompts::ensure_prompts(client, task.as_ref(), 4096)?;
    }
    let series = series(client, &cfg.prompt_source, Some(round.id))?;
    if cfg.policy.as_os_str().is_empty() {
        cfg.policy = series.last_output.clone().or_else(|| defaults.policy.clone()).with_context(|| {
            format!("round {}: no starting policy; the first round of prompt source `{}` needs one (queue it with a policy, or start the worker with --policy)", round.id, cfg.prompt_source)
        })?;
    }
    check_policy(&cfg.policy)?;
    if cfg.initial_policy.as_os_str().is_empty() {
        cfg.initial_policy = series.initial.unwrap_or_else(|| cfg.policy.clone());
    }
    if cfg.index == 0 {
        cfg.index = series.len + 1;
    }
    if cfg.workdir.as_os_str().is_empty() {
        cfg.workdir = defaults.workdir.join(format!("round-{}", round.id));
    }
    Ok(cfg)
}
