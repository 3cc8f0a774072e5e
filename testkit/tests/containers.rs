//! OCI containers end to end: a real registry on loopback holding images built here from
//! busybox-static, real runc, the agent's own pod networks (netlink, iptables), curl. Needs
//! root, runc, iptables, docker-registry and busybox-static (scripts/setup installs them);
//! fails clearly without.
use flotilla_proto::api::Pod;
use flotilla_testkit::registry::{
    Layer, Registry, TestImage, busybox_image, image_config, require_container_tools,
};
use flotilla_testkit::{Cluster, curl, eventually, eventually_within};
use std::time::Duration;

fn pod_named(pods: &[Pod], name: &str) -> Option<Pod> {
    pods.iter().find(|p| p.metadata.name == name).cloned()
}

fn waiting(p: &Pod) -> Option<(String, String)> {
    let w = p
        .status
        .container_statuses
        .first()?
        .state
        .waiting
        .as_ref()?;
    Some((w.reason.clone()?, w.message.clone().unwrap_or_default()))
}

async fn logs(cluster: &Cluster, name: &str) -> String {
    logs_of(cluster, name, None, false)
        .await
        .unwrap_or_default()
}

/// `fleet logs NAME [-c CONTAINER] [--previous]`, or the error it gives.
async fn logs_of(
    cluster: &Cluster,
    name: &str,
    container: Option<&str>,
    previous: bool,
) -> Result<String, String> {
    let c = cluster.fleet().await;
    let mut out = Vec::new();
    let req = flotilla_proto::wire::LogsRequest {
        namespace: "default".into(),
        name: name.into(),
        container: container.map(str::to_string),
        tail: None,
        follow: false,
        previous,
    };
    let r = c.container_logs(req, &mut out).await;
    c.close().await;
    r.map(|()| String::from_utf8_lossy(&out).to_string())
        .map_err(|e| e.to_string())
}

async fn wait_logs(cluster: &Cluster, name: &str, needle: &str) -> String {
    eventually_within(
        &format!("{name} logs {needle:?}"),
        Duration::from_secs(60),
        || async {
            let l = logs(cluster, name).await;
            l.contains(needle).then_some(l)
        },
    )
    .await
}

/// busybox httpd on 8080 serving "hello from a container", as user `app`.
fn web_image() -> TestImage {
    busybox_image(
        &["httpd", "-f", "-p", "8080", "-h", "/var/www"],
        serde_json::json!({"User": "app", "WorkingDir": "/home/app"}),
    )
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Deletes the pods and waits until agent 0 holds no pod, container, mount or network.
async fn delete_leaving_nothing(cluster: &Cluster, names: &[&str], what: &str) {
    let c = cluster.fleet().await;
    for name in names {
        c.delete(flotilla_proto::Kind::Pod, "default", name)
            .await
            .unwrap();
    }
    c.close().await;
    eventually(what, || async {
        let l = leftovers(cluster, 0);
        (cluster.pods().await.is_empty() && l.0.is_empty() && l.1.is_empty() && l.2.is_empty())
            .then_some(())
    })
    .await;
}

/// This process's children that have exited and that nobody has waited for.
fn zombies() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == me && state == "Z").then_some(pid)
        })
        .collect()
}

/// What runc, the kernel's mount table and `ip netns` still hold for this agent.
fn leftovers(cluster: &Cluster, i: usize) -> (String, Vec<String>, Vec<String>) {
    let data = cluster.agent_config(i).data_dir.clone();
    let runc = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("runc"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    let mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(data.to_str().unwrap()) && l.contains("containers"))
        .map(str::to_string)
        .collect();
    let netns: Vec<String> = std::fs::read_dir(data.join("net"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    (
        String::from_utf8_lossy(&runc.stdout).trim().to_string(),
        mounts,
        netns,
    )
}

/// A network namespace beyond the node, joined to it by a veth pair (private addresses that
/// exist only on that link), with a listener that answers one HTTP call with the caller's
/// address. Deleted (with the veth) on drop.
struct Outside {
    _ns: flotilla_testkit::netns::Netns,
}

impl Outside {
    const NEAR: &str = "10.99.7.1";
    const FAR: &str = "10.99.7.2";

    fn start() -> Outside {
        // One an earlier, killed run left (with its veth and route) would shadow this one.
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("flt-out-") {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .status();
            }
        }
        let tag = std::process::id() % 100_000;
        let ns = flotilla_testkit::netns::Netns::create(&format!("flt-out-{tag}")).unwrap();
        let (near, far) = (format!("fo{tag}n"), format!("fo{tag}f"));
        let host_ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        };
        host_ip(&["link", "add", &near, "type", "veth", "peer", "name", &far]);
        host_ip(&["link", "set", &far, "netns", ns.name()]);
        host_ip(&["addr", "add", &format!("{}/24", Self::NEAR), "dev", &near]);
        host_ip(&["link", "set", &near, "up"]);
        ns.ip(&["addr", "add", &format!("{}/24", Self::FAR), "dev", &far])
            .unwrap();
        ns.ip(&["link", "set", &far, "up"]).unwrap();
        let path = format!("/run/netns/{}", ns.name());
        let (bound, listening) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::{Read as _, Write as _};
            use std::os::fd::AsFd as _;
            let file = std::fs::File::open(path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = std::net::TcpListener::bind((Self::FAR, 9999)).unwrap();
            listener.set_nonblocking(true).unwrap();
            bound.send(()).unwrap();
            // Gone after a while if never called, so the namespace does not outlive the test.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let (mut s, peer) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => return,
                }
            };
            s.set_nonblocking(false).unwrap();
            let mut request = [0u8; 1024];
            let _ = s.read(&mut request);
            let body = format!("caller {}\n", peer.ip());
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
        listening.recv().unwrap();
        Outside { _ns: ns }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_serves_on_its_pod_ip_and_host_port() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let web = web_image();
    let digest = registry.push("test/web:v1", &web).await.unwrap();
    let cluster = Cluster::builder().agents(1).registry(&host).start().await;
    let host_port = free_port();
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {host}/test/web:v1
    ports: [{{containerPort: 8080, hostPort: {host_port}}}]
    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
"#
        ))
        .await
        .unwrap();
    let pods = cluster.wait_ready("web", 1).await;
    let web_pod = &pods[0];
    let ip = web_pod.status.pod_ip.clone().unwrap();
    assert!(
        ip.starts_with("10.89."),
        "pod IP from the node's pod CIDR: {ip}"
    );
    assert_eq!(
        web_pod.status.endpoint.as_deref(),
        Some(format!("{ip}:8080").as_str())
    );
    let status = &web_pod.status.container_statuses[0];
    assert_eq!(
        status.image_id, digest,
        "pulled by tag, same manifest as by digest"
    );
    // The pod's own address, and the node's hostPort.
    let (code, body) = curl(&format!("http://{ip}:8080/"));
    assert_eq!((code, body.as_str()), (200, "hello from a container\n"));
    let node_ip = cluster.agent_config(0).node_ip;
    let (code, body) = curl(&format!("http://{node_ip}:{host_port}/"));
    assert_eq!(
        (code, body.as_str()),
        (200, "hello from a container\n"),
        "hostPort"
    );

    // Beyond the node: a listener in a namespace of its own behind a veth, whose side has
    // no route back to the pods. It answers only if the pod's call left masqueraded as the
    // node (the near end's address), and says which address it saw.
    let outside = Outside::start();

    // A second pod, by digest, reaches the first across the bridge; its env, args, user and
    // working directory take effect.
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: client
    image: {host}/test/web@{digest}
    command: [sh, -c]
    args: ['echo uid=$(id -u) cwd=$(pwd) env=$GREETING/$FROM_IMAGE host=$(hostname); wget -qO- http://{ip}:8080/; timeout 5 wget -qO- http://{far}:9999/']
    workingDir: /tmp
    env: [{{name: GREETING, value: hi}}]
    securityContext: {{runAsUser: 1234}}
"#,
            far = Outside::FAR
        ))
        .await
        .unwrap();
    let done = cluster
        .wait_pod("client", "to finish", |p| p.is_terminal())
        .await;
    let out = logs(&cluster, "client").await;
    assert_eq!(done.status.phase, "Succeeded", "{out}");
    assert!(
        out.contains("uid=1234 cwd=/tmp env=hi/yes host=client"),
        "env, user, workingDir, hostname: {out}"
    );
    assert!(out.contains("hello from a container"), "pod to pod: {out}");
    let seen = format!("caller {}", Outside::NEAR);
    assert!(out.contains(&seen), "outbound NAT, as the node: {out}");
    drop(outside);
    assert_ne!(done.status.pod_ip, web_pod.status.pod_ip);

    // Deleting the pods leaves no container, mount or network behind.
    delete_leaving_nothing(&cluster, &["web", "client"], "container pods cleaned up").await;
    assert_ne!(
        curl(&format!("http://{node_ip}:{host_port}/")).0,
        200,
        "hostPort removed"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_are_refused_and_indexes_pick_this_platform() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    // A layer whose blob the registry serves corrupted.
    let plain = busybox_image(&["echo", "never"], serde_json::json!({})).unwrap();
    let mut corrupt = plain.clone();
    corrupt
        .layers
        .push(Layer::new().file("extra", 0o644, b"intact").gzip());
    registry.push("test/corrupt:v1", &corrupt).await.unwrap();
    let blob = registry.blob_file(&flotilla_testkit::registry::sha256(&corrupt.layers[1].0));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    // A layer that tries to write outside the rootfs.
    let canary = format!("flotilla-escape-{}", std::process::id());
    let mut evil = plain.clone();
    evil.layers.push(
        Layer::new()
            .raw_file(&format!("../../../../../../tmp/{canary}"), b"pwned")
            .gzip(),
    );
    registry.push("test/evil:v1", &evil).await.unwrap();
    // An index: this node's architecture gets a runnable image, the other one a dud.
    let (_, arch) = flotilla_oci::pull::platform();
    let other = if arch == "amd64" { "arm64" } else { "amd64" };
    let ours = busybox_image(&["echo", &format!("picked-{arch}")], serde_json::json!({})).unwrap();
    let dud = TestImage {
        layers: vec![Layer::new().file("README", 0o644, b"wrong platform").zstd()],
        config: image_config(other, &["/nope"], &[], serde_json::json!({})),
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
    };
    let (_, platform_digests) = registry
        .push_index("test/multi:v1", &[(other, &dud), (arch, &ours)])
        .await
        .unwrap();
    // A zstd layer on top of busybox.
    let mut zstd = busybox_image(&["cat", "/greeting"], serde_json::json!({})).unwrap();
    zstd.layers.push(
        Layer::new()
            .file("greeting", 0o644, b"zstd layer applied\n")
            .zstd(),
    );
    registry.push("test/zstd:v1", &zstd).await.unwrap();
    // A wasm OCI artifact, as `wkg` pushes it: one application/wasm layer.
    let wasm = TestImage {
        layers: vec![(
            flotilla_testkit::example_wasm("hello"),
            "application/wasm".into(),
        )],
        config: b"{}".to_vec(),
        config_media_type: "application/vnd.wasm.config.v0+json".into(),
    };
    registry.push("test/hello-wasm:v1", &wasm).await.unwrap();

    let cluster = Cluster::builder().agents(1).registry(&host).start().await;
    let pod = |name: &str, image: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  restartPolicy: Never\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: {host}/{image}{extra}}}\n---\n"
        )
    };
    let manifests = [
        pod("corrupt", "test/corrupt:v1", ""),
        pod("evil", "test/evil:v1", ""),
        pod("multi", "test/multi:v1", ""),
        pod("zstd", "test/zstd:v1", ""),
        pod("absent", "test/absent:v1", ", imagePullPolicy: Never"),
        // runc cannot start it: its command does not exist.
        pod("nostart", "test/zstd:v1", ", command: [/no/such/binary]"),
        pod(
            "hello",
            "test/hello-wasm:v1",
            ", ports: [{containerPort: 8080}]",
        ),
    ]
    .concat();
    cluster.apply(&manifests).await.unwrap();

    let p = cluster
        .wait_pod("corrupt", "ErrImagePull", |p| {
            waiting(p).is_some_and(|(r, m)| r.contains("ImagePull") && m.contains("verification"))
        })
        .await;
    assert!(
        waiting(&p).unwrap().1.contains("failed verification"),
        "{:?}",
        waiting(&p)
    );
    let p = cluster
        .wait_pod("evil", "refused layer", |p| {
            waiting(p).is_some_and(|(_, m)| m.contains("escapes the rootfs"))
        })
        .await;
    assert!(waiting(&p).unwrap().0.contains("ImagePull"));
    assert!(
        !std::path::Path::new("/tmp").join(&canary).exists(),
        "traversal wrote outside"
    );
    let p = cluster
        .wait_pod("absent", "ErrImageNeverPull", |p| {
            waiting(p).is_some_and(|(r, _)| r == "ErrImageNeverPull")
        })
        .await;
    assert!(waiting(&p).unwrap().1.contains("pull policy of Never"));

    // Never Running: the container ends with StartError, runc's reason in its log.
    let p = cluster
        .wait_pod("nostart", "Failed", |p| p.status.phase == "Failed")
        .await;
    let ended = p.status.container_statuses[0].state.terminated.clone();
    assert_eq!(
        ended.and_then(|t| t.reason).as_deref(),
        Some("StartError"),
        "{:?}",
        p.status.container_statuses
    );
    let log = logs(&cluster, "nostart").await;
    assert!(log.contains("/no/such/binary"), "{log}");
    let p = cluster
        .wait_pod("multi", "Succeeded", |p| p.status.phase == "Succeeded")
        .await;
    assert_eq!(p.status.container_statuses[0].image_id, platform_digests[1]);
    assert!(
        logs(&cluster, "multi")
            .await
            .contains(&format!("picked-{arch}"))
    );
    cluster
        .wait_pod("zstd", "Succeeded", |p| p.status.phase == "Succeeded")
        .await;
    assert!(logs(&cluster, "zstd").await.contains("zstd layer applied"));

    // The wasm artifact runs under wasmtime and serves HTTP.
    let hello = cluster.wait_ready("hello", 1).await;
    let endpoint = hello[0].status.endpoint.clone().unwrap();
    let (code, body) = curl(&format!("http://{endpoint}/"));
    assert_eq!(code, 200);
    assert!(body.contains("hello"), "{body}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_limited_and_isolated() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let image = busybox_image(&["sh"], serde_json::json!({})).unwrap();
    registry.push("test/box:v1", &image).await.unwrap();
    let cluster = Cluster::builder().agents(1).registry(&host).start().await;
    let pod = |name: &str, script: &str, extra: &str| {
        format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {host}/test/box:v1
    command: [sh, -c, '{script}']
{extra}
---
"#
        )
    };
    let limits = "    resources: {limits: {memory: 32Mi}}";
    let manifests = [
        // Reads /dev/zero without a newline: tail keeps it all in memory.
        pod("hog", "tail /dev/zero", limits),
        pod("calm", "echo calm; sleep 3600", limits),
        pod(
            "bomb",
            // The inner shell forks until it cannot (and then gives up); the outer one
            // reports and becomes a sleep without forking.
            "sh -c \"while :; do sleep 600 & done\"; echo bomb-stopped; exec sleep 3600",
            "",
        ),
        pod(
            "nosy",
            "echo pids=$(ls -d /proc/[0-9]* | wc -l); if mount -t tmpfs none /mnt 2>/dev/null; then echo mounted; else echo no-mount; fi; grep -E \"^(CapEff|NoNewPrivs|Seccomp):\" /proc/self/status; if touch /proc/sys/kernel/x 2>/dev/null; then echo sys-writable; fi",
            "",
        ),
    ]
    .concat();
    cluster.apply(&manifests).await.unwrap();

    // The hog is OOMKilled; its neighbour with the same limit is untouched.
    let hog = cluster
        .wait_pod("hog", "OOMKilled", |p| p.status.phase == "Failed")
        .await;
    let term = hog.status.container_statuses[0]
        .state
        .terminated
        .clone()
        .unwrap();
    assert_eq!(
        (term.reason.as_deref(), term.exit_code),
        (Some("OOMKilled"), 137)
    );
    let calm = pod_named(&cluster.pods().await, "calm").unwrap();
    assert_eq!(calm.status.phase, "Running");
    assert_eq!(calm.restarts(), 0);

    // The fork bomb stops at the pids limit (64 in the testkit; the cgroup says it was hit).
    let bomb = wait_logs(&cluster, "bomb", "bomb-stopped").await;
    assert!(bomb.contains("can't fork"), "{bomb}");
    let bomb_pod = pod_named(&cluster.pods().await, "bomb").unwrap();
    let id = format!("{}-c", bomb_pod.metadata.uid);
    let events = std::fs::read_to_string(format!("/sys/fs/cgroup/pids/flotilla/{id}/pids.events"))
        .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/flotilla/{id}/pids.events")))
        .unwrap();
    let hits: u64 = events
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(hits > 0, "pids.events: {events}");
    let current =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/flotilla/{id}/pids.current"))
            .or_else(|_| {
                std::fs::read_to_string(format!("/sys/fs/cgroup/flotilla/{id}/pids.current"))
            })
            .unwrap();
    assert!(
        current.trim().parse::<u64>().unwrap() <= 64,
        "pids.current {current}"
    );

    // No host processes, no mounts, no capabilities, no writable /proc/sys, kcore masked.
    let nosy = wait_logs(&cluster, "nosy", "Seccomp").await;
    let pids: usize = nosy
        .lines()
        .find_map(|l| l.strip_prefix("pids="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    assert!(
        pids <= 6,
        "the container sees only its own processes: {nosy}"
    );
    assert!(nosy.contains("no-mount"), "{nosy}");
    assert!(nosy.contains("CapEff:\t0000000000000000"), "{nosy}");
    assert!(nosy.contains("NoNewPrivs:\t1"), "{nosy}");
    assert!(nosy.contains("Seccomp:\t2"), "{nosy}");
    assert!(!nosy.contains("sys-writable"), "{nosy}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_probes_and_agent_restarts() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let image = busybox_image(&["sh"], serde_json::json!({})).unwrap();
    registry.push("test/box:v1", &image).await.unwrap();
    let mut cluster = Cluster::builder().agents(1).registry(&host).start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: probed, labels: {{app: probed}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {host}/test/box:v1
    command: [sh, -c, 'echo run-$RANDOM; touch /tmp/alive; sleep 4; rm /tmp/alive; sleep 3600']
    readinessProbe: {{exec: {{command: ["true"]}}, periodSeconds: 1}}
    livenessProbe: {{exec: {{command: [test, -f, /tmp/alive]}}, initialDelaySeconds: 1, periodSeconds: 1, failureThreshold: 2}}
"#
        ))
        .await
        .unwrap();
    // Ready through an exec probe; restarted when the liveness command starts failing.
    cluster.wait_pod("probed", "Ready", |p| p.is_ready()).await;
    let restarted = cluster
        .wait_pod("probed", "restarted by liveness", |p| {
            p.restarts() >= 1 && p.is_ready()
        })
        .await;
    let last = restarted.status.container_statuses[0]
        .last_state
        .clone()
        .and_then(|s| s.terminated)
        .unwrap();
    assert_eq!(last.exit_code, 137, "killed by the liveness restart");
    // The killed run's log, with the probe's verdict, is the previous one; the new run has
    // a log of its own.
    let previous = eventually("the killed run's log", || async {
        let l = logs_of(&cluster, "probed", None, true).await.ok()?;
        l.contains("will be restarted").then_some(l)
    })
    .await;
    assert!(
        previous.contains("run-")
            && previous
                .contains("Liveness probe failed: command \"test -f /tmp/alive\" exited with 1"),
        "{previous}"
    );
    let before = eventually("the new run logged", || async {
        let l = logs(&cluster, "probed").await;
        l.contains("run-").then_some(l)
    })
    .await;
    assert!(!before.contains("Liveness probe failed"), "{before}");

    // `fleet exec`: stdin in, output and exit code out.
    let c = cluster.fleet().await;
    let exec = |command: &[&str], tty: bool| flotilla_proto::wire::ExecRequest {
        namespace: "default".into(),
        name: "probed".into(),
        container: None,
        command: command.iter().map(|s| s.to_string()).collect(),
        tty,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = c
        .exec(
            exec(&["sh", "-c", "cat; echo oops >&2; exit 3"], false),
            Some(&b"piped in\n"[..]),
            None,
            None,
            &mut out,
            &mut err,
        )
        .await
        .unwrap();
    assert_eq!(
        (code, out.as_slice(), err.as_slice()),
        (3, &b"piped in\n"[..], &b"oops\n"[..])
    );
    // A terminal: the command has one, of the client's size; it follows a resize; what the
    // client types reaches it.
    let script = "test -t 0 && test -t 1 && echo tty-yes; busybox stty size; \
        trap 'busybox stty size; exit 7' WINCH; read line; echo got-$line; \
        while :; do sleep 0.1; done";
    let (resize_tx, resize_rx) = tokio::sync::mpsc::channel(1);
    let (mut out_w, mut out_r) = tokio::io::duplex(1 << 16);
    let (mut keys_w, keys_r) = tokio::io::duplex(1 << 10);
    let watcher = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        let mut typed = false;
        let mut resized = false;
        while let Ok(n) = out_r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if !typed && seen.contains("24 80") {
                typed = true;
                keys_w.write_all(b"hello\r").await.unwrap();
            }
            if !resized && seen.contains("got-hello") {
                resized = true;
                resize_tx.send((100, 40)).await.unwrap();
            }
        }
        seen
    });
    let code = c
        .exec(
            exec(&["sh", "-c", script], true),
            Some(keys_r),
            Some((80, 24)),
            Some(resize_rx),
            &mut out_w,
            &mut Vec::new(),
        )
        .await
        .unwrap();
    drop(out_w);
    let seen = watcher.await.unwrap();
    assert_eq!(code, 7, "{seen:?}");
    for expected in ["tty-yes", "24 80", "got-hello", "40 100"] {
        assert!(seen.contains(expected), "{expected:?} in {seen:?}");
    }
    c.close().await;
    // The CLI exits with the command's code.
    let (rc, stdout, _) = tokio::task::block_in_place(|| {
        cluster.fleet_cli(
            &["exec", "probed", "--", "sh", "-c", "echo from-cli; exit 5"],
            None,
        )
    });
    assert_eq!((rc, stdout.as_str()), (5, "from-cli\n"));

    // An agent restart: nothing is left while it is down; afterwards the pod runs again and
    // the run from before the restart is its previous log.
    cluster.stop_agent(0).await;
    let (runc, mounts, nets) = leftovers(&cluster, 0);
    assert!(
        runc.is_empty() && mounts.is_empty() && nets.is_empty(),
        "{runc:?} {mounts:?} {nets:?}"
    );
    cluster.start_agent(0).await;
    cluster
        .wait_pod("probed", "Ready again", |p| p.is_ready())
        .await;
    let run_line = before.lines().find(|l| l.starts_with("run-")).unwrap();
    eventually("the run before the restart kept as previous", || async {
        let l = logs_of(&cluster, "probed", None, true).await.ok()?;
        l.contains(run_line).then_some(())
    })
    .await;
    eventually("a new run logged after the restart", || async {
        let l = logs(&cluster, "probed").await;
        (l.contains("run-") && !l.contains(run_line)).then_some(())
    })
    .await;

    // Exec probes that time out: their commands are killed, not orphaned to the agent (a
    // subreaper since containers run detached), so no zombie is left to it.
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: slow, labels: {{app: slow}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: {host}/test/box:v1
    command: [sh, -c, 'sleep 3600']
    readinessProbe: {{exec: {{command: [sleep, "2"]}}, timeoutSeconds: 1, periodSeconds: 1}}
"#
        ))
        .await
        .unwrap();
    cluster
        .wait_pod("slow", "running", |p| p.status.phase == "Running")
        .await;
    // Several probes time out; the sleep of each would have ended within 2 s.
    tokio::time::sleep(Duration::from_secs(6)).await;
    eventually("no zombie left to the agent", || async {
        zombies().is_empty().then_some(())
    })
    .await;
    let c = cluster.fleet().await;
    c.delete(flotilla_proto::Kind::Pod, "default", "slow")
        .await
        .unwrap();
    c.close().await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_share_the_pod_network_and_log_on_their_own() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let web = busybox_image(&["sh"], serde_json::json!({})).unwrap();
    registry.push("test/duo:v1", &web).await.unwrap();
    let cluster = Cluster::builder().agents(1).registry(&host).start().await;
    // The server listens on the pod's loopback only: the sidecar reaches it because the
    // containers share one network namespace. It serves a file it wrote, as a non-root user,
    // into an emptyDir the sidecar (another user) reads through a read-only mount; the
    // sidecar also reads a ConfigMap file. The sidecar exits 3 after each call.
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: duo-conf}}
data: {{greeting: hello-from-configmap}}
---
apiVersion: v1
kind: Pod
metadata:
  name: duo
  annotations: {{kubectl.kubernetes.io/default-container: side}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {{name: shared, emptyDir: {{}}}}
  - {{name: conf, configMap: {{name: duo-conf}}}}
  containers:
  - name: web
    image: {host}/test/duo:v1
    securityContext: {{runAsUser: 1000}}
    volumeMounts: [{{name: shared, mountPath: /shared}}]
    command: [sh, -c, 'echo web-started; echo from-web > /shared/index.html; exec httpd -f -p 127.0.0.1:8080 -h /shared']
  - name: side
    image: {host}/test/duo:v1
    securityContext: {{runAsUser: 2000}}
    volumeMounts: [{{name: shared, mountPath: /data, readOnly: true}}, {{name: conf, mountPath: /conf}}]
    command: [sh, -c, 'echo side-$RANDOM; cat /conf/greeting; touch /data/x 2>/dev/null || echo read-only; until wget -qO- http://127.0.0.1:8080/; do sleep 0.2; done; sleep 1; exit 3']
"#
        ))
        .await
        .unwrap();
    let pod = cluster
        .wait_pod("duo", "the sidecar restarted", |p| {
            p.status
                .container_statuses
                .iter()
                .any(|s| s.name == "side" && s.restart_count >= 1)
        })
        .await;
    assert_eq!(pod.status.phase, "Running");
    let web = &pod.status.container_statuses[0];
    assert_eq!(
        (
            web.name.as_str(),
            web.restart_count,
            web.state.running.is_some()
        ),
        ("web", 0, true),
        "the server runs on while its sidecar restarts"
    );
    let side_last = pod.status.container_statuses[1]
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .unwrap();
    assert_eq!(side_last.exit_code, 3);

    // Each container has its own log; the annotation picks the default one.
    let web_log = logs_of(&cluster, "duo", Some("web"), false).await.unwrap();
    assert!(
        web_log.contains("web-started") && !web_log.contains("side-"),
        "{web_log}"
    );
    // As with kubelet, the run that ended is the current log until the next one starts.
    let previous = eventually("the sidecar's second run", || async {
        logs_of(&cluster, "duo", None, true).await.ok()
    })
    .await;
    for expected in [
        "side-",
        "hello-from-configmap",
        "read-only",
        "from-web",
        "container side exited with code 3",
    ] {
        assert!(
            previous.contains(expected),
            "the sidecar's previous run: {expected:?} in {previous}"
        );
    }
    let refused = logs_of(&cluster, "duo", Some("web"), true)
        .await
        .unwrap_err();
    assert!(
        refused.contains("previous terminated container \"web\" in pod \"duo\" not found"),
        "{refused}"
    );
    let refused = logs_of(&cluster, "duo", Some("nope"), false)
        .await
        .unwrap_err();
    assert!(
        refused.contains("container \"nope\" is not valid for pod duo (containers: web, side)"),
        "{refused}"
    );

    // exec -c reaches the named container.
    let (rc, stdout, _) = tokio::task::block_in_place(|| {
        cluster.fleet_cli(
            &[
                "exec",
                "duo",
                "-c",
                "web",
                "--",
                "wget",
                "-qO-",
                "http://127.0.0.1:8080/",
            ],
            None,
        )
    });
    assert_eq!((rc, stdout.as_str()), (0, "from-web\n"));

    // Deleting the pod removes both containers and the shared network.
    delete_leaving_nothing(&cluster, &["duo"], "both containers cleaned up").await;
    cluster.shutdown().await;
}

/// Init containers prepare a container pod in order: they share its volumes and network,
/// one that fails is run again (restartPolicy Always counts as OnFailure), and under
/// restartPolicy Never a failed one fails the pod before the others start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_prepare_the_pod_in_order() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let sh = busybox_image(&["sh"], serde_json::json!({})).unwrap();
    registry.push("test/init:v1", &sh).await.unwrap();
    let cluster = Cluster::builder().agents(1).registry(&host).start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: staged}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: work, emptyDir: {{}}}}]
  initContainers:
  - name: fetch
    image: {host}/test/init:v1
    volumeMounts: [{{name: work, mountPath: /work}}]
    command: [sh, -c, 'echo fetch-ran; echo one > /work/order; hostname > /work/host']
  - name: flaky
    image: {host}/test/init:v1
    volumeMounts: [{{name: work, mountPath: /work}}]
    command: [sh, -c, 'if [ -f /work/tried ]; then echo two >> /work/order; else touch /work/tried; echo failing-once; exit 1; fi']
  containers:
  - name: web
    image: {host}/test/init:v1
    volumeMounts: [{{name: work, mountPath: /work}}]
    command: [sh, -c, 'echo three >> /work/order; exec sleep 300']
---
apiVersion: v1
kind: Pod
metadata: {{name: doomed}}
spec:
  restartPolicy: Never
  initContainers:
  - {{name: check, image: "{host}/test/init:v1", command: [sh, -c, 'echo not-ready; exit 7']}}
  containers:
  - {{name: main, image: "{host}/test/init:v1", command: [sh, -c, 'echo should-not-run']}}
"#
        ))
        .await
        .unwrap();
    let staged = cluster
        .wait_pod("staged", "to run", |p| {
            p.status.phase == "Running" && p.status.container_statuses[0].state.running.is_some()
        })
        .await;
    let inits: Vec<(&str, i32, Option<i32>)> = staged
        .status
        .init_container_statuses
        .iter()
        .map(|s| {
            let code = s.state.terminated.as_ref().map(|t| t.exit_code);
            (s.name.as_str(), s.restart_count, code)
        })
        .collect();
    assert_eq!(inits, [("fetch", 0, Some(0)), ("flaky", 1, Some(0))]);
    let flaky_last = staged.status.init_container_statuses[1]
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(flaky_last, Some(1));
    assert_eq!(staged.restarts(), 1, "init restarts count in the pod's");
    // The volume carries what the init containers did, in order; they ran in the pod's
    // network namespace (its hostname is the pod's).
    // Running is reported as runc starts the container, so its line may come a moment later.
    let order = eventually("the main container's line in /work/order", || async {
        let (rc, order, _) = tokio::task::block_in_place(|| {
            cluster.fleet_cli(
                &["exec", "staged", "--", "cat", "/work/order", "/work/host"],
                None,
            )
        });
        (rc == 0 && order.contains("three")).then_some(order)
    })
    .await;
    assert_eq!(order, "one\ntwo\nthree\nstaged\n");
    let fetch = logs_of(&cluster, "staged", Some("fetch"), false)
        .await
        .unwrap();
    assert!(fetch.contains("fetch-ran"), "{fetch}");
    let flaky = logs_of(&cluster, "staged", Some("flaky"), true)
        .await
        .unwrap();
    assert!(flaky.contains("failing-once"), "{flaky}");
    // The app container is the default one for logs and exec.
    let (rc, _, _) =
        tokio::task::block_in_place(|| cluster.fleet_cli(&["exec", "staged", "--", "true"], None));
    assert_eq!(rc, 0);

    let doomed = cluster
        .wait_pod("doomed", "to fail", |p| p.status.phase == "Failed")
        .await;
    assert_eq!(fleet::output::pod_status(&doomed), "Init:Error");
    let check = &doomed.status.init_container_statuses[0];
    assert_eq!(
        check.state.terminated.as_ref().map(|t| t.exit_code),
        Some(7)
    );
    assert_eq!(
        waiting(&doomed).map(|(r, _)| r).as_deref(),
        Some("PodInitializing"),
        "the main container never started"
    );
    let main = logs_of(&cluster, "doomed", Some("main"), false)
        .await
        .unwrap_or_default();
    assert!(!main.contains("should-not-run"), "{main}");

    // Deleting the pods leaves no container, mount or network behind.
    delete_leaving_nothing(&cluster, &["staged", "doomed"], "the init pods cleaned up").await;
    cluster.shutdown().await;
}

/// Sidecars (init containers with restartPolicy Always) start in their turn, before the init
/// containers after them, run beside the containers, are restarted whatever the pod's
/// policy, and are stopped once a Job-like pod's containers are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_start_first_and_stop_when_the_pod_is_done() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let sh = busybox_image(&["sh"], serde_json::json!({})).unwrap();
    registry.push("test/side:v1", &sh).await.unwrap();
    let cluster = Cluster::builder().agents(1).registry(&host).start().await;
    // `after` and `main` reach the sidecar over the pod's loopback; under restartPolicy
    // Never, `after` failing (the sidecar not yet serving) would fail the pod.
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: batch}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  volumes: [{{name: www, emptyDir: {{}}}}]
  initContainers:
  - name: proxy
    image: {host}/test/side:v1
    restartPolicy: Always
    volumeMounts: [{{name: www, mountPath: /www}}]
    command: [sh, -c, 'echo side-up > /www/index.html; exec httpd -f -p 8081 -h /www']
    startupProbe: {{tcpSocket: {{port: 8081}}, periodSeconds: 1}}
  - name: after
    image: {host}/test/side:v1
    command: [wget, -qO-, 'http://127.0.0.1:8081/']
  containers:
  - name: main
    image: {host}/test/side:v1
    command: [sh, -c, 'wget -qO- http://127.0.0.1:8081/ && sleep 1']
---
apiVersion: v1
kind: Pod
metadata: {{name: served}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  initContainers:
  - name: blinker
    image: {host}/test/side:v1
    restartPolicy: Always
    command: [sh, -c, 'echo blink; sleep 1; exit 5']
  containers:
  - {{name: main, image: "{host}/test/side:v1", command: [sleep, "300"]}}
"#
        ))
        .await
        .unwrap();
    let batch = cluster
        .wait_pod("batch", "to succeed with its sidecar stopped", |p| {
            p.status.phase == "Succeeded"
                && p.status.init_container_statuses[0]
                    .state
                    .terminated
                    .is_some()
        })
        .await;
    let proxy = &batch.status.init_container_statuses[0];
    let after = &batch.status.init_container_statuses[1];
    assert_eq!((proxy.restart_count, after.restart_count), (0, 0));
    assert_eq!(
        after.state.terminated.as_ref().map(|t| t.exit_code),
        Some(0)
    );
    let main = batch.status.container_statuses[0]
        .state
        .terminated
        .as_ref()
        .unwrap();
    let stopped = proxy.state.terminated.as_ref().unwrap();
    assert_eq!(main.exit_code, 0);
    assert!(
        main.finished_at <= stopped.finished_at,
        "{main:?} {stopped:?}"
    );
    for (container, expected) in [("after", "side-up"), ("main", "side-up")] {
        let log = logs_of(&cluster, "batch", Some(container), false)
            .await
            .unwrap();
        assert!(log.contains(expected), "{container}: {log}");
    }
    assert_eq!(fleet::output::pod_status(&batch), "Completed");

    // The sidecar is restarted though the pod's policy is Never; the pod runs on, and
    // kubectl's READY column counts it.
    let served = cluster
        .wait_pod("served", "its sidecar restarted", |p| {
            let side = p.status.init_container_statuses.first();
            let main = p.status.container_statuses.first();
            side.is_some_and(|s| s.restart_count >= 1)
                && main.is_some_and(|m| m.state.running.is_some())
        })
        .await;
    assert_eq!(served.status.phase, "Running");
    let last = served.status.init_container_statuses[0]
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    assert_eq!(last, Some(5));
    let (rc, table, _) =
        tokio::task::block_in_place(|| cluster.fleet_cli(&["get", "pods", "served"], None));
    assert_eq!(rc, 0);
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    let ready = row.split_whitespace().nth(1).unwrap_or_default();
    assert!(ready.ends_with("/2"), "the sidecar counts: {table}");

    // A deleted pod's sidecars are stopped after its containers have exited, as in
    // Kubernetes: each writes to a host directory when it starts and when it is stopped.
    let out = cluster.dir.path().join("drain");
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Namespace
metadata:
  name: drain
  annotations: {{flotilla.io/allowed-host-paths: "{out}"}}
---
apiVersion: v1
kind: Pod
metadata: {{name: draining, namespace: drain}}
spec:
  terminationGracePeriodSeconds: 5
  volumes: [{{name: out, hostPath: {{path: "{out}", type: DirectoryOrCreate}}}}]
  initContainers:
  - name: side
    image: {host}/test/side:v1
    restartPolicy: Always
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'trap "echo side-stop >> /out/order; exit 0" TERM; echo side-up >> /out/order; while true; do sleep 0.2; done']
  containers:
  - name: main
    image: {host}/test/side:v1
    volumeMounts: [{{name: out, mountPath: /out}}]
    command: [sh, -c, 'trap "sleep 1; echo main-stop >> /out/order; exit 0" TERM; echo main-up >> /out/order; while true; do sleep 0.2; done']
"#,
            out = out.display()
        ))
        .await
        .unwrap();
    let order = out.join("order");
    let read = || std::fs::read_to_string(&order).unwrap_or_default();
    eventually("both containers of the draining pod up", || async {
        read().contains("main-up").then_some(())
    })
    .await;
    let c = cluster.fleet().await;
    c.delete(flotilla_proto::Kind::Pod, "drain", "draining")
        .await
        .unwrap();
    c.close().await;
    eventually("the draining pod's sidecar stopped", || async {
        read().contains("side-stop").then_some(())
    })
    .await;
    let lines: Vec<String> = read().lines().map(str::to_string).collect();
    let at = |l: &str| lines.iter().position(|x| x == l);
    assert!(at("side-up").is_some(), "{lines:?}");
    let stops = (at("main-stop"), at("side-stop"));
    assert!(
        matches!(stops, (Some(main), Some(side)) if main < side),
        "{lines:?}"
    );

    delete_leaving_nothing(
        &cluster,
        &["batch", "served"],
        "the sidecar pods cleaned up",
    )
    .await;
    cluster.shutdown().await;
}

/// A container pod finds a service by its short name through the node DNS (resolv.conf with
/// the namespace's search path and ndots:5), and calls the backend pod it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_resolve_services_by_name_through_the_node_dns() {
    require_container_tools("container");
    let registry = Registry::start().unwrap();
    let host = registry.host();
    let web = web_image();
    registry.push("test/web:v1", &web).await.unwrap();
    let cluster = Cluster::builder().agents(1).registry(&host).start().await;
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: {host}/test/web:v1
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: None
  selector: {{app: web}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"#
        ))
        .await
        .unwrap();
    let pods = cluster.wait_ready("web", 1).await;
    let ip = pods[0].status.pod_ip.clone().unwrap();
    let gateway = {
        let subnet: ipnet::IpNet = cluster
            .agent(0)
            .shared
            .network
            .as_ref()
            .unwrap()
            .subnet()
            .unwrap()
            .parse()
            .unwrap();
        subnet.hosts().next().unwrap().to_string()
    };
    cluster
        .apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: OnFailure
  containers:
  - name: client
    image: {host}/test/web:v1
    command: [sh, -c]
    args: ['cat /etc/resolv.conf; nslookup web.default.svc.cluster.local; wget -qO- http://web:8080/']
"#
        ))
        .await
        .unwrap();
    cluster
        .wait_pod("client", "Succeeded", |p| p.status.phase == "Succeeded")
        .await;
    let out = logs(&cluster, "client").await;
    assert!(
        out.contains("search default.svc.cluster.local svc.cluster.local cluster.local")
            && out.contains(&format!("nameserver {gateway}\n"))
            && out.contains("options ndots:5"),
        "resolv.conf: {out}"
    );
    assert!(out.contains(&format!("Address: {ip}")), "nslookup: {out}");
    assert!(
        out.contains("hello from a container"),
        "wget by short name: {out}"
    );
    cluster.shutdown().await;
}
