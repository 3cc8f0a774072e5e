//! Network namespaces for partition tests: a hub namespace with a bridge, and one namespace per
//! agent joined to it by a veth pair, all on private addresses that exist only inside these
//! namespaces (10.77.0.0/24). A test runs its body on [`Net::hub_runtime`] (so its sockets,
//! the `fleet` client and any child process live in the hub's namespace); each agent runs on a
//! runtime whose threads all entered that agent's namespace. [`Net::cut`] takes an agent's link
//! down (both directions, like a pulled cable); [`Net::heal`] brings it back. Everything is
//! deleted on drop. Needs root and iproute2; a missing prerequisite fails loudly.
use anyhow::{Context as _, bail};
use std::net::IpAddr;
use std::os::fd::AsFd as _;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// One network namespace, deleted on drop.
pub struct Netns {
    name: String,
    file: std::fs::File,
}

impl Netns {
    pub fn create(name: &str) -> anyhow::Result<Netns> {
        ip(&["netns", "add", name])?;
        let file = std::fs::File::open(format!("/run/netns/{name}"))
            .with_context(|| format!("open network namespace {name}"))?;
        let ns = Netns {
            name: name.to_string(),
            file,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Moves the calling thread into this namespace: sockets it creates from now on, and
    /// processes it spawns, live here.
    pub fn enter(&self) -> std::io::Result<()> {
        nix::sched::setns(self.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)
    }

    /// A multi-threaded runtime all of whose threads (workers and blocking pool) run here.
    pub fn runtime(&self, threads: usize) -> tokio::runtime::Runtime {
        let file = self.file.try_clone().expect("dup namespace fd");
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .on_thread_start(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("enter network namespace");
            })
            .build()
            .expect("build runtime")
    }

    /// curl inside this namespace (`-s -m 10`, then `args`): the status code ("000" when
    /// nothing answered) and the body.
    pub fn curl(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["curl", "-s", "-m", "10", "-w", "\n%{http_code}"];
        all.extend_from_slice(args);
        let out = self.exec(&all);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_owned(), body.to_owned())
    }

    /// Runs a command inside this namespace (`ip netns exec`).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run `ip` (iproute2 is required for partition tests)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {} (partition tests need root)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A hub namespace and `n` agent namespaces on one bridge.
pub struct Net {
    // Runtimes go before their namespaces so their threads stop first.
    agent_rts: Vec<tokio::runtime::Runtime>,
    hub_rt: Option<tokio::runtime::Runtime>,
    agents: Vec<Netns>,
    hub: Netns,
}

impl Net {
    pub const HUB_IP: [u8; 4] = [10, 77, 0, 1];

    pub fn create(n: usize) -> anyhow::Result<Net> {
        let id = format!(
            "flt{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let hub = Netns::create(&format!("{id}h"))?;
        hub.ip(&["link", "add", "br0", "type", "bridge"])?;
        hub.ip(&["addr", "add", "10.77.0.1/24", "dev", "br0"])?;
        hub.ip(&["link", "set", "br0", "up"])?;
        let mut agents = Vec::new();
        for i in 0..n {
            let ns = Netns::create(&format!("{id}a{i}"))?;
            let port = format!("ha{i}");
            hub.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ])?;
            hub.ip(&["link", "set", &port, "master", "br0", "up"])?;
            let addr = format!("{}/24", Self::agent_ip(i));
            ns.ip(&["addr", "add", &addr, "dev", "eth0"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            agents.push(ns);
        }
        let hub_rt = Some(hub.runtime(2));
        let agent_rts = agents.iter().map(|ns| ns.runtime(2)).collect();
        Ok(Net {
            agent_rts,
            hub_rt,
            agents,
            hub,
        })
    }

    /// The address agent `i` has in its namespace.
    pub fn agent_ip(i: usize) -> IpAddr {
        IpAddr::from([10, 77, 0, 10 + i as u8])
    }

    /// Runs the test body in the hub's namespace: the calling thread enters it for the
    /// duration (`block_on` polls the body on this thread) and goes back afterwards.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let home = std::fs::File::open("/proc/thread-self/ns/net").expect("open own namespace");
        self.hub.enter().expect("enter the hub namespace");
        let out = self.hub_rt.as_ref().expect("hub runtime").block_on(f);
        nix::sched::setns(home.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("leave the hub namespace");
        out
    }

    /// Where agent `i`'s tasks run.
    pub fn agent_runtime(&self, i: usize) -> tokio::runtime::Handle {
        self.agent_rts[i].handle().clone()
    }

    pub fn hub_ns(&self) -> &Netns {
        &self.hub
    }

    pub fn agent_ns(&self, i: usize) -> &Netns {
        &self.agents[i]
    }

    /// Pulls agent `i`'s cable: nothing passes between it and the rest.
    pub fn cut(&self, i: usize) {
        self.hub
            .ip(&["link", "set", &format!("ha{i}"), "down"])
            .expect("cut link");
    }

    pub fn heal(&self, i: usize) {
        self.hub
            .ip(&["link", "set", &format!("ha{i}"), "up"])
            .expect("heal link");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for rt in self.agent_rts.drain(..) {
            rt.shutdown_background();
        }
        if let Some(rt) = self.hub_rt.take() {
            rt.shutdown_background();
        }
    }
}
