//! `rlhf export`: a round's aligned policy as a Hugging Face directory with a
//! model card.
use super::series::{initial_policy_of, source_of, state_of};
use crate::policy_io::PolicyFiles;
use annotation_server::api::client::Client;
use annotation_server::api::{Round, RoundStatus};
use anyhow::{bail, Context, Result};
use clap::Args;
use policy::checkpoint::Checkpoint;
use policy::config::DType;
use serde_json::{json, Value};
use std::path::PathBuf;

/// `rlhf export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Export the output of this round (needs the server).
    #[arg(long, required_unless_present = "policy")]
    pub round: Option<i64>,
    /// Or export this checkpoint directly.
    #[arg(long, conflicts_with = "round")]
    pub policy: Option<PathBuf>,
    /// The server holding the round.
    #[arg(long, env = "RLHF_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    #[arg(long, env = "RLHF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Output directory (a HF Llama directory with README.md); a new or empty directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace what is at --out (built beside it, then swapped in).
    #[arg(long)]
    pub overwrite: bool,
    /// Storage dtype of the weights.
    #[arg(long, default_value = "bfloat16")]
    pub dtype: DType,
}

/// The finished rounds of `round`'s series up to it, in order.
fn lineage(client: &Client, round: &Round) -> Result<Vec<Round>> {
    let source = source_of(round);
    let mut all: Vec<Round> = client
        .rounds()?
        .into_iter()
        .filter(|r| {
            source_of(r) == source && r.id <= round.id && r.status() == Some(RoundStatus::Done)
        })
        .collect();
    all.sort_by_key(|r| r.id);
    Ok(all)
}

/// Runs `rlhf export`.
pub fn run_export(a: ExportArgs) -> Result<()> {
    policy::out_dir::check(&a.out, a.overwrite)?;
    let dev = dfdx::prelude::Cpu::default();
    let (dir, card) = match (a.round, &a.policy) {
        (Some(id), _) => {
            let token = a
                .token
                .as_deref()
                .context("--round needs a researcher token (--token or RLHF_TOKEN)")?;
            let client = Client::new(&a.server, token)?;
            let round = client.round(id)?;
            if round.status() != Some(RoundStatus::Done) {
                bail!(
                    "round {id} is `{}`, not done; export a finished round",
                    round.status
                );
            }
            let out = state_of(&round)
                .output
                .with_context(|| format!("round {id} has no output checkpoint"))?;
            let rounds = lineage(&client, &round)?;
            let batches = client.batches()?;
            let ids: Vec<i64> = rounds.iter().map(|r| r.id).collect();
            let mine: Vec<_> = batches
                .iter()
                .filter(|b| b.round_id.is_some_and(|r| ids.contains(&r)))
                .collect();
            let comparisons: i64 = mine.iter().map(|b| b.comparisons).sum();
            let labels: i64 = mine.iter().map(|b| b.labels).sum();
            let mut labelers: Vec<&str> = mine
                .iter()
                .flat_map(|b| b.labelers.iter().map(|l| l.username.as_str()))
                .collect();
            labelers.sort();
            labelers.dedup();
            (
                out,
                model_card(&round, &rounds, comparisons, labels, labelers.len()),
            )
        }
        (None, Some(p)) => (
            p.clone(),
            format!(
                "# {}\n\nExported by `rlhf export` from `{}`.\n",
                a.out
                    .file_name()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_default(),
                p.display()
            ),
        ),
        (None, None) => bail!("give --round ID or --policy DIR"),
    };
    if let Some((step, total)) = policy::train_state::unfinished(&dir) {
        bail!(
            "{} is an unfinished training checkpoint (step {step} of {total}); resume the run to finish it before exporting",
            dir.display()
        );
    }
    let ck =
        Checkpoint::load(&dir, &dev).with_context(|| format!("cannot load {}", dir.display()))?;
    let files = PolicyFiles::of(&ck);
    policy::fs_atomic::write_dir_atomic(&a.out, |tmp| {
        files.write_into(&ck.model, tmp, a.dtype)?;
        policy::fs_atomic::write_file_synced(&tmp.join("README.md"), card.as_bytes())
    })
    .with_context(|| format!("cannot write {}", a.out.display()))?;
    eprintln!(
        "exported {} to {} ({})",
        dir.display(),
        a.out.display(),
        a.dtype.hf_name()
    );
    Ok(())
}

fn model_card(
    round: &Round,
    rounds: &[Round],
    comparisons: i64,
    labels: i64,
    labelers: usize,
) -> String {
    let base = initial_policy_of(round)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".into());
    let mut s = format!(
        "---\nlibrary_name: transformers\ntags: [rlhf, llama]\n---\n\n# {}\n\nAn aligned chat model exported by `rlhf export` from round {} (`{}`).\n\n\
         - Base model: `{base}`\n- Rounds: {}\n- Data: {comparisons} comparisons, {labels} labels from {labelers} labelers\n\n\
         | round | recipe | gold reward | RM accuracy | KL to base | win rate vs previous |\n|---|---|---|---|---|---|\n",
        round.name,
        round.id,
        round.name,
        rounds.len()
    );
    for r in rounds {
        let summary = r.metrics_typed().summary;
        let m = |k: &str| {
            summary
                .get(k)
                .map(|x| format!("{x:.3}"))
                .unwrap_or_else(|| "-".into())
        };
        let recipe = r
            .config
            .get("recipe")
            .and_then(Value::as_str)
            .unwrap_or("?");
        s.push_str(&format!(
            "| {} | {recipe} | {} | {} | {} | {} |\n",
            r.id,
            m("gold_reward"),
            m("rm_accuracy"),
            m("kl"),
            m("win_rate")
        ));
    }
    s.push_str(&format!(
        "\nRound configuration:\n\n```json\n{}\n```\n",
        serde_json::to_string_pretty(&json!(round.config)).unwrap_or_default()
    ));
    s
}
