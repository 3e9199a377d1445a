//! Watch semantics over raw HTTP: a label-selected watch reports objects entering and leaving
//! its selector as ADDED and DELETED, and resuming from a resourceVersion replays the history.

// The whole file is test code: helpers outside `#[test]` panic on failure too.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use sluice_testcluster::TestCluster;

async fn next_event(resp: &mut reqwest::Response, buf: &mut Vec<u8>) -> Value {
    loop {
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            return serde_json::from_slice(&line).unwrap();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk);
    }
}

async fn merge(http: &reqwest::Client, tc: &TestCluster, name: &str, patch: Value) {
    let r = http
        .patch(format!(
            "{}/api/v1/namespaces/default/configmaps/{name}",
            tc.url()
        ))
        .header("Content-Type", "application/merge-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_selector_watch_sees_objects_enter_as_added_and_leave_as_deleted() {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/api/v1/namespaces/default/configmaps", tc.url()))
        .json(&json!({"metadata": {"name": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let list: Value = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?labelSelector=app%3Dweb",
            tc.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut watch = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?watch=1&labelSelector=app%3Dweb&resourceVersion={rv}",
            tc.url()
        ))
        .send()
        .await
        .unwrap();
    let mut buf = Vec::new();
    merge(
        &http,
        &tc,
        "x",
        json!({"metadata": {"labels": {"app": "web"}}}),
    )
    .await;
    let ev = next_event(&mut watch, &mut buf).await;
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("x"))
    );
    merge(&http, &tc, "x", json!({"data": {"k": "v"}})).await;
    assert_eq!(next_event(&mut watch, &mut buf).await["type"], "MODIFIED");
    merge(
        &http,
        &tc,
        "x",
        json!({"metadata": {"labels": {"app": null}}}),
    )
    .await;
    assert_eq!(next_event(&mut watch, &mut buf).await["type"], "DELETED");

    // The same history, replayed from the list's resourceVersion.
    let mut again = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps?watch=1&labelSelector=app%3Dweb&resourceVersion={rv}",
            tc.url()
        ))
        .send()
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut types = Vec::new();
    for _ in 0..3 {
        types.push(
            next_event(&mut again, &mut buf).await["type"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
    tc.stop().await;
}
