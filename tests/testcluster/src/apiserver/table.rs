//! `meta.k8s.io/v1 Table` answers for `Accept: ...;as=Table` (what `kubectl get` asks for): Name,
//! kubectl's usual columns for Deployments, ReplicaSets, Services, Namespaces, ConfigMaps and
//! Leases, a CRD's `additionalPrinterColumns` for simple `.a.b.c` JSONPaths, and Age. Pure.

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

type Column = (String, Box<dyn Fn(&Value) -> Value>);

fn num(o: &Value, p: &str) -> i64 {
    o.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's usual columns for the built-in types sluice touches (between Name and Age).
fn builtin_columns(ri: &ResourceInfo) -> Vec<Column> {
    let col = |n: &str, f: Box<dyn Fn(&Value) -> Value>| (n.to_string(), f);
    match (ri.group.as_str(), ri.plural.as_str()) {
        ("apps", "deployments") => vec![
            col(
                "Ready",
                Box::new(|o| {
                    json!(format!(
                        "{}/{}",
                        num(o, "/status/readyReplicas"),
                        num(o, "/spec/replicas")
                    ))
                }),
            ),
            col(
                "Up-to-date",
                Box::new(|o| json!(num(o, "/status/updatedReplicas"))),
            ),
            col(
                "Available",
                Box::new(|o| json!(num(o, "/status/availableReplicas"))),
            ),
        ],
        ("apps", "replicasets") => vec![
            col("Desired", Box::new(|o| json!(num(o, "/spec/replicas")))),
            col("Current", Box::new(|o| json!(num(o, "/status/replicas")))),
            col(
                "Ready",
                Box::new(|o| json!(num(o, "/status/readyReplicas"))),
            ),
        ],
        ("", "services") => vec![
            col("Type", Box::new(|o| cell(o.pointer("/spec/type")))),
            col(
                "Cluster-IP",
                Box::new(|o| cell(o.pointer("/spec/clusterIP"))),
            ),
            col(
                "Port(s)",
                Box::new(|o| {
                    let ports: Vec<String> = o["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                        })
                        .collect();
                    json!(if ports.is_empty() {
                        "<none>".to_string()
                    } else {
                        ports.join(",")
                    })
                }),
            ),
        ],
        ("", "namespaces") => vec![col(
            "Status",
            Box::new(|o| cell(o.pointer("/status/phase"))),
        )],
        ("", "configmaps") => vec![col(
            "Data",
            Box::new(|o| json!(o["data"].as_object().map_or(0, |m| m.len()))),
        )],
        ("coordination.k8s.io", "leases") => vec![col(
            "Holder",
            Box::new(|o| cell(o.pointer("/spec/holderIdentity"))),
        )],
        _ => vec![],
    }
}

pub fn to_table(ri: &ResourceInfo, body: &Value, single: bool) -> Value {
    let mut extra: Vec<Column> = builtin_columns(ri);
    for c in ri.printer_columns.iter().filter(|c| c["name"] != "Age") {
        let path = c["jsonPath"].as_str().unwrap_or_default().to_string();
        extra.push((
            c["name"].as_str().unwrap_or_default().to_string(),
            Box::new(move |o: &Value| cell(simple_path(o, &path))),
        ));
    }
    let mut columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}),
    ];
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
            for (_, f) in &extra {
                cells.push(f(o));
            }
            cells.push(json!(age(o["metadata"]["creationTimestamp"].as_str().unwrap_or_default())));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    let md = if single {
        json!({})
    } else {
        body["metadata"].clone()
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::ResourceTable;

    #[test]
    fn a_deployment_table_row_shows_ready_over_desired() {
        let t = ResourceTable::new(true);
        let ri = t.get("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3}, "status": {"readyReplicas": 1, "updatedReplicas": 3}});
        let table = to_table(&ri, &d, true);
        assert_eq!(table["rows"][0]["cells"][0], "web");
        assert_eq!(table["rows"][0]["cells"][1], "1/3");
        assert_eq!(table["rows"][0]["cells"][2], 3);
        assert_eq!(table["columnDefinitions"][1]["name"], "Ready");
    }
}
