//! Kubernetes `policy/v1 PodDisruptionBudget` to peer's: a selector and `minAvailable` or
//! `maxUnavailable` (an integer or a percentage).

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use protocol::spec::{Budget, DisruptionBudget, IntOrPercent, Kind};

use super::convert::{int_or_percent, object_key};
use super::diagnostic::{FieldError, Note};

pub(crate) fn budget(p: &PodDisruptionBudget, notes: &mut Vec<Note>) -> Result<DisruptionBudget, FieldError> {
    let key = object_key(Kind::PodDisruptionBudget, &p.metadata)?;
    let spec = p.spec.as_ref().ok_or_else(|| {
        FieldError::new(
            "spec",
            "required field is missing, expected a selector and minAvailable or maxUnavailable",
        )
    })?;
    let selector = spec.selector.as_ref().and_then(|s| s.match_labels.clone()).unwrap_or_default();
    if selector.is_empty() {
        return Err(FieldError::new(
            "spec.selector.matchLabels",
            "required field is missing, expected the labels of the pods the budget covers",
        ));
    }
    if spec.selector.as_ref().is_some_and(|s| s.match_expressions.as_ref().is_some_and(|e| !e.is_empty())) {
        notes.push((
            "spec.selector.matchExpressions".to_owned(),
            "not implemented by peer yet, ignored: pods are selected by matchLabels".to_owned(),
        ));
    }
    let zero = IntOrPercent::Int(0);
    let budget = match (&spec.min_available, &spec.max_unavailable) {
        (Some(v), None) => Budget::MinAvailable(int_or_percent(Some(v), zero, "spec.minAvailable")?),
        (None, Some(v)) => Budget::MaxUnavailable(int_or_percent(Some(v), zero, "spec.maxUnavailable")?),
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "spec.maxUnavailable",
                "expected either minAvailable or maxUnavailable, not both",
            ))
        }
        // Kubernetes' default: no disruption allowed.
        (None, None) => Budget::MaxUnavailable(zero),
    };
    Ok(DisruptionBudget { key, labels: p.metadata.labels.clone().unwrap_or_default(), selector, budget })
}
