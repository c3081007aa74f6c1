//! Remembers, per release and channel, what `/updates` resolved, for CACHE_RESULT_DURATION.
//! Every catalog write clears it, so a promote is seen by the very next check. Expired entries
//! are kept (until the next write) as the answer of last resort when the store is unreachable.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::device::DeviceRefusal;
use crate::domain::update::ChannelTarget;
use crate::domain::{ChannelName, ReleaseKey};

/// What a release and channel resolve to: the target bundle, or why there is none.
pub type Resolution = Arc<Result<ChannelTarget, DeviceRefusal>>;

/// Entries kept at most; past it the cache starts over (unknown keys cannot grow it forever).
const MAX_ENTRIES: usize = 100_000;

/// What the cache knows about a key. The generation goes back to [`TargetCache::store`].
pub enum Lookup {
    Fresh(Resolution),
    Stale(Resolution, u64),
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
        match state.entries.get(key) {
            Some((stored_at, resolution)) if stored_at.elapsed() < self.ttl => {
                Lookup::Fresh(resolution.clone())
            }
            Some((_, resolution)) => Lookup::Stale(resolution.clone(), state.generation),
            None => Lookup::Missing(state.generation),
        }
    }

    /// Stores a resolution computed at `generation`, unless a write happened since.
    pub fn store(&self, key: TargetKey, generation: u64, resolution: Resolution) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.generation != generation {
            return;
        }
        if state.entries.len() >= MAX_ENTRIES {
            state.entries.clear();
        }
        state.entries.insert(key, (Instant::now(), resolution));
    }

    pub fn invalidate(&self) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.generation += 1;
        state.entries.clear();
    }
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
        Arc::new(Err(DeviceRefusal::failed("no_release", "none")))
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
