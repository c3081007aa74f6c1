//! The management API through its router: the seed's routes and shapes, and every bad input.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::json;

/// A multipart form as (field name, part) pairs.
type Form<'a> = Vec<(&'a str, Part<'a>)>;

/// The usual upload fields.
fn form<'a>(app_id: &'a str, version: &'a str, file: &'a [u8]) -> Form<'a> {
    vec![
        ("app_id", Part::Text(app_id)),
        ("version_name", Part::Text(version)),
        ("bundle", Part::File(file)),
    ]
}

/// The usual upload fields plus one more before the file.
fn with<'a>(mut base: Form<'a>, extra: (&'a str, Part<'a>)) -> Form<'a> {
    base.insert(2, extra);
    base
}

#[tokio::test]
async fn seed_workflow_shapes() {
    let app = TestApp::new();
    let zip = web_bundle("v1");
    let (status, body) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1.0.0")),
            ("description", Part::Text("first")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Bundle uploaded successfully");
    let bundle = &body["bundle"];
    for key in [
        "id",
        "app_id",
        "version_name",
        "description",
        "crc_checksum",
        "public_download_url",
        "created_at",
    ] {
        assert!(
            bundle[key].is_string(),
            "seed field {key} missing: {bundle}"
        );
    }
    assert_eq!(bundle["sha256"], sha256_hex(&zip));
    assert_eq!(
        bundle["crc_checksum"],
        format!("{:08x}", crc32fast::hash(&zip))
    );
    assert_eq!(bundle["size"], zip.len());
    let builtin = bundle["id"].as_str().unwrap().to_string();

    let release = app.create_release(&builtin).await;
    let (status, list) = app.get("/api/v1/releases.list").await;
    assert_eq!(status, StatusCode::OK);
    let listed = &list["data"][0];
    assert_eq!(listed["id"], release.as_str());
    assert_eq!(listed["builtin_bundle_id"], builtin.as_str());
    assert_eq!(listed["active_bundle_id"], serde_json::Value::Null);

    let next = app.upload_bundle("1.0.1").await;
    let (status, body) = app.set_active(&release, &next, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["release"]["active_bundle_id"], next.as_str());
    let (status, body) = app.set_active(&release, &builtin, Some("beta")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["release"]["channels"]["beta"], builtin.as_str());

    let (status, body) = app
        .post_json(
            "/api/v1/releases.update",
            json!({"release_id": release, "release_date": "2026-01-31T09:00:00+07:00"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["release"]["release_date"], "2026-01-31T02:00:00Z");

    let (status, bundles) = app.get("/api/v1/bundles.list").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bundles["data"].as_array().unwrap().len(), 2);
    assert_eq!(bundles["data"][0]["version_name"], "1.0.1", "newest first");

    let (status, body) = app
        .post_json("/api/v1/releases.delete", json!({"release_id": release}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, list) = app.get("/api/v1/releases.list").await;
    assert!(list["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn views_say_what_each_channel_serves_and_who_uses_a_bundle() {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let next = app.upload_bundle("1.0.1").await;
    let unused = app.upload_bundle("1.0.2").await;
    let release = app.create_release(&builtin).await;
    let serving = |list: &serde_json::Value| list["data"][0]["serving"].clone();

    let (_, list) = app.get("/api/v1/releases.list").await;
    assert_eq!(
        serving(&list),
        json!({"production": {"bundle_id": builtin, "because": "builtin"}}),
        "nothing assigned: production serves the builtin bundle"
    );
    app.set_active(&release, &next, Some("beta")).await;
    let (_, list) = app.get("/api/v1/releases.list").await;
    assert_eq!(
        serving(&list),
        json!({
            "beta": {"bundle_id": next, "because": "assigned"},
            "production": {"bundle_id": builtin, "because": "builtin"},
        })
    );
    app.set_active(&release, &next, None).await;
    app.set_active(&release, &builtin, Some("beta")).await;
    let (_, list) = app.get("/api/v1/releases.list").await;
    assert_eq!(serving(&list)["production"]["because"], "assigned");
    assert_eq!(serving(&list)["beta"]["bundle_id"], builtin.as_str());

    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    let used_by = |id: &str| {
        bundles["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .unwrap()["used_by"]
            .clone()
    };
    assert_eq!(used_by(&unused), json!([]));
    assert_eq!(
        used_by(&builtin),
        json!([{"release_id": release, "platform": "android", "version_name": "1.0.0",
                "version_code": "10", "builtin": true, "serving": ["beta"]}])
    );
    assert_eq!(used_by(&next)[0]["serving"], json!(["production"]));
    assert_eq!(used_by(&next)[0]["builtin"], false);
}

#[tokio::test]
async fn missing_or_wrong_key_is_401_on_every_route() {
    let app = TestApp::new();
    // Every route the router has, with every method: none answers without a valid key.
    let paths: Vec<String> = capgo_server::http::management::api_routes(&app.state)
        .into_iter()
        .map(|(path, _, _)| path.replace("{*rest}", "anything"))
        .collect();
    assert!(paths.len() >= 10, "{paths:?}");
    let routes: Vec<(&str, &str)> = paths
        .iter()
        .flat_map(|path| ["GET", "POST", "PUT", "DELETE"].map(|method| (method, path.as_str())))
        .collect();
    for (i, (method, path)) in routes.into_iter().enumerate() {
        for key in [None, Some("wrong-key-123")] {
            let mut request = Request::builder().method(method).uri(path);
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
            // One address per route: more wrong keys than that from one address are throttled
            // (429), which `failed_logins_are_throttled_per_address` covers.
            let peer = std::net::SocketAddr::from(([198, 51, 100, (i % 250) as u8], 40000));
            request = request.extension(axum::extract::ConnectInfo(peer));
            let (status, body) =
                TestApp::call(&app.management, request.body(Body::empty()).unwrap()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {key:?}: {body}"
            );
            assert!(
                body["error"].as_str().unwrap().contains("API key"),
                "{body}"
            );
        }
    }
    let (status, _) = TestApp::call(
        &app.management,
        Request::get("/_healthz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = TestApp::call(
        &app.management,
        Request::get("/apipublic/v1/oauth2.config")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["enabled"], false);
    assert_eq!(
        (&body["issuer"], &body["client_id"]),
        (&json!(""), &json!(""))
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let app = TestApp::new();
    let good = web_bundle("ok");
    let traversal = zip_of(&[("index.html", b"x"), ("../../etc/cron.d/evil", b"x")]);
    let no_index = zip_of(&[("app.js", b"x")]);
    let wrong_checksum = "0".repeat(64);
    let cases: Vec<(Form, StatusCode, &str)> = vec![
        (
            form(APP_ID, "1", b"not a zip at all"),
            StatusCode::BAD_REQUEST,
            "not a valid zip",
        ),
        (form(APP_ID, "1", &traversal), StatusCode::BAD_REQUEST, ".."),
        (
            form(APP_ID, "1", &no_index),
            StatusCode::BAD_REQUEST,
            "index.html",
        ),
        (form(APP_ID, "1", b""), StatusCode::BAD_REQUEST, "empty"),
        (
            form(APP_ID, "1", &good)[..2].to_vec(),
            StatusCode::BAD_REQUEST,
            "`bundle`",
        ),
        (
            form(APP_ID, "1", &good)[1..].to_vec(),
            StatusCode::BAD_REQUEST,
            "app_id",
        ),
        (
            form(APP_ID, "", &good),
            StatusCode::BAD_REQUEST,
            "version_name",
        ),
        (
            form("com example", "1", &good),
            StatusCode::BAD_REQUEST,
            "app_id",
        ),
        (
            form(APP_ID, "builtin", &good),
            StatusCode::BAD_REQUEST,
            "reserved",
        ),
        (
            with(form(APP_ID, "1", &good), ("version", Part::Text("1"))),
            StatusCode::BAD_REQUEST,
            "unknown form field",
        ),
        (
            with(
                form(APP_ID, "1", &good),
                ("checksum", Part::Text(&wrong_checksum)),
            ),
            StatusCode::BAD_REQUEST,
            "checksum mismatch",
        ),
        (
            with(
                form(APP_ID, "1", b"ciphertext"),
                ("session_key", Part::Text("aXY=:a2V5")),
            ),
            StatusCode::BAD_REQUEST,
            "checksum",
        ),
    ];
    for (parts, expected_status, expected_text) in cases {
        let (status, body) = app.upload(&parts).await;
        assert_eq!(
            status, expected_status,
            "expected {expected_text:?}: {body}"
        );
        let message = body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected_text),
            "expected {expected_text:?} in {body}"
        );
    }
    let request = Request::post("/api/v1/bundles.upload")
        .header("x-api-key", API_KEY)
        .header("content-type", "application/json")
        .body(Body::from("{}"))
        .unwrap();
    let (status, body) = TestApp::call(&app.management, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("multipart"),
        "{body}"
    );

    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    assert!(bundles["data"].as_array().unwrap().is_empty(), "{bundles}");
    assert!(
        app.files_in("blobs").is_empty(),
        "{:?}",
        app.files_in("blobs")
    );
    assert!(
        app.files_in("staging").is_empty(),
        "{:?}",
        app.files_in("staging")
    );
}

#[tokio::test]
async fn oversized_upload_is_413_and_leaves_nothing() {
    let app = TestApp::with_env(&[("MAX_BUNDLE_SIZE", "4KiB")]);
    let big = incompressible(64 * 1024);
    let zip = zip_of(&[("index.html", b"<html/>"), ("noise.bin", &big)]);
    let (status, body) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("MAX_BUNDLE_SIZE"),
        "{body}"
    );
    assert!(app.files_in("staging").is_empty());
    assert!(app.files_in("blobs").is_empty());
}

#[tokio::test]
async fn duplicate_version_is_409_and_keeps_the_first() {
    let app = TestApp::new();
    let first = app.upload_bundle("2.0.0").await;
    let zip = web_bundle("other content");
    // Fields first: refused before the file is read.
    let (status, body) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("2.0.0")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already has a bundle named \"2.0.0\""),
        "{body}"
    );
    // File first: refused after staging, and the staged file is gone.
    let (status, _) = app
        .upload(&[
            ("bundle", Part::File(&zip)),
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("2.0.0")),
        ])
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    assert_eq!(bundles["data"].as_array().unwrap().len(), 1);
    assert_eq!(bundles["data"][0]["id"], first.as_str());
    assert_eq!(app.files_in("blobs").len(), 1);
    assert!(app.files_in("staging").is_empty());
}

#[tokio::test]
async fn release_bad_input() {
    let app = TestApp::new();
    let bundle = app.upload_bundle("1.0.0").await;
    let valid = json!({"platform": "android", "app_id": APP_ID, "version_name": "1.0.0",
                       "version_code": "10", "builtin_bundle_id": bundle});
    let with = |key: &str, value: serde_json::Value| {
        let mut body = valid.clone();
        body[key] = value;
        body
    };
    let cases = [
        (
            with("platform", json!("windows")),
            StatusCode::BAD_REQUEST,
            "unknown platform",
        ),
        (
            with("platform", json!(7)),
            StatusCode::BAD_REQUEST,
            "invalid JSON body",
        ),
        (
            with("builtin_bundle_id", json!("nope")),
            StatusCode::BAD_REQUEST,
            "24 lowercase hex",
        ),
        (
            with("builtin_bundle_id", json!("0123456789abcdef01234567")),
            StatusCode::NOT_FOUND,
            "no such bundle",
        ),
        (
            with("app_id", json!("com.other.app")),
            StatusCode::BAD_REQUEST,
            "is a bundle of com.example.app",
        ),
        (
            with("version_code", json!("")),
            StatusCode::BAD_REQUEST,
            "version_code is required",
        ),
        (
            json!({"platform": "ios"}),
            StatusCode::BAD_REQUEST,
            "missing field",
        ),
    ];
    for (body, expected_status, expected_text) in cases {
        let (status, answer) = app.post_json("/api/v1/releases.create", body.clone()).await;
        assert_eq!(status, expected_status, "{body} -> {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected_text),
            "{body} -> {answer}"
        );
    }
    let (status, _) = app
        .post_json("/api/v1/releases.create", valid.clone())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = app.post_json("/api/v1/releases.create", valid).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("already exists"));

    for raw in ["{not json", "", "[]"] {
        let request = Request::post("/api/v1/releases.create")
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(Body::from(raw))
            .unwrap();
        let (status, answer) = TestApp::call(&app.management, request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw:?}: {answer}");
        assert!(
            answer["error"].is_string(),
            "JSON error shape for {raw:?}: {answer}"
        );
    }
    // Read as JSON whatever the Content-Type (as the seed did): without one, the fields are
    // what is checked.
    let request = Request::post("/api/v1/releases.create")
        .header("x-api-key", API_KEY)
        .body(Body::from("{}"))
        .unwrap();
    let (status, answer) = TestApp::call(&app.management, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().contains("missing field"),
        "{answer}"
    );
}

#[tokio::test]
async fn set_active_and_delete_rules() {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let release = app.create_release(&builtin).await;
    let zip = web_bundle("other app");
    let (_, other) = app
        .upload(&[
            ("app_id", Part::Text("com.other.app")),
            ("version_name", Part::Text("9")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    let other = other["bundle"]["id"].as_str().unwrap().to_string();

    let (status, body) = app.set_active(&release, &other, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = app
        .set_active("0123456789abcdef01234567", &builtin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .set_active(&release, &builtin, Some("no spaces allowed"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, body) = app
        .post_json("/api/v1/bundles.delete", json!({"bundle_id": builtin}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(&release),
        "names the release: {body}"
    );

    let (status, _) = app
        .post_json("/api/v1/bundles.delete", json!({"bundle_id": other}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.files_in("blobs").len(),
        1,
        "the deleted bundle's file is gone"
    );
    let (status, _) = app
        .post_json("/api/v1/releases.delete", json!({"release_id": release}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .post_json("/api/v1/releases.delete", json!({"release_id": release}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .post_json(
            "/api/v1/releases.update",
            json!({"release_id": release, "release_date": "yesterday"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn encrypted_upload_serves_the_uploaders_checksum() {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let release = app.create_release(&builtin).await;
    let ciphertext: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 256) as u8).collect();
    let encrypted_checksum = "ab".repeat(256);
    let (status, body) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1.1.0")),
            (
                "session_key",
                Part::Text("MTIzNDU2Nzg5MDEyMzQ1Ng==:c2Vzc2lvbmtleQ=="),
            ),
            ("checksum", Part::Text(&encrypted_checksum)),
            ("key_id", Part::Text("MIIBCgKCAQEAuQ5M2n3x")),
            ("bundle", Part::File(&ciphertext)),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["bundle"]["sha256"],
        sha256_hex(&ciphertext),
        "own storage guard"
    );
    assert_eq!(body["bundle"]["encrypted"], true);
    let id = body["bundle"]["id"].as_str().unwrap().to_string();
    app.set_active(&release, &id, None).await;

    let mut device = device_body("builtin", "8.51.14");
    device["key_id"] = json!("MIIBCgKCAQEAuQ5M2n3x");
    let answer = app.check(&device).await;
    assert_update_answer(&answer);
    assert_eq!(answer["checksum"], encrypted_checksum);
    assert_eq!(
        answer["session_key"],
        "MTIzNDU2Nzg5MDEyMzQ1Ng==:c2Vzc2lvbmtleQ=="
    );
    device["key_id"] = json!("AnotherKeyIdXXXXXXXX");
    let answer = app.check(&device).await;
    assert_eq!(answer["error"], "key_id_mismatch");
}

#[tokio::test]
async fn concurrent_uploads_of_one_version_have_exactly_one_winner() {
    let app = TestApp::new();
    let zips: Vec<Vec<u8>> = (0..8).map(|i| web_bundle(&format!("racer {i}"))).collect();
    let forms: Vec<Form> = zips
        .iter()
        .map(|zip| {
            vec![
                ("bundle", Part::File(zip)),
                ("app_id", Part::Text(APP_ID)),
                ("version_name", Part::Text("3.0.0")),
            ]
        })
        .collect();
    let uploads = forms.iter().map(|form| app.upload(form));
    let results = futures_util::future::join_all(uploads).await;
    let winners = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::OK)
        .count();
    let conflicts = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CONFLICT)
        .count();
    assert_eq!((winners, conflicts), (1, 7), "{results:?}");
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    assert_eq!(bundles["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.files_in("blobs").len(),
        1,
        "losers leave no stored file"
    );
    assert!(app.files_in("staging").is_empty());
}

#[tokio::test]
async fn records_owned_by_kubernetes_resources_are_read_only_here() {
    use capgo_server::catalog::DesiredRelease;
    use capgo_server::domain::{ChannelName, Platform, RecordId, ReleaseKey, ResourceRef};

    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let next = app.upload_bundle("1.0.1").await;
    let owner = ResourceRef::new("Release", "apps", "shop-android");
    let desired = DesiredRelease {
        key: ReleaseKey {
            platform: Platform::Android,
            app_id: APP_ID.into(),
            version_name: "2.0.0".into(),
            version_code: "20".into(),
        },
        builtin_bundle_id: RecordId::parse(&builtin, "id").unwrap(),
        channels: [(
            ChannelName::default_channel(),
            RecordId::parse(&next, "id").unwrap(),
        )]
        .into(),
        owner: owner.clone(),
        adopt: false,
    };
    let (owned, written) = app.state.catalog.apply_release(&desired).await.unwrap();
    assert!(written);
    let (_, written_again) = app.state.catalog.apply_release(&desired).await.unwrap();
    assert!(!written_again, "an unchanged resource writes nothing");
    let rest_made = app.create_release(&builtin).await;

    let (_, list) = app.get("/api/v1/releases.list").await;
    let shown = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == owned.id.as_str())
        .unwrap();
    assert_eq!(shown["owner"], "Release apps/shop-android");
    let id = owned.id.to_string();
    let attempts = [
        (
            "/api/v1/releases.set-active",
            json!({"release_id": id, "bundle_id": builtin}),
        ),
        (
            "/api/v1/releases.update",
            json!({"release_id": id, "release_date": "2026-01-01T00:00:00Z"}),
        ),
        ("/api/v1/releases.delete", json!({"release_id": id})),
    ];
    for (path, body) in attempts {
        let (status, answer) = app.post_json(path, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{path}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("Release apps/shop-android"),
            "{answer}"
        );
    }
    let (status, _) = app.set_active(&rest_made, &next, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "records made through the API stay editable"
    );
    let still = app.state.catalog.release(&id).await.unwrap();
    assert_eq!(
        still.channels, desired.channels,
        "the refused calls changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promotes_uploads_and_checks_at_once_leave_a_consistent_catalog() {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    // Every check comes from one address: no rate limit here.
    let app = Arc::new(TestApp::with_env(&[("LIMIT_REQUEST_PER_MINUTE", "0")]));
    let builtin = app.upload_bundle("1.0.0").await;
    let first = app.upload_bundle("1.1.0").await;
    let second = app.upload_bundle("1.2.0").await;
    let release = app.create_release(&builtin).await;
    assert_eq!(
        app.set_active(&release, &first, None).await.0,
        StatusCode::OK
    );
    let (_, listed) = app.get("/api/v1/bundles.list").await;
    // version → (id, checksum devices must get with it)
    let expected: HashMap<String, (String, String)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let field = |name: &str| b[name].as_str().unwrap().to_string();
            (field("version_name"), (field("id"), field("checksum")))
        })
        .collect();
    let expected = Arc::new(expected);

    let done = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicUsize::new(0));
    let checkers: Vec<_> = (0..4)
        .map(|_| {
            let (app, expected, done, answers) =
                (app.clone(), expected.clone(), done.clone(), answers.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::SeqCst) {
                    let (status, answer) = app
                        .device_post("/updates", device_body("1.0.0", "8.51.14").to_string())
                        .await;
                    assert_eq!(status, StatusCode::OK);
                    let version = answer["version"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{answer}"));
                    assert!(version == "1.1.0" || version == "1.2.0", "{answer}");
                    let (id, checksum) = &expected[version];
                    // Never a mix of two bundles: version, checksum and URL agree.
                    assert_eq!(answer["checksum"], checksum.as_str(), "{answer}");
                    assert!(
                        answer["url"].as_str().unwrap().contains(id.as_str()),
                        "{answer}"
                    );
                    answers.fetch_add(1, Ordering::SeqCst);
                    // A cached answer completes without yielding: let the writers run.
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let promoter = {
        let (app, release, first, second) =
            (app.clone(), release.clone(), first.clone(), second.clone());
        tokio::spawn(async move {
            for i in 0..100 {
                let target = if i % 2 == 0 { &second } else { &first };
                let (status, body) = app.set_active(&release, target, None).await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
        })
    };
    let uploader = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                app.upload_bundle(&format!("2.0.{i}")).await;
            }
        })
    };
    promoter.await.unwrap();
    uploader.await.unwrap();
    done.store(true, Ordering::SeqCst);
    for checker in checkers {
        checker.await.unwrap();
    }
    assert!(answers.load(Ordering::SeqCst) > 0);
    // The last promote (i = 99) chose `first`, and a check now says so.
    let (_, releases) = app.get("/api/v1/releases.list").await;
    assert_eq!(
        releases["data"][0]["channels"]["production"],
        first.as_str()
    );
    let (_, answer) = app
        .device_post("/updates", device_body("1.0.0", "8.51.14").to_string())
        .await;
    assert_eq!(answer["version"], "1.1.0");
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    assert_eq!(bundles["data"].as_array().unwrap().len(), 23);
    assert_eq!(app.files_in("blobs").len(), 23);
    assert!(app.files_in("staging").is_empty());
}
