//! `MutatingAdmissionPolicy` and `MutatingAdmissionPolicyBinding`
//! (admissionregistration.k8s.io/v1) evaluated in-process with a CEL interpreter, as kube-apiserver
//! 1.36 does: match constraints (resource rules, operations, namespace and object selectors),
//! match conditions, variables, and `JSONPatch` / `ApplyConfiguration` mutations. Pure: no I/O,
//! no clock; the server passes the policies, bindings and request in and persists the result.
//!
//! Must not reach outside the request: there is no authorizer, and `params` is always `null`
//! (a binding's `paramRef` is ignored, so parameterised policies see no parameters).
//!
//! Simplifications (also in the crate README, "Known differences"):
//! - `reinvocationPolicy` is ignored: every matching binding runs once, in the order given.
//! - `ApplyConfiguration` is merged as a JSON merge of maps (lists and scalars replace), not with
//!   server-side-apply list-map semantics.
//! - The `cel` crate cannot construct typed objects, so `JSONPatch{...}` and `Object{...}` (and
//!   `Object.spec{...}` etc.) are rewritten into map literals before compilation; the types are not
//!   checked.
//! - A failing policy with `failurePolicy: Fail` is a 500 `InternalError` whose wording is ours.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map as CelMap};
use serde_json::{Map, Value};

/// The admission operation, as in `AdmissionRequest.operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// What the server is about to persist, as the policy sees it.
#[derive(Debug, Clone)]
pub struct AdmissionRequest<'a> {
    pub operation: Operation,
    pub group: &'a str,
    pub version: &'a str,
    /// Plural resource name, e.g. `deployments`.
    pub resource: &'a str,
    /// `""` for the main resource, `"status"` for the status subresource.
    pub subresource: &'a str,
    /// `""` for cluster-scoped objects.
    pub namespace: &'a str,
    pub name: &'a str,
    pub object: &'a Value,
    pub old_object: Option<&'a Value>,
    /// The object's Namespace, for `namespaceSelector`.
    pub namespace_object: Option<&'a Value>,
}

/// A policy that failed to evaluate (failurePolicy Fail), reported as a Status by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

/// Runs every bound policy that matches `request`, in order. `Ok(Some(object))` is the mutated
/// object, `Ok(None)` means no policy changed anything.
pub fn mutate(
    policies: &[Value],
    bindings: &[Value],
    request: &AdmissionRequest<'_>,
) -> Result<Option<Value>, AdmissionError> {
    let mut object = request.object.clone();
    for binding in bindings {
        let policy_name = binding["spec"]["policyName"].as_str().unwrap_or_default();
        let Some(policy) = policies
            .iter()
            .find(|p| p["metadata"]["name"].as_str() == Some(policy_name))
        else {
            continue;
        };
        let spec = &policy["spec"];
        if !matches_resources(&spec["matchConstraints"], request) {
            continue;
        }
        if let Some(narrowing) = binding["spec"]
            .get("matchResources")
            .filter(|m| m.is_object())
            && !matches_resources(narrowing, request)
        {
            continue;
        }
        match run_policy(spec, request, &object) {
            Ok(Some(mutated)) => object = mutated,
            Ok(None) => {}
            Err(failure) => {
                if spec["failurePolicy"].as_str() == Some("Ignore") {
                    continue;
                }
                let binding_name = binding["metadata"]["name"].as_str().unwrap_or_default();
                return Err(AdmissionError {
                    code: 500,
                    reason: "InternalError".to_string(),
                    message: format!(
                        "Internal error occurred: MutatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' failed: {failure}"
                    ),
                });
            }
        }
    }
    Ok((object != *request.object).then_some(object))
}

/// Why one policy could not be evaluated.
#[derive(Debug, thiserror::Error)]
enum PolicyFailure {
    #[error("compilation of expression {expression:?} failed: {message}")]
    Compile { expression: String, message: String },
    #[error("expression {expression:?} failed: {message}")]
    Evaluate { expression: String, message: String },
    #[error("expression {expression:?} returned {got}, expected {want}")]
    Shape {
        expression: String,
        got: String,
        want: &'static str,
    },
    #[error("JSON patch {op:?} at {path:?} failed: {message}")]
    Patch {
        op: String,
        path: String,
        message: String,
    },
}

/// Matches, evaluates and applies one policy to `object`; `Ok(None)` when its conditions say no.
fn run_policy(
    spec: &Value,
    request: &AdmissionRequest<'_>,
    object: &Value,
) -> Result<Option<Value>, PolicyFailure> {
    let mut env = Env::new(request, object);
    for condition in spec["matchConditions"].as_array().into_iter().flatten() {
        let expression = condition["expression"].as_str().unwrap_or_default();
        match env.eval(expression)? {
            cel::Value::Bool(true) => {}
            cel::Value::Bool(false) => return Ok(None),
            other => return Err(shape(expression, &other, "bool")),
        }
    }
    for variable in spec["variables"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().unwrap_or_default();
        let expression = variable["expression"].as_str().unwrap_or_default();
        // Variables are lazy in the apiserver: one that fails only matters if it is used, which
        // its absence from `variables` reproduces as an evaluation error at the use site.
        if let Ok(value) = env.eval(expression) {
            env.variables
                .insert(Key::String(Arc::new(name.to_string())), value);
        }
    }
    let mut current = object.clone();
    for mutation in spec["mutations"].as_array().into_iter().flatten() {
        env.set_object(&current);
        match mutation["patchType"].as_str() {
            Some("JSONPatch") => {
                let expression = mutation["jsonPatch"]["expression"]
                    .as_str()
                    .unwrap_or_default();
                let patch = cel_to_json(&env.eval(expression)?);
                let Value::Array(ops) = patch else {
                    return Err(PolicyFailure::Shape {
                        expression: expression.to_string(),
                        got: patch.to_string(),
                        want: "a list of JSONPatch",
                    });
                };
                for op in &ops {
                    apply_patch_op(&mut current, op)?;
                }
            }
            Some("ApplyConfiguration") => {
                let expression = mutation["applyConfiguration"]["expression"]
                    .as_str()
                    .unwrap_or_default();
                let patch = cel_to_json(&env.eval(expression)?);
                if !patch.is_object() {
                    return Err(PolicyFailure::Shape {
                        expression: expression.to_string(),
                        got: patch.to_string(),
                        want: "an Object{...}",
                    });
                }
                merge(&mut current, &patch);
            }
            other => {
                return Err(PolicyFailure::Shape {
                    expression: String::new(),
                    got: format!("patchType {other:?}"),
                    want: "JSONPatch or ApplyConfiguration",
                });
            }
        }
    }
    Ok(Some(current))
}

fn shape(expression: &str, got: &cel::Value, want: &'static str) -> PolicyFailure {
    PolicyFailure::Shape {
        expression: expression.to_string(),
        got: format!("{got:?}"),
        want,
    }
}

/// The CEL environment a policy's expressions see.
struct Env {
    base: cel::Context<'static>,
    object: cel::Value,
    old_object: cel::Value,
    request: cel::Value,
    namespace_object: cel::Value,
    variables: HashMap<Key, cel::Value>,
}

impl Env {
    fn new(request: &AdmissionRequest<'_>, object: &Value) -> Self {
        let mut base = cel::Context::default();
        kube_cel::KubeCelExt::register_all(&mut base);
        let object_json = match request.operation {
            Operation::Delete => Value::Null,
            Operation::Create | Operation::Update => object.clone(),
        };
        let request_json = serde_json::json!({
            "operation": request.operation.as_str(),
            "namespace": request.namespace,
            "name": request.name,
            "resource": {"group": request.group, "version": request.version, "resource": request.resource},
            "subResource": request.subresource,
            "requestResource": {"group": request.group, "version": request.version, "resource": request.resource},
            "requestSubResource": request.subresource,
            "dryRun": false,
            "userInfo": {"username": "", "groups": []},
        });
        Env {
            base,
            object: json_to_cel(&object_json),
            old_object: request.old_object.map_or(cel::Value::Null, json_to_cel),
            request: json_to_cel(&request_json),
            namespace_object: request
                .namespace_object
                .map_or(cel::Value::Null, json_to_cel),
            variables: HashMap::new(),
        }
    }

    fn set_object(&mut self, object: &Value) {
        if !matches!(self.object, cel::Value::Null) {
            self.object = json_to_cel(object);
        }
    }

    fn eval(&self, expression: &str) -> Result<cel::Value, PolicyFailure> {
        let source = rewrite_struct_literals(expression);
        let mut ctx = self.base.new_inner_scope();
        ctx.add_variable_from_value("object", self.object.clone());
        ctx.add_variable_from_value("oldObject", self.old_object.clone());
        ctx.add_variable_from_value("request", self.request.clone());
        ctx.add_variable_from_value("namespaceObject", self.namespace_object.clone());
        ctx.add_variable_from_value("params", cel::Value::Null);
        ctx.add_variable_from_value(
            "variables",
            cel::Value::Map(CelMap {
                map: Arc::new(self.variables.clone()),
            }),
        );
        // The interpreter has `todo!()`s for a few AST shapes; a policy must never crash the server.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let program = cel::Program::compile(&source).map_err(|e| PolicyFailure::Compile {
                expression: expression.to_string(),
                message: e.to_string(),
            })?;
            program.execute(&ctx).map_err(|e| PolicyFailure::Evaluate {
                expression: expression.to_string(),
                message: e.to_string(),
            })
        }));
        outcome.unwrap_or_else(|_| {
            Err(PolicyFailure::Evaluate {
                expression: expression.to_string(),
                message: "the CEL interpreter does not support this expression".to_string(),
            })
        })
    }
}

/// Rewrites CEL object construction (`JSONPatch{op: "add"}`, `Object.spec{replicas: 1}`) into
/// map literals (`{"op": "add"}`), which the interpreter evaluates. Strings are copied verbatim.
fn rewrite_struct_literals(source: &str) -> String {
    #[derive(Clone, Copy, PartialEq)]
    enum Frame {
        Struct,
        Other,
    }
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len() + 16);
    let mut frames: Vec<Frame> = Vec::new();
    // True right after a struct's `{` or a `,` inside it: the next identifier is a field name.
    let mut expect_field = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            let triple = chars.get(i + 1) == Some(&c) && chars.get(i + 2) == Some(&c);
            let end = if triple {
                find_triple_end(&chars, i + 3, c)
            } else {
                find_quote_end(&chars, i + 1, c)
            };
            out.extend(&chars[i..end]);
            i = end;
            expect_field = false;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let preceded_by_dot = out.trim_end().ends_with('.');
            if expect_field && chars.get(j) == Some(&':') {
                out.push('"');
                out.push_str(&ident);
                out.push('"');
            } else if chars.get(j) == Some(&'{')
                && !preceded_by_dot
                && ident.starts_with(|ch: char| ch.is_ascii_uppercase())
            {
                out.push('{');
                frames.push(Frame::Struct);
                i = j + 1;
                expect_field = true;
                continue;
            } else {
                out.push_str(&ident);
            }
            expect_field = false;
            continue;
        }
        match c {
            '{' | '(' | '[' => {
                frames.push(Frame::Other);
                expect_field = false;
            }
            '}' | ')' | ']' => {
                frames.pop();
                expect_field = false;
            }
            ',' => expect_field = frames.last() == Some(&Frame::Struct),
            ch if ch.is_whitespace() => {}
            _ => expect_field = false,
        }
        out.push(c);
        i += 1;
    }
    out
}

fn find_quote_end(chars: &[char], mut i: usize, quote: char) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            ch if ch == quote => return i + 1,
            _ => i += 1,
        }
    }
    chars.len()
}

fn find_triple_end(chars: &[char], mut i: usize, quote: char) -> usize {
    while i + 2 < chars.len() {
        if chars[i] == quote && chars[i + 1] == quote && chars[i + 2] == quote {
            return i + 3;
        }
        i += if chars[i] == '\\' { 2 } else { 1 };
    }
    chars.len()
}

/// JSON as CEL sees Kubernetes objects: integers are `int`, objects are maps with string keys.
fn json_to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            (None, None) => cel::Value::Float(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => cel::Value::Map(CelMap {
            map: Arc::new(
                map.iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_to_cel(v)))
                    .collect(),
            ),
        }),
    }
}

fn cel_to_json(value: &cel::Value) -> Value {
    match value {
        cel::Value::Null => Value::Null,
        cel::Value::Bool(b) => Value::Bool(*b),
        cel::Value::Int(i) => Value::from(*i),
        cel::Value::UInt(u) => Value::from(*u),
        cel::Value::Float(f) => Value::from(*f),
        cel::Value::String(s) => Value::String(s.to_string()),
        cel::Value::Bytes(b) => Value::Array(b.iter().map(|x| Value::from(*x)).collect()),
        cel::Value::List(items) => Value::Array(items.iter().map(cel_to_json).collect()),
        cel::Value::Map(map) => {
            let mut out = Map::new();
            for (k, v) in map.map.iter() {
                let key = match k {
                    Key::String(s) => s.to_string(),
                    Key::Int(i) => i.to_string(),
                    Key::Uint(u) => u.to_string(),
                    Key::Bool(b) => b.to_string(),
                };
                out.insert(key, cel_to_json(v));
            }
            Value::Object(out)
        }
        cel::Value::Duration(d) => Value::String(format!("{}s", d.num_seconds())),
        cel::Value::Timestamp(t) => Value::String(t.to_rfc3339()),
        cel::Value::Function(name, _) => Value::String(name.to_string()),
        cel::Value::Opaque(o) => Value::String(o.runtime_type_name().to_string()),
    }
}

/// A map merge standing in for server-side apply of an `ApplyConfiguration`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn pointer_tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| format!("path {path:?} does not start with '/'"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// RFC 6902 on one operation; `add` to a missing parent fails, as in the apiserver.
fn apply_patch_op(doc: &mut Value, op: &Value) -> Result<(), PolicyFailure> {
    let name = op["op"].as_str().unwrap_or_default().to_string();
    let path = op["path"].as_str().unwrap_or_default().to_string();
    let fail = |message: String| PolicyFailure::Patch {
        op: name.clone(),
        path: path.clone(),
        message,
    };
    let tokens = pointer_tokens(&path).map_err(&fail)?;
    match name.as_str() {
        "add" => add(doc, &tokens, op["value"].clone()).map_err(&fail),
        "remove" => remove(doc, &tokens).map(|_| ()).map_err(&fail),
        "replace" => {
            remove(doc, &tokens).map_err(&fail)?;
            add(doc, &tokens, op["value"].clone()).map_err(&fail)
        }
        "test" => {
            let found = doc
                .pointer(&path)
                .ok_or_else(|| fail("path not found".into()))?;
            if *found == op["value"] {
                Ok(())
            } else {
                Err(fail(format!("value is {found}, not {}", op["value"])))
            }
        }
        "move" | "copy" => {
            let from = op["from"].as_str().unwrap_or_default();
            let from_tokens = pointer_tokens(from).map_err(&fail)?;
            let value = if name == "move" {
                remove(doc, &from_tokens).map_err(&fail)?
            } else {
                doc.pointer(from)
                    .cloned()
                    .ok_or_else(|| fail(format!("from {from:?} not found")))?
            };
            add(doc, &tokens, value).map_err(&fail)
        }
        other => Err(fail(format!("unknown op {other:?}"))),
    }
}

fn parent<'v>(doc: &'v mut Value, tokens: &[String]) -> Result<&'v mut Value, String> {
    let mut node = doc;
    for token in tokens {
        node = match node {
            Value::Object(map) => map
                .get_mut(token)
                .ok_or_else(|| format!("{token:?} not found"))?,
            Value::Array(items) => {
                let i: usize = token.parse().map_err(|_| format!("bad index {token:?}"))?;
                items
                    .get_mut(i)
                    .ok_or_else(|| format!("index {i} out of range"))?
            }
            _ => return Err(format!("{token:?} is inside a scalar")),
        };
    }
    Ok(node)
}

fn add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), String> {
    let Some((last, init)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init)? {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            let i = if last == "-" {
                items.len()
            } else {
                last.parse().map_err(|_| format!("bad index {last:?}"))?
            };
            if i > items.len() {
                return Err(format!("index {i} out of range"));
            }
            items.insert(i, value);
            Ok(())
        }
        _ => Err("parent is a scalar".to_string()),
    }
}

fn remove(doc: &mut Value, tokens: &[String]) -> Result<Value, String> {
    let Some((last, init)) = tokens.split_last() else {
        return Ok(std::mem::take(doc));
    };
    match parent(doc, init)? {
        Value::Object(map) => map
            .remove(last)
            .ok_or_else(|| format!("{last:?} not found")),
        Value::Array(items) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last:?}"))?;
            if i >= items.len() {
                return Err(format!("index {i} out of range"));
            }
            Ok(items.remove(i))
        }
        _ => Err("parent is a scalar".to_string()),
    }
}

/// `matchConstraints` / a binding's `matchResources`.
fn matches_resources(constraints: &Value, request: &AdmissionRequest<'_>) -> bool {
    let rules = constraints["resourceRules"].as_array();
    let included = rules.is_none_or(|rules| rules.iter().any(|r| rule_matches(r, request)));
    let excluded = constraints["excludeResourceRules"]
        .as_array()
        .is_some_and(|rules| rules.iter().any(|r| rule_matches(r, request)));
    included
        && !excluded
        && namespace_selected(&constraints["namespaceSelector"], request)
        && object_selected(&constraints["objectSelector"], request)
}

fn listed(list: &Value, value: &str) -> bool {
    list.as_array()
        .is_some_and(|items| items.iter().any(|i| i == "*" || i == value))
}

fn rule_matches(rule: &Value, request: &AdmissionRequest<'_>) -> bool {
    let scope_ok = match rule["scope"].as_str() {
        Some("Namespaced") => !request.namespace.is_empty(),
        Some("Cluster") => request.namespace.is_empty(),
        _ => true,
    };
    let resource_ok = rule["resources"].as_array().is_some_and(|resources| {
        resources.iter().filter_map(Value::as_str).any(|entry| {
            let (res, sub) = entry.split_once('/').unwrap_or((entry, ""));
            let res_ok = res == "*" || res == request.resource;
            let sub_ok = if sub == "*" {
                true
            } else {
                sub == request.subresource
            };
            res_ok && sub_ok
        })
    });
    scope_ok
        && listed(&rule["operations"], request.operation.as_str())
        && listed(&rule["apiGroups"], request.group)
        && listed(&rule["apiVersions"], request.version)
        && resource_ok
}

fn labels_of(object: Option<&Value>) -> Map<String, Value> {
    object
        .and_then(|o| o["metadata"]["labels"].as_object())
        .cloned()
        .unwrap_or_default()
}

fn namespace_selected(selector: &Value, request: &AdmissionRequest<'_>) -> bool {
    // Cluster-scoped objects are not subject to a namespace selector.
    request.namespace.is_empty() || selector_matches(selector, &labels_of(request.namespace_object))
}

fn object_selected(selector: &Value, request: &AdmissionRequest<'_>) -> bool {
    let new = match request.operation {
        Operation::Delete => None,
        Operation::Create | Operation::Update => Some(request.object),
    };
    [new, request.old_object]
        .into_iter()
        .flatten()
        .any(|o| selector_matches(selector, &labels_of(Some(o))))
}

/// A `metav1.LabelSelector`; an absent or empty selector matches everything.
pub(crate) fn selector_matches(selector: &Value, labels: &Map<String, Value>) -> bool {
    let match_labels = selector["matchLabels"].as_object();
    let labels_ok = match_labels.is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let expressions_ok = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values = e["values"].as_array();
            let value = labels.get(key);
            let in_values = || values.is_some_and(|vs| value.is_some_and(|v| vs.contains(v)));
            match e["operator"].as_str() {
                Some("In") => in_values(),
                Some("NotIn") => !in_values(),
                Some("Exists") => value.is_some(),
                Some("DoesNotExist") => value.is_none(),
                _ => false,
            }
        })
    });
    labels_ok && expressions_ok
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
