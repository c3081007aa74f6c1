//! Record ids: 24 lowercase hex characters laid out like MongoDB ObjectIds (4 bytes of seconds,
//! 5 random bytes per process, a 3-byte counter), so that the seed's clients, which check that
//! shape, keep working, and ids made by one process sort in the order they were made.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::LazyLock;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes
}

/// `N` random bytes in hex: an unguessable name part.
pub fn random_hex<const N: usize>() -> String {
    hex::encode(random_bytes::<N>())
}

use super::InvalidInput;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(String);

impl RecordId {
    pub fn generate() -> RecordId {
        static PROCESS: LazyLock<[u8; 5]> = LazyLock::new(random_bytes::<5>);
        // Starts in the lower half of the 3-byte range: 8 million ids before it wraps.
        static COUNTER: LazyLock<AtomicU32> =
            LazyLock::new(|| AtomicU32::new(u32::from_be_bytes(random_bytes::<4>()) & 0x7f_ffff));
        let seconds = (super::now_millis() / 1000) as u32;
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&seconds.to_be_bytes());
        bytes[4..9].copy_from_slice(&*PROCESS);
        bytes[9..].copy_from_slice(&count.to_be_bytes()[1..]);
        RecordId(hex::encode(bytes))
    }

    /// Parses an id that a client sent; `what` names it in the error ("release id").
    pub fn parse(value: &str, what: &str) -> Result<RecordId, InvalidInput> {
        let valid = value.len() == 24
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(RecordId(value.to_string()))
        } else if value.is_empty() {
            Err(InvalidInput(format!("{what} is required")))
        } else {
            Err(InvalidInput(format!(
                "invalid {what} {value:?}: expected 24 lowercase hex characters"
            )))
        }
    }

    /// Wraps an id read back from storage, where it was validated on the way in.
    pub fn from_stored(value: String) -> RecordId {
        RecordId(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let a = RecordId::generate();
        let b = RecordId::generate();
        assert_ne!(a, b);
        assert_eq!(RecordId::parse(a.as_str(), "id").unwrap(), a);
    }

    #[test]
    fn ids_of_one_process_sort_in_creation_order() {
        let ids: Vec<RecordId> = (0..1000).map(|_| RecordId::generate()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert!(RecordId::parse("", "release id")
            .unwrap_err()
            .0
            .contains("required"));
        assert!(RecordId::parse("zz", "release id").is_err());
        assert!(RecordId::parse("65A1B2C3D4E5F60718293A4B", "id").is_err());
    }
}
