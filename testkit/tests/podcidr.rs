//! Per-node pod CIDRs end to end: the hub gives each node its own range of the cluster CIDR
//! (`spec.podCIDR`), container pods get their addresses from their node's range (real runc
//! and pod networks, images built from busybox-static in a loopback registry), the range
//! survives agent and hub restarts, a node without a free range waits with a Warning event
//! and takes the range a deleted node gave back. Needs root, runc, iptables, docker-registry
//! and busybox-static (scripts/setup installs them); fails clearly without.
use flotilla_proto::api::{Event, EventType, Kind, Node, Object, Pod};
use flotilla_proto::wire::{Request, Response};
use flotilla_testkit::registry::{Registry, busybox_image, require_container_tools};
use flotilla_testkit::{Cluster, eventually_within};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

async fn nodes(cluster: &Cluster) -> Vec<Node> {
    let c = cluster.fleet().await;
    let r = c.get(Kind::Node, None, None).await;
    c.close().await;
    r.unwrap_or_default()
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect()
}

/// Every node's `spec.podCIDR` (None: the node has none).
async fn node_cidrs(cluster: &Cluster) -> BTreeMap<String, Option<IpNet>> {
    nodes(cluster)
        .await
        .into_iter()
        .map(|n| {
            let cidr = n.spec.pod_cidr.as_deref().map(|c| c.parse().unwrap());
            assert_eq!(
                n.spec.pod_cidrs,
                n.spec.pod_cidr.iter().cloned().collect::<Vec<_>>(),
                "podCIDRs is [podCIDR]"
            );
            (n.metadata.name, cidr)
        })
        .collect()
}

async fn events(cluster: &Cluster) -> Vec<Event> {
    let c = cluster.fleet().await;
    let r = c.get(Kind::Event, Some("default"), None).await;
    c.close().await;
    r.unwrap_or_default()
        .into_iter()
        .filter_map(|o| match o {
            Object::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn pod_ip(p: &Pod) -> Option<IpAddr> {
    p.status.pod_ip.as_deref()?.parse().ok()
}

fn running(p: &Pod) -> bool {
    p.status.phase == "Running" && pod_ip(p).is_some()
}

/// The range agent `i`'s pod network uses now.
fn agent_range(cluster: &Cluster, i: usize) -> Option<IpNet> {
    let net = cluster
        .agent(i)
        .shared
        .network
        .as_ref()
        .expect("pod network");
    net.subnet().map(|s| s.parse().unwrap())
}

async fn wait_agent_range(cluster: &Cluster, i: usize, want: Option<IpNet>) {
    eventually_within(
        &format!("agent {i} uses pod CIDR {want:?}"),
        Duration::from_secs(30),
        || async { (agent_range(cluster, i) == want).then_some(()) },
    )
    .await
}

fn sleeper_pod(name: &str, node: &str, image: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_their_own_pod_cidrs_and_keep_them_across_restarts() {
    require_container_tools("pod CIDR");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let image = busybox_image(&["sleep", "3600"], serde_json::json!({})).unwrap();
    registry.push("test/sleep:v1", &image).await.unwrap();
    let image = format!("{host}/test/sleep:v1");
    let mut cluster = Cluster::builder().agents(2).registry(&host).start().await;
    let cluster_net: IpNet = cluster.cluster_cidr.parse().unwrap();

    // Two /24s of the cluster CIDR, one each, not overlapping.
    let cidrs = node_cidrs(&cluster).await;
    let range = |node: &str| cidrs[node].unwrap_or_else(|| panic!("{node} has no pod CIDR"));
    let (r0, r1) = (range("node-0"), range("node-1"));
    for r in [r0, r1] {
        assert!(cluster_net.contains(&r), "{r} inside {cluster_net}");
        assert_eq!(r.prefix_len(), 24, "{r}");
    }
    assert!(
        !r0.contains(&r1.network()) && !r1.contains(&r0.network()),
        "{r0} and {r1} overlap"
    );
    wait_agent_range(&cluster, 0, Some(r0)).await;
    wait_agent_range(&cluster, 1, Some(r1)).await;

    // Container pods take their addresses from their node's range.
    for (name, node) in [("p0", "node-0"), ("p1", "node-1")] {
        cluster
            .apply(&sleeper_pod(name, node, &image))
            .await
            .unwrap();
    }
    let p0 = cluster.wait_pod("p0", "running with an IP", running).await;
    let p1 = cluster.wait_pod("p1", "running with an IP", running).await;
    let (ip0, ip1) = (pod_ip(&p0).unwrap(), pod_ip(&p1).unwrap());
    assert!(r0.contains(&ip0), "p0's {ip0} in node-0's {r0}");
    assert!(r1.contains(&ip1), "p1's {ip1} in node-1's {r1}");

    // An agent restarted while the hub is away keeps its range (from its data dir) and
    // attaches its cached pod from it.
    cluster.stop_hub().await;
    cluster.stop_agent(1).await;
    cluster.start_agent(1).await;
    assert_eq!(
        agent_range(&cluster, 1),
        Some(r1),
        "range after an offline restart"
    );
    let net_dir = cluster.agent_config(1).data_dir.join("net");
    eventually_within(
        "agent 1 re-attaches p1 from its range",
        Duration::from_secs(60),
        || async {
            let records = std::fs::read_dir(&net_dir).ok()?;
            records
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .any(|t| t.contains(&format!("\"subnet\":\"{r1}\"")))
                .then_some(())
        },
    )
    .await;

    // The hub comes back: the same ranges on the nodes, and p1's new address is in its.
    cluster.start_hub().await;
    cluster.wait_nodes_ready(2).await;
    assert_eq!(node_cidrs(&cluster).await, cidrs, "ranges after restarts");
    let p1 = cluster.wait_pod("p1", "running again", running).await;
    let ip1 = pod_ip(&p1).unwrap();
    assert!(r1.contains(&ip1), "p1's {ip1} in node-1's {r1}");
    assert_eq!(agent_range(&cluster, 1), Some(r1));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_free_range_waits_for_one() {
    require_container_tools("pod CIDR");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let image = busybox_image(&["sleep", "3600"], serde_json::json!({})).unwrap();
    registry.push("test/sleep:v1", &image).await.unwrap();
    let image = format!("{host}/test/sleep:v1");
    // Room for one node only.
    let only = flotilla_testkit::free_cluster_cidr(1);
    let only_net: IpNet = only.parse().unwrap();
    let mut cluster = Cluster::builder()
        .agents(2)
        .registry(&host)
        .cluster_cidr(&only)
        .start()
        .await;
    let cidrs = node_cidrs(&cluster).await;
    let (with, without) = match (cidrs["node-0"], cidrs["node-1"]) {
        (Some(r), None) | (None, Some(r)) => {
            assert_eq!(r, only_net);
            if cidrs["node-0"].is_some() {
                (0, 1)
            } else {
                (1, 0)
            }
        }
        other => panic!("exactly one node should have {only}: {other:?}"),
    };
    let without_name = format!("node-{without}");
    let warning = eventually_within(
        "CIDRNotAvailable on the node without a range",
        Duration::from_secs(30),
        || async {
            events(&cluster).await.into_iter().find(|e| {
                e.involved_object.kind == "Node"
                    && e.involved_object.name == without_name
                    && e.reason == "CIDRNotAvailable"
            })
        },
    )
    .await;
    assert_eq!(warning.type_, EventType::Warning);
    assert_eq!(
        warning.message,
        format!(
            "node {without_name}: no pod CIDR is free: all 1 /24 ranges of the cluster CIDR {only} are assigned"
        )
    );
    assert_eq!(agent_range(&cluster, without), None);

    // A container pod there waits for a range.
    cluster
        .apply(&sleeper_pod("waits", &without_name, &image))
        .await
        .unwrap();
    cluster
        .wait_pod("waits", "waiting for a pod CIDR", |p| {
            p.status.container_statuses.first().is_some_and(|c| {
                c.state.waiting.as_ref().is_some_and(|w| {
                    w.reason.as_deref() == Some("ContainerCreating")
                        && w.message.as_deref() == Some("node has no pod CIDR yet")
                })
            })
        })
        .await;

    // The node holding the range leaves the cluster: the waiting node gets it, and its pod
    // an address from it.
    cluster.stop_agent(with).await;
    let c = cluster.fleet().await;
    c.delete(Kind::Node, "", &format!("node-{with}"))
        .await
        .unwrap();
    c.close().await;
    wait_agent_range(&cluster, without, Some(only_net)).await;
    let p = cluster
        .wait_pod("waits", "running with an IP", running)
        .await;
    let ip = pod_ip(&p).unwrap();
    assert!(only_net.contains(&ip), "{ip} in {only_net}");

    // The old holder comes back with the range in its data dir, finds it taken, and drops
    // it: two nodes never hand out one range.
    let saved = cluster.agent_config(with).data_dir.join("net/pod-cidr");
    assert_eq!(
        std::fs::read_to_string(&saved).unwrap(),
        only,
        "the range is saved in the data dir"
    );
    cluster.start_agent(with).await;
    wait_agent_range(&cluster, with, None).await;
    assert!(!saved.exists(), "the dropped range is no longer saved");
    let cidrs = node_cidrs(&cluster).await;
    assert_eq!(cidrs[&without_name], Some(only_net));
    assert_eq!(cidrs[&format!("node-{with}")], None);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pod_cidr_is_recorded_unless_another_node_has_it() {
    require_container_tools("pod CIDR");
    let mut cluster = Cluster::builder().agents(2).start().await;
    let cidrs = node_cidrs(&cluster).await;
    let (r0, r1) = (cidrs["node-0"].unwrap(), cidrs["node-1"].unwrap());

    // A node may read its own Node (that is how it learns its range), and no other.
    let (endpoint, conn) = cluster.node_connection(0).await;
    let get = |name: &str| Request::Get {
        kind: Kind::Node,
        namespace: None,
        name: Some(name.into()),
    };
    let (_, _, own): (_, _, Response) = flotilla_transport::request(&conn, &get("node-0"))
        .await
        .unwrap();
    assert!(
        matches!(&own, Response::Objects { items, .. } if items.len() == 1 && items[0].contains(&r0.to_string())),
        "{own:?}"
    );
    let (_, _, other): (_, _, Response) = flotilla_transport::request(&conn, &get("node-1"))
        .await
        .unwrap();
    assert!(
        matches!(&other, Response::Error { message } if message.contains("forbidden")),
        "{other:?}"
    );
    conn.close(0u32.into(), b"");
    endpoint.close(0u32.into(), b"");

    // The range is the hub's to give: apply cannot set or change it.
    let err = cluster
        .apply(
            "apiVersion: v1\nkind: Node\nmetadata: {name: node-0}\nspec: {podCIDR: 10.99.0.0/24}\n",
        )
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!(
            "spec.podCIDR: may not be set or changed by apply (the hub assigns it; it is {r0})"
        )),
        "{err:#}"
    );

    // node-1 restarted with --pod-cidr set to node-0's range: it uses it, the hub records
    // none for it and says why.
    cluster.stop_agent(1).await;
    cluster.set_agent_pod_cidr(1, Some(&r0.to_string()));
    cluster.start_agent(1).await;
    assert_eq!(
        agent_range(&cluster, 1),
        Some(r0),
        "--pod-cidr wins on the node"
    );
    let warning = eventually_within(
        "CIDRAssignmentFailed on node-1",
        Duration::from_secs(30),
        || async {
            events(&cluster)
                .await
                .into_iter()
                .find(|e| e.involved_object.name == "node-1" && e.reason == "CIDRAssignmentFailed")
        },
    )
    .await;
    assert_eq!(
        warning.message,
        format!(
            "node node-1: --pod-cidr {r0} overlaps the pod CIDR {r0} of node node-0; the hub records no pod CIDR for this node"
        )
    );
    assert_eq!(warning.type_, EventType::Warning);
    assert_eq!(node_cidrs(&cluster).await["node-1"], None);

    // A free one (outside the cluster CIDR even) is recorded.
    let own: IpNet = flotilla_testkit::free_cluster_cidr(1).parse().unwrap();
    cluster.stop_agent(1).await;
    cluster.set_agent_pod_cidr(1, Some(&own.to_string()));
    cluster.start_agent(1).await;
    eventually_within(
        "node-1 records its --pod-cidr",
        Duration::from_secs(30),
        || async { (node_cidrs(&cluster).await["node-1"] == Some(own)).then_some(()) },
    )
    .await;

    // Without the flag again, the node gets a range of the cluster CIDR back (its old one,
    // still free, which it kept in its data dir).
    cluster.stop_agent(1).await;
    cluster.set_agent_pod_cidr(1, None);
    cluster.start_agent(1).await;
    eventually_within(
        "node-1 back on a hub range",
        Duration::from_secs(30),
        || async { (node_cidrs(&cluster).await["node-1"] == Some(r1)).then_some(()) },
    )
    .await;
    wait_agent_range(&cluster, 1, Some(r1)).await;
    cluster.shutdown().await;
}
