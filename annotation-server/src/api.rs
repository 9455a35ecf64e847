//! Request and response types of the REST API, shared by the server and its
//! clients (the trainer) so that the two cannot drift.
//!
//! These are plain serde structs: using them needs neither the database nor the
//! HTTP server. Timestamps are RFC 3339 strings in UTC.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[cfg(feature = "client")]
pub mod client;

/// What an account may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Labels comparisons (UI and task API); nothing else.
    Labeler,
    /// Imports prompts, creates comparisons, reads progress, exports data.
    Researcher,
    /// Everything a researcher may do, plus user management and the audit log.
    Admin,
}

impl Role {
    /// The name stored in the database and used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Labeler => "labeler",
            Role::Researcher => "researcher",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name (`labeler`, `researcher`, `admin`).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "labeler" => Some(Role::Labeler),
            "researcher" => Some(Role::Researcher),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Researchers and admins may manage data and read results.
    pub fn is_researcher(self) -> bool {
        matches!(self, Role::Researcher | Role::Admin)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat message (`role` is e.g. `system`, `user`, `assistant`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// One line of a prompt import (JSONL). Give either `prompt` (plain text,
/// stored as one user message) or `messages` (a whole chat history).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PromptImport {
    /// The importer's own id for the prompt; unique when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Plain-text prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Chat history; must end with a user message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<ChatMessage>>,
    /// Tags such as `safety`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Where the prompt comes from (data set name, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Result of `POST /api/prompts/import`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ImportResult {
    /// Number of prompts created.
    pub imported: usize,
    /// Their ids, in input order.
    pub prompt_ids: Vec<i64>,
}

/// A stored prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Prompt {
    /// The server's id for the prompt.
    pub id: i64,
    /// The importer's id, if any.
    pub external_id: Option<String>,
    /// The chat history (a plain prompt is one user message).
    pub messages: Vec<ChatMessage>,
    /// Tags given at import (e.g. `safety`).
    pub tags: Vec<String>,
    /// Where the prompt comes from, as given at import.
    pub source: Option<String>,
    /// When it was imported.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
}

/// A generated response to be compared.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewResponse {
    /// The model output.
    pub text: String,
    /// The checkpoint that generated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The round it was generated in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<i64>,
    /// Sampling settings (temperature, top_p, ...), free-form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub sampling: Option<serde_json::Value>,
}

/// One comparison to create: a prompt (by server id or external id) and 2..=16 responses.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewComparison {
    /// Server id of the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<i64>,
    /// Or the importer's id of the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_external_id: Option<String>,
    /// The responses, in display order.
    pub responses: Vec<NewResponse>,
}

/// Body of `POST /api/comparisons`: comparisons created in bulk into a batch.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateComparisons {
    /// Batch name; created if it does not exist.
    pub batch: String,
    /// Distinct labelers wanted per comparison (new batches only; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 100))]
    pub labels_wanted: Option<u32>,
    /// Round the batch belongs to (new batches only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<i64>,
    /// The comparisons to create, in order.
    pub comparisons: Vec<NewComparison>,
}

/// Result of `POST /api/comparisons`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct CreatedComparisons {
    /// The batch they were added to.
    pub batch_id: i64,
    /// Ids of the new comparisons, in input order.
    pub comparison_ids: Vec<i64>,
}

/// Progress of one batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct BatchProgress {
    /// The batch's id.
    pub batch_id: i64,
    /// The batch's (unique) name.
    pub name: String,
    /// The round the batch belongs to, if any.
    pub round_id: Option<i64>,
    /// Labels wanted per comparison.
    pub labels_wanted: i32,
    /// Comparisons in the batch.
    pub comparisons: i64,
    /// Comparisons with all their labels.
    pub complete: i64,
    /// Labels submitted so far.
    pub labels: i64,
    /// Labels still wanted.
    pub remaining_labels: i64,
    /// Per-labeler counts.
    pub labelers: Vec<LabelerProgress>,
    /// When the batch was created.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
}

/// What one labeler has done (in a batch, or overall).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LabelerProgress {
    /// The labeler's user id.
    pub labeler_id: i64,
    /// The labeler's user name.
    pub username: String,
    /// Labels submitted.
    pub labels: i64,
    /// Comparisons skipped.
    pub skips: i64,
}

/// A comparison handed to a labeler under a lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Task {
    /// The comparison to label.
    pub comparison_id: i64,
    /// The batch of the comparison.
    pub batch_id: i64,
    /// The prompt's chat history.
    pub prompt: Vec<ChatMessage>,
    /// Prompt tags (e.g. `safety`).
    pub tags: Vec<String>,
    /// The responses, in display order.
    pub responses: Vec<TaskResponse>,
    /// When the lease ends and the task may go to someone else.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub lease_expires_at: String,
}

/// A response as shown to a labeler (no model name: labeling is blind).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TaskResponse {
    /// 0-based display position; `ranking` refers to it.
    pub position: usize,
    /// The model output (untrusted text).
    pub text: String,
}

/// How much better the top response is than the next (Llama-2's 4 levels;
/// the export's margin is 3/2/1/0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strength {
    /// Clearly better (margin 3).
    SignificantlyBetter,
    /// Better (margin 2).
    Better,
    /// A little better (margin 1).
    SlightlyBetter,
    /// Negligibly better, or unsure (margin 0).
    NegligiblyBetter,
}

impl Strength {
    /// All levels, strongest first.
    pub const ALL: [Strength; 4] = [
        Strength::SignificantlyBetter,
        Strength::Better,
        Strength::SlightlyBetter,
        Strength::NegligiblyBetter,
    ];

    /// Llama-2's reward-model margin for this level (3, 2, 1, 0).
    pub fn margin(self) -> f64 {
        match self {
            Strength::SignificantlyBetter => 3.0,
            Strength::Better => 2.0,
            Strength::SlightlyBetter => 1.0,
            Strength::NegligiblyBetter => 0.0,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Strength::SignificantlyBetter => "significantly_better",
            Strength::Better => "better",
            Strength::SlightlyBetter => "slightly_better",
            Strength::NegligiblyBetter => "negligibly_better",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Strength> {
        Strength::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Text shown to labelers.
    pub fn describe(self) -> &'static str {
        match self {
            Strength::SignificantlyBetter => "significantly better",
            Strength::Better => "better",
            Strength::SlightlyBetter => "slightly better",
            Strength::NegligiblyBetter => "negligibly better / unsure",
        }
    }
}

/// Llama-2's three safety classes for a compared pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Safety {
    /// The preferred response is safe and the other is not.
    PreferredSafeOnly,
    /// Both responses are safe.
    BothSafe,
    /// Both responses are unsafe.
    BothUnsafe,
}

impl Safety {
    /// All classes, in the order the labeling page offers them.
    pub const ALL: [Safety; 3] = [
        Safety::PreferredSafeOnly,
        Safety::BothSafe,
        Safety::BothUnsafe,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Safety::PreferredSafeOnly => "preferred_safe_only",
            Safety::BothSafe => "both_safe",
            Safety::BothUnsafe => "both_unsafe",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Safety> {
        Safety::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Text shown to labelers.
    pub fn describe(self) -> &'static str {
        match self {
            Safety::PreferredSafeOnly => "preferred is safe, other is not",
            Safety::BothSafe => "both safe",
            Safety::BothUnsafe => "both unsafe",
        }
    }
}

/// Body of `POST /api/tasks/{comparison_id}/label`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubmitLabel {
    /// Rank of each response by display position: 1 = best; ties share a rank.
    /// E.g. `[2, 1]` prefers the second response.
    pub ranking: Vec<u32>,
    /// Strength of the preference of the best response over the next.
    pub strength: Strength,
    /// Optional safety class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safety: Option<Safety>,
    /// Optional improved version of the best response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_response: Option<String>,
    /// Free-form note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Time the labeler spent, as measured by the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_spent_ms: Option<u64>,
}

/// Result of submitting a label.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LabelReceipt {
    /// The stored label.
    pub label_id: i64,
    /// The labeled comparison.
    pub comparison_id: i64,
    /// Whether the comparison now has all the labels it wants.
    pub comparison_complete: bool,
}

/// A stored label, as researchers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LabelView {
    /// The label's id.
    pub id: i64,
    /// The labeler's user id.
    pub labeler_id: i64,
    /// The labeler's user name.
    pub username: String,
    /// Rank of each response by display position (1 = best; ties share a rank).
    pub ranking: Vec<u32>,
    /// How much better the best response is than the next.
    pub strength: Strength,
    /// The safety class, if the labeler gave one.
    pub safety: Option<Safety>,
    /// The labeler's improved version of the best response, if any.
    pub edited_response: Option<String>,
    /// The labeler's free-form note, if any.
    pub note: Option<String>,
    /// Milliseconds the labeler spent, as measured by their client.
    pub time_spent_ms: Option<i64>,
    /// When it was submitted.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
}

/// A response as researchers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ResponseView {
    /// The response's id.
    pub id: i64,
    /// 0-based display position; rankings refer to it.
    pub position: usize,
    /// The model output.
    pub text: String,
    /// The checkpoint that generated it, if given.
    pub model: Option<String>,
    /// The round it was generated in, if given.
    pub round_id: Option<i64>,
    /// Sampling settings as given at creation (free-form).
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub sampling: Option<serde_json::Value>,
}

/// Consensus ranking of one comparison, derived from its labels.
///
/// Rule (Borda count): each response's score is its mean rank over the labels;
/// the consensus ranks responses by mean rank, equal means tie (competition
/// ranking: 1, 1, 3). `agreement` is the fraction of (labeler, pair) choices
/// that match the consensus's choice on that pair (better/tie/worse).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Consensus {
    /// Consensus rank per position.
    pub ranking: Vec<u32>,
    /// Mean rank per position.
    pub mean_ranks: Vec<f64>,
    /// How many labels were aggregated.
    pub labels: usize,
    /// Mean strength margin (3/2/1/0) over the labels.
    pub mean_margin: f64,
    /// Fraction of labelers' pairwise choices matching the consensus.
    pub agreement: f64,
}

/// A comparison with its responses, labels and consensus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ComparisonDetail {
    /// The comparison's id.
    pub id: i64,
    /// The batch it belongs to.
    pub batch_id: i64,
    /// `open` or `complete`.
    pub state: String,
    /// Distinct labelers wanted.
    pub labels_wanted: i32,
    /// Labels submitted so far.
    pub labels_done: i32,
    /// The prompt's id.
    pub prompt_id: i64,
    /// The prompt's chat history.
    pub prompt: Vec<ChatMessage>,
    /// The responses, by display position.
    pub responses: Vec<ResponseView>,
    /// Every label submitted for it.
    pub labels: Vec<LabelView>,
    /// Consensus, when there is at least one label.
    pub consensus: Option<Consensus>,
}

/// Inter-annotator agreement of one batch.
///
/// Units are (comparison, response pair) with at least two labels; each
/// labeler's value on a unit is nominal: first better, tie, second better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct BatchAgreement {
    /// The batch's id.
    pub batch_id: i64,
    /// Krippendorff's α (nominal) over pairwise choices; `None` when undefined
    /// (fewer than two labels on every unit, or no variation at all).
    pub krippendorff_alpha: Option<f64>,
    /// Number of pairable units.
    pub units: usize,
    /// Each labeler's agreement with the consensus.
    pub labelers: Vec<LabelerAgreement>,
}

/// One labeler's agreement with the consensus on multiply-labeled comparisons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct LabelerAgreement {
    /// The labeler's user id.
    pub labeler_id: i64,
    /// The labeler's user name.
    pub username: String,
    /// Pairwise choices compared with the consensus.
    pub pairs: usize,
    /// Of those, how many matched.
    pub agreed: usize,
    /// `agreed / pairs` (0 when `pairs` is 0).
    pub agreement: f64,
}

/// Export format of `GET /api/export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// TRL preference rows: conversational `prompt`, `chosen`, `rejected`, `margin`.
    Trl,
    /// Anthropic HH-RLHF rows: `chosen` / `rejected` transcripts.
    Hh,
    /// Every label with its comparison, one per line.
    Raw,
}

impl ExportFormat {
    /// The query-string name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Trl => "trl",
            ExportFormat::Hh => "hh",
            ExportFormat::Raw => "raw",
        }
    }
}

/// Filters of `GET /api/export` (query string).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(
    feature = "server",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
pub struct ExportQuery {
    /// Output format (default `trl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ExportFormat>,
    /// Only this batch (id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<i64>,
    /// Only batches of this round.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_id: Option<i64>,
    /// Only labels submitted at or after this time (RFC 3339 or `YYYY-MM-DD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Only labels submitted before this time (RFC 3339 or `YYYY-MM-DD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// One TRL preference row (conversational form).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TrlRow {
    /// The prompt's chat history.
    pub prompt: Vec<ChatMessage>,
    /// The preferred assistant turn.
    pub chosen: Vec<ChatMessage>,
    /// The other assistant turn.
    pub rejected: Vec<ChatMessage>,
    /// Mean strength margin of the labels behind this pair (Llama-2: 3/2/1/0).
    pub margin: f64,
}

/// One HH-RLHF row: whole transcripts `\n\nHuman: ...\n\nAssistant: ...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct HhRow {
    /// Transcript ending in the preferred response.
    pub chosen: String,
    /// Transcript ending in the other response.
    pub rejected: String,
}

/// One raw judgment: a label with everything needed to interpret it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RawRow {
    /// The label's id.
    pub label_id: i64,
    /// The labeled comparison's id.
    pub comparison_id: i64,
    /// The comparison's batch.
    pub batch_id: i64,
    /// The round of the batch, if any.
    pub round_id: Option<i64>,
    /// The prompt's id.
    pub prompt_id: i64,
    /// The prompt's chat history.
    pub prompt: Vec<ChatMessage>,
    /// The prompt's tags.
    pub tags: Vec<String>,
    /// The responses, by display position.
    pub responses: Vec<ResponseView>,
    /// The labeler's user id.
    pub labeler_id: i64,
    /// The labeler's user name.
    pub labeler: String,
    /// Rank of each response by display position (1 = best; ties share a rank).
    pub ranking: Vec<u32>,
    /// How much better the best response is than the next.
    pub strength: Strength,
    /// The safety class, if the labeler gave one.
    pub safety: Option<Safety>,
    /// The labeler's improved version of the best response, if any.
    pub edited_response: Option<String>,
    /// The labeler's free-form note, if any.
    pub note: Option<String>,
    /// Milliseconds the labeler spent, as measured by their client.
    pub time_spent_ms: Option<i64>,
    /// When it was submitted.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
}

/// An account as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct UserInfo {
    /// The user's id.
    pub id: i64,
    /// The login name.
    pub username: String,
    /// What the account may do.
    pub role: Role,
    /// Disabled accounts cannot log in or use tokens.
    pub disabled: bool,
    /// When it was created.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
}

/// The caller of `GET /api/me`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Me {
    /// The caller's user id.
    pub id: i64,
    /// The caller's login name.
    pub username: String,
    /// What the caller may do.
    pub role: Role,
}

/// Body of `POST /api/users` (admin).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1–64 characters of `[A-Za-z0-9_.-]`.
    #[cfg_attr(feature = "server", schema(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub username: String,
    /// At least 8 characters.
    #[cfg_attr(feature = "server", schema(min_length = 8))]
    pub password: String,
    /// What the account may do.
    pub role: Role,
}

/// Body of `POST /api/users/{username}/tokens` (admin) and `POST /api/me/tokens`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A label for the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The token stops working this many days after it is created (1–3650;
    /// default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 3650))]
    pub expires_in_days: Option<u32>,
}

/// A newly created API token: shown once, stored only hashed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TokenCreated {
    /// Whose token it is.
    pub username: String,
    /// The bearer token.
    pub token: String,
    /// The token's id (to list or revoke it).
    #[serde(default)]
    pub id: i64,
    /// When it stops working, if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub expires_at: Option<String>,
}

/// An API token as listed (never the secret itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    /// Token id (`DELETE /api/tokens/{id}` revokes it).
    pub id: i64,
    /// Whose token it is.
    pub username: String,
    /// The label given when it was created.
    pub name: String,
    /// When it was created.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
    /// When it stops working, if ever.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub expires_at: Option<String>,
    /// When it was last used (updated at most once a minute), if ever.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub last_used_at: Option<String>,
}

/// One audit-log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// The entry's id (increasing).
    pub id: i64,
    /// Acting user, if known.
    pub user_id: Option<i64>,
    /// What was done, e.g. `user.create`.
    pub action: String,
    /// What the action concerned (ids, names, reasons), as a JSON object.
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub detail: serde_json::Value,
    /// When it was done.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
}

/// Every error the API returns has this body, with a 4xx or 5xx status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `bad_request`, `forbidden`.
    pub error: String,
    /// Human-readable explanation.
    pub message: String,
}

/// Body of `POST /api/rounds`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewRound {
    /// A name, e.g. `round-3`.
    pub name: String,
    /// The round's configuration (free-form JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub config: Option<serde_json::Value>,
    /// Initial status: `created` (default) or `queued` (ready for a worker's claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<RoundStatus>))]
    pub status: Option<String>,
}

/// Body of `PATCH /api/rounds/{id}`: fields to change. A status other than
/// `running` also releases the round's lease.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RoundUpdate {
    /// New status, by hand: `created` ↔ `queued`; `queued` from `running`
    /// (hand back), `failed` or `cancelled`; `failed` from `running`;
    /// `cancelled` from anything but `done`. `running` is set only by a claim
    /// and `done` only by the worker's heartbeat (409 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<RoundStatus>))]
    pub status: Option<String>,
    /// Why (up to 500 characters), kept in the audit log; e.g. for a cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(max_length = 500))]
    pub reason: Option<String>,
    /// New metrics (replaces the old object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<RoundMetrics>))]
    pub metrics: Option<serde_json::Value>,
}

/// An alignment round: configuration, status and metrics (filled by the trainer).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct Round {
    /// The round's id.
    pub id: i64,
    /// Its name, e.g. `round-3`.
    pub name: String,
    /// Its configuration (JSON object; the worker's recipe, task, sizes ...).
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub config: serde_json::Value,
    /// Status: one of `RoundStatus` (`created`, `queued`, `running`,
    /// `done`, `failed`, `cancelled`); read it typed with `Round::status`.
    #[cfg_attr(feature = "server", schema(value_type = RoundStatus))]
    pub status: String,
    /// Metrics (JSON object). Conventions of the trainer worker, shown by the
    /// dashboard: `summary` = {name: number} (e.g. `gold_reward`,
    /// `rm_accuracy`, `kl`, `win_rate`, `label_agreement`), `series` =
    /// {name: [[x, y], ...]} (e.g. `rm_loss`, `policy_loss`, `reward`, `kl`),
    /// `progress` = {`step`: `sample|label|reward_model|policy|eval|done`,
    /// `detail`: text}. Read it typed with
    /// `Round::metrics_typed`.
    #[cfg_attr(feature = "server", schema(value_type = RoundMetrics))]
    pub metrics: serde_json::Value,
    /// When it was created.
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub created_at: String,
    /// When it last changed (status, metrics, state or lease).
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub updated_at: String,
    /// The worker holding the round's lease (while `running`).
    #[serde(default)]
    pub lease_owner: Option<String>,
    /// When that lease ends (RFC 3339); after it, another worker may claim the round.
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(format = DateTime))]
    pub lease_expires_at: Option<String>,
    /// The lease's secret, only in the response to the claim that took it:
    /// every heartbeat must send it back. The server keeps only its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<String>,
    /// The worker's resumable state (JSON object, `{}` when new).
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub state: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// Body of `POST /api/rounds/claim`: a worker asks for the next round to run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RoundClaim {
    /// The worker's name (1-100 characters); it becomes the round's `lease_owner`.
    #[cfg_attr(feature = "server", schema(min_length = 1, max_length = 100))]
    pub worker: String,
    /// Lease length in seconds (1-86400, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 86400))]
    pub lease_seconds: Option<u64>,
}

/// Body of `POST /api/rounds/{id}/heartbeat`: the lease holder extends its lease
/// and reports progress. Fields left out are kept.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RoundHeartbeat {
    /// The worker's name (for messages and the audit log).
    #[cfg_attr(feature = "server", schema(min_length = 1, max_length = 100))]
    pub worker: String,
    /// The `lease_token` the claim returned; must be the round's current
    /// lease (else 409: the lease was lost or never held).
    pub lease_token: String,
    /// New lease length in seconds from now (1-86400, default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(minimum = 1, maximum = 86400))]
    pub lease_seconds: Option<u64>,
    /// New status; anything but `running` (e.g. `done`, `failed`, or `queued`
    /// to hand the round back) releases the lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<RoundStatus>))]
    pub status: Option<String>,
    /// New resumable state (JSON object; replaces the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub state: Option<serde_json::Value>,
    /// New metrics (JSON object; replaces the old one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "server", schema(value_type = Option<RoundMetrics>))]
    pub metrics: Option<serde_json::Value>,
}

impl Round {
    /// The status, typed; `None` for a word that is not a [`RoundStatus`].
    pub fn status(&self) -> Option<RoundStatus> {
        self.status.parse().ok()
    }

    /// The metrics, typed (see [`RoundMetrics`]: entries that do not follow
    /// the conventions are left out, never an error).
    pub fn metrics_typed(&self) -> RoundMetrics {
        RoundMetrics::from_value(&self.metrics)
    }
}

/// Where a round is in its life. A researcher creates it (`created`) and
/// queues it (`queued`); a worker's claim makes it `running` under a lease,
/// and the worker's heartbeat ends it as `done` or `failed` (or hands it back
/// as `queued`). A researcher may cancel it (`cancelled`) unless it is `done`.
/// Sent and stored as the lowercase word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RoundStatus {
    /// New, not yet offered to workers.
    Created,
    /// Waiting for a worker's claim.
    Queued,
    /// Claimed by a worker, which holds its lease.
    Running,
    /// Finished by its worker (final).
    Done,
    /// Given up, by its worker or by hand.
    Failed,
    /// Stopped by a researcher.
    Cancelled,
}

impl RoundStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [RoundStatus; 6] = [
        RoundStatus::Created,
        RoundStatus::Queued,
        RoundStatus::Running,
        RoundStatus::Done,
        RoundStatus::Failed,
        RoundStatus::Cancelled,
    ];

    /// The word sent and stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RoundStatus::Created => "created",
            RoundStatus::Queued => "queued",
            RoundStatus::Running => "running",
            RoundStatus::Done => "done",
            RoundStatus::Failed => "failed",
            RoundStatus::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for RoundStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not a [`RoundStatus`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown round status `{0}`")]
pub struct UnknownRoundStatus(pub String);

impl std::str::FromStr for RoundStatus {
    type Err = UnknownRoundStatus;

    fn from_str(s: &str) -> Result<RoundStatus, UnknownRoundStatus> {
        RoundStatus::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| UnknownRoundStatus(s.to_string()))
    }
}

impl From<RoundStatus> for String {
    fn from(s: RoundStatus) -> String {
        s.as_str().to_string()
    }
}

/// A round's `metrics`, typed: the conventions the trainer worker writes and
/// the dashboard reads. Reading is lenient, as metrics come from workers of
/// any version: keys other than these three are kept in `extra`, and values
/// that do not follow the conventions (a summary entry that is not a number,
/// a point that is not two numbers, a `progress` that is not an object) are
/// left out instead of failing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RoundMetrics {
    /// What the worker is doing now.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::progress"
    )]
    pub progress: Option<RoundProgress>,
    /// Name → number, one value per round (e.g. `gold_reward`,
    /// `rm_accuracy`, `kl`, `win_rate`, `label_agreement`); the dashboard
    /// plots each over rounds.
    #[serde(default, deserialize_with = "lenient::summary")]
    pub summary: BTreeMap<String, f64>,
    /// Name → `[[x, y], ...]` within the round (e.g. `rm_loss`,
    /// `policy_loss`, `reward`, `kl` by step); one chart per entry.
    #[serde(default, deserialize_with = "lenient::series")]
    pub series: BTreeMap<String, Vec<(f64, f64)>>,
    /// Any other keys, kept as they are.
    #[serde(flatten)]
    #[cfg_attr(feature = "server", schema(ignore))]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// `metrics.progress`: the worker's current step and a line about it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
pub struct RoundProgress {
    /// `sample`, `label`, `reward_model`, `policy`, `eval` or `done`.
    #[serde(default)]
    pub step: String,
    /// Free text, e.g. how many labels are still wanted.
    #[serde(default)]
    pub detail: String,
}

impl RoundMetrics {
    /// Reads a round's `metrics` leniently (anything but a JSON object gives
    /// empty metrics).
    pub fn from_value(v: &serde_json::Value) -> RoundMetrics {
        serde_json::from_value(v.clone()).unwrap_or_default()
    }

    /// The JSON object to send as a round's `metrics`.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|_| empty_object())
    }
}

/// The lenient readers of [`RoundMetrics`]' fields: any JSON is accepted,
/// what does not fit is left out.
mod lenient {
    use super::RoundProgress;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;
    use std::collections::BTreeMap;

    pub fn progress<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RoundProgress>, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(v.as_object().map(|o| {
            let text = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            RoundProgress {
                step: text("step"),
                detail: text("detail"),
            }
        }))
    }

    pub fn summary<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        let v = Value::deserialize(d)?;
        Ok(v.as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_f64().map(|n| (k.clone(), n)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// An entry that is not an array is an empty series (its chart says "no
    /// data"); points that are not two numbers are left out.
    #[allow(clippy::type_complexity)]
    pub fn series<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, Vec<(f64, f64)>>, D::Error> {
        let v = Value::deserialize(d)?;
        let Some(o) = v.as_object() else {
            return Ok(BTreeMap::new());
        };
        Ok(o.iter()
            .map(|(k, v)| {
                let points = v
                    .as_array()
                    .map(|a| a.iter().filter_map(point).collect())
                    .unwrap_or_default();
                (k.clone(), points)
            })
            .collect())
    }

    fn point(p: &Value) -> Option<(f64, f64)> {
        match p.as_array()?.as_slice() {
            [x, y] => Some((x.as_f64()?, y.as_f64()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_status_words() {
        for s in RoundStatus::ALL {
            assert_eq!(s.as_str().parse::<RoundStatus>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
            assert_eq!(
                serde_json::from_value::<RoundStatus>(json!(s.as_str())).unwrap(),
                s
            );
        }
        assert_eq!(
            "Queued".parse::<RoundStatus>(),
            Err(UnknownRoundStatus("Queued".into()))
        );
        assert!(serde_json::from_value::<RoundStatus>(json!("banana")).is_err());
        assert_eq!(String::from(RoundStatus::Cancelled), "cancelled");
    }

    #[test]
    fn round_metrics_read_leniently() {
        let v = json!({
            "summary": {"gold_reward": 0.5, "kl": 1, "note": "x"},
            "series": {"rm_loss": [[0, 0.7], [1, 0.6], ["bad"], [2], [1, 2, 3]], "empty": [], "odd": 3},
            "progress": {"step": "eval", "extra": true},
            "worker_version": "1.2"
        });
        let m = RoundMetrics::from_value(&v);
        assert_eq!(m.summary.len(), 2);
        assert_eq!(m.summary["gold_reward"], 0.5);
        assert_eq!(m.summary["kl"], 1.0);
        assert_eq!(m.series["rm_loss"], vec![(0.0, 0.7), (1.0, 0.6)]);
        assert!(m.series["empty"].is_empty() && m.series["odd"].is_empty());
        let p = m.progress.as_ref().unwrap();
        assert_eq!((p.step.as_str(), p.detail.as_str()), ("eval", ""));
        assert_eq!(m.extra["worker_version"], "1.2");
        // nothing that is not an object, nor any odd field, is an error
        assert_eq!(
            RoundMetrics::from_value(&json!([1, 2])),
            RoundMetrics::default()
        );
        assert_eq!(
            RoundMetrics::from_value(&json!(null)),
            RoundMetrics::default()
        );
        let odd = RoundMetrics::from_value(&json!({"summary": 3, "series": "x", "progress": "y"}));
        assert!(odd.summary.is_empty() && odd.series.is_empty() && odd.progress.is_none());
    }

    #[test]
    fn round_metrics_round_trip() {
        let v = json!({
            "progress": {"step": "policy", "detail": "iteration 3/10"},
            "summary": {"win_rate": 0.6},
            "series": {"kl": [[0.0, 0.0], [1.0, 0.02]]},
            "note": {"any": ["thing"]}
        });
        let m = RoundMetrics::from_value(&v);
        assert_eq!(m.to_value(), v);
        assert_eq!(RoundMetrics::from_value(&m.to_value()), m);
    }

    #[test]
    fn round_typed_views() {
        let r = Round {
            id: 1,
            name: "r".into(),
            config: json!({}),
            status: "running".into(),
            metrics: json!({"summary": {"kl": 0.1}}),
            created_at: String::new(),
            updated_at: String::new(),
            lease_owner: None,
            lease_expires_at: None,
            lease_token: None,
            state: json!({}),
        };
        assert_eq!(r.status(), Some(RoundStatus::Running));
        assert_eq!(r.metrics_typed().summary["kl"], 0.1);
        let legacy = Round {
            status: "paused".into(),
            ..r
        };
        assert_eq!(legacy.status(), None);
    }
}
