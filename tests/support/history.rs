//! Every version of the objects a rollout touches, recorded from watches while a test runs, so
//! the invariants can be checked on the whole history instead of on samples a poll may miss.
//! The test cluster has one global resourceVersion, so sorting by it orders versions of
//! different kinds as the server wrote them.
//!
//! Each version is timed: on the test cluster by the server's commit of it (before the write was
//! answered, so no later than the moment the writer learnt it was acknowledged), on a real cluster
//! by the arrival of its watch event.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

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
    /// When its watch event arrived.
    pub seen: SystemTime,
}

/// Records Deployments, ReplicaSets, HTTPRoutes and Canaries in the test namespace until dropped.
pub struct History {
    log: Arc<Mutex<Vec<Version>>>,
    tasks: Vec<JoinHandle<()>>,
    /// The test cluster's commit times, when the history is of the test cluster.
    clock: Option<sluice_testcluster::CommitClock>,
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
    /// Records `cluster`, timing versions by the server's commits where it can (the test cluster).
    pub fn record_on(cluster: &sluice_testcluster::TestCluster) -> History {
        let mut history = History::record(cluster.client());
        history.clock = cluster.commit_clock();
        history
    }

    /// Records what `client` can watch, timing versions by the arrival of their watch events.
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
                            seen: SystemTime::now(),
                        });
                    }
                })
            })
            .collect();
        History {
            log,
            tasks,
            clock: None,
        }
    }

    /// When `version` was written: the server's commit on the test cluster, else the arrival of
    /// its watch event.
    pub fn written_at(&self, version: &Version) -> jiff::Timestamp {
        let at = self
            .clock
            .as_ref()
            .and_then(|clock| clock.committed_at(version.rv))
            .unwrap_or(version.seen);
        jiff::Timestamp::try_from(at).expect("a time after 1970")
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

    /// I4 on the whole history, with no tolerance: for each revision, its steps follow one another
    /// in order (no restart, repeat or skip), and no step ends before `interval` has passed since
    /// the acknowledged route write that started it. Checked three ways:
    ///
    /// - in status: step `k+1`'s `stepStartedAt` is at least `interval` after step `k`'s (both to
    ///   the microsecond);
    /// - on the route: the write that put step `k+1`'s weight in place (or, after the last step,
    ///   the status write that leaves the steps for promotion) comes at least `interval` after the
    ///   write that put step `k`'s weight in place;
    /// - on the test cluster, where route writes are timed by the server's commit on the same
    ///   clock as the controller's: each step's `stepStartedAt` is no earlier than the commit of
    ///   the route write that started it (the clock starts when the write is acknowledged, not
    ///   when it is decided), and the next step's route write comes no earlier than that
    ///   `stepStartedAt` plus `interval`.
    pub fn assert_i4(&self, name: &str, interval: Duration) {
        struct Step {
            revision: String,
            index: i64,
            started: String,
            weight: i32,
            rv: u64,
        }
        let interval_span = jiff::SignedDuration::try_from(interval).expect("interval");
        let canaries = self.of("Canary", name);
        let mut steps: Vec<Step> = Vec::new();
        for v in &canaries {
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
            let known = steps
                .iter()
                .any(|s| s.revision == revision && s.index == index && s.started == started);
            if !known {
                steps.push(Step {
                    revision: revision.to_owned(),
                    index,
                    started: started.to_owned(),
                    weight: status["canaryWeight"].as_i64().unwrap_or(0) as i32,
                    rv: v.rv,
                });
            }
        }
        let routes = self.of("HTTPRoute", name);
        // The route write that put `weight` in place last before resourceVersion `rv`.
        let route_write = |weight: i32, rv: u64| -> Option<&Version> {
            let mut previous = None;
            let mut found = None;
            for route in routes.iter().take_while(|r| r.rv < rv) {
                let w = route_canary_weight(&route.object, name);
                if w == weight && previous != Some(weight) {
                    found = Some(route);
                }
                previous = Some(w);
            }
            found
        };
        let started_at =
            |step: &Step| -> jiff::Timestamp { step.started.parse().expect("stepStartedAt") };
        let starts: Vec<String> = steps
            .iter()
            .map(|s| {
                format!(
                    "{} step {} at {} ({}%)",
                    s.revision, s.index, s.started, s.weight
                )
            })
            .collect();
        for (i, step) in steps.iter().enumerate() {
            let route = route_write(step.weight, step.rv);
            if let (Some(clock), Some(route)) = (&self.clock, route) {
                let committed = clock
                    .committed_at(route.rv)
                    .map(|at| jiff::Timestamp::try_from(at).expect("a time after 1970"));
                if let Some(committed) = committed {
                    assert!(
                        started_at(step) >= committed,
                        "I4: {} step {} started at {}, before its route write (rv {}) was committed at {committed}",
                        step.revision,
                        step.index,
                        step.started,
                        route.rv
                    );
                }
            }
            // What ends this step: the next step of the revision, or the status that leaves the
            // steps (promotion, or waiting for it).
            let next = steps.get(i + 1).filter(|n| n.revision == step.revision);
            let (end_name, end_rv, end_weight) = match next {
                Some(next) => {
                    assert!(
                        next.index == step.index + 1,
                        "I4: revision {} went from step {} (started {}) to step {} (started {}): a step restarted, repeated or was skipped ({starts:?})",
                        step.revision,
                        step.index,
                        step.started,
                        next.index,
                        next.started
                    );
                    let lasted = started_at(next).duration_since(started_at(step));
                    assert!(
                        lasted >= interval_span,
                        "I4: step {} of {} lasted {lasted:?} by stepStartedAt, less than {interval:?} ({starts:?})",
                        step.index,
                        step.revision
                    );
                    (format!("step {}", next.index), next.rv, Some(next.weight))
                }
                None => {
                    let left = canaries.iter().find(|v| {
                        v.rv > step.rv
                            && v.object["status"]["revision"] == step.revision.as_str()
                            && matches!(
                                v.object["status"]["phase"].as_str(),
                                Some("Promoting" | "WaitingPromotion")
                            )
                    });
                    match left {
                        Some(left) => ("promotion".to_owned(), left.rv, None),
                        None => continue,
                    }
                }
            };
            let Some(route) = route else {
                continue;
            };
            let ended = match end_weight {
                Some(weight) => match route_write(weight, end_rv) {
                    Some(end) if end.rv > route.rv => end,
                    Some(_) | None => continue,
                },
                None => match canaries.iter().find(|v| v.rv == end_rv) {
                    Some(end) => end,
                    None => continue,
                },
            };
            let held = self
                .written_at(ended)
                .duration_since(self.written_at(route));
            assert!(
                held >= interval_span,
                "I4: {} step {} held its route write (rv {}) for {held:?} before {end_name} (rv {}), less than {interval:?} ({starts:?})",
                step.revision,
                step.index,
                route.rv,
                ended.rv
            );
            if let Some(clock) = &self.clock
                && let Some(ended_at) = clock.committed_at(ended.rv)
            {
                let ended_at = jiff::Timestamp::try_from(ended_at).expect("a time after 1970");
                assert!(
                    ended_at.duration_since(started_at(step)) >= interval_span,
                    "I4: {} step {} (stepStartedAt {}) ended by {end_name} at {ended_at}, before its interval {interval:?}",
                    step.revision,
                    step.index,
                    step.started
                );
            }
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
