//! The hash of the maps every device check reads (the answer cache, the overrides, the fleet
//! tally). Their keys come from devices, so the hash is keyed with a secret drawn from the
//! operating system's random source when the process starts, as std's SipHash is; it is
//! foldhash's, which costs a fraction of SipHash-1-3 on these short keys (−1,300 instructions
//! per check of 33,000: BENCHMARKS.md, "Fifth round"). The maps are bounded (entries and keys
//! per flush), so even a guessed seed could only slow lookups, never grow memory.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::fast::{FoldHasher, SeedableRandomState};
use foldhash::SharedSeed;

/// A map on the check path.
pub type CheckMap<K, V> = HashMap<K, V, CheckHash>;

/// Builds [`CheckMap`] hashers: one process-wide secret, and a seed per map drawn from the
/// same source (each map probes its keys in its own order).
#[derive(Clone, Debug)]
pub struct CheckHash(SeedableRandomState);

impl Default for CheckHash {
    fn default() -> CheckHash {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(os_random_u64()));
        CheckHash(SeedableRandomState::with_seed(os_random_u64(), shared))
    }
}

impl BuildHasher for CheckHash {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// 64 random bits: std's `RandomState` holds keys from the operating system's source (drawn
/// once per thread, then incremented), and SipHash of a constant under them is as
/// unpredictable as they are.
fn os_random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_map_is_seeded_apart_and_hashes_consistently() {
        let (a, b) = (CheckHash::default(), CheckHash::default());
        assert_eq!(a.hash_one("device"), a.hash_one("device"));
        assert_ne!(a.hash_one("device"), b.hash_one("device"));
    }
}
