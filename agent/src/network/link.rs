//! The pod network's links, over netlink: the node's bridge, a pod's network namespace, and
//! the veth pair between them.
//!
//! Work inside a pod's namespace runs on a thread of its own that enters (or creates) the
//! namespace, with a netlink socket opened there: a socket belongs to the namespace it was
//! opened in, and a thread that changed namespace is never handed back to a pool.
use super::NetworkError;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

/// The pod's end of its veth pair.
const POD_IFNAME: &str = "eth0";

fn failed(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |e| NetworkError::Setup {
        what,
        message: match &e {
            rtnetlink::Error::NetlinkError(m) => m.to_io().to_string(),
            _ => e.to_string(),
        },
    }
}

fn io_failed(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetworkError {
    let what = what.into();
    move |e| NetworkError::Setup {
        what,
        message: e.to_string(),
    }
}

/// The errno a netlink request was refused with.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// A netlink connection in the agent's own namespace, served on the current runtime.
pub fn connect() -> Result<Handle, NetworkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(io_failed("netlink"))?;
    tokio::spawn(connection);
    Ok(handle)
}

/// The index of link `name`, if there is one.
async fn index(h: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(failed(format!("find link {name}"))(e)),
    }
}

async fn up(h: &Handle, index: u32, name: &str) -> Result<(), NetworkError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(failed(format!("set {name} up")))
}

/// Adds `ip/prefix` to link `index`; one it has already is fine.
async fn add_address(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> Result<(), NetworkError> {
    let mut add = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        // No duplicate detection: the address is ours to hand out, and usable at once.
        add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
    }
    match add.execute().await {
        Err(e) if errno(&e) != Some(libc::EEXIST) => {
            Err(failed(format!("add address {ip}/{prefix}"))(e))
        }
        _ => Ok(()),
    }
}

/// Makes sure the node's bridge `name` exists, is up, and has `gateway/prefix` as its only
/// address of that family (an earlier pod CIDR's goes); returns its index.
pub async fn bridge(
    h: &Handle,
    name: &str,
    gateway: IpAddr,
    prefix: u8,
) -> Result<u32, NetworkError> {
    let index = match index(h, name).await? {
        Some(i) => i,
        None => {
            if let Err(e) = h.link().add(LinkBridge::new(name).build()).execute().await
                && errno(&e) != Some(libc::EEXIST)
            {
                return Err(failed(format!("create bridge {name}"))(e));
            }
            index(h, name).await?.ok_or_else(|| NetworkError::Setup {
                what: format!("create bridge {name}"),
                message: "it is not there after creating it".into(),
            })?
        }
    };
    let mut addresses = h.address().get().set_link_index_filter(index).execute();
    let mut have = false;
    let mut stale = Vec::new();
    while let Some(a) = addresses
        .try_next()
        .await
        .map_err(failed(format!("list addresses of {name}")))?
    {
        let Some(ip) = a.attributes.iter().find_map(|attr| match attr {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        }) else {
            continue;
        };
        let link_local = matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if ip.is_ipv4() != gateway.is_ipv4() || link_local {
            continue;
        }
        if ip == gateway && a.header.prefix_len == prefix {
            have = true;
        } else {
            stale.push(a);
        }
    }
    for a in stale {
        h.address()
            .del(a)
            .execute()
            .await
            .map_err(failed(format!("remove an old address of {name}")))?;
    }
    if !have {
        add_address(h, index, gateway, prefix).await?;
    }
    up(h, index, name).await?;
    Ok(index)
}

/// Creates the veth pair `host` (on the node, a port of bridge `bridge`, hairpin on so a pod
/// reaches itself through a hostPort) and `eth0` (in the namespace `netns`); returns the
/// index of `host`. With `replace`, a `host` link left by an earlier attempt is replaced;
/// without, it is an error. Three round trips to the kernel: the pair, up and on the bridge,
/// in one request; its index; hairpin.
pub async fn veth(
    h: &Handle,
    host: &str,
    netns: &impl AsFd,
    bridge: u32,
    replace: bool,
) -> Result<u32, NetworkError> {
    let pair = || {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(POD_IFNAME.to_string())
            .setns_by_fd(netns.as_fd().as_raw_fd())
            .build();
        LinkVeth::new(host, POD_IFNAME)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .controller(bridge)
            .up()
            .build()
    };
    match h.link().add(pair()).execute().await {
        Err(e) if replace && errno(&e) == Some(libc::EEXIST) => {
            delete(h, host).await?;
            h.link().add(pair()).execute().await
        }
        added => added,
    }
    .map_err(failed(format!("create veth {host} on the bridge")))?;
    let index = index(h, host).await?.ok_or_else(|| NetworkError::Setup {
        what: format!("create veth {host}"),
        message: "it is not there after creating it".into(),
    })?;
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(failed(format!("set hairpin on {host}")))?;
    Ok(index)
}

/// Whether link `index` is there, named `name`.
pub async fn is_there(h: &Handle, index: u32, name: &str) -> bool {
    let mut links = h.link().get().match_index(index).execute();
    matches!(links.try_next().await, Ok(Some(link)) if link.attributes.iter().any(
        |a| matches!(a, LinkAttribute::IfName(n) if n == name)
    ))
}

/// Deletes link `name` (and so its veth peer); one that is not there is fine.
pub async fn delete(h: &Handle, name: &str) -> Result<(), NetworkError> {
    match index(h, name).await? {
        Some(index) => delete_index(h, index, name).await,
        None => Ok(()),
    }
}

/// Deletes link `index` (`what` names it in errors); one that is not there is fine.
pub async fn delete_index(h: &Handle, index: u32, what: &str) -> Result<(), NetworkError> {
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) != Some(libc::ENODEV) => Err(failed(format!("delete {what}"))(e)),
        _ => Ok(()),
    }
}

/// Creates a network namespace bound at `path` (as `ip netns add` does, so `ip netns`
/// knows it) with `lo` up.
pub async fn create_netns(path: &Path) -> Result<(), NetworkError> {
    let path = path.to_path_buf();
    in_netns(move || enter_new(&path), |h| async move { lo_up(&h).await }).await
}

/// Creates a network namespace with `lo` up, held only by the returned descriptor (nothing
/// in `/run/netns`): it goes when the descriptor is closed, the agent's end included, so a
/// namespace kept ready this way is never left behind. [`bind_netns`] gives it a path.
pub async fn unbound_netns() -> Result<OwnedFd, NetworkError> {
    in_netns(
        || unshare_net("a spare namespace"),
        |h| async move {
            lo_up(&h).await?;
            let ns = std::fs::File::open("/proc/thread-self/ns/net")
                .map_err(io_failed("open the new network namespace"))?;
            Ok(OwnedFd::from(ns))
        },
    )
    .await
}

/// Binds the namespace `ns` at `path`, as [`create_netns`] would have bound a new one.
pub fn bind_netns(ns: &OwnedFd, path: &Path) -> Result<(), NetworkError> {
    bind_at(&format!("/proc/self/fd/{}", ns.as_raw_fd()), path)
}

/// Binds the namespace file `from` at `path` (a new file, removed again if the bind fails).
fn bind_at(from: &str, path: &Path) -> Result<(), NetworkError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_failed(format!("create {}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_failed(format!("create {}", path.display())))?;
    let bound = nix::mount::mount(
        Some(from),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    );
    bound.map_err(|e| {
        let _ = std::fs::remove_file(path);
        NetworkError::Setup {
            what: format!("bind {}", path.display()),
            message: e.to_string(),
        }
    })
}

async fn lo_up(h: &Handle) -> Result<(), NetworkError> {
    let lo = index(h, "lo").await?.ok_or_else(|| NetworkError::Setup {
        what: "set lo up".into(),
        message: "the new namespace has no lo".into(),
    })?;
    up(h, lo, "lo").await
}

/// Gives the pod's `eth0` in `netns` its address `ip/prefix`, sets it up, and routes
/// everything through `gateway` (the bridge).
pub async fn configure(
    netns: &Path,
    ip: IpAddr,
    prefix: u8,
    gateway: IpAddr,
) -> Result<(), NetworkError> {
    let netns = netns.to_path_buf();
    in_netns(
        move || enter(&netns),
        move |h| async move {
            let eth0 = index(&h, POD_IFNAME)
                .await?
                .ok_or_else(|| NetworkError::Setup {
                    what: format!("configure {POD_IFNAME}"),
                    message: "the pod's namespace has no eth0".into(),
                })?;
            add_address(&h, eth0, ip, prefix).await?;
            up(&h, eth0, POD_IFNAME).await?;
            let any = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let route = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(any, 0)
                .and_then(|r| r.gateway(gateway))
                .map_err(|e| NetworkError::Setup {
                    what: "default route".into(),
                    message: e.to_string(),
                })?
                .build();
            match h.route().add(route).execute().await {
                Err(e) if errno(&e) != Some(libc::EEXIST) => {
                    Err(failed(format!("route via {gateway}"))(e))
                }
                _ => Ok(()),
            }
        },
    )
    .await
}

/// Unbinds and removes the namespace at `path` (it goes when its last process has); one
/// that is not there is fine.
pub fn delete_netns(path: &Path) -> Result<(), NetworkError> {
    use nix::errno::Errno;
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => {
            return Err(NetworkError::Setup {
                what: format!("unmount {}", path.display()),
                message: e.to_string(),
            });
        }
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_failed(format!("remove {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Runs `work` on a thread of its own, which `enter` first moves into a namespace, with a
/// netlink connection of that namespace.
async fn in_netns<E, F, Fut, T>(enter: E, work: F) -> Result<T, NetworkError>
where
    E: FnOnce() -> Result<(), NetworkError> + Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("flotilla-netns".into())
        .spawn(move || {
            let run = || {
                enter()?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(io_failed("netns runtime"))?;
                rt.block_on(async {
                    let (connection, handle, _) =
                        rtnetlink::new_connection().map_err(io_failed("netlink in the pod"))?;
                    tokio::spawn(connection);
                    work(handle).await
                })
            };
            let _ = tx.send(run());
        });
    thread.map_err(io_failed("spawn a netns thread"))?;
    rx.await.map_err(|_| NetworkError::Setup {
        what: "netns thread".into(),
        message: "it ended without an answer".into(),
    })?
}

/// Moves this thread into the namespace at `path`.
fn enter(path: &Path) -> Result<(), NetworkError> {
    let ns = std::fs::File::open(path).map_err(io_failed(format!("open {}", path.display())))?;
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Setup {
        what: format!("enter {}", path.display()),
        message: e.to_string(),
    })
}

/// Moves this thread into a new namespace and binds it at `path`.
fn enter_new(path: &Path) -> Result<(), NetworkError> {
    unshare_net(&path.display().to_string())?;
    bind_at("/proc/thread-self/ns/net", path)
}

/// Moves this thread into a new network namespace, the one meant for `what`.
fn unshare_net(what: &str) -> Result<(), NetworkError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| NetworkError::Setup {
        what: format!("unshare the network for {what}"),
        message: e.to_string(),
    })
}
