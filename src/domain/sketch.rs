//! Distinct-device counts that merge: a HyperLogLog sketch (Flajolet et al. 2007, with the
//! small-range correction of Heule et al. 2013's linear counting), so per-day counts from
//! several processes and several days combine into "distinct devices over 7 days" without
//! storing a device id.
//!
//! 2^12 registers: a standard error of 1.04 / sqrt(4096) = 1.6%. Stored sparse (3 bytes per
//! set register) while under a quarter full, so a bundle with a few devices costs bytes, not
//! 4 KiB.

/// log2 of the number of registers.
const PRECISION: u32 = 12;
const REGISTERS: usize = 1 << PRECISION;
/// Past this many set registers the dense form is smaller.
const SPARSE_LIMIT: usize = REGISTERS / 4;
const SPARSE_TAG: u8 = 1;
const DENSE_TAG: u8 = 2;

/// The hash every process uses for a device id, so sketches written by different processes
/// and versions merge (a per-process random key would not): SipHash-2-4 with fixed keys, a
/// specified function (unlike std's hasher) well mixed enough for the sketch, and about a
/// twentieth of a SHA-256 on the check path. Changing it would make new sketches count the
/// devices of old ones again.
pub fn device_hash(device_id: &str) -> u64 {
    use std::hash::Hasher;
    let mut hasher =
        siphasher::sip::SipHasher24::new_with_keys(DEVICE_HASH_KEYS.0, DEVICE_HASH_KEYS.1);
    hasher.write(device_id.as_bytes());
    hasher.finish()
}

/// The fixed SipHash keys of [`device_hash`] (arbitrary; they only have to stay the same).
const DEVICE_HASH_KEYS: (u64, u64) = (0x6361_7067_6f2d_666c, 0x6565_742d_736b_6574);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistinctSketch {
    registers: Box<[u8; REGISTERS]>,
}

impl Default for DistinctSketch {
    fn default() -> DistinctSketch {
        DistinctSketch {
            registers: Box::new([0; REGISTERS]),
        }
    }
}

impl DistinctSketch {
    /// Adds a device by its [`device_hash`].
    pub fn insert_hash(&mut self, hash: u64) {
        let index = (hash >> (64 - PRECISION)) as usize;
        let rest = hash << PRECISION;
        // Position of the first 1 bit in the remaining 52 bits (1-based); 53 if none.
        let rank = (rest.leading_zeros().min(64 - PRECISION) + 1) as u8;
        if rank > self.registers[index] {
            self.registers[index] = rank;
        }
    }

    pub fn insert(&mut self, device_id: &str) {
        self.insert_hash(device_hash(device_id));
    }

    /// Makes this sketch count the union of both.
    pub fn merge(&mut self, other: &DistinctSketch) {
        for (mine, theirs) in self.registers.iter_mut().zip(other.registers.iter()) {
            *mine = (*mine).max(*theirs);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.registers.iter().all(|r| *r == 0)
    }

    /// The estimated number of distinct devices.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let (sum, zeros) = self
            .registers
            .iter()
            .fold((0.0f64, 0usize), |(sum, zeros), r| {
                (
                    sum + 2f64.powi(-i32::from(*r)),
                    zeros + usize::from(*r == 0),
                )
            });
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            // Linear counting: exact enough, and exact-looking, for small sets.
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// The stored form: sparse `(index, rank)` triples while few registers are set.
    pub fn to_bytes(&self) -> Vec<u8> {
        let set: Vec<(usize, u8)> = self
            .registers
            .iter()
            .enumerate()
            .filter(|(_, r)| **r > 0)
            .map(|(i, r)| (i, *r))
            .collect();
        if set.len() <= SPARSE_LIMIT {
            let mut bytes = Vec::with_capacity(1 + set.len() * 3);
            bytes.push(SPARSE_TAG);
            for (index, rank) in set {
                bytes.extend_from_slice(&(index as u16).to_le_bytes());
                bytes.push(rank);
            }
            bytes
        } else {
            let mut bytes = Vec::with_capacity(1 + REGISTERS);
            bytes.push(DENSE_TAG);
            bytes.extend_from_slice(&self.registers[..]);
            bytes
        }
    }

    /// Reads [`DistinctSketch::to_bytes`]; `None` for bytes it did not write.
    pub fn from_bytes(bytes: &[u8]) -> Option<DistinctSketch> {
        let mut sketch = DistinctSketch::default();
        match bytes.split_first()? {
            (&SPARSE_TAG, rest) if rest.len() % 3 == 0 => {
                for triple in rest.chunks_exact(3) {
                    let index = usize::from(u16::from_le_bytes([triple[0], triple[1]]));
                    *sketch.registers.get_mut(index)? = triple[2];
                }
            }
            (&DENSE_TAG, rest) if rest.len() == REGISTERS => {
                sketch.registers.copy_from_slice(rest);
            }
            _ => return None,
        }
        Some(sketch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(range: std::ops::Range<u32>) -> DistinctSketch {
        let mut sketch = DistinctSketch::default();
        for n in range {
            sketch.insert(&format!("00000000-0000-4000-8000-{n:012x}"));
        }
        sketch
    }

    #[test]
    fn estimates_within_the_standard_error() {
        for n in [1u32, 10, 100, 1_000, 10_000, 100_000] {
            let estimate = sketch_of(0..n).estimate() as f64;
            let error = (estimate - f64::from(n)).abs() / f64::from(n);
            // Three standard errors (1.6%), and exact-ish for tiny sets.
            assert!(error <= 0.05, "{n}: {estimate}");
        }
        assert_eq!(sketch_of(0..0).estimate(), 0);
        // The same device twice is one device.
        let mut twice = sketch_of(0..50);
        twice.merge(&sketch_of(0..50));
        assert_eq!(twice.estimate(), sketch_of(0..50).estimate());
    }

    #[test]
    fn merged_sketches_count_the_union() {
        let mut union = sketch_of(0..30_000);
        union.merge(&sketch_of(20_000..50_000));
        let estimate = union.estimate() as f64;
        assert!((estimate - 50_000.0).abs() / 50_000.0 < 0.05, "{estimate}");
    }

    #[test]
    fn round_trips_sparse_and_dense() {
        for n in [0u32, 5, 900, 50_000] {
            let sketch = sketch_of(0..n);
            let bytes = sketch.to_bytes();
            assert_eq!(DistinctSketch::from_bytes(&bytes), Some(sketch), "{n}");
            if n == 5 {
                assert_eq!(bytes.len(), 1 + 5 * 3, "a few devices cost a few bytes");
            }
            if n == 50_000 {
                assert_eq!(bytes.len(), 1 + REGISTERS);
            }
        }
        assert_eq!(DistinctSketch::from_bytes(&[]), None);
        assert_eq!(DistinctSketch::from_bytes(&[1, 0]), None);
        assert_eq!(DistinctSketch::from_bytes(&[1, 0xff, 0xff, 1]), None);
        assert_eq!(DistinctSketch::from_bytes(&[9]), None);
    }
}
