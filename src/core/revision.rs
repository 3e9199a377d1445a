//! Revision identity: a hash of a pod template that does not change when the same template is
//! re-serialised (YAML or JSON, any key order, `null` or absent, empty maps and lists or absent),
//! and ignores what Kubernetes adds to a template on its own (`pod-template-hash`,
//! `creationTimestamp`). Pure.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Hex characters of the SHA-256 kept as the revision.
pub const REVISION_LEN: usize = 10;

/// The revision of a Deployment's current pod template (the hash of `null` when it has no spec).
/// The one way the controller, the plugin and every other reader name a Deployment's revision.
pub fn deployment_revision(deployment: &k8s_openapi::api::apps::v1::Deployment) -> String {
    let template = deployment
        .spec
        .as_ref()
        .and_then(|spec| serde_json::to_value(&spec.template).ok())
        .unwrap_or(Value::Null);
    template_hash(&template)
}

/// The revision (10 hex characters of SHA-256 over the canonical form) of a pod template given
/// as JSON (`spec.template` of a Deployment).
pub fn template_hash(template: &Value) -> String {
    let mut template = template.clone();
    if let Some(metadata) = template.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("creationTimestamp");
        if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_object_mut) {
            labels.remove("pod-template-hash");
        }
    }
    let mut canonical = String::new();
    if let Some(pruned) = prune(&template) {
        write_canonical(&pruned, &mut canonical);
    }
    let digest = Sha256::digest(canonical.as_bytes());
    let mut hex = String::with_capacity(REVISION_LEN);
    for byte in digest.iter().take(REVISION_LEN.div_ceil(2)) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex.truncate(REVISION_LEN);
    hex
}

/// Drops nulls and (after pruning) empty maps and lists; `None` when nothing is left.
fn prune(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let pruned: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k.clone(), v)))
                .collect();
            (!pruned.is_empty()).then_some(Value::Object(pruned))
        }
        Value::Array(items) => {
            let pruned: Vec<Value> = items.iter().filter_map(prune).collect();
            (!pruned.is_empty()).then_some(Value::Array(pruned))
        }
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Some(value.clone()),
    }
}

/// JSON with object keys sorted, whatever order the map keeps them in. Numbers are written in
/// one form for integers and floats alike so `1` and `1.0` are the same value.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                out.push_str(&format!("{}", f as i64));
            }
            _ => out.push_str(&n.to_string()),
        },
        Value::Bool(_) | Value::String(_) | Value::Null => out.push_str(&value.to_string()),
    }
}
