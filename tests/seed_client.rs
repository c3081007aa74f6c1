//! The seed's web client (tanapoln/capgo-server `client/src/client/api.ts`), replayed through
//! the management router call by call as a browser encodes it: its methods and paths, its
//! headers (an `x-api-key` and no Content-Type of its own, so `text/plain;charset=UTF-8` for
//! `JSON.stringify` bodies and a browser-made boundary for `FormData`), and every field it
//! reads, with the type it reads it as. Also the seed's UI paths, and scripts' `curl -d`.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// What `fetch(url, {method, headers, body: JSON.stringify(req)})` sends: the browser adds this
/// Content-Type for a string body.
const BROWSER_TEXT: &str = "text/plain;charset=UTF-8";
/// What `curl -d '{…}'` sends.
const CURL_FORM: &str = "application/x-www-form-urlencoded";
const BROWSER_BOUNDARY: &str = "----WebKitFormBoundaryu7oxE5ZJ3sVQZ8nT";

/// `callApi(method, action, body)` with `getHTTPHeaders()`: the API key, and a Content-Type
/// only when the browser adds one for the body.
async fn call_api(
    app: &TestApp,
    method: Method,
    action: &str,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("/api/v1/{action}"))
        .header("x-api-key", API_KEY);
    let body = match body {
        Some((content_type, bytes)) => {
            request = request.header("content-type", content_type);
            Body::from(bytes)
        }
        None => Body::empty(),
    };
    let (status, value) = TestApp::call(&app.management, request.body(body).unwrap()).await;
    // The client calls `resp.json()` on every answer, errors included.
    assert!(
        value.is_object(),
        "{action}: the answer must be a JSON object: {value}"
    );
    (status, value)
}

/// `JSON.stringify(req)` as the client sends it.
async fn post_text(app: &TestApp, action: &str, body: Value) -> (StatusCode, Value) {
    call_api(
        app,
        Method::POST,
        action,
        Some((BROWSER_TEXT, body.to_string().into_bytes())),
    )
    .await
}

/// The client's `FormData`, in its order: `bundle` (the File, with the user's file name),
/// `app_id`, `version_name`, `description` (`""` when left empty), as Chromium encodes it.
fn browser_form_data(zip: &[u8], version: &str, description: &str) -> Vec<u8> {
    let mut body = Vec::new();
    let b = BROWSER_BOUNDARY;
    body.extend_from_slice(
        format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"www {version}.zip\"\r\n\
             Content-Type: application/zip\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(zip);
    for (name, value) in [
        ("app_id", APP_ID),
        ("version_name", version),
        ("description", description),
    ] {
        body.extend_from_slice(
            format!("\r\n--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
                .as_bytes(),
        );
    }
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    body
}

async fn upload_bundle(app: &TestApp, version: &str, description: &str) -> String {
    let zip = web_bundle(version);
    let (status, answer) = call_api(
        app,
        Method::POST,
        "bundles.upload",
        Some((
            &format!("multipart/form-data; boundary={BROWSER_BOUNDARY}"),
            browser_form_data(&zip, version, description),
        )),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["message"].is_string(), "{answer}");
    assert_eq!(answer["bundle"]["sha256"], sha256_hex(&zip));
    answer["bundle"]["id"].as_str().unwrap().to_string()
}

fn is_id(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The bundles page: `data[]` of `{id, app_id, version_name, description, crc_checksum,
/// public_download_url, created_at}`; `description !== ""`, the URL as a link, `created_at`
/// printed as is.
async fn list_bundles(app: &TestApp) -> Vec<Value> {
    let (status, answer) = call_api(app, Method::GET, "bundles.list", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let data = answer["data"].as_array().expect("data is an array").clone();
    for bundle in &data {
        assert!(is_id(&bundle["id"]), "{bundle}");
        for key in [
            "app_id",
            "version_name",
            "description",
            "crc_checksum",
            "created_at",
        ] {
            assert!(bundle[key].is_string(), "{key} must be a string: {bundle}");
        }
        let url = bundle["public_download_url"].as_str().unwrap();
        assert!(
            url.starts_with("http://") || url.starts_with("https://"),
            "{url}"
        );
        let crc = bundle["crc_checksum"].as_str().unwrap();
        assert!(
            crc.len() == 8 && crc.bytes().all(|b| b.is_ascii_hexdigit()),
            "{crc}"
        );
    }
    data
}

/// The releases page: `platform` compared with "ios"/"android", `version_name.includes()`,
/// `version_code.localeCompare()` (strings), `release_date` a string or null, ids compared
/// with `===` against bundle ids, `active_bundle_id` falsy when none.
async fn list_releases(app: &TestApp) -> Vec<Value> {
    let (status, answer) = call_api(app, Method::GET, "releases.list", None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let data = answer["data"].as_array().expect("data is an array").clone();
    for release in &data {
        assert!(
            is_id(&release["id"]) && is_id(&release["builtin_bundle_id"]),
            "{release}"
        );
        assert!(["ios", "android"].contains(&release["platform"].as_str().unwrap()));
        for key in ["app_id", "version_name", "version_code", "created_at"] {
            assert!(
                release[key].is_string(),
                "{key} must be a string: {release}"
            );
        }
        assert!(
            release["release_date"].is_string() || release["release_date"].is_null(),
            "{release}"
        );
        assert!(
            is_id(&release["active_bundle_id"]) || release["active_bundle_id"].is_null(),
            "{release}"
        );
    }
    data
}

#[tokio::test]
async fn the_seed_clients_calls_work_as_it_encodes_them() {
    let app = TestApp::new();

    // getOAuth2Config: no auth headers; `{issuer, client_id}`, empty without OIDC (the login
    // page then hides the OAuth button).
    let request = Request::get("/apipublic/v1/oauth2.config")
        .body(Body::empty())
        .unwrap();
    let (status, config) = TestApp::call(&app.management, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["issuer"], "");
    assert_eq!(config["client_id"], "");

    let builtin = upload_bundle(&app, "1.0.0", "").await;
    let next = upload_bundle(&app, "1.0.1", "hot fix").await;
    let bundles = list_bundles(&app).await;
    assert_eq!(bundles.len(), 2);
    let described = bundles.iter().find(|b| b["id"] == next.as_str()).unwrap();
    assert_eq!(described["description"], "hot fix");
    let plain = bundles
        .iter()
        .find(|b| b["id"] == builtin.as_str())
        .unwrap();
    assert_eq!(plain["description"], "", "an empty description is \"\"");

    // createRelease: the client's field order, all strings.
    let (status, answer) = post_text(
        &app,
        "releases.create",
        json!({"platform": "android", "app_id": APP_ID, "version_name": "1.0.0",
               "version_code": "10", "builtin_bundle_id": builtin}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let releases = list_releases(&app).await;
    let release_id = releases[0]["id"].as_str().unwrap().to_string();
    assert_eq!(releases[0]["builtin_bundle_id"], builtin.as_str());
    assert_eq!(releases[0]["release_date"], Value::Null);
    assert_eq!(releases[0]["active_bundle_id"], Value::Null);

    // updateRelease: dayjs' toISOString().
    let (status, answer) = post_text(
        &app,
        "releases.update",
        json!({"release_id": release_id, "release_date": "2024-09-21T05:12:34.567Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        list_releases(&app).await[0]["release_date"],
        "2024-09-21T05:12:34.567Z"
    );

    // setReleaseActiveBundle, then a device of that build gets the bundle.
    let (status, answer) = post_text(
        &app,
        "releases.set-active",
        json!({"release_id": release_id, "bundle_id": next}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        list_releases(&app).await[0]["active_bundle_id"],
        next.as_str()
    );
    let answer = app.check(&device_body("builtin", "8.51.14")).await;
    assert_eq!(answer["version"], "1.0.1", "{answer}");

    // deleteRelease.
    let (status, answer) =
        post_text(&app, "releases.delete", json!({"release_id": release_id})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(list_releases(&app).await.is_empty());

    // Errors are JSON with `error` (the client shows `error ?? message`).
    let (status, answer) = post_text(
        &app,
        "releases.set-active",
        json!({"release_id": release_id, "bundle_id": next}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        answer["error"].as_str().unwrap().contains(&release_id),
        "{answer}"
    );
}

#[tokio::test]
async fn release_update_keeps_the_date_unless_told_and_scripts_bodies_are_read_as_json() {
    let app = TestApp::new();
    let builtin = upload_bundle(&app, "1.0.0", "").await;
    let release = app.create_release(&builtin).await;
    let date = "2026-01-31T09:00:00Z";
    let (status, _) = post_text(
        &app,
        "releases.update",
        json!({"release_id": release, "release_date": date}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A script that leaves release_date out: kept, as the seed did.
    let (status, answer) = post_text(&app, "releases.update", json!({"release_id": release})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["release"]["release_date"], date);
    assert_eq!(list_releases(&app).await[0]["release_date"], date);
    // `null` clears it (the seed could not clear a date).
    let (status, answer) = post_text(
        &app,
        "releases.update",
        json!({"release_id": release, "release_date": null}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["release"]["release_date"], Value::Null);
    assert_eq!(list_releases(&app).await[0]["release_date"], Value::Null);
    // An unknown release is still refused when nothing would change.
    let (status, _) = post_text(
        &app,
        "releases.update",
        json!({"release_id": "0123456789abcdef01234567"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // `curl -d '{…}'` (form type), and no Content-Type at all.
    let body = json!({"release_id": release, "release_date": date}).to_string();
    let (status, answer) = call_api(
        &app,
        Method::POST,
        "releases.update",
        Some((CURL_FORM, body.clone().into_bytes())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let request = Request::post("/api/v1/releases.update")
        .header("x-api-key", API_KEY)
        .body(Body::from(body))
        .unwrap();
    assert_eq!(
        TestApp::call(&app.management, request).await.0,
        StatusCode::OK
    );

    // A body that is not JSON is still refused, saying so, whatever its type.
    for (content_type, raw, expected) in [
        (CURL_FORM, "release_id=abc", "not JSON"),
        (BROWSER_TEXT, "{\"release_id\": ", "not JSON"),
        ("application/json", "", "empty"),
        (BROWSER_TEXT, "  ", "empty"),
        (BROWSER_TEXT, "[]", "invalid JSON body"),
        (BROWSER_TEXT, "{\"release_id\": 5}", "invalid type"),
        (
            BROWSER_TEXT,
            "{\"release_id\": \"x\", \"release_date\": \"tomorrow\"}",
            "RFC 3339",
        ),
    ] {
        let (status, answer) = call_api(
            &app,
            Method::POST,
            "releases.update",
            Some((content_type, raw.as_bytes().to_vec())),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw:?}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(expected),
            "{raw:?}: {answer}"
        );
    }
}

async fn get_page(
    app: &TestApp,
    method: Method,
    path: &str,
) -> (StatusCode, Option<String>, Option<String>, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = app.management.clone().oneshot(request).await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (content_type, csp) = (header("content-type"), header("content-security-policy"));
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, content_type, csp, body)
}

#[tokio::test]
async fn every_ui_path_the_seed_served_serves_the_page_with_the_same_policy() {
    let app = TestApp::new();
    let (status, _, index_csp, index) = get_page(&app, Method::GET, "/ui/").await;
    assert_eq!(status, StatusCode::OK);
    let index_csp = index_csp.expect("the page has a CSP");
    assert!(index_csp.contains("script-src 'self'") && !index_csp.contains("unsafe"));
    for path in [
        "/ui/app",
        "/ui/app/",
        "/ui/login",
        "/ui/login/oauth-callback",
        "/ui/login/oauth-callback?code=abc&state=xyz",
        "/ui/app/release/create",
        "/ui/app/release/66ed3030a1b2c3d4e5000065/update",
        "/ui/app/upload-bundle",
    ] {
        for method in [Method::GET, Method::HEAD] {
            let (status, content_type, csp, body) = get_page(&app, method.clone(), path).await;
            assert_eq!(status, StatusCode::OK, "{method} {path}");
            assert_eq!(
                content_type.as_deref(),
                Some("text/html; charset=utf-8"),
                "{path}"
            );
            assert_eq!(
                csp.as_deref(),
                Some(index_csp.as_str()),
                "{path}: the same policy"
            );
            if method == Method::GET {
                assert_eq!(body, index, "{path}");
            }
        }
    }
    // The page loads its assets by absolute paths, so it works from any depth.
    let page = String::from_utf8(index).unwrap();
    for asset in ["src=\"/ui/app.js\"", "href=\"/ui/app.css\""] {
        assert!(page.contains(asset), "{asset}");
    }
    // A file that does not exist is a 404, not the page.
    for path in ["/ui/assets/index-4f2a.js", "/ui/app/missing.css"] {
        assert_eq!(
            get_page(&app, Method::GET, path).await.0,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        get_page(&app, Method::GET, "/ui/app.js").await.0,
        StatusCode::OK
    );
}
