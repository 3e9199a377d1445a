//! Every version of the objects a rollout touches, recorded from watches while a test runs, so
//! the invariants can be checked on the whole history instead of on samples a poll may miss.
//! The test cluster has one global resourceVersion, so sorting by it orders versions of
//! different kinds as the server wrote them.
//!
//! Each version is timed: on the test cluster by the server's commit of it (before the write was
//! answered, so no later than the moment the writer learnt it was acknowledged), on a real cluster
//! by the arrival of its watch event.
//!
//! The traffic split is read back from the router object of the test ([`Router`]): the HTTPRoute,
//! the canary Ingress sluice makes for NGINX, or the stable Service the blue/green router switches.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher::Config};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::{NAMESPACE, canary_resource, http_route_resource, route_canary_weight};

/// How long the route may read back another weight than the Canary's status says (I2: one
/// reconcile).
pub const I2_WITHIN: Duration = Duration::from_secs(2);

/// ingress-nginx's canary annotations, as sluice writes them on its canary Ingress
/// (src/router/nginx.rs).
const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
const NGINX_CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
const NGINX_CANARY_BY_HEADER: &str = "nginx.ingress.kubernetes.io/canary-by-header";
/// Where the `service` router keeps the user's selector while it has switched the Service.
const STABLE_SELECTOR_ANNOTATION: &str = "sluice.dev/stable-selector";

/// The object the traffic split of rollout `name` is read back from, as sluice writes it for
/// each router (src/router/): what I1, I2 and I4 compare with the ready pods and the Canary's
/// status. Each test names its own, so an object of another router that stays the user's (the
/// HTTPRoute of `app_manifests` in a test of the NGINX router) is never taken for the split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Router {
    /// Gateway API: the HTTPRoute `name`, its canary backend the Service `<name>-canary`.
    HttpRoute,
    /// NGINX: the canary Ingress `<ingress>-canary` sluice makes beside the user's Ingress
    /// `ingress`. It gives the canary its `nginx.ingress.kubernetes.io/canary-weight` (0 when
    /// missing, as ingress-nginx reads it) while `nginx.ingress.kubernetes.io/canary` is `"true"`,
    /// and nothing while it does not exist (before sluice makes it, once deleted) or is not
    /// marked as a canary. A `canary-by-header` sends every matching request to the canary: that
    /// counts for I1 but is no weight for I2.
    NginxIngress { ingress: String },
    /// The `service` router (blue/green): the stable Service `service`, whose selector sluice
    /// switches from the target's pods to the canary's and back. 100 while it selects the pods of
    /// the canary Deployment `<name>-canary` (its template labels as last recorded), 0 while it
    /// selects those of the target `name`; selecting both or neither fails the check that reads it.
    ServiceSelector { service: String },
}

impl Router {
    /// The canary Ingress of the user's Ingress `ingress`.
    pub fn nginx_ingress(ingress: &str) -> Router {
        Router::NginxIngress {
            ingress: ingress.to_owned(),
        }
    }

    /// The stable Service `service`, switched by the `service` router.
    pub fn service_selector(service: &str) -> Router {
        Router::ServiceSelector {
            service: service.to_owned(),
        }
    }

    /// The router object of rollout `name`, for messages.
    fn describe(&self, name: &str) -> String {
        match self {
            Router::HttpRoute => format!("route {name}"),
            Router::NginxIngress { ingress } => format!("canary Ingress {ingress}-canary"),
            Router::ServiceSelector { service } => format!("Service {service}"),
        }
    }
}

/// What one version of the router object sends to the canary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reading {
    /// What reaches the canary by any rule, header-matched ones included: what I1 judges and I4
    /// times (for the HTTPRoute, the largest canary weight of any rule).
    reaching: i32,
    /// The weighted split, without header-matched rules: what the Canary's status says (I2).
    weighted: i32,
}

impl Reading {
    const NOTHING: Reading = Reading {
        reaching: 0,
        weighted: 0,
    };
}

/// Reads the versions of rollout `name`'s router object, fed every version of the history in
/// resourceVersion order (the Service router needs the Deployments' pod labels as of each
/// version).
struct RouterReader<'a> {
    router: &'a Router,
    name: &'a str,
    /// The pod template labels of the target and of the canary Deployment, as last recorded.
    stable_pods: Option<serde_json::Map<String, Value>>,
    canary_pods: Option<serde_json::Map<String, Value>>,
}

impl<'a> RouterReader<'a> {
    fn new(router: &'a Router, name: &'a str) -> RouterReader<'a> {
        RouterReader {
            router,
            name,
            stable_pods: None,
            canary_pods: None,
        }
    }

    /// What the router sends before its first version: nothing for the canary Ingress, which
    /// does not exist before sluice makes it (the history starts before the app is applied);
    /// unknown for the objects that are the user's.
    fn initial(&self) -> Option<Reading> {
        match self.router {
            Router::NginxIngress { .. } => Some(Reading::NOTHING),
            Router::HttpRoute | Router::ServiceSelector { .. } => None,
        }
    }

    /// What `v` sends to the canary, when it is a version of the router object.
    fn read(&mut self, v: &Version) -> Option<Reading> {
        let name = self.name;
        match self.router {
            Router::HttpRoute => (v.kind == "HTTPRoute" && v.name == name).then(|| Reading {
                reaching: route_canary_weight(&v.object, name),
                weighted: weighted_canary_weight(&v.object, name),
            }),
            Router::NginxIngress { ingress } => {
                if v.kind != "Ingress" || v.name != format!("{ingress}-canary") {
                    return None;
                }
                let annotations = &v.object["metadata"]["annotations"];
                if annotations[NGINX_CANARY] != "true" {
                    // Deleted (a null object), or not a canary Ingress.
                    return Some(Reading::NOTHING);
                }
                let weighted = match annotations[NGINX_CANARY_WEIGHT].as_str() {
                    None => 0,
                    Some(text) => text.trim().parse().unwrap_or_else(|_| {
                        panic!(
                            "the canary Ingress {} at rv {} has a canary-weight that is no number: {text:?}",
                            v.name, v.rv
                        )
                    }),
                };
                let by_header = annotations[NGINX_CANARY_BY_HEADER].is_string();
                Some(Reading {
                    reaching: if by_header { 100 } else { weighted },
                    weighted,
                })
            }
            Router::ServiceSelector { service } => {
                let canary = format!("{name}-canary");
                if v.kind == "Deployment" && (v.name == name || v.name == canary) {
                    let labels = v.object["spec"]["template"]["metadata"]["labels"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    if v.name == name {
                        self.stable_pods = Some(labels);
                    } else {
                        self.canary_pods = Some(labels);
                    }
                    return None;
                }
                if v.kind != "Service" || v.name != *service {
                    return None;
                }
                // Nothing to tell the sides apart by before the target is recorded.
                let stable_pods = self.stable_pods.as_ref()?;
                let empty = serde_json::Map::new();
                let selector = v.object["spec"]["selector"].as_object().unwrap_or(&empty);
                let selects = |labels: &serde_json::Map<String, Value>| {
                    !selector.is_empty()
                        && selector
                            .iter()
                            .all(|(key, value)| labels.get(key) == Some(value))
                };
                let weight = match (
                    selects(stable_pods),
                    self.canary_pods.as_ref().is_some_and(selects),
                ) {
                    (true, false) => 0,
                    (false, true) => 100,
                    (stable, _) => panic!(
                        "the Service {service} at rv {} selects the pods of {}: selector {}, \
                         {name}'s pods {stable_pods:?}, {canary}'s {:?}",
                        v.rv,
                        if stable { "both sides" } else { "neither side" },
                        v.object["spec"]["selector"],
                        self.canary_pods
                    ),
                };
                Some(Reading {
                    reaching: weight,
                    weighted: weight,
                })
            }
        }
    }
}

/// One version of one object.
#[derive(Debug, Clone)]
pub struct Version {
    pub rv: u64,
    pub kind: String,
    pub name: String,
    /// The object as written; `Value::Null` for the deletion of an Ingress (the only kind whose
    /// deletions are recorded, see [`History::record`]).
    pub object: Value,
    /// When its watch event arrived.
    pub seen: SystemTime,
}

/// Records Deployments, ReplicaSets, HTTPRoutes, Ingresses, Services and Canaries in the test
/// namespace until dropped.
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
    ///
    /// The history is what exists, so deletions are left out, except an Ingress's: a deleted
    /// canary Ingress sends nothing, and its deletion is recorded as a version of it with a null
    /// object at the resourceVersion of the deletion. (A deletion the watch only learns of by a
    /// relist has no watch event and is not recorded; the history's own watches take no faults.)
    pub fn record(client: kube::Client) -> History {
        let log = Arc::new(Mutex::new(Vec::new()));
        // Each resource, and whether its deletions are recorded.
        let resources = [
            (resource("apps", "v1", "Deployment", "deployments"), false),
            (resource("apps", "v1", "ReplicaSet", "replicasets"), false),
            (http_route_resource(), false),
            (
                resource("networking.k8s.io", "v1", "Ingress", "ingresses"),
                true,
            ),
            (resource("", "v1", "Service", "services"), false),
            (canary_resource(), false),
        ];
        let tasks = resources
            .into_iter()
            .map(|(ar, deletions)| {
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ar);
                let log = log.clone();
                let kind = ar.kind.clone();
                tokio::spawn(async move {
                    let mut stream = watcher::watcher(api, Config::default())
                        .backoff(sluice_testcluster::QuickBackoff::default())
                        .boxed();
                    while let Some(event) = stream.next().await {
                        let (object, deleted) = match event {
                            Ok(Event::Apply(o) | Event::InitApply(o)) => (o, false),
                            Ok(Event::Delete(o)) if deletions => (o, true),
                            _ => continue,
                        };
                        let rv = object
                            .metadata
                            .resource_version
                            .as_deref()
                            .and_then(|rv| rv.parse().ok())
                            .unwrap_or(0);
                        let name = object.metadata.name.clone().unwrap_or_default();
                        let object = if deleted {
                            Value::Null
                        } else {
                            serde_json::to_value(&object).expect("json")
                        };
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

    /// The history up to and including resourceVersion `rv`, frozen: for checking an invariant
    /// on the part of a scenario before a person's command that lifts it (`skip`, `promote
    /// --full`).
    pub fn until(&self, rv: u64) -> History {
        self.part(|v| v.rv <= rv)
    }

    /// The history from resourceVersion `rv` on, frozen: for checking an invariant on the part
    /// of a scenario after a person's command (a `retry` that starts a revision's steps over).
    pub fn since(&self, rv: u64) -> History {
        self.part(|v| v.rv >= rv)
    }

    fn part(&self, keep: impl Fn(&Version) -> bool) -> History {
        let versions: Vec<Version> = self
            .log
            .lock()
            .expect("history")
            .iter()
            .filter(|v| keep(v))
            .cloned()
            .collect();
        History {
            log: Arc::new(Mutex::new(versions)),
            tasks: Vec::new(),
            clock: self.clock.clone(),
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
                "Ingress" if o.is_null() => "deleted".to_owned(),
                "Ingress" => {
                    let annotations = &o["metadata"]["annotations"];
                    format!(
                        "canary={} weight={} header={}",
                        annotations[NGINX_CANARY],
                        annotations[NGINX_CANARY_WEIGHT],
                        annotations[NGINX_CANARY_BY_HEADER]
                    )
                }
                "Service" => format!(
                    "selector={} saved={}",
                    o["spec"]["selector"], o["metadata"]["annotations"][STABLE_SELECTOR_ANNOTATION]
                ),
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

    /// The weighted splits (what status says, I2) the router object of rollout `name` went
    /// through, from what it sent before its first version when that is known (nothing, for the
    /// canary Ingress), consecutive repeats folded.
    pub fn router_weights(&self, name: &str, router: &Router) -> Vec<i32> {
        let mut reader = RouterReader::new(router, name);
        let mut weights: Vec<i32> = reader.initial().map(|r| r.weighted).into_iter().collect();
        for v in self.versions() {
            if let Some(reading) = reader.read(&v)
                && weights.last() != Some(&reading.weighted)
            {
                weights.push(reading.weighted);
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

    /// I1 on the whole history, on the HTTPRoute `name` ([`History::assert_i1_on`]).
    pub fn assert_i1(&self, name: &str) {
        self.assert_i1_on(name, &Router::HttpRoute);
    }

    /// I1 on the whole history: every version of the `router` object of rollout `name` that
    /// sends the canary anything (header-matched requests included) comes while a ReplicaSet of
    /// `<name>-canary` running the canary Deployment's current image has ready pods (ready pods
    /// of an older canary revision do not count).
    pub fn assert_i1_on(&self, name: &str, router: &Router) {
        let canary = format!("{name}-canary");
        let mut reader = RouterReader::new(router, name);
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
            if let Some(reading) = reader.read(&v) {
                let weight = reading.reaching;
                let ready: i64 = ready_by_rs
                    .values()
                    .filter(|(image, _)| *image == current_image)
                    .map(|(_, ready)| ready)
                    .sum();
                assert!(
                    weight == 0 || ready > 0,
                    "I1: {} at rv {} gives weight {weight} to a canary with no ready pods of {current_image:?}",
                    router.describe(name),
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
    ///
    /// One restart is allowed: sluice starts a step's clock again (a new `stepStartedAt`, no
    /// route write) in the status that leaves `Invalid`, since the spec that judged the step
    /// changed. That only delays the step, and what ends it must come an interval after the
    /// restart as well.
    ///
    /// The route is the HTTPRoute `name` ([`History::assert_i4_on`] for another router).
    pub fn assert_i4(&self, name: &str, interval: Duration) {
        self.assert_i4_on(name, &Router::HttpRoute, interval);
    }

    /// I4 as [`History::assert_i4`] says, with the route writes read from the `router` object of
    /// rollout `name`. Where that object never carries a step's weight (an HTTPRoute that stays
    /// the user's), the step is timed by status alone.
    pub fn assert_i4_on(&self, name: &str, router: &Router, interval: Duration) {
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
        // Clock restarts on leaving `Invalid`: (revision, index, stepStartedAt, rv).
        let mut restarts: Vec<(String, i64, jiff::Timestamp, u64)> = Vec::new();
        let mut previous_phase = String::new();
        for v in &canaries {
            let status = &v.object["status"];
            let this_phase = status["phase"].as_str().unwrap_or("").to_owned();
            let left_invalid = previous_phase == "Invalid";
            previous_phase = this_phase;
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
            let restarted = left_invalid
                && steps.last().is_some_and(|s| {
                    s.revision == revision
                        && s.index == index
                        && s.started.parse::<jiff::Timestamp>().ok()
                            < started.parse::<jiff::Timestamp>().ok()
                });
            if !known && restarted {
                restarts.push((
                    revision.to_owned(),
                    index,
                    started.parse().expect("stepStartedAt"),
                    v.rv,
                ));
            } else if !known {
                steps.push(Step {
                    revision: revision.to_owned(),
                    index,
                    started: started.to_owned(),
                    weight: status["canaryWeight"].as_i64().unwrap_or(0) as i32,
                    rv: v.rv,
                });
            }
        }
        let mut reader = RouterReader::new(router, name);
        let routes: Vec<(Version, i32)> = self
            .versions()
            .into_iter()
            .filter_map(|v| reader.read(&v).map(|reading| (v, reading.reaching)))
            .collect();
        // The route write that put `weight` in place last before resourceVersion `rv`.
        let route_write = |weight: i32, rv: u64| -> Option<&Version> {
            let mut previous = None;
            let mut found = None;
            for (route, w) in routes.iter().take_while(|(r, _)| r.rv < rv) {
                let w = *w;
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
        // A step's clock restarted on leaving `Invalid` (the spec that judged the step changed)
        // only delays the step: what ends it comes at least `interval` after the restart too.
        for (revision, index, restarted, rv) in &restarts {
            let end = canaries.iter().find(|v| {
                let status = &v.object["status"];
                v.rv > *rv
                    && match status["phase"].as_str() {
                        Some("Progressing") => {
                            status["revision"] != revision.as_str() || status["stepIndex"] != *index
                        }
                        Some("Promoting" | "WaitingPromotion") => {
                            status["revision"] == revision.as_str()
                        }
                        _ => false,
                    }
            });
            let Some(end) = end else {
                continue;
            };
            let status = &end.object["status"];
            let ended_at = self.written_at(end);
            assert!(
                ended_at.duration_since(*restarted) >= interval_span,
                "I4: {revision} step {index}, its clock restarted at {restarted} (rv {rv}), ended at \
                 rv {} ({ended_at}), before its interval {interval:?}",
                end.rv
            );
            if status["revision"] == revision.as_str()
                && let Some(next) = status["stepStartedAt"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                && status["phase"] == "Progressing"
            {
                assert!(
                    next.duration_since(*restarted) >= interval_span,
                    "I4: {revision} step {index}, its clock restarted at {restarted}, was followed by \
                     a step started at {next}, before its interval {interval:?}"
                );
            }
        }
    }

    /// I2 on the whole history, in time: whenever the canary weight the route `name` reads back
    /// and the weight the Canary `name`'s status says differ, they agree again within `within`
    /// of the write that parted them (by the server's commits on the test cluster, by watch
    /// arrival elsewhere), and they do not stay apart at the end for longer than `within`.
    /// Only statuses with a phase count (before its first status the Canary says nothing). The
    /// route's weight is that of its rules without header or query matches: an A/B rule sending
    /// every matching request to the canary is no weight, and status says 0 for it.
    ///
    /// The route is the HTTPRoute `name` ([`History::assert_i2_on`] for another router).
    pub fn assert_i2(&self, name: &str, within: Duration) {
        self.assert_i2_on(name, &Router::HttpRoute, within);
    }

    /// I2 as [`History::assert_i2`] says, with the weight read back from the `router` object of
    /// rollout `name` ([`Router`]: a canary Ingress that does not exist reads back 0).
    pub fn assert_i2_on(&self, name: &str, router: &Router, within: Duration) {
        let within_span = jiff::SignedDuration::try_from(within).expect("a short duration");
        let what = router.describe(name);
        let mut reader = RouterReader::new(router, name);
        let mut route: Option<i64> = reader.initial().map(|r| i64::from(r.weighted));
        let mut status: Option<i64> = None;
        let mut parted: Option<Version> = None;
        for v in self.versions() {
            if let Some(reading) = reader.read(&v) {
                route = Some(i64::from(reading.weighted));
            } else if v.kind == "Canary"
                && v.name == name
                && v.object["status"]["phase"].is_string()
            {
                status = Some(v.object["status"]["canaryWeight"].as_i64().unwrap_or(0));
            } else {
                continue;
            }
            let (Some(r), Some(s)) = (route, status) else {
                continue;
            };
            match (r == s, &parted) {
                (false, None) => parted = Some(v),
                (true, Some(from)) => {
                    let apart = self.written_at(&v).duration_since(self.written_at(from));
                    assert!(
                        apart <= within_span,
                        "I2: {what} read {r}% back and status said otherwise for {apart:?} \
                         (rv {} to rv {}), longer than {within:?}",
                        from.rv,
                        v.rv
                    );
                    parted = None;
                }
                _ => {}
            }
        }
        if let Some(from) = parted {
            // Still apart: a violation once they have been apart longer than `within` by now
            // (the write that reunites them may be on its way).
            let apart = jiff::Timestamp::now().duration_since(self.written_at(&from));
            assert!(
                apart <= within_span,
                "I2: {what} ({route:?}%) and status ({status:?}%) still disagree at the end, \
                 {apart:?} after rv {} parted them, longer than {within:?}",
                from.rv
            );
        }
    }

    /// I3 on the whole history: no version of Canary `name` leaves the steps for promotion
    /// (`Promoting` or `WaitingPromotion`) unless that same status shows a complete, passing
    /// analysis of its revision ([`complete_analysis`]).
    pub fn assert_i3(&self, name: &str) {
        let canaries = self.of("Canary", name);
        for v in &canaries {
            let status = &v.object["status"];
            if !matches!(
                status["phase"].as_str(),
                Some("Promoting" | "WaitingPromotion")
            ) {
                continue;
            }
            if let Err(missing) = complete_analysis(&v.object, last_step_started(&canaries, v)) {
                panic!("I3: {name} promoting at rv {} {missing}: {status}", v.rv);
            }
        }
    }

    /// I6 on the whole history: a template (told apart by its image) reaches the pods of the
    /// stable Deployment `name` only by a promotion. The first template the Deployment carries
    /// is the baseline. Every later one is released (the Deployment carries it unpaused) only
    /// where the first Canary status after the release, written by the same reconcile, is
    /// `Promoting` that revision with a passing check of every step in its records; going back
    /// to a template released before (a rollback of the target) is no release. No ReplicaSet of the Deployment has pods
    /// of a template before its release.
    pub fn assert_i6(&self, name: &str) {
        let deployments = self.of("Deployment", name);
        let canaries = self.of("Canary", name);
        let Some(first) = deployments.first() else {
            return;
        };
        let mut released_at: std::collections::BTreeMap<String, u64> = Default::default();
        // The baseline ran before the history began: its ReplicaSet may well be recorded
        // before the first Deployment version the watch delivered.
        if let Some(baseline) = image(&first.object) {
            released_at.insert(baseline.to_owned(), 0);
        }
        for v in &deployments {
            let this = image(&v.object).map(str::to_owned);
            let analysed_before = this.as_ref().is_some_and(|i| released_at.contains_key(i));
            if v.object["spec"]["paused"] == true || analysed_before {
                continue;
            }
            let decided = canaries.iter().find(|c| c.rv > v.rv).unwrap_or_else(|| {
                panic!(
                    "I6: {name} released {this:?} at rv {} with no Canary status after it",
                    v.rv
                )
            });
            let status = &decided.object["status"];
            let promoted =
                match complete_analysis(&decided.object, last_step_started(&canaries, decided)) {
                    Err(missing) if status["phase"] == "Promoting" => Err(missing),
                    Err(missing) => Err(format!("not promoting, and {missing}")),
                    Ok(()) if status["phase"] == "Promoting" => Ok(()),
                    Ok(()) => Err("not promoting".to_owned()),
                };
            if let Err(why) = promoted {
                panic!(
                    "I6: {name} released {this:?} at rv {}, and the status written after it \
                     (rv {}) is {why}: {status}",
                    v.rv, decided.rv
                );
            }
            if let Some(this) = &this {
                released_at.entry(this.clone()).or_insert(v.rv);
            }
        }
        for v in self.versions() {
            if v.kind != "ReplicaSet" || !owned_by(&v.object, name) || !has_pods(&v.object) {
                continue;
            }
            let Some(ran) = image(&v.object) else {
                continue;
            };
            match released_at.get(ran) {
                Some(&at) if at <= v.rv => {}
                at => panic!(
                    "I6: the stable pods of {name} ran {ran} at rv {} (ReplicaSet {}), before any \
                     release of it ({at:?})",
                    v.rv, v.name
                ),
            }
        }
    }

    /// Every invariant the history shows, on rollout `name` (Canary, target Deployment and
    /// HTTPRoute all named `name`) with analysis interval `interval`: I1, I2 (within
    /// [`I2_WITHIN`]), I3, I4 and I6. Prints the history when one fails and
    /// `SLUICE_E2E_HISTORY` is set.
    pub fn assert_invariants(&self, name: &str, interval: Duration) {
        self.assert_invariants_on(name, &Router::HttpRoute, interval);
    }

    /// Every invariant the history shows, as [`History::assert_invariants`] says, with the
    /// traffic split read back from the `router` object of rollout `name` (I1, I2 and I4).
    pub fn assert_invariants_on(&self, name: &str, router: &Router, interval: Duration) {
        self.dumping(|| {
            self.assert_i1_on(name, router);
            self.assert_i2_on(name, router, I2_WITHIN);
            self.assert_i3(name);
            self.assert_i4_on(name, router, interval);
            self.assert_i6(name);
        });
    }

    /// Runs `checks`, printing the history first if they panic and `SLUICE_E2E_HISTORY` is set.
    pub fn dumping(&self, checks: impl FnOnce()) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
        if let Err(panic) = outcome {
            if std::env::var_os("SLUICE_E2E_HISTORY").is_some() {
                eprintln!("history:\n{}", self.dump());
            }
            std::panic::resume_unwind(panic);
        }
    }
}

/// The resourceVersion of an object read from the API server.
pub fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|rv| rv.parse().ok())
        .expect("a resourceVersion")
}

/// Whether the status of `canary` records a complete, passing analysis of its revision: a
/// passing check of every step in its check records, the last of them passing. A Canary with no
/// metrics makes no check records (its checks pass by having nothing to measure): for it, a
/// check of the last step (`lastCheckAt` no earlier than `last_step_started`, the
/// `stepStartedAt` of the revision's last step while it progressed) with no failed check
/// counted. Err says what is missing.
pub fn complete_analysis(
    canary: &Value,
    last_step_started: Option<jiff::Timestamp>,
) -> Result<(), String> {
    let status = &canary["status"];
    let steps = status["stepCount"].as_i64().unwrap_or(0);
    if steps <= 0 {
        return Err("with no step count".to_owned());
    }
    let log: Vec<&Value> = status["analysis"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["revision"] == status["revision"])
        .collect();
    let measured = canary["spec"]["analysis"]["metrics"]
        .as_array()
        .is_some_and(|m| !m.is_empty())
        || !canary["spec"]["policyRef"].is_null();
    if !measured && log.is_empty() {
        let checked = match (
            status["lastCheckAt"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok()),
            last_step_started,
        ) {
            (Some(check), Some(started)) => check >= started,
            _ => false,
        };
        if !checked || status["failedChecks"].as_i64().unwrap_or(0) != 0 {
            return Err("with no passing check of its last step (no metrics)".to_owned());
        }
        return Ok(());
    }
    if let Some(step) = (0..steps).find(|&step| {
        !log.iter()
            .any(|r| r["step"] == step && r["verdict"] == "Pass")
    }) {
        return Err(format!("without a passing check of step {step}"));
    }
    if log.last().map(|r| &r["verdict"]) != Some(&Value::from("Pass")) {
        return Err("after a check that did not pass".to_owned());
    }
    Ok(())
}

/// The `stepStartedAt` of the last step of `promoting`'s revision, from the last version before
/// it that progressed at that step.
fn last_step_started(canaries: &[Version], promoting: &Version) -> Option<jiff::Timestamp> {
    let status = &promoting.object["status"];
    let last = status["stepCount"].as_i64()? - 1;
    canaries
        .iter()
        .rev()
        .filter(|v| v.rv < promoting.rv)
        .map(|v| &v.object["status"])
        .find(|s| {
            s["phase"] == "Progressing"
                && s["revision"] == status["revision"]
                && s["stepIndex"] == last
        })
        .and_then(|s| s["stepStartedAt"].as_str()?.parse().ok())
}

/// The canary weight of the route's rules that match requests by no header or query parameter
/// (the weighted split); 0 when they have no canary backend.
fn weighted_canary_weight(route: &Value, service: &str) -> i32 {
    let mut weighted = route.clone();
    if let Some(rules) = weighted["spec"]["rules"].as_array_mut() {
        rules.retain(|rule| {
            !rule["matches"].as_array().into_iter().flatten().any(|m| {
                m["headers"].as_array().is_some_and(|h| !h.is_empty())
                    || m["queryParams"].as_array().is_some_and(|q| !q.is_empty())
            })
        });
    }
    route_canary_weight(&weighted, service)
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
