//! Record ids: 24 lowercase hex characters, shaped like MongoDB ObjectIds (4 bytes of
//! seconds, 8 random bytes) so that the seed's clients, which check that shape, keep working.

use std::fmt;

use super::InvalidInput;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(String);

impl RecordId {
    pub fn generate() -> RecordId {
        let mut bytes = [0u8; 12];
        let seconds = (super::now_millis() / 1000) as u32;
        bytes[..4].copy_from_slice(&seconds.to_be_bytes());
        getrandom::fill(&mut bytes[4..]).expect("the operating system's random source works");
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
    fn malformed_ids_are_refused() {
        assert!(RecordId::parse("", "release id")
            .unwrap_err()
            .0
            .contains("required"));
        assert!(RecordId::parse("zz", "release id").is_err());
        assert!(RecordId::parse("65A1B2C3D4E5F60718293A4B", "id").is_err());
    }
}
