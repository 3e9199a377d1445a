//! Offline structural validation of a document against a CRD's `openAPIV3Schema`, the way an API
//! server with `kubectl --validate=strict` would judge it: unknown fields, types, required fields,
//! bounds, lengths, patterns and enums, each reported with its JSON path.
//!
//! It walks JSON values against the JSON form of the generated schema, so it reads what
//! `sluice crds` installs rather than re-deriving it from the Rust types. It does not evaluate CEL
//! (`x-kubernetes-validations`): `core::validate` checks the same rules with better messages.

use serde_json::{Map, Value};

/// One schema violation: the JSON path of the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub reason: String,
}

/// Fields of `metadata` an API server accepts (ObjectMeta); anything else is an unknown field.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// Checks a whole object (apiVersion, kind, metadata and the schema's own fields) against the
/// root `openAPIV3Schema` of its CRD version.
pub fn check_object(object: &Map<String, Value>, root: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    for (key, value) in object {
        match key.as_str() {
            "apiVersion" | "kind" => {}
            "metadata" => check_metadata(value, &mut out),
            _ => match root.pointer(&format!("/properties/{key}")) {
                Some(schema) => walk(value, schema, key, &mut out),
                None => {
                    let known = root
                        .get("properties")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flat_map(|p| p.keys().map(String::as_str))
                        .chain(["apiVersion", "kind", "metadata"]);
                    out.push(unknown_with_hint(key, closest(key, known)));
                }
            },
        }
    }
    if !object.contains_key("metadata") {
        out.push(violation(
            "metadata.name",
            "required field is missing".into(),
        ));
    }
    for required in required_of(root) {
        if !object.contains_key(required) {
            out.push(Violation {
                field: required.to_owned(),
                reason: "required field is missing".into(),
            });
        }
    }
    out
}

fn check_metadata(value: &Value, out: &mut Vec<Violation>) {
    let Some(meta) = value.as_object() else {
        out.push(type_mismatch("metadata", "object", value));
        return;
    };
    if !meta.contains_key("name") && !meta.contains_key("generateName") {
        out.push(violation(
            "metadata.name",
            "required field is missing".into(),
        ));
    }
    for (key, value) in meta {
        let path = format!("metadata.{key}");
        if !OBJECT_META_FIELDS.contains(&key.as_str()) {
            out.push(unknown_with_hint(
                &path,
                closest(key, OBJECT_META_FIELDS.iter().copied()),
            ));
            continue;
        }
        match key.as_str() {
            "labels" | "annotations" => match value.as_object() {
                Some(map) => {
                    for (k, v) in map {
                        if !v.is_string() {
                            out.push(type_mismatch(&format!("{path}[{k}]"), "string", v));
                        }
                    }
                }
                None => out.push(type_mismatch(&path, "object", value)),
            },
            "name" | "namespace" | "generateName" if !value.is_string() => {
                out.push(type_mismatch(&path, "string", value));
            }
            _ => {}
        }
    }
}

/// Walks `value` at `path` against `schema`, appending every violation found.
pub fn walk(value: &Value, schema: &Value, path: &str, out: &mut Vec<Violation>) {
    if value.is_null() {
        // An explicit null is pruned by the API server for optional fields; only a nullable
        // schema keeps it, and neither is an error for a client-side check.
        return;
    }
    if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        if !(value.is_string() || is_integer(value)) {
            out.push(type_mismatch(path, "integer or string", value));
        }
        return;
    }
    let preserve = schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    let expected = schema.get("type").and_then(Value::as_str);
    match expected {
        Some("object") => match value.as_object() {
            Some(map) => walk_object(map, schema, path, preserve, out),
            None => out.push(type_mismatch(path, "object", value)),
        },
        Some("array") => match value.as_array() {
            Some(items) => walk_array(items, schema, path, out),
            None => out.push(type_mismatch(path, "array", value)),
        },
        Some("string") => match value.as_str() {
            Some(text) => check_string(text, schema, path, out),
            None => out.push(type_mismatch(path, "string", value)),
        },
        Some("integer") => {
            if is_integer(value) {
                check_number(value, schema, path, out);
            } else {
                out.push(type_mismatch(path, "integer", value));
            }
        }
        Some("number") => {
            if value.is_number() {
                check_number(value, schema, path, out);
            } else {
                out.push(type_mismatch(path, "number", value));
            }
        }
        Some("boolean") => {
            if !value.is_boolean() {
                out.push(type_mismatch(path, "boolean", value));
            }
        }
        // No type (preserve-unknown-fields, or a type this check does not know): accept.
        Some(_) | None => {}
    }
    check_enum(value, schema, path, out);
}

fn walk_object(
    map: &Map<String, Value>,
    schema: &Value,
    path: &str,
    preserve: bool,
    out: &mut Vec<Violation>,
) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (key, value) in map {
        let child = join(path, key);
        if let Some(sub) = properties.and_then(|p| p.get(key)) {
            walk(value, sub, &child, out);
        } else if let Some(sub) = additional.filter(|a| a.is_object()) {
            walk(value, sub, &format!("{path}[{key}]"), out);
        } else if additional == Some(&Value::Bool(true)) || preserve {
            // Free-form by design.
        } else {
            let known = properties
                .into_iter()
                .flat_map(|p| p.keys().map(String::as_str));
            out.push(unknown_with_hint(&child, closest(key, known)));
        }
    }
    for required in required_of(schema) {
        if !map.contains_key(required) {
            out.push(Violation {
                field: join(path, required),
                reason: "required field is missing".into(),
            });
        }
    }
    let len = map.len();
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && (len as u64) < min
    {
        out.push(violation(path, format!("must have at least {min} fields")));
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && (len as u64) > max
    {
        out.push(violation(path, format!("must have at most {max} fields")));
    }
}

fn walk_array(items: &[Value], schema: &Value, path: &str, out: &mut Vec<Violation>) {
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && (items.len() as u64) < min
    {
        out.push(violation(
            path,
            format!("must have at least {min} items (has {})", items.len()),
        ));
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && (items.len() as u64) > max
    {
        out.push(violation(
            path,
            format!("must have at most {max} items (has {})", items.len()),
        ));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            walk(item, item_schema, &format!("{path}[{i}]"), out);
        }
    }
}

fn check_string(text: &str, schema: &Value, path: &str, out: &mut Vec<Violation>) {
    let len = text.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && len < min
    {
        out.push(violation(
            path,
            if min == 1 {
                "must not be empty".to_owned()
            } else {
                format!("must be at least {min} characters long")
            },
        ));
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && len > max
    {
        out.push(violation(
            path,
            format!("must be at most {max} characters long (is {len})"),
        ));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match regex::Regex::new(pattern) {
            Ok(re) if !re.is_match(text) => out.push(violation(
                path,
                format!("{text:?} does not match the pattern {pattern}"),
            )),
            // A pattern this engine cannot compile is not the user's fault: skip it.
            Ok(_) | Err(_) => {}
        }
    }
}

fn check_number(value: &Value, schema: &Value, path: &str, out: &mut Vec<Violation>) {
    let Some(n) = value.as_f64() else {
        return;
    };
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMinimum") == Some(&Value::Bool(true));
        if n < min || (exclusive && n == min) {
            out.push(violation(
                path,
                format!(
                    "{} is less than the minimum {}{}",
                    show(value),
                    format_number(min),
                    if exclusive { " (exclusive)" } else { "" }
                ),
            ));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = schema.get("exclusiveMaximum") == Some(&Value::Bool(true));
        if n > max || (exclusive && n == max) {
            out.push(violation(
                path,
                format!(
                    "{} is more than the maximum {}{}",
                    show(value),
                    format_number(max),
                    if exclusive { " (exclusive)" } else { "" }
                ),
            ));
        }
    }
}

fn check_enum(value: &Value, schema: &Value, path: &str, out: &mut Vec<Violation>) {
    let Some(allowed) = schema.get("enum").and_then(Value::as_array) else {
        return;
    };
    if !allowed.contains(value) {
        let list: Vec<String> = allowed.iter().map(show).collect();
        out.push(violation(
            path,
            format!(
                "unsupported value {}: must be one of {}",
                show(value),
                list.join(", ")
            ),
        ));
    }
}

fn required_of(schema: &Value) -> impl Iterator<Item = &str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
}

fn is_integer(value: &Value) -> bool {
    value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The reason of every unknown-field violation starts with this.
pub const UNKNOWN_FIELD: &str = "unknown field";

fn unknown_with_hint(path: &str, hint: Option<&str>) -> Violation {
    match hint {
        Some(hint) => violation(path, format!("{UNKNOWN_FIELD} (did you mean {hint:?}?)")),
        None => violation(path, UNKNOWN_FIELD.into()),
    }
}

/// The candidate nearest to `word` when it is close enough to be a typo (at most a third of its
/// letters differ).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insert, delete, substitute, swap two neighbours) from `a` to `b`, ignoring case: a swap
/// counts once, because `stepWeigths` is a typo of `stepWeights`, not of `stepWeight`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_lowercase().chars().collect();
    let b: Vec<char> = b.to_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

fn type_mismatch(path: &str, expected: &str, value: &Value) -> Violation {
    violation(
        path,
        format!("must be of type {expected}, not {}", kind_of(value)),
    )
}

fn violation(path: &str, reason: String) -> Violation {
    Violation {
        field: path.to_owned(),
        reason,
    }
}

fn kind_of(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => "boolean".into(),
        Value::Number(n) if n.is_f64() => format!("number {n}"),
        Value::Number(n) => format!("integer {n}"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|_| n.is_f64())
            .map_or_else(|| n.to_string(), format_number),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{n:.0}")
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "minLength": 1, "pattern": "^[a-z]+$"},
                "weights": {"type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 1.0, "maximum": 100.0}},
                "mode": {"type": "string", "enum": ["Hold", "Fail"]},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            }
        })
    }

    fn check(value: Value) -> Vec<String> {
        let mut out = Vec::new();
        walk(&value, &schema(), "spec", &mut out);
        out.into_iter()
            .map(|v| format!("{}: {}", v.field, v.reason))
            .collect()
    }

    #[test]
    fn a_valid_value_has_no_violations() {
        assert!(
            check(json!({"name": "ok", "weights": [1, 100], "mode": "Hold", "labels": {"a": "b"}}))
                .is_empty()
        );
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        assert_eq!(
            check(json!({"name": "ok", "nmae": "x"})),
            vec!["spec.nmae: unknown field (did you mean \"name\"?)"]
        );
    }

    #[test]
    fn bounds_types_patterns_and_enums_are_each_reported() {
        let found = check(
            json!({"name": "A", "weights": [0, "x", 101], "mode": "Maybe", "labels": {"a": 1}}),
        );
        assert_eq!(
            found,
            vec![
                "spec.labels[a]: must be of type string, not integer 1",
                "spec.mode: unsupported value \"Maybe\": must be one of \"Hold\", \"Fail\"",
                "spec.name: \"A\" does not match the pattern ^[a-z]+$",
                "spec.weights: must have at most 2 items (has 3)",
                "spec.weights[0]: 0 is less than the minimum 1",
                "spec.weights[1]: must be of type integer, not string \"x\"",
                "spec.weights[2]: 101 is more than the maximum 100",
            ]
        );
    }

    #[test]
    fn an_unknown_field_far_from_every_known_one_gets_no_hint() {
        assert_eq!(
            check(json!({"name": "ok", "replicas": 3})),
            vec!["spec.replicas: unknown field"]
        );
    }

    #[test]
    fn a_swap_of_two_letters_is_one_typo() {
        assert_eq!(
            closest("stepWeigths", ["stepWeight", "stepWeights", "maxWeight"]),
            Some("stepWeights")
        );
    }

    #[test]
    fn a_missing_required_field_is_reported() {
        assert_eq!(
            check(json!({})),
            vec!["spec.name: required field is missing"]
        );
    }
}
