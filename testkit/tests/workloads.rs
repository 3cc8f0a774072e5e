//! Jobs, CronJobs and DaemonSets on a real cluster: completions and parallelism with real
//! wasi:cli guests, back-off limits, deadlines and TTLs; a CronJob that fires on the minute;
//! a DaemonSet that follows node labels, node removal and template changes.
use flotilla_proto::api::{DaemonSet, Job, Kind, Object, Pod};
use flotilla_testkit::{Cluster, app_pods, eventually, eventually_within};
use std::time::Duration;

fn job(name: &str, image: &str, spec: &str, policy: &str) -> String {
    format!(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
{spec}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      restartPolicy: {policy}
      containers:
      - name: main
        image: {image}
        env: [{{name: COUNT, value: "2"}}]
"#
    )
}

async fn get_job(cluster: &Cluster, name: &str) -> Option<Job> {
    let c = cluster.fleet().await;
    let r = c.get(Kind::Job, Some("default"), Some(name)).await;
    c.close().await;
    match r.ok()?.pop() {
        Some(Object::Job(j)) => Some(j),
        _ => None,
    }
}

/// Waits for the Job to finish with condition `kind` (Complete or Failed); returns it.
async fn finished(cluster: &Cluster, name: &str, kind: &str) -> Job {
    eventually_within(
        &format!("job {name} to be {kind}"),
        Duration::from_secs(60),
        || async {
            get_job(cluster, name)
                .await
                .filter(|j| j.finished().is_some_and(|c| c.type_ == kind))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_complete_fail_and_expire() {
    let cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("batch").await;
    cluster.push_example("crash").await;
    cluster.push_example("hello").await;

    // Three completions, two at a time; finished pods stay for their logs.
    let tracker = cluster.track_pods("count");
    cluster
        .apply(&job(
            "count",
            "batch:latest",
            "  completions: 3\n  parallelism: 2",
            "Never",
        ))
        .await
        .unwrap();
    let j = finished(&cluster, "count", "Complete").await;
    let seen = tracker.finish().await;
    assert_eq!(
        (j.status.succeeded, j.status.failed, j.status.active),
        (3, 0, 0)
    );
    assert!(j.status.completion_time.is_some() && j.status.start_time.is_some());
    assert!(seen.max_active <= 2, "parallelism 2 exceeded: {seen:?}");
    assert_eq!(seen.max_pods, 3, "{seen:?}");
    let pods = cluster.pods().await;
    let done = app_pods(&pods, "count");
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|p| p.status.phase == "Succeeded"));
    assert!(
        done.iter()
            .all(|p| p.metadata.labels["batch.kubernetes.io/job-name"] == "count")
    );
    let c = cluster.fleet().await;
    let mut log = Vec::new();
    c.logs("default", &done[0].metadata.name, None, false, &mut log)
        .await
        .unwrap();
    c.close().await;
    assert!(
        String::from_utf8_lossy(&log).contains("tick 2/2"),
        "{}",
        String::from_utf8_lossy(&log)
    );

    // A crashing guest: one try plus backoffLimit 2 retries, then Failed.
    cluster
        .apply(&job("doomed", "crash:latest", "  backoffLimit: 2", "Never"))
        .await
        .unwrap();
    let j = finished(&cluster, "doomed", "Failed").await;
    let cond = j.finished().unwrap();
    assert_eq!(cond.reason.as_deref(), Some("BackoffLimitExceeded"));
    assert_eq!((j.status.failed, j.status.succeeded), (3, 0));

    // OnFailure restarts in place; the restarts count against backoffLimit.
    cluster
        .apply(&job(
            "restarts",
            "crash:latest",
            "  backoffLimit: 1",
            "OnFailure",
        ))
        .await
        .unwrap();
    let j = finished(&cluster, "restarts", "Failed").await;
    assert_eq!(
        j.finished().unwrap().reason.as_deref(),
        Some("BackoffLimitExceeded")
    );

    // A server never finishes: activeDeadlineSeconds fails the Job and stops its pod.
    cluster
        .apply(&job(
            "forever",
            "hello:latest",
            "  activeDeadlineSeconds: 2",
            "Never",
        ))
        .await
        .unwrap();
    let j = finished(&cluster, "forever", "Failed").await;
    assert_eq!(
        j.finished().unwrap().reason.as_deref(),
        Some("DeadlineExceeded")
    );
    eventually("the deadline to stop the pod", || async {
        app_pods(&cluster.pods().await, "forever")
            .is_empty()
            .then_some(())
    })
    .await;

    // ttlSecondsAfterFinished: the Job and its pods go after it completes.
    cluster
        .apply(&job(
            "brief",
            "batch:latest",
            "  ttlSecondsAfterFinished: 1",
            "Never",
        ))
        .await
        .unwrap();
    eventually("the finished job to expire", || async {
        let gone = get_job(&cluster, "brief").await.is_none();
        (gone && app_pods(&cluster.pods().await, "brief").is_empty()).then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// A CronJob fires on the next minute boundary, runs a real Job to completion and records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_fires_on_schedule() {
    let cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("batch").await;
    cluster
        .apply(
            r#"
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "* * * * *"
  timeZone: Europe/Berlin
  concurrencyPolicy: Forbid
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: tick}}
        spec:
          restartPolicy: OnFailure
          containers: [{name: main, image: batch:latest}]
"#,
        )
        .await
        .unwrap();
    let cj = eventually_within(
        "the cronjob to run once",
        Duration::from_secs(75),
        || async {
            let c = cluster.fleet().await;
            let r = c
                .get(Kind::CronJob, Some("default"), Some("tick"))
                .await
                .ok()?;
            c.close().await;
            match r.into_iter().next() {
                Some(Object::CronJob(cj)) if cj.status.last_successful_time.is_some() => Some(cj),
                _ => None,
            }
        },
    )
    .await;
    let scheduled = cj.status.last_schedule_time.clone().unwrap();
    assert!(
        scheduled.ends_with(":00Z"),
        "scheduled on the minute: {scheduled}"
    );
    let c = cluster.fleet().await;
    let jobs = c.get(Kind::Job, Some("default"), None).await.unwrap();
    c.close().await;
    let Some(Object::Job(j)) = jobs.first() else {
        panic!("no job: {jobs:?}")
    };
    let minutes = humantime::parse_rfc3339(&scheduled)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    assert_eq!(j.metadata.name, format!("tick-{minutes}"));
    assert_eq!(j.metadata.owner_references[0].kind, "CronJob");
    assert_eq!(j.finished().unwrap().type_, "Complete");
    // Deleting the CronJob takes its Jobs and their pods along.
    let c = cluster.fleet().await;
    c.delete(Kind::CronJob, "default", "tick").await.unwrap();
    assert!(
        c.get(Kind::Job, Some("default"), None)
            .await
            .unwrap()
            .is_empty()
    );
    c.close().await;
    assert!(app_pods(&cluster.pods().await, "tick").is_empty());
    cluster.shutdown().await;
}

fn daemonset(env: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agentd}}
spec:
  selector: {{matchLabels: {{app: agentd}}}}
  updateStrategy: {{rollingUpdate: {{maxUnavailable: 1}}}}
  template:
    metadata: {{labels: {{app: agentd}}}}
    spec:
      nodeSelector: {{role: edge}}
      containers:
      - name: main
        image: hello:latest
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
        env: [{{name: VERSION, value: "{env}"}}]
"#
    )
}

async fn get_ds(cluster: &Cluster) -> DaemonSet {
    let c = cluster.fleet().await;
    let r = c
        .get(Kind::DaemonSet, Some("default"), Some("agentd"))
        .await
        .unwrap();
    c.close().await;
    match r.into_iter().next() {
        Some(Object::DaemonSet(d)) => d,
        other => panic!("not a daemonset: {other:?}"),
    }
}

/// Waits until the DaemonSet runs one ready, up-to-date pod on exactly `nodes`.
async fn settled(cluster: &Cluster, nodes: &[&str]) -> Vec<Pod> {
    eventually_within(
        &format!("daemon pods on {nodes:?}"),
        Duration::from_secs(40),
        || async {
            let ds = get_ds(cluster).await;
            let pods = cluster.pods().await;
            let pods: Vec<Pod> = app_pods(&pods, "agentd").into_iter().cloned().collect();
            let mut on: Vec<&str> = pods
                .iter()
                .filter_map(|p| p.spec.node_name.as_deref())
                .collect();
            on.sort();
            let s = &ds.status;
            let n = nodes.len() as i32;
            (on == nodes
                && pods.iter().all(|p| p.is_ready())
                && (
                    s.desired_number_scheduled,
                    s.number_ready,
                    s.updated_number_scheduled,
                ) == (n, n, n))
                .then_some(pods)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_follows_nodes_and_rolls() {
    let mut cluster = Cluster::builder()
        .agents(3)
        .label(0, "role", "edge")
        .label(1, "role", "edge")
        .start()
        .await;
    cluster.push_example("hello").await;
    cluster.apply(&daemonset("v1")).await.unwrap();
    let pods = settled(&cluster, &["node-0", "node-1"]).await;
    for p in &pods {
        let url = format!("http://{}/", p.status.endpoint.as_deref().unwrap());
        assert_eq!(flotilla_testkit::curl(&url).0, 200, "{url}");
    }

    // A node that gains the label gets a pod.
    cluster.stop_agent(2).await;
    cluster.set_agent_label(2, "role", "edge");
    cluster.start_agent(2).await;
    settled(&cluster, &["node-0", "node-1", "node-2"]).await;

    // A template change rolls node by node: never more than one node without a ready pod.
    let tracker = cluster.track_pods("agentd");
    cluster.apply(&daemonset("v2")).await.unwrap();
    let pods = settled(&cluster, &["node-0", "node-1", "node-2"]).await;
    let seen = tracker.finish().await;
    assert!(seen.changes >= 6, "the rollout was not observed: {seen:?}");
    assert!(
        seen.min_ready >= 2,
        "more than maxUnavailable=1 node went unready: {seen:?}"
    );
    let v1_pods: Vec<_> = pods
        .iter()
        .filter(|p| format!("{:?}", p.spec).contains("\"v1\""))
        .collect();
    assert!(v1_pods.is_empty(), "old template left: {v1_pods:?}");

    // A node that leaves (agent gone, Node deleted) loses its pod.
    cluster.stop_agent(1).await;
    let c = cluster.fleet().await;
    c.delete(Kind::Node, "", "node-1").await.unwrap();
    c.close().await;
    settled(&cluster, &["node-0", "node-2"]).await;
    cluster.shutdown().await;
}
