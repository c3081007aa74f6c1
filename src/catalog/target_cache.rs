//! Remembers, per release and channel, what `/updates` resolved, and per app which devices
//! have an override, for CACHE_RESULT_DURATION. Every catalog write clears it, so a promote is
//! seen by the very next check. Expired entries are kept (until the next write) as the answer
//! of last resort when the store is unreachable. Devices that differ only in id share one
//! entry: a check costs two hash lookups whatever the fleet size.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::device::DeviceRefusal;
use crate::domain::targeting::DeviceOverride;
use crate::domain::update::ChannelTarget;
use crate::domain::{ChannelName, ReleaseKey};

/// What a release and channel resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Boxed: a target is ten times the size of a refusal.
    Target(Box<ChannelTarget>),
    Refused(DeviceRefusal),
    /// A native build of a known app that has no release: devices get `refusal`, and the
    /// build is counted so people can register it.
    Unregistered(DeviceRefusal),
}

pub type Resolution = Arc<Resolved>;

/// An app's device overrides by device id (only devices that have one).
pub type OverrideMap = Arc<HashMap<String, DeviceOverride>>;

/// Entries kept at most; past it the cache starts over (unknown keys cannot grow it forever).
const MAX_ENTRIES: usize = 100_000;

/// What the cache knows about a key. The generation goes back to [`TargetCache::store`].
pub enum Lookup<T = Resolution> {
    Fresh(T),
    Stale(T, u64),
    Missing(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub release: ReleaseKey,
    pub channel: ChannelName,
}

pub struct TargetCache {
    ttl: Duration,
    state: RwLock<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// Bumped by every invalidation, so a lookup that raced a write cannot store a stale answer.
    generation: u64,
    entries: HashMap<TargetKey, (Instant, Resolution)>,
    overrides: HashMap<String, (Instant, OverrideMap)>,
}

impl TargetCache {
    pub fn new(ttl: Duration) -> TargetCache {
        TargetCache {
            ttl,
            state: RwLock::new(CacheState::default()),
        }
    }

    pub fn get(&self, key: &TargetKey) -> Lookup {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        self.lookup(state.entries.get(key), state.generation)
    }

    /// Stores a resolution computed at `generation`, unless a write happened since.
    pub fn store(&self, key: TargetKey, generation: u64, resolution: Resolution) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.generation == generation {
            insert_bounded(&mut state.entries, key, resolution);
        }
    }

    pub fn overrides(&self, app_id: &str) -> Lookup<OverrideMap> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        self.lookup(state.overrides.get(app_id), state.generation)
    }

    /// Stores an app's overrides read at `generation`, unless a write happened since.
    pub fn store_overrides(&self, app_id: &str, generation: u64, overrides: OverrideMap) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.generation == generation {
            insert_bounded(&mut state.overrides, app_id.to_string(), overrides);
        }
    }

    fn lookup<T: Clone>(&self, entry: Option<&(Instant, T)>, generation: u64) -> Lookup<T> {
        match entry {
            Some((stored_at, value)) if stored_at.elapsed() < self.ttl => {
                Lookup::Fresh(value.clone())
            }
            Some((_, value)) => Lookup::Stale(value.clone(), generation),
            None => Lookup::Missing(generation),
        }
    }

    pub fn invalidate(&self) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.generation += 1;
        state.entries.clear();
        state.overrides.clear();
    }
}

/// Keys come from devices (any app id, any build): past [`MAX_ENTRIES`] the map starts over,
/// so unknown keys cannot grow it forever.
fn insert_bounded<K: std::hash::Hash + Eq, T>(
    map: &mut HashMap<K, (Instant, T)>,
    key: K,
    value: T,
) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(key, (Instant::now(), value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::device::DeviceRefusal;
    use crate::domain::Platform;

    fn key() -> TargetKey {
        TargetKey {
            release: ReleaseKey {
                platform: Platform::Ios,
                app_id: "a".into(),
                version_name: "1".into(),
                version_code: "1".into(),
            },
            channel: ChannelName::default_channel(),
        }
    }

    fn resolution() -> Resolution {
        Arc::new(Resolved::Refused(DeviceRefusal::failed(
            "no_bundle",
            "none",
        )))
    }

    #[test]
    fn stores_until_invalidated() {
        let cache = TargetCache::new(Duration::from_secs(60));
        let Lookup::Missing(generation) = cache.get(&key()) else {
            panic!("empty cache")
        };
        cache.store(key(), generation, resolution());
        assert!(matches!(cache.get(&key()), Lookup::Fresh(_)));
        cache.invalidate();
        assert!(matches!(cache.get(&key()), Lookup::Missing(_)));
    }

    #[test]
    fn overrides_are_cleared_with_the_answers() {
        let cache = TargetCache::new(Duration::from_secs(60));
        let Lookup::Missing(generation) = cache.overrides("a") else {
            panic!("empty cache")
        };
        cache.store_overrides("a", generation, OverrideMap::default());
        assert!(matches!(cache.overrides("a"), Lookup::Fresh(_)));
        assert!(matches!(cache.overrides("b"), Lookup::Missing(_)));
        cache.invalidate();
        assert!(matches!(cache.overrides("a"), Lookup::Missing(_)));
    }

    #[test]
    fn a_lookup_that_raced_a_write_is_not_stored() {
        let cache = TargetCache::new(Duration::from_secs(60));
        let Lookup::Missing(generation) = cache.get(&key()) else {
            panic!("empty cache")
        };
        cache.invalidate();
        cache.store(key(), generation, resolution());
        assert!(matches!(cache.get(&key()), Lookup::Missing(_)));
    }

    #[test]
    fn expired_entries_stay_as_a_fallback() {
        let cache = TargetCache::new(Duration::ZERO);
        cache.store(key(), 0, resolution());
        assert!(
            matches!(cache.get(&key()), Lookup::Stale(_, 0)),
            "zero duration: never fresh"
        );
        cache.invalidate();
        assert!(matches!(cache.get(&key()), Lookup::Missing(1)));
    }
}
