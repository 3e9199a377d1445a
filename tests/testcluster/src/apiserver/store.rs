//! The object store: every object as JSON under one global resourceVersion counter (like etcd),
//! a bounded history of watch events, and the write pipeline (defaulting, admission, validation,
//! status split, generation, managed fields, finalizers, deletion). Plain functions on
//! [`Store`] so unit tests can drive them without HTTP; the clock and randomness are the only
//! impurities. Must not do I/O or know about HTTP.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::defaults;
use super::errors::ApiError;
use super::fields::{self, FieldSet, Shape};
use super::resources::{ResourceInfo, ResourceTable};
use super::selectors::{FieldSelector, LabelSelector};

/// A change, as a watch reports it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: EventKind,
    pub key: (String, String),
    pub namespace: String,
    pub object: Arc<Value>,
    /// The object before a MODIFIED event, so selector watches can turn it into ADDED/DELETED.
    pub prev: Option<Arc<Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Added,
    Modified,
    Deleted,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }
}

/// `fieldValidation` of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    #[default]
    Warn,
    Strict,
}

/// Who writes and how: the request's context.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    pub ri: Arc<ResourceInfo>,
    pub namespace: String,
    pub manager: String,
    /// `""` or `"status"`.
    pub subresource: String,
    pub field_validation: FieldValidation,
    /// `dryRun=All`: run the whole pipeline, persist nothing.
    pub dry_run: bool,
}

/// A successful write: the stored object, whether it was created, and warnings for the client.
#[derive(Debug, Clone)]
pub struct Written {
    pub object: Value,
    pub created: bool,
    pub warnings: Vec<String>,
}

/// The PATCH formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

type ObjKey = (String, String);
type Objects = BTreeMap<ObjKey, Arc<Value>>;

pub struct Store {
    pub resources: ResourceTable,
    rv: u64,
    objects: HashMap<ObjKey, Objects>,
    history: VecDeque<Arc<WatchEvent>>,
    history_cap: usize,
    /// When each resourceVersion was committed (the last [`COMMIT_TIMES_LEN`]), so a test can
    /// time a write as the server saw it, before any answer or watch event left.
    commits: VecDeque<(u64, SystemTime)>,
    /// Watches from a resourceVersion below this are answered with 410 Expired.
    compacted_rv: u64,
    tx: broadcast::Sender<Arc<WatchEvent>>,
    counter: u64,
    /// Set when a delete or an owned create may give the garbage collector work.
    pub gc_pending: bool,
    /// uids of stored objects, and how many objects name each uid as an owner: lets writes
    /// decide in O(1) whether the garbage collector has work.
    live_uids: HashSet<String>,
    owner_refs: HashMap<String, usize>,
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// How many commit times the store keeps.
const COMMIT_TIMES_LEN: usize = 1 << 16;

pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn meta(obj: &Value, field: &str) -> String {
    obj["metadata"][field]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The managedFields of an object, parsed.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    set: FieldSet,
}

impl Entry {
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s = format!("{s} with subresource {:?}", self.subresource);
        }
        if self.operation == "Update" {
            s = format!("{s} using {}", self.api_version);
        }
        s
    }
}

fn parse_entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or_default().into(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().unwrap_or_default().into(),
            set: FieldSet::from_json(&e["fieldsV1"]),
        })
        .collect()
}

fn write_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    // Sorted as the real server sorts them, except that time is left out so a replay is
    // deterministic: operation (Apply before Update), then manager, then subresource.
    entries.sort_by(|a, b| {
        (&a.operation, &a.manager, &a.subresource).cmp(&(&b.operation, &b.manager, &b.subresource))
    });
    let arr: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let mut v = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": e.set.to_json()});
            if !e.subresource.is_empty() {
                v["subresource"] = json!(e.subresource);
            }
            v
        })
        .collect();
    obj["metadata"]["managedFields"] = Value::Array(arr);
}

const SERVER_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// The part of an object the field manager tracks for a write to `subresource`.
fn tracked(ri: &ResourceInfo, subresource: &str, obj: &Value) -> Value {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    m.remove("apiVersion");
    m.remove("kind");
    if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in SERVER_META {
            md.remove(*f);
        }
        if md.is_empty() {
            m.remove("metadata");
        }
    }
    if ri.has_status {
        if subresource == "status" {
            m.retain(|k, _| k == "status");
        } else {
            m.remove("status");
        }
    }
    Value::Object(m)
}

/// Everything but metadata and status: what `metadata.generation` follows.
fn spec_part(obj: &Value) -> Value {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        m.remove(k);
    }
    Value::Object(m)
}

fn without_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(md) = o["metadata"].as_object_mut() {
        md.remove("resourceVersion");
        if let Some(Value::Array(mf)) = md.get_mut("managedFields") {
            for e in mf {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
    o
}

enum Managed {
    Update,
    Precomputed(Vec<Entry>),
}

impl Store {
    pub fn new(resources: ResourceTable, history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Store {
            resources,
            rv: 1,
            objects: HashMap::new(),
            history: VecDeque::new(),
            history_cap,
            commits: VecDeque::new(),
            compacted_rv: 0,
            tx,
            counter: 0,
            gc_pending: false,
            live_uids: HashSet::new(),
            owner_refs: HashMap::new(),
        }
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    /// When the change with resourceVersion `rv` was committed, if it is recent enough to be kept.
    pub fn committed_at(&self, rv: u64) -> Option<SystemTime> {
        let i = self.commits.partition_point(|(r, _)| *r < rv);
        self.commits
            .get(i)
            .filter(|(r, _)| *r == rv)
            .map(|(_, at)| *at)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<WatchEvent>> {
        self.tx.subscribe()
    }

    /// Drops the event history: every resourceVersion handed out so far now gets 410 Expired
    /// on watch. The counter moves on by one so a fresh list gives a watchable resourceVersion.
    pub fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.compacted_rv = self.rv;
    }

    /// Events after `from` for `key`, or the 410 answer when `from` is compacted away.
    pub fn events_since(&self, key: &ObjKey, from: u64) -> Result<Vec<Arc<WatchEvent>>, ApiError> {
        if from < self.compacted_rv {
            return Err(ApiError::expired(from, self.compacted_rv));
        }
        // The history is in resourceVersion order: skip to `from` instead of scanning it all.
        let first = self.history.partition_point(|e| e.rv <= from);
        Ok(self
            .history
            .range(first..)
            .filter(|e| &e.key == key)
            .cloned()
            .collect())
    }

    fn next_random(&mut self) -> u64 {
        self.counter += 1;
        let nanos = jiff::Timestamp::now().as_nanosecond() as u64;
        let mut x = nanos ^ self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }

    fn new_uid(&mut self) -> String {
        let (a, b) = (self.next_random(), self.next_random());
        let h = format!("{a:016x}{b:016x}");
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }

    fn random_suffix(&mut self) -> String {
        let mut x = self.next_random();
        (0..5)
            .map(|_| {
                let c = NAME_CHARS[(x % NAME_CHARS.len() as u64) as usize] as char;
                x /= NAME_CHARS.len() as u64;
                c
            })
            .collect()
    }

    fn owner_uids(obj: &Value) -> impl Iterator<Item = String> + '_ {
        obj["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["uid"].as_str().map(String::from))
    }

    fn index(&mut self, obj: &Value) {
        self.live_uids.insert(meta(obj, "uid"));
        for owner in Self::owner_uids(obj) {
            if !self.live_uids.contains(&owner) {
                self.gc_pending = true;
            }
            *self.owner_refs.entry(owner).or_default() += 1;
        }
    }

    fn unindex(&mut self, obj: &Value) {
        let uid = meta(obj, "uid");
        self.live_uids.remove(&uid);
        for owner in Self::owner_uids(obj) {
            if let Some(n) = self.owner_refs.get_mut(&owner) {
                *n -= 1;
                if *n == 0 {
                    self.owner_refs.remove(&owner);
                }
            }
        }
        if self.owner_refs.contains_key(&uid) {
            // Its dependents are now orphans to collect.
            self.gc_pending = true;
        }
    }

    /// Stores an object, keeping the owner indexes.
    fn put(&mut self, key: &ObjKey, okey: ObjKey, obj: Arc<Value>) {
        let prev = self
            .objects
            .entry(key.clone())
            .or_default()
            .insert(okey, obj.clone());
        if let Some(p) = prev {
            self.unindex(&p);
        }
        self.index(&obj);
    }

    /// Removes an object, keeping the owner indexes.
    fn take(&mut self, key: &ObjKey, okey: &ObjKey) -> Option<Arc<Value>> {
        let o = self.objects.get_mut(key)?.remove(okey)?;
        self.unindex(&o);
        Some(o)
    }

    fn emit(&mut self, kind: EventKind, key: &ObjKey, ns: &str, object: Arc<Value>, rv: u64) {
        self.emit_with_prev(kind, key, ns, object, None, rv);
    }

    fn emit_with_prev(
        &mut self,
        kind: EventKind,
        key: &ObjKey,
        ns: &str,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
        rv: u64,
    ) {
        let ev = Arc::new(WatchEvent {
            rv,
            kind,
            key: key.clone(),
            namespace: ns.into(),
            object,
            prev,
        });
        if self.commits.len() == COMMIT_TIMES_LEN {
            self.commits.pop_front();
        }
        self.commits.push_back((rv, SystemTime::now()));
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // No receivers is fine: nobody watches.
        let _ = self.tx.send(ev);
    }

    /// The stored object, with the apiVersion of the requested version.
    pub fn get(&self, ri: &ResourceInfo, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.get_raw(ri, ns, name)
            .map(|o| self.present(ri, &o))
            .ok_or_else(|| ApiError::not_found(&ri.group, &ri.plural, name))
    }

    /// The stored object in the shape `ri` serves.
    fn get_raw(&self, ri: &ResourceInfo, ns: &str, name: &str) -> Option<Arc<Value>> {
        let o = self
            .objects
            .get(&ri.storage_key())?
            .get(&(ns.to_string(), name.to_string()))
            .cloned()?;
        Some(match super::events::convert_for(ri, &o) {
            Some(c) => Arc::new(c),
            None => o,
        })
    }

    pub fn present(&self, ri: &ResourceInfo, obj: &Value) -> Value {
        let mut o = super::events::convert_for(ri, obj).unwrap_or_else(|| obj.clone());
        o["apiVersion"] = json!(ri.api_version());
        o
    }

    /// Lists objects (all namespaces when `ns` is None), paged by `limit`/`continue`.
    pub fn list(
        &self,
        ri: &ResourceInfo,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<Value, ApiError> {
        let empty = Objects::new();
        let all = self.objects.get(&ri.storage_key()).unwrap_or(&empty);
        let start: Option<ObjKey> = match cont {
            Some(c) => Some(
                decode_continue(c)
                    .ok_or_else(|| ApiError::bad_request("invalid continue token".into()))?,
            ),
            None => None,
        };
        // Keys are (namespace, name): a namespace and a continue token are ranges, not scans.
        use std::ops::Bound;
        let lower = match (&start, ns) {
            (Some(s), _) => Bound::Excluded(s.clone()),
            (None, Some(n)) => Bound::Included((n.to_string(), String::new())),
            (None, None) => Bound::Unbounded,
        };
        let iter = all
            .range((lower, Bound::Unbounded))
            .take_while(|((ons, _), _)| ns.is_none_or(|n| n == ons));
        let mut items = Vec::new();
        let mut last = None;
        let mut remaining = 0usize;
        for (k, o) in iter {
            if !labels.matches(o) || !fields.matches(o) {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                remaining += 1;
                continue;
            }
            let mut item = self.present(ri, o);
            if !ri.custom
                && let Some(m) = item.as_object_mut()
            {
                m.remove("apiVersion");
                m.remove("kind");
            }
            items.push(item);
            last = Some(k.clone());
        }
        let mut md = json!({"resourceVersion": self.rv.to_string()});
        if remaining > 0
            && let Some(k) = last
        {
            md["continue"] = json!(encode_continue(&k));
            if labels.is_empty() && fields.is_empty() {
                md["remainingItemCount"] = json!(remaining);
            }
        }
        Ok(
            json!({"kind": format!("{}List", ri.kind), "apiVersion": ri.api_version(), "metadata": md, "items": items}),
        )
    }

    /// All objects of a group/plural (any namespace), for watches' initial events and admission.
    pub fn all_of(&self, key: &ObjKey) -> Vec<Arc<Value>> {
        self.objects
            .get(key)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Stores a CRD without the write pipeline: the fast path for installing many large
    /// upstream CRDs at start-up. An existing CRD of that name is left alone.
    pub fn seed_crd(&mut self, mut crd: Value) {
        let name = meta(&crd, "name");
        let key = (
            "apiextensions.k8s.io".to_string(),
            "customresourcedefinitions".to_string(),
        );
        let okey = (String::new(), name);
        if self
            .objects
            .get(&key)
            .is_some_and(|m| m.contains_key(&okey))
        {
            return;
        }
        let uid = self.new_uid();
        self.rv += 1;
        let rv = self.rv;
        crd["apiVersion"] = json!("apiextensions.k8s.io/v1");
        crd["kind"] = json!("CustomResourceDefinition");
        let md = &mut crd["metadata"];
        md["uid"] = json!(uid);
        md["creationTimestamp"] = json!(now());
        md["generation"] = json!(1);
        md["resourceVersion"] = json!(rv.to_string());
        default_crd_status(&mut crd);
        self.resources.install_crd(&crd);
        let obj = Arc::new(crd);
        self.put(&key, okey, obj.clone());
        self.emit(EventKind::Added, &key, "", obj, rv);
    }

    // ---------------------------------------------------------------- writes

    pub fn create(&mut self, ctx: &WriteCtx, mut body: Value) -> Result<Written, ApiError> {
        let ri = ctx.ri.clone();
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format".into(),
            ));
        }
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        let mut name = meta(&body, "name");
        if name.is_empty() {
            let gen_name = meta(&body, "generateName");
            if gen_name.is_empty() {
                return Err(ApiError::invalid(
                    &ri.kind,
                    &ri.group,
                    "",
                    &[(
                        "FieldValueRequired".into(),
                        "metadata.name".into(),
                        "Required value: name or generateName is required".into(),
                    )],
                ));
            }
            name = format!("{gen_name}{}", self.random_suffix());
            body["metadata"]["name"] = json!(name);
        }
        if ri.namespaced {
            body["metadata"]["namespace"] = json!(ctx.namespace);
            if self.namespace_object(&ctx.namespace).is_none() {
                return Err(ApiError::not_found("", "namespaces", &ctx.namespace));
            }
        }
        if self.get_raw(&ri, &ctx.namespace, &name).is_some() {
            return Err(ApiError::already_exists(&ri.group, &ri.plural, &name));
        }
        self.commit(ctx, None, body, Managed::Update)
    }

    pub fn replace(
        &mut self,
        ctx: &WriteCtx,
        name: &str,
        body: Value,
    ) -> Result<Written, ApiError> {
        let ri = ctx.ri.clone();
        let Some(old) = self.get_raw(&ri, &ctx.namespace, name) else {
            return Err(ApiError::not_found(&ri.group, &ri.plural, name));
        };
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format".into(),
            ));
        }
        self.commit(ctx, Some(old), body, Managed::Update)
    }

    pub fn patch(
        &mut self,
        ctx: &WriteCtx,
        name: &str,
        ptype: PatchType,
        patch: Value,
        force: bool,
    ) -> Result<Written, ApiError> {
        let ri = ctx.ri.clone();
        let old = self.get_raw(&ri, &ctx.namespace, name);
        if ptype == PatchType::Apply {
            return self.apply(ctx, name, old, patch, force);
        }
        let Some(old) = old else {
            return Err(ApiError::not_found(&ri.group, &ri.plural, name));
        };
        let new = match ptype {
            PatchType::Apply => return self.apply(ctx, name, Some(old), patch, force),
            PatchType::Merge => super::patch::merge_patch(&old, &patch),
            PatchType::Json => super::patch::json_patch(&old, &patch).map_err(|e| {
                let _ = e;
                ApiError::invalid_plain(
                    "the server rejected our request due to an error in our request",
                )
            })?,
            PatchType::Strategic => {
                if ri.custom {
                    return Err(ApiError::unsupported_media_type());
                }
                super::patch::strategic_merge_patch(&old, &patch)
            }
        };
        self.commit(ctx, Some(old), new, Managed::Update)
    }

    fn apply(
        &mut self,
        ctx: &WriteCtx,
        name: &str,
        old: Option<Arc<Value>>,
        config: Value,
        force: bool,
    ) -> Result<Written, ApiError> {
        let ri = ctx.ri.clone();
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format".into(),
            ));
        }
        if let Some(cname) = config["metadata"]["name"].as_str()
            && cname != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({cname}) does not match the name on the URL ({name})"
            )));
        }
        let rv_pre = meta(&config, "resourceVersion");
        if !rv_pre.is_empty() {
            match &old {
                Some(o) if meta(o, "resourceVersion") == rv_pre => {}
                Some(_) => return Err(ApiError::conflict(&ri.group, &ri.plural, name)),
                None => return Err(ApiError::not_found(&ri.group, &ri.plural, name)),
            }
        }
        let shape = Shape {
            schema: ri.schema.as_ref(),
        };
        let cfg = tracked(&ri, &ctx.subresource, &config);
        let new_set = fields::apply_set(shape, &cfg);
        let live = old.as_deref().cloned().unwrap_or_else(|| json!({}));
        let mut merged = fields::merge_apply(shape, &live, &cfg);
        let mut entries = old.as_deref().map(parse_entries).unwrap_or_default();
        let is_me = |e: &Entry| {
            e.manager == ctx.manager && e.operation == "Apply" && e.subresource == ctx.subresource
        };
        let changed = fields::changed_members(&new_set, &live, &merged);
        let mut conflicts = Vec::new();
        for e in entries.iter().filter(|e| !is_me(e)) {
            for p in &changed {
                if e.set.contains(p) {
                    conflicts.push((e.describe(), fields::path_string(p), p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                let list: Vec<(String, String)> =
                    conflicts.into_iter().map(|(m, p, _)| (m, p)).collect();
                return Err(ApiError::apply_conflict(&list));
            }
            for e in entries.iter_mut().filter(|e| !is_me(e)) {
                for (_, _, p) in &conflicts {
                    e.set.remove(p);
                }
            }
        }
        let prev = entries
            .iter()
            .find(|e| is_me(e))
            .map(|e| e.set.clone())
            .unwrap_or_default();
        let removed = prev.difference(&new_set);
        let mut keep = FieldSet::default();
        for e in entries.iter().filter(|e| !is_me(e)) {
            keep.union(&e.set);
        }
        fields::remove_fields(&mut merged, &removed, &keep);
        entries.retain(|e| !is_me(e));
        entries.push(Entry {
            manager: ctx.manager.clone(),
            operation: "Apply".into(),
            api_version: ri.api_version(),
            time: now(),
            subresource: ctx.subresource.clone(),
            set: new_set,
        });
        if old.is_none() {
            merged["metadata"]["name"] = json!(name);
            if ri.namespaced && self.namespace_object(&ctx.namespace).is_none() {
                return Err(ApiError::not_found("", "namespaces", &ctx.namespace));
            }
        }
        if !merged["apiVersion"].is_string() {
            merged["apiVersion"] = config["apiVersion"].clone();
        }
        self.commit(ctx, old, merged, Managed::Precomputed(entries))
    }

    fn namespace_object(&self, ns: &str) -> Option<Arc<Value>> {
        self.objects
            .get(&(String::new(), "namespaces".to_string()))?
            .get(&(String::new(), ns.to_string()))
            .cloned()
    }

    fn admission_objects(&self) -> (Vec<Value>, Vec<Value>) {
        let g = "admissionregistration.k8s.io".to_string();
        let get = |p: &str| -> Vec<Value> {
            self.objects
                .get(&(g.clone(), p.to_string()))
                .map(|m| m.values().map(|v| (**v).clone()).collect())
                .unwrap_or_default()
        };
        (
            get("mutatingadmissionpolicies"),
            get("mutatingadmissionpolicybindings"),
        )
    }

    /// The common end of every create and update.
    fn commit(
        &mut self,
        ctx: &WriteCtx,
        old: Option<Arc<Value>>,
        mut new: Value,
        managed: Managed,
    ) -> Result<Written, ApiError> {
        let ri = ctx.ri.clone();
        let ns = if ri.namespaced {
            ctx.namespace.clone()
        } else {
            String::new()
        };
        let mut warnings = Vec::new();
        // Identity and server-owned metadata.
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        let name = match &old {
            Some(o) => meta(o, "name"),
            None => meta(&new, "name"),
        };
        if let Some(o) = &old {
            let rv_pre = meta(&new, "resourceVersion");
            if !rv_pre.is_empty() && rv_pre != meta(o, "resourceVersion") {
                return Err(ApiError::conflict(&ri.group, &ri.plural, &name));
            }
            if ctx.subresource == "status" {
                let status = new.get("status").cloned();
                let mut keep = (**o).clone();
                match status {
                    Some(s) => keep["status"] = s,
                    None => {
                        if let Some(m) = keep.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
                new = keep;
            } else if ri.has_status {
                match o.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match o["metadata"].get(f) {
                    Some(v) => new["metadata"][f] = v.clone(),
                    None => {
                        if let Some(m) = new["metadata"].as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            new["metadata"]["name"] = json!(name);
        } else {
            if ri.has_status
                && ri.custom
                && let Some(m) = new.as_object_mut()
            {
                m.remove("status");
            }
            if !is_dns_subdomain(&name) {
                return Err(ApiError::invalid(
                    &ri.kind,
                    &ri.group,
                    &name,
                    &[(
                        "FieldValueInvalid".into(),
                        "metadata.name".into(),
                        format!(
                            "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                        ),
                    )],
                ));
            }
            let uid = self.new_uid();
            let md = &mut new["metadata"];
            md["uid"] = json!(uid);
            md["creationTimestamp"] = json!(now());
            if let Some(m) = md.as_object_mut() {
                for f in [
                    "resourceVersion",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    m.remove(f);
                }
            }
        }
        if ri.namespaced {
            new["metadata"]["namespace"] = json!(ns);
        } else if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("namespace");
        }
        new["apiVersion"] = json!(ri.api_version());
        new["kind"] = json!(ri.kind);

        // Defaulting.
        if ri.custom {
            if let Some(schema) = &ri.schema {
                let pruned = crate::schema::prune_and_default(schema, &mut new);
                if !pruned.is_empty() {
                    match ctx.field_validation {
                        FieldValidation::Strict => {
                            let list: Vec<String> = pruned
                                .iter()
                                .map(|p| format!("unknown field {p:?}"))
                                .collect();
                            return Err(ApiError::bad_request(format!(
                                "{kind} in version {v:?} cannot be handled as a {kind}: strict decoding error: {}",
                                list.join(", "),
                                kind = ri.kind,
                                v = ri.version
                            )));
                        }
                        FieldValidation::Warn => {
                            warnings.extend(pruned.iter().map(|p| format!("unknown field {p:?}")))
                        }
                        FieldValidation::Ignore => {}
                    }
                }
            }
        } else {
            let mut c = self.counter;
            let mut ip = || {
                c += 1;
                format!("10.96.{}.{}", (c / 250) % 250, c % 250 + 2)
            };
            defaults::apply_builtin_defaults(&ri.group, &ri.plural, &mut new, &mut ip);
            self.counter = c;
            if ri.plural == "customresourcedefinitions" {
                default_crd_status(&mut new);
            }
        }

        // Admission (MutatingAdmissionPolicy), before validation as in the real server.
        let (policies, bindings) = self.admission_objects();
        if !policies.is_empty() {
            let ns_obj = self.namespace_object(&ns);
            let req = crate::admission::AdmissionRequest {
                operation: if old.is_some() {
                    crate::admission::Operation::Update
                } else {
                    crate::admission::Operation::Create
                },
                group: &ri.group,
                version: &ri.version,
                resource: &ri.plural,
                subresource: &ctx.subresource,
                namespace: &ns,
                name: &name,
                object: &new,
                old_object: old.as_deref(),
                namespace_object: ns_obj.as_deref(),
            };
            match crate::admission::mutate(&policies, &bindings, &req) {
                Ok(Some(mutated)) => new = mutated,
                Ok(None) => {}
                Err(e) => {
                    return Err(ApiError {
                        code: e.code,
                        body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": e.message, "reason": e.reason, "code": e.code}),
                    });
                }
            }
        }

        // Validation.
        let mut causes: Vec<(String, String, String)> = Vec::new();
        if ri.custom {
            if let Some(schema) = &ri.schema {
                for c in crate::schema::validate(schema, &new, old.as_deref()) {
                    causes.push((c.reason, c.field, c.message));
                }
            }
        } else if ri.group == "events.k8s.io" {
            let rns = new["regarding"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            // A cluster-scoped subject (no namespace) may have its events in "default".
            let cluster_scoped_ok = rns.is_empty() && (ns.is_empty() || ns == "default");
            if rns != ns && !cluster_scoped_ok {
                causes.push((
                    "FieldValueInvalid".into(),
                    "involvedObject.namespace".into(),
                    format!("Invalid value: {rns:?}: does not match event.namespace"),
                ));
            }
            if new["eventTime"].is_null() {
                causes.push((
                    "FieldValueRequired".into(),
                    "eventTime".into(),
                    "Required value".into(),
                ));
            }
            causes.extend(super::events::validate_v1(&new, old.as_deref()));
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                &ri.kind,
                if ri.custom { &ri.group } else { "" },
                &name,
                &causes,
            ));
        }
        if let Some(o) = &old
            && !o["metadata"]["deletionTimestamp"].is_null()
        {
            let before: HashSet<&Value> = o["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            let added: Vec<String> = new["metadata"]["finalizers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| !before.contains(f))
                .filter_map(|f| f.as_str().map(String::from))
                .collect();
            if !added.is_empty() {
                let list: Vec<String> = added.iter().map(|a| format!("{a:?}")).collect();
                return Err(ApiError::forbidden_field(
                    &ri.kind,
                    &name,
                    "metadata.finalizers",
                    &format!(
                        "no new finalizers can be added if the object is being deleted, found new finalizers []string{{{}}}",
                        list.join(", ")
                    ),
                ));
            }
        }

        // Generation follows the spec.
        if ri.has_generation {
            let g = match &old {
                None => 1,
                Some(o) => {
                    let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                    if spec_part(o) != spec_part(&new) {
                        g + 1
                    } else {
                        g
                    }
                }
            };
            new["metadata"]["generation"] = json!(g);
        }

        // Managed fields.
        let shape = Shape {
            schema: ri.schema.as_ref(),
        };
        let mut entries = match managed {
            Managed::Precomputed(e) => e,
            Managed::Update => {
                let base = match &old {
                    Some(o) => tracked(&ri, &ctx.subresource, o),
                    None => tracked(
                        &ri,
                        &ctx.subresource,
                        &defaults::zero_value(&ri.group, &ri.plural),
                    ),
                };
                let changed =
                    fields::update_set(shape, Some(&base), &tracked(&ri, &ctx.subresource, &new));
                let mut entries = old.as_deref().map(parse_entries).unwrap_or_default();
                let is_me = |e: &Entry| {
                    e.manager == ctx.manager
                        && e.operation == "Update"
                        && e.subresource == ctx.subresource
                };
                for e in entries.iter_mut().filter(|e| !is_me(e)) {
                    e.set = e.set.difference(&changed);
                }
                match entries.iter_mut().find(|e| is_me(e)) {
                    Some(e) => {
                        if !changed.is_empty() {
                            e.set.union(&changed);
                            e.time = now();
                            e.api_version = ri.api_version();
                        }
                    }
                    None => entries.push(Entry {
                        manager: ctx.manager.clone(),
                        operation: "Update".into(),
                        api_version: ri.api_version(),
                        time: now(),
                        subresource: ctx.subresource.clone(),
                        set: changed,
                    }),
                }
                entries
            }
        };
        // Fields this write removed leave every manager, except that an Apply manager keeps
        // what it just applied (as the real field manager does: `paused: false`, which the
        // object then omits, stays owned).
        if let Some(o) = &old {
            let views = |obj: &Value| (tracked(&ri, "", obj), tracked(&ri, "status", obj));
            let (old_main, old_status) = views(o);
            let (new_main, new_status) = views(&new);
            for e in entries.iter_mut() {
                let just_applied = e.operation == "Apply"
                    && e.manager == ctx.manager
                    && e.subresource == ctx.subresource;
                if just_applied {
                    continue;
                }
                let (ov, nv) = if ri.has_status && e.subresource == "status" {
                    (&old_status, &new_status)
                } else {
                    (&old_main, &new_main)
                };
                let gone: Vec<Vec<String>> = e
                    .set
                    .members()
                    .into_iter()
                    .filter(|p| {
                        fields::resolve(ov, p).is_some() && fields::resolve(nv, p).is_none()
                    })
                    .collect();
                for p in gone {
                    e.set.remove(&p);
                }
            }
        }
        write_entries(&mut new, entries);

        // No-op writes change nothing, not even the resourceVersion.
        if let Some(o) = &old {
            let mut cand = new.clone();
            cand["metadata"]["resourceVersion"] = o["metadata"]["resourceVersion"].clone();
            if without_volatile(&cand) == without_volatile(o) {
                return Ok(Written {
                    object: self.present(&ri, o),
                    created: false,
                    warnings,
                });
            }
        }

        if ctx.dry_run {
            if let Some(o) = &old {
                new["metadata"]["resourceVersion"] = o["metadata"]["resourceVersion"].clone();
            }
            return Ok(Written {
                object: self.present(&ri, &new),
                created: old.is_none(),
                warnings,
            });
        }
        self.rv += 1;
        let rv = self.rv;
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = ri.storage_key();
        let okey = (ns.clone(), name.clone());
        let finalizing = !new["metadata"]["deletionTimestamp"].is_null()
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        if finalizing {
            if let Some(m) = new["metadata"].as_object_mut()
                && m.get("finalizers")
                    .is_some_and(|f| f.as_array().is_some_and(|a| a.is_empty()))
            {
                m.remove("finalizers");
            }
            self.remove_object(&ri, &okey);
            let obj = Arc::new(new.clone());
            self.emit(EventKind::Deleted, &key, &ns, obj, rv);
            return Ok(Written {
                object: new,
                created: false,
                warnings,
            });
        }
        let obj = Arc::new(new.clone());
        self.put(&key, okey, obj.clone());
        if ri.plural == "customresourcedefinitions" && ri.group == "apiextensions.k8s.io" {
            self.resources.install_crd(&new);
        }
        let created = old.is_none();
        self.emit_with_prev(
            if created {
                EventKind::Added
            } else {
                EventKind::Modified
            },
            &key,
            &ns,
            obj,
            old.clone(),
            rv,
        );
        Ok(Written {
            object: self.present(&ri, &new),
            created,
            warnings,
        })
    }

    fn remove_object(&mut self, ri: &ResourceInfo, okey: &ObjKey) {
        self.take(&ri.storage_key(), okey);
        if ri.plural == "customresourcedefinitions" && ri.group == "apiextensions.k8s.io" {
            for key in self.resources.remove_crd(&okey.1) {
                let gone: Vec<(ObjKey, Arc<Value>)> = self
                    .objects
                    .remove(&key)
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default();
                for ((ns, _), obj) in gone {
                    self.unindex(&obj);
                    self.rv += 1;
                    let rv = self.rv;
                    self.emit(EventKind::Deleted, &key, &ns, obj, rv);
                }
            }
        }
    }

    /// Deletes (or marks for deletion, with finalizers). `propagation` is `Foreground`,
    /// `Background` or `Orphan` (treated as Background).
    pub fn delete(
        &mut self,
        ri: &Arc<ResourceInfo>,
        ns: &str,
        name: &str,
        propagation: Option<&str>,
    ) -> Result<Value, ApiError> {
        let ns = if ri.namespaced { ns } else { "" };
        let Some(old) = self.get_raw(ri, ns, name) else {
            return Err(ApiError::not_found(&ri.group, &ri.plural, name));
        };
        let mut obj = (*old).clone();
        let mut finalizers: Vec<Value> = obj["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if propagation == Some("Foreground") && !finalizers.contains(&json!("foregroundDeletion")) {
            finalizers.push(json!("foregroundDeletion"));
        }
        let is_namespace = ri.group.is_empty() && ri.plural == "namespaces";
        let key = ri.storage_key();
        let okey = (ns.to_string(), name.to_string());
        if propagation == Some("Foreground") || is_namespace {
            self.gc_pending = true;
        }
        if !finalizers.is_empty() || is_namespace {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                if !finalizers.is_empty() {
                    obj["metadata"]["finalizers"] = Value::Array(finalizers);
                }
                if is_namespace {
                    obj["status"]["phase"] = json!("Terminating");
                }
                self.rv += 1;
                let rv = self.rv;
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                let a = Arc::new(obj.clone());
                self.put(&key, okey, a.clone());
                self.emit_with_prev(EventKind::Modified, &key, ns, a, Some(old.clone()), rv);
            }
            return Ok(self.present(ri, &obj));
        }
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.remove_object(ri, &okey);
        let uid = meta(&obj, "uid");
        self.emit(EventKind::Deleted, &key, ns, Arc::new(obj), rv);
        Ok(super::errors::delete_success(
            &ri.group, &ri.plural, name, &uid,
        ))
    }

    /// One pass of the garbage collector: deletes dependents whose owners are gone or being
    /// deleted in the foreground, releases `foregroundDeletion` owners without dependents, and
    /// empties terminating namespaces. Returns whether it changed anything.
    pub fn gc_pass(&mut self) -> bool {
        self.gc_pending = false;
        let mut live_uids: HashMap<String, bool> = HashMap::new(); // uid -> foreground-deleting
        let mut terminating_ns: HashSet<String> = HashSet::new();
        let mut owned_by: HashSet<String> = HashSet::new();
        let mut doomed: Vec<((String, String), ObjKey)> = Vec::new();
        for (key, objs) in &self.objects {
            for o in objs.values() {
                let fg = o["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!("foregroundDeletion")));
                live_uids.insert(meta(o, "uid"), fg);
                if key.0.is_empty()
                    && key.1 == "namespaces"
                    && !o["metadata"]["deletionTimestamp"].is_null()
                {
                    terminating_ns.insert(meta(o, "name"));
                }
            }
        }
        let mut ns_nonempty: HashSet<String> = HashSet::new();
        for (key, objs) in &self.objects {
            for (okey, o) in objs {
                if !okey.0.is_empty() && terminating_ns.contains(&okey.0) {
                    ns_nonempty.insert(okey.0.clone());
                    if o["metadata"]["deletionTimestamp"].is_null() {
                        doomed.push((key.clone(), okey.clone()));
                    }
                    continue;
                }
                let Some(refs) = o["metadata"]["ownerReferences"].as_array() else {
                    continue;
                };
                if refs.is_empty() {
                    continue;
                }
                for r in refs {
                    owned_by.insert(r["uid"].as_str().unwrap_or_default().to_string());
                }
                let all_gone_or_fg = refs.iter().all(|r| {
                    let uid = r["uid"].as_str().unwrap_or_default();
                    live_uids.get(uid).is_none_or(|fg| *fg)
                });
                if all_gone_or_fg && o["metadata"]["deletionTimestamp"].is_null() {
                    doomed.push((key.clone(), okey.clone()));
                }
            }
        }
        let mut changed = false;
        for (key, okey) in doomed {
            if let Some(ri) = self.resources.any_version(&key.0, &key.1)
                && self.delete(&ri, &okey.0, &okey.1, None).is_ok()
            {
                changed = true;
            }
        }
        // Release foreground owners with no dependents left, and empty terminating namespaces.
        let mut release: Vec<((String, String), ObjKey)> = Vec::new();
        for (key, objs) in &self.objects {
            for (okey, o) in objs {
                let fg = o["metadata"]["finalizers"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!("foregroundDeletion")));
                let is_ns = key.0.is_empty() && key.1 == "namespaces";
                if (fg
                    && !owned_by.contains(&meta(o, "uid"))
                    && !o["metadata"]["deletionTimestamp"].is_null())
                    || (is_ns && terminating_ns.contains(&okey.1) && !ns_nonempty.contains(&okey.1))
                {
                    release.push((key.clone(), okey.clone()));
                }
            }
        }
        for (key, okey) in release {
            let Some(ri) = self.resources.any_version(&key.0, &key.1) else {
                continue;
            };
            let Some(o) = self.get_raw(&ri, &okey.0, &okey.1) else {
                continue;
            };
            let mut obj = (*o).clone();
            let fins: Vec<Value> = obj["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f != "foregroundDeletion")
                .collect();
            self.rv += 1;
            let rv = self.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            if fins.is_empty() {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("finalizers");
                }
                self.remove_object(&ri, &okey);
                self.emit(EventKind::Deleted, &key, &okey.0, Arc::new(obj), rv);
            } else {
                obj["metadata"]["finalizers"] = Value::Array(fins);
                let a = Arc::new(obj);
                self.put(&key, okey.clone(), a.clone());
                self.emit_with_prev(EventKind::Modified, &key, &okey.0, a, Some(o.clone()), rv);
            }
            changed = true;
        }
        if changed {
            self.gc_pending = true;
        }
        changed
    }
}

fn default_crd_status(crd: &mut Value) {
    let names = crd["spec"]["names"].clone();
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    let t = now();
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
        ],
        "storedVersions": storage,
    });
}

fn encode_continue(k: &ObjKey) -> String {
    let raw = format!("{}\u{0}{}", k.0, k.1);
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(s: &str) -> Option<ObjKey> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let (a, b) = raw.split_once('\u{0}')?;
    Some((a.to_string(), b.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        let mut s = Store::new(ResourceTable::new(true), 100);
        let ns = ctx(&s, "", "v1", "namespaces", "");
        s.create(&ns, json!({"metadata": {"name": "default"}}))
            .unwrap();
        s
    }

    fn ctx(s: &Store, g: &str, v: &str, plural: &str, manager: &str) -> WriteCtx {
        WriteCtx {
            ri: s.resources.get(g, v, plural).unwrap(),
            namespace: "default".into(),
            manager: manager.into(),
            subresource: String::new(),
            field_validation: FieldValidation::Warn,
            dry_run: false,
        }
    }

    fn deployment(replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "i:1"}]}}}})
    }

    #[test]
    fn generation_moves_with_spec_but_not_with_labels() {
        let mut s = store();
        let c = ctx(&s, "apps", "v1", "deployments", "t");
        s.create(&c, deployment(1)).unwrap();
        let w = s
            .patch(
                &c,
                "web",
                PatchType::Merge,
                json!({"metadata": {"labels": {"a": "b"}}}),
                false,
            )
            .unwrap();
        assert_eq!(w.object["metadata"]["generation"], 1);
        let w = s
            .patch(
                &c,
                "web",
                PatchType::Merge,
                json!({"spec": {"replicas": 3}}),
                false,
            )
            .unwrap();
        assert_eq!(w.object["metadata"]["generation"], 2);
    }

    #[test]
    fn a_finalizer_holds_a_deleted_object_until_it_is_removed() {
        let mut s = store();
        let c = ctx(&s, "", "v1", "configmaps", "t");
        s.create(
            &c,
            json!({"metadata": {"name": "held", "finalizers": ["x/y"]}}),
        )
        .unwrap();
        let marked = s.delete(&c.ri, "default", "held", None).unwrap();
        assert!(marked["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get(&c.ri, "default", "held").is_ok());
        s.patch(
            &c,
            "held",
            PatchType::Merge,
            json!({"metadata": {"finalizers": null}}),
            false,
        )
        .unwrap();
        assert_eq!(s.get(&c.ri, "default", "held").unwrap_err().code, 404);
    }

    #[test]
    fn the_garbage_collector_deletes_dependents_of_a_deleted_owner() {
        let mut s = store();
        let c = ctx(&s, "", "v1", "configmaps", "t");
        let owner = s
            .create(&c, json!({"metadata": {"name": "owner"}}))
            .unwrap()
            .object;
        let uid = owner["metadata"]["uid"].clone();
        s.create(
            &c,
            json!({"metadata": {"name": "child", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}}),
        )
        .unwrap();
        s.delete(&c.ri, "default", "owner", None).unwrap();
        while s.gc_pending {
            s.gc_pass();
        }
        assert_eq!(s.get(&c.ri, "default", "child").unwrap_err().code, 404);
    }

    #[test]
    fn apply_conflicts_with_another_managers_field_unless_forced() {
        let mut s = store();
        let gitops = ctx(&s, "apps", "v1", "deployments", "gitops");
        s.patch(&gitops, "web", PatchType::Apply, deployment(2), false)
            .unwrap();
        let hpa = ctx(&s, "apps", "v1", "deployments", "hpa");
        let cfg = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": {"replicas": 5}});
        let err = s
            .patch(&hpa, "web", PatchType::Apply, cfg.clone(), false)
            .unwrap_err();
        assert_eq!(err.code, 409);
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"gitops\": .spec.replicas"
        );
        let w = s.patch(&hpa, "web", PatchType::Apply, cfg, true).unwrap();
        assert_eq!(w.object["spec"]["replicas"], 5);
        let managers: Vec<&str> = w.object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["fieldsV1"]["f:spec"]["f:replicas"].is_object())
            .filter_map(|e| e["manager"].as_str())
            .collect();
        assert_eq!(managers, vec!["hpa"]);
    }

    #[test]
    fn a_watch_from_a_compacted_resource_version_is_expired() {
        let mut s = store();
        let c = ctx(&s, "", "v1", "configmaps", "t");
        let rv = s.current_rv();
        s.create(&c, json!({"metadata": {"name": "a"}})).unwrap();
        assert_eq!(s.events_since(&c.ri.storage_key(), rv).unwrap().len(), 1);
        s.compact();
        assert_eq!(
            s.events_since(&c.ri.storage_key(), rv).unwrap_err().code,
            410
        );
        assert!(s.events_since(&c.ri.storage_key(), s.current_rv()).is_ok());
    }
}
