//! Field ownership for server-side apply: the `FieldsV1` set format (`f:`, `k:{..}`, `v:`, `.`),
//! the shape of lists and maps (built-in merge keys, CRD `x-kubernetes-list-type` /
//! `x-kubernetes-list-map-keys` / `x-kubernetes-map-type`), the sets an Apply or an Update owns,
//! and the apply merge itself. Pure functions over JSON; no I/O and no clock.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// How a list is merged and owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced as a whole, owned as one leaf.
    Atomic,
    /// Scalars merged as a set, owned per value (`v:`).
    Set,
    /// Objects merged by these key fields, owned per item (`k:{..}`).
    Map(Vec<String>),
}

/// What the server knows about an object's shape: a CRD schema, or the built-in rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape<'a> {
    pub schema: Option<&'a Value>,
}

/// A field path without list positions: field names, with `[]` for "an item of this list".
pub type FPath = Vec<String>;

impl Shape<'_> {
    fn schema_at(&self, fpath: &[String]) -> Option<&Value> {
        let mut s = self.schema?;
        for seg in fpath {
            if seg == "[]" {
                s = s.get("items")?;
            } else if let Some(p) = s.get("properties").and_then(|p| p.get(seg.as_str())) {
                s = p;
            } else {
                s = s.get("additionalProperties").filter(|a| a.is_object())?;
            }
        }
        Some(s)
    }

    pub fn list_type(&self, fpath: &[String]) -> ListType {
        let builtin =
            fpath.first().map(String::as_str) == Some("metadata") || self.schema.is_none();
        if !builtin {
            if let Some(s) = self.schema_at(fpath) {
                return match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("set") => ListType::Set,
                    Some("map") => ListType::Map(
                        s["x-kubernetes-list-map-keys"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|k| k.as_str().map(String::from))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    _ => ListType::Atomic,
                };
            }
            return ListType::Atomic;
        }
        builtin_list_type(fpath)
    }

    pub fn map_is_atomic(&self, fpath: &[String]) -> bool {
        let builtin =
            fpath.first().map(String::as_str) == Some("metadata") || self.schema.is_none();
        if !builtin {
            return self.schema_at(fpath).is_some_and(|s| {
                s.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic")
            });
        }
        matches!(
            fpath.last().map(String::as_str),
            Some("selector" | "regarding" | "related" | "involvedObject" | "roleRef")
        )
    }
}

fn builtin_list_type(fpath: &[String]) -> ListType {
    let last = fpath.last().map(String::as_str).unwrap_or_default();
    let keys = |k: &[&str]| ListType::Map(k.iter().map(|s| s.to_string()).collect());
    let in_container = fpath
        .iter()
        .any(|s| s == "containers" || s == "initContainers" || s == "ephemeralContainers");
    match last {
        "finalizers" => ListType::Set,
        "ownerReferences" => keys(&["uid"]),
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => keys(&["name"]),
        "volumeMounts" => keys(&["mountPath"]),
        "conditions" => keys(&["type"]),
        "hostAliases" => keys(&["ip"]),
        "ports" if in_container => keys(&["containerPort", "protocol"]),
        "ports" if fpath.len() == 2 && fpath[0] == "spec" => keys(&["port", "protocol"]),
        _ => ListType::Atomic,
    }
}

/// The key object of a list-map item, with the built-in default for `protocol`.
pub fn item_key(item: &Value, keys: &[String]) -> Value {
    let mut m = Map::new();
    for k in keys {
        match item.get(k) {
            Some(v) => {
                m.insert(k.clone(), v.clone());
            }
            None if k == "protocol" => {
                m.insert(k.clone(), json!("TCP"));
            }
            None => {}
        }
    }
    Value::Object(m)
}

fn key_string(item: &Value, keys: &[String]) -> String {
    format!("k:{}", item_key(item, keys))
}

/// A set of field paths in the `FieldsV1` shape. `member` is the `"."` marker (or a leaf).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSet {
    pub member: bool,
    pub children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    pub fn from_json(v: &Value) -> FieldSet {
        let mut s = FieldSet::default();
        if let Some(m) = v.as_object() {
            if m.is_empty() {
                s.member = true;
            }
            for (k, c) in m {
                if k == "." {
                    s.member = true;
                } else {
                    s.children.insert(k.clone(), FieldSet::from_json(c));
                }
            }
        }
        s
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), json!({}));
        }
        for (k, c) in &self.children {
            if !c.is_empty() {
                m.insert(k.clone(), c.to_json());
            }
        }
        Value::Object(m)
    }

    /// Every member path.
    pub fn members(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if self.member {
            out.push(prefix.clone());
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    pub fn contains(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => self.member,
            Some((h, rest)) => self.children.get(h).is_some_and(|c| c.contains(rest)),
        }
    }

    /// True if the path or anything below it is a member.
    pub fn touches(&self, path: &[String]) -> bool {
        match path.split_first() {
            None => !self.is_empty(),
            Some((h, rest)) => self.children.get(h).is_some_and(|c| c.touches(rest)),
        }
    }

    pub fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = true,
            Some((h, rest)) => self.children.entry(h.clone()).or_default().insert(rest),
        }
    }

    pub fn remove(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.member = false,
            Some((h, rest)) => {
                if let Some(c) = self.children.get_mut(h) {
                    c.remove(rest);
                    if c.is_empty() {
                        self.children.remove(h);
                    }
                }
            }
        }
    }

    pub fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union(c);
        }
    }

    /// Members of `self` not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        for p in other.members() {
            out.remove(&p);
        }
        out
    }
}

/// Resolves one `FieldsV1` path element in a value.
pub fn resolve_child<'a>(v: &'a Value, elem: &str) -> Option<&'a Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        return v.as_object()?.get(f);
    }
    let arr = v.as_array()?;
    if let Some(k) = elem.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(k).ok()?;
        let keys: Vec<String> = key.keys().cloned().collect();
        let want = Value::Object(key);
        return arr.iter().find(|it| item_key(it, &keys) == want);
    }
    if let Some(val) = elem.strip_prefix("v:") {
        let want: Value = serde_json::from_str(val).ok()?;
        return arr.iter().find(|it| **it == want);
    }
    if let Some(i) = elem.strip_prefix("i:") {
        return arr.get(i.parse::<usize>().ok()?);
    }
    None
}

pub fn resolve<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for e in path {
        cur = resolve_child(cur, e)?;
    }
    Some(cur)
}

/// `.spec.template.spec.containers[name="web"].image`, as conflict messages print paths.
pub fn path_string(path: &[String]) -> String {
    let mut s = String::new();
    for e in path {
        if let Some(f) = e.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = e.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            s.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = e.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        } else if let Some(i) = e.strip_prefix("i:") {
            s.push_str(&format!("[{i}]"));
        }
    }
    s
}

fn is_nonempty_object(v: &Value) -> bool {
    v.as_object().is_some_and(|m| !m.is_empty())
}

/// The fields an applied configuration sets: leaves and list items are members, maps are not.
pub fn apply_set(shape: Shape<'_>, config: &Value) -> FieldSet {
    let mut set = FieldSet::default();
    walk_apply(shape, config, &mut Vec::new(), &mut set);
    set
}

fn walk_apply(shape: Shape<'_>, v: &Value, fpath: &mut FPath, node: &mut FieldSet) {
    let Some(m) = v.as_object() else { return };
    for (k, c) in m {
        fpath.push(k.clone());
        let mut child = FieldSet::default();
        match c {
            Value::Object(_) if is_nonempty_object(c) && !shape.map_is_atomic(fpath) => {
                walk_apply(shape, c, fpath, &mut child)
            }
            Value::Array(items) => match shape.list_type(fpath) {
                ListType::Atomic => child.member = true,
                ListType::Set => {
                    for it in items {
                        child.children.insert(
                            format!("v:{it}"),
                            FieldSet {
                                member: true,
                                ..Default::default()
                            },
                        );
                    }
                }
                ListType::Map(keys) => {
                    fpath.push("[]".into());
                    for it in items {
                        let mut item = FieldSet {
                            member: true,
                            ..Default::default()
                        };
                        walk_apply(shape, it, fpath, &mut item);
                        child.children.insert(key_string(it, &keys), item);
                    }
                    fpath.pop();
                }
            },
            _ => child.member = true,
        }
        fpath.pop();
        if !child.is_empty() {
            node.children.insert(format!("f:{k}"), child);
        }
    }
}

/// The fields an Update changed or added, compared with `old` (`None` when absent before).
pub fn update_set(shape: Shape<'_>, old: Option<&Value>, new: &Value) -> FieldSet {
    let mut set = FieldSet::default();
    walk_update(shape, old, new, &mut Vec::new(), &mut set);
    set
}

fn walk_update(
    shape: Shape<'_>,
    old: Option<&Value>,
    new: &Value,
    fpath: &mut FPath,
    node: &mut FieldSet,
) {
    let Some(m) = new.as_object() else { return };
    for (k, c) in m {
        let o = old.and_then(|o| o.get(k));
        fpath.push(k.clone());
        let mut child = FieldSet::default();
        match c {
            Value::Object(_) if is_nonempty_object(c) && !shape.map_is_atomic(fpath) => {
                walk_update(shape, o.filter(|o| o.is_object()), c, fpath, &mut child);
                child.member |= o.is_none();
            }
            Value::Array(items) if shape.list_type(fpath) != ListType::Atomic => {
                let olds = o.and_then(Value::as_array);
                match shape.list_type(fpath) {
                    ListType::Set => {
                        for it in items {
                            if !olds.is_some_and(|a| a.contains(it)) {
                                child.children.insert(
                                    format!("v:{it}"),
                                    FieldSet {
                                        member: true,
                                        ..Default::default()
                                    },
                                );
                            }
                        }
                    }
                    ListType::Map(keys) => {
                        fpath.push("[]".into());
                        for it in items {
                            let key = item_key(it, &keys);
                            let old_item =
                                olds.and_then(|a| a.iter().find(|o| item_key(o, &keys) == key));
                            let mut item = FieldSet {
                                member: old_item.is_none(),
                                ..Default::default()
                            };
                            walk_update(shape, old_item, it, fpath, &mut item);
                            if !item.is_empty() {
                                child.children.insert(format!("k:{key}"), item);
                            }
                        }
                        fpath.pop();
                    }
                    ListType::Atomic => {}
                }
                child.member |= o.is_none();
            }
            _ => child.member = o != Some(c),
        }
        fpath.pop();
        if !child.is_empty() {
            node.children.insert(format!("f:{k}"), child);
        }
    }
}

/// Merges an applied configuration into the live object: maps field by field, list-maps item by
/// key, sets by value; atomic lists and scalars are replaced.
pub fn merge_apply(shape: Shape<'_>, live: &Value, config: &Value) -> Value {
    merge_at(shape, live, config, &mut Vec::new())
}

fn merge_at(shape: Shape<'_>, live: &Value, config: &Value, fpath: &mut FPath) -> Value {
    match (live, config) {
        (Value::Object(l), Value::Object(c)) if !shape.map_is_atomic(fpath) => {
            let mut out = l.clone();
            for (k, cv) in c {
                fpath.push(k.clone());
                let merged = match l.get(k) {
                    Some(lv) => merge_at(shape, lv, cv, fpath),
                    None => cv.clone(),
                };
                fpath.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(c)) => match shape.list_type(fpath) {
            ListType::Atomic => config.clone(),
            ListType::Set => {
                let mut out = l.clone();
                for it in c {
                    if !out.contains(it) {
                        out.push(it.clone());
                    }
                }
                Value::Array(out)
            }
            ListType::Map(keys) => {
                let mut out = l.clone();
                fpath.push("[]".into());
                for it in c {
                    let key = item_key(it, &keys);
                    match out.iter_mut().find(|o| item_key(o, &keys) == key) {
                        Some(slot) => *slot = merge_at(shape, slot, it, fpath),
                        None => out.push(it.clone()),
                    }
                }
                fpath.pop();
                Value::Array(out)
            }
        },
        _ => config.clone(),
    }
}

/// Removes the member paths of `set` from `obj` (items and fields), keeping anything `keep` touches.
pub fn remove_fields(obj: &mut Value, set: &FieldSet, keep: &FieldSet) {
    for (k, c) in &set.children {
        let keep_c = keep.children.get(k).cloned().unwrap_or_default();
        if c.member && keep_c.is_empty() {
            remove_child(obj, k);
            continue;
        }
        if let Some(child) = child_mut(obj, k) {
            remove_fields(child, c, &keep_c);
        }
    }
}

fn child_mut<'a>(v: &'a mut Value, elem: &str) -> Option<&'a mut Value> {
    if let Some(f) = elem.strip_prefix("f:") {
        return v.as_object_mut()?.get_mut(f);
    }
    let idx = index_of(v, elem)?;
    v.as_array_mut()?.get_mut(idx)
}

fn index_of(v: &Value, elem: &str) -> Option<usize> {
    let arr = v.as_array()?;
    let target = resolve_child(v, elem)? as *const Value;
    arr.iter().position(|it| std::ptr::eq(it, target))
}

fn remove_child(v: &mut Value, elem: &str) {
    if let Some(f) = elem.strip_prefix("f:") {
        if let Some(m) = v.as_object_mut() {
            m.remove(f);
        }
        return;
    }
    if let Some(idx) = index_of(v, elem)
        && let Some(a) = v.as_array_mut()
    {
        a.remove(idx);
    }
}

/// Paths of `set` whose value differs between `before` and `after` (list items: existence only).
pub fn changed_members(set: &FieldSet, before: &Value, after: &Value) -> Vec<Vec<String>> {
    set.members()
        .into_iter()
        .filter(|p| {
            let (b, a) = (resolve(before, p), resolve(after, p));
            let last_is_item = p.last().is_some_and(|e| !e.starts_with("f:"));
            if last_is_item {
                b.is_some() != a.is_some()
            } else {
                b != a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_set_of_a_deployment_manifest_matches_the_recorded_fields_v1() {
        let cfg = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "web", "ports": [{"containerPort": 8080}]}]}}}});
        let set = apply_set(Shape::default(), &cfg);
        assert_eq!(
            set.to_json(),
            json!({"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:replicas": {}, "f:selector": {},
              "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {".": {}, "f:name": {},
                "f:ports": {"k:{\"containerPort\":8080,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}}}}}})
        );
    }

    #[test]
    fn update_set_marks_added_maps_and_changed_leaves_only() {
        let old = json!({"data": {"a": "1"}});
        let new = json!({"data": {"a": "2"}, "metadata": {"labels": {"x": "y"}}});
        let set = update_set(Shape::default(), Some(&old), &new);
        assert_eq!(
            set.to_json(),
            json!({"f:data": {"f:a": {}}, "f:metadata": {".": {}, "f:labels": {".": {}, "f:x": {}}}})
        );
    }

    #[test]
    fn removing_a_list_item_by_key_leaves_the_others() {
        let mut obj = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let mut set = FieldSet::default();
        set.insert(&[
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"a\"}".into(),
        ]);
        remove_fields(&mut obj, &set, &FieldSet::default());
        assert_eq!(obj, json!({"spec": {"containers": [{"name": "b"}]}}));
    }
}

#[cfg(test)]
mod schema_shape_tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "routes": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}, "weight": {"type": "integer"}}}},
            "hosts": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            "backends": {"type": "array", "items": {"type": "object"}},
            "labels": {"type": "object", "x-kubernetes-map-type": "atomic", "additionalProperties": {"type": "string"}}}}}})
    }

    #[test]
    fn crd_list_map_items_are_owned_and_merged_by_their_keys() {
        let s = schema();
        let shape = Shape { schema: Some(&s) };
        let live =
            json!({"spec": {"routes": [{"name": "a", "weight": 1}, {"name": "b", "weight": 2}]}});
        let cfg = json!({"spec": {"routes": [{"name": "b", "weight": 5}], "hosts": ["x"], "backends": [{"n": 1}], "labels": {"k": "v"}}});
        let merged = merge_apply(shape, &live, &cfg);
        assert_eq!(
            merged["spec"]["routes"],
            json!([{"name": "a", "weight": 1}, {"name": "b", "weight": 5}])
        );
        assert_eq!(
            apply_set(shape, &cfg).to_json(),
            json!({"f:spec": {"f:backends": {}, "f:hosts": {"v:\"x\"": {}}, "f:labels": {},
                "f:routes": {"k:{\"name\":\"b\"}": {".": {}, "f:name": {}, "f:weight": {}}}}})
        );
    }
}
