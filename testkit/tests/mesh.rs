//! Service traffic end to end: the hub and three agents in network namespaces of their own
//! (so each agent has its cluster IPs and node ports to itself), wasi:http backends on two
//! nodes, and curl inside the agents' namespaces calling the cluster IP and the node ports.
//! Checked: connections are balanced over the Ready endpoints of other nodes (through the
//! agents' mesh link), an unready endpoint on the caller's own node gets none, an endpoint on
//! the caller's node is preferred, node ports answer on every node, removing a backend takes
//! it out of rotation, and traffic keeps flowing with the hub stopped. A WASI pod calls a
//! service by name only when its `flotilla.io/outbound-http` grant names it, also without
//! the hub, and uses wasi:sockets (TCP and UDP, names looked up in process) only where its
//! `flotilla.io/outbound-network` grant allows. UDP services: flows are balanced, a flow keeps its endpoint, answers come from the
//! cluster IP, and the mesh link (or the hub) carries them. Needs root, iproute2 and curl (CI
//! has them).
use flotilla_proto::Object;
use flotilla_proto::api::Service;
use flotilla_proto::wire::{MeshOpened, MeshTarget, RelayRequest, Request};
use flotilla_testkit::netns::Net;
use flotilla_testkit::{Cluster, eventually};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn backend(name: &str, node: &str, readiness: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, tier: web}}}}
    spec:
      nodeSelector: {{kubernetes.io/hostname: {node}}}
      containers:
      - name: web
        image: hello:latest
        resources: {{requests: {{cpu: 100m, memory: 32Mi}}, limits: {{memory: 64Mi}}}}
        env:
        - {{name: FLOTILLA_NODE_NAME, valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}}}
        readinessProbe: {{{readiness}, periodSeconds: 1}}
"#
    )
}

const READY: &str = "httpGet: {path: /, port: 8080}";
/// Not ready until its first probe, an hour away.
const NEVER_READY: &str = "httpGet: {path: /, port: 8080}, initialDelaySeconds: 3600";

/// Served on the gateway node (node-2) at its own port.
const LOAD_BALANCER: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  selector: {tier: web}
  ports: [{name: http, port: 8081, targetPort: 8080}]
"#;

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {tier: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"#;

/// GET from inside agent `i`'s namespace: the node that answered (from hello's greeting),
/// or None when nothing did.
fn served_by(net: &Net, i: usize, url: &str) -> Option<String> {
    let out = net.agent_ns(i).exec(&["curl", "-s", "-m", "10", url]);
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    body.lines()
        .next()?
        .strip_prefix("hello from ")?
        .split(" on ")
        .nth(1)
        .map(str::to_string)
}

/// How many of `n` requests each node answered.
fn spread(net: &Net, i: usize, url: &str, n: usize) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for _ in 0..n {
        let who = served_by(net, i, url).unwrap_or_else(|| "nobody".into());
        *by.entry(who).or_default() += 1;
    }
    by
}

/// In agent `i`'s namespace, inserts (`-I`) or deletes (`-D`) a rule dropping `proto`
/// packets from node-0 to `port`.
fn drop_on(net: &Net, i: usize, op: &str, proto: &str, port: &str) {
    let rule = [
        "INPUT",
        "-p",
        proto,
        "-s",
        "10.77.0.10",
        "--dport",
        port,
        "-j",
        "DROP",
    ];
    let out = net
        .agent_ns(i)
        .exec(&[&["iptables", op][..], &rule[..]].concat());
    assert!(
        out.status.success(),
        "iptables: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn service(cluster: &Cluster, name: &str) -> Service {
    let c = cluster.fleet().await;
    let svcs = c
        .get(flotilla_proto::Kind::Service, Some("default"), None)
        .await
        .expect("list services");
    c.close().await;
    svcs.into_iter()
        .find_map(|o| match o {
            Object::Service(s) if s.metadata.name == name => Some(s),
            _ => None,
        })
        .expect("the service")
}

#[test]
fn service_traffic_is_balanced_across_nodes_over_the_mesh() {
    flotilla_testkit::init_tracing();
    let net = Net::create(3).expect("network namespaces (needs root and iproute2)");
    net.block_on(async {
        let mut cluster = Cluster::builder()
            .agents(3)
            .label(2, flotilla_proto::service::GATEWAY_LABEL, "true")
            .on(&net)
            .start()
            .await;
        cluster.wait_nodes_ready(3).await;
        cluster.push_example("hello").await;
        for (name, node, probe) in [
            ("web-b", "node-1", READY),
            ("web-c", "node-2", READY),
            ("web-sick", "node-0", NEVER_READY),
        ] {
            cluster
                .apply(&backend(name, node, probe))
                .await
                .expect("apply backend");
        }
        cluster.apply(SERVICE).await.expect("apply service");
        cluster
            .apply(LOAD_BALANCER)
            .await
            .expect("apply load balancer");
        let web_b = cluster.wait_ready("web-b", 1).await;
        cluster.wait_ready("web-c", 1).await;
        let svc = service(&cluster, "web").await;
        let ip = svc.spec.cluster_ip.clone().expect("a cluster IP");
        let node_port = svc.spec.ports[0].node_port.expect("a node port");
        let vip = format!("http://{ip}/");

        // node-0 has only an unready endpoint of its own: its connections go to the other
        // nodes, about half each.
        eventually("node-0 to reach both remote backends", || async {
            let by = spread(&net, 0, &vip, 2);
            (by.get("node-1") == Some(&1) && by.get("node-2") == Some(&1)).then_some(())
        })
        .await;
        let by = spread(&net, 0, &vip, 20);
        assert_eq!(
            by.get("node-1"),
            Some(&10),
            "round robin from node-0: {by:?}"
        );
        assert_eq!(
            by.get("node-2"),
            Some(&10),
            "round robin from node-0: {by:?}"
        );

        // It is the mesh link that carries it: with node-1's endpoint closed to node-0's
        // address, node-0 still reaches it through the service.
        let direct = web_b[0].status.endpoint.clone().expect("web-b's endpoint");
        let port = direct.rsplit(':').next().expect("a port");
        let firewall = |op: &str| drop_on(&net, 1, op, "tcp", port);
        firewall("-I");
        let out = net
            .agent_ns(0)
            .exec(&["curl", "-s", "-m", "2", &format!("http://{direct}/")]);
        assert!(
            !out.status.success(),
            "node-0 reaches {direct} directly despite the firewall"
        );
        let by = spread(&net, 0, &vip, 4);
        assert_eq!(by.get("node-1"), Some(&2), "through the mesh: {by:?}");
        firewall("-D");

        // When node-0's packets no longer reach node-1's mesh link, the hub relays.
        let mesh_port = cluster
            .agent(1)
            .shared
            .mesh_port
            .expect("node-1's mesh port");
        let mesh_port = mesh_port.to_string();
        let mesh_block = |op: &str| drop_on(&net, 1, op, "udp", &mesh_port);
        mesh_block("-I");
        let by = spread(&net, 0, &vip, 4);
        assert_eq!(
            by.get("node-1"),
            Some(&2),
            "relayed through the hub: {by:?}"
        );
        mesh_block("-D");

        // A node asks only for other nodes' endpoints: anything else on them is refused.
        let (ep, conn) = cluster.node_connection(0).await;
        let ask = |target: &str| {
            Request::Relay(RelayRequest {
                node: "node-1".into(),
                target: MeshTarget::tcp(target.parse().unwrap()),
            })
        };
        let (_s, _r, answer): (_, _, MeshOpened) =
            flotilla_transport::request(&conn, &ask("10.77.0.11:22"))
                .await
                .expect("relay");
        assert_eq!(
            answer,
            MeshOpened::Refused {
                reason: "10.77.0.11:22 is not an endpoint on this node".into()
            }
        );
        let (_s, _r, answer): (_, _, MeshOpened) =
            flotilla_transport::request(&conn, &ask(&direct))
                .await
                .expect("relay");
        assert_eq!(
            answer,
            MeshOpened::Connected,
            "web-b's endpoint is let through"
        );
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;

        // A node with a Ready endpoint of its own keeps its traffic.
        for (i, node) in [(1, "node-1"), (2, "node-2")] {
            let by = spread(&net, i, &vip, 6);
            assert_eq!(
                by.get(node),
                Some(&6),
                "{node} prefers its own endpoint: {by:?}"
            );
        }

        // The node port answers on every node, from every node.
        for target in 0..3 {
            let url = format!("http://{}:{node_port}/", Net::agent_ip(target));
            for from in 0..3 {
                assert!(
                    served_by(&net, from, &url).is_some(),
                    "node port {url} from node-{from}"
                );
            }
        }

        // The LoadBalancer service answers on the gateway node at its port, and says so.
        let lb = eventually("the load balancer's address in status", || async {
            let s = service(&cluster, "lb").await;
            (!s.status.load_balancer.ingress.is_empty()).then_some(s)
        })
        .await;
        let ingress: Vec<String> = lb
            .status
            .load_balancer
            .ingress
            .iter()
            .filter_map(|i| i.ip.clone())
            .collect();
        assert_eq!(ingress, [Net::agent_ip(2).to_string()]);
        let on = |i: usize| format!("http://{}:8081/", Net::agent_ip(i));
        for from in 0..3 {
            assert!(
                served_by(&net, from, &on(2)).is_some(),
                "gateway from node-{from}"
            );
        }
        assert_eq!(served_by(&net, 0, &on(0)), None, "node-0 is no gateway");

        // A backend that goes away leaves the rotation.
        let c = cluster.fleet().await;
        c.delete(flotilla_proto::Kind::Deployment, "default", "web-c")
            .await
            .expect("delete web-c");
        c.close().await;
        eventually("web-c out of node-0's rotation", || async {
            let by = spread(&net, 0, &vip, 4);
            (by.get("node-1") == Some(&4)).then_some(())
        })
        .await;

        // Without the hub, nodes route to the endpoints they know.
        cluster.stop_hub().await;
        let by = spread(&net, 2, &vip, 4);
        assert_eq!(by.get("node-1"), Some(&4), "node-2 without the hub: {by:?}");
        cluster.shutdown().await;
    });
}

/// The metadata line of a pod whose `annotation` grants `grant` (nothing when None).
fn granting(annotation: &str, grant: Option<&str>) -> String {
    grant
        .map(|g| format!("annotations: {{{annotation}: \"{g}\"}}"))
        .unwrap_or_default()
}

/// A chaos pod on node-0 that may call what `grant` names (no annotation when None).
fn caller(name: &str, grant: Option<&str>) -> String {
    let annotations = granting("flotilla.io/outbound-http", grant);
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
  {annotations}
spec:
  nodeSelector: {{kubernetes.io/hostname: node-0}}
  containers:
  - name: chaos
    image: chaos:latest
    readinessProbe: {{httpGet: {{path: /, port: 8080}}, periodSeconds: 1}}
"#
    )
}

/// GETs `url` through pod `at`'s `/fetch`, from node-0's namespace: status and body.
fn fetch(net: &Net, at: &str, url: &str) -> (String, String) {
    net.agent_ns(0)
        .curl(&[&format!("http://{at}/fetch?url={url}")])
}

/// Hub and two agents: hello (web-b) on node-1 behind the Services web and other (and
/// `more`), and the `caller` example pushed for pods on node-0.
async fn calling_web(net: &Net, caller: &str, more: &[&str]) -> Cluster {
    let cluster = Cluster::builder().agents(2).on(net).start().await;
    cluster.wait_nodes_ready(2).await;
    cluster.push_example("hello").await;
    cluster.push_example(caller).await;
    cluster
        .apply(&backend("web-b", "node-1", READY))
        .await
        .expect("apply backend");
    let other = SERVICE.replace("name: web}", "name: other}");
    for svc in [SERVICE, &other].into_iter().chain(more.iter().copied()) {
        cluster.apply(svc).await.expect("apply service");
    }
    cluster
}

#[test]
fn wasi_pods_call_services_by_name_only_when_granted() {
    flotilla_testkit::init_tracing();
    let net = Net::create(2).expect("network namespaces (needs root and iproute2)");
    net.block_on(async {
        let mut cluster = calling_web(&net, "chaos", &[]).await;
        // A grant that is not a host list is refused, naming the field.
        let err = cluster
            .apply(&caller("bad", Some("http://web")))
            .await
            .expect_err("a bad grant");
        assert!(
            err.to_string()
                .contains("metadata.annotations[flotilla.io/outbound-http]: \"http://web\""),
            "{err:#}"
        );
        cluster
            .apply(&caller(
                "granted",
                Some("web, ghost.default.svc.cluster.local"),
            ))
            .await
            .expect("apply granted caller");
        cluster
            .apply(&caller("closed", None))
            .await
            .expect("apply closed caller");
        cluster.wait_ready("web-b", 1).await;
        let granted = cluster.wait_ready("granted", 1).await[0]
            .status
            .endpoint
            .clone();
        let granted = granted.expect("granted's endpoint");
        let closed = cluster.wait_ready("closed", 1).await[0]
            .status
            .endpoint
            .clone();
        let closed = closed.expect("closed's endpoint");

        // The short and the qualified name reach the backend on node-1 through the cluster IP.
        for url in ["http://web/", "http://web.default.svc.cluster.local:80/"] {
            let (code, body) = eventually("the service through the grant", || async {
                let (code, body) = fetch(&net, &granted, url);
                (code == "200").then_some((code, body))
            })
            .await;
            assert!(
                body.starts_with("hello from ") && body.contains(" on node-1\n"),
                "{url}: {code} {body}"
            );
        }
        // Not granted, a cluster name that does not exist, and no grant at all: the request
        // fails (how the guest hears it is its library's: wstd reports the closed request
        // body first), and the pod log says why.
        let ghost = "ghost.default.svc.cluster.local";
        for (pod, at, url, why) in [
            (
                "granted",
                &granted,
                "http://other/".to_owned(),
                "refused: other is not granted by the pod's flotilla.io/outbound-http annotation",
            ),
            (
                "granted",
                &granted,
                format!("http://{ghost}/"),
                "refused: ghost.default.svc.cluster.local: no such cluster name",
            ),
            (
                "closed",
                &closed,
                "http://web/".to_owned(),
                "denied: the pod has no flotilla.io/outbound-http annotation",
            ),
        ] {
            let (code, body) = fetch(&net, at, &url);
            assert_eq!(code, "502", "{pod} {url}: {body}");
            let (_, log, _) = cluster.fleet_cli(&["logs", pod], None);
            assert!(
                log.contains(&format!("outgoing http request to {url} {why}")),
                "{pod}'s log: {log}"
            );
        }

        // The names come from the node's copy: they resolve without the hub.
        cluster.stop_hub().await;
        let (code, body) = fetch(&net, &granted, "http://web/");
        assert_eq!(code, "200", "without the hub: {body}");
        cluster.shutdown().await;
    });
}

/// A batch pod on node-0 that runs once with `env` (`CONNECT`, `UDP`), its wasi:sockets
/// granted what `grant` names (no annotation when None).
fn socket_user(name: &str, grant: Option<&str>, env: &[(&str, &str)]) -> String {
    let annotations = granting("flotilla.io/outbound-network", grant);
    let env: Vec<String> = env
        .iter()
        .map(|(k, v)| format!("{{name: {k}, value: \"{v}\"}}"))
        .collect();
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  {annotations}
spec:
  restartPolicy: Never
  nodeSelector: {{kubernetes.io/hostname: node-0}}
  containers:
  - name: batch
    image: batch:latest
    env: [{{name: COUNT, value: "0"}}, {}]
"#,
        env.join(", ")
    )
}

#[test]
fn wasi_pods_use_sockets_only_where_granted() {
    flotilla_testkit::init_tracing();
    let net = Net::create(2).expect("network namespaces (needs root and iproute2)");
    let stop = Arc::new(AtomicBool::new(false));
    echo(udp_socket(&net, 1, 5300), "node-1", stop.clone());
    net.block_on(async {
        let cluster = calling_web(&net, "batch", &[&echo_service(false)]).await;
        cluster.wait_ready("web-b", 1).await;
        let web_ip = service(&cluster, "web").await.spec.cluster_ip.clone();
        let web_ip = web_ip.expect("web's cluster IP");
        // A grant that is not a host list is refused, naming the field.
        let err = cluster
            .apply(&socket_user("bad", Some("web, 10.0.0.0/40"), &[]))
            .await
            .expect_err("a bad grant");
        assert!(
            err.to_string().contains(
                "metadata.annotations[flotilla.io/outbound-network]: \"10.0.0.0/40\" is not"
            ),
            "{err:#}"
        );

        let node_0 = format!("{}:7443", Net::agent_ip(0));
        let web_vip = format!("{web_ip}:80");
        let cases = [
            // A granted service's name resolves in process, its cluster IP takes the
            // connection, and the mesh carries it to node-1; UDP goes the same way.
            (
                "granted",
                Some("web, echo"),
                vec![("CONNECT", "web:80"), ("UDP", "echo:53")],
                vec![
                    format!("lookup web: [{web_vip}]"),
                    "connect web:80: HTTP/1.0 200 OK".into(),
                    "udp echo:53: node-1 got ping from batch".into(),
                ],
            ),
            (
                "other",
                Some("other"),
                vec![("CONNECT", "web:80")],
                vec![
                    "connect web:80 failed".into(),
                    "name lookup of web refused: web is not granted by the pod's flotilla.io/outbound-network annotation".into(),
                ],
            ),
            (
                "closed",
                None,
                vec![("CONNECT", "web:80")],
                vec![
                    "connect web:80 failed".into(),
                    "name lookup of web refused: the pod has no flotilla.io/outbound-network annotation".into(),
                ],
            ),
            // An address is no name: the grant of web does not cover its cluster IP until
            // the pod has looked web up.
            (
                "address",
                Some("web"),
                vec![("CONNECT", web_vip.as_str())],
                vec![
                    format!("connect {web_vip} failed"),
                    format!("socket refused: connecting to {web_vip}: {web_ip} is not granted by the pod's flotilla.io/outbound-network annotation"),
                ],
            ),
            // Whatever the grant, the node itself only at service ports.
            (
                "node",
                Some("*"),
                vec![("CONNECT", node_0.as_str())],
                vec![
                    format!("connect {node_0} failed"),
                    format!("socket refused: connecting to {node_0}: {node_0} is this node"),
                ],
            ),
        ];
        for (name, grant, env, _) in &cases {
            cluster
                .apply(&socket_user(name, *grant, env))
                .await
                .expect("apply a socket user");
        }
        for (name, _, _, want) in &cases {
            cluster
                .wait_pod(name, "succeeded", |p| p.status.phase == "Succeeded")
                .await;
            let (_, log, _) = cluster.fleet_cli(&["logs", name], None);
            for line in want {
                assert!(log.contains(line.as_str()), "{name}'s log lacks {line:?}: {log}");
            }
        }
        cluster.shutdown().await;
    });
    stop.store(true, Ordering::Relaxed);
}

/// A UDP socket in agent `i`'s namespace, at `port` of its address (0: any).
fn udp_socket(net: &Net, i: usize, port: u16) -> std::net::UdpSocket {
    std::thread::scope(|s| {
        s.spawn(|| {
            net.agent_ns(i)
                .enter()
                .expect("enter the agent's namespace");
            std::net::UdpSocket::bind((Net::agent_ip(i), port)).expect("bind")
        })
        .join()
        .expect("socket thread")
    })
}

/// Answers every datagram on `socket` with `<name> got <it>` until `stop`.
fn echo(socket: std::net::UdpSocket, name: &'static str, stop: Arc<AtomicBool>) {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf) {
                let got = String::from_utf8_lossy(&buf[..n]);
                let _ = socket.send_to(format!("{name} got {got}").as_bytes(), from);
            }
        }
    });
}

/// A client socket in node-0's namespace.
fn client(net: &Net) -> tokio::net::UdpSocket {
    let s = udp_socket(net, 0, 0);
    s.set_nonblocking(true).unwrap();
    tokio::net::UdpSocket::from_std(s).unwrap()
}

/// Sends `msg` to `to` and waits up to 2 s for an answer: what it said and where it came from.
async fn ask(
    sock: &tokio::net::UdpSocket,
    to: SocketAddr,
    msg: &str,
) -> Option<(String, SocketAddr)> {
    sock.send_to(msg.as_bytes(), to).await.ok()?;
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// Which node answered `msg`, and from where, on a fresh flow (retrying a few times: a flow
/// that needs the hub's relay takes a while to open).
async fn fresh_flow(net: &Net, to: SocketAddr, msg: &str) -> (String, SocketAddr) {
    let sock = client(net);
    eventually(&format!("an answer to {msg} from {to}"), || async {
        let (said, from) = ask(&sock, to, msg).await?;
        let node = said.strip_suffix(&format!(" got {msg}"))?.to_string();
        Some((node, from))
    })
    .await
}

/// An echo Service without a selector, and its slice: endpoints on node-1 and node-2
/// (node-2's readiness as given).
fn echo_service(node_2_ready: bool) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  type: NodePort
  ports: [{{name: echo, port: 53, protocol: UDP, targetPort: 5300}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  labels: {{kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{{name: echo, port: 5300, protocol: UDP}}]
endpoints:
- {{addresses: ["{}"], nodeName: node-1, conditions: {{ready: true}}}}
- {{addresses: ["{}"], nodeName: node-2, conditions: {{ready: {node_2_ready}}}}}
"#,
        Net::agent_ip(1),
        Net::agent_ip(2)
    )
}

#[test]
fn udp_service_traffic_goes_over_the_mesh_flow_by_flow() {
    flotilla_testkit::init_tracing();
    let net = Net::create(3).expect("network namespaces (needs root and iproute2)");
    let stop = Arc::new(AtomicBool::new(false));
    for (i, name) in [(1, "node-1"), (2, "node-2")] {
        echo(udp_socket(&net, i, 5300), name, stop.clone());
    }
    net.block_on(async {
        let cluster = Cluster::builder().agents(3).on(&net).start().await;
        cluster.wait_nodes_ready(3).await;
        cluster
            .apply(&echo_service(true))
            .await
            .expect("apply the echo service");
        let svc = service(&cluster, "echo").await;
        let ip = svc.spec.cluster_ip.clone().expect("a cluster IP");
        let vip: SocketAddr = format!("{ip}:53").parse().unwrap();
        let node_port = svc.spec.ports[0].node_port.expect("a node port");

        // Both endpoints are on other nodes, behind a firewall that keeps node-0 from
        // their ports: only the mesh link gets there. Answers come from the cluster IP.
        for i in [1, 2] {
            drop_on(&net, i, "-I", "udp", "5300");
        }
        let echo_1 = SocketAddr::new(Net::agent_ip(1), 5300);
        assert_eq!(
            ask(&client(&net), echo_1, "direct").await,
            None,
            "{echo_1} directly"
        );
        let (_, from) = fresh_flow(&net, vip, "first").await;
        assert_eq!(from, vip, "the answer's source");
        // New flows alternate between the endpoints; a flow stays with its endpoint.
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for n in 0..4 {
            *by.entry(fresh_flow(&net, vip, &format!("f{n}")).await.0)
                .or_default() += 1;
        }
        assert_eq!(
            (by.get("node-1"), by.get("node-2")),
            (Some(&2), Some(&2)),
            "flows: {by:?}"
        );
        let sock = client(&net);
        let mut answered = Vec::new();
        for n in 0..4 {
            let (said, _) = ask(&sock, vip, &format!("d{n}")).await.expect("an answer");
            answered.push(said.split(' ').next().unwrap().to_string());
        }
        answered.dedup();
        assert_eq!(answered.len(), 1, "one flow, one endpoint: {answered:?}");

        // The node port answers on every node.
        for target in 0..3 {
            let at = SocketAddr::new(Net::agent_ip(target), node_port as u16);
            fresh_flow(&net, at, "np").await;
        }

        // With node-0's packets kept from the other nodes' mesh links, the hub relays.
        for i in [1, 2] {
            let port = cluster.agent(i).shared.mesh_port.expect("a mesh port");
            drop_on(&net, i, "-I", "udp", &port.to_string());
        }
        let (node, from) = fresh_flow(&net, vip, "relayed").await;
        assert!(node.starts_with("node-"), "{node}");
        assert_eq!(from, vip);

        // A node asks for UDP endpoints as UDP only.
        let (ep, conn) = cluster.node_connection(0).await;
        for (target, want) in [
            (MeshTarget::Udp(echo_1), MeshOpened::Connected),
            (
                MeshTarget::tcp(echo_1),
                MeshOpened::Refused {
                    reason: format!("{echo_1} is not an endpoint on this node"),
                },
            ),
        ] {
            let req = Request::Relay(RelayRequest {
                node: "node-1".into(),
                target,
            });
            let (_s, _r, answer): (_, _, MeshOpened) = flotilla_transport::request(&conn, &req)
                .await
                .expect("relay");
            assert_eq!(answer, want, "{target}");
        }
        conn.close(0u32.into(), b"done");
        ep.wait_idle().await;

        // An endpoint that turns unready gets no new flows, and its busy flows end: their
        // next datagram starts a flow to another endpoint.
        let busy = eventually("a flow to node-2", || async {
            let sock = client(&net);
            let (said, _) = ask(&sock, vip, "busy").await?;
            said.starts_with("node-2 ").then_some(sock)
        })
        .await;
        cluster
            .apply(&echo_service(false))
            .await
            .expect("node-2's endpoint unready");
        eventually("the busy flow moved to node-1", || async {
            let (said, _) = ask(&busy, vip, "still busy").await?;
            said.starts_with("node-1 ").then_some(())
        })
        .await;
        eventually("node-2's endpoint out of rotation", || async {
            let mut nodes = Vec::new();
            for n in 0..4 {
                nodes.push(fresh_flow(&net, vip, &format!("u{n}")).await.0);
            }
            nodes.iter().all(|n| n == "node-1").then_some(())
        })
        .await;
        cluster.shutdown().await;
    });
    stop.store(true, Ordering::Relaxed);
}
