//! Fault injection and request accounting, each observed through a real HTTP client.

// The whole file is test code: helpers outside `#[test]` panic on failure too.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_testcluster::{InjectedError, RequestKey, RequestMatch, TestCluster};

async fn cluster() -> (TestCluster, reqwest::Client) {
    let tc = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .unwrap();
    (tc, reqwest::Client::new())
}

async fn create_cm(http: &reqwest::Client, tc: &TestCluster, name: &str) -> reqwest::Response {
    http.post(format!("{}/api/v1/namespaces/default/configmaps", tc.url()))
        .json(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn injected_failures_hit_only_matching_requests_and_only_n_times() {
    let (tc, http) = cluster().await;
    create_cm(&http, &tc, "a").await;
    let faults = tc.faults().unwrap();
    faults.fail_next(
        2,
        RequestMatch::any().verb("get").resource("configmaps"),
        InjectedError::Internal,
    );
    let url = format!("{}/api/v1/namespaces/default/configmaps/a", tc.url());
    // A list does not match the rule.
    let list = http
        .get(format!("{}/api/v1/namespaces/default/configmaps", tc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    for _ in 0..2 {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 500);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["reason"], "InternalError");
    }
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);

    faults.fail_next(
        1,
        RequestMatch::any().verb("create").namespace("default"),
        InjectedError::TooManyRequests,
    );
    let r = create_cm(&http, &tc, "b").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    assert_eq!(
        r.json::<Value>().await.unwrap()["reason"],
        "TooManyRequests"
    );

    faults.fail_next(
        1,
        RequestMatch::any().verb("patch"),
        InjectedError::Conflict,
    );
    let r = http
        .patch(&url)
        .header("Content-Type", "application/merge-patch+json")
        .body(r#"{"data":{"x":"1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["reason"], "Conflict");
    tc.stop().await;
}

#[tokio::test]
async fn refused_connections_fail_until_the_duration_passes() {
    let (tc, _) = cluster().await;
    // A fresh client per request so no pooled connection hides the refusal.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let url = format!("{}/api/v1/namespaces", tc.url());
    tc.faults()
        .unwrap()
        .refuse_connections_for(Duration::from_millis(500));
    let refused = fresh().get(&url).send().await;
    assert!(
        refused.is_err(),
        "a refused connection must fail, got {refused:?}"
    );
    let ok = sluice_testcluster::harness::wait_for(
        || async {
            fresh()
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        },
        Duration::from_secs(10),
    )
    .await;
    assert!(ok.is_ok(), "requests succeed again after the refusal ends");
    tc.stop().await;
}

#[tokio::test]
async fn an_open_connection_is_reset_when_refusal_starts() {
    let (tc, http) = cluster().await;
    let url = format!("{}/api/v1/namespaces/default/configmaps?watch=1", tc.url());
    let mut watch = http.get(&url).send().await.unwrap();
    tc.faults()
        .unwrap()
        .refuse_connections_for(Duration::from_millis(300));
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await
    .expect("the watch ends");
    assert!(
        end.is_err(),
        "the stream breaks with an error rather than ending cleanly"
    );
    tc.stop().await;
}

#[tokio::test]
async fn a_delay_slows_every_response() {
    let (tc, http) = cluster().await;
    tc.faults().unwrap().set_delay(Duration::from_millis(300));
    let start = Instant::now();
    let r = http
        .get(format!("{}/api/v1/namespaces", tc.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    tc.faults().unwrap().set_delay(Duration::ZERO);
    tc.stop().await;
}

async fn first_line(resp: &mut reqwest::Response) -> Value {
    let mut buf = Vec::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk);
        if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            return serde_json::from_slice(&buf[..pos]).unwrap();
        }
    }
}

#[tokio::test]
async fn the_next_watch_gets_410_expired_and_cut_watches_end_cleanly() {
    let (tc, http) = cluster().await;
    let url = format!("{}/api/v1/namespaces/default/configmaps?watch=1", tc.url());
    tc.faults().unwrap().expire_next_watches(1);
    let mut gone = http.get(&url).send().await.unwrap();
    let ev = first_line(&mut gone).await;
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");

    let mut watch = http.get(&url).send().await.unwrap();
    create_cm(&http, &tc, "seen").await;
    let ev = first_line(&mut watch).await;
    assert_eq!(ev["type"], "ADDED");
    tc.faults().unwrap().cut_watches();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match watch.chunk().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the cut watch ends");
    assert!(matches!(end, Ok(None)), "a cut watch ends cleanly: {end:?}");
    tc.stop().await;
}

#[tokio::test]
async fn requests_are_counted_by_verb_resource_subresource_and_namespace_and_can_be_reset() {
    let (tc, http) = cluster().await;
    tc.reset_requests().unwrap();
    for n in ["a", "b", "c"] {
        create_cm(&http, &tc, n).await;
    }
    http.get(format!("{}/api/v1/namespaces/default/configmaps", tc.url()))
        .send()
        .await
        .unwrap();
    http.get(format!("{}/api/v1/configmaps", tc.url()))
        .send()
        .await
        .unwrap();
    http.get(format!(
        "{}/api/v1/namespaces/default/configmaps/a",
        tc.url()
    ))
    .send()
    .await
    .unwrap();
    http.delete(format!(
        "{}/api/v1/namespaces/default/configmaps/b",
        tc.url()
    ))
    .send()
    .await
    .unwrap();
    http.get(format!("{}/apis/apps/v1", tc.url()))
        .send()
        .await
        .unwrap(); // discovery: not counted
    let c = tc.requests().unwrap();
    assert_eq!(c.count("create", "configmaps"), 3);
    assert_eq!(c.count("list", "configmaps"), 2);
    assert_eq!(c.count("get", "configmaps"), 1);
    assert_eq!(c.count("delete", "configmaps"), 1);
    assert_eq!(c.writes(), 4);
    assert_eq!(c.total(), 7);
    let all_ns_list = RequestKey {
        verb: "list".into(),
        group: String::new(),
        resource: "configmaps".into(),
        subresource: String::new(),
        namespace: String::new(),
    };
    assert_eq!(c.0.get(&all_ns_list), Some(&1));
    tc.reset_requests().unwrap();
    assert_eq!(tc.requests().unwrap().total(), 0);
    tc.stop().await;
}

/// Reads a watch response line by line, keeping what follows a line for the next one.
struct WatchLines {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl WatchLines {
    /// The next event, or `None` if none arrives within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return Some(serde_json::from_slice(&line[..pos]).unwrap());
            }
            let chunk = tokio::time::timeout(wait, self.response.chunk())
                .await
                .ok()?
                .unwrap()
                .unwrap();
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next event that is not a bookmark.
    async fn next_event(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let event = self.next_within(wait).await?;
            if event["type"] != "BOOKMARK" {
                return Some(event);
            }
        }
    }
}

#[tokio::test]
async fn held_watch_events_are_sent_in_order_once_released_and_reads_go_on_meanwhile() {
    let (tc, http) = cluster().await;
    let faults = tc.faults().unwrap();
    let url = format!(
        "{}/api/v1/namespaces/default/configmaps?watch=1&allowWatchBookmarks=true",
        tc.url()
    );
    let mut watch = WatchLines {
        response: http.get(&url).send().await.unwrap(),
        buffer: Vec::new(),
    };
    let secrets_url = format!("{}/api/v1/namespaces/default/secrets?watch=1", tc.url());
    let mut secrets = WatchLines {
        response: http.get(&secrets_url).send().await.unwrap(),
        buffer: Vec::new(),
    };

    faults.hold_watch_events("configmaps");
    create_cm(&http, &tc, "first").await;
    create_cm(&http, &tc, "second").await;
    // Reads see the writes; a watch of another resource is not held.
    let first_rv = read_rv(&http, &tc, "first").await;
    assert!(read_rv(&http, &tc, "second").await > first_rv);
    http.post(format!("{}/api/v1/namespaces/default/secrets", tc.url()))
        .json(&json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}))
        .send()
        .await
        .unwrap();
    let secret = secrets.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(secret["object"]["metadata"]["name"], "s");
    // Held: nothing but bookmarks, and no bookmark past the held events.
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Some(event) = watch.next_within(left).await else {
            break;
        };
        assert_eq!(event["type"], "BOOKMARK", "held back: {event}");
        let rv: u64 = event["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rv < first_rv, "a bookmark past a held event: {event}");
    }

    faults.release_watch_events("configmaps");
    for name in ["first", "second"] {
        let event = watch.next_event(Duration::from_secs(5)).await.unwrap();
        assert_eq!(event["type"], "ADDED");
        assert_eq!(event["object"]["metadata"]["name"], name);
    }
    create_cm(&http, &tc, "third").await;
    let event = watch.next_event(Duration::from_secs(5)).await.unwrap();
    assert_eq!(event["object"]["metadata"]["name"], "third");
    tc.stop().await;
}

async fn read_rv(http: &reqwest::Client, tc: &TestCluster, name: &str) -> u64 {
    let object: Value = http
        .get(format!(
            "{}/api/v1/namespaces/default/configmaps/{name}",
            tc.url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}
