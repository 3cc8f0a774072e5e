//! The Job controller: runs pods of the template until `completions` of them succeed,
//! `parallelism` at a time; replaces failed pods after an exponential back-off until more than
//! `backoffLimit` failures (container restarts count for restartPolicy OnFailure); fails the
//! Job past `activeDeadlineSeconds`; honours `suspend`; deletes a finished Job after
//! `ttlSecondsAfterFinished`. Finished pods are kept for their logs, as in Kubernetes.
use super::{
    Controller, Ctx, Requeue, create_pod, delete_pod, gc, owner_keys, parse_time,
    pod_from_template, sooner, stamp,
};
use crate::events;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    Condition, EventType, JOB_NAME_LABEL, Job, Kind, Object, ObjectKey, Pod,
};
use std::time::{Duration, SystemTime};
use tracing::info;

/// The source component of this controller's events (Kubernetes' name).
const COMPONENT: &str = "job-controller";
/// The cap of the failed-pod back-off, as in Kubernetes.
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub(crate) const CONTROLLER: Controller = Controller {
    name: "job",
    kind: Kind::Job,
    keys_of,
    all_on: super::never,
    reconcile,
};

fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::Job => vec![e.key.clone()],
        Kind::Pod => owner_keys(e, Kind::Job),
        _ => vec![],
    }
}

/// When a finished pod finished (its containers' last termination time; a pod whose init
/// container failed has only that one).
fn finished_at(p: &Pod) -> Option<SystemTime> {
    p.status
        .init_container_statuses
        .iter()
        .chain(&p.status.container_statuses)
        .filter_map(|c| c.state.terminated.as_ref())
        .filter_map(|t| parse_time(t.finished_at.as_deref()))
        .max()
}

/// Sets (or refreshes) a condition, keeping its transition time when the status is unchanged.
fn set_condition(conds: &mut Vec<Condition>, mut c: Condition, now: SystemTime) {
    match conds.iter_mut().find(|o| o.type_ == c.type_) {
        Some(o) if o.status == c.status && o.reason == c.reason => {}
        Some(o) => {
            c.last_transition_time = Some(stamp(now));
            *o = c;
        }
        None => {
            c.last_transition_time = Some(stamp(now));
            conds.push(c);
        }
    }
}

pub fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let now = ctx.now;
    let Some(Object::Job(mut job)) = tx.get(key)? else {
        gc::delete_orphans_of(tx, key)?;
        return Ok(None);
    };
    let original = job.clone();
    let pods: Vec<Pod> = super::owned(tx, Kind::Pod, &key.namespace, &job.metadata.uid)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut active: Vec<&Pod> = pods.iter().filter(|p| !p.is_terminal()).collect();
    let succeeded = pods
        .iter()
        .filter(|p| p.status.phase == "Succeeded")
        .count() as i32;
    let failed_pods: Vec<&Pod> = pods.iter().filter(|p| p.status.phase == "Failed").collect();
    let on_failure = job.spec.template.spec.restart_policy() == "OnFailure";
    let restarts: i32 = if on_failure {
        active.iter().map(|p| p.restarts()).sum()
    } else {
        0
    };
    let failures = failed_pods.len() as i32 + restarts;
    let mut requeue = None;
    let owner = Object::Job(original.clone());

    if let Some(done) = job.finished().cloned() {
        // Done: nothing runs any more; the Job itself may have a time to live.
        for p in active.drain(..) {
            delete_pod(tx, &owner, p, COMPONENT, now)?;
        }
        if let Some(ttl) = job.spec.ttl_seconds_after_finished {
            let finished = parse_time(job.status.completion_time.as_deref())
                .or_else(|| parse_time(done.last_transition_time.as_deref()))
                .unwrap_or(now);
            let expires = finished + Duration::from_secs(ttl.max(0) as u64);
            if now >= expires {
                info!(job = %key, "deleting finished job after ttlSecondsAfterFinished");
                gc::delete_cascade(tx, key)?;
                return Ok(None);
            }
            requeue = expires.duration_since(now).ok();
        }
    } else if job.spec.suspend == Some(true) {
        for p in active.drain(..) {
            delete_pod(tx, &owner, p, COMPONENT, now)?;
        }
        set_condition(
            &mut job.status.conditions,
            Condition::new("Suspended", "True", "JobSuspended", "Job suspended"),
            now,
        );
    } else {
        if let Some(c) = job
            .status
            .conditions
            .iter_mut()
            .find(|c| c.type_ == "Suspended")
            && c.status == "True"
        {
            *c = Condition::new("Suspended", "False", "JobResumed", "Job resumed");
            c.last_transition_time = Some(stamp(now));
            job.status.start_time = None;
        }
        let started = job
            .status
            .start_time
            .get_or_insert_with(|| stamp(now))
            .clone();
        let started = parse_time(Some(&started)).unwrap_or(now);
        let past_deadline = job
            .spec
            .active_deadline_seconds
            .map(|d| started + Duration::from_secs(d.max(0) as u64));
        let failure = if failures > job.backoff_limit() {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if past_deadline.is_some_and(|d| now >= d) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            requeue = past_deadline.and_then(|d| d.duration_since(now).ok());
            None
        };
        if let Some((reason, message)) = failure {
            info!(job = %key, reason, "job failed");
            events::about(
                tx,
                &owner,
                EventType::Warning,
                reason,
                message,
                COMPONENT,
                now,
            )?;
            for p in active.drain(..) {
                delete_pod(tx, &owner, p, COMPONENT, now)?;
            }
            set_condition(
                &mut job.status.conditions,
                Condition::new("Failed", "True", reason, message),
                now,
            );
            requeue = None;
        } else if succeeded >= job.completions() {
            info!(job = %key, succeeded, "job complete");
            events::about(
                tx,
                &owner,
                EventType::Normal,
                "Completed",
                "Job completed",
                COMPONENT,
                now,
            )?;
            for p in active.drain(..) {
                delete_pod(tx, &owner, p, COMPONENT, now)?;
            }
            job.status.completion_time = Some(stamp(now));
            set_condition(
                &mut job.status.conditions,
                Condition::new(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
                now,
            );
            requeue = job
                .spec
                .ttl_seconds_after_finished
                .map(|t| Duration::from_secs(t.max(0) as u64));
        } else {
            let want = job.parallelism().min(job.completions() - succeeded).max(0) as usize;
            if active.len() > want {
                active.sort_by_key(|p| super::replicaset::deletion_rank(p));
                for p in active.drain(..active.len() - want) {
                    delete_pod(tx, &owner, p, COMPONENT, now)?;
                }
            } else if active.len() < want {
                // Failed pods are replaced after 10 s, 20 s, 40 s … (job_backoff doubling).
                let wait = backoff_left(ctx, &failed_pods, now);
                if wait.is_some() {
                    requeue = sooner(requeue, wait);
                } else {
                    for _ in active.len()..want {
                        create_pod(tx, &owner, job_pod(&job), COMPONENT, now)?;
                    }
                    info!(job = %key, created = want - active.len(), "created pods");
                }
            }
        }
    }
    job.status.active = active.len() as i32;
    job.status.ready = active.iter().filter(|p| p.is_ready()).count() as i32;
    job.status.succeeded = succeeded;
    job.status.failed = failed_pods.len() as i32;
    if job != original {
        tx.put(Object::Job(job))?;
    }
    Ok(requeue)
}

/// How long until a replacement may start after the last failed pod, if it may not yet.
fn backoff_left(ctx: &Ctx, failed: &[&Pod], now: SystemTime) -> Requeue {
    let last = failed.iter().filter_map(|p| finished_at(p)).max()?;
    let doublings = (failed.len() as u32).saturating_sub(1).min(16);
    let delay = (ctx.job_backoff * 2u32.pow(doublings)).min(MAX_BACKOFF);
    (last + delay).duration_since(now).ok()
}

fn job_pod(job: &Job) -> Pod {
    let mut pod = pod_from_template(
        &job.spec.template,
        &job.metadata,
        Kind::Job,
        &job.metadata.name,
    );
    let labels = &mut pod.metadata.labels;
    labels.insert(JOB_NAME_LABEL.into(), job.metadata.name.clone());
    labels.insert("job-name".into(), job.metadata.name.clone());
    labels.insert("controller-uid".into(), job.metadata.uid.clone());
    pod
}
