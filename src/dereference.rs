//! Looking up what a Canary references (its CanaryPolicy, the analysis templates its metrics
//! name) the one way every caller does, whatever it reads from: the controller's caches, the
//! plugin's API reads, a simulation's scenario. The rules live in [`dereference`]; a
//! [`Dereference`] only fetches one object by name. The result is the pure core's
//! [`Dereferenced`], which [`crate::core::resolve`] merges into the effective rollout.

use std::collections::BTreeMap;
use std::future::Future;

use crate::api::{CanarySpec, MetricSpec, RolloutSpec, TemplateKind, TemplateRef, TemplateSpec};
use crate::core::{Dereferenced, PolicyLookup};

/// Fetches one referenced object by name. Lookups from memory return ready futures.
pub trait Dereference {
    type Error;

    /// The rollout part of CanaryPolicy `name` (cluster-scoped), if it exists.
    fn policy(&self, name: &str) -> impl Future<Output = Result<Option<RolloutSpec>, Self::Error>>;

    /// The AnalysisTemplate `name` of `namespace`, if it exists.
    fn template(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<TemplateSpec>, Self::Error>>;

    /// The ClusterAnalysisTemplate `name`, if it exists.
    fn cluster_template(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<TemplateSpec>, Self::Error>>;
}

/// What the spec of a Canary in `namespace` references: its policy (when it names one) and every
/// template its metrics, or its policy's, name. A reference without a kind finds the namespace's
/// AnalysisTemplate first, then the ClusterAnalysisTemplate. What is missing is left out for
/// [`crate::core::resolve`] to report, naming the field.
pub async fn dereference<D: Dereference>(
    source: &D,
    spec: &CanarySpec,
    namespace: &str,
) -> Result<Dereferenced, D::Error> {
    let policy = match &spec.policy_ref {
        None => PolicyLookup::NotReferenced,
        Some(reference) => match source.policy(&reference.name).await? {
            Some(rollout) => PolicyLookup::Found(Box::new(rollout)),
            None => PolicyLookup::Missing {
                name: reference.name.clone(),
            },
        },
    };
    let mut templates = BTreeMap::new();
    for reference in template_refs(spec, &policy) {
        if templates.contains_key(&reference.name) {
            continue;
        }
        if let Some(found) = template(source, reference, namespace).await? {
            templates.insert(reference.name.clone(), found);
        }
    }
    Ok(Dereferenced {
        policy,
        templates,
        annotation_errors: Vec::new(),
    })
}

/// The template references of the Canary's own metrics, then of its policy's.
fn template_refs<'a>(spec: &'a CanarySpec, policy: &'a PolicyLookup) -> Vec<&'a TemplateRef> {
    let metrics_of = |rollout: &'a RolloutSpec| -> Vec<&'a MetricSpec> {
        rollout
            .analysis
            .as_ref()
            .and_then(|a| a.metrics.as_ref())
            .into_iter()
            .flatten()
            .collect()
    };
    let mut metrics = metrics_of(&spec.rollout);
    if let PolicyLookup::Found(rollout) = policy {
        metrics.extend(metrics_of(rollout));
    }
    metrics
        .into_iter()
        .filter_map(|metric| metric.template_ref.as_ref())
        .collect()
}

async fn template<D: Dereference>(
    source: &D,
    reference: &TemplateRef,
    namespace: &str,
) -> Result<Option<TemplateSpec>, D::Error> {
    match reference.kind {
        Some(TemplateKind::AnalysisTemplate) => source.template(namespace, &reference.name).await,
        Some(TemplateKind::ClusterAnalysisTemplate) => {
            source.cluster_template(&reference.name).await
        }
        None => match source.template(namespace, &reference.name).await? {
            Some(found) => Ok(Some(found)),
            None => source.cluster_template(&reference.name).await,
        },
    }
}
