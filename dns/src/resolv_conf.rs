//! Upstream resolvers from the node's `/etc/resolv.conf`.

use std::net::{IpAddr, SocketAddr};

/// The `nameserver` addresses of a resolv.conf text, port 53, in order and without duplicates,
/// leaving out unspecified addresses and `exclude` (the addresses we serve on: forwarding to
/// ourselves would loop). Scoped IPv6 addresses (`fe80::1%eth0`) are skipped: a bare address
/// cannot carry the scope.
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        if ip.is_unspecified() || exclude.contains(&ip) || out.contains(&addr) {
            continue;
        }
        out.push(addr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_in_order_without_ours_or_duplicates() {
        let text = "\
# generated
search default.svc.cluster.local svc.cluster.local
nameserver 10.0.0.2
nameserver 10.96.0.10 ; the agent itself
  nameserver   2001:db8::53
nameserver 10.0.0.2
nameserver fe80::1%eth0
nameserver 0.0.0.0
options ndots:5
#nameserver 1.1.1.1
nameserverx 9.9.9.9
";
        let ours: IpAddr = "10.96.0.10".parse().unwrap();
        let got = upstreams_from_resolv_conf(text, &[ours]);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.2:53".parse().unwrap(),
            "[2001:db8::53]:53".parse().unwrap(),
        ];
        assert_eq!(got, want);
    }
}
