//! The three PATCH formats kube-apiserver takes besides apply: JSON merge patch (RFC 7386), JSON
//! patch (RFC 6902) and strategic merge patch. Pure functions over JSON; no I/O.
//!
//! Strategic merge patch is simplified: lists merge by the built-in merge keys that
//! [`super::fields::Shape`] knows (containers, ports, env, volumes, conditions, ...), scalar lists
//! with a merge strategy (finalizers) are unioned, every other list is replaced; the directives
//! `$patch: delete|replace` (on maps and list items), `$deleteFromPrimitiveList/<field>` and
//! `$setElementOrder/<field>` (ignored: the result keeps the live order) are understood,
//! `$retainKeys` is ignored.

use serde_json::{Map, Value};

use super::fields::{FPath, ListType, Shape, item_key};

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    match patch {
        Value::Object(p) => {
            let mut out = target.as_object().cloned().unwrap_or_default();
            for (k, v) in p {
                if v.is_null() {
                    out.remove(k);
                } else {
                    let merged = merge_patch(out.get(k).unwrap_or(&Value::Null), v);
                    out.insert(k.clone(), merged);
                }
            }
            Value::Object(out)
        }
        _ => patch.clone(),
    }
}

/// Why a JSON patch did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPatchError {
    #[error("the JSON patch is not a list of operations: {0}")]
    Malformed(String),
    #[error("path {0} does not exist")]
    MissingPath(String),
    #[error("test operation failed at {0}")]
    TestFailed(String),
}

fn unescape(tok: &str) -> String {
    tok.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(p: &str) -> Result<Vec<String>, JsonPatchError> {
    if p.is_empty() {
        return Ok(vec![]);
    }
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| JsonPatchError::Malformed(format!("bad path {p}")))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn parent_mut<'a>(
    doc: &'a mut Value,
    toks: &[String],
    path: &str,
) -> Result<&'a mut Value, JsonPatchError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| JsonPatchError::MissingPath(path.to_string()))?;
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &str, value: Value, replace: bool) -> Result<(), JsonPatchError> {
    let toks = split_pointer(path)?;
    let Some((last, parent)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    let missing = || JsonPatchError::MissingPath(path.to_string());
    match parent_mut(doc, parent, path)? {
        Value::Object(m) => {
            if replace && !m.contains_key(last) {
                return Err(missing());
            }
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            if last == "-" && !replace {
                a.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| missing())?;
                if replace {
                    *a.get_mut(i).ok_or_else(missing)? = value;
                } else if i <= a.len() {
                    a.insert(i, value);
                } else {
                    return Err(missing());
                }
            }
        }
        _ => return Err(missing()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, JsonPatchError> {
    let toks = split_pointer(path)?;
    let missing = || JsonPatchError::MissingPath(path.to_string());
    let (last, parent) = toks.split_last().ok_or_else(missing)?;
    match parent_mut(doc, parent, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            if i < a.len() {
                Ok(a.remove(i))
            } else {
                Err(missing())
            }
        }
        _ => Err(missing()),
    }
}

/// RFC 6902, applied atomically.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, JsonPatchError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| JsonPatchError::Malformed("not an array".into()))?;
    let mut doc = target.clone();
    for op in ops {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| JsonPatchError::Malformed("missing path".into()))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| JsonPatchError::Malformed("missing value".into()))
        };
        match op["op"].as_str().unwrap_or_default() {
            "add" => add(&mut doc, path, value()?, false)?,
            "replace" => add(&mut doc, path, value()?, true)?,
            "remove" => {
                remove(&mut doc, path)?;
            }
            "test" => {
                // As the real server's json-patch library: a missing path tests equal to null
                // (kube-rs's finalizer helper relies on it).
                if doc.pointer(path).unwrap_or(&Value::Null) != &value()? {
                    return Err(JsonPatchError::TestFailed(path.into()));
                }
            }
            "move" | "copy" => {
                let from = op["from"]
                    .as_str()
                    .ok_or_else(|| JsonPatchError::Malformed("missing from".into()))?;
                let v = if op["op"] == "move" {
                    remove(&mut doc, from)?
                } else {
                    doc.pointer(from)
                        .cloned()
                        .ok_or_else(|| JsonPatchError::MissingPath(from.into()))?
                };
                add(&mut doc, path, v, false)?;
            }
            other => return Err(JsonPatchError::Malformed(format!("unknown op {other}"))),
        }
    }
    Ok(doc)
}

/// Strategic merge patch with the built-in merge keys (see the module doc for what is simplified).
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Value {
    smp_at(Shape::default(), target, patch, &mut Vec::new())
}

fn smp_at(shape: Shape<'_>, target: &Value, patch: &Value, fpath: &mut FPath) -> Value {
    let Some(p) = patch.as_object() else {
        return patch.clone();
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut m = p.clone();
        m.remove("$patch");
        return Value::Object(m);
    }
    let mut out: Map<String, Value> = target.as_object().cloned().unwrap_or_default();
    for (k, v) in p {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(cur)), Some(del)) = (out.get_mut(field), v.as_array()) {
                cur.retain(|x| !del.contains(x));
            }
            continue;
        }
        if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
            out.remove(k);
            continue;
        }
        fpath.push(k.clone());
        let merged = match (out.get(k), v) {
            (Some(cur @ Value::Object(_)), Value::Object(_)) => smp_at(shape, cur, v, fpath),
            (Some(Value::Array(cur)), Value::Array(items)) => smp_list(shape, cur, items, fpath),
            (None, Value::Array(items)) => smp_list(shape, &[], items, fpath),
            (None, Value::Object(_)) => smp_at(shape, &Value::Null, v, fpath),
            _ => v.clone(),
        };
        fpath.pop();
        out.insert(k.clone(), merged);
    }
    Value::Object(out)
}

fn smp_list(shape: Shape<'_>, cur: &[Value], items: &[Value], fpath: &mut FPath) -> Value {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        );
    }
    match shape.list_type(fpath) {
        ListType::Atomic => Value::Array(items.to_vec()),
        ListType::Set => {
            let mut out = cur.to_vec();
            for it in items {
                if !out.contains(it) {
                    out.push(it.clone());
                }
            }
            Value::Array(out)
        }
        ListType::Map(keys) => {
            // SMP merges by the first key only (patchMergeKey), e.g. containerPort for ports.
            let merge_key = &keys[..1];
            let mut out = cur.to_vec();
            fpath.push("[]".into());
            for it in items {
                let key = item_key(it, merge_key);
                let pos = out.iter().position(|o| item_key(o, merge_key) == key);
                let delete = it.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => out[i] = smp_at(shape, &out[i], it, fpath),
                    (None, false) => out.push(smp_at(shape, &Value::Null, it, fpath)),
                }
            }
            fpath.pop();
            Value::Array(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_patch_merges_containers_by_name() {
        let live = json!({"spec": {"containers": [{"name": "web", "image": "a"}]}});
        let patch = json!({"spec": {"containers": [{"name": "sidecar", "image": "s"}, {"name": "web", "image": "b"}]}});
        assert_eq!(
            strategic_merge_patch(&live, &patch),
            json!({"spec": {"containers": [{"name": "web", "image": "b"}, {"name": "sidecar", "image": "s"}]}})
        );
    }

    #[test]
    fn strategic_merge_patch_deletes_an_item_with_the_patch_directive() {
        let live = json!({"spec": {"containers": [{"name": "web"}, {"name": "x"}]}});
        let patch = json!({"spec": {"containers": [{"name": "x", "$patch": "delete"}]}});
        assert_eq!(
            strategic_merge_patch(&live, &patch),
            json!({"spec": {"containers": [{"name": "web"}]}})
        );
    }

    #[test]
    fn json_patch_fails_on_a_failed_test() {
        let live = json!({"spec": {"replicas": 1}});
        let ops = json!([{"op": "test", "path": "/spec/replicas", "value": 9}]);
        assert!(matches!(
            json_patch(&live, &ops),
            Err(JsonPatchError::TestFailed(_))
        ));
    }

    #[test]
    fn json_patch_test_of_a_missing_path_against_null_passes() {
        let live = json!({"metadata": {"name": "x"}});
        let ops = json!([{"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]);
        assert_eq!(
            json_patch(&live, &ops).unwrap()["metadata"]["finalizers"],
            json!(["f"])
        );
    }

    #[test]
    fn merge_patch_null_removes_a_field() {
        assert_eq!(
            merge_patch(&json!({"a": 1, "b": 2}), &json!({"a": null})),
            json!({"b": 2})
        );
    }
}
