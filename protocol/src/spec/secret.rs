//! A Kubernetes `v1 Secret` as peer keeps it: a type and named byte values, spread with
//! the rest of the desired state (as Kubernetes keeps Secrets in etcd, unencrypted unless
//! configured otherwise). Pods name them in `imagePullSecrets`.
//!
//! Values never reach a log: [`Secret`]'s `Debug` shows keys and sizes only.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ObjectKey;

/// The type of Secret that carries registry credentials in Docker's `config.json` shape.
pub const DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
/// The key a [`DOCKER_CONFIG_JSON`] Secret keeps the document under.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
/// Largest Secret peer accepts, keys and values together. Kubernetes allows 1 MiB; every
/// node holds and gossips every Secret, so peer keeps them smaller.
pub const MAX_SECRET_BYTES: usize = 256 * 1024;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    pub key: ObjectKey,
    /// Labels of the object itself (metadata.labels).
    pub labels: BTreeMap<String, String>,
    /// `type`: `Opaque` by default, or e.g. [`DOCKER_CONFIG_JSON`].
    pub secret_type: String,
    /// `data` decoded, with `stringData` merged over it.
    pub data: BTreeMap<String, SecretValue>,
}

impl Secret {
    /// Bytes of keys and values together, the measure [`MAX_SECRET_BYTES`] bounds.
    pub fn size(&self) -> usize {
        self.data.iter().map(|(k, v)| k.len() + v.0.len()).sum()
    }

    /// The registry credentials of a [`DOCKER_CONFIG_JSON`] Secret.
    pub fn docker_config_json(&self) -> Option<&[u8]> {
        if self.secret_type != DOCKER_CONFIG_JSON {
            return None;
        }
        self.data.get(DOCKER_CONFIG_JSON_KEY).map(|v| v.0.as_slice())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("key", &self.key)
            .field("labels", &self.labels)
            .field("secret_type", &self.secret_type)
            .field("data", &self.data)
            .finish()
    }
}

/// One value of a Secret. Base64 in JSON (the store's file, `-o json`), as Kubernetes
/// shows it; plain bytes in bincode. `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(pub Vec<u8>);

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            use base64::Engine as _;
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SecretValue, D::Error> {
        if d.is_human_readable() {
            use base64::Engine as _;
            let text = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map(SecretValue)
                .map_err(|_| serde::de::Error::custom("a secret value is not valid base64"))
        } else {
            serde_bytes_vec(d).map(SecretValue)
        }
    }
}

/// Reads a byte string from a format that is not human-readable (bincode).
fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct Bytes;
    impl<'de> serde::de::Visitor<'de> for Bytes {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_SECRET_BYTES));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
    d.deserialize_byte_buf(Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Kind, Object};

    fn secret() -> Secret {
        Secret {
            key: ObjectKey { kind: Kind::Secret, namespace: "default".into(), name: "regcred".into() },
            labels: BTreeMap::new(),
            secret_type: DOCKER_CONFIG_JSON.into(),
            data: BTreeMap::from([(DOCKER_CONFIG_JSON_KEY.into(), SecretValue(b"{\"auths\":{}}".to_vec()))]),
        }
    }

    #[test]
    fn values_are_base64_in_json_bytes_in_bincode_and_never_debug_printed() {
        let object = Object::Secret(secret());
        let json = serde_json::to_string(&object).expect("encodes");
        assert!(json.contains("\"eyJhdXRocyI6e319\""), "{json}");
        assert_eq!(serde_json::from_str::<Object>(&json).expect("decodes"), object);
        let bytes = crate::codec::encode(&object).expect("encodes");
        let back: Object = crate::codec::decode(&bytes, crate::codec::MAX_MESSAGE).expect("decodes");
        assert_eq!(back, object);
        let debug = format!("{object:?}");
        assert!(!debug.contains("auths") && debug.contains("<12 bytes>"), "{debug}");
        assert_eq!(secret().docker_config_json(), Some(&b"{\"auths\":{}}"[..]));
        assert_eq!(secret().size(), ".dockerconfigjson".len() + 12);
    }
}
