//! Events and `fleet delete --cascade` on a real cluster: a Deployment's events from the
//! controllers, the scheduler and the agent (source host = the node), BackOff of a crashing
//! pod, Unhealthy of a failing readiness probe, the `Events:` section of `fleet describe` and
//! the `fleet get events` table through the real binary, and orphaning versus cascading deletes.
use flotilla_proto::api::{Kind, Object, Pod, ReplicaSet};
use flotilla_testkit::{Cluster, app_pods, eventually_within};
use std::time::Duration;

async fn replica_sets(cluster: &Cluster) -> Vec<ReplicaSet> {
    let c = cluster.fleet().await;
    let r = c
        .get(Kind::ReplicaSet, Some("default"), None)
        .await
        .unwrap();
    c.close().await;
    r.into_iter()
        .filter_map(|o| match o {
            Object::ReplicaSet(rs) => Some(rs),
            _ => None,
        })
        .collect()
}

fn deployment(name: &str, image: &str, env: &str, probe: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: {name}
        image: {image}
        env: [{env}]
{probe}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_scheduler_and_agents_record_events() {
    let cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("hello").await;
    cluster.push_example("crash").await;
    cluster.push_example("chaos").await;

    cluster
        .apply(&deployment("web", "hello:latest", "", ""))
        .await
        .unwrap();
    let pods = cluster.wait_ready("web", 1).await;
    let pod = &pods[0];
    let rs = replica_sets(&cluster).await.pop().expect("a replica set");
    let scaled = cluster
        .event_about("Deployment", "web", "ScalingReplicaSet")
        .await;
    assert_eq!(
        scaled.message,
        format!("Scaled up replica set {} from 0 to 1", rs.metadata.name)
    );
    assert_eq!(scaled.source.component, "deployment-controller");
    let created = cluster
        .event_about("ReplicaSet", &rs.metadata.name, "SuccessfulCreate")
        .await;
    assert_eq!(
        created.message,
        format!("Created pod: {}", pod.metadata.name)
    );
    assert_eq!(created.involved_object.uid, rs.metadata.uid);
    let scheduled = cluster
        .event_about("Pod", &pod.metadata.name, "Scheduled")
        .await;
    assert_eq!(
        scheduled.message,
        format!(
            "Successfully assigned default/{} to node-0",
            pod.metadata.name
        )
    );
    assert_eq!(scheduled.source.component, "default-scheduler");
    for reason in ["Pulled", "Started"] {
        let e = cluster.event_about("Pod", &pod.metadata.name, reason).await;
        assert_eq!(e.source.component, "agent", "{reason}");
        assert_eq!(e.source.host, "node-0", "{reason}");
        assert_eq!(e.involved_object.uid, pod.metadata.uid, "{reason}");
        assert_eq!(e.type_.as_str(), "Normal");
    }
    let pulled = cluster
        .event_about("Pod", &pod.metadata.name, "Pulled")
        .await;
    assert!(
        pulled
            .message
            .starts_with("Successfully pulled image \"hello:latest\" in "),
        "{}",
        pulled.message
    );
    let started = cluster
        .event_about("Pod", &pod.metadata.name, "Started")
        .await;
    assert_eq!(started.message, "Started container web");

    // A crashing pod backs off; the repeats fold into one event with a count.
    let crasher = "apiVersion: v1\nkind: Pod\nmetadata: {name: crasher}\nspec:\n  containers: [{name: crash, image: crash:latest}]\n";
    cluster.apply(crasher).await.unwrap();
    let backoff = eventually_within(
        "a repeated BackOff on the crashing pod",
        Duration::from_secs(60),
        || async {
            cluster.events("default").await.into_iter().find(|e| {
                e.involved_object.name == "crasher" && e.reason == "BackOff" && e.count >= 2
            })
        },
    )
    .await;
    assert_eq!(backoff.type_.as_str(), "Warning");
    assert!(
        backoff
            .message
            .starts_with("Back-off restarting failed container crash in pod crasher_default("),
        "{}",
        backoff.message
    );
    assert_eq!(
        cluster
            .events("default")
            .await
            .iter()
            .filter(|e| e.involved_object.name == "crasher" && e.reason == "BackOff")
            .count(),
        1,
        "repeats are aggregated"
    );

    // A readiness probe on a path that fails.
    let probe = "        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1, failureThreshold: 1}";
    cluster
        .apply(&deployment(
            "sick",
            "chaos:latest",
            "{name: CHAOS_UNHEALTHY, value: '1'}",
            probe,
        ))
        .await
        .unwrap();
    let sick = eventually_within("the sick pod", Duration::from_secs(30), || async {
        let pods = cluster.pods().await;
        app_pods(&pods, "sick").first().map(|p| (*p).clone())
    })
    .await;
    let unhealthy = cluster
        .event_about("Pod", &sick.metadata.name, "Unhealthy")
        .await;
    assert_eq!(unhealthy.type_.as_str(), "Warning");
    assert!(
        unhealthy.message.starts_with("Readiness probe failed: "),
        "{}",
        unhealthy.message
    );

    // The real binary: describe ends with the pod's events; get events prints the table.
    let (code, out, err) = cluster.fleet_cli(&["describe", "pod", &pod.metadata.name], None);
    assert_eq!(code, 0, "{err}");
    let section = out
        .split_once("\nEvents:\n")
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no Events section:\n{out}"));
    let header: Vec<&str> = section
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["Type", "Reason", "Age", "From", "Message"],
        "{section}"
    );
    for needle in [
        "Normal  Scheduled",
        "default-scheduler  Successfully assigned default/",
        "Normal  Pulled",
        "Normal  Started",
        "agent",
    ] {
        assert!(
            section.contains(needle),
            "{needle:?} missing in:\n{section}"
        );
    }
    assert!(
        !section.contains("crasher"),
        "only the pod's own events:\n{section}"
    );
    let (code, out, err) = cluster.fleet_cli(&["get", "events"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("LAST SEEN   TYPE      REASON"), "{out}");
    assert!(out.contains(&format!("pod/{}", pod.metadata.name)), "{out}");
    assert!(out.contains("deployment/web"), "{out}");
    assert!(out.contains("Warning   BackOff"), "{out}");
    let (code, out, _) = cluster.fleet_cli(&["get", "ev", "-A"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAMESPACE   LAST SEEN"), "{out}");

    // Users do not write events.
    let (code, _, err) = cluster.fleet_cli(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Event\nmetadata: {name: fake}\nreason: Hacked\n"),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("document 1 (event fake): kind Event cannot be applied"),
        "{err}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cascade_orphan_keeps_replica_sets_and_pods() {
    let cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("hello").await;
    cluster
        .apply(&deployment("web", "hello:latest", "", ""))
        .await
        .unwrap();
    let before = cluster.wait_ready("web", 1).await;

    let (code, out, err) =
        cluster.fleet_cli(&["delete", "deployment", "web", "--cascade=orphan"], None);
    assert_eq!(
        (code, out.as_str()),
        (0, "deployment.apps/web deleted\n"),
        "{err}"
    );
    // Controllers get every chance to act on the orphans: they must leave them alone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = replica_sets(&cluster).await;
    assert_eq!(rss.len(), 1, "the replica set stays");
    assert!(rss[0].metadata.owner_references.is_empty(), "{rss:?}");
    let after = cluster.wait_ready("web", 1).await;
    assert_eq!(
        after[0].metadata.uid, before[0].metadata.uid,
        "the same pod keeps running"
    );
    assert_eq!(
        after[0].metadata.controller_uid(),
        Some(rss[0].metadata.uid.as_str()),
        "the pod still belongs to its replica set"
    );

    let (code, _, err) = cluster.fleet_cli(
        &["delete", "rs", &rss[0].metadata.name, "--cascade=nope"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("invalid cascade value (nope)"), "{err}");

    // Background (the default) takes the pods along, in the same transaction.
    let (code, _, err) = cluster.fleet_cli(&["delete", "rs", &rss[0].metadata.name], None);
    assert_eq!(code, 0, "{err}");
    assert!(replica_sets(&cluster).await.is_empty());
    let pods: Vec<Pod> = cluster.pods().await;
    assert!(app_pods(&pods, "web").is_empty(), "{pods:?}");

    // Foreground ends the same here.
    cluster
        .apply(&deployment("web", "hello:latest", "", ""))
        .await
        .unwrap();
    cluster.wait_ready("web", 1).await;
    let (code, _, err) = cluster.fleet_cli(&["delete", "deploy/web", "--cascade=foreground"], None);
    assert_eq!(code, 0, "{err}");
    assert!(replica_sets(&cluster).await.is_empty());
    assert!(app_pods(&cluster.pods().await, "web").is_empty());
    cluster.shutdown().await;
}
