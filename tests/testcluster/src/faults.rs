//! Fault injection, switchable while the server runs: refuse connections for a while (existing
//! connections are reset, new ones are accepted and reset at once), delay every response, fail
//! the next N requests matching a verb / resource / namespace with 409, 429 (+ `Retry-After`) or
//! 500 as proper `Status` bodies, cut every open watch stream, and answer the next watches with
//! 410 Expired, park the next request to one named object until the test releases it (to
//! make a race happen deterministically), and hold back the live events of open watches of one
//! resource (a client's cache that lags the server) until the test lets them go. Only state and decisions here; the server consults it
//! on every request.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// The error an injected failure answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedError {
    /// 409 Conflict, as on a stale resourceVersion.
    Conflict,
    /// 429 TooManyRequests with `Retry-After: 1`.
    TooManyRequests,
    /// 500 InternalError.
    Internal,
}

/// Which requests an injected failure hits; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestMatch {
    /// RBAC verb: get, list, watch, create, update, patch, delete.
    pub verb: Option<String>,
    /// Plural resource name, e.g. `deployments`.
    pub resource: Option<String>,
    pub namespace: Option<String>,
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

    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    fn matches(&self, verb: &str, resource: &str, namespace: &str) -> bool {
        self.verb.as_deref().is_none_or(|v| v == verb)
            && self.resource.as_deref().is_none_or(|r| r == resource)
            && self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

#[derive(Debug, Clone)]
struct FailRule {
    matcher: RequestMatch,
    error: InjectedError,
    remaining: u32,
}

/// A parked request: the server signals `arrived` and waits for `release`.
#[derive(Debug)]
struct ParkRule {
    matcher: RequestMatch,
    name: String,
    arrived: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<()>,
}

/// The test's side of a parked request, from [`Faults::park_next`].
#[derive(Debug)]
pub struct Parked {
    arrived: tokio::sync::oneshot::Receiver<()>,
    release: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Parked {
    /// Waits until the matching request has arrived and is being held (false after `timeout`).
    pub async fn arrived(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, &mut self.arrived).await,
            Ok(Ok(()))
        )
    }

    /// Lets the held request go on (dropping the handle does the same).
    pub fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
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

    /// Consumes one injected failure matching the request, if any.
    pub fn take_failure(
        &self,
        verb: &str,
        resource: &str,
        namespace: &str,
    ) -> Option<InjectedError> {
        let mut rules = self.rules.lock().expect("fault lock poisoned");
        let idx = rules
            .iter()
            .position(|r| r.remaining > 0 && r.matcher.matches(verb, resource, namespace))?;
        rules[idx].remaining -= 1;
        let e = rules[idx].error;
        if rules[idx].remaining == 0 {
            rules.remove(idx);
        }
        Some(e)
    }

    /// Takes the park rule matching the request, if any: the server then holds the request
    /// until the returned receiver resolves (released or dropped).
    pub fn take_park(
        &self,
        verb: &str,
        resource: &str,
        namespace: &str,
        name: &str,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let mut parks = self.parks.lock().expect("fault lock poisoned");
        let idx = parks
            .iter()
            .position(|p| p.name == name && p.matcher.matches(verb, resource, namespace))?;
        let rule = parks.remove(idx);
        let _ = rule.arrived.send(());
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

    /// Fails the next `n` requests that match with `error`.
    pub fn fail_next(&self, n: u32, matcher: RequestMatch, error: InjectedError) {
        self.state
            .rules
            .lock()
            .expect("fault lock poisoned")
            .push(FailRule {
                matcher,
                error,
                remaining: n,
            });
    }

    /// Holds the next request that matches and names object `name` before the server reads or
    /// writes anything, until the returned handle is released or dropped. The request is counted
    /// once it goes on.
    pub fn park_next(&self, matcher: RequestMatch, name: &str) -> Parked {
        let (arrived_tx, arrived_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel();
        self.state
            .parks
            .lock()
            .expect("fault lock poisoned")
            .push(ParkRule {
                matcher,
                name: name.into(),
                arrived: arrived_tx,
                release: release_rx,
            });
        Parked {
            arrived: arrived_rx,
            release: Some(release_tx),
        }
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
