//! Placement and node maintenance on a real cluster, driven through the `fleet` binary where a
//! user would: pod anti-affinity by hostname, required node affinity, NoExecute taints that
//! evict (at once, or after tolerationSeconds), DaemonSets that follow taints, labels, cordon,
//! and drains that stop at a PodDisruptionBudget.
use flotilla_proto::api::{Kind, Object, Pod, PodDisruptionBudget};
use flotilla_testkit::{Cluster, app_pods, eventually};
use std::collections::BTreeSet;

/// A Deployment of hello with a readiness probe and extra pod-spec fields (YAML, indented for
/// the pod spec).
fn deployment(name: &str, replicas: i32, pod_extra: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{pod_extra}
      containers:
      - name: web
        image: hello:latest
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
"#
    )
}

fn nodes_of(pods: &[&Pod]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.spec.node_name.clone())
        .collect()
}

/// Waits until `app` has exactly `n` pods, all Ready, on nodes satisfying `nodes_ok`.
async fn settled(
    cluster: &Cluster,
    app: &str,
    n: usize,
    nodes_ok: impl Fn(&BTreeSet<String>) -> bool,
) -> Vec<Pod> {
    eventually(&format!("{n} ready {app} pods"), || async {
        let pods = cluster.pods().await;
        let ours = app_pods(&pods, app);
        let ready = ours.iter().filter(|p| p.is_ready()).count();
        (ours.len() == n && ready == n && nodes_ok(&nodes_of(&ours)))
            .then(|| ours.into_iter().cloned().collect())
    })
    .await
}

fn scheduling_message(p: &Pod) -> String {
    p.status
        .conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_taints_and_daemonsets_follow_nodes() {
    let cluster = Cluster::builder().agents(3).start().await;
    cluster.push_example("hello").await;

    // Required anti-affinity by hostname: one replica per node, and a fourth has nowhere to go.
    let anti = "      affinity:\n        podAntiAffinity:\n          requiredDuringSchedulingIgnoredDuringExecution:\n          - {labelSelector: {matchLabels: {app: solo}}, topologyKey: kubernetes.io/hostname}";
    cluster.apply(&deployment("solo", 3, anti)).await.unwrap();
    settled(&cluster, "solo", 3, |n| n.len() == 3).await;
    let (code, out, err) =
        cluster.fleet_cli(&["scale", "deployment/solo", "--replicas", "4"], None);
    assert_eq!(code, 0, "{out}{err}");
    let pending = eventually("a fourth solo pod that cannot be placed", || async {
        let pods = cluster.pods().await;
        app_pods(&pods, "solo")
            .into_iter()
            .find(|p| p.spec.node_name.is_none() && !scheduling_message(p).is_empty())
            .cloned()
    })
    .await;
    assert_eq!(
        scheduling_message(&pending),
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    cluster.fleet_cli(&["scale", "deployment/solo", "--replicas", "3"], None);

    // A DaemonSet without tolerations, and a pod pinned to node-1 by required node affinity
    // that tolerates the maintenance taint for a while.
    cluster
        .apply(
            r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agentd}
spec:
  selector: {matchLabels: {app: agentd}}
  template:
    metadata: {labels: {app: agentd}}
    spec:
      containers: [{name: d, image: hello:latest}]
---
apiVersion: v1
kind: Pod
metadata: {name: patient, labels: {app: patient}}
spec:
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-1]}]
  tolerations:
  - {key: maintenance, operator: Exists, effect: NoExecute, tolerationSeconds: 3}
  containers: [{name: web, image: hello:latest}]
"#,
        )
        .await
        .unwrap();
    settled(&cluster, "agentd", 3, |n| n.len() == 3).await;
    let patient = eventually("patient on node-1", || async {
        let pods = cluster.pods().await;
        app_pods(&pods, "patient")
            .first()
            .map(|p| (*p).clone())
            .filter(|p| p.spec.node_name.as_deref() == Some("node-1"))
    })
    .await;

    // NoExecute on node-2: its solo and agentd pods go at once, and the replacement solo pod
    // says why it cannot be placed.
    let (code, out, err) = cluster.fleet_cli(
        &["taint", "nodes", "node-2", "maintenance=now:NoExecute"],
        None,
    );
    assert_eq!((code, out.as_str()), (0, "node/node-2 tainted\n"), "{err}");
    eventually("node-2 emptied and the replacement explained", || async {
        let pods = cluster.pods().await;
        let on_2 = pods
            .iter()
            .filter(|p| p.spec.node_name.as_deref() == Some("node-2"))
            .count();
        let solo = app_pods(&pods, "solo");
        let explained = solo.iter().any(|p| {
            scheduling_message(p).contains("1 node(s) had untolerated taint {maintenance: now}")
        });
        let daemons = app_pods(&pods, "agentd").len();
        (on_2 == 0 && explained && daemons == 2).then_some(())
    })
    .await;

    // On node-1 the patient pod tolerates the taint for 3 s, then is evicted.
    let (code, _, err) = cluster.fleet_cli(
        &["taint", "nodes", "node-1", "maintenance=now:NoExecute"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let still = cluster.pods().await;
    assert!(
        still.iter().any(|p| p.metadata.uid == patient.metadata.uid),
        "evicted before its tolerationSeconds"
    );
    eventually("patient evicted after tolerationSeconds", || async {
        let pods = cluster.pods().await;
        (!pods.iter().any(|p| p.metadata.name == "patient")).then_some(())
    })
    .await;

    // Lifting the taints brings the DaemonSet and the third solo replica back to every node.
    for node in ["node-1", "node-2"] {
        let (code, out, err) =
            cluster.fleet_cli(&["taint", "nodes", node, "maintenance:NoExecute-"], None);
        assert_eq!(
            (code, out),
            (0, format!("node/{node} untainted\n")),
            "{err}"
        );
    }
    let (code, _, err) = cluster.fleet_cli(&["taint", "nodes", "node-1", "maintenance-"], None);
    assert_eq!(code, 1);
    assert!(err.contains("taint \"maintenance\" not found"), "{err}");
    settled(&cluster, "solo", 3, |n| n.len() == 3).await;
    settled(&cluster, "agentd", 3, |n| n.len() == 3).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_respects_disruption_budgets() {
    let cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("hello").await;

    // Labels the kubectl way: a changed value needs --overwrite; heartbeats keep hub labels.
    let (code, out, _) = cluster.fleet_cli(&["label", "nodes", "node-1", "tier=edge"], None);
    assert_eq!((code, out.as_str()), (0, "node/node-1 labeled\n"));
    let (code, _, err) = cluster.fleet_cli(&["label", "node/node-1", "tier=core"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("'tier' already has a value (edge), and --overwrite is false"),
        "{err}"
    );
    let (code, _, _) =
        cluster.fleet_cli(&["label", "node/node-1", "tier=core", "--overwrite"], None);
    assert_eq!(code, 0);

    cluster.apply(&deployment("web", 4, "")).await.unwrap();
    settled(&cluster, "web", 4, |n| n.len() == 2).await;
    cluster
        .apply(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web-pdb}\nspec:\n  maxUnavailable: 1\n  selector: {matchLabels: {app: web}}\n",
        )
        .await
        .unwrap();
    eventually("the budget's status", || async {
        let (_, out, _) = cluster.fleet_cli(&["get", "pdb"], None);
        let row: Vec<&str> = out.lines().nth(1)?.split_whitespace().collect();
        (row[..4] == ["web-pdb", "N/A", "1", "1"]).then_some(())
    })
    .await;

    // Draining node-0 evicts its two replicas one at a time: the second waits until the first
    // one's replacement (on node-1, as node-0 is cordoned) is Ready.
    let tracker = cluster.track_pods("web");
    let (code, out, err) = cluster.fleet_cli(&["drain", "node-0", "--timeout", "60s"], None);
    let seen = tracker.finish().await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("node/node-0 cordoned\n"), "{out}");
    assert!(out.contains("evicting pod default/web-"), "{out}");
    assert!(
        out.contains("Cannot evict pod as it would violate the pod's disruption budget"),
        "the second eviction should have waited for the budget: {out}"
    );
    assert!(out.ends_with("node/node-0 drained\n"), "{out}");
    assert!(
        seen.min_ready >= 3,
        "the budget allowed one disruption: {seen:?}"
    );
    settled(&cluster, "web", 4, |n| n.iter().all(|n| n == "node-1")).await;
    let (_, out, _) = cluster.fleet_cli(&["get", "nodes"], None);
    assert!(out.contains("node-0   Ready,SchedulingDisabled"), "{out}");

    // With every replica required, a drain is refused with the budget's reason and gives up
    // at its timeout; nothing is evicted and the node stays cordoned.
    cluster
        .apply(
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web-pdb}\nspec:\n  minAvailable: 4\n  selector: {matchLabels: {app: web}}\n",
        )
        .await
        .unwrap();
    let (code, out, _) = cluster.fleet_cli(&["uncordon", "node-0"], None);
    assert_eq!((code, out.as_str()), (0, "node/node-0 uncordoned\n"));
    let (code, out, err) = cluster.fleet_cli(&["drain", "node-1", "--timeout", "3s"], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("The disruption budget web-pdb needs 4 healthy pods and has 4 currently"),
        "{out}"
    );
    assert!(
        err.contains("drain did not complete within 3s")
            && err.contains("still protected by a PodDisruptionBudget"),
        "{err}"
    );
    let pods = cluster.pods().await;
    assert_eq!(app_pods(&pods, "web").len(), 4);
    let c = cluster.fleet().await;
    let node = c.get(Kind::Node, None, Some("node-1")).await.unwrap();
    let pdb = c
        .get(Kind::PodDisruptionBudget, Some("default"), Some("web-pdb"))
        .await
        .unwrap();
    c.close().await;
    match &node[..] {
        [Object::Node(n)] => {
            assert!(n.spec.unschedulable);
            assert_eq!(
                n.metadata.labels.get("tier").map(String::as_str),
                Some("core")
            );
        }
        other => panic!("{other:?}"),
    }
    match &pdb[..] {
        [Object::PodDisruptionBudget(PodDisruptionBudget { status, .. })] => {
            assert_eq!(
                (
                    status.current_healthy,
                    status.desired_healthy,
                    status.disruptions_allowed
                ),
                (4, 4, 0)
            );
        }
        other => panic!("{other:?}"),
    }
    cluster.shutdown().await;
}
