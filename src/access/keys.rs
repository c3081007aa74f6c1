//! API keys: the configured MANAGEMENT_API_TOKENS (checked in memory) and the secrets of
//! scoped tokens (generated here, stored as digests).

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::access::API_KEY_PREFIX;

/// The configured keys, kept as SHA-256 digests: comparing fixed-length digests in constant
/// time leaks neither a key's bytes nor its length.
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> ApiKeys {
        ApiKeys {
            digests: keys
                .iter()
                .map(|k| Sha256::digest(k.as_bytes()).into())
                .collect(),
        }
    }

    pub fn accepts(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Check every key, so timing does not tell which one matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, key| {
                found | key.ct_eq(&digest)
            })
            .into()
    }
}

/// A new random secret: `capgo_` (so it is recognisable in a bearer header and by secret
/// scanners), then `kind`, then 192 random bits in hex.
pub fn generate_secret(kind: &str) -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(format!("{API_KEY_PREFIX}{kind}{}", hex::encode(bytes)))
}

/// The token used when MANAGEMENT_API_TOKENS is empty: read from `path`, or generated there on
/// first start (returned with `true` so the caller prints it once).
pub fn load_or_generate_token(path: &Path) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok((text.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = generate_secret("")?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, format!("{token}\n").as_bytes())?;
    Ok((token, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_keys() {
        let keys = ApiKeys::new(&["first-key-123".into(), "second-key-456".into()]);
        assert!(keys.accepts("second-key-456"));
        assert!(!keys.accepts("second-key-45"));
        assert!(!keys.accepts(""));
    }

    #[test]
    fn generates_once_then_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let (first, generated) = load_or_generate_token(&path).unwrap();
        assert!(generated && first.starts_with("capgo_") && first.len() == 6 + 48);
        let (again, generated) = load_or_generate_token(&path).unwrap();
        assert_eq!((again, generated), (first, false));
    }

    #[test]
    fn secrets_differ_and_carry_their_kind() {
        let (a, b) = (
            generate_secret("tok_").unwrap(),
            generate_secret("tok_").unwrap(),
        );
        assert!(a.starts_with("capgo_tok_") && a != b);
    }
}
