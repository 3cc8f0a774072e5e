//! Partitions: the hub and three agents in network namespaces of their own, on one bridge of
//! private addresses; a test pulls an agent's cable (`ip link set … down`) and plugs it back.
//! Checked: a cut-off node is marked NotReady after the grace period and not before, its pods
//! are shown Unknown yet keep serving on the node, nothing is duplicated by default, and after
//! the heal everything converges without a restart; with replacement opted in
//! (`flotilla.io/disconnect-*`), exactly one copy of each replica survives the heal; when most
//! nodes drop at once, nothing is replaced. Needs root and iproute2 (CI has both).
use flotilla_proto::api::Pod;
use flotilla_proto::{Kind, Object};
use flotilla_testkit::netns::Net;
use flotilla_testkit::{Cluster, app_pods, eventually, eventually_within};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The test cluster's node grace (testkit's hub config).
const GRACE: Duration = Duration::from_secs(5);

fn deployment(name: &str, replicas: i32, annotations: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations: {{{annotations}}}
    spec:
      containers:
      - name: web
        image: hello:latest
        resources: {{requests: {{cpu: 100m, memory: 32Mi}}, limits: {{memory: 64Mi}}}}
        readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
"#
    )
}

async fn node_ready(cluster: &Cluster, name: &str) -> bool {
    let c = cluster.fleet().await;
    let nodes = c.get(Kind::Node, None, None).await.expect("list nodes");
    c.close().await;
    nodes
        .iter()
        .any(|o| matches!(o, Object::Node(n) if n.metadata.name == name && n.is_ready()))
}

/// GET from inside agent `i`'s namespace (where its pods serve even while it is cut off).
fn curl_on(net: &Net, i: usize, endpoint: &str) -> u16 {
    let out = net.agent_ns(i).exec(&[
        "curl",
        "-s",
        "-m",
        "5",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{endpoint}/"),
    ]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn on_node<'a>(pods: &'a [Pod], node: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.spec.node_name.as_deref() == Some(node))
        .collect()
}

fn names(pods: &[&Pod]) -> BTreeSet<String> {
    pods.iter().map(|p| p.metadata.name.clone()).collect()
}

#[test]
fn cut_off_node_keeps_its_pods_and_nothing_is_duplicated() {
    let net = Net::create(3).expect("network namespaces");
    net.block_on(async {
        let cluster = Cluster::builder().agents(3).on(&net).start().await;
        cluster.push_example("hello").await;
        cluster.apply(&deployment("web", 3, "")).await.unwrap();
        let before = cluster.wait_ready("web", 3).await;
        let victim = on_node(&before, "node-1")
            .first()
            .map(|p| (*p).clone())
            .expect("a replica on node-1 (replicas spread over nodes)");
        let endpoint = victim.status.endpoint.clone().unwrap();
        let tracker = cluster.track_pods("web");

        let cut = Instant::now();
        net.cut(1);
        eventually_within("node-1 to turn NotReady", GRACE * 3, || async {
            (!node_ready(&cluster, "node-1").await).then_some(())
        })
        .await;
        let detected = cut.elapsed();
        // The last heartbeat may have left up to one interval (1 s) before the cut.
        assert!(
            detected + Duration::from_secs(1) >= GRACE,
            "node marked NotReady after {detected:?}, before its grace of {GRACE:?}"
        );
        let unknown = eventually("the cut-off pod to show Unknown", || async {
            let pods = cluster.pods().await;
            pods.into_iter()
                .find(|p| p.metadata.uid == victim.metadata.uid && p.status.phase == "Unknown")
        })
        .await;
        assert!(!unknown.is_ready());
        // Still running where it was, and nothing started in its place.
        assert_eq!(curl_on(&net, 1, &endpoint), 200);
        tokio::time::sleep(GRACE).await;
        let during = cluster.pods().await;
        assert_eq!(
            names(&app_pods(&during, "web")),
            names(&before.iter().collect::<Vec<_>>())
        );
        assert_eq!(curl_on(&net, 1, &endpoint), 200);

        net.heal(1);
        let after = eventually_within("node-1 back with its pod Ready", GRACE * 6, || async {
            if !node_ready(&cluster, "node-1").await {
                return None;
            }
            let pods = cluster.pods().await;
            let p = pods
                .into_iter()
                .find(|p| p.metadata.uid == victim.metadata.uid)?;
            (p.is_ready() && p.status.phase == "Running").then_some(p)
        })
        .await;
        assert_eq!(after.restarts(), 0, "the pod must not have restarted");
        assert_eq!(after.status.start_time, victim.status.start_time);
        let observed = tracker.finish().await;
        assert_eq!(
            observed.max_pods, 3,
            "nothing may be duplicated: {observed:?}"
        );
        cluster.shutdown().await;
    });
}

#[test]
fn opted_in_replacement_leaves_exactly_one_survivor() {
    let net = Net::create(3).expect("network namespaces");
    net.block_on(async {
        let cluster = Cluster::builder().agents(3).on(&net).start().await;
        cluster.push_example("hello").await;
        let keep = r#""flotilla.io/disconnect-lost-after": 1s"#;
        let replace = r#""flotilla.io/disconnect-lost-after": 1s, "flotilla.io/disconnect-reconcile": keep-replacement"#;
        cluster.apply(&deployment("keep", 3, keep)).await.unwrap();
        cluster.apply(&deployment("repl", 3, replace)).await.unwrap();
        let keep_before = cluster.wait_ready("keep", 3).await;
        let repl_before = cluster.wait_ready("repl", 3).await;
        let keep_orig = on_node(&keep_before, "node-2")[0].clone();
        let repl_orig = on_node(&repl_before, "node-2")[0].clone();
        let repl_endpoint = repl_orig.status.endpoint.clone().unwrap();

        net.cut(2);
        // Past the grace and lost-after: both workloads run three Ready copies elsewhere.
        let during = eventually_within("replacements on the other nodes", GRACE * 4, || async {
            let pods = cluster.pods().await;
            let elsewhere = |app| {
                app_pods(&pods, app)
                    .iter()
                    .filter(|p| p.spec.node_name.as_deref() != Some("node-2") && p.is_ready())
                    .count()
            };
            (elsewhere("keep") == 3 && elsewhere("repl") == 3).then_some(pods)
        })
        .await;
        // keep-original: the lost pod is still in the store, marked lost; keep-replacement: gone.
        let lost = during
            .iter()
            .find(|p| p.metadata.uid == keep_orig.metadata.uid)
            .expect("keep-original keeps the lost pod");
        assert!(flotilla_proto::disconnect::is_lost(lost));
        assert!(!during.iter().any(|p| p.metadata.uid == repl_orig.metadata.uid));
        // Both originals still run on the cut-off node meanwhile.
        assert_eq!(curl_on(&net, 2, &repl_endpoint), 200);

        net.heal(2);
        eventually_within("one survivor per replica after the heal", GRACE * 6, || async {
            if !node_ready(&cluster, "node-2").await {
                return None;
            }
            let pods = cluster.pods().await;
            let keep = app_pods(&pods, "keep");
            let repl = app_pods(&pods, "repl");
            let original_back = keep
                .iter()
                .any(|p| p.metadata.uid == keep_orig.metadata.uid && p.is_ready());
            (keep.len() == 3 && repl.len() == 3 && original_back && keep.iter().all(|p| p.is_ready()))
                .then_some(())
        })
        .await;
        let pods = cluster.pods().await;
        let back = pods
            .iter()
            .find(|p| p.metadata.uid == keep_orig.metadata.uid)
            .unwrap();
        assert_eq!(back.restarts(), 0, "the original must not have restarted");
        // keep-replacement: the agent stopped the original once it heard of the delete.
        eventually("the replaced original to stop serving", || async {
            (curl_on(&net, 2, &repl_endpoint) != 200).then_some(())
        })
        .await;
        cluster.shutdown().await;
    });
}

#[test]
fn most_nodes_silent_means_the_hub_is_cut_off_and_replaces_nothing() {
    let net = Net::create(3).expect("network namespaces");
    net.block_on(async {
        let cluster = Cluster::builder().agents(3).on(&net).start().await;
        cluster.push_example("hello").await;
        // Long enough to cover the two nodes' returns being seconds apart after the heal (QUIC
        // retransmission back-off, or a reconnect once the idle timeout has passed): the one
        // still silent when the other is back gets a full lost-after from then.
        let opt_in = r#""flotilla.io/disconnect-lost-after": 10s"#;
        cluster.apply(&deployment("web", 3, opt_in)).await.unwrap();
        let before = cluster.wait_ready("web", 3).await;
        let tracker = cluster.track_pods("web");
        net.cut(1);
        net.cut(2);
        eventually_within("two nodes NotReady", GRACE * 3, || async {
            let a = node_ready(&cluster, "node-1").await;
            let b = node_ready(&cluster, "node-2").await;
            (!a && !b).then_some(())
        })
        .await;
        // Past lost-after: still the same three pods, none declared lost.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let during = cluster.pods().await;
        let during = app_pods(&during, "web");
        assert_eq!(names(&during), names(&before.iter().collect::<Vec<_>>()));
        assert!(
            !during
                .iter()
                .any(|p| flotilla_proto::disconnect::is_lost(p))
        );
        net.heal(1);
        net.heal(2);
        cluster.wait_ready("web", 3).await;
        let observed = tracker.finish().await;
        assert_eq!(observed.max_pods, 3, "{observed:?}");
        cluster.shutdown().await;
    });
}

#[test]
fn bad_disconnect_annotations_are_refused_naming_the_field() {
    let net = Net::create(1).expect("network namespaces");
    net.block_on(async {
        let cluster = Cluster::builder().agents(1).on(&net).start().await;
        let e = cluster
            .apply(&deployment(
                "web",
                1,
                r#""flotilla.io/disconnect-lost-after": soon"#,
            ))
            .await
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("spec.template.metadata.annotations[flotilla.io/disconnect-lost-after]"),
            "{text}"
        );
        let pods = cluster.pods().await;
        assert!(pods.is_empty());
        cluster.shutdown().await;
    });
}
