//! The Deployment controller: Deployment → ReplicaSets → pods, as Kubernetes does it. One
//! ReplicaSet per pod template (named `NAME-<template-hash>`), rolled with RollingUpdate
//! (maxSurge/maxUnavailable, counting only available pods) or Recreate; proportional scaling
//! mid-rollout; pause; revisions for `rollout undo`; history trimmed to revisionHistoryLimit;
//! status with Available and Progressing conditions and the progress deadline.
use super::{Controller, Ctx, Requeue, availability, gc, owner_keys, pods_in, sooner};
use crate::events;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    CHANGE_CAUSE_ANNOTATION, Condition, Deployment, DeploymentStatus, EventType, Kind, Object,
    ObjectKey, OwnerReference, PodTemplateSpec, REVISION_ANNOTATION, ReplicaSet, ReplicaSetSpec,
    TEMPLATE_HASH_LABEL, condition,
};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime};
use tracing::info;

/// On each ReplicaSet: the Deployment's replicas (and replicas + surge) when it was last
/// scaled, so a change of `spec.replicas` is recognised as a scaling event (Kubernetes' names).
const DESIRED_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
const DEFAULT_HISTORY: usize = 10;
/// The source component of this controller's events (Kubernetes' name).
const COMPONENT: &str = "deployment-controller";
const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);

pub(crate) const CONTROLLER: Controller = Controller {
    name: "deployment",
    kind: Kind::Deployment,
    keys_of,
    all_on: super::never,
    reconcile,
};

/// The Deployments an event concerns: the Deployment itself, or the owner of a ReplicaSet
/// (ReplicaSet status follows its pods, so pod changes arrive this way too).
fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::Deployment => vec![e.key.clone()],
        Kind::ReplicaSet => owner_keys(e, Kind::Deployment),
        _ => vec![],
    }
}

/// A short, stable hash of a pod template: the ReplicaSet name suffix and pod-template-hash.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(template).unwrap_or_default();
    hex::encode(&Sha256::digest(&json)[..5])
}

/// One ReplicaSet of the Deployment with its pods counted in this transaction.
struct Rs {
    rs: ReplicaSet,
    /// Its replicas when this reconcile began (0 for one it created), for ScalingReplicaSet.
    from: i32,
    pods: i32,
    ready: i32,
    available: i32,
    dirty: bool,
}

impl Rs {
    fn replicas(&self) -> i32 {
        self.rs.replicas()
    }

    /// Available pods that will survive the ReplicaSet's own scale-down (it deletes unready
    /// and newer pods first), so a scale-down written but not yet carried out is not counted
    /// as capacity twice.
    fn available(&self) -> i32 {
        self.available.min(self.replicas())
    }

    fn name(&self) -> &str {
        &self.rs.metadata.name
    }
}

/// The working set of one reconcile.
struct Rollout {
    d: Deployment,
    /// Index into `all` of the ReplicaSet for the current template.
    new: Option<usize>,
    all: Vec<Rs>,
    desired: i32,
    surge: i32,
    unavailable: i32,
    /// Set when this reconcile scaled or created something.
    progressed: bool,
}

impl Rollout {
    fn scale(&mut self, i: usize, replicas: i32) {
        let replicas = replicas.max(0);
        let (desired, max) = (self.desired, self.desired + self.surge);
        let r = &mut self.all[i];
        if r.replicas() != replicas {
            info!(replicaset = %r.name(), from = r.replicas(), to = replicas, "scaling replica set");
            r.rs.spec.replicas = Some(replicas);
            r.dirty = true;
            self.progressed = true;
        }
        let a = &mut r.rs.metadata.annotations;
        for (k, v) in [(DESIRED_ANNOTATION, desired), (MAX_ANNOTATION, max)] {
            if a.get(k).map(String::as_str) != Some(v.to_string().as_str()) {
                a.insert(k.into(), v.to_string());
                r.dirty = true;
            }
        }
    }

    fn old(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.all.len()).filter(move |i| Some(*i) != self.new)
    }

    /// Old ReplicaSets, oldest revision first (scale-down order).
    fn old_oldest_first(&self) -> Vec<usize> {
        let mut old: Vec<usize> = self.old().collect();
        old.sort_by_key(|i| (self.all[*i].rs.revision(), self.all[*i].name().to_string()));
        old
    }

    fn active(&self) -> Vec<usize> {
        (0..self.all.len())
            .filter(|i| self.all[*i].replicas() > 0)
            .collect()
    }

    fn spec_total(&self) -> i32 {
        self.all.iter().map(Rs::replicas).sum()
    }

    /// Per ReplicaSet the larger of its spec and the pods it still has.
    fn pods_or_spec_total(&self) -> i32 {
        self.all.iter().map(|r| r.replicas().max(r.pods)).sum()
    }

    fn available_total(&self) -> i32 {
        self.all.iter().map(Rs::available).sum()
    }

    fn old_pods(&self) -> i32 {
        self.old().map(|i| self.all[i].pods).sum()
    }

    fn new_rs(&self) -> Option<&Rs> {
        self.new.map(|i| &self.all[i])
    }
}

/// Re-reads current state and converges it; idempotent. Runs inside one write transaction.
pub fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let now = ctx.now;
    let Some(Object::Deployment(d)) = tx.get(key)? else {
        gc::delete_orphans_of(tx, key)?;
        return Ok(None);
    };
    let pods = pods_in(tx, &key.namespace)?;
    let min_ready = Duration::from_secs(d.spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
    let mut requeue = None;
    let mut all = Vec::new();
    for o in tx.list(Kind::ReplicaSet, Some(&key.namespace))? {
        let Object::ReplicaSet(rs) = o else { continue };
        if rs.metadata.controller_uid() != Some(d.metadata.uid.as_str()) {
            continue;
        }
        let (mut n, mut ready, mut available) = (0, 0, 0);
        for p in pods.iter().filter(|p| {
            // A pod lost with its node is replaced by its ReplicaSet and not counted there
            // (proto::disconnect); counting it here would stall rollouts until it returns.
            p.controller_uid() == Some(rs.metadata.uid.as_str())
                && !p.is_terminal()
                && !flotilla_proto::disconnect::is_lost(p)
        }) {
            n += 1;
            ready += p.is_ready() as i32;
            let (ok, later) = availability(p, min_ready, now);
            available += ok as i32;
            requeue = sooner(requeue, later);
        }
        all.push(Rs {
            from: rs.replicas(),
            rs,
            pods: n,
            ready,
            available,
            dirty: false,
        });
    }
    let original = d.clone();
    let hash = template_hash(&d.spec.template);
    let new = all
        .iter()
        .position(|r| r.rs.metadata.labels.get(TEMPLATE_HASH_LABEL) == Some(&hash));
    let (surge, unavailable) = d.surge_and_unavailable();
    let mut ro = Rollout {
        desired: d.replicas(),
        d,
        new,
        all,
        surge,
        unavailable,
        progressed: false,
    };
    let mut progress_reason = None;

    if ro.d.spec.paused || is_scaling_event(&ro) {
        // Paused, or replicas changed: only resize what exists (Kubernetes' `sync`).
        scale_proportionally(&mut ro);
    } else {
        if ro.new.is_none() {
            let replicas = if ro.d.is_recreate() {
                0
            } else {
                let total = ro.spec_total();
                (ro.desired + ro.surge - total).clamp(0, ro.desired)
            };
            create_new(tx, &mut ro, &hash, replicas)?;
            progress_reason = Some("NewReplicaSetCreated");
        }
        sync_revision(&mut ro);
        if ro.d.is_recreate() {
            recreate(&mut ro);
        } else {
            rolling(&mut ro);
        }
    }

    let complete = is_complete(&ro);
    if complete {
        trim_history(tx, &mut ro)?;
    }
    for r in ro.all.iter_mut().filter(|r| r.dirty) {
        r.dirty = false;
        tx.put(Object::ReplicaSet(r.rs.clone()))?;
    }
    let owner = Object::Deployment(original.clone());
    for r in ro.all.iter().filter(|r| r.replicas() != r.from) {
        let way = if r.replicas() > r.from { "up" } else { "down" };
        let message = format!(
            "Scaled {way} replica set {} from {} to {}",
            r.name(),
            r.from,
            r.replicas()
        );
        events::about(
            tx,
            &owner,
            EventType::Normal,
            "ScalingReplicaSet",
            &message,
            COMPONENT,
            now,
        )?;
    }
    let deadline = update_status(&mut ro, complete, progress_reason, now);
    if ro.d != original {
        tx.put(Object::Deployment(ro.d))?;
    }
    Ok(sooner(requeue, deadline))
}

/// A scaling event: some active ReplicaSet was last sized for a different replica count.
fn is_scaling_event(ro: &Rollout) -> bool {
    ro.active().iter().any(|i| {
        ro.all[*i]
            .rs
            .metadata
            .annotations
            .get(DESIRED_ANNOTATION)
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|v| v != ro.desired)
    })
}

/// Resizes the active ReplicaSets to the Deployment's replicas (plus surge while several are
/// active), in proportion to their current sizes; the remainder goes to the largest (newest on
/// ties). With one or no active ReplicaSet, the active (or newest) one takes all.
fn scale_proportionally(ro: &mut Rollout) {
    let active = ro.active();
    if active.len() <= 1 {
        let target = active
            .first()
            .copied()
            .or(ro.new)
            .or_else(|| (0..ro.all.len()).max_by_key(|i| ro.all[*i].rs.revision()));
        if let Some(i) = target {
            ro.scale(i, ro.desired);
        }
        return;
    }
    let allowed = if ro.desired > 0 {
        ro.desired + ro.surge
    } else {
        0
    };
    let total = ro.spec_total().max(1) as i64;
    let mut order = active.clone();
    order.sort_by_key(|i| {
        (
            std::cmp::Reverse(ro.all[*i].replicas()),
            std::cmp::Reverse(ro.all[*i].rs.revision()),
        )
    });
    let mut sizes: Vec<(usize, i32)> = order
        .iter()
        .map(|i| {
            let share = ro.all[*i].replicas() as i64 * allowed as i64 / total;
            (*i, share as i32)
        })
        .collect();
    let leftover = allowed - sizes.iter().map(|(_, n)| n).sum::<i32>();
    if let Some(first) = sizes.first_mut() {
        first.1 += leftover;
    }
    for (i, n) in sizes {
        ro.scale(i, n);
    }
}

fn create_new(
    tx: &mut Tx<'_>,
    ro: &mut Rollout,
    hash: &str,
    replicas: i32,
) -> Result<(), StoreError> {
    let d = &ro.d;
    let name = format!("{}-{hash}", d.metadata.name);
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    if tx
        .get(&ObjectKey::new(Kind::ReplicaSet, &namespace, &name))?
        .is_some()
    {
        return Err(StoreError::Invalid(format!(
            "deployment {}: replica set {name} exists but is not owned by it",
            d.metadata.name
        )));
    }
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut selector = d.spec.selector.clone();
    selector
        .match_labels
        .insert(TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut rs = ReplicaSet::default();
    rs.metadata.name = name;
    rs.metadata.namespace = Some(namespace);
    rs.metadata.labels = template.metadata.labels.clone();
    if let Some(cause) = d.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION) {
        rs.metadata
            .annotations
            .insert(CHANGE_CAUSE_ANNOTATION.into(), cause.clone());
    }
    rs.metadata.owner_references = vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: d.metadata.name.clone(),
        uid: d.metadata.uid.clone(),
        controller: Some(true),
    }];
    rs.spec = ReplicaSetSpec {
        replicas: Some(replicas),
        min_ready_seconds: d.spec.min_ready_seconds,
        selector,
        template,
    };
    for (k, v) in [
        (DESIRED_ANNOTATION, ro.desired),
        (MAX_ANNOTATION, ro.desired + ro.surge),
    ] {
        rs.metadata.annotations.insert(k.into(), v.to_string());
    }
    info!(replicaset = %rs.metadata.name, replicas, "created replica set");
    // `put` fills uid and timestamps; the pods' owner references need the uid.
    let Object::ReplicaSet(rs) = tx.put(Object::ReplicaSet(rs))? else {
        unreachable!("put returns the object it stored")
    };
    ro.all.push(Rs {
        rs,
        from: 0,
        pods: 0,
        ready: 0,
        available: 0,
        dirty: false,
    });
    ro.new = Some(ro.all.len() - 1);
    ro.progressed = true;
    Ok(())
}

/// The new ReplicaSet carries the highest revision (again, after an undo to an old template),
/// and the Deployment mirrors it; minReadySeconds and change-cause follow the Deployment.
fn sync_revision(ro: &mut Rollout) {
    let Some(n) = ro.new else { return };
    let max_old = ro.old().map(|i| ro.all[i].rs.revision()).max().unwrap_or(0);
    let d_cause =
        ro.d.metadata
            .annotations
            .get(CHANGE_CAUSE_ANNOTATION)
            .cloned();
    let min_ready = ro.d.spec.min_ready_seconds;
    let r = &mut ro.all[n];
    if r.rs.revision() <= max_old {
        r.rs.metadata
            .annotations
            .insert(REVISION_ANNOTATION.into(), (max_old + 1).to_string());
        r.dirty = true;
    }
    if let Some(cause) = d_cause
        && r.rs.metadata.annotations.get(CHANGE_CAUSE_ANNOTATION) != Some(&cause)
    {
        r.rs.metadata
            .annotations
            .insert(CHANGE_CAUSE_ANNOTATION.into(), cause);
        r.dirty = true;
    }
    if r.rs.spec.min_ready_seconds != min_ready {
        r.rs.spec.min_ready_seconds = min_ready;
        r.dirty = true;
    }
    let revision = r.rs.revision().to_string();
    ro.d.metadata
        .annotations
        .insert(REVISION_ANNOTATION.into(), revision);
}

/// Recreate: every old pod gone before the new template starts.
fn recreate(ro: &mut Rollout) {
    let old: Vec<usize> = ro.old().collect();
    let mut scaled = false;
    for i in old {
        if ro.all[i].replicas() > 0 {
            ro.scale(i, 0);
            scaled = true;
        }
    }
    if scaled || ro.old_pods() > 0 {
        return;
    }
    if let Some(n) = ro.new {
        ro.scale(n, ro.desired);
    }
}

/// RollingUpdate, in Kubernetes' order: grow the new ReplicaSet within maxSurge; otherwise
/// shrink old ones within maxUnavailable (their unavailable pods first).
fn rolling(ro: &mut Rollout) {
    let Some(n) = ro.new else { return };
    let new_replicas = ro.all[n].replicas();
    if new_replicas > ro.desired {
        ro.scale(n, ro.desired);
        return;
    }
    if new_replicas < ro.desired {
        // Pods an old ReplicaSet has not deleted yet still count: the surge bounds pods that
        // exist, not only the sum of the ReplicaSets' specs (which is all Kubernetes counts).
        let room = ro.desired + ro.surge - ro.pods_or_spec_total();
        if room > 0 {
            let up = room.min(ro.desired - new_replicas);
            ro.scale(n, new_replicas + up);
            return;
        }
    }
    let old_replicas: i32 = ro.old().map(|i| ro.all[i].replicas()).sum();
    if old_replicas == 0 {
        return;
    }
    let min_available = ro.desired - ro.unavailable;
    let new_unavailable = (ro.all[n].replicas() - ro.all[n].available()).max(0);
    let max_down = ro.spec_total() - min_available - new_unavailable;
    if max_down <= 0 {
        return;
    }
    // Unavailable old pods go first: they hold no capacity.
    let mut cleaned = 0;
    for i in ro.old_oldest_first() {
        if cleaned >= max_down {
            break;
        }
        let r = &ro.all[i];
        let unhealthy = (r.replicas() - r.available()).max(0);
        if r.replicas() == 0 || unhealthy == 0 {
            continue;
        }
        let down = unhealthy.min(max_down - cleaned);
        let to = r.replicas() - down;
        ro.scale(i, to);
        cleaned += down;
    }
    // Then available old pods, as far as availability allows.
    let budget = ro.available_total() - min_available;
    let mut down_total = 0;
    for i in ro.old_oldest_first() {
        if down_total >= budget {
            break;
        }
        let replicas = ro.all[i].replicas();
        if replicas == 0 {
            continue;
        }
        let down = replicas.min(budget - down_total);
        ro.scale(i, replicas - down);
        down_total += down;
    }
}

/// Done: every replica is of the new template and available, and no old pod is left.
fn is_complete(ro: &Rollout) -> bool {
    let Some(new) = ro.new_rs() else {
        return ro.desired == 0 && ro.old_pods() == 0;
    };
    new.replicas() == ro.desired
        && new.pods == ro.desired
        && new.available() == ro.desired
        && ro.old_pods() == 0
        && ro.old().all(|i| ro.all[i].replicas() == 0)
}

/// Deletes the oldest idle ReplicaSets beyond revisionHistoryLimit.
fn trim_history(tx: &mut Tx<'_>, ro: &mut Rollout) -> Result<(), StoreError> {
    let limit =
        ro.d.spec
            .revision_history_limit
            .map_or(DEFAULT_HISTORY, |l| l.max(0) as usize);
    let mut idle: Vec<usize> = ro
        .old_oldest_first()
        .into_iter()
        .filter(|i| ro.all[*i].replicas() == 0 && ro.all[*i].pods == 0)
        .collect();
    if idle.len() <= limit {
        return Ok(());
    }
    idle.truncate(idle.len() - limit);
    for &i in &idle {
        let key = Object::ReplicaSet(ro.all[i].rs.clone()).key();
        info!(replicaset = %key, "deleting old replica set beyond the history limit");
        gc::delete_cascade(tx, &key)?;
    }
    // Forget them (highest index first so the others keep their places).
    let new_name = ro.new_rs().map(|r| r.name().to_string());
    idle.sort_unstable_by(|a, b| b.cmp(a));
    for i in idle {
        ro.all.remove(i);
    }
    ro.new = new_name.and_then(|n| ro.all.iter().position(|r| r.name() == n));
    Ok(())
}

/// Computes status and conditions; returns when to look again for the progress deadline.
fn update_status(
    ro: &mut Rollout,
    complete: bool,
    reason: Option<&'static str>,
    now: SystemTime,
) -> Requeue {
    let d = &ro.d;
    let pods: i32 = ro.all.iter().map(|r| r.pods).sum();
    let available: i32 = ro.all.iter().map(|r| r.available).sum();
    let new_pods = ro.new_rs().map_or(0, |r| r.pods);
    let old = &d.status;
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: pods,
        updated_replicas: new_pods,
        ready_replicas: ro.all.iter().map(|r| r.ready).sum(),
        available_replicas: available,
        unavailable_replicas: (ro.spec_total() - available).max(0),
        conditions: old.conditions.clone(),
    };
    let stamp = humantime::format_rfc3339_seconds(now).to_string();
    let set = |conds: &mut Vec<Condition>, mut c: Condition, touch: bool| match conds
        .iter_mut()
        .find(|o| o.type_ == c.type_)
    {
        Some(o) => {
            let same = o.status == c.status && o.reason == c.reason;
            c.last_transition_time = if o.status == c.status {
                o.last_transition_time.clone()
            } else {
                Some(stamp.clone())
            };
            c.last_update_time = if same && !touch {
                o.last_update_time.clone()
            } else {
                Some(stamp.clone())
            };
            *o = c;
        }
        None => {
            c.last_transition_time = Some(stamp.clone());
            c.last_update_time = Some(stamp.clone());
            conds.push(c);
        }
    };
    let min_available = ro.desired - ro.unavailable;
    let avail = if available >= min_available {
        Condition::new(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        Condition::new(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    set(&mut status.conditions, avail, false);

    let rs_name = ro
        .new_rs()
        .map(|r| r.name().to_string())
        .unwrap_or_default();
    let deadline = d
        .spec
        .progress_deadline_seconds
        .map_or(DEFAULT_DEADLINE, |s| Duration::from_secs(s.max(0) as u64));
    let progressing = condition(&old.conditions, "Progressing");
    let mut requeue = None;
    let moved = ro.progressed
        || status.updated_replicas > old.updated_replicas
        || status.ready_replicas > old.ready_replicas
        || status.available_replicas > old.available_replicas
        || ro.old_pods() < old.replicas - old.updated_replicas;
    if d.spec.paused {
        set(
            &mut status.conditions,
            Condition::new(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused",
            ),
            false,
        );
    } else if complete {
        set(
            &mut status.conditions,
            Condition::new(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            ),
            false,
        );
    } else if let Some(reason) = reason {
        set(
            &mut status.conditions,
            Condition::new(
                "Progressing",
                "True",
                reason,
                format!("Created new replica set \"{rs_name}\""),
            ),
            true,
        );
        requeue = Some(deadline);
    } else if moved
        || progressing.is_none_or(|c| {
            matches!(
                c.reason.as_deref(),
                Some("NewReplicaSetAvailable" | "DeploymentPaused")
            )
        })
    {
        // Movement, or a new rollout (after completion or a resume): the clock starts now.
        set(
            &mut status.conditions,
            Condition::new(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{rs_name}\" is progressing."),
            ),
            true,
        );
        requeue = Some(deadline);
    } else if let Some(p) = progressing
        && p.reason.as_deref() != Some("ProgressDeadlineExceeded")
    {
        let since = p
            .last_update_time
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .unwrap_or(now);
        let waited = now.duration_since(since).unwrap_or_default();
        if waited >= deadline {
            info!(deployment = %d.metadata.name, "rollout exceeded its progress deadline");
            set(
                &mut status.conditions,
                Condition::new(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                ),
                false,
            );
        } else {
            requeue = Some(deadline - waited + Duration::from_millis(100));
        }
    }
    // Keep the Available condition first, as Kubernetes lists them.
    status.conditions.sort_by_key(|c| c.type_ != "Available");
    ro.d.status = status;
    requeue
}
