//! Request accounting: how many API calls the server answered, by verb (as RBAC names them:
//! get, list, watch, create, update, patch, delete, deletecollection), group/resource,
//! subresource and namespace, so tests and benchmarks can count calls. Readable and resettable
//! at run time; discovery and other non-resource requests are not counted. Counts are also kept
//! per client program (the name part of its User-Agent), so a test can tell a controller's calls
//! from its own and from the Deployment stand-in's. Writes are also logged one by one (bounded),
//! with the object's name, the time and the request body, so a test can say what each write was.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

/// How many writes the log keeps (the oldest go first).
const WRITE_LOG_LEN: usize = 4096;
/// How much of a write's body the log keeps.
const WRITE_BODY_LEN: usize = 8192;

/// What one counted request touched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestKey {
    pub verb: String,
    /// `""` for the core group.
    pub group: String,
    pub resource: String,
    /// `""` for the main resource.
    pub subresource: String,
    /// `""` for cluster-scoped and all-namespace requests.
    pub namespace: String,
}

/// One write request as it arrived (before fault injection decided its answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The client program (the name part of its User-Agent).
    pub client: String,
    pub key: RequestKey,
    /// The object's name (`""` for a create, whose name is in the body).
    pub name: String,
    /// When the server logged it: after any injected delay or park, just before it was carried
    /// out (or failed by an injected fault) and answered.
    pub at: SystemTime,
    /// When the request arrived, before any injected delay or park: the request was in flight from
    /// `arrived` to (just after) `at`.
    pub arrived: SystemTime,
    /// The request body as text, cut at 8 KiB.
    pub body: String,
}

/// The counts, shared by the server and the test's handle.
#[derive(Debug, Default)]
pub struct Accounting {
    counts: Mutex<BTreeMap<RequestKey, u64>>,
    by_client: Mutex<BTreeMap<String, BTreeMap<RequestKey, u64>>>,
    writes: Mutex<VecDeque<Write>>,
}

/// Whether a verb changes something (as RBAC counts writes).
pub fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// A snapshot of the counts with helpers for the usual questions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<RequestKey, u64>);

impl RequestCounts {
    /// Calls with this verb on `resource` (plural, any group, subresource and namespace).
    pub fn count(&self, verb: &str, resource: &str) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.verb == verb && k.resource == resource)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls matching a predicate.
    pub fn count_where(&self, f: impl Fn(&RequestKey) -> bool) -> u64 {
        self.0.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum()
    }

    /// Every counted call.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Write calls (create, update, patch, delete, deletecollection).
    pub fn writes(&self) -> u64 {
        self.count_where(|k| is_write(&k.verb))
    }
}

impl Accounting {
    pub fn record(&self, key: RequestKey) {
        let mut c = self.counts.lock().expect("accounting lock poisoned");
        *c.entry(key).or_default() += 1;
    }

    /// Records a call made by `client` (the program name of its User-Agent, `unknown` without one).
    pub fn record_from(&self, client: &str, key: RequestKey) {
        {
            let mut c = self.by_client.lock().expect("accounting lock poisoned");
            *c.entry(client.to_owned())
                .or_default()
                .entry(key.clone())
                .or_default() += 1;
        }
        self.record(key);
    }

    /// Logs a write request of `client` on the object `name`, which arrived at `arrived`.
    pub fn log_write(
        &self,
        client: &str,
        key: RequestKey,
        name: &str,
        body: &[u8],
        arrived: SystemTime,
    ) {
        let mut body = String::from_utf8_lossy(body).into_owned();
        if body.len() > WRITE_BODY_LEN {
            let mut cut = WRITE_BODY_LEN;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        let mut writes = self.writes.lock().expect("accounting lock poisoned");
        if writes.len() == WRITE_LOG_LEN {
            writes.pop_front();
        }
        writes.push_back(Write {
            client: client.to_owned(),
            key,
            name: name.to_owned(),
            at: SystemTime::now(),
            arrived,
            body,
        });
    }

    /// The logged writes of one client program, oldest first.
    pub fn writes_of(&self, client: &str) -> Vec<Write> {
        self.writes
            .lock()
            .expect("accounting lock poisoned")
            .iter()
            .filter(|w| w.client == client)
            .cloned()
            .collect()
    }

    /// The counts of one client program only.
    pub fn snapshot_of(&self, client: &str) -> RequestCounts {
        RequestCounts(
            self.by_client
                .lock()
                .expect("accounting lock poisoned")
                .get(client)
                .cloned()
                .unwrap_or_default(),
        )
    }

    pub fn snapshot(&self) -> RequestCounts {
        RequestCounts(
            self.counts
                .lock()
                .expect("accounting lock poisoned")
                .clone(),
        )
    }

    pub fn reset(&self) {
        self.counts
            .lock()
            .expect("accounting lock poisoned")
            .clear();
        self.by_client
            .lock()
            .expect("accounting lock poisoned")
            .clear();
        self.writes
            .lock()
            .expect("accounting lock poisoned")
            .clear();
    }
}
