//! The ingress's certificates: from the `kubernetes.io/tls` Secrets the Ingresses that are
//! ours name in `spec.tls`, chosen by SNI (an exact host, then a `*.` wildcard for the first
//! label), and a self-signed one made at start for every other name. The Secrets are read
//! from the hub (which gives a gateway only those its Ingresses name) and cached sealed, so
//! HTTPS keeps working without the hub; they are read again every refresh, so a renewed
//! certificate is served without a restart.
use crate::Shared;
use arc_swap::ArcSwap;
use flotilla_proto::Object;
use flotilla_proto::api::Kind;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::warn;

/// The certificates by host name, for one version of the Ingresses and Secrets.
#[derive(Default, Debug)]
pub struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the domain after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

/// Picks the certificate for a handshake's SNI; the fallback for names no Ingress covers
/// (and for clients that send none).
#[derive(Debug)]
pub struct Resolver {
    pub certs: ArcSwap<Certs>,
    fallback: Arc<CertifiedKey>,
}

impl Resolver {
    pub fn new() -> anyhow::Result<Resolver> {
        let cert = rcgen::generate_simple_self_signed(vec!["flotilla-ingress.invalid".into()])?;
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("default ingress key: {e}"))?;
        let fallback = flotilla_transport::certified_key(vec![cert.cert.der().clone()], &key)
            .map_err(anyhow::Error::msg)?;
        Ok(Resolver {
            certs: ArcSwap::from_pointee(Certs::default()),
            fallback: Arc::new(fallback),
        })
    }

    fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let certs = self.certs.load();
        name.map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .and_then(|n| {
                certs.exact.get(&n).cloned().or_else(|| {
                    let (_, domain) = n.split_once('.')?;
                    certs.wildcard.get(domain).cloned()
                })
            })
            .unwrap_or_else(|| self.fallback.clone())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// A `kubernetes.io/tls` Secret's certificate chain and key (`tls.crt`, `tls.key`, PEM).
pub fn from_secret(secret: &Object) -> anyhow::Result<CertifiedKey> {
    let Object::Secret(s) = secret else {
        anyhow::bail!("not a Secret");
    };
    flotilla_transport::tls_secret_key(s).map_err(anyhow::Error::msg)
}

/// Which Secret serves which host names: every `spec.tls` entry of the Ingresses that are
/// ours, oldest Ingress first (it keeps a contested host). An entry without hosts covers its
/// Ingress's rule hosts.
pub fn wanted(objects: &crate::discovery::Objects) -> Vec<((String, String), Vec<String>)> {
    let mut out = Vec::new();
    for ing in super::routes::ours(objects) {
        let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
        for tls in &ing.spec.tls {
            let Some(secret) = &tls.secret_name else {
                continue;
            };
            let hosts = if tls.hosts.is_empty() {
                ing.spec
                    .rules
                    .iter()
                    .filter_map(|r| r.host.clone())
                    .collect()
            } else {
                tls.hosts.clone()
            };
            out.push(((ns.to_string(), secret.clone()), hosts));
        }
    }
    out
}

/// Reads the Secrets the Ingresses name and builds the certificates. A Secret that is
/// missing or unusable is logged and skipped: its hosts get the fallback certificate, and
/// every other Ingress keeps its own.
pub async fn load(shared: &Shared) -> Certs {
    let objects = shared.discovery.borrow().clone();
    let wanted = wanted(&objects);
    let mut certs = Certs::default();
    let mut read: HashMap<(String, String), Option<Arc<CertifiedKey>>> = HashMap::new();
    for ((ns, name), hosts) in wanted {
        let key = (ns.clone(), name.clone());
        if !read.contains_key(&key) {
            let got = match crate::envsource::fetch(shared, Kind::Secret, &ns, &name).await {
                Ok(Some(secret)) => match from_secret(&secret) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        warn!(secret = %format!("{ns}/{name}"), error = %e, "ingress TLS secret is unusable; its hosts get the default certificate");
                        None
                    }
                },
                Ok(None) => {
                    warn!(secret = %format!("{ns}/{name}"), "ingress TLS secret does not exist; its hosts get the default certificate");
                    None
                }
                Err(e) => {
                    warn!(secret = %format!("{ns}/{name}"), error = %e, "cannot read ingress TLS secret");
                    None
                }
            };
            read.insert(key.clone(), got);
        }
        let Some(Some(cert)) = read.get(&key) else {
            continue;
        };
        for host in hosts {
            let map = match host.strip_prefix("*.") {
                Some(domain) => certs.wildcard.entry(domain.to_string()),
                None => certs.exact.entry(host),
            };
            map.or_insert_with(|| cert.clone());
        }
    }
    certs
}
