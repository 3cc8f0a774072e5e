//! Scheduler and controller throughput with 1,000 simulated nodes: placement alone (the pure
//! snapshot, as one scheduling pass runs it), and a real in-process hub taking a 10,000-replica
//! Deployment from apply to every pod bound. The reference figure is Nomad's C1M rate.
use flotilla_hub::scheduler::Snapshot;
use flotilla_proto::api::{
    Condition, Container, Kind, LabelSelector, Node, Object, OwnerReference, Pod,
    TopologySpreadConstraint,
};
use flotilla_proto::quantity::Quantity;
use std::time::{Duration, Instant};

const NODES: usize = 1000;
const REPLICAS: usize = 10_000;
/// Nomad's "C1M" challenge: a million containers in under 5 minutes, 3,750 placements/s.
const NOMAD_C1M_PER_SEC: f64 = 3750.0;

fn node(i: usize) -> Node {
    let mut n = Node::default();
    n.metadata.name = format!("sim-{i:04}");
    let labels = &mut n.metadata.labels;
    labels.insert("kubernetes.io/hostname".into(), n.metadata.name.clone());
    labels.insert(
        "topology.kubernetes.io/zone".into(),
        format!("zone-{}", i % 10),
    );
    labels.insert("kubernetes.io/arch".into(), "arm64".into());
    n.status
        .allocatable
        .insert("cpu".into(), Quantity("4".into()));
    n.status
        .allocatable
        .insert("memory".into(), Quantity("4Gi".into()));
    n.status.capacity = n.status.allocatable.clone();
    n.status.conditions.push(Condition {
        last_heartbeat_time: Some(now()),
        ..Condition::new("Ready", "True", "AgentReady", "simulated")
    });
    n
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

fn pending_pod(i: usize, spread: bool) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = format!("web-{i}");
    p.metadata.namespace = Some("default".into());
    p.metadata.labels.insert("app".into(), "web".into());
    p.metadata.owner_references.push(OwnerReference {
        kind: "ReplicaSet".into(),
        name: "web".into(),
        uid: "rs-uid".into(),
        controller: Some(true),
        ..Default::default()
    });
    let mut c = Container {
        name: "web".into(),
        image: "hello:latest".into(),
        ..Default::default()
    };
    c.resources
        .requests
        .insert("cpu".into(), Quantity("10m".into()));
    c.resources
        .requests
        .insert("memory".into(), Quantity("16Mi".into()));
    p.spec.containers.push(c);
    if spread {
        p.spec
            .topology_spread_constraints
            .push(TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "topology.kubernetes.io/zone".into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                label_selector: Some(LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
            });
    }
    p
}

/// Places `count` pods one after another on a snapshot, as a pass does; returns placements/s.
fn placement(count: usize, spread: bool) -> anyhow::Result<f64> {
    let nodes: Vec<Node> = (0..NODES).map(node).collect();
    let started = Instant::now();
    let mut snapshot = Snapshot::new(nodes, &[]);
    for i in 0..count {
        let pod = pending_pod(i, spread);
        let at = snapshot
            .place(&pod)
            .map_err(|e| anyhow::anyhow!("pod {i} not placed: {e}"))?;
        snapshot.bind(&pod, at);
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// A real hub (in process, its own redb in a temp dir) with simulated Ready nodes: apply a
/// Deployment of `REPLICAS` and wait until every pod is bound. Returns the elapsed time.
async fn apply_to_bound(run: usize) -> anyhow::Result<Duration> {
    let dir = tempfile::tempdir()?;
    let mut config = flotilla_hub::Config::new(dir.path().join("hub"));
    // Simulated nodes never heartbeat; keep them Ready for the run.
    config.node_grace = Duration::from_secs(3600);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let handle = flotilla_hub::start(config, socket).await?;
    let store = &handle.hub.store;
    store.write(|tx| {
        for i in 0..NODES {
            tx.put(Object::Node(node(i)))?;
        }
        Ok(())
    })?;
    let mut rx = store.subscribe();
    let client = fleet::Client::connect(&handle.client_config()).await?;
    let deploy = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {REPLICAS}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - {{name: web, image: hello:latest, resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}}}\n"
    );
    let started = Instant::now();
    client.apply_text(&deploy).await?;
    let mut bound = std::collections::HashSet::new();
    while bound.len() < REPLICAS {
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Err(_) => anyhow::bail!(
                "run {run}: only {} of {REPLICAS} pods bound after 2 min",
                bound.len()
            ),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                // Fell behind the event stream: count from the store instead.
                let (pods, _) = store.list(Kind::Pod, Some("default"))?;
                bound = pods
                    .iter()
                    .filter_map(|o| match o {
                        Object::Pod(p) if p.spec.node_name.is_some() => {
                            Some(p.metadata.name.clone())
                        }
                        _ => None,
                    })
                    .collect();
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(e)) => {
                if let Some(Object::Pod(p)) = &e.object
                    && p.spec.node_name.is_some()
                {
                    bound.insert(p.metadata.name.clone());
                }
            }
        }
    }
    let took = started.elapsed();
    client.close().await;
    handle.shutdown().await;
    Ok(took)
}

pub async fn run() -> anyhow::Result<()> {
    println!(
        "== scheduler, {NODES} simulated nodes (goal >= {NOMAD_C1M_PER_SEC:.0} placements/s, Nomad's C1M rate)"
    );
    let plain = placement(REPLICAS, false)?;
    println!(
        "  placement only, {REPLICAS} pods:                 {plain:>9.0} pods/s   ({:.1}x the C1M rate)",
        plain / NOMAD_C1M_PER_SEC
    );
    let spread = placement(REPLICAS, true)?;
    println!(
        "  placement only, with zone topology spread:     {spread:>9.0} pods/s   ({:.1}x)",
        spread / NOMAD_C1M_PER_SEC
    );
    let runs = 3;
    let mut times = Vec::new();
    for run in 0..runs {
        times.push(apply_to_bound(run).await?);
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "  hub, apply {REPLICAS}-replica Deployment -> all bound, {runs} runs: p50 {:.2} s   max {:.2} s   ({:.0} pods/s end to end, {:.1}x C1M)",
        p50.as_secs_f64(),
        max.as_secs_f64(),
        REPLICAS as f64 / p50.as_secs_f64(),
        REPLICAS as f64 / p50.as_secs_f64() / NOMAD_C1M_PER_SEC
    );
    Ok(())
}
