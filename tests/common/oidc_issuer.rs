//! A small OIDC issuer for tests, on a real socket: discovery document, JWKS (keys can be
//! rotated and the issuer taken down), userinfo for one opaque token, and an Authorization
//! Code + PKCE login that signs in `alice` at once (for the browser test).
//!
//! Keys: two RSA keys in `tests/fixtures/oidc-test-key-{1,2}.pem`, made for these tests only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const CLIENT_ID: &str = "capgo-ui";
pub const AUDIENCE: &str = "capgo-server";
/// The opaque (non-JWT) token the userinfo endpoint accepts.
pub const OPAQUE_TOKEN: &str = "opaque-access-token-for-bob";

fn key_pem(which: u8) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/oidc-test-key-{which}.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn encoding_key(which: u8) -> EncodingKey {
    EncodingKey::from_rsa_pem(&key_pem(which)).expect("the fixture is an RSA private key")
}

fn public_jwk(which: u8, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(which), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    jwk.common.key_algorithm = Some(KeyAlgorithm::RS256);
    jwk
}

struct IssuerState {
    url: String,
    jwks: Mutex<Vec<Jwk>>,
    jwks_fetches: AtomicUsize,
    userinfo_calls: AtomicUsize,
    down: AtomicBool,
    /// Authorization code → (PKCE challenge, redirect URI it was issued for).
    codes: Mutex<HashMap<String, (String, String)>>,
}

pub struct TestIssuer {
    pub url: String,
    state: Arc<IssuerState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestIssuer {
    /// Serving key 1 as `key-1`.
    pub async fn start() -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IssuerState {
            url: url.clone(),
            jwks: Mutex::new(vec![public_jwk(1, "key-1")]),
            jwks_fetches: AtomicUsize::new(0),
            userinfo_calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            codes: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/userinfo", get(userinfo))
            .route("/authorize", get(authorize))
            .route("/token", post(token).options(preflight))
            .with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        TestIssuer { url, state, server }
    }

    /// Replaces the published keys: `(fixture key, kid)` pairs.
    pub fn publish(&self, keys: &[(u8, &str)]) {
        *self.state.jwks.lock().unwrap() =
            keys.iter().map(|(k, kid)| public_jwk(*k, kid)).collect();
    }

    /// While down, every endpoint answers 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn userinfo_calls(&self) -> usize {
        self.state.userinfo_calls.load(Ordering::SeqCst)
    }

    /// Valid claims for `sub`: this issuer, the test audience, valid for five minutes.
    pub fn claims(&self, sub: &str) -> Value {
        claims(&self.url, sub)
    }

    /// `claims` signed RS256 with fixture key `key`, naming `kid`.
    pub fn sign(&self, claims: &Value, key: u8, kid: &str) -> String {
        sign(claims, key, kid)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(issuer: &str, sub: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": sub,
        "aud": [AUDIENCE, CLIENT_ID],
        "email": format!("{sub}@example.com"),
        "iat": now(),
        "nbf": now(),
        "exp": now() + 300,
    })
}

fn sign(claims: &Value, key: u8, kid: &str) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &encoding_key(key)).unwrap()
}

fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "issuer is down").into_response()
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Response {
    if state.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    let url = &state.url;
    Json(json!({
        "issuer": url,
        "jwks_uri": format!("{url}/jwks"),
        "authorization_endpoint": format!("{url}/authorize"),
        "token_endpoint": format!("{url}/token"),
        "userinfo_endpoint": format!("{url}/userinfo"),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
    }))
    .into_response()
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    if state.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(JwkSet {
        keys: state.jwks.lock().unwrap().clone(),
    })
    .into_response()
}

async fn userinfo(State(state): State<Arc<IssuerState>>, headers: HeaderMap) -> Response {
    if state.down.load(Ordering::SeqCst) {
        return unavailable();
    }
    state.userinfo_calls.fetch_add(1, Ordering::SeqCst);
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented == Some(OPAQUE_TOKEN) {
        Json(json!({"sub": "bob", "email": "bob@example.com"})).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, "invalid token").into_response()
    }
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    client_id: String,
    redirect_uri: String,
    state: String,
    code_challenge: String,
    code_challenge_method: String,
    response_type: String,
}

/// The one redirect path registered for the UI: the seed's callback, as identity providers set
/// up for the seed have it.
pub const REDIRECT_PATH: &str = "/ui/login/oauth-callback";

/// Signs `alice` in without a form and sends the browser back with a code. Like a real
/// identity provider, it only redirects to the registered redirect URI.
async fn authorize(
    State(state): State<Arc<IssuerState>>,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    if query.client_id != CLIENT_ID
        || query.response_type != "code"
        || query.code_challenge_method != "S256"
        || !query.redirect_uri.ends_with(REDIRECT_PATH)
    {
        return (StatusCode::BAD_REQUEST, "bad authorization request").into_response();
    }
    let code = format!("code-{}", state.codes.lock().unwrap().len() + 1);
    state.codes.lock().unwrap().insert(
        code.clone(),
        (query.code_challenge, query.redirect_uri.clone()),
    );
    let separator = if query.redirect_uri.contains('?') {
        '&'
    } else {
        '?'
    };
    Redirect::to(&format!(
        "{}{separator}code={code}&state={}",
        query.redirect_uri, query.state
    ))
    .into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    grant_type: String,
    code: String,
    code_verifier: String,
    client_id: String,
    redirect_uri: String,
}

fn cors(response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    let headers = response.headers_mut();
    headers.insert("access-control-allow-origin", "*".parse().unwrap());
    headers.insert(
        "access-control-allow-headers",
        "content-type".parse().unwrap(),
    );
    response
}

async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT)
}

/// Exchanges a code for an access token after checking the PKCE verifier.
async fn token(
    State(state): State<Arc<IssuerState>>,
    Form(request): Form<TokenRequest>,
) -> Response {
    let issued = state.codes.lock().unwrap().remove(&request.code);
    let challenge = issued
        .filter(|(_, redirect_uri)| *redirect_uri == request.redirect_uri)
        .map(|(challenge, _)| challenge);
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(request.code_verifier.as_bytes()));
    if request.grant_type != "authorization_code"
        || request.client_id != CLIENT_ID
        || challenge.as_deref() != Some(expected.as_str())
    {
        return cors((
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        ));
    }
    let access_token = sign(&claims(&state.url, "alice"), 1, "key-1");
    cors(Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": 300,
    })))
}
