//! Remembers, per release and channel, what `/updates` resolved, and per app which devices
//! have an override, for CACHE_RESULT_DURATION. Every catalog write clears it, so a promote is
//! seen by the very next check. Expired entries are kept (until the next write) as the answer
//! of last resort when the store is unreachable. Devices that differ only in id share one
//! entry: a check costs two hash lookups whatever the fleet size.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::domain::device::DeviceRefusal;
use crate::domain::targeting::DeviceOverride;
use crate::domain::update::ChannelTarget;
use crate::domain::{ChannelName, RecordId, ReleaseKey, ReleaseRef};

/// What a release and channel resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Boxed: a target is ten times the size of a refusal.
    Target(Box<Served>),
    Refused(DeviceRefusal),
    /// A native build of a known app that has no release: devices get `refusal`, and the
    /// build is counted so people can register it.
    Unregistered(DeviceRefusal),
}

pub type Resolution = Arc<Resolved>;

/// What a channel serves: its bundle, and during a rollout the canary for part of the devices.
/// One entry holds both, so a check during a rollout costs the same lookups as any other plus
/// one hash of the device id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub stable: ChannelTarget,
    pub canary: Option<Canary>,
}

/// The canary of an active rollout, as the device path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub rollout_id: RecordId,
    pub salt: String,
    /// Devices whose bucket is below this get the canary (basis points).
    pub share: u32,
    pub target: ChannelTarget,
}

/// How long an app's overrides are used without a write clearing them.
const OVERRIDES_MAX_AGE: Duration = Duration::from_secs(300);

/// An app's device overrides by device id (only devices that have one).
pub type OverrideMap = Arc<HashMap<String, DeviceOverride>>;

/// Entries kept at most; past it the cache starts over (unknown keys cannot grow it forever).
const MAX_ENTRIES: usize = 100_000;

/// What the cache knows about a key. The generation goes back to [`TargetCache::store`].
pub enum Lookup {
    Fresh(Resolution),
    Stale(Resolution, u64),
    Missing(u64),
}

#[derive(Debug, Clone)]
pub struct TargetKey {
    pub release: ReleaseKey,
    pub channel: ChannelName,
}

/// A release and channel as a lookup sees them: a [`TargetKey`], or the parts borrowed from a
/// device's check, so a check that the cache answers copies none of the device's strings into
/// a key (the map finds entries through `Borrow<dyn KeyParts>`).
trait KeyParts {
    fn release(&self) -> ReleaseRef<'_>;
    fn channel(&self) -> &ChannelName;
}

impl KeyParts for TargetKey {
    fn release(&self) -> ReleaseRef<'_> {
        self.release.as_ref()
    }
    fn channel(&self) -> &ChannelName {
        &self.channel
    }
}

impl KeyParts for (ReleaseRef<'_>, &ChannelName) {
    fn release(&self) -> ReleaseRef<'_> {
        self.0
    }
    fn channel(&self) -> &ChannelName {
        self.1
    }
}

impl<'a> Borrow<dyn KeyParts + 'a> for TargetKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

/// One hash for both forms of a key: the map's `Borrow` lookups need a key and its borrowed
/// form to hash alike.
impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.release().hash(state);
        self.channel().hash(state);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.release() == other.release() && self.channel() == other.channel()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl Hash for TargetKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyParts).hash(state);
    }
}

impl PartialEq for TargetKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyParts) == (other as &dyn KeyParts)
    }
}

impl Eq for TargetKey {}

pub struct TargetCache {
    ttl: Duration,
    state: RwLock<CacheState>,
}

#[derive(Default)]
struct CacheState {
    /// Bumped by every invalidation, so a lookup that raced a write cannot store a stale answer.
    generation: u64,
    entries: HashMap<TargetKey, (Instant, Resolution)>,
    /// Not expired by CACHE_RESULT_DURATION: every override write clears them, here and (through
    /// the catalog version) on other replicas, so a check that misses the answer cache costs no
    /// extra read. Read again after [`OVERRIDES_MAX_AGE`] all the same, in case another
    /// replica died between its write and announcing it.
    overrides: HashMap<String, (Instant, OverrideMap)>,
}

impl TargetCache {
    pub fn new(ttl: Duration) -> TargetCache {
        TargetCache {
            ttl,
            state: RwLock::new(CacheState::default()),
        }
    }

    /// The cache as it is now, for several reads under one lock (a device's check reads the
    /// overrides, then the answer for the channel they give). Not to be held across an await.
    pub fn view(&self) -> CacheView<'_> {
        CacheView {
            ttl: self.ttl,
            state: self.state.read().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Stores a resolution computed at `generation`, unless a write happened since.
    pub fn store(&self, key: TargetKey, generation: u64, resolution: Resolution) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.generation != generation {
            return;
        }
        // Keys come from devices (any app id, any build): past the bound the map starts over.
        if state.entries.len() >= MAX_ENTRIES {
            state.entries.clear();
        }
        state.entries.insert(key, (Instant::now(), resolution));
    }

    /// An app's overrides, if read since the last write and within [`OVERRIDES_MAX_AGE`]; else
    /// the generation to store them at.
    pub fn overrides(&self, app_id: &str) -> Result<OverrideMap, u64> {
        self.view().overrides(app_id).cloned()
    }

    /// Stores an app's overrides read at `generation`, unless a write happened since.
    pub fn store_overrides(&self, app_id: &str, generation: u64, overrides: OverrideMap) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if state.generation != generation {
            return;
        }
        if state.overrides.len() >= MAX_ENTRIES {
            state.overrides.clear();
        }
        state
            .overrides
            .insert(app_id.to_string(), (Instant::now(), overrides));
    }

    /// Forgets one app's overrides (a device changed its own choice): the answers stay, as
    /// they do not depend on who is on a channel. In-flight reads started before are not kept.
    pub fn invalidate_overrides(&self, app_id: &str) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.generation += 1;
        state.overrides.remove(app_id);
    }

    pub fn invalidate(&self) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.generation += 1;
        state.entries.clear();
        state.overrides.clear();
    }
}

/// A read of the [`TargetCache`] ([`TargetCache::view`]): its lookups, under one read lock.
pub struct CacheView<'a> {
    ttl: Duration,
    state: RwLockReadGuard<'a, CacheState>,
}

impl CacheView<'_> {
    /// What the cache knows about `release` on `channel`.
    pub fn get(&self, release: ReleaseRef<'_>, channel: &ChannelName) -> Lookup {
        let parts: &dyn KeyParts = &(release, channel);
        match self.state.entries.get(parts) {
            Some((stored_at, value)) if stored_at.elapsed() < self.ttl => {
                Lookup::Fresh(value.clone())
            }
            Some((_, value)) => Lookup::Stale(value.clone(), self.state.generation),
            None => Lookup::Missing(self.state.generation),
        }
    }

    /// An app's overrides, if read since the last write and within [`OVERRIDES_MAX_AGE`]; else
    /// the generation to store them at.
    pub fn overrides(&self, app_id: &str) -> Result<&OverrideMap, u64> {
        match self.state.overrides.get(app_id) {
            Some((read_at, overrides)) if read_at.elapsed() < OVERRIDES_MAX_AGE => Ok(overrides),
            _ => Err(self.state.generation),
        }
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

    fn lookup(cache: &TargetCache) -> Lookup {
        let key = key();
        cache.view().get(key.release.as_ref(), &key.channel)
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
        let Lookup::Missing(generation) = lookup(&cache) else {
            panic!("empty cache")
        };
        cache.store(key(), generation, resolution());
        assert!(matches!(lookup(&cache), Lookup::Fresh(_)));
        cache.invalidate();
        assert!(matches!(lookup(&cache), Lookup::Missing(_)));
    }

    #[test]
    fn a_lookup_finds_only_its_own_release_and_channel() {
        let cache = TargetCache::new(Duration::from_secs(60));
        cache.store(key(), 0, resolution());
        let stored = key();
        assert!(matches!(
            cache.view().get(stored.release.as_ref(), &stored.channel),
            Lookup::Fresh(_)
        ));
        let beta = ChannelName::parse("beta").unwrap();
        assert!(matches!(
            cache.view().get(stored.release.as_ref(), &beta),
            Lookup::Missing(0)
        ));
        let other_build = ReleaseKey {
            version_code: "2".into(),
            ..stored.release.clone()
        };
        assert!(matches!(
            cache.view().get(other_build.as_ref(), &stored.channel),
            Lookup::Missing(0)
        ));
    }

    #[test]
    fn a_key_and_its_borrowed_parts_hash_alike() {
        use std::hash::BuildHasher;
        let hasher = std::collections::hash_map::RandomState::new();
        let key = key();
        let parts: &dyn KeyParts = &(key.release.as_ref(), &key.channel);
        assert_eq!(hasher.hash_one(&key), hasher.hash_one(parts));
        assert!(parts == (&key as &dyn KeyParts));
    }

    #[test]
    fn overrides_are_cleared_with_the_answers() {
        let cache = TargetCache::new(Duration::ZERO);
        let Err(generation) = cache.overrides("a") else {
            panic!("empty cache")
        };
        cache.store_overrides("a", generation, OverrideMap::default());
        assert!(
            cache.overrides("a").is_ok(),
            "kept whatever the answers' duration"
        );
        assert!(cache.overrides("b").is_err());
        cache.invalidate();
        assert_eq!(cache.overrides("a").err(), Some(generation + 1));
    }

    #[test]
    fn one_apps_overrides_can_be_forgotten_alone() {
        let cache = TargetCache::new(Duration::from_secs(60));
        let Lookup::Missing(generation) = lookup(&cache) else {
            panic!("empty cache")
        };
        cache.store(key(), generation, resolution());
        cache.store_overrides("a", generation, OverrideMap::default());
        cache.store_overrides("b", generation, OverrideMap::default());
        cache.invalidate_overrides("a");
        assert!(cache.overrides("a").is_err());
        assert!(cache.overrides("b").is_ok(), "other apps keep theirs");
        assert!(matches!(lookup(&cache), Lookup::Fresh(_)), "answers stay");
        cache.store_overrides("a", generation, OverrideMap::default());
        assert!(
            cache.overrides("a").is_err(),
            "a read that raced the change is not kept"
        );
    }

    #[test]
    fn a_lookup_that_raced_a_write_is_not_stored() {
        let cache = TargetCache::new(Duration::from_secs(60));
        let Lookup::Missing(generation) = lookup(&cache) else {
            panic!("empty cache")
        };
        cache.invalidate();
        cache.store(key(), generation, resolution());
        assert!(matches!(lookup(&cache), Lookup::Missing(_)));
    }

    #[test]
    fn expired_entries_stay_as_a_fallback() {
        let cache = TargetCache::new(Duration::ZERO);
        cache.store(key(), 0, resolution());
        assert!(
            matches!(lookup(&cache), Lookup::Stale(_, 0)),
            "zero duration: never fresh"
        );
        cache.invalidate();
        assert!(matches!(lookup(&cache), Lookup::Missing(1)));
    }
}
