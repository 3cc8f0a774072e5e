//! Messages on the QUIC link (hub <-> agents and hub <-> CLI), postcard-encoded and length-framed.
//!
//! Rules (postcard is not self-describing): no `skip_serializing_if`, `flatten` or `untagged`
//! here; enums only grow at the end; API objects ride along as JSON text (`ObjectJson`).
use serde::{Deserialize, Serialize};

/// Bumped only when a change cannot be expressed by appending enum variants.
pub const PROTOCOL_VERSION: u32 = 1;
/// The QUIC ALPN protocol id.
pub const ALPN: &[u8] = b"flotilla/1";
/// The ALPN id of the agent-to-agent mesh link (service traffic between nodes).
pub const MESH_ALPN: &[u8] = b"flotilla-mesh/1";
/// Largest single frame accepted (blobs travel as raw chunks after a frame, not inside one).
pub const MAX_FRAME: usize = 16 << 20;

/// An API object encoded as JSON text.
pub type ObjectJson = String;

/// First frame of a connection's first stream, in both directions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub software: String,
}

/// What the hub accepts on a stream the peer opens. One request per stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    // --- CLI (admin identity) ---
    Apply {
        objects: Vec<ObjectJson>,
    },
    Get {
        kind: crate::Kind,
        namespace: Option<String>,
        name: Option<String>,
    },
    Delete {
        kind: crate::Kind,
        namespace: String,
        name: String,
    },
    Scale {
        namespace: String,
        name: String,
        replicas: i32,
    },
    Logs {
        namespace: String,
        name: String,
        tail: Option<u32>,
        follow: bool,
    },
    /// Followed on the same stream by exactly `size` raw bytes.
    PushBlob {
        name: String,
        tag: String,
        digest: String,
        size: u64,
    },
    CreateToken {
        ttl_secs: Option<u64>,
        max_uses: Option<u32>,
    },
    // --- agent, before it has an identity ---
    Join {
        token: String,
        node_name: String,
        csr_pem: String,
    },
    // --- agent (node identity) ---
    /// Streams `WatchEvent`s for pods bound to the caller's node from `from_revision` on.
    Watch {
        from_revision: u64,
    },
    ReportNode {
        node: ObjectJson,
    },
    ReportPods {
        pods: Vec<PodReport>,
    },
    ResolveImage {
        image: String,
    },
    /// Answered with `Response::Blob` followed by the raw bytes.
    FetchBlob {
        digest: String,
    },
    // --- CLI (admin identity), added after the first release of this protocol ---
    /// A change to a Deployment's rollout, done by the hub in one transaction.
    Rollout {
        namespace: String,
        name: String,
        action: RolloutAction,
    },
    // --- agent (node identity) ---
    /// A ConfigMap or Secret a pod bound to the caller's node refers to; answered with
    /// `Response::Objects` (one item) or `Response::Error`.
    GetConfig {
        kind: crate::Kind,
        namespace: String,
        name: String,
    },
    // --- CLI (admin identity) ---
    /// A small change to one object made by the hub in one transaction (`fleet label`,
    /// `fleet taint`, `fleet cordon`), answered with `Response::Done`.
    Edit {
        kind: crate::Kind,
        namespace: String,
        name: String,
        edit: Edit,
    },
    /// Deletes a pod unless that would break a PodDisruptionBudget (the Eviction API);
    /// answered with `Response::Done`, or `Response::Retry` while a budget forbids it.
    Evict {
        namespace: String,
        name: String,
    },
    // --- agent (node identity) ---
    /// Events about pods bound to the caller's node (pulls, starts, probe failures, back-off),
    /// oldest first; answered with `Response::Ok`. The hub drops reports about other pods.
    ReportEvents {
        events: Vec<EventReport>,
    },
    // --- CLI (admin identity) ---
    /// `Delete` with kubectl's `--cascade` (`Delete` itself is `Background`); answered with
    /// `Response::Ok`.
    DeleteWith {
        kind: crate::Kind,
        namespace: String,
        name: String,
        propagation: PropagationPolicy,
    },
    /// `fleet exec`: runs a command in a pod's container. Answered with `Response::ExecStream`;
    /// then the client sends `ExecInput` frames and receives `ExecOutput` frames, the last
    /// being `Exit`.
    Exec(ExecRequest),
    /// `fleet logs` with a container and `--previous` (`Logs` is the older form, for the
    /// default container's current run). Answered like `Logs`.
    ContainerLogs(LogsRequest),
    // --- agent (node identity) ---
    /// Streams `DiscoveryEvent`s: every Service and EndpointSlice of the cluster from
    /// `from_revision` on (the node's DNS and mesh need them all).
    WatchDiscovery {
        from_revision: u64,
    },
    /// Service traffic to an endpoint on `node` that the caller cannot reach directly over
    /// the mesh link: the hub asks that node (`AgentRequest::MeshOpen`) and passes its
    /// `MeshOpened` back, then the bytes both ways.
    Relay(RelayRequest),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RelayRequest {
    pub node: String,
    pub target: MeshTarget,
}

/// What a node hears on its `WatchDiscovery` stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DiscoveryEvent {
    /// Every Service and EndpointSlice at `revision`; replaces what the agent had.
    Snapshot {
        revision: u64,
        objects: Vec<ObjectJson>,
    },
    Put {
        revision: u64,
        object: ObjectJson,
    },
    Deleted {
        revision: u64,
        kind: crate::Kind,
        namespace: String,
        name: String,
    },
    /// Nothing of these kinds changed up to `revision`.
    Bookmark {
        revision: u64,
    },
}

/// A container's log (`kubectl logs` semantics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub namespace: String,
    pub name: String,
    /// The container's name; None is the pod's default container.
    pub container: Option<String>,
    pub tail: Option<u32>,
    pub follow: bool,
    /// The run before the current one (the last terminated container).
    pub previous: bool,
}

impl LogsRequest {
    /// The default container's current run: what the older `Logs` requests ask for.
    pub fn current(namespace: String, name: String, tail: Option<u32>, follow: bool) -> Self {
        LogsRequest {
            namespace,
            name,
            container: None,
            tail,
            follow,
            previous: false,
        }
    }
}

/// A command to run in a running container (`kubectl exec` semantics).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub namespace: String,
    pub name: String,
    /// The container's name; None is the pod's first container.
    pub container: Option<String>,
    pub command: Vec<String>,
    /// Allocate a terminal (`-t`); its output arrives as `Stdout` only.
    pub tty: bool,
}

/// From the exec client to the command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecInput {
    Stdin(Vec<u8>),
    /// The client's stdin ended.
    StdinClosed,
    /// The client's terminal changed size.
    Resize {
        cols: u16,
        rows: u16,
    },
}

/// From the command to the exec client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecOutput {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended with this exit code (128 + signal when killed).
    Exit(i32),
}

/// What happens to the objects a deleted object owns (Kubernetes' `propagationPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PropagationPolicy {
    /// Dependents are deleted too (in Flotilla, in the same transaction as the owner).
    Background,
    /// Dependents first, then the owner. Deletion has no graceful phase yet, so this ends
    /// exactly like Background: everything goes in one transaction.
    Foreground,
    /// Only the owner goes; its dependents lose their owner reference and stay.
    Orphan,
}

impl PropagationPolicy {
    /// kubectl's `--cascade` values (and its deprecated `true`/`false`).
    pub fn from_cli(s: &str) -> Option<PropagationPolicy> {
        Some(match s {
            "background" | "true" => PropagationPolicy::Background,
            "foreground" => PropagationPolicy::Foreground,
            "orphan" | "false" => PropagationPolicy::Orphan,
            _ => return None,
        })
    }
}

/// One thing that happened to a pod on the reporting node. The time is the agent's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub event_type: crate::api::EventType,
    pub reason: String,
    pub message: String,
    /// RFC 3339, when it (last) happened on the node.
    pub time: String,
}

/// What `fleet label|taint|cordon|uncordon|scale` change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Edit {
    /// Sets and removes labels; a changed value needs `overwrite`, as with kubectl.
    Labels {
        set: Vec<(String, String)>,
        remove: Vec<String>,
        overwrite: bool,
    },
    /// Node taints: `add` as (key, value, effect); `remove` as (key, effect), where an empty
    /// effect removes the key's taints of every effect.
    Taints {
        add: Vec<(String, String, String)>,
        remove: Vec<(String, String)>,
        overwrite: bool,
    },
    /// Sets a node's `spec.unschedulable`.
    Cordon(bool),
    /// Sets `spec.replicas` of a Deployment, ReplicaSet or StatefulSet (`fleet scale`).
    Replicas(i32),
}

/// What `fleet rollout …` and `fleet set image` ask of a Deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RolloutAction {
    Pause,
    Resume,
    /// Stamps `kubectl.kubernetes.io/restartedAt` on the template, replacing every pod.
    Restart,
    /// Back to the template of `to_revision`, or of the previous revision when 0.
    Undo {
        to_revision: i64,
    },
    /// `container=image` pairs; container `*` means every container.
    SetImage {
        images: Vec<(String, String)>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// JSON of `api::PodStatus`.
    pub status: ObjectJson,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub kind: crate::Kind,
    pub namespace: String,
    pub name: String,
    pub action: ApplyAction,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Ok,
    Error {
        message: String,
    },
    Applied {
        results: Vec<Applied>,
    },
    Objects {
        items: Vec<ObjectJson>,
        revision: u64,
    },
    Token {
        token: String,
    },
    Joined {
        cert_pem: String,
        ca_pem: String,
    },
    Resolved {
        digest: String,
        size: u64,
    },
    /// Followed by `size` raw bytes.
    Blob {
        size: u64,
    },
    /// Followed by raw log bytes until the stream ends.
    LogStream,
    Pushed {
        digest: String,
    },
    /// Success with a line for the user (`deployment.apps/web rolled back`).
    Done {
        message: String,
    },
    /// Refused for now, worth asking again later (a disruption budget is exhausted).
    Retry {
        message: String,
    },
    /// To a node's status report: the hub had marked the node NotReady and its pods Unknown,
    /// so the agent should send every pod's status again, changed or not.
    ResendPods,
    /// To `Exec`: `ExecInput`/`ExecOutput` frames follow on the stream.
    ExecStream,
}

/// Desired-state events for one node, in revision order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WatchEvent {
    /// The complete set of pods bound to the node at `revision` (sent when the
    /// requested revision is too old or zero); replaces everything the agent had.
    Snapshot {
        revision: u64,
        pods: Vec<ObjectJson>,
    },
    Put {
        revision: u64,
        pod: ObjectJson,
    },
    Deleted {
        revision: u64,
        namespace: String,
        name: String,
        uid: String,
    },
    /// Nothing for this node changed up to `revision`.
    Bookmark {
        revision: u64,
    },
}

/// What the hub asks of an agent on a stream the hub opens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Answered with `Response::LogStream` + raw bytes, or `Response::Error`.
    Logs {
        namespace: String,
        name: String,
        tail: Option<u32>,
        follow: bool,
    },
    /// Answered with `Response::ExecStream` and exec frames, or `Response::Error`.
    Exec(ExecRequest),
    /// Answered like `Logs`.
    ContainerLogs(LogsRequest),
    /// A relayed service connection (`Request::Relay`): answered like a mesh stream.
    MeshOpen(MeshOpen),
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME} byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Encodes a message as a length-prefixed frame: u32 big-endian length, then postcard bytes.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let body = postcard::to_stdvec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(CodecError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a frame body (without the length prefix).
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CodecError> {
    Ok(postcard::from_bytes(body)?)
}

/// The first frame of a mesh stream: the endpoint on the receiving node that the caller wants
/// a connection to. Only endpoints of services on that node are let through.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeshOpen {
    pub target: MeshTarget,
}

/// A TCP or UDP endpoint. The TCP variants encode exactly as a bare `SocketAddr` does
/// (postcard writes its variant, V4 = 0 and V6 = 1, then the address), which is what the
/// `target` of agents from before UDP was: their streams still open, and they refuse a UDP
/// one as unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MeshTarget {
    TcpV4(std::net::SocketAddrV4),
    TcpV6(std::net::SocketAddrV6),
    Udp(std::net::SocketAddr),
}

impl MeshTarget {
    pub fn tcp(addr: std::net::SocketAddr) -> MeshTarget {
        match addr {
            std::net::SocketAddr::V4(a) => MeshTarget::TcpV4(a),
            std::net::SocketAddr::V6(a) => MeshTarget::TcpV6(a),
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        match *self {
            MeshTarget::TcpV4(a) => a.into(),
            MeshTarget::TcpV6(a) => a.into(),
            MeshTarget::Udp(a) => a,
        }
    }

    pub fn is_udp(&self) -> bool {
        matches!(self, MeshTarget::Udp(_))
    }
}

/// `10.42.1.7:8080`, or `udp 10.42.1.7:53`.
impl std::fmt::Display for MeshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_udp() {
            write!(f, "udp ")?;
        }
        write!(f, "{}", self.addr())
    }
}

/// The answer to [`MeshOpen`]; after `Connected` the stream carries the connection's bytes
/// (for UDP, each datagram as a big-endian u16 length and its bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MeshOpened {
    Connected,
    Refused { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    /// Golden bytes: if this changes, old agents can no longer talk to new hubs.
    #[test]
    fn golden_frames() {
        let hello = encode(&Hello {
            protocol: PROTOCOL_VERSION,
            software: "0.1.0".into(),
        })
        .unwrap();
        expect!["000000070105302e312e30"].assert_eq(&hex::encode(hello));
        let watch = encode(&Request::Watch { from_revision: 300 }).unwrap();
        expect!["0000000308ac02"].assert_eq(&hex::encode(watch));
        let ev = encode(&WatchEvent::Deleted {
            revision: 7,
            namespace: "default".into(),
            name: "w".into(),
            uid: "u".into(),
        })
        .unwrap();
        expect!["0000000e02070764656661756c7401770175"].assert_eq(&hex::encode(ev));
        let report = encode(&Request::ReportEvents {
            events: vec![EventReport {
                namespace: "default".into(),
                name: "w".into(),
                uid: "u".into(),
                event_type: crate::api::EventType::Warning,
                reason: "BackOff".into(),
                message: "m".into(),
                time: "t".into(),
            }],
        })
        .unwrap();
        expect!["0000001b11010764656661756c740177017501074261636b4f6666016d0174"]
            .assert_eq(&hex::encode(report));
        let tcp = || MeshTarget::tcp("10.42.1.7:8080".parse().unwrap());
        let open = encode(&MeshOpen { target: tcp() }).unwrap();
        expect!["00000007000a2a0107903f"].assert_eq(&hex::encode(open));
        // What agents from before UDP sent, a bare address, reads the same.
        let old: std::net::SocketAddr = "10.42.1.7:8080".parse().unwrap();
        assert_eq!(encode(&old).unwrap(), encode(&tcp()).unwrap());
        let v6: std::net::SocketAddr = "[fd00::7]:8080".parse().unwrap();
        assert_eq!(
            decode::<MeshTarget>(&postcard::to_stdvec(&v6).unwrap()).unwrap(),
            MeshTarget::tcp(v6)
        );
        let udp = encode(&MeshOpen {
            target: MeshTarget::Udp("10.42.1.7:53".parse().unwrap()),
        })
        .unwrap();
        expect!["0000000702000a2a010735"].assert_eq(&hex::encode(udp));
        let refused = encode(&MeshOpened::Refused { reason: "r".into() }).unwrap();
        expect!["00000003010172"].assert_eq(&hex::encode(refused));
        let relay = encode(&Request::Relay(RelayRequest {
            node: "b".into(),
            target: tcp(),
        }))
        .unwrap();
        expect!["0000000a160162000a2a0107903f"].assert_eq(&hex::encode(relay));
        let opened = encode(&AgentRequest::MeshOpen(MeshOpen { target: tcp() })).unwrap();
        expect!["0000000803000a2a0107903f"].assert_eq(&hex::encode(opened));
        let delete = encode(&Request::DeleteWith {
            kind: crate::Kind::Deployment,
            namespace: "default".into(),
            name: "web".into(),
            propagation: PropagationPolicy::Orphan,
        })
        .unwrap();
        expect!["0000000f12030764656661756c740377656202"].assert_eq(&hex::encode(delete));
        let logs = encode(&AgentRequest::ContainerLogs(LogsRequest {
            namespace: "default".into(),
            name: "p".into(),
            container: Some("c".into()),
            tail: Some(5),
            follow: false,
            previous: true,
        }))
        .unwrap();
        expect!["00000012020764656661756c74017001016301050001"].assert_eq(&hex::encode(logs));
        let discovery = encode(&Request::WatchDiscovery { from_revision: 300 }).unwrap();
        expect!["0000000315ac02"].assert_eq(&hex::encode(discovery));
        let deleted = encode(&DiscoveryEvent::Deleted {
            revision: 7,
            kind: crate::Kind::EndpointSlice,
            namespace: "default".into(),
            name: "w".into(),
        })
        .unwrap();
        expect!["0000000d0207100764656661756c740177"].assert_eq(&hex::encode(deleted));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[0xff, 0xff, 0xff][..],
            &[9, 0xff, 0xff, 0xff, 0xff, 0xff][..],
        ] {
            assert!(decode::<Request>(bytes).is_err());
        }
    }
}
