//! Services and the node DNS end to end: hub + 3 agents on loopback, the hub's EndpointSlice
//! controller, every agent's DNS queried with the real `dig`, backends called with curl.
use flotilla_proto::Object;
use flotilla_proto::api::{EndpointSlice, Service};
use flotilla_testkit::{Cluster, curl, eventually};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// dig against one node's DNS: its output.
fn dig_output(server: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new("dig")
        .args([
            &format!("@{}", server.ip()),
            "-p",
            &server.port().to_string(),
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("dig must be installed (scripts/setup installs dnsutils)");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `dig +short`: the answer lines, sorted.
fn dig(server: SocketAddr, name: &str, rtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig_output(server, &["+short", name, rtype])
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The response code dig reports (`NOERROR`, `NXDOMAIN`…).
fn rcode(server: SocketAddr, name: &str) -> String {
    let text = dig_output(server, &[name, "A"]);
    text.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("none")
        .to_string()
}

fn dns_of(cluster: &Cluster, i: usize) -> SocketAddr {
    cluster.agent(i).dns_addrs[0]
}

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: hello:latest
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 32Mi}, limits: {memory: 64Mi}}
        env:
        - name: FLOTILLA_POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: FLOTILLA_NODE_NAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web-direct}
spec:
  clusterIP: None
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: upstream}
spec:
  type: ExternalName
  externalName: web.default.svc.cluster.local
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_for_services_and_follows_their_endpoints() {
    let mut cluster = Cluster::builder().agents(3).start().await;
    cluster.push_example("hello").await;
    cluster.apply(APP).await.unwrap();
    let pods = cluster.wait_ready("web", 3).await;

    let c = cluster.fleet().await;
    let svc = match c
        .get(flotilla_proto::Kind::Service, Some("default"), Some("web"))
        .await
        .unwrap()
        .remove(0)
    {
        Object::Service(s) => s,
        o => panic!("not a service: {o:?}"),
    };
    let ip = svc.spec.cluster_ip.clone().unwrap();
    assert!(
        ip.starts_with("10.43."),
        "cluster IP from --service-cidr: {ip}"
    );

    // The controller's slices: the pods' addresses and the port each really serves on.
    let slices = eventually("slices of web with 3 ready endpoints", || async {
        let slices: Vec<EndpointSlice> = c
            .get(flotilla_proto::Kind::EndpointSlice, Some("default"), None)
            .await
            .ok()?
            .into_iter()
            .filter_map(|o| match o {
                Object::EndpointSlice(s)
                    if s.metadata.labels.get("kubernetes.io/service-name")
                        == Some(&"web".to_string()) =>
                {
                    Some(s)
                }
                _ => None,
            })
            .collect();
        let ready = slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.is_ready())
            .count();
        (ready == 3).then_some(slices)
    })
    .await;
    let served: BTreeSet<String> = slices
        .iter()
        .flat_map(|s| {
            let port = s.ports[0].port.unwrap();
            s.endpoints
                .iter()
                .map(move |e| format!("{}:{port}", e.addresses[0]))
        })
        .collect();
    let endpoints: BTreeSet<String> = pods
        .iter()
        .map(|p| p.status.endpoint.clone().unwrap())
        .collect();
    assert_eq!(
        served, endpoints,
        "slices carry each wasi:http pod's listener"
    );

    // Every node answers: A of the cluster IP, SRV of the named port, PTR back.
    for i in 0..3 {
        let dns = dns_of(&cluster, i);
        let a = eventually(&format!("node {i} answers web"), || async {
            let a = dig(dns, "web.default.svc.cluster.local", "A");
            (!a.is_empty()).then_some(a)
        })
        .await;
        assert_eq!(a, std::slice::from_ref(&ip), "node {i}");
        assert_eq!(
            dig(dns, "_http._tcp.web.default.svc.cluster.local", "SRV"),
            ["0 100 80 web.default.svc.cluster.local."],
            "node {i}"
        );
        let octets: Vec<&str> = ip.split('.').rev().collect();
        assert_eq!(
            dig(dns, &format!("{}.in-addr.arpa", octets.join(".")), "PTR"),
            ["web.default.svc.cluster.local."]
        );
        assert_eq!(rcode(dns, "nope.default.svc.cluster.local"), "NXDOMAIN");
        // What the ndots:5 search list makes of an outside name is answered here, not forwarded.
        assert_eq!(
            rcode(dns, "example.com.default.svc.cluster.local"),
            "NXDOMAIN"
        );
        assert_eq!(
            dig(dns, "upstream.default.svc.cluster.local", "A"),
            [ip.clone(), "web.default.svc.cluster.local.".into()],
            "ExternalName is a CNAME, followed inside the zone"
        );
    }

    // Headless: one A per ready pod, and SRV records a client can call the pods through.
    let dns = dns_of(&cluster, 0);
    let node_ips: BTreeSet<String> = pods
        .iter()
        .map(|p| p.status.pod_ip.clone().unwrap())
        .collect();
    let a: BTreeSet<String> = dig(dns, "web-direct.default.svc.cluster.local", "A")
        .into_iter()
        .collect();
    assert_eq!(a, node_ips);
    let srv = dig(
        dns,
        "_http._tcp.web-direct.default.svc.cluster.local",
        "SRV",
    );
    assert_eq!(srv.len(), 3, "{srv:?}");
    let mut answered = BTreeSet::new();
    for record in &srv {
        // "0 33 PORT TARGET."
        let f: Vec<&str> = record.split_whitespace().collect();
        let (port, target) = (f[2], f[3]);
        let addr = dig(dns, target, "A");
        assert_eq!(addr.len(), 1, "{target}: {addr:?}");
        let (code, body) = curl(&format!("http://{}:{port}/", addr[0]));
        assert_eq!(code, 200, "{target}:{port}");
        answered.insert(body);
    }
    assert_eq!(answered.len(), 3, "each SRV record reaches its own pod");

    // Scaling down: every node's answer follows.
    c.scale("default", "web", 1).await.unwrap();
    for i in 0..3 {
        let dns = dns_of(&cluster, i);
        eventually(&format!("node {i} sees one backend"), || async {
            (dig(dns, "web-direct.default.svc.cluster.local", "A").len() == 1).then_some(())
        })
        .await;
    }
    c.close().await;

    // Without the hub, and across an agent restart without it, the answers stay.
    cluster.stop_hub().await;
    cluster.stop_agent(2).await;
    cluster.start_agent(2).await;
    let dns = dns_of(&cluster, 2);
    let a = eventually("a restarted node answers from its cache", || async {
        let a = dig(dns, "web.default.svc.cluster.local", "A");
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(a, std::slice::from_ref(&ip));
    assert_eq!(
        dig(dns, "web-direct.default.svc.cluster.local", "A").len(),
        1
    );

    // Back online, a deleted service goes from every node.
    cluster.start_hub().await;
    let c = cluster.fleet().await;
    c.delete(flotilla_proto::Kind::Service, "default", "web")
        .await
        .unwrap();
    let left = c
        .get(flotilla_proto::Kind::EndpointSlice, Some("default"), None)
        .await
        .unwrap();
    assert!(
        left.iter()
            .all(|o| o.meta().labels.get("kubernetes.io/service-name") != Some(&"web".to_string())),
        "slices go with their service"
    );
    c.close().await;
    for i in 0..3 {
        let dns = dns_of(&cluster, i);
        eventually(&format!("node {i} forgets web"), || async {
            (rcode(dns, "web.default.svc.cluster.local") == "NXDOMAIN").then_some(())
        })
        .await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_keep_their_addresses_and_refuse_what_is_not_supported() {
    let cluster = Cluster::builder().agents(1).start().await;
    let svc = |extra: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: np}}\nspec:\n  type: NodePort\n  selector: {{app: x}}\n  ports: [{{port: 80}}]\n{extra}"
        )
    };
    cluster.apply(&svc("")).await.unwrap();
    let get = || async {
        let c = cluster.fleet().await;
        let s = c
            .get(flotilla_proto::Kind::Service, Some("default"), Some("np"))
            .await
            .unwrap();
        c.close().await;
        match s.into_iter().next() {
            Some(Object::Service(s)) => s,
            o => panic!("{o:?}"),
        }
    };
    let first: Service = get().await;
    let node_port = first.spec.ports[0].node_port.unwrap();
    assert!((30000..=32767).contains(&node_port));
    // A re-apply keeps the address and the node port; changing the address is refused.
    cluster.apply(&svc("")).await.unwrap();
    let again = get().await;
    assert_eq!(again.spec.cluster_ip, first.spec.cluster_ip);
    assert_eq!(again.spec.ports[0].node_port, Some(node_port));
    let err = cluster
        .apply(&svc("  clusterIP: 10.43.255.254"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.clusterIP") && err.contains("immutable"),
        "{err}"
    );
    let err = cluster
        .apply(&svc("  externalTrafficPolicy: Local"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(service np): spec.externalTrafficPolicy: not supported yet"),
        "{err}"
    );
    assert_eq!(get().await, again, "nothing stored was lost");

    // A StatefulSet's pods get names of their own under its headless service.
    cluster.push_example("hello").await;
    cluster
        .apply(
            r#"
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
      - name: web
        image: hello:latest
        ports: [{containerPort: 8080}]
"#,
        )
        .await
        .unwrap();
    let pods = cluster.wait_ready("db", 2).await;
    let dns = dns_of(&cluster, 0);
    for p in &pods {
        let name = format!("{}.db.default.svc.cluster.local", p.metadata.name);
        let a = eventually(&format!("{name} resolves"), || async {
            let a = dig(dns, &name, "A");
            (!a.is_empty()).then_some(a)
        })
        .await;
        assert_eq!(a, [p.status.pod_ip.clone().unwrap()], "{name}");
    }
    let srv = dig(dns, "_http._tcp.db.default.svc.cluster.local", "SRV");
    let targets: BTreeSet<String> = srv
        .iter()
        .map(|r| r.split_whitespace().nth(3).unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from([
            "db-0.db.default.svc.cluster.local.".to_string(),
            "db-1.db.default.svc.cluster.local.".to_string()
        ]),
        "SRV targets are the pods' own names: {srv:?}"
    );

    // The CLI shows them the kubectl way.
    let (code, out, err) = cluster.fleet_cli(&["get", "svc,endpoints"], None);
    assert_eq!(code, 0, "{err}");
    let ip = again.spec.cluster_ip.unwrap();
    assert!(out.contains("NodePort") && out.contains(&ip), "{out}");
    assert!(out.contains(&format!("80:{node_port}/TCP")), "{out}");
    assert!(out.contains("NAME   ENDPOINTS"), "{out}");
    cluster.shutdown().await;
}
