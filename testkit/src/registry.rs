//! A real OCI registry on loopback (Debian's `docker-registry`, with a config of our own so
//! it listens on 127.0.0.1 only), and test images built here from `busybox-static`: layers
//! are tar files made in the test, pushed over the registry's HTTP API with oci-client.
use anyhow::Context as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageManifest};
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A running `docker-registry` storing into a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port(ip: std::net::IpAddr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Registry {
    /// Starts a registry on loopback; fails clearly when `docker-registry` is missing.
    pub fn start() -> anyhow::Result<Registry> {
        Registry::start_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// Starts a registry listening on `ip`, in the calling thread's network namespace (in
    /// [`crate::netns::Net::block_on`], the hub's: agents reach it at `Net::HUB_IP`).
    pub fn start_on(ip: std::net::IpAddr) -> anyhow::Result<Registry> {
        let bin = ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .context("registry tests need Debian's docker-registry: run scripts/setup")?;
        let dir = tempfile::tempdir()?;
        let addr = SocketAddr::new(ip, free_port(ip));
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: {addr}}}\n",
                dir.path().join("data").display()
            ),
        )?;
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start docker-registry")?;
        let reg = Registry { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(reg)
    }

    /// `host:port`, for image references and the agents' insecure-registry list.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    fn client(&self) -> Client {
        flotilla_transport::install_crypto_provider();
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
    }

    fn reference(&self, name: &str) -> anyhow::Result<Reference> {
        Ok(format!("{}/{name}", self.host()).parse()?)
    }

    /// Pushes a single-platform image; returns the manifest digest.
    pub async fn push(&self, name: &str, image: &TestImage) -> anyhow::Result<String> {
        let reference = self.reference(name)?;
        let client = self.client();
        let (manifest, _) = self.push_parts(&client, &reference, image).await?;
        let bytes = serde_json::to_vec(&manifest)?;
        let digest = sha256(&bytes);
        client
            .push_manifest_raw(&reference, bytes, OCI_IMAGE_MEDIA_TYPE.parse()?)
            .await?;
        Ok(digest)
    }

    /// Pushes blobs and returns the manifest (not pushed) and its size.
    async fn push_parts(
        &self,
        client: &Client,
        reference: &Reference,
        image: &TestImage,
    ) -> anyhow::Result<(OciImageManifest, usize)> {
        let layers: Vec<ImageLayer> = image
            .layers
            .iter()
            .map(|(data, media_type)| ImageLayer::new(data.clone(), media_type.clone(), None))
            .collect();
        let config = Config::new(
            with_diff_ids(&image.config, &image.config_media_type, &image.layers)?,
            image.config_media_type.clone(),
            None,
        );
        for l in &layers {
            client
                .push_blob(reference, l.data.clone(), &l.sha256_digest())
                .await?;
        }
        client
            .push_blob(reference, config.data.clone(), &config.sha256_digest())
            .await?;
        let manifest = OciImageManifest::build(&layers, &config, None);
        let size = serde_json::to_vec(&manifest)?.len();
        Ok((manifest, size))
    }

    /// Pushes an image index with one image per (architecture, image); returns the index
    /// digest and each platform manifest's digest.
    pub async fn push_index(
        &self,
        name: &str,
        images: &[(&str, &TestImage)],
    ) -> anyhow::Result<(String, Vec<String>)> {
        let client = self.client();
        let reference = self.reference(name)?;
        let mut entries = Vec::new();
        let mut digests = Vec::new();
        for (arch, image) in images {
            let (manifest, _) = self.push_parts(&client, &reference, image).await?;
            let bytes = serde_json::to_vec(&manifest)?;
            let digest = sha256(&bytes);
            client
                .push_manifest_raw(
                    &reference.clone_with_digest(digest.clone()),
                    bytes.clone(),
                    OCI_IMAGE_MEDIA_TYPE.parse()?,
                )
                .await?;
            entries.push(serde_json::json!({
                "mediaType": OCI_IMAGE_MEDIA_TYPE,
                "digest": digest,
                "size": bytes.len(),
                "platform": {"architecture": arch, "os": "linux"},
            }));
            digests.push(digest);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_INDEX_MEDIA_TYPE,
            "manifests": entries,
        });
        let bytes = serde_json::to_vec(&index)?;
        let digest = sha256(&bytes);
        client
            .push_manifest_raw(&reference, bytes, OCI_IMAGE_INDEX_MEDIA_TYPE.parse()?)
            .await?;
        Ok((digest, digests))
    }

    /// The registry's file for blob `digest` (to corrupt it in a test).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// An image to push: layers (bytes, media type) and a config.
#[derive(Clone)]
pub struct TestImage {
    pub layers: Vec<(Vec<u8>, String)>,
    pub config: Vec<u8>,
    pub config_media_type: String,
}

/// An image config's bytes with `rootfs.diff_ids` set to the digests of the uncompressed
/// `layers`, as a build tool writes them (the agent checks them); other configs (a wasm
/// artifact's) are left as they are.
fn with_diff_ids(
    config: &[u8],
    media_type: &str,
    layers: &[(Vec<u8>, String)],
) -> anyhow::Result<Vec<u8>> {
    use flotilla_oci::unpack::Compression;
    if !matches!(
        media_type,
        "application/vnd.oci.image.config.v1+json"
            | "application/vnd.docker.container.image.v1+json"
    ) {
        return Ok(config.to_vec());
    }
    let mut json: serde_json::Value = serde_json::from_slice(config).context("image config")?;
    let mut ids = Vec::new();
    for (data, layer_type) in layers {
        let tar = match Compression::from_media_type(layer_type)? {
            Compression::Gzip => {
                let mut tar = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::MultiGzDecoder::new(&data[..]),
                    &mut tar,
                )?;
                tar
            }
            Compression::Zstd => zstd::decode_all(&data[..])?,
            Compression::None => data.clone(),
        };
        ids.push(sha256(&tar));
    }
    json["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": ids});
    Ok(serde_json::to_vec(&json)?)
}

/// Builds tar layers in memory.
pub struct Layer {
    tar: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            tar: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    pub fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.tar
            .append_data(&mut h, path, std::io::empty())
            .expect("tar dir");
        self
    }

    pub fn file(mut self, path: &str, mode: u32, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data).expect("tar file");
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar
            .append_link(&mut h, path, target)
            .expect("tar symlink");
        self
    }

    /// An entry whose name is written raw, bypassing the tar crate's checks (for traversal).
    pub fn raw_file(mut self, name: &str, data: &[u8]) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, data.len() as u64);
        {
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        }
        h.set_cksum();
        self.tar.append(&h, data).expect("tar raw");
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.tar.into_inner().expect("tar finish")
    }

    pub fn gzip(self) -> (Vec<u8>, String) {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&self.tar()).expect("gzip");
        (gz.finish().expect("gzip"), LAYER_GZIP.to_string())
    }

    pub fn zstd(self) -> (Vec<u8>, String) {
        (
            zstd::encode_all(&self.tar()[..], 3).expect("zstd"),
            LAYER_ZSTD.to_string(),
        )
    }
}

/// The applets test images link to busybox.
const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "id", "ls", "touch", "mkdir", "sleep", "wget", "httpd", "hostname",
    "grep", "head", "ps", "mount", "dd", "env", "pwd", "true", "false", "nc", "kill", "seq",
    "tail", "ip", "ifconfig", "yes", "rm", "unshare", "whoami", "test", "timeout",
];

/// A layer with a static busybox as `/bin/busybox`, its applets, and /etc/passwd with `root`
/// and `app` (uid 1000).
pub fn busybox_layer() -> anyhow::Result<Layer> {
    let busybox = std::fs::read("/usr/bin/busybox")
        .or_else(|_| std::fs::read("/bin/busybox"))
        .context("container tests need busybox-static: run scripts/setup")?;
    let mut l = Layer::new()
        .dir("bin")
        .dir("etc")
        .dir("tmp")
        .dir("var")
        .dir("var/www")
        .dir("home")
        .dir("home/app")
        .file("bin/busybox", 0o755, &busybox)
        .file(
            "etc/passwd",
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        )
        .file("etc/group", 0o644, b"root:x:0:\napp:x:1000:\n")
        .file("var/www/index.html", 0o644, b"hello from a container\n");
    for a in APPLETS {
        l = l.symlink(&format!("bin/{a}"), "busybox");
    }
    Ok(l)
}

/// An OCI image config (linux/`arch`) with the given process settings.
pub fn image_config(
    arch: &str,
    entrypoint: &[&str],
    cmd: &[&str],
    extra: serde_json::Value,
) -> Vec<u8> {
    let mut config = serde_json::json!({
        "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
    });
    if !entrypoint.is_empty() {
        config["Entrypoint"] = serde_json::json!(entrypoint);
    }
    if !cmd.is_empty() {
        config["Cmd"] = serde_json::json!(cmd);
    }
    if let serde_json::Value::Object(m) = extra {
        for (k, v) in m {
            config[k] = v;
        }
    }
    serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": config,
        // Filled in from the layers when the image is pushed.
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .expect("config json")
}

/// busybox with `cmd` as its Cmd, for this machine's architecture.
pub fn busybox_image(cmd: &[&str], extra: serde_json::Value) -> anyhow::Result<TestImage> {
    Ok(TestImage {
        layers: vec![busybox_layer()?.gzip()],
        config: image_config(flotilla_oci::pull::platform().1, &[], cmd, extra),
        config_media_type: "application/vnd.oci.image.config.v1+json".into(),
    })
}

/// Fails clearly (naming `what` tests) unless this process is root and runc, iptables and
/// docker-registry are installed (scripts/setup installs them; CI runs as root).
pub fn require_container_tools(what: &str) {
    assert!(
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))),
        "{what} tests need root (CI runs as root)"
    );
    for p in [
        "/usr/sbin/runc",
        "/usr/sbin/iptables",
        "/usr/bin/docker-registry",
    ] {
        assert!(
            std::path::Path::new(p).exists(),
            "{what} tests need {p}: run scripts/setup"
        );
    }
}
