//! The hub's QUIC server: authenticates each connection by its client certificate, then serves
//! one request per stream. CLI (admin) requests, agent requests and joins are all handled here.
use crate::Hub;
use crate::controller::gc;
use crate::store::{StoreError, StoreEvent, Tx};
use crate::tokens;
use flotilla_proto::api::{
    Condition, Kind, Node, Object, ObjectKey, PersistentVolumeClaim, PodStatus,
    REVISION_ANNOTATION, SELECTED_NODE_ANNOTATION, StatefulSet,
};
use flotilla_proto::manifest;
use flotilla_proto::wire::{
    AgentRequest, Applied, ApplyAction, DiscoveryEvent, EventReport, LogsRequest, PodReport,
    PropagationPolicy, Request, Response, WatchEvent,
};
use flotilla_transport::{
    Identity, TransportError, check_hello, hello, peer_identity, recv_frame, send_frame,
};
use redb::ReadableTable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Connected agents, for proxying CLI requests (logs) and for node liveness.
#[derive(Default)]
pub struct AgentRegistry {
    inner: Mutex<HashMap<String, AgentEntry>>,
}

struct AgentEntry {
    conn: Option<quinn::Connection>,
    last_seen: Instant,
    last_written: Option<Instant>,
}

impl AgentRegistry {
    fn connected(&self, node: &str, conn: quinn::Connection) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(node.to_string()).or_insert(AgentEntry {
            conn: None,
            last_seen: Instant::now(),
            last_written: None,
        });
        e.conn = Some(conn);
        e.last_seen = Instant::now();
    }

    fn disconnected(&self, node: &str, conn: &quinn::Connection) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = m.get_mut(node)
            && e.conn
                .as_ref()
                .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            e.conn = None;
        }
    }

    pub fn connection(&self, node: &str) -> Option<quinn::Connection> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .and_then(|e| e.conn.clone())
    }

    /// How long ago the node last reported, if it has since the hub started.
    pub fn last_seen(&self, node: &str) -> Option<Duration> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .map(|e| e.last_seen.elapsed())
    }

    /// Records a heartbeat; returns true when the node object should be written (not every
    /// heartbeat is worth a durable write and a watch event).
    fn heartbeat(&self, node: &str) -> bool {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(node.to_string()).or_insert(AgentEntry {
            conn: None,
            last_seen: Instant::now(),
            last_written: None,
        });
        e.last_seen = Instant::now();
        let due = e
            .last_written
            .is_none_or(|w| w.elapsed() >= Duration::from_secs(30));
        if due {
            e.last_written = Some(Instant::now());
        }
        due
    }
}

pub async fn serve(
    hub: Arc<Hub>,
    endpoint: quinn::Endpoint,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => break,
            i = endpoint.accept() => match i { Some(i) => i, None => break },
        };
        let hub = hub.clone();
        let cancel = cancel.clone();
        let t = tracker.clone();
        tracker.spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = connection(hub, conn, cancel, t).await {
                        debug!(remote = %remote, error = %e, "connection ended");
                    }
                }
                Err(e) => debug!(remote = %remote, error = %e, "handshake failed"),
            }
        });
    }
}

async fn connection(
    hub: Arc<Hub>,
    conn: quinn::Connection,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> Result<(), TransportError> {
    let identity = peer_identity(&conn);
    // Version handshake on the first stream.
    let (mut send, mut recv) = conn.accept_bi().await?;
    let theirs: flotilla_proto::wire::Hello =
        recv_frame(&mut recv).await?.ok_or(TransportError::Closed)?;
    send_frame(&mut send, &hello()).await?;
    let _ = send.finish();
    if let Err(e) = check_hello(&theirs) {
        conn.close(1u32.into(), b"protocol version mismatch");
        return Err(e);
    }
    if let Identity::Node(name) = &identity {
        info!(node = %name, remote = %conn.remote_address(), "agent connected");
        hub.agents.connected(name, conn.clone());
    }
    let result = loop {
        let (send, recv) = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            s = conn.accept_bi() => match s {
                Ok(s) => s,
                Err(e) => break Err(e.into()),
            },
        };
        let hub = hub.clone();
        let identity = identity.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = stream(hub, identity, send, recv, cancel).await {
                debug!(error = %e, "stream failed");
            }
        });
    };
    if let Identity::Node(name) = &identity {
        info!(node = %name, "agent disconnected");
        hub.agents.disconnected(name, &conn);
    }
    result
}

fn error(message: impl std::fmt::Display) -> Response {
    Response::Error {
        message: message.to_string(),
    }
}

async fn stream(
    hub: Arc<Hub>,
    identity: Identity,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    cancel: CancellationToken,
) -> Result<(), TransportError> {
    let Some(req) = recv_frame::<Request>(&mut recv).await? else {
        return Ok(());
    };
    let response = match (&identity, req) {
        (Identity::Admin, Request::Apply { objects }) => apply(&hub, objects),
        (
            Identity::Admin,
            Request::Get {
                kind,
                namespace,
                name,
            },
        ) => get(&hub, kind, namespace, name),
        (
            Identity::Admin,
            Request::Delete {
                kind,
                namespace,
                name,
            },
        ) => delete(&hub, kind, &namespace, &name, PropagationPolicy::Background),
        (
            Identity::Admin,
            Request::DeleteWith {
                kind,
                namespace,
                name,
                propagation,
            },
        ) => delete(&hub, kind, &namespace, &name, propagation),
        (
            Identity::Admin,
            Request::Scale {
                namespace,
                name,
                replicas,
            },
        ) => scale(&hub, &namespace, &name, replicas),
        (
            Identity::Admin,
            Request::Rollout {
                namespace,
                name,
                action,
            },
        ) => rollout(&hub, &namespace, &name, &action),
        (
            Identity::Admin,
            Request::Edit {
                kind,
                namespace,
                name,
                edit,
            },
        ) => {
            let key = ObjectKey::new(kind, &namespace, &name);
            let now = crate::store::now_rfc3339();
            match hub
                .store
                .write(|tx| crate::edit::apply(tx, &key, &edit, &now))
            {
                Ok(message) => Response::Done { message },
                Err(StoreError::NotFound(k)) => error(not_found(&k)),
                Err(e) => error(e),
            }
        }
        (Identity::Admin, Request::Evict { namespace, name }) => evict(&hub, &namespace, &name),
        (Identity::Admin, Request::CreateToken { ttl_secs, max_uses }) => {
            create_token(&hub, ttl_secs, max_uses)
        }
        (
            Identity::Admin,
            Request::PushBlob {
                name,
                tag,
                digest,
                size,
            },
        ) => push(&hub, &name, &tag, &digest, size, &mut recv).await,
        (
            Identity::Admin,
            Request::Logs {
                namespace,
                name,
                tail,
                follow,
            },
        ) => {
            let req = LogsRequest::current(namespace, name, tail, follow);
            return logs(&hub, req, send).await;
        }
        (Identity::Admin, Request::ContainerLogs(req)) => {
            return logs(&hub, req, send).await;
        }
        (Identity::Admin, Request::Exec(req)) => {
            return exec(&hub, req, send, recv).await;
        }
        (
            Identity::Anonymous,
            Request::Join {
                token,
                node_name,
                csr_pem,
            },
        ) => join(&hub, &token, &node_name, &csr_pem),
        (Identity::Node(node), Request::Watch { from_revision }) => {
            return watch(&hub, NodePods(node), from_revision, send, cancel).await;
        }
        (Identity::Node(_), Request::WatchDiscovery { from_revision }) => {
            return watch(&hub, Discovery, from_revision, send, cancel).await;
        }
        (Identity::Node(from), Request::Relay(req)) => {
            return relay(&hub, from, req, send, recv).await;
        }
        // A node may read its own Node (for its pod CIDR), as Kubernetes' NodeRestriction
        // lets a kubelet.
        (
            Identity::Node(node),
            Request::Get {
                kind: Kind::Node,
                name: Some(name),
                ..
            },
        ) if name == *node => get(&hub, Kind::Node, None, Some(name)),
        (Identity::Node(node), Request::ReportNode { node: json }) => {
            report_node(&hub, node, &json)
        }
        (Identity::Node(node), Request::ReportPods { pods }) => report_pods(&hub, node, pods),
        (Identity::Node(node), Request::ReportEvents { events }) => {
            report_events(&hub, node, events)
        }
        (Identity::Node(_), Request::ResolveImage { image }) => resolve_image(&hub, &image),
        (
            Identity::Node(node),
            Request::GetConfig {
                kind,
                namespace,
                name,
            },
        ) => get_config(&hub, node, kind, &namespace, &name),
        (Identity::Node(_), Request::FetchBlob { digest }) => {
            return fetch_blob(&hub, &digest, send).await;
        }
        (Identity::Anonymous, _) => {
            error("unauthenticated: a client certificate issued by this hub is required")
        }
        (id, req) => {
            warn!(identity = ?id, request = ?std::mem::discriminant(&req), "request refused");
            error("forbidden: this identity may not make that request")
        }
    };
    send_frame(&mut send, &response).await?;
    let _ = send.finish();
    Ok(())
}

// ------------------------------------------------------------------ CLI

fn not_found(key: &ObjectKey) -> String {
    format!("{}s \"{}\" not found", key.kind.resource(), key.name).replace(".apps", "") // kubectl's wording
}

/// Validates everything first, then stores all of it in one transaction or nothing.
fn apply(hub: &Hub, objects: Vec<String>) -> Response {
    let mut parsed = Vec::new();
    let mut errors = Vec::new();
    for (i, text) in objects.iter().enumerate() {
        let value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("document {}: {e}", i + 1));
                continue;
            }
        };
        match manifest::parse_value(value) {
            Ok(p) => parsed.push(p.object),
            Err(mut e) => {
                e.document = i + 1;
                errors.push(e.to_string());
            }
        }
    }
    if !errors.is_empty() {
        return error(errors.join("\n"));
    }
    let result = hub.store.write(|tx| {
        let batch_namespaces: Vec<String> = parsed
            .iter()
            .filter(|o| o.kind() == Kind::Namespace)
            .map(|o| o.meta().name.clone())
            .collect();
        let mut results = Vec::new();
        for obj in parsed {
            results.push(apply_one(tx, &hub.service_cidr, obj, &batch_namespaces)?);
        }
        Ok(results)
    });
    match result {
        Ok(results) => Response::Applied { results },
        Err(e) => error(e),
    }
}

fn apply_one(
    tx: &mut Tx<'_>,
    service_cidr: &crate::services::ServiceCidr,
    mut obj: Object,
    batch_namespaces: &[String],
) -> Result<Applied, StoreError> {
    let key = obj.key();
    if key.kind.namespaced()
        && !batch_namespaces.contains(&key.namespace)
        && tx
            .get(&ObjectKey::new(Kind::Namespace, "", &key.namespace))?
            .is_none()
    {
        return Err(StoreError::Invalid(format!(
            "{key}: namespaces \"{}\" not found",
            key.namespace
        )));
    }
    check_host_paths(tx, &obj, &key)?;
    check_pod_security(tx, &obj, &key)?;
    // Defaults, as the Kubernetes API server applies them.
    match &mut obj {
        Object::Deployment(d) => {
            d.spec.replicas.get_or_insert(1);
            d.spec
                .template
                .spec
                .restart_policy
                .get_or_insert_with(|| "Always".into());
        }
        Object::ReplicaSet(rs) => {
            rs.spec.replicas.get_or_insert(1);
            rs.spec
                .template
                .spec
                .restart_policy
                .get_or_insert_with(|| "Always".into());
        }
        Object::Pod(p) => {
            p.spec.restart_policy.get_or_insert_with(|| "Always".into());
        }
        Object::DaemonSet(ds) => {
            ds.spec
                .template
                .spec
                .restart_policy
                .get_or_insert_with(|| "Always".into());
        }
        Object::Job(j) => {
            j.spec.parallelism.get_or_insert(1);
            j.spec.completions.get_or_insert(1);
            j.spec.backoff_limit.get_or_insert(6);
        }
        Object::StatefulSet(sts) => default_statefulset(sts),
        Object::PersistentVolumeClaim(pvc) => {
            pvc.spec
                .volume_mode
                .get_or_insert_with(|| "Filesystem".into());
        }
        Object::CronJob(cj) => {
            cj.spec
                .concurrency_policy
                .get_or_insert_with(|| "Allow".into());
            cj.spec.suspend.get_or_insert(false);
            cj.spec.successful_jobs_history_limit.get_or_insert(3);
            cj.spec.failed_jobs_history_limit.get_or_insert(1);
        }
        _ => {}
    }
    let existing = tx.get(&key)?;
    if let Object::Service(svc) = &mut obj {
        let old = match &existing {
            Some(Object::Service(old)) => {
                svc.status = old.status.clone();
                Some(old)
            }
            _ => None,
        };
        crate::services::admit(tx, service_cidr, &key, old, svc)?;
    }
    if existing.is_none()
        && let Object::Node(n) = &mut obj
    {
        stamp_taints(&mut n.spec.taints, &[]);
        keep_pod_cidr(&key, &Node::default(), n)?;
    }
    let action = match &existing {
        None => ApplyAction::Created,
        Some(old) => {
            match (old, &mut obj) {
                (Object::Pod(old), Object::Pod(new)) => {
                    if new.spec.node_name.is_none() {
                        new.spec.node_name = old.spec.node_name.clone();
                    }
                    if new.spec != old.spec {
                        return Err(StoreError::Invalid(format!(
                            "{key}: spec: pod updates may not change fields other than labels and annotations (delete and re-create it)"
                        )));
                    }
                    new.status = old.status.clone();
                }
                (Object::Deployment(old), Object::Deployment(new)) => {
                    new.status = old.status.clone();
                    // The controller's revision stamp survives a re-apply of the manifest.
                    if let Some(r) = old.metadata.annotations.get(REVISION_ANNOTATION) {
                        new.metadata
                            .annotations
                            .entry(REVISION_ANNOTATION.into())
                            .or_insert_with(|| r.clone());
                    }
                }
                (Object::ReplicaSet(old), Object::ReplicaSet(new)) => {
                    new.status = old.status.clone()
                }
                (Object::DaemonSet(old), Object::DaemonSet(new)) => new.status = old.status.clone(),
                (Object::Job(old), Object::Job(new)) => new.status = old.status.clone(),
                (Object::CronJob(old), Object::CronJob(new)) => new.status = old.status.clone(),
                (Object::Node(old), Object::Node(new)) => {
                    new.status = old.status.clone();
                    stamp_taints(&mut new.spec.taints, &old.spec.taints);
                    keep_pod_cidr(&key, old, new)?;
                }
                (Object::PodDisruptionBudget(old), Object::PodDisruptionBudget(new)) => {
                    new.status = old.status.clone()
                }
                (Object::StatefulSet(old), Object::StatefulSet(new)) => {
                    check_statefulset_update(&key, old, new)?;
                    new.status = old.status.clone();
                }
                (Object::PersistentVolumeClaim(old), Object::PersistentVolumeClaim(new)) => {
                    keep_claim_binding(&key, old, new)?;
                }
                _ => {}
            }
            if old.desired_eq(&obj) {
                ApplyAction::Unchanged
            } else {
                ApplyAction::Configured
            }
        }
    };
    if action != ApplyAction::Unchanged {
        tx.put(obj)?;
    }
    Ok(Applied {
        kind: key.kind,
        namespace: key.namespace,
        name: key.name,
        action,
    })
}

/// What the Kubernetes API server fills in for a StatefulSet left unsaid.
fn default_statefulset(sts: &mut StatefulSet) {
    let s = &mut sts.spec;
    s.replicas.get_or_insert(1);
    s.pod_management_policy
        .get_or_insert_with(|| "OrderedReady".into());
    s.revision_history_limit.get_or_insert(10);
    let strategy = s.update_strategy.get_or_insert_with(Default::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
    if kind == "RollingUpdate" {
        strategy
            .rolling_update
            .get_or_insert_with(Default::default)
            .partition
            .get_or_insert(0);
    }
    let retention = s
        .persistent_volume_claim_retention_policy
        .get_or_insert_with(Default::default);
    retention
        .when_deleted
        .get_or_insert_with(|| "Retain".into());
    retention.when_scaled.get_or_insert_with(|| "Retain".into());
    s.template
        .spec
        .restart_policy
        .get_or_insert_with(|| "Always".into());
    for t in &mut s.volume_claim_templates {
        t.spec
            .volume_mode
            .get_or_insert_with(|| "Filesystem".into());
    }
}

/// Kubernetes allows changing only some of a StatefulSet's spec: identity and storage stay.
fn check_statefulset_update(
    key: &ObjectKey,
    old: &StatefulSet,
    new: &StatefulSet,
) -> Result<(), StoreError> {
    let fixed = |s: &StatefulSet| {
        (
            s.spec.selector.clone(),
            s.spec.service_name.clone().unwrap_or_default(),
            s.spec.pod_management_policy.clone(),
            s.spec.volume_claim_templates.clone(),
        )
    };
    if fixed(old) != fixed(new) {
        return Err(StoreError::Invalid(format!(
            "{key}: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
        )));
    }
    Ok(())
}

/// A re-applied claim keeps what binding gave it (its node, volume name and status); like
/// Kubernetes, only `resources.requests` may change after creation.
fn keep_claim_binding(
    key: &ObjectKey,
    old: &PersistentVolumeClaim,
    new: &mut PersistentVolumeClaim,
) -> Result<(), StoreError> {
    new.status = old.status.clone();
    if let Some(node) = old.selected_node() {
        new.metadata
            .annotations
            .entry(SELECTED_NODE_ANNOTATION.into())
            .or_insert_with(|| node.to_string());
    }
    if new.spec.volume_name.is_none() {
        new.spec.volume_name = old.spec.volume_name.clone();
    }
    let mut same = new.spec.clone();
    same.resources.requests = old.spec.resources.requests.clone();
    if same != old.spec {
        return Err(StoreError::Invalid(format!(
            "{key}: spec: Forbidden: spec is immutable after creation except resources.requests"
        )));
    }
    Ok(())
}

fn get(hub: &Hub, kind: Kind, namespace: Option<String>, name: Option<String>) -> Response {
    let result = match name {
        Some(name) => {
            let key = ObjectKey::new(kind, namespace.as_deref().unwrap_or("default"), &name);
            match hub.store.get(&key) {
                Ok(Some(o)) => hub.store.revision().map(|r| (vec![o], r)),
                Ok(None) => return error(not_found(&key)),
                Err(e) => Err(e),
            }
        }
        None => hub.store.list(kind, namespace.as_deref()),
    };
    match result {
        Ok((items, revision)) => Response::Objects {
            items: items.iter().map(|o| o.to_json_string()).collect(),
            revision,
        },
        Err(e) => error(e),
    }
}

fn delete(
    hub: &Hub,
    kind: Kind,
    namespace: &str,
    name: &str,
    propagation: PropagationPolicy,
) -> Response {
    let key = ObjectKey::new(kind, namespace, name);
    if kind == Kind::Namespace && name == "default" {
        return error("namespace \"default\" cannot be deleted");
    }
    let result = hub.store.write(|tx| {
        if kind == Kind::Namespace {
            // Namespaces take everything in them along, whatever the propagation policy.
            for k in Kind::ALL.into_iter().filter(|k| k.namespaced()) {
                for o in tx.list(k, Some(name))? {
                    tx.delete(&o.key())?;
                }
            }
        }
        let deleted = match propagation {
            // Both done in the same transaction: deletion has no graceful phase yet, so
            // "dependents first" and "dependents after" end the same.
            PropagationPolicy::Background | PropagationPolicy::Foreground => {
                gc::delete_cascade(tx, &key)?
            }
            PropagationPolicy::Orphan => gc::delete_orphaning(tx, &key)?,
        };
        match deleted {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(key.clone())),
        }
    });
    match result {
        Ok(()) => Response::Ok,
        Err(StoreError::NotFound(k)) => error(not_found(&k)),
        Err(e) => error(e),
    }
}

fn scale(hub: &Hub, namespace: &str, name: &str, replicas: i32) -> Response {
    if let Err(e) = flotilla_proto::manifest::check_replicas(Some(replicas)) {
        return error(format!("deployment {name}: {e}"));
    }
    let key = ObjectKey::new(Kind::Deployment, namespace, name);
    let result = hub.store.write(|tx| match tx.get(&key)? {
        Some(Object::Deployment(mut d)) => {
            d.spec.replicas = Some(replicas);
            tx.put(Object::Deployment(d)).map(|_| ())
        }
        _ => Err(StoreError::NotFound(key.clone())),
    });
    match result {
        Ok(()) => Response::Ok,
        Err(StoreError::NotFound(k)) => error(not_found(&k)),
        Err(e) => error(e),
    }
}

fn rollout(
    hub: &Hub,
    namespace: &str,
    name: &str,
    action: &flotilla_proto::wire::RolloutAction,
) -> Response {
    let key = ObjectKey::new(Kind::Deployment, namespace, name);
    let now = crate::store::now_rfc3339();
    match hub
        .store
        .write(|tx| crate::rollout::apply(tx, &key, action, &now))
    {
        Ok(message) => Response::Done { message },
        Err(StoreError::NotFound(k)) => error(not_found(&k)),
        Err(e) => error(e),
    }
}

/// hostPath volumes only under the directories the namespace allows (its
/// `flotilla.io/allowed-host-paths` annotation); none without it.
fn check_host_paths(tx: &Tx<'_>, obj: &Object, key: &ObjectKey) -> Result<(), StoreError> {
    let Some(spec) = obj.pod_spec() else {
        return Ok(());
    };
    let paths: Vec<(&str, &str)> = spec
        .volumes
        .iter()
        .filter_map(|v| {
            v.host_path
                .as_ref()
                .map(|h| (v.name.as_str(), h.path.as_str()))
        })
        .collect();
    if paths.is_empty() {
        return Ok(());
    }
    let allowed: Vec<String> = match tx.get(&ObjectKey::new(Kind::Namespace, "", &key.namespace))? {
        Some(ns) => ns
            .meta()
            .annotations
            .get(flotilla_proto::api::ALLOWED_HOST_PATHS_ANNOTATION)
            .map(|v| {
                v.split(',')
                    .map(|p| p.trim())
                    .filter(|p| p.starts_with('/'))
                    .map(|p| match p.trim_end_matches('/') {
                        "" => "/".to_string(),
                        p => p.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => Vec::new(),
    };
    for (name, path) in paths {
        let inside = allowed
            .iter()
            .any(|a| a == "/" || path == a || path.starts_with(&format!("{a}/")));
        if !inside {
            return Err(StoreError::Invalid(format!(
                "{key}: volume {name:?}: hostPath {path:?} is not allowed in namespace {:?} (allowed: {}; set the namespace annotation {})",
                key.namespace,
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                },
                flotilla_proto::api::ALLOWED_HOST_PATHS_ANNOTATION
            )));
        }
    }
    Ok(())
}

/// Pod Security admission: what the pod asks to loosen must be allowed by its namespace's
/// `pod-security.kubernetes.io/enforce` level (baseline when unlabelled).
fn check_pod_security(tx: &Tx<'_>, obj: &Object, key: &ObjectKey) -> Result<(), StoreError> {
    use flotilla_proto::pod_security::{ENFORCE_LABEL, Level, violations};
    let Some(spec) = obj.pod_spec() else {
        return Ok(());
    };
    let ns = tx.get(&ObjectKey::new(Kind::Namespace, "", &key.namespace))?;
    let label = ns
        .as_ref()
        .and_then(|n| n.meta().labels.get(ENFORCE_LABEL).cloned());
    let level = Level::parse(label.as_deref())
        .map_err(|e| StoreError::Invalid(format!("namespace {:?}: {e}", key.namespace)))?;
    let found = violations(level, spec);
    if found.is_empty() {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "{key}: violates PodSecurity {:?} of namespace {:?} (label it {ENFORCE_LABEL}=privileged to allow): {}",
        level.as_str(),
        key.namespace,
        found.join("; ")
    )))
}

/// A Node's pod CIDR is the hub's to assign (or the agent's `--pod-cidr`): an applied Node
/// keeps the stored one and may only repeat it, as Kubernetes makes it immutable once set.
fn keep_pod_cidr(key: &ObjectKey, old: &Node, new: &mut Node) -> Result<(), StoreError> {
    if new.spec.pod_cidr.is_none() && new.spec.pod_cidrs.is_empty() {
        new.spec.pod_cidr = old.spec.pod_cidr.clone();
        new.spec.pod_cidrs = old.spec.pod_cidrs.clone();
        return Ok(());
    }
    if new.spec.pod_cidr != old.spec.pod_cidr || new.spec.pod_cidrs != old.spec.pod_cidrs {
        return Err(StoreError::Invalid(format!(
            "{key}: spec.podCIDR: may not be set or changed by apply (the hub assigns it; it is {})",
            old.spec.pod_cidr.as_deref().unwrap_or("<none>")
        )));
    }
    Ok(())
}

/// NoExecute taints keep the time they were first added (tolerationSeconds count from it); new
/// ones are stamped now.
fn stamp_taints(taints: &mut [flotilla_proto::api::Taint], old: &[flotilla_proto::api::Taint]) {
    let now = crate::store::now_rfc3339();
    for t in taints
        .iter_mut()
        .filter(|t| t.effect == flotilla_proto::scheduling::NO_EXECUTE && t.time_added.is_none())
    {
        let before = old
            .iter()
            .find(|o| o.key == t.key && o.effect == t.effect && o.value == t.value);
        t.time_added = Some(
            before
                .and_then(|o| o.time_added.clone())
                .unwrap_or(now.clone()),
        );
    }
}

fn evict(hub: &Hub, namespace: &str, name: &str) -> Response {
    use crate::controller::disruption::{Eviction, evict};
    let key = ObjectKey::new(Kind::Pod, namespace, name);
    match hub.store.write(|tx| evict(tx, &key)) {
        Ok(Eviction::Evicted) => Response::Done {
            message: format!("pod/{name} evicted"),
        },
        Ok(Eviction::Refused(message)) => Response::Retry { message },
        Err(StoreError::NotFound(k)) => error(not_found(&k)),
        Err(e) => error(e),
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn create_token(hub: &Hub, ttl_secs: Option<u64>, max_uses: Option<u32>) -> Response {
    let (token, id, record) =
        tokens::generate(&hub.pki.ca_fingerprint, ttl_secs, max_uses, unix_now());
    let result = hub.store.write(|tx| {
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Invalid(e.to_string()))?;
        tx.tokens.insert(id.as_str(), bytes.as_slice())?;
        Ok(())
    });
    match result {
        Ok(()) => Response::Token { token },
        Err(e) => error(e),
    }
}

fn join(hub: &Hub, token: &str, node_name: &str, csr_pem: &str) -> Response {
    let refused = |why: &dyn std::fmt::Display| {
        warn!(node = %node_name, reason = %why, "join refused");
        error(format!("join refused: {why}"))
    };
    let parsed = match tokens::parse(token) {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    if parsed.ca_fingerprint != hub.pki.ca_fingerprint {
        return refused(&"the token was issued by a different hub");
    }
    if let Err(e) = manifest::check_name("node name", node_name) {
        return refused(&e);
    }
    let redeemed = hub.store.write(|tx| {
        let record = tx
            .tokens
            .get(parsed.id.as_str())?
            .map(|v| v.value().to_vec());
        let Some(bytes) = record else {
            return Ok(Err(tokens::TokenError::Unknown));
        };
        let mut record: tokens::TokenRecord =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid(e.to_string()))?;
        if let Err(e) = tokens::redeem(&parsed, &mut record, unix_now()) {
            return Ok(Err(e));
        }
        let bytes = serde_json::to_vec(&record).map_err(|e| StoreError::Invalid(e.to_string()))?;
        tx.tokens.insert(parsed.id.as_str(), bytes.as_slice())?;
        Ok(Ok(()))
    });
    match redeemed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return refused(&e),
        Err(e) => return error(e),
    }
    match hub.pki.sign_node(node_name, csr_pem) {
        Ok(cert_pem) => {
            info!(node = %node_name, "node joined");
            Response::Joined {
                cert_pem,
                ca_pem: hub.pki.ca_pem.clone(),
            }
        }
        Err(e) => refused(&e),
    }
}

async fn push(
    hub: &Hub,
    name: &str,
    tag: &str,
    digest: &str,
    size: u64,
    recv: &mut quinn::RecvStream,
) -> Response {
    let image = format!("{name}:{tag}");
    if let Err(e) = manifest::check_name("artifact name", name) {
        return error(e);
    }
    if let Err(e) = hub.blobs.put_from(digest, size, recv).await {
        return error(format!("push {image}: {e}"));
    }
    let result = hub.store.write(|tx| {
        tx.images.insert(image.as_str(), digest)?;
        Ok(())
    });
    match result {
        Ok(()) => Response::Pushed {
            digest: digest.to_string(),
        },
        Err(e) => error(e),
    }
}

/// The agent's time of an event when it is plausible (a board without a clock may say 1970),
/// else the hub's.
fn agent_time(reported: &str, now: std::time::SystemTime) -> std::time::SystemTime {
    humantime::parse_rfc3339(reported)
        .ok()
        .filter(|t| *t <= now && now.duration_since(*t).unwrap_or_default() < AGENT_CLOCK_SLACK)
        .unwrap_or(now)
}

/// Proxies a logs request to the agent running the pod.
async fn logs(
    hub: &Hub,
    req: LogsRequest,
    mut send: quinn::SendStream,
) -> Result<(), TransportError> {
    let conn = match agent_of_pod(hub, &req.namespace, &req.name) {
        Ok(c) => c,
        Err(resp) => return finish(&mut send, resp).await,
    };
    let req = AgentRequest::ContainerLogs(req);
    let (_asend, mut arecv, resp): (_, _, Response) =
        flotilla_transport::request(&conn, &req).await?;
    send_frame(&mut send, &resp).await?;
    if resp == Response::LogStream {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                r = arecv.read(&mut buf) => match r {
                    Ok(Some(n)) => send.write_all(&buf[..n]).await?,
                    _ => break,
                },
                // The CLI went away (Ctrl-C on `logs -f`): stop reading from the agent.
                _ = send.stopped() => break,
            }
        }
    }
    let _ = send.finish();
    Ok(())
}

/// The connection of the agent running a pod, or the answer saying why there is none.
fn agent_of_pod(hub: &Hub, namespace: &str, name: &str) -> Result<quinn::Connection, Response> {
    let key = ObjectKey::new(Kind::Pod, namespace, name);
    let node = match hub.store.get(&key) {
        Ok(Some(Object::Pod(p))) => p.spec.node_name.clone(),
        Ok(_) => return Err(error(not_found(&key))),
        Err(e) => return Err(error(e)),
    };
    let node = node.ok_or_else(|| error(format!("pod {name} is not scheduled yet")))?;
    hub.agents
        .connection(&node)
        .ok_or_else(|| error(format!("node {node} is not connected to the hub")))
}

/// Carries a service connection between two nodes that cannot reach each other directly.
/// The target node decides whether the address is one of its endpoints; the hub only
/// passes bytes (each hop is TLS; the hub sees them in the clear).
async fn relay(
    hub: &Hub,
    from: &str,
    req: flotilla_proto::wire::RelayRequest,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), TransportError> {
    use flotilla_proto::wire::{MeshOpen, MeshOpened};
    let Some(conn) = hub.agents.connection(&req.node) else {
        let reason = format!("node {} is not connected to the hub", req.node);
        send_frame(&mut send, &MeshOpened::Refused { reason }).await?;
        let _ = send.finish();
        return Ok(());
    };
    debug!(from, to = %req.node, target = %req.target, "relaying a service connection");
    let open = AgentRequest::MeshOpen(MeshOpen { target: req.target });
    let (asend, arecv, answer): (_, _, MeshOpened) =
        flotilla_transport::request(&conn, &open).await?;
    send_frame(&mut send, &answer).await?;
    if answer != MeshOpened::Connected {
        let _ = send.finish();
        return Ok(());
    }
    let mut near = tokio::io::join(recv, send);
    let mut far = tokio::io::join(arecv, asend);
    if let Err(e) = tokio::io::copy_bidirectional(&mut near, &mut far).await {
        debug!(error = %e, "relayed connection ended with an error");
    }
    Ok(())
}

/// Relays `fleet exec` between the CLI and the agent running the pod: the hub passes the
/// exec frames through without reading them.
async fn exec(
    hub: &Hub,
    req: flotilla_proto::wire::ExecRequest,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), TransportError> {
    let conn = match agent_of_pod(hub, &req.namespace, &req.name) {
        Ok(c) => c,
        Err(resp) => return finish(&mut send, resp).await,
    };
    info!(pod = %format!("{}/{}", req.namespace, req.name), command = ?req.command, "exec");
    let (mut asend, mut arecv, resp): (_, _, Response) =
        flotilla_transport::request(&conn, &AgentRequest::Exec(req)).await?;
    send_frame(&mut send, &resp).await?;
    if resp != Response::ExecStream {
        let _ = send.finish();
        return Ok(());
    }
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(Some(n)) = recv.read(&mut buf).await {
            if asend.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = asend.finish();
        // The client's input ending does not end the command: wait for its exit.
        std::future::pending::<()>().await
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(Some(n)) = arecv.read(&mut buf).await {
            if send.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    };
    // The command's side ending (its exit frame sent) ends the relay.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    Ok(())
}

async fn finish(send: &mut quinn::SendStream, resp: Response) -> Result<(), TransportError> {
    send_frame(send, &resp).await?;
    let _ = send.finish();
    Ok(())
}

// ------------------------------------------------------------------ agents

fn on_node(obj: &Object, node: &str) -> bool {
    matches!(obj, Object::Pod(p) if p.spec.node_name.as_deref() == Some(node))
}

/// What one kind of watch stream covers and how it words its events. `watch` does the
/// rest: resume from the log or snapshot, then live changes, a snapshot again on lag.
trait Feed {
    type Event: serde::Serialize;
    /// The kinds it covers (for snapshots); `covers` narrows them down.
    fn kinds(&self) -> &'static [Kind];
    /// Whether an object of one of `kinds` is the watcher's (all of them, unless narrowed).
    fn covers(&self, _obj: &Object) -> bool {
        true
    }
    /// Whether a change of an object it covers, from `prev`, is news to the watcher.
    fn is_news(&self, _prev: &Object, _obj: &Object) -> bool {
        true
    }
    fn snapshot(&self, revision: u64, objects: Vec<Object>) -> Self::Event;
    fn put(&self, revision: u64, obj: &Object) -> Self::Event;
    fn deleted(&self, revision: u64, obj: &Object) -> Self::Event;
    fn bookmark(&self, revision: u64) -> Self::Event;
}

/// The pods bound to one node.
struct NodePods<'a>(&'a str);

impl Feed for NodePods<'_> {
    type Event = WatchEvent;
    fn kinds(&self) -> &'static [Kind] {
        &[Kind::Pod]
    }
    fn covers(&self, obj: &Object) -> bool {
        on_node(obj, self.0)
    }
    // Status-only writes (mostly the agent's own reports) are not news to the agent.
    fn is_news(&self, prev: &Object, obj: &Object) -> bool {
        !prev.desired_eq(obj)
    }
    fn snapshot(&self, revision: u64, objects: Vec<Object>) -> WatchEvent {
        let pods = objects.iter().map(Object::to_json_string).collect();
        WatchEvent::Snapshot { revision, pods }
    }
    fn put(&self, revision: u64, obj: &Object) -> WatchEvent {
        WatchEvent::Put {
            revision,
            pod: obj.to_json_string(),
        }
    }
    fn deleted(&self, revision: u64, obj: &Object) -> WatchEvent {
        let m = obj.meta();
        WatchEvent::Deleted {
            revision,
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone(),
            uid: m.uid.clone(),
        }
    }
    fn bookmark(&self, revision: u64) -> WatchEvent {
        WatchEvent::Bookmark { revision }
    }
}

/// Every Service, EndpointSlice, Ingress, IngressClass and Middleware, and every Node's
/// [`peer view`](Node::peer_view): what a node's DNS, mesh and ingress need.
struct Discovery;

/// What a node hears of an object on the discovery feed.
fn discovery_view(obj: &Object) -> String {
    match obj {
        Object::Node(n) => Object::Node(n.peer_view()).to_json_string(),
        o => o.to_json_string(),
    }
}

impl Feed for Discovery {
    type Event = DiscoveryEvent;
    fn kinds(&self) -> &'static [Kind] {
        &[
            Kind::Service,
            Kind::EndpointSlice,
            Kind::Node,
            Kind::Ingress,
            Kind::IngressClass,
            Kind::Middleware,
        ]
    }
    // Heartbeats and capacity changes are not news; a node's address, mesh port or labels are.
    fn is_news(&self, prev: &Object, obj: &Object) -> bool {
        match (prev, obj) {
            (Object::Node(a), Object::Node(b)) => a.peer_view() != b.peer_view(),
            _ => true,
        }
    }
    fn snapshot(&self, revision: u64, objects: Vec<Object>) -> DiscoveryEvent {
        let objects = objects.iter().map(discovery_view).collect();
        DiscoveryEvent::Snapshot { revision, objects }
    }
    fn put(&self, revision: u64, obj: &Object) -> DiscoveryEvent {
        DiscoveryEvent::Put {
            revision,
            object: discovery_view(obj),
        }
    }
    fn deleted(&self, revision: u64, obj: &Object) -> DiscoveryEvent {
        let key = obj.key();
        DiscoveryEvent::Deleted {
            revision,
            kind: key.kind,
            namespace: key.namespace,
            name: key.name,
        }
    }
    fn bookmark(&self, revision: u64) -> DiscoveryEvent {
        DiscoveryEvent::Bookmark { revision }
    }
}

fn snapshot<F: Feed>(hub: &Hub, feed: &F) -> Result<(F::Event, u64), TransportError> {
    let (objects, revision) = hub
        .store
        .list_kinds(feed.kinds(), None)
        .map_err(|e| TransportError::Io(std::io::Error::other(e)))?;
    let objects = objects.into_iter().filter(|o| feed.covers(o)).collect();
    Ok((feed.snapshot(revision, objects), revision))
}

/// Translates a store event into what the watcher needs to hear, if anything.
fn live_event<F: Feed>(feed: &F, e: &StoreEvent) -> Option<F::Event> {
    if !feed.kinds().contains(&e.key.kind) {
        return None;
    }
    let was = e.prev.as_ref().filter(|p| feed.covers(p));
    match (&e.object, was) {
        (Some(obj), Some(prev)) if feed.covers(obj) && !feed.is_news(prev, obj) => None,
        (Some(obj), _) if feed.covers(obj) => Some(feed.put(e.revision, obj)),
        (_, Some(prev)) => Some(feed.deleted(e.revision, prev)),
        _ => None,
    }
}

/// Streams a feed: a resume from `from` when the log reaches back that far, otherwise a
/// snapshot; then live changes.
async fn watch<F: Feed>(
    hub: &Hub,
    feed: F,
    from: u64,
    mut send: quinn::SendStream,
    cancel: CancellationToken,
) -> Result<(), TransportError> {
    let mut rx = hub.store.subscribe();
    let resumed = if from > 0 {
        hub.store.changes_since(from).ok().flatten()
    } else {
        None
    };
    let mut last = match resumed {
        Some(changes) => {
            let mut last = from;
            for (rev, deleted, obj) in changes {
                last = rev;
                if feed.kinds().contains(&obj.kind()) && feed.covers(&obj) {
                    let ev = if deleted {
                        feed.deleted(rev, &obj)
                    } else {
                        feed.put(rev, &obj)
                    };
                    send_frame(&mut send, &ev).await?;
                }
            }
            send_frame(&mut send, &feed.bookmark(last)).await?;
            debug!(from, to = last, "watch resumed");
            last
        }
        None => {
            let (ev, rev) = snapshot(hub, &feed)?;
            send_frame(&mut send, &ev).await?;
            debug!(revision = rev, "watch snapshot sent");
            rev
        }
    };
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = send.stopped() => break,
            e = rx.recv() => e,
        };
        match event {
            Ok(e) if e.revision <= last => {}
            Ok(e) => {
                last = e.revision;
                if let Some(ev) = live_event(&feed, &e) {
                    send_frame(&mut send, &ev).await?;
                }
            }
            Err(RecvError::Lagged(_)) => {
                let (ev, rev) = snapshot(hub, &feed)?;
                send_frame(&mut send, &ev).await?;
                last = rev;
            }
            Err(RecvError::Closed) => break,
        }
    }
    let _ = send.finish();
    Ok(())
}

fn ready_condition(status: &str, reason: &str, message: &str) -> Condition {
    let now = crate::store::now_rfc3339();
    Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(now.clone()),
        last_heartbeat_time: Some(now),
        ..Default::default()
    }
}

/// A node condition the agent reported, with the hub's time of its last transition.
fn agent_condition(existing: Option<&Node>, reported: &Condition) -> Condition {
    let mut c = reported.clone();
    c.last_heartbeat_time = None;
    let before = existing.and_then(|n| {
        n.status
            .conditions
            .iter()
            .find(|o| o.type_ == reported.type_)
    });
    c.last_transition_time = match before {
        Some(o) if o.status == reported.status => o.last_transition_time.clone(),
        _ => Some(crate::store::now_rfc3339()),
    };
    c
}

/// Registers or refreshes the caller's Node. The node name comes from the certificate, never
/// from the report, so a node can only speak for itself.
fn report_node(hub: &Hub, node: &str, json: &str) -> Response {
    let reported: Node = match serde_json::from_str(json) {
        Ok(n) => n,
        Err(e) => return error(format!("node {node}: invalid report: {e}")),
    };
    let force = hub.agents.heartbeat(node);
    let key = ObjectKey::new(Kind::Node, "", node);
    let result = hub.store.write(|tx| {
        let existing = match tx.get(&key)? {
            Some(Object::Node(n)) => Some(n),
            _ => None,
        };
        let mut next = existing.clone().unwrap_or_default();
        next.metadata.name = node.to_string();
        for (k, v) in &reported.metadata.labels {
            next.metadata.labels.insert(k.clone(), v.clone());
        }
        let was_ready = existing.as_ref().is_some_and(|n| n.is_ready());
        let mut status = reported.status.clone();
        let mut ready = ready_condition("True", "AgentReady", "agent is posting ready status");
        if was_ready
            && let Some(old) = existing
                .as_ref()
                .and_then(|n| n.status.conditions.iter().find(|c| c.type_ == "Ready"))
        {
            ready.last_transition_time = old.last_transition_time.clone();
        }
        // Ready is the hub's to say; the agent's own conditions (ContainerRuntimeVulnerable)
        // follow it, keeping their transition time while their status stays.
        status.conditions = std::iter::once(ready)
            .chain(
                reported
                    .status
                    .conditions
                    .iter()
                    .filter(|c| c.type_ != "Ready")
                    .map(|c| agent_condition(existing.as_ref(), c)),
            )
            .collect();
        next.status = status;
        let reported_cidr = crate::podcidr::Reported::of(&reported);
        let cidr_warning = crate::podcidr::assign(tx, &hub.pod_cidrs, &mut next, &reported_cidr)?;
        let changed = match &existing {
            None => true,
            Some(old) => {
                let strip = |n: &Node| {
                    let mut n = n.clone();
                    n.status
                        .conditions
                        .iter_mut()
                        .for_each(|c| c.last_heartbeat_time = None);
                    n.metadata = Default::default();
                    n
                };
                strip(old) != strip(&next) || old.metadata.labels != next.metadata.labels
            }
        };
        let stored = if changed || force || !was_ready {
            let stored = tx.put(Object::Node(next))?;
            if existing.is_some() && !was_ready {
                crate::events::about(
                    tx,
                    &stored,
                    flotilla_proto::api::EventType::Normal,
                    "NodeReady",
                    &format!("Node {node} status is now: NodeReady"),
                    crate::controller::node::COMPONENT,
                    std::time::SystemTime::now(),
                )?;
            }
            Some(stored)
        } else {
            existing.clone().map(Object::Node)
        };
        if let (Some((reason, message)), Some(stored)) = (cidr_warning, &stored) {
            crate::events::about(
                tx,
                stored,
                flotilla_proto::api::EventType::Warning,
                reason,
                &message,
                crate::podcidr::COMPONENT,
                std::time::SystemTime::now(),
            )?;
        }
        // Back from NotReady: the node lifecycle showed its pods as Unknown meanwhile.
        Ok(existing.is_some() && !was_ready)
    });
    match result {
        Ok(true) => Response::ResendPods,
        Ok(false) => Response::Ok,
        Err(e) => error(e),
    }
}

/// Stores pod statuses from the agent that runs them; reports for pods bound elsewhere (or
/// replaced since) are ignored.
fn report_pods(hub: &Hub, node: &str, pods: Vec<PodReport>) -> Response {
    let result = hub.store.write_soft(|tx| {
        // A report sent during a partition may land before the heartbeat that brings the node
        // back; the node lifecycle would mark its pods Unknown again. The agent sends every
        // status anew once its heartbeat is answered ResendPods.
        let node_ready = matches!(
            tx.get(&ObjectKey::new(Kind::Node, "", node))?,
            Some(Object::Node(n)) if n.is_ready()
        );
        if !node_ready {
            return Ok(false);
        }
        for r in pods {
            let key = ObjectKey::new(Kind::Pod, &r.namespace, &r.name);
            let Some(Object::Pod(mut pod)) = tx.get(&key)? else {
                continue;
            };
            if pod.metadata.uid != r.uid || pod.spec.node_name.as_deref() != Some(node) {
                continue;
            }
            let Ok(status) = serde_json::from_str::<PodStatus>(&r.status) else {
                warn!(node = %node, pod = %r.name, "ignoring malformed pod status");
                continue;
            };
            if pod.status != status {
                pod.status = status;
                tx.put(Object::Pod(pod))?;
            }
        }
        Ok(true)
    });
    match result {
        Ok(true) => Response::Ok,
        Ok(false) => Response::ResendPods,
        Err(e) => error(e),
    }
}

const MAX_EVENTS_PER_REPORT: usize = 512;
/// Agent event times further back than this are taken as the time they arrive: offline
/// agents deliver their queue on reconnect, but the queue is short and so is the wait.
const AGENT_CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Agent events become Events on the pods they are about, only for pods bound to the caller's
/// node (or bound there when they were deleted a moment ago: the agent reports stopping them
/// after the fact). An implausible time (ahead of the hub's clock, or long past) is taken as
/// the time of arrival.
fn report_events(hub: &Hub, node: &str, events: Vec<EventReport>) -> Response {
    let now = std::time::SystemTime::now();
    let mut ignored = 0;
    let result = hub.store.write_soft(|tx| {
        // One report carries what an agent queues (512 at most); more is not an agent's.
        ignored = events.len().saturating_sub(MAX_EVENTS_PER_REPORT);
        for r in events.iter().take(MAX_EVENTS_PER_REPORT) {
            // An event about the node itself (image garbage collection): only its own node.
            if r.namespace.is_empty() && r.uid.is_empty() {
                let node_key = ObjectKey::new(Kind::Node, "", node);
                let stored = match tx.get(&node_key)? {
                    Some(Object::Node(n))
                        if r.name == node && !r.reason.is_empty() && r.reason.len() <= 128 =>
                    {
                        n
                    }
                    _ => {
                        ignored += 1;
                        continue;
                    }
                };
                let at = agent_time(&r.time, now);
                let involved = flotilla_proto::api::ObjectReference {
                    api_version: "v1".into(),
                    kind: Kind::Node.as_str().into(),
                    namespace: String::new(),
                    name: node.to_string(),
                    uid: stored.metadata.uid.clone(),
                };
                crate::events::record(
                    tx,
                    &involved,
                    r.event_type,
                    &r.reason,
                    crate::events::truncate(&r.message),
                    crate::events::AGENT,
                    node,
                    at,
                )?;
                continue;
            }
            let key = ObjectKey::new(Kind::Pod, &r.namespace, &r.name);
            let bound_here = match tx.get(&key)? {
                Some(Object::Pod(p)) if p.metadata.uid == r.uid => {
                    p.spec.node_name.as_deref() == Some(node)
                }
                _ => hub.deleted_pods.was_on(&r.uid, node, &r.namespace, &r.name),
            };
            if !bound_here || r.reason.is_empty() || r.reason.len() > 128 {
                ignored += 1;
                continue;
            }
            let at = agent_time(&r.time, now);
            let involved = flotilla_proto::api::ObjectReference {
                api_version: "v1".into(),
                kind: Kind::Pod.as_str().into(),
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                uid: r.uid.clone(),
            };
            crate::events::record(
                tx,
                &involved,
                r.event_type,
                &r.reason,
                crate::events::truncate(&r.message),
                crate::events::AGENT,
                node,
                at,
            )?;
        }
        Ok(())
    });
    if ignored > 0 {
        warn!(node = %node, ignored, "ignoring events about pods not bound to this node (or without a reason)");
    }
    match result {
        Ok(()) => Response::Ok,
        Err(e) => error(e),
    }
}

/// A ConfigMap or Secret for an agent, only when a pod bound to that node refers to it (like
/// Kubernetes' node authorizer), or, for a gateway, when an Ingress it serves takes its TLS
/// certificate from it: a node cannot read the fleet's other secrets.
fn get_config(hub: &Hub, node: &str, kind: Kind, namespace: &str, name: &str) -> Response {
    if !matches!(kind, Kind::ConfigMap | Kind::Secret) {
        return error("forbidden: agents may read only ConfigMaps and Secrets");
    }
    let referenced = match hub.store.list(Kind::Pod, Some(namespace)) {
        Ok((pods, _)) => pods.iter().any(|o| {
            matches!(o, Object::Pod(p)
                if p.spec.node_name.as_deref() == Some(node)
                    && p.config_refs().contains(&(kind, name.to_string())))
        }),
        Err(e) => return error(e),
    };
    let referenced =
        referenced || (kind == Kind::Secret && ingress_needs(hub, node, namespace, name));
    if !referenced {
        warn!(node = %node, kind = %kind, namespace, name, "config read refused");
        return error(format!(
            "forbidden: no pod on node {node} refers to {} {namespace}/{name}",
            kind.resource()
        ));
    }
    let key = ObjectKey::new(kind, namespace, name);
    match hub.store.get(&key) {
        Ok(Some(o)) => Response::Objects {
            items: vec![o.to_json_string()],
            revision: 0,
        },
        Ok(None) => error(not_found(&key)),
        Err(e) => error(e),
    }
}

/// Whether `node` is a gateway and its ingress needs Secret `namespace/name`: an Ingress it
/// serves names it for TLS, or a Middleware of that namespace for basicAuth. These are the
/// only Secrets a gateway reads for itself.
fn ingress_needs(hub: &Hub, node: &str, namespace: &str, name: &str) -> bool {
    let all = |kind: Kind, ns: Option<&str>| {
        hub.store
            .list(kind, ns)
            .map(|(objects, _)| objects)
            .unwrap_or_default()
    };
    let nodes: Vec<_> = all(Kind::Node, None)
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n),
            _ => None,
        })
        .collect();
    let gateway = nodes
        .iter()
        .find(|n| n.metadata.name == node)
        .is_some_and(|n| flotilla_proto::service::is_gateway(n, &nodes));
    if !gateway {
        return false;
    }
    let classes: Vec<_> = all(Kind::IngressClass, None)
        .into_iter()
        .filter_map(|o| match o {
            Object::IngressClass(c) => Some(c),
            _ => None,
        })
        .collect();
    let tls = all(Kind::Ingress, Some(namespace)).iter().any(|o| {
        matches!(o, Object::Ingress(i)
            if flotilla_proto::ingress::is_ours(i, &classes)
                && i.spec.tls.iter().any(|t| t.secret_name.as_deref() == Some(name)))
    });
    tls || all(Kind::Middleware, Some(namespace)).iter().any(|o| {
        matches!(o, Object::Middleware(m)
            if m.spec.basic_auth.as_ref().is_some_and(|b| b.secret == name))
    })
}

/// `name[:tag]`, `name@sha256:…` or a bare `sha256:…` digest.
pub fn split_image(image: &str) -> (String, Option<String>) {
    if let Some((_, digest)) = image.split_once('@') {
        return (String::new(), Some(digest.to_string()));
    }
    if image.starts_with("sha256:") {
        return (String::new(), Some(image.to_string()));
    }
    let image = image.strip_prefix("flotilla://").unwrap_or(image);
    match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (format!("{n}:{t}"), None),
        _ => (format!("{image}:latest"), None),
    }
}

fn resolve_image(hub: &Hub, image: &str) -> Response {
    let digest = match split_image(image) {
        (_, Some(d)) => Some(d),
        (name, None) => hub.store.image_digest(&name).ok().flatten(),
    };
    let Some(digest) = digest else {
        return error(format!(
            "image {image:?} not found on the hub (push it with `fleet push`)"
        ));
    };
    match hub.blobs.size(&digest) {
        Ok(size) => Response::Resolved { digest, size },
        Err(e) => error(format!("image {image:?}: {e}")),
    }
}

async fn fetch_blob(
    hub: &Hub,
    digest: &str,
    mut send: quinn::SendStream,
) -> Result<(), TransportError> {
    let path = match hub.blobs.path(digest) {
        Ok(p) => p,
        Err(e) => return finish(&mut send, error(e)).await,
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return finish(&mut send, error(format!("blob {digest} not found"))).await;
    };
    let size = file.metadata().await?.len();
    send_frame(&mut send, &Response::Blob { size }).await?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        use tokio::io::AsyncReadExt;
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        send.write_all(&buf[..n]).await?;
    }
    let _ = send.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_conditions_keep_their_transition_time_while_their_status_stays() {
        let reported = Condition::new(
            "ContainerRuntimeVulnerable",
            "True",
            "KnownVulnerabilities",
            "m",
        );
        let fresh = agent_condition(None, &reported);
        assert!(fresh.last_transition_time.is_some());
        let mut node = Node::default();
        let mut old = reported.clone();
        old.last_transition_time = Some("2026-01-01T00:00:00Z".into());
        node.status.conditions = vec![old];
        // Same status, new message: the time stays.
        let mut again = reported.clone();
        again.message = Some("other".into());
        let kept = agent_condition(Some(&node), &again);
        assert_eq!(
            kept.last_transition_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(kept.message.as_deref(), Some("other"));
        // A new status is a transition.
        let flipped = Condition::new(
            "ContainerRuntimeVulnerable",
            "False",
            "NoKnownVulnerabilities",
            "",
        );
        assert_ne!(
            agent_condition(Some(&node), &flipped)
                .last_transition_time
                .as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
    }

    /// Applies each manifest in turn on a fresh store: the action or the error, per manifest.
    fn apply_all(manifests: &[&str], between: impl Fn(&mut Tx<'_>)) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb"), &[5u8; 32]).unwrap();
        manifests
            .iter()
            .map(|m| {
                let obj = manifest::parse(m).unwrap().remove(0).object;
                let cidr = crate::services::ServiceCidr::new("10.43.0.0/28").unwrap();
                let r = store.write(|tx| {
                    let r = apply_one(tx, &cidr, obj, &[]);
                    between(tx);
                    r
                });
                match r {
                    Ok(a) => format!("{:?}", a.action),
                    Err(e) => e.to_string(),
                }
            })
            .collect()
    }

    #[test]
    fn services_get_cluster_ips_and_node_ports_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.redb"), &[5u8; 32]).unwrap();
        // A /28 has 13 addresses a service may get (.2 to .14).
        let cidr = crate::services::ServiceCidr::new("10.43.0.0/28").unwrap();
        let apply = |name: &str, spec: &str| {
            let m =
                format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{spec}");
            let obj = manifest::parse(&m).unwrap().remove(0).object;
            store.write(|tx| {
                let key = obj.key();
                apply_one(tx, &cidr, obj, &[])?;
                match tx.get(&key)? {
                    Some(Object::Service(s)) => Ok(s),
                    _ => unreachable!(),
                }
            })
        };
        let web = apply("web", "  ports: [{port: 80}]").unwrap();
        let ip = web.spec.cluster_ip.clone().unwrap();
        assert_eq!(web.spec.cluster_ips, std::slice::from_ref(&ip));
        assert_eq!(
            web.spec.ports[0].target_port,
            Some(flotilla_proto::api::IntOrString::Int(80))
        );
        assert_eq!(web.spec.session_affinity.as_deref(), Some("None"));
        let n: u32 = ip.parse::<std::net::Ipv4Addr>().unwrap().into();
        assert!(
            (u32::from(std::net::Ipv4Addr::new(10, 43, 0, 2))
                ..=u32::from(std::net::Ipv4Addr::new(10, 43, 0, 14)))
                .contains(&n),
            "{ip}"
        );
        // Re-applying the manifest (which has no clusterIP) keeps the address.
        let again = apply("web", "  ports: [{port: 80}]").unwrap();
        assert_eq!(again.spec.cluster_ip.as_deref(), Some(ip.as_str()));
        let moved = apply("web", "  clusterIP: 10.43.0.9\n  ports: [{port: 80}]").unwrap_err();
        if ip != "10.43.0.9" {
            assert!(moved.to_string().contains("field is immutable"), "{moved}");
        }
        let taken = apply(
            "other",
            &format!("  clusterIP: {ip}\n  ports: [{{port: 80}}]"),
        )
        .unwrap_err();
        assert!(
            taken
                .to_string()
                .ends_with("provided IP is already allocated"),
            "{taken}"
        );
        let outside = apply("other", "  clusterIP: 10.43.1.9\n  ports: [{port: 80}]").unwrap_err();
        assert!(
            outside.to_string().contains("not in the valid range"),
            "{outside}"
        );
        // Twelve more fill the range; the next finds it full, and nothing was stored for it.
        for i in 0..12 {
            apply(&format!("s{i}"), "  ports: [{port: 80}]").unwrap();
        }
        let full = apply("s12", "  ports: [{port: 80}]").unwrap_err();
        assert!(full.to_string().contains("is full"), "{full}");
        let ips: std::collections::BTreeSet<String> = store
            .list(Kind::Service, None)
            .unwrap()
            .0
            .into_iter()
            .filter_map(|o| match o {
                Object::Service(s) => s.spec.cluster_ip,
                _ => None,
            })
            .collect();
        assert_eq!(ips.len(), 13);
        // Headless services take no address; node ports are allocated and kept.
        let headless = apply("db", "  clusterIP: None").unwrap();
        assert_eq!(headless.spec.cluster_ips, ["None"]);
        store
            .write(|tx| tx.delete(&ObjectKey::new(Kind::Service, "default", "s0")))
            .unwrap();
        let np = apply("np", "  type: NodePort\n  ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30081}]").unwrap();
        let a = np.spec.ports[0].node_port.unwrap();
        assert!(
            flotilla_proto::service::NODE_PORT_RANGE.contains(&a) && a != 30081,
            "{a}"
        );
        assert_eq!(np.spec.ports[1].node_port, Some(30081));
        let np = apply("np", "  type: NodePort\n  ports: [{name: a, port: 80}, {name: b, port: 81, nodePort: 30081}]").unwrap();
        assert_eq!(np.spec.ports[0].node_port, Some(a));
        store
            .write(|tx| tx.delete(&ObjectKey::new(Kind::Service, "default", "s1")))
            .unwrap();
        let clash = apply(
            "np2",
            "  type: NodePort\n  ports: [{port: 80, nodePort: 30081}]",
        )
        .unwrap_err();
        assert!(
            clash.to_string().ends_with(
                "spec.ports[0].nodePort: Invalid value: 30081: provided port is already allocated"
            ),
            "{clash}"
        );
    }

    #[test]
    fn statefulset_identity_and_storage_are_immutable() {
        let sts = |replicas: i32, service: &str, storage: &str| {
            format!(
                "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  serviceName: {service}\n  revisionHistoryLimit: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: x}}]}}\n  volumeClaimTemplates:\n  - metadata: {{name: data}}\n    spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: {storage}}}}}}}\n"
            )
        };
        let results = apply_all(
            &[
                &sts(3, "web", "1Gi"),
                &sts(3, "web", "1Gi"),
                &sts(5, "web", "1Gi"),
                &sts(5, "db", "1Gi"),
                &sts(5, "web", "2Gi"),
            ],
            |_| {},
        );
        assert_eq!(results[..3], ["Created", "Unchanged", "Configured"]);
        for r in &results[3..] {
            assert!(
                r.starts_with("statefulset.apps default/web: spec: Forbidden: updates to statefulset spec for fields other than"),
                "{r}"
            );
        }
    }

    #[test]
    fn a_reapplied_claim_keeps_its_binding() {
        let pvc = |class: &str, storage: &str| {
            format!(
                "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: data}}\nspec: {{accessModes: [ReadWriteOnce], storageClassName: {class}, resources: {{requests: {{storage: {storage}}}}}}}\n"
            )
        };
        let key = ObjectKey::new(Kind::PersistentVolumeClaim, "default", "data");
        // What the scheduler does when the claim's first pod is bound.
        let bind = |tx: &mut Tx<'_>| {
            if let Ok(Some(Object::PersistentVolumeClaim(mut c))) = tx.get(&key)
                && c.selected_node().is_none()
            {
                c.metadata
                    .annotations
                    .insert(SELECTED_NODE_ANNOTATION.into(), "node-1".into());
                c.status.phase = "Bound".into();
                c.spec.volume_name = Some("pvc-1".into());
                tx.put(Object::PersistentVolumeClaim(c)).unwrap();
            }
        };
        let results = apply_all(
            &[
                &pvc("local", "1Gi"),
                &pvc("local", "1Gi"),
                &pvc("local", "2Gi"),
                &pvc("fast", "2Gi"),
            ],
            bind,
        );
        expect_test::expect![[r#"
            [
                "Created",
                "Unchanged",
                "Configured",
                "persistentvolumeclaim default/data: spec: Forbidden: spec is immutable after creation except resources.requests",
            ]
        "#]]
        .assert_debug_eq(&results);
    }

    #[test]
    fn image_references() {
        assert_eq!(split_image("hello"), ("hello:latest".into(), None));
        assert_eq!(split_image("hello:v2"), ("hello:v2".into(), None));
        assert_eq!(
            split_image("flotilla://hello:v2"),
            ("hello:v2".into(), None)
        );
        assert_eq!(
            split_image("hello@sha256:ab"),
            (String::new(), Some("sha256:ab".into()))
        );
    }
}
