//! A small blocking HTTP client for the REST API, for the trainer and scripts.
//!
//! ```no_run
//! use annotation_server::api::client::Client;
//! let c = Client::new("http://127.0.0.1:8080", "rlhf_...")?;
//! let progress = c.batches()?;
//! # Ok::<(), anyhow::Error>(())
//! ```
use super::*;
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};

/// The error of [`Client::heartbeat_round`] when the server answers 409: the
/// worker no longer holds the round's lease (it expired and another worker
/// claimed the round, or the round was finished or re-queued). The worker
/// must stop working on the round. Find it with
/// `err.downcast_ref::<LeaseLost>()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseLost {
    /// The round whose lease was lost.
    pub round_id: i64,
    /// The server's explanation.
    pub message: String,
}

impl std::fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.starts_with("lease lost") {
            write!(f, "round {}: {}", self.round_id, self.message)
        } else {
            write!(f, "round {}: lease lost: {}", self.round_id, self.message)
        }
    }
}

impl std::error::Error for LeaseLost {}

/// Talks to one annotation server with one bearer token.
#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str, token: &str) -> anyhow::Result<Client> {
        let http = reqwest::blocking::Client::builder()
            // exports can run long; individual reads are bounded instead
            .timeout(None)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Client {
            base: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn check(resp: reqwest::blocking::Response) -> anyhow::Result<reqwest::blocking::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!("{} {}: {}", status.as_u16(), e.error, e.message),
            Err(_) => bail!("{}: {}", status, text),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .with_context(|| format!("GET {path}"))?;
        Ok(Self::check(resp)?.json()?)
    }

    fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .with_context(|| format!("POST {path}"))?;
        Ok(Self::check(resp)?.json()?)
    }

    /// Imports prompts (sent as JSONL).
    pub fn import_prompts(&self, prompts: &[PromptImport]) -> anyhow::Result<ImportResult> {
        let mut body = String::new();
        for p in prompts {
            body.push_str(&serde_json::to_string(p)?);
            body.push('\n');
        }
        let resp = self
            .http
            .post(self.url("/api/prompts/import"))
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()?;
        Ok(Self::check(resp)?.json()?)
    }

    /// Creates comparisons in bulk.
    pub fn create_comparisons(
        &self,
        req: &CreateComparisons,
    ) -> anyhow::Result<CreatedComparisons> {
        self.post("/api/comparisons", req)
    }

    /// Progress of every batch.
    pub fn batches(&self) -> anyhow::Result<Vec<BatchProgress>> {
        self.get("/api/batches")
    }

    /// Progress of one batch.
    pub fn batch(&self, id: i64) -> anyhow::Result<BatchProgress> {
        self.get(&format!("/api/batches/{id}"))
    }

    /// A comparison with labels and consensus.
    pub fn comparison(&self, id: i64) -> anyhow::Result<ComparisonDetail> {
        self.get(&format!("/api/comparisons/{id}"))
    }

    /// The caller's next task (`None`: nothing to do now).
    pub fn next_task(&self) -> anyhow::Result<Option<Task>> {
        let resp = self
            .http
            .post(self.url("/api/tasks/next"))
            .bearer_auth(&self.token)
            .send()?;
        let resp = Self::check(resp)?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Ok(Some(resp.json()?))
    }

    /// Submits a label (simulated labelers).
    pub fn submit_label(
        &self,
        comparison_id: i64,
        label: &SubmitLabel,
    ) -> anyhow::Result<LabelReceipt> {
        self.post(&format!("/api/tasks/{comparison_id}/label"), label)
    }

    /// Skips a task.
    pub fn skip(&self, comparison_id: i64) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(self.url(&format!("/api/tasks/{comparison_id}/skip")))
            .bearer_auth(&self.token)
            .send()?;
        Self::check(resp)?;
        Ok(())
    }

    /// Streams an export, calling `each` with every JSONL line (without the newline).
    pub fn export_lines(
        &self,
        query: &ExportQuery,
        mut each: impl FnMut(&str) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let resp = self
            .http
            .get(self.url("/api/export"))
            .bearer_auth(&self.token)
            .query(query)
            .send()?;
        let reader = BufReader::new(Self::check(resp)?);
        for line in reader.lines() {
            let line = line.context("reading export")?;
            if !line.is_empty() {
                each(&line)?;
            }
        }
        Ok(())
    }

    /// TRL preference rows, collected.
    pub fn export_trl(&self, mut query: ExportQuery) -> anyhow::Result<Vec<TrlRow>> {
        query.format = Some(ExportFormat::Trl);
        let mut rows = vec![];
        self.export_lines(&query, |l| {
            rows.push(serde_json::from_str(l)?);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Raw judgments, collected.
    pub fn export_raw(&self, mut query: ExportQuery) -> anyhow::Result<Vec<RawRow>> {
        query.format = Some(ExportFormat::Raw);
        let mut rows = vec![];
        self.export_lines(&query, |l| {
            rows.push(serde_json::from_str(l)?);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Creates a round.
    pub fn create_round(&self, req: &NewRound) -> anyhow::Result<Round> {
        self.post("/api/rounds", req)
    }

    /// Updates a round's status and/or metrics.
    pub fn update_round(&self, id: i64, req: &RoundUpdate) -> anyhow::Result<Round> {
        let resp = self
            .http
            .patch(self.url(&format!("/api/rounds/{id}")))
            .bearer_auth(&self.token)
            .json(req)
            .send()?;
        Ok(Self::check(resp)?.json()?)
    }

    /// `GET /api/rounds/{id}`: the round `id`.
    pub fn round(&self, id: i64) -> anyhow::Result<Round> {
        self.get(&format!("/api/rounds/{id}"))
    }

    /// All rounds, by id.
    pub fn rounds(&self) -> anyhow::Result<Vec<Round>> {
        self.get("/api/rounds")
    }

    /// Claims the oldest queued round (or a running one whose lease expired)
    /// for `req.worker`; `None` when there is nothing to claim.
    pub fn claim_round(&self, req: &RoundClaim) -> anyhow::Result<Option<Round>> {
        let resp = self
            .http
            .post(self.url("/api/rounds/claim"))
            .bearer_auth(&self.token)
            .json(req)
            .send()
            .context("POST /api/rounds/claim")?;
        let resp = Self::check(resp)?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Ok(Some(resp.json()?))
    }

    /// Extends the lease on round `id` and reports status, state and metrics.
    /// When the lease was lost (409) the error is a [`LeaseLost`] whose
    /// message says so.
    pub fn heartbeat_round(&self, id: i64, req: &RoundHeartbeat) -> anyhow::Result<Round> {
        let path = format!("/api/rounds/{id}/heartbeat");
        let resp = self
            .http
            .post(self.url(&path))
            .bearer_auth(&self.token)
            .json(req)
            .send()
            .with_context(|| format!("POST {path}"))?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            let text = resp.text().unwrap_or_default();
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.message)
                .unwrap_or(text);
            return Err(LeaseLost {
                round_id: id,
                message,
            }
            .into());
        }
        Ok(Self::check(resp)?.json()?)
    }

    /// Inter-annotator agreement of a batch.
    pub fn agreement(&self, batch_id: i64) -> anyhow::Result<BatchAgreement> {
        self.get(&format!("/api/batches/{batch_id}/agreement"))
    }

    /// Labels and skips per labeler.
    pub fn labelers(&self) -> anyhow::Result<Vec<LabelerProgress>> {
        self.get("/api/labelers")
    }

    /// Prompts with id greater than `after_id` (at most `limit`, 1-1000).
    pub fn prompts(&self, after_id: i64, limit: u32) -> anyhow::Result<Vec<Prompt>> {
        self.get(&format!("/api/prompts?after_id={after_id}&limit={limit}"))
    }

    /// Whether the server answers its health check.
    pub fn healthy(&self) -> bool {
        self.http
            .get(self.url("/healthz"))
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .is_ok_and(|r| r.status().is_success())
    }

    /// Every account (admin only).
    pub fn users(&self) -> anyhow::Result<Vec<UserInfo>> {
        self.get("/api/users")
    }

    /// Creates an account (admin only); `false` when the name is taken.
    pub fn create_user(&self, req: &NewUser) -> anyhow::Result<bool> {
        let resp = self
            .http
            .post(self.url("/api/users"))
            .bearer_auth(&self.token)
            .json(req)
            .send()
            .context("POST /api/users")?;
        if resp.status() == reqwest::StatusCode::CONFLICT {
            return Ok(false);
        }
        Self::check(resp)?;
        Ok(true)
    }

    /// A new API token for `username` (admin only; the secret is shown once).
    pub fn create_token(&self, username: &str, req: &NewToken) -> anyhow::Result<TokenCreated> {
        self.post(&format!("/api/users/{username}/tokens"), req)
    }
}

/// Whether an error of this client came from the transport (no connection,
/// a timeout, a cut body) rather than from the server's answer.
pub fn is_transport(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<reqwest::Error>().is_some())
}
