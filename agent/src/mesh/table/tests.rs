use super::*;
use flotilla_proto::ObjectKey;

fn obj(json: serde_json::Value) -> Object {
    Object::from_json_str(&json.to_string()).expect("valid object")
}

fn objects(list: Vec<Object>) -> Objects {
    Arc::new(
        list.into_iter()
            .map(|o| (o.key(), o))
            .collect::<BTreeMap<ObjectKey, Object>>(),
    )
}

fn service(name: &str, spec: serde_json::Value) -> Object {
    obj(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }))
}

/// A slice of `svc` with port `http` = 8080 and endpoints (ip, node, zone, ready).
fn slice(svc: &str, endpoints: &[(&str, &str, &str, bool)]) -> Object {
    let eps: Vec<serde_json::Value> = endpoints
        .iter()
        .map(|(ip, node, zone, ready)| {
            serde_json::json!({
                "addresses": [ip], "nodeName": node, "zone": zone,
                "conditions": {"ready": ready},
            })
        })
        .collect();
    obj(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-abc"), "namespace": "default",
                     "labels": {SERVICE_NAME_LABEL: svc}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
}

fn node(name: &str, ip: &str, mesh: Option<i32>, zone: &str) -> Object {
    let mut n = serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {ZONE_LABEL: zone}},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    });
    if let Some(p) = mesh {
        n["status"]["daemonEndpoints"] = serde_json::json!({"meshEndpoint": {"Port": p}});
    }
    obj(n)
}

fn me() -> Me<'static> {
    static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();
    Me {
        node: "a",
        labels: &NO_LABELS,
        node_ip: "192.168.1.10".parse().unwrap(),
        zone: None,
    }
}

fn web() -> Object {
    service(
        "web",
        serde_json::json!({
            "type": "NodePort", "clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"],
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}],
        }),
    )
}

fn addrs(tiers: &[Vec<Target>]) -> Vec<Vec<String>> {
    tiers
        .iter()
        .map(|t| t.iter().map(|t| t.addr.to_string()).collect())
        .collect()
}

#[test]
fn frontends_are_cluster_ip_ports_and_node_ports_by_protocol() {
    let all = objects(vec![
        web(),
        service(
            "db",
            serde_json::json!({"clusterIP": "None", "ports": [{"port": 5432}]}),
        ),
        service(
            "ext",
            serde_json::json!({"type": "ExternalName", "externalName": "x.example"}),
        ),
        service(
            "dns",
            serde_json::json!({"clusterIP": "10.43.0.53", "ports": [{"port": 53, "protocol": "UDP"}]}),
        ),
    ]);
    let t = build(&all, &me(), &Table::default());
    let got: Vec<String> = t.frontends.keys().map(|a| a.to_string()).collect();
    assert_eq!(got, ["10.43.0.10:80", "192.168.1.10:30080"]);
    let udp: Vec<String> = t.udp_frontends.keys().map(|a| a.to_string()).collect();
    assert_eq!(udp, ["10.43.0.53:53"]);
    assert!(
        t.frontends.values().all(|b| b.is_empty()),
        "no slices, no endpoints"
    );
}

/// A DNS service serves port 53 over both protocols, each with its own node port and
/// endpoints; the ingress sees only the TCP one.
#[test]
fn udp_and_tcp_ports_of_one_number_are_apart() {
    let dns = service(
        "dns",
        serde_json::json!({
            "type": "NodePort", "clusterIP": "10.43.0.53",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": 30053},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 5354, "nodePort": 30054},
            ],
        }),
    );
    let slice = obj(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "dns-abc", "namespace": "default",
                     "labels": {SERVICE_NAME_LABEL: "dns"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.42.0.5"], "nodeName": "a", "conditions": {"ready": true}}],
        "ports": [
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
        ],
    }));
    let t = build(&objects(vec![dns, slice]), &me(), &Table::default());
    let listed = |m: &BTreeMap<SocketAddr, Arc<Backend>>| -> Vec<String> {
        m.iter()
            .map(|(a, b)| format!("{a} -> {:?} {}", addrs(&b.tiers), b.service))
            .collect()
    };
    assert_eq!(
        listed(&t.udp_frontends),
        [
            r#"10.43.0.53:53 -> [["10.42.0.5:5353"]] default/dns:53/UDP"#,
            r#"192.168.1.10:30053 -> [["10.42.0.5:5353"]] default/dns:53/UDP"#,
        ]
    );
    assert_eq!(
        listed(&t.frontends),
        [
            r#"10.43.0.53:53 -> [["10.42.0.5:5354"]] default/dns:53"#,
            r#"192.168.1.10:30054 -> [["10.42.0.5:5354"]] default/dns:53"#,
        ]
    );
    let local: Vec<String> = t.local_targets.iter().map(|a| a.to_string()).collect();
    assert_eq!(local, ["10.42.0.5:5354", "udp 10.42.0.5:5353"]);
    let by_number = ServiceBackendPort {
        number: Some(53),
        ..Default::default()
    };
    let b = t
        .service_port("default", "dns", &by_number)
        .expect("port 53");
    assert_eq!(
        b.service, "default/dns:53",
        "the ingress takes the TCP port"
    );
}

#[test]
fn endpoints_are_ready_ones_tiered_by_node_then_zone() {
    let all = objects(vec![
        web(),
        node("a", "192.168.1.10", Some(7444), "z1"),
        node("b", "192.168.1.11", Some(7444), "z1"),
        node("c", "192.168.1.12", None, "z2"),
        slice(
            "web",
            &[
                ("10.42.0.5", "a", "z1", true),
                ("10.42.0.6", "a", "z1", false),
                ("10.42.1.5", "b", "z1", true),
                ("10.42.2.5", "c", "z2", true),
            ],
        ),
    ]);
    let t = build(&all, &me(), &Table::default());
    let b = &t.frontends[&"10.43.0.10:80".parse().unwrap()];
    // The node's own zone comes from its Node object when its config has none.
    assert_eq!(
        addrs(&b.tiers),
        [
            vec!["10.42.0.5:8080"],
            vec!["10.42.1.5:8080"],
            vec!["10.42.2.5:8080"]
        ]
    );
    // Peers are the other nodes with a mesh port; node a's own endpoints are its targets.
    let peers: Vec<String> = t.peers.iter().map(|(n, a)| format!("{n}={a}")).collect();
    assert_eq!(peers, ["b=192.168.1.11:7444"]);
    let local: Vec<String> = t.local_targets.iter().map(|a| a.to_string()).collect();
    assert_eq!(local, ["10.42.0.5:8080", "10.42.0.6:8080"]);
    // The best tier first; a failed endpoint moves the connection down a tier.
    let client: IpAddr = "10.42.0.9".parse().unwrap();
    let now = Instant::now();
    let first = b.pick(client, &[], now, Balancing::RoundRobin).unwrap();
    assert_eq!(first.addr.to_string(), "10.42.0.5:8080");
    let next = b
        .pick(
            client,
            std::slice::from_ref(&first),
            now,
            Balancing::RoundRobin,
        )
        .unwrap();
    assert_eq!(next.addr.to_string(), "10.42.1.5:8080");
    let all_failed = [first, next, b.tiers[2][0].clone()];
    assert_eq!(
        b.pick(client, &all_failed, now, Balancing::RoundRobin),
        None
    );
}

#[test]
fn connections_are_spread_round_robin_and_state_survives_a_rebuild() {
    let two = || {
        slice(
            "web",
            &[("10.42.1.5", "b", "", true), ("10.42.2.5", "c", "", true)],
        )
    };
    let all = objects(vec![web(), two()]);
    let t = build(&all, &me(), &Table::default());
    let b = t.frontends[&"192.168.1.10:30080".parse().unwrap()].clone();
    let client: IpAddr = "10.0.0.1".parse().unwrap();
    let now = Instant::now();
    let picks: Vec<String> = (0..4)
        .map(|_| {
            b.pick(client, &[], now, Balancing::RoundRobin)
                .unwrap()
                .addr
                .to_string()
        })
        .collect();
    assert_eq!(
        picks,
        [
            "10.42.1.5:8080",
            "10.42.2.5:8080",
            "10.42.1.5:8080",
            "10.42.2.5:8080"
        ]
    );
    // A rebuild (any discovery change) carries the counter on.
    let again = build(&all, &me(), &t);
    let b2 = &again.frontends[&"192.168.1.10:30080".parse().unwrap()];
    assert_eq!(
        b2.pick(client, &[], now, Balancing::RoundRobin)
            .unwrap()
            .addr
            .to_string(),
        "10.42.1.5:8080"
    );
}

#[test]
fn client_ip_affinity_sticks_until_its_timeout() {
    let svc = service(
        "web",
        serde_json::json!({
            "clusterIP": "10.43.0.10", "selector": {"app": "web"},
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "ports": [{"name": "http", "port": 80}],
        }),
    );
    let all = objects(vec![
        svc,
        slice(
            "web",
            &[("10.42.1.5", "b", "", true), ("10.42.2.5", "c", "", true)],
        ),
    ]);
    let t = build(&all, &me(), &Table::default());
    let b = &t.frontends[&"10.43.0.10:80".parse().unwrap()];
    assert_eq!(b.affinity, Some(Duration::from_secs(60)));
    let (one, two): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
    let now = Instant::now();
    let first = b.pick(one, &[], now, Balancing::RoundRobin).unwrap();
    for s in 1..5 {
        assert_eq!(
            b.pick(
                one,
                &[],
                now + Duration::from_secs(s),
                Balancing::RoundRobin
            )
            .unwrap(),
            first
        );
    }
    assert_ne!(
        b.pick(two, &[], now, Balancing::RoundRobin).unwrap(),
        first,
        "another client is balanced"
    );
    // A failed sticky endpoint is left; past the timeout the client is balanced afresh.
    assert_ne!(
        b.pick(
            one,
            std::slice::from_ref(&first),
            now,
            Balancing::RoundRobin
        )
        .unwrap(),
        first
    );
    let later = now + Duration::from_secs(600);
    let after: BTreeSet<Target> = (0..2)
        .map(|_| b.pick(one, &[], later, Balancing::RoundRobin).unwrap())
        .collect();
    assert_eq!(after.len(), 1, "sticky again, to whichever it got");
}

#[test]
fn load_balancer_ports_open_on_gateway_nodes_only() {
    let lb = service(
        "lb",
        serde_json::json!({
            "type": "LoadBalancer", "clusterIP": "10.43.0.20", "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 8081, "nodePort": 30081}],
        }),
    );
    let listens = |objects: Vec<Object>| -> Vec<String> {
        let t = build(&self::objects(objects), &me(), &Table::default());
        t.frontends.keys().map(|a| a.to_string()).collect()
    };
    let plain_me = node("a", "192.168.1.10", None, "");
    // No node is labelled: every node is a gateway.
    assert_eq!(
        listens(vec![
            lb.clone(),
            plain_me.clone(),
            node("b", "192.168.1.11", None, "")
        ]),
        ["10.43.0.20:8081", "192.168.1.10:8081", "192.168.1.10:30081"]
    );
    // Before this node has heard of itself, it cannot tell: no gateway yet.
    assert_eq!(
        listens(vec![lb.clone(), node("b", "192.168.1.11", None, "")]),
        ["10.43.0.20:8081", "192.168.1.10:30081"]
    );
    // Another node is: this one only keeps the cluster IP and the node port.
    let mut gw = node("b", "192.168.1.11", None, "");
    if let Object::Node(n) = &mut gw {
        n.metadata
            .labels
            .insert(flotilla_proto::service::GATEWAY_LABEL.into(), "true".into());
    }
    assert_eq!(
        listens(vec![lb.clone(), plain_me.clone(), gw.clone()]),
        ["10.43.0.20:8081", "192.168.1.10:30081"]
    );
    // This node labelled too (its cached Node object says so).
    let mut mine = node("a", "192.168.1.10", None, "");
    if let Object::Node(n) = &mut mine {
        n.metadata
            .labels
            .insert(flotilla_proto::service::GATEWAY_LABEL.into(), "true".into());
    }
    assert_eq!(
        listens(vec![lb, gw, mine]),
        ["10.43.0.20:8081", "192.168.1.10:8081", "192.168.1.10:30081"]
    );
}

/// web's node port Backend with endpoints on nodes b and c (one tier).
fn two_remote_endpoints() -> Arc<Backend> {
    let all = objects(vec![
        web(),
        slice(
            "web",
            &[("10.42.1.5", "b", "", true), ("10.42.2.5", "c", "", true)],
        ),
    ]);
    let t = build(&all, &me(), &Table::default());
    t.frontends[&"192.168.1.10:30080".parse().unwrap()].clone()
}

#[test]
fn failing_endpoints_are_ejected_for_a_while_but_never_all() {
    let b = two_remote_endpoints();
    let client: IpAddr = "10.0.0.1".parse().unwrap();
    let now = Instant::now();
    let bad = b.tiers[0][0].clone();
    let picks = |b: &Backend, at: Instant| -> Vec<String> {
        (0..4)
            .map(|_| {
                b.pick(client, &[], at, Balancing::RoundRobin)
                    .unwrap()
                    .addr
                    .to_string()
            })
            .collect()
    };
    // Fewer failures in a row than EJECT_AFTER, or a success between them, eject nothing.
    for _ in 1..EJECT_AFTER {
        b.report(&bad, false, now);
    }
    b.report(&bad, true, now);
    for _ in 1..EJECT_AFTER {
        b.report(&bad, false, now);
    }
    assert_eq!(
        picks(&b, now)
            .iter()
            .filter(|a| **a == "10.42.1.5:8080")
            .count(),
        2
    );
    b.report(&bad, false, now);
    assert_eq!(picks(&b, now), ["10.42.2.5:8080"; 4]);
    // Back in rotation when the ejection is over; one more failure ejects it again.
    let later = now + EJECT_FOR;
    assert_eq!(
        picks(&b, later)
            .iter()
            .filter(|a| **a == "10.42.1.5:8080")
            .count(),
        2
    );
    b.report(&bad, false, later);
    assert_eq!(picks(&b, later), ["10.42.2.5:8080"; 4]);
    // With every endpoint ejected, all are candidates again.
    let good = b.tiers[0][1].clone();
    for _ in 0..EJECT_AFTER {
        b.report(&good, false, later);
    }
    assert_eq!(
        picks(&b, later)
            .iter()
            .filter(|a| **a == "10.42.1.5:8080")
            .count(),
        2
    );
}

#[test]
fn least_request_prefers_the_endpoint_with_fewer_in_flight() {
    let b = two_remote_endpoints();
    let client: IpAddr = "10.0.0.1".parse().unwrap();
    let now = Instant::now();
    let busy = b.tiers[0][0].clone();
    let held: Vec<InFlight> = (0..3).map(|_| b.begin(&busy)).collect();
    for _ in 0..20 {
        let t = b.pick(client, &[], now, Balancing::LeastRequest).unwrap();
        assert_eq!(t.addr.to_string(), "10.42.2.5:8080");
    }
    // When the requests end, both are picked again.
    drop(held);
    let picked: BTreeSet<String> = (0..50)
        .map(|_| {
            let t = b.pick(client, &[], now, Balancing::LeastRequest).unwrap();
            // Each pick stays in flight, so the two take turns.
            std::mem::forget(b.begin(&t));
            t.addr.to_string()
        })
        .collect();
    assert_eq!(picked.len(), 2);
}
