//! The StatefulSet controller: pods `NAME-0..N-1` with stable names and stable storage (claim
//! `<template>-NAME-<ordinal>` per volumeClaimTemplate, created before the pod and kept by
//! default when the pod, the ordinal or the set goes away). OrderedReady creates ordinal i only
//! once every lower one is Running, Ready and available, and removes from the highest ordinal
//! down, one at a time; Parallel does both at once. A template change rolls from the highest
//! ordinal down to the partition, one pod at a time, each Ready before the next goes
//! (RollingUpdate), or waits for pods to be deleted by hand (OnDelete). Every template is kept
//! as a ControllerRevision `NAME-<hash>`, so a pod below the partition is recreated from the
//! template it had. The decisions are [`plan`], pure; [`reconcile`] carries them out.
use super::deployment::template_hash;
use super::{
    Controller, Ctx, Requeue, availability, gc, owned, owner_keys, pod_from_template, sooner,
};
use crate::events;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    CONTROLLER_REVISION_LABEL, ControllerRevision, EventType, Kind, Object, ObjectKey, ObjectMeta,
    OwnerReference, POD_INDEX_LABEL, PersistentVolumeClaim, PersistentVolumeClaimStatus,
    PersistentVolumeClaimVolumeSource, Pod, PodTemplateSpec, STATEFULSET_POD_NAME_LABEL,
    StatefulSet, StatefulSetStatus, Volume,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// The source component of this controller's events (Kubernetes' name).
const COMPONENT: &str = "statefulset-controller";

pub(crate) const CONTROLLER: Controller = Controller {
    name: "statefulset",
    kind: Kind::StatefulSet,
    keys_of,
    all_on,
    reconcile,
};

fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::StatefulSet => vec![e.key.clone()],
        Kind::Pod | Kind::ControllerRevision => owner_keys(e, Kind::StatefulSet),
        _ => vec![],
    }
}

/// A deleted claim may be one a waiting pod needs again; claims do not always name their set
/// (only with whenDeleted: Delete), so every StatefulSet looks.
fn all_on(e: &StoreEvent) -> bool {
    e.key.kind == Kind::PersistentVolumeClaim && e.object.is_none()
}

// ------------------------------------------------------------------ the pure part

/// How far one ordinal's pod has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Health {
    /// Succeeded or Failed: to be replaced under the same name.
    Finished,
    /// Created, not yet Running and Ready.
    Starting,
    /// Running and Ready, not yet for minReadySeconds.
    Ready,
    /// Running and Ready for minReadySeconds.
    Available,
}

/// One existing pod of the set.
#[derive(Clone, Debug)]
pub(crate) struct Replica {
    pub ordinal: i32,
    /// Its `controller-revision-hash`.
    pub revision: String,
    pub health: Health,
}

/// The parts of the spec the ordinal decisions depend on.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Policy {
    pub replicas: i32,
    /// podManagementPolicy Parallel (else OrderedReady).
    pub parallel: bool,
    /// updateStrategy OnDelete (else RollingUpdate with `partition`).
    pub on_delete: bool,
    pub partition: i32,
}

/// Which template a new pod gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Revision {
    /// The current revision's: ordinals below a RollingUpdate's partition keep it.
    Current,
    /// The set's template now.
    Update,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    Finished,
    ScaledDown,
    Outdated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    Create { ordinal: i32, revision: Revision },
    Delete { ordinal: i32, why: Why },
}

/// What to do next, as Kubernetes' StatefulSet controller decides it: missing and finished
/// replicas first (lowest ordinal first; OrderedReady stops at the first one it acts on or
/// that is not yet available), then scale-down from the highest ordinal (OrderedReady: one
/// at a time, and not past an unhealthy pod other than the first unhealthy one), then one step
/// of a RollingUpdate from the highest ordinal down to the partition (an outdated pod is
/// deleted; its replacement comes on the next pass; an updated pod not yet available waits).
pub(crate) fn plan(policy: &Policy, update_revision: &str, pods: &[Replica]) -> Vec<Step> {
    let ordered = !policy.parallel;
    let replicas = policy.replicas.max(0);
    let mut slots: Vec<Option<&Replica>> = vec![None; replicas as usize];
    let mut condemned: Vec<&Replica> = Vec::new();
    for p in pods {
        if p.ordinal < replicas {
            slots[p.ordinal as usize] = Some(p);
        } else {
            condemned.push(p);
        }
    }
    condemned.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    let first_unhealthy = slots
        .iter()
        .flatten()
        .chain(condemned.iter())
        .find(|p| p.health < Health::Ready)
        .map(|p| p.ordinal);
    let revision_for = |ordinal: i32| {
        if !policy.on_delete && ordinal < policy.partition {
            Revision::Current
        } else {
            Revision::Update
        }
    };
    let mut steps = Vec::new();

    for (ordinal, slot) in (0..replicas).zip(&slots) {
        let create = Step::Create {
            ordinal,
            revision: revision_for(ordinal),
        };
        match slot {
            None => steps.push(create),
            Some(p) if p.health == Health::Finished => {
                steps.push(Step::Delete {
                    ordinal,
                    why: Why::Finished,
                });
                steps.push(create);
            }
            Some(p) if p.health == Health::Available || !ordered => continue,
            // Created but not yet available: OrderedReady waits for it.
            Some(_) => return steps,
        }
        if ordered {
            return steps;
        }
    }

    // Every replica below `replicas` exists (OrderedReady: and is available). Scale down.
    for p in &condemned {
        if ordered && p.health != Health::Available && first_unhealthy != Some(p.ordinal) {
            return steps;
        }
        steps.push(Step::Delete {
            ordinal: p.ordinal,
            why: Why::ScaledDown,
        });
        if ordered {
            return steps;
        }
    }

    if policy.on_delete {
        return steps;
    }
    for ordinal in (policy.partition.max(0)..replicas).rev() {
        match slots[ordinal as usize] {
            Some(p) if p.health == Health::Finished => return steps,
            Some(p) if p.revision != update_revision => {
                steps.push(Step::Delete {
                    ordinal,
                    why: Why::Outdated,
                });
                return steps;
            }
            Some(p) if p.health == Health::Available => {}
            // Being created in this pass, or updated and not yet available: wait.
            _ => return steps,
        }
    }
    steps
}

// ------------------------------------------------------------------ carrying it out

/// Re-reads the set, its pods, claims and revisions, and converges them; one transaction.
pub fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let Some(Object::StatefulSet(mut sts)) = tx.get(key)? else {
        gc::delete_orphans_of(tx, key)?;
        return Ok(None);
    };
    let original_status = sts.status.clone();
    let revs = revisions(tx, &sts)?;
    let mut pods: BTreeMap<i32, Pod> = BTreeMap::new();
    for o in owned(tx, Kind::Pod, &key.namespace, &sts.metadata.uid)? {
        if let Object::Pod(p) = o
            && let Some(ordinal) = sts.ordinal_of(&p.metadata.name)
        {
            pods.insert(ordinal, p);
        }
    }
    let min_ready = Duration::from_secs(sts.spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let mut requeue = None;
    let mut health = |p: &Pod| {
        if p.is_terminal() {
            Health::Finished
        } else if p.status.phase == "Running" && p.is_ready() {
            let (ok, later) = availability(p, min_ready, ctx.now);
            requeue = sooner(requeue, later);
            if ok { Health::Available } else { Health::Ready }
        } else {
            Health::Starting
        }
    };
    let replicas: Vec<Replica> = pods
        .iter()
        .map(|(ordinal, p)| Replica {
            ordinal: *ordinal,
            revision: revision_of(p).to_string(),
            health: health(p),
        })
        .collect();
    let policy = Policy {
        replicas: sts.replicas(),
        parallel: sts.is_parallel(),
        on_delete: sts.is_on_delete(),
        partition: sts.partition(),
    };
    let steps = plan(&policy, &revs.update, &replicas);

    let mut after = pods.clone();
    for step in steps {
        match step {
            Step::Delete { ordinal, why } => {
                let name = sts.pod_name(ordinal);
                if let Some(p) = pods.get(&ordinal)
                    && super::on_silent_node(tx, p)?
                {
                    // It may still run there; deleting it would let a second pod of the same
                    // name start elsewhere. Done once its node is heard from (or removed).
                    continue;
                }
                tx.delete(&ObjectKey::new(Kind::Pod, &key.namespace, &name))?;
                after.remove(&ordinal);
                info!(statefulset = %key, pod = %name, reason = ?why, "deleted pod");
                let message = format!(
                    "delete Pod {name} in StatefulSet {} successful",
                    sts.metadata.name
                );
                event(tx, &sts, "SuccessfulDelete", &message, ctx.now)?;
            }
            Step::Create { ordinal, revision } => {
                let name = sts.pod_name(ordinal);
                let pod_key = ObjectKey::new(Kind::Pod, &key.namespace, &name);
                if tx.get(&pod_key)?.is_some() {
                    // A pod of that name that is not ours: never overwrite it (its uid would
                    // carry a different spec); the set waits until it is gone.
                    warn!(statefulset = %key, pod = %name, "a pod of this name exists and is not owned by the statefulset");
                    continue;
                }
                create_claims(tx, &sts, ordinal, ctx.now)?;
                let (template, rev) = match revision {
                    Revision::Current => (&revs.current_template, &revs.current),
                    Revision::Update => (&sts.spec.template, &revs.update),
                };
                let pod = replica_pod(&sts, template, rev, ordinal);
                tx.put(Object::Pod(pod.clone()))?;
                after.insert(ordinal, pod);
                info!(statefulset = %key, pod = %name, revision = %rev, "created pod");
                let message = format!(
                    "create Pod {name} in StatefulSet {} successful",
                    sts.metadata.name
                );
                event(tx, &sts, "SuccessfulCreate", &message, ctx.now)?;
            }
        }
    }
    // A pod still waiting for a node gets back a claim deleted under it.
    for (ordinal, p) in &after {
        if p.spec.node_name.is_none() {
            create_claims(tx, &sts, *ordinal, ctx.now)?;
        }
    }
    retain_or_release_claims(tx, &sts, &pods, &after)?;
    trim_history(tx, &sts, &revs, &after)?;

    let mut status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        current_revision: revs.current.clone(),
        update_revision: revs.update.clone(),
        ..Default::default()
    };
    for p in after.values() {
        status.replicas += 1;
        if p.status.phase == "Running" && p.is_ready() {
            status.ready_replicas += 1;
            let (ok, later) = availability(p, min_ready, ctx.now);
            status.available_replicas += ok as i32;
            requeue = sooner(requeue, later);
        }
        let rev = revision_of(p);
        status.current_replicas += (rev == status.current_revision) as i32;
        status.updated_replicas += (rev == status.update_revision) as i32;
    }
    // Every pod at the update revision and ready: the rollout is complete.
    if status.updated_replicas == status.replicas && status.ready_replicas == status.replicas {
        status.current_revision = status.update_revision.clone();
        status.current_replicas = status.updated_replicas;
    }
    if status != original_status {
        sts.status = status;
        tx.put(Object::StatefulSet(sts))?;
    }
    Ok(requeue)
}

fn revision_of(p: &Pod) -> &str {
    p.metadata
        .labels
        .get(CONTROLLER_REVISION_LABEL)
        .map_or("", String::as_str)
}

/// The set's revisions: the update revision (created, or renumbered when an old template
/// comes back), the current one, and every revision the set owns.
struct Revisions {
    update: String,
    current: String,
    current_template: PodTemplateSpec,
    owned: Vec<ControllerRevision>,
}

fn revisions(tx: &mut Tx<'_>, sts: &StatefulSet) -> Result<Revisions, StoreError> {
    let ns = sts.metadata.namespace.as_deref().unwrap_or("default");
    let update = format!(
        "{}-{}",
        sts.metadata.name,
        template_hash(&sts.spec.template)
    );
    let mut revs: Vec<ControllerRevision> =
        owned(tx, Kind::ControllerRevision, ns, &sts.metadata.uid)?
            .into_iter()
            .filter_map(|o| match o {
                Object::ControllerRevision(r) => Some(r),
                _ => None,
            })
            .collect();
    let newest = revs.iter().map(|r| r.revision).max().unwrap_or(0);
    match revs.iter_mut().find(|r| r.metadata.name == update) {
        // An earlier template is back: it becomes the newest revision again.
        Some(r) if r.revision < newest => {
            r.revision = newest + 1;
            tx.put(Object::ControllerRevision(r.clone()))?;
        }
        Some(_) => {}
        None => {
            let r = ControllerRevision {
                metadata: ObjectMeta {
                    name: update.clone(),
                    namespace: sts.metadata.namespace.clone(),
                    labels: sts.spec.template.metadata.labels.clone(),
                    owner_references: vec![owner_ref(sts, true)],
                    ..Default::default()
                },
                data: serde_json::json!({"spec": {"template": sts.spec.template}}),
                revision: newest + 1,
                ..Default::default()
            };
            tx.put(Object::ControllerRevision(r.clone()))?;
            revs.push(r);
        }
    }
    let current = match &sts.status.current_revision {
        c if !c.is_empty() && revs.iter().any(|r| &r.metadata.name == c) => c.clone(),
        _ => update.clone(),
    };
    let current_template = revs
        .iter()
        .find(|r| r.metadata.name == current)
        .and_then(ControllerRevision::template)
        .unwrap_or_else(|| sts.spec.template.clone());
    Ok(Revisions {
        update,
        current,
        current_template,
        owned: revs,
    })
}

/// Deletes the oldest revisions no pod uses beyond revisionHistoryLimit (default 10); the
/// current and update revisions always stay.
fn trim_history(
    tx: &mut Tx<'_>,
    sts: &StatefulSet,
    revs: &Revisions,
    pods: &BTreeMap<i32, Pod>,
) -> Result<(), StoreError> {
    let limit = sts.spec.revision_history_limit.unwrap_or(10).max(0) as usize;
    let live: BTreeSet<&str> = pods
        .values()
        .map(revision_of)
        .chain([revs.current.as_str(), revs.update.as_str()])
        .collect();
    let mut old: Vec<&ControllerRevision> = revs
        .owned
        .iter()
        .filter(|r| !live.contains(r.metadata.name.as_str()))
        .collect();
    old.sort_by_key(|r| r.revision);
    let ns = sts.metadata.namespace.as_deref().unwrap_or("default");
    for r in old.iter().take(old.len().saturating_sub(limit)) {
        tx.delete(&ObjectKey::new(
            Kind::ControllerRevision,
            ns,
            &r.metadata.name,
        ))?;
    }
    Ok(())
}

/// A Normal event on the set, from this controller.
fn event(
    tx: &mut Tx<'_>,
    sts: &StatefulSet,
    reason: &str,
    message: &str,
    now: SystemTime,
) -> Result<(), StoreError> {
    events::record(
        tx,
        &Object::StatefulSet(sts.clone()).reference(),
        EventType::Normal,
        reason,
        message,
        COMPONENT,
        "",
        now,
    )
}

/// A reference to the set: as controller (its pods and revisions), or as plain owner (claims
/// under whenDeleted: Delete, as Kubernetes marks them).
fn owner_ref(sts: &StatefulSet, controller: bool) -> OwnerReference {
    OwnerReference {
        api_version: Kind::StatefulSet.api_version().into(),
        kind: Kind::StatefulSet.as_str().into(),
        name: sts.metadata.name.clone(),
        uid: sts.metadata.uid.clone(),
        controller: controller.then_some(true),
    }
}

/// Pod `ordinal` from `template` at `revision`: its stable name and hostname, the set's
/// labels, and one volume per claim template naming the ordinal's claim.
fn replica_pod(sts: &StatefulSet, template: &PodTemplateSpec, revision: &str, ordinal: i32) -> Pod {
    let mut pod = pod_from_template(
        template,
        &sts.metadata,
        Kind::StatefulSet,
        &sts.metadata.name,
    );
    let name = sts.pod_name(ordinal);
    pod.metadata.name = name.clone();
    let labels = &mut pod.metadata.labels;
    labels.insert(CONTROLLER_REVISION_LABEL.into(), revision.into());
    labels.insert(STATEFULSET_POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ordinal.to_string());
    pod.spec.hostname = Some(name);
    pod.spec.subdomain = sts.spec.service_name.clone().filter(|s| !s.is_empty());
    for t in &sts.spec.volume_claim_templates {
        let volume = &t.metadata.name;
        pod.spec.volumes.retain(|v| &v.name != volume);
        pod.spec.volumes.push(Volume {
            name: volume.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: sts.claim_name(volume, ordinal),
                read_only: false,
            }),
            ..Default::default()
        });
    }
    pod
}

/// Creates the ordinal's claims that do not exist yet: the template's metadata plus the set's
/// selector labels, Pending until its first pod is scheduled.
fn create_claims(
    tx: &mut Tx<'_>,
    sts: &StatefulSet,
    ordinal: i32,
    now: SystemTime,
) -> Result<(), StoreError> {
    let ns = sts.metadata.namespace.as_deref().unwrap_or("default");
    for t in &sts.spec.volume_claim_templates {
        let name = sts.claim_name(&t.metadata.name, ordinal);
        if tx
            .get(&ObjectKey::new(Kind::PersistentVolumeClaim, ns, &name))?
            .is_some()
        {
            continue;
        }
        let mut labels = t.metadata.labels.clone();
        labels.extend(sts.spec.selector.match_labels.clone());
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: Some(ns.to_string()),
                labels,
                annotations: t.metadata.annotations.clone(),
                owner_references: if sts.deletes_claims_with_set() {
                    vec![owner_ref(sts, false)]
                } else {
                    Vec::new()
                },
                ..Default::default()
            },
            spec: t.spec.clone(),
            status: PersistentVolumeClaimStatus {
                phase: "Pending".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        tx.put(Object::PersistentVolumeClaim(claim))?;
        info!(statefulset = %sts.metadata.name, claim = %name, "created claim");
        let message = format!(
            "create Claim {name} Pod {} in StatefulSet {} success",
            sts.pod_name(ordinal),
            sts.metadata.name
        );
        event(tx, sts, "SuccessfulCreate", &message, now)?;
    }
    Ok(())
}

/// The retention policy, level-triggered over the set's claims (by name and selector labels):
/// whenDeleted Delete makes the set an owner of each claim (so deleting the set deletes them)
/// and Retain removes that reference; whenScaled Delete deletes the claims of ordinals at or
/// above `replicas` once their pod is gone.
fn retain_or_release_claims(
    tx: &mut Tx<'_>,
    sts: &StatefulSet,
    before: &BTreeMap<i32, Pod>,
    after: &BTreeMap<i32, Pod>,
) -> Result<(), StoreError> {
    if sts.spec.volume_claim_templates.is_empty() {
        return Ok(());
    }
    let ns = sts.metadata.namespace.as_deref().unwrap_or("default");
    let uid = sts.metadata.uid.as_str();
    for o in tx.list(Kind::PersistentVolumeClaim, Some(ns))? {
        let Object::PersistentVolumeClaim(mut claim) = o else {
            continue;
        };
        let Some((ordinal, _)) = sts.claim_ordinal(&claim.metadata.name) else {
            continue;
        };
        if !sts.spec.selector.matches(&claim.metadata.labels) {
            continue;
        }
        let key = ObjectKey::new(Kind::PersistentVolumeClaim, ns, &claim.metadata.name);
        if sts.deletes_claims_on_scale_down()
            && ordinal >= sts.replicas()
            && !before.contains_key(&ordinal)
            && !after.contains_key(&ordinal)
        {
            tx.delete(&key)?;
            info!(statefulset = %sts.metadata.name, claim = %key.name, "deleted claim of a scaled-down ordinal");
            continue;
        }
        let refs = &mut claim.metadata.owner_references;
        let owned_by_set = refs.iter().any(|r| r.uid == uid);
        match (sts.deletes_claims_with_set(), owned_by_set) {
            (true, false) => refs.push(owner_ref(sts, false)),
            (false, true) => refs.retain(|r| r.uid != uid),
            _ => continue,
        }
        tx.put(Object::PersistentVolumeClaim(claim))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    /// `policy`: replicas, then words `parallel`, `ondelete`, `partition=N`. `pods`:
    /// `ORDINAL:HEALTH:REV` with HEALTH one of f(inished) s(tarting) r(eady) a(vailable) and
    /// REV `u` (the update revision) or anything else.
    fn check(policy: &str, pods: &str, expected: Expect) {
        let mut words = policy.split_whitespace();
        let mut p = Policy {
            replicas: words.next().unwrap().parse().unwrap(),
            parallel: false,
            on_delete: false,
            partition: 0,
        };
        for w in words {
            match w {
                "parallel" => p.parallel = true,
                "ondelete" => p.on_delete = true,
                w => p.partition = w.strip_prefix("partition=").unwrap().parse().unwrap(),
            }
        }
        let pods: Vec<Replica> = pods
            .split_whitespace()
            .map(|r| {
                let mut f = r.split(':');
                let ordinal = f.next().unwrap().parse().unwrap();
                let health = match f.next().unwrap() {
                    "f" => Health::Finished,
                    "s" => Health::Starting,
                    "r" => Health::Ready,
                    "a" => Health::Available,
                    h => panic!("health {h}"),
                };
                Replica {
                    ordinal,
                    revision: f.next().unwrap().to_string(),
                    health,
                }
            })
            .collect();
        let steps: Vec<String> = plan(&p, "u", &pods)
            .iter()
            .map(|s| match s {
                Step::Create { ordinal, revision } => format!("create {ordinal} {revision:?}"),
                Step::Delete { ordinal, why } => format!("delete {ordinal} {why:?}"),
            })
            .collect();
        let shown = if steps.is_empty() {
            "wait".to_string()
        } else {
            steps.join(", ")
        };
        expected.assert_eq(&shown);
    }

    #[test]
    fn ordered_ready_starts_one_at_a_time() {
        check("3", "", expect!["create 0 Update"]);
        check("3", "0:s:u", expect!["wait"]);
        // Ready but not yet for minReadySeconds is not enough.
        check("3", "0:r:u", expect!["wait"]);
        check("3", "0:a:u", expect!["create 1 Update"]);
        check("3", "0:a:u 1:a:u", expect!["create 2 Update"]);
        check("3", "0:a:u 1:a:u 2:a:u", expect!["wait"]);
        // A lower ordinal that is lost again comes first; nothing above it moves meanwhile.
        check("3", "1:a:u 2:a:u", expect!["create 0 Update"]);
        check("3", "0:s:u 2:a:u", expect!["wait"]);
    }

    #[test]
    fn parallel_starts_and_stops_everything_at_once() {
        check("3", "", expect!["create 0 Update"]);
        check(
            "3 parallel",
            "",
            expect!["create 0 Update, create 1 Update, create 2 Update"],
        );
        check(
            "3 parallel",
            "0:s:u",
            expect!["create 1 Update, create 2 Update"],
        );
        check(
            "1 parallel",
            "0:s:u 1:a:u 2:s:u",
            expect!["delete 2 ScaledDown, delete 1 ScaledDown"],
        );
    }

    #[test]
    fn finished_pods_are_replaced_under_their_name() {
        check(
            "3",
            "0:a:u 1:f:u 2:a:u",
            expect!["delete 1 Finished, create 1 Update"],
        );
        check(
            "3",
            "0:f:u 1:f:u",
            expect!["delete 0 Finished, create 0 Update"],
        );
        check(
            "3 parallel",
            "0:f:u 1:f:u 2:a:u",
            expect!["delete 0 Finished, create 0 Update, delete 1 Finished, create 1 Update"],
        );
    }

    #[test]
    fn ordered_scale_down_goes_from_the_highest_ordinal() {
        check("1", "0:a:u 1:a:u 2:a:u", expect!["delete 2 ScaledDown"]);
        check("1", "0:a:u 1:a:u", expect!["delete 1 ScaledDown"]);
        // Not while a remaining replica is unhealthy.
        check("1", "0:s:u 1:a:u 2:a:u", expect!["wait"]);
        // The first unhealthy pod may go; a healthy one above it goes first.
        check("1", "0:a:u 1:a:u 2:s:u", expect!["delete 2 ScaledDown"]);
        check("1", "0:a:u 1:s:u 2:a:u", expect!["delete 2 ScaledDown"]);
        check("1", "0:a:u 1:s:u 2:s:u", expect!["delete 2 ScaledDown"]);
        check("1", "0:a:u 1:r:u", expect!["wait"]);
        check("0", "0:a:u", expect!["delete 0 ScaledDown"]);
    }

    #[test]
    fn rolling_update_from_the_highest_ordinal_to_the_partition() {
        check("3", "0:a:c 1:a:c 2:a:c", expect!["delete 2 Outdated"]);
        check("3", "0:a:c 1:a:c", expect!["create 2 Update"]);
        check("3", "0:a:c 1:a:c 2:s:u", expect!["wait"]);
        check("3", "0:a:c 1:a:c 2:r:u", expect!["wait"]);
        check("3", "0:a:c 1:a:c 2:a:u", expect!["delete 1 Outdated"]);
        check("3", "0:a:c 1:a:u 2:a:u", expect!["delete 0 Outdated"]);
        check("3", "0:a:u 1:a:u 2:a:u", expect!["wait"]);
        // partition=1: web-0 keeps the current revision, also when it is recreated.
        check(
            "3 partition=1",
            "0:a:c 1:a:c 2:a:c",
            expect!["delete 2 Outdated"],
        );
        check("3 partition=1", "0:a:c 1:a:u 2:a:u", expect!["wait"]);
        check("3 partition=1", "1:a:u 2:a:u", expect!["create 0 Current"]);
        check("3 partition=3", "0:a:c 1:a:c 2:a:c", expect!["wait"]);
        check("3 partition=5", "0:a:c", expect!["create 1 Current"]);
        // Scaling up mid-rollout: new ordinals above the partition are at the new revision.
        check(
            "4 partition=1",
            "0:a:c 1:a:c 2:a:c",
            expect!["create 3 Update"],
        );
        // Parallel still updates one pod at a time, an unhealthy outdated one too.
        check(
            "3 parallel",
            "0:s:c 1:a:c 2:s:c",
            expect!["delete 2 Outdated"],
        );
        check("3 parallel", "0:s:c 1:a:c 2:s:u", expect!["wait"]);
    }

    #[test]
    fn on_delete_replaces_only_deleted_pods() {
        check("3 ondelete", "0:a:c 1:a:c 2:a:c", expect!["wait"]);
        check("3 ondelete", "0:a:c 2:a:c", expect!["create 1 Update"]);
        check(
            "3 ondelete",
            "0:a:c 1:f:c 2:a:c",
            expect!["delete 1 Finished, create 1 Update"],
        );
    }

    // ---------------------------------------------------------- reconcile on a real store

    use crate::store::Store;
    use flotilla_proto::api::Condition;

    const SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  replicas: 3
  serviceName: web
  selector: {matchLabels: {app: web}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: PARTITION}}
  persistentVolumeClaimRetentionPolicy: {whenDeleted: WHEN_DELETED, whenScaled: WHEN_SCALED}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: chaos:latest
        env: [{name: VERSION, value: "VERSION"}]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data, labels: {tier: db}}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        key: ObjectKey,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.redb"), &[3u8; 32]).unwrap();
            Fixture {
                _dir: dir,
                store,
                key: ObjectKey::new(Kind::StatefulSet, "default", "web"),
            }
        }

        fn apply(&self, replicas: i32, partition: i32, retention: (&str, &str), version: &str) {
            let text = SET
                .replace("replicas: 3", &format!("replicas: {replicas}"))
                .replace("PARTITION", &partition.to_string())
                .replace("WHEN_DELETED", retention.0)
                .replace("WHEN_SCALED", retention.1)
                .replace("\"VERSION\"", &format!("{version:?}"));
            let mut parsed = flotilla_proto::manifest::parse(&text).unwrap();
            let mut obj = parsed.remove(0).object;
            self.store
                .write(|tx| {
                    if let (Some(Object::StatefulSet(old)), Object::StatefulSet(new)) =
                        (tx.get(&self.key)?, &mut obj)
                    {
                        new.status = old.status;
                    }
                    tx.put(obj)
                })
                .unwrap();
        }

        fn reconcile(&self) {
            let ctx = Ctx {
                now: std::time::SystemTime::now(),
                job_backoff: Duration::from_secs(1),
            };
            self.store
                .write(|tx| reconcile(tx, &self.key, &ctx))
                .unwrap();
        }

        fn list<T>(&self, kind: Kind, f: impl Fn(Object) -> Option<T>) -> Vec<T> {
            let (objs, _) = self.store.list(kind, Some("default")).unwrap();
            objs.into_iter().filter_map(f).collect()
        }

        fn pods(&self) -> Vec<Pod> {
            self.list(Kind::Pod, |o| match o {
                Object::Pod(p) => Some(p),
                _ => None,
            })
        }

        /// `name@new` (the set's template now) or `name@old` per pod, `!` when not ready.
        fn shown(&self) -> String {
            let sts = self.set();
            let update = format!("web-{}", template_hash(&sts.spec.template));
            self.pods()
                .iter()
                .map(|p| {
                    let rev = revision_of(p);
                    let which = if rev == update { "new" } else { "old" };
                    format!(
                        "{}@{which}{}",
                        p.metadata.name,
                        if p.is_ready() { "" } else { "!" }
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        }

        fn claims(&self) -> Vec<PersistentVolumeClaim> {
            self.list(Kind::PersistentVolumeClaim, |o| match o {
                Object::PersistentVolumeClaim(c) => Some(c),
                _ => None,
            })
        }

        fn claim_names(&self) -> Vec<String> {
            self.claims().into_iter().map(|c| c.metadata.name).collect()
        }

        fn set(&self) -> StatefulSet {
            match self.store.get(&self.key).unwrap() {
                Some(Object::StatefulSet(s)) => s,
                other => panic!("no statefulset: {other:?}"),
            }
        }

        /// What the scheduler and the agent would do: bind and start every pod, Ready.
        fn run_pods(&self) {
            self.store
                .write(|tx| {
                    for mut p in super::super::pods_in(tx, "default")? {
                        if p.is_ready() {
                            continue;
                        }
                        p.spec.node_name = Some("node-0".into());
                        p.status.phase = "Running".into();
                        p.status.conditions = vec![Condition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            last_transition_time: Some("2020-01-01T00:00:00Z".into()),
                            ..Default::default()
                        }];
                        tx.put(Object::Pod(p))?;
                    }
                    Ok(())
                })
                .unwrap();
        }

        /// Reconciles and runs pods until nothing changes; returns the states seen.
        fn settle(&self) -> Vec<String> {
            let mut seen = vec![self.shown()];
            for _ in 0..30 {
                self.reconcile();
                self.run_pods();
                let now = self.shown();
                if seen.last() == Some(&now) {
                    self.reconcile();
                    return seen;
                }
                seen.push(now);
            }
            panic!("did not settle: {seen:?}");
        }

        fn delete_pod(&self, name: &str) {
            self.store
                .write(|tx| tx.delete(&ObjectKey::new(Kind::Pod, "default", name)))
                .unwrap();
        }
    }

    #[test]
    fn a_set_starts_in_order_rolls_a_partition_and_scales_down() {
        let f = Fixture::new();
        f.apply(3, 0, ("Retain", "Retain"), "v1");
        f.reconcile();
        // One pod, with its claim, and nothing more until it is Ready.
        f.reconcile();
        assert_eq!(f.shown(), "web-0@new!");
        assert_eq!(f.claim_names(), ["data-web-0"]);
        let web0 = &f.pods()[0];
        assert_eq!(web0.spec.hostname.as_deref(), Some("web-0"));
        assert_eq!(web0.spec.subdomain.as_deref(), Some("web"));
        let labels: Vec<String> = web0
            .metadata
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        expect![[r#"
            [
                "app=web",
                "apps.kubernetes.io/pod-index=0",
                "controller-revision-hash=web-a9df502e26",
                "statefulset.kubernetes.io/pod-name=web-0",
            ]
        "#]]
        .assert_debug_eq(&labels);
        let claim_volume = web0.spec.volumes.iter().find(|v| v.name == "data").unwrap();
        assert_eq!(
            claim_volume
                .persistent_volume_claim
                .as_ref()
                .unwrap()
                .claim_name,
            "data-web-0"
        );
        let claim = &f.claims()[0];
        assert_eq!(claim.metadata.labels["tier"], "db");
        assert_eq!(claim.metadata.labels["app"], "web");
        assert!(
            claim.metadata.owner_references.is_empty(),
            "retained claims have no owner"
        );

        expect![[r#"
            [
                "web-0@new!",
                "web-0@new",
                "web-0@new web-1@new",
                "web-0@new web-1@new web-2@new",
            ]
        "#]]
        .assert_debug_eq(&f.settle());
        let st = f.set().status;
        assert_eq!(
            (
                st.replicas,
                st.ready_replicas,
                st.available_replicas,
                st.updated_replicas,
                st.current_replicas
            ),
            (3, 3, 3, 3, 3)
        );
        assert_eq!(st.current_revision, st.update_revision);
        let v1 = st.update_revision.clone();

        // A template change with partition 1: web-2, then web-1; web-0 stays at v1.
        f.apply(3, 1, ("Retain", "Retain"), "v2");
        expect![[r#"
            [
                "web-0@old web-1@old web-2@old",
                "web-0@old web-1@old",
                "web-0@old web-1@old web-2@new",
                "web-0@old web-2@new",
                "web-0@old web-1@new web-2@new",
            ]
        "#]]
        .assert_debug_eq(&f.settle());
        let st = f.set().status;
        assert_eq!(
            st.current_revision, v1,
            "the rollout is not complete below the partition"
        );
        assert_ne!(st.update_revision, v1);
        assert_eq!((st.updated_replicas, st.current_replicas), (2, 1));
        // web-0, deleted, comes back at the current revision with the old template.
        f.delete_pod("web-0");
        f.settle();
        let web0 = f
            .pods()
            .into_iter()
            .find(|p| p.metadata.name == "web-0")
            .unwrap();
        assert_eq!(revision_of(&web0), v1);
        assert_eq!(web0.spec.containers[0].env[0].value.as_deref(), Some("v1"));
        let revisions = f.list(Kind::ControllerRevision, |o| match o {
            Object::ControllerRevision(r) => Some((r.metadata.name, r.revision)),
            _ => None,
        });
        assert_eq!(revisions.len(), 2, "{revisions:?}");

        // Partition 0 finishes the rollout; the current revision follows.
        f.apply(3, 0, ("Retain", "Retain"), "v2");
        f.settle();
        let st = f.set().status;
        assert_eq!(st.current_revision, st.update_revision);
        assert_eq!(st.current_replicas, 3);

        // Scale down: web-2 first, then web-1; claims stay (whenScaled Retain).
        f.apply(1, 0, ("Retain", "Retain"), "v2");
        expect![[r#"
            [
                "web-0@new web-1@new web-2@new",
                "web-0@new web-1@new",
                "web-0@new",
            ]
        "#]]
        .assert_debug_eq(&f.settle());
        assert_eq!(f.claim_names(), ["data-web-0", "data-web-1", "data-web-2"]);

        // Deleting the set takes its pods and revisions, and leaves the retained claims.
        f.store
            .write(|tx| gc::delete_cascade(tx, &f.key).map(|_| ()))
            .unwrap();
        assert!(f.pods().is_empty());
        assert_eq!(f.claim_names().len(), 3);
        assert!(f.list(Kind::ControllerRevision, Some).is_empty());
    }

    #[test]
    fn retention_policy_delete_removes_claims_with_the_ordinal_or_the_set() {
        let f = Fixture::new();
        f.apply(3, 0, ("Retain", "Delete"), "v1");
        f.settle();
        assert_eq!(f.claim_names(), ["data-web-0", "data-web-1", "data-web-2"]);
        f.apply(1, 0, ("Retain", "Delete"), "v1");
        f.settle();
        assert_eq!(f.shown(), "web-0@new");
        assert_eq!(f.claim_names(), ["data-web-0"]);

        // whenDeleted Delete makes the set an owner of its claims (switched on a live set).
        f.apply(2, 0, ("Delete", "Retain"), "v1");
        f.settle();
        let uid = f.set().metadata.uid;
        for c in f.claims() {
            let refs = &c.metadata.owner_references;
            assert!(
                refs.iter()
                    .any(|r| r.uid == uid && r.kind == "StatefulSet" && r.controller.is_none()),
                "{}: {refs:?}",
                c.metadata.name
            );
        }
        f.store
            .write(|tx| gc::delete_cascade(tx, &f.key).map(|_| ()))
            .unwrap();
        assert!(f.pods().is_empty());
        assert!(f.claims().is_empty());
    }

    #[test]
    fn a_failed_pod_is_recreated_with_the_same_name_and_claim() {
        let f = Fixture::new();
        f.apply(2, 0, ("Retain", "Retain"), "v1");
        f.settle();
        let old_uid = f.pods()[1].metadata.uid.clone();
        f.store
            .write(|tx| {
                let key = ObjectKey::new(Kind::Pod, "default", "web-1");
                let Some(Object::Pod(mut p)) = tx.get(&key)? else {
                    panic!("no web-1")
                };
                p.status.phase = "Failed".into();
                tx.put(Object::Pod(p))
            })
            .unwrap();
        f.reconcile();
        let web1 = f
            .pods()
            .into_iter()
            .find(|p| p.metadata.name == "web-1")
            .unwrap();
        assert_ne!(web1.metadata.uid, old_uid);
        assert_eq!(web1.status.phase, "Pending");
        assert_eq!(f.claim_names(), ["data-web-0", "data-web-1"]);
    }
}
