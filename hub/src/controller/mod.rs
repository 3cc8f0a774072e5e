//! Controllers: level-triggered reconcilers over the store (Kubernetes controller contract).
pub mod deployment;
pub mod node;

use crate::store::StoreEvent;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::broadcast;

/// Collects keys to reconcile from store events, deduplicated, with a periodic full resync so a
/// missed event or a failed reconcile is always retried.
pub(crate) async fn next_batch<K: Ord>(
    rx: &mut broadcast::Receiver<StoreEvent>,
    resync: Duration,
    mut keys_of: impl FnMut(&StoreEvent) -> Vec<K>,
) -> Option<BatchKind<K>> {
    let mut keys = BTreeSet::new();
    let deadline = tokio::time::sleep(resync);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Some(BatchKind::Resync),
            e = rx.recv() => match e {
                Ok(e) => keys.extend(keys_of(&e)),
                Err(broadcast::error::RecvError::Lagged(_)) => return Some(BatchKind::Resync),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        }
        // Drain what is already queued so a burst becomes one batch.
        while let Ok(e) = rx.try_recv() {
            keys.extend(keys_of(&e));
        }
        if !keys.is_empty() {
            return Some(BatchKind::Keys(keys));
        }
    }
}

pub(crate) enum BatchKind<K> {
    Keys(BTreeSet<K>),
    Resync,
}
