//! The agent's local state in its own redb: the last desired pods and revision seen, and
//! which digest each image resolved to. This is what lets the agent run without the hub.
use flotilla_proto::api::Pod;
use flotilla_proto::{Object, ObjectKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const PODS: TableDefinition<&str, &str> = TableDefinition::new("pods");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const IMAGES: TableDefinition<&str, &str> = TableDefinition::new("images");
/// ConfigMaps and Secrets pods refer to (`Kind/namespace/name`), sealed: Secrets are never
/// plaintext on the node's disk.
const CONFIGS: TableDefinition<&str, &[u8]> = TableDefinition::new("configs");
/// Every Service and EndpointSlice of the cluster (`Kind/namespace/name` → JSON), for the
/// node's DNS; their revision is `discovery_revision` in META.
const DISCOVERY: TableDefinition<&str, &str> = TableDefinition::new("discovery");
const DISCOVERY_REVISION: &str = "discovery_revision";

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
    redb::CommitError,
    redb::SetDurabilityError
);

pub struct Cache {
    db: Database,
    sealer: flotilla_transport::seal::Sealer,
    /// A change to the desired set is committed but not yet on disk.
    unpersisted: AtomicBool,
}

/// A change to the cached Services and EndpointSlices, as received from the hub.
pub enum DiscoveryChange {
    Replace(Vec<Object>),
    Put(Box<Object>),
    Delete(ObjectKey),
    /// Only the revision moves on.
    Nothing,
}

/// A change to the desired set, as received from the hub.
pub enum Change {
    Replace(Vec<Pod>),
    Put(Box<Pod>),
    Delete { uid: String },
}

impl Cache {
    /// Opens (creating) the cache; `key` seals the cached ConfigMaps and Secrets.
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<Cache, CacheError> {
        // The desired set of one node is small; a bounded page cache keeps the agent's memory flat.
        let db = Database::builder().set_cache_size(2 << 20).create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(PODS)?;
        txn.open_table(META)?;
        txn.open_table(IMAGES)?;
        txn.open_table(CONFIGS)?;
        txn.open_table(DISCOVERY)?;
        txn.commit()?;
        Ok(Cache {
            db,
            sealer: flotilla_transport::seal::Sealer::new(key),
            unpersisted: AtomicBool::new(false),
        })
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

    /// Applies a change and the revision it brings us to, atomically. A new or changed pod
    /// is seen at once (the supervisor starts it without waiting for the disk) and is
    /// durable once [`Cache::persist`] has run after it: until then a crash leaves the
    /// cache at an earlier revision, which the hub's watch resumes from, so nothing is lost
    /// but time. Removals are durable before they are acted on, so that a crash cannot bring
    /// back a pod already stopped (cached pods start before the hub is reached).
    pub fn apply(&self, change: Change, revision: u64) -> Result<(), CacheError> {
        let mut txn = self.db.begin_write()?;
        let deferred = matches!(change, Change::Put(_));
        if deferred {
            txn.set_durability(redb::Durability::None)?;
        }
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
        if deferred {
            self.unpersisted.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Makes the changes [`Cache::apply`] committed durable (a no-op when there are none).
    /// Blocking: an fsync.
    pub fn persist(&self) -> Result<(), CacheError> {
        if self.unpersisted.swap(false, Ordering::AcqRel) {
            // A durable commit makes the non-durable ones before it durable too.
            let committed = self
                .db
                .begin_write()
                .map_err(CacheError::from)
                .and_then(|txn| Ok(txn.commit()?));
            if committed.is_err() {
                self.unpersisted.store(true, Ordering::Release);
            }
            committed?;
        }
        Ok(())
    }

    pub fn set_revision(&self, revision: u64) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert("revision", revision)?;
        txn.commit()?;
        Ok(())
    }

    /// The revision the cached Services and EndpointSlices are at.
    pub fn discovery_revision(&self) -> Result<u64, CacheError> {
        let txn = self.db.begin_read()?;
        Ok(txn
            .open_table(META)?
            .get(DISCOVERY_REVISION)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// The cached Services and EndpointSlices. Entries that no longer parse are skipped.
    pub fn discovery(&self) -> Result<Vec<Object>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(DISCOVERY)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            match Object::from_json_str(v.value()) {
                Ok(o) => out.push(o),
                Err(e) => {
                    tracing::warn!(key = k.value(), error = %e, "skipping unreadable cached object")
                }
            }
        }
        Ok(out)
    }

    /// Applies a change to the cached Services and EndpointSlices, durably and atomically
    /// with the revision it brings them to.
    pub fn apply_discovery(
        &self,
        change: DiscoveryChange,
        revision: u64,
    ) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(DISCOVERY)?;
            match change {
                DiscoveryChange::Replace(all) => {
                    t.retain(|_, _| false)?;
                    for o in &all {
                        t.insert(o.key().storage_key().as_str(), o.to_json_string().as_str())?;
                    }
                }
                DiscoveryChange::Put(o) => {
                    t.insert(o.key().storage_key().as_str(), o.to_json_string().as_str())?;
                }
                DiscoveryChange::Delete(key) => {
                    t.remove(key.storage_key().as_str())?;
                }
                DiscoveryChange::Nothing => {}
            }
            txn.open_table(META)?.insert(DISCOVERY_REVISION, revision)?;
        }
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

    /// Every image name → digest the node resolved (hub artifacts and registry images).
    pub fn images(&self) -> Result<Vec<(String, String)>, CacheError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_string()));
        }
        Ok(out)
    }

    pub fn set_image(&self, image: &str, digest: &str) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        txn.open_table(IMAGES)?.insert(image, digest)?;
        txn.commit()?;
        Ok(())
    }

    /// The cached copy of a ConfigMap or Secret (JSON), if any.
    pub fn config(&self, key: &str) -> Result<Option<String>, CacheError> {
        let txn = self.db.begin_read()?;
        let sealed = txn
            .open_table(CONFIGS)?
            .get(key)?
            .map(|v| v.value().to_vec());
        Ok(sealed
            .and_then(|s| self.sealer.open(&s))
            .and_then(|plain| String::from_utf8(plain).ok()))
    }

    /// Stores (Some) or forgets (None) a ConfigMap or Secret.
    pub fn set_config(&self, key: &str, json: Option<&str>) -> Result<(), CacheError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(CONFIGS)?;
            match json {
                Some(j) => {
                    t.insert(key, self.sealer.seal(j.as_bytes()).as_slice())?;
                }
                None => {
                    t.remove(key)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = format!("pod-{uid}");
        p.metadata.uid = uid.to_string();
        p
    }

    #[test]
    fn applied_changes_are_seen_at_once_and_kept_once_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.redb");
        let cache = Cache::open(&path, &[7; 32]).unwrap();
        cache.apply(Change::Put(Box::new(pod("a"))), 3).unwrap();
        cache
            .apply(Change::Replace(vec![pod("b"), pod("c")]), 5)
            .unwrap();
        cache.apply(Change::Delete { uid: "c".into() }, 6).unwrap();
        let uids = |c: &Cache| c.pods().unwrap().into_keys().collect::<Vec<_>>();
        assert_eq!(uids(&cache), ["b"]);
        assert_eq!(cache.revision().unwrap(), 6);
        cache.persist().unwrap();
        assert!(!cache.unpersisted.load(Ordering::Acquire));
        // Nothing new: no commit.
        cache.persist().unwrap();
        drop(cache);
        let cache = Cache::open(&path, &[7; 32]).unwrap();
        assert_eq!(uids(&cache), ["b"]);
        assert_eq!(cache.revision().unwrap(), 6);
    }
}
