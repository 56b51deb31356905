//! Kubernetes `v1 Secret` to peer's: `type` (default `Opaque`), `data` (base64, decoded)
//! with `stringData` merged over it, as Kubernetes does. A
//! `kubernetes.io/dockerconfigjson` Secret must carry `.dockerconfigjson`, a JSON object
//! with an `auths` object. The whole Secret stays under [`MAX_SECRET_BYTES`].
//!
//! No message here shows a value: errors name the key and say what was expected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret as K8sSecret;
use protocol::spec::secret::{DOCKER_CONFIG_JSON, DOCKER_CONFIG_JSON_KEY, MAX_SECRET_BYTES};
use protocol::spec::{Kind, Secret, SecretValue};
use serde_yaml_ng::Value;

use super::convert::object_key;
use super::diagnostic::{join, FieldError, Note};

/// Checks the raw values of `data` and `stringData` before the document is read into
/// Kubernetes' type, whose own errors would quote a value that is not base64 or not a
/// string.
pub(crate) fn check_values(doc: &Value) -> Result<(), FieldError> {
    for field in ["data", "stringData"] {
        let Some(map) = doc.get(field).filter(|v| !v.is_null()) else { continue };
        let Some(map) = map.as_mapping() else {
            return Err(FieldError::new(field, "expected a mapping of keys to values"));
        };
        for (key, value) in map {
            let Some(key) = key.as_str() else {
                return Err(FieldError::new(field, "expected string keys"));
            };
            let path = join(field, key);
            let Some(text) = value.as_str() else {
                let what = if field == "data" { "a base64-encoded string" } else { "a string" };
                return Err(FieldError::new(path, format!("expected {what}")));
            };
            if field == "data" && decode_base64(text).is_none() {
                return Err(FieldError::new(
                    path,
                    "expected a base64-encoded value (standard alphabet, with padding); the value is not shown",
                ));
            }
        }
    }
    Ok(())
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).ok()
}

/// A key of `data` or `stringData`, as Kubernetes allows them.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) fn secret(s: &K8sSecret, _notes: &mut Vec<Note>) -> Result<Secret, FieldError> {
    let key = object_key(Kind::Secret, &s.metadata)?;
    let secret_type = match s.type_.as_deref() {
        None | Some("") => "Opaque".to_owned(),
        Some(t) => t.to_owned(),
    };
    let mut data: BTreeMap<String, SecretValue> = BTreeMap::new();
    for (k, v) in s.data.iter().flatten() {
        if !valid_key(k) {
            return Err(bad_key("data", k));
        }
        data.insert(k.clone(), SecretValue(v.0.clone()));
    }
    // `stringData` is write-only convenience in Kubernetes: merged over `data`.
    for (k, v) in s.string_data.iter().flatten() {
        if !valid_key(k) {
            return Err(bad_key("stringData", k));
        }
        data.insert(k.clone(), SecretValue(v.as_bytes().to_vec()));
    }
    let secret = Secret { key, labels: s.metadata.labels.clone().unwrap_or_default(), secret_type, data };
    if secret.size() > MAX_SECRET_BYTES {
        return Err(FieldError::new(
            "data",
            format!(
                "the secret holds {} bytes of keys and values, more than peer's limit of {MAX_SECRET_BYTES} (every node keeps every secret)",
                secret.size()
            ),
        ));
    }
    if secret.secret_type == DOCKER_CONFIG_JSON {
        check_docker_config(&secret, s)?;
    }
    Ok(secret)
}

fn bad_key(field: &str, key: &str) -> FieldError {
    FieldError::new(
        join(field, key),
        format!("expected a key of letters, digits, '-', '_' and '.', at most 253 characters, got {key:?}"),
    )
}

/// A `kubernetes.io/dockerconfigjson` Secret's document: JSON with an `auths` object.
fn check_docker_config(secret: &Secret, s: &K8sSecret) -> Result<(), FieldError> {
    // Name the field the value came from.
    let from_string_data = s.string_data.as_ref().is_some_and(|m| m.contains_key(DOCKER_CONFIG_JSON_KEY));
    let path = join(if from_string_data { "stringData" } else { "data" }, DOCKER_CONFIG_JSON_KEY);
    let Some(bytes) = secret.docker_config_json() else {
        return Err(FieldError::new(
            path,
            format!(
                "required for type {DOCKER_CONFIG_JSON}, expected a Docker config.json document with an auths object"
            ),
        ));
    };
    let auths_is_object = serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .is_some_and(|v| v.get("auths").is_some_and(serde_json::Value::is_object));
    if !auths_is_object {
        return Err(FieldError::new(
            path,
            "expected a JSON document with an auths object (Docker's config.json shape); the value is not shown",
        ));
    }
    Ok(())
}
