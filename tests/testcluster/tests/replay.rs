//! Replays every recording of a real kube-apiserver (`../shared/apiserver-recordings`) against a
//! fresh test cluster and compares status, content-type family and every `compare` pointer (plus
//! `reason` and `code` of errors), after normalising uids, resourceVersions and times.

// The whole file is test code: helpers outside `#[test]` panic on failure too.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use std::sync::Arc;

use sluice_testcluster::TestCluster;
use sluice_testcluster::kubelet::{self, Config, Options, Scope};

/// Steps known to differ from the real server, with the reason. Must shrink to empty as the
/// fidelity modules (`schema`, `admission`) and the Deployment-controller stand-in land.
const EXPECTED_TO_DIFFER: &[(&str, usize, &str)] = &[];

fn recordings_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/apiserver-recordings")
}

const TIME_KEYS: &[&str] = &[
    "creationTimestamp",
    "deletionTimestamp",
    "time",
    "lastTransitionTime",
    "lastUpdateTime",
    "eventTime",
    "lastHeartbeatTime",
    "renewTime",
    "acquireTime",
];

/// Replaces run-specific values with the recordings' placeholders.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                match (k.as_str(), &*val) {
                    ("uid", Value::String(_)) => *val = json!("<uid>"),
                    ("resourceVersion", Value::String(s)) if !s.is_empty() && s != "0" => {
                        *val = json!("<rv>")
                    }
                    ("continue", Value::String(s)) if !s.is_empty() => *val = json!("<continue>"),
                    (k, Value::String(_)) if TIME_KEYS.contains(&k) => *val = json!("<time>"),
                    ("message", Value::String(s)) if s.starts_with("too old resource version") => {
                        *val = json!("too old resource version: <rv> (<rv>)")
                    }
                    _ => normalise(val),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// Expands `*` in a pointer over the recorded value.
fn expand(pointer: &str, recorded: &Value) -> Vec<String> {
    match pointer.split_once("/*") {
        None => vec![pointer.to_string()],
        Some((head, tail)) => {
            let n = recorded
                .pointer(head)
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            (0..n)
                .flat_map(|i| expand(&format!("{head}/{i}{tail}"), recorded))
                .collect()
        }
    }
}

fn substitute(v: &Value, saves: &HashMap<String, String>) -> Value {
    let mut text = v.to_string();
    for (k, val) in saves {
        text = text.replace(&format!("${{{k}}}"), val);
    }
    serde_json::from_str(&text).unwrap_or_else(|_| v.clone())
}

/// Replaces every pod-template hash found in ReplicaSet labels with `<hash>`: the stand-in's hash
/// is stable but not the real controller's FNV value (documented in `kubelet`).
fn mask_hashes(v: &mut Value) {
    let hashes: Vec<String> = v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            i["metadata"]["labels"]["pod-template-hash"]
                .as_str()
                .map(String::from)
        })
        .collect();
    fn walk(v: &mut Value, hashes: &[String]) {
        match v {
            Value::String(s) => {
                for h in hashes {
                    *s = s.replace(h.as_str(), "<hash>");
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, hashes)),
            Value::Object(m) => m.values_mut().for_each(|x| walk(x, hashes)),
            _ => {}
        }
    }
    walk(v, &hashes);
}

/// Replaces strings made from `generateName` (prefix + 5 characters) with a placeholder.
fn mask_generated(v: &mut Value, prefix: &str) {
    match v {
        Value::String(s) if s.len() == prefix.len() + 5 && s.starts_with(prefix) => {
            *s = "<generated>".into()
        }
        Value::Object(m) => m.values_mut().for_each(|x| mask_generated(x, prefix)),
        Value::Array(a) => a.iter_mut().for_each(|x| mask_generated(x, prefix)),
        _ => {}
    }
}

async fn read_watch(resp: reqwest::Response, want: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut buf = Vec::new();
    let mut resp = resp;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while events.len() < want {
        let chunk = match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => c,
            _ => break,
        };
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Ok(ev) = serde_json::from_slice::<Value>(&line) {
                if ev["type"] == "BOOKMARK" && ev["object"]["metadata"]["annotations"].is_null() {
                    continue; // periodic bookmarks are timing, not content
                }
                events.push(ev);
            }
        }
    }
    events
}

async fn replay(file: &str) -> Vec<(usize, String)> {
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(recordings_dir().join(file)).unwrap())
            .unwrap();
    let tc = TestCluster::start().await.unwrap();
    // Recording 12 was made with kube-controller-manager and no kubelet: the stand-in plays the
    // Deployment controller, with pods that never become ready.
    let stand_in = file.starts_with("12-").then(|| {
        kubelet::spawn(
            tc.client(),
            Options {
                config: Config {
                    readiness_delay: Duration::from_secs(1),
                    never_ready: Some(Arc::new(|_| true)),
                },
                scope: Scope::AllNamespaces,
                clock: Arc::new(kubelet::SystemClock),
                resync: Duration::from_millis(50),
            },
        )
    });
    let http = reqwest::Client::new();
    let mut saves: HashMap<String, String> = HashMap::new();
    let mut last_rv: Option<String> = None;
    let mut diffs = Vec::new();
    for (i, step) in rec["steps"].as_array().unwrap().iter().enumerate() {
        if let Some(action) = step["action"].as_str() {
            if action.contains("compact") {
                tc.compact().unwrap();
            }
            continue;
        }
        if let Some(poll) = step["response"]["poll"].as_str().or(step["poll"].as_str()) {
            let path = poll
                .trim_start_matches("GET ")
                .split(' ')
                .next()
                .unwrap()
                .to_string();
            let url = format!("{}{path}", tc.url());
            let ok = sluice_testcluster::harness::wait_for(
                || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        http.get(&url)
                            .send()
                            .await
                            .map(|r| r.status() == 404)
                            .unwrap_or(false)
                    }
                },
                Duration::from_secs(10),
            )
            .await;
            if ok.is_err() {
                diffs.push((i, format!("poll {poll} never finished")));
            }
            continue;
        }
        let req = &step["request"];
        let method =
            reqwest::Method::from_bytes(req["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut url =
            reqwest::Url::parse(&format!("{}{}", tc.url(), req["path"].as_str().unwrap())).unwrap();
        let query = substitute(&req["query"], &saves);
        if let Some(q) = query.as_object() {
            let mut qp = url.query_pairs_mut();
            for (k, v) in q {
                qp.append_pair(k, v.as_str().unwrap_or_default());
            }
        }
        // With the Deployment-controller stand-in running, reads are retried until the
        // asynchronous controller has caught up (as a client of the real one would wait).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut step_diffs: Vec<(usize, String)> = Vec::new();
            let mut rb = http
                .request(method.clone(), url.clone())
                .header("User-Agent", "python-requests/2.34.2");
            if let Some(ct) = req["contentType"].as_str() {
                rb = rb.header("Content-Type", ct);
            }
            match &req["body"] {
                Value::Null => {}
                Value::String(s) => rb = rb.body(s.clone()),
                b => {
                    let mut body = substitute(b, &saves);
                    // A few recorded bodies carry the real server's resourceVersion literally (the
                    // value the previous step saved); the replay sends its own saved value instead.
                    let literal_rv = b["metadata"]["resourceVersion"]
                        .as_str()
                        .is_some_and(|r| r.parse::<u64>().is_ok());
                    if literal_rv && let Some(rv) = &last_rv {
                        body["metadata"]["resourceVersion"] = json!(rv);
                    }
                    rb = rb.body(body.to_string());
                }
            }
            let resp = rb.send().await.unwrap();
            let expected = &step["response"];
            let status = resp.status().as_u16();
            if status != expected["status"].as_u64().unwrap() as u16 {
                step_diffs.push((
                    i,
                    format!("status {status}, recorded {}", expected["status"]),
                ));
            }
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|c| c.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let json_family = |c: &str| c.contains("json");
            if json_family(&ct) != json_family(expected["contentType"].as_str().unwrap_or_default())
            {
                step_diffs.push((i, format!("content type {ct}")));
            }
            let (raw, recorded) = if let Some(events) = expected.get("events") {
                let got = read_watch(resp, events.as_array().unwrap().len()).await;
                (json!({"events": got}), json!({"events": events}))
            } else {
                let bytes = resp.bytes().await.unwrap();
                (
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    expected["body"].clone(),
                )
            };
            if let Some(save) = step["save"].as_object() {
                for (k, p) in save {
                    let v = raw
                        .pointer(p.as_str().unwrap())
                        .cloned()
                        .unwrap_or(Value::Null);
                    if p.as_str().unwrap().ends_with("resourceVersion") {
                        last_rv = v.as_str().map(String::from);
                    }
                    saves.insert(
                        k.clone(),
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string()),
                    );
                }
            }
            let mut actual = raw.clone();
            normalise(&mut actual);
            let mut recorded = recorded;
            mask_hashes(&mut actual);
            mask_hashes(&mut recorded);
            if let Some(prefix) = req["body"]["metadata"]["generateName"].as_str() {
                mask_generated(&mut actual, prefix);
                mask_generated(&mut recorded, prefix);
            }
            let mut pointers: Vec<String> = step["compare"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            if status >= 400 {
                pointers.extend(["/reason".to_string(), "/code".to_string()]);
            }
            for p in pointers {
                for ptr in expand(&p, &recorded) {
                    let (want, got) = (recorded.pointer(&ptr), actual.pointer(&ptr));
                    if want != got {
                        step_diffs.push((
                            i,
                            format!(
                                "{ptr}: recorded {} got {}",
                                want.map(|v| v.to_string()).unwrap_or("<absent>".into()),
                                got.map(|v| v.to_string()).unwrap_or("<absent>".into())
                            ),
                        ));
                    }
                }
            }
            let retry = stand_in.is_some()
                && method == reqwest::Method::GET
                && !step_diffs.is_empty()
                && tokio::time::Instant::now() < deadline;
            if !retry {
                diffs.extend(step_diffs);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tc.stop().await;
    diffs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_recording_replays_against_the_test_cluster_as_the_real_server_answered() {
    let mut files: Vec<String> = std::fs::read_dir(recordings_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 14,
        "recordings not found in {}",
        recordings_dir().display()
    );
    let mut unexpected = Vec::new();
    let mut now_passing = Vec::new();
    for f in &files {
        let diffs = replay(f).await;
        let failing_steps: std::collections::BTreeSet<usize> =
            diffs.iter().map(|(i, _)| *i).collect();
        for (i, d) in &diffs {
            let expected = EXPECTED_TO_DIFFER
                .iter()
                .any(|(ef, es, _)| ef == f && es == i);
            if expected {
                eprintln!("expected difference {f} step {i}: {d}");
            } else {
                unexpected.push(format!("{f} step {i}: {d}"));
            }
        }
        for (ef, es, why) in EXPECTED_TO_DIFFER {
            if ef == f && !failing_steps.contains(es) {
                now_passing.push(format!("{ef} step {es} ({why})"));
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "differences from the real server:\n{}",
        unexpected.join("\n")
    );
    assert!(
        now_passing.is_empty(),
        "these steps now match the real server; remove them from EXPECTED_TO_DIFFER:\n{}",
        now_passing.join("\n")
    );
}
