//! What a Service and an EndpointSlice may say: the checks the API server makes, and the
//! fields this release refuses rather than ignores.
use crate::api::{CLUSTER_IP_NONE, EndpointSlice, IntOrString, Service, ServicePort};
use std::collections::BTreeSet;
use std::net::IpAddr;

/// Kubernetes' default `--service-node-port-range`.
pub const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;

/// The types a Service may have.
const TYPES: [&str; 4] = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

pub fn validate(svc: &Service) -> Result<(), String> {
    check_dns1035("metadata.name", &svc.metadata.name)?;
    let s = &svc.spec;
    let kind = s.type_str();
    if !TYPES.contains(&kind) {
        return Err(format!(
            "spec.type: Unsupported value: {kind:?}: supported values: {}",
            TYPES.map(|t| format!("\"{t}\"")).join(", ")
        ));
    }
    refuse_unsupported(svc)?;
    if kind == "ExternalName" {
        let name = s.external_name.as_deref().unwrap_or_default();
        if name.is_empty() {
            return Err("spec.externalName: Required value: for type ExternalName".into());
        }
        crate::manifest::check_name("spec.externalName", name.trim_end_matches('.'))?;
        if s.cluster_ip.as_deref().is_some_and(|ip| !ip.is_empty()) {
            return Err(
                "spec.clusterIP: Invalid value: must be empty for type ExternalName".into(),
            );
        }
    } else if s.external_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return Err(format!(
            "spec.externalName: Invalid value: may only be set for type ExternalName, not {kind}"
        ));
    }
    match s.cluster_ip.as_deref() {
        None | Some("") => {}
        Some(CLUSTER_IP_NONE) if kind == "ClusterIP" => {}
        Some(CLUSTER_IP_NONE) => {
            return Err(format!(
                "spec.clusterIP: Invalid value: \"None\": may only be set for type ClusterIP, not {kind}"
            ));
        }
        Some(ip) => match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => {}
            Ok(IpAddr::V6(_)) => {
                return Err(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: this cluster is single-stack IPv4"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "spec.clusterIP: Invalid value: {ip:?}: must be a valid IP address or \"None\""
                ));
            }
        },
    }
    match s.cluster_ips.as_slice() {
        [] => {}
        [first]
            if s.cluster_ip
                .as_deref()
                .is_none_or(|ip| ip.is_empty() || ip == first) => {}
        [_] => {
            return Err("spec.clusterIPs[0]: Invalid value: must match spec.clusterIP".into());
        }
        _ => {
            return Err(
                "spec.clusterIPs: Invalid value: this cluster is single-stack IPv4 (one address)"
                    .into(),
            );
        }
    }
    if s.ports.is_empty() && kind != "ExternalName" && !s.is_headless() {
        return Err("spec.ports: Required value".into());
    }
    validate_ports(svc)?;
    for (k, v) in &s.selector {
        crate::manifest::check_label(k, v).map_err(|m| format!("spec.selector: {m}"))?;
    }
    match s.session_affinity.as_deref() {
        None | Some("None") => {}
        Some("ClientIP") => {
            let timeout = s
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            if let Some(t) = timeout
                && !(1..=86400).contains(&t)
            {
                return Err(format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: {t}: must be greater than 0 and less than or equal to 86400"
                ));
            }
        }
        Some(other) => {
            return Err(format!(
                "spec.sessionAffinity: Unsupported value: {other:?}: supported values: \"ClientIP\", \"None\""
            ));
        }
    }
    Ok(())
}

/// Fields Kubernetes has and Flotilla does not do yet: an error, so nothing is silently lost.
fn refuse_unsupported(svc: &Service) -> Result<(), String> {
    let s = &svc.spec;
    let not_yet = |field: &str, why: &str| Err(format!("{field}: not supported yet: {why}"));
    if !s.external_ips.is_empty() {
        return not_yet("spec.externalIPs", "use type NodePort or LoadBalancer");
    }
    if !s.load_balancer_source_ranges.is_empty() {
        return not_yet("spec.loadBalancerSourceRanges", "no source filtering");
    }
    if s.load_balancer_class.is_some() {
        return not_yet(
            "spec.loadBalancerClass",
            "LoadBalancer services are served by the nodes labelled as gateways",
        );
    }
    if s.load_balancer_ip.is_some() {
        return not_yet(
            "spec.loadBalancerIP",
            "the gateway nodes' addresses are used",
        );
    }
    for (field, value) in [
        ("spec.externalTrafficPolicy", &s.external_traffic_policy),
        ("spec.internalTrafficPolicy", &s.internal_traffic_policy),
    ] {
        match value.as_deref() {
            None | Some("Cluster") => {}
            Some("Local") => return not_yet(field, "\"Local\" (only \"Cluster\")"),
            Some(other) => {
                return Err(format!(
                    "{field}: Unsupported value: {other:?}: supported values: \"Cluster\", \"Local\""
                ));
            }
        }
    }
    for (i, family) in s.ip_families.iter().enumerate() {
        if family != "IPv4" {
            return Err(format!(
                "spec.ipFamilies[{i}]: Invalid value: {family:?}: this cluster is single-stack IPv4"
            ));
        }
    }
    match s.ip_family_policy.as_deref() {
        None | Some("SingleStack") | Some("PreferDualStack") => Ok(()),
        Some("RequireDualStack") => Err(
            "spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is single-stack IPv4"
                .into(),
        ),
        Some(other) => Err(format!(
            "spec.ipFamilyPolicy: Unsupported value: {other:?}: supported values: \"PreferDualStack\", \"RequireDualStack\", \"SingleStack\""
        )),
    }
}

fn validate_ports(svc: &Service) -> Result<(), String> {
    let s = &svc.spec;
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let node_ports_allowed = matches!(s.type_str(), "NodePort" | "LoadBalancer");
    for (i, p) in s.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let name = p.name.as_deref().unwrap_or_default();
        if name.is_empty() {
            if s.ports.len() > 1 {
                return Err(format!(
                    "{at}.name: Required value: a service with more than one port names every port"
                ));
            }
        } else {
            crate::manifest::check_label_name(&format!("{at}.name"), name)?;
            if !names.insert(name) {
                return Err(format!("{at}.name: Duplicate value: {name:?}"));
            }
        }
        check_port(&format!("{at}.port"), p.port)?;
        let protocol = p.protocol_str();
        if !matches!(protocol, "TCP" | "UDP") {
            return Err(format!(
                "{at}.protocol: Unsupported value: {protocol:?}: supported values: \"TCP\", \"UDP\""
            ));
        }
        if !seen.insert((p.port, protocol)) {
            return Err(format!(
                "{at}: Duplicate value: port {} {protocol} is listed twice",
                p.port
            ));
        }
        match &p.target_port {
            None => {}
            Some(IntOrString::Int(n)) => check_port(&format!("{at}.targetPort"), *n)?,
            Some(IntOrString::String(n)) => check_port_name(&format!("{at}.targetPort"), n)?,
        }
        if let Some(np) = p.node_port {
            if !node_ports_allowed {
                return Err(format!(
                    "{at}.nodePort: Forbidden: may not be used when type is {}",
                    s.type_str()
                ));
            }
            if !NODE_PORT_RANGE.contains(&np) {
                return Err(format!(
                    "{at}.nodePort: Invalid value: {np}: provided port is not in the valid range. The range of valid ports is {}-{}",
                    NODE_PORT_RANGE.start(),
                    NODE_PORT_RANGE.end()
                ));
            }
        }
    }
    Ok(())
}

pub fn validate_slice(slice: &EndpointSlice) -> Result<(), String> {
    let want_v4 = match slice.address_type.as_str() {
        "IPv4" => true,
        "IPv6" => false,
        "FQDN" => {
            return Err(
                "addressType: not supported yet: \"FQDN\" (only \"IPv4\" and \"IPv6\")".into(),
            );
        }
        other => {
            return Err(format!(
                "addressType: Unsupported value: {other:?}: supported values: \"IPv4\", \"IPv6\""
            ));
        }
    };
    for (i, e) in slice.endpoints.iter().enumerate() {
        if e.addresses.is_empty() {
            return Err(format!("endpoints[{i}].addresses: Required value"));
        }
        for (j, a) in e.addresses.iter().enumerate() {
            match a.parse::<IpAddr>() {
                Ok(ip) if ip.is_ipv4() == want_v4 => {}
                _ => {
                    return Err(format!(
                        "endpoints[{i}].addresses[{j}]: Invalid value: {a:?}: must be an {} address",
                        slice.address_type
                    ));
                }
            }
        }
        if let Some(h) = &e.hostname {
            crate::manifest::check_label_name(&format!("endpoints[{i}].hostname"), h)?;
        }
    }
    for (i, p) in slice.ports.iter().enumerate() {
        if let Some(port) = p.port {
            check_port(&format!("ports[{i}].port"), port)?;
        }
    }
    Ok(())
}

/// The container port a service port reaches on a pod: `targetPort` by number, by the name
/// of one of the pod's container ports (with the same protocol), or `port` itself.
pub fn target_port(port: &ServicePort, pod: &crate::api::PodSpec) -> Option<u16> {
    match &port.target_port {
        None => u16::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => pod
            .serving_containers()
            .flat_map(|c| &c.ports)
            .find(|cp| {
                cp.name.as_deref() == Some(name.as_str())
                    && cp.protocol.as_deref().unwrap_or("TCP") == port.protocol_str()
            })
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

/// `dnsPolicy` and `dnsConfig` as the API server checks them (resolv.conf's limits: three
/// nameservers, 32 search domains).
pub fn validate_pod_dns(at: &str, spec: &crate::api::PodSpec) -> Result<(), String> {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if !matches!(
        policy,
        "ClusterFirst" | "ClusterFirstWithHostNet" | "Default" | "None"
    ) {
        return Err(format!(
            "{at}.dnsPolicy: Unsupported value: {policy:?}: supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\""
        ));
    }
    let Some(c) = &spec.dns_config else {
        if policy == "None" {
            return Err(format!(
                "{at}.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
            ));
        }
        return Ok(());
    };
    if policy == "None" && c.nameservers.is_empty() {
        return Err(format!(
            "{at}.dnsConfig.nameservers: Required value: must provide at least one DNS nameserver when `dnsPolicy` is None"
        ));
    }
    if c.nameservers.len() > 3 {
        return Err(format!(
            "{at}.dnsConfig.nameservers: Invalid value: must not have more than 3 nameservers"
        ));
    }
    for (i, ns) in c.nameservers.iter().enumerate() {
        if ns.parse::<IpAddr>().is_err() {
            return Err(format!(
                "{at}.dnsConfig.nameservers[{i}]: Invalid value: {ns:?}: must be a valid IP address"
            ));
        }
    }
    if c.searches.len() > 32 {
        return Err(format!(
            "{at}.dnsConfig.searches: Invalid value: must not have more than 32 search paths"
        ));
    }
    for (i, s) in c.searches.iter().enumerate() {
        crate::manifest::check_name(
            &format!("{at}.dnsConfig.searches[{i}]"),
            s.trim_end_matches('.'),
        )?;
    }
    for (i, o) in c.options.iter().enumerate() {
        if o.name.is_empty() {
            return Err(format!("{at}.dnsConfig.options[{i}].name: Required value"));
        }
    }
    Ok(())
}

pub(crate) fn check_port(field: &str, port: i32) -> Result<(), String> {
    if (1..=65535).contains(&port) {
        Ok(())
    } else {
        Err(format!(
            "{field}: Invalid value: {port}: must be between 1 and 65535, inclusive"
        ))
    }
}

/// An IANA service name, as a named container port must be: at most 15 lowercase letters,
/// digits and '-', with at least one letter, no leading, trailing or double '-'.
pub(crate) fn check_port_name(field: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.bytes().any(|b| b.is_ascii_lowercase())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{field}: Invalid value: {name:?}: must be a port number or an IANA service name (at most 15 lowercase letters, digits and '-', with at least one letter)"
        ))
    }
}

/// A DNS-1035 label, what a Service name must be (its DNS name starts with it).
pub(crate) fn check_dns1035(field: &str, name: &str) -> Result<(), String> {
    crate::manifest::check_label_name(field, name)?;
    if name.as_bytes()[0].is_ascii_lowercase() {
        Ok(())
    } else {
        Err(format!(
            "{field}: Invalid value: {name:?}: a Service name must start with a lowercase letter (DNS-1035 label)"
        ))
    }
}

/// The node label that makes a node serve LoadBalancer services (k3s's ServiceLB uses
/// `svccontroller.k3s.cattle.io/enablelb` the same way).
pub const GATEWAY_LABEL: &str = "flotilla.io/gateway";

/// Whether `node` serves LoadBalancer services: the nodes labelled `flotilla.io/gateway:
/// "true"` when any node is, otherwise every node. The hub (for the addresses in status)
/// and the agents (for their listeners) decide with this one rule.
pub fn is_gateway<'a>(
    node: &crate::api::Node,
    all: impl IntoIterator<Item = &'a crate::api::Node>,
) -> bool {
    let labelled = |n: &crate::api::Node| {
        n.metadata.labels.get(GATEWAY_LABEL).map(String::as_str) == Some("true")
    };
    labelled(node) || !all.into_iter().any(labelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> String {
        crate::manifest::errors_joined(yaml, "; ")
    }

    fn svc(spec: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n{spec}")
    }

    #[test]
    fn services_are_checked_as_the_api_server_does() {
        let cases = [
            "  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]",
            "  ports: [{port: 80}]\n  clusterIP: None",
            "  clusterIP: None",
            "  type: ExternalName\n  externalName: db.example.com",
            "  type: NodePort\n  ports: [{port: 80, nodePort: 30080}]",
            "  type: Weird\n  ports: [{port: 80}]",
            "  ports: []",
            "  ports: [{port: 80}, {port: 81}]",
            "  ports: [{name: a, port: 80}, {name: a, port: 81}]",
            "  ports: [{port: 0}]",
            "  ports: [{port: 80, protocol: SCTP}]",
            "  ports: [{port: 80, nodePort: 30080}]",
            "  type: NodePort\n  ports: [{port: 80, nodePort: 80}]",
            "  ports: [{port: 80, targetPort: Http_Port}]",
            "  type: NodePort\n  clusterIP: None\n  ports: [{port: 80}]",
            "  clusterIP: 10.43.0.400\n  ports: [{port: 80}]",
            "  ports: [{port: 80}]\n  externalTrafficPolicy: Local",
            "  ports: [{port: 80}]\n  externalIPs: [1.2.3.4]",
            "  ports: [{port: 80}]\n  ipFamilyPolicy: RequireDualStack",
            "  type: ExternalName",
            "  ports: [{port: 80}]\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}",
            "  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53}]",
            "  type: NodePort\n  ports: [{port: 53, protocol: UDP}]",
            "  clusterIP: None\n  ports: [{port: 53, protocol: UDP}]",
        ];
        let got: Vec<String> = cases.iter().map(|c| errors(&svc(c))).collect();
        expect_test::expect![[r#"
            ok
            ok
            ok
            ok
            ok
            document 1 (service web): spec.type: Unsupported value: "Weird": supported values: "ClusterIP", "NodePort", "LoadBalancer", "ExternalName"
            document 1 (service web): spec.ports: Required value
            document 1 (service web): spec.ports[0].name: Required value: a service with more than one port names every port
            document 1 (service web): spec.ports[1].name: Duplicate value: "a"
            document 1 (service web): spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive
            document 1 (service web): spec.ports[0].protocol: Unsupported value: "SCTP": supported values: "TCP", "UDP"
            document 1 (service web): spec.ports[0].nodePort: Forbidden: may not be used when type is ClusterIP
            document 1 (service web): spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767
            document 1 (service web): spec.ports[0].targetPort: Invalid value: "Http_Port": must be a port number or an IANA service name (at most 15 lowercase letters, digits and '-', with at least one letter)
            document 1 (service web): spec.clusterIP: Invalid value: "None": may only be set for type ClusterIP, not NodePort
            document 1 (service web): spec.clusterIP: Invalid value: "10.43.0.400": must be a valid IP address or "None"
            document 1 (service web): spec.externalTrafficPolicy: not supported yet: "Local" (only "Cluster")
            document 1 (service web): spec.externalIPs: not supported yet: use type NodePort or LoadBalancer
            document 1 (service web): spec.ipFamilyPolicy: Invalid value: "RequireDualStack": this cluster is single-stack IPv4
            document 1 (service web): spec.externalName: Required value: for type ExternalName
            document 1 (service web): spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than or equal to 86400
            ok
            ok
            ok
        "#]]
        .assert_eq(&(got.join("\n") + "\n"));
    }

    #[test]
    fn slices_name_their_bad_address() {
        let slice = |body: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  labels: {{kubernetes.io/service-name: web}}\n{body}"
            )
        };
        let got: Vec<String> = [
            "addressType: IPv4\nendpoints: [{addresses: [10.0.0.1]}]\nports: [{port: 80}]",
            "addressType: IPv4\nendpoints: [{addresses: [fe80::1]}]",
            "addressType: FQDN\nendpoints: []",
        ]
        .iter()
        .map(|b| errors(&slice(b)))
        .collect();
        expect_test::expect![[r#"
            ok
            document 1 (endpointslice web-1): endpoints[0].addresses[0]: Invalid value: "fe80::1": must be an IPv4 address
            document 1 (endpointslice web-1): addressType: not supported yet: "FQDN" (only "IPv4" and "IPv6")
        "#]]
        .assert_eq(&(got.join("\n") + "\n"));
    }

    #[test]
    fn target_ports_resolve_by_number_name_or_port() {
        let pod: crate::api::PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "c", "image": "i", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 5353, "protocol": "UDP"},
            ]}],
            "initContainers": [
                {"name": "proxy", "image": "i", "restartPolicy": "Always",
                 "ports": [{"name": "proxy", "containerPort": 15001}]},
                {"name": "setup", "image": "i", "ports": [{"name": "setup", "containerPort": 9}]},
            ]
        }))
        .unwrap();
        let port = |target: Option<IntOrString>, protocol: &str| ServicePort {
            port: 80,
            target_port: target,
            protocol: Some(protocol.into()),
            ..Default::default()
        };
        assert_eq!(target_port(&port(None, "TCP"), &pod), Some(80));
        assert_eq!(
            target_port(&port(Some(IntOrString::Int(9000)), "TCP"), &pod),
            Some(9000)
        );
        let named = |n: &str| Some(IntOrString::String(n.into()));
        assert_eq!(target_port(&port(named("http"), "TCP"), &pod), Some(8080));
        assert_eq!(target_port(&port(named("dns"), "UDP"), &pod), Some(5353));
        assert_eq!(target_port(&port(named("dns"), "TCP"), &pod), None);
        assert_eq!(target_port(&port(named("nope"), "TCP"), &pod), None);
        // A sidecar serves beside the containers; a plain init container is gone by then.
        assert_eq!(target_port(&port(named("proxy"), "TCP"), &pod), Some(15001));
        assert_eq!(target_port(&port(named("setup"), "TCP"), &pod), None);
    }
}
