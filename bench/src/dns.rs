//! `flotilla-bench dns`: the node DNS of a real `flotilla-agent` process, side by side with
//! unbound (local-data) and BIND 9 (an authoritative zone) serving the same 1,000 service
//! names, each server pinned to core 1 and dnsperf on core 0; then how long an endpoint
//! change takes to reach the answers of three agents.
use crate::{Proc, cpu_time, percentile, start_agent, start_hub, wait_nodes_ready};
use anyhow::{Context as _, bail};
use flotilla_proto::api::{Kind, Object};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

const SERVICES: usize = 1000;
const NAMESPACES: usize = 10;
pub(crate) const DNSPERF_SECONDS: &str = "10";

/// One A query over UDP: the addresses answered (empty on NXDOMAIN, timeout or garbage).
async fn query_a(sock: &tokio::net::UdpSocket, server: SocketAddr, name: &str) -> Vec<Ipv4Addr> {
    let Ok(name) = Name::from_str(name) else {
        return Vec::new();
    };
    let mut msg = Message::query();
    msg.add_query(Query::query(name, RecordType::A));
    let Ok(bytes) = msg.to_vec() else {
        return Vec::new();
    };
    if sock.send_to(&bytes, server).await.is_err() {
        return Vec::new();
    }
    let mut buf = [0u8; 1500];
    let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await
    else {
        return Vec::new();
    };
    Message::from_vec(&buf[..n])
        .map(|m| {
            m.answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs dnsperf against `port` on loopback, on core 0, and returns (queries/s, the line with
/// the latency).
fn dnsperf(port: u16, queries: &std::path::Path) -> anyhow::Result<(f64, String)> {
    dnsperf_at(None, 0, SocketAddr::from(([127, 0, 0, 1], port)), queries)
}

/// Runs dnsperf in network namespace `netns` (None: this one) on core `core` against
/// `server`: (queries/s, the line with the latency and losses).
pub fn dnsperf_at(
    netns: Option<&str>,
    core: u32,
    server: SocketAddr,
    queries: &std::path::Path,
) -> anyhow::Result<(f64, String)> {
    let mut cmd = Command::new("taskset");
    if let Some(ns) = netns {
        cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "taskset"]);
    }
    let out = cmd
        .args([
            "-c".to_string(),
            core.to_string(),
            "dnsperf".into(),
            "-s".into(),
            server.ip().to_string(),
            "-p".into(),
            server.port().to_string(),
            "-d".into(),
        ])
        .arg(queries)
        .args(["-l", DNSPERF_SECONDS, "-c", "4", "-q", "200", "-T", "1"])
        .output()
        .context("run dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let qps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("dnsperf printed no rate:\n{text}"))?;
    let latency = text
        .lines()
        .find(|l| l.contains("Average Latency"))
        .unwrap_or_default()
        .trim()
        .to_string();
    let lost = text
        .lines()
        .find(|l| l.contains("Queries lost"))
        .unwrap_or_default()
        .trim()
        .to_string();
    Ok((qps, format!("{latency}; {lost}")))
}

fn pin(pid: u32) -> anyhow::Result<()> {
    let ok = Command::new("taskset")
        .args(["-a", "-cp", "1", &pid.to_string()])
        .stdout(Stdio::null())
        .status()?
        .success();
    if !ok {
        bail!("taskset -cp 1 {pid} failed");
    }
    Ok(())
}

async fn wait_port(port: u16, name: &str) -> anyhow::Result<()> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while query_a(&sock, server, name).await.is_empty() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{server} did not answer {name} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn services_yaml() -> String {
    let mut y = String::new();
    for n in 0..NAMESPACES {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}}}\n---\n"
        );
    }
    for i in 0..SERVICES {
        let _ = write!(
            y,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: ns{}}}\nspec:\n  selector: {{app: svc{i}}}\n  ports: [{{name: http, port: 80}}]\n---\n",
            i % NAMESPACES
        );
    }
    y
}

pub async fn run() -> anyhow::Result<()> {
    for tool in ["dnsperf", "unbound", "named", "taskset"] {
        if !have(tool) {
            bail!("{tool} is missing: scripts/bench installs dnsperf, unbound and bind9");
        }
    }
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let port = 7451;
    let (hub, client) = start_hub(work, port, &[]).await?;
    let token = client.create_token(Some(600), None).await?;
    let ours = 5390;
    let agent = start_agent(
        work,
        port,
        &token,
        "dns",
        &["--dns-listen", &format!("127.0.0.1:{ours}")],
    )?;
    wait_nodes_ready(&client, 1).await?;
    client.apply_text(&services_yaml()).await?;
    let services: Vec<(String, String, String)> = client
        .get(Kind::Service, None, None)
        .await?
        .into_iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some((
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone(),
                s.spec.cluster_ip.clone()?,
            )),
            _ => None,
        })
        .collect();
    let (last_ns, last, _) = services.last().context("no services")?.clone();
    wait_port(ours, &format!("{last}.{last_ns}.svc.cluster.local")).await?;

    // The same names and addresses for every server.
    let mut queries = String::new();
    let mut unbound = format!(
        "server:\n  interface: 127.0.0.1@5391\n  num-threads: 1\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n  chroot: \"\"\n  username: \"\"\n  directory: \"{0}\"\n  pidfile: \"\"\n  access-control: 127.0.0.0/8 allow\n  local-zone: \"cluster.local.\" static\n",
        work.display()
    );
    let mut zone = String::from(
        "$TTL 5\n@ IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ IN NS ns.dns.cluster.local.\nns.dns IN A 127.0.0.1\n",
    );
    for (ns, name, ip) in &services {
        let _ = writeln!(queries, "{name}.{ns}.svc.cluster.local A");
        let _ = writeln!(
            unbound,
            "  local-data: \"{name}.{ns}.svc.cluster.local. 5 IN A {ip}\""
        );
        let _ = writeln!(zone, "{name}.{ns}.svc IN A {ip}");
    }
    let qfile = work.join("queries.txt");
    std::fs::write(&qfile, queries)?;
    std::fs::write(work.join("unbound.conf"), unbound)?;
    std::fs::write(work.join("cluster.local.zone"), zone)?;
    std::fs::write(
        work.join("named.conf"),
        format!(
            "options {{ directory \"{0}\"; listen-on port 5392 {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; recursion no; pid-file none; }};\nzone \"cluster.local\" {{ type primary; file \"{0}/cluster.local.zone\"; }};\n",
            work.display()
        ),
    )?;

    println!(
        "== node DNS: {SERVICES} ClusterIP services, server on core 1, dnsperf -c 4 on core 0, {DNSPERF_SECONDS} s each"
    );
    pin(agent.pid())?;
    let before = cpu_time(agent.pid());
    let (q_ours, l_ours) = dnsperf(ours, &qfile)?;
    let cpu_ours = cpu_time(agent.pid()) - before;
    println!(
        "flotilla-agent  {:>9.0} queries/s  {:.2} µs CPU/query  ({l_ours})",
        q_ours,
        cpu_ours.as_secs_f64() * 1e6 / (q_ours * DNSPERF_SECONDS.parse::<f64>()?)
    );
    let peers: [(&str, Vec<String>, u16); 2] = [
        (
            "unbound",
            vec![
                "unbound".into(),
                "-d".into(),
                "-c".into(),
                work.join("unbound.conf").display().to_string(),
            ],
            5391,
        ),
        (
            "named",
            vec![
                "named".into(),
                "-g".into(),
                "-n".into(),
                "1".into(),
                "-c".into(),
                work.join("named.conf").display().to_string(),
            ],
            5392,
        ),
    ];
    for (name, argv, p) in peers {
        let child = Command::new("taskset")
            .args(["-c", "1"])
            .args(&argv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let peer = Proc {
            child,
            name: "peer",
        };
        wait_port(p, &format!("{last}.{last_ns}.svc.cluster.local")).await?;
        let before = cpu_time(peer.pid());
        let (q, l) = dnsperf(p, &qfile)?;
        let cpu = cpu_time(peer.pid()) - before;
        println!(
            "{name:<15} {:>9.0} queries/s  {:.2} µs CPU/query  ({l})   flotilla: {:.2}×",
            q,
            cpu.as_secs_f64() * 1e6 / (q * DNSPERF_SECONDS.parse::<f64>()?),
            q_ours / q
        );
        drop(peer);
    }
    drop(agent);
    client.close().await;
    drop(hub);
    propagation().await
}

/// Endpoint change → new answer on every one of three agents, over 100 changes.
async fn propagation() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let port = 7452;
    let (_hub, client) = start_hub(work, port, &[]).await?;
    let token = client.create_token(Some(600), None).await?;
    let mut agents = Vec::new();
    let mut servers = Vec::new();
    for i in 0..3u16 {
        let dns = SocketAddr::from(([127, 0, 0, 1], 5393 + i));
        agents.push(start_agent(
            work,
            port,
            &token,
            &format!("n{i}"),
            &["--dns-listen", &dns.to_string()],
        )?);
        servers.push(dns);
    }
    wait_nodes_ready(&client, 3).await?;
    let name = "lat.default.svc.cluster.local";
    let slice = |n: u32| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: lat}}\nspec:\n  clusterIP: None\n  ports: [{{port: 80}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: lat-1, labels: {{kubernetes.io/service-name: lat}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{}]}}]\nports: [{{port: 80}}]\n",
            Ipv4Addr::from(0x0a63_0000 + n)
        )
    };
    client.apply_text(&slice(0)).await?;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut times = Vec::new();
    for n in 1..=100u32 {
        let want = Ipv4Addr::from(0x0a63_0000 + n);
        let start = Instant::now();
        client.apply_text(&slice(n)).await?;
        for s in &servers {
            while query_a(&sock, *s, name).await != [want] {
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("{s} did not answer {want} within 10 s");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        times.push(start.elapsed());
    }
    times.sort();
    println!(
        "== endpoint change (apply of an EndpointSlice) → new answer on all 3 agents, 100 changes: p50 {:.1} ms, p99 {:.1} ms",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3
    );
    client.close().await;
    drop(agents);
    Ok(())
}
