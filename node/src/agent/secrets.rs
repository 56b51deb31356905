//! `peer get secrets` and `peer describe secret`: Secrets from the desired state, shown
//! as kubectl shows them. `get -o json|yaml` gives the values base64-encoded (as kubectl
//! does, to root only: the API socket is mode 0600); `describe` gives keys and sizes only.

use protocol::spec::{Kind, ObjectKey, Secret};
use serde_json::{json, Value};

use super::Agent;
use crate::api::Response;

/// A Secret as `kubectl get secret -o json` shows it.
pub fn secret_json(s: &Secret) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": { "name": s.key.name, "namespace": s.key.namespace, "labels": s.labels },
        "type": s.secret_type,
        // `SecretValue` serializes as base64 in JSON.
        "data": s.data,
    })
}

impl Agent {
    /// Every Secret, ordered by namespace and name.
    pub(super) fn secret_rows(&self) -> Vec<Value> {
        self.store.iter().filter_map(|s| s.object.as_secret().map(secret_json)).collect()
    }

    /// One Secret's type, labels, and each key with its size in bytes.
    pub(super) fn describe_secret(&self, namespace: String, name: String) -> Response {
        let key = ObjectKey { kind: Kind::Secret, namespace, name };
        let Some(stored) = self.store.get(&key) else {
            return Response::Error { message: format!("secret {}/{} not found", key.namespace, key.name) };
        };
        let Some(s) = stored.object.as_secret() else {
            return Response::Error { message: format!("secret {}/{} not found", key.namespace, key.name) };
        };
        let data: serde_json::Map<String, Value> =
            s.data.iter().map(|(k, v)| (k.clone(), json!(format!("{} bytes", v.0.len())))).collect();
        Response::Ok {
            data: json!({
                "name": s.key.name,
                "namespace": s.key.namespace,
                "labels": s.labels,
                "type": s.secret_type,
                "data": data,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use protocol::spec::SecretValue;

    use super::*;

    #[test]
    fn get_shows_values_base64_encoded_like_kubectl() {
        let s = Secret {
            key: ObjectKey { kind: Kind::Secret, namespace: "default".into(), name: "app".into() },
            labels: BTreeMap::new(),
            secret_type: "Opaque".into(),
            data: BTreeMap::from([("user".into(), SecretValue(b"alice".to_vec()))]),
        };
        expect_test::expect![[r#"{"apiVersion":"v1","data":{"user":"YWxpY2U="},"kind":"Secret","metadata":{"labels":{},"name":"app","namespace":"default"},"type":"Opaque"}"#]]
            .assert_eq(&secret_json(&s).to_string());
    }
}
