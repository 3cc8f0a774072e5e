//! What happens to a pod whose node stops reporting (the edge's disconnect policy, modelled on
//! Nomad's `disconnect { lost_after, reconcile }`). By default nothing: the pod is shown as
//! Unknown and keeps running on its node. A workload opts into replacement with annotations on
//! its pod template:
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     flotilla.io/disconnect-lost-after: 2m          # replace once the node is silent this long
//!     flotilla.io/disconnect-reconcile: keep-original  # or keep-replacement
//! ```
//!
//! When the node comes back, exactly one copy of each replica survives: `keep-original` (the
//! default) keeps the pod that was cut off, if it still runs, and removes its replacement;
//! `keep-replacement` removes the original as soon as it is declared lost.
use crate::api::{Condition, Pod};
use std::collections::BTreeMap;
use std::time::Duration;

pub const LOST_AFTER_ANNOTATION: &str = "flotilla.io/disconnect-lost-after";
pub const RECONCILE_ANNOTATION: &str = "flotilla.io/disconnect-reconcile";
/// Put by a ReplicaSet on the pod it started in place of a lost one: the lost pod's name.
pub const REPLACES_ANNOTATION: &str = "flotilla.io/replaces";
/// The pod condition the hub sets on a pod it has declared lost (Kubernetes' condition type
/// for pods about to be disrupted).
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
pub const NODE_LOST: &str = "NodeLost";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reconcile {
    /// The original survives a reconnect (if it is still running); its replacement goes.
    KeepOriginal,
    /// The original is deleted when it is declared lost; the replacement stays.
    KeepReplacement,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub lost_after: Duration,
    pub reconcile: Reconcile,
}

impl Policy {
    /// The policy the annotations ask for; `None` when the workload did not opt in. Errors name
    /// the annotation under `at` (e.g. `spec.template.metadata.annotations`).
    pub fn from_annotations(
        at: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Policy>, String> {
        let reconcile = match annotations.get(RECONCILE_ANNOTATION).map(String::as_str) {
            None | Some("keep-original") => Reconcile::KeepOriginal,
            Some("keep-replacement") => Reconcile::KeepReplacement,
            Some(other) => {
                return Err(format!(
                    "{at}[{RECONCILE_ANNOTATION}] must be keep-original or keep-replacement, got {other:?}"
                ));
            }
        };
        let Some(text) = annotations.get(LOST_AFTER_ANNOTATION) else {
            if annotations.contains_key(RECONCILE_ANNOTATION) {
                return Err(format!(
                    "{at}[{RECONCILE_ANNOTATION}] needs {LOST_AFTER_ANNOTATION} as well"
                ));
            }
            return Ok(None);
        };
        let lost_after = humantime::parse_duration(text).map_err(|e| {
            format!("{at}[{LOST_AFTER_ANNOTATION}] must be a duration such as 90s or 5m, got {text:?}: {e}")
        })?;
        Ok(Some(Policy {
            lost_after,
            reconcile,
        }))
    }

    /// A stored pod's policy (validated at apply; unreadable values mean no opt-in).
    pub fn of(pod: &Pod) -> Option<Policy> {
        Policy::from_annotations("", &pod.metadata.annotations)
            .ok()
            .flatten()
    }
}

/// Whether the hub has declared this pod lost (its node silent past `lost-after`). The agent's
/// next report replaces the whole status, which is how a returning pod stops being lost.
pub fn is_lost(pod: &Pod) -> bool {
    pod.status
        .conditions
        .iter()
        .any(|c| c.type_ == DISRUPTION_TARGET && c.reason.as_deref() == Some(NODE_LOST))
}

/// The condition that marks a pod lost.
pub fn lost_condition(node: &str, now: &str) -> Condition {
    let mut c = Condition::new(
        DISRUPTION_TARGET,
        "True",
        NODE_LOST,
        format!("node {node} stopped reporting; the pod is being replaced"),
    );
    c.last_transition_time = Some(now.into());
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_the_opt_in() {
        let at = "spec.template.metadata.annotations";
        assert_eq!(Policy::from_annotations(at, &ann(&[])), Ok(None));
        assert_eq!(
            Policy::from_annotations(at, &ann(&[(LOST_AFTER_ANNOTATION, "90s")])),
            Ok(Some(Policy {
                lost_after: Duration::from_secs(90),
                reconcile: Reconcile::KeepOriginal
            }))
        );
        assert_eq!(
            Policy::from_annotations(
                at,
                &ann(&[
                    (LOST_AFTER_ANNOTATION, "2m"),
                    (RECONCILE_ANNOTATION, "keep-replacement")
                ])
            )
            .unwrap()
            .unwrap()
            .reconcile,
            Reconcile::KeepReplacement
        );
    }

    #[test]
    fn bad_values_name_the_annotation() {
        let at = "metadata.annotations";
        let e = Policy::from_annotations(at, &ann(&[(LOST_AFTER_ANNOTATION, "soon")])).unwrap_err();
        assert!(
            e.starts_with(
                "metadata.annotations[flotilla.io/disconnect-lost-after] must be a duration"
            ),
            "{e}"
        );
        let e = Policy::from_annotations(
            at,
            &ann(&[
                (LOST_AFTER_ANNOTATION, "1m"),
                (RECONCILE_ANNOTATION, "both"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "metadata.annotations[flotilla.io/disconnect-reconcile] must be keep-original or keep-replacement, got \"both\""
        );
        let e = Policy::from_annotations(at, &ann(&[(RECONCILE_ANNOTATION, "keep-original")]))
            .unwrap_err();
        assert!(e.contains("needs flotilla.io/disconnect-lost-after"), "{e}");
    }
}
