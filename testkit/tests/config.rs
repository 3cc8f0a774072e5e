//! Pods read ConfigMaps and Secrets through env (`configMapKeyRef`, `secretKeyRef`, `envFrom`
//! with a prefix): values reach real guests, a missing ConfigMap holds the container in
//! CreateContainerConfigError until it appears, agents may read only what their pods refer to,
//! and the values survive an agent restart without the hub while never resting in plaintext.
use flotilla_proto::api::{Kind, Pod};
use flotilla_proto::wire::{Request, Response};
use flotilla_testkit::{Cluster, curl, eventually, eventually_within};
use std::time::Duration;

const CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {GREETING: hi, who: from-configmap}
---
apiVersion: v1
kind: Secret
metadata: {name: sec}
stringData: {token: s3cr3t-value}
"#;

async fn pod(cluster: &Cluster, name: &str) -> Option<Pod> {
    cluster
        .pods()
        .await
        .into_iter()
        .find(|p| p.metadata.name == name)
}

async fn logs(cluster: &Cluster, name: &str) -> String {
    let c = cluster.fleet().await;
    let mut out = Vec::new();
    let _ = c.logs("default", name, None, false, &mut out).await;
    c.close().await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_from_configmaps_and_secrets() {
    let mut cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("batch").await;
    cluster.push_example("hello").await;
    cluster.apply(CONFIG).await.unwrap();

    // envFrom with a prefix, and single keys; env overrides envFrom.
    cluster
        .apply(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: printer}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: batch:latest
    envFrom:
    - {prefix: CFG_, configMapRef: {name: cfg}}
    - secretRef: {name: sec}
    env:
    - {name: COUNT, value: "1"}
    - {name: CFG_GREETING, value: overridden}
    - name: TOKEN
      valueFrom: {secretKeyRef: {name: sec, key: token}}
    - name: MAYBE
      valueFrom: {configMapKeyRef: {name: absent, key: x, optional: true}}
"#,
        )
        .await
        .unwrap();
    let out = eventually("the printer to finish", || async {
        let p = pod(&cluster, "printer").await?;
        (p.status.phase == "Succeeded").then_some(())?;
        Some(logs(&cluster, "printer").await)
    })
    .await;
    for line in [
        "env CFG_GREETING=overridden",
        "env CFG_who=from-configmap",
        "env token=s3cr3t-value",
        "env TOKEN=s3cr3t-value",
        "env COUNT=1",
    ] {
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
    }
    assert!(
        !out.contains("MAYBE"),
        "an optional missing key must be left out:\n{out}"
    );

    // A missing ConfigMap holds the container until it exists.
    let server = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: greeter}
spec:
  replicas: 1
  selector: {matchLabels: {app: greeter}}
  template:
    metadata: {labels: {app: greeter}}
    spec:
      containers:
      - name: web
        image: hello:latest
        ports: [{containerPort: 8080, hostPort: 18093}]
        env:
        - name: FLOTILLA_POD_NAME
          valueFrom: {configMapKeyRef: {name: late, key: name}}
        - name: FLOTILLA_NODE_NAME
          valueFrom: {secretKeyRef: {name: sec, key: token}}
"#;
    cluster.apply(server).await.unwrap();
    let waiting = eventually("CreateContainerConfigError", || async {
        let p = cluster
            .pods()
            .await
            .into_iter()
            .find(|p| p.metadata.labels.get("app").map(String::as_str) == Some("greeter"))?;
        let w = p.status.container_statuses.first()?.state.waiting.clone()?;
        (w.reason.as_deref() == Some("CreateContainerConfigError")).then_some(w)
    })
    .await;
    assert_eq!(
        waiting.message.as_deref(),
        Some("configmap \"late\" not found")
    );
    cluster
        .apply(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late}\ndata: {name: late-arrival}\n",
        )
        .await
        .unwrap();
    let url = eventually_within("the greeter to serve", Duration::from_secs(30), || async {
        let p = cluster.pods().await.into_iter().find(|p| {
            p.metadata.labels.get("app").map(String::as_str) == Some("greeter") && p.is_ready()
        })?;
        Some(format!("http://{}/", p.status.endpoint?))
    })
    .await;
    let (code, body) = curl(&url);
    assert_eq!(code, 200);
    assert!(
        body.starts_with("hello from late-arrival on s3cr3t-value"),
        "{body}"
    );

    // A node reads only what its pods refer to: node-0 may read "sec", not an unrelated one.
    cluster
        .apply("apiVersion: v1\nkind: Secret\nmetadata: {name: other}\nstringData: {k: v}\n")
        .await
        .unwrap();
    let (_e, conn) = cluster.node_connection(0).await;
    let ask = |name: &str| Request::GetConfig {
        kind: Kind::Secret,
        namespace: "default".into(),
        name: name.into(),
    };
    let (_, _, ok): (_, _, Response) = flotilla_transport::request(&conn, &ask("sec"))
        .await
        .unwrap();
    assert!(
        matches!(ok, Response::Objects { ref items, .. } if items.len() == 1),
        "{ok:?}"
    );
    let (_, _, no): (_, _, Response) = flotilla_transport::request(&conn, &ask("other"))
        .await
        .unwrap();
    assert!(
        matches!(no, Response::Error { ref message } if message.starts_with("forbidden")),
        "{no:?}"
    );
    conn.close(0u32.into(), b"done");

    // The agent's cache holds the secret sealed, and serves it after a restart without the hub.
    let cache = std::fs::read(cluster.agent_config(0).data_dir.join("agent.redb")).unwrap();
    assert!(
        !cache.windows(12).any(|w| w == b"s3cr3t-value"),
        "secret in plaintext on disk"
    );
    cluster.stop_hub().await;
    cluster.stop_agent(0).await;
    cluster.start_agent(0).await;
    let body = eventually_within(
        "the greeter to serve from the cache",
        Duration::from_secs(30),
        || async {
            let (code, body) = curl(&url);
            (code == 200).then_some(body)
        },
    )
    .await;
    assert!(
        body.starts_with("hello from late-arrival on s3cr3t-value"),
        "{body}"
    );
    cluster.start_hub().await;
    cluster.shutdown().await;
}
