//! Images for pods: wasm artifacts pushed to the hub (`fleet push`), and images in OCI or
//! Docker registries, which are container images (run by runc) or wasm OCI artifacts (run by
//! wasmtime). The pod's `runtimeClassName` may insist on one runtime; otherwise the image
//! decides.
//!
//! Registry images honour `imagePullPolicy` with Kubernetes' defaults. Unlike kubelet, a node
//! that cannot reach the registry starts a pod from the image it already holds even under
//! `Always` (with a warning event): edge nodes must come back without their registry.
use crate::Shared;
use crate::runtime::wasm::Artifact;
use flotilla_oci::pull::{Pulled, Registry, RegistryConfig};
use flotilla_oci::store::{Image, ImageKind, Store};
use flotilla_proto::api::{Container, Kind, Object, Pod};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

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
}

impl Images {
    pub fn open(data_dir: &std::path::Path, cfg: &RegistryConfig) -> anyhow::Result<Images> {
        Ok(Images {
            store: Arc::new(Store::open(data_dir.join("images"))?),
            registry: Registry::new(cfg),
            locks: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
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

async fn load_registry(
    shared: &Shared,
    pod: &Pod,
    container: &Container,
) -> Result<(Loaded, String), LoadError> {
    let images = &shared.images;
    let image = container.image.as_str();
    let policy = pull_policy(container);
    let cached = shared
        .cache
        .image(image)
        .ok()
        .flatten()
        .and_then(|d| images.store.image(&d).ok())
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
    let img = Arc::new(img);
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
            let snapshot = {
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
    Ok((loaded, message))
}

/// Resolves and fetches `image` from its registry with the pod's pull secrets.
async fn pull(shared: &Shared, pod: &Pod, image: &str) -> Result<(Image, Pulled), LoadError> {
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
