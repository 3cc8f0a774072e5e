//! StatefulSets on a real two-node cluster with real chaos guests: ordered start (checked at
//! every committed pod change, in process), stable names, a file in the claim's directory that
//! survives deleting the pod (recreated with the same name on the same node: its claim pins it,
//! and keeps it Pending while that node is cordoned), scale-down from the highest ordinal that
//! keeps the claims, a partitioned rolling update, and deletion that retains the claims.
use flotilla_hub::store::StoreEvent;
use flotilla_proto::api::{
    CONTROLLER_REVISION_LABEL, Kind, Object, PersistentVolumeClaim, Pod, SELECTED_NODE_ANNOTATION,
    StatefulSet, condition,
};
use flotilla_proto::wire::Edit;
use flotilla_testkit::{Cluster, app_pods, curl, eventually_within};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn statefulset(replicas: i32, version: &str, partition: i32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: web}}
spec:
  serviceName: web
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  updateStrategy: {{type: RollingUpdate, rollingUpdate: {{partition: {partition}}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: chaos:latest
        env: [{{name: VERSION, value: "{version}"}}]
        readinessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 64Mi}}}}
"#
    )
}

/// A pod of the set, as a committed store change showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Created(String),
    Deleted(String),
}

#[derive(Default)]
struct Log {
    changes: Vec<Change>,
    /// Pods created while a lower ordinal was not Running and Ready.
    violations: Vec<String>,
}

/// Follows every committed change of the set's pods on the hub, in process (no state is
/// skipped, unlike polling), checking OrderedReady at each creation.
struct Follower {
    log: Arc<Mutex<Log>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn ordinal(name: &str) -> Option<i32> {
    name.strip_prefix("web-")?.parse().ok()
}

fn running_and_ready(p: &Pod) -> bool {
    p.status.phase == "Running" && p.is_ready()
}

fn follow(cluster: &Cluster) -> Follower {
    let store = &cluster.hub().hub.store;
    let mut rx = store.subscribe();
    let (pods, from) = store.list(Kind::Pod, Some("default")).expect("list pods");
    let web = |o: &Option<Object>| match o {
        Some(Object::Pod(p)) if p.metadata.labels.get("app").map(String::as_str) == Some("web") => {
            Some(p.clone())
        }
        _ => None,
    };
    // ordinal -> Running and Ready
    let mut ready: BTreeMap<i32, bool> = BTreeMap::new();
    for p in pods.into_iter().filter_map(|o| web(&Some(o))) {
        if let Some(n) = ordinal(&p.metadata.name) {
            ready.insert(n, running_and_ready(&p));
        }
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = tokio_util::sync::CancellationToken::new();
    let (task_log, cancel) = (log.clone(), stop.clone());
    let task = tokio::spawn(async move {
        loop {
            let e: StoreEvent = tokio::select! {
                _ = cancel.cancelled() => return,
                e = rx.recv() => e.expect("follower lagged behind the store: the test cannot vouch for every state"),
            };
            if e.revision <= from || e.key.kind != Kind::Pod {
                continue;
            }
            let Some(n) = ordinal(&e.key.name) else {
                continue;
            };
            let mut log = task_log.lock().unwrap();
            match (web(&e.prev), web(&e.object)) {
                (None, Some(p)) => {
                    let not_ready: Vec<i32> =
                        (0..n).filter(|k| ready.get(k) != Some(&true)).collect();
                    if !not_ready.is_empty() {
                        log.violations.push(format!(
                            "web-{n} created at revision {} while ordinals {not_ready:?} were not Running and Ready",
                            e.revision
                        ));
                    }
                    log.changes.push(Change::Created(e.key.name.clone()));
                    ready.insert(n, running_and_ready(&p));
                }
                (Some(_), Some(p)) => {
                    ready.insert(n, running_and_ready(&p));
                }
                (Some(_), None) => {
                    log.changes.push(Change::Deleted(e.key.name.clone()));
                    ready.remove(&n);
                }
                (None, None) => {}
            }
        }
    });
    Follower { log, stop, task }
}

impl Follower {
    fn changes(&self) -> Vec<Change> {
        self.log.lock().unwrap().changes.clone()
    }

    /// The changes after the first `mark`, once there are at least `n` (the follower may
    /// still be handling an event the client has already seen committed).
    async fn changes_since(&self, mark: usize, n: usize) -> Vec<Change> {
        eventually_within(&format!("{n} pod changes"), WAIT, || async {
            let all = self.changes();
            (all.len() >= mark + n).then(|| all[mark..].to_vec())
        })
        .await
    }

    async fn finish(self) -> Log {
        self.stop.cancel();
        self.task.await.expect("follower panicked");
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

async fn get_set(cluster: &Cluster) -> StatefulSet {
    let c = cluster.fleet().await;
    let s = c.statefulset("default", "web").await.unwrap();
    c.close().await;
    s
}

async fn web_pods(cluster: &Cluster) -> Vec<Pod> {
    let pods = cluster.pods().await;
    let mut web: Vec<Pod> = app_pods(&pods, "web").into_iter().cloned().collect();
    web.sort_by_key(|p| ordinal(&p.metadata.name));
    web
}

async fn claims(cluster: &Cluster) -> Vec<PersistentVolumeClaim> {
    let c = cluster.fleet().await;
    let objs = c
        .get(Kind::PersistentVolumeClaim, Some("default"), None)
        .await
        .unwrap();
    c.close().await;
    objs.into_iter()
        .filter_map(|o| match o {
            Object::PersistentVolumeClaim(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn names(pods: &[Pod]) -> Vec<&str> {
    pods.iter().map(|p| p.metadata.name.as_str()).collect()
}

fn pod<'a>(pods: &'a [Pod], name: &str) -> &'a Pod {
    pods.iter()
        .find(|p| p.metadata.name == name)
        .unwrap_or_else(|| panic!("no pod {name} in {:?}", names(pods)))
}

/// Waits until the set runs exactly `n` pods `web-0..n-1`, all Running and Ready, and its
/// status says so for the current generation.
async fn settled(cluster: &Cluster, n: usize) -> Vec<Pod> {
    eventually_within(&format!("{n} ready replicas of web"), WAIT, || async {
        let pods = web_pods(cluster).await;
        let s = get_set(cluster).await;
        let want: Vec<String> = (0..n).map(|i| format!("web-{i}")).collect();
        (names(&pods) == want
            && pods.iter().all(running_and_ready)
            && s.status.observed_generation == s.metadata.generation
            && s.status.ready_replicas == n as i32
            && s.status.replicas == n as i32)
            .then_some(pods)
    })
    .await
}

fn url(p: &Pod, path: &str) -> String {
    format!(
        "http://{}{path}",
        p.status.endpoint.as_deref().expect("pod has an endpoint")
    )
}

/// The agent index serving `node` (`node-<i>`).
fn agent_index(node: &str) -> usize {
    node.strip_prefix("node-").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_ordered_sticky_scaled_and_partitioned() {
    let cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("chaos").await;
    let follower = follow(&cluster);

    // (a) and (b): pods start in order, each only once the one below is Ready, under stable
    // names; each has its own claim, bound to the node its pod went to.
    cluster.apply(&statefulset(3, "v1", 0)).await.unwrap();
    let pods = settled(&cluster, 3).await;
    assert_eq!(
        follower.changes_since(0, 3).await,
        ["web-0", "web-1", "web-2"].map(|n| Change::Created(n.into()))
    );
    let nodes: std::collections::BTreeSet<&str> = pods
        .iter()
        .filter_map(|p| p.spec.node_name.as_deref())
        .collect();
    assert_eq!(nodes.len(), 2, "replicas should spread over both nodes");
    let claims_now = claims(&cluster).await;
    let claim_names: Vec<&str> = claims_now
        .iter()
        .map(|c| c.metadata.name.as_str())
        .collect();
    assert_eq!(claim_names, ["data-web-0", "data-web-1", "data-web-2"]);
    for (c, p) in claims_now.iter().zip(&pods) {
        assert_eq!(c.status.phase, "Bound", "{}", c.metadata.name);
        assert_eq!(c.selected_node(), p.spec.node_name.as_deref());
        assert_eq!(p.spec.hostname.as_deref(), Some(p.metadata.name.as_str()));
        assert_eq!(p.spec.subdomain.as_deref(), Some("web"));
    }
    let s = get_set(&cluster).await;
    assert_eq!(s.status.current_revision, s.status.update_revision);
    assert_eq!(
        (s.status.updated_replicas, s.status.current_replicas),
        (3, 3)
    );

    // (c) A file written into web-1's claim survives deleting the pod: it comes back under the
    // same name, on the same node, even though that node is cordoned at first (it waits).
    let web1 = pod(&pods, "web-1").clone();
    let node = web1.spec.node_name.clone().unwrap();
    assert_eq!(
        curl(&url(
            &web1,
            "/write?path=/data/greeting&data=hello-from-web-1"
        )),
        (200, "written\n".into())
    );
    let on_disk = cluster
        .agent_config(agent_index(&node))
        .data_dir
        .join("claims/default/data-web-1/greeting");
    assert_eq!(
        std::fs::read_to_string(&on_disk).unwrap(),
        "hello-from-web-1"
    );
    let c = cluster.fleet().await;
    c.edit(Kind::Node, "", &node, Edit::Cordon(true))
        .await
        .unwrap();
    c.delete(Kind::Pod, "default", "web-1").await.unwrap();
    c.close().await;
    let message = eventually_within("the new web-1 to wait for its node", WAIT, || async {
        let pods = web_pods(&cluster).await;
        let p = pods.iter().find(|p| p.metadata.name == "web-1")?;
        let cond = condition(&p.status.conditions, "PodScheduled")?;
        (p.metadata.uid != web1.metadata.uid
            && p.spec.node_name.is_none()
            && cond.status == "False")
            .then(|| cond.message.clone().unwrap_or_default())
    })
    .await;
    assert_eq!(
        message,
        "0/2 nodes are available: 1 node(s) had volume node affinity conflict, 1 node(s) were unschedulable."
    );
    let c = cluster.fleet().await;
    c.edit(Kind::Node, "", &node, Edit::Cordon(false))
        .await
        .unwrap();
    c.close().await;
    let pods = settled(&cluster, 3).await;
    let new_web1 = pod(&pods, "web-1");
    assert_ne!(new_web1.metadata.uid, web1.metadata.uid);
    assert_eq!(new_web1.spec.node_name.as_deref(), Some(node.as_str()));
    assert_eq!(
        curl(&url(new_web1, "/read?path=/data/greeting")),
        (200, "hello-from-web-1".into())
    );

    // (d) Scaling down to one replica removes web-2 first, then web-1; the claims stay.
    let mark = follower.changes().len();
    let c = cluster.fleet().await;
    let scaled = c
        .edit(Kind::StatefulSet, "default", "web", Edit::Replicas(1))
        .await
        .unwrap();
    c.close().await;
    assert_eq!(scaled, "statefulset.apps/web scaled");
    settled(&cluster, 1).await;
    assert_eq!(
        follower.changes_since(mark, 2).await,
        [
            Change::Deleted("web-2".into()),
            Change::Deleted("web-1".into())
        ]
    );
    let kept = claims(&cluster).await;
    let kept_names: Vec<&str> = kept.iter().map(|c| c.metadata.name.as_str()).collect();
    assert_eq!(kept_names, ["data-web-0", "data-web-1", "data-web-2"]);
    assert!(kept.iter().all(|c| {
        c.metadata
            .annotations
            .contains_key(SELECTED_NODE_ANNOTATION)
    }));

    // Back to three: web-1 returns to its claim (and its file), in order again.
    cluster.apply(&statefulset(3, "v1", 0)).await.unwrap();
    let pods = settled(&cluster, 3).await;
    let back = pod(&pods, "web-1");
    assert_eq!(back.spec.node_name.as_deref(), Some(node.as_str()));
    assert_eq!(
        curl(&url(back, "/read?path=/data/greeting")),
        (200, "hello-from-web-1".into())
    );

    // (e) A template change with partition 1: web-2, then web-1 are replaced (each Ready
    // before the next goes); web-0 keeps its pod and the old revision.
    let before = get_set(&cluster).await.status.update_revision;
    let web0 = pod(&pods, "web-0").clone();
    let mark = follower.changes().len();
    cluster.apply(&statefulset(3, "v2", 1)).await.unwrap();
    let (pods, s) = eventually_within("the partitioned rollout", WAIT, || async {
        let s = get_set(&cluster).await;
        let pods = settled(&cluster, 3).await;
        let rev = |n: &str| {
            pod(&pods, n)
                .metadata
                .labels
                .get(CONTROLLER_REVISION_LABEL)
                .cloned()
        };
        (s.status.update_revision != before
            && rev("web-2").as_ref() == Some(&s.status.update_revision)
            && rev("web-1").as_ref() == Some(&s.status.update_revision)
            && s.status.updated_replicas == 2)
            .then_some((pods, s))
    })
    .await;
    let web0_now = pod(&pods, "web-0");
    assert_eq!(
        web0_now.metadata.uid, web0.metadata.uid,
        "web-0 was replaced"
    );
    assert_eq!(
        web0_now.metadata.labels.get(CONTROLLER_REVISION_LABEL),
        Some(&before)
    );
    assert_eq!(s.status.current_revision, before);
    assert_eq!(s.status.current_replicas, 1);
    for (name, version) in [("web-0", "v1"), ("web-1", "v2"), ("web-2", "v2")] {
        let env = &pod(&pods, name).spec.containers[0].env;
        assert_eq!(env[0].value.as_deref(), Some(version), "{name}");
    }
    assert_eq!(
        follower.changes_since(mark, 4).await,
        [
            Change::Deleted("web-2".into()),
            Change::Created("web-2".into()),
            Change::Deleted("web-1".into()),
            Change::Created("web-1".into()),
        ]
    );

    // Deleting the set deletes its pods with it; the claims are retained (the default).
    let c = cluster.fleet().await;
    c.delete(Kind::StatefulSet, "default", "web").await.unwrap();
    c.close().await;
    assert!(web_pods(&cluster).await.is_empty());
    assert_eq!(claims(&cluster).await.len(), 3);

    let log = follower.finish().await;
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    cluster.shutdown().await;
}
