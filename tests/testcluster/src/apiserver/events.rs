//! core/v1 and events.k8s.io/v1 Events are two views of the same objects, as in the real server:
//! one storage, each object kept in the shape of the API that last wrote it, converted on the way
//! out. Pure field renames (regarding/involvedObject, note/message, deprecated* fields).

use serde_json::{Map, Value, json};

use super::resources::ResourceInfo;

/// (core/v1 name, events.k8s.io/v1 name) of the renamed fields.
const RENAMES: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

pub fn is_event_api(ri: &ResourceInfo) -> bool {
    ri.plural == "events" && (ri.group.is_empty() || ri.group == "events.k8s.io")
}

fn rename(obj: &Value, to_core: bool, api_version: &str) -> Value {
    let mut out = Map::new();
    for (k, v) in obj.as_object().into_iter().flatten() {
        let renamed = RENAMES.iter().find_map(|(core, new)| {
            if to_core && k == new {
                Some(*core)
            } else if !to_core && k == core {
                Some(*new)
            } else {
                None
            }
        });
        out.insert(renamed.unwrap_or(k).to_string(), v.clone());
    }
    out.insert("apiVersion".into(), json!(api_version));
    out.insert("kind".into(), json!("Event"));
    Value::Object(out)
}

/// The object in the shape `ri` serves, if it is stored in the other Event shape.
pub fn convert_for(ri: &ResourceInfo, obj: &Value) -> Option<Value> {
    if !is_event_api(ri) {
        return None;
    }
    let stored_core = obj["apiVersion"] == "v1";
    let want_core = ri.group.is_empty();
    match (stored_core, want_core) {
        (true, false) => Some(rename(obj, false, "events.k8s.io/v1")),
        (false, true) => Some(rename(obj, true, "v1")),
        (true, true) | (false, false) => None,
    }
}

/// The API server's limits on an Event's fields, in bytes (`pkg/apis/core/validation/events.go`).
const ACTION_MAX: usize = 128;
const REASON_MAX: usize = 128;
const NOTE_MAX: usize = 1024;

/// What the real server checks beyond namespace and `eventTime` on an events.k8s.io/v1 write of
/// `new` (over `old` for an update), as (reason, field, message) causes: with an `eventTime`, a
/// non-empty `action` and `reason` of at most 128 bytes and a `note` of at most 1 kB; on update,
/// a changed `series` counting at least 2, and the fields that say what happened immutable. (So an
/// Event series can only count repeats: its note is the first occurrence's.)
pub fn validate_v1(new: &Value, old: Option<&Value>) -> Vec<(String, String, String)> {
    let mut causes = Vec::new();
    let text = |field: &str| new[field].as_str().unwrap_or_default().len();
    if !new["eventTime"].is_null() {
        for (field, path, max) in [
            ("action", "action", ACTION_MAX),
            ("reason", "reason", REASON_MAX),
        ] {
            if text(field) == 0 {
                causes.push((
                    "FieldValueRequired".into(),
                    path.into(),
                    "Required value".into(),
                ));
            }
            if text(field) > max {
                causes.push((
                    "FieldValueInvalid".into(),
                    path.into(),
                    format!("Invalid value: \"\": can have at most {max} characters"),
                ));
            }
        }
        if text("note") > NOTE_MAX {
            causes.push((
                "FieldValueInvalid".into(),
                "message".into(),
                format!("Invalid value: \"\": can have at most {NOTE_MAX} characters"),
            ));
        }
    }
    let Some(old) = old else {
        return causes;
    };
    if new["series"] != old["series"]
        && new["series"].is_object()
        && new["series"]["count"].as_i64().unwrap_or(0) < 2
    {
        causes.push((
            "FieldValueInvalid".into(),
            "series.count".into(),
            "Invalid value: \"\": should be at least 2".into(),
        ));
    }
    for (field, path) in [
        ("regarding", "involvedObject"),
        ("reason", "reason"),
        ("note", "message"),
        ("type", "type"),
        ("action", "action"),
        ("related", "related"),
        ("reportingController", "reportingController"),
        ("reportingInstance", "reportingInstance"),
    ] {
        if new[field] != old[field] {
            causes.push((
                "FieldValueInvalid".into(),
                path.into(),
                format!("Invalid value: {}: field is immutable", new[field]),
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::ResourceTable;

    #[test]
    fn an_events_v1_event_reads_as_a_core_event_and_back() {
        let t = ResourceTable::new(true);
        let core = t.get("", "v1", "events").unwrap();
        let new = t.get("events.k8s.io", "v1", "events").unwrap();
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Canary", "name": "web"}, "note": "promoted", "reason": "Promoted",
            "reportingController": "sluice"});
        let c = convert_for(&core, &ev).unwrap();
        assert_eq!(c["apiVersion"], "v1");
        assert_eq!(c["involvedObject"]["name"], "web");
        assert_eq!(c["message"], "promoted");
        assert_eq!(c["reportingComponent"], "sluice");
        assert_eq!(convert_for(&new, &c).unwrap(), ev);
        assert!(convert_for(&new, &ev).is_none());
    }

    #[test]
    fn an_events_v1_series_counts_repeats_and_keeps_what_happened() {
        let ev = json!({"eventTime": "2026-01-01T00:00:00.000000Z", "action": "Promote",
            "reason": "Promoted", "note": "revision abc promoted", "type": "Normal",
            "regarding": {"kind": "Canary", "name": "web"}, "reportingController": "sluice"});
        assert!(validate_v1(&ev, None).is_empty());
        let mut repeat = ev.clone();
        repeat["series"] = json!({"count": 2, "lastObservedTime": "2026-01-01T00:00:01.000000Z"});
        assert!(validate_v1(&repeat, Some(&ev)).is_empty());
        let fields = |causes: Vec<(String, String, String)>| -> Vec<String> {
            causes.into_iter().map(|(_, field, _)| field).collect()
        };
        let mut other = repeat.clone();
        other["note"] = json!("revision def promoted");
        assert_eq!(fields(validate_v1(&other, Some(&ev))), ["message"]);
        other["series"]["count"] = json!(1);
        assert_eq!(
            fields(validate_v1(&other, Some(&ev))),
            ["series.count", "message"]
        );
        let mut unnamed = ev.clone();
        unnamed["action"] = json!("");
        unnamed["reason"] = json!("R".repeat(129));
        unnamed["note"] = json!("n".repeat(1025));
        assert_eq!(
            fields(validate_v1(&unnamed, None)),
            ["action", "reason", "message"]
        );
    }
}
