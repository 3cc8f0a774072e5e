//! Content-addressed artifact storage: `blobs/sha256/<hex>`, written through a temp file and
//! verified against the digest the client claimed before it becomes visible.
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

pub struct BlobStore {
    dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid digest {0:?} (expected sha256:<64 hex>)")]
    BadDigest(String),
    #[error("digest mismatch: claimed {claimed}, content is {actual}")]
    Mismatch { claimed: String, actual: String },
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub fn parse_digest(d: &str) -> Result<&str, BlobError> {
    match d.strip_prefix("sha256:") {
        Some(h)
            if h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) =>
        {
            Ok(h)
        }
        _ => Err(BlobError::BadDigest(d.to_string())),
    }
}

impl BlobStore {
    pub fn open(dir: PathBuf) -> std::io::Result<BlobStore> {
        std::fs::create_dir_all(dir.join("sha256"))?;
        Ok(BlobStore { dir })
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, BlobError> {
        Ok(self.dir.join("sha256").join(parse_digest(digest)?))
    }

    pub fn size(&self, digest: &str) -> Result<u64, BlobError> {
        let p = self.path(digest)?;
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|_| BlobError::NotFound(digest.to_string()))
    }

    /// Streams exactly `size` bytes from `recv` into the store, checking the digest.
    pub async fn put_from(
        &self,
        digest: &str,
        size: u64,
        recv: &mut quinn::RecvStream,
    ) -> Result<(), BlobError> {
        let final_path = self.path(digest)?;
        let tmp = self
            .dir
            .join(format!("upload-{}", hex::encode(rand::random::<[u8; 8]>())));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut remaining = size;
            let mut buf = vec![0u8; 64 * 1024];
            while remaining > 0 {
                let want = remaining.min(buf.len() as u64) as usize;
                match recv.read(&mut buf[..want]).await {
                    Ok(Some(n)) => {
                        hasher.update(&buf[..n]);
                        file.write_all(&buf[..n]).await?;
                        remaining -= n as u64;
                    }
                    Ok(None) => {
                        return Err(BlobError::Io(std::io::Error::other("upload ended early")));
                    }
                    Err(e) => return Err(BlobError::Io(std::io::Error::other(e))),
                }
            }
            file.sync_all().await?;
            let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
            if actual != digest {
                return Err(BlobError::Mismatch {
                    claimed: digest.to_string(),
                    actual,
                });
            }
            tokio::fs::rename(&tmp, &final_path).await?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }
}
