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
}
