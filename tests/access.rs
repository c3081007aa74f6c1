//! Management API access: scoped API tokens on every route, the audit log, and OIDC bearer
//! tokens verified against a real (test) issuer on a socket.

mod common;

use axum::http::StatusCode;
use common::oidc_issuer::{TestIssuer, AUDIENCE, CLIENT_ID, OPAQUE_TOKEN};
use common::*;
use serde_json::{json, Value};

use capgo_server::domain::access::Scope;

const FULL: (&str, &str) = ("x-api-key", API_KEY);

/// Creates a token with the full key and returns its secret.
async fn create_token(app: &TestApp, name: &str, scope: &str) -> String {
    let (status, body) = app
        .call_as(
            FULL,
            "POST",
            "/api/v1/tokens.create",
            Some(json!({"name": name, "scope": scope})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["scope"], scope);
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn scopes_are_enforced_on_every_route() {
    let app = TestApp::new();
    let read_only = create_token(&app, "dashboard", "read-only").await;
    let upload = create_token(&app, "ci upload", "upload").await;
    let routes = capgo_server::http::management::api_routes(&app.state);
    assert!(routes.len() >= 14);
    for (path, permission, _) in routes {
        let path = path.replace("{*rest}", "anything");
        let method = if path.ends_with(".list")
            || path.ends_with(".activity")
            || path.ends_with("whoami")
            || path.ends_with("anything")
        {
            "GET"
        } else {
            "POST"
        };
        for (scope, secret) in [(Scope::ReadOnly, &read_only), (Scope::Upload, &upload)] {
            // The same secret works as x-api-key and as a bearer token.
            let bearer = format!("Bearer {secret}");
            for credential in [
                ("x-api-key", secret.as_str()),
                ("authorization", bearer.as_str()),
            ] {
                let (status, body) = app
                    .call_as(credential, method, &path, Some(json!({})))
                    .await;
                if scope.permits(permission) {
                    assert!(
                        status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED,
                        "{scope} on {method} {path}: {status} {body}"
                    );
                } else {
                    assert_eq!(
                        status,
                        StatusCode::FORBIDDEN,
                        "{scope} on {method} {path}: {body}"
                    );
                    assert!(
                        body["error"].as_str().unwrap().contains(scope.as_str()),
                        "{body}"
                    );
                }
            }
        }
    }
    // What each may do, end to end: upload with the CI token, not list; list with read-only.
    let zip = web_bundle("scoped");
    let response = app
        .upload_as(
            &upload,
            &[
                ("app_id", Part::Text(APP_ID)),
                ("version_name", Part::Text("1.0.0")),
                ("bundle", Part::File(&zip)),
            ],
        )
        .await;
    assert_eq!(response.0, StatusCode::OK, "{}", response.1);
    let (status, body) = app
        .call_as(
            ("x-api-key", &read_only),
            "GET",
            "/api/v1/bundles.list",
            None,
        )
        .await;
    assert_eq!(
        (status, body["data"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    let (_, who) = app
        .call_as(("x-api-key", &upload), "GET", "/api/v1/whoami", None)
        .await;
    assert_eq!(who, json!({"name": "token:ci upload", "scope": "upload"}));
    let (_, who) = app
        .call_as(("x-api-key", &read_only), "GET", "/api/v1/whoami", None)
        .await;
    assert_eq!(
        who,
        json!({"name": "token:dashboard", "scope": "read-only"})
    );
}

#[tokio::test]
async fn tokens_are_shown_once_stored_hashed_and_revoked_at_once() {
    let app = TestApp::new();
    let secret = create_token(&app, "ci", "upload").await;
    assert!(
        secret.starts_with("capgo_tok_") && secret.len() > 50,
        "{secret}"
    );

    let (status, list) = app.call_as(FULL, "GET", "/api/v1/tokens.list", None).await;
    assert_eq!(status, StatusCode::OK);
    let listed = list.to_string();
    assert!(
        !listed.contains(&secret),
        "the secret is never listed: {listed}"
    );
    assert_eq!(list["data"][0]["name"], "ci");
    assert_eq!(list["data"][0]["created_by"], "management-token");
    let id = list["data"][0]["id"].as_str().unwrap().to_string();

    // Only the digest is stored.
    let stored = app.state.access.list_tokens().await.unwrap();
    assert_eq!(
        stored[0].digest,
        capgo_server::domain::access::secret_digest(&secret)
    );

    // Bad input.
    for (body, expected, needle) in [
        (
            json!({"name": "ci", "scope": "upload"}),
            StatusCode::CONFLICT,
            "already exists",
        ),
        (
            json!({"name": "x", "scope": "admin"}),
            StatusCode::BAD_REQUEST,
            "read-only",
        ),
        (
            json!({"name": "", "scope": "full"}),
            StatusCode::BAD_REQUEST,
            "token name",
        ),
        (
            json!({"name": "a;b", "scope": "full"}),
            StatusCode::BAD_REQUEST,
            "token name",
        ),
        (json!({"scope": "full"}), StatusCode::BAD_REQUEST, "name"),
    ] {
        let (status, answer) = app
            .call_as(FULL, "POST", "/api/v1/tokens.create", Some(body.clone()))
            .await;
        assert_eq!(status, expected, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(needle),
            "{answer}"
        );
    }
    for (body, expected) in [
        (json!({"token_id": "nothex"}), StatusCode::BAD_REQUEST),
        (
            json!({"token_id": "0123456789abcdef01234567"}),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, answer) = app
            .call_as(FULL, "POST", "/api/v1/tokens.revoke", Some(body))
            .await;
        assert_eq!(status, expected, "{answer}");
    }
    // A scoped token cannot mint itself more power.
    let (status, _) = app
        .call_as(
            ("x-api-key", &secret),
            "POST",
            "/api/v1/tokens.create",
            Some(json!({"name": "root", "scope": "full"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, _) = app
        .call_as(
            FULL,
            "POST",
            "/api/v1/tokens.revoke",
            Some(json!({"token_id": id})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .call_as(("x-api-key", &secret), "GET", "/api/v1/bundles.list", None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    // The audit log names the revoked token.
    let (_, audit) = app
        .call_as(FULL, "GET", "/api/v1/audit.list?limit=1", None)
        .await;
    assert_eq!(
        (&audit["data"][0]["action"], &audit["data"][0]["target"]),
        (&json!("tokens.revoke"), &json!("token ci"))
    );
}

#[tokio::test]
async fn the_audit_log_records_changes_and_failures_with_paging() {
    let app = TestApp::new();
    let ci = create_token(&app, "ci", "upload").await;
    let bundle = {
        let zip = web_bundle("a");
        let (status, answer) = app
            .upload_as(
                &ci,
                &[
                    ("app_id", Part::Text(APP_ID)),
                    ("version_name", Part::Text("1.0.0")),
                    ("bundle", Part::File(&zip)),
                ],
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["bundle"]["id"].as_str().unwrap().to_string()
    };
    // A failed upload (not a zip) and a refused change (scope) are recorded too.
    let (status, _) = app
        .upload_as(
            &ci,
            &[
                ("app_id", Part::Text(APP_ID)),
                ("version_name", Part::Text("1.0.1")),
                ("bundle", Part::File(b"not a zip")),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .call_as(
            ("x-api-key", &ci),
            "POST",
            "/api/v1/bundles.delete",
            Some(json!({"bundle_id": bundle})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let release = app.create_release(&bundle).await;
    let (status, _) = app
        .set_active(&release, "0123456789abcdef01234567", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.set_active(&release, &bundle, Some("beta")).await;
    assert_eq!(status, StatusCode::OK);
    // Reads and calls without a valid key are not recorded.
    app.get("/api/v1/releases.list").await;
    let (status, _) = app
        .call_as(
            ("x-api-key", "wrong-key"),
            "POST",
            "/api/v1/releases.delete",
            Some(json!({"release_id": release})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, page) = app
        .call_as(FULL, "GET", "/api/v1/audit.list?limit=100", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let entries = page["data"].as_array().unwrap();
    let summary: Vec<(String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("management-token", "releases.set-active", 200),
        ("management-token", "releases.set-active", 404),
        ("management-token", "releases.create", 200),
        ("token:ci", "bundles.delete", 403),
        ("token:ci", "bundles.upload", 400),
        ("token:ci", "bundles.upload", 200),
        ("management-token", "tokens.create", 200),
    ];
    let expected: Vec<(String, String, u64)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect();
    assert_eq!(summary, expected, "newest first: {page}");
    assert_eq!(page["next"], Value::Null);
    let newest = &entries[0];
    assert_eq!(
        newest["target"],
        format!("release {release} channel beta -> bundle {bundle}")
    );
    assert_eq!(
        (newest["result"].as_str(), newest["message"].as_str()),
        (Some("success"), Some(""))
    );
    assert_eq!(newest["client_ip"], "127.0.0.1");
    let failed_upload = &entries[4];
    assert_eq!(failed_upload["target"], format!("bundle {APP_ID}/1.0.1"));
    assert_eq!(failed_upload["result"], "failure");
    assert!(
        failed_upload["message"].as_str().unwrap().contains("zip"),
        "{failed_upload}"
    );
    assert!(entries[1]["message"]
        .as_str()
        .unwrap()
        .contains("0123456789abcdef01234567"));

    // Pages of 3 walk the same entries.
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .call_as(
                FULL,
                "GET",
                &format!("/api/v1/audit.list?limit=3&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        walked.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].clone()),
        );
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let all: Vec<Value> = entries.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(walked, all);

    for query in ["limit=0", "limit=501", "cursor=garbage", "limit=abc"] {
        let (status, body) = app
            .call_as(FULL, "GET", &format!("/api/v1/audit.list?{query}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
    let (status, _) = app
        .call_as(("x-api-key", &ci), "GET", "/api/v1/audit.list", None)
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the audit log needs full access"
    );
}

async fn oidc_app(issuer: &TestIssuer) -> TestApp {
    TestApp::with_env(&[
        ("OAUTH_ISSUER", issuer.url.as_str()),
        ("OAUTH_AUDIENCE", AUDIENCE),
        ("OAUTH_CLIENT_ID", CLIENT_ID),
    ])
}

async fn with_bearer(app: &TestApp, token: &str) -> (StatusCode, Value) {
    app.call_as(
        ("authorization", &format!("Bearer {token}")),
        "GET",
        "/api/v1/whoami",
        None,
    )
    .await
}

#[tokio::test]
async fn oidc_tokens_are_verified_locally() {
    let issuer = TestIssuer::start().await;
    let app = oidc_app(&issuer).await;

    let valid = issuer.sign(&issuer.claims("alice"), 1, "key-1");
    let (status, body) = with_bearer(&app, &valid).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"name": "oidc:alice <alice@example.com>", "scope": "full"})
    );
    // Verified locally: the second request fetches nothing.
    assert_eq!(issuer.jwks_fetches(), 1);
    with_bearer(&app, &valid).await;
    assert_eq!(issuer.jwks_fetches(), 1);

    let mut expired = issuer.claims("alice");
    expired["exp"] = json!(expired["iat"].as_i64().unwrap() - 120);
    let mut not_yet = issuer.claims("alice");
    not_yet["nbf"] = json!(not_yet["iat"].as_i64().unwrap() + 600);
    let mut wrong_issuer = issuer.claims("alice");
    wrong_issuer["iss"] = json!(format!("{}/other", issuer.url));
    let mut wrong_audience = issuer.claims("alice");
    wrong_audience["aud"] = json!("someone-else");
    let mut no_audience = issuer.claims("alice");
    no_audience.as_object_mut().unwrap().remove("aud");
    let tampered = {
        let other = issuer.sign(&issuer.claims("mallory"), 1, "key-1");
        let parts: Vec<&str> = valid.split('.').collect();
        let forged: Vec<&str> = other.split('.').collect();
        format!("{}.{}.{}", parts[0], forged[1], parts[2])
    };
    let alg_none = {
        use base64::Engine;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&issuer.claims("alice"))
        )
    };
    let hmac = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("key-1".into());
        jsonwebtoken::encode(
            &header,
            &issuer.claims("alice"),
            &jsonwebtoken::EncodingKey::from_secret(b"guess"),
        )
        .unwrap()
    };
    let cases = [
        ("expired", issuer.sign(&expired, 1, "key-1"), "expired"),
        (
            "not yet valid",
            issuer.sign(&not_yet, 1, "key-1"),
            "not valid yet",
        ),
        (
            "wrong issuer",
            issuer.sign(&wrong_issuer, 1, "key-1"),
            "issuer",
        ),
        (
            "wrong audience",
            issuer.sign(&wrong_audience, 1, "key-1"),
            "audience",
        ),
        ("no audience", issuer.sign(&no_audience, 1, "key-1"), "aud"),
        (
            "unknown kid",
            issuer.sign(&issuer.claims("alice"), 2, "key-9"),
            "key-9",
        ),
        (
            "signed by another key",
            issuer.sign(&issuer.claims("alice"), 2, "key-1"),
            "signature",
        ),
        ("tampered payload", tampered, "signature"),
        ("alg none", alg_none, "alg none"),
        ("HMAC with a guessed secret", hmac, "HMAC"),
        ("garbage", "a.b.c".to_string(), "header"),
    ];
    for (what, token, needle) in cases {
        let (status, body) = with_bearer(&app, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
    }
    // One refresh for the unknown kid, then none during the cool-down.
    assert_eq!(issuer.jwks_fetches(), 2);
    with_bearer(&app, &issuer.sign(&issuer.claims("alice"), 2, "key-8")).await;
    assert_eq!(issuer.jwks_fetches(), 2, "no refetch while cooling down");

    // Small clock skew is tolerated.
    let mut skewed = issuer.claims("alice");
    skewed["exp"] = json!(skewed["iat"].as_i64().unwrap() - 10);
    assert_eq!(
        with_bearer(&app, &issuer.sign(&skewed, 1, "key-1")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotated_key_is_fetched_on_first_sight() {
    let issuer = TestIssuer::start().await;
    let app = oidc_app(&issuer).await;
    assert_eq!(
        with_bearer(&app, &issuer.sign(&issuer.claims("alice"), 1, "key-1"))
            .await
            .0,
        StatusCode::OK
    );
    issuer.publish(&[(1, "key-1"), (2, "key-2")]);
    let rotated = issuer.sign(&issuer.claims("carol"), 2, "key-2");
    let (status, body) = with_bearer(&app, &rotated).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn opaque_tokens_use_userinfo_with_a_short_cache() {
    let issuer = TestIssuer::start().await;
    // Without an audience to check: with one, opaque tokens are refused (below).
    let app = TestApp::with_env(&[
        ("OAUTH_ISSUER", issuer.url.as_str()),
        ("OAUTH_CLIENT_ID", CLIENT_ID),
    ]);
    let (status, body) = with_bearer(&app, OPAQUE_TOKEN).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "oidc:bob <bob@example.com>");
    with_bearer(&app, OPAQUE_TOKEN).await;
    assert_eq!(
        issuer.userinfo_calls(),
        1,
        "the second call is answered from the cache"
    );
    let (status, body) = with_bearer(&app, "some-other-opaque-token").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not accept"),
        "{body}"
    );
}

#[tokio::test]
async fn with_an_audience_opaque_tokens_are_refused_without_asking_userinfo() {
    let issuer = TestIssuer::start().await;
    let app = oidc_app(&issuer).await;
    let (status, body) = with_bearer(&app, OPAQUE_TOKEN).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("OAUTH_AUDIENCE"),
        "{body}"
    );
    assert_eq!(issuer.userinfo_calls(), 0, "userinfo is never asked");
    // JWTs with the audience still work.
    let jwt = issuer.sign(&issuer.claims("alice"), 1, "key-1");
    assert_eq!(with_bearer(&app, &jwt).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_issuer_that_is_down_does_not_take_api_keys_down() {
    let issuer = TestIssuer::start().await;
    let app = oidc_app(&issuer).await;
    issuer.set_down(true);
    let (status, body) = with_bearer(&app, &issuer.sign(&issuer.claims("alice"), 1, "key-1")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = app.get("/api/v1/bundles.list").await;
    assert_eq!(status, StatusCode::OK, "API keys never ask the issuer");
    let (_, config) = app
        .call_as(FULL, "GET", "/apipublic/v1/oauth2.config", None)
        .await;
    assert_eq!(config["enabled"], true);
    assert!(
        config["error"].as_str().unwrap().contains("503"),
        "{config}"
    );

    // Up again: discovery is retried, and then keys stay cached through the next outage.
    issuer.set_down(false);
    let token = issuer.sign(&issuer.claims("alice"), 1, "key-1");
    assert_eq!(with_bearer(&app, &token).await.0, StatusCode::OK);
    issuer.set_down(true);
    assert_eq!(with_bearer(&app, &token).await.0, StatusCode::OK);
    let (_, config) = app
        .call_as(FULL, "GET", "/apipublic/v1/oauth2.config", None)
        .await;
    assert_eq!(config["token_endpoint"], format!("{}/token", issuer.url));
    assert_eq!(config["client_id"], CLIENT_ID);
}

#[tokio::test]
async fn bearer_tokens_without_oidc_configured_are_refused_clearly() {
    let app = TestApp::new();
    let (status, body) = with_bearer(&app, "eyJhbGciOi.eyJzdWIi.c2ln").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["error"].as_str().unwrap().contains("OAUTH_ISSUER"),
        "{body}"
    );
    // The configured key works as a bearer token too.
    let (status, body) = with_bearer(&app, API_KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["scope"], "full");
}

/// `GET /api/v1/whoami` with `key`, from `peer`: status and `Retry-After`.
async fn whoami_from(app: &TestApp, peer: &str, key: &str) -> (StatusCode, Option<String>) {
    use tower::ServiceExt;
    let mut request = axum::http::Request::builder()
        .uri("/api/v1/whoami")
        .header("x-api-key", key)
        .body(axum::body::Body::empty())
        .unwrap();
    let peer: std::net::SocketAddr = format!("{peer}:40000").parse().unwrap();
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let response = app.management.clone().oneshot(request).await.unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (response.status(), retry_after)
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let app = TestApp::new();
    let guesser = "203.0.113.9";
    for i in 0..capgo_server::http::auth_throttle::FAILED_LOGINS_PER_MINUTE {
        let (status, _) = whoami_from(&app, guesser, &format!("wrong-key-{i:04}")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    // Held: even the right key is not checked from that address now.
    for key in ["wrong-key-next", API_KEY] {
        let (status, retry_after) = whoami_from(&app, guesser, key).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{key}");
        let seconds: u64 = retry_after.expect("Retry-After").parse().unwrap();
        assert!((1..=60).contains(&seconds), "{seconds}");
    }
    // Other addresses are not affected.
    assert_eq!(
        whoami_from(&app, "198.51.100.4", API_KEY).await.0,
        StatusCode::OK
    );
}
