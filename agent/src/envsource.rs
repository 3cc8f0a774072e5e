//! A container's environment: literal values, pod fields, and keys of ConfigMaps and Secrets
//! (`env[].valueFrom.configMapKeyRef|secretKeyRef`, `envFrom` with `prefix`). ConfigMaps and
//! Secrets come from the hub, which hands a node only what its pods refer to; each answer is
//! cached sealed, and the cache answers when the hub is away (autonomy across restarts).
use crate::Shared;
use base64::Engine as _;
use flotilla_proto::api::{Container, Kind, Object, Pod};
use flotilla_proto::wire::{Request, Response};
use std::collections::BTreeMap;
use std::time::Duration;

/// Key → value of a ConfigMap (`data`) or Secret (`data`, decoded); None when it does not exist.
type Data = Option<BTreeMap<String, String>>;

fn data_of(o: &Object) -> BTreeMap<String, String> {
    match o {
        Object::ConfigMap(c) => c.data.clone(),
        Object::Secret(s) => s
            .data
            .iter()
            .filter_map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
                Some((k.clone(), String::from_utf8(bytes).ok()?))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// One ConfigMap or Secret: from the hub when connected (refreshing the cache), else cached.
/// `Ok(None)` when it does not exist.
pub(crate) async fn fetch(
    shared: &Shared,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Option<Object>, String> {
    let cache_key = format!("{kind}/{namespace}/{name}");
    let conn = shared.hub.borrow().clone();
    if let Some(conn) = conn {
        let req = Request::GetConfig {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        };
        let asked = tokio::time::timeout(
            Duration::from_secs(5),
            flotilla_transport::request::<_, Response>(&conn, &req),
        )
        .await;
        match asked {
            Ok(Ok((_, _, Response::Objects { items, .. }))) => {
                let json = items.into_iter().next().unwrap_or_default();
                let obj = Object::from_json_str(&json).map_err(|e| e.to_string())?;
                if let Err(e) = shared.cache.set_config(&cache_key, Some(&json)) {
                    tracing::warn!(error = %e, "failed to cache {cache_key}");
                }
                return Ok(Some(obj));
            }
            Ok(Ok((_, _, Response::Error { message }))) if message.contains("not found") => {
                let _ = shared.cache.set_config(&cache_key, None);
                return Ok(None);
            }
            Ok(Ok((_, _, Response::Error { message }))) => return Err(message),
            // Transport trouble: fall back to the cache.
            _ => {}
        }
    }
    match shared.cache.config(&cache_key) {
        Ok(Some(json)) => Object::from_json_str(&json)
            .map(Some)
            .map_err(|e| e.to_string()),
        _ => Err(format!(
            "the hub is unreachable and {} \"{name}\" is not cached on this node",
            kind.as_str().to_ascii_lowercase()
        )),
    }
}

/// The container's environment in Kubernetes' order (`envFrom` first, then `env`, a later
/// name replacing an earlier one). An error reads like kubelet's CreateContainerConfigError.
pub async fn resolve(
    shared: &Shared,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.namespace();
    let mut objects: BTreeMap<(Kind, String), Data> = BTreeMap::new();
    for (kind, name) in pod.config_refs() {
        let data = fetch(shared, kind, ns, &name).await?;
        objects.insert((kind, name), data.as_ref().map(data_of));
    }
    let missing = |kind: Kind, name: &str| {
        format!(
            "{} \"{name}\" not found",
            kind.as_str().to_ascii_lowercase()
        )
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for f in &c.env_from {
        let (kind, r) = match (&f.config_map_ref, &f.secret_ref) {
            (Some(r), _) => (Kind::ConfigMap, r),
            (None, Some(r)) => (Kind::Secret, r),
            (None, None) => continue,
        };
        match objects.get(&(kind, r.name.clone())).cloned().flatten() {
            Some(data) => {
                let prefix = f.prefix.as_deref().unwrap_or("");
                env.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
            }
            None if r.optional == Some(true) => {}
            None => return Err(missing(kind, &r.name)),
        }
    }
    for e in &c.env {
        let Some(from) = &e.value_from else {
            env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
            continue;
        };
        if let Some(f) = &from.field_ref {
            let v = match f.field_path.as_str() {
                "metadata.name" => pod.metadata.name.clone(),
                "metadata.namespace" => ns.to_string(),
                "metadata.uid" => pod.metadata.uid.clone(),
                "spec.nodeName" => pod.spec.node_name.clone().unwrap_or_default(),
                "status.podIP" | "status.hostIP" => pod_ip.to_string(),
                _ => String::new(),
            };
            env.push((e.name.clone(), v));
            continue;
        }
        let (kind, r) = match (&from.config_map_key_ref, &from.secret_key_ref) {
            (Some(r), _) => (Kind::ConfigMap, r),
            (None, Some(r)) => (Kind::Secret, r),
            (None, None) => continue,
        };
        let value = match objects.get(&(kind, r.name.clone())).cloned().flatten() {
            None if r.optional == Some(true) => continue,
            None => return Err(missing(kind, &r.name)),
            Some(data) => data.get(&r.key).cloned(),
        };
        match value {
            Some(v) => env.push((e.name.clone(), v)),
            None if r.optional == Some(true) => {}
            None => {
                return Err(format!(
                    "couldn't find key {} in {kind} {ns}/{}",
                    r.key, r.name
                ));
            }
        }
    }
    // A later definition of a name wins, as in Kubernetes.
    let mut seen = std::collections::BTreeSet::new();
    let mut out: Vec<(String, String)> = env
        .into_iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    out.reverse();
    Ok(out)
}
