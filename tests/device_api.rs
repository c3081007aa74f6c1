//! The device API through its router: update decisions, cache invalidation, stats,
//! channel_self, rate limiting, downloads, and every malformed body.

mod common;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Request, StatusCode};
use common::*;
use serde_json::{json, Value};
use tower::Layer;

/// A catalog with release android 1.0.0 (10): builtin 1.0.0, and 1.0.1 uploaded (not active).
async fn catalog() -> (TestApp, String, String, String) {
    let app = TestApp::new();
    let builtin = app.upload_bundle("1.0.0").await;
    let next = app.upload_bundle("1.0.1").await;
    let release = app.create_release(&builtin).await;
    (app, release, builtin, next)
}

#[tokio::test]
async fn update_decisions_follow_the_channel() {
    let (app, release, builtin, next) = catalog().await;
    let on_builtin = device_body("builtin", "8.51.14");

    let answer = app.check(&on_builtin).await;
    assert_eq!(
        answer,
        json!({"error": "no_new_version_available", "message": "No new version available", "kind": "up_to_date"})
    );

    app.set_active(&release, &next, None).await;
    let answer = app.check(&on_builtin).await;
    assert_update_answer(&answer);
    assert_eq!(answer["version"], "1.0.1");
    // Since 8.44 a device on its builtin bundle reports the native version instead of "builtin".
    assert_eq!(
        app.check(&device_body("1.0.0", "8.51.14")).await["version"],
        "1.0.1"
    );
    assert_eq!(
        app.check(&device_body("1.0.1", "8.51.14")).await["kind"],
        "up_to_date"
    );

    // Roll back to builtin: OTA devices revert, builtin devices stay.
    app.set_active(&release, &builtin, None).await;
    let revert = app.check(&device_body("1.0.1", "8.51.14")).await;
    assert_eq!(revert, json!({"version": "builtin"}));
    assert_eq!(app.check(&on_builtin).await["kind"], "up_to_date");

    // A beta device follows beta; a channel the release does not set follows production.
    app.set_active(&release, &next, Some("beta")).await;
    let mut beta = on_builtin.clone();
    beta["defaultChannel"] = json!("beta");
    assert_eq!(app.check(&beta).await["version"], "1.0.1");
    let mut qa = on_builtin.clone();
    qa["defaultChannel"] = json!("qa");
    assert_eq!(app.check(&qa).await["kind"], "up_to_date");
}

/// Quiet (`blocked`): a `failed` answer would make plugins 8.45.11+ send a `download_fail` stat
/// on every launch until someone registers the build.
#[tokio::test]
async fn unknown_release_is_a_quiet_refusal() {
    let (app, _, _, _) = catalog().await;
    let mut body = device_body("builtin", "8.51.14");
    body["version_code"] = json!("11");
    let answer = app.check(&body).await;
    assert_eq!(answer["error"], "no_release");
    assert_eq!(answer["kind"], "blocked");
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("android com.example.app 1.0.0 (11)"));
}

#[tokio::test]
async fn a_promote_is_seen_by_the_next_check_despite_the_cache() {
    let (app, release, _, next) = catalog().await;
    assert_eq!(
        app.state
            .catalog
            .clone()
            .list_releases()
            .await
            .unwrap()
            .len(),
        1
    );
    let body = device_body("builtin", "8.51.14");
    assert_eq!(
        app.check(&body).await["kind"],
        "up_to_date",
        "cached now for 10 minutes"
    );
    app.set_active(&release, &next, None).await;
    assert_eq!(app.check(&body).await["version"], "1.0.1");
    app.post_json("/api/v1/releases.delete", json!({"release_id": release}))
        .await;
    assert_eq!(app.check(&body).await["error"], "no_release");
}

#[tokio::test]
async fn malformed_update_requests_get_the_device_error_shape() {
    let (app, _, _, _) = catalog().await;
    let valid = device_body("builtin", "8.51.14");
    let with = |key: &str, value: Value| {
        let mut body = valid.clone();
        body[key] = value;
        body.to_string()
    };
    let without = |key: &str| {
        let mut body = valid.clone();
        body.as_object_mut().unwrap().remove(key);
        body.to_string()
    };
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "{\"platform\": \"android\",".into(),
            "invalid_request",
            "not valid JSON",
        ),
        (String::new(), "invalid_request", "empty"),
        ("[1,2,3]".into(), "invalid_request", "JSON object"),
        ("\"text\"".into(), "invalid_request", "JSON object"),
        (
            with("app_id", json!(42)),
            "invalid_request",
            "`app_id` must be a string",
        ),
        // Channel settings read it, so a value that is not a boolean is refused.
        (
            with("is_emulator", json!("yes")),
            "invalid_request",
            "`is_emulator` must be a boolean",
        ),
        (
            with("is_prod", json!(1)),
            "invalid_request",
            "`is_prod` must be a boolean",
        ),
        (
            with("platform", json!("windows")),
            "invalid_request",
            "windows",
        ),
        (
            with("plugin_version", json!("4.4.0")),
            "unsupported_plugin_version",
            "too old",
        ),
        (
            with("defaultChannel", json!("bad channel!")),
            "invalid_request",
            "channel",
        ),
        (without("version_build"), "missing_info", "version_build"),
        (without("app_id"), "missing_info", "app_id"),
        (without("device_id"), "missing_info", "device_id"),
        (
            format!("{{\"pad\": \"{}\"}}", "x".repeat(100 * 1024)),
            "invalid_request",
            "too large",
        ),
    ];
    for (body, error, message_part) in cases {
        let (status, answer) = app.device_post("/updates", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body:.80} -> {answer}");
        assert_eq!(answer["error"], error, "{body:.80} -> {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(message_part),
            "{body:.80} -> {answer}"
        );
        let expected_kind = if error == "no_new_version_available" {
            "up_to_date"
        } else {
            "failed"
        };
        assert_eq!(answer["kind"], expected_kind, "{answer}");
    }
}

#[tokio::test]
async fn stats_accept_objects_and_batches_and_store_them() {
    let (app, _, builtin, _) = catalog().await;
    let event = |action: &str| {
        let mut body = device_body("builtin", "8.51.14");
        body["action"] = json!(action);
        body["version_name"] = json!("1.0.0");
        body
    };
    let (status, answer) = app.device_post("/stats", event("set").to_string()).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"status": "ok"})));

    let batch: Vec<Value> = (0..200)
        .map(|i| {
            let mut body = if i % 2 == 0 {
                event("download_complete")
            } else {
                event("app_moved_to_foreground")
            };
            body["device_id"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
            body
        })
        .collect();
    let (status, answer) = app
        .device_post("/stats", Value::Array(batch).to_string())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["results"].as_array().unwrap().len(), 200);
    assert!(answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "ok"));

    let mixed = json!([event("set"), {"action": "set"}, event("totally_new_action")]);
    let (status, answer) = app.device_post("/stats", mixed.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["results"][1]["status"], "error");
    assert_eq!(answer["results"][1]["index"], 1);
    assert_eq!(
        answer["results"][2]["status"], "ok",
        "unknown actions are kept"
    );

    let (_, activity) = app
        .get(&format!("/api/v1/bundles.activity?bundle_id={builtin}"))
        .await;
    assert_eq!(
        activity["actions"]["set"], 1,
        "one device's two `set` events count once"
    );
    // Distinct devices by sketch: within 3% of the truth.
    let downloads = activity["actions"]["download_complete"].as_u64().unwrap();
    assert!((97..=103).contains(&downloads), "{activity}");
    assert_eq!(
        activity["actions"]["other"], 1,
        "an action the plugin does not send is stored, and counted as `other`: {activity}"
    );

    for bad in ["", "{oops", "{\"action\": \"set\"}"] {
        let (status, answer) = app.device_post("/stats", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?} -> {answer}");
        assert!(
            answer["error"].is_string() && answer["message"].is_string(),
            "{answer}"
        );
    }
    let too_many = Value::Array((0..1001).map(|_| event("set")).collect());
    let (status, _) = app.device_post("/stats", too_many.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn channel_self_speaks_every_verb() {
    let (app, release, _, next) = catalog().await;
    app.set_active(&release, &next, Some("beta")).await;
    let mut body = device_body("builtin", "8.51.14");

    body["channel"] = json!("beta");
    let (status, answer) = app.device_post("/channel_self", body.to_string()).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"status": "ok", "allowSet": true}))
    );
    body["channel"] = json!("nightly");
    let (_, answer) = app.device_post("/channel_self", body.to_string()).await;
    assert_eq!(answer["error"], "channel_not_found");
    body.as_object_mut().unwrap().remove("channel");
    let (_, answer) = app.device_post("/channel_self", body.to_string()).await;
    assert_eq!(answer["error"], "missing_channel");

    let put = |body: Value| {
        Request::put("/channel_self")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, answer) = TestApp::call(&app.device, put(body.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"channel": "production", "status": "default", "allowSet": true})
    );
    body["defaultChannel"] = json!("beta");
    let (_, answer) = TestApp::call(&app.device, put(body.clone())).await;
    assert_eq!(answer["channel"], "beta");

    let list = Request::get(format!(
        "/channel_self?app_id={APP_ID}&platform=android&is_emulator=false"
    ))
    .body(Body::empty())
    .unwrap();
    let (status, answer) = TestApp::call(&app.device, list).await;
    assert_eq!(status, StatusCode::OK);
    let channels = answer.as_array().expect("a bare array");
    assert_eq!(channels.len(), 2);
    assert!(channels
        .iter()
        .all(|c| c["id"].is_i64() && c["name"].is_string()));
    assert_eq!(
        channels[0],
        json!({"id": channels[0]["id"], "name": "production", "public": true, "allow_self_set": true})
    );

    let delete_body = Request::delete("/channel_self")
        .body(Body::from(body.to_string()))
        .unwrap();
    assert_eq!(
        TestApp::call(&app.device, delete_body).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let delete_query = Request::delete(format!(
        "/channel_self?app_id={APP_ID}&device_id={DEVICE_ID}"
    ))
    .body(Body::empty())
    .unwrap();
    assert_eq!(
        TestApp::call(&app.device, delete_query).await,
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let delete_nothing = Request::delete("/channel_self")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        TestApp::call(&app.device, delete_nothing).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, _) = app.device_post("/channel_self", "{broken").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn status_from(
    app: &capgo_server::http::device::DeviceApi,
    peer: &str,
    forwarded_for: Option<&str>,
) -> (StatusCode, Value, Option<String>) {
    let mut request = Request::post("/updates");
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    let request = request
        .body(Body::from(device_body("builtin", "8.51.14").to_string()))
        .unwrap();
    call_from(app, peer, request).await
}

/// `request` to `app` from `peer`: status, JSON body and `Retry-After`.
async fn call_from(
    app: &capgo_server::http::device::DeviceApi,
    peer: &str,
    request: Request<Body>,
) -> (StatusCode, Value, Option<String>) {
    let peer: SocketAddr = format!("{peer}:40000").parse().unwrap();
    let response = tower::ServiceExt::oneshot(MockConnectInfo(peer).layer(app.clone()), request)
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap(), retry_after)
}

#[tokio::test]
async fn rate_limit_per_client_with_retry_hints() {
    let app = TestApp::with_env(&[
        ("LIMIT_REQUEST_PER_MINUTE", "3"),
        ("TRUSTED_PROXIES", "10.0.0.0/8"),
    ]);
    for _ in 0..3 {
        assert_eq!(
            status_from(&app.device, "203.0.113.1", None).await.0,
            StatusCode::OK
        );
    }
    let (status, body, retry_after) = status_from(&app.device, "203.0.113.1", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let seconds: u64 = retry_after.expect("Retry-After header").parse().unwrap();
    assert!((1..=20).contains(&seconds), "{seconds}");
    assert_eq!(body["retryAfterSeconds"], seconds);
    assert_eq!(body["moreInfo"]["retryAfterSeconds"], seconds);
    assert_eq!(body["error"], "too_many_requests");

    // An untrusted peer cannot escape its bucket with a forged header.
    let (status, _, _) = status_from(&app.device, "203.0.113.1", Some("198.51.100.99")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Behind a trusted proxy, each forwarded client has its own bucket.
    for client in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..3 {
            assert_eq!(
                status_from(&app.device, "10.1.2.3", Some(client)).await.0,
                StatusCode::OK
            );
        }
    }
    assert_eq!(
        status_from(&app.device, "10.1.2.3", Some("198.51.100.1"))
            .await
            .0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Stats are not limited per request (only per event): batched telemetry from one NAT
    // must not be dropped.
    let request = Request::post("/stats")
        .body(Body::from(
            json!({"app_id": APP_ID, "device_id": DEVICE_ID, "action": "set"}).to_string(),
        ))
        .unwrap();
    let response = tower::ServiceExt::oneshot(
        MockConnectInfo("203.0.113.1:1".parse::<SocketAddr>().unwrap()).layer(app.device.clone()),
        request,
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// `POST /stats` from `peer`: status, `Retry-After`, body.
async fn stats_from(
    app: &TestApp,
    peer: &str,
    body: &Value,
) -> (StatusCode, Option<String>, Value) {
    let request = Request::post("/stats")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, body, retry_after) = call_from(&app.device, peer, request).await;
    (status, retry_after, body)
}

#[tokio::test]
async fn stats_events_are_limited_per_address_and_counted_per_device() {
    let app = TestApp::with_env(&[("STATS_EVENTS_PER_MINUTE", "1000")]);
    let builtin = app.upload_bundle("1.0.0").await;
    let fail = json!({"app_id": APP_ID, "device_id": DEVICE_ID, "action": "download_fail",
                      "version_name": "1.0.0"});
    // One device, a full batch of failures: stored, but the chart counts one device.
    let batch = Value::Array(vec![fail.clone(); 1000]);
    let (status, _, answer) = stats_from(&app, "203.0.113.5", &batch).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, activity) = app
        .get(&format!("/api/v1/bundles.activity?bundle_id={builtin}"))
        .await;
    assert_eq!(activity["actions"]["download_fail"], 1, "{activity}");

    // That address has used its minute (a few events may have come back since); another has
    // not.
    let (status, retry_after, answer) = stats_from(&app, "203.0.113.5", &batch).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{answer}");
    assert!(
        retry_after.is_some() && answer["retryAfterSeconds"].is_u64(),
        "{answer}"
    );
    let (status, _, _) = stats_from(&app, "198.51.100.7", &fail).await;
    assert_eq!(status, StatusCode::OK);

    // Oversized fields are refused, not stored.
    let mut huge = fail.clone();
    huge["device_id"] = json!("d".repeat(1 << 20));
    let (status, _, answer) = stats_from(&app, "198.51.100.8", &huge).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("device_id"),
        "{answer}"
    );
}

#[tokio::test]
async fn bundle_download_supports_ranges() {
    let (app, release, _, next) = catalog().await;
    app.set_active(&release, &next, None).await;
    let answer = app.check(&device_body("builtin", "8.51.14")).await;
    let path = answer["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://localhost:8000")
        .to_string();
    let response = tower::ServiceExt::oneshot(
        app.device.clone(),
        Request::get(&path).body(Body::empty()).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(sha256_hex(&bytes), answer["checksum"].as_str().unwrap());
    let ranged = Request::get(&path)
        .header("range", "bytes=10-19")
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.device.clone(), ranged)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    let part = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&part[..], &bytes[10..20]);
    // An If-Range that cannot match gets the whole file, marked not to be sniffed.
    let garbage = Request::get(&path)
        .header("range", "bytes=10-19")
        .header("if-range", "garbage")
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(app.device.clone(), garbage)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    // A link planted in the blob folder is not followed.
    let outside = app.data.path().join("outside.zip");
    std::fs::write(&outside, b"not the server's").unwrap();
    std::os::unix::fs::symlink(&outside, app.data.path().join("blobs/bundles/linked.zip")).unwrap();
    for missing in [
        "/files/bundles/linked.zip",
        "/files/bundles/0123456789abcdef01234567.zip",
        "/files/../capgo.db",
        "/files/bundles/..%2F..%2Fcapgo.db",
    ] {
        let (status, body) = TestApp::call(
            &app.device,
            Request::get(missing).body(Body::empty()).unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}: {body}");
    }
}

#[tokio::test]
async fn a_bundle_cannot_be_downloaded_by_guessing_its_id() {
    let (app, release, _, next) = catalog().await;
    // Never promoted: the id alone (time, process, counter) must not lead to its bytes.
    let hidden = app.upload_bundle("9.9.9").await;
    let get = |path: String| {
        let device = app.device.clone();
        async move {
            tower::ServiceExt::oneshot(device, Request::get(&path).body(Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        get(format!("/files/bundles/{hidden}.zip")).await,
        StatusCode::NOT_FOUND
    );
    // The URL a device is given works.
    app.set_active(&release, &next, None).await;
    let answer = app.check(&device_body("builtin", "8.51.14")).await;
    let url = answer["url"].as_str().unwrap();
    assert!(!url.ends_with(&format!("/{next}.zip")), "{url}");
    let path = url.trim_start_matches("http://localhost:8000").to_string();
    assert_eq!(get(path).await, StatusCode::OK);
}

/// The device port answers `POST /updates` without the router; its answers are the route's
/// own, byte for byte, for updates, refusals and unreadable bodies, and every other request
/// still reaches the router.
#[tokio::test]
async fn the_ports_own_dispatch_answers_like_the_router() {
    let (app, release, _, next) = catalog().await;
    app.set_active(&release, &next, None).await;
    let routed = capgo_server::http::device::router(app.state.clone());
    let mut unknown_app = device_body("builtin", "8.51.14");
    unknown_app["app_id"] = json!("com.example.unknown");
    let bodies = [
        device_body("builtin", "8.51.14").to_string(),
        device_body("1.0.1", "8.51.14").to_string(),
        unknown_app.to_string(),
        "{broken".to_string(),
        String::new(),
        format!("{{\"pad\": \"{}\"}}", "x".repeat(100 * 1024)),
    ];
    let answer = |service: Either, body: String| async move {
        let request = Request::post("/updates").body(Body::from(body)).unwrap();
        let response = match service {
            Either::Direct(api) => tower::ServiceExt::oneshot(api, request).await,
            Either::Routed(router) => tower::ServiceExt::oneshot(router, request).await,
        }
        .unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").cloned();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, content_type, bytes)
    };
    for body in bodies {
        let direct = answer(Either::Direct(app.device.clone()), body.clone()).await;
        let through_router = answer(Either::Routed(routed.clone()), body.clone()).await;
        assert_eq!(direct, through_router, "{body:.80}");
        assert_eq!(direct.0, StatusCode::OK);
    }
    // Other methods and paths go through the router.
    let (status, answer) = TestApp::call(
        &app.device,
        Request::get("/updates").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"status": "ok"})));
    let (status, answer) = TestApp::call(
        &app.device,
        Request::post("/updates/nowhere")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"], "not_found");
}

enum Either {
    Direct(capgo_server::http::device::DeviceApi),
    Routed(axum::Router),
}

/// Each device endpoint keeps its body limit: 64 KiB for the InfoObject endpoints (every verb
/// of `/channel_self` included), 4 MiB for `/stats` and `/updates/manifest_size`.
#[tokio::test]
async fn every_device_endpoint_keeps_its_body_limit() {
    let app = TestApp::new();
    let padded = |bytes: usize| format!("{{\"pad\": \"{}\"}}", "x".repeat(bytes));
    let send = |method: &'static str, path: &'static str, body: String| {
        let device = app.device.clone();
        async move {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from(body))
                .unwrap();
            TestApp::call(&device, request).await
        }
    };
    for (method, path) in [
        ("POST", "/channel_self"),
        ("PUT", "/channel_self"),
        ("DELETE", "/channel_self"),
        ("POST", "/updates"),
    ] {
        let (_, answer) = send(method, path, padded(100 * 1024)).await;
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains("too large")),
            "{method} {path}: {answer}"
        );
        let (_, answer) = send(method, path, padded(1024)).await;
        assert!(
            !answer.to_string().contains("too large"),
            "{method} {path}: {answer}"
        );
    }
    for path in ["/stats", "/updates/manifest_size"] {
        let (_, answer) = send("POST", path, padded(100 * 1024)).await;
        assert!(
            !answer.to_string().contains("too large"),
            "{path}: {answer}"
        );
        let (status, answer) = send("POST", path, padded(5 * 1024 * 1024)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .is_some_and(|m| m.contains("too large")),
            "{path}: {answer}"
        );
    }
}
