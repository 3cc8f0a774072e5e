//! The agent's local state in its own redb: the last desired pods and revision seen, and
//! which digest each image resolved to. This is what lets the agent run without the hub.
use flotilla_proto::api::Pod;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;

const PODS: TableDefinition<&str, &str> = TableDefinition::new("pods");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const IMAGES: TableDefinition<&str, &str> = TableDefinition::new("images");

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("agent cache: {0}")]
    Db(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(impl From<$t> for CacheError { fn from(e: $t) -> Self { CacheError::Db(e.into()) } })*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

pub struct Cache {
    db: Database,
}

/// A change to the desired set, as received from the hub.
pub enum Change {
    Replace(Vec<Pod>),
    Put(Box<Pod>),
    Delete { uid: String },
}

impl Cache {
    pub fn open(path: &Path) -> Result<Cache, CacheError> {
        // The desired set of one node is small; a bounded page cache keeps the agent's memory flat.
        let db = Database::builder().set_cache_size(2 << 20).create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(PODS)?;
        txn.open_table(META)?;
        txn.open_table(IMAGES)?;
        txn.commit()?;
        Ok(Cache { db })
    }

    pub fn revision(&self) -> Result<u64, CacheError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(META)?
            .get("revision")?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Desired pods by uid. Entries that no longer parse are skipped (and logged), not fatal.
    pub fn pods(&self) -> Result<BTreeMap<String, Pod>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PODS)?;
        let mut out = BTreeMap::new();
        for item in table.iter()? {
            let (k, v) = item?;
            match serde_json::from_str::<Pod>(v.value()) {
                Ok(p) => {
                    out.insert(k.value().to_string(), p);
                }
                Err(e) => {
                    tracing::warn!(pod.uid = k.value(), error = %e, "skipping unreadable cached pod")
                }
            }
        }
        Ok(out)
    }

    /// Applies a change and the revision it brings us to, durably and atomically.
    pub fn apply(&self, change: Change, revision: u64) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut pods = txn.open_table(PODS)?;
            match change {
                Change::Replace(all) => {
                    pods.retain(|_, _| false)?;
                    for p in all {
                        let json = serde_json::to_string(&p).unwrap_or_default();
                        pods.insert(p.metadata.uid.as_str(), json.as_str())?;
                    }
                }
                Change::Put(p) => {
                    let p = *p;
                    let json = serde_json::to_string(&p).unwrap_or_default();
                    pods.insert(p.metadata.uid.as_str(), json.as_str())?;
                }
                Change::Delete { uid } => {
                    pods.remove(uid.as_str())?;
                }
            }
            txn.open_table(META)?.insert("revision", revision)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub fn set_revision(&self, revision: u64) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("revision", revision)?;
        txn.commit()?;
        Ok(())
    }

    pub fn image(&self, image: &str) -> Result<Option<String>, CacheError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(IMAGES)?
            .get(image)?
            .map(|v| v.value().to_string()))
    }

    pub fn set_image(&self, image: &str, digest: &str) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        txn.open_table(IMAGES)?.insert(image, digest)?;
        txn.commit()?;
        Ok(())
    }
}
