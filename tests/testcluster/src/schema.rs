//! Validation of custom resources against their CRD's `openAPIV3Schema`, the way kube-apiserver
//! does it: types, required, enum, bounds, patterns, formats, list-type uniqueness, and
//! `x-kubernetes-validations` (CEL, evaluated by `kube-cel`), plus structural pruning and
//! defaulting. Pure functions over JSON: no I/O, no clock, no global state but a regex cache.
//!
//! Must not validate `metadata` at the root (the server checks ObjectMeta itself, e.g. names) and
//! must not invent wording: every message follows kube-openapi / apimachinery `field.Error`
//! formatting (`Invalid value: 200: spec.x in body should be less than or equal to 100`).
//!
//! The apiserver's order is kept: OpenAPI value validation, then embedded-resource and list-type
//! checks, then CEL rules, which are skipped (with the server's `<nil>` cause) when an earlier
//! error is a type or enum error.
//!
//! Simplifications (see the crate README, "Known differences"): CEL transition rules correlate old
//! list items by index (kube-cel's behaviour) rather than only for `listType: map`; CEL cost limits
//! are not enforced; formats are checked for the common set the apiserver knows (date-time, date,
//! uuid*, ipv4, ipv6, cidr, mac, byte, hostname, email, uri) and other formats are accepted.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde_json::{Map, Value};

/// One reason an object fails its schema, shaped like a Kubernetes `StatusCause`
/// (`reason` such as `FieldValueInvalid`, `field` such as `spec.rules[0].backendRefs[1].weight`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub reason: String,
    pub field: String,
    pub message: String,
}

/// The apimachinery `field.ErrorType`s this module reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorType {
    Invalid,
    TypeInvalid,
    Required,
    NotSupported,
    TooLong,
    TooMany,
    Duplicate,
    Forbidden,
}

impl ErrorType {
    fn reason(self) -> &'static str {
        match self {
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::TypeInvalid => "FieldValueTypeInvalid",
            ErrorType::Required => "FieldValueRequired",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::Forbidden => "FieldValueForbidden",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ErrorType::Invalid | ErrorType::TypeInvalid => "Invalid value",
            ErrorType::Required => "Required value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::TooLong => "Too long",
            ErrorType::TooMany => "Too many",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::Forbidden => "Forbidden",
        }
    }

    /// Types whose message never shows the bad value (apimachinery `ErrorBody`).
    fn omits_value(self) -> bool {
        match self {
            ErrorType::Required | ErrorType::Forbidden | ErrorType::TooLong => true,
            ErrorType::Invalid
            | ErrorType::TypeInvalid
            | ErrorType::NotSupported
            | ErrorType::TooMany
            | ErrorType::Duplicate => false,
        }
    }
}

/// Builds a cause the way `field.Error.ErrorBody()` renders it; `value: None` is `OmitValueType`.
fn cause(kind: ErrorType, field: &str, value: Option<&Value>, detail: &str) -> Cause {
    let mut message = kind.label().to_string();
    if let Some(value) = value.filter(|_| !kind.omits_value()) {
        message.push_str(": ");
        message.push_str(&go_value(value));
    }
    if !detail.is_empty() {
        message.push_str(": ");
        message.push_str(detail);
    }
    Cause {
        reason: kind.reason().to_string(),
        field: if field.is_empty() {
            "<nil>".to_string()
        } else {
            field.to_string()
        },
        message,
    }
}

/// Checks `object` against one CRD version's `openAPIV3Schema`; `old` is the stored object on
/// updates (for CEL transition rules that use `oldSelf`). Returns every violation found.
pub fn validate(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let mut later = Vec::new();
    validate_node(schema, object, "", true, &mut causes, &mut later);
    causes.append(&mut later);

    if has_cel_rules(schema) {
        let blocking = causes.iter().any(|c| {
            c.reason == ErrorType::TypeInvalid.reason()
                || c.reason == ErrorType::NotSupported.reason()
        });
        if blocking {
            causes.push(cause(
                ErrorType::Invalid,
                "",
                Some(&Value::Null),
                "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation",
            ));
        } else {
            causes.extend(cel_causes(schema, object, old));
        }
    }
    causes
}

/// CEL programs compiled once per distinct schema: compiling HTTPRoute's 178 rules costs more than
/// evaluating them, and the server validates every write.
fn compiled_cel(schema: &Value) -> std::sync::Arc<kube_cel::CompiledSchema> {
    type Cache = Mutex<HashMap<String, std::sync::Arc<kube_cel::CompiledSchema>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = schema.to_string();
    let cache = CACHE.get_or_init(Cache::default);
    let mut cache = match cache.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    cache
        .entry(key)
        .or_insert_with(|| std::sync::Arc::new(kube_cel::compile_schema(schema)))
        .clone()
}

fn cel_causes(schema: &Value, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    static VALIDATOR: OnceLock<kube_cel::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(kube_cel::Validator::new);
    let compiled = compiled_cel(schema);
    // The interpreter has `todo!()`s for a few AST shapes; a rule must never crash the server.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        validator.validate_compiled(&compiled, object, old)
    }));
    let errors = match outcome {
        Ok(Ok(())) => return Vec::new(),
        Ok(Err(errors)) => errors,
        Err(_) => {
            return vec![cause(
                ErrorType::Invalid,
                "",
                None,
                "a validation rule uses a CEL construct the test cluster cannot evaluate",
            )];
        }
    };
    errors
        .into_vec()
        .into_iter()
        .map(|e| {
            let kind = match (&e.kind, e.reason.as_deref()) {
                (kube_cel::ErrorKind::ValidationFailure, Some("FieldValueForbidden")) => {
                    ErrorType::Forbidden
                }
                (kube_cel::ErrorKind::ValidationFailure, Some("FieldValueRequired")) => {
                    ErrorType::Required
                }
                (kube_cel::ErrorKind::ValidationFailure, Some("FieldValueDuplicate")) => {
                    return cause(ErrorType::Duplicate, &e.field_path, None, "");
                }
                _ => ErrorType::Invalid,
            };
            cause(kind, &e.field_path, None, &e.message)
        })
        .collect()
}

fn has_cel_rules(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => {
            map.get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .is_some_and(|rules| !rules.is_empty())
                || map
                    .iter()
                    .any(|(k, v)| k != "default" && k != "enum" && has_cel_rules(v))
        }
        Value::Array(items) => items.iter().any(has_cel_rules),
        _ => false,
    }
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn flag(schema: &Value, name: &str) -> bool {
    schema.get(name).and_then(Value::as_bool) == Some(true)
}

/// The JSON type name kube-openapi reports for a value.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

fn type_matches(ty: &str, value: &Value) -> bool {
    match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    }
}

/// `cause`s of the OpenAPI pass go to `causes`; list-type and embedded-resource checks, which the
/// apiserver runs afterwards, go to `later`.
fn validate_node(
    schema: &Value,
    value: &Value,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
    later: &mut Vec<Cause>,
) {
    if value.is_null() && (flag(schema, "nullable") || schema.get("type").is_none()) {
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !(is_integer(value) || value.is_string()) {
            let detail = format!(
                "{path} in body must be of type integer,string: {}",
                go_quote(type_name(value))
            );
            causes.push(cause(
                ErrorType::TypeInvalid,
                path,
                Some(&Value::String(type_name(value).to_string())),
                &detail,
            ));
            return;
        }
    } else if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_matches(ty, value)
    {
        let detail = format!(
            "{path} in body must be of type {ty}: {}",
            go_quote(type_name(value))
        );
        causes.push(cause(
            ErrorType::TypeInvalid,
            path,
            Some(&Value::String(type_name(value).to_string())),
            &detail,
        ));
        return;
    }

    validate_combinators(schema, value, path, causes);

    match value {
        Value::String(s) => validate_string(schema, s, value, path, causes),
        Value::Number(_) => validate_number(schema, value, path, causes),
        Value::Array(items) => {
            validate_array(schema, items, value, path, causes, later);
        }
        Value::Object(map) => validate_object(schema, map, path, root, causes, later),
        Value::Null | Value::Bool(_) => {}
    }

    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.iter().any(|a| a == value)
    {
        let supported: Vec<String> = allowed
            .iter()
            .map(|a| match a {
                Value::String(s) => go_quote(s),
                other => go_quote(&other.to_string()),
            })
            .collect();
        let detail = format!("supported values: {}", supported.join(", "));
        causes.push(cause(ErrorType::NotSupported, path, Some(value), &detail));
    }
}

fn validate_combinators(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let passes = |branch: &Value| {
        let (mut c, mut l) = (Vec::new(), Vec::new());
        validate_node(branch, value, path, false, &mut c, &mut l);
        c.is_empty() && l.is_empty()
    };
    let invalid = |detail: String| cause(ErrorType::Invalid, path, Some(value), &detail);
    let shown = if path.is_empty() { "." } else { path };
    if let Some(branches) = schema.get("allOf").and_then(Value::as_array)
        && !branches.iter().all(passes)
    {
        causes.push(invalid(format!(
            "{shown} must validate all the schemas (allOf)"
        )));
    }
    if let Some(branches) = schema.get("anyOf").and_then(Value::as_array)
        && !branches.iter().any(passes)
    {
        causes.push(invalid(format!(
            "{shown} must validate at least one schema (anyOf)"
        )));
    }
    if let Some(branches) = schema.get("oneOf").and_then(Value::as_array) {
        let matched = branches.iter().filter(|b| passes(b)).count();
        if matched != 1 {
            causes.push(invalid(format!(
                "{shown} must validate one and only one schema (oneOf). Found {matched} valid alternatives"
            )));
        }
    }
    if let Some(branch) = schema.get("not")
        && passes(branch)
    {
        causes.push(invalid(format!(
            "{shown} must not validate the schema (not)"
        )));
    }
}

fn validate_string(schema: &Value, s: &str, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let chars = s.chars().count() as u64;
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
        && chars > max
    {
        let unit = if max == 1 { "byte" } else { "bytes" };
        let detail = format!("may not be more than {max} {unit}");
        causes.push(cause(ErrorType::TooLong, path, Some(value), &detail));
    }
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
        && chars < min
    {
        let detail = format!("{path} in body should be at least {min} chars long");
        causes.push(cause(ErrorType::Invalid, path, Some(value), &detail));
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        match compiled_pattern(pattern) {
            Some(re) if !re.is_match(s) => {
                let detail = format!("{path} in body should match '{pattern}'");
                causes.push(cause(ErrorType::Invalid, path, Some(value), &detail));
            }
            Some(_) => {}
            None => {
                let detail =
                    format!("{path} has a pattern the test cluster cannot compile: '{pattern}'");
                causes.push(cause(ErrorType::Invalid, path, Some(value), &detail));
            }
        }
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str)
        && !format_ok(format, s)
    {
        let detail = format!("{path} in body must be of type {format}: {}", go_quote(s));
        causes.push(cause(ErrorType::TypeInvalid, path, Some(value), &detail));
    }
}

fn compiled_pattern(pattern: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = match cache.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    cache
        .entry(pattern.to_string())
        .or_insert_with(|| Regex::new(pattern).ok())
        .clone()
}

fn format_ok(format: &str, s: &str) -> bool {
    fn re(pattern: &str, s: &str) -> bool {
        compiled_pattern(pattern).is_some_and(|r| r.is_match(s))
    }
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10,
        "uuid" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            s,
        ),
        "uuid3" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
            s,
        ),
        "uuid4" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
            s,
        ),
        "uuid5" => re(
            r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
            s,
        ),
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        "cidr" => s.split_once('/').is_some_and(|(ip, bits)| {
            let bits: Result<u8, _> = bits.parse();
            match (ip.parse::<std::net::IpAddr>(), bits) {
                (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
                (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
                _ => false,
            }
        }),
        "mac" => re(r"^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$", s),
        "byte" => re(
            r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
            s,
        ),
        "hostname" => {
            s.len() <= 255
                && re(
                    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?))*\.?$",
                    s,
                )
        }
        "email" => re(r"^[^@\s]+@[^@\s]+$", s),
        "uri" => re(r"^[A-Za-z][A-Za-z0-9+.-]*:", s),
        _ => true,
    }
}

fn validate_number(schema: &Value, value: &Value, path: &str, causes: &mut Vec<Cause>) {
    let Some(v) = value.as_f64() else { return };
    let as_int = is_integer(value);
    let bound = |b: &Value| -> String {
        match b.as_f64() {
            Some(f) if as_int && f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
            Some(f) => go_float(f),
            None => b.to_string(),
        }
    };
    if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
        && m != 0.0
        && (v / m).fract() != 0.0
    {
        let detail = format!(
            "{path} in body should be a multiple of {}",
            bound(&schema["multipleOf"])
        );
        causes.push(cause(ErrorType::Invalid, path, Some(value), &detail));
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMaximum");
        if v > max || (exclusive && v == max) {
            let cmp = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            let detail = format!(
                "{path} in body should be {cmp} {}",
                bound(&schema["maximum"])
            );
            causes.push(cause(ErrorType::Invalid, path, Some(value), &detail));
        }
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        let exclusive = flag(schema, "exclusiveMinimum");
        if v < min || (exclusive && v == min) {
            let cmp = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            let detail = format!(
                "{path} in body should be {cmp} {}",
                bound(&schema["minimum"])
            );
            causes.push(cause(ErrorType::Invalid, path, Some(value), &detail));
        }
    }
}

fn validate_array(
    schema: &Value,
    items: &[Value],
    value: &Value,
    path: &str,
    causes: &mut Vec<Cause>,
    later: &mut Vec<Cause>,
) {
    let len = items.len() as u64;
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
        && len > max
    {
        let unit = if max == 1 { "item" } else { "items" };
        let detail = format!("must have at most {max} {unit}");
        causes.push(cause(
            ErrorType::TooMany,
            path,
            Some(&Value::from(len)),
            &detail,
        ));
    }
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
        && len < min
    {
        let detail = format!("{path} in body should have at least {min} items");
        causes.push(cause(
            ErrorType::Invalid,
            path,
            Some(&Value::from(len)),
            &detail,
        ));
    }
    if let Some(item_schema) = schema.get("items") {
        for (i, item) in items.iter().enumerate() {
            validate_node(item_schema, item, &index(path, i), false, causes, later);
        }
    }
    let _ = value;
    check_list_type(schema, items, path, later);
}

/// `x-kubernetes-list-type: set|map` uniqueness, as `structurallisttype.ValidateListSetsAndMaps`.
fn check_list_type(schema: &Value, items: &[Value], path: &str, later: &mut Vec<Cause>) {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (i, item) in items.iter().enumerate() {
                if items[..i].contains(item) {
                    later.push(cause(ErrorType::Duplicate, &index(path, i), Some(item), ""));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|k| k.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let item_props = schema.get("items").and_then(|s| s.get("properties"));
            let mut seen: Vec<Map<String, Value>> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let Some(obj) = item.as_object() else {
                    continue;
                };
                let mut key = Map::new();
                for k in &keys {
                    let v = obj.get(*k).cloned().or_else(|| {
                        item_props
                            .and_then(|p| p.get(*k))
                            .and_then(|p| p.get("default"))
                            .cloned()
                    });
                    match v {
                        Some(v) => {
                            key.insert((*k).to_string(), v);
                        }
                        None => later.push(cause(
                            ErrorType::Required,
                            &child(&index(path, i), k),
                            None,
                            "",
                        )),
                    }
                }
                if seen.contains(&key) {
                    later.push(cause(
                        ErrorType::Duplicate,
                        &index(path, i),
                        Some(&Value::Object(key.clone())),
                        "",
                    ));
                }
                seen.push(key);
            }
        }
        _ => {}
    }
}

fn validate_object(
    schema: &Value,
    map: &Map<String, Value>,
    path: &str,
    root: bool,
    causes: &mut Vec<Cause>,
    later: &mut Vec<Cause>,
) {
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
        && map.len() as u64 > max
    {
        let unit = if max == 1 { "item" } else { "items" };
        let detail = format!("must have at most {max} {unit}");
        causes.push(cause(
            ErrorType::TooMany,
            path,
            Some(&Value::from(map.len())),
            &detail,
        ));
    }
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
        && (map.len() as u64) < min
    {
        let detail = format!("{path} in body should have at least {min} properties");
        causes.push(cause(
            ErrorType::Invalid,
            path,
            Some(&Value::from(map.len())),
            &detail,
        ));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if root && name == "metadata" {
                continue;
            }
            if !map.contains_key(name) {
                causes.push(cause(ErrorType::Required, &child(path, name), None, ""));
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (name, v) in map {
        if root && (name == "metadata" || name == "apiVersion" || name == "kind") {
            continue;
        }
        if let Some(prop) = properties.and_then(|p| p.get(name)) {
            validate_node(prop, v, &child(path, name), false, causes, later);
        } else if let Some(additional) = additional {
            validate_node(additional, v, &child(path, name), false, causes, later);
        }
    }
    if flag(schema, "x-kubernetes-embedded-resource") {
        for name in ["apiVersion", "kind"] {
            let empty = map
                .get(name)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty);
            if empty {
                later.push(cause(
                    ErrorType::Required,
                    &child(path, name),
                    None,
                    "must not be empty",
                ));
            }
        }
    }
}

/// Removes fields the schema does not declare (structural pruning, honouring
/// `x-kubernetes-preserve-unknown-fields`) and applies `default`s. Returns the JSON paths of the
/// pruned fields so a `fieldValidation=Strict|Warn` request can report them as the real server does.
///
/// Order as in the apiserver's decoder: prune unknown fields, apply defaults, then drop `null`s of
/// non-nullable fields that have no default. `metadata` at the root (and in embedded resources) is
/// the server's to prune.
pub fn prune_and_default(schema: &Value, object: &mut Value) -> Vec<String> {
    let mut pruned = Vec::new();
    prune(schema, object, "", true, &mut pruned);
    apply_defaults(schema, object, true);
    pruned
}

fn prune(schema: &Value, value: &mut Value, path: &str, root: bool, pruned: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let embedded = root || flag(schema, "x-kubernetes-embedded-resource");
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let here = child(path, &key);
                if embedded && (key == "apiVersion" || key == "kind" || key == "metadata") {
                    continue;
                }
                if let Some(prop) = properties.and_then(|p| p.get(&key)) {
                    if let Some(v) = map.get_mut(&key) {
                        prune(prop, v, &here, false, pruned);
                    }
                } else if let Some(additional) = additional.filter(|a| a.is_object()) {
                    if let Some(v) = map.get_mut(&key) {
                        prune(additional, v, &here, false, pruned);
                    }
                } else if !preserve && additional.and_then(Value::as_bool) != Some(true) {
                    map.remove(&key);
                    pruned.push(here);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(item_schema, item, &index(path, i), false, pruned);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

fn non_nullable_null(value: &Value, schema: &Value) -> bool {
    value.is_null() && !flag(schema, "nullable")
}

fn apply_defaults(schema: &Value, value: &mut Value, root: bool) {
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            if let Some(properties) = properties {
                for (name, prop) in properties {
                    if root && name == "metadata" {
                        continue;
                    }
                    let absent = map.get(name).is_none_or(|v| non_nullable_null(v, prop));
                    if let Some(default) = prop.get("default").filter(|_| absent) {
                        map.insert(name.clone(), default.clone());
                    }
                }
            }
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let mut drop = Vec::new();
            for (name, v) in map.iter_mut() {
                if root && name == "metadata" {
                    continue;
                }
                let sub = properties
                    .and_then(|p| p.get(name))
                    .or(additional.filter(|_| properties.is_none_or(|p| !p.contains_key(name))));
                let Some(sub) = sub else { continue };
                if non_nullable_null(v, sub) {
                    match sub.get("default") {
                        Some(default) => *v = default.clone(),
                        None => {
                            if properties.is_some_and(|p| p.contains_key(name)) {
                                drop.push(name.clone());
                            }
                            continue;
                        }
                    }
                }
                apply_defaults(sub, v, false);
            }
            for name in drop {
                map.remove(&name);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for item in items.iter_mut() {
                    if non_nullable_null(item, item_schema)
                        && let Some(default) = item_schema.get("default")
                    {
                        *item = default.clone();
                    }
                    apply_defaults(item_schema, item, false);
                }
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

/// Go's `%q` for the strings these messages quote (JSON escaping agrees for printable text).
fn go_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

/// Go's `%v` for a float64: shortest representation, exponent form from 1e21 up and below 1e-4.
fn go_float(f: f64) -> String {
    if f == 0.0 {
        return "0".to_string();
    }
    let exp = f.abs().log10().floor();
    if !(-4.0..21.0).contains(&exp) {
        let s = format!("{f:e}");
        match s.split_once('e') {
            Some((mantissa, e)) => {
                let (sign, digits) = match e.strip_prefix('-') {
                    Some(d) => ('-', d),
                    None => ('+', e),
                };
                format!("{mantissa}e{sign}{digits:0>2}")
            }
            None => s,
        }
    } else {
        format!("{f}")
    }
}

/// apimachinery's rendering of a bad value: `%v` for scalars, `%q` for strings, JSON otherwise.
fn go_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (None, Some(u), _) => u.to_string(),
            (None, None, Some(f)) => go_float(f),
            (None, None, None) => n.to_string(),
        },
        Value::String(s) => go_quote(s),
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
