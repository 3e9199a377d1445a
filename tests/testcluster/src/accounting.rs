//! Request accounting: how many API calls the server answered, by verb (as RBAC names them:
//! get, list, watch, create, update, patch, delete, deletecollection), group/resource,
//! subresource and namespace, so tests and benchmarks can count calls. Readable and resettable
//! at run time; discovery and other non-resource requests are not counted. Counts are also kept
//! per client program (the name part of its User-Agent), so a test can tell a controller's calls
//! from its own and from the Deployment stand-in's.

use std::collections::BTreeMap;
use std::sync::Mutex;

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

/// The counts, shared by the server and the test's handle.
#[derive(Debug, Default)]
pub struct Accounting {
    counts: Mutex<BTreeMap<RequestKey, u64>>,
    by_client: Mutex<BTreeMap<String, BTreeMap<RequestKey, u64>>>,
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
        self.count_where(|k| {
            matches!(
                k.verb.as_str(),
                "create" | "update" | "patch" | "delete" | "deletecollection"
            )
        })
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
    }
}
