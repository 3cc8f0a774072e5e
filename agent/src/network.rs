//! Pod networking for containers: one network namespace per pod, attached to the node's
//! bridge by the standard CNI plugins (Debian's `containernetworking-plugins`: `bridge` with
//! `host-local` addresses from the node's pod CIDR and outbound NAT, `portmap` for hostPort,
//! `loopback` for `lo`).
//!
//! The agent is the CNI runtime: it runs the plugins in order for ADD and in reverse for
//! DEL, passing each the previous result. What ADD was given and returned is kept in
//! `<data>/net/<pod uid>.json`, so an agent that crashed can DEL what it left behind.
use serde_json::{Value, json};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::{debug, warn};

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
    subnet: String,
    state: PathBuf,
}

impl PodNetwork {
    /// `bridge` names the node's bridge (and the CNI network); `subnet` is the node's pod
    /// CIDR.
    pub fn new(data_dir: &Path, bridge: &str, subnet: &str) -> Result<PodNetwork, NetworkError> {
        let plugins = PLUGIN_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("bridge").is_file())
            .ok_or_else(|| NetworkError::NoPlugins(PLUGIN_DIRS.join(", ")))?;
        let state = data_dir.join("net");
        std::fs::create_dir_all(state.join("ipam")).map_err(|e| NetworkError::Setup {
            what: format!("create {}", state.display()),
            message: e.to_string(),
        })?;
        Ok(PodNetwork {
            plugins,
            bridge: bridge.to_string(),
            subnet: subnet.to_string(),
            state,
        })
    }

    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    fn netns_name(uid: &str) -> String {
        format!("flt-{}", &uid[..uid.len().min(24)])
    }

    pub fn netns_path(uid: &str) -> PathBuf {
        Path::new("/run/netns").join(Self::netns_name(uid))
    }

    /// The plugin chain for this node; `ports` go to portmap's runtime config.
    fn chain(&self, ports: &[PortMapping]) -> Vec<(String, Value)> {
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
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": self.subnet}]],
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
        let name = Self::netns_name(uid);
        run("ip", &["netns", "add", &name]).await?;
        let netns = Self::netns_path(uid);
        let chain = self.chain(ports);
        let record = json!({"ports": ports.iter().map(|p| json!([p.host_port, p.container_port, p.protocol, p.host_ip.map(|i| i.to_string())])).collect::<Vec<_>>()});
        if let Err(e) = std::fs::write(self.record_path(uid), record.to_string()) {
            warn!(error = %e, "cannot record the pod's network");
        }
        let attached = async {
            self.exec(
                "loopback",
                "ADD",
                uid,
                &netns,
                "lo",
                &json!({"type": "loopback"}),
                None,
            )
            .await?;
            let mut prev: Option<Value> = None;
            for (plugin, conf) in &chain {
                let result = self
                    .exec(plugin, "ADD", uid, &netns, "eth0", conf, prev.as_ref())
                    .await?;
                prev = Some(result);
            }
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

    fn record_path(&self, uid: &str) -> PathBuf {
        self.state.join(format!("{uid}.json"))
    }

    /// Detaches and deletes the pod's namespace (best effort; every step is idempotent).
    pub async fn detach(&self, uid: &str) {
        let netns = Self::netns_path(uid);
        let ports: Vec<PortMapping> = std::fs::read(self.record_path(uid))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["ports"].as_array().cloned())
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
        for (plugin, conf) in self.chain(&ports).iter().rev() {
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

async fn run(cmd: &str, args: &[&str]) -> Result<(), NetworkError> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .await
        .map_err(|e| NetworkError::Setup {
            what: format!("{cmd} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
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
            subnet: "10.88.0.0/24".into(),
            state: "/s".into(),
        };
        let names = |c: Vec<(String, Value)>| c.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        assert_eq!(names(net.chain(&[])), ["bridge"]);
        let ports = [PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "TCP".into(),
            host_ip: None,
        }];
        let chain = net.chain(&ports);
        assert_eq!(
            chain[1].1["runtimeConfig"]["portMappings"],
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        );
        assert_eq!(
            chain[0].1["ipam"]["ranges"],
            json!([[{"subnet": "10.88.0.0/24"}]])
        );
    }
}
