//! The agent's image store: blobs by digest, and one unpacked rootfs snapshot per image.
//!
//! Layout under the store's root:
//! - `blobs/sha256/<hex>`: manifests, configs and layers. A blob is written to `tmp/` first
//!   and renamed into place only after its digest was verified, so anything under `blobs/`
//!   is what its name says.
//! - `snapshots/<manifest hex>/`: the image's layers applied in order. Built in `tmp/` and
//!   renamed into place when complete; containers never write to it (each gets its own
//!   writable layer on top).
use crate::unpack::{self, Compression};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Config media type prefix of wasm OCI artifacts (`wkg`, and `oras` with the wasm config).
const WASM_CONFIG_PREFIX: &str = "application/vnd.wasm.config.";
/// Layer media types that hold a wasm binary.
const WASM_LAYER_TYPES: &[&str] = &[
    "application/wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid digest {0:?} (expected sha256:<64 hex digits>)")]
    Digest(String),
    #[error("blob {digest} failed verification (got {actual})")]
    Corrupt { digest: String, actual: String },
    #[error("blob {0} is not in the store")]
    Missing(String),
    #[error("{what} {digest}: {message}")]
    Parse {
        what: &'static str,
        digest: String,
        message: String,
    },
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("layer {digest}: {source}")]
    Unpack {
        digest: String,
        source: unpack::UnpackError,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What runs an image: runc for container images, wasmtime for wasm artifacts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageKind {
    Container,
    /// A wasm OCI artifact; `layer` is the digest of the wasm binary.
    Wasm {
        layer: String,
    },
}

/// A pulled image: its manifest, config and what kind of workload it is.
#[derive(Clone, Debug)]
pub struct Image {
    /// The digest of the image manifest (for an index, of the platform's manifest).
    pub digest: String,
    pub manifest: ImageManifest,
    /// The parsed config of a container image (None for wasm artifacts).
    pub config: Option<ImageConfiguration>,
    pub kind: ImageKind,
}

pub struct Store {
    root: PathBuf,
    seq: AtomicU64,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The hex part of a `sha256:` digest, checked (digests name files).
pub fn digest_hex(digest: &str) -> Result<&str, StoreError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| StoreError::Digest(digest.to_string()))?;
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(hex)
    } else {
        Err(StoreError::Digest(digest.to_string()))
    }
}

impl Store {
    pub fn open(root: impl Into<PathBuf>) -> Result<Store, StoreError> {
        let root = root.into();
        for dir in ["blobs/sha256", "snapshots", "tmp"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        // Leftovers of an interrupted pull or unpack.
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        Ok(Store {
            root,
            seq: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// A fresh path in the store's scratch directory (same filesystem, so renames are atomic).
    pub fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    /// Stores `bytes` as `digest` after checking they hash to it.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_path(digest)?;
        let actual = format!("sha256:{}", sha256_hex(bytes));
        if actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        let tmp = self.temp_path("blob");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Moves a downloaded file into place as `digest`, hashing it first.
    pub fn commit_blob(&self, tmp: &Path, digest: &str) -> Result<(), StoreError> {
        let path = self.blob_path(digest)?;
        let actual = hash_file(tmp)?;
        if actual != digest {
            let _ = std::fs::remove_file(tmp);
            return Err(StoreError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        std::fs::rename(tmp, &path).map_err(io(&path))
    }

    /// Reads a small blob (manifest, config), verifying it again: a blob that rotted on disk
    /// is reported missing so that it is pulled again.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(digest.to_string()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        if format!("sha256:{}", sha256_hex(&bytes)) != digest {
            let _ = std::fs::remove_file(&path);
            return Err(StoreError::Missing(digest.to_string()));
        }
        Ok(bytes)
    }

    /// The image whose manifest is `digest`, from blobs already in the store.
    pub fn image(&self, digest: &str) -> Result<Image, StoreError> {
        let bytes = self.read_blob(digest)?;
        let manifest = parse_manifest(digest, &bytes)?;
        let config_desc = manifest.config();
        let kind = image_kind(digest, &manifest)?;
        let config = match kind {
            ImageKind::Wasm { .. } => None,
            ImageKind::Container => {
                let cd = config_desc.digest().to_string();
                let bytes = self.read_blob(&cd)?;
                Some(
                    serde_json::from_slice::<ImageConfiguration>(&bytes).map_err(|e| {
                        StoreError::Parse {
                            what: "image config",
                            digest: cd.clone(),
                            message: e.to_string(),
                        }
                    })?,
                )
            }
        };
        Ok(Image {
            digest: digest.to_string(),
            manifest,
            config,
            kind,
        })
    }

    /// Whether all of an image's layers are in the store.
    pub fn has_layers(&self, image: &Image) -> bool {
        image
            .manifest
            .layers()
            .iter()
            .all(|l| self.has_blob(l.digest().as_ref()))
    }

    pub fn snapshot_path(&self, image: &Image) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("snapshots").join(digest_hex(&image.digest)?))
    }

    /// The image's unpacked rootfs, unpacking it first if needed. Blocking: call it from a
    /// blocking thread. Callers serialise unpacks of one image themselves.
    pub fn snapshot(&self, image: &Image) -> Result<PathBuf, StoreError> {
        let path = self.snapshot_path(image)?;
        if path.is_dir() {
            return Ok(path);
        }
        let tmp = self.temp_path("snapshot");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let built = self.unpack_into(image, &tmp);
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(path)
    }

    fn unpack_into(&self, image: &Image, dir: &Path) -> Result<(), StoreError> {
        for layer in image.manifest.layers() {
            let digest = layer.digest().to_string();
            let compression =
                Compression::from_media_type(layer.media_type().as_ref()).map_err(|source| {
                    StoreError::Unpack {
                        digest: digest.clone(),
                        source,
                    }
                })?;
            let path = self.blob_path(&digest)?;
            let file = std::fs::File::open(&path).map_err(io(&path))?;
            unpack::apply_layer(dir, std::io::BufReader::new(file), compression).map_err(
                |source| StoreError::Unpack {
                    digest: digest.clone(),
                    source,
                },
            )?;
        }
        Ok(())
    }
}

pub fn hash_file(path: &Path) -> Result<String, StoreError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

pub fn parse_manifest(digest: &str, bytes: &[u8]) -> Result<ImageManifest, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Parse {
        what: "image manifest",
        digest: digest.to_string(),
        message: e.to_string(),
    })
}

fn is_wasm_layer(d: &Descriptor) -> bool {
    WASM_LAYER_TYPES.contains(&d.media_type().to_string().as_str())
}

/// A wasm artifact has a wasm config media type or a single wasm layer; anything else is a
/// container image.
pub fn image_kind(digest: &str, manifest: &ImageManifest) -> Result<ImageKind, StoreError> {
    let config_type = manifest.config().media_type().to_string();
    let wasm_layers: Vec<&Descriptor> = manifest
        .layers()
        .iter()
        .filter(|l| is_wasm_layer(l))
        .collect();
    if !config_type.starts_with(WASM_CONFIG_PREFIX) && wasm_layers.is_empty() {
        return Ok(ImageKind::Container);
    }
    match wasm_layers.as_slice() {
        [one] => Ok(ImageKind::Wasm {
            layer: one.digest().to_string(),
        }),
        [] => Err(StoreError::Image {
            image: digest.to_string(),
            message: format!("a wasm artifact ({config_type}) without a wasm layer"),
        }),
        more => Err(StoreError::Image {
            image: digest.to_string(),
            message: format!(
                "a wasm artifact must have one wasm layer, found {}",
                more.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_they_name_files() {
        assert!(digest_hex(&format!("sha256:{}", "a".repeat(64))).is_ok());
        for bad in [
            "sha256:../../etc",
            "md5:abc",
            &format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(
                matches!(digest_hex(bad), Err(StoreError::Digest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_blob_is_stored_only_under_its_own_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = format!("sha256:{}", sha256_hex(b"hello"));
        store.put_blob(&good, b"hello").unwrap();
        assert_eq!(store.read_blob(&good).unwrap(), b"hello");
        let wrong = format!("sha256:{}", sha256_hex(b"other"));
        assert!(matches!(
            store.put_blob(&wrong, b"hello"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!store.has_blob(&wrong));
        // A blob that rots on disk is dropped rather than used.
        std::fs::write(store.blob_path(&good).unwrap(), b"hellO").unwrap();
        assert!(matches!(
            store.read_blob(&good),
            Err(StoreError::Missing(_))
        ));
        assert!(!store.has_blob(&good));
    }

    fn manifest(config_type: &str, layer_types: &[&str]) -> ImageManifest {
        let layers: Vec<String> = layer_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    r#"{{"mediaType":"{t}","digest":"sha256:{}","size":1}}"#,
                    format!("{i}").repeat(64)
                )
            })
            .collect();
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"{config_type}","digest":"sha256:{}","size":2}},"layers":[{}]}}"#,
            "c".repeat(64),
            layers.join(",")
        );
        parse_manifest("m", json.as_bytes()).unwrap()
    }

    #[test]
    fn wasm_artifacts_are_told_from_container_images() {
        let oci = "application/vnd.oci.image.config.v1+json";
        let tgz = "application/vnd.oci.image.layer.v1.tar+gzip";
        assert_eq!(
            image_kind("m", &manifest(oci, &[tgz, tgz])).unwrap(),
            ImageKind::Container
        );
        let wkg = manifest("application/vnd.wasm.config.v0+json", &["application/wasm"]);
        assert_eq!(
            image_kind("m", &wkg).unwrap(),
            ImageKind::Wasm {
                layer: format!("sha256:{}", "0".repeat(64))
            }
        );
        let oras = manifest(oci, &["application/vnd.wasm.content.layer.v1+wasm"]);
        assert!(matches!(
            image_kind("m", &oras).unwrap(),
            ImageKind::Wasm { .. }
        ));
        let two = manifest(oci, &["application/wasm", "application/wasm"]);
        assert!(image_kind("m", &two).is_err());
    }
}
