//! Kubernetes manifests, as users write them, to peer's domain types: the only place
//! where YAML becomes a `protocol::spec::Object` (a workload, a service, a disruption
//! budget, an autoscaler or a secret).
//!
//! [`parse_file`] reads a file in three steps:
//! 1. The whole file is checked as YAML. A syntax error makes the whole file unreadable
//!    (later document boundaries cannot be trusted), reported with line and column.
//! 2. Each document is read as a generic YAML value to learn `apiVersion`, `kind` and
//!    `metadata.name`. Kinds peer does not implement (ConfigMap, Ingress, …) are ignored
//!    with a warning, not an error, so whole application manifests can be applied.
//! 3. Deployments, StatefulSets, DaemonSets, Pods, Services, PodDisruptionBudgets,
//!    HorizontalPodAutoscalers and Secrets are deserialized into the real Kubernetes types
//!    (k8s-openapi), with field paths in type errors, then converted and validated in
//!    `convert` (pod placement fields in `scheduling`, services in `service`, budgets in
//!    `budget`, autoscalers in `autoscaler`, secrets in `secret`, whose values no message
//!    shows). The field walk in `fields` warns about every field peer does not
//!    implement.
//!
//! One bad document does not stop the others: each gets its own [`DocResult`].

mod autoscaler;
mod budget;
mod container;
mod convert;
mod diagnostic;
mod fields;
mod probe;
mod quantity;
mod scheduling;
mod secret;
mod service;
#[cfg(test)]
mod tests;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::{v1 as autoscaling_v1, v2 as autoscaling_v2};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use protocol::spec::{Kind, Object, ObjectKey, Workload};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use diagnostic::{serde_message, serde_path, yaml_error, FieldError, Note};
pub use diagnostic::{ManifestError, Warning};

/// Everything found in one manifest file.
#[derive(Debug, Clone, PartialEq)]
pub struct FileResult {
    /// One entry per non-empty YAML document, in file order. Empty when the file has a
    /// syntax error.
    pub documents: Vec<DocResult>,
    /// The file is not valid YAML; nothing in it should be applied.
    pub syntax_error: Option<ManifestError>,
}

/// The outcome for one YAML document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocResult {
    /// An object peer implements, with warnings about fields it does not implement.
    Object { object: Object, warnings: Vec<Warning> },
    /// A kind peer does not implement yet (ConfigMap, Ingress, …):
    /// a warning, not an error.
    Ignored { kind: String, name: Option<String>, warning: Warning },
    /// The document cannot be used. `key` is set when its kind and name could be read,
    /// so the caller can keep that object's previous state.
    Invalid { key: Option<ObjectKey>, error: ManifestError },
}

impl FileResult {
    /// The syntax error, then each invalid document's error.
    pub fn errors(&self) -> impl Iterator<Item = &ManifestError> {
        let docs = self.documents.iter().filter_map(|d| match d {
            DocResult::Invalid { error, .. } => Some(error),
            _ => None,
        });
        self.syntax_error.iter().chain(docs)
    }

    /// Every warning, in document order.
    pub fn warnings(&self) -> impl Iterator<Item = &Warning> {
        self.documents.iter().flat_map(|d| match d {
            DocResult::Object { warnings, .. } => warnings.iter().collect::<Vec<_>>(),
            DocResult::Ignored { warning, .. } => vec![warning],
            DocResult::Invalid { .. } => Vec::new(),
        })
    }

    /// The objects that parsed, in document order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.documents.iter().filter_map(|d| match d {
            DocResult::Object { object, .. } => Some(object),
            _ => None,
        })
    }

    /// The workloads that parsed, in document order.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.objects().filter_map(Object::as_workload)
    }
}

/// Kinds Kubernetes users commonly put next to their workloads that peer does not implement yet.
const KNOWN_IGNORED_KINDS: &[&str] = &[
    "ConfigMap",
    "CronJob",
    "Ingress",
    "Job",
    "Namespace",
    "NetworkPolicy",
    "PersistentVolumeClaim",
    "ReplicaSet",
    "ServiceAccount",
];

/// Parses a manifest file; `file` is only used in messages.
pub fn parse_file(file: &str, text: &str) -> FileResult {
    for document in serde_yaml_ng::Deserializer::from_str(text) {
        if let Err(err) = IgnoredAny::deserialize(document) {
            let (message, at) = yaml_error(&err);
            let error = ManifestError {
                file: file.to_owned(),
                document: None,
                object: None,
                line: at.map(|(line, _)| line),
                column: at.map(|(_, column)| column),
                path: None,
                message,
            };
            return FileResult { documents: Vec::new(), syntax_error: Some(error) };
        }
    }
    let mut documents = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let doc = Doc { file, text, index, object: None };
        match Value::deserialize(document) {
            Ok(value) if value.is_null() => {}
            Ok(value) => documents.push(doc.parse(value)),
            Err(err) => {
                let (message, at) = yaml_error(&err);
                let mut error = doc.error(None, message);
                error.line = at.map(|(line, _)| line);
                error.column = at.map(|(_, column)| column);
                documents.push(DocResult::Invalid { key: None, error });
            }
        }
    }
    FileResult { documents, syntax_error: None }
}

/// A Service's `spec.type`.
fn spec_type(value: &Value) -> Option<&str> {
    value.get("spec")?.get("type")?.as_str()
}

/// One document being parsed: where it is, for messages.
struct Doc<'a> {
    file: &'a str,
    text: &'a str,
    /// 0-based position among the file's YAML documents.
    index: usize,
    /// `Kind name`, once known.
    object: Option<String>,
}

impl Doc<'_> {
    fn parse(mut self, mut value: Value) -> DocResult {
        if let Err(err) = value.apply_merge() {
            let (message, _) = yaml_error(&err);
            let error = self.error(None, message);
            return DocResult::Invalid { key: None, error };
        }
        if !value.is_mapping() {
            let error = self
                .error(None, "expected a Kubernetes object (a mapping with apiVersion, kind and metadata)");
            return DocResult::Invalid { key: None, error };
        }
        let text_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        let kind = text_of(value.get("kind"));
        let api_version = text_of(value.get("apiVersion"));
        let metadata = value.get("metadata");
        let name = text_of(metadata.and_then(|m| m.get("name")));
        let namespace = text_of(metadata.and_then(|m| m.get("namespace")));
        self.object = match (&kind, &name) {
            (Some(kind), Some(name)) => Some(format!("{kind} {name}")),
            (Some(kind), None) => Some(kind.clone()),
            _ => None,
        };
        // The key lets the caller keep the previous version of an invalid object, so it
        // is only given for names Kubernetes would accept.
        let namespace = namespace.unwrap_or_else(|| convert::DEFAULT_NAMESPACE.to_owned());
        let key = |kind: Kind| {
            let valid_name = match kind {
                Kind::Service => convert::is_dns_1035_label,
                _ => convert::is_dns_subdomain,
            };
            name.clone()
                .filter(|name| valid_name(name) && convert::is_dns_label(&namespace))
                .map(|name| ObjectKey { kind, namespace: namespace.clone(), name })
        };
        match kind.as_deref() {
            None => {
                let message = match value.get("kind") {
                    None => "required field is missing, expected a string such as Deployment or Pod",
                    Some(_) => "expected a string such as Deployment or Pod",
                };
                DocResult::Invalid { key: None, error: self.error(Some("kind".to_owned()), message) }
            }
            Some("Deployment") => self.object::<Deployment, _>(
                Kind::Deployment,
                &value,
                api_version,
                key(Kind::Deployment),
                convert::deployment,
            ),
            Some("StatefulSet") => self.object::<StatefulSet, _>(
                Kind::StatefulSet,
                &value,
                api_version,
                key(Kind::StatefulSet),
                convert::stateful_set,
            ),
            Some("DaemonSet") => self.object::<DaemonSet, _>(
                Kind::DaemonSet,
                &value,
                api_version,
                key(Kind::DaemonSet),
                convert::daemon_set,
            ),
            Some("Pod") => {
                self.object::<Pod, _>(Kind::Pod, &value, api_version, key(Kind::Pod), convert::pod)
            }
            Some("Service") if spec_type(&value) == Some("ExternalName") => DocResult::Ignored {
                kind: "Service".to_owned(),
                warning: self.warning((
                    "spec.type".to_owned(),
                    "ExternalName services are not implemented by peer, ignored: the name gets no DNS alias"
                        .to_owned(),
                )),
                name,
            },
            Some("PodDisruptionBudget") => self.object::<PodDisruptionBudget, _>(
                Kind::PodDisruptionBudget,
                &value,
                api_version,
                key(Kind::PodDisruptionBudget),
                budget::budget,
            ),
            Some("HorizontalPodAutoscaler") if api_version.as_deref() == Some("autoscaling/v1") => {
                self.object::<autoscaling_v1::HorizontalPodAutoscaler, _>(
                    Kind::HorizontalPodAutoscaler,
                    &value,
                    api_version,
                    key(Kind::HorizontalPodAutoscaler),
                    autoscaler::autoscaler_v1,
                )
            }
            Some("HorizontalPodAutoscaler") => self.object::<autoscaling_v2::HorizontalPodAutoscaler, _>(
                Kind::HorizontalPodAutoscaler,
                &value,
                api_version,
                key(Kind::HorizontalPodAutoscaler),
                autoscaler::autoscaler_v2,
            ),
            Some("Secret") => match secret::check_values(&value) {
                Err(FieldError { path, message }) => {
                    DocResult::Invalid { key: key(Kind::Secret), error: self.error(Some(path), message) }
                }
                Ok(()) => self.object::<Secret, _>(
                    Kind::Secret,
                    &value,
                    api_version,
                    key(Kind::Secret),
                    secret::secret,
                ),
            },
            Some("Service") => self.object::<Service, _>(
                Kind::Service,
                &value,
                api_version,
                key(Kind::Service),
                service::service,
            ),
            Some(other) => {
                let message = if KNOWN_IGNORED_KINDS.contains(&other) {
                    format!("peer does not implement {other} objects yet, ignored")
                } else {
                    format!("unknown kind {other:?}, ignored: peer implements Deployment, StatefulSet, DaemonSet, Pod, Service, PodDisruptionBudget, HorizontalPodAutoscaler and Secret objects")
                };
                DocResult::Ignored {
                    kind: other.to_owned(),
                    warning: self.warning(("kind".to_owned(), message)),
                    name,
                }
            }
        }
    }

    /// Deserializes a kind peer implements into its Kubernetes type and converts it.
    fn object<T, O: Into<Object>>(
        &self,
        kind: Kind,
        value: &Value,
        api_version: Option<String>,
        key: Option<ObjectKey>,
        convert: impl FnOnce(&T, &mut Vec<Note>) -> Result<O, FieldError>,
    ) -> DocResult
    where
        T: k8s_openapi::Resource + DeserializeOwned + Serialize,
    {
        let invalid = |error| DocResult::Invalid { key: key.clone(), error };
        if api_version.as_deref() != Some(T::API_VERSION) {
            let got = match &api_version {
                Some(v) => format!("got {v:?}"),
                None => "but it is missing".to_owned(),
            };
            let message = format!("expected {} for kind {}, {got}", T::API_VERSION, T::KIND);
            return invalid(self.error(Some("apiVersion".to_owned()), message));
        }
        let typed: T = match serde_path_to_error::deserialize(value) {
            Ok(typed) => typed,
            Err(err) => return invalid(self.serde_error::<T>(&err)),
        };
        let known = match serde_json::to_value(&typed) {
            Ok(known) => known,
            Err(err) => return invalid(self.error(None, format!("cannot re-encode the object: {err}"))),
        };
        let mut notes = fields::unimplemented(kind, value, &known);
        match convert(&typed, &mut notes) {
            Ok(object) => DocResult::Object {
                object: object.into(),
                warnings: notes.into_iter().map(|n| self.warning(n)).collect(),
            },
            Err(FieldError { path, message }) => invalid(self.error(Some(path), message)),
        }
    }

    /// A type error, with the line found by deserializing the document's text again
    /// (the generic value has no positions; errors are rare, so the cost is fine).
    fn serde_error<T: DeserializeOwned>(
        &self,
        err: &serde_path_to_error::Error<serde_yaml_ng::Error>,
    ) -> ManifestError {
        let path = serde_path(err.path());
        let (field, message) = serde_message(&err.inner().to_string());
        let mut error = self.error(
            Some(match field {
                Some(field) => diagnostic::join(&path, &field),
                None => path.clone(),
            }),
            message,
        );
        let again = serde_yaml_ng::Deserializer::from_str(self.text)
            .nth(self.index)
            .map(serde_path_to_error::deserialize::<_, T>);
        if let Some(Err(again)) = again {
            if serde_path(again.path()) == path {
                if let Some(at) = again.inner().location() {
                    error.line = Some(at.line());
                    error.column = Some(at.column());
                }
            }
        }
        error
    }

    fn error(&self, path: Option<String>, message: impl Into<String>) -> ManifestError {
        ManifestError {
            file: self.file.to_owned(),
            document: Some(self.index + 1),
            object: self.object.clone(),
            line: None,
            column: None,
            path: path.filter(|p| !p.is_empty()),
            message: message.into(),
        }
    }

    fn warning(&self, (path, message): Note) -> Warning {
        Warning {
            file: self.file.to_owned(),
            document: self.index + 1,
            object: self.object.clone(),
            path,
            message,
        }
    }
}
