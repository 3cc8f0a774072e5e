//! The agent's image store: blobs by digest, and one unpacked rootfs snapshot per image.
//!
//! Layout under the store's root:
//! - `blobs/sha256/<hex>`: manifests, configs and layers. A blob is written to `tmp/` first
//!   and renamed into place only after its digest was verified, so anything under `blobs/`
//!   is what its name says.
//! - `snapshots/<manifest hex>/`: the image's layers applied in order. Built in `tmp/` and
//!   renamed into place when complete; containers never write to it (each gets its own
//!   writable layer on top).
//! - `records/<manifest hex>.json`: what the node knows about an image it holds: the
//!   references it was pulled by, the blobs it uses, its size on disk and when a pod last
//!   used it ([`ImageRecord`]). Written to `tmp/` and renamed, so a record is whole or absent.
//!   Image garbage collection removes only recorded images ([`Store::remove_image`]).
use crate::unpack::{self, Compression};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
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
    #[error(
        "layer {digest}: its content is {actual} uncompressed, but the image config's rootfs.diff_ids says {expected}"
    )]
    DiffId {
        digest: String,
        expected: String,
        actual: String,
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
    /// The image records by manifest digest, mirrored in `records/`.
    records: Mutex<BTreeMap<String, ImageRecord>>,
}

/// What the store knows about one image (by manifest digest), persisted as
/// `records/<hex>.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageRecord {
    /// The manifest digest (`sha256:…`).
    pub digest: String,
    /// The references the image is known by on this node, sorted: the tags pods asked for
    /// and `repository@digest`. A tag pulled again for another image moves to that one.
    #[serde(default)]
    pub names: Vec<String>,
    /// The config and layer blobs the image uses (its manifest is `digest`).
    #[serde(default)]
    pub blobs: Vec<String>,
    /// Bytes of the manifest, config and layers as stored (compressed).
    #[serde(default)]
    pub blob_bytes: u64,
    /// Disk used by the unpacked snapshot (0 for wasm artifacts, or not unpacked yet).
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// When a pod last used the image (or it was pulled), seconds since the Unix epoch.
    #[serde(default)]
    pub last_used: u64,
}

impl ImageRecord {
    /// What the image holds on this node's disk: blobs and snapshot. Blobs shared with
    /// other images count for each.
    pub fn size(&self) -> u64 {
        self.blob_bytes + self.snapshot_bytes
    }
}

/// What removing an image freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Freed {
    pub bytes: u64,
    pub blobs: usize,
    pub snapshot: bool,
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
        for dir in ["blobs/sha256", "snapshots", "records", "tmp"] {
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
        let records = load_records(&root);
        Ok(Store {
            root,
            seq: AtomicU64::new(0),
            records: Mutex::new(records),
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
        if built.is_ok()
            && let Err(e) = unpack::add_mount_points(&tmp)
        {
            // runc makes what is missing in each container's writable layer instead.
            tracing::debug!(image = %image.digest, error = %e, "cannot add mount points to the snapshot");
        }
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        Ok(path)
    }

    fn lock_records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ImageRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every image record, by manifest digest.
    pub fn records(&self) -> BTreeMap<String, ImageRecord> {
        self.lock_records().clone()
    }

    /// The image a reference (`host/repo:tag` or `…@sha256:…`) was last pulled as.
    pub fn digest_of(&self, name: &str) -> Option<String> {
        self.lock_records()
            .values()
            .find(|r| r.names.iter().any(|n| n == name))
            .map(|r| r.digest.clone())
    }

    /// Records that `image` is held under `names` and was used `now` (seconds since the
    /// epoch); the names are taken from any other image that had them. Measures the snapshot
    /// the first time it is seen. Returns whether the list of images, names or sizes changed
    /// (a changed `last_used` alone does not count). A record whose only change is its time
    /// is written only when the stored time is older than `slack` seconds, as with
    /// [`Store::touch`], so that starting pods of an image costs no disk write each time.
    /// Blocking (it may walk the snapshot).
    pub fn remember(
        &self,
        image: &Image,
        names: &[String],
        now: u64,
        slack: u64,
    ) -> Result<bool, StoreError> {
        let hex = digest_hex(&image.digest)?.to_string();
        let manifest_bytes = std::fs::metadata(self.blob_path(&image.digest)?)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut blobs = vec![image.manifest.config().digest().to_string()];
        blobs.extend(
            image
                .manifest
                .layers()
                .iter()
                .map(|l| l.digest().to_string()),
        );
        let blob_bytes = manifest_bytes
            + image.manifest.config().size()
            + image
                .manifest
                .layers()
                .iter()
                .map(|l| l.size())
                .sum::<u64>();
        // Measured outside the lock (a large rootfs takes a while to walk), once per image.
        let snapshot = self.root.join("snapshots").join(&hex);
        let measured = self
            .lock_records()
            .get(&image.digest)
            .is_some_and(|r| r.snapshot_bytes > 0);
        let snapshot_bytes = (!measured && snapshot.is_dir()).then(|| disk_usage(&snapshot));
        let mut records = self.lock_records();
        let before = records.get(&image.digest).cloned();
        let mut rec = before.clone().unwrap_or_else(|| ImageRecord {
            digest: image.digest.clone(),
            ..Default::default()
        });
        let mut all: BTreeSet<String> = rec.names.iter().cloned().collect();
        all.extend(names.iter().cloned());
        rec.names = all.into_iter().collect();
        blobs.sort();
        blobs.dedup();
        rec.blobs = blobs;
        rec.blob_bytes = blob_bytes;
        if rec.snapshot_bytes == 0
            && let Some(b) = snapshot_bytes
        {
            rec.snapshot_bytes = b;
        }
        rec.last_used = rec.last_used.max(now);
        let mut changed = before.as_ref().map(|b| ImageRecord {
            last_used: rec.last_used,
            ..b.clone()
        }) != Some(rec.clone());
        // A name belongs to one image: the one it was pulled as last.
        let others: Vec<String> = records
            .iter()
            .filter(|(d, r)| **d != image.digest && r.names.iter().any(|n| names.contains(n)))
            .map(|(d, _)| d.clone())
            .collect();
        for d in others {
            if let Some(r) = records.get_mut(&d) {
                r.names.retain(|n| !names.contains(n));
                let r = r.clone();
                self.write_record(&r)?;
                changed = true;
            }
        }
        match before {
            Some(b) if !changed && b.last_used.saturating_add(slack) >= now => {
                // Only the time would move, and not far: kept as stored, in memory too.
                rec.last_used = b.last_used;
            }
            _ => self.write_record(&rec)?,
        }
        records.insert(rec.digest.clone(), rec);
        Ok(changed)
    }

    /// Marks an image used at `now` (seconds since the epoch), persisting it only when the
    /// stored time is older than `slack` seconds, so images in use cost no steady writes.
    pub fn touch(&self, digest: &str, now: u64, slack: u64) -> Result<(), StoreError> {
        let mut records = self.lock_records();
        let Some(rec) = records.get_mut(digest) else {
            return Ok(());
        };
        if rec.last_used.saturating_add(slack) >= now {
            return Ok(());
        }
        rec.last_used = now;
        let rec = rec.clone();
        self.write_record(&rec)
    }

    fn write_record(&self, rec: &ImageRecord) -> Result<(), StoreError> {
        let path = self
            .root
            .join("records")
            .join(format!("{}.json", digest_hex(&rec.digest)?));
        let tmp = self.temp_path("record");
        let bytes = serde_json::to_vec(rec).map_err(|e| StoreError::Parse {
            what: "image record",
            digest: rec.digest.clone(),
            message: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    /// Removes an image: its record first (so it is no longer listed or used), then its
    /// snapshot (moved to `tmp/` first, so `snapshots/` never holds a partial one), then every
    /// blob of it that no remaining image uses. The caller makes sure no container runs on
    /// the snapshot and no pull is in flight. Blocking.
    pub fn remove_image(&self, digest: &str) -> Result<Freed, StoreError> {
        let hex = digest_hex(digest)?.to_string();
        let mut records = self.lock_records();
        let Some(rec) = records.remove(digest) else {
            return Ok(Freed::default());
        };
        let record = self.root.join("records").join(format!("{hex}.json"));
        match std::fs::remove_file(&record) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                records.insert(digest.to_string(), rec);
                return Err(io(&record)(e));
            }
        }
        let still_used: BTreeSet<&str> = records
            .values()
            .flat_map(|r| {
                std::iter::once(r.digest.as_str()).chain(r.blobs.iter().map(|b| b.as_str()))
            })
            .collect();
        let mut freed = Freed::default();
        let snapshot = self.root.join("snapshots").join(&hex);
        if snapshot.is_dir() {
            let doomed = self.temp_path("removed");
            std::fs::rename(&snapshot, &doomed).map_err(io(&snapshot))?;
            freed.bytes += disk_usage(&doomed);
            std::fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
            freed.snapshot = true;
        }
        for blob in std::iter::once(&rec.digest).chain(rec.blobs.iter()) {
            if still_used.contains(blob.as_str()) {
                continue;
            }
            let path = self.blob_path(blob)?;
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    freed.bytes += len;
                    freed.blobs += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(freed)
    }

    /// Applies the layers in order, each checked against the config's `rootfs.diff_ids` (a
    /// container image's; a wasm artifact has none) as it is read.
    fn unpack_into(&self, image: &Image, dir: &Path) -> Result<(), StoreError> {
        let layers = image.manifest.layers();
        let diff_ids = image.config.as_ref().map(|c| c.rootfs().diff_ids());
        if let Some(ids) = diff_ids
            && ids.len() != layers.len()
        {
            return Err(StoreError::Image {
                image: image.digest.clone(),
                message: format!(
                    "the config lists {} rootfs.diff_ids for {} layers",
                    ids.len(),
                    layers.len()
                ),
            });
        }
        for (i, layer) in layers.iter().enumerate() {
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
            let stats = unpack::apply_layer(dir, std::io::BufReader::new(file), compression)
                .map_err(|source| StoreError::Unpack {
                    digest: digest.clone(),
                    source,
                })?;
            if let Some(expected) = diff_ids.map(|ids| &ids[i])
                && *expected != stats.diff_id
            {
                return Err(StoreError::DiffId {
                    digest,
                    expected: expected.clone(),
                    actual: stats.diff_id,
                });
            }
        }
        Ok(())
    }
}

/// The records under `root/records`; unreadable ones and those whose manifest is gone are
/// skipped (their image is pulled again when a pod needs it).
fn load_records(root: &Path) -> BTreeMap<String, ImageRecord> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(root.join("records")) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let rec = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).ok());
        let Some(rec) = rec else {
            tracing::warn!(path = %path.display(), "skipping unreadable image record");
            continue;
        };
        let named_right = digest_hex(&rec.digest)
            .is_ok_and(|h| path.file_name() == Some(std::ffi::OsStr::new(&format!("{h}.json"))));
        let has_manifest =
            digest_hex(&rec.digest).is_ok_and(|h| root.join("blobs/sha256").join(h).is_file());
        if named_right && has_manifest {
            out.insert(rec.digest.clone(), rec);
        }
    }
    out
}

/// Disk blocks used under `path` (files, directories, symlinks; not following links), in
/// bytes. Hard links are counted once.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            continue;
        }
        total += m.blocks() * 512;
        if m.is_dir()
            && let Ok(entries) = std::fs::read_dir(&p)
        {
            stack.extend(entries.flatten().map(|e| e.path()));
        }
    }
    total
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

    /// A container image of plain tar layers (each one file), its blobs in `store`.
    fn put_image(store: &Store, layers: &[&[u8]]) -> Image {
        put_image_as(store, layers, |_| {})
    }

    /// `put_image` with the config's diff IDs (those of the layers) edited by `edit` first.
    fn put_image_as(store: &Store, layers: &[&[u8]], edit: impl Fn(&mut Vec<String>)) -> Image {
        let put = |bytes: &[u8]| {
            let d = format!("sha256:{}", sha256_hex(bytes));
            store.put_blob(&d, bytes).unwrap();
            d
        };
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, content) in layers.iter().enumerate() {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(content.len() as u64);
            h.set_mode(0o644);
            // Owned by whoever runs the test (the store's root is theirs).
            let me = std::fs::metadata(store.root()).unwrap();
            h.set_uid(u64::from(std::os::unix::fs::MetadataExt::uid(&me)));
            h.set_gid(u64::from(std::os::unix::fs::MetadataExt::gid(&me)));
            h.set_mtime(1);
            h.set_cksum();
            b.append_data(&mut h, format!("file{i}"), *content).unwrap();
            let tar = b.into_inner().unwrap();
            let d = put(&tar);
            // Plain tar: the diff ID is the blob's digest.
            diff_ids.push(d.clone());
            descs.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#,
                tar.len()
            ));
        }
        edit(&mut diff_ids);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_digest = put(&config);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            descs.join(",")
        );
        let digest = put(manifest.as_bytes());
        store.image(&digest).unwrap()
    }

    #[test]
    fn a_layer_whose_content_is_not_its_diff_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = put_image(&store, &[b"base", b"top"]);
        assert!(store.snapshot(&good).is_ok());

        let wrong = put_image_as(&store, &[b"base", b"other top"], |ids| {
            ids[1] = format!("sha256:{}", "0".repeat(64));
        });
        let err = store.snapshot(&wrong).unwrap_err().to_string();
        let top = wrong.manifest.layers()[1].digest().to_string();
        assert_eq!(
            err,
            format!(
                "layer {top}: its content is {top} uncompressed, but the image config's rootfs.diff_ids says sha256:{}",
                "0".repeat(64)
            )
        );
        assert!(
            !store.snapshot_path(&wrong).unwrap().exists(),
            "no half snapshot is kept"
        );

        let short = put_image_as(&store, &[b"base", b"third"], |ids| {
            ids.pop();
        });
        let err = store.snapshot(&short).unwrap_err().to_string();
        assert!(
            err.ends_with("the config lists 1 rootfs.diff_ids for 2 layers"),
            "{err}"
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn records_keep_names_sizes_and_use_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = put_image(&store, &[b"shared base", b"a's own"]);
        store.snapshot(&a).unwrap();
        assert!(
            store
                .remember(&a, &names(&["r.io/a:v1", "r.io/a@x"]), 100, 60)
                .unwrap()
        );
        // Used again under a name it has: only the time moves, which is no change to list,
        // and within the slack it is not written.
        assert!(!store.remember(&a, &names(&["r.io/a:v1"]), 150, 60).unwrap());
        assert_eq!(store.records()[&a.digest].last_used, 100);
        assert_eq!(
            Store::open(dir.path()).unwrap().records()[&a.digest].last_used,
            100
        );
        assert!(!store.remember(&a, &names(&["r.io/a:v1"]), 200, 60).unwrap());
        assert_eq!(
            Store::open(dir.path()).unwrap().records()[&a.digest].last_used,
            200
        );
        let rec = store.records()[&a.digest].clone();
        assert_eq!(rec.names, names(&["r.io/a:v1", "r.io/a@x"]));
        assert_eq!(rec.last_used, 200);
        assert_eq!(rec.blobs.len(), 3);
        assert!(rec.blob_bytes > 0 && rec.snapshot_bytes > 0, "{rec:?}");
        // The tag moves to the image it was pulled as last.
        let b = put_image(&store, &[b"shared base", b"b's own"]);
        assert!(store.remember(&b, &names(&["r.io/a:v1"]), 300, 60).unwrap());
        assert_eq!(store.digest_of("r.io/a:v1"), Some(b.digest.clone()));
        assert_eq!(store.records()[&a.digest].names, names(&["r.io/a@x"]));
        // Touch persists only past the slack.
        store.touch(&a.digest, 250, 60).unwrap();
        assert_eq!(store.records()[&a.digest].last_used, 200);
        store.touch(&a.digest, 400, 60).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let all = store.records();
        assert_eq!(all.len(), 2);
        assert_eq!(all[&a.digest].last_used, 400);
        assert_eq!(all[&a.digest].names, names(&["r.io/a@x"]));
        assert_eq!(all[&b.digest].names, names(&["r.io/a:v1"]));
    }

    #[test]
    fn removing_an_image_keeps_what_other_images_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = put_image(&store, &[b"shared base", b"a's own"]);
        let b = put_image(&store, &[b"shared base", b"b's own"]);
        for (img, name) in [(&a, "r.io/a:v1"), (&b, "r.io/b:v1")] {
            store.snapshot(img).unwrap();
            store.remember(img, &names(&[name]), 1, 60).unwrap();
        }
        let shared_layer = a.manifest.layers()[0].digest().to_string();
        let a_layer = a.manifest.layers()[1].digest().to_string();
        let freed = store.remove_image(&a.digest).unwrap();
        // Manifest, config and a's own layer; the shared base stays.
        assert!(freed.snapshot);
        assert_eq!(freed.blobs, 3, "{freed:?}");
        assert!(freed.bytes > 0);
        assert!(!store.snapshot_path(&a).unwrap().exists());
        assert!(!store.has_blob(&a.digest) && !store.has_blob(&a_layer));
        assert!(store.has_blob(&shared_layer));
        assert!(
            !dir.path()
                .join("records")
                .join(format!("{}.json", digest_hex(&a.digest).unwrap()))
                .exists()
        );
        // b is whole.
        assert!(store.snapshot_path(&b).unwrap().join("file1").is_file());
        assert!(store.has_layers(&store.image(&b.digest).unwrap()));
        assert_eq!(
            store.records().keys().cloned().collect::<Vec<_>>(),
            vec![b.digest.clone()]
        );
        // Nothing of an unknown image to remove.
        assert_eq!(store.remove_image(&a.digest).unwrap(), Freed::default());
        // The last image takes the shared blobs with it; tmp/ is left empty.
        store.remove_image(&b.digest).unwrap();
        assert!(!store.has_blob(&shared_layer));
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("snapshots"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
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
