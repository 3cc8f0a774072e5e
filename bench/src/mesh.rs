//! `flotilla-bench mesh`: service traffic across nodes. A real hub and two real agents, each
//! in a network namespace of its own on one bridge of private addresses (testkit's `Net`),
//! and nginx on node b as the backend. wrk on node a calls it twice, side by side: directly
//! (pod to pod on a flat network) and through a Service's cluster IP, which node a's agent
//! proxies over the mesh link (QUIC, mutual TLS) to node b's agent. Printed: requests/s, p99,
//! and CPU per request of the agents, with the ratio to the direct path.
use crate::{Proc, cpu_time, pin_to, start_agent_in, start_hub_at, wait_nodes_ready, wrk_in};
use anyhow::{Context as _, bail};
use flotilla_proto::api::{Kind, Object};
use flotilla_testkit::netns::Net;
use std::net::SocketAddr;
use std::time::Duration;

const SECS: u32 = 10;
const BACKEND_PORT: u16 = 8080;

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
    client.apply_text(&yaml).await?;
    let svc = client
        .get(Kind::Service, Some("default"), Some("bench"))
        .await?;
    let Some(Object::Service(svc)) = svc.into_iter().next() else {
        bail!("service bench was not stored");
    };
    let vip = svc.spec.cluster_ip.context("no cluster IP")?;
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
    client.close().await;
    Ok(())
}

/// nginx in `netns` on `ip:8080`, one worker, answering a short body.
fn nginx(netns: &str, dir: &std::path::Path, ip: String) -> anyhow::Result<Proc> {
    let server = format!(
        "server {{ listen {ip}:{BACKEND_PORT}; location / {{ return 200 \"hello\\n\"; }} }}"
    );
    crate::nginx_in(netns, &dir.join("nginx"), &server)
}
