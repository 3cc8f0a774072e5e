//! Wasm artifacts: resolve an image name to a digest (asking the hub when connected, the local
//! cache otherwise), fetch the blob over QUIC, verify its digest, keep it on disk, and compile it
//! once per digest.
use crate::Shared;
use crate::runtime::wasm::Artifact;
use flotilla_proto::wire::{Request, Response};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("{0}")]
    Hub(String),
    #[error("hub unreachable and {0} is not cached on this node")]
    Offline(String),
    #[error("blob {digest} failed verification (got {actual})")]
    Corrupt { digest: String, actual: String },
    #[error("transport: {0}")]
    Transport(#[from] flotilla_transport::TransportError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Load(String),
}

fn blob_path(shared: &Shared, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| shared.cfg.data_dir.join("blobs").join(hex))
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Resolves, fetches and compiles `image`; the compiled artifact is shared by all pods using it.
pub async fn load(shared: &Shared, image: &str) -> Result<Artifact, PullError> {
    let digest = resolve(shared, image).await?;
    let known = || {
        let artifacts = shared.artifacts.lock().unwrap_or_else(|p| p.into_inner());
        artifacts.get(&digest).cloned()
    };
    if let Some(a) = known() {
        return Ok(a);
    }
    // Pods that start together with one image fetch and compile it once.
    let lock = shared.images.lock(&digest);
    let _held = lock.lock().await;
    if let Some(a) = known() {
        return Ok(a);
    }
    let bytes = fetch(shared, &digest).await?;
    let runtime = shared.runtime.clone();
    let d = digest.clone();
    let artifact = tokio::task::spawn_blocking(move || runtime.load(&d, &bytes))
        .await
        .map_err(|e| PullError::Load(e.to_string()))?
        .map_err(|e| PullError::Load(e.to_string()))?;
    shared
        .artifacts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(digest, artifact.clone());
    Ok(artifact)
}

async fn resolve(shared: &Shared, image: &str) -> Result<String, PullError> {
    let conn = shared.hub.borrow().clone();
    if let Some(conn) = conn {
        let req = Request::ResolveImage {
            image: image.to_string(),
        };
        let asked = tokio::time::timeout(
            Duration::from_secs(5),
            flotilla_transport::request::<_, Response>(&conn, &req),
        )
        .await;
        match asked {
            Ok(Ok((_, _, Response::Resolved { digest, .. }))) => {
                if let Err(e) = shared.cache.set_image(image, &digest) {
                    tracing::warn!(error = %e, "failed to cache image digest");
                }
                return Ok(digest);
            }
            Ok(Ok((_, _, Response::Error { message }))) => return Err(PullError::Hub(message)),
            // Transport trouble: fall back to what this node already knows.
            _ => {}
        }
    }
    shared
        .cache
        .image(image)
        .ok()
        .flatten()
        .ok_or_else(|| PullError::Offline(image.to_string()))
}

async fn fetch(shared: &Shared, digest: &str) -> Result<Vec<u8>, PullError> {
    let path = blob_path(shared, digest)
        .ok_or_else(|| PullError::Hub(format!("invalid digest {digest:?}")))?;
    if let Ok(bytes) = tokio::fs::read(&path).await {
        // Re-verify: a cached blob that rotted on disk is fetched again rather than run.
        if sha256(&bytes) == digest {
            return Ok(bytes);
        }
        tracing::warn!(digest, "cached blob is corrupt; fetching it again");
    }
    let conn = shared
        .hub
        .borrow()
        .clone()
        .ok_or_else(|| PullError::Offline(digest.to_string()))?;
    let (_send, mut recv, resp) = flotilla_transport::request::<_, Response>(
        &conn,
        &Request::FetchBlob {
            digest: digest.to_string(),
        },
    )
    .await?;
    let size = match resp {
        Response::Blob { size } => size,
        Response::Error { message } => return Err(PullError::Hub(message)),
        other => return Err(PullError::Hub(format!("unexpected answer {other:?}"))),
    };
    // Artifacts are small wasm files; a bound keeps a confused hub from filling memory.
    if size > 512 << 20 {
        return Err(PullError::Hub(format!(
            "blob {digest} is {size} bytes, over the 512 MiB limit"
        )));
    }
    let mut bytes = vec![0u8; size as usize];
    recv.read_exact(&mut bytes)
        .await
        .map_err(|e| PullError::Transport(e.into()))?;
    let actual = sha256(&bytes);
    if actual != digest {
        return Err(PullError::Corrupt {
            digest: digest.to_string(),
            actual,
        });
    }
    tokio::task::spawn_blocking(move || {
        crate::files::write_atomic(&path, &[&bytes], 0o600)?;
        Ok::<_, PullError>(bytes)
    })
    .await
    .map_err(|e| PullError::Load(e.to_string()))?
}
