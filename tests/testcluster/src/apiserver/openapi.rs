//! A minimal OpenAPI v3 index (`/openapi/v3`) and per-group-version documents: just the PATCH
//! operations with their `x-kubernetes-group-version-kind` and the `fieldValidation` query
//! parameter, which is what kubectl checks to decide that the server validates fields itself.
//! No schemas and no strategic-merge request bodies (kubectl then uses its compiled-in types for
//! client-side apply). Pure.

use serde_json::{Map, Value, json};

use super::resources::ResourceTable;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub fn root(table: &ResourceTable) -> Value {
    let mut paths = Map::new();
    for r in table.all() {
        let p = gv_path(&r.group, &r.version);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=0")}),
        );
    }
    json!({"paths": paths})
}

pub fn group_version(table: &ResourceTable, gv: &str) -> Option<Value> {
    let mut paths = Map::new();
    for r in table
        .all()
        .into_iter()
        .filter(|r| gv_path(&r.group, &r.version) == gv)
    {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let op = json!({
            "operationId": format!("patch{}", r.kind),
            "parameters": [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
            ],
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": "patch",
            "x-kubernetes-group-version-kind": gvk,
        });
        let base = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{gv}/{}/{{name}}", r.plural)
        };
        paths.insert(base, json!({"patch": op}));
    }
    if paths.is_empty() {
        return None;
    }
    Some(
        json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.36.0"},
        "paths": paths, "components": {"schemas": {}}}),
    )
}
