//! PodDisruptionBudgets: the disruption controller keeps each budget's status current, and
//! [`evict`] (the Eviction API behind `fleet drain`) deletes a pod only when every budget that
//! selects it still allows a disruption, judged in the same transaction as the delete.
use super::{Controller, Ctx, Requeue, never, pods_in};
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    Condition, EventType, IntOrString, Kind, Object, ObjectKey, Pod, PodDisruptionBudget,
    PodDisruptionBudgetStatus,
};
use std::collections::BTreeSet;
use tracing::info;

/// The source component of the events of evictions (`fleet drain`, the Eviction API).
const EVICTION_COMPONENT: &str = "eviction-api";

pub(crate) const CONTROLLER: Controller = Controller {
    name: "disruption",
    kind: Kind::PodDisruptionBudget,
    keys_of,
    all_on: never,
    reconcile,
};

/// A budget changes with itself and with the pods of its namespace that come, go, or change
/// readiness or labels. Pod events name the namespace's budgets through a marker key that
/// [`reconcile`] expands.
fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::PodDisruptionBudget => vec![e.key.clone()],
        Kind::Pod if pod_relevant_change(e) => {
            vec![ObjectKey::new(
                Kind::PodDisruptionBudget,
                &e.key.namespace,
                ALL_IN_NAMESPACE,
            )]
        }
        _ => vec![],
    }
}

/// Not a valid object name, so it never clashes with a real budget.
const ALL_IN_NAMESPACE: &str = "*";

fn pod_relevant_change(e: &StoreEvent) -> bool {
    let view = |o: &Option<Object>| match o {
        Some(Object::Pod(p)) => Some((p.is_ready(), p.is_terminal(), p.metadata.labels.clone())),
        _ => None,
    };
    view(&e.prev) != view(&e.object)
}

fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, _ctx: &Ctx) -> Result<Requeue, StoreError> {
    let budgets: Vec<PodDisruptionBudget> = if key.name == ALL_IN_NAMESPACE {
        budgets_in(tx, &key.namespace)?
    } else {
        match tx.get(key)? {
            Some(Object::PodDisruptionBudget(b)) => vec![b],
            _ => return Ok(None),
        }
    };
    if budgets.is_empty() {
        return Ok(None);
    }
    let pods = pods_in(tx, &key.namespace)?;
    for mut pdb in budgets {
        let status = assess(tx, &pdb, &pods)?;
        if status != pdb.status {
            pdb.status = status;
            tx.put(Object::PodDisruptionBudget(pdb))?;
        }
    }
    Ok(None)
}

fn budgets_in(tx: &Tx<'_>, namespace: &str) -> Result<Vec<PodDisruptionBudget>, StoreError> {
    Ok(tx
        .list(Kind::PodDisruptionBudget, Some(namespace))?
        .into_iter()
        .filter_map(|o| match o {
            Object::PodDisruptionBudget(b) => Some(b),
            _ => None,
        })
        .collect())
}

fn selects(pdb: &PodDisruptionBudget, pod: &Pod) -> bool {
    !pod.is_terminal() && pdb.spec.selector.matches(&pod.metadata.labels)
}

/// The budget's status over `pods` (its namespace's pods): how many are healthy (Ready), how
/// many must stay so, and how many may be disrupted now.
fn assess(
    tx: &Tx<'_>,
    pdb: &PodDisruptionBudget,
    pods: &[Pod],
) -> Result<PodDisruptionBudgetStatus, StoreError> {
    let matched: Vec<&Pod> = pods.iter().filter(|p| selects(pdb, p)).collect();
    let healthy = matched.iter().filter(|p| p.is_ready()).count() as i32;
    let expected = expected_pods(tx, pdb, &matched)?;
    let desired = match (&pdb.spec.min_available, &pdb.spec.max_unavailable) {
        (Some(IntOrString::Int(n)), _) => *n,
        (Some(v), _) => v.scaled(expected, true).unwrap_or(expected),
        (None, Some(v)) => (expected - v.scaled(expected, true).unwrap_or(0)).max(0),
        // Validation requires one of the two; with neither, nothing may be disrupted.
        (None, None) => expected,
    };
    let allowed = (healthy - desired).max(0);
    let mut status = PodDisruptionBudgetStatus {
        observed_generation: pdb.metadata.generation,
        disruptions_allowed: allowed,
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        conditions: pdb.status.conditions.clone(),
    };
    let (state, reason) = if allowed > 0 {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let cond = Condition {
        last_transition_time: Some(crate::store::now_rfc3339()),
        ..Condition::new("DisruptionAllowed", state, reason, "")
    };
    match status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == "DisruptionAllowed")
    {
        Some(c) if c.status == state => {}
        Some(c) => *c = cond,
        None => status.conditions.push(cond),
    }
    Ok(status)
}

/// How many pods the budget's pods' controllers want: an integer minAvailable counts the pods
/// themselves; percentages and maxUnavailable count the controllers' scale, as Kubernetes does.
fn expected_pods(
    tx: &Tx<'_>,
    pdb: &PodDisruptionBudget,
    matched: &[&Pod],
) -> Result<i32, StoreError> {
    if matches!(pdb.spec.min_available, Some(IntOrString::Int(_))) {
        return Ok(matched.len() as i32);
    }
    let namespace = pdb.metadata.namespace.as_deref().unwrap_or("default");
    let mut seen = BTreeSet::new();
    let mut expected = 0;
    for pod in matched {
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .find(|r| r.controller == Some(true));
        let Some(owner) = owner else {
            expected += 1;
            continue;
        };
        if !seen.insert((owner.kind.clone(), owner.name.clone())) {
            continue;
        }
        let scale = Kind::from_kind(&owner.kind).map(|k| ObjectKey::new(k, namespace, &owner.name));
        expected += match scale.map(|k| tx.get(&k)).transpose()?.flatten() {
            Some(Object::ReplicaSet(rs)) => rs.spec.replicas.unwrap_or(1),
            Some(Object::DaemonSet(ds)) => ds.status.desired_number_scheduled,
            Some(Object::StatefulSet(sts)) => sts.replicas(),
            Some(Object::Job(j)) => j.spec.parallelism.unwrap_or(1),
            // An owner that is gone, or has no scale: count the pods it left.
            _ => matched
                .iter()
                .filter(|p| p.metadata.controller_uid() == Some(owner.uid.as_str()))
                .count() as i32,
        };
    }
    Ok(expected)
}

/// What an eviction came to.
pub enum Eviction {
    Evicted,
    /// A budget forbids it now; the message says which.
    Refused(String),
}

/// Deletes the pod if no budget selecting it is exhausted. A pod that is not Ready takes
/// nothing from a budget and may always go.
pub fn evict(tx: &mut Tx<'_>, key: &ObjectKey) -> Result<Eviction, StoreError> {
    let Some(Object::Pod(pod)) = tx.get(key)? else {
        return Err(StoreError::NotFound(key.clone()));
    };
    let budgets: Vec<PodDisruptionBudget> = budgets_in(tx, &key.namespace)?
        .into_iter()
        .filter(|b| selects(b, &pod))
        .collect();
    if budgets.len() > 1 {
        return Err(StoreError::Invalid(format!(
            "pod {:?} is selected by more than one PodDisruptionBudget ({}); eviction is not allowed",
            key.name,
            budgets
                .iter()
                .map(|b| b.metadata.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if let Some(pdb) = budgets.first()
        && pod.is_ready()
    {
        let pods = pods_in(tx, &key.namespace)?;
        let status = assess(tx, pdb, &pods)?;
        if status.disruptions_allowed < 1 {
            return Ok(Eviction::Refused(format!(
                "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {} needs {} healthy pods and has {} currently",
                pdb.metadata.name, status.desired_healthy, status.current_healthy
            )));
        }
    }
    super::gc::delete_cascade(tx, key)?;
    info!(pod = %key, "evicted");
    crate::events::about(
        tx,
        &Object::Pod(pod),
        EventType::Normal,
        "Evicted",
        "Eviction API: evicting",
        EVICTION_COMPONENT,
        std::time::SystemTime::now(),
    )?;
    Ok(Eviction::Evicted)
}
