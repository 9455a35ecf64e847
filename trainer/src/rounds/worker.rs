//! `rlhf worker`: claims queued rounds from the annotation server and runs
//! them, keeping each one's lease; restarted, it continues the round it held.
use super::cli::ServerArgs;
use super::config::WorkerDefaults;
use super::heartbeat::{self, Ctx};
use super::lease;
use super::series::absolute;
use super::steps;
use annotation_server::api::{Round, RoundClaim, RoundStatus};
use anyhow::{Context, Result};
use clap::Args;
use policy::device::{DeviceKind, OnDevice};
use policy::model::Dev;
use std::path::PathBuf;
use std::time::Duration;

/// `rlhf worker`.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// This worker's name (the lease owner). Restarted with the same name and
    /// `--workdir` (which keeps the lease's token), a worker continues the
    /// round it was running.
    #[arg(long)]
    pub name: Option<String>,
    /// Seconds a claimed round stays ours without a heartbeat.
    #[arg(long, default_value_t = 300)]
    pub lease_seconds: u64,
    /// Seconds between polls when no round is queued.
    #[arg(long, default_value_t = 5)]
    pub poll_seconds: u64,
    /// Run at most one round, then exit (with nothing queued: exit at once).
    #[arg(long)]
    pub once: bool,
    /// Starting policy for a series' first round when the round names none
    /// (rounds queued on the dashboard). Later rounds start from the last
    /// finished round's output of the same prompt source.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Where rounds queued without a work directory put their files (a folder `round-<id>` each).
    #[arg(long, default_value = "rlhf-rounds")]
    pub workdir: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
    #[arg(long)]
    pub quiet: bool,
}

impl OnDevice for WorkerArgs {
    fn run_on<D: Dev>(self, dev: &D) -> Result<()> {
        worker(&self, dev)
    }
}

/// Runs `rlhf worker`.
pub fn run_worker(a: WorkerArgs) -> Result<()> {
    a.device.dispatch(a)
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "worker@{}",
        if host.is_empty() { "localhost" } else { &host }
    )
}

/// Claims the next round for this worker: first one it already holds (a
/// restart; its lease token is kept in the workdir, see [`super::lease`]),
/// then a queued or abandoned one. The returned round carries its lease token.
pub fn claim(ctx: &Ctx) -> Result<Option<Round>> {
    let workdir = &ctx.defaults.workdir;
    for r in ctx.client.rounds()?.into_iter().filter(|r| {
        r.status() == Some(RoundStatus::Running)
            && r.lease_owner.as_deref() == Some(ctx.worker.as_str())
    }) {
        match lease::load(workdir, &ctx.server, &ctx.worker, r.id) {
            Some(token) => {
                return Ok(Some(Round {
                    lease_token: Some(token),
                    ..r
                }))
            }
            None => eprintln!(
                "round {} runs under the name `{}` but its lease token is not in {}; it can be claimed again when the lease expires ({})",
                r.id,
                ctx.worker,
                workdir.join(".leases").display(),
                r.lease_expires_at.as_deref().unwrap_or("?")
            ),
        }
    }
    let r = ctx.client.claim_round(&RoundClaim {
        worker: ctx.worker.clone(),
        lease_seconds: Some(ctx.lease_seconds),
    })?;
    if let Some(r) = &r {
        let token = r
            .lease_token
            .as_deref()
            .context("the server's claim carried no lease token")?;
        lease::save(workdir, &ctx.server, &ctx.worker, r.id, token)?;
    }
    Ok(r)
}

fn worker<D: Dev>(a: &WorkerArgs, dev: &D) -> Result<()> {
    let name = a.name.clone().unwrap_or_else(default_name);
    let mut ctx = Ctx::new(
        &a.server.server,
        &a.server.token,
        &name,
        a.lease_seconds,
        a.quiet,
    )?;
    ctx.defaults = WorkerDefaults {
        policy: a.policy.as_deref().map(absolute).transpose()?,
        workdir: absolute(&a.workdir)?,
        ..WorkerDefaults::default()
    };
    policy::train_loop::install_interrupt_handler();
    eprintln!("worker {name} polling {}", a.server.server);
    loop {
        if policy::train_loop::interrupted() {
            return Ok(());
        }
        match claim(&ctx)? {
            Some(r) => {
                eprintln!("running round {} ({})", r.id, r.name);
                match steps::run(&ctx, &r, dev) {
                    Ok(state) => eprintln!(
                        "round {} done: {}",
                        r.id,
                        state
                            .output
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    ),
                    Err(e) if policy::train_loop::interrupted() => {
                        eprintln!(
                            "round {} interrupted ({e:#}); run the worker again to continue it",
                            r.id
                        );
                        return Ok(());
                    }
                    Err(e) if heartbeat::lease_lost(&e) => {
                        eprintln!("round {} left to whoever holds it now: {e:#}", r.id)
                    }
                    Err(e) => {
                        // the round stays `running` under our lease: a restart retries it
                        eprintln!("round {} failed: {e:#}", r.id);
                        return Err(e);
                    }
                }
                if a.once {
                    return Ok(());
                }
            }
            None if a.once => return Ok(()),
            None => std::thread::sleep(Duration::from_secs(a.poll_seconds.max(1))),
        }
    }
}
