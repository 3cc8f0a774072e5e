//! wasi:sockets for WASI pods: sockets reach only what the pod's `flotilla.io/outbound-network`
//! grant allows, and name lookups are answered from the node's copy of the cluster's names
//! (as a container pod's resolver sees them) instead of the host's resolver.
//!
//! wasmtime-wasi links `wasi:sockets/ip-name-lookup` to the host's resolver; the agent links
//! its own in its place ([`add_name_lookup`]), so a lookup is refused unless the name is
//! granted, and the addresses a granted name resolves to become addresses the pod may reach
//! ([`Outbound::learn`]). Every socket address then passes [`check`].

use super::ComponentState;
use crate::logs::PodLog;
use crate::outbound::{Lookup, Outbound, Refusal};
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::debug;
use wasmtime::component::{Linker, Resource, ResourceType};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress};
use wasmtime_wasi::p2::{Network, Pollable};
use wasmtime_wasi::sockets::SocketAddrUse;

/// The interface wasmtime-wasi 48 links (its WIT is wasi:sockets 0.2.12); a guest importing
/// any 0.2.x version is matched to it. Linking ours under the same name replaces wasmtime-wasi's.
const IP_NAME_LOOKUP: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// How long the node's resolvers may take for a name outside the cluster.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Lookups of outside names at once, from all pods: each holds a thread of tokio's blocking
/// pool (getaddrinfo) for as long as the resolvers take, which may outlast
/// [`LOOKUP_TIMEOUT`], so guests can never take the whole pool.
static OUTSIDE_LOOKUPS: std::sync::LazyLock<Arc<Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(Semaphore::new(16)));

/// The answers of one lookup, handed to the guest one at a time. A lookup finishes before
/// `resolve-addresses` returns, so the stream is always ready.
pub struct Answers(VecDeque<IpAddr>);

#[wasmtime_wasi::async_trait]
impl Pollable for Answers {
    async fn ready(&mut self) {}
}

/// Links the pod-aware `wasi:sockets/ip-name-lookup` in place of wasmtime-wasi's.
pub(super) fn add_name_lookup(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut lookup = linker.instance(IP_NAME_LOOKUP)?;
    lookup.resource(
        "resolve-address-stream",
        ResourceType::host::<Answers>(),
        |mut store, rep| {
            store
                .data_mut()
                .table
                .delete(Resource::<Answers>::new_own(rep))?;
            Ok(())
        },
    )?;
    lookup.func_wrap_async(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            Box::new(async move {
                let state = store.data_mut();
                // The network resource is the capability to look names up at all.
                state.table.get(&network)?;
                let grant = state.network.clone();
                let log = state.outbound.log.clone();
                let pod = state.outbound.pod.clone();
                let answer = match resolve(grant.as_deref(), &name).await {
                    Ok(addrs) => Ok(store.data_mut().table.push(Answers(addrs.into()))?),
                    Err(Unresolved::Refused(why)) => {
                        debug!(pod = %pod, name = ?name, reason = %why, "name lookup refused");
                        log.note(&format!("name lookup of {name} refused: {why}"));
                        Err(ErrorCode::AccessDenied)
                    }
                    Err(Unresolved::Error(code)) => Err(code),
                };
                Ok((answer,))
            })
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (this,): (Resource<Answers>,)| {
            let answers = store.data_mut().table.get_mut(&this)?;
            let next = answers.0.pop_front().map(IpAddress::from);
            Ok((Ok::<_, ErrorCode>(next),))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.subscribe",
        |mut store, (this,): (Resource<Answers>,)| {
            Ok((wasmtime_wasi::p2::subscribe(
                &mut store.data_mut().table,
                this,
            )?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Why a lookup gave no addresses.
enum Unresolved {
    /// Not granted: the pod log says why.
    Refused(String),
    Error(ErrorCode),
}

/// The addresses of `name` for a pod with the grant `network` (none: no lookups at all).
async fn resolve(network: Option<&Outbound>, name: &str) -> Result<Vec<IpAddr>, Unresolved> {
    // No name is longer (and the guest's string goes into the pod log below).
    if name.is_empty() || name.len() > 253 {
        return Err(Unresolved::Error(ErrorCode::InvalidArgument));
    }
    let Some(network) = network else {
        return Err(Unresolved::Refused(format!(
            "the pod has no {} annotation",
            flotilla_proto::outbound::OUTBOUND_NETWORK_ANNOTATION
        )));
    };
    let outside = match network.lookup(name) {
        Ok(Lookup::Addresses(addrs)) => return Ok(addrs),
        Ok(Lookup::Outside(host)) => host,
        Err(Refusal::NotFound(_)) => return Err(Unresolved::Error(ErrorCode::NameUnresolvable)),
        Err(refusal) => return Err(Unresolved::Refused(refusal.to_string())),
    };
    // The permit goes with the blocking lookup itself, which may outlast the timeout.
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, async {
        let turn = OUTSIDE_LOOKUPS.clone().acquire_owned().await;
        let host = outside.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 0))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    })
    .await;
    match found {
        Ok(Ok(addrs)) => {
            let mut ips: Vec<IpAddr> = Vec::new();
            for ip in addrs.map(|a| a.ip().to_canonical()) {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            network.learn(&ips);
            Ok(ips)
        }
        Ok(Err(_)) => Err(Unresolved::Error(ErrorCode::NameUnresolvable)),
        Err(_) => Err(Unresolved::Error(ErrorCode::TemporaryResolverFailure)),
    }
}

/// The wasi:sockets check of a pod with the grant `network`: connections and datagrams only
/// to what [`Outbound::permits`], binds only to ephemeral ports, no listening. Refusals go to
/// the pod log (but for datagrams received, which are dropped quietly, as a firewall would).
#[allow(clippy::type_complexity)]
pub(super) fn check(
    network: Arc<Outbound>,
    log: PodLog,
) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |addr, usage| {
        let verdict = permits(&network, addr, usage);
        if let Err(why) = &verdict
            && !matches!(usage, SocketAddrUse::UdpReceive)
        {
            log.note(&format!("socket refused: {why}"));
        }
        let verdict: Pin<Box<dyn Future<Output = bool> + Send + Sync>> =
            Box::pin(std::future::ready(verdict.is_ok()));
        verdict
    }
}

fn permits(network: &Outbound, addr: SocketAddr, usage: SocketAddrUse) -> Result<(), String> {
    match usage {
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind if addr.port() == 0 => Ok(()),
        SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => Err(format!(
            "binding {addr}: a WASI pod may bind only ephemeral ports (port 0)"
        )),
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => Err(
            "listening for connections: a WASI pod serves through wasi:http, not wasi:sockets"
                .to_owned(),
        ),
        SocketAddrUse::TcpConnect => network
            .permits(addr, false)
            .map_err(|r| format!("connecting to {addr}: {r}")),
        SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => network
            .permits(addr, true)
            .map_err(|r| format!("datagrams with udp {addr}: {r}")),
    }
}
