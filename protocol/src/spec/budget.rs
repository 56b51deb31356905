//! A Kubernetes `policy/v1 PodDisruptionBudget` as peer keeps it: how many of the pods its
//! selector matches must stay Ready while a node is drained. Plain data and the pure
//! eviction rule every node applies to its own view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{IntOrPercent, ObjectKey};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisruptionBudget {
    pub key: ObjectKey,
    /// Labels of the object itself (metadata.labels).
    pub labels: BTreeMap<String, String>,
    /// Pods of the namespace whose labels include all of these are covered; never empty.
    pub selector: BTreeMap<String, String>,
    pub budget: Budget,
}

/// `minAvailable` or `maxUnavailable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Budget {
    MinAvailable(IntOrPercent),
    MaxUnavailable(IntOrPercent),
}

impl DisruptionBudget {
    /// Whether the budget covers a pod of `namespace` with `labels`.
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.key.namespace == namespace && self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// How many covered pods must stay Ready when `expected` pods are covered (percentages
    /// round up, as Kubernetes does).
    pub fn min_ready(&self, expected: u32) -> u32 {
        let resolve = |v: &IntOrPercent| match v {
            IntOrPercent::Int(i) => *i,
            IntOrPercent::Percent(p) => (u64::from(*p) * u64::from(expected)).div_ceil(100) as u32,
        };
        match &self.budget {
            Budget::MinAvailable(v) => resolve(v),
            Budget::MaxUnavailable(v) => expected.saturating_sub(resolve(v)),
        }
    }

    /// Whether evicting one covered pod is allowed when `expected` pods are covered and
    /// `ready` of them are Ready: an unready pod may always go (it takes nothing away); a
    /// Ready one only while the others still meet the budget.
    pub fn allows_eviction(&self, expected: u32, ready: u32, pod_ready: bool) -> bool {
        !pod_ready || ready.saturating_sub(1) >= self.min_ready(expected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Kind;

    fn pdb(budget: Budget) -> DisruptionBudget {
        DisruptionBudget {
            key: ObjectKey {
                kind: Kind::PodDisruptionBudget,
                namespace: "default".into(),
                name: "web".into(),
            },
            labels: BTreeMap::new(),
            selector: BTreeMap::from([("app".into(), "web".into())]),
            budget,
        }
    }

    #[test]
    fn budgets_resolve_like_kubernetes() {
        let min8 = pdb(Budget::MinAvailable(IntOrPercent::Int(8)));
        assert!(min8.allows_eviction(10, 10, true));
        assert!(min8.allows_eviction(10, 9, true));
        assert!(!min8.allows_eviction(10, 8, true));
        assert!(min8.allows_eviction(10, 8, false), "an unready pod may go");
        let half = pdb(Budget::MinAvailable(IntOrPercent::Percent(50)));
        assert_eq!(half.min_ready(5), 3, "50% of 5 rounds up");
        let max1 = pdb(Budget::MaxUnavailable(IntOrPercent::Int(1)));
        assert_eq!(max1.min_ready(10), 9);
        assert!(max1
            .selects("default", &BTreeMap::from([("app".into(), "web".into()), ("x".into(), "y".into())])));
        assert!(!max1.selects("other", &BTreeMap::from([("app".into(), "web".into())])));
    }
}
