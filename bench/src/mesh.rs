//! `flotilla-bench mesh`: service traffic across nodes. A real hub and two real agents, each
//! in a network namespace of its own on one bridge of private addresses (testkit's `Net`),
//! and nginx on node b as the backend. wrk on node a calls it twice, side by side: directly
//! (pod to pod on a flat network) and through a Service's cluster IP, which node a's agent
//! proxies over the mesh link (QUIC, mutual TLS) to node b's agent. Printed: requests/s, p99,
//! and CPU per request of the agents, with the ratio to the direct path. Then the same for
//! UDP: dnsperf on node a and unbound on node b, directly and through a UDP Service.
use crate::{Proc, cpu_time, pin_to, start_agent_in, start_hub_at, wait_nodes_ready, wrk_in};
use anyhow::{Context as _, bail};
use flotilla_proto::api::{Kind, Object};
use flotilla_testkit::netns::Net;
use std::net::SocketAddr;
use std::time::Duration;

const SECS: u32 = 10;
const BACKEND_PORT: u16 = 8080;
/// unbound's port on node b, the UDP service's endpoint.
const DNS_PORT: u16 = 5353;

pub fn run() -> anyhow::Result<()> {
    let net = Net::create(2).context("network namespaces (needs root and iproute2)")?;
    // The body runs on a thread inside the hub's namespace; what it spawns starts there.
    net.block_on(bench(&net))
}

async fn bench(net: &Net) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub_addr = SocketAddr::new(Net::HUB_IP.into(), 7443);
    let (_hub, client) = start_hub_at(dir.path(), hub_addr, &[]).await?;
    let token = client.create_token(Some(600), None).await?;
    let mut agents: Vec<Proc> = Vec::new();
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let ip = Net::agent_ip(i).to_string();
        agents.push(start_agent_in(
            Some(net.agent_ns(i).name()),
            dir.path(),
            hub_addr,
            &token,
            name,
            &["--node-ip", &ip, "--dns-listen", "none"],
        )?);
    }
    wait_nodes_ready(&client, 2).await?;
    let backend_ip = Net::agent_ip(1);
    let nginx = nginx(net.agent_ns(1).name(), dir.path(), backend_ip.to_string())?;
    let yaml = crate::bench_service(backend_ip, "b", BACKEND_PORT);
    let vip = apply_service(&client, &yaml, "bench").await?;
    let direct = format!("http://{backend_ip}:{BACKEND_PORT}/");
    let through = format!("http://{vip}/");
    let client_ns = net.agent_ns(0).name().to_string();
    crate::wait_answers(&client_ns, &through, 20).await?;
    // Everything but wrk on core 0.
    let pids: Vec<u32> = agents.iter().map(Proc::pid).collect();
    for pid in &pids {
        pin_to(*pid, 0);
    }
    pin_to(nginx.pid(), 0);
    println!(
        "== service traffic: node a -> node b (nginx), wrk -t1 -c16 {SECS}s on core 1, the rest on core 0"
    );
    let mut rows = Vec::new();
    for (label, url) in [
        ("direct (pod -> pod)", &direct),
        ("service (cluster IP, mesh)", &through),
    ] {
        let cpu0: Duration = pids.iter().map(|p| cpu_time(*p)).sum();
        let (reqs, rps, p99) = wrk_in(Some(&client_ns), url, SECS)?;
        let cpu = pids
            .iter()
            .map(|p| cpu_time(*p))
            .sum::<Duration>()
            .saturating_sub(cpu0);
        let per = cpu.as_secs_f64() * 1e6 / reqs.max(1) as f64;
        println!("  {label:<28} {rps:>9.0} req/s  p99 {p99:>8}  agents' CPU {per:>6.1} µs/req");
        rows.push(rps);
    }
    if let [direct, mesh] = rows[..] {
        println!("  service / direct: {:.2}x the requests/s", mesh / direct);
    }
    udp(net, &client, dir.path(), &pids).await?;
    client.close().await;
    Ok(())
}

/// UDP service traffic: dnsperf on node a asks unbound on node b for one name, directly and
/// through a UDP Service's cluster IP (each of dnsperf's 4 sockets a flow over the mesh).
async fn udp(
    net: &Net,
    client: &fleet::Client,
    dir: &std::path::Path,
    agents: &[u32],
) -> anyhow::Result<()> {
    let backend_ip = Net::agent_ip(1);
    let conf = dir.join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: {backend_ip}@{DNS_PORT}\n  num-threads: 1\n  do-daemonize: no\n  use-syslog: no\n  logfile: \"\"\n  chroot: \"\"\n  username: \"\"\n  directory: \"{}\"\n  pidfile: \"\"\n  access-control: 10.77.0.0/16 allow\n  local-zone: \"bench.test.\" static\n  local-data: \"web.bench.test. 5 IN A 10.0.0.1\"\n",
            dir.display()
        ),
    )?;
    let unbound = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            net.agent_ns(1).name(),
            "unbound",
            "-d",
            "-c",
        ])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start unbound (scripts/bench installs it)")?;
    let unbound = Proc {
        child: unbound,
        name: "unbound",
    };
    let yaml = crate::service_to("bench-dns", "dns", 53, "UDP", backend_ip, "b", DNS_PORT);
    let vip: std::net::IpAddr = apply_service(client, &yaml, "bench-dns").await?.parse()?;
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, "web.bench.test A\n")?;
    let ns = net.agent_ns(0).name();
    let direct = SocketAddr::new(backend_ip, DNS_PORT);
    let through = SocketAddr::new(vip, 53);
    for at in [direct, through] {
        wait_resolves(ns, at).await?;
    }
    pin_to(unbound.pid(), 0);
    println!(
        "== UDP service traffic: node a -> node b (unbound), dnsperf -c 4 -q 200 {SECS}s on core 1, the rest on core 0"
    );
    let mut rows = Vec::new();
    for (label, at) in [
        ("direct (pod -> pod)", direct),
        ("service (cluster IP, mesh)", through),
    ] {
        let cpu0: Duration = agents.iter().map(|p| cpu_time(*p)).sum();
        let (qps, detail) = crate::dns::dnsperf_at(Some(ns), 1, at, &queries)?;
        let cpu = agents
            .iter()
            .map(|p| cpu_time(*p))
            .sum::<Duration>()
            .saturating_sub(cpu0);
        let per =
            cpu.as_secs_f64() * 1e6 / (qps * crate::dns::DNSPERF_SECONDS.parse::<f64>()?).max(1.0);
        println!("  {label:<28} {qps:>9.0} queries/s  agents' CPU {per:>6.1} µs/query  ({detail})");
        rows.push(qps);
    }
    if let [direct, mesh] = rows[..] {
        println!("  service / direct: {:.2}x the queries/s", mesh / direct);
    }
    Ok(())
}

/// Applies `yaml` and returns the cluster IP of the Service `name` it holds.
async fn apply_service(client: &fleet::Client, yaml: &str, name: &str) -> anyhow::Result<String> {
    client.apply_text(yaml).await?;
    let svc = client
        .get(Kind::Service, Some("default"), Some(name))
        .await?;
    let Some(Object::Service(svc)) = svc.into_iter().next() else {
        bail!("service {name} was not stored");
    };
    svc.spec.cluster_ip.context("no cluster IP")
}

/// Waits up to 20 s for `server` to answer from namespace `netns` (dig).
async fn wait_resolves(netns: &str, server: SocketAddr) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    loop {
        let out = std::process::Command::new("ip")
            .args([
                "netns", "exec", netns, "dig", "+short", "+time=1", "+tries=1",
            ])
            .arg(format!("@{}", server.ip()))
            .args(["-p", &server.port().to_string(), "web.bench.test"])
            .output()?;
        if String::from_utf8_lossy(&out.stdout).trim() == "10.0.0.1" {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{server} does not answer from {netns}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// nginx in `netns` on `ip:8080`, one worker, answering a short body.
fn nginx(netns: &str, dir: &std::path::Path, ip: String) -> anyhow::Result<Proc> {
    let server = format!(
        "server {{ listen {ip}:{BACKEND_PORT}; location / {{ return 200 \"hello\\n\"; }} }}"
    );
    crate::nginx_in(netns, &dir.join("nginx"), &server)
}
