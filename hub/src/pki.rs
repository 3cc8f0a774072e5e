//! The hub's certificate authority: created when the data dir is initialised, it signs the
//! hub's server certificate, the admin credential and every node's certificate.
use flotilla_transport::{
    ADMIN_CN, HUB_SERVER_NAME, NODE_CN_PREFIX, cert_fingerprint, certs_from_pem,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid certificate signing request: {0}")]
    BadCsr(String),
    #[error("{0}")]
    Transport(#[from] flotilla_transport::TransportError),
}

/// The CA and the hub's own credentials, loaded from (or created in) the data dir.
pub struct Pki {
    pub ca_pem: String,
    ca_key: KeyPair,
    /// Leaf followed by the CA, so pinned clients can find the CA in the chain.
    pub server_chain_pem: String,
    pub server_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    pub ca_fingerprint: String,
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

/// Writes a private file (mode 0600), naming the path in errors.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    flotilla_transport::write_private(path, contents).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

fn validity(params: &mut CertificateParams, days: u64) {
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + Duration::from_secs(days * 86400)).into();
}

fn named(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p
}

impl Pki {
    /// Loads the PKI from `dir`, creating it on first start. `extra_names` are added to the
    /// hub certificate's SANs (besides the fixed name clients ask for).
    pub fn load_or_init(dir: &Path, extra_names: &[String]) -> Result<Pki, PkiError> {
        let ca_path = dir.join("ca.pem");
        if !ca_path.exists() {
            Self::init(dir, extra_names)?;
        }
        let ca_pem = read(&ca_path)?;
        let ca_key = KeyPair::from_pem(&read(&dir.join("ca.key"))?)?;
        let ca_der = certs_from_pem(&ca_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::BadCsr("empty ca.pem".into()))?;
        Ok(Pki {
            ca_fingerprint: cert_fingerprint(&ca_der),
            ca_pem,
            ca_key,
            server_chain_pem: read(&dir.join("hub.pem"))?,
            server_key_pem: read(&dir.join("hub.key"))?,
            admin_cert_pem: read(&dir.join("admin.pem"))?,
            admin_key_pem: read(&dir.join("admin.key"))?,
        })
    }

    fn init(dir: &Path, extra_names: &[String]) -> Result<(), PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.into(),
            source,
        })?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = named("flotilla-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut ca_params, 3650);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let server_key = KeyPair::generate()?;
        let mut names = vec![HUB_SERVER_NAME.to_string()];
        names.extend(extra_names.iter().cloned());
        let mut sp = CertificateParams::new(names)?;
        sp.distinguished_name = named(HUB_SERVER_NAME).distinguished_name;
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        validity(&mut sp, 3650);
        let server_cert = sp.signed_by(&server_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut ap = named(ADMIN_CN);
        ap.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut ap, 3650);
        let admin_cert = ap.signed_by(&admin_key, &issuer)?;

        // Keys first and the CA certificate last: its presence marks a complete init.
        write_private(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes())?;
        write_private(&dir.join("hub.key"), server_key.serialize_pem().as_bytes())?;
        write_private(
            &dir.join("hub.pem"),
            format!("{}{}", server_cert.pem(), ca_cert.pem()).as_bytes(),
        )?;
        write_private(&dir.join("admin.key"), admin_key.serialize_pem().as_bytes())?;
        write_private(&dir.join("admin.pem"), admin_cert.pem().as_bytes())?;
        write_private(&dir.join("ca.pem"), ca_cert.pem().as_bytes())?;
        Ok(())
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject is set here, from the
    /// node name the token holder asked for, so a node cannot obtain another identity's rights.
    pub fn sign_node(&self, node: &str, csr_pem: &str) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        // Server use too, under the node's mesh name: other nodes connect to it for service
        // traffic and verify that name.
        let mut p = CertificateParams::new(vec![flotilla_transport::mesh_server_name(node)])?;
        p.distinguished_name = named(&format!("{NODE_CN_PREFIX}{node}")).distinguished_name;
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        validity(&mut p, 365);
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, &self.ca_key)?;
        Ok(p.signed_by(&csr.public_key, &issuer)?.pem())
    }
}
