//! The QUIC link every Flotilla process speaks: TLS configurations rooted in the hub's CA,
//! join-token CA pinning, peer identities from client certificates, and framed streams.
pub mod seal;

use flotilla_proto::wire::{self, CodecError};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The name every hub certificate carries and every client asks for. Clients trust the hub's
/// CA (pinned by the join token), so the hub's network address need not be in its certificate.
pub const HUB_SERVER_NAME: &str = "flotilla-hub";
/// Common name prefix of node certificates (`system:node:NAME`, as Kubernetes names kubelets).
pub const NODE_CN_PREFIX: &str = "system:node:";
/// Common name of the admin client certificate.
pub const ADMIN_CN: &str = "system:admin";

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("invalid certificate or key PEM: {0}")]
    Pem(String),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("stream closed")]
    Closed,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("peer speaks protocol {0}, this build speaks {PROTOCOL}", PROTOCOL = wire::PROTOCOL_VERSION)]
    Protocol(u32),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider (wasmtime-wasi-http's outgoing requests
/// ask for the process default). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Who is on the other end of a connection, from its client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// No client certificate: only `Join` is allowed.
    Anonymous,
    Admin,
    Node(String),
}

pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Pem(e.to_string()))
}

pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, TransportError> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TransportError::Pem(e.to_string()))
}

/// The certificate chain and key of a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`), ready
/// to serve. The agents' ingress serves with it; the hub checks with it, to report a Secret
/// its hosts cannot be served with.
pub fn tls_secret_key(
    secret: &flotilla_proto::api::Secret,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    let field = |k: &str| -> Result<Vec<u8>, String> {
        secret
            .value(k)?
            .ok_or_else(|| format!("data[{k}] is missing"))
    };
    let chain = CertificateDer::pem_slice_iter(&field("tls.crt")?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("data[tls.crt]: {e}"))?;
    if chain.is_empty() {
        return Err("data[tls.crt] holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&field("tls.key")?)
        .map_err(|e| format!("data[tls.key]: {e}"))?;
    certified_key(chain, &key)
}

/// A chain and its key as rustls serves them.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: &PrivateKeyDer<'_>,
) -> Result<rustls::sign::CertifiedKey, String> {
    let key = rustls::crypto::ring::sign::any_supported_type(key)
        .map_err(|e| format!("data[tls.key]: unusable private key: {e}"))?;
    Ok(rustls::sign::CertifiedKey::new(chain, key))
}

/// Writes a credential file readable by its owner only (mode 0600), durably and atomically:
/// a temp file is synced and renamed over the target.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// SHA-256 of a certificate's DER, hex: the CA pin carried in join tokens.
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// How long a silent peer's connection is kept before it is given up (bounds how long a dead
/// link looks alive).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15);

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(4)));
    t.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::from_u32(15_000))),
    ));
    t.max_concurrent_bidi_streams(1024u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// The hub's server configuration: presents `chain` (leaf then CA), and verifies client
/// certificates against `ca` when offered. Clients without one are let in as `Anonymous`.
pub fn server_config(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<quinn::ServerConfig, TransportError> {
    mutual_server(ca_pem, chain_pem, key_pem, true, wire::ALPN)
}

/// The name a node's certificate carries for its mesh server, and that peers verify.
pub fn mesh_server_name(node: &str) -> String {
    format!("{node}.node.flotilla")
}

/// A node's mesh server: presents the node's certificate and lets in only peers with a
/// certificate from the cluster's CA (callers still check that the peer is a node).
pub fn mesh_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ServerConfig, TransportError> {
    mutual_server(ca_pem, cert_pem, key_pem, false, wire::MESH_ALPN)
}

/// A server presenting `chain_pem` that verifies client certificates against `ca_pem`
/// (and, with `anonymous`, also lets clients without one in).
fn mutual_server(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    anonymous: bool,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, TransportError> {
    let provider = provider();
    let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(ca_pem)?,
        provider.clone(),
    );
    if anonymous {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier
        .build()
        .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem(chain_pem)?, key_from_pem(key_pem)?)?;
    finish_server(tls, alpn)
}

fn finish_server(
    mut tls: rustls::ServerConfig,
    alpn: &[u8],
) -> Result<quinn::ServerConfig, TransportError> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// A node's client for other nodes' mesh servers (verified against [`mesh_server_name`]).
pub fn mesh_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ClientConfig, TransportError> {
    authenticated_client(ca_pem, cert_pem, key_pem, wire::MESH_ALPN)
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

/// A client with its own certificate (agents after joining, and the CLI's admin credential).
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ClientConfig, TransportError> {
    authenticated_client(ca_pem, cert_pem, key_pem, wire::ALPN)
}

fn authenticated_client(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransportError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)?;
    finish_client(tls, alpn)
}

/// A client without a certificate that trusts only a hub whose CA has the given SHA-256
/// fingerprint (from the join token), like K3s's `K10<hash>::` tokens.
pub fn pinned_client_config(ca_fingerprint: &str) -> Result<quinn::ClientConfig, TransportError> {
    let verifier = PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    finish_client(tls, wire::ALPN)
}

fn finish_client(
    mut tls: rustls::ClientConfig,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, TransportError> {
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport_config());
    Ok(cfg)
}

/// Verifies the hub's chain against the CA certificate in that chain whose fingerprint
/// matches the pin. Full WebPKI verification still runs; only the root comes from the pin.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| cert_fingerprint(c) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the hub's CA does not match the join token's CA hash".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The identity proven by the peer's (already CA-verified) client certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Identity {
    let Some(certs) = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return Identity::Anonymous;
    };
    let Some(leaf) = certs.first() else {
        return Identity::Anonymous;
    };
    identity_of(leaf).unwrap_or(Identity::Anonymous)
}

/// Whether a PEM certificate may serve TLS (has the serverAuth extended key usage). Node
/// certificates issued before the mesh existed were for clients only.
pub fn cert_serves(cert_pem: &str) -> bool {
    let Some(der) = certs_from_pem(cert_pem)
        .ok()
        .and_then(|c| c.into_iter().next())
    else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
        return false;
    };
    matches!(cert.extended_key_usage(), Ok(Some(eku)) if eku.value.server_auth)
}

/// Reads the identity from a certificate's common name.
pub fn identity_of(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if cn == ADMIN_CN {
        Some(Identity::Admin)
    } else {
        cn.strip_prefix(NODE_CN_PREFIX)
            .map(|n| Identity::Node(n.to_string()))
    }
}

/// A server endpoint on an already bound socket (so callers and tests choose the port).
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    cfg: quinn::ServerConfig,
) -> Result<quinn::Endpoint, TransportError> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TransportError::Io(std::io::Error::other("no async runtime")))?;
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(cfg),
        socket,
        runtime,
    )?)
}

/// Connects to the hub at `addr` and exchanges `Hello`s.
pub async fn connect(
    addr: std::net::SocketAddr,
    cfg: quinn::ClientConfig,
) -> Result<(quinn::Endpoint, quinn::Connection), TransportError> {
    let bind: std::net::SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse()
    } else {
        "0.0.0.0:0".parse()
    }
    .map_err(|e: std::net::AddrParseError| TransportError::Io(std::io::Error::other(e)))?;
    let mut endpoint = quinn::Endpoint::client(bind)?;
    endpoint.set_default_client_config(cfg);
    let conn = endpoint.connect(addr, HUB_SERVER_NAME)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send_frame(&mut send, &hello()).await?;
    let theirs: wire::Hello = recv_frame(&mut recv).await?.ok_or(TransportError::Closed)?;
    check_hello(&theirs)?;
    let _ = send.finish();
    Ok((endpoint, conn))
}

pub fn hello() -> wire::Hello {
    wire::Hello {
        protocol: wire::PROTOCOL_VERSION,
        software: flotilla_proto::VERSION.to_string(),
    }
}

pub fn check_hello(h: &wire::Hello) -> Result<(), TransportError> {
    if h.protocol != wire::PROTOCOL_VERSION {
        return Err(TransportError::Protocol(h.protocol));
    }
    Ok(())
}

/// Writes one length-prefixed postcard frame.
pub async fn send_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), TransportError> {
    let bytes = wire::encode(msg)?;
    send.write_all(&bytes).await?;
    Ok(())
}

/// Reads one frame; `None` when the peer finished the stream cleanly between frames.
pub async fn recv_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<Option<T>, TransportError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > wire::MAX_FRAME {
        return Err(CodecError::TooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(wire::decode(&body)?))
}

/// Opens a stream, sends `req`, and reads the first response frame.
pub async fn request<Q: Serialize, R: DeserializeOwned>(
    conn: &quinn::Connection,
    req: &Q,
) -> Result<(quinn::SendStream, quinn::RecvStream, R), TransportError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send_frame(&mut send, req).await?;
    let resp = recv_frame(&mut recv).await?.ok_or(TransportError::Closed)?;
    Ok((send, recv, resp))
}
