//! The OpenAPI 3.1 document served at `/api/openapi.json`, generated with
//! utoipa from the request/response types in [`crate::api`] (their doc
//! comments are the schemas' descriptions) and the `#[utoipa::path]`
//! attributes of the handlers in [`crate::routes`]. A test checks that every
//! API route of the router appears in it.
use crate::api::{ErrorBody, ExportFormat, HhRow, RawRow, TrlRow};
use crate::routes;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// One row of `GET /api/export`: which one depends on the `format` asked for.
#[derive(serde::Serialize, ToSchema)]
#[allow(dead_code)] // only its schema is used
#[serde(untagged)]
pub enum ExportRow {
    /// `format=trl` (default): one row per ordered pair of the consensus.
    Trl(TrlRow),
    /// `format=hh`: transcripts.
    Hh(HhRow),
    /// `format=raw`: one row per label.
    Raw(RawRow),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "RLHF annotation server",
        description = "Researcher and labeler REST API. Authenticate with `Authorization: Bearer <token>` (`rlhf token create`). Errors are JSON `ErrorBody` with a 4xx/5xx status."
    ),
    servers((url = "/")),
    security(("bearer" = [])),
    modifiers(&Bearer, &Errors),
    components(schemas(ErrorBody, ExportFormat)),
    tags(
        (name = "accounts", description = "Users, API tokens and the audit log"),
        (name = "data", description = "Prompts, comparisons, progress, agreement and export"),
        (name = "labeling", description = "Tasks under a lease, labels and skips"),
        (name = "rounds", description = "Rounds for trainer workers: claims, heartbeats, updates"),
        (name = "operations", description = "Health, metrics and this document"),
    ),
    paths(
        routes::api::me,
        routes::api::list_users,
        routes::api::create_user,
        routes::api::disable_user,
        routes::api::list_tokens,
        routes::api::create_token,
        routes::api::revoke_token,
        routes::api::audit_log,
        routes::api::import_prompts,
        routes::api::list_prompts,
        routes::api::create_comparisons,
        routes::api::comparison,
        routes::api::batches,
        routes::api::batch,
        routes::api::agreement,
        routes::api::labelers,
        routes::api::export,
        routes::api::next_task,
        routes::api::submit_label,
        routes::api::skip,
        routes::api::list_rounds,
        routes::api::create_round,
        routes::api::claim_round,
        routes::api::round,
        routes::api::update_round,
        routes::api::heartbeat_round,
        routes::openapi_json,
        routes::healthz,
        routes::metrics,
    )
)]
struct ApiDoc;

/// The `bearer` security scheme every operation refers to (and no license).
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme =
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build());
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", scheme);
    }
}

/// The error statuses every `/api/` operation may answer, each with an
/// [`ErrorBody`] (see [`crate::error::AppError`]).
struct Errors;

const ERRORS: [(&str, &str); 8] = [
    ("400", "malformed input"),
    ("401", "missing or invalid token"),
    ("403", "role not allowed"),
    ("404", "not found"),
    ("409", "conflict with the current state"),
    ("413", "body too large"),
    ("415", "wrong content type"),
    ("422", "invalid input"),
];

impl Modify for Errors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/api/") || path == "/api/openapi.json" {
                continue;
            }
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ];
            for op in operations.into_iter().flatten() {
                for (status, description) in ERRORS {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| RefOr::T(error_response(description)));
                }
            }
        }
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

/// The OpenAPI document.
pub fn document() -> serde_json::Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_is_generated_from_the_types() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = &doc["components"]["schemas"];
        // descriptions come from the types' doc comments
        let round = &schemas["Round"];
        assert!(round["properties"]["lease_token"]["description"]
            .as_str()
            .unwrap()
            .contains("every heartbeat must send it back"));
        // typed views of the untyped wire fields
        assert_eq!(
            round["properties"]["status"]["$ref"],
            "#/components/schemas/RoundStatus"
        );
        assert!(schemas["RoundStatus"]["enum"]
            .as_array()
            .unwrap()
            .contains(&"cancelled".into()));
        assert!(schemas["RoundMetrics"]["properties"]["series"].is_object());
        assert_eq!(
            schemas["Prompt"]["properties"]["created_at"]["format"],
            "date-time"
        );
        assert_eq!(schemas["NewUser"]["properties"]["password"]["minLength"], 8);
        assert_eq!(schemas["PromptImport"]["additionalProperties"], false);
        // every API operation has the error responses and the bearer scheme
        let label = &doc["paths"]["/api/tasks/{id}/label"]["post"];
        assert_eq!(
            label["responses"]["409"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
        assert_eq!(label["description"], "Role: any (labeler).");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["paths"]["/healthz"]["get"]["responses"]["400"].is_null());
        assert_eq!(
            doc["paths"]["/api/rounds/claim"]["post"]["tags"][0],
            "rounds"
        );
        // every $ref resolves, and no rustdoc link syntax leaks into descriptions
        let text = doc.to_string();
        for part in text.split("#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas[name].is_object(), "dangling $ref {name}");
        }
        assert!(!text.contains("[`"), "rustdoc link in a description");
    }
}
