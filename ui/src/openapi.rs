//! The API's OpenAPI 3.1 document (`/api/v1/openapi.json`), generated from the route
//! table in `roles`.

use axum::Json;
use serde_json::{Value, json};

use crate::roles::{API_ROUTES, PUBLIC_API_ROUTES};

/// The OpenAPI 3.1 document, generated from the route table.
pub fn openapi_document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in API_ROUTES.iter().chain(PUBLIC_API_ROUTES) {
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let roles: Vec<&str> = match r.action {
            None => vec!["any signed-in user"],
            Some(a) => crate::roles::PERMISSIONS
                .iter()
                .find(|(x, _)| *x == a)
                .map(|(_, roles)| roles.iter().map(|r| r.as_str()).collect())
                .unwrap_or_default(),
        };
        let public = PUBLIC_API_ROUTES.iter().any(|p| p.name == r.name);
        let op = json!({
            "operationId": r.name,
            "summary": r.summary,
            "description": if public { "Public.".to_string() } else { format!("Allowed roles: {}. Writes need the X-CSRF-Token header.", roles.join(", ")) },
            "parameters": params,
            "security": if public { json!([]) } else { json!([{"session": []}]) },
            "responses": {
                r.ok.to_string(): {"description": "success", "content": {"application/json": {}}},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        entry[r.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "portshift console API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": crate::auth::SESSION_COOKIE}},
            "schemas": {"Error": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "enum": ["unauthenticated", "not_found", "forbidden", "csrf", "rate_limited", "bad_request", "conflict", "invalid", "internal"]},
                        "message": {"type": "string"},
                        "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                }},
            }},
        },
    })
}

pub(crate) async fn openapi() -> Json<Value> {
    Json(openapi_document())
}
