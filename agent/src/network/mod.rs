//! Pod networking for containers: one network namespace per pod, joined to the node's
//! bridge by a veth pair, with an address from the node's pod CIDR, a default route through
//! the bridge, outbound NAT, and DNAT for hostPorts.
//!
//! The agent does the plumbing itself, over netlink ([`link`]) and `iptables-restore`
//! ([`rules`]): what the CNI `bridge`, `host-local`, `portmap` and `loopback` plugins did,
//! without four processes per pod. Each pod's address, ports and veth are recorded in
//! `<data>/net/<pod uid>.json` before anything is set up, so an agent that crashed can undo
//! what it left behind, and a restart knows the addresses in use.
//!
//! The pod CIDR is the agent's `--pod-cidr` if given, else the one the hub assigned
//! (`spec.podCIDR` of the node), kept in `<data>/net/pod-cidr` for restarts without the hub.
//! Until there is one, attaching fails ("node has no pod CIDR yet") and the pod retries. A
//! new range from the hub is taken only while no pod is attached: addresses already handed
//! out stay valid until their pods go.
mod link;
mod rules;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{what}: {message}")]
    Setup { what: String, message: String },
    #[error("node has no pod CIDR yet")]
    NoPodCidr,
    #[error("--pod-cidr {0:?}: not a CIDR (e.g. 10.88.0.0/24)")]
    BadPodCidr(String),
    #[error("no free address left in the pod CIDR {0}")]
    Exhausted(String),
    #[error("pod uid {0:?}: only letters, digits and '-' can name a pod's network")]
    BadUid(String),
}

/// What [`PodNetwork::assign`] did with the hub's range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assigned {
    Unchanged,
    /// Taken (and saved for restarts).
    Changed,
    /// Not taken yet: pods hold addresses from the current range.
    Deferred,
    /// `--pod-cidr` was given; the hub's word does not count.
    Static,
}

/// A hostPort mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
    pub host_ip: Option<IpAddr>,
}

/// A pod's place on the network.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub netns: PathBuf,
    pub ip: IpAddr,
}

pub struct PodNetwork {
    bridge: String,
    /// The pod CIDR. Held while an attach picks it, leases an address and records the pod,
    /// so a change of range never races an attach.
    subnet: Mutex<Option<String>>,
    /// From `--pod-cidr`: never replaced by the hub's.
    fixed: bool,
    /// A range from the hub waiting for the node's pods to go (logged once).
    deferred: Mutex<Option<String>>,
    state: PathBuf,
    /// The range in use, for those who follow it (the node DNS serves pods on its gateway).
    changes: tokio::sync::watch::Sender<Option<String>>,
    /// Addresses held by pods (by pod uid), and the last one handed out.
    leases: Mutex<Leases>,
    /// The range the bridge and the node's rules are set up for, and the bridge's index.
    prepared: tokio::sync::Mutex<Option<(String, u32)>>,
    /// Netlink in the agent's namespace, opened at first use.
    netlink: tokio::sync::OnceCell<rtnetlink::Handle>,
    /// A namespace made ahead for the next pod, which then only binds it and names its veth:
    /// making them is most of the kernel's work of a pod network.
    spare: Mutex<Option<Spare>>,
}

/// A network namespace with `lo` up, held by its descriptor only (nothing in `/run/netns`,
/// so it goes with the agent), and, once the bridge is up, a veth pair: `eth0` inside, and
/// the node's end up on the bridge. Closing the namespace removes both ends.
struct Spare {
    ns: OwnedFd,
    veth: Option<SpareVeth>,
}

/// The node's end of a spare's veth pair. It keeps its (random) name when a pod takes it:
/// renaming a link means taking it down and up again, which costs as much as half a new
/// pair. The pod's network record names it.
struct SpareVeth {
    name: String,
    index: u32,
    /// The bridge it is on.
    bridge: u32,
}

/// The pod CIDR's addresses in use.
#[derive(Debug, Default)]
struct Leases {
    held: BTreeMap<IpAddr, String>,
    /// Handed out last: the next search starts after it, so an address just freed is the
    /// last to be reused (connections to the pod that had it are stale a while).
    last: Option<IpAddr>,
}

impl Leases {
    /// A free address of `subnet` (not its gateway) for pod `uid`.
    fn take(&mut self, subnet: &ipnet::IpNet, uid: &str) -> Option<IpAddr> {
        let gateway = subnet.hosts().next();
        let free = |ip: &IpAddr| Some(*ip) != gateway && !self.held.contains_key(ip);
        let after = self.last.filter(|l| subnet.contains(l));
        let ip = subnet
            .hosts()
            .skip_while(|ip| after.is_some_and(|a| *ip <= a))
            .find(free)
            .or_else(|| subnet.hosts().find(free))?;
        self.held.insert(ip, uid.to_string());
        self.last = Some(ip);
        Some(ip)
    }

    fn release(&mut self, uid: &str) {
        self.held.retain(|_, holder| holder != uid);
    }
}

/// The bridge's address in a pod CIDR: the first host.
pub fn gateway(subnet: &str) -> Option<IpAddr> {
    let net: ipnet::IpNet = subnet.parse().ok()?;
    net.hosts().next()
}

/// Checks a pod CIDR and writes it canonically (`10.88.0.0/24`).
pub fn parse_cidr(s: &str) -> Result<String, NetworkError> {
    s.trim()
        .parse::<ipnet::IpNet>()
        .map(|n| n.trunc().to_string())
        .map_err(|_| NetworkError::BadPodCidr(s.to_string()))
}

/// What `<data>/net/<uid>.json` says of a pod.
#[derive(Debug, Default)]
struct Record {
    subnet: Option<String>,
    /// None for pods attached by agents that ran the CNI plugins.
    ip: Option<IpAddr>,
    ports: Vec<PortMapping>,
    /// The node's end of the pod's veth; None: [`veth_name`] of the uid (as agents before
    /// spare veths recorded it).
    veth: Option<String>,
}

impl Record {
    fn to_json(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                json!([
                    p.host_port,
                    p.container_port,
                    p.protocol,
                    p.host_ip.map(|i| i.to_string())
                ])
            })
            .collect();
        json!({
            "subnet": self.subnet,
            "ip": self.ip.map(|i| i.to_string()),
            "ports": ports,
            "veth": self.veth,
        })
    }

    fn from_json(v: &Value) -> Record {
        let ports = v["ports"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some(PortMapping {
                    host_port: u16::try_from(p[0].as_u64()?).ok()?,
                    container_port: u16::try_from(p[1].as_u64()?).ok()?,
                    protocol: p[2].as_str()?.to_string(),
                    host_ip: p[3].as_str().and_then(|s| s.parse().ok()),
                })
            })
            .collect();
        Record {
            subnet: v["subnet"].as_str().map(str::to_string),
            ip: v["ip"].as_str().and_then(|s| s.parse().ok()),
            ports,
            veth: v["veth"].as_str().map(str::to_string),
        }
    }
}

/// The node's end of pod `uid`'s veth pair (at most 15 characters, as Linux allows).
fn veth_name(uid: &str) -> String {
    use sha2::Digest as _;
    let hash = hex::encode(sha2::Sha256::digest(uid.as_bytes()));
    format!("flt{}", &hash[..12])
}

/// A name of the same form for a spare veth, drawn at random.
fn spare_veth_name() -> String {
    format!("flt{:012x}", rand::random::<u64>() >> 16)
}

impl PodNetwork {
    /// `bridge` names the node's bridge; `fixed` is the node's `--pod-cidr`, if given
    /// (otherwise the hub's range, saved in the data dir, is used).
    pub fn new(
        data_dir: &Path,
        bridge: &str,
        fixed: Option<&str>,
    ) -> Result<PodNetwork, NetworkError> {
        let fixed = fixed.map(parse_cidr).transpose()?;
        let state = data_dir.join("net");
        std::fs::create_dir_all(&state).map_err(|e| NetworkError::Setup {
            what: format!("create {}", state.display()),
            message: e.to_string(),
        })?;
        let saved = || {
            let text = std::fs::read_to_string(state.join(SAVED_CIDR)).ok()?;
            parse_cidr(&text).ok()
        };
        let subnet = fixed.clone().or_else(saved);
        let net = PodNetwork {
            bridge: bridge.to_string(),
            changes: tokio::sync::watch::channel(subnet.clone()).0,
            subnet: Mutex::new(subnet),
            fixed: fixed.is_some(),
            deferred: Mutex::new(None),
            state,
            leases: Mutex::new(Leases::default()),
            prepared: tokio::sync::Mutex::new(None),
            netlink: tokio::sync::OnceCell::new(),
            spare: Mutex::new(None),
        };
        let mut leases = net.leases();
        for uid in net.recorded() {
            if let Some(ip) = net.record(&uid).ip {
                leases.held.insert(ip, uid);
            }
        }
        drop(leases);
        Ok(net)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's pod CIDR, if it has one yet.
    pub fn subnet(&self) -> Option<String> {
        self.subnet
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Follows the range in use (None while the node has none).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.changes.subscribe()
    }

    /// Whether the range is the node's `--pod-cidr`.
    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// Takes the range the hub has on this node's Node (`spec.podCIDR`), unless
    /// `--pod-cidr` was given or pods hold addresses from the current one (then it is taken
    /// later, when none do). None (the hub has none for us: all are taken, or ours went to
    /// another node while we were away) drops ours the same way, so two nodes never hand out
    /// one range.
    pub fn assign(&self, hub: Option<&str>) -> Assigned {
        if self.fixed {
            return Assigned::Static;
        }
        let new = hub.and_then(|s| parse_cidr(s).ok());
        let mut subnet = self.subnet.lock().unwrap_or_else(|p| p.into_inner());
        if *subnet == new {
            return Assigned::Unchanged;
        }
        if subnet.is_some() && !self.recorded().is_empty() {
            let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            if *deferred != new {
                warn!(
                    current = ?subnet.as_deref(),
                    assigned = ?new.as_deref(),
                    "the hub's pod CIDR for this node changed; it is taken once no container pod holds an address from the current one"
                );
                deferred.clone_from(&new);
            }
            return Assigned::Deferred;
        }
        let saved = self.state.join(SAVED_CIDR);
        let written = match &new {
            Some(n) => crate::files::write_atomic(&saved, &[n.as_bytes()], 0o600),
            None => std::fs::remove_file(&saved),
        };
        if let Err(e) = written {
            warn!(error = %e, "cannot save the pod CIDR; a restart without the hub will not have it");
        }
        info!(old = ?subnet.as_deref(), new = ?new.as_deref(), "pod CIDR from the hub");
        self.changes.send_replace(new.clone());
        *subnet = new;
        Assigned::Changed
    }

    fn netns_name(uid: &str) -> String {
        format!("flt-{}", &uid[..uid.len().min(24)])
    }

    pub fn netns_path(uid: &str) -> PathBuf {
        Path::new("/run/netns").join(Self::netns_name(uid))
    }

    async fn netlink(&self) -> Result<&rtnetlink::Handle, NetworkError> {
        self.netlink
            .get_or_try_init(|| async { link::connect() })
            .await
    }

    /// Creates the pod's network namespace and attaches it; returns the pod's address.
    pub async fn attach(
        &self,
        uid: &str,
        ports: &[PortMapping],
    ) -> Result<Attachment, NetworkError> {
        // The uid names the namespace, the veth and the iptables chain.
        if uid.is_empty() || !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(NetworkError::BadUid(uid.to_string()));
        }
        // A namespace left by an earlier attempt for this pod is detached and replaced.
        if self.record_path(uid).exists() || Self::netns_path(uid).exists() {
            self.detach(uid).await;
        }
        // The spare (if any) names the veth, which the record must know.
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        let host = (spare.as_ref().and_then(|s| s.veth.as_ref()))
            .map_or_else(|| veth_name(uid), |v| v.name.clone());
        // The range is picked, the address leased and the pod recorded under the lock
        // `assign` takes, so the range cannot change under a pod being attached.
        let (subnet, ip) = {
            let subnet = self.subnet.lock().unwrap_or_else(|p| p.into_inner());
            let subnet = subnet.clone().ok_or(NetworkError::NoPodCidr)?;
            let net: ipnet::IpNet = subnet
                .parse()
                .map_err(|_| NetworkError::BadPodCidr(subnet.clone()))?;
            let ip = self
                .leases()
                .take(&net, uid)
                .ok_or_else(|| NetworkError::Exhausted(subnet.clone()))?;
            let record = Record {
                subnet: Some(subnet.clone()),
                ip: Some(ip),
                ports: ports.to_vec(),
                veth: Some(host.clone()),
            };
            let path = self.record_path(uid);
            // Unsynced: it outlives the agent, which is all it is for, as the namespace
            // and veth it names do not outlive the machine.
            let json = record.to_json().to_string();
            if let Err(e) = crate::files::write_atomic_unsynced(&path, &[json.as_bytes()], 0o600) {
                self.leases().release(uid);
                return Err(NetworkError::Setup {
                    what: format!("record the pod's network in {}", path.display()),
                    message: e.to_string(),
                });
            }
            (subnet, ip)
        };
        match self.plumb(uid, &subnet, ip, ports, spare, &host).await {
            Ok(netns) => {
                debug!(pod = uid, %ip, "pod network attached");
                Ok(Attachment { netns, ip })
            }
            Err(e) => {
                // The bridge may be what failed (deleted under us): it is looked at afresh.
                *self.prepared.lock().await = None;
                self.detach(uid).await;
                Err(e)
            }
        }
    }

    /// Sets up pod `uid`'s namespace, veth (`host` on the node's side), address, route and
    /// hostPorts, from `spare` as far as it goes.
    async fn plumb(
        &self,
        uid: &str,
        subnet: &str,
        ip: IpAddr,
        ports: &[PortMapping],
        spare: Option<Spare>,
        host: &str,
    ) -> Result<PathBuf, NetworkError> {
        let bridge = self.prepare(subnet).await?;
        let (gateway, prefix) = subnet
            .parse::<ipnet::IpNet>()
            .ok()
            .and_then(|n| Some((n.hosts().next()?, n.prefix_len())))
            .ok_or_else(|| NetworkError::BadPodCidr(subnet.to_string()))?;
        let netns = Self::netns_path(uid);
        let netlink = self.netlink().await?;
        // A spare that cannot be bound is dropped, and its veth goes with its namespace.
        let veth = match spare.map(|s| (link::bind_netns(&s.ns, &netns), s.veth)) {
            Some((Ok(()), veth)) => veth,
            Some((Err(e), _)) => {
                debug!(pod = uid, error = %e, "cannot use the spare namespace; making one");
                link::create_netns(&netns).await?;
                None
            }
            None => {
                link::create_netns(&netns).await?;
                None
            }
        };
        // Deleted by hand meanwhile, its eth0 went with it.
        let veth = match veth {
            Some(v) if link::is_there(netlink, v.index, &v.name).await => Some(v),
            _ => None,
        };
        if veth.as_ref().is_none_or(|v| v.bridge != bridge) {
            if let Some(v) = veth {
                // On a bridge made again since: its eth0 is in the pod's namespace, and the
                // new pair needs that name and the veth's.
                link::delete_index(netlink, v.index, &v.name).await?;
            }
            let ns = std::fs::File::open(&netns).map_err(|e| NetworkError::Setup {
                what: format!("open {}", netns.display()),
                message: e.to_string(),
            })?;
            link::veth(netlink, host, &ns, bridge, true).await?;
        }
        let mapped = async {
            if ports.is_empty() {
                return Ok(());
            }
            rules::map(uid, ip, subnet, ports).await
        };
        let (configured, mapped) =
            tokio::join!(link::configure(&netns, ip, prefix, gateway), mapped);
        configured?;
        mapped?;
        Ok(netns)
    }

    /// Makes a namespace for the next pod, unless one is waiting. Called once a container
    /// has started, so as not to slow its start; a node that never runs a container pod
    /// never has one.
    pub async fn keep_spare(&self) {
        if self
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return;
        }
        let ns = match link::unbound_netns().await {
            Ok(ns) => ns,
            Err(e) => {
                debug!(error = %e, "cannot make a spare network namespace");
                return;
            }
        };
        let bridge = self.prepared.lock().await.as_ref().map(|(_, index)| *index);
        let veth = match (bridge, self.netlink().await) {
            (Some(bridge), Ok(netlink)) => {
                let name = spare_veth_name();
                // A name taken already (by chance) is not the spare's to replace.
                let made = link::veth(netlink, &name, &ns, bridge, false).await;
                match made {
                    Ok(index) => Some(SpareVeth {
                        name,
                        index,
                        bridge,
                    }),
                    Err(e) => {
                        debug!(error = %e, "cannot make a spare veth");
                        None
                    }
                }
            }
            _ => None,
        };
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        spare.get_or_insert(Spare { ns, veth });
    }

    /// Sets up the bridge and the node's rules for `subnet` once (again when the range
    /// changes, or after an attach failed); returns the bridge's index.
    async fn prepare(&self, subnet: &str) -> Result<u32, NetworkError> {
        let mut prepared = self.prepared.lock().await;
        if let Some((s, index)) = &*prepared
            && s == subnet
        {
            return Ok(*index);
        }
        let net: ipnet::IpNet = subnet
            .parse()
            .map_err(|_| NetworkError::BadPodCidr(subnet.to_string()))?;
        let gateway = net
            .hosts()
            .next()
            .ok_or_else(|| NetworkError::BadPodCidr(subnet.to_string()))?;
        let index = link::bridge(
            self.netlink().await?,
            &self.bridge,
            gateway,
            net.prefix_len(),
        )
        .await?;
        let sysctls: &[String] = if net.addr().is_ipv4() {
            &[
                "net/ipv4/ip_forward".to_string(),
                // hostPorts answer on 127.0.0.1 too: that is DNATed out of the bridge.
                format!("net/ipv4/conf/{}/route_localnet", self.bridge),
            ]
        } else {
            &["net/ipv6/conf/all/forwarding".to_string()]
        };
        for key in sysctls {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, "1").map_err(|e| NetworkError::Setup {
                what: format!("set {}", path.display()),
                message: e.to_string(),
            })?;
        }
        rules::prepare(&self.bridge, subnet).await?;
        info!(bridge = self.bridge, subnet, "pod network ready");
        *prepared = Some((subnet.to_string(), index));
        Ok(index)
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        self.state.join(format!("{uid}.json"))
    }

    fn record(&self, uid: &str) -> Record {
        std::fs::read(self.record_path(uid))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|v| Record::from_json(&v))
            .unwrap_or_default()
    }

    /// Detaches and deletes the pod's namespace (best effort; every step is idempotent).
    pub async fn detach(&self, uid: &str) {
        let record = self.record(uid);
        let v6 = record
            .ip
            .map(|ip| ip.is_ipv6())
            .or_else(|| record.subnet.as_ref().map(|s| s.contains(':')))
            .unwrap_or(false);
        if !record.ports.is_empty() {
            match record.ip {
                Some(_) => rules::unmap(uid, v6).await,
                None => rules::unmap_cni(&self.bridge, uid, v6).await,
            }
        }
        if record.ip.is_some() {
            match self.netlink().await {
                Ok(h) => {
                    let veth = record.veth.clone().unwrap_or_else(|| veth_name(uid));
                    if let Err(e) = link::delete(h, &veth).await {
                        debug!(pod = uid, error = %e, "cannot delete the pod's veth");
                    }
                }
                Err(e) => debug!(pod = uid, error = %e, "no netlink"),
            }
        } else {
            // Attached by host-local: its lease file names the pod.
            self.release_cni_lease(uid);
        }
        if let Err(e) = link::delete_netns(&Self::netns_path(uid)) {
            warn!(pod = uid, error = %e, "cannot delete the pod's network namespace");
        }
        let _ = std::fs::remove_file(self.record_path(uid));
        self.leases().release(uid);
    }

    /// Removes the lease CNI's host-local kept for pod `uid` (pods of agents that ran the
    /// CNI plugins).
    fn release_cni_lease(&self, uid: &str) {
        let dir = self.state.join("ipam").join(&self.bridge);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let holder = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if holder.lines().next().map(str::trim) == Some(uid) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Pods whose networks are recorded on disk (to clean up after a crash).
    pub fn recorded(&self) -> Vec<String> {
        std::fs::read_dir(&self.state)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".json"))
                            .map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The hub-assigned range, in the network state dir.
const SAVED_CIDR: &str = "pod-cidr";

/// Runs `cmd` to success; its standard output.
pub(crate) async fn run(cmd: &str, args: &[&str]) -> Result<String, NetworkError> {
    output(cmd, args, None).await
}

/// Runs `cmd` with `input` on its standard input, to success; its standard output.
async fn feed(cmd: &str, args: &[&str], input: &[u8]) -> Result<String, NetworkError> {
    output(cmd, args, Some(input)).await
}

async fn output(cmd: &str, args: &[&str], input: Option<&[u8]>) -> Result<String, NetworkError> {
    let failed = |message: String| NetworkError::Setup {
        what: format!("{cmd} {}", args.join(" ")),
        message,
    };
    let stdin = if input.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    };
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(stdin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input)
            .await
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_skip_the_gateway_and_reuse_a_freed_address_last() {
        let net: ipnet::IpNet = "10.88.0.0/29".parse().unwrap();
        let mut leases = Leases::default();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // .1 is the bridge's; .7 is the broadcast address.
        let taken: Vec<_> = (0..5)
            .map(|i| leases.take(&net, &format!("p{i}")).unwrap())
            .collect();
        assert_eq!(
            taken,
            [
                "10.88.0.2",
                "10.88.0.3",
                "10.88.0.4",
                "10.88.0.5",
                "10.88.0.6"
            ]
            .map(ip)
        );
        assert_eq!(leases.take(&net, "p5"), None);
        leases.release("p1");
        leases.release("p4");
        // The search goes on after the last one handed out, then wraps.
        assert_eq!(leases.take(&net, "p6"), Some(ip("10.88.0.3")));
        assert_eq!(leases.take(&net, "p7"), Some(ip("10.88.0.6")));
        // A range change: the last one of the old range does not count.
        let other: ipnet::IpNet = "10.42.0.0/30".parse().unwrap();
        assert_eq!(leases.take(&other, "p8"), Some(ip("10.42.0.2")));
        assert_eq!(leases.take(&other, "p9"), None);
    }

    #[test]
    fn a_record_reads_back_and_older_ones_have_no_address() {
        let record = Record {
            subnet: Some("10.88.0.0/24".into()),
            ip: Some("10.88.0.9".parse().unwrap()),
            ports: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: Some("127.0.0.1".parse().unwrap()),
            }],
            veth: Some("flt0123456789ab".into()),
        };
        let back = Record::from_json(&record.to_json());
        assert_eq!(back.subnet, record.subnet);
        assert_eq!(back.ip, record.ip);
        assert_eq!(back.ports, record.ports);
        assert_eq!(back.veth, record.veth);
        // As agents that ran the CNI plugins wrote them.
        let cni = Record::from_json(
            &json!({"subnet": "10.88.0.0/24", "masquerade": "node", "ports": [[8080, 80, "TCP", null]]}),
        );
        assert_eq!(cni.ip, None);
        assert_eq!(cni.veth, None, "older records name no veth");
        assert_eq!(cni.ports[0].host_ip, None);
        assert_eq!(veth_name("0123abcd-aaaa-bbbb-cccc-0123456789ab").len(), 15);
    }

    fn network(data: &Path, fixed: Option<&str>) -> PodNetwork {
        PodNetwork::new(data, "flotilla0", fixed).unwrap()
    }

    #[tokio::test]
    async fn the_hub_range_is_taken_saved_and_changed_only_without_pods() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("net");
        let net = network(dir.path(), None);
        assert_eq!(net.subnet(), None);
        let err = net.attach("uid-1", &[]).await.unwrap_err();
        assert_eq!(err.to_string(), "node has no pod CIDR yet");
        assert!(net.recorded().is_empty());
        assert_eq!(net.assign(None), Assigned::Unchanged);
        assert_eq!(net.assign(Some("bogus")), Assigned::Unchanged);
        assert_eq!(net.assign(Some("10.42.3.0/24")), Assigned::Changed);
        assert_eq!(net.assign(Some("10.42.3.0/24")), Assigned::Unchanged);
        assert_eq!(net.subnet().as_deref(), Some("10.42.3.0/24"));
        assert_eq!(
            std::fs::read_to_string(state.join(SAVED_CIDR)).unwrap(),
            "10.42.3.0/24"
        );
        // A pod holds an address: a new range, or none, waits until it is gone.
        std::fs::write(state.join("uid-2.json"), "{}").unwrap();
        assert_eq!(net.assign(Some("10.42.9.0/24")), Assigned::Deferred);
        assert_eq!(net.assign(None), Assigned::Deferred);
        assert_eq!(net.subnet().as_deref(), Some("10.42.3.0/24"));
        std::fs::remove_file(state.join("uid-2.json")).unwrap();
        // The hub has none for us: ours goes too (another node may have it now).
        assert_eq!(net.assign(None), Assigned::Changed);
        assert_eq!(net.subnet(), None);
        assert!(!state.join(SAVED_CIDR).exists());
        assert_eq!(net.assign(Some("10.42.9.0/24")), Assigned::Changed);
        // A restart reads the saved range; a --pod-cidr given then wins over it.
        assert_eq!(
            network(dir.path(), None).subnet().as_deref(),
            Some("10.42.9.0/24")
        );
        // ... and the addresses its pods hold.
        std::fs::write(
            state.join("uid-3.json"),
            r#"{"subnet": "10.42.9.0/24", "ip": "10.42.9.7", "ports": []}"#,
        )
        .unwrap();
        let restarted = network(dir.path(), None);
        assert_eq!(
            restarted
                .leases()
                .held
                .get(&"10.42.9.7".parse().unwrap())
                .map(String::as_str),
            Some("uid-3")
        );
        std::fs::remove_file(state.join("uid-3.json")).unwrap();
        let fixed = network(dir.path(), Some("192.168.5.0/24"));
        assert_eq!(fixed.subnet().as_deref(), Some("192.168.5.0/24"));
    }

    #[test]
    fn a_static_range_ignores_the_hub() {
        let dir = tempfile::tempdir().unwrap();
        let net = network(dir.path(), Some("192.168.5.0/24"));
        assert_eq!(net.assign(Some("10.42.0.0/24")), Assigned::Static);
        assert_eq!(net.subnet().as_deref(), Some("192.168.5.0/24"));
        assert!(net.is_fixed());
        assert_eq!(parse_cidr(" 10.88.0.7/24").unwrap(), "10.88.0.0/24");
        assert_eq!(
            parse_cidr("10.88.0.0").unwrap_err().to_string(),
            "--pod-cidr \"10.88.0.0\": not a CIDR (e.g. 10.88.0.0/24)"
        );
    }

    /// Runs `cmd` from this thread (so in its network namespace); its output.
    fn sh(cmd: &str) -> String {
        let out = std::process::Command::new("sh")
            .args(["-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Real netlink and iptables, in a network namespace of this test's own: two pods on a
    /// bridge reach each other, one through its hostPort on the bridge's address and on
    /// 127.0.0.1, and detaching leaves nothing behind.
    #[tokio::test]
    async fn pods_are_plumbed_by_netlink_and_unplumbed_without_a_trace() {
        assert!(
            rustix::process::geteuid().is_root(),
            "pod network tests need root (CI runs as root)"
        );
        // This test's thread, and what it runs, get a network of their own.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        sh("ip link set lo up");
        let dir = tempfile::tempdir().unwrap();
        let net = PodNetwork::new(dir.path(), "flt-test0", Some("10.77.0.0/24")).unwrap();
        let id = |n: &str| format!("{n}-{}", std::process::id());
        let (a, b) = (id("pod-a"), id("pod-b"));
        let ports = [PortMapping {
            host_port: 18080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: None,
        }];
        let pod_a = net.attach(&a, &[]).await.unwrap();
        // Pod b gets a namespace and veth made ahead, and works as pod a does.
        let spare_veth = |net: &PodNetwork| {
            let spare = net.spare.lock().unwrap();
            spare
                .as_ref()
                .map(|s| s.veth.as_ref().unwrap().name.clone())
        };
        net.keep_spare().await;
        let spare = spare_veth(&net).expect("a spare namespace");
        let links = sh("ip -o link show master flt-test0");
        assert!(
            links.contains(&spare),
            "the spare's veth is on the bridge: {links}"
        );
        let pod_b = net.attach(&b, &ports).await.unwrap();
        assert!(net.spare.lock().unwrap().is_none(), "pod b took the spare");
        assert_eq!(
            net.record(&b).veth.as_deref(),
            Some(spare.as_str()),
            "and its veth"
        );
        assert_eq!(net.record(&a).veth, Some(veth_name(&a)));
        assert_eq!(pod_a.ip.to_string(), "10.77.0.2");
        assert_eq!(pod_b.ip.to_string(), "10.77.0.3");
        let ns_a = PodNetwork::netns_name(&a);
        assert!(
            sh(&format!("ip -n {ns_a} -4 addr show eth0")).contains("inet 10.77.0.2/24"),
            "pod a's address"
        );
        assert!(sh(&format!("ip -n {ns_a} route")).contains("default via 10.77.0.1 dev eth0"));
        assert!(sh("ip -4 addr show flt-test0").contains("inet 10.77.0.1/24"));

        /// Runs `f` on a thread in the namespace at `netns`.
        fn inside<T: Send + 'static>(
            netns: &Path,
            f: impl FnOnce() -> T + Send + 'static,
        ) -> std::thread::JoinHandle<T> {
            let ns = std::fs::File::open(netns).unwrap();
            std::thread::spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
        }
        // Pod b serves on port 80 of its namespace, answering with the caller's address.
        let listener = std::sync::Arc::new(std::sync::Mutex::new(None));
        let bound = listener.clone();
        inside(&pod_b.netns, move || {
            *bound.lock().unwrap() = Some(std::net::TcpListener::bind("0.0.0.0:80").unwrap());
        })
        .join()
        .unwrap();
        let listener = listener.lock().unwrap().take().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..6 {
                use std::io::Write as _;
                let (mut conn, from) = listener.accept().unwrap();
                writeln!(conn, "{}", from.ip()).unwrap();
            }
        });
        fn ask(addr: &str) -> String {
            use std::io::Read as _;
            let mut conn = std::net::TcpStream::connect(addr).unwrap();
            let mut seen = String::new();
            conn.read_to_string(&mut seen).unwrap();
            seen.trim().to_string()
        }
        // Pod to pod across the bridge.
        let direct = inside(&pod_a.netns, || ask("10.77.0.3:80"));
        assert_eq!(direct.join().unwrap(), "10.77.0.2");
        // The node's address and loopback are masqueraded behind the bridge's.
        assert_eq!(ask("10.77.0.1:18080"), "10.77.0.1");
        assert_eq!(ask("127.0.0.1:18080"), "10.77.0.1");
        // A pod through b's hostPort: the answer goes back the way it came.
        let other = inside(&pod_a.netns, || ask("10.77.0.1:18080"));
        assert_eq!(other.join().unwrap(), "10.77.0.1");
        // ... and b through its own (hairpin).
        let hairpin = inside(&pod_b.netns, || ask("10.77.0.1:18080"));
        assert_eq!(hairpin.join().unwrap(), "10.77.0.1");
        // A spare whose veth went meanwhile: the pod gets a new pair of the same name.
        let c = id("pod-c");
        net.keep_spare().await;
        sh(&format!("ip link del {}", spare_veth(&net).unwrap()));
        let pod_c = net.attach(&c, &[]).await.unwrap();
        let from_c = inside(&pod_c.netns, || ask("10.77.0.3:80"));
        assert_eq!(from_c.join().unwrap(), "10.77.0.4");
        net.detach(&c).await;
        server.join().unwrap();

        net.detach(&a).await;
        net.detach(&b).await;
        assert!(net.recorded().is_empty());
        assert!(net.leases().held.is_empty());
        for pod in [&pod_a, &pod_b, &pod_c] {
            assert!(!pod.netns.exists(), "{}", pod.netns.display());
        }
        let links = sh("ip -o link show master flt-test0");
        assert!(links.is_empty(), "no veth is left: {links}");
        let nat = sh("iptables -w -t nat -S");
        assert!(!nat.contains("FLT-HP-"), "{nat}");
        assert!(nat.contains("-A FLT-MASQ-flt-test0 -j MASQUERADE"), "{nat}");
        // Detaching again, or what was never attached, is fine.
        net.detach(&a).await;
        assert_eq!(
            net.attach("a/b", &[]).await.unwrap_err().to_string(),
            "pod uid \"a/b\": only letters, digits and '-' can name a pod's network"
        );
    }
}
