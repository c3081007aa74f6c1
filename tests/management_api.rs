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
        json!({"production": {"bundle_id": builtin, "because": "builtin", "since": null}}),
        "nothing assigned: production serves the builtin bundle"
    );
    app.set_active(&release, &next, Some("beta")).await;
    let (_, list) = app.get("/api/v1/releases.list").await;
    let beta_since = serving(&list)["beta"]["since"].clone();
    assert!(beta_since.is_string(), "the promote's time: {list}");
    assert_eq!(
        serving(&list),
        json!({
            "beta": {"bundle_id": next, "because": "assigned", "since": beta_since},
            "production": {"bundle_id": builtin, "because": "builtin", "since": null},
        })
    );
    app.set_active(&release, &next, None).await;
    app.set_active(&release, &builtin, Some("beta")).await;
    let (_, list) = app.get("/api/v1/releases.list").await;
    assert_eq!(serving(&list)["production"]["because"], "assigned");
    assert!(serving(&list)["production"]["since"].is_string());
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
    app.assert_nothing_stored();
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
    assert!(app.files_in("blobs/bundles").is_empty());
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
    assert_eq!(app.files_in("blobs/bundles").len(), 1);
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
        app.files_in("blobs/bundles").len(),
        1,
        "the deleted bundle's zip is gone"
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
        app.files_in("blobs/bundles").len(),
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
        rollouts: Default::default(),
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

#[tokio::test]
async fn a_resource_with_a_rollout_plan_rolls_out_its_changes_instead_of_switching() {
    use capgo_server::catalog::{DesiredRelease, RolloutAction};
    use capgo_server::domain::rollout::RolloutSpec;
    use capgo_server::domain::{ChannelName, Platform, RecordId, ReleaseKey, ResourceRef};

    let app = TestApp::new();
    let id = |text: &str| RecordId::parse(text, "id").unwrap();
    let builtin = id(&app.upload_bundle("1.0.0").await);
    let stable = id(&app.upload_bundle("1.0.1").await);
    let canary = id(&app.upload_bundle("1.1.0").await);
    let other = id(&app.upload_bundle("1.2.0").await);
    let production = ChannelName::default_channel();
    let plan = RolloutSpec {
        steps: Some(vec![50.0, 100.0]),
        ..Default::default()
    }
    .plan()
    .unwrap();
    let desired = |bundle: &RecordId, with_plan: bool| DesiredRelease {
        key: ReleaseKey {
            platform: Platform::Android,
            app_id: APP_ID.into(),
            version_name: "3.0.0".into(),
            version_code: "30".into(),
        },
        builtin_bundle_id: builtin.clone(),
        channels: [(production.clone(), bundle.clone())].into(),
        rollouts: if with_plan {
            [(production.clone(), plan.clone())].into()
        } else {
            Default::default()
        },
        owner: ResourceRef::new("Release", "apps", "shop"),
        adopt: false,
    };
    let catalog = &app.state.catalog;
    let (record, _) = catalog
        .apply_release(&desired(&stable, true))
        .await
        .unwrap();
    assert_eq!(
        record.channels[&production], stable,
        "a new record is assigned at once"
    );
    let rollout = || async {
        catalog
            .rollout(&record.id, &production)
            .await
            .unwrap()
            .expect("a rollout")
    };

    // Git names the canary: a rollout starts, the channel keeps its bundle.
    let (changed, written) = catalog
        .apply_release(&desired(&canary, true))
        .await
        .unwrap();
    assert!(written);
    assert_eq!(changed.channels[&production], stable);
    let started = rollout().await;
    assert_eq!(
        (&started.stable_bundle_id, &started.canary_bundle_id),
        (&stable, &canary)
    );
    assert_eq!(
        started.owner,
        Some(ResourceRef::new("Release", "apps", "shop"))
    );
    let (_, written) = catalog
        .apply_release(&desired(&canary, true))
        .await
        .unwrap();
    assert!(
        !written,
        "an unchanged resource writes nothing during its rollout"
    );
    let (status, answer) = app
        .post_json(
            "/api/v1/rollouts.start",
            json!({"release_id": record.id.as_str(), "bundle_id": other.as_str()}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");

    // Git names another bundle mid-rollout: the rollout is replaced.
    catalog.apply_release(&desired(&other, true)).await.unwrap();
    let replaced = rollout().await;
    assert_ne!(replaced.id, started.id);
    assert_eq!(replaced.canary_bundle_id, other);

    // Rolled back (here by hand): not started again for the same bundle.
    catalog
        .act_on_rollout(
            record.id.as_str(),
            &production,
            RolloutAction::Abort,
            "test",
        )
        .await
        .unwrap();
    let (kept, written) = catalog.apply_release(&desired(&other, true)).await.unwrap();
    assert!(!written, "a rolled-back canary is not retried");
    assert_eq!(kept.channels[&production], stable);
    assert_eq!(rollout().await.id, replaced.id);

    // Another bundle starts a new rollout; dropping the plan switches at once and ends it.
    catalog
        .apply_release(&desired(&canary, true))
        .await
        .unwrap();
    assert!(rollout().await.progress.phase.is_active());
    let (switched, _) = catalog
        .apply_release(&desired(&canary, false))
        .await
        .unwrap();
    assert_eq!(switched.channels[&production], canary);
    let ended = rollout().await;
    assert_eq!(ended.progress.phase.as_str(), "rolled_back");
    assert!(
        ended
            .progress
            .phase
            .reason()
            .unwrap()
            .contains("Release apps/shop"),
        "{ended:?}"
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
    assert_eq!(app.files_in("blobs/bundles").len(), 23);
    assert!(app.files_in("staging").is_empty());
}

// ----- channels, device overrides, unregistered builds -----------------------------------

const OTHER_DEVICE: &str = "00000000-0000-4000-8000-000000000002";

/// Release android 1.0.0 (10) with builtin 1.0.0; production serves 1.0.1, beta 1.1.0.
/// Returns the release id.
async fn channel_catalog(app: &TestApp) -> String {
    let builtin = app.upload_bundle("1.0.0").await;
    let next = app.upload_bundle("1.0.1").await;
    let beta = app.upload_bundle("1.1.0").await;
    let release = app.create_release(&builtin).await;
    assert_eq!(
        app.set_active(&release, &next, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.set_active(&release, &beta, Some("beta")).await.0,
        StatusCode::OK
    );
    release
}

/// The channel `name` of `channels.list?app_id=APP_ID`.
async fn listed_channel(app: &TestApp, name: &str) -> serde_json::Value {
    let (status, list) = app
        .get(&format!("/api/v1/channels.list?app_id={APP_ID}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == name)
        .unwrap_or_else(|| panic!("no channel {name} in {list}"))
        .clone()
}

/// Each `(path, body)` is refused with `status` and an error containing `text`.
async fn assert_refused(app: &TestApp, cases: &[(&str, serde_json::Value, StatusCode, &str)]) {
    for (path, body, expected_status, expected_text) in cases {
        let (status, answer) = app.post_json(path, body.clone()).await;
        assert_eq!(status, *expected_status, "{path} {body} -> {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected_text),
            "{path} {body}: expected {expected_text:?} in {answer}"
        );
    }
}

/// Each GET `path` is refused with `status` and an error containing `text`.
async fn assert_get_refused(app: &TestApp, cases: &[(&str, StatusCode, &str)]) {
    for (path, expected_status, expected_text) in cases {
        let (status, answer) = app.get(path).await;
        assert_eq!(status, *expected_status, "{path} -> {answer}");
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(expected_text),
            "{path}: expected {expected_text:?} in {answer}"
        );
    }
}

#[tokio::test]
async fn channels_list_and_update_shapes() {
    let app = TestApp::new();
    channel_catalog(&app).await;

    let production = listed_channel(&app, "production").await;
    assert_eq!(
        production,
        json!({
            "app_id": APP_ID, "channel": "production", "id": production["id"], "configured": false,
            "settings": {"allow_ios": true, "allow_android": true, "allow_electron": true,
                         "allow_emulator": true, "allow_device": true, "allow_dev_build": true,
                         "allow_prod_build": true, "update_policy": "none",
                         "block_under_native": false, "allow_device_self_set": true},
            "owner": null, "forced_devices": 0, "chosen_by_devices": 0, "updated_at": null,
        }),
        "defaults, as every channel had before it had settings"
    );
    assert!(production["id"].is_i64(), "{production}");
    assert!(listed_channel(&app, "beta").await["id"].is_i64());
    let (_, all) = app.get("/api/v1/channels.list").await;
    assert_eq!(
        all["data"].as_array().unwrap().len(),
        2,
        "without app_id: every known app's channels: {all}"
    );

    let (status, body) = app
        .post_json(
            "/api/v1/channels.update",
            json!({"app_id": APP_ID, "channel": "production", "allow_emulator": false,
                   "update_policy": "major"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Channel updated successfully");
    let shown = &body["channel"];
    assert_eq!(shown["configured"], true);
    assert_eq!(shown["settings"]["allow_emulator"], false);
    assert_eq!(shown["settings"]["update_policy"], "major");
    assert_eq!(shown["settings"]["allow_ios"], true, "fields left out keep");
    assert!(
        shown["updated_at"].as_str().unwrap().ends_with('Z'),
        "{shown}"
    );
    // A second change keeps what the first set.
    let (status, body) = app
        .post_json(
            "/api/v1/channels.update",
            json!({"app_id": APP_ID, "channel": "production", "allow_ios": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed = listed_channel(&app, "production").await;
    assert_eq!(listed["settings"]["allow_ios"], false);
    assert_eq!(listed["settings"]["allow_emulator"], false);
    assert_eq!(listed["settings"]["update_policy"], "major");
    assert_eq!(listed["id"], production["id"], "same channel, same id");

    // A channel no release assigns is created by configuring it (with a numeric id).
    let (status, body) = app
        .post_json(
            "/api/v1/channels.update",
            json!({"app_id": APP_ID, "channel": "qa"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let qa = listed_channel(&app, "qa").await;
    assert!(qa["id"].is_i64(), "{qa}");
    assert_eq!(qa["configured"], true);

    let (_, audit) = app.get("/api/v1/audit.list").await;
    assert!(
        audit["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "channels.update"
                && e["target"] == format!("channel production of {APP_ID}")),
        "{audit}"
    );
}

#[tokio::test]
async fn a_channel_setting_is_seen_by_the_very_next_update_check() {
    let app = TestApp::new();
    channel_catalog(&app).await;
    let mut emulator = device_body("builtin", "8.51.14");
    emulator["is_emulator"] = json!(true);
    // Answered (and cached) before the change.
    assert_eq!(app.check(&emulator).await["version"], "1.0.1");

    let update = |allowed: bool| json!({"app_id": APP_ID, "channel": "production", "allow_emulator": allowed});
    let (status, body) = app
        .post_json("/api/v1/channels.update", update(false))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let answer = app.check(&emulator).await;
    assert_eq!(
        (&answer["error"], &answer["kind"]),
        (&json!("disable_emulator"), &json!("blocked")),
        "{answer}"
    );
    assert_eq!(
        app.check(&device_body("builtin", "8.51.14")).await["version"],
        "1.0.1",
        "physical devices are still served"
    );

    let (status, _) = app.post_json("/api/v1/channels.update", update(true)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.check(&emulator).await["version"], "1.0.1");
}

#[tokio::test]
async fn channel_update_bad_input() {
    let app = TestApp::new();
    channel_catalog(&app).await;
    let update = |extra: serde_json::Value| {
        let mut body = json!({"app_id": APP_ID, "channel": "production"});
        for (key, value) in extra.as_object().unwrap() {
            body[key] = value.clone();
        }
        body
    };
    let path = "/api/v1/channels.update";
    let bad = StatusCode::BAD_REQUEST;
    assert_refused(
        &app,
        &[
            (
                path,
                update(json!({"alow_android": false})),
                bad,
                "alow_android",
            ),
            (
                path,
                update(json!({"update_policy": "sometimes"})),
                bad,
                "update_policy",
            ),
            (
                path,
                update(json!({"update_policy": 3})),
                bad,
                "update_policy",
            ),
            (path, update(json!({"allow_ios": "yes"})), bad, "allow_ios"),
            (
                path,
                update(json!({"channel": "no spaces"})),
                bad,
                "channel",
            ),
            (path, update(json!({"channel": "builtin"})), bad, "builtin"),
            (
                path,
                json!({"app_id": APP_ID, "allow_ios": false}),
                bad,
                "channel",
            ),
            (path, json!({"channel": "production"}), bad, "app_id"),
            (
                path,
                update(json!({"app_id": "com example"})),
                bad,
                "app_id",
            ),
            (
                path,
                update(json!({"app_id": "com.unknown.app"})),
                StatusCode::NOT_FOUND,
                "com.unknown.app",
            ),
        ],
    )
    .await;
    let production = listed_channel(&app, "production").await;
    assert_eq!(
        production["configured"], false,
        "refused calls changed nothing"
    );
    assert_eq!(production["settings"]["allow_android"], true);
    assert_get_refused(
        &app,
        &[("/api/v1/channels.list?app_id=com%20example", bad, "app_id")],
    )
    .await;
}

#[tokio::test]
async fn channels_and_devices_managed_by_a_channel_resource_are_read_only_here() {
    use capgo_server::catalog::DesiredChannel;
    use capgo_server::domain::channel_policy::ChannelRules;
    use capgo_server::domain::{ChannelName, ResourceRef};

    let app = TestApp::new();
    channel_catalog(&app).await;
    let desired = DesiredChannel {
        app_id: APP_ID.into(),
        channel: ChannelName::parse("beta").unwrap(),
        rules: ChannelRules {
            allow_ios: false,
            ..ChannelRules::default()
        },
        devices: vec![OTHER_DEVICE.into()],
        owner: ResourceRef::new("Channel", "apps", "shop-beta"),
        adopt: false,
    };
    assert!(app.state.catalog.apply_channel(&desired).await.unwrap());

    let beta = listed_channel(&app, "beta").await;
    assert_eq!(beta["owner"], "Channel apps/shop-beta");
    assert_eq!(beta["settings"]["allow_ios"], false);
    assert_eq!(beta["forced_devices"], 1);
    let (_, devices) = app
        .get(&format!("/api/v1/devices.list?app_id={APP_ID}"))
        .await;
    assert_eq!(
        devices["data"],
        json!([{"app_id": APP_ID, "device_id": OTHER_DEVICE, "channel": "beta",
                "source": "Channel apps/shop-beta", "forced": true,
                "updated_at": devices["data"][0]["updated_at"]}])
    );

    let conflict = StatusCode::CONFLICT;
    assert_refused(
        &app,
        &[
            (
                "/api/v1/channels.update",
                json!({"app_id": APP_ID, "channel": "beta", "allow_ios": true}),
                conflict,
                "Channel apps/shop-beta",
            ),
            (
                "/api/v1/devices.set-channel",
                json!({"app_id": APP_ID, "channel": "production", "device_id": OTHER_DEVICE}),
                conflict,
                "Channel apps/shop-beta",
            ),
            (
                "/api/v1/devices.unset-channel",
                json!({"app_id": APP_ID, "device_ids": [OTHER_DEVICE]}),
                conflict,
                "Channel apps/shop-beta",
            ),
        ],
    )
    .await;
    assert_eq!(
        listed_channel(&app, "beta").await["settings"]["allow_ios"],
        false
    );
    let (_, after) = app
        .get(&format!("/api/v1/devices.list?app_id={APP_ID}"))
        .await;
    assert_eq!(
        after["data"], devices["data"],
        "the refused calls changed nothing"
    );
    // Channels the resource does not manage stay editable.
    let (status, body) = app
        .post_json(
            "/api/v1/channels.update",
            json!({"app_id": APP_ID, "channel": "production", "allow_ios": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn devices_are_found_put_on_a_channel_listed_and_released() {
    let app = TestApp::new();
    channel_catalog(&app).await;
    let mut event = device_body("1.0.1", "8.51.14");
    event["action"] = json!("set");
    event["custom_id"] = json!("customer-42");
    let (status, answer) = app.device_post("/stats", event.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    for q in ["customer-42", &DEVICE_ID.to_uppercase()] {
        let (status, found) = app
            .get(&format!("/api/v1/devices.find?app_id={APP_ID}&q={q}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        let device = &found["data"][0];
        assert_eq!(device["device_id"], DEVICE_ID, "{q}: {found}");
        assert_eq!(device["custom_id"], "customer-42");
        assert_eq!(device["platform"], "android");
        assert_eq!(device["version_name"], "1.0.1");
        assert!(device["last_seen"].as_str().unwrap().ends_with('Z'));
        assert_eq!(device["override"], serde_json::Value::Null);
    }
    let (_, nobody) = app
        .get(&format!("/api/v1/devices.find?app_id={APP_ID}&q=nobody"))
        .await;
    assert_eq!(nobody["data"], json!([]));

    assert_eq!(
        app.check(&device_body("builtin", "8.51.14")).await["version"],
        "1.0.1"
    );
    let (status, body) = app
        .post_json(
            "/api/v1/devices.set-channel",
            json!({"app_id": APP_ID, "channel": "beta", "device_id": DEVICE_ID}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["device_id"], DEVICE_ID);
    assert_eq!(body["data"][0]["channel"], "beta");
    assert_eq!(body["data"][0]["source"], "api");
    assert_eq!(body["data"][0]["forced"], true);
    assert_eq!(
        app.check(&device_body("builtin", "8.51.14")).await["version"],
        "1.1.0",
        "the very next check follows the override"
    );
    let mut other = device_body("builtin", "8.51.14");
    other["device_id"] = json!(OTHER_DEVICE);
    assert_eq!(app.check(&other).await["version"], "1.0.1", "others stay");

    let (_, found) = app
        .get(&format!(
            "/api/v1/devices.find?app_id={APP_ID}&q=customer-42"
        ))
        .await;
    assert_eq!(found["data"][0]["override"]["channel"], "beta");
    assert_eq!(listed_channel(&app, "beta").await["forced_devices"], 1);

    // A list, with the first id again and in capitals: stored once, lowercased.
    let (status, body) = app
        .post_json(
            "/api/v1/devices.set-channel",
            json!({"app_id": APP_ID, "channel": "production",
                   "device_ids": [OTHER_DEVICE, DEVICE_ID.to_uppercase(), DEVICE_ID]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2, "{body}");
    let (_, listed) = app
        .get(&format!("/api/v1/devices.list?app_id={APP_ID}"))
        .await;
    let listed: Vec<(String, String)> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["device_id"].as_str().unwrap().into(),
                o["channel"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            (OTHER_DEVICE.to_string(), "production".to_string()),
            (DEVICE_ID.to_string(), "production".to_string()),
        ],
        "by device id"
    );

    let (status, body) = app
        .post_json(
            "/api/v1/devices.unset-channel",
            json!({"app_id": APP_ID, "device_ids": [DEVICE_ID]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["removed"], 1);
    let (_, listed) = app
        .get(&format!("/api/v1/devices.list?app_id={APP_ID}"))
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    let (status, body) = app
        .post_json(
            "/api/v1/devices.unset-channel",
            json!({"app_id": APP_ID, "device_id": DEVICE_ID}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains(DEVICE_ID),
        "{body}"
    );

    let (_, audit) = app.get("/api/v1/audit.list").await;
    let targets: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "devices.set-channel")
        .map(|e| e["target"].as_str().unwrap())
        .collect();
    assert!(
        targets.contains(&format!("device {DEVICE_ID} of {APP_ID} -> channel beta").as_str()),
        "{targets:?}"
    );
}

#[tokio::test]
async fn device_routes_bad_input() {
    let app = TestApp::new();
    channel_catalog(&app).await;
    let set = "/api/v1/devices.set-channel";
    let unset = "/api/v1/devices.unset-channel";
    let bad = StatusCode::BAD_REQUEST;
    let too_many: Vec<String> = (0..1001).map(|i| format!("device-{i}")).collect();
    assert_refused(
        &app,
        &[
            (set, json!({"app_id": APP_ID, "device_id": DEVICE_ID}), bad, "channel"),
            (
                set,
                json!({"app_id": APP_ID, "channel": "nightly", "device_id": DEVICE_ID}),
                bad,
                "channel",
            ),
            (
                set,
                json!({"app_id": APP_ID, "channel": "a b", "device_id": DEVICE_ID}),
                bad,
                "channel",
            ),
            (set, json!({"app_id": APP_ID, "channel": "beta"}), bad, "device_ids"),
            (
                set,
                json!({"app_id": APP_ID, "channel": "beta", "device_ids": []}),
                bad,
                "device_ids",
            ),
            (
                set,
                json!({"app_id": APP_ID, "channel": "beta", "device_id": "not valid!"}),
                bad,
                "device_ids",
            ),
            (
                set,
                json!({"app_id": APP_ID, "channel": "beta", "device_ids": too_many}),
                bad,
                "device_ids",
            ),
            (
                set,
                json!({"app_id": APP_ID, "channel": "beta", "devices": [DEVICE_ID]}),
                bad,
                "devices",
            ),
            (
                set,
                json!({"app_id": APP_ID, "channel": "beta", "device_ids": DEVICE_ID}),
                bad,
                "device_ids",
            ),
            (
                set,
                json!({"app_id": "com example", "channel": "beta", "device_id": DEVICE_ID}),
                bad,
                "app_id",
            ),
            (
                set,
                json!({"app_id": "com.unknown.app", "channel": "production", "device_id": DEVICE_ID}),
                StatusCode::NOT_FOUND,
                "com.unknown.app",
            ),
            (unset, json!({"app_id": APP_ID}), bad, "device_ids"),
            (
                unset,
                json!({"app_id": APP_ID, "device_id": "not valid!"}),
                bad,
                "device_ids",
            ),
            (
                unset,
                json!({"app_id": APP_ID, "channel": "beta", "device_id": DEVICE_ID}),
                bad,
                "channel",
            ),
            (unset, json!({"device_id": DEVICE_ID}), bad, "app_id"),
        ],
    )
    .await;
    let (_, listed) = app
        .get(&format!("/api/v1/devices.list?app_id={APP_ID}"))
        .await;
    assert_eq!(listed["data"], json!([]), "refused calls stored nothing");

    let long = "x".repeat(37);
    assert_get_refused(
        &app,
        &[
            ("/api/v1/devices.list", bad, "app_id"),
            ("/api/v1/devices.list?app_id=com%20example", bad, "app_id"),
            (&format!("/api/v1/devices.find?app_id={APP_ID}"), bad, "q"),
            (
                &format!("/api/v1/devices.find?app_id={APP_ID}&q="),
                bad,
                "q",
            ),
            (
                &format!("/api/v1/devices.find?app_id={APP_ID}&q={long}"),
                bad,
                "q",
            ),
            ("/api/v1/devices.find?q=abc", bad, "app_id"),
        ],
    )
    .await;
}

#[tokio::test]
async fn unregistered_builds_are_listed_until_registered() {
    let app = TestApp::new();
    channel_catalog(&app).await;
    let newer_build = |device_id: &str| {
        let mut body = device_body("builtin", "8.51.14");
        body["device_id"] = json!(device_id);
        body["version_build"] = json!("2.0.0");
        body["version_code"] = json!("20");
        body
    };
    let answer = app.check(&newer_build(DEVICE_ID)).await;
    assert_eq!(
        (&answer["error"], &answer["kind"]),
        (&json!("no_release"), &json!("blocked")),
        "{answer}"
    );
    app.check(&newer_build(DEVICE_ID)).await;
    app.check(&newer_build(OTHER_DEVICE)).await;

    let (status, builds) = app.get("/api/v1/builds.unregistered").await;
    assert_eq!(status, StatusCode::OK, "{builds}");
    let build = &builds["data"][0];
    assert_eq!(
        build,
        &json!({"platform": "android", "app_id": APP_ID, "version_name": "2.0.0",
                "version_code": "20", "devices": 2, "checks": 3,
                "first_seen": build["first_seen"], "last_seen": build["last_seen"]}),
        "{builds}"
    );
    for time in ["first_seen", "last_seen"] {
        assert!(build[time].as_str().unwrap().ends_with('Z'), "{build}");
    }
    assert_eq!(builds["data"].as_array().unwrap().len(), 1, "{builds}");
    let (_, mine) = app
        .get(&format!("/api/v1/builds.unregistered?app_id={APP_ID}"))
        .await;
    assert_eq!(mine["data"], builds["data"]);
    let (_, others) = app
        .get("/api/v1/builds.unregistered?app_id=com.other.app")
        .await;
    assert_eq!(others["data"], json!([]));
    assert_get_refused(
        &app,
        &[(
            "/api/v1/builds.unregistered?app_id=com%20example",
            StatusCode::BAD_REQUEST,
            "app_id",
        )],
    )
    .await;

    // Registering the build (what the UI's "Register this build" sends) removes it.
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    let newest = bundles["data"][0]["id"].as_str().unwrap();
    let (status, body) = app
        .post_json(
            "/api/v1/releases.create",
            json!({"platform": "android", "app_id": APP_ID, "version_name": "2.0.0",
                   "version_code": "20", "builtin_bundle_id": newest}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, builds) = app.get("/api/v1/builds.unregistered").await;
    assert_eq!(builds["data"], json!([]));
    let answer = app.check(&newer_build(DEVICE_ID)).await;
    assert_ne!(answer["error"], "no_release", "{answer}");
}

#[tokio::test]
async fn bundles_take_a_link_and_a_minimum_native_version() {
    let app = TestApp::new();
    let zip = web_bundle("linked");
    let (status, body) = app
        .upload(&[
            ("app_id", Part::Text(APP_ID)),
            ("version_name", Part::Text("1.2.0")),
            ("link", Part::Text("https://example.com/notes/1.2.0")),
            ("min_update_version", Part::Text("1.1.0")),
            ("bundle", Part::File(&zip)),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["bundle"]["link"], "https://example.com/notes/1.2.0");
    assert_eq!(body["bundle"]["min_update_version"], "1.1.0");
    let plain = app.upload_bundle("1.3.0").await;
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    let of = |id_or_version: &str| {
        bundles["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id_or_version || b["version_name"] == id_or_version)
            .unwrap()
            .clone()
    };
    assert_eq!(of("1.2.0")["link"], "https://example.com/notes/1.2.0");
    assert_eq!(of("1.2.0")["min_update_version"], "1.1.0");
    assert_eq!(of(&plain)["link"], serde_json::Value::Null);
    assert_eq!(of(&plain)["min_update_version"], serde_json::Value::Null);

    let good = web_bundle("ok");
    let cases = [
        ("link", "ftp://example.com/notes", "link"),
        ("link", "notes.html", "link"),
        ("min_update_version", "one point two", "min_update_version"),
        ("min_update_version", "1.2.3.4", "min_update_version"),
    ];
    for (field, value, expected) in cases {
        let (status, body) = app
            .upload(&with(
                form(APP_ID, "9.9.9", &good),
                (field, Part::Text(value)),
            ))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{field}={value}: {body}"
        );
    }
    let (_, bundles) = app.get("/api/v1/bundles.list").await;
    assert_eq!(
        bundles["data"].as_array().unwrap().len(),
        2,
        "refused uploads stored nothing"
    );
}

#[tokio::test]
async fn read_only_tokens_see_channels_devices_and_builds_but_change_nothing() {
    let app = TestApp::new();
    channel_catalog(&app).await;
    let (status, made) = app
        .post_json(
            "/api/v1/tokens.create",
            json!({"name": "dashboard", "scope": "read-only"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let token = made["token"].as_str().unwrap();
    let reads = [
        format!("/api/v1/channels.list?app_id={APP_ID}"),
        format!("/api/v1/devices.list?app_id={APP_ID}"),
        format!("/api/v1/devices.find?app_id={APP_ID}&q={DEVICE_ID}"),
        "/api/v1/builds.unregistered".to_string(),
    ];
    for path in &reads {
        let (status, body) = app.call_as(("x-api-key", token), "GET", path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(body["data"].is_array(), "{path}: {body}");
    }
    let writes = [
        (
            "/api/v1/channels.update",
            json!({"app_id": APP_ID, "channel": "production", "allow_ios": false}),
        ),
        (
            "/api/v1/devices.set-channel",
            json!({"app_id": APP_ID, "channel": "beta", "device_id": DEVICE_ID}),
        ),
        (
            "/api/v1/devices.unset-channel",
            json!({"app_id": APP_ID, "device_id": DEVICE_ID}),
        ),
    ];
    for (path, body) in writes {
        let (status, answer) = app
            .call_as(("x-api-key", token), "POST", path, Some(body))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {answer}");
    }
    assert_eq!(
        listed_channel(&app, "production").await["settings"]["allow_ios"],
        true
    );
}

#[tokio::test]
async fn bundle_details_change_in_place_and_reach_the_next_check() {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let next = app.upload_bundle("1.0.1").await;
    let release = app.create_release(&builtin).await;
    app.set_active(&release, &next, None).await;
    let device = device_body("builtin", "8.51.14");
    assert!(app.check(&device).await.get("link").is_none());

    let (status, body) = app
        .post_json(
            "/api/v1/bundles.update",
            json!({"bundle_id": next, "description": "Faster checkout",
                   "link": "https://example.com/1.0.1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["bundle"]["link"], "https://example.com/1.0.1");
    let answer = app.check(&device).await;
    assert_eq!(
        answer["link"], "https://example.com/1.0.1",
        "seen by the next check"
    );
    assert_eq!(answer["comment"], "Faster checkout");

    // `null` clears, a field left out keeps its value.
    let (status, body) = app
        .post_json(
            "/api/v1/bundles.update",
            json!({"bundle_id": next, "link": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["bundle"]["link"].is_null(), "{body}");
    assert_eq!(body["bundle"]["description"], "Faster checkout");
    assert!(app.check(&device).await.get("link").is_none());

    for (request, names) in [
        (
            json!({"bundle_id": next, "link": "ftp://example.com"}),
            "link",
        ),
        (
            json!({"bundle_id": next, "min_update_version": "soon"}),
            "min_update_version",
        ),
        (
            json!({"bundle_id": next, "description": "x".repeat(5000)}),
            "description",
        ),
        (
            json!({"bundle_id": next, "version_name": "2.0.0"}),
            "version_name",
        ),
    ] {
        let (status, body) = app.post_json("/api/v1/bundles.update", request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{names}: {body}");
        assert!(body["error"].as_str().unwrap().contains(names), "{body}");
    }
    let (status, _) = app
        .post_json(
            "/api/v1/bundles.update",
            json!({"bundle_id": "0123456789abcdef01234567", "description": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, body) = app.get("/api/v1/bundles.list").await;
    let stored = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == next.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        stored["description"], "Faster checkout",
        "refusals changed nothing"
    );
}
