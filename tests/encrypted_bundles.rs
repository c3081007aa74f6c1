//! Encrypted uploads through the REST API, with bundles, keys, session keys and checksums the
//! real Capgo CLI made (tests/fixtures/cli, `regenerate.sh`): checked end to end when the app
//! has a registered public key, stored as sent (and said so) when it has none.

mod common;

use axum::http::StatusCode;
use serde_json::{json, Value};

use common::*;

const FIXTURE_APP: &str = "com.example.fixture";
const PUBLIC_KEY: &str = include_str!("fixtures/cli/public_key.pem");
const OTHER_PUBLIC_KEY: &str = include_str!("fixtures/cli/other_public_key.pem");
const PRIVATE_KEY: &str = include_str!("fixtures/cli/private_key.pem");
const PLAIN: &[u8] = include_bytes!("fixtures/cli/bundle.zip");
const V3_ZIP: &[u8] = include_bytes!("fixtures/cli/bundle.zip_encrypted.zip");
const V2_ZIP: &[u8] = include_bytes!("fixtures/cli/bundle-v2.zip_encrypted.zip");
const NOT_A_BUNDLE: &[u8] = include_bytes!("fixtures/cli/not-a-bundle.zip_encrypted.zip");

fn fixtures() -> Value {
    serde_json::from_str(include_str!("fixtures/cli/encryption.json")).unwrap()
}

/// `session_key` and `checksum` of an encrypted upload.
type Fields = (String, String);

/// What `bundle encrypt` printed for one of its runs (`v3`, `v2`, `not_a_bundle`).
fn run(name: &str) -> (String, String) {
    let doc = fixtures();
    (
        doc[name]["session_key"].as_str().unwrap().to_string(),
        doc[name]["checksum"].as_str().unwrap().to_string(),
    )
}

/// Uploads `bytes` as an encrypted bundle of the fixture app.
async fn upload_encrypted(
    app: &TestApp,
    version: &str,
    bytes: &[u8],
    (session_key, checksum): &(String, String),
    key_id: Option<&str>,
) -> (StatusCode, Value) {
    let mut parts = vec![
        ("app_id", Part::Text(FIXTURE_APP)),
        ("version_name", Part::Text(version)),
        ("session_key", Part::Text(session_key)),
        ("checksum", Part::Text(checksum)),
    ];
    if let Some(key_id) = key_id {
        parts.push(("key_id", Part::Text(key_id)));
    }
    parts.push(("bundle", Part::File(bytes)));
    app.upload(&parts).await
}

async fn register(app: &TestApp, pem: &str) -> (StatusCode, Value) {
    app.post_json(
        "/api/v1/public-keys.set",
        json!({"app_id": FIXTURE_APP, "public_key": pem}),
    )
    .await
}

#[tokio::test]
async fn without_a_registered_key_an_encrypted_upload_is_stored_and_the_answer_says_unchecked() {
    let app = TestApp::new();
    let (status, body) = upload_encrypted(&app, "1.0.0", V3_ZIP, &run("v3"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["bundle"]["encrypted"], true);
    let note = body["note"].as_str().unwrap();
    assert!(
        note.contains("without verification") && note.contains(FIXTURE_APP),
        "{note}"
    );
    // Arbitrary bytes too: nothing can be checked without the key, which the note says.
    let (status, body) =
        upload_encrypted(&app, "1.0.1", b"not even ciphertext", &run("v3"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["note"].is_string(), "{body}");
    // A plain upload has no note.
    let (status, body) = app
        .upload(&[
            ("app_id", Part::Text(FIXTURE_APP)),
            ("version_name", Part::Text("1.0.2")),
            ("bundle", Part::File(PLAIN)),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("note").is_none(), "{body}");
}

#[tokio::test]
async fn registering_a_key_takes_the_public_key_only_and_lists_it() {
    let app = TestApp::new();
    let (status, body) = register(&app, PRIVATE_KEY).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("private key"), "{message}");
    assert!(!message.contains("MII"), "the key is not echoed: {message}");
    let (status, body) = register(&app, "not a key").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .post_json(
            "/api/v1/public-keys.set",
            json!({"app_id": "not an app id", "public_key": PUBLIC_KEY}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = register(&app, PUBLIC_KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["key_id"], fixtures()["key_id"]);
    assert_eq!(body["data"]["bits"], 2048);
    assert_eq!(body["data"]["public_key"], PUBLIC_KEY);
    let (_, list) = app.get("/api/v1/public-keys.list").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["data"][0]["app_id"], FIXTURE_APP);

    // Replacing it keeps one key per app; removing it twice is a 404 the second time.
    let (status, body) = register(&app, OTHER_PUBLIC_KEY).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = app.get("/api/v1/public-keys.list").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    assert_ne!(list["data"][0]["key_id"], fixtures()["key_id"]);
    let delete = json!({"app_id": FIXTURE_APP});
    let (status, body) = app
        .post_json("/api/v1/public-keys.delete", delete.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post_json("/api/v1/public-keys.delete", delete).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn with_the_apps_key_cli_bundles_of_both_checksum_formats_are_accepted() {
    let app = TestApp::new();
    register(&app, PUBLIC_KEY).await;
    let key_id = fixtures()["key_id"].as_str().unwrap().to_string();
    for (version, bytes, name) in [("1.0.0", V3_ZIP, "v3"), ("1.0.1", V2_ZIP, "v2")] {
        let (status, body) =
            upload_encrypted(&app, version, bytes, &run(name), Some(&key_id)).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert!(body.get("note").is_none(), "checked, so no note: {body}");
        assert_eq!(body["bundle"]["encrypted"], true);
        assert_eq!(
            body["bundle"]["sha256"],
            sha256_hex(bytes),
            "the stored bytes"
        );
    }
    // Devices get the CLI's session key and encrypted checksum as uploaded.
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    assert_eq!(bundles["data"].as_array().unwrap().len(), 2, "{bundles}");
    assert!(
        app.files_in("staging").is_empty(),
        "{:?}",
        app.files_in("staging")
    );
}

#[tokio::test]
async fn with_the_apps_key_a_bundle_that_does_not_check_out_is_refused() {
    let app = TestApp::new();
    register(&app, PUBLIC_KEY).await;
    let v3 = run("v3");
    let mut tampered_middle = V3_ZIP.to_vec();
    tampered_middle[V3_ZIP.len() / 2] ^= 0x01;
    let mut tampered_end = V3_ZIP.to_vec();
    *tampered_end.last_mut().unwrap() ^= 0x01;
    // `bundle encrypt` of another zip with the same key: a valid checksum, of other bytes.
    let other_checksum = (v3.0.clone(), run("not_a_bundle").1);
    let cases: Vec<(&str, &[u8], Fields, &str)> = vec![
        (
            "tampered bytes",
            &tampered_middle,
            v3.clone(),
            "not a valid bundle",
        ),
        (
            "tampered padding",
            &tampered_end,
            v3.clone(),
            "does not decrypt",
        ),
        (
            "wrong checksum",
            V3_ZIP,
            other_checksum,
            "checksum mismatch",
        ),
        (
            "session key of another upload",
            V3_ZIP,
            (run("v2").0, v3.1.clone()),
            "does not decrypt",
        ),
        (
            "not a bundle",
            NOT_A_BUNDLE,
            run("not_a_bundle"),
            "not a valid bundle",
        ),
    ];
    for (i, (what, bytes, fields, needle)) in cases.into_iter().enumerate() {
        let (status, body) =
            upload_encrypted(&app, &format!("2.0.{i}"), bytes, &fields, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
    }
    app.assert_nothing_stored();
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    assert!(bundles["data"].as_array().unwrap().is_empty(), "{bundles}");
}

#[tokio::test]
async fn a_bundle_encrypted_for_another_key_is_refused() {
    let app = TestApp::new();
    // The app's registered key is not the one the bundle was encrypted with.
    register(&app, OTHER_PUBLIC_KEY).await;
    let (status, body) = upload_encrypted(&app, "1.0.0", V3_ZIP, &run("v3"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("was not made with the private key"),
        "{message}"
    );
    // With the CLI's key_id the refusal names both keys.
    let key_id = fixtures()["key_id"].as_str().unwrap().to_string();
    let (status, body) = upload_encrypted(&app, "1.0.0", V3_ZIP, &run("v3"), Some(&key_id)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("encrypted for key_id {key_id}")),
        "{message}"
    );
    app.assert_nothing_stored();
}

#[tokio::test]
async fn keys_are_changed_by_full_scope_only() {
    let app = TestApp::new();
    let (status, body) = app
        .post_json(
            "/api/v1/tokens.create",
            json!({"name": "ci", "scope": "upload"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    let (status, body) = app
        .call_as(
            ("x-api-key", &token),
            "POST",
            "/api/v1/public-keys.set",
            Some(json!({"app_id": FIXTURE_APP, "public_key": OTHER_PUBLIC_KEY})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}
