//! Pod networking for containers: one network namespace per pod, attached to the node's
//! bridge by the standard CNI plugins (Debian's `containernetworking-plugins`: `bridge` with
//! `host-local` addresses from the node's pod CIDR and outbound NAT, `portmap` for hostPort,
//! `loopback` for `lo`).
//!
//! The agent is the CNI runtime: it runs the plugins in order for ADD and in reverse for
//! DEL, passing each the previous result. What ADD was given and returned is kept in
//! `<data>/net/<pod uid>.json`, so an agent that crashed can DEL what it left behind.
//!
//! The pod CIDR is the agent's `--pod-cidr` if given, else the one the hub assigned
//! (`spec.podCIDR` of the node), kept in `<data>/net/pod-cidr` for restarts without the hub.
//! Until there is one, attaching fails ("node has no pod CIDR yet") and the pod retries. A
//! new range from the hub is taken only while no pod is attached: addresses already handed
//! out stay valid until their pods go.
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{debug, info, warn};

const CNI_VERSION: &str = "1.0.0";
const PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni"];

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("the CNI plugins are not installed (looked in {0}); run scripts/setup")]
    NoPlugins(String),
    #[error("cni plugin {plugin} {command}: {message}")]
    Plugin {
        plugin: String,
        command: String,
        message: String,
    },
    #[error("{what}: {message}")]
    Setup { what: String, message: String },
    #[error("node has no pod CIDR yet")]
    NoPodCidr,
    #[error("--pod-cidr {0:?}: not a CIDR (e.g. 10.88.0.0/24)")]
    BadPodCidr(String),
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

/// A hostPort mapping, as CNI's `portMappings` capability spells it.
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
    plugins: PathBuf,
    bridge: String,
    /// The pod CIDR. Held while an attach picks it and records the pod, so a change of range
    /// never races an attach.
    subnet: Mutex<Option<String>>,
    /// From `--pod-cidr`: never replaced by the hub's.
    fixed: bool,
    /// A range from the hub waiting for the node's pods to go (logged once).
    deferred: Mutex<Option<String>>,
    state: PathBuf,
    /// The range in use, for those who follow it (the node DNS serves pods on its gateway).
    changes: tokio::sync::watch::Sender<Option<String>>,
    /// The range the node-wide masquerade is set up for.
    masquerading: tokio::sync::Mutex<Option<String>>,
}

/// The bridge's address in a pod CIDR: the first host, as host-local IPAM makes it.
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

impl PodNetwork {
    /// `bridge` names the node's bridge (and the CNI network); `fixed` is the node's
    /// `--pod-cidr`, if given (otherwise the hub's range, saved in the data dir, is used).
    pub fn new(
        data_dir: &Path,
        bridge: &str,
        fixed: Option<&str>,
    ) -> Result<PodNetwork, NetworkError> {
        let plugins = PLUGIN_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("bridge").is_file())
            .ok_or_else(|| NetworkError::NoPlugins(PLUGIN_DIRS.join(", ")))?;
        Self::open(plugins, data_dir, bridge, fixed)
    }

    fn open(
        plugins: PathBuf,
        data_dir: &Path,
        bridge: &str,
        fixed: Option<&str>,
    ) -> Result<PodNetwork, NetworkError> {
        let fixed = fixed.map(parse_cidr).transpose()?;
        let state = data_dir.join("net");
        std::fs::create_dir_all(state.join("ipam")).map_err(|e| NetworkError::Setup {
            what: format!("create {}", state.display()),
            message: e.to_string(),
        })?;
        let saved = || {
            let text = std::fs::read_to_string(state.join(SAVED_CIDR)).ok()?;
            parse_cidr(&text).ok()
        };
        let subnet = fixed.clone().or_else(saved);
        Ok(PodNetwork {
            plugins,
            bridge: bridge.to_string(),
            changes: tokio::sync::watch::channel(subnet.clone()).0,
            subnet: Mutex::new(subnet),
            fixed: fixed.is_some(),
            deferred: Mutex::new(None),
            state,
            masquerading: tokio::sync::Mutex::new(None),
        })
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

    /// The plugin chain for this node; `ports` go to portmap's runtime config. `pod_masq` is
    /// for pods attached by agents that had the bridge plugin masquerade each pod (their DEL
    /// removes its per-pod chain); the node-wide [`Self::masquerade`] does that job now.
    fn chain(&self, subnet: &str, ports: &[PortMapping], pod_masq: bool) -> Vec<(String, Value)> {
        let mappings: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol.to_lowercase(),
                });
                if let Some(ip) = p.host_ip {
                    m["hostIP"] = json!(ip.to_string());
                }
                m
            })
            .collect();
        let mut chain = vec![(
            "bridge".to_string(),
            json!({
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": pod_masq,
                "hairpinMode": true,
                // The bridge's gateway address follows the pod CIDR when that changes (or
                // when a bridge of an earlier run is found).
                "forceAddress": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": self.state.join("ipam"),
                },
            }),
        )];
        if !mappings.is_empty() {
            chain.push((
                "portmap".to_string(),
                json!({
                    "type": "portmap",
                    "capabilities": {"portMappings": true},
                    "snat": true,
                    "runtimeConfig": {"portMappings": mappings},
                }),
            ));
        }
        chain
    }

    /// Creates the pod's network namespace and attaches it; returns the pod's address.
    pub async fn attach(
        &self,
        uid: &str,
        ports: &[PortMapping],
    ) -> Result<Attachment, NetworkError> {
        // A namespace left by an earlier attempt for this pod is detached and replaced.
        if self.record_path(uid).exists() || Self::netns_path(uid).exists() {
            self.detach(uid).await;
        }
        let record = |subnet: &str| json!({"subnet": subnet, "masquerade": "node", "ports": ports.iter().map(|p| json!([p.host_port, p.container_port, p.protocol, p.host_ip.map(|i| i.to_string())])).collect::<Vec<_>>()});
        // The range is picked and the pod recorded under the lock `assign` takes, so the
        // range cannot change under a pod being attached.
        let subnet = {
            let subnet = self.subnet.lock().unwrap_or_else(|p| p.into_inner());
            let subnet = subnet.clone().ok_or(NetworkError::NoPodCidr)?;
            if let Err(e) = std::fs::write(self.record_path(uid), record(&subnet).to_string()) {
                warn!(error = %e, "cannot record the pod's network");
            }
            subnet
        };
        let name = Self::netns_name(uid);
        let netns = Self::netns_path(uid);
        let chain = self.chain(&subnet, ports, false);
        if let Err(e) = run("ip", &["netns", "add", &name]).await {
            let _ = std::fs::remove_file(self.record_path(uid));
            return Err(e);
        }
        let attached = async {
            self.masquerade(&subnet).await?;
            // `lo` and `eth0` are set up side by side: neither plugin touches the other's.
            let lo = json!({"type": "loopback"});
            let lo = self.exec("loopback", "ADD", uid, &netns, "lo", &lo, None);
            let eth0 = async {
                let mut prev: Option<Value> = None;
                for (plugin, conf) in &chain {
                    let result = self
                        .exec(plugin, "ADD", uid, &netns, "eth0", conf, prev.as_ref())
                        .await?;
                    prev = Some(result);
                }
                Ok::<_, NetworkError>(prev)
            };
            let (lo, prev) = tokio::join!(lo, eth0);
            lo?;
            let prev = prev?;
            let result = prev.unwrap_or(Value::Null);
            let ip = result["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse::<IpAddr>().ok())
                .ok_or_else(|| NetworkError::Plugin {
                    plugin: "bridge".into(),
                    command: "ADD".into(),
                    message: format!("no address in its result {result}"),
                })?;
            Ok::<_, NetworkError>(ip)
        }
        .await;
        match attached {
            Ok(ip) => {
                debug!(pod = uid, %ip, "pod network attached");
                Ok(Attachment { netns, ip })
            }
            Err(e) => {
                self.detach(uid).await;
                Err(e)
            }
        }
    }

    /// Sets up the node's masquerade for `subnet` once (again when the range changes): pods
    /// reach beyond the node from its address, as the bridge plugin's `ipMasq` would have it,
    /// but with one chain for the node rather than one added (nine iptables runs) and removed
    /// on every pod start and stop. Left in place when the agent stops, so running pods keep
    /// their way out; an agent that starts again finds and reuses it.
    async fn masquerade(&self, subnet: &str) -> Result<(), NetworkError> {
        let mut done = self.masquerading.lock().await;
        if done.as_deref() == Some(subnet) {
            return Ok(());
        }
        let iptables = if subnet.contains(':') {
            "ip6tables"
        } else {
            "iptables"
        };
        let multicast = if subnet.contains(':') {
            "ff00::/8"
        } else {
            "224.0.0.0/4"
        };
        let chain = format!("FLT-MASQ-{}", self.bridge);
        async fn nat(iptables: &str, args: &[&str]) -> Result<String, NetworkError> {
            run(iptables, &[&["-w", "-t", "nat"][..], args].concat()).await
        }
        // The chain may be there from an earlier run.
        let _ = nat(iptables, &["-N", &chain]).await;
        nat(iptables, &["-F", &chain]).await?;
        nat(iptables, &["-A", &chain, "-d", subnet, "-j", "RETURN"]).await?;
        nat(iptables, &["-A", &chain, "-d", multicast, "-j", "RETURN"]).await?;
        nat(iptables, &["-A", &chain, "-j", "MASQUERADE"]).await?;
        // Jumps to the chain for other ranges (an earlier range, or an earlier run's) go.
        let listed = nat(iptables, &["-S", "POSTROUTING"])
            .await
            .unwrap_or_default();
        for rule in listed.lines() {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let ours = words.ends_with(&["-j", chain.as_str()]) && words.first() == Some(&"-A");
            if ours && !words.windows(2).any(|w| w == ["-s", subnet]) {
                let _ = nat(iptables, &[&["-D"][..], &words[1..]].concat()).await;
            }
        }
        let jump = |op| [op, "POSTROUTING", "-s", subnet, "-j", &chain];
        if nat(iptables, &jump("-C")).await.is_err() {
            nat(iptables, &jump("-A")).await?;
        }
        info!(subnet, chain, "pods masquerade behind the node's address");
        *done = Some(subnet.to_string());
        Ok(())
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        self.state.join(format!("{uid}.json"))
    }

    /// Detaches and deletes the pod's namespace (best effort; every step is idempotent).
    pub async fn detach(&self, uid: &str) {
        let netns = Self::netns_path(uid);
        let record = std::fs::read(self.record_path(uid))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .unwrap_or_default();
        // The range it was attached from (records of older agents have none: the current).
        let subnet = record["subnet"]
            .as_str()
            .map(str::to_string)
            .or_else(|| self.subnet())
            .unwrap_or_default();
        let ports: Vec<PortMapping> = record["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|p| {
                Some(PortMapping {
                    host_port: p[0].as_u64()? as u16,
                    container_port: p[1].as_u64()? as u16,
                    protocol: p[2].as_str()?.to_string(),
                    host_ip: p[3].as_str().and_then(|s| s.parse().ok()),
                })
            })
            .collect();
        let pod_masq = record["masquerade"].as_str() != Some("node");
        for (plugin, conf) in self.chain(&subnet, &ports, pod_masq).iter().rev() {
            if let Err(e) = self
                .exec(plugin, "DEL", uid, &netns, "eth0", conf, None)
                .await
            {
                debug!(pod = uid, error = %e, "cni DEL failed");
            }
        }
        if netns.exists()
            && let Err(e) = run("ip", &["netns", "delete", &Self::netns_name(uid)]).await
        {
            warn!(pod = uid, error = %e, "cannot delete the pod's network namespace");
        }
        let _ = std::fs::remove_file(self.record_path(uid));
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

    #[allow(clippy::too_many_arguments)]
    async fn exec(
        &self,
        plugin: &str,
        command: &str,
        uid: &str,
        netns: &Path,
        ifname: &str,
        conf: &Value,
        prev: Option<&Value>,
    ) -> Result<Value, NetworkError> {
        let mut conf = conf.clone();
        conf["cniVersion"] = json!(CNI_VERSION);
        conf["name"] = json!(self.bridge);
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let err = |message: String| NetworkError::Plugin {
            plugin: plugin.to_string(),
            command: command.to_string(),
            message,
        };
        let mut child = Command::new(self.plugins.join(plugin))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", uid)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.plugins)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(conf.to_string().as_bytes())
                .await
                .map_err(|e| err(e.to_string()))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            // Plugins report errors as JSON {code, msg, details} on stdout.
            let text = String::from_utf8_lossy(&out.stdout);
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["msg"].as_str().map(str::to_string))
                .unwrap_or_else(|| {
                    format!(
                        "{} {}",
                        text.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                });
            return Err(err(msg));
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| err(format!("invalid result: {e}")))
    }
}

/// The hub-assigned range, in the network state dir.
const SAVED_CIDR: &str = "pod-cidr";

/// Runs `cmd` to success; its standard output.
pub(crate) async fn run(cmd: &str, args: &[&str]) -> Result<String, NetworkError> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .await
        .map_err(|e| NetworkError::Setup {
            what: format!("{cmd} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetworkError::Setup {
            what: format!("{cmd} {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_has_portmap_only_with_host_ports() {
        let net = PodNetwork {
            plugins: "/x".into(),
            bridge: "flotilla0".into(),
            subnet: Mutex::new(None),
            fixed: false,
            deferred: Mutex::new(None),
            state: "/s".into(),
            changes: tokio::sync::watch::channel(None).0,
            masquerading: tokio::sync::Mutex::new(None),
        };
        let names = |c: Vec<(String, Value)>| c.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(net.chain("10.88.0.0/24", &[], false)), ["bridge"]);
        // The node masquerades for its pods; only pods of older agents have their own chain.
        assert_eq!(net.chain("10.88.0.0/24", &[], false)[0].1["ipMasq"], false);
        assert_eq!(net.chain("10.88.0.0/24", &[], true)[0].1["ipMasq"], true);
        let ports = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: None,
        }];
        let chain = net.chain("10.88.0.0/24", &ports, false);
        assert_eq!(
            chain[1].1["runtimeConfig"]["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert_eq!(
            chain[0].1["ipam"]["ranges"],
            json!([[{"subnet": "10.88.0.0/24"}]])
        );
    }

    fn network(data: &Path, fixed: Option<&str>) -> PodNetwork {
        PodNetwork::open("/x".into(), data, "flotilla0", fixed).unwrap()
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
}
