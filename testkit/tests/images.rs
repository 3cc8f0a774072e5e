//! The images a node holds, end to end: node status lists them (names, sizes) with runc's
//! version and the known-vulnerability condition, `fleet get images` shows them, and image
//! garbage collection (thresholds forced to 0/0) removes an image no pod uses, its snapshot
//! and the blobs no other image shares, while the image a running pod uses stays. Needs
//! root, runc, iptables, docker-registry and busybox-static (scripts/setup installs them);
//! fails clearly without.
use flotilla_proto::api::{Kind, Node, Object, Pod};
use flotilla_testkit::registry::{
    Layer, Registry, TestImage, busybox_image, require_container_tools,
};
use flotilla_testkit::{Cluster, eventually_within};
use std::path::Path;
use std::time::Duration;

async fn node(cluster: &Cluster) -> Node {
    let c = cluster.fleet().await;
    let nodes = c.get(Kind::Node, None, Some("node-0")).await.unwrap();
    c.close().await;
    match nodes.into_iter().next() {
        Some(Object::Node(n)) => n,
        other => panic!("node-0: {other:?}"),
    }
}

async fn wait_node(cluster: &Cluster, what: &str, f: impl Fn(&Node) -> bool) -> Node {
    eventually_within(
        &format!("node-0: {what}"),
        Duration::from_secs(60),
        || async { Some(node(cluster).await).filter(|n| f(n)) },
    )
    .await
}

async fn wait_running(cluster: &Cluster, name: &str) -> Pod {
    eventually_within(
        &format!("pod {name} running"),
        Duration::from_secs(60),
        || async {
            cluster
                .pods()
                .await
                .into_iter()
                .find(|p| p.metadata.name == name && p.status.phase == "Running")
        },
    )
    .await
}

fn lists(n: &Node, name: &str) -> bool {
    n.status
        .images
        .iter()
        .any(|i| i.names.iter().any(|x| x == name))
}

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {image}, command: [sleep, '3600']}}\n"
    )
}

/// The blobs an image is made of: manifest, config, layers.
fn blobs_of(store: &Path, manifest: &str) -> Vec<String> {
    let hex = manifest.strip_prefix("sha256:").unwrap();
    let bytes = std::fs::read(store.join("blobs/sha256").join(hex)).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let mut out = vec![manifest.to_string()];
    out.push(m["config"]["digest"].as_str().unwrap().to_string());
    for l in m["layers"].as_array().unwrap() {
        out.push(l["digest"].as_str().unwrap().to_string());
    }
    out
}

fn has_blob(store: &Path, digest: &str) -> bool {
    store
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
        .is_file()
}

fn snapshot(store: &Path, digest: &str) -> std::path::PathBuf {
    store
        .join("snapshots")
        .join(digest.strip_prefix("sha256:").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_status_lists_images_and_gc_removes_unused_ones() {
    require_container_tools("image");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    // A and B share the busybox layer; A has one layer of its own.
    let mut a: TestImage = busybox_image(&["sleep", "3600"], serde_json::json!({})).unwrap();
    a.layers
        .push(Layer::new().file("only-in-a.txt", 0o644, b"a").gzip());
    let b = busybox_image(&["sleep", "3600"], serde_json::json!({"Env": ["IMAGE=b"]})).unwrap();
    let a_digest = registry.push("test/a:v1", &a).await.unwrap();
    let b_digest = registry.push("test/b:v1", &b).await.unwrap();
    let a_ref = format!("{host}/test/a:v1");
    let b_ref = format!("{host}/test/b:v1");
    // Collection forced: every image no pod uses goes at the next round.
    let cluster = Cluster::builder()
        .agents(1)
        .registry(&host)
        .configure(|_, cfg| {
            cfg.image_gc = flotilla_oci::gc::Thresholds { high: 0, low: 0 };
            cfg.image_gc_period = Duration::from_millis(500);
        })
        .start()
        .await;
    let store = cluster.agent_config(0).data_dir.join("images");

    cluster.apply(&pod("a", &a_ref)).await.unwrap();
    wait_running(&cluster, "a").await;
    let n = wait_node(&cluster, "lists image A", |n| lists(n, &a_ref)).await;
    let img = n
        .status
        .images
        .iter()
        .find(|i| i.names.contains(&a_ref))
        .unwrap();
    assert!(
        img.names.contains(&format!("{host}/test/a@{a_digest}")),
        "{:?}",
        img.names
    );
    // Layers (busybox is ~1 MiB gzipped) plus the unpacked snapshot.
    assert!(img.size_bytes > 1 << 20, "{img:?}");
    let runtime = &n.status.node_info.container_runtime_version;
    assert!(runtime.starts_with("runc://1."), "{runtime:?}");
    let cond = n
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "ContainerRuntimeVulnerable")
        .unwrap_or_else(|| panic!("no runtime condition: {:?}", n.status.conditions));
    assert!(
        ["True", "False"].contains(&cond.status.as_str()),
        "{cond:?}"
    );
    assert!(cond.last_transition_time.is_some(), "{cond:?}");
    if cond.status == "True" {
        let m = cond.message.as_deref().unwrap_or("");
        assert!(m.contains("CVE-") && m.contains("upstream version"), "{m}");
    }
    // Ready stays the hub's and first.
    assert_eq!(n.status.conditions[0].type_, "Ready");
    assert!(n.is_ready());

    // A pinned image survives collection rounds at 0/0 thresholds.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a_blobs = blobs_of(&store, &a_digest);
    assert!(snapshot(&store, &a_digest).is_dir());
    assert!(a_blobs.iter().all(|d| has_blob(&store, d)));

    // The CLI's view.
    let (code, out, err) = cluster.fleet_cli(&["get", "images"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("NODE"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("node-0") && l.contains(&a_ref)),
        "{out}"
    );
    let (code, wide, err) = cluster.fleet_cli(&["get", "images", "-o", "wide"], None);
    assert_eq!(code, 0, "{err}");
    assert!(wide.contains(&a_digest), "{wide}");
    let (code, described, err) = cluster.fleet_cli(&["describe", "node", "node-0"], None);
    assert_eq!(code, 0, "{err}");
    assert!(described.contains("Runtime:      runc://"), "{described}");
    assert!(
        described.contains("ContainerRuntimeVulnerable"),
        "{described}"
    );

    // A goes, B comes: A is collected, B (in use) stays.
    let c = cluster.fleet().await;
    c.delete(Kind::Pod, "default", "a").await.unwrap();
    c.close().await;
    cluster.apply(&pod("b", &b_ref)).await.unwrap();
    wait_running(&cluster, "b").await;
    let n = wait_node(&cluster, "lists B and not A", |n| {
        lists(n, &b_ref) && !lists(n, &a_ref)
    })
    .await;
    assert!(
        !n.status
            .images
            .iter()
            .any(|i| i.names.iter().any(|x| x.contains(&a_digest))),
        "{:?}",
        n.status.images
    );
    eventually_within(
        "A's snapshot gone from the store",
        Duration::from_secs(10),
        || async { (!snapshot(&store, &a_digest).exists()).then_some(()) },
    )
    .await;
    let b_blobs = blobs_of(&store, &b_digest);
    let shared: Vec<&String> = a_blobs.iter().filter(|d| b_blobs.contains(d)).collect();
    assert_eq!(shared.len(), 1, "the busybox layer is shared: {shared:?}");
    for d in &a_blobs {
        if b_blobs.contains(d) {
            assert!(has_blob(&store, d), "shared blob {d} must stay");
        } else {
            assert!(!has_blob(&store, d), "A's blob {d} must be gone");
        }
    }
    assert!(snapshot(&store, &b_digest).is_dir());
    assert!(b_blobs.iter().all(|d| has_blob(&store, d)));
    let records: Vec<String> = std::fs::read_dir(store.join("records"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        records,
        vec![format!(
            "{}.json",
            b_digest.strip_prefix("sha256:").unwrap()
        )]
    );
    // The disk stays "full" with nothing more to free: kubelet's warning on the Node.
    let events = eventually_within(
        "ImageGCFailed on node-0",
        Duration::from_secs(30),
        || async {
            let c = cluster.fleet().await;
            let evs = c.get(Kind::Event, Some("default"), None).await.ok()?;
            c.close().await;
            let found: Vec<_> = evs
                .into_iter()
                .filter_map(|o| match o {
                    Object::Event(e)
                        if e.reason == "ImageGCFailed" && e.involved_object.kind == "Node" =>
                    {
                        Some(e)
                    }
                    _ => None,
                })
                .collect();
            (!found.is_empty()).then_some(found)
        },
    )
    .await;
    assert_eq!(events[0].involved_object.name, "node-0");
    assert!(
        events[0]
            .message
            .starts_with("Failed to garbage collect required amount of images"),
        "{}",
        events[0].message
    );
    cluster.shutdown().await;
}
