//! Pulling images from OCI and Docker registries into the [`Store`].
//!
//! Every byte is verified: manifests against the digest they were asked by (or the one the
//! registry named), configs and layers against their descriptors, while they stream to disk.
//! An image index is resolved to this node's platform (linux/amd64, linux/arm64, …).
use crate::store::{Image, Store, StoreError, digest_hex};
use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_spec::image::ImageIndex;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::time::Duration;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const ACCEPTED: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];
/// Manifests and configs are small; a bound keeps a hostile registry from filling memory.
const MAX_MANIFEST: usize = 4 << 20;
/// Layers pulled at once.
const PARALLEL_LAYERS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("invalid image reference {image:?}: {message}")]
    Reference { image: String, message: String },
    #[error("{0}")]
    Registry(String),
    #[error("image {image}: no manifest for {platform} in its index (has: {has})")]
    Platform {
        image: String,
        platform: String,
        has: String,
    },
    #[error("image {image}: {message}")]
    Manifest { image: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a pull fetched, for the `Pulled` event and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct Pulled {
    pub layers_fetched: usize,
    pub layers_cached: usize,
    pub bytes_fetched: u64,
}

/// Registry settings of a node: hosts (`host[:port]`) spoken to over plain HTTP.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    pub insecure: Vec<String>,
}

pub struct Registry {
    client: oci_client::Client,
}

/// This node's platform as image indexes spell it.
pub fn platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "riscv64" => "riscv64",
        other => other,
    };
    ("linux", arch)
}

pub fn parse_reference(image: &str) -> Result<Reference, PullError> {
    image
        .parse()
        .map_err(|e: oci_client::ParseError| PullError::Reference {
            image: image.to_string(),
            message: e.to_string(),
        })
}

/// The names an image pulled as `image` is listed under on the node (Kubernetes'
/// `ContainerImage.names`): the reference as the pod wrote it and `repository@digest`, where
/// the digest is the manifest's for this platform.
pub fn image_names(image: &str, digest: &str) -> Vec<String> {
    let mut names = vec![image.to_string()];
    if let Ok(r) = parse_reference(image) {
        let by_digest = format!("{}/{}@{digest}", r.registry(), r.repository());
        if by_digest != image {
            names.push(by_digest);
        }
    }
    names
}

impl Registry {
    pub fn new(cfg: &RegistryConfig) -> Registry {
        // reqwest is built without a provider of its own: the process's (ring) is used, and
        // installed here if the binary has not done it yet.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let protocol = if cfg.insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(cfg.insecure.clone())
        };
        let client = oci_client::Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        });
        Registry { client }
    }

    /// The digest of the image manifest `image` names for this platform, storing the
    /// manifest (and, for an index, the index is read but only the chosen manifest kept).
    pub async fn resolve(
        &self,
        store: &Store,
        image: &str,
        auth: &RegistryAuth,
    ) -> Result<String, PullError> {
        let reference = parse_reference(image)?;
        let (bytes, digest) = self.manifest(&reference, auth).await?;
        let media_type = media_type_of(&bytes);
        let (bytes, digest) = if media_type == OCI_INDEX || media_type == DOCKER_LIST {
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(|e| PullError::Manifest {
                    image: image.to_string(),
                    message: format!("invalid image index: {e}"),
                })?;
            let chosen = choose_platform(image, &index)?;
            let (bytes, got) = self
                .manifest(&reference.clone_with_digest(chosen.clone()), auth)
                .await?;
            if got != chosen {
                return Err(PullError::Manifest {
                    image: image.to_string(),
                    message: format!("index entry {chosen} answered with {got}"),
                });
            }
            (bytes, got)
        } else {
            (bytes, digest)
        };
        store.put_blob(&digest, &bytes)?;
        Ok(digest)
    }

    /// Fetches a manifest and checks it hashes to the digest asked for (or the registry's).
    async fn manifest(
        &self,
        reference: &Reference,
        auth: &RegistryAuth,
    ) -> Result<(Vec<u8>, String), PullError> {
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(reference, auth, ACCEPTED)
            .await
            .map_err(|e| PullError::Registry(format!("{}: {e}", reference.whole())))?;
        if bytes.len() > MAX_MANIFEST {
            return Err(PullError::Manifest {
                image: reference.whole(),
                message: format!("manifest is {} bytes, over the 4 MiB limit", bytes.len()),
            });
        }
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        let expected = reference.digest().map(str::to_string).unwrap_or(digest);
        if actual != expected {
            return Err(StoreError::Corrupt {
                digest: expected,
                actual,
            }
            .into());
        }
        Ok((bytes.to_vec(), actual))
    }

    /// Fetches the config and layers of the image whose manifest `digest` is in the store.
    pub async fn fetch(
        &self,
        store: &Store,
        image: &str,
        digest: &str,
        auth: &RegistryAuth,
    ) -> Result<(Image, Pulled), PullError> {
        let reference = parse_reference(image)?.clone_with_digest(digest.to_string());
        let bytes = store.read_blob(digest)?;
        let manifest = crate::store::parse_manifest(digest, &bytes)?;
        let config = manifest.config().digest().to_string();
        if !store.has_blob(&config) {
            self.blob(store, &reference, config, auth, MAX_MANIFEST as u64)
                .await?;
        }
        let mut stats = Pulled::default();
        let wanted: Vec<String> = manifest
            .layers()
            .iter()
            .map(|l| l.digest().to_string())
            .collect();
        let missing: Vec<String> = wanted
            .iter()
            .filter(|d| !store.has_blob(d))
            .cloned()
            .collect();
        stats.layers_cached = wanted.len() - missing.len();
        stats.layers_fetched = missing.len();
        // Futures built first, so the stream holds no closure borrowing its items.
        let pulls: Vec<_> = missing
            .into_iter()
            .map(|d| self.blob(store, &reference, d, auth, u64::MAX))
            .collect();
        let sizes = futures::stream::iter(pulls)
            .buffer_unordered(PARALLEL_LAYERS)
            .try_collect::<Vec<u64>>()
            .await?;
        stats.bytes_fetched = sizes.iter().sum();
        Ok((store.image(digest)?, stats))
    }

    /// Streams one blob to the store's scratch space, hashing as it goes, and moves it into
    /// place only if it hashes to `digest`.
    async fn blob(
        &self,
        store: &Store,
        reference: &Reference,
        digest: String,
        auth: &RegistryAuth,
        limit: u64,
    ) -> Result<u64, PullError> {
        let digest = digest.as_str();
        digest_hex(digest)?;
        self.client
            .store_auth_if_needed(reference.resolve_registry(), auth)
            .await;
        let mut stream = self
            .client
            .pull_blob_stream(reference, digest)
            .await
            .map_err(|e| {
                PullError::Registry(format!("{}: blob {digest}: {e}", reference.whole()))
            })?;
        let tmp = store.temp_path("pull");
        let mut file = std::fs::File::create(&tmp).map_err(|source| StoreError::Io {
            path: tmp.display().to_string(),
            source,
        })?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let result: Result<(), PullError> = async {
            while let Some(chunk) = stream.next().await {
                // The client's own verification error arrives here too; ours below names both.
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) if e.to_string().contains("digest") => break,
                    Err(e) => {
                        return Err(PullError::Registry(format!(
                            "{}: blob {digest}: {e}",
                            reference.whole()
                        )));
                    }
                };
                size += chunk.len() as u64;
                if size > limit {
                    return Err(PullError::Manifest {
                        image: reference.whole(),
                        message: format!("blob {digest} is larger than {limit} bytes"),
                    });
                }
                hasher.update(&chunk);
                file.write_all(&chunk).map_err(|source| StoreError::Io {
                    path: tmp.display().to_string(),
                    source,
                })?;
            }
            let actual = format!("sha256:{}", hex::encode(hasher.finalize_reset()));
            if actual != digest {
                return Err(StoreError::Corrupt {
                    digest: digest.to_string(),
                    actual,
                }
                .into());
            }
            file.sync_all().map_err(|source| StoreError::Io {
                path: tmp.display().to_string(),
                source,
            })?;
            let path = store.blob_path(digest)?;
            std::fs::rename(&tmp, &path).map_err(|source| StoreError::Io {
                path: path.display().to_string(),
                source,
            })?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| size)
    }
}

/// The `mediaType` a manifest declares (Docker and OCI both put it at the top level); an
/// index without one is recognised by its `manifests` list.
fn media_type_of(bytes: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Probe>(bytes) {
        Ok(Probe {
            media_type: Some(t),
            ..
        }) => t,
        Ok(Probe {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_string(),
        _ => OCI_MANIFEST.to_string(),
    }
}

/// The index entry for this node's OS and architecture.
fn choose_platform(image: &str, index: &ImageIndex) -> Result<String, PullError> {
    let (os, arch) = platform();
    choose(image, index, os, arch)
}

fn choose(image: &str, index: &ImageIndex, os: &str, arch: &str) -> Result<String, PullError> {
    let mut has = Vec::new();
    for m in index.manifests() {
        let Some(p) = m.platform() else { continue };
        let (o, a) = (p.os().to_string(), p.architecture().to_string());
        if o == os && a == arch {
            return Ok(m.digest().to_string());
        }
        has.push(format!("{o}/{a}"));
    }
    Err(PullError::Platform {
        image: image.to_string(),
        platform: format!("{os}/{arch}"),
        has: if has.is_empty() {
            "none".into()
        } else {
            has.join(", ")
        },
    })
}

/// Registry credentials for `registry` from `kubernetes.io/dockerconfigjson` Secrets
/// (their `.dockerconfigjson` values), the first match winning, as kubelet does.
pub fn auth_from_docker_configs(
    registry: &str,
    configs: &[(String, Vec<u8>)],
) -> Result<RegistryAuth, String> {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let want = normalise_registry(registry);
    for (secret, bytes) in configs {
        let file: File = serde_json::from_slice(bytes)
            .map_err(|e| format!("secret {secret:?}: .dockerconfigjson is not valid: {e}"))?;
        for (key, entry) in file.auths {
            if normalise_registry(&key) != want {
                continue;
            }
            if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
            }
            if let Some(auth) = &entry.auth {
                use base64::Engine as _;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|e| format!("secret {secret:?}: auths[{key:?}].auth: {e}"))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| format!("secret {secret:?}: auths[{key:?}].auth is not text"))?;
                let (u, p) = text.split_once(':').ok_or_else(|| {
                    format!("secret {secret:?}: auths[{key:?}].auth is not user:password")
                })?;
                return Ok(RegistryAuth::Basic(u.to_string(), p.to_string()));
            }
        }
    }
    Ok(RegistryAuth::Anonymous)
}

/// `https://index.docker.io/v1/` and `docker.io` name the same registry; scheme and path go.
fn normalise_registry(key: &str) -> String {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_named_by_reference_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            image_names("127.0.0.1:5000/test/busybox:t", &d),
            vec![
                "127.0.0.1:5000/test/busybox:t".to_string(),
                format!("127.0.0.1:5000/test/busybox@{d}")
            ]
        );
        let by_digest = format!("ghcr.io/a/b@{d}");
        assert_eq!(image_names(&by_digest, &d), vec![by_digest.clone()]);
    }

    #[test]
    fn an_index_resolves_to_this_platform() {
        let entry = |arch: &str, n: char| {
            format!(
                r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                n.to_string().repeat(64)
            )
        };
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
            entry("amd64", 'a'),
            entry("arm64", 'b')
        );
        let index: ImageIndex = serde_json::from_str(&json).unwrap();
        assert_eq!(
            choose("i", &index, "linux", "arm64").unwrap(),
            format!("sha256:{}", "b".repeat(64))
        );
        assert_eq!(
            choose("i", &index, "linux", "amd64").unwrap(),
            format!("sha256:{}", "a".repeat(64))
        );
        let err = choose("i", &index, "linux", "riscv64")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "image i: no manifest for linux/riscv64 in its index (has: linux/amd64, linux/arm64)"
        );
        assert_eq!(media_type_of(json.as_bytes()), OCI_INDEX);
    }

    #[test]
    fn credentials_come_from_the_matching_dockerconfigjson_entry() {
        let cfg = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"u","password":"p"}}}"#;
        let configs = vec![("regcred".to_string(), cfg.to_vec())];
        let basic = |u: &str, p: &str| format!("{:?}", RegistryAuth::Basic(u.into(), p.into()));
        let got = |r: &str| format!("{:?}", auth_from_docker_configs(r, &configs).unwrap());
        assert_eq!(got("docker.io"), basic("user", "pass"));
        assert_eq!(got("127.0.0.1:5000"), basic("u", "p"));
        assert_eq!(got("ghcr.io"), "Anonymous");
        let bad = vec![("x".to_string(), b"{".to_vec())];
        assert!(
            auth_from_docker_configs("a", &bad)
                .unwrap_err()
                .starts_with("secret \"x\": .dockerconfigjson is not valid")
        );
    }
}
