//! [`Object`]: every kind of desired-state value, one variant per domain type.
//!
//! Adding a kind is one variant here (at the end: bincode encodes the variant's index),
//! its name in [`VARIANTS`], one arm in each `match` below, and one [`Kind`].
//!
//! Encodings. Serialized externally tagged: `{"Service": {...}}` in JSON, a variant index
//! then the value in bincode. Two compatibility rules keep what existed before objects
//! were more than workloads:
//! - JSON (the store's `desired.json`) may hold a bare workload, as written by earlier
//!   versions; it is read as [`Object::Workload`].
//! - [`Object::value_hash`] of a workload is the hash of the bare workload, as before, so
//!   digests of a state holding only workloads did not change and hashes stored in
//!   `desired.json` stay valid.

use serde::{Deserialize, Deserializer, Serialize};

use super::autoscaler::AutoscalerStatus;
use super::{fnv1a64, DisruptionBudget, HorizontalPodAutoscaler, Kind, ObjectKey, Secret, Service, Workload};
use crate::desired::Stamp;

/// A desired-state value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Object {
    Workload(Workload),
    Service(Service),
    PodDisruptionBudget(DisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    AutoscalerStatus(AutoscalerStatus),
    Secret(Secret),
}

/// The variant names, as tags in JSON.
const VARIANTS: &[&str] =
    &["Workload", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "AutoscalerStatus", "Secret"];

/// The tagged form, for decoding.
#[derive(Deserialize)]
#[serde(rename = "Object")]
enum Tagged {
    Workload(Workload),
    Service(Service),
    PodDisruptionBudget(DisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    AutoscalerStatus(AutoscalerStatus),
    Secret(Secret),
}

impl From<Tagged> for Object {
    fn from(t: Tagged) -> Object {
        match t {
            Tagged::Workload(w) => Object::Workload(w),
            Tagged::Service(s) => Object::Service(s),
            Tagged::PodDisruptionBudget(b) => Object::PodDisruptionBudget(b),
            Tagged::HorizontalPodAutoscaler(a) => Object::HorizontalPodAutoscaler(a),
            Tagged::AutoscalerStatus(s) => Object::AutoscalerStatus(s),
            Tagged::Secret(s) => Object::Secret(s),
        }
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Object, D::Error> {
        if !d.is_human_readable() {
            return Tagged::deserialize(d).map(Object::from);
        }
        // JSON: one key naming a variant is the tagged form; anything else is a bare
        // workload of an earlier version (a workload has several fields, never one
        // named like a variant).
        let value = serde_json::Value::deserialize(d)?;
        let tagged = value
            .as_object()
            .is_some_and(|m| m.len() == 1 && m.keys().all(|k| VARIANTS.contains(&k.as_str())));
        let object = if tagged {
            serde_json::from_value::<Tagged>(value).map(Object::from)
        } else {
            serde_json::from_value::<Workload>(value).map(Object::Workload)
        };
        object.map_err(serde::de::Error::custom)
    }
}

impl From<Workload> for Object {
    fn from(w: Workload) -> Object {
        Object::Workload(w)
    }
}

impl From<Service> for Object {
    fn from(s: Service) -> Object {
        Object::Service(s)
    }
}

impl From<DisruptionBudget> for Object {
    fn from(b: DisruptionBudget) -> Object {
        Object::PodDisruptionBudget(b)
    }
}

impl From<HorizontalPodAutoscaler> for Object {
    fn from(a: HorizontalPodAutoscaler) -> Object {
        Object::HorizontalPodAutoscaler(a)
    }
}

impl From<AutoscalerStatus> for Object {
    fn from(s: AutoscalerStatus) -> Object {
        Object::AutoscalerStatus(s)
    }
}

impl From<Secret> for Object {
    fn from(s: Secret) -> Object {
        Object::Secret(s)
    }
}

impl Object {
    pub fn key(&self) -> &ObjectKey {
        match self {
            Object::Workload(w) => &w.key,
            Object::Service(s) => &s.key,
            Object::PodDisruptionBudget(b) => &b.key,
            Object::HorizontalPodAutoscaler(a) => &a.key,
            Object::AutoscalerStatus(s) => &s.key,
            Object::Secret(s) => &s.key,
        }
    }

    pub fn kind(&self) -> Kind {
        self.key().kind
    }

    pub fn as_workload(&self) -> Option<&Workload> {
        match self {
            Object::Workload(w) => Some(w),
            _ => None,
        }
    }

    pub fn as_budget(&self) -> Option<&DisruptionBudget> {
        match self {
            Object::PodDisruptionBudget(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_service(&self) -> Option<&Service> {
        match self {
            Object::Service(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_autoscaler(&self) -> Option<&HorizontalPodAutoscaler> {
        match self {
            Object::HorizontalPodAutoscaler(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_autoscaler_status(&self) -> Option<&AutoscalerStatus> {
        match self {
            Object::AutoscalerStatus(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_secret(&self) -> Option<&Secret> {
        match self {
            Object::Secret(s) => Some(s),
            _ => None,
        }
    }

    /// Labels of the object itself (metadata.labels); none for a status.
    pub fn labels(&self) -> &std::collections::BTreeMap<String, String> {
        static NONE: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
        match self {
            Object::Workload(w) => &w.labels,
            Object::Service(s) => &s.labels,
            Object::PodDisruptionBudget(b) => &b.labels,
            Object::HorizontalPodAutoscaler(a) => &a.labels,
            Object::AutoscalerStatus(_) => &NONE,
            Object::Secret(s) => &s.labels,
        }
    }

    /// The stamp of the write that created the object, for kinds that keep it.
    pub fn created(&self) -> Option<&Stamp> {
        match self {
            Object::Workload(_)
            | Object::PodDisruptionBudget(_)
            | Object::HorizontalPodAutoscaler(_)
            | Object::AutoscalerStatus(_)
            | Object::Secret(_) => None,
            Object::Service(s) => s.created.as_ref(),
        }
    }

    /// Sets the creation stamp of kinds that keep one; other kinds are unchanged.
    pub fn set_created(&mut self, stamp: Option<Stamp>) {
        match self {
            Object::Workload(_)
            | Object::PodDisruptionBudget(_)
            | Object::HorizontalPodAutoscaler(_)
            | Object::AutoscalerStatus(_)
            | Object::Secret(_) => {}
            Object::Service(s) => s.created = stamp,
        }
    }

    /// A stable hash: FNV-1a over canonical JSON; a workload's is that of the bare
    /// workload (see the module doc).
    pub fn value_hash(&self) -> u64 {
        let json = match self {
            Object::Workload(w) => serde_json::to_vec(w),
            other => serde_json::to_vec(other),
        };
        fnv1a64(&json.expect("an Object always serializes to JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{autoscaler, service, workload};

    fn one_of_each() -> [Object; 3] {
        [
            Object::Workload(workload(1, 2)),
            Object::Service(service(3)),
            Object::HorizontalPodAutoscaler(autoscaler(4)),
        ]
    }

    #[test]
    fn json_round_trips_tagged_and_reads_bare_workloads() {
        for (object, tag) in one_of_each().into_iter().zip(["Workload", "Service", "HorizontalPodAutoscaler"])
        {
            let json = serde_json::to_string(&object).expect("encodes");
            assert!(json.starts_with(&format!("{{\"{tag}\":")), "{json}");
            assert_eq!(serde_json::from_str::<Object>(&json).expect("decodes"), object);
        }
        let bare = serde_json::to_string(&workload(1, 2)).expect("encodes");
        assert_eq!(serde_json::from_str::<Object>(&bare).expect("legacy"), Object::Workload(workload(1, 2)));
        let err = serde_json::from_str::<Object>("{\"key\": 1}").expect_err("not a workload");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn bincode_round_trips() {
        for object in one_of_each() {
            let bytes = crate::codec::encode(&object).expect("encodes");
            let back: Object = crate::codec::decode(&bytes, crate::codec::MAX_MESSAGE).expect("decodes");
            assert_eq!(back, object);
        }
        // Variant indices are on the wire and in peers' stores: new kinds go at the end.
        let indices: Vec<u8> =
            one_of_each().iter().map(|o| crate::codec::encode(o).expect("encodes")[0]).collect();
        assert_eq!(indices, [0, 1, 3]);
    }

    #[test]
    fn a_workload_hashes_as_before_objects() {
        let w = workload(1, 2);
        let bare = fnv1a64(&serde_json::to_vec(&w).expect("encodes"));
        assert_eq!(Object::Workload(w).value_hash(), bare);
        assert_ne!(Object::Service(service(1)).value_hash(), 0);
    }
}
