//! Image garbage collection, kubelet's model: when the filesystem holding the store is used
//! above a high threshold (percent), remove the least recently used images that nothing pins
//! until usage is back under the low threshold. This module decides (pure) and measures the
//! filesystem; which images are pinned is the caller's knowledge (pods), not the store's.
use crate::store::ImageRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The thresholds, in percent of the filesystem's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Collect when usage reaches this (kubelet's default 85; 100 never collects).
    pub high: u8,
    /// Collect down to this (kubelet's default 80).
    pub low: u8,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { high: 85, low: 80 }
    }
}

impl Thresholds {
    /// Both within 0..=100 and low not above high.
    pub fn validate(&self) -> Result<(), String> {
        if self.high > 100 {
            return Err(format!(
                "--image-gc-high-threshold must be within 0..=100, got {}",
                self.high
            ));
        }
        if self.low > 100 {
            return Err(format!(
                "--image-gc-low-threshold must be within 0..=100, got {}",
                self.low
            ));
        }
        if self.low > self.high {
            return Err(format!(
                "--image-gc-low-threshold ({}) must not be above --image-gc-high-threshold ({})",
                self.low, self.high
            ));
        }
        Ok(())
    }
}

/// A filesystem's size and what is left of it (to unprivileged users, as kubelet counts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub capacity: u64,
    pub available: u64,
}

impl Usage {
    /// Percent used, rounded down (kubelet: `100 - available * 100 / capacity`).
    pub fn percent(&self) -> u64 {
        if self.capacity == 0 {
            return 0;
        }
        100 - (self.available.min(self.capacity) as u128 * 100 / self.capacity as u128) as u64
    }
}

/// statvfs of the filesystem holding `path`.
pub fn usage(path: &Path) -> std::io::Result<Usage> {
    let st = rustix::fs::statvfs(path).map_err(std::io::Error::from)?;
    Ok(Usage {
        capacity: st.f_blocks.saturating_mul(st.f_frsize),
        available: st.f_bavail.saturating_mul(st.f_frsize),
    })
}

/// How many bytes to free: None below the high threshold, else what brings usage down to the
/// low one (kubelet's `amountToFree`).
pub fn bytes_to_free(usage: Usage, t: Thresholds) -> Option<u64> {
    if t.high >= 100 || usage.capacity == 0 || usage.percent() < u64::from(t.high) {
        return None;
    }
    let used = usage.capacity.saturating_sub(usage.available);
    let target = (usage.capacity as u128 * u128::from(t.low) / 100) as u64;
    Some(used.saturating_sub(target))
}

/// What a collection would remove: unpinned images, least recently used first (ties by
/// digest), until their sizes add up to `want`. Also returns what they add up to, which is
/// less than `want` when not enough is unpinned.
pub fn select(
    records: &BTreeMap<String, ImageRecord>,
    pinned: &BTreeSet<String>,
    want: u64,
) -> (Vec<String>, u64) {
    let mut candidates: Vec<&ImageRecord> = records
        .values()
        .filter(|r| !pinned.contains(&r.digest))
        .collect();
    candidates.sort_by(|a, b| (a.last_used, &a.digest).cmp(&(b.last_used, &b.digest)));
    let mut chosen = Vec::new();
    let mut total = 0u64;
    for r in candidates {
        if total >= want {
            break;
        }
        total += r.size();
        chosen.push(r.digest.clone());
    }
    (chosen, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    fn rec(n: char, size: u64, last_used: u64) -> ImageRecord {
        ImageRecord {
            digest: format!("sha256:{}", n.to_string().repeat(64)),
            names: vec![format!("r.io/{n}:v1")],
            blob_bytes: size,
            last_used,
            ..Default::default()
        }
    }

    fn records(rs: &[ImageRecord]) -> BTreeMap<String, ImageRecord> {
        rs.iter().map(|r| (r.digest.clone(), r.clone())).collect()
    }

    #[test]
    fn thresholds_decide_when_and_how_much() {
        let t = Thresholds::default();
        let at = |used_pct: u64| Usage {
            capacity: 100 * GB,
            available: (100 - used_pct) * GB,
        };
        assert_eq!(bytes_to_free(at(84), t), None);
        assert_eq!(bytes_to_free(at(85), t), Some(5 * GB));
        assert_eq!(bytes_to_free(at(97), t), Some(17 * GB));
        // high 100 disables collection, as in kubelet.
        assert_eq!(
            bytes_to_free(at(100), Thresholds { high: 100, low: 80 }),
            None
        );
        // high 0, low 0: always collect everything that can go.
        assert_eq!(
            bytes_to_free(at(0), Thresholds { high: 0, low: 0 }),
            Some(0)
        );
        assert_eq!(
            bytes_to_free(at(30), Thresholds { high: 0, low: 0 }),
            Some(30 * GB)
        );
        assert_eq!(
            bytes_to_free(
                Usage {
                    capacity: 0,
                    available: 0
                },
                t
            ),
            None
        );
        assert!(Thresholds { high: 0, low: 0 }.validate().is_ok());
        assert!(Thresholds { high: 80, low: 85 }.validate().is_err());
        assert!(Thresholds { high: 101, low: 0 }.validate().is_err());
    }

    #[test]
    fn least_recently_used_unpinned_images_go_first() {
        let all = records(&[rec('a', 10, 300), rec('b', 20, 100), rec('c', 30, 200)]);
        let digest = |n: char| format!("sha256:{}", n.to_string().repeat(64));
        // Enough with the oldest one.
        assert_eq!(select(&all, &BTreeSet::new(), 15), (vec![digest('b')], 20));
        // Oldest first until the amount is reached.
        assert_eq!(
            select(&all, &BTreeSet::new(), 45),
            (vec![digest('b'), digest('c')], 50)
        );
        // A pinned image is never chosen, even when that leaves too little.
        let pinned: BTreeSet<String> = [digest('b'), digest('a')].into();
        assert_eq!(select(&all, &pinned, 1000), (vec![digest('c')], 30));
        // Nothing to free: nothing chosen (the high=0/low=0 case with an empty disk).
        assert_eq!(select(&all, &BTreeSet::new(), 0), (vec![], 0));
    }

    #[test]
    fn usage_of_a_real_filesystem() {
        let u = usage(Path::new("/")).unwrap();
        assert!(u.capacity > 0 && u.available <= u.capacity);
        assert!(u.percent() <= 100);
    }
}
