//! The in-process Kubernetes API server: plain HTTP on 127.0.0.1 (random port), speaking what
//! kube-rs 5 and kubectl 1.32 use. This module is the HTTP adapter only: it parses the request
//! path and query, consults fault injection and accounting, and hands the work to [`store`].
//! It must not hold business logic beyond translating HTTP to store calls and back.

pub mod defaults;
pub mod discovery;
pub mod errors;
mod events;
pub mod fields;
mod openapi;
pub mod patch;
pub mod resources;
pub mod selectors;
pub mod store;
mod table;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::accounting::{Accounting, RequestKey};
use crate::faults::{FaultState, InjectedError};
use errors::ApiError;
use resources::{ResourceInfo, ResourceTable};
use store::{FieldValidation, PatchType, Store, WriteCtx};

/// Options for starting a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Serve admissionregistration.k8s.io/v1 MutatingAdmissionPolicy(Binding); false emulates an
    /// older cluster.
    pub admission_policies: bool,
    /// How many watch events are kept for resuming watches.
    pub history: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            admission_policies: true,
            history: 20_000,
        }
    }
}

/// State shared by every request handler and the garbage collector.
pub struct Shared {
    pub store: Mutex<Store>,
    pub faults: Arc<FaultState>,
    pub accounting: Arc<Accounting>,
    gc_notify: Notify,
    shutdown: tokio::sync::watch::Sender<bool>,
    addr: SocketAddr,
}

impl Shared {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().expect("store lock poisoned")
    }

    fn after_write(&self, store: &Store) {
        if store.gc_pending {
            self.gc_notify.notify_one();
        }
    }
}

/// A running server. Dropping it stops the server.
pub struct ApiServer {
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    pub async fn start(opts: ServerOptions) -> std::io::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut store = Store::new(ResourceTable::new(opts.admission_policies), opts.history);
        seed_namespaces(&mut store);
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            faults: Arc::new(FaultState::default()),
            accounting: Arc::new(Accounting::default()),
            gc_notify: Notify::new(),
            shutdown,
            addr,
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let rx = shared.shutdown.subscribe();
        let fl = FaultListener {
            inner: listener,
            faults: shared.faults.clone(),
        };
        let server = tokio::spawn(async move {
            let _ = axum::serve(fl, app)
                .with_graceful_shutdown(stopped(rx))
                .await;
        });
        let gc_shared = shared.clone();
        let gc = tokio::spawn(async move {
            let stop = stopped(gc_shared.shutdown.subscribe());
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = gc_shared.gc_notify.notified() => {}
                    _ = &mut stop => return,
                }
                let mut st = gc_shared.lock();
                let mut passes = 0;
                while st.gc_pending && passes < 100 {
                    st.gc_pass();
                    passes += 1;
                }
            }
        });
        Ok(ApiServer {
            shared,
            tasks: vec![server, gc],
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// Stops serving: ends watches, resets connections and waits (at most a few seconds, then
    /// aborts) for the tasks.
    pub async fn stop(mut self) {
        self.signal_stop();
        for mut t in self.tasks.drain(..) {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }

    fn signal_stop(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared.faults.reset_connections();
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.signal_stop();
        // Graceful shutdown is signalled; aborting makes sure nothing outlives the handle.
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Resolves once the shutdown flag is set (or its sender is gone).
pub(crate) async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn seed_namespaces(store: &mut Store) {
    let Some(ri) = store.resources.get("", "v1", "namespaces") else {
        return;
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let ctx = WriteCtx {
            ri: ri.clone(),
            namespace: String::new(),
            manager: "kube-apiserver".into(),
            subresource: String::new(),
            field_validation: FieldValidation::Ignore,
            dry_run: false,
        };
        let _ = store.create(
            &ctx,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        );
    }
}

/// Accepts connections, resetting them while refusal is injected.
struct FaultListener {
    inner: TcpListener,
    faults: Arc<FaultState>,
}

impl axum::serve::Listener for FaultListener {
    type Io = FaultStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((s, a)) = self.inner.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            };
            if self.faults.refusing() {
                let _ = s.set_zero_linger();
                drop(s);
                continue;
            }
            let _ = s.set_nodelay(true);
            let epoch = self.faults.conn_epoch.load(Ordering::SeqCst);
            return (
                FaultStream {
                    inner: s,
                    epoch,
                    faults: self.faults.clone(),
                },
                a,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that breaks (ConnectionReset) once refusal starts or the server stops.
struct FaultStream {
    inner: TcpStream,
    epoch: u64,
    faults: Arc<FaultState>,
}

impl FaultStream {
    fn broken(&self) -> bool {
        self.faults.conn_epoch.load(Ordering::SeqCst) != self.epoch
    }
}

fn reset() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by fault injection",
    )
}

impl tokio::io::AsyncRead for FaultStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.broken() {
            let _ = self.inner.set_zero_linger();
            return std::task::Poll::Ready(Err(reset()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for FaultStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.broken() {
            let _ = self.inner.set_zero_linger();
            return std::task::Poll::Ready(Err(reset()));
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------ request handling

pub(crate) fn json_response(code: u16, body: &Value) -> Response {
    let mut r = Response::new(Body::from(serde_json::to_vec(body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.code, &self.body)
    }
}

fn not_found_path(path: &str) -> Response {
    let _ = path;
    json_response(
        404,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "the server could not find the requested resource", "reason": "NotFound",
            "details": {}, "code": 404}),
    )
}

/// A resource request, parsed from its path.
struct Target {
    ri: Arc<ResourceInfo>,
    namespace: Option<String>,
    name: Option<String>,
    subresource: String,
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Before any injected delay or park: when the client sent it, as near as the server can tell.
    let arrived = std::time::SystemTime::now();
    let query: HashMap<String, String> = Query::try_from_uri(&uri)
        .map(|q: Query<HashMap<String, String>>| q.0)
        .unwrap_or_default();
    let delay = shared.faults.delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let path = uri.path().trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Non-resource paths.
    match segs.as_slice() {
        ["version"] => return json_response(200, &discovery::version()),
        ["api"] => return json_response(200, &discovery::api_versions(&shared.addr.to_string())),
        ["apis"] => return json_response(200, &discovery::group_list(&shared.lock().resources)),
        ["api", "v1"] => {
            return match discovery::resource_list(&shared.lock().resources, "", "v1") {
                Some(d) => json_response(200, &d),
                None => not_found_path(&path),
            };
        }
        ["apis", g] => {
            return match discovery::group(&shared.lock().resources, g) {
                Some(d) => json_response(200, &d),
                None => not_found_path(&path),
            };
        }
        ["apis", g, v] => {
            return match discovery::resource_list(&shared.lock().resources, g, v) {
                Some(d) => json_response(200, &d),
                None => not_found_path(&path),
            };
        }
        ["openapi", "v3"] => return json_response(200, &openapi::root(&shared.lock().resources)),
        ["openapi", "v3", rest @ ..] => {
            return match openapi::group_version(&shared.lock().resources, &rest.join("/")) {
                Some(d) => json_response(200, &d),
                None => not_found_path(&path),
            };
        }
        ["healthz"] | ["readyz"] | ["livez"] => {
            return Response::new(Body::from("ok"));
        }
        _ => {}
    }
    let Some(target) = parse_target(&shared, &segs) else {
        return not_found_path(&path);
    };
    let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
    let verb = match (&method, target.name.is_some()) {
        (&Method::GET, true) => "get",
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => return ApiError::method_not_allowed().into_response(),
    };
    let ns = target.namespace.clone().unwrap_or_default();
    // What fault rules match on: the request and the client that sent it.
    let request = crate::faults::Request {
        verb,
        resource: &target.ri.plural,
        subresource: &target.subresource,
        namespace: &ns,
        name: target.name.as_deref().unwrap_or_default(),
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
        field_manager: query
            .get("fieldManager")
            .map(String::as_str)
            .unwrap_or_default(),
        body: &body,
    };
    if target.name.is_some()
        && let Some(release) = shared.faults.take_park(&request)
        && let Ok(Some(e)) = release.await
    {
        // Failed while parked: the request never reached the server (not counted, not logged).
        return injected(e, &target, &shared);
    }
    let client = manager_from_user_agent(&headers);
    let key = RequestKey {
        verb: verb.into(),
        group: target.ri.group.clone(),
        resource: target.ri.plural.clone(),
        subresource: target.subresource.clone(),
        namespace: ns.clone(),
    };
    if crate::accounting::is_write(verb) {
        shared.accounting.log_write(
            &client,
            key.clone(),
            target.name.as_deref().unwrap_or_default(),
            &body,
            arrived,
        );
    }
    shared.accounting.record_from(&client, key);
    if let Some(e) = shared.faults.take_failure(&request) {
        if verb == "watch" && e == InjectedError::Expired {
            return watch::expired(&shared);
        }
        return injected(e, &target, &shared);
    }
    if verb == "watch" {
        return watch::serve_watch(
            shared.clone(),
            target.ri.clone(),
            target.namespace.clone(),
            &query,
        );
    }
    let resp = match verb {
        _ if target.subresource == "scale" => {
            scale(&shared, &target, verb, &query, &headers, &body)
        }
        "get" | "list" => read(&shared, &target, &query, &headers),
        _ => write(&shared, &target, verb, &query, &headers, &body),
    };
    resp.unwrap_or_else(IntoResponse::into_response)
}

fn injected(e: InjectedError, t: &Target, shared: &Shared) -> Response {
    let name = t.name.clone().unwrap_or_default();
    match e {
        InjectedError::Conflict => {
            ApiError::conflict(&t.ri.group, &t.ri.plural, &name).into_response()
        }
        InjectedError::TooManyRequests => {
            let mut r = ApiError::too_many_requests().into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        InjectedError::TooManyRequestsRetryAfter(seconds) => {
            let mut r = ApiError::too_many_requests_retry_after(seconds).into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            r
        }
        InjectedError::Expired => {
            let rv = shared.lock().current_rv();
            ApiError::expired(rv.saturating_sub(1), rv).into_response()
        }
        InjectedError::Internal => ApiError::internal("injected fault").into_response(),
    }
}

fn parse_target(shared: &Shared, segs: &[&str]) -> Option<Target> {
    let (group, version, rest) = match segs {
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let table = &shared.lock().resources;
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if table
                .get(group, version, plural)
                .is_some_and(|r| r.namespaced) =>
        {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let ri = table.get(group, version, rest.first()?)?;
    if ri.namespaced != namespace.is_some() && rest.len() > 1 {
        return None;
    }
    let (name, subresource) = match rest.as_slice() {
        [_] => (None, String::new()),
        [_, n] => (Some(n.to_string()), String::new()),
        [_, n, s] if *s == "status" && ri.has_status => (Some(n.to_string()), "status".to_string()),
        [_, n, s] if *s == "scale" && has_scale(&ri) => (Some(n.to_string()), "scale".to_string()),
        _ => return None,
    };
    Some(Target {
        ri,
        namespace,
        name,
        subresource,
    })
}

fn has_scale(ri: &ResourceInfo) -> bool {
    ri.group == "apps" && (ri.plural == "deployments" || ri.plural == "replicasets")
}

/// The `autoscaling/v1 Scale` view of a Deployment or ReplicaSet.
fn scale_view(obj: &Value) -> Value {
    let md = &obj["metadata"];
    let selector: Vec<String> = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": md["name"], "namespace": md["namespace"], "uid": md["uid"],
            "resourceVersion": md["resourceVersion"], "creationTimestamp": md["creationTimestamp"]},
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",")}})
}

/// The scale subresource: reads and writes `spec.replicas` through a `Scale` object.
fn scale(
    shared: &Shared,
    t: &Target,
    verb: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ns = t.namespace.clone().unwrap_or_default();
    let name = t.name.clone().unwrap_or_default();
    let current = shared.lock().get(&t.ri, &ns, &name)?;
    let view = scale_view(&current);
    let desired = match verb {
        "get" => return Ok(json_response(200, &view)),
        "update" => serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding Scale: {e}")))?,
        "patch" => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|c| c.to_str().ok())
                .unwrap_or_default();
            let p: Value = if ct.starts_with("application/apply-patch") {
                serde_saphyr::from_str(&String::from_utf8_lossy(body))
                    .map_err(|e| ApiError::bad_request(e.to_string()))?
            } else {
                serde_json::from_slice(body).map_err(|e| ApiError::bad_request(e.to_string()))?
            };
            match ct.split(';').next().unwrap_or_default().trim() {
                "application/json-patch+json" => patch::json_patch(&view, &p).map_err(|_| {
                    ApiError::invalid_plain(
                        "the server rejected our request due to an error in our request",
                    )
                })?,
                "application/merge-patch+json"
                | "application/strategic-merge-patch+json"
                | "application/apply-patch+yaml" => patch::merge_patch(&view, &p),
                _ => return Err(ApiError::unsupported_media_type()),
            }
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    let mut change = json!({"spec": {"replicas": desired["spec"]["replicas"]}});
    if let Some(rv) = desired["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
    {
        change["metadata"] = json!({"resourceVersion": rv});
    }
    let ctx = WriteCtx {
        ri: t.ri.clone(),
        namespace: ns.clone(),
        manager: query
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| manager_from_user_agent(headers)),
        subresource: "scale".into(),
        field_validation: FieldValidation::Warn,
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
    };
    let mut st = shared.lock();
    let w = st.patch(&ctx, &name, PatchType::Merge, change, false);
    shared.after_write(&st);
    Ok(json_response(200, &scale_view(&w?.object)))
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

fn read(
    shared: &Shared,
    t: &Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let store = shared.lock();
    let body = match &t.name {
        Some(n) => store.get(&t.ri, t.namespace.as_deref().unwrap_or_default(), n)?,
        None => {
            let labels = selectors::LabelSelector::parse(
                query
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            let fields = selectors::FieldSelector::parse(
                query
                    .get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            let limit = query
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|l| *l > 0);
            let cont = query
                .get("continue")
                .map(String::as_str)
                .filter(|c| !c.is_empty());
            store.list(&t.ri, t.namespace.as_deref(), &labels, &fields, limit, cont)?
        }
    };
    drop(store);
    if wants_table(headers) {
        return Ok(json_response(
            200,
            &table::to_table(&t.ri, &body, t.name.is_some()),
        ));
    }
    Ok(json_response(200, &body))
}

/// The program name of a User-Agent: `python-requests` of `python-requests/2.34.2`.
fn manager_from_user_agent(headers: &HeaderMap) -> String {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    ua.split(['/', ' ']).next().unwrap_or("unknown").to_string()
}

fn parse_json_body(ri: &ResourceInfo, body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {e} ({})",
            ri.kind,
            String::from_utf8_lossy(body)
        ))
    })
}

fn write(
    shared: &Shared,
    t: &Target,
    verb: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ns = t.namespace.clone().unwrap_or_default();
    let field_manager = query.get("fieldManager").cloned().filter(|m| !m.is_empty());
    let ctx = WriteCtx {
        ri: t.ri.clone(),
        namespace: ns.clone(),
        manager: field_manager
            .clone()
            .unwrap_or_else(|| manager_from_user_agent(headers)),
        subresource: t.subresource.clone(),
        field_validation: match query.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            _ => FieldValidation::Warn,
        },
        dry_run: query.get("dryRun").is_some_and(|d| d == "All"),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|c| c.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    // Only JSON (and YAML for apply) is understood; protobuf/CBOR clients fall back on 415.
    let body_is_json =
        content_type.contains("json") || content_type.contains("yaml") || body.is_empty();
    if !body_is_json && matches!(verb, "create" | "update") {
        return Err(ApiError::unsupported_media_type());
    }
    let written = match verb {
        "create" => {
            let obj = parse_json_body(&t.ri, body)?;
            let mut st = shared.lock();
            let w = st.create(&ctx, obj);
            shared.after_write(&st);
            w?
        }
        "update" => {
            let obj = parse_json_body(&t.ri, body)?;
            let name = t.name.clone().unwrap_or_default();
            let mut st = shared.lock();
            let w = st.replace(&ctx, &name, obj);
            shared.after_write(&st);
            w?
        }
        "patch" => {
            let ptype = match content_type.as_str() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/json-patch+json" => PatchType::Json,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
                _ => return Err(ApiError::unsupported_media_type()),
            };
            let patch: Value = if ptype == PatchType::Apply {
                if field_manager.is_none() {
                    return Err(ApiError {
                        code: 422,
                        body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                            "reason": "Invalid", "details": {"group": "meta.k8s.io", "kind": "PatchOptions",
                                "causes": [{"reason": "FieldValueRequired", "message": "Required value: is required for apply patch", "field": "fieldManager"}]},
                            "code": 422}),
                    });
                }
                let text = String::from_utf8_lossy(body);
                serde_json::from_str(&text)
                    .or_else(|_| serde_saphyr::from_str::<Value>(&text))
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
            } else {
                serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?
            };
            let force = matches!(query.get("force").map(String::as_str), Some("true" | "1"));
            let name = t.name.clone().unwrap_or_default();
            let mut st = shared.lock();
            let w = st.patch(&ctx, &name, ptype, patch, force);
            shared.after_write(&st);
            w?
        }
        "delete" => {
            let opts: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let propagation = query
                .get("propagationPolicy")
                .cloned()
                .or_else(|| opts["propagationPolicy"].as_str().map(String::from));
            let name = t.name.clone().unwrap_or_default();
            let mut st = shared.lock();
            if ctx.dry_run {
                return Ok(json_response(200, &st.get(&t.ri, &ns, &name)?));
            }
            let r = st.delete(&t.ri, &ns, &name, propagation.as_deref());
            shared.after_write(&st);
            return Ok(json_response(200, &r?));
        }
        "deletecollection" => {
            let labels = selectors::LabelSelector::parse(
                query
                    .get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(ApiError::bad_request)?;
            let mut st = shared.lock();
            let list = st.list(
                &t.ri,
                t.namespace.as_deref(),
                &labels,
                &Default::default(),
                None,
                None,
            )?;
            for item in list["items"].as_array().into_iter().flatten() {
                let n = item["metadata"]["name"].as_str().unwrap_or_default();
                let ins = item["metadata"]["namespace"].as_str().unwrap_or_default();
                let _ = st.delete(&t.ri, ins, n, None);
            }
            shared.after_write(&st);
            return Ok(json_response(200, &list));
        }
        _ => return Err(ApiError::method_not_allowed()),
    };
    let mut r = json_response(if written.created { 201 } else { 200 }, &written.object);
    if !written.warnings.is_empty() {
        let w: Vec<String> = written
            .warnings
            .iter()
            .map(|w| format!("299 - {w:?}"))
            .collect();
        if let Ok(v) = HeaderValue::from_str(&w.join(", ")) {
            r.headers_mut().insert("Warning", v);
        }
    }
    Ok(r)
}
