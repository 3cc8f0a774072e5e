//! The desired state: objects in redb under (kind, namespace, name) with a global revision,
//! an event log for watch-resume, and change notifications. Only the hub writes desired state.
use flotilla_proto::api::{Kind, Object, ObjectKey};
use flotilla_transport::seal::Sealer;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;
use tokio::sync::broadcast;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
pub(crate) const IMAGES: TableDefinition<&str, &str> = TableDefinition::new("images");

/// Value encodings in the objects and log tables (first byte). Independent of the wire format,
/// so the hub can be upgraded in place.
const FORMAT_JSON: u8 = 1;
const FORMAT_SEALED_JSON: u8 = 2;
/// How many log entries to keep for watchers that resume; older resumes get a snapshot.
const LOG_RETAIN: u64 = 50_000;
/// Meta key present once the per-kind object counts (`count/<Kind>`) are maintained.
const COUNTED: &str = "counted";
/// The longest a soft write ([`Store::write_soft`]) stays without a durable commit after it.
const SOFT_SPAN: std::time::Duration = std::time::Duration::from_secs(1);

fn count_key_str(kind: &str) -> String {
    format!("count/{kind}")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(ObjectKey),
    #[error("{0}")]
    Invalid(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("corrupt value for {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(impl From<$t> for StoreError { fn from(e: $t) -> Self { StoreError::Db(e.into()) } })*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One change, published after its commit (durable, or soft: see [`Store::write_soft`]).
#[derive(Clone, Debug)]
pub struct StoreEvent {
    pub revision: u64,
    pub key: ObjectKey,
    /// The object after the change; None when deleted.
    pub object: Option<Object>,
    pub prev: Option<Object>,
}

/// One logged change: (revision, deleted, object as written or as it was when deleted).
pub type Change = (u64, bool, Object);

#[derive(Serialize, Deserialize)]
struct LogEntry {
    key: String,
    deleted: bool,
    object: Vec<u8>,
}

pub struct Store {
    db: Database,
    events: broadcast::Sender<StoreEvent>,
    sealing: Sealer,
    /// Serialises writers in-process so revision numbers are handed out in commit order.
    write_lock: Mutex<Commits>,
}

/// What the writers know about commits, kept under the write lock.
struct Commits {
    /// When a commit was last made durable.
    durable_at: std::time::Instant,
    /// Whether a soft commit was made since.
    soft: bool,
}

impl Commits {
    /// Just after a durable commit.
    fn durable() -> Commits {
        Commits {
            durable_at: std::time::Instant::now(),
            soft: false,
        }
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Store {
    /// Opens (creating) the database. `sealing_key` (32 bytes) encrypts Secrets at rest.
    pub fn open(path: &Path, sealing_key: &[u8; 32]) -> Result<Store, StoreError> {
        // Bounded page cache: reads past it go to the OS page cache, which the kernel can reclaim.
        let db = Database::builder().set_cache_size(16 << 20).create(path)?;
        let txn = db.begin_write()?;
        {
            let objects = txn.open_table(OBJECTS)?;
            txn.open_table(LOG)?;
            let mut meta = txn.open_table(META)?;
            txn.open_table(TOKENS)?;
            txn.open_table(IMAGES)?;
            // A store written before objects were counted: count them once.
            if meta.get(COUNTED)?.is_none() {
                let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
                for item in objects.iter()? {
                    let (k, _) = item?;
                    if let Some((kind, _)) = k.value().split_once('/') {
                        *counts.entry(count_key_str(kind)).or_default() += 1;
                    }
                }
                for (k, n) in counts {
                    meta.insert(k.as_str(), n)?;
                }
                meta.insert(COUNTED, 1)?;
            }
        }
        txn.commit()?;
        let (events, _) = broadcast::channel(8192);
        let store = Store {
            db,
            events,
            sealing: Sealer::new(sealing_key),
            write_lock: Mutex::new(Commits::durable()),
        };
        store.bootstrap()?;
        Ok(store)
    }

    /// What every cluster has from the start: the `default` namespace, and the IngressClass
    /// the agents' ingress serves (marked default, so Ingresses without a class are its).
    fn bootstrap(&self) -> Result<(), StoreError> {
        use flotilla_proto::api::{
            DEFAULT_CLASS_ANNOTATION, DEFAULT_INGRESS_CLASS, INGRESS_CONTROLLER, IngressClass,
        };
        let mut class = IngressClass::default();
        class.spec.controller = INGRESS_CONTROLLER.into();
        class
            .metadata
            .annotations
            .insert(DEFAULT_CLASS_ANNOTATION.into(), "true".into());
        for (mut object, name) in [
            (Object::Namespace(Default::default()), "default"),
            (Object::IngressClass(class), DEFAULT_INGRESS_CLASS),
        ] {
            object.meta_mut().name = name.into();
            object.normalize();
            if self.get(&object.key())?.is_none() {
                self.write(|tx| tx.put(object).map(|_| ()))?;
            }
        }
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get("revision")?.map(|v| v.value()).unwrap_or(0))
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Option<Object>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let sk = key.storage_key();
        match table.get(sk.as_str())? {
            Some(v) => Ok(Some(self.decode(&sk, v.value())?)),
            None => Ok(None),
        }
    }

    /// The digest a pushed `name:tag` points at.
    pub fn image_digest(&self, name_tag: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(IMAGES)?;
        Ok(table.get(name_tag)?.map(|v| v.value().to_string()))
    }

    /// Lists a kind (optionally in one namespace) and the revision the list is consistent with.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<Object>, u64), StoreError> {
        self.list_kinds(&[kind], namespace)
    }

    /// Lists several kinds from one read, so together they are consistent with one revision.
    pub fn list_kinds(
        &self,
        kinds: &[Kind],
        namespace: Option<&str>,
    ) -> Result<(Vec<Object>, u64), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(OBJECTS)?;
        let meta = txn.open_table(META)?;
        let rev = meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
        let mut out = Vec::new();
        for kind in kinds {
            out.extend(self.scan(&table, &ObjectKey::prefix(*kind, namespace))?);
        }
        Ok((out, rev))
    }

    fn scan(
        &self,
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        prefix: &str,
    ) -> Result<Vec<Object>, StoreError> {
        let mut out = Vec::new();
        for item in table.range(prefix..)? {
            let (k, v) = item?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Changes after `revision`, or None when the log no longer reaches back that far.
    /// Each change is (revision, deleted, object); a deleted entry carries the object as it was.
    pub fn changes_since(&self, revision: u64) -> Result<Option<Vec<Change>>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let compacted = meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
        if revision < compacted {
            return Ok(None);
        }
        let log = txn.open_table(LOG)?;
        let mut out = Vec::new();
        for item in log.range(revision + 1..)? {
            let (rev, v) = item?;
            let entry: LogEntry =
                postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
                    key: format!("log/{}", rev.value()),
                    reason: e.to_string(),
                })?;
            let obj = self.decode(&entry.key, &entry.object)?;
            out.push((rev.value(), entry.deleted, obj));
        }
        Ok(Some(out))
    }

    fn encode(&self, obj: &Object) -> Result<Vec<u8>, StoreError> {
        let json = obj.to_json_string().into_bytes();
        if obj.kind() != Kind::Secret {
            let mut out = Vec::with_capacity(json.len() + 1);
            out.push(FORMAT_JSON);
            out.extend_from_slice(&json);
            return Ok(out);
        }
        // Secrets are sealed with ChaCha20-Poly1305 under the data dir's key.
        let sealed = self.sealing.seal(&json);
        let mut out = Vec::with_capacity(1 + sealed.len());
        out.push(FORMAT_SEALED_JSON);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<Object, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: key.to_string(),
            reason,
        };
        let json: Vec<u8> = match bytes.split_first() {
            Some((&FORMAT_JSON, rest)) => rest.to_vec(),
            Some((&FORMAT_SEALED_JSON, rest)) => self
                .sealing
                .open(rest)
                .ok_or_else(|| corrupt("cannot unseal (wrong secret key?)".into()))?,
            _ => return Err(corrupt("unknown value format".into())),
        };
        let text = std::str::from_utf8(&json).map_err(|e| corrupt(e.to_string()))?;
        Object::from_json_str(text).map_err(|e| corrupt(e.to_string()))
    }

    /// Runs `f` in one durable write transaction; events are published after the commit.
    pub fn write<R>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.write_with(false, f)
    }

    /// [`Store::write`] for state that its source sends again if the hub forgets it (agents
    /// report every pod status anew on each connection; their events are best effort, as in
    /// Kubernetes): committed without waiting for the disk, unless no commit has been made
    /// durable for [`SOFT_SPAN`]. A hub that crashes loses at most that span of such writes,
    /// and anything written after them (durably) carries them to disk, so no durable state
    /// rests on a lost one. It spares the disk flushes that pod starts and stops would
    /// otherwise wait for on a small machine.
    pub fn write_soft<R>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        self.write_with(true, f)
    }

    /// Makes soft writes durable, if any are not yet. Blocking (a disk flush).
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut commits = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if commits.soft {
            self.db.begin_write()?.commit()?;
            *commits = Commits::durable();
        }
        Ok(())
    }

    fn write_with<R>(
        &self,
        soft: bool,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut commits = self.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut txn = self.db.begin_write()?;
        let soft = soft && commits.durable_at.elapsed() < SOFT_SPAN;
        if soft {
            txn.set_durability(redb::Durability::None)?;
        }
        let (result, events) = {
            let mut tx = Tx {
                store: self,
                objects: txn.open_table(OBJECTS)?,
                log: txn.open_table(LOG)?,
                meta: txn.open_table(META)?,
                tokens: txn.open_table(TOKENS)?,
                images: txn.open_table(IMAGES)?,
                events: Vec::new(),
                now: now_rfc3339(),
            };
            let result = f(&mut tx)?;
            tx.compact()?;
            (result, tx.events)
        };
        txn.commit()?;
        if soft {
            commits.soft = true;
        } else {
            *commits = Commits::durable();
        }
        for e in events {
            // No receivers is fine: nobody is watching yet.
            let _ = self.events.send(e);
        }
        Ok(result)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "cannot make the last pod reports durable");
        }
    }
}

/// Flushes soft writes every [`SOFT_SPAN`] when no durable write did, and once more when
/// cancelled.
pub async fn flush_soft_writes(
    hub: std::sync::Arc<crate::Hub>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(SOFT_SPAN);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = cancel.cancelled() => true,
        };
        let flushing = hub.clone();
        match tokio::task::spawn_blocking(move || flushing.store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot make pod reports durable"),
            Err(e) => tracing::warn!(error = %e, "cannot make pod reports durable"),
        }
        if stop {
            return;
        }
    }
}

/// A write transaction's view: reads see its own writes.
pub struct Tx<'a> {
    store: &'a Store,
    objects: redb::Table<'a, &'static str, &'static [u8]>,
    log: redb::Table<'a, u64, &'static [u8]>,
    meta: redb::Table<'a, &'static str, u64>,
    pub(crate) tokens: redb::Table<'a, &'static str, &'static [u8]>,
    pub(crate) images: redb::Table<'a, &'static str, &'static str>,
    events: Vec<StoreEvent>,
    now: String,
}

impl Tx<'_> {
    pub fn get(&self, key: &ObjectKey) -> Result<Option<Object>, StoreError> {
        let sk = key.storage_key();
        match self.objects.get(sk.as_str())? {
            Some(v) => Ok(Some(self.store.decode(&sk, v.value())?)),
            None => Ok(None),
        }
    }

    pub fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<Vec<Object>, StoreError> {
        self.store
            .scan(&self.objects, &ObjectKey::prefix(kind, namespace))
    }

    /// How many objects of `kind` exist, without reading them (a counter kept with every
    /// create and delete).
    pub fn count(&self, kind: Kind) -> Result<u64, StoreError> {
        let k = count_key_str(kind.as_str());
        Ok(self.meta.get(k.as_str())?.map(|v| v.value()).unwrap_or(0))
    }

    /// Counts the objects of `kind` afresh and stores the count (a repair for a store that
    /// an older release wrote to in between).
    pub fn recount(&mut self, kind: Kind) -> Result<u64, StoreError> {
        let prefix = ObjectKey::prefix(kind, None);
        let mut n = 0;
        for item in self.objects.range(prefix.as_str()..)? {
            let (k, _) = item?;
            if !k.value().starts_with(&prefix) {
                break;
            }
            n += 1;
        }
        let k = count_key_str(kind.as_str());
        self.meta.insert(k.as_str(), n)?;
        Ok(n)
    }

    fn add_count(&mut self, kind: Kind, delta: i64) -> Result<(), StoreError> {
        let k = count_key_str(kind.as_str());
        let n = self.meta.get(k.as_str())?.map(|v| v.value()).unwrap_or(0);
        self.meta
            .insert(k.as_str(), n.saturating_add_signed(delta))?;
        Ok(())
    }

    fn next_revision(&mut self) -> Result<u64, StoreError> {
        let rev = self.meta.get("revision")?.map(|v| v.value()).unwrap_or(0) + 1;
        self.meta.insert("revision", rev)?;
        Ok(rev)
    }

    /// Creates or replaces an object. Server-owned metadata (uid, creationTimestamp) is kept from
    /// the stored copy; generation rises when the spec changes; resourceVersion is the new revision.
    pub fn put(&mut self, mut obj: Object) -> Result<Object, StoreError> {
        obj.normalize();
        let key = obj.key();
        let prev = self.get(&key)?;
        let meta = obj.meta_mut();
        match &prev {
            Some(p) => {
                let pm = p.meta();
                meta.uid = pm.uid.clone();
                meta.creation_timestamp = pm.creation_timestamp.clone();
                meta.generation = pm.generation;
            }
            None => {
                meta.uid = new_uid();
                meta.creation_timestamp = self.now.clone();
                meta.generation = 0;
            }
        }
        if prev.is_none() {
            self.add_count(key.kind, 1)?;
        }
        let spec_changed = prev
            .as_ref()
            .is_none_or(|p| p.spec_json() != obj.spec_json());
        if spec_changed {
            obj.meta_mut().generation += 1;
        }
        let rev = self.next_revision()?;
        obj.meta_mut().resource_version = rev.to_string();
        let bytes = self.store.encode(&obj)?;
        let sk = key.storage_key();
        self.objects.insert(sk.as_str(), bytes.as_slice())?;
        self.append_log(rev, &sk, false, bytes)?;
        self.events.push(StoreEvent {
            revision: rev,
            key,
            object: Some(obj.clone()),
            prev,
        });
        Ok(obj)
    }

    pub fn delete(&mut self, key: &ObjectKey) -> Result<Option<Object>, StoreError> {
        let Some(prev) = self.get(key)? else {
            return Ok(None);
        };
        let sk = key.storage_key();
        self.objects.remove(sk.as_str())?;
        self.add_count(key.kind, -1)?;
        let rev = self.next_revision()?;
        let bytes = self.store.encode(&prev)?;
        self.append_log(rev, &sk, true, bytes)?;
        self.events.push(StoreEvent {
            revision: rev,
            key: key.clone(),
            object: None,
            prev: Some(prev.clone()),
        });
        Ok(Some(prev))
    }

    fn append_log(
        &mut self,
        rev: u64,
        key: &str,
        deleted: bool,
        object: Vec<u8>,
    ) -> Result<(), StoreError> {
        let entry = postcard::to_stdvec(&LogEntry {
            key: key.to_string(),
            deleted,
            object,
        })
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.log.insert(rev, entry.as_slice())?;
        Ok(())
    }

    /// Drops log entries older than the retention window and remembers where the log starts.
    fn compact(&mut self) -> Result<(), StoreError> {
        let rev = self.meta.get("revision")?.map(|v| v.value()).unwrap_or(0);
        let compacted = self.meta.get("compacted")?.map(|v| v.value()).unwrap_or(0);
        // Compact in batches so the common write does no extra work.
        if rev > compacted + LOG_RETAIN + 1000 {
            let upto = rev - LOG_RETAIN;
            self.log.retain_in(..upto, |_, _| false)?;
            self.meta.insert("compacted", upto)?;
        }
        Ok(())
    }
}

fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::api::ConfigMap;

    fn cm(name: &str, v: &str) -> Object {
        let mut c = ConfigMap::default();
        c.metadata.name = name.into();
        c.data.insert("k".into(), v.into());
        Object::ConfigMap(c)
    }

    #[test]
    fn revisions_generations_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let key = [7u8; 32];
        let (uid, rev) = {
            let s = Store::open(&path, &key).unwrap();
            let a = s.write(|tx| tx.put(cm("a", "1"))).unwrap();
            assert_eq!(a.meta().generation, 1);
            let a2 = s.write(|tx| tx.put(cm("a", "2"))).unwrap();
            assert_eq!(a2.meta().generation, 2);
            assert_eq!(a2.meta().uid, a.meta().uid);
            assert!(
                a2.meta().resource_version.parse::<u64>().unwrap()
                    > a.meta().resource_version.parse::<u64>().unwrap()
            );
            let changes = s.changes_since(0).unwrap().unwrap();
            assert_eq!(
                changes.len(),
                4,
                "default namespace, ingress class, two writes"
            );
            (a2.meta().uid.clone(), s.revision().unwrap())
        };
        let s = Store::open(&path, &key).unwrap();
        assert_eq!(s.revision().unwrap(), rev);
        let a = s
            .get(&ObjectKey::new(Kind::ConfigMap, "default", "a"))
            .unwrap()
            .unwrap();
        assert_eq!(a.meta().uid, uid);
    }

    #[test]
    fn soft_writes_are_seen_at_once_and_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let key = [7u8; 32];
        let soft = |s: &Store| s.write_lock.lock().unwrap().soft;
        let get = |s: &Store, name: &str| {
            s.get(&ObjectKey::new(Kind::ConfigMap, "default", name))
                .unwrap()
        };
        {
            let s = Store::open(&path, &key).unwrap();
            s.write_soft(|tx| tx.put(cm("a", "1"))).unwrap();
            assert!(soft(&s), "committed without a flush");
            assert!(get(&s, "a").is_some(), "and seen at once");
            s.flush().unwrap();
            assert!(!soft(&s), "flushed");
            s.write(|tx| tx.put(cm("b", "1"))).unwrap();
            s.write_soft(|tx| tx.put(cm("c", "1"))).unwrap();
            assert!(soft(&s));
            s.write(|tx| tx.put(cm("d", "1"))).unwrap();
            assert!(!soft(&s), "a durable write carries the soft ones");
            s.write_soft(|tx| tx.put(cm("e", "1"))).unwrap();
            // Dropped: the last soft write is flushed on the way.
        }
        let s = Store::open(&path, &key).unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            assert!(get(&s, name).is_some(), "{name}");
        }
    }

    #[test]
    fn objects_are_counted_per_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        {
            let s = Store::open(&path, &[7u8; 32]).unwrap();
            s.write(|tx| {
                tx.put(cm("a", "1"))?;
                tx.put(cm("b", "1"))?;
                tx.put(cm("a", "2"))?;
                tx.delete(&ObjectKey::new(Kind::ConfigMap, "default", "b"))?;
                tx.delete(&ObjectKey::new(Kind::ConfigMap, "default", "gone"))?;
                tx.put(cm("c", "1"))
            })
            .unwrap();
        }
        let s = Store::open(&path, &[7u8; 32]).unwrap();
        let counts = s
            .write(|tx| {
                let counted = (tx.count(Kind::ConfigMap)?, tx.count(Kind::Namespace)?);
                Ok((counted, tx.recount(Kind::ConfigMap)?))
            })
            .unwrap();
        assert_eq!(counts, ((2, 1), 2));
    }

    #[test]
    fn secrets_are_sealed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let s = Store::open(&path, &[1u8; 32]).unwrap();
        let mut sec = flotilla_proto::api::Secret::default();
        sec.metadata.name = "db".into();
        sec.data
            .insert("password".into(), "c3VwZXJzZWNyZXRwYXNzd29yZA==".into());
        s.write(|tx| tx.put(Object::Secret(sec))).unwrap();
        drop(s);
        let raw = std::fs::read(&path).unwrap();
        let needle = b"c3VwZXJzZWNyZXRwYXNzd29yZA";
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "secret found in plaintext"
        );
        let s = Store::open(&path, &[1u8; 32]).unwrap();
        let got = s
            .get(&ObjectKey::new(Kind::Secret, "default", "db"))
            .unwrap()
            .unwrap();
        let Object::Secret(got) = got else {
            panic!("not a secret")
        };
        assert_eq!(got.data["password"], "c3VwZXJzZWNyZXRwYXNzd29yZA==");
    }
}
