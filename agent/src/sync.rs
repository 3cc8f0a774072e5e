//! The link to the hub: connects (reconnecting with back-off), resumes the watch from the cached
//! revision, writes changes to the cache, sends heartbeats and pod statuses, and answers the
//! hub's requests (logs). Losing the hub never stops workloads; it only pauses this loop.
use crate::Shared;
use crate::cache::Change;
use crate::supervisor::{Event, Reports};
use anyhow::Context as _;
use flotilla_proto::api::Pod;
use flotilla_proto::wire::{AgentRequest, LogsRequest, Request, Response, WatchEvent};
use flotilla_transport::{TransportError, recv_frame, send_frame};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Events per `ReportEvents` request.
const EVENT_BATCH: usize = 128;
/// How long queued events wait for company before they are sent.
const EVENT_DELAY: Duration = Duration::from_millis(100);

pub async fn run(
    shared: Arc<Shared>,
    identity: crate::identity::Identity,
    events: mpsc::UnboundedSender<Event>,
    mut reports: watch::Receiver<Reports>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    let hub_addr = shared.cfg.hub.unwrap_or(identity.hub);
    loop {
        let cfg = match identity.client_config() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "invalid node identity");
                return;
            }
        };
        let connected = tokio::select! {
            _ = cancel.cancelled() => return,
            c = flotilla_transport::connect(hub_addr, cfg) => c,
        };
        match connected {
            Ok((endpoint, conn)) => {
                info!(hub = %hub_addr, "connected to hub");
                backoff = Duration::from_millis(200);
                shared.hub.send_replace(Some(conn.clone()));
                let result = session(&shared, &conn, &events, &mut reports, &cancel).await;
                shared.hub.send_replace(None);
                conn.close(0u32.into(), b"agent session ended");
                endpoint.close(0u32.into(), b"");
                match result {
                    Ok(()) => return,
                    Err(e) => {
                        warn!(error = %e, "lost the hub; workloads keep running from the local cache")
                    }
                }
            }
            Err(e) => debug!(hub = %hub_addr, error = %e, "hub unreachable"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// One connected period. Returns Ok only when cancelled.
async fn session(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    events: &mpsc::UnboundedSender<Event>,
    reports: &mut watch::Receiver<Reports>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    report_node(shared, conn).await?;
    let from = shared.cache.revision()?;
    let (_wsend, mut wrecv, ()) = {
        let (mut s, r) = conn.open_bi().await?;
        send_frame(
            &mut s,
            &Request::Watch {
                from_revision: from,
            },
        )
        .await?;
        (s, r, ())
    };
    // Events (also those of a time offline) go up from a task of their own, so they never
    // hold up a status report.
    let events_done = cancel.child_token();
    let _stop_events = events_done.clone().drop_guard();
    shared.tracker.spawn(event_loop(
        shared.clone(),
        conn.clone(),
        events_done.clone(),
    ));
    shared.tracker.spawn(crate::discovery::follow(
        shared.clone(),
        conn.clone(),
        events_done,
    ));
    // Everything we know goes up on (re)connect; afterwards only changes.
    let mut sent: Reports = Default::default();
    let mut heartbeat = tokio::time::interval(shared.cfg.heartbeat);
    heartbeat.tick().await;
    // The node's images changed (pulled, collected): node status goes up now.
    let mut images = shared.images.subscribe();
    reports.mark_changed();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = recv_frame::<WatchEvent>(&mut wrecv) => {
                let ev = ev?.context("hub closed the watch")?;
                apply(shared, ev)?;
                let _ = events.send(Event::Desired);
                // To disk while the supervisor acts on it.
                let persisting = shared.clone();
                shared.tracker.spawn_blocking(move || {
                    if let Err(e) = persisting.cache.persist() {
                        warn!(error = %e, "cannot persist the desired pods");
                    }
                });
            }
            Ok(()) = images.changed() => {
                images.borrow_and_update();
                if report_node(shared, conn).await? {
                    sent.clear();
                    reports.mark_changed();
                }
            }
            _ = heartbeat.tick() => if report_node(shared, conn).await? {
                // The hub showed our pods as Unknown while it could not hear us.
                sent.clear();
                reports.mark_changed();
            },
            changed = reports.changed() => {
                if changed.is_err() { return Ok(()) }
                let current = reports.borrow_and_update().clone();
                let changed: Vec<_> = current.iter().filter(|(k, v)| sent.get(*k) != Some(v)).map(|(_, v)| v.clone()).collect();
                if !changed.is_empty() {
                    let (_, _, resp): (_, _, Response) = flotilla_transport::request(conn, &Request::ReportPods { pods: changed }).await?;
                    match resp {
                        Response::Error { message } => warn!(error = %message, "hub refused pod statuses"),
                        // Not taken while the hub thinks we are away: sent again after the
                        // heartbeat that brings the node back (answered ResendPods too).
                        Response::ResendPods => continue,
                        _ => {}
                    }
                    sent = current;
                }
            }
            s = conn.accept_bi() => {
                let (send, recv) = s?;
                let shared = shared.clone();
                let cancel = cancel.clone();
                shared.tracker.clone().spawn(async move {
                    if let Err(e) = hub_request(&shared, send, recv, cancel).await {
                        debug!(error = %e, "hub request failed");
                    }
                });
            }
        }
    }
}

/// Delivers queued events while the session lasts: at once on (re)connect, then a moment
/// after something is queued, so a burst (a pod starting) goes up as one request.
async fn event_loop(shared: Arc<Shared>, conn: quinn::Connection, done: CancellationToken) {
    loop {
        if let Err(e) = deliver_events(&shared, &conn).await {
            // The session sees the broken link too and reconnects; the rest waits.
            debug!(error = %e, "event delivery stopped");
            return;
        }
        tokio::select! {
            _ = done.cancelled() => return,
            () = shared.events.queued() => {}
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(EVENT_DELAY) => {}
        }
    }
}

/// Sends the queued events, oldest first, in batches. An event leaves the queue once the hub
/// has answered for it; on a lost link the rest wait for the next session.
async fn deliver_events(shared: &Shared, conn: &quinn::Connection) -> anyhow::Result<()> {
    while let Some((upto, events)) = shared.events.batch(EVENT_BATCH) {
        let asked: Result<(_, _, Response), _> =
            flotilla_transport::request(conn, &Request::ReportEvents { events }).await;
        match asked {
            Ok((_, _, Response::Error { message })) => {
                // Not worth retrying: the hub would refuse them again.
                warn!(error = %message, "hub refused events");
            }
            Ok(_) => {}
            // The stream failed but the link is up: a hub that does not know this request.
            Err(e) if conn.close_reason().is_none() => {
                warn!(error = %e, "hub did not take events (an older hub?); dropping them");
            }
            Err(e) => return Err(e.into()),
        }
        shared.events.ack(upto);
    }
    Ok(())
}

fn parse_pod(json: &str) -> anyhow::Result<Pod> {
    serde_json::from_str(json).context("hub sent an unreadable pod")
}

fn apply(shared: &Shared, ev: WatchEvent) -> anyhow::Result<()> {
    match ev {
        WatchEvent::Snapshot { revision, pods } => {
            let pods = pods
                .iter()
                .map(|p| parse_pod(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            debug!(revision, pods = pods.len(), "desired state snapshot");
            shared.cache.apply(Change::Replace(pods), revision)?;
        }
        WatchEvent::Put { revision, pod } => shared
            .cache
            .apply(Change::Put(Box::new(parse_pod(&pod)?)), revision)?,
        WatchEvent::Deleted { revision, uid, .. } => {
            shared.cache.apply(Change::Delete { uid }, revision)?
        }
        WatchEvent::Bookmark { revision } => shared.cache.set_revision(revision)?,
    }
    Ok(())
}

/// Sends the node's status, then learns the node's pod CIDR; true when the hub asks for
/// every pod's status again.
async fn report_node(shared: &Shared, conn: &quinn::Connection) -> anyhow::Result<bool> {
    let mut node = crate::node::status(shared);
    // The range in use: a --pod-cidr for the hub to record, or the one it gave us before
    // (which it gives back if it has lost track of it).
    if let Ok(net) = &shared.network {
        node.spec.pod_cidr = net.subnet();
        if net.is_fixed() {
            node.metadata.annotations.insert(
                flotilla_proto::api::POD_CIDR_STATIC_ANNOTATION.into(),
                "true".into(),
            );
        }
    }
    let req = Request::ReportNode {
        node: serde_json::to_string(&node)?,
    };
    let (_, _, resp): (_, _, Response) = flotilla_transport::request(conn, &req).await?;
    let resend = match resp {
        Response::Error { message } => {
            warn!(error = %message, "hub refused node status");
            false
        }
        Response::ResendPods => true,
        _ => false,
    };
    pod_cidr_from_hub(shared, conn).await?;
    Ok(resend)
}

/// Reads our Node's `spec.podCIDR` and hands it to the pod network.
async fn pod_cidr_from_hub(shared: &Shared, conn: &quinn::Connection) -> anyhow::Result<()> {
    let Ok(net) = &shared.network else {
        return Ok(());
    };
    if net.is_fixed() {
        return Ok(());
    }
    let req = Request::Get {
        kind: flotilla_proto::Kind::Node,
        namespace: None,
        name: Some(shared.cfg.node_name.clone()),
    };
    let (_, _, resp): (_, _, Response) = flotilla_transport::request(conn, &req).await?;
    let Response::Objects { items, .. } = resp else {
        // An older hub, or our Node deleted a moment ago: the next heartbeat asks again.
        debug!(response = ?resp, "cannot read this node's pod CIDR");
        return Ok(());
    };
    let Some(node) = items
        .first()
        .and_then(|j| serde_json::from_str::<flotilla_proto::api::Node>(j).ok())
    else {
        return Ok(());
    };
    net.assign(node.spec.pod_cidr.as_deref());
    Ok(())
}

/// Serves a request the hub opened on our connection.
async fn hub_request(
    shared: &Shared,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    cancel: CancellationToken,
) -> Result<(), TransportError> {
    let Some(req) = recv_frame::<AgentRequest>(&mut recv).await? else {
        return Ok(());
    };
    match req {
        AgentRequest::Exec(req) => crate::exec::serve(shared, req, send, recv).await?,
        AgentRequest::Logs {
            namespace,
            name,
            tail,
            follow,
        } => {
            let req = LogsRequest::current(namespace, name, tail, follow);
            serve_logs(shared, req, send, &cancel).await?
        }
        AgentRequest::ContainerLogs(req) => serve_logs(shared, req, send, &cancel).await?,
        AgentRequest::MeshOpen(open) => {
            let table = shared.mesh_table.subscribe();
            crate::mesh::link::answer(open, send, recv, table, "hub relay").await
        }
    }
    Ok(())
}

/// Streams a container's log: its tail, then (with `follow`) what is appended.
async fn serve_logs(
    shared: &Shared,
    req: LogsRequest,
    mut send: quinn::SendStream,
    cancel: &CancellationToken,
) -> Result<(), TransportError> {
    let (namespace, name) = (&req.namespace, &req.name);
    let log = shared
        .pod_named(namespace, name)
        .ok_or_else(|| format!("pod {namespace}/{name} is not on this node"))
        .and_then(|pod| {
            let c = crate::pick_container(&pod, req.container.as_deref())?;
            let log = shared.log_named(namespace, name, &c.name).ok_or_else(|| {
                format!(
                    "container {} of pod {namespace}/{name} has no logs yet",
                    c.name
                )
            })?;
            Ok((c.name.clone(), log))
        });
    let (container, log) = match log {
        Ok(log) => log,
        Err(message) => {
            send_frame(&mut send, &Response::Error { message }).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    let tail = req.tail.map(|t| t as usize);
    if req.previous {
        let Some(text) = log.tail_previous(tail)? else {
            let message =
                format!("previous terminated container {container:?} in pod {name:?} not found");
            send_frame(&mut send, &Response::Error { message }).await?;
            let _ = send.finish();
            return Ok(());
        };
        send_frame(&mut send, &Response::LogStream).await?;
        send.write_all(&text).await?;
        let _ = send.finish();
        return Ok(());
    }
    // Subscribe before reading the tail so nothing written in between is lost.
    let mut live = log.subscribe();
    let text = log.tail(tail)?;
    send_frame(&mut send, &Response::LogStream).await?;
    send.write_all(&text).await?;
    if req.follow {
        follow_log(&mut send, &mut live, cancel).await?;
    }
    let _ = send.finish();
    Ok(())
}

/// Copies new log bytes to the stream until the client or the agent goes away.
async fn follow_log(
    send: &mut quinn::SendStream,
    live: &mut tokio::sync::broadcast::Receiver<bytes::Bytes>,
    cancel: &CancellationToken,
) -> Result<(), TransportError> {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = send.stopped() => return Ok(()),
            chunk = live.recv() => match chunk {
                Ok(bytes) => send.write_all(&bytes).await?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return Ok(()),
            },
        }
    }
}
