//! `meta.k8s.io/v1 Table` answers for `Accept: ...;as=Table` (what `kubectl get` asks for): Name
//! and Age, plus a CRD's `additionalPrinterColumns` for simple `.a.b.c` JSONPaths. Pure.

use serde_json::{Value, json};

use super::resources::ResourceInfo;

fn simple_path<'a>(obj: &'a Value, path: &str) -> Option<&'a Value> {
    let p = path.trim_start_matches('.');
    let mut cur = obj;
    for seg in p.split('.') {
        if let Some((field, idx)) = seg.split_once('[') {
            cur = cur.get(field)?;
            let idx = idx.trim_end_matches(']');
            cur = cur.get(idx.parse::<usize>().ok()?)?;
        } else {
            cur = cur.get(seg)?;
        }
    }
    Some(cur)
}

fn cell(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => json!("<none>"),
        Some(Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
            v.cloned().unwrap_or(Value::Null)
        }
        Some(other) => json!(other.to_string()),
    }
}

pub fn to_table(ri: &ResourceInfo, body: &Value, single: bool) -> Value {
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
    let extra: Vec<(String, String)> = ri
        .printer_columns
        .iter()
        .filter(|c| c["name"] != "Age")
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["jsonPath"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for (n, _) in &extra {
        columns.push(
            json!({"name": n, "type": "string", "format": "", "description": n, "priority": 0}),
        );
    }
    columns.push(
        json!({"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}),
    );
    let items: Vec<Value> = if single {
        vec![body.clone()]
    } else {
        body["items"].as_array().cloned().unwrap_or_default()
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for (_, p) in &extra {
                cells.push(cell(simple_path(o, p)));
            }
            cells.push(json!(age(o["metadata"]["creationTimestamp"].as_str().unwrap_or_default())));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    let mut md = json!({});
    if !single {
        md = body["metadata"].clone();
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": md, "columnDefinitions": columns, "rows": rows})
}

fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = jiff::Timestamp::now().as_second() - t.as_second();
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
