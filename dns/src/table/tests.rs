//! Unit tests of the lookup table: names to answers, without sockets.

use std::net::IpAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use super::{Outcome, Table, dashed};
use crate::model::{Endpoint, Port, Protocol, Service, ServiceKind};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn port(name: &str, protocol: Protocol, port: u16) -> Port {
    Port {
        name: name.to_owned(),
        protocol,
        port,
    }
}

fn endpoint(addr: &str, hostname: Option<&str>, ready: bool) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        hostname: hostname.map(str::to_owned),
        ready,
        ports: Vec::new(),
    }
}

pub(crate) fn services() -> Vec<Service> {
    vec![
        Service {
            namespace: "default".into(),
            name: "web".into(),
            kind: ServiceKind::ClusterIp(vec![ip("10.96.0.10"), ip("fd00::10")]),
            ports: vec![
                port("http", Protocol::Tcp, 80),
                port("", Protocol::Tcp, 8080),
                port("dns", Protocol::Udp, 53),
            ],
            endpoints: vec![endpoint("10.1.0.5", None, true)],
        },
        Service {
            namespace: "default".into(),
            name: "nginx".into(),
            kind: ServiceKind::Headless,
            ports: vec![port("web", Protocol::Tcp, 80)],
            endpoints: vec![
                endpoint("10.1.0.1", Some("web-0"), true),
                endpoint("10.1.0.2", Some("web-1"), false),
                endpoint("10.1.0.3", None, true),
            ],
        },
        Service {
            namespace: "default".into(),
            name: "empty".into(),
            kind: ServiceKind::Headless,
            ports: vec![],
            endpoints: vec![endpoint("10.1.0.9", None, false)],
        },
        Service {
            namespace: "prod".into(),
            name: "db".into(),
            kind: ServiceKind::ExternalName("db.example.com".into()),
            ports: vec![],
            endpoints: vec![],
        },
        Service {
            namespace: "prod".into(),
            name: "alias".into(),
            kind: ServiceKind::ExternalName("web.default.svc.cluster.local".into()),
            ports: vec![],
            endpoints: vec![],
        },
    ]
}

fn table() -> Table {
    Table::build(&name("cluster.local."), 5, 1, &services())
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// The answer as text lines (`owner type data`), and whether it was NXDOMAIN; `None` when the
/// name would be forwarded.
fn ask(t: &Table, qname: &str, qtype: RecordType) -> Option<(bool, Vec<String>, Vec<String>)> {
    match t.lookup(&name(qname), qtype) {
        Outcome::Forward => None,
        Outcome::Authoritative(a) => {
            let show = |r: &hickory_proto::rr::Record| {
                format!("{} {} {}", r.name, r.record_type(), r.data)
            };
            let mut answers: Vec<String> = a
                .synthesized
                .iter()
                .map(|r| &**r)
                .chain(a.answers.iter().copied())
                .map(show)
                .collect();
            answers.sort();
            let mut extra: Vec<String> = a.additionals.iter().map(|r| show(r)).collect();
            extra.sort();
            if let Some(chase) = &a.chase {
                extra.push(format!("chase {chase}"));
            }
            Some((a.nxdomain, answers, extra))
        }
    }
}

fn answers(t: &Table, qname: &str, qtype: RecordType) -> Vec<String> {
    let (nx, answers, _) = ask(t, qname, qtype).expect("authoritative");
    assert!(!nx, "{qname} {qtype}: unexpected NXDOMAIN");
    answers
}

fn is_nxdomain(t: &Table, qname: &str) -> bool {
    let (nx, answers, _) = ask(t, qname, RecordType::A).expect("authoritative");
    nx && answers.is_empty()
}

#[test]
fn cluster_ip_a_and_aaaa() {
    let t = table();
    assert_eq!(
        answers(&t, "web.default.svc.cluster.local.", RecordType::A),
        ["web.default.svc.cluster.local. A 10.96.0.10"]
    );
    assert_eq!(
        answers(&t, "web.default.svc.cluster.local.", RecordType::AAAA),
        ["web.default.svc.cluster.local. AAAA fd00::10"]
    );
    // A cluster IP service publishes no per-endpoint names.
    assert!(is_nxdomain(&t, "10-1-0-5.web.default.svc.cluster.local."));
}

#[test]
fn names_are_case_insensitive() {
    let t = table();
    assert_eq!(
        answers(&t, "WEB.Default.SVC.cluster.LOCAL.", RecordType::A),
        ["web.default.svc.cluster.local. A 10.96.0.10"]
    );
    let upper = vec![Service {
        namespace: "Default".into(),
        name: "WEB".into(),
        ..services().remove(0)
    }];
    let t = Table::build(&name("Cluster.Local."), 5, 1, &upper);
    assert_eq!(
        answers(&t, "web.default.svc.cluster.local.", RecordType::A),
        ["web.default.svc.cluster.local. A 10.96.0.10"]
    );
}

#[test]
fn srv_for_named_ports_with_glue() {
    let t = table();
    let (nx, srv, extra) = ask(
        &t,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .expect("authoritative");
    assert!(!nx);
    assert_eq!(
        srv,
        ["_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        extra,
        [
            "web.default.svc.cluster.local. A 10.96.0.10",
            "web.default.svc.cluster.local. AAAA fd00::10"
        ]
    );
    assert_eq!(
        answers(
            &t,
            "_dns._udp.web.default.svc.cluster.local.",
            RecordType::SRV
        ),
        ["_dns._udp.web.default.svc.cluster.local. SRV 0 100 53 web.default.svc.cluster.local."]
    );
    // Wrong protocol: the name does not exist; the protocol label alone is an empty non-terminal.
    assert!(is_nxdomain(&t, "_http._udp.web.default.svc.cluster.local."));
    assert!(answers(&t, "_tcp.web.default.svc.cluster.local.", RecordType::SRV).is_empty());
    // The unnamed port 8080 has no SRV record under any spelling.
    assert!(is_nxdomain(&t, "_._tcp.web.default.svc.cluster.local."));
}

#[test]
fn headless_lists_only_ready_endpoints() {
    let t = table();
    assert_eq!(
        answers(&t, "nginx.default.svc.cluster.local.", RecordType::A),
        [
            "nginx.default.svc.cluster.local. A 10.1.0.1",
            "nginx.default.svc.cluster.local. A 10.1.0.3"
        ]
    );
    assert_eq!(
        answers(&t, "web-0.nginx.default.svc.cluster.local.", RecordType::A),
        ["web-0.nginx.default.svc.cluster.local. A 10.1.0.1"]
    );
    assert_eq!(
        answers(
            &t,
            "10-1-0-3.nginx.default.svc.cluster.local.",
            RecordType::A
        ),
        ["10-1-0-3.nginx.default.svc.cluster.local. A 10.1.0.3"]
    );
    assert!(is_nxdomain(&t, "web-1.nginx.default.svc.cluster.local."));
    // No ready endpoint: NXDOMAIN, as the specification says.
    assert!(is_nxdomain(&t, "empty.default.svc.cluster.local."));
}

#[test]
fn headless_srv_targets_each_ready_endpoint() {
    let t = table();
    let (_, srv, extra) = ask(
        &t,
        "_web._tcp.nginx.default.svc.cluster.local.",
        RecordType::SRV,
    )
    .expect("authoritative");
    assert_eq!(
        srv,
        [
            "_web._tcp.nginx.default.svc.cluster.local. SRV 0 50 80 10-1-0-3.nginx.default.svc.cluster.local.",
            "_web._tcp.nginx.default.svc.cluster.local. SRV 0 50 80 web-0.nginx.default.svc.cluster.local."
        ]
    );
    assert_eq!(
        extra,
        [
            "10-1-0-3.nginx.default.svc.cluster.local. A 10.1.0.3",
            "web-0.nginx.default.svc.cluster.local. A 10.1.0.1"
        ]
    );
}

#[test]
fn ptr_for_cluster_ips_and_endpoint_names() {
    let t = table();
    assert_eq!(
        answers(&t, "10.0.96.10.in-addr.arpa.", RecordType::PTR),
        ["10.0.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."]
    );
    let v6 = Name::from(ip("fd00::10")).to_string();
    assert_eq!(
        answers(&t, &v6, RecordType::PTR),
        [format!("{v6} PTR web.default.svc.cluster.local.")]
    );
    assert_eq!(
        answers(&t, "1.0.1.10.in-addr.arpa.", RecordType::PTR),
        ["1.0.1.10.in-addr.arpa. PTR web-0.nginx.default.svc.cluster.local."]
    );
    // Not-ready endpoints and unknown addresses are not ours: forwarded.
    assert!(ask(&t, "2.0.1.10.in-addr.arpa.", RecordType::PTR).is_none());
    assert!(ask(&t, "8.8.8.8.in-addr.arpa.", RecordType::PTR).is_none());
}

#[test]
fn external_name_is_a_cname_followed_inside_the_zone() {
    let t = table();
    let (_, a, extra) = ask(&t, "db.prod.svc.cluster.local.", RecordType::A).unwrap();
    assert_eq!(a, ["db.prod.svc.cluster.local. CNAME db.example.com."]);
    assert_eq!(extra, ["chase db.example.com."]);
    assert_eq!(
        answers(&t, "alias.prod.svc.cluster.local.", RecordType::A),
        [
            "alias.prod.svc.cluster.local. CNAME web.default.svc.cluster.local.",
            "web.default.svc.cluster.local. A 10.96.0.10"
        ]
    );
}

#[test]
fn nxdomain_versus_nodata() {
    let t = table();
    // Existing names without data: the zone, svc, namespaces, empty non-terminals.
    for n in [
        "cluster.local.",
        "svc.cluster.local.",
        "default.svc.cluster.local.",
        "prod.svc.cluster.local.",
        "_tcp.nginx.default.svc.cluster.local.",
        "pod.cluster.local.",
    ] {
        let (nx, a, _) = ask(&t, n, RecordType::A).unwrap();
        assert!(!nx && a.is_empty(), "{n}: want NODATA, got nx={nx} {a:?}");
    }
    // An existing name asked for another type.
    let (nx, a, _) = ask(&t, "web.default.svc.cluster.local.", RecordType::MX).unwrap();
    assert!(!nx && a.is_empty());
    // The search-list expansions of outside names.
    assert!(is_nxdomain(&t, "example.com.default.svc.cluster.local."));
    assert!(is_nxdomain(&t, "example.com.svc.cluster.local."));
    assert!(is_nxdomain(&t, "example.com.cluster.local."));
    assert!(is_nxdomain(&t, "nope.svc.cluster.local."));
    assert!(is_nxdomain(&t, "other.default.svc.cluster.local."));
    // Outside the zone.
    assert!(ask(&t, "example.com.", RecordType::A).is_none());
    assert!(ask(&t, "local.", RecordType::A).is_none());
}

#[test]
fn zone_apex_soa_and_schema_version() {
    let t = table();
    let soa = answers(&t, "cluster.local.", RecordType::SOA);
    assert_eq!(soa.len(), 1);
    assert!(
        soa[0].starts_with("cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 "),
        "{soa:?}"
    );
    match &t.soa().data {
        RData::SOA(s) => assert_eq!(s.minimum, 5),
        other => panic!("not an soa: {other:?}"),
    }
    assert_eq!(
        answers(&t, "dns-version.cluster.local.", RecordType::TXT),
        ["dns-version.cluster.local. TXT 1.1.0"]
    );
}

#[test]
fn deprecated_pod_records() {
    let t = table();
    assert_eq!(
        answers(&t, "10-1-2-3.any.pod.cluster.local.", RecordType::A),
        ["10-1-2-3.any.pod.cluster.local. A 10.1.2.3"]
    );
    assert_eq!(
        answers(&t, "fd00--1.any.pod.cluster.local.", RecordType::AAAA),
        ["fd00--1.any.pod.cluster.local. AAAA fd00::1"]
    );
    assert!(answers(&t, "10-1-2-3.any.pod.cluster.local.", RecordType::AAAA).is_empty());
    assert!(is_nxdomain(&t, "nonsense.any.pod.cluster.local."));
}

#[test]
fn invalid_services_are_left_out_whole() {
    let bad = vec![
        Service {
            name: "has.dot".into(),
            ..services().remove(0)
        },
        Service {
            name: "badport".into(),
            ports: vec![port("no way", Protocol::Tcp, 1)],
            ..services().remove(0)
        },
    ];
    let t = Table::build(&name("cluster.local."), 5, 1, &bad);
    assert!(is_nxdomain(&t, "has.dot.default.svc.cluster.local."));
    assert!(is_nxdomain(&t, "dot.default.svc.cluster.local."));
    assert!(is_nxdomain(&t, "badport.default.svc.cluster.local."));
}

#[test]
fn dashed_addresses() {
    assert_eq!(dashed(ip("10.1.2.3")), "10-1-2-3");
    assert_eq!(dashed(ip("fd00::1")), "fd00--1");
    assert_eq!(dashed(ip("::1")), "0--1");
}
