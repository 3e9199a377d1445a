//! The controller's writes as the test cluster logged them, one line each with what the write
//! was: for a status write, which status fields it changed since the previous one (a write that
//! changes nothing says so), for a route its canary weight, for an Event its reason.

use std::time::SystemTime;

use serde_json::Value;
use sluice_testcluster::Write;

/// One line per write: time since `opened`, verb, resource, name and what it wrote.
pub fn listing(writes: &[Write], opened: SystemTime) -> String {
    let mut previous_status: Option<Value> = None;
    let mut out = String::new();
    for w in writes {
        let at = w.at.duration_since(opened).unwrap_or_default();
        let resource = if w.key.subresource.is_empty() {
            w.key.resource.clone()
        } else {
            format!("{}/{}", w.key.resource, w.key.subresource)
        };
        let body: Value = serde_json::from_str(&w.body).unwrap_or(Value::Null);
        let what = match (w.key.resource.as_str(), w.key.subresource.as_str()) {
            ("canaries", "status") => {
                let status = body["status"].clone();
                let changed = changed_fields(previous_status.as_ref(), &status);
                previous_status = Some(status.clone());
                format!(
                    "changed [{}] phase={} step={} weight={} message={}",
                    if changed.is_empty() {
                        "nothing".to_owned()
                    } else {
                        changed.join(", ")
                    },
                    status["phase"],
                    status["stepIndex"],
                    status["canaryWeight"],
                    status["message"]
                )
            }
            ("events", _) => format!(
                "{} {}",
                body["reason"].as_str().unwrap_or_default(),
                if body["series"].is_object() {
                    "(series: a repeat)"
                } else {
                    ""
                }
            ),
            ("httproutes", _) => format!(
                "canary weight {}",
                body["spec"]["rules"][0]["backendRefs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|b| b["name"].as_str().is_some_and(|n| n.ends_with("-canary")))
                    .map_or(0, |b| b["weight"].as_i64().unwrap_or(1))
            ),
            ("deployments", _) => format!(
                "replicas={} paused={} labels={}",
                body["spec"]["replicas"], body["spec"]["paused"], body["metadata"]["labels"]
            ),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  +{:>6.3}s {} {resource} {}: {what}\n",
            at.as_secs_f64(),
            w.key.verb,
            w.name
        ));
    }
    out
}

/// How many status writes change nothing since the previous one (the first is never counted).
pub fn status_writes_changing_nothing(writes: &[Write]) -> usize {
    let mut previous: Option<Value> = None;
    let mut unchanged = 0;
    for w in writes {
        if w.key.resource != "canaries" || w.key.subresource != "status" {
            continue;
        }
        let body: Value = serde_json::from_str(&w.body).unwrap_or(Value::Null);
        let status = body["status"].clone();
        if previous.as_ref() == Some(&status) {
            unchanged += 1;
        }
        previous = Some(status);
    }
    unchanged
}

/// The status fields that differ from `before` (all of them when there is no `before`).
fn changed_fields(before: Option<&Value>, after: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let after = after.as_object().unwrap_or(&empty);
    let Some(before) = before.and_then(Value::as_object) else {
        return after.keys().cloned().collect();
    };
    let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| {
            if *k == "conditions" {
                conditions_change(&before[k.as_str()], &after[k.as_str()])
            } else {
                k.clone()
            }
        })
        .collect()
}

/// Which parts of the conditions changed: their status or reason, or only their messages.
fn conditions_change(before: &Value, after: &Value) -> String {
    let strip = |v: &Value| -> Vec<(Value, Value, Value)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|c| (c["type"].clone(), c["status"].clone(), c["reason"].clone()))
            .collect()
    };
    if strip(before) == strip(after) {
        "conditions(message)".to_owned()
    } else {
        "conditions".to_owned()
    }
}
