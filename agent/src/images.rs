//! Images for pods: wasm artifacts pushed to the hub (`fleet push`), and images in OCI or
//! Docker registries, which are container images (run by runc) or wasm OCI artifacts (run by
//! wasmtime). The pod's `runtimeClassName` may insist on one runtime; otherwise the image
//! decides.
//!
//! Registry images honour `imagePullPolicy` with Kubernetes' defaults. Unlike kubelet, a node
//! that cannot reach the registry starts a pod from the image it already holds even under
//! `Always` (with a warning event): edge nodes must come back without their registry.
//!
//! This module also owns which images are in use, and collects the others when the disk
//! fills (kubelet's image GC, [`collect_garbage`]). An image is pinned while a pod holds its
//! [`Loaded`] (running, restarting, stopping, or finished but not yet removed: the container's
//! rootfs sits on the snapshot), while a desired pod names it (it may be about to start), and
//! while any pull or unpack is in flight (GC takes the write side of `gc_lock`, loads the
//! read side, so a collection never sees a half-recorded image).
use crate::Shared;
use crate::runtime::wasm::Artifact;
use flotilla_oci::gc;
use flotilla_oci::pull::{Pulled, Registry, RegistryConfig};
use flotilla_oci::store::{Image, ImageKind, Store};
use flotilla_proto::api::{Container, ContainerImage, EventType, Kind, Object, Pod};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Kubernetes reports at most this many images in node status (`nodeStatusMaxImages`).
pub const MAX_STATUS_IMAGES: usize = 50;
/// An image in use has its last-used time rewritten at most this often (seconds).
const TOUCH_SLACK: u64 = 300;
/// `ImageGCFailed` is repeated at most this often while the disk stays full.
const GC_FAILED_EVERY: Duration = Duration::from_secs(300);

/// Why an image could not be had, with Kubernetes' waiting reason.
#[derive(Debug)]
pub struct LoadError {
    /// ErrImagePull, ErrImageNeverPull, InvalidImageName or CreateContainerError.
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

fn pull_error(message: impl std::fmt::Display) -> LoadError {
    LoadError {
        reason: "ErrImagePull",
        message: message.to_string(),
    }
}

/// What a pod's image turned out to be.
#[derive(Clone, Debug)]
pub enum Loaded {
    Wasm(Artifact),
    Container { image: Arc<Image>, rootfs: PathBuf },
}

impl Loaded {
    pub fn digest(&self) -> String {
        match self {
            Loaded::Wasm(a) => a.digest.clone(),
            Loaded::Container { image, .. } => image.digest.clone(),
        }
    }
}

pub struct Images {
    /// Shared with the blocking threads that unpack; opened once (opening clears `tmp/`).
    pub store: Arc<Store>,
    registry: Registry,
    /// One unpack or load at a time per image digest.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Loads hold the read side from before they look at the store until the image is
    /// recorded and pinned; a collection takes the write side (without waiting).
    gc_lock: tokio::sync::RwLock<()>,
    /// The container images pods hold, by digest: pinned while any `Loaded` has them.
    live: Mutex<HashMap<String, Weak<Image>>>,
    /// Images read from the store, by digest: their blobs never change, so a pod start need
    /// not read and parse them again. An image leaves when it is collected.
    parsed: Mutex<HashMap<String, Image>>,
    /// Bumped when the images on the node (names, sizes, the set) change: node status.
    changed: tokio::sync::watch::Sender<u64>,
    /// Wakes the collector after a pull.
    pulled: tokio::sync::Notify,
    /// When `ImageGCFailed` was last queued.
    gc_failed: Mutex<Option<Instant>>,
}

impl Images {
    pub fn open(data_dir: &std::path::Path, cfg: &RegistryConfig) -> anyhow::Result<Images> {
        Ok(Images {
            store: Arc::new(Store::open(data_dir.join("images"))?),
            registry: Registry::new(cfg),
            locks: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            live: Mutex::new(HashMap::new()),
            parsed: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(0).0,
            pulled: tokio::sync::Notify::new(),
            gc_failed: Mutex::new(None),
        })
    }

    /// Changes to the node's images (for a prompt node status).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// The shared handle of a container image; pods holding it pin it.
    fn hold(&self, img: Image) -> Arc<Image> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(held) = live.get(&img.digest).and_then(Weak::upgrade) {
            return held;
        }
        live.retain(|_, w| w.strong_count() > 0);
        let img = Arc::new(img);
        live.insert(img.digest.clone(), Arc::downgrade(&img));
        img
    }

    /// The stored image `digest`, from memory when it was read before.
    fn stored(&self, digest: &str) -> Option<Image> {
        let parsed = || self.parsed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(img) = parsed().get(digest) {
            return Some(img.clone());
        }
        let img = self.store.image(digest).ok()?;
        parsed().insert(digest.to_string(), img.clone());
        Some(img)
    }

    /// Digests of the images in use: held by a pod, or named by a desired pod.
    pub fn pinned(&self, shared: &Shared) -> BTreeSet<String> {
        let mut pinned: BTreeSet<String> = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, w)| w.strong_count() > 0)
            .map(|(d, _)| d.clone())
            .collect();
        let pods = match shared.cache.pods() {
            Ok(p) => p,
            Err(e) => {
                // Without the desired set nothing can be proven unused.
                tracing::warn!(error = %e, "cannot read desired pods; every image counts as in use");
                return self.store.records().into_keys().collect();
            }
        };
        for pod in pods.values() {
            for c in pod.spec.all_containers() {
                if !is_registry_ref(&c.image) {
                    continue;
                }
                pinned.extend(self.store.digest_of(&c.image));
                pinned.extend(shared.cache.image(&c.image).ok().flatten());
            }
        }
        pinned
    }

    /// The images for node status: registry images from the store's records and hub
    /// artifacts cached on the node, largest first, at most [`MAX_STATUS_IMAGES`].
    pub fn status(&self, shared: &Shared) -> Vec<ContainerImage> {
        let mut out: Vec<ContainerImage> = self
            .store
            .records()
            .into_values()
            .map(|r| ContainerImage {
                names: if r.names.is_empty() {
                    vec![r.digest.clone()]
                } else {
                    r.names.clone()
                },
                size_bytes: r.size(),
            })
            .collect();
        // Hub artifacts (`fleet push`): names by digest, sizes of the cached blobs.
        let mut artifacts: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, digest) in shared.cache.images().unwrap_or_default() {
            if !is_registry_ref(&name) {
                artifacts.entry(digest).or_default().push(name);
            }
        }
        for (digest, names) in artifacts {
            let Some(hex) = digest.strip_prefix("sha256:") else {
                continue;
            };
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if let Ok(m) = std::fs::metadata(shared.cfg.data_dir.join("blobs").join(hex)) {
                out.push(ContainerImage {
                    names,
                    size_bytes: m.len(),
                });
            }
        }
        out.sort_by(|a, b| b.size_bytes.cmp(&a.size_bytes).then(a.names.cmp(&b.names)));
        out.truncate(MAX_STATUS_IMAGES);
        out
    }

    /// The lock that one unpack or load of `digest` at a time holds.
    pub(crate) fn lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.to_string())
            .or_default()
            .clone()
    }
}

/// Whether `image` names a registry (`host.name/…`, `host:port/…`, `localhost/…`) rather
/// than an artifact pushed to the hub; the rule is Docker's.
pub fn is_registry_ref(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// Kubernetes' default: Always for `:latest` or no tag, IfNotPresent otherwise.
pub fn pull_policy(c: &Container) -> &str {
    if let Some(p) = c.image_pull_policy.as_deref() {
        return p;
    }
    let image = &c.image;
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

/// Fetches what `container` runs. The returned string is the message of the `Pulled` event
/// (empty for hub artifacts, whose message the caller words).
pub async fn load(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
) -> Result<(Loaded, String), LoadError> {
    let image = container.image.as_str();
    let class = pod.spec.runtime_class_name.as_deref();
    let loaded = if is_registry_ref(image) {
        load_registry(shared, pod, container).await?
    } else {
        if class == Some("runc") {
            return Err(LoadError {
                reason: "InvalidImageName",
                message: format!(
                    "runtimeClassName runc needs a registry image (host/name:tag), not the hub artifact {image:?}"
                ),
            });
        }
        pulling(shared, pod, image);
        let a = crate::artifacts::load(shared, image)
            .await
            .map_err(pull_error)?;
        (Loaded::Wasm(a), String::new())
    };
    match (class, &loaded.0) {
        (Some("wasmtime"), Loaded::Container { .. }) => Err(LoadError {
            reason: "CreateContainerError",
            message: format!(
                "runtimeClassName wasmtime: image {image:?} is a container image, not a wasm artifact"
            ),
        }),
        (Some("runc"), Loaded::Wasm(_)) => Err(LoadError {
            reason: "CreateContainerError",
            message: format!(
                "runtimeClassName runc: image {image:?} is a wasm artifact, not a container image"
            ),
        }),
        _ => Ok(loaded),
    }
}

/// The `Pulling` event, as the kubelet sends it: only when the image is fetched (an image
/// already present gets only `Pulled`, "already present on machine").
fn pulling(shared: &Shared, pod: &Pod, image: &str) {
    let message = format!("Pulling image {image:?}");
    shared
        .events
        .push(pod, EventType::Normal, "Pulling", message);
}

async fn load_registry(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
) -> Result<(Loaded, String), LoadError> {
    let images = &shared.images;
    let held = images.gc_lock.read().await;
    let mut pulled = false;
    let result = load_registry_held(shared, pod, container, &mut pulled).await;
    drop(held);
    if pulled {
        images.pulled.notify_one();
    }
    result
}

/// [`load_registry`] with the collector held off.
async fn load_registry_held(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
    pulled_now: &mut bool,
) -> Result<(Loaded, String), LoadError> {
    let images = &shared.images;
    let image = container.image.as_str();
    let policy = pull_policy(container);
    let cached = shared
        .cache
        .image(image)
        .ok()
        .flatten()
        .and_then(|d| images.stored(&d))
        .filter(|i| images.store.has_layers(i));
    let (img, message) = match (policy, cached) {
        ("Never", None) => {
            return Err(LoadError {
                reason: "ErrImageNeverPull",
                message: format!(
                    "container image {image:?} is not present with pull policy of Never"
                ),
            });
        }
        ("Never" | "IfNotPresent", Some(img)) => {
            let msg = format!("Container image {image:?} already present on machine");
            (img, msg)
        }
        (_, cached) => match pull(shared, pod, image).await {
            Ok((img, pulled)) => {
                *pulled_now = true;
                let msg = format!(
                    "Successfully pulled image {image:?} ({} of {} layers fetched, {} bytes)",
                    pulled.layers_fetched,
                    pulled.layers_fetched + pulled.layers_cached,
                    pulled.bytes_fetched
                );
                (img, msg)
            }
            Err(e) => match cached {
                Some(img) => {
                    let msg = format!(
                        "Registry unreachable ({e}); using the copy of {image:?} on this node"
                    );
                    (img, msg)
                }
                None => return Err(e),
            },
        },
    };
    let img = if matches!(img.kind, ImageKind::Container) {
        images.hold(img)
    } else {
        Arc::new(img)
    };
    let lock = images.lock(&img.digest);
    let _held = lock.lock().await;
    let loaded = match &img.kind {
        ImageKind::Wasm { layer } => {
            let known = shared
                .artifacts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(layer)
                .cloned();
            let artifact = match known {
                Some(a) => a,
                None => {
                    let path = images.store.blob_path(layer).map_err(pull_error)?;
                    let bytes = tokio::fs::read(&path).await.map_err(pull_error)?;
                    let runtime = shared.runtime.clone();
                    let digest = layer.clone();
                    let a = tokio::task::spawn_blocking(move || runtime.load(&digest, &bytes))
                        .await
                        .map_err(pull_error)?
                        .map_err(pull_error)?;
                    shared
                        .artifacts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(layer.clone(), a.clone());
                    a
                }
            };
            Loaded::Wasm(artifact)
        }
        ImageKind::Container => {
            // Unpacked before: no blocking thread needed to find it.
            let unpacked = (images.store.snapshot_path(&img).ok()).filter(|p| p.is_dir());
            let snapshot = if let Some(path) = unpacked {
                path
            } else {
                let shared_img = img.clone();
                let store = images.store.clone();
                tokio::task::spawn_blocking(move || store.snapshot(&shared_img))
                    .await
                    .map_err(pull_error)?
                    .map_err(|e| LoadError {
                        reason: "ErrImagePull",
                        message: format!("failed to unpack image {image:?}: {e}"),
                    })?
            };
            Loaded::Container {
                image: img.clone(),
                rootfs: snapshot,
            }
        }
    };
    // Recorded under the name the pod used, and used now.
    let store = images.store.clone();
    let names = flotilla_oci::pull::image_names(image, &img.digest);
    let recorded = img.clone();
    match tokio::task::spawn_blocking(move || {
        store.remember(&recorded, &names, unix_now(), TOUCH_SLACK)
    })
    .await
    {
        Ok(Ok(true)) => images.bump(),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, image, "failed to record the image"),
        Err(e) => tracing::warn!(error = %e, image, "failed to record the image"),
    }
    Ok((loaded, message))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one collection did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Bytes the thresholds asked for.
    pub wanted: u64,
    pub freed: u64,
    pub removed: Vec<String>,
}

/// One image collection, kubelet's way: above the high threshold, remove unpinned images,
/// least recently used first, until the low threshold is reached or nothing is left to
/// remove. None when under the threshold, or a pull is in flight (the next round retries).
pub async fn collect_garbage(shared: &Shared) -> Option<Collected> {
    let images = &shared.images;
    let t = shared.cfg.image_gc;
    let usage = match gc::usage(&shared.cfg.data_dir) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "cannot measure the image filesystem");
            return None;
        }
    };
    let wanted = gc::bytes_to_free(usage, t)?;
    let Ok(held) = images.gc_lock.try_write() else {
        tracing::debug!("image pull in flight: garbage collection waits for the next round");
        return None;
    };
    let pinned = images.pinned(shared);
    let now = unix_now();
    let store = images.store.clone();
    let result = tokio::task::spawn_blocking(move || {
        // Images in use count as used now, so their last use is when their pods stop.
        for d in &pinned {
            if let Err(e) = store.touch(d, now, TOUCH_SLACK) {
                tracing::warn!(error = %e, image.digest = %d, "failed to record image use");
            }
        }
        let (chosen, _) = gc::select(&store.records(), &pinned, wanted);
        let mut done = Collected {
            wanted,
            ..Default::default()
        };
        for d in chosen {
            match store.remove_image(&d) {
                Ok(f) => {
                    done.freed += f.bytes;
                    done.removed.push(d);
                }
                Err(e) => tracing::warn!(error = %e, image.digest = %d, "failed to remove image"),
            }
        }
        done
    })
    .await;
    drop(held);
    let done = match result {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "image garbage collection failed");
            return None;
        }
    };
    {
        let mut parsed = images.parsed.lock().unwrap_or_else(|p| p.into_inner());
        for d in &done.removed {
            parsed.remove(d);
        }
    }
    if !done.removed.is_empty() {
        tracing::info!(
            removed = done.removed.len(),
            freed.bytes = done.freed,
            images = ?done.removed,
            usage.percent = usage.percent(),
            threshold.high = t.high,
            "image garbage collection removed unused images"
        );
        images.bump();
    }
    if done.freed < done.wanted {
        let mut last = images.gc_failed.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= GC_FAILED_EVERY) {
            *last = Some(Instant::now());
            shared.events.push_node(
                &shared.cfg.node_name,
                EventType::Warning,
                "ImageGCFailed",
                format!(
                    "Failed to garbage collect required amount of images. Attempted to free {} bytes, but only found {} bytes eligible to free.",
                    done.wanted, done.freed
                ),
            );
        }
    }
    Some(done)
}

/// Collects every `period` and after each pull, until cancelled.
pub async fn gc_loop(shared: Arc<Shared>, cancel: CancellationToken) {
    if shared.cfg.image_gc.high >= 100 {
        return;
    }
    let mut tick = tokio::time::interval(shared.cfg.image_gc_period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
            () = shared.images.pulled.notified() => {}
        }
        collect_garbage(&shared).await;
    }
}

/// Resolves and fetches `image` from its registry with the pod's pull secrets.
async fn pull(shared: &Shared, pod: &Pod, image: &str) -> Result<(Image, Pulled), LoadError> {
    pulling(shared, pod, image);
    let images = &shared.images;
    let reference = flotilla_oci::pull::parse_reference(image).map_err(|e| LoadError {
        reason: "InvalidImageName",
        message: e.to_string(),
    })?;
    let mut configs = Vec::new();
    for s in &pod.spec.image_pull_secrets {
        match crate::envsource::fetch(shared, Kind::Secret, pod.namespace(), &s.name).await {
            Ok(Some(Object::Secret(secret))) => {
                if let Some(v) = secret.data.get(".dockerconfigjson") {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .map_err(|e| pull_error(format!("secret {:?}: {e}", s.name)))?;
                    configs.push((s.name.clone(), bytes));
                }
            }
            // kubelet goes on without a missing pull secret (and warns); so do we.
            Ok(_) => tracing::warn!(secret = %s.name, "image pull secret not found"),
            Err(e) => tracing::warn!(secret = %s.name, error = %e, "cannot read image pull secret"),
        }
    }
    let auth = flotilla_oci::pull::auth_from_docker_configs(reference.resolve_registry(), &configs)
        .map_err(pull_error)?;
    let digest = images
        .registry
        .resolve(&images.store, image, &auth)
        .await
        .map_err(pull_error)?;
    let (img, pulled) = images
        .registry
        .fetch(&images.store, image, &digest, &auth)
        .await
        .map_err(pull_error)?;
    if let Err(e) = shared.cache.set_image(image, &digest) {
        tracing::warn!(error = %e, "failed to cache image digest");
    }
    Ok((img, pulled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_are_told_from_hub_artifacts() {
        for r in [
            "127.0.0.1:5000/test/busybox:t",
            "ghcr.io/a/b",
            "localhost/x",
            "docker.io/library/nginx",
        ] {
            assert!(is_registry_ref(r), "{r}");
        }
        for h in ["hello", "hello:v2", "team/hello:v1", "hello@sha256:00"] {
            assert!(!is_registry_ref(h), "{h}");
        }
    }

    #[test]
    fn pull_policy_defaults_follow_kubernetes() {
        let c = |image: &str, policy: Option<&str>| Container {
            image: image.into(),
            image_pull_policy: policy.map(str::to_string),
            ..Default::default()
        };
        assert_eq!(pull_policy(&c("r.io/a", None)), "Always");
        assert_eq!(pull_policy(&c("r.io/a:latest", None)), "Always");
        assert_eq!(pull_policy(&c("r.io:5000/a:v1", None)), "IfNotPresent");
        assert_eq!(pull_policy(&c("r.io:5000/a", None)), "Always");
        assert_eq!(pull_policy(&c("r.io/a@sha256:00", None)), "IfNotPresent");
        assert_eq!(pull_policy(&c("r.io/a", Some("Never"))), "Never");
    }
}
