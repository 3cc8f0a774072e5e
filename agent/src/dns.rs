//! The node DNS (`flotilla_dns`) fed from the node's copy of the cluster's Services and
//! EndpointSlices, the same names for the agent's own lookups (`Shared::names`), and the
//! resolv.conf container pods get.
//!
//! Two servers answer the same records: one for the host and other nodes (`dns_listen`,
//! default `node_ip:53`), and one for container pods on their bridge's gateway, port 53,
//! bound with `IP_FREEBIND` because the bridge gets that address only with its first pod.
//! The pod server follows the pod CIDR (a new range moves the gateway).
use crate::Shared;
use crate::discovery::Objects;
use flotilla_dns::{Endpoint, Port, Protocol, Service, ServiceKind};
use flotilla_proto::Object;
use flotilla_proto::api::{EndpointSlice, Pod, SERVICE_NAME_LABEL};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Starts the host-side server (its bind errors are the caller's to report) and the task that
/// keeps both servers' records current. Returns the addresses the host server bound.
pub async fn start(
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> anyhow::Result<Vec<SocketAddr>> {
    let explicit = shared.cfg.dns_listen.is_some();
    let listen = shared
        .cfg
        .dns_listen
        .clone()
        .unwrap_or_else(|| vec![SocketAddr::new(shared.cfg.node_ip, 53)]);
    let host = if listen.is_empty() {
        None
    } else {
        let cfg = config(&shared, listen.clone(), false);
        match flotilla_dns::start(cfg, cancel.child_token()).await {
            Ok(d) => Some(d),
            // Asked for: the agent does not start without it.
            Err(e) if explicit => anyhow::bail!("node DNS: {e}"),
            // The default (port 53 needs root, and may be taken): pods are still served.
            Err(e) => {
                warn!(error = %e, "node DNS does not answer the host (set --dns-listen); pods are still served");
                None
            }
        }
    };
    let bound = host.as_ref().map(|d| d.local_addrs()).unwrap_or_default();
    if !bound.is_empty() {
        info!(addrs = ?bound, domain = %shared.cfg.cluster_domain, "node DNS serving");
    }
    shared.tracker.spawn(serve(shared.clone(), host, cancel));
    Ok(bound)
}

fn config(shared: &Shared, listen: Vec<SocketAddr>, freebind: bool) -> flotilla_dns::Config {
    let own: Vec<IpAddr> = listen.iter().map(SocketAddr::ip).collect();
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    flotilla_dns::Config {
        domain: shared.cfg.cluster_domain.clone(),
        listen,
        upstreams: flotilla_dns::upstreams_from_resolv_conf(&resolv, &own),
        freebind,
        ..Default::default()
    }
}

/// Keeps the records of both servers current, and the pod server on the current gateway.
async fn serve(shared: Arc<Shared>, host: Option<flotilla_dns::Dns>, cancel: CancellationToken) {
    let mut objects = shared.discovery.subscribe();
    let mut subnet = match &shared.network {
        Ok(net) => Some(net.subscribe()),
        Err(_) => None,
    };
    let mut pods: Option<(flotilla_dns::Dns, CancellationToken)> = None;
    let mut gateway = None;
    let mut services = to_services(&objects.borrow_and_update());
    names(&shared, &services);
    if let Some(h) = &host {
        h.update(services.clone());
    }
    loop {
        let want = subnet.as_mut().and_then(|s| {
            s.borrow_and_update()
                .as_deref()
                .and_then(crate::network::gateway)
        });
        if want != gateway {
            if let Some((_, stop)) = pods.take() {
                stop.cancel();
            }
            gateway = want;
            if let Some(gw) = gateway {
                let stop = cancel.child_token();
                let cfg = config(&shared, vec![SocketAddr::new(gw, 53)], true);
                match flotilla_dns::start(cfg, stop.clone()).await {
                    Ok(d) => {
                        info!(addr = %SocketAddr::new(gw, 53), "node DNS serving pods");
                        d.update(services.clone());
                        pods = Some((d, stop));
                    }
                    Err(e) => {
                        warn!(error = %e, "node DNS cannot serve pods; they get the node's resolvers")
                    }
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = objects.changed() => {
                if changed.is_err() { return }
                services = to_services(&objects.borrow_and_update());
                names(&shared, &services);
                if let Some(h) = &host { h.update(services.clone()); }
                if let Some((p, _)) = &pods { p.update(services.clone()); }
            }
            // A new pod CIDR: the next turn moves the pod server to its gateway.
            moved = async {
                match subnet.as_mut() {
                    Some(s) => s.changed().await,
                    None => std::future::pending().await,
                }
            } => if moved.is_err() { subnet = None },
        }
    }
}

/// Publishes the names of `services` for the agent's own lookups (`crate::outbound`).
fn names(shared: &Shared, services: &[Service]) {
    match flotilla_dns::Names::build(&shared.cfg.cluster_domain, services) {
        Ok(names) => {
            shared.names.send_replace(Arc::new(names));
        }
        Err(e) => warn!(error = %e, "cluster names not updated"),
    }
}

/// The DNS view of the cluster's Services and their EndpointSlices (pure).
pub fn to_services(objects: &Objects) -> Vec<Service> {
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for o in objects.values() {
        if let Object::EndpointSlice(s) = o
            && let Some(svc) = s.metadata.labels.get(SERVICE_NAME_LABEL)
        {
            let ns = s.metadata.namespace.as_deref().unwrap_or("default");
            slices.entry((ns, svc.as_str())).or_default().push(s);
        }
    }
    objects
        .values()
        .filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
        .map(|svc| {
            let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
            let spec = &svc.spec;
            let kind = if spec.type_str() == "ExternalName" {
                ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default())
            } else if spec.is_headless() {
                ServiceKind::Headless
            } else {
                ServiceKind::ClusterIp(
                    spec.cluster_ip_list()
                        .iter()
                        .filter_map(|ip| ip.parse().ok())
                        .collect(),
                )
            };
            let ports = spec
                .ports
                .iter()
                .filter_map(|p| {
                    Some(Port {
                        name: p.name.clone().unwrap_or_default(),
                        protocol: protocol(p.protocol_str()),
                        port: u16::try_from(p.port).ok()?,
                    })
                })
                .collect();
            let endpoints = slices
                .get(&(ns, svc.metadata.name.as_str()))
                .into_iter()
                .flatten()
                .flat_map(|slice| {
                    let ports: Vec<Port> = slice
                        .ports
                        .iter()
                        .filter_map(|p| {
                            Some(Port {
                                name: p.name.clone().unwrap_or_default(),
                                protocol: protocol(p.protocol.as_deref().unwrap_or("TCP")),
                                port: u16::try_from(p.port?).ok()?,
                            })
                        })
                        .collect();
                    slice.endpoints.iter().map(move |e| Endpoint {
                        addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                        hostname: e.hostname.clone(),
                        ready: e.is_ready(),
                        ports: ports.clone(),
                    })
                })
                .collect();
            Service {
                namespace: ns.to_string(),
                name: svc.metadata.name.clone(),
                kind,
                ports,
                endpoints,
            }
        })
        .collect()
}

fn protocol(p: &str) -> Protocol {
    if p == "UDP" {
        Protocol::Udp
    } else {
        Protocol::Tcp
    }
}

/// A pod's `/etc/resolv.conf` (pure), as kubelet writes it:
/// - ClusterFirst: the node DNS (`cluster_dns`), searching `NS.svc.DOMAIN svc.DOMAIN DOMAIN`
///   then the node's own search domains, `ndots:5`;
/// - Default (and ClusterFirst for a hostNetwork pod, or when the node has no cluster
///   DNS): the node's resolvers (`host`), loopback ones dropped;
/// - None: only `dnsConfig`, which the other policies get merged in too.
pub fn resolv_conf(pod: &Pod, domain: &str, cluster_dns: Option<IpAddr>, host: &str) -> String {
    let spec = &pod.spec;
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster = match policy {
        "ClusterFirst" if !spec.host_network => cluster_dns,
        "ClusterFirstWithHostNet" => cluster_dns,
        _ => None,
    };
    let mut nameservers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    let host_search: Vec<String> = host
        .lines()
        .filter_map(|l| l.trim().strip_prefix("search"))
        .flat_map(|s| s.split_whitespace().map(str::to_string))
        .collect();
    if policy != "None" {
        if let Some(ip) = cluster {
            nameservers.push(ip.to_string());
            let ns = pod.namespace();
            searches.extend([
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ]);
            searches.extend(host_search);
            options.push(("ndots".into(), Some("5".into())));
        } else {
            for l in host.lines().map(str::trim) {
                if let Some(a) = l.strip_prefix("nameserver").map(str::trim) {
                    if !(a.starts_with("127.") || a == "::1") {
                        nameservers.push(a.to_string());
                    }
                } else if let Some(o) = l.strip_prefix("options") {
                    for opt in o.split_whitespace() {
                        let (n, v) = match opt.split_once(':') {
                            Some((n, v)) => (n.to_string(), Some(v.to_string())),
                            None => (opt.to_string(), None),
                        };
                        options.push((n, v));
                    }
                }
            }
            searches.extend(host_search);
        }
    }
    if let Some(c) = &spec.dns_config {
        for ns in &c.nameservers {
            if !nameservers.contains(ns) {
                nameservers.push(ns.clone());
            }
        }
        for s in &c.searches {
            if !searches.contains(s) {
                searches.push(s.clone());
            }
        }
        for o in &c.options {
            options.retain(|(n, _)| *n != o.name);
            options.push((o.name.clone(), o.value.clone()));
        }
    }
    // resolv.conf's limits: glibc reads three nameservers and, since 2.26, 32 search domains.
    nameservers.truncate(3);
    searches.truncate(32);
    let mut out = String::from("# Written by the flotilla agent.\n");
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for ns in &nameservers {
        out.push_str(&format!("nameserver {ns}\n"));
    }
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(n, v)| match v {
                Some(v) => format!("{n}:{v}"),
                None => n.clone(),
            })
            .collect();
        out.push_str(&format!("options {}\n", opts.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    const HOST: &str =
        "nameserver 127.0.0.53\nnameserver 192.168.1.1\nsearch lan\noptions edns0 timeout:2\n";

    #[test]
    fn resolv_conf_follows_the_dns_policy() {
        let gw = Some("10.42.0.1".parse().unwrap());
        let c = |spec: serde_json::Value, dns: Option<IpAddr>| {
            resolv_conf(&pod(spec), "cluster.local", dns, HOST)
        };
        let containers = serde_json::json!([{"name": "c", "image": "i"}]);
        expect_test::expect![[r#"
            # Written by the flotilla agent.
            search shop.svc.cluster.local svc.cluster.local cluster.local lan
            nameserver 10.42.0.1
            options ndots:5
        "#]]
        .assert_eq(&c(serde_json::json!({"containers": containers}), gw));
        let default = c(
            serde_json::json!({"containers": containers, "dnsPolicy": "Default"}),
            gw,
        );
        expect_test::expect![[r#"
            # Written by the flotilla agent.
            search lan
            nameserver 192.168.1.1
            options edns0 timeout:2
        "#]]
        .assert_eq(&default);
        // No cluster DNS on the node, or host networking: the node's resolvers.
        assert_eq!(
            c(serde_json::json!({"containers": containers}), None),
            default
        );
        assert_eq!(
            c(
                serde_json::json!({"containers": containers, "hostNetwork": true}),
                gw
            ),
            default
        );
        expect_test::expect![[r#"
            # Written by the flotilla agent.
            search shop.svc.cluster.local svc.cluster.local cluster.local lan
            nameserver 10.42.0.1
            options ndots:2 edns0
        "#]]
        .assert_eq(&c(
            serde_json::json!({"containers": containers, "hostNetwork": true,
                "dnsPolicy": "ClusterFirstWithHostNet",
                "dnsConfig": {"options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}),
            gw,
        ));
        expect_test::expect![[r#"
            # Written by the flotilla agent.
            search corp.example
            nameserver 1.1.1.1
        "#]]
        .assert_eq(&c(
            serde_json::json!({"containers": containers, "dnsPolicy": "None",
                "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["corp.example"]}}),
            gw,
        ));
    }

    #[test]
    fn services_take_their_slices_endpoints() {
        let objs: Vec<Object> = [
            r#"{"kind":"Service","metadata":{"name":"web","namespace":"shop"},"spec":{"clusterIP":"10.43.0.7","clusterIPs":["10.43.0.7"],"ports":[{"name":"http","port":80,"protocol":"TCP"}]}}"#,
            r#"{"kind":"Service","metadata":{"name":"db","namespace":"shop"},"spec":{"clusterIP":"None","ports":[{"port":5432}]}}"#,
            r#"{"kind":"Service","metadata":{"name":"ext","namespace":"shop"},"spec":{"type":"ExternalName","externalName":"db.example.com"}}"#,
            r#"{"kind":"EndpointSlice","metadata":{"name":"db-1","namespace":"shop","labels":{"kubernetes.io/service-name":"db"}},"addressType":"IPv4","endpoints":[{"addresses":["10.42.0.5"],"hostname":"db-0","conditions":{"ready":true}},{"addresses":["10.42.0.6"],"conditions":{"ready":false}}],"ports":[{"name":"","port":5432,"protocol":"TCP"}]}"#,
            r#"{"kind":"EndpointSlice","metadata":{"name":"db-x","namespace":"other","labels":{"kubernetes.io/service-name":"db"}},"addressType":"IPv4","endpoints":[{"addresses":["10.42.1.5"]}]}"#,
        ]
        .iter()
        .map(|j| Object::from_json_str(j).unwrap())
        .collect();
        let objects: Objects = Arc::new(objs.into_iter().map(|o| (o.key(), o)).collect());
        let services = to_services(&objects);
        let by = |n: &str| services.iter().find(|s| s.name == n).unwrap();
        assert_eq!(
            by("web").kind,
            ServiceKind::ClusterIp(vec!["10.43.0.7".parse().unwrap()])
        );
        assert!(by("web").endpoints.is_empty());
        assert_eq!(
            by("ext").kind,
            ServiceKind::ExternalName("db.example.com".into())
        );
        let db = by("db");
        assert_eq!(db.kind, ServiceKind::Headless);
        let eps: Vec<_> = db
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].to_string(),
                    e.hostname.clone(),
                    e.ready,
                    e.ports[0].port,
                )
            })
            .collect();
        assert_eq!(
            eps,
            [
                ("10.42.0.5".into(), Some("db-0".into()), true, 5432),
                ("10.42.0.6".into(), None, false, 5432)
            ]
        );
    }
}
