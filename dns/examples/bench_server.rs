//! Benchmark harness: serves N synthetic ClusterIP services and writes the dnsperf query file
//! and an unbound config with the same names as local-data, so both servers can be measured
//! side by side. The fourth argument picks the runtime `start` is called on: `current` (one
//! thread) or `multi` (two workers, as the agent's).
//!
//! ```text
//! cargo build --release -p flotilla-dns --example bench_server
//! taskset -c 1 target/release/examples/bench_server 127.0.0.1:5300 1000 /tmp/dnsbench multi
//! taskset -c 0 dnsperf -s 127.0.0.1 -p 5300 -d /tmp/dnsbench/queries.txt -c 4 -q 200 -T 1 -l 10
//! taskset -c 1 unbound -d -c /tmp/dnsbench/unbound.conf     # listens on port 5301
//! taskset -c 0 dnsperf -s 127.0.0.1 -p 5301 -d /tmp/dnsbench/queries.txt -c 4 -q 200 -T 1 -l 10
//! ```
//!
//! CPU per query is the server process's utime + stime (`/proc/PID/stat`) over the run divided
//! by the queries completed. Measured 2026-12-01 on the shared 2-core development machine
//! (another build running, so rates vary by ±20% between runs), server on core 1, dnsperf on
//! core 0, 1000 services, two or three runs each (ranges):
//!
//! | server                                | queries/s | CPU µs/query | of which user |
//! |---------------------------------------|-----------|--------------|---------------|
//! | unbound 1.17, local-data              | 92k–104k  | 5.0–6.1      | 1.5–2.1       |
//! | before: hickory `Server`, `current`   | 85k–99k   | 8.2–8.8      | 4.8–5.3       |
//! | before: hickory `Server`, `multi`     | 90k–91k   | 10.6–10.9    | 6.2–6.4       |
//! | UDP thread, no response cache, `multi`| 87k–109k  | 6.4–7.5      | 2.8–3.1       |
//! | after, `current`                      | 119k–157k | 4.0–4.9      | 0.3–0.5       |
//! | after, `multi`                        | 109k–119k | 4.1–4.6      | 0.4–0.6       |
//!
//! After, the server uses about half a core, so its query rate is dnsperf's limit on core 0;
//! the rest of its time is the kernel's `recvfrom`/`sendto`. A query that misses the response
//! cache (a name asked for the first time after an update) costs the no-cache figure.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use flotilla_dns::{Config, Port, Protocol, Service, ServiceKind};
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5300".into())
        .parse()
        .context("first argument: listen address")?;
    let count: u32 = args
        .next()
        .unwrap_or_else(|| "1000".into())
        .parse()
        .context("second argument: number of services")?;
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp/dnsbench".into()));
    let multi_thread = match args.next().as_deref() {
        None | Some("current") => false,
        Some("multi") => true,
        Some(other) => {
            anyhow::bail!("fourth argument: runtime `current` or `multi`, got {other:?}")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;

    let services: Vec<Service> = (0..count)
        .map(|i| Service {
            namespace: format!("ns{}", i % 10),
            name: format!("svc{i}"),
            kind: ServiceKind::ClusterIp(vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))]),
            ports: vec![Port {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
            }],
            endpoints: vec![],
        })
        .collect();

    let mut queries = String::new();
    let mut unbound = format!(
        "server:\n  interface: {}@{}\n  port: {}\n  num-threads: 1\n  do-daemonize: no\n  \
         use-syslog: no\n  logfile: \"\"\n  chroot: \"\"\n  username: \"\"\n  \
         directory: \"{}\"\n  pidfile: \"\"\n  access-control: 127.0.0.0/8 allow\n  \
         local-zone: \"cluster.local.\" static\n",
        listen.ip(),
        listen.port() + 1,
        listen.port() + 1,
        dir.display()
    );
    for s in &services {
        let name = format!("{}.{}.svc.cluster.local", s.name, s.namespace);
        writeln!(queries, "{name} A")?;
        if let ServiceKind::ClusterIp(ips) = &s.kind {
            writeln!(unbound, "  local-data: \"{name}. 5 IN A {}\"", ips[0])?;
        }
    }
    std::fs::write(dir.join("queries.txt"), queries)?;
    std::fs::write(dir.join("unbound.conf"), unbound)?;

    // `current`: one thread, the smallest setting. `multi`: two workers, as the agent's own
    // runtime on which it starts the server.
    let rt = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        let cancel = CancellationToken::new();
        let cfg = Config {
            listen: vec![listen],
            ..Config::default()
        };
        let dns = flotilla_dns::start(cfg, cancel.clone()).await?;
        dns.update(services);
        eprintln!(
            "serving {count} services on {listen}; files in {}",
            dir.display()
        );
        tokio::signal::ctrl_c().await?;
        cancel.cancel();
        dns.join().await?;
        anyhow::Ok(())
    })
}
