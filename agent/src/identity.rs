//! The node's identity: joins the hub once with a token (pinning the hub's CA by hash), keeps
//! the issued certificate in the data dir, and builds the mutual-TLS client config from it.
use anyhow::{Context as _, bail};
use flotilla_proto::wire::{Request, Response};
use flotilla_transport::{cert_fingerprint, certs_from_pem};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub struct Identity {
    pub node_name: String,
    pub hub: SocketAddr,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity")
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    flotilla_transport::write_private(path, contents.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))
}

impl Identity {
    /// Loads a stored identity, if this agent has joined before.
    pub fn load(data_dir: &Path) -> anyhow::Result<Option<Identity>> {
        let d = dir(data_dir);
        if !d.join("node.pem").exists() {
            return Ok(None);
        }
        let read = |f: &str| {
            std::fs::read_to_string(d.join(f))
                .with_context(|| format!("failed to read identity file {f}"))
        };
        Ok(Some(Identity {
            node_name: read("node-name")?.trim().to_string(),
            hub: read("hub")?
                .trim()
                .parse()
                .context("identity/hub: invalid address")?,
            ca_pem: read("ca.pem")?,
            cert_pem: read("node.pem")?,
            key_pem: read("node.key")?,
        }))
    }

    fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let d = dir(data_dir);
        std::fs::create_dir_all(&d)?;
        write_private(&d.join("node.key"), &self.key_pem)?;
        write_private(&d.join("ca.pem"), &self.ca_pem)?;
        write_private(&d.join("node-name"), &self.node_name)?;
        write_private(&d.join("hub"), &self.hub.to_string())?;
        // Written last: its presence marks a complete identity.
        write_private(&d.join("node.pem"), &self.cert_pem)?;
        Ok(())
    }

    /// Joins the hub: connects trusting only the CA the token pins, sends a CSR, stores the result.
    pub async fn join(
        data_dir: &Path,
        hub: SocketAddr,
        token: &str,
        node_name: &str,
    ) -> anyhow::Result<Identity> {
        let parsed = flotilla_proto::token::parse(token)
            .context("malformed join token (expected FLT1.<ca-hash>.<id>.<secret>)")?;
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("{}{node_name}", flotilla_transport::NODE_CN_PREFIX),
        );
        let csr_pem = params.serialize_request(&key)?.pem()?;
        let cfg = flotilla_transport::pinned_client_config(&parsed.ca_fingerprint)?;
        let (endpoint, conn) = flotilla_transport::connect(hub, cfg)
            .await
            .with_context(|| format!("failed to reach hub {hub}"))?;
        let req = Request::Join {
            token: token.to_string(),
            node_name: node_name.to_string(),
            csr_pem,
        };
        let (_s, _r, resp): (_, _, Response) = flotilla_transport::request(&conn, &req).await?;
        conn.close(0u32.into(), b"joined");
        endpoint.wait_idle().await;
        let (cert_pem, ca_pem) = match resp {
            Response::Joined { cert_pem, ca_pem } => (cert_pem, ca_pem),
            Response::Error { message } => bail!("{message}"),
            other => bail!("unexpected answer to join: {other:?}"),
        };
        let ca = certs_from_pem(&ca_pem)?
            .into_iter()
            .next()
            .context("hub sent no CA")?;
        if cert_fingerprint(&ca) != parsed.ca_fingerprint {
            bail!("the hub's CA does not match the join token");
        }
        let id = Identity {
            node_name: node_name.to_string(),
            hub,
            ca_pem,
            cert_pem,
            key_pem: key.serialize_pem(),
        };
        id.save(data_dir)?;
        Ok(id)
    }

    pub fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        Ok(flotilla_transport::client_config(
            &self.ca_pem,
            &self.cert_pem,
            &self.key_pem,
        )?)
    }
}
