//! Pure placement rules shared by the hub's scheduler, its DaemonSet controller and manifest
//! validation: taints and tolerations, node selectors and node affinity, and the checks that
//! keep bad terms out of the store.
use crate::api::{
    LabelSelector, Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};

pub const NO_SCHEDULE: &str = "NoSchedule";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";
const EFFECTS: [&str; 3] = [NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE];

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.as_deref() {
            Some("Exists") => true,
            _ => self.value == taint.value,
        }
    }
}

impl Taint {
    /// `key=value:Effect`, as kubectl prints and parses it.
    pub fn spec_string(&self) -> String {
        if self.value.is_empty() {
            format!("{}:{}", self.key, self.effect)
        } else {
            format!("{}={}:{}", self.key, self.value, self.effect)
        }
    }
}

/// The first taint with one of `effects` that no toleration tolerates.
pub fn untolerated<'a>(
    taints: &'a [Taint],
    tolerations: &[Toleration],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints.iter().find(|t| {
        effects.contains(&t.effect.as_str()) && !tolerations.iter().any(|tol| tol.tolerates(t))
    })
}

/// Whether the node passes the pod's nodeSelector and required node affinity.
pub fn node_matches(spec: &PodSpec, node: &Node) -> bool {
    if !crate::labels::matches(&spec.node_selector, &node.metadata.labels) {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        // Terms are ORed; an empty list matches nothing, as in Kubernetes.
        Some(sel) => sel.node_selector_terms.iter().any(|t| t.matches(node)),
        None => true,
    }
}

/// Whether a DaemonSet's pod belongs on the node: selector, affinity and the taints that keep
/// pods off (NoSchedule, NoExecute).
pub fn daemon_fits(spec: &PodSpec, node: &Node) -> bool {
    node_matches(spec, node)
        && untolerated(
            &node.spec.taints,
            &spec.tolerations,
            &[NO_SCHEDULE, NO_EXECUTE],
        )
        .is_none()
}

/// Sum of the weights of the preferred node-affinity terms the node matches.
pub fn preferred_node_score(spec: &PodSpec, node: &Node) -> i64 {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .map_or(0, |n| {
            n.preferred_during_scheduling_ignored_during_execution
                .iter()
                .filter(|p| p.preference.matches(node))
                .map(|p| i64::from(p.weight))
                .sum()
        })
}

impl NodeSelectorTerm {
    /// All requirements hold. A term with no requirements matches nothing (Kubernetes).
    pub fn matches(&self, node: &Node) -> bool {
        if self.match_expressions.is_empty() && self.match_fields.is_empty() {
            return false;
        }
        self.match_expressions
            .iter()
            .all(|r| r.matches(node.metadata.labels.get(&r.key).map(String::as_str)))
            && self.match_fields.iter().all(|r| {
                // Only metadata.name is a selectable node field; validation refuses others.
                r.matches(Some(node.metadata.name.as_str()))
            })
    }
}

impl NodeSelectorRequirement {
    fn matches(&self, value: Option<&str>) -> bool {
        let number = |s: &str| s.parse::<i64>().ok();
        match self.operator.as_str() {
            "In" => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            "NotIn" => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            "Gt" | "Lt" => {
                let (Some(have), Some(bound)) = (
                    value.and_then(number),
                    self.values.first().and_then(|b| number(b)),
                ) else {
                    return false;
                };
                if self.operator == "Gt" {
                    have > bound
                } else {
                    have < bound
                }
            }
            _ => false,
        }
    }
}

// ---------------------------------------------------------------- validation

/// Checks the scheduling fields of a pod spec; `at` is the spec's path.
pub fn validate_pod_spec(at: &str, spec: &PodSpec) -> Result<(), String> {
    for (i, t) in spec.tolerations.iter().enumerate() {
        let at = format!("{at}.tolerations[{i}]");
        match t.operator.as_deref() {
            None | Some("Equal") => {
                if t.key.is_empty() {
                    return Err(format!(
                        "{at}.operator must be Exists when key is empty (to tolerate everything)"
                    ));
                }
            }
            Some("Exists") => {
                if !t.value.is_empty() {
                    return Err(format!("{at}.value must be empty when operator is Exists"));
                }
            }
            Some(op) => {
                return Err(format!(
                    "{at}.operator {op:?} is not valid (Equal or Exists)"
                ));
            }
        }
        if !t.effect.is_empty() && !EFFECTS.contains(&t.effect.as_str()) {
            return Err(format!(
                "{at}.effect {:?} is not valid (NoSchedule, PreferNoSchedule or NoExecute)",
                t.effect
            ));
        }
        if t.toleration_seconds.is_some() && t.effect != NO_EXECUTE {
            return Err(format!(
                "{at}.tolerationSeconds is only allowed with effect NoExecute"
            ));
        }
    }
    if let Some(aff) = &spec.affinity {
        if let Some(na) = &aff.node_affinity {
            let at = format!("{at}.affinity.nodeAffinity");
            if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
                let at = format!("{at}.requiredDuringSchedulingIgnoredDuringExecution");
                if req.node_selector_terms.is_empty() {
                    return Err(format!("{at}.nodeSelectorTerms must not be empty"));
                }
                for (i, term) in req.node_selector_terms.iter().enumerate() {
                    validate_term(&format!("{at}.nodeSelectorTerms[{i}]"), term)?;
                }
            }
            for (i, p) in na
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let at = format!("{at}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                check_weight(&at, p.weight)?;
                validate_term(&format!("{at}.preference"), &p.preference)?;
            }
        }
        for (name, pa) in [
            ("podAffinity", &aff.pod_affinity),
            ("podAntiAffinity", &aff.pod_anti_affinity),
        ] {
            let Some(pa) = pa else { continue };
            let at = format!("{at}.affinity.{name}");
            for (i, t) in pa
                .required_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let at = format!("{at}.requiredDuringSchedulingIgnoredDuringExecution[{i}]");
                validate_pod_term(&at, t)?;
            }
            for (i, w) in pa
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .enumerate()
            {
                let at = format!("{at}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
                check_weight(&at, w.weight)?;
                validate_pod_term(&format!("{at}.podAffinityTerm"), &w.pod_affinity_term)?;
            }
        }
    }
    for (i, c) in spec.topology_spread_constraints.iter().enumerate() {
        let at = format!("{at}.topologySpreadConstraints[{i}]");
        if c.max_skew < 1 {
            return Err(format!(
                "{at}.maxSkew must be at least 1, got {}",
                c.max_skew
            ));
        }
        if c.topology_key.is_empty() {
            return Err(format!("{at}.topologyKey is required"));
        }
        if !matches!(
            c.when_unsatisfiable.as_str(),
            "DoNotSchedule" | "ScheduleAnyway"
        ) {
            return Err(format!(
                "{at}.whenUnsatisfiable {:?} is not valid (DoNotSchedule or ScheduleAnyway)",
                c.when_unsatisfiable
            ));
        }
        if let Some(sel) = &c.label_selector {
            validate_selector(&format!("{at}.labelSelector"), sel)?;
        }
    }
    Ok(())
}

/// Checks node taints (from a Node manifest or `fleet taint`).
pub fn validate_taints(at: &str, taints: &[Taint]) -> Result<(), String> {
    for (i, t) in taints.iter().enumerate() {
        if t.key.is_empty() {
            return Err(format!("{at}[{i}].key is required"));
        }
        if !EFFECTS.contains(&t.effect.as_str()) {
            return Err(format!(
                "{at}[{i}].effect {:?} is not valid (NoSchedule, PreferNoSchedule or NoExecute)",
                t.effect
            ));
        }
        if taints[..i]
            .iter()
            .any(|o| o.key == t.key && o.effect == t.effect)
        {
            return Err(format!(
                "{at}[{i}]: taint {}:{} appears twice",
                t.key, t.effect
            ));
        }
    }
    Ok(())
}

/// Checks matchExpressions operators and values.
pub fn validate_selector(at: &str, sel: &LabelSelector) -> Result<(), String> {
    for (i, r) in sel.match_expressions.iter().enumerate() {
        let at = format!("{at}.matchExpressions[{i}]");
        match r.operator.as_str() {
            "In" | "NotIn" if r.values.is_empty() => {
                return Err(format!(
                    "{at}.values must not be empty for operator {}",
                    r.operator
                ));
            }
            "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                return Err(format!(
                    "{at}.values must be empty for operator {}",
                    r.operator
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => {
                return Err(format!(
                    "{at}.operator {op:?} is not valid (In, NotIn, Exists, DoesNotExist)"
                ));
            }
        }
    }
    Ok(())
}

fn validate_term(at: &str, term: &NodeSelectorTerm) -> Result<(), String> {
    for (field, reqs) in [
        ("matchExpressions", &term.match_expressions),
        ("matchFields", &term.match_fields),
    ] {
        for (i, r) in reqs.iter().enumerate() {
            let at = format!("{at}.{field}[{i}]");
            if field == "matchFields" && r.key != "metadata.name" {
                return Err(format!(
                    "{at}.key {:?} is not a node field selector (only metadata.name)",
                    r.key
                ));
            }
            match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => {
                    return Err(format!(
                        "{at}.values must not be empty for operator {}",
                        r.operator
                    ));
                }
                "Exists" | "DoesNotExist" if !r.values.is_empty() => {
                    return Err(format!(
                        "{at}.values must be empty for operator {}",
                        r.operator
                    ));
                }
                "Gt" | "Lt" if r.values.len() != 1 || r.values[0].parse::<i64>().is_err() => {
                    return Err(format!(
                        "{at}.values must be one integer for operator {}",
                        r.operator
                    ));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
                op => {
                    return Err(format!(
                        "{at}.operator {op:?} is not valid (In, NotIn, Exists, DoesNotExist, Gt, Lt)"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_pod_term(at: &str, t: &crate::api::PodAffinityTerm) -> Result<(), String> {
    if t.topology_key.is_empty() {
        return Err(format!("{at}.topologyKey is required"));
    }
    if let Some(sel) = &t.label_selector {
        validate_selector(&format!("{at}.labelSelector"), sel)?;
    }
    Ok(())
}

fn check_weight(at: &str, weight: i32) -> Result<(), String> {
    if !(1..=100).contains(&weight) {
        return Err(format!("{at}.weight must be in 1..=100, got {weight}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Affinity, NodeAffinity, NodeSelector};

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(key: &str, op: Option<&str>, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: key.into(),
            operator: op.map(String::from),
            value: value.into(),
            effect: effect.into(),
            toleration_seconds: None,
        }
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let t = taint("dedicated", "gpu", NO_SCHEDULE);
        assert!(tol("dedicated", None, "gpu", NO_SCHEDULE).tolerates(&t));
        assert!(tol("dedicated", None, "gpu", "").tolerates(&t));
        assert!(!tol("dedicated", None, "cpu", NO_SCHEDULE).tolerates(&t));
        assert!(tol("dedicated", Some("Exists"), "", "").tolerates(&t));
        assert!(tol("", Some("Exists"), "", "").tolerates(&t));
        assert!(!tol("dedicated", Some("Exists"), "", NO_EXECUTE).tolerates(&t));
        let taints = [t.clone(), taint("soft", "", PREFER_NO_SCHEDULE)];
        assert_eq!(untolerated(&taints, &[], &[NO_SCHEDULE]), Some(&t));
        assert_eq!(untolerated(&taints, &[], &[NO_EXECUTE]), None);
    }

    #[test]
    fn node_affinity_terms_are_ored_requirements_anded() {
        let mut node = Node::default();
        node.metadata.name = "pi-1".into();
        node.metadata.labels.insert("zone".into(), "a".into());
        node.metadata.labels.insert("cores".into(), "4".into());
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        let spec = |terms: Vec<NodeSelectorTerm>| PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: terms,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let term = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
            match_expressions: reqs,
            match_fields: vec![],
        };
        assert!(node_matches(
            &spec(vec![term(vec![
                req("zone", "In", &["a", "b"]),
                req("cores", "Gt", &["2"])
            ])]),
            &node
        ));
        assert!(!node_matches(
            &spec(vec![term(vec![
                req("zone", "In", &["a"]),
                req("cores", "Lt", &["2"])
            ])]),
            &node
        ));
        assert!(node_matches(
            &spec(vec![
                term(vec![req("zone", "In", &["b"])]),
                term(vec![req("gpu", "DoesNotExist", &[])])
            ]),
            &node
        ));
        assert!(!node_matches(&spec(vec![term(vec![])]), &node));
        let by_name = NodeSelectorTerm {
            match_expressions: vec![],
            match_fields: vec![req("metadata.name", "NotIn", &["pi-1"])],
        };
        assert!(!node_matches(&spec(vec![by_name]), &node));
    }
}
