//! Deployments the Kubernetes way on a real cluster: ReplicaSets, rolling updates that never
//! dip below the strategy's floor (checked at every committed state), Recreate, the progress
//! deadline, pause/resume with proportional scaling, undo and history, and probes running
//! against real wasi:http components.
use fleet::rollout::Progress;
use flotilla_proto::api::{Deployment, Kind, Object, ReplicaSet, TEMPLATE_HASH_LABEL};
use flotilla_proto::wire::RolloutAction;
use flotilla_testkit::{Cluster, app_pods, curl, eventually, eventually_within};
use std::time::Duration;

/// A Deployment of `image` whose container has `env` (YAML list items) and `probes` (YAML
/// container fields), and whose spec has `spec_extra` (YAML spec fields).
fn deployment(
    name: &str,
    replicas: i32,
    image: &str,
    env: &str,
    spec_extra: &str,
    probes: &str,
) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
{spec_extra}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: web
        image: {image}
        ports: [{{containerPort: 8080}}]
        resources: {{requests: {{cpu: 10m, memory: 16Mi}}, limits: {{memory: 64Mi}}}}
        env:
        - {{name: FLOTILLA_POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
{env}
{probes}
"#
    )
}

const READY_PROBE: &str =
    "        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}";

async fn get_deployment(cluster: &Cluster, name: &str) -> Deployment {
    let c = cluster.fleet().await;
    let (d, _) = c.deployment_with_history("default", name).await.unwrap();
    c.close().await;
    d
}

async fn replica_sets(cluster: &Cluster, name: &str) -> Vec<ReplicaSet> {
    let c = cluster.fleet().await;
    let (_, mut rss) = c.deployment_with_history("default", name).await.unwrap();
    c.close().await;
    rss.sort_by_key(|rs| rs.revision());
    rss
}

async fn rollout(cluster: &Cluster, name: &str, action: RolloutAction) -> anyhow::Result<String> {
    let c = cluster.fleet().await;
    let r = c.rollout("default", name, action).await;
    c.close().await;
    r
}

/// Waits for `fleet rollout status` to say the rollout is done; dumps the state if it never is.
async fn rolled_out(cluster: &Cluster, name: &str) -> Deployment {
    let started = std::time::Instant::now();
    loop {
        let d = get_deployment(cluster, name).await;
        if matches!(fleet::rollout::status(&d), Progress::Done(_)) {
            return d;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let pods = cluster.pods().await;
            panic!(
                "deployment {name} did not roll out: {:?}\n{d:#?}\nreplica sets: {:#?}\npods: {:#?}",
                fleet::rollout::status(&d),
                replica_sets(cluster, name).await,
                app_pods(&pods, name)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every pod of `app` answers HTTP and carries template `hash`.
async fn all_pods_serve(cluster: &Cluster, app: &str, n: usize, hash: &str) {
    let pods = cluster.pods().await;
    let pods = app_pods(&pods, app);
    assert_eq!(pods.len(), n, "pods of {app}: {pods:#?}");
    for p in pods {
        assert_eq!(
            p.metadata
                .labels
                .get(TEMPLATE_HASH_LABEL)
                .map(String::as_str),
            Some(hash)
        );
        let url = format!(
            "http://{}/",
            p.status.endpoint.as_deref().expect("endpoint")
        );
        let (code, body) = curl(&url);
        assert_eq!(code, 200, "{url}: {body}");
        assert!(body.contains(&p.metadata.name), "{url} answered {body:?}");
    }
}

fn new_hash(rss: &[ReplicaSet]) -> String {
    rss.last().unwrap().metadata.labels[TEMPLATE_HASH_LABEL].clone()
}

/// Ten replicas under the default strategy (maxSurge 25% rounds up to 3, maxUnavailable 25%
/// rounds down to 2): at no committed state are fewer than 8 pods Ready or more than 13 pods
/// there, and the rollout ends with all ten on the new template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_replicas_roll_within_the_default_bounds() {
    let cluster = Cluster::builder().agents(3).start().await;
    cluster.push_example("hello").await;
    let v1 = deployment("ten", 10, "hello:latest", "", "", READY_PROBE);
    cluster.apply(&v1).await.unwrap();
    rolled_out(&cluster, "ten").await;
    let tracker = cluster.track_pods("ten");
    let v2 = deployment(
        "ten",
        10,
        "hello:latest",
        "        - {name: VERSION, value: v2}",
        "",
        READY_PROBE,
    );
    cluster.apply(&v2).await.unwrap();
    let d = rolled_out(&cluster, "ten").await;
    let seen = tracker.finish().await;
    assert!(
        seen.mixed_templates && seen.changes > 20,
        "the rollout was not observed: {seen:?}"
    );
    assert!(
        seen.min_ready >= 8,
        "fewer than 10 - maxUnavailable(2) ready: {seen:?}"
    );
    assert!(
        seen.max_pods <= 13,
        "more than 10 + maxSurge(3) pods: {seen:?}"
    );
    assert_eq!(
        (d.status.updated_replicas, d.status.available_replicas),
        (10, 10)
    );
    let rss = replica_sets(&cluster, "ten").await;
    all_pods_serve(&cluster, "ten", 10, &new_hash(&rss)).await;
    cluster.shutdown().await;
}

/// A rolling update with maxUnavailable 0 never has fewer than `replicas` Ready pods, at any
/// committed state; history lists both revisions; undo brings the first template back as
/// revision 3, reusing its ReplicaSet; old ReplicaSets beyond revisionHistoryLimit go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_availability_then_undoes() {
    let cluster = Cluster::builder().agents(3).start().await;
    cluster.push_example("hello").await;
    let strategy = "  revisionHistoryLimit: 1\n  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}";
    let v1 = deployment("web", 3, "hello:latest", "", strategy, READY_PROBE);
    cluster.apply(&v1).await.unwrap();
    let d = rolled_out(&cluster, "web").await;
    assert_eq!(
        d.metadata.annotations["deployment.kubernetes.io/revision"],
        "1"
    );
    let rss = replica_sets(&cluster, "web").await;
    assert_eq!(rss.len(), 1);
    let hash1 = new_hash(&rss);
    assert_eq!(rss[0].metadata.name, format!("web-{hash1}"));
    all_pods_serve(&cluster, "web", 3, &hash1).await;
    // Pod names carry the ReplicaSet's: web-<hash>-<suffix>.
    for p in app_pods(&cluster.pods().await, "web") {
        assert!(
            p.metadata.name.starts_with(&format!("web-{hash1}-")),
            "{}",
            p.metadata.name
        );
    }

    let tracker = cluster.track_pods("web");
    let v2 = deployment(
        "web",
        3,
        "hello:latest",
        "        - {name: VERSION, value: v2}",
        strategy,
        READY_PROBE,
    );
    cluster.apply(&v2).await.unwrap();
    let d = rolled_out(&cluster, "web").await;
    let seen = tracker.finish().await;
    assert!(seen.changes > 6, "the rollout was not observed: {seen:?}");
    assert!(
        seen.min_ready >= 3,
        "availability dipped below 3 ready pods: {seen:?}"
    );
    assert!(
        seen.max_pods <= 4,
        "more than replicas + maxSurge pods existed: {seen:?}"
    );
    assert_eq!(
        d.metadata.annotations["deployment.kubernetes.io/revision"],
        "2"
    );
    assert_eq!(
        (
            d.status.updated_replicas,
            d.status.available_replicas,
            d.status.unavailable_replicas
        ),
        (3, 3, 0)
    );
    let rss = replica_sets(&cluster, "web").await;
    assert_eq!(rss.len(), 2, "old ReplicaSet kept for undo");
    assert_eq!((rss[0].replicas(), rss[1].replicas()), (0, 3));
    let hash2 = new_hash(&rss);
    all_pods_serve(&cluster, "web", 3, &hash2).await;
    let history = fleet::rollout::history(&d, &rss, None).unwrap();
    assert_eq!(
        history,
        "deployment.apps/web\nREVISION   CHANGE-CAUSE\n1          <none>\n2          <none>\n"
    );

    // Undo: back to the first template, in its old ReplicaSet, now revision 3.
    let msg = rollout(&cluster, "web", RolloutAction::Undo { to_revision: 0 })
        .await
        .unwrap();
    assert_eq!(msg, "deployment.apps/web rolled back");
    let d = rolled_out(&cluster, "web").await;
    assert_eq!(
        d.metadata.annotations["deployment.kubernetes.io/revision"],
        "3"
    );
    all_pods_serve(&cluster, "web", 3, &hash1).await;
    let rss = replica_sets(&cluster, "web").await;
    assert_eq!(
        rss.iter().map(|rs| rs.revision()).collect::<Vec<_>>(),
        [2, 3]
    );

    // A third template with revisionHistoryLimit 1 trims the oldest idle ReplicaSet.
    let msg = rollout(
        &cluster,
        "web",
        RolloutAction::SetImage {
            images: vec![("nope".into(), "x".into())],
        },
    )
    .await
    .unwrap_err();
    assert_eq!(msg.to_string(), "unable to find container named \"nope\"");
    rollout(&cluster, "web", RolloutAction::Restart)
        .await
        .unwrap();
    rolled_out(&cluster, "web").await;
    let rss = eventually("history trimmed to 1 old ReplicaSet", || async {
        let rss = replica_sets(&cluster, "web").await;
        (rss.len() == 2).then_some(rss)
    })
    .await;
    assert_eq!(
        rss.iter().map(|rs| rs.revision()).collect::<Vec<_>>(),
        [3, 4]
    );
    let undo = rollout(&cluster, "web", RolloutAction::Undo { to_revision: 2 }).await;
    assert_eq!(
        undo.unwrap_err().to_string(),
        "unable to find specified revision 2 in history"
    );

    // Deleting the Deployment takes its ReplicaSets and pods along.
    let c = cluster.fleet().await;
    c.delete(Kind::Deployment, "default", "web").await.unwrap();
    assert!(
        c.get(Kind::ReplicaSet, Some("default"), None)
            .await
            .unwrap()
            .is_empty()
    );
    c.close().await;
    assert!(app_pods(&cluster.pods().await, "web").is_empty());
    cluster.shutdown().await;
}

/// A new template whose pods never turn Ready (a failing readiness probe) stalls the rollout
/// with the old pods still serving, and trips the progress deadline. Pausing leaves both
/// ReplicaSets side by side; scaling while paused is proportional; resume and undo recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_rollout_pause_scale_and_recover() {
    let cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("chaos").await;
    let spec = "  progressDeadlineSeconds: 3\n  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}";
    let probe = "        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 1}";
    cluster
        .apply(&deployment("canary", 2, "chaos:latest", "", spec, probe))
        .await
        .unwrap();
    rolled_out(&cluster, "canary").await;
    let old_hash = new_hash(&replica_sets(&cluster, "canary").await);

    let bad = deployment(
        "canary",
        2,
        "chaos:latest",
        "        - {name: CHAOS_UNHEALTHY, value: '1'}",
        spec,
        probe,
    );
    cluster.apply(&bad).await.unwrap();
    let d = eventually_within(
        "the progress deadline to pass",
        Duration::from_secs(30),
        || async {
            let d = get_deployment(&cluster, "canary").await;
            matches!(fleet::rollout::status(&d), Progress::Failed(_)).then_some(d)
        },
    )
    .await;
    let progressing = flotilla_proto::api::condition(&d.status.conditions, "Progressing").unwrap();
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_deref()),
        ("False", Some("ProgressDeadlineExceeded"))
    );
    assert_eq!(
        (d.status.available_replicas, d.status.updated_replicas),
        (2, 1)
    );
    let pods = cluster.pods().await;
    let canary = app_pods(&pods, "canary");
    assert_eq!(canary.len(), 3);
    for p in &canary {
        let new = p.metadata.labels[TEMPLATE_HASH_LABEL] != old_hash;
        assert_eq!(
            p.is_ready(),
            !new,
            "only old pods are ready: {}",
            p.metadata.name
        );
        if new {
            let ready = flotilla_proto::api::condition(&p.status.conditions, "Ready").unwrap();
            assert!(
                ready
                    .message
                    .as_deref()
                    .unwrap_or("")
                    .contains("statuscode: 503"),
                "{ready:?}"
            );
        }
    }

    // Pause: the canary stays; scaling to 6 splits proportionally (old 2 : new 1, + surge 1).
    assert_eq!(
        rollout(&cluster, "canary", RolloutAction::Pause)
            .await
            .unwrap(),
        "deployment.apps/canary paused"
    );
    let c = cluster.fleet().await;
    c.scale("default", "canary", 6).await.unwrap();
    c.close().await;
    let rss = eventually("proportional scaling", || async {
        let rss = replica_sets(&cluster, "canary").await;
        (rss.iter().map(|r| r.replicas()).sum::<i32>() == 7).then_some(rss)
    })
    .await;
    let sizes: Vec<i32> = rss.iter().map(|r| r.replicas()).collect();
    assert_eq!(sizes, [5, 2], "old:new sizes after scaling 3 -> 7 allowed");
    let undo = rollout(&cluster, "canary", RolloutAction::Undo { to_revision: 0 }).await;
    assert!(undo.unwrap_err().to_string().contains("is paused"));

    // Resume and roll back: the old template takes all 6 again, the bad ReplicaSet goes to 0.
    rollout(&cluster, "canary", RolloutAction::Resume)
        .await
        .unwrap();
    rollout(&cluster, "canary", RolloutAction::Undo { to_revision: 0 })
        .await
        .unwrap();
    let d = rolled_out(&cluster, "canary").await;
    assert_eq!((d.status.available_replicas, d.status.replicas), (6, 6));
    let rss = replica_sets(&cluster, "canary").await;
    assert_eq!(
        rss.last().unwrap().metadata.labels[TEMPLATE_HASH_LABEL],
        old_hash
    );
    assert_eq!(rss.iter().map(|r| r.replicas()).collect::<Vec<_>>(), [0, 6]);
    cluster.shutdown().await;
}

/// Recreate never runs two templates at once; a failing liveness probe restarts the
/// container with the reason recorded; a ReplicaSet applied directly keeps its pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_liveness_and_bare_replicasets() {
    let cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("hello").await;
    cluster.push_example("chaos").await;
    let recreate = "  strategy: {type: Recreate}";
    cluster
        .apply(&deployment(
            "batchy",
            2,
            "hello:latest",
            "",
            recreate,
            READY_PROBE,
        ))
        .await
        .unwrap();
    rolled_out(&cluster, "batchy").await;
    let tracker = cluster.track_pods("batchy");
    let v2 = deployment(
        "batchy",
        2,
        "hello:latest",
        "        - {name: VERSION, value: v2}",
        recreate,
        READY_PROBE,
    );
    cluster.apply(&v2).await.unwrap();
    rolled_out(&cluster, "batchy").await;
    let seen = tracker.finish().await;
    assert!(seen.changes > 4, "the rollout was not observed: {seen:?}");
    assert!(
        !seen.mixed_templates,
        "Recreate ran old and new pods at once: {seen:?}"
    );
    assert_eq!(seen.min_ready, 0, "Recreate takes everything down first");
    all_pods_serve(
        &cluster,
        "batchy",
        2,
        &new_hash(&replica_sets(&cluster, "batchy").await),
    )
    .await;

    // Liveness: /healthz answers 503, so the container is restarted again and again.
    let liveness = "        livenessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 2}";
    cluster
        .apply(&deployment(
            "sick",
            1,
            "chaos:latest",
            "        - {name: CHAOS_UNHEALTHY, value: '1'}",
            "",
            liveness,
        ))
        .await
        .unwrap();
    let pod = eventually_within(
        "the sick pod to be restarted twice",
        Duration::from_secs(40),
        || async {
            let pods = cluster.pods().await;
            app_pods(&pods, "sick")
                .first()
                .filter(|p| p.restarts() >= 2)
                .map(|p| (*p).clone())
        },
    )
    .await;
    let last = pod.status.container_statuses[0].last_state.clone().unwrap();
    let term = last.terminated.unwrap();
    assert_eq!(
        (term.exit_code, term.reason.as_deref()),
        (137, Some("LivenessProbeFailed"))
    );

    // A bare ReplicaSet (apps/v1) keeps its replicas, replacing a deleted pod.
    cluster
        .apply(
            r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: bare}
spec:
  replicas: 2
  selector: {matchLabels: {app: bare}}
  template:
    metadata: {labels: {app: bare}}
    spec: {containers: [{name: web, image: hello:latest}]}
"#,
        )
        .await
        .unwrap();
    let first = eventually("2 bare pods", || async {
        let pods = cluster.pods().await;
        let bare = app_pods(&pods, "bare");
        (bare.len() == 2 && bare.iter().all(|p| p.is_ready()))
            .then(|| bare[0].metadata.name.clone())
    })
    .await;
    let c = cluster.fleet().await;
    c.delete(Kind::Pod, "default", &first).await.unwrap();
    c.close().await;
    eventually("the deleted pod to be replaced", || async {
        let pods = cluster.pods().await;
        let bare = app_pods(&pods, "bare");
        (bare.len() == 2
            && bare
                .iter()
                .all(|p| p.metadata.name != first && p.is_ready()))
        .then_some(())
    })
    .await;
    let c = cluster.fleet().await;
    let rs = c
        .get(Kind::ReplicaSet, Some("default"), Some("bare"))
        .await
        .unwrap();
    c.close().await;
    let Object::ReplicaSet(rs) = &rs[0] else {
        panic!("not a replica set")
    };
    assert_eq!((rs.status.replicas, rs.status.ready_replicas), (2, 2));
    cluster.shutdown().await;
}
