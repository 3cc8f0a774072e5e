//! Time to detect a lost node against the configured grace: real hub and agent processes,
//! agents frozen with SIGSTOP (a board that hangs or loses power says nothing), the hub's API
//! polled until it shows each node NotReady. Kubernetes' figure for the same thing is its
//! node-monitor grace period (40-50 s by default) plus the monitor period (5 s).
use crate::{Proc, percentile, ready_nodes, start_agent, start_hub, wait_nodes_ready};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const AGENTS: usize = 8;
const ROUNDS: usize = 3;
const GRACE: Duration = Duration::from_secs(4);
const HEARTBEAT: &str = "1s";
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

fn signal(p: &Proc, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill")
        .args([sig, &p.pid().to_string()])
        .status()
        .context("run kill")?
        .success();
    anyhow::ensure!(ok, "kill {sig} {} failed", p.pid());
    Ok(())
}

pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = 17_000 + (std::process::id() % 2000) as u16;
    let grace = humantime::format_duration(GRACE).to_string();
    let (_hub, client) = start_hub(dir.path(), port, &["--node-grace", &grace]).await?;
    let token = client.create_token(Some(600), None).await?;
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let name = format!("lost-{i}");
        let p = start_agent(dir.path(), port, &token, &name, &["--heartbeat", HEARTBEAT])?;
        agents.push((name, p));
    }
    wait_nodes_ready(&client, AGENTS).await?;
    let mut samples = Vec::new();
    for _ in 0..ROUNDS {
        // Stops spread over one heartbeat interval, so they fall at every phase of the
        // agents' heartbeats and of the hub's lifecycle tick.
        let mut stopped: BTreeMap<String, Instant> = BTreeMap::new();
        for (name, p) in &agents {
            signal(p, "-STOP")?;
            stopped.insert(name.clone(), Instant::now());
            tokio::time::sleep(HEARTBEAT_EVERY / AGENTS as u32).await;
        }
        let first = Instant::now();
        let mut detected: BTreeMap<String, Duration> = BTreeMap::new();
        while detected.len() < AGENTS {
            anyhow::ensure!(
                first.elapsed() < GRACE * 5,
                "nodes not marked NotReady after {:?}",
                first.elapsed()
            );
            let ready = ready_nodes(&client).await?;
            for (name, at) in &stopped {
                if !ready.contains(name) {
                    detected.entry(name.clone()).or_insert(at.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples.extend(detected.into_values());
        for (_, p) in &agents {
            signal(p, "-CONT")?;
        }
        wait_nodes_ready(&client, AGENTS).await?;
    }
    samples.sort();
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    println!(
        "lost-node detection, {} samples ({AGENTS} agents frozen at once, {ROUNDS} rounds; heartbeat {HEARTBEAT}, grace {grace}):",
        samples.len()
    );
    println!(
        "  stop -> NotReady: p50 {}, p99 {}, max {} = {:.2}x / {:.2}x the grace (Kubernetes default: 40 s grace + 5 s monitor period)",
        secs(percentile(&samples, 0.5)),
        secs(percentile(&samples, 0.99)),
        secs(*samples.last().unwrap_or(&Duration::ZERO)),
        percentile(&samples, 0.5).as_secs_f64() / GRACE.as_secs_f64(),
        percentile(&samples, 0.99).as_secs_f64() / GRACE.as_secs_f64(),
    );
    client.close().await;
    Ok(())
}
