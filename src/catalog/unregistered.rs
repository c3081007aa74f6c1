//! Counts the native builds devices check in with that have no release, off the request path:
//! a check adds to a bounded tally in memory, and a background task writes the tallies in
//! batches. Nothing is written per check.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Mutex;

use crate::domain::targeting::{UnregisteredBuild, MAX_DEVICES_COUNTED};
use crate::domain::{now_millis, ReleaseKey, ReleaseRef, UnixMillis};

/// Builds tallied in memory between flushes; past it new builds wait for the next flush.
const MAX_BUILDS_TALLIED: usize = 200;

#[derive(Default)]
pub struct UnregisteredTally {
    state: Mutex<HashMap<ReleaseKey, Tally>>,
    /// Device ids are counted by a keyed hash (8 bytes each, not the id).
    hasher: std::collections::hash_map::RandomState,
}

struct Tally {
    /// Distinct devices seen since this process started (bounded).
    devices: HashSet<u64>,
    /// Checks since the last flush.
    checks: u64,
    first_seen: UnixMillis,
    last_seen: UnixMillis,
}

impl UnregisteredTally {
    /// Counts one check of `release` by `device_id`.
    pub fn note(&self, release: ReleaseRef<'_>, device_id: &str) {
        let key = release.to_key();
        let device = self.hasher.hash_one(device_id);
        let now = now_millis();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !state.contains_key(&key) && state.len() >= MAX_BUILDS_TALLIED {
            return;
        }
        let tally = state.entry(key).or_insert_with(|| Tally {
            devices: HashSet::new(),
            checks: 0,
            first_seen: now,
            last_seen: now,
        });
        tally.checks += 1;
        tally.last_seen = now;
        if tally.devices.len() < MAX_DEVICES_COUNTED {
            tally.devices.insert(device);
        }
    }

    /// What was seen since the last flush (builds with new checks only). The device sets stay
    /// (they count since start); a build is dropped from memory once registered.
    pub fn take(&self) -> Vec<UnregisteredBuild> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .iter_mut()
            .filter(|(_, tally)| tally.checks > 0)
            .map(|(key, tally)| {
                let checks = std::mem::take(&mut tally.checks);
                UnregisteredBuild {
                    key: key.clone(),
                    devices: tally.devices.len() as u64,
                    checks,
                    first_seen: tally.first_seen,
                    last_seen: tally.last_seen,
                }
            })
            .collect()
    }

    /// Puts back what a failed flush took, so the checks are written next time.
    pub fn restore(&self, builds: &[UnregisteredBuild]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for build in builds {
            if let Some(tally) = state.get_mut(&build.key) {
                tally.checks += build.checks;
            }
        }
    }

    pub fn forget(&self, key: &ReleaseKey) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Platform;

    fn build(code: usize) -> ReleaseKey {
        ReleaseKey {
            platform: Platform::Android,
            app_id: "com.example.app".into(),
            version_name: "1.0.0".into(),
            version_code: code.to_string(),
        }
    }

    #[test]
    fn counts_checks_per_flush_and_devices_since_start() {
        let tally = UnregisteredTally::default();
        for device in ["a", "b", "a"] {
            tally.note(build(1).as_ref(), device);
        }
        let taken = tally.take();
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].devices, taken[0].checks), (2, 3));
        assert!(tally.take().is_empty(), "no new checks, nothing to write");
        tally.note(build(1).as_ref(), "c");
        let taken = tally.take();
        assert_eq!((taken[0].devices, taken[0].checks), (3, 1));
        tally.restore(&taken);
        assert_eq!(
            tally.take()[0].checks,
            1,
            "a failed flush is written next time"
        );
        tally.forget(&build(1));
        tally.note(build(1).as_ref(), "d");
        assert_eq!(tally.take()[0].devices, 1);
    }

    #[test]
    fn memory_is_bounded() {
        let tally = UnregisteredTally::default();
        for code in 0..MAX_BUILDS_TALLIED + 50 {
            tally.note(build(code).as_ref(), "a");
        }
        for device in 0..MAX_DEVICES_COUNTED + 10 {
            tally.note(build(0).as_ref(), &device.to_string());
        }
        let taken = tally.take();
        assert_eq!(taken.len(), MAX_BUILDS_TALLIED);
        let first = taken.iter().find(|b| b.key == build(0)).unwrap();
        assert_eq!(first.devices, MAX_DEVICES_COUNTED as u64);
    }
}
