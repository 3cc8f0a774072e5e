//! End-to-end tests on a real in-process cluster: hub + agents on loopback, real QUIC, real
//! wasmtime, real HTTP (curl).
use flotilla_proto::api::Pod;
use flotilla_testkit::{Cluster, agent_ip, curl, eventually, eventually_within};
use std::collections::BTreeSet;
use std::time::Duration;

fn deployment(name: &str, replicas: i32, extra_env: &str, host_port: Option<u16>) -> String {
    let port = host_port
        .map(|p| format!(", hostPort: {p}"))
        .unwrap_or_default();
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
      containers:
      - name: web
        image: hello:latest
        ports: [{{containerPort: 8080{port}}}]
        resources: {{requests: {{cpu: 100m, memory: 32Mi}}, limits: {{memory: 64Mi}}}}
        env:
        - name: FLOTILLA_POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: FLOTILLA_NODE_NAME
          valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
{extra_env}
"#
    )
}

fn running<'a>(pods: &'a [Pod], app: &str) -> Vec<&'a Pod> {
    flotilla_testkit::app_pods(pods, app)
        .into_iter()
        .filter(|p| p.is_ready() && p.status.endpoint.is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_spreads_scales_replaces_and_deletes() {
    let cluster = Cluster::builder().agents(3).start().await;
    cluster.push_example("hello").await;
    cluster
        .apply(&deployment("web", 3, "", None))
        .await
        .unwrap();

    let pods = cluster.wait_ready("web", 3).await;
    let nodes: BTreeSet<_> = pods
        .iter()
        .map(|p| p.spec.node_name.clone().unwrap())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "replicas must spread over the 3 agents: {nodes:?}"
    );
    for p in &pods {
        let (code, body) = curl(&format!("http://{}/", p.status.endpoint.as_ref().unwrap()));
        assert_eq!(code, 200);
        assert!(
            body.contains(&p.metadata.name),
            "pod {} answered {body:?}",
            p.metadata.name
        );
        assert!(body.contains(p.spec.node_name.as_ref().unwrap()));
    }

    let c = cluster.fleet().await;
    c.scale("default", "web", 5).await.unwrap();
    cluster.wait_ready("web", 5).await;
    c.scale("default", "web", 1).await.unwrap();
    let one = cluster.wait_ready("web", 1).await;

    // A template change replaces the pods.
    cluster
        .apply(&deployment(
            "web",
            1,
            "        - {name: COLOR, value: blue}",
            None,
        ))
        .await
        .unwrap();
    let replaced = eventually("template change to replace the pod", || async {
        let pods = cluster.pods().await;
        let ready = running(&pods, "web");
        let all = pods
            .iter()
            .filter(|p| p.metadata.labels.get("app").map(String::as_str) == Some("web"))
            .count();
        (all == 1 && ready.len() == 1 && ready[0].metadata.name != one[0].metadata.name)
            .then(|| ready[0].clone())
    })
    .await;
    assert!(
        replaced.spec.containers[0]
            .env
            .iter()
            .any(|e| e.name == "COLOR")
    );
    let endpoint = replaced.status.endpoint.clone().unwrap();
    assert_eq!(curl(&format!("http://{endpoint}/")).0, 200);

    c.delete(flotilla_proto::Kind::Deployment, "default", "web")
        .await
        .unwrap();
    eventually("pods to be gone", || async {
        cluster.pods().await.is_empty().then_some(())
    })
    .await;
    eventually("the endpoint to stop answering", || async {
        (curl(&format!("http://{endpoint}/")).0 != 200).then_some(())
    })
    .await;
    c.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restart_loses_nothing_and_restarts_nothing() {
    let mut cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("hello").await;
    cluster
        .apply(&deployment("keep", 2, "", None))
        .await
        .unwrap();
    let before = cluster.wait_ready("keep", 2).await;
    let c = cluster.fleet().await;
    let deploy_before = c
        .get(
            flotilla_proto::Kind::Deployment,
            Some("default"),
            Some("keep"),
        )
        .await
        .unwrap();
    c.close().await;

    cluster.stop_hub().await;
    // Workloads keep serving while the hub is down.
    for p in &before {
        assert_eq!(
            curl(&format!("http://{}/", p.status.endpoint.as_ref().unwrap())).0,
            200
        );
    }
    cluster.start_hub().await;
    eventually("agents to reconnect", || async {
        (cluster.agent(0).connected() && cluster.agent(1).connected()).then_some(())
    })
    .await;
    cluster.wait_nodes_ready(2).await;

    let c = cluster.fleet().await;
    let deploy_after = c
        .get(
            flotilla_proto::Kind::Deployment,
            Some("default"),
            Some("keep"),
        )
        .await
        .unwrap();
    assert_eq!(deploy_before[0].meta().uid, deploy_after[0].meta().uid);
    assert_eq!(
        deploy_before[0].meta().generation,
        deploy_after[0].meta().generation
    );
    assert!(
        deploy_after[0]
            .meta()
            .resource_version
            .parse::<u64>()
            .unwrap()
            >= deploy_before[0]
                .meta()
                .resource_version
                .parse::<u64>()
                .unwrap()
    );
    c.close().await;
    // Give the controllers time to (wrongly) act, then check nothing was replaced or restarted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = cluster.wait_ready("keep", 2).await;
    let names = |ps: &[Pod]| {
        ps.iter()
            .map(|p| (p.metadata.name.clone(), p.status.start_time.clone()))
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        names(&before),
        names(&after),
        "pods were replaced or restarted across a hub restart"
    );
    assert!(after.iter().all(|p| p.restarts() == 0));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_without_hub_serves_from_cache() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("hello").await;
    cluster
        .apply(&deployment("offline", 1, "", Some(18080)))
        .await
        .unwrap();
    cluster.wait_ready("offline", 1).await;
    let url = format!("http://{}:18080/", agent_ip(0));
    assert_eq!(curl(&url).0, 200);

    cluster.stop_hub().await;
    cluster.stop_agent(0).await;
    assert_ne!(
        curl(&url).0,
        200,
        "the agent is stopped, nothing should answer"
    );
    cluster.start_agent(0).await;
    let body = eventually("the cached workload to answer without the hub", || async {
        let (code, body) = curl(&url);
        (code == 200).then_some(body)
    })
    .await;
    assert!(body.contains("hello from offline-"), "{body}");
    assert!(!cluster.agent(0).connected());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_guests_are_contained() {
    let cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("hello").await;
    cluster.push_example("chaos").await;
    cluster.push_example("crash").await;
    cluster
        .apply(&deployment("neighbour", 1, "", Some(18081)))
        .await
        .unwrap();
    cluster
        .apply(
            r#"
apiVersion: v1
kind: Pod
metadata:
  name: chaos
  annotations: {flotilla.io/request-timeout: 1s}
spec:
  containers:
  - name: chaos
    image: chaos:latest
    ports: [{containerPort: 8080, hostPort: 18082}]
    resources: {limits: {memory: 64Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  restartPolicy: Always
  containers: [{name: crash, image: crash:latest}]
"#,
        )
        .await
        .unwrap();
    let ip = agent_ip(0);
    let neighbour = format!("http://{ip}:18081/");
    let chaos = format!("http://{ip}:18082");
    eventually("chaos and neighbour to serve", || async {
        (curl(&neighbour).0 == 200 && curl(&format!("{chaos}/")).0 == 200).then_some(())
    })
    .await;

    // An infinite loop is interrupted at the request deadline; the neighbour keeps serving.
    let looping = std::thread::spawn({
        let url = format!("{chaos}/loop");
        move || curl(&url)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        curl(&neighbour).0,
        200,
        "neighbour must serve while a guest spins"
    );
    let (code, _) = looping.join().unwrap();
    assert!(
        code >= 500,
        "a spinning request must be cut off with a 5xx, got {code}"
    );

    // Growing past the memory limit stops that instance; the pod and its neighbours go on.
    let (code, _) = curl(&format!("{chaos}/grow?mb=256"));
    assert!(code >= 500, "growing past 64Mi must fail, got {code}");
    assert_eq!(curl(&format!("{chaos}/grow?mb=8")).0, 200);
    assert_eq!(curl(&format!("{chaos}/")).0, 200);
    assert_eq!(curl(&neighbour).0, 200);

    // A crashing command is restarted with back-off and shows CrashLoopBackOff.
    let crasher = eventually_within("crash loop back-off", Duration::from_secs(60), || async {
        let pods = cluster.pods().await;
        let p = pods.into_iter().find(|p| p.metadata.name == "crasher")?;
        (p.restarts() >= 2 && flotilla_testkit_status(&p) == "CrashLoopBackOff").then_some(p)
    })
    .await;
    let last = crasher.status.container_statuses[0]
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    // WASI 0.2's wasi:cli/exit carries only ok/err (exit-with-code is unstable), so the
    // guest's exit(3) reaches the host as a failure with status 1.
    assert_eq!(last.exit_code, 1);
    let c = cluster.fleet().await;
    // After two restarts the previous run is always a finished one.
    let mut logs = Vec::new();
    let previous = flotilla_proto::wire::LogsRequest {
        namespace: "default".into(),
        name: "crasher".into(),
        container: None,
        tail: Some(50),
        follow: false,
        previous: true,
    };
    c.container_logs(previous, &mut logs).await.unwrap();
    let logs = String::from_utf8_lossy(&logs);
    assert!(
        logs.contains("crashing") && logs.contains("exited with code 1"),
        "logs --previous: {logs}"
    );
    // `logs -f` streams what restarts append: start at the last line, follow for a while.
    let mut followed = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        c.logs("default", "crasher", Some(1), true, &mut followed),
    )
    .await;
    let followed = String::from_utf8_lossy(&followed);
    assert!(
        followed.matches("crashing").count() >= 1 && followed.lines().count() >= 3,
        "follow must deliver new lines: {followed:?}"
    );
    c.close().await;
    cluster.shutdown().await;
}

/// `fleet logs POD [-c CONTAINER]`, the current run's whole log.
async fn container_log(c: &fleet::Client, pod: &str, container: Option<&str>) -> String {
    let mut out = Vec::new();
    let req = flotilla_proto::wire::LogsRequest {
        namespace: "default".into(),
        name: pod.into(),
        container: container.map(str::to_string),
        tail: None,
        follow: false,
        previous: false,
    };
    c.container_logs(req, &mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn flotilla_testkit_status(p: &Pod) -> String {
    fleet::output::pod_status(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_pod_completes_with_logs() {
    let cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("batch").await;
    cluster
        .apply(
            &std::fs::read_to_string(flotilla_testkit::examples_dir().join("batch/pod.yaml"))
                .unwrap(),
        )
        .await
        .unwrap();
    eventually("batch to succeed", || async {
        cluster
            .pods()
            .await
            .iter()
            .find(|p| p.metadata.name == "batch" && p.status.phase == "Succeeded")
            .map(|_| ())
    })
    .await;
    let c = cluster.fleet().await;
    let mut out = Vec::new();
    c.logs("default", "batch", None, false, &mut out)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("tick 3/3"), "{text}");
    assert!(
        text.contains("--from-yaml"),
        "args must reach the guest: {text}"
    );
    let mut tail = Vec::new();
    c.logs("default", "batch", Some(1), false, &mut tail)
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&tail).lines().count(), 1);

    // Two containers in one pod run on their own, each with its own log; the pod succeeds
    // when both have.
    cluster
        .apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: pair}
spec:
  restartPolicy: Never
  containers:
  - {name: one, image: "batch:latest", env: [{name: COUNT, value: "1"}]}
  - {name: two, image: "batch:latest", env: [{name: COUNT, value: "2"}]}
"#,
        )
        .await
        .unwrap();
    let pair = eventually("the pair to succeed", || async {
        let pods = cluster.pods().await;
        pods.into_iter()
            .find(|p| p.metadata.name == "pair" && p.status.phase == "Succeeded")
    })
    .await;
    let names: Vec<&str> = pair
        .status
        .container_statuses
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["one", "two"]);
    let cases = [
        (Some("one"), "tick 1/1", "tick 1/2"),
        (None, "tick 1/1", "tick 1/2"),
        (Some("two"), "tick 2/2", "tick 1/1"),
    ];
    for (container, expect, absent) in cases {
        let text = container_log(&c, "pair", container).await;
        assert!(
            text.contains(expect) && !text.contains(absent),
            "logs -c {container:?}: {text}"
        );
    }
    c.close().await;
    cluster.shutdown().await;
}

/// Init containers run one after another before the others; one that fails for good fails
/// the pod, and one that could never finish is refused unless it is a sidecar, which serves
/// beside the pod's containers and stops when they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_init_containers_run_first_and_a_failed_one_fails_the_pod() {
    let cluster = Cluster::builder().agents(1).start().await;
    for example in ["batch", "crash", "hello"] {
        cluster.push_example(example).await;
    }
    cluster
        .apply(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: counts}
data: {first: "1"}
---
apiVersion: v1
kind: Pod
metadata: {name: prepared}
spec:
  restartPolicy: Never
  initContainers:
  # Read only by an init container, the ConfigMap still reaches the node.
  - name: first
    image: "batch:latest"
    env: [{name: COUNT, valueFrom: {configMapKeyRef: {name: counts, key: first}}}]
  - {name: second, image: "batch:latest", env: [{name: COUNT, value: "2"}]}
  containers:
  - {name: main, image: "batch:latest", env: [{name: COUNT, value: "3"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: blocked}
spec:
  restartPolicy: Never
  initContainers:
  - {name: setup, image: "crash:latest"}
  containers:
  - {name: main, image: "batch:latest"}
---
apiVersion: v1
kind: Pod
metadata: {name: endless}
spec:
  initContainers:
  - {name: server, image: "hello:latest"}
  containers:
  - {name: main, image: "batch:latest"}
---
apiVersion: v1
kind: Pod
metadata: {name: assisted}
spec:
  restartPolicy: Never
  initContainers:
  - name: server
    image: "hello:latest"
    restartPolicy: Always
    startupProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 1}
  - {name: after, image: "batch:latest", env: [{name: COUNT, value: "1"}]}
  containers:
  - {name: main, image: "batch:latest", env: [{name: COUNT, value: "1"}]}
"#,
        )
        .await
        .unwrap();
    let prepared = cluster
        .wait_pod("prepared", "to succeed", |p| p.status.phase == "Succeeded")
        .await;
    let inits: Vec<(&str, bool, Option<i32>)> = prepared
        .status
        .init_container_statuses
        .iter()
        .map(|s| {
            let code = s.state.terminated.as_ref().map(|t| t.exit_code);
            (s.name.as_str(), s.ready, code)
        })
        .collect();
    assert_eq!(inits, [("first", true, Some(0)), ("second", true, Some(0))]);
    // Each ran before the next started.
    let started = |s: &flotilla_proto::api::ContainerStatus| {
        let t = s.state.terminated.as_ref().unwrap();
        (
            t.started_at.clone().unwrap(),
            t.finished_at.clone().unwrap(),
        )
    };
    let (first, second) = (
        started(&prepared.status.init_container_statuses[0]),
        started(&prepared.status.init_container_statuses[1]),
    );
    let main = started(&prepared.status.container_statuses[0]);
    assert!(
        first.1 <= second.0 && second.1 <= main.0,
        "{first:?} {second:?} {main:?}"
    );
    let initialized = flotilla_proto::api::condition(&prepared.status.conditions, "Initialized");
    assert_eq!(initialized.map(|c| c.status.as_str()), Some("True"));
    let c = cluster.fleet().await;
    for (container, expect) in [
        ("first", "tick 1/1"),
        ("second", "tick 2/2"),
        ("main", "tick 3/3"),
    ] {
        let text = container_log(&c, "prepared", Some(container)).await;
        assert!(text.contains(expect), "logs -c {container}: {text}");
    }
    c.close().await;

    let blocked = cluster
        .wait_pod("blocked", "to fail", |p| p.status.phase == "Failed")
        .await;
    assert_eq!(flotilla_testkit_status(&blocked), "Init:Error");
    let setup = &blocked.status.init_container_statuses[0];
    assert_eq!(
        setup.state.terminated.as_ref().map(|t| t.exit_code),
        Some(1)
    );
    let main = &blocked.status.container_statuses[0];
    let reason = main
        .state
        .waiting
        .as_ref()
        .and_then(|w| w.reason.as_deref());
    assert_eq!(
        reason,
        Some("PodInitializing"),
        "the main container never started"
    );
    let initialized = flotilla_proto::api::condition(&blocked.status.conditions, "Initialized");
    assert_eq!(
        initialized.map(|c| (c.status.as_str(), c.message.as_deref())),
        Some(("False", Some("containers with incomplete status: [setup]")))
    );

    let endless = cluster
        .wait_pod("endless", "to be refused", |p| {
            flotilla_testkit_status(p) == "Init:CreateContainerConfigError"
        })
        .await;
    let message = endless.status.init_container_statuses[0]
        .state
        .waiting
        .as_ref()
        .and_then(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("init container server: image \"hello:latest\" is a wasi:http component"),
        "{message}"
    );

    // The sidecar started (its startup probe passed) before `after` ran, and was stopped
    // once `main` was done; the pod's phase is main's.
    let assisted = cluster
        .wait_pod("assisted", "to succeed with its sidecar stopped", |p| {
            p.status.phase == "Succeeded"
                && p.status.init_container_statuses[0]
                    .state
                    .terminated
                    .is_some()
        })
        .await;
    let server = &assisted.status.init_container_statuses[0];
    let after = &assisted.status.init_container_statuses[1];
    let served = server.state.terminated.as_ref().unwrap();
    let after_run = after.state.terminated.as_ref().unwrap();
    assert!(
        served.started_at <= after_run.started_at,
        "{served:?} {after_run:?}"
    );
    let main = assisted.status.container_statuses[0]
        .state
        .terminated
        .as_ref()
        .unwrap();
    assert!(
        main.finished_at <= served.finished_at,
        "{main:?} {served:?}"
    );
    assert_eq!((main.exit_code, server.restart_count), (0, 0));
    assert_eq!(flotilla_testkit_status(&assisted), "Completed");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_rejected_and_nothing_is_stored() {
    let cluster = Cluster::builder().agents(0).start().await;
    let c = cluster.fleet().await;
    let cases = [
        (
            "apiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n",
            "kind \"Gizmo\" is not supported",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: lots}\n",
            "spec.replicas: invalid type",
        ),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: -1, selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c, image: x}]}}}\n",
            "spec.replicas must be >= 0, got -1",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n",
            "document 2 (configmap ok): duplicate object",
        ),
        // A valid document next to an invalid one: neither is stored.
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: good}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n",
            "document 2 (pod p): spec.containers must have at least one container",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: nowhere}\n",
            "namespaces \"nowhere\" not found",
        ),
    ];
    for (yaml, want) in cases {
        let err = c.apply_text(yaml).await.expect_err(yaml).to_string();
        assert!(
            err.contains(want),
            "for {yaml:?}\nwanted {want:?}\ngot {err:?}"
        );
    }
    // The hub validates too: objects that bypass the client's parser are refused the same way.
    let mut bad = flotilla_proto::Object::ConfigMap(Default::default());
    bad.meta_mut().name = "Not_A_Name".into();
    bad.normalize();
    let err = c.apply(&[bad]).await.unwrap_err().to_string();
    assert!(err.contains("metadata.name must consist of"), "{err}");
    assert!(
        c.get(flotilla_proto::Kind::ConfigMap, Some("default"), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        c.get(flotilla_proto::Kind::Deployment, Some("default"), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        c.get(flotilla_proto::Kind::Pod, Some("default"), None)
            .await
            .unwrap()
            .is_empty()
    );
    c.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_with_bad_tokens_are_refused() {
    let cluster = Cluster::builder().agents(0).start().await;
    let c = cluster.fleet().await;
    let join = |name: &str, token: String| {
        let mut cfg =
            flotilla_agent::Config::new(cluster.dir.path().join(format!("join-{name}")), name);
        cfg.hub = Some(cluster.hub_addr);
        cfg.token = Some(token);
        async move {
            flotilla_agent::start(cfg)
                .await
                .map(|a| a.node_name.clone())
        }
    };
    let once = c.create_token(Some(600), Some(1)).await.unwrap();
    assert_eq!(join("first", once.clone()).await.unwrap(), "first");
    let reused = join("second", once.clone()).await.unwrap_err();
    assert!(
        format!("{reused:#}").contains("maximum number of times"),
        "{reused:#}"
    );

    let short = c.create_token(Some(1), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = join("late", short).await.unwrap_err();
    assert!(format!("{expired:#}").contains("expired"), "{expired:#}");

    let mut parts: Vec<String> = once.split('.').map(String::from).collect();
    parts[3] = "0".repeat(32);
    let forged = join("forger", parts.join(".")).await.unwrap_err();
    assert!(
        format!("{forged:#}").contains("unknown join token"),
        "{forged:#}"
    );

    // A token pinning another CA: the agent refuses the hub before sending anything.
    let mut parts: Vec<String> = once.split('.').map(String::from).collect();
    parts[1] = "ab".repeat(32);
    let wrong_ca = join("mitm", parts.join(".")).await.unwrap_err();
    assert!(
        format!("{wrong_ca:#}").contains("failed to reach hub")
            || format!("{wrong_ca:#}").contains("CA"),
        "{wrong_ca:#}"
    );
    c.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_enforced() {
    use flotilla_proto::wire::{PodReport, Request, Response};
    let cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("hello").await;
    cluster
        .apply("apiVersion: v1\nkind: Pod\nmetadata: {name: pinned}\nspec:\n  nodeSelector: {kubernetes.io/hostname: node-1}\n  containers: [{name: c, image: hello:latest}]\n")
        .await
        .unwrap();
    let pod = eventually("pinned pod to run on node-1", || async {
        cluster
            .pods()
            .await
            .into_iter()
            .find(|p| p.metadata.name == "pinned" && p.is_ready())
    })
    .await;
    assert_eq!(pod.spec.node_name.as_deref(), Some("node-1"));

    // node-0's own certificate cannot set the status of a pod on node-1.
    let (_e, conn) = cluster.node_connection(0).await;
    let status = serde_json::json!({"phase": "Failed", "reason": "Forged"}).to_string();
    let req = Request::ReportPods {
        pods: vec![PodReport {
            namespace: "default".into(),
            name: "pinned".into(),
            uid: pod.metadata.uid.clone(),
            status,
        }],
    };
    let (_, _, resp): (_, _, Response) = flotilla_transport::request(&conn, &req).await.unwrap();
    assert_eq!(resp, Response::Ok);
    // A node may not use admin requests either.
    let (_, _, resp): (_, _, Response) = flotilla_transport::request(
        &conn,
        &Request::Get {
            kind: flotilla_proto::Kind::Secret,
            namespace: None,
            name: None,
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(resp, Response::Error { ref message } if message.contains("forbidden")),
        "{resp:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = cluster
        .pods()
        .await
        .into_iter()
        .find(|p| p.metadata.name == "pinned")
        .unwrap();
    assert_eq!(
        after.status.phase, "Running",
        "a forged report from another node must be ignored"
    );

    // Without a client certificate only joining is possible.
    let ca = flotilla_transport::cert_fingerprint(
        &flotilla_transport::certs_from_pem(&cluster.client_file.ca).unwrap()[0],
    );
    let (_e2, anon) = flotilla_transport::connect(
        cluster.hub_addr,
        flotilla_transport::pinned_client_config(&ca).unwrap(),
    )
    .await
    .unwrap();
    let (_, _, resp): (_, _, Response) = flotilla_transport::request(
        &anon,
        &Request::Get {
            kind: flotilla_proto::Kind::Pod,
            namespace: None,
            name: None,
        },
    )
    .await
    .unwrap();
    assert!(
        matches!(resp, Response::Error { ref message } if message.contains("unauthenticated")),
        "{resp:?}"
    );

    // An agent data dir belongs to one node name.
    let mut cfg = cluster.agent_config(0).clone();
    cfg.node_name = "node-1".into();
    let err = flotilla_agent::start(cfg)
        .await
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains("belongs to node"), "{err}");
    cluster.shutdown().await;
}

/// The `fleet` binary itself: tables, exit codes, errors on stderr (built by scripts/test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_cli_behaves_like_kubectl() {
    let cluster = Cluster::builder().agents(1).start().await;
    let fleet = |args: &[&str], stdin: Option<&str>| cluster.fleet_cli(args, stdin);
    let (code, out, _) = fleet(&["get", "nodes"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME     STATUS   ROLES    AGE"), "{out}");
    assert!(out.contains("node-0   Ready"), "{out}");

    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n";
    let (code, out, _) = fleet(&["apply", "-f", "-"], Some(cm));
    assert_eq!((code, out.as_str()), (0, "configmap/settings created\n"));
    let (code, out, _) = fleet(&["apply", "-f", "-"], Some(cm));
    assert_eq!((code, out.as_str()), (0, "configmap/settings unchanged\n"));
    let (code, out, _) = fleet(&["get", "cm", "settings", "-o", "yaml"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("mode: fast") && out.contains("resourceVersion:"),
        "{out}"
    );

    // fleet create, kubectl's way: literals and files; a second create is refused.
    let file = cluster.dir.path().join("app.conf");
    std::fs::write(&file, "level=debug\n").unwrap();
    let from_file = format!("--from-file={}", file.display());
    let (code, out, err) = fleet(
        &[
            "create",
            "configmap",
            "made",
            "--from-literal=a=1",
            &from_file,
        ],
        None,
    );
    assert_eq!(
        (code, out.as_str()),
        (0, "configmap/made created\n"),
        "{err}"
    );
    let (code, _, err) = fleet(&["create", "configmap", "made", "--from-literal=a=2"], None);
    assert_eq!(code, 1);
    assert!(err.contains("configmaps \"made\" already exists"), "{err}");
    let (code, out, _) = fleet(&["get", "cm", "made", "-o", "json"], None);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"a\": \"1\"") && out.contains("\"app.conf\": \"level=debug\\n\""),
        "{out}"
    );
    let (code, out, _) = fleet(
        &[
            "create",
            "secret",
            "generic",
            "pw",
            "--from-literal=password=hunter2",
        ],
        None,
    );
    assert_eq!((code, out.as_str()), (0, "secret/pw created\n"));
    let (_, out, _) = fleet(&["get", "secret", "pw", "-o", "yaml"], None);
    assert!(out.contains("password: aHVudGVyMg=="), "{out}");

    let (code, out, err) = fleet(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: Gizmo\nmetadata: {name: g}\n"),
    );
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.starts_with("error: document 1 (gizmo g): kind \"Gizmo\" is not supported"),
        "{err}"
    );

    let (code, _, err) = fleet(&["delete", "deployment", "nope"], None);
    assert_eq!(code, 1);
    assert!(err.contains("deployments \"nope\" not found"), "{err}");
    let (code, _, err) = fleet(&["get", "pods"], None);
    assert_eq!(code, 0);
    assert_eq!(err.trim(), "No resources found in default namespace.");
    let (code, _, err) = fleet(&["get", "gizmos"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("doesn't have a resource type \"gizmos\""),
        "{err}"
    );
    let (code, out, _) = fleet(&["token", "create", "--ttl", "1h", "--max-uses", "1"], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("FLT1."), "{out}");
    cluster.shutdown().await;
}

/// Answered instances stay warm for the next request (hello's counter climbs); the
/// `flotilla.io/instance-reuse: "false"` annotation gives every request a fresh instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_instances_are_reused_unless_disabled() {
    let cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("hello").await;
    let pod = |name: &str, port: u16, reuse: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  annotations: {{flotilla.io/instance-reuse: \"{reuse}\"}}\nspec:\n  containers: [{{name: h, image: hello:latest, ports: [{{containerPort: 8080, hostPort: {port}}}]}}]\n---\n"
        )
    };
    cluster
        .apply(&(pod("warm", 18091, "true") + &pod("cold", 18092, "false")))
        .await
        .unwrap();
    let ip = agent_ip(0);
    let counts = |port: u16| {
        (0..8)
            .map(|_| {
                let (code, body) = curl(&format!("http://{ip}:{port}/"));
                assert_eq!(code, 200, "{body}");
                body.lines()
                    .find_map(|l| l.strip_prefix("count: "))
                    .and_then(|c| c.parse::<u64>().ok())
                    .expect("count line")
            })
            .collect::<Vec<_>>()
    };
    eventually("both pods to serve", || async {
        (curl(&format!("http://{ip}:18091/")).0 == 200
            && curl(&format!("http://{ip}:18092/")).0 == 200)
            .then_some(())
    })
    .await;
    let warm = counts(18091);
    assert!(
        warm.iter().any(|&c| c > 1),
        "a warm instance must serve again: {warm:?}"
    );
    let cold = counts(18092);
    assert!(
        cold.iter().all(|&c| c == 1),
        "reuse disabled must give fresh instances: {cold:?}"
    );
    cluster.shutdown().await;
}

/// Whether the hub has node `name` Ready.
async fn node_ready(cluster: &Cluster, name: &str) -> bool {
    use flotilla_proto::{Kind, Object};
    let c = cluster.fleet().await;
    let nodes = c.get(Kind::Node, None, Some(name)).await.unwrap();
    c.close().await;
    matches!(&nodes[0], Object::Node(n) if n.is_ready())
}

/// A node whose agent goes silent turns NotReady after the grace period and gets no new pods;
/// when the agent comes back it is Ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_nodes_become_not_ready_and_get_no_pods() {
    let mut cluster = Cluster::builder().agents(2).start().await;
    cluster.push_example("hello").await;
    cluster.stop_agent(1).await;
    eventually("node-1 to turn NotReady", || async {
        (!node_ready(&cluster, "node-1").await).then_some(())
    })
    .await;
    cluster
        .apply(&deployment("after", 2, "", None))
        .await
        .unwrap();
    let pods = cluster.wait_ready("after", 2).await;
    assert!(
        pods.iter()
            .all(|p| p.spec.node_name.as_deref() == Some("node-0")),
        "pods went to a NotReady node"
    );
    cluster.start_agent(1).await;
    eventually("node-1 to be Ready again", || async {
        node_ready(&cluster, "node-1").await.then_some(())
    })
    .await;
    cluster.shutdown().await;
}
