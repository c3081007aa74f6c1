//! The binary on MongoDB + S3 (the real servers `scripts/services` starts): the walk-through,
//! two replicas sharing one catalog, and faults injected by cutting real connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

use capgo_server::store::s3::{DownloadUrls, S3BlobStore, S3Settings};
use capgo_server::store::BlobStore;

/// Uploads 1.0.0 and 1.0.1, creates the release on 1.0.0; returns (release, builtin, next).
async fn seed(client: &Client) -> (String, String, String) {
    let (status, builtin) = client.upload(APP_ID, "1.0.0", web_bundle("builtin")).await;
    assert_eq!(status, 200, "{builtin}");
    let (status, next) = client.upload(APP_ID, "1.0.1", web_bundle("next")).await;
    assert_eq!(status, 200, "{next}");
    let (status, release) = client
        .manage(
            "releases.create",
            json!({"platform": "android", "app_id": APP_ID, "version_name": "1.0.0",
                   "version_code": "10", "builtin_bundle_id": builtin["bundle"]["id"]}),
        )
        .await;
    assert_eq!(status, 200, "{release}");
    let id = |v: &Value, k: &str| v[k]["id"].as_str().unwrap().to_string();
    (
        id(&release, "release"),
        id(&builtin, "bundle"),
        id(&next, "bundle"),
    )
}

async fn promote(client: &Client, release: &str, bundle: &str) {
    let (status, body) = client
        .manage(
            "releases.set-active",
            json!({"release_id": release, "bundle_id": bundle}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn objects_in_bucket(services: &Services, bucket: &str) -> Vec<String> {
    let store = S3BlobStore::connect(S3Settings {
        bucket: bucket.to_string(),
        endpoint: Some(services.s3_endpoint.clone()),
        download_urls: DownloadUrls::Presigned(Duration::from_secs(60)),
    })
    .await
    .unwrap();
    store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.key)
        .collect()
}

#[tokio::test]
async fn walkthrough_on_mongodb_and_s3() {
    let Some(services) = Services::get() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let env = services.server_env(
        &Services::fresh_database(),
        &services.mongo_url,
        &services.s3_endpoint,
    );
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    let client = Client::new(&server, API_KEY);
    let (release, _, next) = seed(&client).await;
    let device = device_body("builtin", "8.51.14");
    assert_eq!(
        client.device("/updates", &device).await.1["kind"],
        "up_to_date"
    );
    promote(&client, &release, &next).await;
    let (_, answer) = client.device("/updates", &device).await;
    assert_update_answer(&answer);
    let url = answer["url"].as_str().unwrap();
    assert!(
        url.starts_with(&services.s3_endpoint) && url.contains("X-Amz-Signature="),
        "presigned: {url}"
    );
    let bytes = client.download(url).await;
    assert_eq!(sha256_hex(&bytes), answer["checksum"].as_str().unwrap());
    assert_eq!(bytes, web_bundle("next"));

    let (status, body) = client.device("/stats", &json!([{"app_id": APP_ID, "device_id": DEVICE_ID, "action": "set", "version_name": "1.0.1"}])).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = client.upload(APP_ID, "1.0.1", web_bundle("again")).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = client
        .manage("bundles.delete", json!({"bundle_id": next}))
        .await;
    assert_eq!(status, 409, "in use: {body}");
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_the_other_within_the_sync_interval() {
    let Some(services) = Services::get() else {
        return;
    };
    let database = Services::fresh_database();
    let mut env = services.server_env(&database, &services.mongo_url, &services.s3_endpoint);
    env.push(("CATALOG_SYNC_INTERVAL".into(), "500ms".into()));
    env.push(("CACHE_RESULT_DURATION".into(), "10m".into()));
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let replica_a = ServerProcess::start(data_a.path(), &env_refs(&env));
    let replica_b = ServerProcess::start(data_b.path(), &env_refs(&env));
    let (a, b) = (
        Client::new(&replica_a, API_KEY),
        Client::new(&replica_b, API_KEY),
    );
    let (release, builtin, next) = seed(&a).await;
    promote(&a, &release, &next).await;
    let on_update = device_body("1.0.1", "8.51.14");
    let on_builtin = device_body("builtin", "8.51.14");
    // Let both pollers settle, then B caches its answer (for ten minutes).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        b.device("/updates", &on_builtin).await.1["version"],
        "1.0.1"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        b.device("/updates", &on_builtin).await.1["version"],
        "1.0.1",
        "still cached"
    );

    // A rollback through A reaches B within the sync interval (plus a poll's latency)...
    let bound = Duration::from_secs(3);
    promote(&a, &release, &builtin).await;
    let rolled_back_at = Instant::now();
    while b.device("/updates", &on_update).await.1 != json!({"version": "builtin"}) {
        assert!(
            rolled_back_at.elapsed() < bound,
            "replica B still serves 1.0.1 after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rollback_seen = rolled_back_at.elapsed();
    // ...and a promote through B reaches A the same way.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        a.device("/updates", &on_builtin).await.1["kind"],
        "up_to_date"
    );
    promote(&b, &release, &next).await;
    let promoted_at = Instant::now();
    while a.device("/updates", &on_builtin).await.1["version"] != "1.0.1" {
        assert!(
            promoted_at.elapsed() < bound,
            "replica A missed the promote after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "other replica saw the rollback after {rollback_seen:?} and the promote after {:?} (sync interval 500ms)",
        promoted_at.elapsed()
    );
}

#[tokio::test]
async fn mongodb_outage_serves_last_known_answers_then_recovers() {
    let Some(services) = Services::get() else {
        return;
    };
    let proxy = FaultyProxy::start(&FaultyProxy::target_of(&services.mongo_url)).await;
    let mongo_via_proxy = format!("mongodb://{}/?directConnection=true", proxy.address);
    let mut env = services.server_env(
        &Services::fresh_database(),
        &mongo_via_proxy,
        &services.s3_endpoint,
    );
    env.push(("CACHE_RESULT_DURATION".into(), "1s".into()));
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    let client = Client::new(&server, API_KEY);
    let (release, _, next) = seed(&client).await;
    promote(&client, &release, &next).await;
    let device = device_body("builtin", "8.51.14");
    assert_eq!(
        client.device("/updates", &device).await.1["version"],
        "1.0.1"
    );

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(1500)).await; // past CACHE_RESULT_DURATION
    let (status, answer) = client.device("/updates", &device).await;
    assert_eq!(status, 200);
    assert_update_answer(&answer);
    assert_eq!(answer["version"], "1.0.1", "the last known answer");
    let bytes = client.download(answer["url"].as_str().unwrap()).await;
    assert_eq!(
        sha256_hex(&bytes),
        answer["checksum"].as_str().unwrap(),
        "S3 still serves the bundle"
    );
    let response = client
        .http
        .get(format!("{}/api/v1/releases.list", server.management_url))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
    let mut unknown = device.clone();
    unknown["version_code"] = json!("99");
    let (status, answer) = client.device("/updates", &unknown).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (200, Some("server_unavailable")),
        "{answer}"
    );

    proxy.restore();
    let restored_at = Instant::now();
    loop {
        let response = client
            .http
            .get(format!("{}/api/v1/releases.list", server.management_url))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 200 {
            break;
        }
        assert!(
            restored_at.elapsed() < Duration::from_secs(20),
            "no recovery after MongoDB returned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        client.device("/updates", &unknown).await.1["error"],
        "no_release"
    );
}

#[tokio::test]
async fn s3_outage_during_upload_leaves_no_record() {
    let Some(services) = Services::get() else {
        return;
    };
    let bucket = services.fresh_bucket().await;
    let proxy = FaultyProxy::start(&FaultyProxy::target_of(&services.s3_endpoint)).await;
    let s3_via_proxy = format!("http://{}", proxy.address);
    let env = services.server_env_with_bucket(
        &Services::fresh_database(),
        &services.mongo_url,
        &s3_via_proxy,
        &bucket,
    );
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    let client = Client::new(&server, API_KEY);
    proxy.cut();
    let (status, body) = client.upload(APP_ID, "2.0.0", web_bundle("lost")).await;
    assert_eq!(status, 503, "{body}");
    assert!(client.list("bundles.list").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(list_files(&data.path().join("staging")).is_empty());
    assert!(objects_in_bucket(&services, &bucket).await.is_empty());
    proxy.restore();
    let (status, body) = client.upload(APP_ID, "2.0.0", web_bundle("kept")).await;
    assert_eq!(
        status, 200,
        "the same version uploads once S3 is back: {body}"
    );
}

#[tokio::test]
async fn racing_duplicate_uploads_leave_one_record_and_one_object() {
    let Some(services) = Services::get() else {
        return;
    };
    let (bucket, env) = services.env_with_fresh_bucket().await;
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    let client = Client::new(&server, API_KEY);
    let uploads = (0..6).map(|i| client.upload(APP_ID, "3.0.0", web_bundle(&format!("racer {i}"))));
    let results = futures_util::future::join_all(uploads).await;
    let statuses: Vec<u16> = results.iter().map(|(status, _)| *status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        5,
        "{statuses:?}"
    );
    let winner = results.iter().find(|(s, _)| *s == 200).unwrap().1["bundle"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = objects_in_bucket(&services, &bucket).await;
    let zips: Vec<&String> = stored
        .iter()
        .filter(|k| k.starts_with("bundles/"))
        .collect();
    assert_eq!(zips.len(), 1, "losers' zips were removed: {stored:?}");
    assert!(
        zips[0].starts_with(&format!("bundles/{winner}-")),
        "{stored:?}"
    );
    // Losers' file objects may be shared with others' uploads, so they are left to the sweep:
    // after it, only the winner's files remain.
    drop(server);
    let mut env = env;
    env.push(("ORPHAN_GRACE_PERIOD".into(), "0s".into()));
    let _server = ServerProcess::start(data.path(), &env_refs(&env));
    let files: std::collections::BTreeSet<String> = objects_in_bucket(&services, &bucket)
        .await
        .into_iter()
        .filter(|k| k.starts_with("files/"))
        .map(|k| k["files/".len().."files/".len() + 64].to_string())
        .collect();
    let racers: Vec<std::collections::BTreeSet<String>> = (0..6)
        .map(|i| {
            let marker = format!("racer {i}");
            [
                sha256_hex(format!("<html><body>{marker}</body></html>").as_bytes()),
                sha256_hex(format!("console.log({marker:?})").as_bytes()),
            ]
            .into_iter()
            .collect()
        })
        .collect();
    assert_eq!(
        racers.iter().filter(|r| **r == files).count(),
        1,
        "exactly one racer's files remain: {files:?}"
    );
}

#[tokio::test]
async fn presigned_urls_expire() {
    let Some(services) = Services::get() else {
        return;
    };
    let mut env = services.server_env(
        &Services::fresh_database(),
        &services.mongo_url,
        &services.s3_endpoint,
    );
    env.push(("S3_PRESIGN_DURATION".into(), "2s".into()));
    env.push(("CACHE_RESULT_DURATION".into(), "1s".into()));
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    let client = Client::new(&server, API_KEY);
    let (release, _, next) = seed(&client).await;
    promote(&client, &release, &next).await;
    let (_, answer) = client
        .device("/updates", &device_body("builtin", "8.51.14"))
        .await;
    let url = answer["url"].as_str().unwrap().to_string();
    assert_eq!(
        client
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let expired = client
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    // AWS answers 403; Garage 400. Either way the expired URL is refused.
    assert!(
        matches!(expired, 400 | 403),
        "an expired presigned URL is refused, got {expired}"
    );
    let (_, fresh) = client
        .device("/updates", &device_body("builtin", "8.51.14"))
        .await;
    assert_eq!(
        client
            .http
            .get(fresh["url"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn wrong_s3_credentials_or_unreachable_mongodb_stop_start_up_clearly() {
    let Some(services) = Services::get() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let run = |env: &[(String, String)]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_capgo-server"));
        command
            .env_clear()
            .env("DATA_DIR", data.path())
            .current_dir(data.path());
        command
            .env("CAPGO_USER_PORT", "0")
            .env("CAPGO_MANAGEMENT_PORT", "0");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let mut env = services.server_env(
        &Services::fresh_database(),
        &services.mongo_url,
        &services.s3_endpoint,
    );
    for (key, value) in env.iter_mut() {
        if key == "AWS_SECRET_ACCESS_KEY" {
            *value = "f".repeat(64);
        }
    }
    let output = run(&env);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&services.s3_bucket) && stderr.contains(&services.s3_endpoint),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut env = services.server_env(
        &Services::fresh_database(),
        "mongodb://127.0.0.1:1",
        &services.s3_endpoint,
    );
    env.push((
        "MONGO_CONNECTION_STRING".into(),
        "mongodb://127.0.0.1:1/?connectTimeoutMS=500".into(),
    ));
    let output = run(&env);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("MONGO_CONNECTION_STRING") && !stderr.contains("panicked"),
        "{stderr}"
    );
}

#[tokio::test]
async fn migrate_creates_the_indexes() {
    let Some(services) = Services::get() else {
        return;
    };
    let database = Services::fresh_database();
    let data = tempfile::tempdir().unwrap();
    let env = services.server_env(&database, &services.mongo_url, &services.s3_endpoint);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_capgo-server"))
        .arg("migrate")
        .env_clear()
        .env("DATA_DIR", data.path())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let client = mongodb::Client::with_uri_str(&services.mongo_url)
        .await
        .unwrap();
    let names = client
        .database(&database)
        .collection::<mongodb::bson::Document>("releases")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        names
            .iter()
            .any(|n| n.contains("version_name") && n.contains("version_code")),
        "{names:?}"
    );
}

#[tokio::test]
async fn oversized_and_interrupted_uploads_leave_nothing_in_the_bucket() {
    let Some(services) = Services::get() else {
        return;
    };
    let (bucket, mut env) = services.env_with_fresh_bucket().await;
    env.push(("MAX_BUNDLE_SIZE".into(), "1MiB".into()));
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    let client = Client::new(&server, API_KEY);

    let big = zip_of(&[
        ("index.html", b"<html/>"),
        ("noise.bin", &incompressible(2 << 20)),
    ]);
    let (status, body) = client.upload(APP_ID, "too-big", big).await;
    assert_eq!(status, 413, "{body}");

    let address = server
        .management_url
        .trim_start_matches("http://")
        .to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    std::io::Write::write_all(
        &mut stream,
        format!(
            "POST /api/v1/bundles.upload HTTP/1.1\r\nHost: {address}\r\nx-api-key: {API_KEY}\r\n\
             Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: 900000\r\n\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"bundle\"; filename=\"b.zip\"\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    std::io::Write::write_all(&mut stream, &incompressible(300_000)).unwrap();
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert!(client.list("bundles.list").await["data"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(
        objects_in_bucket(&services, &bucket).await.is_empty(),
        "nothing reached the bucket"
    );
    assert!(list_files(&data.path().join("staging")).is_empty());
}

/// Multipart uploads the bucket holds open under `bundles/`.
async fn open_multipart_uploads(services: &Services, bucket: &str) -> usize {
    services
        .s3_client()
        .await
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap()
        .uploads()
        .len()
}

#[tokio::test]
async fn sigkill_during_uploads_leaves_no_half_record_and_no_orphan_object() {
    let Some(services) = Services::get() else {
        return;
    };
    let (bucket, mut env) = services.env_with_fresh_bucket().await;
    // One replica: what a killed process left is an orphan at once.
    env.push(("ORPHAN_GRACE_PERIOD".into(), "0s".into()));
    let data = tempfile::tempdir().unwrap();
    let mut attempted = 0;
    let mut open_multiparts_seen = 0;
    for (round, after_ms) in [30u64, 100, 250, 600, 1200].into_iter().enumerate() {
        let server = ServerProcess::start(data.path(), &env_refs(&env));
        // Two small uploads (single PUT) and one over 32 MiB (multipart).
        let uploads = vec![
            (format!("{round}.0.0"), sized_bundle("a", 4 << 20)),
            (format!("{round}.1.0"), sized_bundle("b", 4 << 20)),
            (format!("{round}.2.0"), sized_bundle("c", 40 << 20)),
        ];
        attempted += uploads.len();
        kill_during_uploads(server, uploads, Duration::from_millis(after_ms)).await;
        open_multiparts_seen += open_multipart_uploads(&services, &bucket).await;
    }
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    let recorded = assert_every_record_has_its_bytes(&server).await;
    eprintln!(
        "{} of {attempted} uploads recorded; {open_multiparts_seen} multipart uploads left open by kills",
        recorded.len()
    );
    assert!(recorded.len() < attempted, "some kills landed mid-upload");
    let objects = objects_in_bucket(&services, &bucket).await;
    let zips = objects.iter().filter(|k| k.starts_with("bundles/")).count();
    assert_eq!(zips, recorded.len(), "one zip per record: {objects:?}");
    // Each bundle's files by content: its index.html and its size's noise (shared).
    let expected: std::collections::BTreeSet<String> = recorded
        .iter()
        .flat_map(|version| {
            let (marker, size) = match version.split('.').nth(1) {
                Some("0") => ("a", 4 << 20),
                Some("1") => ("b", 4 << 20),
                _ => ("c", 40 << 20),
            };
            [
                format!(
                    "files/{}",
                    sha256_hex(format!("<html>{marker}</html>").as_bytes())
                ),
                format!("files/{}", sha256_hex(&incompressible(size))),
            ]
        })
        .collect();
    let files: std::collections::BTreeSet<String> = objects
        .into_iter()
        .filter(|k| k.starts_with("files/"))
        .collect();
    assert_eq!(
        files, expected,
        "after the sweep, every file object has a bundle"
    );
    assert_eq!(
        open_multipart_uploads(&services, &bucket).await,
        0,
        "abandoned multipart uploads are aborted at start-up"
    );
    let client = Client::new(&server, API_KEY);
    let (status, body) = client.upload(APP_ID, "0.0.0", web_bundle("after")).await;
    assert_eq!(status, 200, "{body}");
}
