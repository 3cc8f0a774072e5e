//! The cluster's Services, EndpointSlices, Ingresses, IngressClasses, Middlewares and Nodes (their peer
//! view: addresses, labels, mesh port) on this node: followed from the hub
//! (`WatchDiscovery`, resumed by revision like the pod watch), kept in the agent's redb so
//! the node DNS answers from them across restarts without the hub, and published to the
//! node's tasks through `Shared::discovery`.
use crate::Shared;
use crate::cache::DiscoveryChange;
use anyhow::Context as _;
use flotilla_proto::wire::{DiscoveryEvent, Request};
use flotilla_proto::{Object, ObjectKey};
use flotilla_transport::{recv_frame, send_frame};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Every Service, EndpointSlice, Ingress, IngressClass, Middleware and Node the node knows, by key.
pub type Objects = Arc<BTreeMap<ObjectKey, Object>>;

/// What the cache holds, for the start of the agent.
pub fn load(cache: &crate::cache::Cache) -> Objects {
    let objects = cache.discovery().unwrap_or_else(|e| {
        warn!(error = %e, "cannot read cached services; the node DNS starts empty");
        Vec::new()
    });
    Arc::new(objects.into_iter().map(|o| (o.key(), o)).collect())
}

/// Follows the hub's Services and EndpointSlices for as long as the session lasts.
pub async fn follow(shared: Arc<Shared>, conn: quinn::Connection, done: CancellationToken) {
    match watch(&shared, &conn, &done).await {
        Ok(()) => {}
        // The stream failed but the link is up: a hub that does not know this request.
        Err(e) if conn.close_reason().is_none() && !done.is_cancelled() => {
            warn!(error = %e, "the hub does not serve services (an older hub?); the node DNS keeps what it has")
        }
        Err(e) => debug!(error = %e, "service watch ended"),
    }
}

async fn watch(
    shared: &Shared,
    conn: &quinn::Connection,
    done: &CancellationToken,
) -> anyhow::Result<()> {
    let from = shared.cache.discovery_revision()?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send_frame(
        &mut send,
        &Request::WatchDiscovery {
            from_revision: from,
        },
    )
    .await?;
    loop {
        let ev = tokio::select! {
            _ = done.cancelled() => return Ok(()),
            ev = recv_frame::<DiscoveryEvent>(&mut recv) => ev?.context("hub closed the service watch")?,
        };
        apply(shared, ev)?;
    }
}

fn parse(json: &str) -> Option<Object> {
    match Object::from_json_str(json) {
        Ok(o)
            if matches!(
                o.kind(),
                flotilla_proto::Kind::Service
                    | flotilla_proto::Kind::EndpointSlice
                    | flotilla_proto::Kind::Node
                    | flotilla_proto::Kind::Ingress
                    | flotilla_proto::Kind::IngressClass
                    | flotilla_proto::Kind::Middleware
            ) =>
        {
            Some(o)
        }
        Ok(o) => {
            warn!(kind = %o.kind(), "hub sent an object of another kind on the service watch");
            None
        }
        Err(e) => {
            warn!(error = %e, "hub sent an unreadable service or slice; skipped");
            None
        }
    }
}

/// Writes the change to the cache, then publishes it.
fn apply(shared: &Shared, ev: DiscoveryEvent) -> anyhow::Result<()> {
    match ev {
        DiscoveryEvent::Snapshot { revision, objects } => {
            let objects: Vec<Object> = objects.iter().filter_map(|j| parse(j)).collect();
            debug!(revision, objects = objects.len(), "services snapshot");
            shared
                .cache
                .apply_discovery(DiscoveryChange::Replace(objects.clone()), revision)?;
            shared.discovery.send_replace(Arc::new(
                objects.into_iter().map(|o| (o.key(), o)).collect(),
            ));
        }
        DiscoveryEvent::Put { revision, object } => {
            let Some(o) = parse(&object) else {
                return Ok(shared
                    .cache
                    .apply_discovery(DiscoveryChange::Nothing, revision)?);
            };
            shared
                .cache
                .apply_discovery(DiscoveryChange::Put(Box::new(o.clone())), revision)?;
            shared.discovery.send_modify(|all| {
                Arc::make_mut(all).insert(o.key(), o);
            });
        }
        DiscoveryEvent::Deleted {
            revision,
            kind,
            namespace,
            name,
        } => {
            let key = ObjectKey::new(kind, &namespace, &name);
            shared
                .cache
                .apply_discovery(DiscoveryChange::Delete(key.clone()), revision)?;
            shared.discovery.send_modify(|all| {
                Arc::make_mut(all).remove(&key);
            });
        }
        DiscoveryEvent::Bookmark { revision } => shared
            .cache
            .apply_discovery(DiscoveryChange::Nothing, revision)?,
    }
    Ok(())
}
