//! The real server on loopback, queried with the real `dig`.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use flotilla_dns::{Config, Dns, Endpoint, Port, Protocol, Service, ServiceKind};
use tokio_util::sync::CancellationToken;

const DIG: &str = "/usr/bin/dig";

/// One parsed `dig` reply.
#[derive(Debug)]
struct Reply {
    status: String,
    flags: Vec<String>,
    answer: Vec<Rr>,
    authority: Vec<Rr>,
    additional: Vec<Rr>,
}

#[derive(Debug, Clone, PartialEq)]
struct Rr {
    name: String,
    ttl: u32,
    rtype: String,
    data: String,
}

impl Reply {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// The answer's data of one type, sorted.
    fn data(&self, rtype: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .answer
            .iter()
            .filter(|r| r.rtype == rtype)
            .map(|r| r.data.clone())
            .collect();
        out.sort();
        out
    }
}

async fn dig(server: SocketAddr, args: &[&str]) -> Reply {
    assert!(
        Path::new(DIG).exists(),
        "{DIG} is missing: install dnsutils (apt-get install -y dnsutils) to run these tests"
    );
    let out = tokio::process::Command::new(DIG)
        .arg(format!("@{}", server.ip()))
        .arg("-p")
        .arg(server.port().to_string())
        .args([
            "+noall",
            "+comments",
            "+answer",
            "+authority",
            "+additional",
            "+nocookie",
            "+tries=1",
            "+time=5",
        ])
        .args(args)
        .output()
        .await
        .expect("failed to run dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text).unwrap_or_else(|| panic!("cannot parse dig {args:?} output:\n{text}"))
}

fn parse(text: &str) -> Option<Reply> {
    let mut reply = Reply {
        status: String::new(),
        flags: Vec::new(),
        answer: Vec::new(),
        authority: Vec::new(),
        additional: Vec::new(),
    };
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            reply.status = rest.split(',').next()?.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            reply.flags = rest
                .split(';')
                .next()?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if line.starts_with(';') || line.trim().is_empty() {
            continue;
        } else {
            let mut f = line.split_whitespace();
            let rr = Rr {
                name: f.next()?.to_owned(),
                ttl: f.next()?.parse().ok()?,
                rtype: {
                    let _class = f.next()?;
                    f.next()?.to_owned()
                },
                data: f.collect::<Vec<_>>().join(" "),
            };
            match section {
                "answer" => reply.answer.push(rr),
                "authority" => reply.authority.push(rr),
                "additional" => reply.additional.push(rr),
                _ => return None,
            }
        }
    }
    (!reply.status.is_empty()).then_some(reply)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(name: &str, port: u16) -> Port {
    Port {
        name: name.to_owned(),
        protocol: Protocol::Tcp,
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

fn web(ips: &[&str]) -> Service {
    Service {
        namespace: "default".into(),
        name: "web".into(),
        kind: ServiceKind::ClusterIp(ips.iter().map(|s| ip(s)).collect()),
        ports: vec![tcp("http", 80), tcp("", 8080)],
        endpoints: vec![],
    }
}

fn nginx() -> Service {
    Service {
        namespace: "default".into(),
        name: "nginx".into(),
        kind: ServiceKind::Headless,
        ports: vec![tcp("web", 80)],
        endpoints: vec![
            endpoint("10.1.0.1", Some("web-0"), true),
            endpoint("10.1.0.2", Some("web-1"), false),
            endpoint("10.1.0.3", Some("web-2"), true),
        ],
    }
}

struct Running {
    dns: Dns,
    addr: SocketAddr,
    cancel: CancellationToken,
}

impl Running {
    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.dns.join())
            .await
            .expect("server did not stop within 10 s")
            .expect("server failed");
    }
}

async fn serve(domain: &str, ttl: u32, upstreams: Vec<SocketAddr>) -> Running {
    let cancel = CancellationToken::new();
    let cfg = Config {
        domain: domain.to_owned(),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        upstreams,
        ttl,
        ..Config::default()
    };
    let dns = flotilla_dns::start(cfg, cancel.clone())
        .await
        .expect("failed to start dns");
    let addr = dns.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    Running { dns, addr, cancel }
}

async fn cluster() -> Running {
    let s = serve("cluster.local", 5, vec![]).await;
    s.dns
        .update(vec![web(&["10.96.0.10", "fd00::10"]), nginx()]);
    s
}

#[tokio::test]
async fn cluster_ip_a_and_aaaa() {
    let s = cluster().await;
    let r = dig(s.addr, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.has_flag("aa"), "{r:?}");
    assert_eq!(r.data("A"), ["10.96.0.10"]);
    assert_eq!(r.answer[0].ttl, 5);
    let r = dig(s.addr, &["WEB.Default.svc.CLUSTER.local", "AAAA"]).await;
    assert_eq!(r.data("AAAA"), ["fd00::10"]);
    s.stop().await;
}

#[tokio::test]
async fn srv_with_additional_address() {
    let s = cluster().await;
    let r = dig(s.addr, &["_http._tcp.web.default.svc.cluster.local", "SRV"]).await;
    assert_eq!(r.status, "NOERROR");
    assert_eq!(r.data("SRV"), ["0 100 80 web.default.svc.cluster.local."]);
    let glue: Vec<_> = r
        .additional
        .iter()
        .map(|a| (a.name.as_str(), a.data.as_str()))
        .collect();
    assert!(
        glue.contains(&("web.default.svc.cluster.local.", "10.96.0.10")),
        "{r:?}"
    );
    assert!(
        glue.contains(&("web.default.svc.cluster.local.", "fd00::10")),
        "{r:?}"
    );
    s.stop().await;
}

#[tokio::test]
async fn headless_skips_not_ready_and_names_statefulset_pods() {
    let s = cluster().await;
    let r = dig(s.addr, &["nginx.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("A"), ["10.1.0.1", "10.1.0.3"]);
    let r = dig(s.addr, &["web-0.nginx.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("A"), ["10.1.0.1"]);
    let r = dig(s.addr, &["web-1.nginx.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    let r = dig(
        s.addr,
        &["_web._tcp.nginx.default.svc.cluster.local", "SRV"],
    )
    .await;
    assert_eq!(
        r.data("SRV"),
        [
            "0 50 80 web-0.nginx.default.svc.cluster.local.",
            "0 50 80 web-2.nginx.default.svc.cluster.local."
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn ptr_for_service_and_pod() {
    let s = cluster().await;
    let r = dig(s.addr, &["-x", "10.96.0.10"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.has_flag("aa"));
    assert_eq!(r.data("PTR"), ["web.default.svc.cluster.local."]);
    let r = dig(s.addr, &["-x", "fd00::10"]).await;
    assert_eq!(r.data("PTR"), ["web.default.svc.cluster.local."]);
    let r = dig(s.addr, &["-x", "10.1.0.3"]).await;
    assert_eq!(r.data("PTR"), ["web-2.nginx.default.svc.cluster.local."]);
    // Unknown addresses are forwarded; with no upstream they are refused.
    let r = dig(s.addr, &["-x", "192.0.2.1"]).await;
    assert_eq!(r.status, "REFUSED");
    s.stop().await;
}

#[tokio::test]
async fn nxdomain_and_nodata_carry_the_soa() {
    let s = cluster().await;
    for name in [
        "example.com.default.svc.cluster.local",
        "example.com.svc.cluster.local",
        "nope.default.svc.cluster.local",
    ] {
        let r = dig(s.addr, &[name, "A"]).await;
        assert_eq!(r.status, "NXDOMAIN", "{name}: {r:?}");
        assert!(r.has_flag("aa"), "{name}: {r:?}");
        assert!(r.answer.is_empty());
        assert_eq!(r.authority.len(), 1, "{name}: {r:?}");
        assert_eq!(r.authority[0].rtype, "SOA");
        assert_eq!(r.authority[0].name, "cluster.local.");
    }
    for name in [
        "default.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ] {
        let r = dig(s.addr, &[name, "A"]).await;
        assert_eq!(r.status, "NOERROR", "{name}: {r:?}");
        assert!(r.answer.is_empty());
        assert_eq!(r.authority[0].rtype, "SOA", "{name}: {r:?}");
    }
    let r = dig(s.addr, &["web.default.svc.cluster.local", "TXT"]).await;
    assert_eq!(r.status, "NOERROR");
    assert!(r.answer.is_empty());
    assert_eq!(r.authority[0].rtype, "SOA");
    // Outside the domain, without upstreams.
    let r = dig(s.addr, &["example.com", "A"]).await;
    assert_eq!(r.status, "REFUSED");
    s.stop().await;
}

#[tokio::test]
async fn tcp_and_truncation() {
    let s = serve("cluster.local", 5, vec![]).await;
    let many = Service {
        namespace: "default".into(),
        name: "many".into(),
        kind: ServiceKind::Headless,
        ports: vec![],
        endpoints: (1..=60)
            .map(|i| endpoint(&format!("10.2.0.{i}"), None, true))
            .collect(),
    };
    s.dns.update(vec![web(&["10.96.0.10"]), many]);
    let r = dig(s.addr, &["+tcp", "web.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("A"), ["10.96.0.10"]);
    // 60 A records do not fit 512 bytes: UDP without EDNS is truncated, TCP carries all.
    let r = dig(
        s.addr,
        &["+noedns", "+ignore", "many.default.svc.cluster.local", "A"],
    )
    .await;
    assert!(r.has_flag("tc"), "{r:?}");
    assert!(r.answer.len() < 60);
    let r = dig(s.addr, &["+tcp", "many.default.svc.cluster.local", "A"]).await;
    assert!(!r.has_flag("tc"));
    assert_eq!(r.answer.len(), 60);
    // EDNS with a large buffer fits them over UDP.
    let r = dig(
        s.addr,
        &[
            "+bufsize=4096",
            "+ignore",
            "many.default.svc.cluster.local",
            "A",
        ],
    )
    .await;
    assert!(!r.has_flag("tc"), "{r:?}");
    assert_eq!(r.answer.len(), 60);
    s.stop().await;
}

#[tokio::test]
async fn update_changes_the_answer() {
    let s = cluster().await;
    let r = dig(s.addr, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("A"), ["10.96.0.10"]);
    s.dns.update(vec![web(&["10.96.0.99"])]);
    let r = dig(s.addr, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("A"), ["10.96.0.99"]);
    let r = dig(s.addr, &["nginx.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN");
    s.stop().await;
}

#[tokio::test]
async fn forwards_and_caches_outside_names() {
    // The upstream: another instance, authoritative for example.test, with long TTLs.
    let upstream = serve("example.test", 300, vec![]).await;
    upstream.dns.update(vec![Service {
        namespace: "default".into(),
        name: "www".into(),
        kind: ServiceKind::ClusterIp(vec![ip("192.0.2.7")]),
        ports: vec![],
        endpoints: vec![],
    }]);
    let s = serve("cluster.local", 5, vec![upstream.addr]).await;
    s.dns.update(vec![
        web(&["10.96.0.10"]),
        Service {
            namespace: "default".into(),
            name: "ext".into(),
            kind: ServiceKind::ExternalName("www.default.svc.example.test".into()),
            ports: vec![],
            endpoints: vec![],
        },
    ]);
    let name = "www.default.svc.example.test";

    let first = dig(s.addr, &[name, "A"]).await;
    assert_eq!(first.status, "NOERROR", "{first:?}");
    assert!(
        !first.has_flag("aa"),
        "a forwarded answer is not authoritative: {first:?}"
    );
    assert!(first.has_flag("ra"));
    assert_eq!(first.data("A"), ["192.0.2.7"]);
    assert!(first.answer[0].ttl <= 300 && first.answer[0].ttl > 290);

    // An upstream NXDOMAIN is passed on with the upstream's SOA.
    let r = dig(s.addr, &["nope.default.svc.example.test", "A"]).await;
    assert_eq!(r.status, "NXDOMAIN", "{r:?}");
    assert_eq!(
        r.authority.first().map(|a| a.name.as_str()),
        Some("example.test.")
    );

    // The ExternalName's out-of-zone target is resolved too.
    let r = dig(s.addr, &["ext.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("CNAME"), ["www.default.svc.example.test."]);
    assert_eq!(r.data("A"), ["192.0.2.7"]);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    upstream.stop().await;
    // Served from the cache, its TTL counted down.
    let second = dig(s.addr, &[name, "A"]).await;
    assert_eq!(second.data("A"), ["192.0.2.7"], "{second:?}");
    assert!(
        second.answer[0].ttl < first.answer[0].ttl,
        "ttl {} then {}: not from the cache",
        first.answer[0].ttl,
        second.answer[0].ttl
    );
    // A name not cached, with the upstream gone, fails.
    let r = dig(s.addr, &["other.default.svc.example.test", "A"]).await;
    assert_eq!(r.status, "SERVFAIL", "{r:?}");
    // Cluster names still answer.
    let r = dig(s.addr, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("A"), ["10.96.0.10"]);
    s.stop().await;
}

#[tokio::test]
async fn malformed_packets_do_not_hurt() {
    let s = cluster().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Short junk, a header claiming a question that is not there, and random-ish bytes.
    let junk: [&[u8]; 3] = [
        b"\x01\x02\x03",
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00",
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x3f\xff\xff\xff\x00\x00\x01",
    ];
    for packet in junk {
        sock.send_to(packet, s.addr).await.unwrap();
    }
    // The header-only one has an id and gets FORMERR back.
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .expect("no reply to a malformed query")
        .unwrap();
    assert!(n >= 12);
    assert_eq!(
        buf[3] & 0x0f,
        1,
        "want FORMERR, got rcode {}",
        buf[3] & 0x0f
    );
    let r = dig(s.addr, &["web.default.svc.cluster.local", "A"]).await;
    assert_eq!(r.data("A"), ["10.96.0.10"]);
    s.stop().await;
}

/// The agent binds the pod bridge's gateway before the bridge has that address.
#[tokio::test]
async fn freebind_binds_an_address_the_host_does_not_have_yet() {
    let cancel = CancellationToken::new();
    // TEST-NET-1 (RFC 5737): never configured here.
    let absent: SocketAddr = "192.0.2.77:0".parse().unwrap();
    let plain = Config {
        listen: vec![absent],
        ..Config::default()
    };
    let err = flotilla_dns::start(plain, cancel.clone()).await.err();
    assert!(err.is_some(), "bound an absent address without freebind");
    let free = Config {
        listen: vec![absent],
        freebind: true,
        ..Config::default()
    };
    let dns = flotilla_dns::start(free, cancel.clone())
        .await
        .expect("freebind");
    assert_eq!(dns.local_addrs()[0].ip(), absent.ip());
    cancel.cancel();
    dns.join().await.unwrap();
}

#[tokio::test]
async fn start_rejects_bad_config_and_names_the_address() {
    let cancel = CancellationToken::new();
    let bad = Config {
        domain: "bad domain!".into(),
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default()
    };
    assert!(flotilla_dns::start(bad, cancel.clone()).await.is_err());
    let s = cluster().await;
    let taken = Config {
        listen: vec![s.addr],
        ..Config::default()
    };
    let err = flotilla_dns::start(taken, cancel)
        .await
        .err()
        .expect("bound twice");
    assert!(err.to_string().contains(&s.addr.to_string()), "{err}");
    s.stop().await;
}
