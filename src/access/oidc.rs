//! OIDC bearer tokens, verified locally.
//!
//! The issuer's discovery document is fetched once (retried on the next request until it
//! succeeds); its JWKS is cached and fetched again only when a token names a key id it does not
//! hold, at most once per [`FUTILE_REFRESH_COOLDOWN`] after a fetch that did not find the key (so
//! forged key ids cannot make us hammer the issuer). JWT access tokens are checked here:
//! signature, `iss` equal to OAUTH_ISSUER, `exp`/`nbf` with [`LEEWAY_SECONDS`], and `aud` when
//! OAUTH_AUDIENCE is set. Opaque tokens carry no audience that could be checked, so with
//! OAUTH_AUDIENCE set they are refused; without it they are sent to the userinfo endpoint and
//! the answer is cached for [`USERINFO_CACHE_TTL`]. An issuer that is down only affects bearer tokens whose
//! key or identity is not cached; API keys never touch it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::access::secret_digest;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 30;
/// How long a userinfo answer for an opaque token is reused.
pub const USERINFO_CACHE_TTL: Duration = Duration::from_secs(60);
const USERINFO_CACHE_MAX: usize = 10_000;
/// After a JWKS fetch that did not contain the requested key id, unknown ids are refused
/// without fetching again for this long.
pub const FUTILE_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// The parts of the issuer's `/.well-known/openid-configuration` this server uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The token is not acceptable: 401.
    #[error("{0}")]
    Rejected(String),
    /// The issuer could not be asked: 503, the same token may work later.
    #[error("{0}")]
    Unavailable(String),
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Default)]
struct KeyCache {
    keys: Option<JwkSet>,
    futile_refresh_at: Option<Instant>,
}

pub struct OidcVerifier {
    issuer: String,
    audience: Option<String>,
    http: reqwest::Client,
    discovery: tokio::sync::Mutex<Option<Arc<Discovery>>>,
    keys: tokio::sync::Mutex<KeyCache>,
    userinfo: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl OidcVerifier {
    /// `issuer` exactly as tokens carry it in `iss`.
    pub fn new(issuer: &str, audience: Option<&str>) -> OidcVerifier {
        crate::install_crypto_provider();
        OidcVerifier {
            issuer: issuer.to_string(),
            audience: audience.map(str::to_string),
            http: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .build()
                .expect("an HTTP client with default TLS settings builds"),
            discovery: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(KeyCache::default()),
            userinfo: Mutex::new(HashMap::new()),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The discovery document, fetched on first use.
    pub async fn discovery(&self) -> Result<Arc<Discovery>, OidcError> {
        let mut cached = self.discovery.lock().await;
        if let Some(discovery) = cached.as_ref() {
            return Ok(discovery.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let discovery: Discovery = self.fetch_json(&url, "discovery document").await?;
        if discovery.issuer != self.issuer {
            return Err(OidcError::Unavailable(format!(
                "the discovery document at {url} names issuer {:?}, not OAUTH_ISSUER {:?}",
                discovery.issuer, self.issuer
            )));
        }
        let discovery = Arc::new(discovery);
        *cached = Some(discovery.clone());
        Ok(discovery)
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        if token.split('.').count() == 3 {
            self.verify_jwt(token).await
        } else if self.audience.is_some() {
            // Userinfo answers for any token the issuer minted, for whatever audience.
            Err(OidcError::Rejected(
                "the token is not a JWT, and with OAUTH_AUDIENCE set only JWT access tokens \
                 (whose audience can be checked) are accepted"
                    .into(),
            ))
        } else {
            self.ask_userinfo(token).await
        }
    }

    async fn verify_jwt(&self, token: &str) -> Result<Identity, OidcError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            OidcError::Rejected(format!(
                "the token's JWT header is not acceptable ({e}); only signed tokens \
                 (RS*, PS*, ES*, EdDSA) are accepted, never alg none"
            ))
        })?;
        if matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        ) {
            return Err(OidcError::Rejected(
                "HMAC-signed tokens are refused: the issuer must sign with its published keys"
                    .into(),
            ));
        }
        let key = self.key_for(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
            }
            None => {
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp", "iss", "sub"]);
            }
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| OidcError::Rejected(rejection_reason(e.kind())))?
            .claims;
        Ok(Identity {
            subject: claims.sub,
            email: claims.email,
        })
    }

    /// The verification key for `kid`, fetching the JWKS when it is not known yet.
    async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, OidcError> {
        let mut cache = self.keys.lock().await;
        if cache.keys.is_none() {
            cache.keys = Some(self.fetch_keys().await?);
        }
        let mut found = find_key(cache.keys.as_ref(), kid);
        if found.is_none() {
            let cooling = cache
                .futile_refresh_at
                .is_some_and(|at| at.elapsed() < FUTILE_REFRESH_COOLDOWN);
            if !cooling {
                cache.keys = Some(self.fetch_keys().await?);
                found = find_key(cache.keys.as_ref(), kid);
                cache.futile_refresh_at = found.is_none().then(Instant::now);
            }
        }
        let jwk = found.ok_or_else(|| {
            OidcError::Rejected(match kid {
                Some(kid) => format!("the token's key id {kid:?} is not in the issuer's JWKS"),
                None => "the token names no key id and the issuer publishes several keys".into(),
            })
        })?;
        if let Some(key_alg) = jwk.common.key_algorithm {
            // A key published for one algorithm must not verify tokens of another.
            if key_alg.to_string().parse::<Algorithm>().ok() != Some(alg) {
                return Err(OidcError::Rejected(format!(
                    "the token is signed with {alg:?} but its key is for {key_alg:?}"
                )));
            }
        }
        DecodingKey::from_jwk(&jwk)
            .map_err(|e| OidcError::Rejected(format!("the issuer's key cannot verify: {e}")))
    }

    async fn fetch_keys(&self) -> Result<JwkSet, OidcError> {
        let discovery = self.discovery().await?;
        self.fetch_json(&discovery.jwks_uri, "JWKS").await
    }

    async fn ask_userinfo(&self, token: &str) -> Result<Identity, OidcError> {
        let cache_key = secret_digest(token);
        if let Some((identity, at)) = self.lock_userinfo().get(&cache_key) {
            if at.elapsed() < USERINFO_CACHE_TTL {
                return Ok(identity.clone());
            }
        }
        let discovery = self.discovery().await?;
        let endpoint = discovery.userinfo_endpoint.as_deref().ok_or_else(|| {
            OidcError::Rejected(
                "the token is not a JWT and the issuer has no userinfo endpoint to check it".into(),
            )
        })?;
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| unreachable_issuer(endpoint, &e))?;
        let status = response.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(OidcError::Rejected(
                "the identity provider does not accept this token".into(),
            ));
        }
        if !status.is_success() {
            return Err(OidcError::Unavailable(format!(
                "the userinfo endpoint {endpoint} answered {status}"
            )));
        }
        let claims: Claims = response.json().await.map_err(|e| {
            OidcError::Unavailable(format!("the userinfo endpoint {endpoint} sent {e}"))
        })?;
        let identity = Identity {
            subject: claims.sub,
            email: claims.email,
        };
        let mut cache = self.lock_userinfo();
        if cache.len() >= USERINFO_CACHE_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < USERINFO_CACHE_TTL);
            if cache.len() >= USERINFO_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(cache_key, (identity.clone(), Instant::now()));
        Ok(identity)
    }

    fn lock_userinfo(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Identity, Instant)>> {
        self.userinfo.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &str,
    ) -> Result<T, OidcError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unreachable_issuer(url, &e))?;
        if !response.status().is_success() {
            return Err(OidcError::Unavailable(format!(
                "the issuer's {what} at {url} answered {}",
                response.status()
            )));
        }
        response.json().await.map_err(|e| {
            OidcError::Unavailable(format!("the issuer's {what} at {url} is not valid: {e}"))
        })
    }
}

fn find_key(keys: Option<&JwkSet>, kid: Option<&str>) -> Option<jsonwebtoken::jwk::Jwk> {
    let keys = keys?;
    match kid {
        Some(kid) => keys.find(kid).cloned(),
        None if keys.keys.len() == 1 => keys.keys.first().cloned(),
        None => None,
    }
}

fn unreachable_issuer(url: &str, e: &reqwest::Error) -> OidcError {
    OidcError::Unavailable(format!("cannot reach the identity provider at {url}: {e}"))
}

fn rejection_reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "the token's issuer is not OAUTH_ISSUER".into(),
        ErrorKind::InvalidAudience => "the token's audience does not include OAUTH_AUDIENCE".into(),
        ErrorKind::InvalidSignature => "the token's signature does not verify".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the token has no {claim:?} claim"),
        other => format!("the token is not valid: {other:?}"),
    }
}
