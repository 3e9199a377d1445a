//! The API server misbehaving, end to end: the real `sluice controller` against the test cluster,
//! the Deployment stand-in and a scripted Prometheus answering healthy values, each fault aimed
//! at sluice's own requests (matched by its User-Agent) and asserted to have hit them.
//!
//! 1. Every request slow (2 s, twice the interval) across two reconciles: no two writes of one
//!    object in flight at once, none repeated, each step's route written once.
//! 2. Every watch of sluice's cut and answered 410 Expired, so every cache lists again: no new
//!    revision, and not one write on the resync.
//! 3. 429 with `Retry-After` on a route and a status write: sluice comes back no earlier than
//!    Retry-After, counts each in `sluice_api_throttled_total`, and loses no step.
//! 4. SIGKILL between step 1's route write and its status write, and while the route write is on
//!    the way (made deterministic by parking the write, then losing it with the process): the
//!    restart takes the step once, and route and status agree again within 2 s (I2). After a kill
//!    between the route write and the status write, the restart adopts the step the route
//!    already carries (it used to put the previous weight back and take the step again).
//! 5. The stable side losing its ready pods mid-analysis: the rollout holds (see the test).
//!
//! Every test records the whole history of the objects from watches (`support::history`) and
//! checks on it, besides its scenario: I1 (no weight on a canary without ready pods), I2 (route
//! read back equals status within [`I2_WITHIN`], or the injected delay plus that), I4 (no step
//! before its interval from its acknowledged route write, none repeated or skipped) and I6 (image
//! 2 reaches the stable side only by a promotion decided on a passing check of every step).
//! Timing bounds come from the spec (`interval`), the injected fault (delay, Retry-After) and the
//! allowance [`I2_WITHIN`]; nothing sleeps to make timing pass.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sluice_testcluster::faults::Injected;
use sluice_testcluster::kubelet::{self, NeverReady};
use sluice_testcluster::prometheus::fake::{Answer, FakePrometheus};
use sluice_testcluster::{Faults, InjectedError, RequestMatch, Write};
use support::history::{History, Version, image};
use support::{Env, Hold, NAMESPACE, SLUICE_USER_AGENT, app_manifests, phase, route_canary_weight};
use tokio::io::AsyncBufReadExt;

const IMAGE_1: &str = "registry.local/web:1";
const IMAGE_2: &str = "registry.local/web:2";
/// The spec's `interval`.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long the route may read back another weight than the Canary's status says (I2).
const I2_WITHIN: Duration = Duration::from_secs(2);

fn canary_manifest(prometheus: &str) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Canary
metadata: {{name: web, namespace: {NAMESPACE}}}
spec:
  targetRef: {{name: web}}
  service: {{port: 8080}}
  router: {{gatewayAPI: {{httpRoute: {{name: web}}}}}}
  strategy: {{canary: {{stepWeights: [20, 50]}}}}
  analysis:
    interval: 1s
    threshold: 2
    progressDeadline: 1m
    provider: {{prometheus: {{address: "{prometheus}"}}}}
    metrics:
    - name: error-rate
      query: 'sum(rate(http_requests_total{{code=~"5..", pod=~"{{{{ workload }}}}-.*"}}[{{{{ interval }}}}]))'
      max: 0.05
"#
    )
}

/// The cluster, the stand-in, a healthy Prometheus, the app at image 1 with its Canary adopted
/// (Idle), the controller, and the history recording.
struct Scene {
    env: Env,
    history: History,
    _prometheus: FakePrometheus,
    /// Where the running controller serves `/metrics`.
    metrics: String,
    /// Check records of a status write the test saw lost with a killed controller: the only
    /// record of checks whose outcome the route already carries (I6 reads them with status).
    lost_checks: Vec<Value>,
}

impl Drop for Scene {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SLUICE_E2E_HISTORY").is_some() {
            eprintln!("history:\n{}", self.history.dump());
        }
    }
}

impl Scene {
    async fn start() -> Scene {
        Scene::start_with(None).await
    }

    /// As [`Scene::start`], with the stand-in's pods of templates `never_ready` takes never ready.
    async fn start_with(never_ready: Option<NeverReady>) -> Scene {
        let mut env = Env::start(Hold::AdmissionPolicy).await;
        if never_ready.is_some() {
            env.kubelet = kubelet::spawn(
                env.client(),
                kubelet::Options {
                    config: kubelet::Config {
                        readiness_delay: Duration::from_millis(300),
                        never_ready,
                    },
                    ..Default::default()
                },
            );
        }
        let prometheus = FakePrometheus::start().await.expect("fake prometheus");
        prometheus.set_default(Answer::value(0.0));
        let history = History::record_on(&env.cluster);
        env.apply(&app_manifests("web", IMAGE_1, 2)).await;
        env.apply(&canary_manifest(&prometheus.url())).await;
        let mut scene = Scene {
            env,
            history,
            _prometheus: prometheus,
            metrics: String::new(),
            lost_checks: Vec::new(),
        };
        scene.start_controller().await;
        scene.wait_phase("Idle", None).await;
        scene
    }

    fn faults(&self) -> Faults {
        self.env.cluster.faults().expect("local cluster")
    }

    /// Starts `sluice controller` as `Env::start_controller` does, logging JSON to a pipe read
    /// here to learn where it serves `/metrics` (it binds port 0).
    async fn start_controller(&mut self) {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("controller")
            .arg("--kubeconfig")
            .arg(self.env.cluster.kubeconfig_path())
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .env(
                "RUST_LOG",
                std::env::var("SLUICE_E2E_RUST_LOG").unwrap_or_else(|_| "sluice=debug,info".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("sluice controller starts");
        let stderr = child.stderr.take().expect("stderr piped");
        self.env.controller = Some(child);
        let (bound, learnt) = tokio::sync::oneshot::channel();
        // Reads the log to its end, so the controller never blocks on a full pipe.
        tokio::spawn(async move {
            let echo = std::env::var_os("SLUICE_E2E_LOGS").is_some();
            let mut bound = Some(bound);
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("{line}");
                }
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["message"] == "serving metrics"
                    && let (Some(addr), Some(bound)) = (entry["addr"].as_str(), bound.take())
                {
                    let _ = bound.send(addr.to_owned());
                }
            }
        });
        self.metrics = tokio::time::timeout(Duration::from_secs(30), learnt)
            .await
            .expect("the controller logs its metrics address")
            .expect("the controller logs its metrics address");
    }

    /// The controller's `/metrics`, as (series, value).
    async fn scrape(&self) -> Vec<(String, f64)> {
        let text = reqwest::get(format!("http://{}/metrics", self.metrics))
            .await
            .and_then(|r| r.error_for_status())
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics body");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// The newest version of the Canary the history holds.
    fn canary_now(&self) -> Option<Value> {
        self.history
            .of("Canary", "web")
            .pop()
            .map(|version| version.object)
    }

    /// Waits until the Canary, as the history has it, is one `accept` takes. Reads the history,
    /// not the API server, so an injected delay does not slow it.
    async fn wait_canary(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        self.env
            .eventually(what, Duration::from_secs(60), || async {
                self.canary_now().filter(|canary| accept(canary))
            })
            .await
    }

    /// Waits until the Canary is in `phase` (for the revision of `image`, if given).
    async fn wait_phase(&self, want: &str, image: Option<&str>) -> Value {
        let revision = match image {
            Some(image) => Some(self.revision_of(image).await),
            None => None,
        };
        self.wait_canary(&format!("the Canary to be {want} ({image:?})"), |canary| {
            let revision_ok = revision.as_deref().is_none_or(|r| {
                canary["status"]["revision"].as_str() == Some(r)
                    && (want != "Succeeded"
                        || canary["status"]["stableRevision"].as_str() == Some(r))
            });
            phase(canary) == want && revision_ok
        })
        .await
    }

    /// Waits until step `index` (at `weight`) is in the Canary's status.
    async fn wait_step(&self, index: i64, weight: i64) -> Value {
        self.wait_canary(&format!("step {index} ({weight}%) in status"), |canary| {
            let status = &canary["status"];
            phase(canary) == "Progressing"
                && status["stepIndex"] == index
                && status["canaryWeight"] == weight
        })
        .await
    }

    /// The revision (template hash) of `want`: the revision label of the canary Deployment that
    /// ran it.
    async fn revision_of(&self, want: &str) -> String {
        self.env
            .eventually(
                &format!("a canary of {want}"),
                Duration::from_secs(60),
                || async {
                    self.history
                        .of("Deployment", "web-canary")
                        .iter()
                        .find(|v| image(&v.object) == Some(want))
                        .and_then(|v| {
                            v.object["metadata"]["labels"]["sluice.dev/revision"]
                                .as_str()
                                .map(str::to_owned)
                        })
                },
            )
            .await
    }

    /// The checks every scenario ends with, on the whole history.
    fn assert_invariants(&self) {
        self.assert_invariants_with_i2_within(I2_WITHIN);
    }

    /// [`Scene::assert_invariants`], with route and status allowed to disagree for `i2_within`.
    fn assert_invariants_with_i2_within(&self, i2_within: Duration) {
        self.history.assert_i1("web");
        assert_i2_within(&self.history, i2_within);
        self.history.assert_i4("web", INTERVAL);
        assert_i6(&self.history, &self.lost_checks);
    }
}

/// I2 on the whole history, in time: whenever the route's canary weight and the Canary's status
/// weight differ, they agree again within `within` of the write that parted them (by the server's
/// commit times), and they agree at the end.
fn assert_i2_within(history: &History, within: Duration) {
    let within = jiff::SignedDuration::try_from(within).expect("a short duration");
    let mut route: Option<i64> = None;
    let mut status: Option<i64> = None;
    let mut parted: Option<&Version> = None;
    let versions = history.versions();
    for v in &versions {
        match v.kind.as_str() {
            "HTTPRoute" if v.name == "web" => {
                route = Some(i64::from(route_canary_weight(&v.object, "web")));
            }
            "Canary" if v.name == "web" && v.object["status"]["phase"].is_string() => {
                status = Some(v.object["status"]["canaryWeight"].as_i64().unwrap_or(0));
            }
            _ => continue,
        }
        let (Some(r), Some(s)) = (route, status) else {
            continue;
        };
        match (r == s, parted) {
            (false, None) => parted = Some(v),
            (true, Some(from)) => {
                let apart = history
                    .written_at(v)
                    .duration_since(history.written_at(from));
                assert!(
                    apart <= within,
                    "I2: the route read {r}% back and status said otherwise for {apart:?} (rv {} to \
                     rv {}), longer than {within:?}",
                    from.rv,
                    v.rv
                );
                parted = None;
            }
            _ => {}
        }
    }
    assert!(
        parted.is_none(),
        "I2: the route ({route:?}) and status ({status:?}) still disagree at the end, since rv {:?}",
        parted.map(|v| v.rv)
    );
}

/// I6 on the whole history: image 2 is released to the stable side (the target carries it
/// unheld, or its pods run it) only by a promotion decided on a complete analysis. The promotion
/// reconcile releases the target before it writes the status that records its decision, so: the
/// last Canary status before the release is at the plan's last step of that revision, and the
/// first after it is `Promoting` that revision with a passing check of every step.
fn assert_i6(history: &History, lost_checks: &[Value]) {
    let unheld = history
        .of("Deployment", "web")
        .into_iter()
        .find(|v| image(&v.object) == Some(IMAGE_2) && v.object["spec"]["paused"] != true)
        .map(|v| v.rv);
    let pods = history.first_pods_of("web", IMAGE_2);
    let Some(released) = unheld.into_iter().chain(pods).min() else {
        return;
    };
    let canaries = history.of("Canary", "web");
    let before = canaries
        .iter()
        .rev()
        .find(|v| v.rv < released)
        .map(|v| &v.object["status"]);
    let after = canaries
        .iter()
        .find(|v| v.rv > released)
        .map(|v| &v.object["status"]);
    let (Some(before), Some(after)) = (before, after) else {
        panic!("I6: image 2 released at rv {released} with no Canary status around it");
    };
    let steps = before["stepCount"].as_i64().unwrap_or(0);
    assert!(
        before["phase"] == "Progressing" && steps > 0 && before["stepIndex"] == steps - 1,
        "I6: image 2 released at rv {released} while the Canary was not at its last step: {before}"
    );
    let mut records = after["analysis"].as_array().cloned().unwrap_or_default();
    records.extend(lost_checks.iter().cloned());
    let passed = (0..steps).all(|step| {
        records.iter().any(|r| {
            r["revision"] == before["revision"] && r["step"] == step && r["verdict"] == "Pass"
        })
    });
    assert!(
        after["phase"] == "Promoting" && after["revision"] == before["revision"] && passed,
        "I6: image 2 released at rv {released}, and the next status is not a promotion with a \
         passing check of every step: {after}"
    );
}

/// The value of `series` (name and labels exactly as exposed), 0 when absent.
fn sample(metrics: &[(String, f64)], series: &str) -> f64 {
    metrics
        .iter()
        .find(|(s, _)| s == series)
        .map_or(0.0, |(_, v)| *v)
}

/// sluice's own PATCH of `resource` (its `status` for Canaries) in the test namespace.
fn sluice_patch(resource: &str) -> RequestMatch {
    let subresource = if resource == "canaries" { "status" } else { "" };
    RequestMatch::any()
        .client(SLUICE_USER_AGENT)
        .verb("patch")
        .resource(resource)
        .subresource(subresource)
        .namespace(NAMESPACE)
}

/// Which object a write is of: resource, subresource, namespace and name (a create's from its
/// body; a generated name makes it an object of its own).
fn object_of(write: &Write) -> (String, String, String, String) {
    let name = if write.name.is_empty() {
        let body: Value = serde_json::from_str(&write.body).unwrap_or(Value::Null);
        body["metadata"]["name"]
            .as_str()
            .map_or_else(|| format!("<generated {:?}>", write.at), str::to_owned)
    } else {
        write.name.clone()
    };
    (
        write.key.resource.clone(),
        write.key.subresource.clone(),
        write.key.namespace.clone(),
        name,
    )
}

/// The canary weight a route write carries.
fn written_weight(write: &Write) -> i32 {
    serde_json::from_str(&write.body).map_or(-1, |body: Value| route_canary_weight(&body, "web"))
}

fn route_writes(writes: &[Write]) -> Vec<&Write> {
    writes
        .iter()
        .filter(|w| w.key.resource == "httproutes" && w.name == "web")
        .collect()
}

/// Waits until every failure of `rule` has been taken, and asserts that each was taken by a
/// request of sluice's of the verb, resource, subresource and namespace the rule names.
async fn assert_taken_by_sluice(faults: &Faults, rule: &Injected) {
    let m = rule.matcher();
    let log = || -> String { faults.hits().iter().map(|h| format!("  {h}\n")).collect() };
    assert!(
        rule.taken(Duration::from_secs(20)).await,
        "every {:?} meant for sluice's {:?} {:?}/{:?} was taken; fault log:\n{}",
        rule.error(),
        m.verb,
        m.resource,
        m.subresource,
        log()
    );
    let hits = rule.hits();
    assert_eq!(hits.len(), rule.count() as usize, "{hits:?}");
    for hit in hits {
        let r = &hit.request;
        assert!(
            r.is_from(SLUICE_USER_AGENT)
                && m.verb.as_deref().is_none_or(|v| v == r.verb)
                && m.resource.as_deref().is_none_or(|v| v == r.resource)
                && m.subresource.as_deref().is_none_or(|v| v == r.subresource)
                && m.namespace.as_deref().is_none_or(|v| v == r.namespace),
            "the injected {:?} went to sluice's own request, not to {r}",
            rule.error()
        );
    }
}

/// The steps revision `revision` took in status, in order: each distinct (index, weight,
/// `stepStartedAt`) while Progressing, consecutive repeats folded. A step restarted shows twice.
fn steps_taken(history: &History, revision: &str) -> Vec<(i64, i64, String)> {
    let mut steps: Vec<(i64, i64, String)> = Vec::new();
    for v in history.of("Canary", "web") {
        let status = &v.object["status"];
        if status["phase"] != "Progressing" || status["revision"] != revision {
            continue;
        }
        let Some(started) = status["stepStartedAt"].as_str() else {
            continue;
        };
        let step = (
            status["stepIndex"].as_i64().unwrap_or(-1),
            status["canaryWeight"].as_i64().unwrap_or(-1),
            started.to_owned(),
        );
        if steps.last() != Some(&step) {
            steps.push(step);
        }
    }
    steps
}

/// Asserts that revision `revision` took step 0 at 20% and step 1 at 50%, each once, and the
/// route went 0 -> 20 -> 50 -> 0, each weight once.
fn assert_each_step_once(scene: &Scene, revision: &str) {
    let steps = steps_taken(&scene.history, revision);
    let taken: Vec<(i64, i64)> = steps.iter().map(|(i, w, _)| (*i, *w)).collect();
    assert_eq!(
        taken,
        [(0, 20), (1, 50)],
        "each step started once, in order, none repeated or skipped: {steps:?}"
    );
    assert_eq!(
        scene.history.route_weights("web"),
        [0, 20, 50, 0],
        "the route took each weight once, in order"
    );
}

/// One line per write, for a failure message.
fn listing(writes: &[&Write], since: SystemTime) -> String {
    let owned: Vec<Write> = writes.iter().map(|w| (*w).clone()).collect();
    support::writes::listing(&owned, since)
}

// ---- 1. A slow API server ---------------------------------------------------------------------

/// Every request to the API server delayed by [`SLOW`] (twice the interval) from the middle of
/// step 0 until the promotion's status is written: two reconciles (step 1's, and the one that
/// leaves the steps) run with every write slow. The write log shows sluice never has two writes
/// of one object in flight at once (each arrives after the previous one of that object was
/// answered), never writes an object twice with the same body, and writes each step's route once:
/// 50% then, after promotion, 0%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_server_gets_each_write_once_and_never_two_of_one_object_at_once() {
    const SLOW: Duration = Duration::from_secs(2);
    if support::skipped_on_a_real_cluster("fault injection") {
        return;
    }
    let scene = Scene::start().await;
    scene.env.set_image("web", IMAGE_2).await;
    scene.wait_step(0, 20).await;
    let faults = scene.faults();
    let mark = scene.env.mark();
    faults.set_delay(SLOW);
    let slow_from = SystemTime::now();
    scene
        .wait_canary("the promotion in status, written slowly", |canary| {
            phase(canary) == "Promoting"
        })
        .await;
    let slow_until = SystemTime::now();
    faults.set_delay(Duration::ZERO);
    let promoted = scene.wait_phase("Succeeded", Some(IMAGE_2)).await;

    let writes = scene.env.sluice_writes_since(&mark);
    let all: Vec<&Write> = writes.iter().collect();
    // The delay held sluice's own writes, those of two reconciles among them: step 1's route
    // write and the promotion's write of the target.
    // (A request reads the delay just after it arrives: one arriving in the last moment before
    // the delay was lifted may have read it lifted.)
    let lifted = slow_until - Duration::from_millis(50);
    let slowed: Vec<&Write> = writes
        .iter()
        .filter(|w| w.arrived >= slow_from && w.arrived < lifted)
        .collect();
    for w in &slowed {
        let held = w.at.duration_since(w.arrived).unwrap_or_default();
        assert!(
            held >= SLOW,
            "sluice's write arrived while the API server was slow yet was held only {held:?}:\n{}",
            listing(&slowed, mark.at)
        );
    }
    assert!(
        slowed
            .iter()
            .any(|w| w.key.resource == "httproutes" && written_weight(w) == 50)
            && slowed
                .iter()
                .any(|w| w.key.resource == "deployments" && w.name == "web"),
        "step 1's route write and the promotion's target write were both slowed:\n{}",
        listing(&slowed, mark.at)
    );
    // No two writes of one object in flight at once, and none repeated.
    let mut by_object: BTreeMap<_, Vec<&Write>> = BTreeMap::new();
    for w in &writes {
        by_object.entry(object_of(w)).or_default().push(w);
    }
    for (object, mut of_object) in by_object {
        of_object.sort_by_key(|w| w.arrived);
        for pair in of_object.windows(2) {
            assert!(
                pair[1].arrived >= pair[0].at,
                "two writes of {object:?} in flight at once:\n{}",
                listing(&all, mark.at)
            );
            assert_ne!(
                pair[0].body,
                pair[1].body,
                "{object:?} written twice with the same body:\n{}",
                listing(&all, mark.at)
            );
        }
    }
    assert_eq!(
        support::writes::status_writes_changing_nothing(&writes),
        0,
        "a status write that changed nothing:\n{}",
        listing(&all, mark.at)
    );
    let route: Vec<i32> = route_writes(&writes)
        .into_iter()
        .map(written_weight)
        .collect();
    assert_eq!(
        route,
        [50, 0],
        "each step's route written once:\n{}",
        listing(&all, mark.at)
    );
    let revision = promoted["status"]["revision"].as_str().expect("revision");
    assert_each_step_once(&scene, revision);
    // The status write that follows a route write is itself held for the delay.
    scene.assert_invariants_with_i2_within(SLOW + I2_WITHIN);
}

// ---- 2. An expired watch and a full relist ----------------------------------------------------

/// Waits until no reconcile is running (every one started has ended) and returns how many have
/// ended.
async fn reconciles_idle(scene: &Scene) -> f64 {
    scene
        .env
        .eventually(
            "the controller to be idle",
            Duration::from_secs(20),
            || async {
                let metrics = scene.scrape().await;
                let started = sample(&metrics, "sluice_reconciles_total");
                let ended = sample(&metrics, "sluice_reconcile_duration_seconds_count");
                (started == ended).then_some(ended)
            },
        )
        .await
}

/// At rest after a promotion, every watch sluice holds is cut, and its re-watch (from the
/// resourceVersion it had) answered 410 Expired, so each of its caches lists everything again and
/// wakes the Canary; twice, so at least two reconciles run on the relisted caches. The relist of the target, now at the promoted template, must not read as a
/// new revision, and the resync must cost no write: no status write (so no new revision, step or
/// `CanaryStarted` in status), no route, Deployment or Event write at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_watch_and_a_full_relist_start_no_revision_and_write_nothing() {
    if support::skipped_on_a_real_cluster("fault injection") {
        return;
    }
    let scene = Scene::start().await;
    scene.env.set_image("web", IMAGE_2).await;
    let promoted = scene.wait_phase("Succeeded", Some(IMAGE_2)).await;
    // At rest: the promotion's last write (its Event) is in, and no reconcile is running.
    scene
        .env
        .eventually("the Promoted event", Duration::from_secs(10), || async {
            support::events_about(scene.env.client(), "web")
                .await
                .iter()
                .any(|(reason, _)| reason == "Promoted")
                .then_some(())
        })
        .await;
    let ended_before = reconciles_idle(&scene).await;
    let faults = scene.faults();
    let mark = scene.env.mark();
    let before = scene.canary_now().expect("the Canary");

    // The watches sluice holds, by resource.
    let mut watches: BTreeMap<String, u64> = BTreeMap::new();
    let counts = scene
        .env
        .cluster
        .requests_from(support::SLUICE_CLIENT)
        .expect("request accounting");
    for (key, n) in &counts.0 {
        if key.verb == "watch" {
            *watches.entry(key.resource.clone()).or_default() += n;
        }
    }
    assert!(
        ["canaries", "deployments", "httproutes"]
            .iter()
            .all(|r| watches.contains_key(*r)),
        "sluice watches Canaries, Deployments and HTTPRoutes: {watches:?}"
    );
    // Twice (each relist wakes the Canary at least once, so two reconciles at least): a 410 for
    // each of those watches, every watch cut, each cache listing again, and every reconcile that
    // woke ended.
    let mut ended = ended_before;
    for round in 1..=2 {
        let round_mark = scene.env.mark();
        let rules: Vec<Injected> = watches
            .iter()
            .map(|(resource, n)| {
                faults.fail_next(
                    u32::try_from(*n).expect("a few watches"),
                    RequestMatch::any()
                        .client(SLUICE_USER_AGENT)
                        .verb("watch")
                        .resource(resource),
                    InjectedError::Expired,
                )
            })
            .collect();
        faults.cut_watches();
        for rule in &rules {
            assert_taken_by_sluice(&faults, rule).await;
        }
        scene
            .env
            .eventually(
                &format!("sluice to list every resource again (round {round})"),
                Duration::from_secs(20),
                || async {
                    let since = scene.env.sluice_requests_since(&round_mark);
                    watches
                        .iter()
                        .all(|(resource, n)| since.count("list", resource) >= *n)
                        .then_some(())
                },
            )
            .await;
        let previous = ended;
        ended = scene
            .env
            .eventually(
                &format!("a reconcile after the relist (round {round})"),
                Duration::from_secs(20),
                || async {
                    let ended = reconciles_idle(&scene).await;
                    (ended > previous).then_some(ended)
                },
            )
            .await;
    }

    let writes = scene.env.sluice_writes_since(&mark);
    assert!(
        writes.is_empty(),
        "the resyncs ({} reconciles) wrote nothing:\n{}",
        ended - ended_before,
        support::writes::listing(&writes, mark.at)
    );
    let after = scene.canary_now().expect("the Canary");
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "the Canary was not written"
    );
    assert_eq!(after["status"]["revision"], promoted["status"]["revision"]);
    assert_eq!(
        after["status"]["stableRevision"],
        promoted["status"]["revision"]
    );
    assert_eq!(phase(&after), "Succeeded");
    let started = support::events_about(scene.env.client(), "web")
        .await
        .into_iter()
        .filter(|(reason, _)| reason == "CanaryStarted")
        .count();
    assert_eq!(started, 1, "one CanaryStarted, for image 2's rollout only");
    scene.assert_invariants();
}

// ---- 3. 429 Too Many Requests with Retry-After -------------------------------------------------

/// Mid-step, the API server answers sluice's next route write 429 with `Retry-After: 2` and its
/// next status write 429 with `Retry-After: 1`. Each is honoured: sluice's next request to that
/// object comes no earlier than Retry-After after the 429 (its reads come from its caches, so the
/// next request is the retried write). Each is counted in `sluice_api_throttled_total`. No step is
/// lost or taken twice: step 1 starts once, from the retried route write's acknowledgement, and
/// lasts its interval from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after_counted_and_loses_no_step() {
    if support::skipped_on_a_real_cluster("fault injection") {
        return;
    }
    let scene = Scene::start().await;
    scene.env.set_image("web", IMAGE_2).await;
    scene.wait_step(0, 20).await;
    let faults = scene.faults();
    let throttled_before = sample(&scene.scrape().await, "sluice_api_throttled_total");
    let mark = scene.env.mark();
    let route = faults.fail_next(
        1,
        sluice_patch("httproutes"),
        InjectedError::TooManyRequestsRetryAfter(2),
    );
    let status = faults.fail_next(1, sluice_patch("canaries"), InjectedError::TooManyRequests);
    let promoted = scene.wait_phase("Succeeded", Some(IMAGE_2)).await;
    assert_taken_by_sluice(&faults, &route).await;
    assert_taken_by_sluice(&faults, &status).await;

    let writes = scene.env.sluice_writes_since(&mark);
    let all: Vec<&Write> = writes.iter().collect();
    for (rule, retry_after) in [(&route, 2), (&status, 1)] {
        let hit = &rule.hits()[0];
        let r = &hit.request;
        let next = writes
            .iter()
            .find(|w| {
                w.arrived > hit.at
                    && w.key.resource == r.resource
                    && w.key.subresource == r.subresource
                    && w.name == r.name
            })
            .unwrap_or_else(|| {
                panic!(
                    "sluice tried {} again after its 429:\n{}",
                    r.resource_path(),
                    listing(&all, mark.at)
                )
            });
        let waited = next.arrived.duration_since(hit.at).unwrap_or_default();
        assert!(
            waited >= Duration::from_secs(retry_after),
            "sluice's next write of {} came {waited:?} after the 429, before its Retry-After of \
             {retry_after} s:\n{}",
            r.resource_path(),
            listing(&all, mark.at)
        );
        assert_eq!(
            next.body, r.body,
            "the next write is the throttled one, tried again"
        );
    }
    let throttled = sample(&scene.scrape().await, "sluice_api_throttled_total");
    assert_eq!(
        throttled - throttled_before,
        2.0,
        "each 429 counted once in sluice_api_throttled_total"
    );
    // The throttled route write of 50%, its retry, and the promotion's 0%: step 1 written once.
    let route_weights: Vec<i32> = route_writes(&writes)
        .into_iter()
        .map(written_weight)
        .collect();
    assert_eq!(
        route_weights,
        [50, 50, 0],
        "step 1's route write, throttled and tried again, then the promotion's:\n{}",
        listing(&all, mark.at)
    );
    let revision = promoted["status"]["revision"].as_str().expect("revision");
    assert_each_step_once(&scene, revision);
    scene.assert_invariants();
}

// ---- 4. SIGKILL between the route write and the status write ----------------------------------

/// Parks sluice's next route write (step 1's, 50%), asserting that it is sluice's and what it
/// carries.
async fn park_step_1_route_write(scene: &Scene) -> sluice_testcluster::Parked {
    let mut parked = scene.faults().park_next(sluice_patch("httproutes"), "web");
    assert!(
        parked.arrived(Duration::from_secs(30)).await,
        "sluice wrote the route for step 1"
    );
    let request = parked.request().expect("the parked request");
    assert!(
        request.is_from(SLUICE_USER_AGENT) && request.resource_path() == "httproutes",
        "the parked request is sluice's route write, not {request}"
    );
    assert_eq!(
        route_canary_weight(&request.body_json(), "web"),
        50,
        "the parked route write is step 1's: {}",
        request.body
    );
    parked
}

/// The checks after a restart: promoted, each step once (step 1 held its interval from the route
/// write that started it, I4), and the route and status agreeing within [`I2_WITHIN`] throughout,
/// the restart included.
async fn assert_resumed(scene: &Scene) {
    let promoted = scene.wait_phase("Succeeded", Some(IMAGE_2)).await;
    let revision = promoted["status"]["revision"].as_str().expect("revision");
    assert_each_step_once(scene, revision);
    scene.assert_invariants();
}

/// Step 1's route write is acknowledged, then sluice is killed (SIGKILL) while its status write
/// that records step 1 is on the way (parked, then lost with the process): the route says 50%,
/// status still step 0 at 20%. The new process takes step 1 from there, once: it neither puts 20%
/// back (repeating step 0) nor starts step 1 a second time, nor skips it; route and status agree
/// again within 2 s of the route write, the restart included (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_route_write_and_before_the_status_write_the_restart_takes_the_step_once()
{
    if support::skipped_on_a_real_cluster("fault injection") {
        return;
    }
    let mut scene = Scene::start().await;
    scene.env.set_image("web", IMAGE_2).await;
    scene.wait_step(0, 20).await;
    let faults = scene.faults();
    let mark = scene.env.mark();
    let route = park_step_1_route_write(&scene).await;
    let mut status = faults.park_next(sluice_patch("canaries"), "web");
    route.release();
    assert!(
        status.arrived(Duration::from_secs(10)).await,
        "sluice wrote the status after the route"
    );
    let request = status.request().expect("the parked status write").clone();
    let body = request.body_json();
    assert!(
        request.is_from(SLUICE_USER_AGENT)
            && request.resource_path() == "canaries/status"
            && body["status"]["stepIndex"] == 1
            && body["status"]["canaryWeight"] == 50,
        "the parked request is sluice's status write recording step 1, not {request}: {}",
        request.body
    );
    // The lost write is the one record of step 0's passing check: the route carries its outcome.
    let passed_step_0 = body["status"]["analysis"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["step"] == 0 && r["verdict"] == "Pass");
    assert!(
        passed_step_0,
        "the lost status write recorded step 0's passing check: {body}"
    );
    scene.lost_checks = body["status"]["analysis"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    scene.env.kill_controller().await;
    status.fail(InjectedError::Internal);
    // Killed between the two: the route carries step 1, status still says step 0.
    assert_eq!(
        route_canary_weight(&scene.env.http_route("web").await, "web"),
        50
    );
    let at_kill = scene.env.canary("web").await.expect("the Canary");
    assert_eq!(
        (
            &at_kill["status"]["stepIndex"],
            &at_kill["status"]["canaryWeight"]
        ),
        (&Value::from(0), &Value::from(20)),
        "the status write was lost with the process"
    );
    scene.start_controller().await;
    assert_resumed(&scene).await;
    // Only the new process's writes after the parked one: no route write of 20% (step 0
    // repeated), and step 1's weight not written again.
    let writes = scene.env.sluice_writes_since(&mark);
    let all: Vec<&Write> = writes.iter().collect();
    let route_weights: Vec<i32> = route_writes(&writes)
        .into_iter()
        .map(written_weight)
        .collect();
    assert_eq!(
        route_weights,
        [50, 0],
        "the parked write of step 1, then the promotion's:\n{}",
        listing(&all, mark.at)
    );
}

/// sluice is killed while step 1's route write is on the way (parked, then lost with the
/// process): the route still says 20%, status step 0. The new process takes step 1 once: one
/// route write of 50%, one status of step 1, step 0 not restarted; route and status agree again
/// within 2 s (I2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_route_write_is_on_the_way_the_restart_takes_the_step_once() {
    if support::skipped_on_a_real_cluster("fault injection") {
        return;
    }
    let mut scene = Scene::start().await;
    scene.env.set_image("web", IMAGE_2).await;
    scene.wait_step(0, 20).await;
    let mark = scene.env.mark();
    let route = park_step_1_route_write(&scene).await;
    scene.env.kill_controller().await;
    route.fail(InjectedError::Internal);
    assert_eq!(
        route_canary_weight(&scene.env.http_route("web").await, "web"),
        20,
        "the route write was lost with the process"
    );
    scene.start_controller().await;
    assert_resumed(&scene).await;
    let writes = scene.env.sluice_writes_since(&mark);
    let all: Vec<&Write> = writes.iter().collect();
    let route_weights: Vec<i32> = route_writes(&writes)
        .into_iter()
        .map(written_weight)
        .collect();
    assert_eq!(
        route_weights,
        [50, 0],
        "the new process's write of step 1 (the lost one is not logged), then the promotion's:\n{}",
        listing(&all, mark.at)
    );
}

// ---- 5. The stable side loses its ready pods mid-analysis -------------------------------------

/// The Canary's `Ready` condition as (status, reason).
fn ready_condition(canary: &Value) -> (String, String) {
    canary["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .unwrap_or_default()
}

/// The target's ready pods in a version of it.
fn ready_pods(deployment: &Value) -> i64 {
    deployment["status"]["readyReplicas"].as_i64().unwrap_or(0)
}

/// What sluice does when the stable side loses every ready pod mid-analysis (the stand-in takes
/// the stable revision's pods to not ready while step 0 runs at 20%, for at least two intervals
/// and two reconciles, then makes them ready again):
///
/// - It holds the rollout where it is: no check (the analysis log does not grow), no step (index,
///   weight and `stepStartedAt` stay), no route write. `Ready` turns False with reason
///   `StableNotReady`, and a Warning event `StableNotReady` says why.
/// - It does not move traffic onto the unanalysed canary to make up for it: the route keeps the
///   stable side's share (80%) although that side has no ready pods. So I1 holds for the canary
///   side only; for the stable side the route keeps what it had, which sluice leaves to the user.
/// - Once the stable side is ready again the step goes on from where it held (not restarted:
///   its `stepStartedAt` is kept), and the rollout finishes with each step once.
///
/// (Before the stable-readiness hold in `core::step`, sluice did not look at the stable side's
/// readiness with a weighted router at all: checks and steps went on, to 50%, while the stable
/// side had no ready pods.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stable_side_losing_its_ready_pods_mid_analysis_holds_the_step_until_it_is_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stable_down = Arc::new(AtomicBool::new(false));
    let down = stable_down.clone();
    let never_ready: NeverReady = Arc::new(move |template| {
        down.load(Ordering::SeqCst)
            && template.spec.as_ref().is_some_and(|s| {
                s.containers
                    .iter()
                    .any(|c| c.image.as_deref() == Some(IMAGE_1))
            })
    });
    let scene = Scene::start_with(Some(never_ready)).await;
    scene.env.set_image("web", IMAGE_2).await;
    scene.wait_step(0, 20).await;
    let reconciles_before = reconciles_idle(&scene).await;
    let mark = scene.env.mark();
    stable_down.store(true, Ordering::SeqCst);
    scene.env.kubelet.resync();
    // The stand-in took the stable pods to not ready, and sluice saw it.
    let lost = scene
        .env
        .eventually(
            "the target to have no ready pods",
            Duration::from_secs(10),
            || async {
                scene
                    .history
                    .of("Deployment", "web")
                    .pop()
                    .filter(|v| ready_pods(&v.object) == 0)
            },
        )
        .await;
    let held = scene
        .wait_canary("Ready False for the stable side", |canary| {
            ready_condition(canary) == ("False".to_owned(), "StableNotReady".to_owned())
        })
        .await;
    // Held for at least two intervals and two reconciles.
    let lost_at = scene.history.written_at(&lost);
    let interval = jiff::SignedDuration::try_from(INTERVAL).expect("interval");
    scene
        .env
        .eventually(
            "two intervals and two reconciles with the stable side down",
            Duration::from_secs(20),
            || async {
                let ended = reconciles_idle(&scene).await;
                (ended >= reconciles_before + 2.0
                    && jiff::Timestamp::now().duration_since(lost_at) >= interval * 2)
                    .then_some(())
            },
        )
        .await;
    let up_mark = scene.env.mark();
    stable_down.store(false, Ordering::SeqCst);
    scene.env.kubelet.resync();
    let promoted = scene.wait_phase("Succeeded", Some(IMAGE_2)).await;

    // While down: the Canary held the step it had when sluice saw it, ran no check, and sluice
    // wrote no route.
    let status = &held["status"];
    let back = scene
        .history
        .of("Deployment", "web")
        .into_iter()
        .find(|v| v.rv > lost.rv && ready_pods(&v.object) > 0)
        .expect("the target ready again");
    assert!(
        scene.history.written_at(&back) >= lost_at + interval * 2,
        "the stable side was down for two intervals"
    );
    for v in scene.history.of("Canary", "web") {
        if v.rv <= lost.rv || v.rv >= back.rv {
            continue;
        }
        let during = &v.object["status"];
        for field in [
            "phase",
            "revision",
            "stepIndex",
            "canaryWeight",
            "stepStartedAt",
            "analysis",
        ] {
            assert_eq!(
                during[field], status[field],
                "the rollout held its {field} at rv {} while the stable side had no ready pods",
                v.rv
            );
        }
    }
    for v in scene.history.of("HTTPRoute", "web") {
        if v.rv > lost.rv && v.rv < back.rv {
            panic!(
                "the route was written at rv {} while the stable side was down",
                v.rv
            );
        }
    }
    let weight = status["canaryWeight"].as_i64().expect("the held weight");
    assert!(
        weight > 0 && weight < 100,
        "the stable side keeps its share: {status}"
    );
    let writes = scene.env.sluice_writes_since(&mark);
    let during: Vec<&Write> = writes.iter().filter(|w| w.at < up_mark.at).collect();
    assert!(
        route_writes(&writes).iter().all(|w| w.at >= up_mark.at),
        "no route write while the stable side was down:\n{}",
        listing(&during, mark.at)
    );
    let events = support::events_about(scene.env.client(), "web").await;
    assert!(
        events.iter().any(|(reason, _)| reason == "StableNotReady"),
        "a StableNotReady event: {events:?}"
    );
    let revision = promoted["status"]["revision"].as_str().expect("revision");
    assert_each_step_once(&scene, revision);
    scene.assert_invariants();
}
