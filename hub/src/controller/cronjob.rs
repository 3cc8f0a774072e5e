//! The CronJob controller: creates a Job (`NAME-<minutes since epoch>`, so a scheduled time
//! is run at most once) for the latest due time of the schedule in its time zone, unless it is
//! later than `startingDeadlineSeconds`; `concurrencyPolicy` Allow/Forbid/Replace; `suspend`;
//! keeps `successfulJobsHistoryLimit` and `failedJobsHistoryLimit` finished Jobs. It sleeps
//! until the next scheduled time (a requeue), and wakes when its Jobs change.
use super::{Controller, Ctx, Requeue, gc, owner_keys, parse_time, stamp};
use crate::events;
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    CRONJOB_SCHEDULED_ANNOTATION, CronJob, EventType, Job, Kind, Object, ObjectKey,
    ObjectReference, OwnerReference,
};
use flotilla_proto::cron::Schedule;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// The source component of this controller's events (Kubernetes' name).
const COMPONENT: &str = "cronjob-controller";

pub(crate) const CONTROLLER: Controller = Controller {
    name: "cronjob",
    kind: Kind::CronJob,
    keys_of,
    all_on: super::never,
    reconcile,
};

fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::CronJob => vec![e.key.clone()],
        Kind::Job => owner_keys(e, Kind::CronJob),
        _ => vec![],
    }
}

pub fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, ctx: &Ctx) -> Result<Requeue, StoreError> {
    let now = ctx.now;
    let Some(Object::CronJob(mut cj)) = tx.get(key)? else {
        gc::delete_orphans_of(tx, key)?;
        return Ok(None);
    };
    let original = cj.clone();
    let mut jobs: Vec<Job> = super::owned(tx, Kind::Job, &key.namespace, &cj.metadata.uid)?
        .into_iter()
        .filter_map(|o| match o {
            Object::Job(j) => Some(j),
            _ => None,
        })
        .collect();
    jobs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let owner = Object::CronJob(original.clone());
    // A Job that was active at the last look and has finished since.
    for j in &jobs {
        if let Some(done) = j.finished()
            && original
                .status
                .active
                .iter()
                .any(|a| a.uid == j.metadata.uid)
        {
            let message = format!(
                "Saw completed job: {}, condition: {}",
                j.metadata.name, done.type_
            );
            events::about(
                tx,
                &owner,
                EventType::Normal,
                "SawCompletedJob",
                &message,
                COMPONENT,
                now,
            )?;
        }
    }
    trim_history(tx, &cj, &mut jobs, now)?;

    let schedule = match Schedule::parse(&cj.spec.schedule, cj.spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            // Validated at apply; a stored object from an older release could still be bad.
            warn!(cronjob = %key, error = %e, "unusable schedule");
            return Ok(None);
        }
    };
    let since = parse_time(cj.status.last_schedule_time.as_deref())
        .or_else(|| parse_time(Some(&cj.metadata.creation_timestamp)))
        .unwrap_or(now);
    let active = |jobs: &[Job]| -> Vec<Job> {
        jobs.iter()
            .filter(|j| j.finished().is_none())
            .cloned()
            .collect()
    };
    if cj.spec.suspend != Some(true)
        && let Some(due) = schedule.latest_due(since, now)
    {
        let late = now.duration_since(due).unwrap_or_default();
        let too_late = cj
            .spec
            .starting_deadline_seconds
            .is_some_and(|d| late > Duration::from_secs(d.max(0) as u64));
        let name = job_name(&cj, due);
        let running = active(&jobs);
        let policy = cj.spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if too_late {
            info!(cronjob = %key, scheduled = %stamp(due), "missed starting window");
        } else if jobs.iter().any(|j| j.metadata.name == name) {
            cj.status.last_schedule_time = Some(stamp(due));
        } else if policy == "Forbid" && !running.is_empty() {
            // Tried again when the running Job finishes (its change wakes us) or next time.
        } else {
            if policy == "Replace" {
                for j in &running {
                    info!(cronjob = %key, job = %j.metadata.name, "replacing running job");
                    gc::delete_cascade(tx, &Object::Job(j.clone()).key())?;
                    let message = format!("Deleted job {}", j.metadata.name);
                    events::about(
                        tx,
                        &owner,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &message,
                        COMPONENT,
                        now,
                    )?;
                }
                jobs.retain(|j| j.finished().is_some());
            }
            let Object::Job(job) = tx.put(Object::Job(new_job(&cj, &name, due)))? else {
                unreachable!("put returns the object it stored")
            };
            info!(cronjob = %key, job = %name, "created job");
            let message = format!("Created job {name}");
            events::about(
                tx,
                &owner,
                EventType::Normal,
                "SuccessfulCreate",
                &message,
                COMPONENT,
                now,
            )?;
            jobs.push(job);
            cj.status.last_schedule_time = Some(stamp(due));
        }
    }
    cj.status.active = active(&jobs)
        .iter()
        .map(|j| ObjectReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            namespace: key.namespace.clone(),
            name: j.metadata.name.clone(),
            uid: j.metadata.uid.clone(),
        })
        .collect();
    if let Some(t) = jobs
        .iter()
        .filter(|j| j.finished().is_some_and(|c| c.type_ == "Complete"))
        .filter_map(|j| j.status.completion_time.clone())
        .max()
    {
        cj.status.last_successful_time = Some(t);
    }
    if cj != original {
        tx.put(Object::CronJob(cj))?;
    }
    // Wake at the next scheduled time (a little after, so it is due).
    Ok(schedule
        .next_after(now)
        .and_then(|n| n.duration_since(now).ok())
        .map(|d| d + Duration::from_millis(50)))
}

/// `NAME-<minutes since the epoch>` of the scheduled time, as Kubernetes names them.
fn job_name(cj: &CronJob, due: SystemTime) -> String {
    let minutes = due.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60;
    format!("{}-{minutes}", cj.metadata.name)
}

fn new_job(cj: &CronJob, name: &str, due: SystemTime) -> Job {
    let t = &cj.spec.job_template;
    let mut job = Job {
        metadata: t.metadata.clone(),
        spec: t.spec.clone(),
        ..Default::default()
    };
    job.metadata.name = name.into();
    job.metadata.namespace = cj.metadata.namespace.clone();
    job.metadata
        .annotations
        .insert(CRONJOB_SCHEDULED_ANNOTATION.into(), stamp(due));
    job.metadata.owner_references = vec![OwnerReference {
        api_version: "batch/v1".into(),
        kind: "CronJob".into(),
        name: cj.metadata.name.clone(),
        uid: cj.metadata.uid.clone(),
        controller: Some(true),
    }];
    job
}

/// Deletes the oldest finished Jobs beyond the history limits (3 successful, 1 failed).
fn trim_history(
    tx: &mut Tx<'_>,
    cj: &CronJob,
    jobs: &mut Vec<Job>,
    now: SystemTime,
) -> Result<(), StoreError> {
    let mut doomed = Vec::new();
    for (kind, limit) in [
        (
            "Complete",
            cj.spec.successful_jobs_history_limit.unwrap_or(3),
        ),
        ("Failed", cj.spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        // Names end in the scheduled minute, so name order is schedule order.
        let done: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.finished().is_some_and(|c| c.type_ == kind))
            .collect();
        let extra = done.len().saturating_sub(limit.max(0) as usize);
        doomed.extend(done[..extra].iter().map(|j| j.metadata.name.clone()));
    }
    for name in &doomed {
        let key = ObjectKey::new(
            Kind::Job,
            cj.metadata.namespace.as_deref().unwrap_or("default"),
            name,
        );
        if gc::delete_cascade(tx, &key)?.is_some() {
            let message = format!("Deleted job {name}");
            events::about(
                tx,
                &Object::CronJob(cj.clone()),
                EventType::Normal,
                "SuccessfulDelete",
                &message,
                COMPONENT,
                now,
            )?;
        }
    }
    jobs.retain(|j| !doomed.contains(&j.metadata.name));
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The concurrency policies against a real store, on an injected clock: each reconcile is
    //! given the time it runs at, so minutes pass without waiting for them.
    use super::*;
    use crate::store::Store;
    use flotilla_proto::api::Condition;

    const CRON: &str = r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick, namespace: default}
spec:
  schedule: "* * * * *"
  concurrencyPolicy: POLICY
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: main, image: batch:latest}]
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        key: ObjectKey,
        /// The minute boundary after the CronJob was created.
        first: SystemTime,
    }

    impl Fixture {
        fn new(policy: &str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.redb"), &[5u8; 32]).unwrap();
            let mut parsed =
                flotilla_proto::manifest::parse(&CRON.replace("POLICY", policy)).unwrap();
            let obj = parsed.remove(0).object;
            store.write(|tx| tx.put(obj)).unwrap();
            let key = ObjectKey::new(Kind::CronJob, "default", "tick");
            let Some(Object::CronJob(cj)) = store.get(&key).unwrap() else {
                panic!("stored cronjob")
            };
            let created = parse_time(Some(&cj.metadata.creation_timestamp)).unwrap();
            let secs = created.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let first = UNIX_EPOCH + Duration::from_secs((secs / 60 + 1) * 60);
            Fixture {
                _dir: dir,
                store,
                key,
                first,
            }
        }

        /// Runs the controller at `minute` minutes after the first boundary (plus a second).
        fn at(&self, minute: u64) {
            let ctx = Ctx {
                now: self.first + Duration::from_secs(minute * 60 + 1),
                job_backoff: Duration::from_secs(1),
            };
            self.store
                .write(|tx| reconcile(tx, &self.key, &ctx))
                .unwrap();
        }

        /// The Jobs, by the minute (relative to the first boundary) they were scheduled for.
        fn jobs(&self) -> Vec<(u64, bool)> {
            let (objs, _) = self.store.list(Kind::Job, Some("default")).unwrap();
            let first = self.first.duration_since(UNIX_EPOCH).unwrap().as_secs() / 60;
            objs.into_iter()
                .filter_map(|o| match o {
                    Object::Job(j) => {
                        let m: u64 = j.metadata.name.strip_prefix("tick-")?.parse().ok()?;
                        Some((m - first, j.finished().is_some()))
                    }
                    _ => None,
                })
                .collect()
        }

        fn complete(&self, minute: u64) {
            let first = self.first.duration_since(UNIX_EPOCH).unwrap().as_secs() / 60;
            let key = ObjectKey::new(Kind::Job, "default", &format!("tick-{}", first + minute));
            self.store
                .write(|tx| {
                    let Some(Object::Job(mut j)) = tx.get(&key)? else {
                        panic!("no job {key}")
                    };
                    j.status
                        .conditions
                        .push(Condition::new("Complete", "True", "Completed", ""));
                    tx.put(Object::Job(j)).map(|_| ())
                })
                .unwrap();
        }
    }

    #[test]
    fn forbid_skips_a_run_that_would_overlap() {
        let f = Fixture::new("Forbid");
        f.at(0);
        assert_eq!(f.jobs(), [(0, false)]);
        // The first Job still runs a minute later: that run is skipped, not queued.
        f.at(1);
        assert_eq!(f.jobs(), [(0, false)]);
        f.complete(0);
        f.at(2);
        assert_eq!(f.jobs(), [(0, true), (2, false)]);
    }

    #[test]
    fn replace_stops_the_running_job_and_allow_runs_both() {
        let f = Fixture::new("Replace");
        f.at(0);
        f.at(1);
        assert_eq!(f.jobs(), [(1, false)]);
        let f = Fixture::new("Allow");
        f.at(0);
        f.at(1);
        assert_eq!(f.jobs(), [(0, false), (1, false)]);
    }

    #[test]
    fn a_run_is_created_at_most_once_per_scheduled_time() {
        let f = Fixture::new("Allow");
        f.at(0);
        f.at(0);
        assert_eq!(f.jobs(), [(0, false)]);
        // Missed minutes are not made up: only the latest due time runs.
        f.at(5);
        assert_eq!(f.jobs(), [(0, false), (5, false)]);
    }
}
