//! `sluice lint`: offline validation of manifests before they reach a cluster. Every document of
//! every file is checked in the order an API server and the controller would: YAML syntax, unknown
//! fields and types against the generated CRD schema, then the controller's own rules
//! (`core::validate`), with references resolved among the files given.
//!
//! Pure: sources come in as text, findings go out as data. Reading files and printing belong to
//! the command line.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::documents::{Document, documents};
use super::schema::{self, Violation};
use crate::api::{
    self, AnalysisTemplate, Canary, CanaryPolicy, ClusterAnalysisTemplate, RolloutSpec,
    TemplateKind, TemplateSpec, names,
};
use crate::core::{Dereferenced, FieldError, PolicyLookup, annotations, validate};

/// One file to check: the name to report it by and its text.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// The document is invalid.
    Error,
    /// Worth knowing, not wrong: a skipped document, a reference that cannot be followed offline.
    Note,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub file: String,
    /// 1-based index of the document in its file.
    pub document: usize,
    /// `Kind namespace/name`, when the document got that far.
    pub object: Option<String>,
    /// JSON path of the field, when there is one.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {}): ", self.file, self.document)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if self.severity == Severity::Note {
            f.write_str("note: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Everything `lint` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// Documents checked (skipped ones included).
    pub documents: usize,
    /// Documents with at least one error.
    pub invalid: usize,
    /// Documents that are not sluice's to check.
    pub skipped: usize,
}

impl Report {
    /// No document has an error.
    pub fn is_valid(&self) -> bool {
        self.invalid == 0
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// One line summing up the run.
    pub fn summary(&self) -> String {
        format!(
            "{} document(s) checked: {} valid, {} invalid, {} skipped",
            self.documents,
            self.documents - self.invalid - self.skipped,
            self.invalid,
            self.skipped
        )
    }
}

/// The kinds `lint` knows, with the Rust type each deserialises into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Canary,
    CanaryPolicy,
    AnalysisTemplate,
    ClusterAnalysisTemplate,
}

impl Kind {
    fn of(kind: &str) -> Option<Self> {
        match kind {
            "Canary" => Some(Kind::Canary),
            "CanaryPolicy" => Some(Kind::CanaryPolicy),
            "AnalysisTemplate" => Some(Kind::AnalysisTemplate),
            "ClusterAnalysisTemplate" => Some(Kind::ClusterAnalysisTemplate),
            _ => None,
        }
    }
}

/// A parsed document waiting for its checks.
struct Parsed {
    file: String,
    index: usize,
    object: Map<String, Value>,
}

/// What the files define, so references among them can be followed.
#[derive(Default)]
struct Index {
    policies: BTreeMap<String, RolloutSpec>,
    /// Namespaced templates by (namespace, name); `None` when the manifest leaves it to context.
    templates: BTreeMap<(Option<String>, String), TemplateSpec>,
    cluster_templates: BTreeMap<String, TemplateSpec>,
}

/// Checks every document of every source.
pub fn lint(sources: &[Source]) -> Report {
    let schemas = crd_schemas();
    let mut report = Report::default();
    let mut parsed = Vec::new();
    for source in sources {
        for Document { index, content } in documents(&source.text) {
            report.documents += 1;
            match content {
                Ok(Value::Object(object)) => parsed.push(Parsed {
                    file: source.name.clone(),
                    index,
                    object,
                }),
                Ok(_) => {
                    report.invalid += 1;
                    report.findings.push(error(
                        &source.name,
                        index,
                        None,
                        None,
                        "not a Kubernetes object (expected a mapping with apiVersion and kind)",
                    ));
                }
                Err(message) => {
                    report.invalid += 1;
                    report
                        .findings
                        .push(error(&source.name, index, None, None, &message));
                }
            }
        }
    }
    let index = index_of(&parsed);
    for doc in &parsed {
        let findings = check(doc, &schemas, &index);
        let skipped = findings.len() == 1
            && findings[0].severity == Severity::Note
            && findings[0].message.starts_with("skipped");
        if skipped {
            report.skipped += 1;
        } else if findings.iter().any(|f| f.severity == Severity::Error) {
            report.invalid += 1;
        }
        report.findings.extend(findings);
    }
    report
}

/// Each sluice kind's root `openAPIV3Schema`, as JSON, from the CRDs `sluice crds` prints.
fn crd_schemas() -> BTreeMap<String, Value> {
    api::crds()
        .into_iter()
        .filter_map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let version = crd
                .spec
                .versions
                .iter()
                .find(|v| v.name == names::VERSION)?;
            let schema = version.schema.as_ref()?.open_api_v3_schema.as_ref()?;
            Some((kind, serde_json::to_value(schema).ok()?))
        })
        .collect()
}

fn index_of(parsed: &[Parsed]) -> Index {
    let mut index = Index::default();
    for doc in parsed {
        let (Some(kind), Some(name)) = (kind_of(&doc.object), name_of(&doc.object)) else {
            continue;
        };
        let value = Value::Object(doc.object.clone());
        match kind {
            Kind::CanaryPolicy => {
                if let Ok(policy) = serde_json::from_value::<CanaryPolicy>(value) {
                    index.policies.insert(name, policy.spec.rollout);
                }
            }
            Kind::AnalysisTemplate => {
                if let Ok(template) = serde_json::from_value::<AnalysisTemplate>(value) {
                    index
                        .templates
                        .insert((namespace_of(&doc.object), name), template.spec.template);
                }
            }
            Kind::ClusterAnalysisTemplate => {
                if let Ok(template) = serde_json::from_value::<ClusterAnalysisTemplate>(value) {
                    index.cluster_templates.insert(name, template.spec.template);
                }
            }
            Kind::Canary => {}
        }
    }
    index
}

fn kind_of(object: &Map<String, Value>) -> Option<Kind> {
    let api_version = object.get("apiVersion")?.as_str()?;
    if api_version != format!("{}/{}", names::GROUP, names::VERSION) {
        return None;
    }
    Kind::of(object.get("kind")?.as_str()?)
}

fn name_of(object: &Map<String, Value>) -> Option<String> {
    object
        .get("metadata")?
        .get("name")?
        .as_str()
        .map(str::to_owned)
}

fn namespace_of(object: &Map<String, Value>) -> Option<String> {
    object
        .get("metadata")?
        .get("namespace")?
        .as_str()
        .map(str::to_owned)
}

fn error(
    file: &str,
    document: usize,
    object: Option<&str>,
    field: Option<&str>,
    message: &str,
) -> Finding {
    Finding {
        severity: Severity::Error,
        file: file.to_owned(),
        document,
        object: object.map(str::to_owned),
        field: field.map(str::to_owned),
        message: message.to_owned(),
    }
}

fn note(file: &str, document: usize, object: Option<&str>, message: &str) -> Finding {
    Finding {
        severity: Severity::Note,
        ..error(file, document, object, None, message)
    }
}

fn check(doc: &Parsed, schemas: &BTreeMap<String, Value>, index: &Index) -> Vec<Finding> {
    let api_version = doc.object.get("apiVersion").and_then(Value::as_str);
    let kind = doc.object.get("kind").and_then(Value::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        return vec![error(
            &doc.file,
            doc.index,
            None,
            None,
            "not a Kubernetes object: apiVersion and kind are required",
        )];
    };
    let label = label_of(kind, &doc.object);
    let (group, _) = api_version.split_once('/').unwrap_or(("", api_version));
    if api_version == "apps/v1" && kind == "Deployment" {
        return check_deployment(doc, &label, index);
    }
    let Some(known) = kind_of(&doc.object) else {
        if group == names::GROUP {
            return vec![error(
                &doc.file,
                doc.index,
                Some(&label),
                Some("apiVersion"),
                &format!(
                    "{api_version} {kind} is not a sluice resource: sluice serves Canary, CanaryPolicy, AnalysisTemplate and ClusterAnalysisTemplate in {}/{}",
                    names::GROUP,
                    names::VERSION
                ),
            )];
        }
        return vec![note(
            &doc.file,
            doc.index,
            Some(&label),
            &format!("skipped: {api_version} {kind} is not a sluice resource"),
        )];
    };
    let field_error = |v: Violation| {
        error(
            &doc.file,
            doc.index,
            Some(&label),
            Some(&v.field),
            &v.reason,
        )
    };
    let Some(root) = schemas.get(kind) else {
        return vec![error(
            &doc.file,
            doc.index,
            Some(&label),
            None,
            "no schema for this kind (a bug in sluice)",
        )];
    };
    let violations = schema::check_object(&doc.object, root);
    if !violations.is_empty() {
        // Unknown fields first: a misspelt key explains most of what follows it.
        let (unknown, other): (Vec<_>, Vec<_>) = violations
            .into_iter()
            .partition(|v| v.reason.starts_with(schema::UNKNOWN_FIELD));
        return unknown.into_iter().chain(other).map(field_error).collect();
    }
    let value = Value::Object(doc.object.clone());
    let to_findings = |errors: Vec<FieldError>| -> Vec<Finding> {
        errors
            .into_iter()
            .map(|e| {
                field_error(Violation {
                    field: e.field,
                    reason: e.reason,
                })
            })
            .collect()
    };
    match known {
        Kind::Canary => match typed::<Canary>(value, doc, &label) {
            Ok(canary) => {
                let mut findings = check_canary(&canary, doc, &label, index, to_findings);
                findings.extend(restricted_targets(&canary.spec.rollout, doc, &label));
                findings
            }
            Err(finding) => vec![finding],
        },
        Kind::CanaryPolicy => match typed::<CanaryPolicy>(value, doc, &label) {
            Ok(policy) => {
                let mut findings = to_findings(validate::rollout(&policy.spec.rollout, "spec"));
                findings.extend(restricted_targets(&policy.spec.rollout, doc, &label));
                findings
            }
            Err(finding) => vec![finding],
        },
        Kind::AnalysisTemplate => match typed::<AnalysisTemplate>(value, doc, &label) {
            Ok(template) => to_findings(validate::template(&template.spec.template, "spec")),
            Err(finding) => vec![finding],
        },
        Kind::ClusterAnalysisTemplate => {
            match typed::<ClusterAnalysisTemplate>(value, doc, &label) {
                Ok(template) => to_findings(validate::template(&template.spec.template, "spec")),
                Err(finding) => vec![finding],
            }
        }
    }
}

/// Notes for hook and notification URLs the controller refuses by default (an IP literal or a
/// name that is restricted without a lookup). A note, not an error: `--hook-allow-cidr` may
/// permit the address, and a name's addresses are only known in the cluster.
fn restricted_targets(rollout: &RolloutSpec, doc: &Parsed, label: &str) -> Vec<Finding> {
    let hooks = rollout
        .hooks
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, h)| (format!("spec.hooks[{i}].url"), Some(h.url.as_str())));
    let notifications = rollout
        .notifications
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, n)| (format!("spec.notifications[{i}].url"), n.url.as_deref()));
    hooks
        .chain(notifications)
        .filter_map(|(field, url)| {
            let url = reqwest::Url::parse(url?).ok()?;
            let host = url.host_str()?;
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            let why = match literal.parse::<std::net::IpAddr>() {
                Ok(ip) => restricted_literal(ip),
                Err(_) => crate::hooks::address::vet_name(host)
                    .err()
                    .map(|refused| refused.to_string())
                    .or_else(|| {
                        host.eq_ignore_ascii_case("localhost").then(|| {
                            "localhost is a loopback address: the controller refuses it unless \
                             --hook-allow-cidr permits it"
                                .to_owned()
                        })
                    }),
            }?;
            Some(note(
                &doc.file,
                doc.index,
                Some(label),
                &format!("{field}: {why}"),
            ))
        })
        .collect()
}

fn restricted_literal(ip: std::net::IpAddr) -> Option<String> {
    crate::hooks::address::vet_ip(&ip.to_string(), ip, &crate::hooks::AllowList::default())
        .err()
        .map(|refused| refused.to_string())
}

fn typed<T: DeserializeOwned>(value: Value, doc: &Parsed, label: &str) -> Result<T, Finding> {
    serde_json::from_value(value)
        .map_err(|e| error(&doc.file, doc.index, Some(label), None, &e.to_string()))
}

fn check_canary(
    canary: &Canary,
    doc: &Parsed,
    label: &str,
    index: &Index,
    to_findings: impl Fn(Vec<FieldError>) -> Vec<Finding>,
) -> Vec<Finding> {
    let spec = &canary.spec;
    let mut notes = Vec::new();
    let mut dereferenced = Dereferenced::default();
    if let Some(policy) = &spec.policy_ref {
        match index.policies.get(&policy.name) {
            Some(found) => dereferenced.policy = PolicyLookup::Found(Box::new(found.clone())),
            None => {
                // Without the policy the merged spec is unknown: check what the Canary itself
                // sets, and say what was left out.
                notes.push(note(
                    &doc.file,
                    doc.index,
                    Some(label),
                    &format!(
                        "spec.policyRef: CanaryPolicy {:?} is not among the files given, so the merged spec cannot be checked offline (pass its file too)",
                        policy.name
                    ),
                ));
                let mut findings = to_findings(validate::rollout(&spec.rollout, "spec"));
                findings.extend(notes);
                return findings;
            }
        }
    }
    let namespace = canary.metadata.namespace.clone();
    let mut unresolved = Vec::new();
    let metrics = spec
        .rollout
        .analysis
        .as_ref()
        .and_then(|a| a.metrics.as_ref())
        .or(match &dereferenced.policy {
            PolicyLookup::Found(p) => p.analysis.as_ref().and_then(|a| a.metrics.as_ref()),
            PolicyLookup::NotReferenced | PolicyLookup::Missing { .. } => None,
        });
    for (i, metric) in metrics.into_iter().flatten().enumerate() {
        let Some(reference) = &metric.template_ref else {
            continue;
        };
        let namespaced = || {
            index
                .templates
                .get(&(namespace.clone(), reference.name.clone()))
                .or_else(|| index.templates.get(&(None, reference.name.clone())))
        };
        let cluster = || index.cluster_templates.get(&reference.name);
        let found = match reference.kind {
            Some(TemplateKind::AnalysisTemplate) => namespaced(),
            Some(TemplateKind::ClusterAnalysisTemplate) => cluster(),
            None => namespaced().or_else(cluster),
        };
        match found {
            Some(template) => {
                dereferenced
                    .templates
                    .insert(reference.name.clone(), template.clone());
            }
            None => {
                unresolved.push(format!("spec.analysis.metrics[{i}].templateRef.name"));
                notes.push(note(
                    &doc.file,
                    doc.index,
                    Some(label),
                    &format!(
                        "spec.analysis.metrics[{i}].templateRef: analysis template {:?} is not among the files given, so this metric cannot be checked offline",
                        reference.name
                    ),
                ));
            }
        }
    }
    let errors = match validate::resolve(spec, &dereferenced) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .filter(|e| !unresolved.contains(&e.field))
            .collect(),
    };
    let mut findings = to_findings(dedup(errors));
    findings.extend(notes);
    findings
}

/// Resolution checks some bounds twice (on the Canary's own fields, then after applying
/// templates); keep one line per field and reason.
fn dedup(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut kept: Vec<FieldError> = Vec::new();
    for error in errors {
        let repeated = kept
            .iter()
            .any(|k| k.field == error.field && error.reason.starts_with(&k.reason));
        if !repeated {
            kept.push(error);
        }
    }
    kept
}

fn label_of(kind: &str, object: &Map<String, Value>) -> String {
    match (namespace_of(object), name_of(object)) {
        (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
        (None, Some(name)) => format!("{kind} {name}"),
        (_, None) => format!("{kind} (unnamed)"),
    }
}

fn check_deployment(doc: &Parsed, label: &str, index: &Index) -> Vec<Finding> {
    let annotations: BTreeMap<&str, &Value> = doc
        .object
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("sluice.dev/"))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    if annotations.is_empty() {
        return vec![note(
            &doc.file,
            doc.index,
            Some(label),
            "skipped: a Deployment without sluice.dev/ annotations",
        )];
    }
    let mut findings = Vec::new();
    let mut fail = |name: &str, reason: String| {
        findings.push(error(
            &doc.file,
            doc.index,
            Some(label),
            Some(&format!("metadata.annotations[{name}]")),
            &reason,
        ));
    };
    // Values are checked by the same code the controller runs on a live Deployment.
    let mut strings = BTreeMap::new();
    for (name, value) in &annotations {
        match value.as_str() {
            Some(value) => {
                strings.insert((*name).to_owned(), value.to_owned());
            }
            None => fail(name, "must be a string (quote it)".into()),
        }
    }
    let parsed = annotations::parse(&strings);
    for error in &parsed.errors {
        let name = error
            .field
            .trim_start_matches("metadata.annotations[")
            .trim_end_matches(']');
        if names::DEPLOYMENT_ANNOTATIONS.contains(&name) {
            fail(name, error.reason.clone());
        } else {
            let hint = schema::closest(name, names::DEPLOYMENT_ANNOTATIONS.iter().copied())
                .map(|known| format!(" (did you mean {known}?)"))
                .unwrap_or_default();
            fail(
                name,
                format!(
                    "unknown sluice annotation{hint}; known ones are {}",
                    names::DEPLOYMENT_ANNOTATIONS.join(", ")
                ),
            );
        }
    }
    let policy = annotations
        .get(names::POLICY_ANNOTATION)
        .and_then(|v| v.as_str());
    match policy {
        None => {
            for name in annotations.keys() {
                if names::DEPLOYMENT_ANNOTATIONS.contains(name) {
                    fail(
                        name,
                        format!(
                            "has no effect without {} (the annotation that opts the Deployment in)",
                            names::POLICY_ANNOTATION
                        ),
                    );
                }
            }
        }
        Some(policy) if !index.policies.contains_key(policy) => findings.push(note(
            &doc.file,
            doc.index,
            Some(label),
            &format!(
                "CanaryPolicy {policy:?} is not among the files given, so the overrides cannot be checked against it offline"
            ),
        )),
        Some(policy) => {
            let deployment = doc
                .object
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            let spec = annotations::canary_spec(deployment, &parsed, index.policies.get(policy));
            for error in spec.err().into_iter().flatten() {
                if !parsed.errors.contains(&error) {
                    findings.push(self::error(
                        &doc.file,
                        doc.index,
                        Some(label),
                        Some(&error.field),
                        &error.reason,
                    ));
                }
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint_one(text: &str) -> Report {
        lint(&[Source {
            name: "test.yaml".into(),
            text: text.into(),
        }])
    }

    #[test]
    fn an_object_without_a_name_is_invalid() {
        let report = lint_one(
            "apiVersion: sluice.dev/v1alpha1\nkind: CanaryPolicy\nmetadata: {}\nspec: {}\n",
        );
        let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "test.yaml (document 1): CanaryPolicy (unnamed): metadata.name: required field is missing"
            ]
        );
    }

    #[test]
    fn a_hook_or_notification_at_a_restricted_address_gets_a_note_not_an_error() {
        let report = lint_one(
            "apiVersion: sluice.dev/v1alpha1\nkind: CanaryPolicy\nmetadata: {name: web}\nspec:\n  \
             hooks:\n  - {name: ok, type: rollout, url: 'http://load.shop.svc/'}\n  \
             - {name: meta, type: rollout, url: 'http://169.254.169.254/latest/meta-data'}\n  \
             notifications:\n  - {name: local, url: 'http://localhost:9000/'}\n  \
             - {name: gcp, url: 'http://metadata.google.internal/'}\n",
        );
        assert!(report.is_valid(), "{:#?}", report.findings);
        let notes: Vec<String> = report.findings.iter().map(ToString::to_string).collect();
        assert_eq!(notes.len(), 3, "{notes:#?}");
        assert!(notes[0].contains("note: spec.hooks[1].url: refused before connecting: 169.254.169.254, a cloud metadata address"), "{}", notes[0]);
        assert!(
            notes[1].contains("spec.notifications[0].url: localhost is a loopback address"),
            "{}",
            notes[1]
        );
        assert!(notes[2].contains("spec.notifications[1].url: refused before connecting: metadata.google.internal is a cloud metadata host name"), "{}", notes[2]);
    }

    #[test]
    fn an_unrelated_kind_is_skipped_with_a_note() {
        let report = lint_one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n");
        assert!(report.is_valid());
        assert_eq!(report.skipped, 1);
        assert_eq!(report.findings[0].severity, Severity::Note);
    }

    #[test]
    fn a_finding_names_file_document_object_and_field() {
        let report = lint_one(
            "apiVersion: sluice.dev/v1alpha1\nkind: CanaryPolicy\nmetadata: {name: web}\nspec:\n  stratgy: {}\n",
        );
        let lines: Vec<String> = report.errors().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            vec![
                "test.yaml (document 1): CanaryPolicy web: spec.stratgy: unknown field (did you mean \"strategy\"?)"
            ]
        );
    }
}
