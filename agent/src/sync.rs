//! The link to the hub: connects (reconnecting with back-off), resumes the watch from the cached
//! revision, writes changes to the cache, sends heartbeats and pod statuses, and answers the
//! hub's requests (logs). Losing the hub never stops workloads; it only pauses this loop.
use crate::Shared;
use crate::cache::Change;
use crate::supervisor::{Event, Reports};
use anyhow::Context as _;
use flotilla_proto::api::Pod;
use flotilla_proto::wire::{AgentRequest, Request, Response, WatchEvent};
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
    shared
        .tracker
        .spawn(event_loop(shared.clone(), conn.clone(), events_done));
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

/// Sends the node's status; true when the hub asks for every pod's status again.
async fn report_node(shared: &Shared, conn: &quinn::Connection) -> anyhow::Result<bool> {
    let node = crate::node::status(shared);
    let req = Request::ReportNode {
        node: serde_json::to_string(&node)?,
    };
    let (_, _, resp): (_, _, Response) = flotilla_transport::request(conn, &req).await?;
    match resp {
        Response::Error { message } => warn!(error = %message, "hub refused node status"),
        Response::ResendPods => return Ok(true),
        _ => {}
    }
    Ok(false)
}

/// Serves a request the hub opened on our connection.
async fn hub_request(
    shared: &Shared,
    mut send: quinn::SendStream,
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
            let Some(log) = shared.log_named(&namespace, &name) else {
                send_frame(
                    &mut send,
                    &Response::Error {
                        message: format!("pod {namespace}/{name} has no logs on this node"),
                    },
                )
                .await?;
                let _ = send.finish();
                return Ok(());
            };
            // Subscribe before reading the tail so nothing written in between is lost.
            let mut live = log.subscribe();
            let tail = log.tail(tail.map(|t| t as usize))?;
            send_frame(&mut send, &Response::LogStream).await?;
            send.write_all(&tail).await?;
            if follow {
                follow_log(&mut send, &mut live, &cancel).await?;
            }
            let _ = send.finish();
        }
    }
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
