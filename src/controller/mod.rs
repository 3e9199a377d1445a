//! The controller: kube-runtime wiring that, per reconcile, observes from reflector caches (and
//! runs the Prometheus checks and hook calls the core asks for), asks the core, executes the
//! decided actions (server-side apply; deletes and the finalizer's JSON patches aside), and
//! persists status. It makes no rollout decisions of its own (weights, steps, verdicts, promotion
//! and rollback are `core`'s); what the glue does decide is when not to ask the core yet (a Canary
//! cache older than its own last status write, a target another Canary holds: a hand-written Canary
//! wins over an annotation's), how a Canary that does not parse is reported, and how soon a failed
//! reconcile is retried. The opt-in loop ([`optin`]) writes and deletes the Canaries of annotated
//! Deployments.
//!
//! Start-up: the CRDs must be served and the hold mode is chosen from `--hold` and what the API
//! server serves ([`startup`]); the metrics and health server starts; then reflectors fill the
//! caches, one per kind (router kinds only where the API server serves them) except Deployments,
//! watched twice: whole for the Canary controller, as metadata for the opt-in loop, which starts
//! then too. `/readyz` turns ready once the caches the Canary controller observes from have listed
//! their objects; the Canary cache itself is filled by the Canary controller's own watch, which
//! starts then and runs with bounded concurrency until shutdown.

pub mod analysis;
pub mod cached;
pub mod context;
pub mod error;
pub mod execute;
pub mod hooks;
pub mod metrics;
pub mod observe;
pub mod optin;
pub mod reconcile;
pub mod startup;
pub mod stores;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::Api;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use self::analysis::Analysis;
use self::cached::{CachedCanary, CompactObject};
use self::context::Context;
use self::metrics::ControllerMetrics;
use self::startup::{HoldSetting, StartupError};
use self::stores::{Stores, api_resource};
use crate::api::{AnalysisTemplate, CanaryPolicy, CanarySpec, ClusterAnalysisTemplate, names};
use crate::core::validate;
use crate::http::Readiness;

/// How `sluice controller` runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    pub hold: HoldSetting,
    /// Default Prometheus for Canaries that name no provider.
    pub prometheus_url: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    /// Canaries reconciled at once.
    pub concurrency: u16,
    /// The bound on hook calls in flight and the address allow-list.
    pub hooks: crate::hooks::HookSettings,
}

/// Why the controller stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error(transparent)]
    HookClient(#[from] crate::hooks::BuildHookClientError),
    #[error("failed to serve metrics on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the controller until `shutdown` resolves. `bound` learns the metrics address actually bound
/// (useful with port 0).
pub async fn run(
    client: Client,
    config: Config,
    bound: impl FnOnce(SocketAddr) + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RunError> {
    startup::check_crds(&client).await?;
    let hold_mode = startup::hold_mode(&client, config.hold).await?;
    let hook_caller = crate::hooks::HookCaller::new(&config.hooks)?;
    info!(?hold_mode, namespace = ?config.namespace, "starting");

    let mut registry = Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    let readiness = Readiness::default();
    let http = HttpServer::start(config.metrics_addr, registry, readiness.clone(), bound).await?;

    let ns = config.namespace.as_deref();
    // The triggers go through coalescing queues, bounded by the objects they name (I5).
    let (canary_triggers, canary_triggered) = TriggerQueue::new("canary", &metrics);
    let (optin_triggers, optin_triggered) = TriggerQueue::new("optin", &metrics);
    let (stores, canary_writer) =
        start_caches(&client, ns, &canary_triggers, &optin_triggers).await;
    let controller = canary_controller(
        &client,
        ns,
        canary_writer,
        &stores.canaries,
        canary_triggered,
        optin_triggers,
        config.concurrency,
    );
    let context = Arc::new(Context {
        recorder: context::recorder(client.clone()),
        client: client.clone(),
        hold_mode,
        stores,
        metrics,
        analysis: Analysis::new(config.prometheus_url.clone()),
        hooks: hook_caller,
        superseded: Default::default(),
        last_warnings: Default::default(),
    });
    let optin = start_optin_controller(
        &client,
        ns,
        context.clone(),
        optin_triggered,
        config.concurrency,
    );

    wait_synced(&context.stores).await;
    readiness.set_ready(true);
    info!("caches synced");

    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, reconcile::error_policy, context)
        .for_each(|_| async {})
        .await;
    optin.abort();
    info!("stopped");
    readiness.set_ready(false);
    http.stop().await;
    Ok(())
}

/// `/metrics`, `/healthz` and `/readyz`, served until stopped.
struct HttpServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    async fn start(
        addr: SocketAddr,
        registry: Registry,
        readiness: Readiness,
        bound: impl FnOnce(SocketAddr),
    ) -> Result<HttpServer, RunError> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Serve { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| RunError::Serve { addr, source })?;
        bound(local);
        let app = crate::http::router(Arc::new(registry), readiness);
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                warn!(%error, "metrics server stopped");
            }
        });
        Ok(HttpServer { stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts one watch and reflector cache per kind. Each cache tells, after storing an object,
/// which Canaries (and which annotated Deployments) it concerns: a reconcile it wakes always
/// observes that object, and no second watch of the same kind lists everything again at
/// start-up. Returns the caches, and the writer of the Canary cache, which the Canary
/// controller's own watch fills.
async fn start_caches(
    client: &Client,
    ns: Option<&str>,
    canary_triggers: &TriggerQueue<CachedCanary>,
    optin_triggers: &TriggerQueue<optin::DeploymentMeta>,
) -> (Stores, reflector::store::Writer<CachedCanary>) {
    let (canaries, canary_writer) = reflector::store::<CachedCanary>();
    let (deployments, deployment_writer) = reflector::store();
    let (policies, policy_writer) = reflector::store();

    // A Deployment is either a target (by label, or named by a Canary's targetRef) or a canary
    // Deployment sluice owns: its template and readiness move the rollout.
    spawn_cache(namespaced::<Deployment>(client, ns), deployment_writer, {
        let canaries = canaries.clone();
        let triggers = canary_triggers.clone();
        move |deployment: &Deployment| {
            send(&triggers, canaries_for_deployment(&canaries, deployment));
        }
    });
    // A policy change changes every Canary that inherits from it, and the spec of every
    // annotation Canary naming it.
    spawn_cache(Api::<CanaryPolicy>::all(client.clone()), policy_writer, {
        let canaries = canaries.clone();
        let deployments = deployments.clone();
        let triggers = canary_triggers.clone();
        let optin_triggers = optin_triggers.clone();
        move |policy: &CanaryPolicy| {
            let name = policy.name_any();
            send(
                &triggers,
                canaries_matching(&canaries, |c| {
                    c.spec()
                        .and_then(|spec| spec.policy_ref.as_ref())
                        .is_some_and(|policy| policy.name == name)
                }),
            );
            send(&optin_triggers, annotated_with(&deployments, &name));
        }
    });
    // The canary Service sluice owns, and the stable Service the service router switches.
    let services = cache(
        namespaced::<Service>(client, ns),
        wake_routing_through(&canaries, &policies, canary_triggers, Through::Service),
    );
    // The user's Ingress the NGINX router copies, and the canary Ingress sluice owns: a drifted
    // weight must be put back (I2).
    let ingresses = cache(
        namespaced::<Ingress>(client, ns),
        wake_routing_through(&canaries, &policies, canary_triggers, Through::RouterObject),
    );
    // A template change changes the queries of the Canaries that use it.
    let templates = cache(namespaced::<AnalysisTemplate>(client, ns), {
        let canaries = canaries.clone();
        let triggers = canary_triggers.clone();
        move |template: &AnalysisTemplate| {
            let namespace = template.namespace();
            send(
                &triggers,
                canaries_matching(&canaries, |c| c.namespace() == namespace),
            );
        }
    });
    let cluster_templates = cache(Api::<ClusterAnalysisTemplate>::all(client.clone()), {
        let canaries = canaries.clone();
        let triggers = canary_triggers.clone();
        move |_: &ClusterAnalysisTemplate| send(&triggers, canaries_matching(&canaries, |_| true))
    });
    let mut routers = BTreeMap::new();
    for kind in crate::router::kind::KINDS.iter().filter(|kind| kind.custom) {
        if !served(client, kind.api_version, kind.plural).await {
            continue;
        }
        let resource = api_resource(kind);
        let api = match ns {
            Some(ns) => Api::<CompactObject>::namespaced_with(client.clone(), ns, &resource),
            None => Api::<CompactObject>::all_with(client.clone(), &resource),
        };
        let writer = reflector::store::Writer::new(resource.clone());
        let reader = writer.as_reader();
        // Router objects: a weight someone else changed is put back (I2).
        spawn_cache(
            api,
            writer,
            wake_routing_through(&canaries, &policies, canary_triggers, Through::RouterObject),
        );
        routers.insert(kind.kind, (resource, reader));
    }

    let stores = Stores {
        canaries,
        deployments,
        services,
        ingresses,
        policies,
        templates,
        cluster_templates,
        routers,
    };
    (stores, canary_writer)
}

/// The Canary controller, over its own trimmed watch of Canaries (which fills `writer`), woken
/// by the caches through `triggered`.
fn canary_controller(
    client: &Client,
    ns: Option<&str>,
    canary_writer: reflector::store::Writer<CachedCanary>,
    canaries: &Store<CachedCanary>,
    triggered: impl futures::Stream<Item = ObjectRef<CachedCanary>> + Send + 'static,
    optin_triggers: TriggerQueue<optin::DeploymentMeta>,
    concurrency: u16,
) -> Controller<CachedCanary> {
    // The Canary cache is built here rather than by `Controller::new`, so that it is trimmed like
    // the others: a Canary's managedFields (two field managers over a large status) were the
    // biggest part of the controller's memory at 1,000 Canaries.
    let canary_stream = reflector::reflector(
        canary_writer,
        watcher(namespaced::<CachedCanary>(client, ns), watch_config())
            .backoff(WatchBackoff::default())
            .modify(trim),
    )
    // A Canary written, deleted or changed for a Deployment (its own, or a hand-written one that
    // wins over the annotation) decides what the annotation's Canary should be.
    .inspect({
        let triggers = optin_triggers;
        move |event| {
            if let Ok(event) = event
                && let Some(canary) = touched(event)
            {
                send(&triggers, deployments_of_canary(canary));
            }
        }
    })
    .applied_objects();
    Controller::for_stream(canary_stream, canaries.clone())
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .trigger_backoff(WatchBackoff::default())
        .reconcile_on(triggered)
}

/// Starts the opt-in loop, which writes the Canary of each annotated Deployment.
fn start_optin_controller(
    client: &Client,
    ns: Option<&str>,
    context: Arc<Context>,
    triggered: impl futures::Stream<Item = ObjectRef<optin::DeploymentMeta>> + Send + 'static,
    concurrency: u16,
) -> tokio::task::JoinHandle<()> {
    // The opt-in loop watches Deployments' metadata on its own (a small trimmed cache of its own
    // primary objects): it must never hold up the caches the Canary controller starts from.
    let (annotated, annotated_writer) = reflector::store();
    let annotated_stream = reflector::reflector(
        annotated_writer,
        watcher(
            namespaced::<optin::DeploymentMeta>(client, ns),
            watch_config(),
        )
        .backoff(WatchBackoff::default())
        .modify(trim),
    )
    .applied_objects();
    let optin = Controller::for_stream(annotated_stream, annotated)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .trigger_backoff(WatchBackoff::default())
        .reconcile_on(triggered)
        .run(optin::reconcile, optin::error_policy, context)
        .for_each(|_| async {});
    tokio::spawn(optin)
}

fn namespaced<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Objects per page of a watch's initial list. Every watch lists at start-up at once, and the
/// pages decoded together set the controller's peak memory (kube's default page is 500 objects).
const LIST_PAGE_SIZE: u32 = 50;

/// The configuration of every watch the controller runs.
fn watch_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE_SIZE)
}

/// The backoff of every watch the controller runs: the reflector caches it observes from, and the
/// merged trigger streams of both Controllers (their primary watches, which also fill the Canary
/// and Deployment-metadata caches, and the triggers the caches send).
///
/// The default (800 ms doubling to 30 s, reset only by a good item) sleeps once per queued error:
/// after the API server refused connections for a few seconds, the errors of a dozen watches kept
/// the whole merged stream asleep for minutes, so the Canary cache stayed stale and reconciles
/// kept deciding from an old status (a step put back, then taken again); and a cache whose watch
/// had backed off to 30 s during a long outage stayed stale for that long after the server came
/// back. Short and capped here (100 ms doubling to 1 s): a reconnect costs one request per watch.
#[derive(Debug, Clone)]
struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(100);
    const MAX: std::time::Duration = std::time::Duration::from_secs(1);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let current = self.next;
        self.next = (current * 2).min(Self::MAX);
        Some(current)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A reflector cache for `api`, filled by a background task that calls `changed` with every
/// object it stores or removes.
fn cache<K>(api: Api<K>, changed: impl FnMut(&K) + Send + 'static) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    spawn_cache(api, writer, changed);
    reader
}

/// Fills `writer`'s cache from a watch of `api` in a background task, calling `changed` with every
/// object once it is stored or removed (so whatever `changed` wakes reads the cache at least as new
/// as that object).
fn spawn_cache<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    mut changed: impl FnMut(&K) + Send + 'static,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync + Unpin,
{
    tokio::spawn(
        reflector::reflector(
            writer,
            watcher(api, watch_config())
                .backoff(WatchBackoff::default())
                .modify(trim),
        )
        .touched_objects()
        .for_each(move |object| {
            // A watch error is the watcher's to recover from (it backs off and lists again).
            if let Ok(object) = object {
                changed(&object);
            }
            async {}
        }),
    );
}

/// The object a watch event stored or removed, if it carries one.
fn touched<K>(event: &watcher::Event<K>) -> Option<&K> {
    match event {
        watcher::Event::Apply(object)
        | watcher::Event::InitApply(object)
        | watcher::Event::Delete(object) => Some(object),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Queues reconciles of `refs`.
fn send<K>(triggers: &TriggerQueue<K>, refs: Vec<ObjectRef<K>>)
where
    K: Resource,
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    for reference in refs {
        triggers.push(reference);
    }
}

/// The reconciles the caches ask for and the Controller has not taken yet: each object at most
/// once, oldest first. The Controller reads it as the stream given to `reconcile_on`.
///
/// **Bounded (I5).** A trigger for an object already queued is merged into that entry, so the
/// queue holds at most one entry per distinct object, whatever the rate of watch events: 10,000
/// updates of one HTTPRoute leave at most one entry for its Canary. Every object it names comes
/// from a cached object (the Canary a Deployment, Service or router object belongs to, or is
/// routed through; the Deployments a Canary or a policy concerns), so its size is bounded by the
/// caches, as the Controller's own scheduler is (a map keyed by object). The unbounded channel it
/// replaces held one entry per event, and nothing drained it while the Controller's merged
/// trigger stream slept in its backoff after a watch error.
///
/// **No reconcile is lost.** Nothing is ever dropped: merging is the only way a trigger
/// disappears, and a merged trigger is served by the entry it joined. A cache calls its `changed`
/// only after storing the object, so:
/// - a trigger merged into an entry still queued is served by that entry, which the Controller
///   takes after the trigger was pushed: the reconcile it starts reads a cache at least as new as
///   the object that sent the trigger;
/// - a trigger for an object already taken (its reconcile scheduled or running) is queued anew;
///   kube's scheduler holds it while that reconcile runs (merging it there too) and runs one more
///   reconcile after it, which reads the cache as it is then.
///
/// `sluice_trigger_queue_depth`, `sluice_triggers` and `sluice_triggers_coalesced` (by `queue`)
/// show the bound at work.
struct TriggerQueue<K: Resource> {
    shared: Arc<TriggerShared<K>>,
}

struct TriggerShared<K: Resource> {
    queued: std::sync::Mutex<Queued<K>>,
    /// Wakes the one reader when an entry is added (a permit is kept if it is not waiting yet,
    /// so a push between its look and its wait is not missed).
    added: tokio::sync::Notify,
    triggers: prometheus_client::metrics::counter::Counter,
    coalesced: prometheus_client::metrics::counter::Counter,
    depth: prometheus_client::metrics::gauge::Gauge,
}

/// The queued objects, in order and as a set (the set answers "already queued?").
struct Queued<K: Resource> {
    order: std::collections::VecDeque<ObjectRef<K>>,
    members: std::collections::HashSet<ObjectRef<K>>,
}

impl<K: Resource> Clone for TriggerQueue<K> {
    fn clone(&self) -> Self {
        TriggerQueue {
            shared: self.shared.clone(),
        }
    }
}

impl<K> TriggerQueue<K>
where
    K: Resource + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    /// A queue counted in the metrics under `queue = name`, and the stream of its entries for
    /// the Controller (a stream that never ends: the caches keep pushing until the process stops).
    fn new(
        name: &str,
        metrics: &ControllerMetrics,
    ) -> (
        Self,
        impl futures::Stream<Item = ObjectRef<K>> + Send + use<K>,
    ) {
        let labels = self::metrics::QueueLabels {
            queue: name.to_owned(),
        };
        let shared = Arc::new(TriggerShared {
            queued: std::sync::Mutex::new(Queued {
                order: Default::default(),
                members: Default::default(),
            }),
            added: tokio::sync::Notify::new(),
            triggers: metrics.triggers.get_or_create(&labels).clone(),
            coalesced: metrics.triggers_coalesced.get_or_create(&labels).clone(),
            depth: metrics.trigger_queue_depth.get_or_create(&labels).clone(),
        });
        let entries = futures::stream::unfold(shared.clone(), |shared| async move {
            loop {
                if let Some(next) = shared.pop() {
                    return Some((next, shared));
                }
                shared.added.notified().await;
            }
        });
        (TriggerQueue { shared }, entries)
    }
}

impl<K> TriggerQueue<K>
where
    K: Resource,
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    /// Asks for a reconcile of `object`: queues it, or merges it into its entry already queued.
    fn push(&self, object: ObjectRef<K>) {
        let shared = &self.shared;
        shared.triggers.inc();
        {
            let mut queued = shared.lock();
            if queued.members.contains(&object) {
                shared.coalesced.inc();
                return;
            }
            queued.members.insert(object.clone());
            queued.order.push_back(object);
            shared.depth.set(queued.order.len() as i64);
        }
        shared.added.notify_one();
    }
}

impl<K> TriggerShared<K>
where
    K: Resource,
    K::DynamicType: Clone + Eq + std::hash::Hash,
{
    /// Takes the oldest entry; a trigger for it from now on is queued anew.
    fn pop(&self) -> Option<ObjectRef<K>> {
        let mut queued = self.lock();
        let next = queued.order.pop_front()?;
        queued.members.remove(&next);
        self.depth.set(queued.order.len() as i64);
        Some(next)
    }

    /// The queue, also after a panic elsewhere while it was held (every change to it is a whole
    /// push or pop, so it is never left half-changed).
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued<K>> {
        self.queued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Drops from a cached object what sluice never reads and that can be as large as the object
/// itself: `managedFields` and kubectl's `last-applied-configuration` copy of the manifest. Every
/// write sluice makes is built from specific fields, never from these, so memory per cached
/// object shrinks without changing a decision.
fn trim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

async fn served(client: &Client, api_version: &str, plural: &str) -> bool {
    client
        .list_api_group_resources(api_version)
        .await
        .is_ok_and(|list| list.resources.iter().any(|r| r.name == plural))
}

/// Waits until every cache the Canary controller observes from has listed its objects, saying
/// which one it still waits for every [`SYNC_REPORT`] (a cache that never fills is otherwise a
/// silent controller).
async fn wait_synced(stores: &Stores) {
    synced("Deployment", stores.deployments.wait_until_ready()).await;
    synced("Service", stores.services.wait_until_ready()).await;
    synced("Ingress", stores.ingresses.wait_until_ready()).await;
    synced("CanaryPolicy", stores.policies.wait_until_ready()).await;
    synced("AnalysisTemplate", stores.templates.wait_until_ready()).await;
    synced(
        "ClusterAnalysisTemplate",
        stores.cluster_templates.wait_until_ready(),
    )
    .await;
    for (kind, (_, store)) in &stores.routers {
        synced(kind, store.wait_until_ready()).await;
    }
}

/// How often a cache that has not filled yet is reported.
const SYNC_REPORT: std::time::Duration = std::time::Duration::from_secs(10);

async fn synced<E>(kind: &str, ready: impl Future<Output = Result<(), E>>) {
    tokio::pin!(ready);
    let started = std::time::Instant::now();
    loop {
        match tokio::time::timeout(SYNC_REPORT, &mut ready).await {
            Ok(_) => return,
            Err(_) => warn!(
                kind,
                waited = ?started.elapsed(),
                "still waiting for the initial list of this kind"
            ),
        }
    }
}

fn canary_ref(name: &str, namespace: &str) -> ObjectRef<CachedCanary> {
    ObjectRef::new(name).within(namespace)
}

fn canaries_matching(
    canaries: &Store<CachedCanary>,
    predicate: impl Fn(&CachedCanary) -> bool,
) -> Vec<ObjectRef<CachedCanary>> {
    canaries
        .state()
        .iter()
        .filter(|c| predicate(c))
        .filter_map(|c| Some(canary_ref(&c.name_any(), &c.namespace()?)))
        .collect()
}

/// The Canaries that own `object`.
fn owners<K: Resource>(object: &K) -> Vec<ObjectRef<CachedCanary>> {
    let namespace = object.meta().namespace.clone().unwrap_or_default();
    object
        .owner_references()
        .iter()
        .filter(|o| o.kind == "Canary" && o.api_version.starts_with(names::GROUP))
        .map(|o| canary_ref(&o.name, &namespace))
        .collect()
}

fn canaries_for_deployment(
    canaries: &Store<CachedCanary>,
    deployment: &Deployment,
) -> Vec<ObjectRef<CachedCanary>> {
    let mut refs = owners(deployment);
    let namespace = deployment.namespace();
    let name = deployment.name_any();
    if let Some(canary) = deployment.labels().get(names::CANARY_LABEL)
        && let Some(ns) = &namespace
    {
        refs.push(canary_ref(canary, ns));
    }
    refs.extend(canaries_matching(canaries, |c| {
        c.namespace() == namespace && c.target() == Some(name.as_str())
    }));
    refs
}

/// The Deployments a Canary concerns: its target, and the Deployment that owns it.
fn deployments_of_canary(canary: &CachedCanary) -> Vec<ObjectRef<optin::DeploymentMeta>> {
    let Some(namespace) = canary.namespace() else {
        return Vec::new();
    };
    let mut refs: Vec<ObjectRef<optin::DeploymentMeta>> = canary
        .owner_references()
        .iter()
        .filter(|o| o.kind == "Deployment")
        .map(|o| ObjectRef::new(&o.name).within(&namespace))
        .collect();
    if let Some(target) = canary.target() {
        refs.push(ObjectRef::new(target).within(&namespace));
    }
    refs
}

/// The Deployments whose `sluice.dev/policy` annotation names `policy`.
fn annotated_with(
    deployments: &Store<Deployment>,
    policy: &str,
) -> Vec<ObjectRef<optin::DeploymentMeta>> {
    deployments
        .state()
        .iter()
        .filter(|d| crate::core::annotations::policy_of(d.annotations()) == Some(policy))
        .filter_map(|d| Some(ObjectRef::new(&d.name_any()).within(&d.namespace()?)))
        .collect()
}

/// How an object carries a Canary's traffic.
#[derive(Clone, Copy)]
enum Through {
    /// The stable Service (the service router switches its selector).
    Service,
    /// The user's HTTPRoute, Ingress or VirtualService the router writes weights on.
    RouterObject,
}

/// The Canaries `object` concerns: those that own it, and those whose stable Service or router
/// object it is. Only those: mapping an event to every Canary of the namespace made each
/// canary Service a Canary creates wake every other Canary there (quadratic work at adoption).
fn canaries_routing_through<K: Resource>(
    canaries: &Store<CachedCanary>,
    policies: &Store<CanaryPolicy>,
    object: &K,
    through: Through,
) -> Vec<ObjectRef<CachedCanary>> {
    let mut refs = owners(object);
    let namespace = object.meta().namespace.clone();
    let name = object.meta().name.clone().unwrap_or_default();
    refs.extend(canaries_matching(canaries, |c| {
        c.namespace() == namespace
            && c.spec().is_some_and(|spec| match through {
                Through::Service => stable_service(spec, policies) == name,
                Through::RouterObject => router_object(spec, policies).as_deref() == Some(&name),
            })
    }));
    refs
}

/// What a cache of objects that carry Canaries' traffic calls on each change: wake the Canaries
/// routing through the object.
fn wake_routing_through<K: Resource>(
    canaries: &Store<CachedCanary>,
    policies: &Store<CanaryPolicy>,
    triggers: &TriggerQueue<CachedCanary>,
    through: Through,
) -> impl FnMut(&K) + Send + 'static {
    let canaries = canaries.clone();
    let policies = policies.clone();
    let triggers = triggers.clone();
    move |object| {
        send(
            &triggers,
            canaries_routing_through(&canaries, &policies, object, through),
        );
    }
}

/// The policy a Canary names, from the cache.
fn policy_of(spec: &CanarySpec, policies: &Store<CanaryPolicy>) -> Option<Arc<CanaryPolicy>> {
    policies.get(&ObjectRef::new(&spec.policy_ref.as_ref()?.name))
}

/// The name of a Canary's stable Service, by the rule `core::resolve` applies.
fn stable_service(spec: &CanarySpec, policies: &Store<CanaryPolicy>) -> String {
    let policy = policy_of(spec, policies);
    let service = validate::service_spec(&spec.rollout, policy.as_ref().map(|p| &p.spec.rollout));
    validate::stable_service_name(&spec.target_ref.name, service)
}

/// The name of the user's object a Canary's router writes weights on (HTTPRoute, Ingress or
/// VirtualService), by the rules `core::resolve` applies.
fn router_object(spec: &CanarySpec, policies: &Store<CanaryPolicy>) -> Option<String> {
    let policy = policy_of(spec, policies);
    let router = validate::router_spec(&spec.rollout, policy.as_ref().map(|p| &p.spec.rollout))?;
    let router = crate::core::Router::from_spec(router).ok()?;
    router.user_object().map(|object| object.name.clone())
}

#[cfg(test)]
mod tests {
    use futures::{FutureExt, StreamExt};

    use super::*;

    fn queue() -> (
        ControllerMetrics,
        TriggerQueue<CachedCanary>,
        impl futures::Stream<Item = ObjectRef<CachedCanary>>,
    ) {
        let metrics = ControllerMetrics::register(&mut Registry::default());
        let (queue, entries) = TriggerQueue::new("canary", &metrics);
        (metrics, queue, entries)
    }

    /// The canary queue's (depth, triggers, coalesced) in `metrics`.
    fn counts(metrics: &ControllerMetrics) -> (i64, u64, u64) {
        let labels = self::metrics::QueueLabels {
            queue: "canary".into(),
        };
        (
            metrics.trigger_queue_depth.get_or_create(&labels).get(),
            metrics.triggers.get_or_create(&labels).get(),
            metrics.triggers_coalesced.get_or_create(&labels).get(),
        )
    }

    #[test]
    fn a_burst_of_triggers_for_one_canary_queues_it_once() {
        let (metrics, queue, entries) = queue();
        let web = canary_ref("web", "shop");
        for _ in 0..10_000 {
            queue.push(web.clone());
        }
        assert_eq!(counts(&metrics), (1, 10_000, 9_999));
        let mut entries = Box::pin(entries);
        assert_eq!(entries.next().now_or_never(), Some(Some(web)));
        assert_eq!(entries.next().now_or_never(), None, "nothing else queued");
        assert_eq!(counts(&metrics).0, 0);
    }

    #[test]
    fn a_trigger_after_the_controller_took_the_object_queues_it_again() {
        let (_metrics, queue, entries) = queue();
        let mut entries = Box::pin(entries);
        let web = canary_ref("web", "shop");
        queue.push(web.clone());
        assert_eq!(entries.next().now_or_never(), Some(Some(web.clone())));
        queue.push(web.clone());
        assert_eq!(entries.next().now_or_never(), Some(Some(web)));
    }

    #[test]
    fn queued_objects_come_out_oldest_first_each_once() {
        let (_metrics, queue, entries) = queue();
        let mut entries = Box::pin(entries);
        let (web, api) = (canary_ref("web", "shop"), canary_ref("api", "shop"));
        send(&queue, vec![web.clone(), api.clone(), web.clone()]);
        assert_eq!(entries.next().now_or_never(), Some(Some(web)));
        assert_eq!(entries.next().now_or_never(), Some(Some(api)));
        assert_eq!(entries.next().now_or_never(), None);
    }

    #[tokio::test]
    async fn a_waiting_controller_is_woken_by_a_trigger() {
        let (_metrics, queue, entries) = queue();
        let web = canary_ref("web", "shop");
        let taken = tokio::spawn(async move { Box::pin(entries).next().await });
        tokio::task::yield_now().await;
        queue.push(web.clone());
        let taken = tokio::time::timeout(std::time::Duration::from_secs(5), taken)
            .await
            .expect("woken")
            .expect("reader task");
        assert_eq!(taken, Some(web));
    }
}
