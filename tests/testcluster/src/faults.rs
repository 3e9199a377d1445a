//! Fault injection, switchable while the server runs: refuse connections for a while (existing
//! connections are reset, new ones are accepted and reset at once), delay every response, fail
//! the next N requests matching a verb / resource / subresource / namespace / name / client with
//! 409, 429 (+ `Retry-After`), 500 or 410 Expired (for a watch, its ERROR event) as proper `Status`
//! bodies, cut every open watch stream, and
//! answer the next watches with 410 Expired, park the next matching request to one named object
//! until the test releases it (to make a race happen deterministically), and hold back the live
//! events of open watches of one resource (a client's cache that lags the server) until the test
//! lets them go. Every injected failure and park is logged with the request that took it (client,
//! verb, resource, subresource, name, body), so a test can assert that the fault landed on the
//! request it meant. Only state and decisions here; the server consults it on every request.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

/// How many fault hits the log keeps (the oldest go first).
const HIT_LOG_LEN: usize = 4096;
/// How much of a faulted request's body the log keeps.
const HIT_BODY_LEN: usize = 8192;

/// The error an injected failure answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedError {
    /// 409 Conflict, as on a stale resourceVersion.
    Conflict,
    /// 429 TooManyRequests with `Retry-After: 1`.
    TooManyRequests,
    /// 429 TooManyRequests with `Retry-After` (and `details.retryAfterSeconds`) of this many
    /// seconds.
    TooManyRequestsRetryAfter(u32),
    /// 410 Expired, as for a resourceVersion the server no longer has: a watch gets it as the
    /// ERROR event a real server sends (so the client lists again), any other request as a 410.
    Expired,
    /// 500 InternalError.
    Internal,
}

/// Which client program a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// The request's `User-Agent` header starts with this (e.g. `sluice/`).
    UserAgentPrefix(String),
    /// The request's `fieldManager` query parameter is exactly this.
    FieldManager(String),
}

/// Which requests an injected failure or park hits; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// RBAC verb: get, list, watch, create, update, patch, delete.
    pub verb: Option<String>,
    /// Plural resource name, e.g. `deployments`.
    pub resource: Option<String>,
    /// `Some("status")` matches that subresource only, `Some("")` the main resource only.
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    /// The object's name (`""` for requests that name none: list, watch, create).
    pub name: Option<String>,
    /// The client program that sent it.
    pub client: Option<ClientMatch>,
}

impl RequestMatch {
    pub fn any() -> Self {
        Self::default()
    }

    pub fn verb(mut self, verb: &str) -> Self {
        self.verb = Some(verb.into());
        self
    }

    pub fn resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Only requests to this subresource of the resource (e.g. `status`, `scale`).
    pub fn subresource(mut self, subresource: &str) -> Self {
        self.subresource = Some(subresource.into());
        self
    }

    /// Only requests to the main resource, none to a subresource such as `status`.
    pub fn main_resource(self) -> Self {
        self.subresource("")
    }

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    /// Only requests naming the object `name`.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only requests whose `User-Agent` starts with `user_agent_prefix` (e.g. `sluice/`; a
    /// client that sends no User-Agent never matches).
    pub fn client(mut self, user_agent_prefix: &str) -> Self {
        self.client = Some(ClientMatch::UserAgentPrefix(user_agent_prefix.into()));
        self
    }

    /// Only requests whose `fieldManager` query parameter is `manager` (requests without one
    /// never match).
    pub fn field_manager(mut self, manager: &str) -> Self {
        self.client = Some(ClientMatch::FieldManager(manager.into()));
        self
    }

    /// Whether `request` is one this rule is about.
    pub fn matches(&self, request: &Request<'_>) -> bool {
        self.verb.as_deref().is_none_or(|v| v == request.verb)
            && self
                .resource
                .as_deref()
                .is_none_or(|r| r == request.resource)
            && self
                .subresource
                .as_deref()
                .is_none_or(|s| s == request.subresource)
            && self
                .namespace
                .as_deref()
                .is_none_or(|n| n == request.namespace)
            && self.name.as_deref().is_none_or(|n| n == request.name)
            && self.client.as_ref().is_none_or(|c| match c {
                ClientMatch::UserAgentPrefix(p) => {
                    !request.user_agent.is_empty() && request.user_agent.starts_with(p.as_str())
                }
                ClientMatch::FieldManager(m) => {
                    !request.field_manager.is_empty() && request.field_manager == m
                }
            })
    }
}

/// A request as the server hands it to fault injection (borrowed; see [`FaultedRequest`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    /// `""` for the main resource.
    pub subresource: &'a str,
    /// `""` for cluster-scoped and all-namespace requests.
    pub namespace: &'a str,
    /// `""` when the request names no object.
    pub name: &'a str,
    /// The whole `User-Agent` header, `""` without one.
    pub user_agent: &'a str,
    /// The `fieldManager` query parameter, `""` without one.
    pub field_manager: &'a str,
    pub body: &'a [u8],
}

impl Request<'_> {
    fn record(self) -> FaultedRequest {
        let mut body = String::from_utf8_lossy(self.body).into_owned();
        if body.len() > HIT_BODY_LEN {
            let mut cut = HIT_BODY_LEN;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        FaultedRequest {
            verb: self.verb.to_owned(),
            resource: self.resource.to_owned(),
            subresource: self.subresource.to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
            user_agent: self.user_agent.to_owned(),
            field_manager: self.field_manager.to_owned(),
            body,
        }
    }
}

/// A request that took an injected fault: who sent it and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultedRequest {
    pub verb: String,
    pub resource: String,
    /// `""` for the main resource.
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The whole `User-Agent` header, `""` without one.
    pub user_agent: String,
    /// The `fieldManager` query parameter, `""` without one.
    pub field_manager: String,
    /// The request body as text, cut at 8 KiB.
    pub body: String,
}

impl FaultedRequest {
    /// Whether the request's User-Agent starts with `user_agent_prefix` (e.g. `sluice/`).
    pub fn is_from(&self, user_agent_prefix: &str) -> bool {
        !self.user_agent.is_empty() && self.user_agent.starts_with(user_agent_prefix)
    }

    /// `deployments`, or `deployments/status` for a subresource.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn body_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Display for FaultedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}/{} from User-Agent {:?}",
            self.verb,
            self.resource_path(),
            self.namespace,
            self.name,
            self.user_agent
        )?;
        if !self.field_manager.is_empty() {
            write!(f, " fieldManager {:?}", self.field_manager)?;
        }
        Ok(())
    }
}

/// What an injected fault did to the request that took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Failed(InjectedError),
    Parked,
}

/// One injected fault taken by a request, from [`Faults::hits`], [`Injected::hits`] or
/// [`Parked::request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultHit {
    /// The rule that injected it (the id of its [`Injected`] or [`Parked`] handle).
    pub rule: u64,
    pub fault: Fault,
    pub request: FaultedRequest,
    pub at: SystemTime,
}

impl fmt::Display for FaultHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} (rule {}): {}", self.fault, self.rule, self.request)
    }
}

#[derive(Debug, Clone)]
struct FailRule {
    id: u64,
    matcher: RequestMatch,
    error: InjectedError,
    remaining: u32,
}

/// A parked request: the server signals `arrived` (with the request) and waits for `release`,
/// which lets it go on (`None`) or answers it with an error instead (`Some`).
#[derive(Debug)]
struct ParkRule {
    id: u64,
    matcher: RequestMatch,
    arrived: tokio::sync::oneshot::Sender<FaultedRequest>,
    release: tokio::sync::oneshot::Receiver<Option<InjectedError>>,
}

/// The test's side of a parked request, from [`Faults::park_next`].
#[derive(Debug)]
pub struct Parked {
    id: u64,
    arrived: tokio::sync::oneshot::Receiver<FaultedRequest>,
    request: Option<FaultedRequest>,
    release: Option<tokio::sync::oneshot::Sender<Option<InjectedError>>>,
}

impl Parked {
    /// Waits until the matching request has arrived and is being held (false after `timeout`).
    pub async fn arrived(&mut self, timeout: Duration) -> bool {
        if self.request.is_some() {
            return true;
        }
        match tokio::time::timeout(timeout, &mut self.arrived).await {
            Ok(Ok(request)) => {
                self.request = Some(request);
                true
            }
            _ => false,
        }
    }

    /// The request being held (or let go): who sent it and what it was. `None` until
    /// [`Parked::arrived`] has returned true.
    pub fn request(&self) -> Option<&FaultedRequest> {
        self.request.as_ref()
    }

    /// The id of this park in the fault log ([`FaultHit::rule`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Lets the held request go on (dropping the handle does the same).
    pub fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(None);
        }
    }

    /// Answers the held request with `error` instead of carrying it out, as if it had never
    /// reached the server (it is then neither counted nor in the write log): what a client killed
    /// while its request was on the way leaves behind when the request is lost with it.
    pub fn fail(mut self, error: InjectedError) {
        if let Some(release) = self.release.take() {
            let _ = release.send(Some(error));
        }
    }
}

/// The test's handle on one [`Faults::fail_next`] rule: which requests took its failures.
#[derive(Debug, Clone)]
pub struct Injected {
    id: u64,
    count: u32,
    error: InjectedError,
    matcher: RequestMatch,
    state: Arc<FaultState>,
}

impl Injected {
    /// The id of this rule in the fault log ([`FaultHit::rule`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How many failures the rule was given.
    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn error(&self) -> InjectedError {
        self.error
    }

    pub fn matcher(&self) -> &RequestMatch {
        &self.matcher
    }

    /// The failures taken so far, oldest first, with the requests that took them.
    pub fn hits(&self) -> Vec<FaultHit> {
        self.state
            .hits
            .lock()
            .expect("fault lock poisoned")
            .iter()
            .filter(|h| h.rule == self.id)
            .cloned()
            .collect()
    }

    /// Whether every failure of the rule has been taken.
    pub fn all_taken(&self) -> bool {
        !self
            .state
            .rules
            .lock()
            .expect("fault lock poisoned")
            .iter()
            .any(|r| r.id == self.id)
    }

    /// Waits until every failure of the rule has been taken (false after `timeout`).
    pub async fn taken(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.all_taken() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The switchable fault state, shared by the server and the test's [`Faults`] handle.
#[derive(Debug)]
pub struct FaultState {
    parks: Mutex<Vec<ParkRule>>,
    refuse_until: Mutex<Option<Instant>>,
    /// Bumped when refusal starts: connections accepted before it are reset.
    pub(crate) conn_epoch: AtomicU64,
    delay: Mutex<Duration>,
    rules: Mutex<Vec<FailRule>>,
    next_rule: AtomicU64,
    hits: Mutex<VecDeque<FaultHit>>,
    gone_watches: AtomicU64,
    pub(crate) cut_watches: watch::Sender<u64>,
    /// Signalled with `conn_epoch`, so idle streaming responses write and notice the reset.
    pub(crate) resets: watch::Sender<u64>,
    /// Resources (plural names) whose open watches hold their live events back.
    pub(crate) held_watches: watch::Sender<BTreeSet<String>>,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState {
            parks: Mutex::new(Vec::new()),
            refuse_until: Mutex::new(None),
            conn_epoch: AtomicU64::new(0),
            delay: Mutex::new(Duration::ZERO),
            rules: Mutex::new(Vec::new()),
            next_rule: AtomicU64::new(1),
            hits: Mutex::new(VecDeque::new()),
            gone_watches: AtomicU64::new(0),
            cut_watches: watch::channel(0).0,
            resets: watch::channel(0).0,
            held_watches: watch::channel(BTreeSet::new()).0,
        }
    }
}

impl FaultState {
    /// Breaks every open connection (they fail with ConnectionReset on their next I/O).
    pub(crate) fn reset_connections(&self) {
        let e = self.conn_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.resets.send_replace(e);
    }

    pub fn refusing(&self) -> bool {
        let mut r = self.refuse_until.lock().expect("fault lock poisoned");
        match *r {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                *r = None;
                false
            }
            None => false,
        }
    }

    pub fn delay(&self) -> Duration {
        *self.delay.lock().expect("fault lock poisoned")
    }

    fn log_hit(&self, rule: u64, fault: Fault, request: FaultedRequest) {
        let mut hits = self.hits.lock().expect("fault lock poisoned");
        if hits.len() == HIT_LOG_LEN {
            hits.pop_front();
        }
        hits.push_back(FaultHit {
            rule,
            fault,
            request,
            at: SystemTime::now(),
        });
    }

    /// Consumes one injected failure matching the request, if any (and logs who took it).
    pub fn take_failure(&self, request: &Request<'_>) -> Option<InjectedError> {
        let mut rules = self.rules.lock().expect("fault lock poisoned");
        let idx = rules
            .iter()
            .position(|r| r.remaining > 0 && r.matcher.matches(request))?;
        rules[idx].remaining -= 1;
        let (id, e) = (rules[idx].id, rules[idx].error);
        // Logged before the rule can be seen as all taken (the rules lock is still held): a
        // test that waits for `taken` then reads `hits` must find this hit there.
        self.log_hit(id, Fault::Failed(e), request.record());
        if rules[idx].remaining == 0 {
            rules.remove(idx);
        }
        Some(e)
    }

    /// Takes the park rule matching the request, if any (and logs who took it): the server then
    /// holds the request until the returned receiver resolves: released or dropped (carry it
    /// out), or an error to answer with instead.
    pub fn take_park(
        &self,
        request: &Request<'_>,
    ) -> Option<tokio::sync::oneshot::Receiver<Option<InjectedError>>> {
        let rule = {
            let mut parks = self.parks.lock().expect("fault lock poisoned");
            let idx = parks.iter().position(|p| p.matcher.matches(request))?;
            parks.remove(idx)
        };
        let record = request.record();
        self.log_hit(rule.id, Fault::Parked, record.clone());
        let _ = rule.arrived.send(record);
        Some(rule.release)
    }

    pub fn take_gone_watch(&self) -> bool {
        self.gone_watches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The test's handle on fault injection.
#[derive(Debug, Clone)]
pub struct Faults {
    pub(crate) state: std::sync::Arc<FaultState>,
}

impl Faults {
    /// Refuses (resets) every connection, open or new, for `d`.
    pub fn refuse_connections_for(&self, d: Duration) {
        *self.state.refuse_until.lock().expect("fault lock poisoned") = Some(Instant::now() + d);
        self.state.reset_connections();
    }

    /// Stops refusing connections now.
    pub fn accept_connections(&self) {
        *self.state.refuse_until.lock().expect("fault lock poisoned") = None;
    }

    /// Delays every response by `d` (zero to stop).
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().expect("fault lock poisoned") = d;
    }

    fn next_rule_id(&self) -> u64 {
        self.state.next_rule.fetch_add(1, Ordering::SeqCst)
    }

    /// Fails the next `n` requests that match with `error`. The returned handle tells which
    /// requests took the failures (so does [`Faults::hits`]); dropping it leaves the rule in place.
    pub fn fail_next(&self, n: u32, matcher: RequestMatch, error: InjectedError) -> Injected {
        let id = self.next_rule_id();
        self.state
            .rules
            .lock()
            .expect("fault lock poisoned")
            .push(FailRule {
                id,
                matcher: matcher.clone(),
                error,
                remaining: n,
            });
        Injected {
            id,
            count: n,
            error,
            matcher,
            state: self.state.clone(),
        }
    }

    /// Holds the next request that matches and names object `name` before the server reads or
    /// writes anything, until the returned handle is released or dropped. The request is counted
    /// once it goes on; the handle tells which request it held ([`Parked::request`]).
    pub fn park_next(&self, matcher: RequestMatch, name: &str) -> Parked {
        let id = self.next_rule_id();
        let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        self.state
            .parks
            .lock()
            .expect("fault lock poisoned")
            .push(ParkRule {
                id,
                matcher: matcher.name(name),
                arrived: arrived_tx,
                release: release_rx,
            });
        Parked {
            id,
            arrived: arrived_rx,
            request: None,
            release: Some(release_tx),
        }
    }

    /// Every injected failure and park taken so far, oldest first, with the request that took
    /// it (the last 4096; [`Faults::clear`] keeps them).
    pub fn hits(&self) -> Vec<FaultHit> {
        self.state
            .hits
            .lock()
            .expect("fault lock poisoned")
            .iter()
            .cloned()
            .collect()
    }

    /// Ends every open watch stream (clients see a clean end of stream and re-watch).
    pub fn cut_watches(&self) {
        self.state.cut_watches.send_modify(|n| *n += 1);
    }

    /// Answers the next `n` watch requests with a 410 Expired ERROR event.
    pub fn expire_next_watches(&self, n: u64) {
        self.state.gone_watches.fetch_add(n, Ordering::SeqCst);
    }

    /// Holds back the live events of every open watch of `resource` (plural name, e.g.
    /// `deployments`), as a client whose cache lags the server sees it: the events are neither
    /// sent nor lost, and bookmarks do not move past them. Writes and reads go on as usual; a watch
    /// opened meanwhile still sends what it lists. [`Faults::release_watch_events`] sends them, in
    /// order.
    pub fn hold_watch_events(&self, resource: &str) {
        self.state.held_watches.send_modify(|held| {
            held.insert(resource.to_owned());
        });
    }

    /// Sends the events held back for `resource`, in order, and stops holding them.
    pub fn release_watch_events(&self, resource: &str) {
        self.state.held_watches.send_modify(|held| {
            held.remove(resource);
        });
    }

    /// Removes every injected fault.
    pub fn clear(&self) {
        self.state.held_watches.send_modify(BTreeSet::clear);
        self.accept_connections();
        self.set_delay(Duration::ZERO);
        self.state
            .rules
            .lock()
            .expect("fault lock poisoned")
            .clear();
        self.state
            .parks
            .lock()
            .expect("fault lock poisoned")
            .clear();
        self.state.gone_watches.store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(user_agent: &'a str, subresource: &'a str) -> Request<'a> {
        Request {
            verb: "patch",
            resource: "deployments",
            subresource,
            namespace: "shop",
            name: "web",
            user_agent,
            field_manager: "",
            body: b"{}",
        }
    }

    #[test]
    fn a_rule_matches_by_client_and_subresource() {
        let sluice_main = RequestMatch::any()
            .verb("patch")
            .resource("deployments")
            .client("sluice/")
            .main_resource();
        assert!(sluice_main.matches(&request("sluice/0.1.0", "")));
        assert!(!sluice_main.matches(&request("sluice/0.1.0", "status")));
        assert!(!sluice_main.matches(&request("", "")), "no User-Agent");
        assert!(!sluice_main.matches(&request("kubectl-sluice/0.1.0", "")));
        let status = RequestMatch::any().subresource("status");
        assert!(status.matches(&request("", "status")));
        assert!(!status.matches(&request("", "")));
        assert!(RequestMatch::any().matches(&request("", "scale")));
        let managed = RequestMatch::any().field_manager("kube-controller-manager");
        let mut r = request("", "status");
        assert!(!managed.matches(&r));
        r.field_manager = "kube-controller-manager";
        assert!(managed.matches(&r));
        assert!(!RequestMatch::any().name("other").matches(&r));
    }

    #[test]
    fn a_taken_failure_is_logged_with_the_request_that_took_it() {
        let faults = Faults {
            state: Arc::new(FaultState::default()),
        };
        let rule = faults.fail_next(
            2,
            RequestMatch::any().client("sluice/").main_resource(),
            InjectedError::Conflict,
        );
        let other = faults.fail_next(1, RequestMatch::any(), InjectedError::Internal);
        assert_eq!(
            faults.state.take_failure(&request("", "status")),
            Some(InjectedError::Internal),
            "the stand-in's status write skips the sluice rule"
        );
        assert_eq!(
            faults.state.take_failure(&request("sluice/0.1.0", "")),
            Some(InjectedError::Conflict)
        );
        assert!(!rule.all_taken());
        assert_eq!(
            faults.state.take_failure(&request("sluice/0.1.0", "")),
            Some(InjectedError::Conflict)
        );
        assert!(rule.all_taken() && other.all_taken());
        assert_eq!(
            faults.state.take_failure(&request("sluice/0.1.0", "")),
            None
        );
        let hits = rule.hits();
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|h| h.request.is_from("sluice/")
            && h.request.resource_path() == "deployments"
            && h.fault == Fault::Failed(InjectedError::Conflict)));
        assert_eq!(
            other.hits()[0].request.resource_path(),
            "deployments/status"
        );
        assert_eq!(faults.hits().len(), 3);
    }

    #[tokio::test]
    async fn a_parked_request_tells_who_sent_it() {
        let faults = Faults {
            state: Arc::new(FaultState::default()),
        };
        let mut parked = faults.park_next(RequestMatch::any().client("sluice/"), "web");
        assert!(faults.state.take_park(&request("", "")).is_none());
        let mut other = request("sluice/0.1.0", "");
        other.name = "web-canary";
        assert!(faults.state.take_park(&other).is_none(), "another object");
        let release = faults
            .state
            .take_park(&request("sluice/0.1.0", ""))
            .expect("parked");
        assert!(parked.arrived(Duration::from_secs(1)).await);
        let who = parked.request().expect("who").clone();
        assert!(who.is_from("sluice/") && who.name == "web" && who.verb == "patch");
        assert_eq!(faults.hits()[0].rule, parked.id());
        parked.release();
        assert!(release.await.is_ok());
    }
}
