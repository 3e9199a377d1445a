//! Every version of the objects a rollout touches, recorded from watches while a test runs, so
//! the invariants can be checked on the whole history instead of on samples a poll may miss.
//! The test cluster has one global resourceVersion, so sorting by it orders versions of
//! different kinds as the server wrote them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::Config};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{NAMESPACE, canary_resource, http_route_resource, route_canary_weight};

/// One version of one object.
#[derive(Debug, Clone)]
pub struct Version {
    pub rv: u64,
    pub kind: String,
    pub name: String,
    pub object: Value,
}

/// Records Deployments, ReplicaSets, HTTPRoutes and Canaries in the test namespace until dropped.
pub struct History {
    log: Arc<Mutex<Vec<Version>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for History {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

impl History {
    pub fn record(client: kube::Client) -> History {
        let log = Arc::new(Mutex::new(Vec::new()));
        let resources = [
            resource("apps", "v1", "Deployment", "deployments"),
            resource("apps", "v1", "ReplicaSet", "replicasets"),
            http_route_resource(),
            canary_resource(),
        ];
        let tasks = resources
            .into_iter()
            .map(|ar| {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ar);
                let log = log.clone();
                let kind = ar.kind.clone();
                tokio::spawn(async move {
                    let mut stream = watcher::watcher(api, Config::default())
                        .backoff(sluice_testcluster::QuickBackoff::default())
                        .boxed();
                    while let Some(event) = stream.next().await {
                        let object = match event {
                            Ok(Event::Apply(o) | Event::InitApply(o)) => o,
                            _ => continue,
                        };
                        let rv = object
                            .metadata
                            .resource_version
                            .as_deref()
                            .and_then(|rv| rv.parse().ok())
                            .unwrap_or(0);
                        let name = object.metadata.name.clone().unwrap_or_default();
                        let object = serde_json::to_value(&object).expect("json");
                        log.lock().expect("history").push(Version {
                            rv,
                            kind: kind.clone(),
                            name,
                            object,
                        });
                    }
                })
            })
            .collect();
        History { log, tasks }
    }

    /// Every version seen so far, in resourceVersion order, each once.
    pub fn versions(&self) -> Vec<Version> {
        let mut versions = self.log.lock().expect("history").clone();
        versions.sort_by(|a, b| (a.rv, &a.kind, &a.name).cmp(&(b.rv, &b.kind, &b.name)));
        versions.dedup_by(|a, b| a.rv == b.rv && a.kind == b.kind && a.name == b.name);
        versions
    }

    /// One line per version, for reading a failed scenario (`SLUICE_E2E_HISTORY=1`).
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for v in self.versions() {
            let o = &v.object;
            let detail = match v.kind.as_str() {
                "Canary" => format!(
                    "phase={} rev={} stable={} step={} started={} weight={} msg={}",
                    o["status"]["phase"],
                    o["status"]["revision"],
                    o["status"]["stableRevision"],
                    o["status"]["stepIndex"],
                    o["status"]["stepStartedAt"],
                    o["status"]["canaryWeight"],
                    o["status"]["message"]
                ),
                "HTTPRoute" => format!("weight={}", route_canary_weight(o, &v.name)),
                _ => format!(
                    "image={:?} paused={} replicas={} ready={} labels={}",
                    image(o),
                    o["spec"]["paused"],
                    o["spec"]["replicas"],
                    o["status"]["readyReplicas"],
                    o["metadata"]["labels"]
                ),
            };
            out.push_str(&format!("{} {} {} {detail}\n", v.rv, v.kind, v.name));
        }
        out
    }

    /// The resourceVersion at which a ReplicaSet of Deployment `name` running `want` first had
    /// pods.
    pub fn first_pods_of(&self, name: &str, want: &str) -> Option<u64> {
        self.versions()
            .into_iter()
            .find(|v| {
                v.kind == "ReplicaSet"
                    && owned_by(&v.object, name)
                    && has_pods(&v.object)
                    && image(&v.object) == Some(want)
            })
            .map(|v| v.rv)
    }

    /// The versions of one object.
    pub fn of(&self, kind: &str, name: &str) -> Vec<Version> {
        self.versions()
            .into_iter()
            .filter(|v| v.kind == kind && v.name == name)
            .collect()
    }

    /// The canary weights the route `name` went through, consecutive repeats folded.
    pub fn route_weights(&self, name: &str) -> Vec<i32> {
        let mut weights = Vec::new();
        for v in self.of("HTTPRoute", name) {
            let weight = route_canary_weight(&v.object, name);
            if weights.last() != Some(&weight) {
                weights.push(weight);
            }
        }
        weights
    }

    /// Images the pods of Deployment `name` ever ran: those of its ReplicaSets that were ever
    /// scaled above zero (a paused Deployment may get an empty ReplicaSet for a new template).
    pub fn stable_images(&self, name: &str) -> Vec<String> {
        let mut images: Vec<String> = self
            .versions()
            .into_iter()
            .filter(|v| v.kind == "ReplicaSet" && owned_by(&v.object, name) && has_pods(&v.object))
            .filter_map(|v| image(&v.object).map(str::to_owned))
            .collect();
        images.sort();
        images.dedup();
        images
    }

    /// I1 on the whole history: every route version giving the canary weight comes while a
    /// ReplicaSet of `<name>-canary` running the canary Deployment's current image has ready
    /// pods (ready pods of an older canary revision do not count).
    pub fn assert_i1(&self, name: &str) {
        let canary = format!("{name}-canary");
        let mut current_image: Option<String> = None;
        let mut ready_by_rs: std::collections::BTreeMap<String, (Option<String>, i64)> =
            Default::default();
        for v in self.versions() {
            if v.kind == "Deployment" && v.name == canary {
                current_image = image(&v.object).map(str::to_owned);
            }
            if v.kind == "ReplicaSet" && owned_by(&v.object, &canary) {
                let ready = v.object["status"]["readyReplicas"].as_i64().unwrap_or(0);
                ready_by_rs.insert(v.name.clone(), (image(&v.object).map(str::to_owned), ready));
            }
            if v.kind == "HTTPRoute" && v.name == name {
                let weight = route_canary_weight(&v.object, name);
                let ready: i64 = ready_by_rs
                    .values()
                    .filter(|(image, _)| *image == current_image)
                    .map(|(_, ready)| ready)
                    .sum();
                assert!(
                    weight == 0 || ready > 0,
                    "I1: route at rv {} gives weight {weight} to a canary with no ready pods of {current_image:?}",
                    v.rv
                );
            }
        }
    }

    /// I4 on the whole history: for each revision, step `k+1` starts at least `interval` after
    /// step `k` started, each step index has one start time, and indices never go back or skip.
    pub fn assert_i4(&self, name: &str, interval: Duration) {
        let mut starts: Vec<(String, i64, String)> = Vec::new();
        for v in self.of("Canary", name) {
            let status = &v.object["status"];
            if status["phase"] != "Progressing" {
                continue;
            }
            let (Some(revision), Some(index), Some(started)) = (
                status["revision"].as_str(),
                status["stepIndex"].as_i64(),
                status["stepStartedAt"].as_str(),
            ) else {
                continue;
            };
            let entry = (revision.to_owned(), index, started.to_owned());
            if !starts.contains(&entry) {
                starts.push(entry);
            }
        }
        for pair in starts.windows(2) {
            let ((rev_a, k_a, at_a), (rev_b, k_b, at_b)) = (&pair[0], &pair[1]);
            if rev_a != rev_b {
                continue;
            }
            assert!(
                *k_b == k_a + 1,
                "I4: revision {rev_a} went from step {k_a} (started {at_a}) to step {k_b} (started {at_b}): a step restarted, repeated or was skipped ({starts:?})"
            );
            let a: jiff::Timestamp = at_a.parse().expect("stepStartedAt");
            let b: jiff::Timestamp = at_b.parse().expect("stepStartedAt");
            let lasted = b.duration_since(a);
            assert!(
                lasted >= jiff::SignedDuration::try_from(interval).expect("interval"),
                "I4: step {k_a} of {rev_a} lasted {lasted:?}, less than {interval:?}"
            );
        }
    }
}

fn has_pods(replica_set: &Value) -> bool {
    replica_set["spec"]["replicas"].as_i64().unwrap_or(0) > 0
        || replica_set["status"]["replicas"].as_i64().unwrap_or(0) > 0
}

fn owned_by(object: &Value, name: &str) -> bool {
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|o| o["kind"] == "Deployment" && o["name"] == name)
}

/// The first container image of a Deployment or ReplicaSet.
pub fn image(object: &Value) -> Option<&str> {
    object["spec"]["template"]["spec"]["containers"][0]["image"].as_str()
}
