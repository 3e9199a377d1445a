//! The shapes objects are cached in. At 1,000 Canaries the caches are most of the controller's
//! memory, and an object held as a `serde_json::Value` tree costs several times its JSON size
//! (every small map is a B-tree node): a Canary is therefore cached parsed, and a router object
//! as compact JSON text it is read back from when a reconcile needs it.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject, TypeMeta};
use kube::core::{DynamicResourceScope, NamespaceResourceScope};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::api::{Canary, CanarySpec, CanaryStatus, RolloutSpec};

/// A Canary as the controller watches and caches it: parsed once, when the watch delivers it.
/// One that does not parse (a schema not installed as generated lets anything in) is kept with
/// the reason instead of failing the whole watch, so that it becomes an `InvalidSpec` condition.
#[derive(Clone, Debug)]
pub enum CachedCanary {
    Parsed(Box<Canary>),
    Malformed(Box<MalformedCanary>),
}

/// What is kept of a Canary that does not parse.
#[derive(Clone, Debug)]
pub struct MalformedCanary {
    pub metadata: ObjectMeta,
    /// Why it does not parse, for the condition.
    pub reason: String,
    /// Its status, when that part still parses (the condition is merged into it).
    pub status: Option<CanaryStatus>,
}

impl CachedCanary {
    /// The parsed Canary, or why it does not parse.
    pub fn parsed(&self) -> Result<&Canary, &str> {
        match self {
            CachedCanary::Parsed(canary) => Ok(canary),
            CachedCanary::Malformed(malformed) => Err(&malformed.reason),
        }
    }

    /// The spec, when the Canary parses.
    pub fn spec(&self) -> Option<&CanarySpec> {
        self.parsed().ok().map(|canary| &canary.spec)
    }

    /// The name of the Deployment it targets, when the Canary parses.
    pub fn target(&self) -> Option<&str> {
        self.spec().map(|spec| spec.target_ref.name.as_str())
    }
}

impl<'de> Deserialize<'de> for CachedCanary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match serde_path_to_error::deserialize::<_, Canary>(&value) {
            Ok(canary) => Ok(CachedCanary::Parsed(Box::new(canary))),
            // The error names the field (`spec.strategy.canary.stepWeights: invalid type ...`).
            Err(error) => {
                // Without readable metadata it cannot even be named: that fails like any object.
                let metadata =
                    ObjectMeta::deserialize(&value["metadata"]).map_err(D::Error::custom)?;
                let status = value
                    .get("status")
                    .and_then(|status| CanaryStatus::deserialize(status).ok());
                Ok(CachedCanary::Malformed(Box::new(MalformedCanary {
                    metadata,
                    reason: format!("spec does not parse: {}", located(&value, error)),
                    status,
                })))
            }
        }
    }
}

/// The error, at the deepest field serde can name. `spec`'s rollout fields are flattened into it,
/// and serde loses the path through a flatten: an error found at `spec` is looked for again in
/// the rollout part alone.
fn located(value: &Value, error: serde_path_to_error::Error<serde_json::Error>) -> String {
    if error.path().to_string() == "spec"
        && let Err(inner) = serde_path_to_error::deserialize::<_, RolloutSpec>(&value["spec"])
        && inner.path().iter().next().is_some()
    {
        return format!("spec.{inner}");
    }
    error.to_string()
}

impl Resource for CachedCanary {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Canary::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Canary::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Canary::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Canary::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            CachedCanary::Parsed(canary) => &canary.metadata,
            CachedCanary::Malformed(malformed) => &malformed.metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            CachedCanary::Parsed(canary) => &mut canary.metadata,
            CachedCanary::Malformed(malformed) => &mut malformed.metadata,
        }
    }
}

/// An object of a dynamically known kind (a router's HTTPRoute, VirtualService, ...) kept with
/// its metadata parsed and everything else as compact JSON text. `status` is dropped: no router
/// reads it, and a Gateway's status can be larger than the spec.
#[derive(Clone, Debug)]
pub struct CompactObject {
    pub types: Option<TypeMeta>,
    pub metadata: ObjectMeta,
    /// The object's fields besides `apiVersion`, `kind`, `metadata` and `status`, as a JSON object.
    body: Box<str>,
}

impl CompactObject {
    /// The whole object as JSON (what the router builders read).
    pub fn to_value(&self) -> Value {
        let mut object = match serde_json::from_str::<Value>(&self.body) {
            Ok(Value::Object(fields)) => fields,
            // The body was written from a JSON object; nothing else can be in it.
            _ => serde_json::Map::new(),
        };
        if let Some(types) = &self.types {
            object.insert(
                "apiVersion".into(),
                Value::String(types.api_version.clone()),
            );
            object.insert("kind".into(), Value::String(types.kind.clone()));
        }
        if let Ok(metadata) = serde_json::to_value(&self.metadata) {
            object.insert("metadata".into(), metadata);
        }
        Value::Object(object)
    }
}

impl<'de> Deserialize<'de> for CompactObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut object = DynamicObject::deserialize(deserializer)?;
        if let Some(fields) = object.data.as_object_mut() {
            fields.remove("status");
        }
        let body = serde_json::to_string(&object.data).map_err(D::Error::custom)?;
        Ok(CompactObject {
            types: object.types,
            metadata: object.metadata,
            body: body.into_boxed_str(),
        })
    }
}

impl Resource for CompactObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.kind)
    }

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.group)
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.version)
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.api_version)
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        Cow::Borrowed(&dt.plural)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;

    fn canary(spec: Value) -> Value {
        json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "Canary",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7"},
            "spec": spec,
            "status": {"phase": "Progressing", "canaryWeight": 20},
        })
    }

    #[test]
    fn a_canary_that_parses_is_cached_parsed() {
        let cached: CachedCanary = serde_json::from_value(canary(json!({
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        })))
        .unwrap();
        assert_eq!(cached.target(), Some("web"));
        assert_eq!(cached.name_any(), "web");
        assert_eq!(cached.resource_version().as_deref(), Some("7"));
        let status = cached.parsed().unwrap().status.clone().unwrap();
        assert_eq!(status.canary_weight, 20);
    }

    #[test]
    fn a_canary_that_does_not_parse_keeps_its_name_status_and_reason() {
        let cached: CachedCanary = serde_json::from_value(canary(json!({
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": 7},
        })))
        .unwrap();
        let reason = cached.parsed().unwrap_err();
        assert!(reason.starts_with("spec does not parse: "), "{reason}");
        assert!(
            reason.contains("spec.targetRef.name: invalid type"),
            "{reason}"
        );
        assert_eq!(cached.target(), None);
        assert_eq!(cached.namespace().as_deref(), Some("shop"));
        let CachedCanary::Malformed(malformed) = &cached else {
            panic!("not malformed: {cached:?}");
        };
        assert_eq!(malformed.status.as_ref().unwrap().canary_weight, 20);
    }

    #[test]
    fn a_field_of_the_flattened_rollout_part_is_named_too() {
        let cached: CachedCanary = serde_json::from_value(canary(json!({
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "strategy": {"canary": {"stepWeights": "fast"}},
        })))
        .unwrap();
        let reason = cached.parsed().unwrap_err();
        assert!(
            reason.contains("spec.strategy.canary.stepWeights: invalid type"),
            "{reason}"
        );
    }

    #[test]
    fn an_object_without_readable_metadata_fails_to_decode() {
        let result = serde_json::from_value::<CachedCanary>(json!({"metadata": 3, "spec": 1}));
        assert!(result.is_err());
    }

    #[test]
    fn a_compact_object_reads_back_as_it_came_without_status() {
        let route = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "3"},
            "spec": {"rules": [{"backendRefs": [{"name": "web", "port": 80, "weight": 90}]}]},
            "status": {"parents": [{"controllerName": "example.com/gateway"}]},
        });
        let compact: CompactObject = serde_json::from_value(route.clone()).unwrap();
        let mut expected = route;
        expected.as_object_mut().unwrap().remove("status");
        assert_eq!(compact.to_value(), expected);
    }
}
