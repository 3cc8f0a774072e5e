//! The EndpointSlice controller: for every Service with a selector, the pods it selects as
//! EndpointSlices, one per distinct list of resolved ports (Kubernetes groups them the same
//! way, since a named `targetPort` may be a different number on different pods).
//!
//! Slices are named `<service>-<hash of their ports>` (Kubernetes picks random suffixes; a
//! stable name keeps reconciles idempotent), owned by the Service (so they go with it), and
//! labelled `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by`. Slices
//! without our managed-by label are the user's: a Service without a selector uses them.
use super::{Controller, Ctx, Requeue, pods_in};
use crate::store::{StoreError, StoreEvent, Tx};
use flotilla_proto::api::{
    ENDPOINTSLICE_CONTROLLER, Endpoint, EndpointConditions, EndpointPort, EndpointSlice, Kind,
    MANAGED_BY_LABEL, Object, ObjectKey, ObjectMeta, ObjectReference, OwnerReference, Pod,
    SERVICE_NAME_LABEL, Service, ZONE_LABEL,
};
use flotilla_proto::labels;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

pub(crate) const CONTROLLER: Controller = Controller {
    name: "endpointslice",
    kind: Kind::Service,
    keys_of,
    all_on,
    reconcile,
};

/// A Service's own changes, and changes to the slices it manages.
fn keys_of(e: &StoreEvent) -> Vec<ObjectKey> {
    match e.key.kind {
        Kind::Service => vec![e.key.clone()],
        Kind::EndpointSlice => e
            .object
            .iter()
            .chain(e.prev.iter())
            .filter_map(|o| o.meta().labels.get(SERVICE_NAME_LABEL))
            .map(|s| ObjectKey::new(Kind::Service, &e.key.namespace, s))
            .collect(),
        _ => vec![],
    }
}

/// A pod change that can move an endpoint (its labels, address, readiness, phase, node or
/// serving port) concerns every Service; the agents' periodic reports that change none of
/// these do not.
fn all_on(e: &StoreEvent) -> bool {
    let view = |o: &Option<Object>| match o {
        Some(Object::Pod(p)) => Some((
            p.metadata.labels.clone(),
            p.status.pod_ip.clone(),
            p.is_ready(),
            p.status.phase.clone(),
            p.spec.node_name.clone(),
            p.status.endpoint.clone(),
        )),
        _ => None,
    };
    match e.key.kind {
        Kind::Pod => view(&e.object) != view(&e.prev),
        Kind::Node => {
            let zone = |o: &Option<Object>| {
                o.as_ref()
                    .and_then(|o| o.meta().labels.get(ZONE_LABEL).cloned())
            };
            zone(&e.object) != zone(&e.prev)
        }
        _ => false,
    }
}

fn reconcile(tx: &mut Tx<'_>, key: &ObjectKey, _: &Ctx) -> Result<Requeue, StoreError> {
    let existing: Vec<EndpointSlice> = tx
        .list(Kind::EndpointSlice, Some(&key.namespace))?
        .into_iter()
        .filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(s),
            _ => None,
        })
        .filter(|s| {
            s.metadata.labels.get(SERVICE_NAME_LABEL) == Some(&key.name)
                && s.metadata.labels.get(MANAGED_BY_LABEL).map(String::as_str)
                    == Some(ENDPOINTSLICE_CONTROLLER)
        })
        .collect();
    let want = match tx.get(key)? {
        Some(Object::Service(svc)) if svc.spec.selector.is_empty() => {
            // The user's slices, or none; not ours to keep.
            Vec::new()
        }
        Some(Object::Service(svc)) if svc.spec.type_str() == "ExternalName" => Vec::new(),
        Some(Object::Service(svc)) => {
            let pods = pods_in(tx, &key.namespace)?;
            let mut zones = BTreeMap::new();
            for node in pods.iter().filter_map(|p| p.spec.node_name.as_deref()) {
                if !zones.contains_key(node) {
                    let zone = tx
                        .get(&ObjectKey::new(Kind::Node, "", node))?
                        .and_then(|n| n.meta().labels.get(ZONE_LABEL).cloned());
                    zones.insert(node.to_string(), zone);
                }
            }
            slices_for(&svc, &pods, &zones)
        }
        _ => Vec::new(),
    };
    let names: BTreeSet<&str> = want.iter().map(|s| s.metadata.name.as_str()).collect();
    for old in &existing {
        if !names.contains(old.metadata.name.as_str()) {
            tx.delete(&ObjectKey::new(
                Kind::EndpointSlice,
                &key.namespace,
                &old.metadata.name,
            ))?;
        }
    }
    for slice in want {
        let slice = Object::EndpointSlice(slice);
        let same = existing
            .iter()
            .find(|old| old.metadata.name == slice.meta().name)
            .is_some_and(|old| Object::EndpointSlice(old.clone()).desired_eq(&slice));
        if !same {
            tx.put(slice)?;
        }
    }
    Ok(None)
}

/// The slices a Service should have for these pods (pure). A Service that selects nothing
/// still gets one empty slice, as in Kubernetes.
pub fn slices_for(
    svc: &Service,
    pods: &[Pod],
    zones: &BTreeMap<String, Option<String>>,
) -> Vec<EndpointSlice> {
    let name = &svc.metadata.name;
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
    let publish_unready = svc.spec.publish_not_ready_addresses == Some(true);
    let mut groups: BTreeMap<Vec<EndpointPort>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        if pod.is_terminal() || !labels::matches(&svc.spec.selector, &pod.metadata.labels) {
            continue;
        }
        let Some(ip) = pod.status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        let Some(node) = pod.spec.node_name.clone() else {
            continue;
        };
        let ready = pod.is_ready();
        let endpoint = Endpoint {
            addresses: vec![ip.to_string()],
            conditions: EndpointConditions {
                ready: Some(ready || publish_unready),
                serving: Some(ready),
                terminating: Some(false),
            },
            hostname: pod
                .spec
                .hostname
                .clone()
                .filter(|_| pod.spec.subdomain.as_deref() == Some(name.as_str())),
            zone: zones.get(&node).cloned().flatten(),
            node_name: Some(node),
            target_ref: Some(ObjectReference {
                api_version: String::new(),
                kind: "Pod".into(),
                namespace: namespace.into(),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        };
        groups.entry(ports_of(svc, pod)).or_default().push(endpoint);
    }
    if groups.is_empty() {
        groups.insert(Vec::new(), Vec::new());
    }
    groups
        .into_iter()
        .map(|(ports, mut endpoints)| {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            let json = serde_json::to_vec(&ports).unwrap_or_default();
            let suffix = hex::encode(&Sha256::digest(&json)[..4]);
            let mut labels = BTreeMap::new();
            labels.insert(SERVICE_NAME_LABEL.to_string(), name.clone());
            labels.insert(
                MANAGED_BY_LABEL.to_string(),
                ENDPOINTSLICE_CONTROLLER.to_string(),
            );
            EndpointSlice {
                api_version: Kind::EndpointSlice.api_version().into(),
                kind: Kind::EndpointSlice.as_str().into(),
                metadata: ObjectMeta {
                    name: format!("{name}-{suffix}"),
                    namespace: Some(namespace.into()),
                    labels,
                    owner_references: vec![OwnerReference {
                        api_version: "v1".into(),
                        kind: Kind::Service.as_str().into(),
                        name: name.clone(),
                        uid: svc.metadata.uid.clone(),
                        controller: Some(true),
                    }],
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints,
                ports,
            }
        })
        .collect()
}

/// The service's ports as this pod serves them. A wasi:http pod has one listener on its
/// node's address, wherever its container ports say (`status.endpoint`), so every service
/// port reaches that one.
fn ports_of(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let listener = pod
        .status
        .endpoint
        .as_deref()
        .filter(|_| !pod.spec.host_network && pod.status.pod_ip == pod.status.host_ip)
        .and_then(|e| e.parse::<std::net::SocketAddr>().ok())
        .map(|a| a.port());
    svc.spec
        .ports
        .iter()
        .filter_map(|p| {
            let port = match listener {
                Some(port) => port,
                None => flotilla_proto::service::target_port(p, &pod.spec)?,
            };
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                protocol: Some(p.protocol_str().to_string()),
                port: Some(i32::from(port)),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: &str) -> Service {
        let mut s: Service = serde_yaml_ng::from_str(yaml).unwrap();
        s.metadata.namespace = Some("default".into());
        s.metadata.uid = "svc-uid".into();
        s
    }

    fn pod(name: &str, ip: &str, ready: bool, port_name: &str, port: i32) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid"),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": port_name, "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip, "hostIP": "192.168.1.5",
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap();
        p.status.endpoint = Some(format!("{ip}:{port}"));
        p
    }

    fn summary(slices: &[EndpointSlice]) -> String {
        slices
            .iter()
            .map(|s| {
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}={}",
                            p.name.clone().unwrap_or_default(),
                            p.port.unwrap_or(0)
                        )
                    })
                    .collect();
                let eps: Vec<String> = s
                    .endpoints
                    .iter()
                    .map(|e| {
                        format!(
                            "{}{}{}",
                            e.addresses.join(","),
                            if e.is_ready() { "" } else { "(unready)" },
                            e.zone
                                .as_deref()
                                .map(|z| format!("@{z}"))
                                .unwrap_or_default()
                        )
                    })
                    .collect();
                format!("[{}] {}", ports.join(" "), eps.join(" "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn pods_group_by_resolved_ports_and_keep_readiness() {
        let svc = service(
            "metadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]",
        );
        let mut other = pod("other", "10.42.0.9", true, "http", 8080);
        other.metadata.labels.insert("app".into(), "db".into());
        let mut done = pod("done", "10.42.0.8", true, "http", 8080);
        done.status.phase = "Succeeded".into();
        let mut wasm = pod("wasm", "192.168.1.5", true, "http", 8080);
        wasm.status.endpoint = Some("192.168.1.5:41234".into());
        let mut unbound = pod("unbound", "10.42.0.7", true, "http", 8080);
        unbound.spec.node_name = None;
        let pods = [
            pod("a", "10.42.0.3", true, "http", 8080),
            pod("b", "10.42.0.2", false, "http", 8080),
            pod("c", "10.42.0.4", true, "http", 9090),
            pod("d", "10.42.0.5", true, "web", 8080),
            other,
            done,
            wasm,
            unbound,
        ];
        let zones = BTreeMap::from([("n1".to_string(), Some("z1".to_string()))]);
        let slices = slices_for(&svc, &pods, &zones);
        expect_test::expect![[r#"
            [] 10.42.0.5@z1
            [http=8080] 10.42.0.2(unready)@z1 10.42.0.3@z1
            [http=9090] 10.42.0.4@z1
            [http=41234] 192.168.1.5@z1"#]]
        .assert_eq(&summary(&slices));
        // Names are stable and distinct; every slice is the service's.
        let names: BTreeSet<_> = slices.iter().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(names.len(), slices.len());
        assert!(names.iter().all(|n| n.starts_with("web-")));
        assert_eq!(slices_for(&svc, &pods, &zones), slices);
        assert!(
            slices
                .iter()
                .all(|s| s.metadata.owner_references[0].uid == "svc-uid")
        );
    }

    #[test]
    fn an_empty_selection_is_one_empty_slice_and_unready_can_be_published() {
        let svc = service(
            "metadata: {name: db}\nspec:\n  selector: {app: web}\n  clusterIP: None\n  publishNotReadyAddresses: true\n  ports: [{port: 5432}]",
        );
        assert_eq!(summary(&slices_for(&svc, &[], &BTreeMap::new())), "[] ");
        let mut p = pod("db-0", "10.42.0.3", false, "pg", 5432);
        p.spec.hostname = Some("db-0".into());
        p.spec.subdomain = Some("db".into());
        let slices = slices_for(&svc, &[p], &BTreeMap::new());
        assert_eq!(summary(&slices), "[=5432] 10.42.0.3");
        assert_eq!(slices[0].endpoints[0].hostname.as_deref(), Some("db-0"));
        assert_eq!(slices[0].endpoints[0].conditions.serving, Some(false));
    }
}
