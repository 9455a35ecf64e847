//! The OpenAPI 3.1 document served at `/api/openapi.json`. Written by hand
//! next to the types in [`crate::api`]; a test checks that every API route of
//! the router appears here.
use serde_json::{json, Value};

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": schema}}})
}

fn errors() -> Value {
    let e = |d: &str| json!({"description": d, "content": {"application/json": {"schema": r("ErrorBody")}}});
    json!({
        "400": e("malformed input"), "401": e("missing or invalid token"), "403": e("role not allowed"),
        "404": e("not found"), "409": e("conflict with the current state"), "413": e("body too large"),
        "415": e("wrong content type"), "422": e("invalid input")
    })
}

fn op(summary: &str, role: &str, params: Value, body: Option<Value>, responses: Value) -> Value {
    let mut resp = errors();
    for (k, v) in responses.as_object().expect("object").iter() {
        resp[k] = v.clone();
    }
    let mut o = json!({
        "summary": summary,
        "description": format!("Role: {role}."),
        "parameters": params,
        "responses": resp,
        "security": [{"bearer": []}]
    });
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

fn json_body(schema: Value) -> Option<Value> {
    Some(json!({"required": true, "content": {"application/json": {"schema": schema}}}))
}

fn path_id(name: &str, ty: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": ty}})
}

fn query(name: &str, schema: Value, desc: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": desc})
}

fn paging() -> Value {
    json!([
        query(
            "after_id",
            json!({"type": "integer"}),
            "only items with a greater id"
        ),
        query(
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
            "page size (default 100)"
        )
    ])
}

fn obj(required: &[&str], props: Value) -> Value {
    json!({"type": "object", "required": required, "properties": props})
}

fn schemas() -> Value {
    let int = json!({"type": "integer"});
    let s = json!({"type": "string"});
    let ns = json!({"type": ["string", "null"]});
    let nint = json!({"type": ["integer", "null"]});
    let time = json!({"type": "string", "format": "date-time"});
    let arr = |v: Value| json!({"type": "array", "items": v});
    json!({
        "ErrorBody": obj(&["error", "message"], json!({"error": s, "message": s})),
        "Role": {"type": "string", "enum": ["labeler", "researcher", "admin"]},
        "Strength": {"type": "string", "enum": ["significantly_better", "better", "slightly_better", "negligibly_better"],
                     "description": "Llama-2 levels; export margin 3/2/1/0"},
        "Safety": {"type": "string", "enum": ["preferred_safe_only", "both_safe", "both_unsafe"]},
        "ChatMessage": obj(&["role", "content"], json!({"role": {"type": "string", "enum": ["system", "user", "assistant"]}, "content": s})),
        "PromptImport": {
            "type": "object", "additionalProperties": false,
            "description": "One JSONL line; give exactly one of prompt or messages (ending with a user turn).",
            "properties": {"id": s, "prompt": s, "messages": arr(r("ChatMessage")), "tags": arr(s.clone()), "source": s}
        },
        "ImportResult": obj(&["imported", "prompt_ids"], json!({"imported": int, "prompt_ids": arr(int.clone())})),
        "Prompt": obj(&["id", "messages", "tags", "created_at"], json!({"id": int, "external_id": ns, "messages": arr(r("ChatMessage")), "tags": arr(s.clone()), "source": ns, "created_at": time})),
        "NewResponse": {"type": "object", "required": ["text"], "additionalProperties": false,
            "properties": {"text": s, "model": s, "round_id": int, "sampling": {"type": "object"}}},
        "NewComparison": {"type": "object", "required": ["responses"], "additionalProperties": false,
            "description": "Exactly one of prompt_id / prompt_external_id; 2-16 responses.",
            "properties": {"prompt_id": int, "prompt_external_id": s, "responses": arr(r("NewResponse"))}},
        "CreateComparisons": {"type": "object", "required": ["batch", "comparisons"], "additionalProperties": false,
            "properties": {"batch": s, "labels_wanted": {"type": "integer", "minimum": 1, "maximum": 100}, "round_id": int, "comparisons": arr(r("NewComparison"))}},
        "CreatedComparisons": obj(&["batch_id", "comparison_ids"], json!({"batch_id": int, "comparison_ids": arr(int.clone())})),
        "LabelerProgress": obj(&["labeler_id", "username", "labels", "skips"], json!({"labeler_id": int, "username": s, "labels": int, "skips": int})),
        "BatchProgress": obj(&["batch_id", "name", "labels_wanted", "comparisons", "complete", "labels", "remaining_labels", "labelers", "created_at"],
            json!({"batch_id": int, "name": s, "round_id": nint, "labels_wanted": int, "comparisons": int, "complete": int, "labels": int,
                   "remaining_labels": int, "labelers": arr(r("LabelerProgress")), "created_at": time})),
        "TaskResponse": obj(&["position", "text"], json!({"position": int, "text": s})),
        "Task": obj(&["comparison_id", "batch_id", "prompt", "tags", "responses", "lease_expires_at"],
            json!({"comparison_id": int, "batch_id": int, "prompt": arr(r("ChatMessage")), "tags": arr(s.clone()), "responses": arr(r("TaskResponse")), "lease_expires_at": time})),
        "SubmitLabel": {"type": "object", "required": ["ranking", "strength"], "additionalProperties": false,
            "properties": {"ranking": {"type": "array", "items": {"type": "integer", "minimum": 1}, "description": "rank per response position, 1 = best, ties share a rank"},
                           "strength": r("Strength"), "safety": r("Safety"), "edited_response": s, "note": s, "time_spent_ms": int}},
        "LabelReceipt": obj(&["label_id", "comparison_id", "comparison_complete"], json!({"label_id": int, "comparison_id": int, "comparison_complete": {"type": "boolean"}})),
        "ResponseView": obj(&["id", "position", "text"], json!({"id": int, "position": int, "text": s, "model": ns, "round_id": nint, "sampling": {}})),
        "LabelView": obj(&["id", "labeler_id", "username", "ranking", "strength", "created_at"],
            json!({"id": int, "labeler_id": int, "username": s, "ranking": arr(int.clone()), "strength": r("Strength"), "safety": {"oneOf": [r("Safety"), {"type": "null"}]},
                   "edited_response": ns, "note": ns, "time_spent_ms": nint, "created_at": time})),
        "Consensus": {"type": "object", "description": "Borda count: order by mean rank; agreement = fraction of labelers' pairwise choices matching the consensus.",
            "properties": {"ranking": arr(int.clone()), "mean_ranks": arr(json!({"type": "number"})), "labels": int, "mean_margin": {"type": "number"}, "agreement": {"type": "number"}}},
        "ComparisonDetail": obj(&["id", "batch_id", "state", "labels_wanted", "labels_done", "prompt_id", "prompt", "responses", "labels"],
            json!({"id": int, "batch_id": int, "state": {"type": "string", "enum": ["open", "complete"]}, "labels_wanted": int, "labels_done": int, "prompt_id": int,
                   "prompt": arr(r("ChatMessage")), "responses": arr(r("ResponseView")), "labels": arr(r("LabelView")), "consensus": {"oneOf": [r("Consensus"), {"type": "null"}]}})),
        "LabelerAgreement": obj(&["labeler_id", "username", "pairs", "agreed", "agreement"], json!({"labeler_id": int, "username": s, "pairs": int, "agreed": int, "agreement": {"type": "number"}})),
        "BatchAgreement": obj(&["batch_id", "units", "labelers"], json!({"batch_id": int, "krippendorff_alpha": {"type": ["number", "null"]}, "units": int, "labelers": arr(r("LabelerAgreement"))})),
        "TrlRow": obj(&["prompt", "chosen", "rejected", "margin"], json!({"prompt": arr(r("ChatMessage")), "chosen": arr(r("ChatMessage")), "rejected": arr(r("ChatMessage")), "margin": {"type": "number"}})),
        "HhRow": obj(&["chosen", "rejected"], json!({"chosen": s, "rejected": s})),
        "RawRow": {"type": "object", "description": "One label with its comparison, prompt and responses."},
        "UserInfo": obj(&["id", "username", "role", "disabled", "created_at"], json!({"id": int, "username": s, "role": r("Role"), "disabled": {"type": "boolean"}, "created_at": time})),
        "NewUser": {"type": "object", "required": ["username", "password", "role"], "additionalProperties": false,
            "properties": {"username": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}, "password": {"type": "string", "minLength": 8}, "role": r("Role")}},
        "NewToken": {"type": "object", "additionalProperties": false, "properties": {"name": s,
            "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650, "description": "default: never expires"}}},
        "TokenCreated": obj(&["username", "token", "id"], json!({"username": s, "token": s, "id": int, "expires_at": {"type": "string", "format": "date-time"}})),
        "TokenInfo": obj(&["id", "username", "name", "created_at", "expires_at", "last_used_at"], json!({"id": int, "username": s, "name": s, "created_at": time,
            "expires_at": {"type": ["string", "null"], "format": "date-time"}, "last_used_at": {"type": ["string", "null"], "format": "date-time", "description": "updated at most once a minute"}})),
        "NewRound": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {"name": s, "config": {"type": "object"},
            "status": {"type": "string", "enum": ["created", "queued"], "description": "initial status (default created); queued rounds are offered to workers"}}},
        "RoundUpdate": {"type": "object", "additionalProperties": false, "description": "A status change releases the lease. By hand: created <-> queued; queued from running, failed or cancelled; failed from running; cancelled from anything but done (409 otherwise: running comes only from a claim, done only from the worker).",
            "properties": {"status": {"type": "string", "enum": ["created", "queued", "failed", "cancelled"]}, "reason": {"type": "string", "maxLength": 500, "description": "kept in the audit log"}, "metrics": {"type": "object"}}},
        "RoundClaim": {"type": "object", "required": ["worker"], "additionalProperties": false, "properties": {
            "worker": {"type": "string", "minLength": 1, "maxLength": 100, "description": "becomes the round's lease_owner"},
            "lease_seconds": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "default 300"}}},
        "RoundHeartbeat": {"type": "object", "required": ["worker", "lease_token"], "additionalProperties": false,
            "description": "Fields left out are kept. A status other than running (done, failed, queued) releases the lease.",
            "properties": {"worker": {"type": "string", "minLength": 1, "maxLength": 100}, "lease_token": {"type": "string", "description": "the lease_token of the claim's response"}, "lease_seconds": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "new lease from now; default 300"},
                "status": {"type": "string", "enum": ["running", "done", "failed", "queued"]}, "state": {"type": "object"}, "metrics": {"type": "object"}}},
        "Round": obj(&["id", "name", "config", "status", "metrics", "created_at", "updated_at", "state"], json!({"id": int, "name": s, "config": {"type": "object"},
            "status": {"type": "string", "enum": ["created", "queued", "running", "done", "failed", "cancelled"]},
            "metrics": {"type": "object", "description": "Trainer conventions: summary = {name: number} (gold_reward, rm_accuracy, kl, win_rate, label_agreement, ...); series = {name: [[x, y], ...]} (rm_loss, policy_loss, reward, kl, ...); progress = {step: sample|label|reward_model|policy|eval|done, detail: string}"},
            "created_at": time, "updated_at": time, "lease_owner": ns, "lease_expires_at": {"type": ["string", "null"], "format": "date-time"},
            "lease_token": {"type": "string", "description": "only in a claim's response: the lease's secret, to send with every heartbeat"},
            "state": {"type": "object", "description": "the worker's resumable state"}})),
        "AuditEntry": obj(&["id", "action", "detail", "created_at"], json!({"id": int, "user_id": nint, "action": s, "detail": {}, "created_at": time}))
    })
}

/// The OpenAPI document.
pub fn document() -> Value {
    let none = json!([]);
    let id = json!([path_id("id", "integer")]);
    let user = json!([path_id("username", "string")]);
    let arr = |v: Value| json!({"type": "array", "items": v});
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "RLHF annotation server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Researcher and labeler REST API. Authenticate with `Authorization: Bearer <token>` (`rlhf token create`). Errors are JSON `ErrorBody` with a 4xx/5xx status."
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas()
        },
        "paths": {
            "/api/me": {"get": op("The caller's account", "any", none.clone(), None, json!({"200": ok("the caller", json!({"type": "object"}))}))},
            "/api/users": {
                "get": op("List users", "admin", none.clone(), None, json!({"200": ok("users", arr(r("UserInfo")))})),
                "post": op("Create a user", "admin", none.clone(), json_body(r("NewUser")), json!({"201": ok("created", r("UserInfo"))}))
            },
            "/api/users/{username}/disable": {"post": op("Disable a user", "admin", user.clone(), None, json!({"200": ok("disabled", r("UserInfo"))}))},
            "/api/users/{username}/tokens": {
                "get": op("List a user's API tokens (never the secrets)", "admin", user.clone(), None, json!({"200": ok("tokens", arr(r("TokenInfo")))})),
                "post": op("Create an API token for a user", "admin", user, json_body(r("NewToken")), json!({"201": ok("the token (shown once)", r("TokenCreated"))}))
            },
            "/api/tokens/{id}": {"delete": op("Revoke an API token (at once, on every server sharing the database)", "admin", id.clone(), None, json!({"204": {"description": "revoked"}}))},
            "/api/audit": {"get": op("Audit log", "admin", paging(), None, json!({"200": ok("entries", arr(r("AuditEntry")))}))},
            "/api/prompts/import": {"post": op("Import prompts (JSONL, all or nothing)", "researcher", none.clone(),
                Some(json!({"required": true, "content": {"application/x-ndjson": {"schema": r("PromptImport")}}})),
                json!({"201": ok("imported", r("ImportResult"))}))},
            "/api/prompts": {"get": op("List prompts", "researcher", paging(), None, json!({"200": ok("prompts", arr(r("Prompt")))}))},
            "/api/comparisons": {"post": op("Create comparisons from generated responses (bulk, into a batch)", "researcher", none.clone(),
                json_body(r("CreateComparisons")), json!({"201": ok("created", r("CreatedComparisons"))}))},
            "/api/comparisons/{id}": {"get": op("A comparison with labels and consensus", "researcher", id.clone(), None, json!({"200": ok("comparison", r("ComparisonDetail"))}))},
            "/api/batches": {"get": op("Progress of every batch", "researcher", none.clone(), None, json!({"200": ok("batches", arr(r("BatchProgress")))}))},
            "/api/batches/{id}": {"get": op("Progress of a batch", "researcher", id.clone(), None, json!({"200": ok("batch", r("BatchProgress"))}))},
            "/api/batches/{id}/agreement": {"get": op("Inter-annotator agreement (Krippendorff's alpha on pairwise choices) and agreement with consensus", "researcher", id.clone(), None, json!({"200": ok("agreement", r("BatchAgreement"))}))},
            "/api/labelers": {"get": op("Labels and skips per labeler", "researcher", none.clone(), None, json!({"200": ok("labelers", arr(r("LabelerProgress")))}))},
            "/api/export": {"get": op("Export preference data as streamed JSONL", "researcher", json!([
                    query("format", json!({"type": "string", "enum": ["trl", "hh", "raw"]}), "trl (default): prompt/chosen/rejected/margin, one row per ordered pair of the consensus; hh: transcripts; raw: one row per label"),
                    query("batch_id", json!({"type": "integer"}), "only this batch"),
                    query("round_id", json!({"type": "integer"}), "only batches of this round"),
                    query("since", json!({"type": "string"}), "labels at or after (RFC 3339 or YYYY-MM-DD)"),
                    query("until", json!({"type": "string"}), "labels before (RFC 3339 or YYYY-MM-DD)")
                ]), None, json!({"200": {"description": "JSONL rows (TrlRow, HhRow or RawRow)", "content": {"application/x-ndjson": {"schema": {"oneOf": [r("TrlRow"), r("HhRow"), r("RawRow")]}}}}}))},
            "/api/tasks/next": {"post": op("Lease the caller's next task (POST: it changes state)", "any (labeler)", none.clone(), None, json!({"200": ok("a task", r("Task")), "204": {"description": "nothing to label now"}}))},
            "/api/tasks/{id}/label": {"post": op("Submit a label for a comparison the caller holds a lease on (409 without one)", "any (labeler)", id.clone(), json_body(r("SubmitLabel")), json!({"201": ok("stored", r("LabelReceipt"))}))},
            "/api/tasks/{id}/skip": {"post": op("Skip a comparison (never offered again)", "any (labeler)", id, None, json!({"204": {"description": "skipped"}}))},
            "/api/rounds": {
                "get": op("List rounds", "researcher", none.clone(), None, json!({"200": ok("rounds", arr(r("Round")))})),
                "post": op("Create a round", "researcher", none.clone(), json_body(r("NewRound")), json!({"201": ok("created", r("Round"))}))
            },
            "/api/rounds/claim": {"post": op("Claim the oldest queued round (or a running one whose lease expired) for a worker: it becomes running under a lease whose secret lease_token only this response carries. Race-free: concurrent claimers never get the same round.", "researcher", none.clone(),
                json_body(r("RoundClaim")), json!({"200": ok("the claimed round", r("Round")), "204": {"description": "nothing to claim"}}))},
            "/api/rounds/{id}/heartbeat": {"post": op("Extend the worker's lease and report status, state and metrics; 409 when the lease token is not the round's current lease (lost or never held)", "researcher", json!([path_id("id", "integer")]),
                json_body(r("RoundHeartbeat")), json!({"200": ok("updated", r("Round"))}))},
            "/api/rounds/{id}": {
                "get": op("A round", "researcher", json!([path_id("id", "integer")]), None, json!({"200": ok("round", r("Round"))})),
                "patch": op("Update a round's status and metrics", "researcher", json!([path_id("id", "integer")]), json_body(r("RoundUpdate")), json!({"200": ok("updated", r("Round"))}))
            },
            "/api/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/healthz": {"get": {"summary": "Health check (database ping)", "security": [], "responses": {"200": {"description": "ok"}, "503": {"description": "database unavailable"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (researcher or admin token, unless the server runs with --metrics-public)", "responses": {"200": {"description": "text exposition format"}, "401": {"description": "no token"}}}}
        }
    })
}
