//! The kubelet stand-in driving Deployments through the in-process API server (or the real cluster
//! named by `SLUICE_E2E_KUBECONFIG`), with a hand-moved clock for readiness.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sluice_testcluster::TestCluster;
use sluice_testcluster::kubelet::{self, Config, ManualClock, Options, Scope, Served};

const WAIT: Duration = Duration::from_secs(20);

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

fn deployment(image: &str, replicas: i32) -> Deployment {
    serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image}]}}}}))
    .expect("deployment")
}

async fn set_image(api: &Api<Deployment>, image: &str) {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}});
    api.patch("web", &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("patch image");
}

fn start(client: &kube::Client, ns: &str, clock: &ManualClock) -> kubelet::Handle {
    kubelet::spawn(
        client.clone(),
        Options {
            config: Config {
                readiness_delay: Duration::from_secs(10),
                never_ready: None,
            },
            scope: Scope::Namespaces(vec![ns.to_string()]),
            clock: Arc::new(clock.clone()),
            resync: Duration::from_millis(50),
        },
    )
}

fn serves(image: &str, ready: bool) -> impl Fn(&Served) -> bool {
    let image = image.to_string();
    move |s| s.images == [image.clone()] && s.ready == ready
}

#[tokio::test]
async fn a_deployment_becomes_available_when_the_clock_passes_the_readiness_delay() {
    let cluster = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .expect("cluster");
    let client = cluster.client();
    namespace(&client, "kubelet-ready").await;
    let clock = ManualClock::new(jiff::Timestamp::now());
    let handle = start(&client, "kubelet-ready", &clock);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "kubelet-ready");
    api.create(&PostParams::default(), &deployment("web:1.0", 2))
        .await
        .expect("create");

    let served = handle
        .wait_serving("kubelet-ready", "web", WAIT, |_| true)
        .await
        .expect("a revision");
    assert!(!served.ready, "no pod is ready before the delay");
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), "kubelet-ready")
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(sets.items.len(), 1);
    assert_eq!(
        sets.items[0].metadata.name.as_deref(),
        Some(format!("web-{}", served.template_hash).as_str())
    );

    clock.advance(Duration::from_secs(10));
    handle
        .wait_serving("kubelet-ready", "web", WAIT, serves("web:1.0", true))
        .await
        .expect("ready");
    sluice_testcluster::harness::wait_for(
        || {
            let api = api.clone();
            async move {
                let d = api.get_status("web").await.ok();
                let status = d.and_then(|d| d.status);
                status.is_some_and(|s| {
                    s.available_replicas == Some(2)
                        && s.conditions.unwrap_or_default().iter().any(|c| {
                            c.type_ == "Progressing"
                                && c.reason.as_deref() == Some("NewReplicaSetAvailable")
                        })
                })
            }
        },
        WAIT,
    )
    .await
    .expect("status written through /status");
}

#[tokio::test]
async fn a_settled_deployment_is_not_rewritten_on_every_pass() {
    let cluster = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .expect("cluster");
    let client = cluster.client();
    namespace(&client, "kubelet-quiet").await;
    let clock = ManualClock::new(jiff::Timestamp::now());
    let handle = start(&client, "kubelet-quiet", &clock);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "kubelet-quiet");
    api.create(&PostParams::default(), &deployment("web:1.0", 3))
        .await
        .expect("create");
    clock.advance(Duration::from_secs(10));
    handle
        .wait_serving("kubelet-quiet", "web", WAIT, serves("web:1.0", true))
        .await
        .expect("ready");
    let settled = |d: &Deployment| {
        d.status.as_ref().is_some_and(|s| {
            s.available_replicas == Some(3)
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"))
        })
    };
    sluice_testcluster::harness::wait_for(
        || {
            let api = api.clone();
            async move { api.get("web").await.is_ok_and(|d| settled(&d)) }
        },
        WAIT,
    )
    .await
    .expect("settled");
    let before = api.get("web").await.expect("get").metadata.resource_version;
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), "kubelet-quiet");
    let rs_before: Vec<_> = rs_api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|rs| rs.metadata.resource_version)
        .collect();
    let counting = cluster.reset_requests().is_ok();
    // Three more full passes over an unchanged cluster.
    let target = handle.passes() + 3;
    sluice_testcluster::harness::wait_for(
        || {
            handle.resync();
            let done = handle.passes() >= target;
            async move { done }
        },
        WAIT,
    )
    .await
    .expect("passes");
    let after = api.get("web").await.expect("get").metadata.resource_version;
    assert_eq!(
        before, after,
        "the Deployment status was rewritten without a change"
    );
    let rs_after: Vec<_> = rs_api
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|rs| rs.metadata.resource_version)
        .collect();
    assert_eq!(
        rs_before, rs_after,
        "ReplicaSets were rewritten without a change"
    );
    // A real cluster counts no requests; the in-process one shows the idle stand-in sends none.
    if counting {
        let counts = cluster.requests().expect("counts");
        assert_eq!(counts.writes(), 0, "no-op writes: {counts:?}");
        // Passes read the watch caches: no polling.
        assert_eq!(counts.count("list", "deployments"), 0, "{counts:?}");
    }
}

#[tokio::test]
async fn a_paused_deployment_keeps_its_old_revision_until_resumed_and_then_rolls_over_time() {
    let cluster = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .expect("cluster");
    let client = cluster.client();
    namespace(&client, "kubelet-paused").await;
    let clock = ManualClock::new(jiff::Timestamp::now());
    let handle = start(&client, "kubelet-paused", &clock);
    let api: Api<Deployment> = Api::namespaced(client.clone(), "kubelet-paused");
    api.create(&PostParams::default(), &deployment("web:1.0", 2))
        .await
        .expect("create");
    handle
        .wait_serving("kubelet-paused", "web", WAIT, |_| true)
        .await
        .expect("a revision");
    clock.advance(Duration::from_secs(10));
    handle
        .wait_serving("kubelet-paused", "web", WAIT, serves("web:1.0", true))
        .await
        .expect("v1 ready");

    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .expect("pause");
    set_image(&api, "web:2.0").await;
    clock.advance(Duration::from_secs(60));
    handle.resync();
    // Once the stand-in has observed the new template (generation 3) it must still serve v1 from
    // a single ReplicaSet.
    handle
        .wait_serving("kubelet-paused", "web", WAIT, serves("web:1.0", true))
        .await
        .expect("still v1");
    let rs_api = Api::<ReplicaSet>::namespaced(client.clone(), "kubelet-paused");
    sluice_testcluster::harness::wait_for(
        || {
            let api = api.clone();
            async move {
                api.get_status("web")
                    .await
                    .ok()
                    .and_then(|d| d.status)
                    .is_some_and(|s| {
                        s.observed_generation == Some(3)
                            && s.conditions
                                .unwrap_or_default()
                                .iter()
                                .any(|c| c.reason.as_deref() == Some("DeploymentPaused"))
                    })
            }
        },
        WAIT,
    )
    .await
    .expect("paused condition");
    assert_eq!(
        rs_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );

    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .expect("resume");
    let mut rounds = 0;
    while handle
        .wait_serving(
            "kubelet-paused",
            "web",
            Duration::from_millis(500),
            serves("web:2.0", true),
        )
        .await
        .is_none()
    {
        rounds += 1;
        assert!(rounds < 40, "the rollout to v2 never completed");
        clock.advance(Duration::from_secs(10));
        handle.resync();
    }
    assert!(rounds >= 1, "v2 needs at least one readiness delay");
    assert_eq!(
        rs_api
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
}

/// Replaces every pod-template hash found in ReplicaSet labels with `<hash>`: the stand-in's hash
/// is stable but not the real controller's value (documented in `kubelet`).
fn mask_hashes(v: &mut serde_json::Value) {
    let hashes: Vec<String> = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    i["metadata"]["labels"]["pod-template-hash"]
                        .as_str()
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    fn walk(v: &mut serde_json::Value, hashes: &[String]) {
        match v {
            serde_json::Value::String(s) => {
                for h in hashes {
                    *s = s.replace(h.as_str(), "<hash>");
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, hashes)),
            serde_json::Value::Object(m) => m.values_mut().for_each(|x| walk(x, hashes)),
            _ => {}
        }
    }
    walk(v, &hashes);
}

fn expand(pointer: &str, recorded: &serde_json::Value) -> Vec<String> {
    match pointer.split_once("/*") {
        None => vec![pointer.to_string()],
        Some((head, tail)) => {
            let n = recorded
                .pointer(head)
                .and_then(serde_json::Value::as_array)
                .map_or(0, Vec::len);
            (0..n)
                .flat_map(|i| expand(&format!("{head}/{i}{tail}"), recorded))
                .collect()
        }
    }
}

/// The `compare` pointers of a step that differ between the recorded and the actual body.
fn differences(step: &serde_json::Value, actual: &serde_json::Value) -> Vec<String> {
    let mut recorded = step["response"]["body"].clone();
    let mut actual = actual.clone();
    mask_hashes(&mut recorded);
    mask_hashes(&mut actual);
    let pointers: Vec<String> = step["compare"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    pointers
        .iter()
        .flat_map(|p| expand(p, &recorded))
        .filter(|ptr| recorded.pointer(ptr) != actual.pointer(ptr))
        .map(|ptr| {
            format!(
                "{ptr}: recorded {:?} got {:?}",
                recorded.pointer(&ptr),
                actual.pointer(&ptr)
            )
        })
        .collect()
}

/// Recording 12 was made with kube-controller-manager and no kubelet, so pods never became ready:
/// the stand-in runs with every revision never ready. The controller is asynchronous there as
/// here, so each read is retried until it matches or a timeout passes.
#[tokio::test]
async fn recording_12_replays_with_the_stand_in_as_the_deployment_controller() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/apiserver-recordings/12-deployment-paused.json");
    let recording: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read recording 12"))
            .expect("parse");
    let cluster = TestCluster::builder()
        .without_default_crds()
        .start()
        .await
        .expect("cluster");
    let _handle = kubelet::spawn(
        cluster.client(),
        Options {
            config: Config {
                readiness_delay: Duration::from_secs(1),
                never_ready: Some(Arc::new(|_| true)),
            },
            scope: Scope::AllNamespaces,
            clock: Arc::new(kubelet::SystemClock),
            resync: Duration::from_millis(50),
        },
    );
    let http = reqwest::Client::new();
    for (i, step) in recording["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .enumerate()
    {
        let request = &step["request"];
        let method =
            reqwest::Method::from_bytes(request["method"].as_str().expect("method").as_bytes())
                .expect("method");
        let url = format!(
            "{}{}",
            cluster.url(),
            request["path"].as_str().expect("path")
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut rb = http
                .request(method.clone(), &url)
                .header("User-Agent", "python-requests/2.34.2");
            if !request["body"].is_null() {
                let ct = if method == reqwest::Method::PATCH {
                    "application/merge-patch+json"
                } else {
                    "application/json"
                };
                rb = rb
                    .header(
                        "Content-Type",
                        request["contentType"].as_str().unwrap_or(ct),
                    )
                    .body(request["body"].to_string());
            }
            let response = rb.send().await.expect("send");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            assert_eq!(
                u64::from(status),
                step["response"]["status"].as_u64().expect("status"),
                "step {i}"
            );
            let diffs = differences(step, &body);
            if diffs.is_empty() {
                break;
            }
            // Only reads are retried: a write happens once, as in the recording.
            assert!(
                method == reqwest::Method::GET && tokio::time::Instant::now() < deadline,
                "step {i} differs: {diffs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
