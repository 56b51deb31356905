//! A Kubernetes `autoscaling/v2 HorizontalPodAutoscaler` as peer keeps it: which workload
//! of its namespace it scales, between which bounds, on which resource metrics, and how
//! fast. Plain data with Kubernetes' defaults filled in; the decision itself is
//! [`crate::autoscale::decide`]. An autoscaler runs no pods.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Kind, ObjectKey};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HorizontalPodAutoscaler {
    pub key: ObjectKey,
    /// Labels of the object itself (metadata.labels).
    pub labels: BTreeMap<String, String>,
    /// The workload whose replica count is set, in the autoscaler's namespace.
    pub scale_target: ScaleTarget,
    /// At least 1.
    pub min_replicas: u32,
    /// At least `min_replicas`.
    pub max_replicas: u32,
    /// Never empty; the largest proposal of all metrics wins.
    pub metrics: Vec<MetricSpec>,
    pub behavior: Behavior,
}

impl HorizontalPodAutoscaler {
    /// The key of the workload it scales.
    pub fn target_key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.scale_target.kind,
            namespace: self.key.namespace.clone(),
            name: self.scale_target.name.clone(),
        }
    }
}

/// The last decisions of an autoscaler, written by the node that made them (see
/// `crate::duty`) under the autoscaler's namespace and name with kind
/// [`Kind::AutoscalerStatus`], apart from the autoscaler so that the user's object stays
/// the user's: the handover heartbeat, the algorithm's state, and what
/// `peer describe hpa` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscalerStatus {
    pub key: ObjectKey,
    /// The last decision (a rescale or not).
    pub last: DecisionRecord,
    /// The last rescales, oldest first (at most [`AutoscalerStatus::RECENT`]).
    pub rescales: Vec<DecisionRecord>,
    /// Handed back to `autoscale::decide` on the next decision, by whichever node makes it.
    pub state: crate::autoscale::AutoscalerState,
    /// Each metric's current value at the last decision.
    pub metrics: Vec<crate::autoscale::MetricStatus>,
}

impl AutoscalerStatus {
    /// Rescales kept for `peer describe hpa`.
    pub const RECENT: usize = 10;
}

/// One decision of an autoscaler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Grows by one with every decision, whoever makes it.
    pub seq: u64,
    /// The node that decided.
    pub by: String,
    /// When, on that node's clock (ms since the epoch).
    pub at_ms: u64,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    pub reason: String,
}

/// `spec.scaleTargetRef`: a Deployment or a StatefulSet (apps/v1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleTarget {
    pub kind: Kind,
    pub name: String,
}

/// A resource of the pods' containers that a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Resource {
    /// In millicores.
    Cpu,
    /// In bytes.
    Memory,
}

impl Resource {
    /// The Kubernetes resource name.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `Resource` metric: the average use of one resource over the target's pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricSpec {
    pub resource: Resource,
    pub target: MetricTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricTarget {
    /// `averageUtilization`: the average use as a percentage of the pods' requests (≥ 1).
    Utilization(u32),
    /// `averageValue`: the average use per pod, in millicores (cpu) or bytes (memory) (≥ 1).
    AverageValue(u64),
}

/// `spec.behavior`, always complete: Kubernetes' defaults where the manifest says nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behavior {
    pub scale_up: ScalingRules,
    pub scale_down: ScalingRules,
}

impl Default for Behavior {
    fn default() -> Behavior {
        Behavior { scale_up: ScalingRules::default_up(), scale_down: ScalingRules::default_down() }
    }
}

/// How fast one direction may go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingRules {
    /// Recommendations of this many past seconds are considered (0 to 3600).
    pub stabilization_window_seconds: u32,
    pub select_policy: SelectPolicy,
    /// Never empty.
    pub policies: Vec<ScalingPolicy>,
    /// The usage ratio must leave `1 ± tolerance` in this direction before anything
    /// changes, in thousandths: 100 is Kubernetes' cluster-wide default of 10 %.
    pub tolerance_milli: u32,
}

/// Kubernetes' default tolerance, 10 %, in thousandths.
pub const DEFAULT_TOLERANCE_MILLI: u32 = 100;

impl ScalingRules {
    /// Kubernetes' `scaleUp` default: no stabilization; up to 4 pods or a doubling (the
    /// larger) every 15 s.
    pub fn default_up() -> ScalingRules {
        ScalingRules {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy { kind: PolicyKind::Pods, value: 4, period_seconds: 15 },
                ScalingPolicy { kind: PolicyKind::Percent, value: 100, period_seconds: 15 },
            ],
            tolerance_milli: DEFAULT_TOLERANCE_MILLI,
        }
    }

    /// Kubernetes' `scaleDown` default: the highest recommendation of the last 5 minutes;
    /// any number of pods may go every 15 s.
    pub fn default_down() -> ScalingRules {
        ScalingRules {
            stabilization_window_seconds: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy { kind: PolicyKind::Percent, value: 100, period_seconds: 15 }],
            tolerance_milli: DEFAULT_TOLERANCE_MILLI,
        }
    }

    /// The longest policy period, in seconds.
    pub fn longest_period_seconds(&self) -> u32 {
        self.policies.iter().map(|p| p.period_seconds).max().unwrap_or(0)
    }
}

/// `selectPolicy`: which policy's limit applies when several are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectPolicy {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

/// A `HPAScalingPolicy`: at most `value` pods (or percent of the replicas at the start of
/// the period) added or removed within any `period_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    pub kind: PolicyKind,
    /// At least 1.
    pub value: u32,
    /// 1 to 1800.
    pub period_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    Pods,
    Percent,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_kubernetes_defaults() {
        let b = Behavior::default();
        assert_eq!(b.scale_up.stabilization_window_seconds, 0);
        assert_eq!(b.scale_down.stabilization_window_seconds, 300);
        assert_eq!(b.scale_up.longest_period_seconds(), 15);
        assert_eq!(b.scale_up.policies.len(), 2);
        assert_eq!(
            b.scale_down.policies,
            [ScalingPolicy { kind: PolicyKind::Percent, value: 100, period_seconds: 15 }]
        );
        assert_eq!(b.scale_down.select_policy, SelectPolicy::Max);
    }
}
