//! Volumes on a real cluster, seen from inside a real wasi:http guest (chaos reads, writes
//! and lists through its preopened directories): emptyDir, hostPath under a namespace's
//! allowance, configMap and secret files (secrets on tmpfs, never on disk) that follow their
//! source, downwardAPI, read-only projections, nothing else visible, and cleanup with the pod.
use flotilla_proto::api::{Kind, Object};
use flotilla_testkit::{Cluster, curl, eventually};

/// Files under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_containing(&p, needle));
        } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) {
            found.push(p);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_are_the_only_files_a_pod_sees() {
    let cluster = Cluster::builder().agents(1).start().await;
    cluster.push_example("chaos").await;
    let host = cluster.dir.path().join("host");

    // hostPath is refused where the namespace does not allow it, with the reason.
    let pod = |ns: &str, config: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: files, namespace: {ns}, labels: {{app: files}}}}
spec:
  containers:
  - name: web
    image: chaos:latest
    volumeMounts:
    - {{name: cache, mountPath: /cache}}
    - {{name: config, mountPath: /etc/app}}
    - {{name: creds, mountPath: /run/secrets}}
    - {{name: info, mountPath: /etc/podinfo}}
    - {{name: host, mountPath: /data}}
  volumes:
  - {{name: cache, emptyDir: {{}}}}
  - {{name: config, configMap: {{name: {config}}}}}
  - name: creds
    secret:
      secretName: app-secret
      items: [{{key: password, path: db/password}}]
  - name: info
    downwardAPI:
      items:
      - {{path: name, fieldRef: {{fieldPath: metadata.name}}}}
      - {{path: labels, fieldRef: {{fieldPath: metadata.labels}}}}
  - {{name: host, hostPath: {{path: {host}, type: DirectoryOrCreate}}}}
"#,
            host = host.display()
        )
    };
    let err = cluster
        .apply(&pod("default", "app-config"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("volume \"host\": hostPath")
            && err.contains("is not allowed in namespace \"default\""),
        "{err}"
    );
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata:
  name: edge
  annotations: {{flotilla.io/allowed-host-paths: "{}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: app-secret, namespace: edge}}
stringData: {{password: hunter2-on-tmpfs}}
"#,
            cluster.dir.path().display()
        ))
        .await
        .unwrap();

    // The ConfigMap does not exist yet: the pod waits in ContainerCreating and says why.
    cluster.apply(&pod("edge", "app-config")).await.unwrap();
    let waiting = eventually("the pod to wait for its ConfigMap", || async {
        let c = cluster.fleet().await;
        let pods = c.get(Kind::Pod, Some("edge"), None).await.ok()?;
        c.close().await;
        pods.into_iter().find_map(|o| match o {
            Object::Pod(p) => p.status.container_statuses.first().and_then(|s| {
                let w = s.state.waiting.as_ref()?;
                (w.reason.as_deref() == Some("ContainerCreating")
                    && w.message
                        .as_deref()
                        .is_some_and(|m| m.contains("not found")))
                .then(|| w.message.clone().unwrap_or_default())
            }),
            _ => None,
        })
    })
    .await;
    assert!(
        waiting.contains("configmap \"app-config\" not found"),
        "{waiting}"
    );
    cluster
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config, namespace: edge}\ndata: {mode: fast}\n")
        .await
        .unwrap();
    let (uid, base) = eventually("the pod serving", || async {
        let c = cluster.fleet().await;
        let pods = c.get(Kind::Pod, Some("edge"), Some("files")).await.ok()?;
        c.close().await;
        let Some(Object::Pod(p)) = pods.into_iter().next() else {
            return None;
        };
        let url = format!("http://{}", p.status.endpoint.clone()?);
        p.is_ready().then_some((p.metadata.uid, url))
    })
    .await;
    let get = |path: &str| curl(&format!("{base}{path}"));

    assert_eq!(get("/read?path=/etc/app/mode"), (200, "fast".into()));
    assert_eq!(
        get("/read?path=/run/secrets/db/password"),
        (200, "hunter2-on-tmpfs".into())
    );
    assert_eq!(get("/read?path=/etc/podinfo/name"), (200, "files".into()));
    assert_eq!(
        get("/read?path=/etc/podinfo/labels"),
        (200, "app=\"files\"\n".into())
    );
    assert_eq!(
        get("/write?path=/cache/x&data=1"),
        (200, "written\n".into())
    );
    assert_eq!(get("/read?path=/cache/x"), (200, "1".into()));
    assert_eq!(
        get("/write?path=/data/out&data=from-pod"),
        (200, "written\n".into())
    );
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "from-pod"
    );
    // Projections are read-only; nothing outside the mounts exists for the guest.
    let (code, body) = get("/write?path=/etc/app/mode&data=slow");
    assert_eq!(code, 403, "{body}");
    assert_eq!(get("/read?path=/etc/app/mode"), (200, "fast".into()));
    let (code, _) = get("/read?path=/etc/hostname");
    assert_eq!(code, 404);
    let (code, _) = get("/ls?path=/");
    assert_ne!(code, 200, "the root must not be listable");

    // The secret is on the cluster's tmpfs, and nowhere in the agent's data directory.
    let data_dir = &cluster.agent_config(0).data_dir;
    assert!(files_containing(data_dir, b"hunter2-on-tmpfs").is_empty());
    let on_tmpfs = files_containing(cluster.shm.path(), b"hunter2-on-tmpfs");
    assert_eq!(on_tmpfs.len(), 1, "{on_tmpfs:?}");

    // A ConfigMap change reaches the mounted file without a restart.
    cluster
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: app-config, namespace: edge}\ndata: {mode: slow, extra: \"yes\"}\n")
        .await
        .unwrap();
    eventually("the new ConfigMap content in the pod", || async {
        (get("/read?path=/etc/app/mode") == (200, "slow".into())
            && get("/read?path=/etc/app/extra") == (200, "yes".into()))
            .then_some(())
    })
    .await;

    // Deleting the pod removes its volumes, but not the host's directory.
    let c = cluster.fleet().await;
    c.delete(Kind::Pod, "edge", "files").await.unwrap();
    c.close().await;
    eventually("the pod's volumes removed", || async {
        let gone = !data_dir.join("pods").join(&uid).exists()
            && !cluster.shm.path().join("agent-0").join(&uid).exists();
        gone.then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(host.join("out")).unwrap(),
        "from-pod"
    );
    cluster.shutdown().await;
}
