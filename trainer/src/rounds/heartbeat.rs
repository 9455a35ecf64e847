//! A worker's hold on a round: its connection to the server, progress
//! reports (heartbeats carrying the round's state and metrics, sent with the
//! lease token of the claim), and a background thread that keeps the lease
//! alive while a long step runs.
use super::config::{RoundState, WorkerDefaults};
use annotation_server::api::client::{Client, LeaseLost};
use annotation_server::api::{Round, RoundHeartbeat, RoundMetrics, RoundStatus};
use anyhow::{bail, Context, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The connection of a worker to the server.
pub struct Ctx {
    pub server: String,
    pub token: String,
    pub client: Client,
    pub worker: String,
    pub lease_seconds: u64,
    pub quiet: bool,
    /// What this worker fills into rounds queued without it.
    pub defaults: WorkerDefaults,
    /// The round running now and its lease token.
    lease: std::sync::Mutex<Option<(i64, String)>>,
    /// The last progress report, re-sent in the background to keep the lease.
    pub last: std::sync::Mutex<Option<(i64, RoundHeartbeat)>>,
}

impl Ctx {
    /// A worker context.
    pub fn new(
        server: &str,
        token: &str,
        worker: &str,
        lease_seconds: u64,
        quiet: bool,
    ) -> Result<Self> {
        Ok(Ctx {
            server: server.to_string(),
            token: token.to_string(),
            client: Client::new(server, token)?,
            worker: worker.to_string(),
            lease_seconds,
            quiet,
            defaults: WorkerDefaults::default(),
            lease: std::sync::Mutex::new(None),
            last: std::sync::Mutex::new(None),
        })
    }

    /// Reports progress and state; fails when the lease was lost.
    pub(super) fn beat(
        &self,
        round: i64,
        status: Option<RoundStatus>,
        state: &RoundState,
        metrics: &RoundMetrics,
    ) -> Result<()> {
        let lease_token = match &*self.lease.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((id, token)) if *id == round => token.clone(),
            _ => bail!("round {round}: this worker holds no lease on it"),
        };
        let hb = RoundHeartbeat {
            worker: self.worker.clone(),
            lease_token,
            lease_seconds: Some(self.lease_seconds),
            status: status.map(String::from),
            state: Some(serde_json::to_value(state)?),
            metrics: Some(metrics.to_value()),
        };
        self.client
            .heartbeat_round(round, &hb)
            .with_context(|| format!("round {round}: cannot report progress"))?;
        // the background beat only extends the lease; it never re-sends a final status
        let keep = RoundHeartbeat { status: None, ..hb };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = if status.is_some() {
            None
        } else {
            Some((round, keep))
        };
        Ok(())
    }
}

/// Runs `work` on `round` while a background thread keeps the round's lease
/// alive; a lease lost meanwhile stops the training step in progress and is
/// the result.
pub fn keep_alive<T>(ctx: &Ctx, round: &Round, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let token = round
        .lease_token
        .clone()
        .with_context(|| format!("round {}: no lease token (claim the round first)", round.id))?;
    *ctx.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some((round.id, token));
    let stop = AtomicBool::new(false);
    // the lease lost in the background (cancelled, or taken over after it
    // expired): the step in progress stops at its next training step
    let lost: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let every = Duration::from_secs((ctx.lease_seconds / 3).clamp(1, 30));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut since = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                if since.elapsed() < every {
                    continue;
                }
                since = Instant::now();
                let last = ctx.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let Some((id, hb)) = last else { continue };
                match ctx.client.heartbeat_round(id, &hb) {
                    Err(e) if e.downcast_ref::<LeaseLost>().is_some() => {
                        policy::train_loop::request_stop();
                        *lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                        return;
                    }
                    Err(e) => eprintln!("round {id}: lease heartbeat failed: {e:#}"),
                    Ok(_) => {}
                }
            }
        });
        let r = work();
        stop.store(true, Ordering::SeqCst);
        *ctx.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *ctx.lease.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(e) = lost.lock().unwrap_or_else(|e| e.into_inner()).take() {
            policy::train_loop::clear_stop_request();
            super::lease::forget(&ctx.defaults.workdir, round.id);
            return Err(e.context(format!("round {}: stopped", round.id)));
        }
        if r.is_ok() {
            // the final heartbeat released the lease
            super::lease::forget(&ctx.defaults.workdir, round.id);
        }
        r
    })
}

/// Whether an error means this worker no longer holds the round: leave it
/// to its new holder (or to the researcher who cancelled it).
pub fn lease_lost(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<LeaseLost>().is_some())
}
