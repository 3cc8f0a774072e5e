//! The node's iptables (nat table) rules for pods: one masquerade for the pod CIDR's way
//! out, and each pod's hostPorts.
//!
//! hostPorts: `FLT-HOSTPORTS`, jumped to from PREROUTING and OUTPUT for traffic to the
//! node's own addresses, jumps to one chain per pod (`FLT-HP-<hash of its uid>`) that DNATs
//! each mapped port to the pod. Connections that would not find their way back after the
//! DNAT (from pods on the bridge, the mapped pod too through hairpin; from the node's
//! loopback) are marked and masqueraded behind the bridge's address by `FLT-HOSTPORTS-MASQ`
//! in POSTROUTING. A pod's chain is written and removed with one `iptables-restore
//! --noflush` each.
use super::{NetworkError, PortMapping, run};
use sha2::Digest as _;
use std::net::IpAddr;
use tracing::info;

const HOSTPORTS: &str = "FLT-HOSTPORTS";
const HOSTPORTS_MASQ: &str = "FLT-HOSTPORTS-MASQ";
/// Marks a hostPort connection to masquerade (a bit of its own: kube-proxy uses 0x4000 and
/// 0x8000, CNI's portmap 0x2000).
const MARK: &str = "0x1000/0x1000";

fn iptables(v6: bool) -> &'static str {
    if v6 { "ip6tables" } else { "iptables" }
}

async fn nat(v6: bool, args: &[&str]) -> Result<String, NetworkError> {
    run(iptables(v6), &[&["-w", "-t", "nat"][..], args].concat()).await
}

/// Appends `rule` to `chain` unless it is there.
async fn ensure(v6: bool, chain: &str, rule: &[&str]) -> Result<(), NetworkError> {
    if nat(v6, &[&["-C", chain][..], rule].concat()).await.is_err() {
        nat(v6, &[&["-A", chain][..], rule].concat()).await?;
    }
    Ok(())
}

/// Sets up the node's rules for `subnet` on bridge `bridge`: pods reach beyond the node from
/// its address (one chain for the node, not one per pod), and hostPorts have their chains.
/// Left in place when the agent stops, so running pods keep their way out; an agent that
/// starts again finds and reuses them.
pub async fn prepare(bridge: &str, subnet: &str) -> Result<(), NetworkError> {
    let v6 = subnet.contains(':');
    let multicast = if v6 { "ff00::/8" } else { "224.0.0.0/4" };
    let chain = format!("FLT-MASQ-{bridge}");
    // The chains may be there from an earlier run.
    let _ = nat(v6, &["-N", &chain]).await;
    nat(v6, &["-F", &chain]).await?;
    nat(v6, &["-A", &chain, "-d", subnet, "-j", "RETURN"]).await?;
    nat(v6, &["-A", &chain, "-d", multicast, "-j", "RETURN"]).await?;
    nat(v6, &["-A", &chain, "-j", "MASQUERADE"]).await?;
    // Jumps to the chain for other ranges (an earlier range, or an earlier run's) go.
    let listed = nat(v6, &["-S", "POSTROUTING"]).await.unwrap_or_default();
    for rule in listed.lines() {
        let words: Vec<&str> = rule.split_whitespace().collect();
        let ours = words.ends_with(&["-j", chain.as_str()]) && words.first() == Some(&"-A");
        if ours && !words.windows(2).any(|w| w == ["-s", subnet]) {
            let _ = nat(v6, &[&["-D"][..], &words[1..]].concat()).await;
        }
    }
    ensure(v6, "POSTROUTING", &["-s", subnet, "-j", &chain]).await?;

    let _ = nat(v6, &["-N", HOSTPORTS]).await;
    let _ = nat(v6, &["-N", HOSTPORTS_MASQ]).await;
    nat(v6, &["-F", HOSTPORTS_MASQ]).await?;
    nat(
        v6,
        &[
            "-A",
            HOSTPORTS_MASQ,
            "-m",
            "mark",
            "--mark",
            MARK,
            "-j",
            "MASQUERADE",
        ],
    )
    .await?;
    let local = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", HOSTPORTS];
    ensure(v6, "PREROUTING", &local).await?;
    ensure(v6, "OUTPUT", &local).await?;
    ensure(v6, "POSTROUTING", &["-j", HOSTPORTS_MASQ]).await?;
    info!(subnet, chain, "pods masquerade behind the node's address");
    Ok(())
}

/// The chain of pod `uid`'s hostPorts.
fn chain(uid: &str) -> String {
    let hash = hex::encode(sha2::Sha256::digest(uid.as_bytes()));
    format!("FLT-HP-{}", &hash[..16])
}

/// The `iptables-restore` input that maps `ports` on the node to the pod `uid` at `ip` in
/// `subnet`.
fn mapping(uid: &str, ip: IpAddr, subnet: &str, ports: &[PortMapping]) -> String {
    let chain = chain(uid);
    let mut rules = format!("*nat\n:{chain} - [0:0]\n");
    for p in ports {
        let proto = p.protocol.to_lowercase();
        let to = match ip {
            IpAddr::V4(_) => format!("{ip}:{}", p.container_port),
            IpAddr::V6(_) => format!("[{ip}]:{}", p.container_port),
        };
        let host = p
            .host_ip
            .filter(|h| !h.is_unspecified())
            .map(|h| format!(" -d {h}"))
            .unwrap_or_default();
        let rule = format!(
            "-A {chain} -p {proto} -m {proto}{host} --dport {}",
            p.host_port
        );
        // Pods on the bridge (this one too, through hairpin) would have the answer go to
        // them straight, not back through the DNAT.
        rules += &format!("{rule} -s {subnet} -j MARK --set-xmark {MARK}\n");
        if ip.is_ipv4() {
            rules += &format!("{rule} -s 127.0.0.0/8 -j MARK --set-xmark {MARK}\n");
        }
        rules += &format!("{rule} -j DNAT --to-destination {to}\n");
    }
    rules += &format!("-A {HOSTPORTS} -m comment --comment \"pod {uid}\" -j {chain}\nCOMMIT\n");
    rules
}

/// Maps `ports` on the node to pod `uid` at `ip` in `subnet`.
pub async fn map(
    uid: &str,
    ip: IpAddr,
    subnet: &str,
    ports: &[PortMapping],
) -> Result<(), NetworkError> {
    restore(ip.is_ipv6(), &mapping(uid, ip, subnet, ports)).await
}

/// Removes pod `uid`'s hostPorts (best effort: what is gone already is fine).
pub async fn unmap(uid: &str, v6: bool) {
    let chain = chain(uid);
    let jump = format!("{HOSTPORTS} -m comment --comment \"pod {uid}\" -j {chain}");
    let all = format!("*nat\n-D {jump}\n-F {chain}\n-X {chain}\nCOMMIT\n");
    if restore(v6, &all).await.is_err() {
        // Part of it is gone already: each step on its own.
        let _ = restore(v6, &format!("*nat\n-D {jump}\nCOMMIT\n")).await;
        let _ = nat(v6, &["-F", &chain]).await;
        let _ = nat(v6, &["-X", &chain]).await;
    }
}

/// Removes the hostPorts CNI's portmap plugin set up for pod `uid` on network `network`
/// (for pods attached by agents that ran the CNI plugins).
pub async fn unmap_cni(network: &str, uid: &str, v6: bool) {
    let Ok(listed) = nat(v6, &["-S", "CNI-HOSTPORT-DNAT"]).await else {
        return;
    };
    let tag = format!("name: \\\"{network}\\\" id: \\\"{uid}\\\"");
    for rule in listed.lines().filter(|r| r.contains(&tag)) {
        let Some(rest) = rule.strip_prefix("-A ") else {
            continue;
        };
        let _ = restore(v6, &format!("*nat\n-D {rest}\nCOMMIT\n")).await;
        if let Some(target) = rest
            .rsplit(" -j ")
            .next()
            .filter(|t| t.starts_with("CNI-DN-"))
        {
            let _ = nat(v6, &["-F", target]).await;
            let _ = nat(v6, &["-X", target]).await;
        }
    }
}

async fn restore(v6: bool, rules: &str) -> Result<(), NetworkError> {
    let tool = format!("{}-restore", iptables(v6));
    super::feed(&tool, &["-w", "--noflush"], rules.as_bytes())
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_host_ports_are_one_chain() {
        let ports = [
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "TCP".into(),
                host_ip: None,
            },
            PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: "UDP".into(),
                host_ip: Some("192.168.1.2".parse().unwrap()),
            },
        ];
        let chain = chain("uid-1");
        assert_eq!(chain.len(), "FLT-HP-".len() + 16);
        assert_ne!(chain, super::chain("uid-2"));
        let expected = format!(
            "*nat\n:{chain} - [0:0]\n\
             -A {chain} -p tcp -m tcp --dport 8080 -s 10.88.0.0/24 -j MARK --set-xmark 0x1000/0x1000\n\
             -A {chain} -p tcp -m tcp --dport 8080 -s 127.0.0.0/8 -j MARK --set-xmark 0x1000/0x1000\n\
             -A {chain} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.5:80\n\
             -A {chain} -p udp -m udp -d 192.168.1.2 --dport 5353 -s 10.88.0.0/24 -j MARK --set-xmark 0x1000/0x1000\n\
             -A {chain} -p udp -m udp -d 192.168.1.2 --dport 5353 -s 127.0.0.0/8 -j MARK --set-xmark 0x1000/0x1000\n\
             -A {chain} -p udp -m udp -d 192.168.1.2 --dport 5353 -j DNAT --to-destination 10.88.0.5:53\n\
             -A FLT-HOSTPORTS -m comment --comment \"pod uid-1\" -j {chain}\nCOMMIT\n"
        );
        assert_eq!(
            mapping(
                "uid-1",
                "10.88.0.5".parse().unwrap(),
                "10.88.0.0/24",
                &ports
            ),
            expected
        );
        // IPv6: the address in brackets, and no loopback (it does not route to a bridge).
        let v6 = mapping(
            "uid-1",
            "fd00::5".parse().unwrap(),
            "fd00::/64",
            &ports[..1],
        );
        assert!(v6.contains("--to-destination [fd00::5]:80\n"), "{v6}");
        assert!(!v6.contains("127.0.0.0/8"), "{v6}");
    }
}
