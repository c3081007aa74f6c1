//! `x-api-key` authentication for the management API.

use std::path::Path;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::http::AppState;

/// The accepted keys, kept as SHA-256 digests: comparing fixed-length digests in constant time
/// leaks neither a key's bytes nor its length.
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

pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok());
    match presented {
        Some(key) if state.api_keys.accepts(key) => next.run(request).await,
        Some(_) => ApiError::Unauthorized("the x-api-key header holds an unknown API key".into())
            .into_response(),
        None => ApiError::Unauthorized(
            "authentication required: send an API key in the x-api-key header".into(),
        )
        .into_response(),
    }
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
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let token = format!("capgo_{}", hex::encode(bytes));
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
        assert!(generated && first.starts_with("capgo_"));
        let (again, generated) = load_or_generate_token(&path).unwrap();
        assert_eq!((again, generated), (first, false));
    }
}
