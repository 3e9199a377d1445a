//! Kubernetes `Status` objects for failed requests, with the reasons, codes, details and message
//! wording kube-apiserver uses (see the recordings). Pure constructors; no I/O.

use serde_json::{Value, json};

/// A failed request: HTTP code plus the `Status` body the real server would send.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub body: Value,
}

impl ApiError {
    fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Self {
        let mut body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        });
        if let Some(d) = details {
            body["details"] = d;
        }
        ApiError { code, body }
    }

    pub fn reason(&self) -> &str {
        self.body["reason"].as_str().unwrap_or_default()
    }

    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    /// `deployments.apps "web" not found`.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        Self::status(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(plural, group)),
            Some(details(name, group, plural)),
        )
    }

    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        Self::status(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(plural, group)),
            Some(details(name, group, plural)),
        )
    }

    /// The optimistic-concurrency conflict on a stale resourceVersion.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        Self::status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(plural, group)
            ),
            Some(details(name, group, plural)),
        )
    }

    /// A server-side apply conflict: one cause per conflicting field.
    pub fn apply_conflict(conflicts: &[(String, String)]) -> Self {
        // (manager description, field path)
        let n = conflicts.len();
        let body_msg = if n == 1 {
            format!("conflict with {}: {}", conflicts[0].0, conflicts[0].1)
        } else {
            let mut by_manager: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
            for (m, p) in conflicts {
                by_manager.entry(m).or_default().push(p);
            }
            let mut lines = Vec::new();
            for (m, paths) in by_manager {
                lines.push(format!("conflicts with {m}:"));
                for p in paths {
                    lines.push(format!("- {p}"));
                }
            }
            lines.join("\n")
        };
        let causes: Vec<Value> = conflicts
            .iter()
            .map(|(m, p)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": p}))
            .collect();
        Self::status(
            409,
            "Conflict",
            format!(
                "Apply failed with {n} conflict{}: {body_msg}",
                if n == 1 { "" } else { "s" }
            ),
            Some(json!({ "causes": causes })),
        )
    }

    /// 422 Invalid: `<Kind>[.group] "<name>" is invalid: <field>: <message>` (several in `[...]`).
    pub fn invalid(
        kind: &str,
        group: &str,
        name: &str,
        causes: &[(String, String, String)],
    ) -> Self {
        // causes: (reason, field, message)
        let qual = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let parts: Vec<String> = causes.iter().map(|(_, f, m)| format!("{f}: {m}")).collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let mut d = json!({"name": name, "kind": kind});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        d["causes"] = causes
            .iter()
            .map(|(r, f, m)| json!({"reason": r, "message": m, "field": f}))
            .collect();
        Self::status(
            422,
            "Invalid",
            format!("{qual} \"{name}\" is invalid: {joined}"),
            Some(d),
        )
    }

    pub fn invalid_plain(message: &str) -> Self {
        Self::status(422, "Invalid", message.to_string(), Some(json!({})))
    }

    pub fn bad_request(message: String) -> Self {
        Self::status(400, "BadRequest", message, None)
    }

    pub fn unsupported_media_type() -> Self {
        Self::status(
            415,
            "UnsupportedMediaType",
            "415: Unsupported Media Type".into(),
            Some(json!({})),
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
            Some(json!({})),
        )
    }

    /// The watch answer for a compacted resourceVersion.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::status(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
            None,
        )
    }

    pub fn gone(message: &str) -> Self {
        Self::status(410, "Gone", message.to_string(), None)
    }

    pub fn too_many_requests() -> Self {
        Self::too_many_requests_retry_after(1)
    }

    /// A 429 telling the client to come back in `seconds` (the `Retry-After` header goes with it).
    pub fn too_many_requests_retry_after(seconds: u32) -> Self {
        Self::status(
            429,
            "TooManyRequests",
            "Too many requests, please try again later.".into(),
            Some(json!({"retryAfterSeconds": seconds})),
        )
    }

    pub fn internal(message: &str) -> Self {
        Self::status(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
            Some(json!({"causes": [{"message": message}]})),
        )
    }

    pub fn forbidden_field(kind: &str, name: &str, field: &str, message: &str) -> Self {
        let m = format!("Forbidden: {message}");
        Self::invalid(
            kind,
            "",
            name,
            &[("FieldValueForbidden".into(), field.into(), m)],
        )
    }
}

/// `deployments.apps`, or `configmaps` for the core group.
pub fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

fn details(name: &str, group: &str, plural: &str) -> Value {
    let mut d = json!({"name": name});
    if !group.is_empty() {
        d["group"] = json!(group);
    }
    d["kind"] = json!(plural);
    d
}

/// The body of a successful immediate delete.
pub fn delete_success(group: &str, plural: &str, name: &str, uid: &str) -> Value {
    let mut d = details(name, group, plural);
    d["uid"] = json!(uid);
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}
