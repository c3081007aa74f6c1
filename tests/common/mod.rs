//! Helpers shared by the integration tests: bundle zips, plugin-shaped bodies, an in-process
//! app for router tests, and the real binary on free ports.
#![allow(dead_code)]

pub mod oidc_issuer;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use capgo_server::access::keys::ApiKeys;
use capgo_server::access::Access;
use capgo_server::catalog::staging::Staging;
use capgo_server::catalog::{Catalog, CatalogSettings};
use capgo_server::config::Config;
use capgo_server::http::{self, AppState};
use capgo_server::store::fs_blobs::FilesystemBlobStore;
use capgo_server::store::sqlite::SqliteMetadataStore;

pub const API_KEY: &str = "test-management-key";
pub const APP_ID: &str = "com.example.app";
pub const DEVICE_ID: &str = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d";

/// A zip holding `files` (name, contents).
pub fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut buffer = std::io::Cursor::new(Vec::new());
    let mut writer = zip::ZipWriter::new(&mut buffer);
    for (name, contents) in files {
        writer
            .start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        writer.write_all(contents).unwrap();
    }
    writer.finish().unwrap();
    buffer.into_inner()
}

/// A valid bundle whose content differs by `marker`.
pub fn web_bundle(marker: &str) -> Vec<u8> {
    zip_of(&[
        (
            "index.html",
            format!("<html><body>{marker}</body></html>").as_bytes(),
        ),
        (
            "assets/app.js",
            format!("console.log({marker:?})").as_bytes(),
        ),
    ])
}

/// Bytes that deflate cannot shrink (xorshift noise), for size-limit tests.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The TLS provider the binary installs in `main`; tests that make HTTP clients need it too.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// An HTTP client for tests.
pub fn http_client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A `/updates` body as plugin 8 sends it from Android (fields from docs/protocol.md §2).
pub fn device_body(version_name: &str, plugin_version: &str) -> Value {
    json!({
        "platform": "android",
        "device_id": DEVICE_ID,
        "app_id": APP_ID,
        "version_name": version_name,
        "version_build": "1.0.0",
        "version_code": "10",
        "version_os": "14",
        "plugin_version": plugin_version,
        "is_emulator": false,
        "is_prod": true,
        "custom_id": "",
        "defaultChannel": "",
    })
}

/// The devices of `offers` ([`Client::offers`]) offered `version`.
pub fn offered(offers: &std::collections::BTreeMap<String, String>, version: &str) -> Vec<String> {
    offers
        .iter()
        .filter(|(_, offered)| *offered == version)
        .map(|(id, _)| id.clone())
        .collect()
}

/// One part of a multipart form.
#[derive(Clone, Copy, Debug)]
pub enum Part<'a> {
    Text(&'a str),
    File(&'a [u8]),
}

pub const BOUNDARY: &str = "capgo-test-boundary-7d1f";

pub fn multipart_body(parts: &[(&str, Part<'_>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, part) in parts {
        write!(body, "--{BOUNDARY}\r\n").unwrap();
        match part {
            Part::Text(text) => write!(
                body,
                "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{text}\r\n"
            )
            .unwrap(),
            Part::File(bytes) => {
                write!(
                    body,
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"bundle.zip\"\r\n\
                     Content-Type: application/zip\r\n\r\n"
                )
                .unwrap();
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    write!(body, "--{BOUNDARY}--\r\n").unwrap();
    body
}

/// The app in-process: both routers over an in-memory SQLite and a temporary blob folder.
pub struct TestApp {
    /// The device port's service (its own dispatch of `POST /updates`, the router for the rest).
    pub device: http::device::DeviceApi,
    pub management: Router,
    pub data: tempfile::TempDir,
    pub state: AppState,
}

impl TestApp {
    pub fn new() -> TestApp {
        TestApp::with_env(&[])
    }

    pub fn with_env(env: &[(&str, &str)]) -> TestApp {
        let data = tempfile::tempdir().unwrap();
        let mut vars: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        vars.entry("DATA_DIR".into())
            .or_insert(data.path().display().to_string());
        vars.entry("MANAGEMENT_API_TOKENS".into())
            .or_insert(API_KEY.into());
        let config = Config::load(None, |name| vars.get(name).cloned()).unwrap();
        let metadata = Arc::new(SqliteMetadataStore::in_memory().unwrap());
        let blobs = Arc::new(
            FilesystemBlobStore::open(data.path().join("blobs"), &config.public_base_url_for(8000))
                .unwrap(),
        );
        let catalog = Arc::new(Catalog::new(
            metadata.clone(),
            blobs,
            CatalogSettings {
                cache_duration: config.cache_result_duration,
                staging: Staging::new(data.path().join("staging")).unwrap(),
                max_bundle_size: config.max_bundle_size,
                import_prefix: config.bundle_import_prefix.clone(),
            },
        ));
        let state = AppState::new(
            &config,
            catalog,
            Access::from_config(
                &config,
                metadata,
                ApiKeys::new(&config.management_api_tokens),
            ),
        );
        TestApp {
            device: http::device::DeviceApi::new(state.clone()),
            management: http::management::router(state.clone()),
            data,
            state,
        }
    }

    pub async fn call<S>(service: &S, request: Request<Body>) -> (StatusCode, Value)
    where
        S: tower::Service<Request<Body>, Response = axum::response::Response> + Clone,
        S::Error: std::fmt::Debug,
    {
        let response = service.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let request = Request::get(path)
            .header("x-api-key", API_KEY)
            .body(Body::empty())
            .unwrap();
        Self::call(&self.management, request).await
    }

    /// `method path` on the management router with one credential header (`x-api-key` or
    /// `authorization`) and an optional JSON body.
    pub async fn call_as(
        &self,
        credential: (&str, &str),
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(credential.0, credential.1);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        Self::call(&self.management, request.body(body).unwrap()).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let request = Request::post(path)
            .header("x-api-key", API_KEY)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        Self::call(&self.management, request).await
    }

    pub async fn upload(&self, parts: &[(&str, Part<'_>)]) -> (StatusCode, Value) {
        self.upload_as(API_KEY, parts).await
    }

    /// An upload with another API key (a scoped token).
    pub async fn upload_as(&self, key: &str, parts: &[(&str, Part<'_>)]) -> (StatusCode, Value) {
        let request = Request::post("/api/v1/bundles.upload")
            .header("x-api-key", key)
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(Body::from(multipart_body(parts)))
            .unwrap();
        Self::call(&self.management, request).await
    }

    /// Uploads a valid bundle and returns its id.
    pub async fn upload_bundle(&self, version: &str) -> String {
        self.upload_bundle_for(APP_ID, version).await
    }

    /// [`TestApp::upload_bundle`] for another app.
    pub async fn upload_bundle_for(&self, app_id: &str, version: &str) -> String {
        let zip = web_bundle(version);
        let (status, body) = self
            .upload(&[
                ("app_id", Part::Text(app_id)),
                ("version_name", Part::Text(version)),
                ("bundle", Part::File(&zip)),
            ])
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["bundle"]["id"].as_str().unwrap().to_string()
    }

    /// Creates the android 1.0.0 (10) release with `builtin` and returns its id.
    pub async fn create_release(&self, builtin: &str) -> String {
        self.create_release_for(APP_ID, builtin).await
    }

    /// [`TestApp::create_release`] for another app.
    pub async fn create_release_for(&self, app_id: &str, builtin: &str) -> String {
        let (status, body) = self
            .post_json(
                "/api/v1/releases.create",
                json!({"platform": "android", "app_id": app_id, "version_name": "1.0.0",
                       "version_code": "10", "builtin_bundle_id": builtin}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["release"]["id"].as_str().unwrap().to_string()
    }

    pub async fn set_active(
        &self,
        release: &str,
        bundle: &str,
        channel: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut body = json!({"release_id": release, "bundle_id": bundle});
        if let Some(channel) = channel {
            body["channel"] = json!(channel);
        }
        self.post_json("/api/v1/releases.set-active", body).await
    }

    pub async fn device_post(&self, path: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap();
        Self::call(&self.device, request).await
    }

    pub async fn check(&self, body: &Value) -> Value {
        let (status, answer) = self.device_post("/updates", body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer
    }

    pub fn files_in(&self, folder: &str) -> Vec<String> {
        list_files(&self.data.path().join(folder))
    }

    /// No stored object and no staging file left behind (after refused uploads).
    pub fn assert_nothing_stored(&self) {
        for folder in ["blobs", "staging"] {
            let left = self.files_in(folder);
            assert!(left.is_empty(), "{folder}: {left:?}");
        }
    }
}

pub fn list_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            found.extend(list_files(&entry.path()));
        } else {
            found.push(entry.path().display().to_string());
        }
    }
    found
}

/// Asserts an update answer is one every plugin installs: no `error`, `kind` or `message`,
/// only string values (iOS decodes strictly), an absolute URL.
pub fn assert_update_answer(answer: &Value) {
    let object = answer
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {answer}"));
    for key in ["error", "kind", "message"] {
        assert!(
            !object.contains_key(key),
            "update answer carries `{key}`: {answer}"
        );
    }
    for key in ["version", "url", "checksum", "session_key"] {
        assert!(
            object.get(key).is_some_and(Value::is_string),
            "`{key}` missing or not a string: {answer}"
        );
    }
    let url = answer["url"].as_str().unwrap();
    assert!(
        url.starts_with("http://") || url.starts_with("https://"),
        "{url}"
    );
}

/// The real binary, started on free loopback ports with its own DATA_DIR.
pub struct ServerProcess {
    pub child: Child,
    pub public_url: String,
    pub management_url: String,
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl ServerProcess {
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_wrapped(data_dir, env, &[])
    }

    /// [`ServerProcess::start`] through a wrapper command (`prlimit --nofile=…`), which
    /// runs the binary given as its last argument.
    pub fn start_wrapped(data_dir: &Path, env: &[(&str, &str)], wrapper: &[&str]) -> ServerProcess {
        let binary = env!("CARGO_BIN_EXE_capgo-server");
        let mut command = match wrapper {
            [] => Command::new(binary),
            [program, args @ ..] => {
                let mut command = Command::new(program);
                command.args(args).arg(binary);
                command
            }
        };
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATA_DIR", data_dir)
            .env("LISTEN_ADDRESS", "127.0.0.1")
            .env("CAPGO_USER_PORT", "0")
            .env("CAPGO_MANAGEMENT_PORT", "0")
            .env("RUST_LOG", "info")
            .current_dir(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("capgo-server starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (ports_tx, ports_rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                for (what, tx_key) in [
                    ("device API listening on ", "public"),
                    ("management API listening on ", "management"),
                ] {
                    if let Some(rest) = line.split(what).nth(1) {
                        // Text lines end the URL with a space, JSON lines with a quote.
                        let url = rest
                            .split(|c: char| c.is_whitespace() || c == '"')
                            .next()
                            .unwrap_or_default()
                            .to_string();
                        let _ = ports_tx.send((tx_key, url));
                    }
                }
                log_writer.lock().unwrap().push(line);
            }
        });
        let mut public_url = String::new();
        let mut management_url = String::new();
        while public_url.is_empty() || management_url.is_empty() {
            match ports_rx.recv_timeout(Duration::from_secs(20)) {
                Ok(("public", url)) => public_url = url,
                Ok((_, url)) => management_url = url,
                Err(_) => {
                    let _ = child.kill();
                    let mut stderr = String::new();
                    let _ = std::io::Read::read_to_string(
                        &mut child.stderr.take().unwrap(),
                        &mut stderr,
                    );
                    panic!(
                        "capgo-server did not start: {stderr}\n{:?}",
                        log.lock().unwrap()
                    );
                }
            }
        }
        ServerProcess {
            child,
            public_url,
            management_url,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("capgo-server did not stop after SIGTERM");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago (for settings that must be known before start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A started binary with a known public port, so PUBLIC_BASE_URL can point at it.
pub fn start_with_public_url(data_dir: &Path, env: &[(&str, &str)]) -> ServerProcess {
    let port = free_port().to_string();
    let base = format!("http://127.0.0.1:{port}");
    let mut all: Vec<(&str, &str)> = vec![
        ("CAPGO_USER_PORT", port.as_str()),
        ("PUBLIC_BASE_URL", base.as_str()),
    ];
    all.extend_from_slice(env);
    ServerProcess::start(data_dir, &all)
}

/// HTTP helpers against a running binary.
pub struct Client {
    pub http: reqwest::Client,
    pub server_public: String,
    pub server_management: String,
    pub key: String,
}

impl Client {
    pub fn new(server: &ServerProcess, key: &str) -> Client {
        Client {
            http: http_client(),
            server_public: server.public_url.clone(),
            server_management: server.management_url.clone(),
            key: key.to_string(),
        }
    }

    pub async fn upload(&self, app_id: &str, version: &str, zip: Vec<u8>) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .text("app_id", app_id.to_string())
            .text("version_name", version.to_string())
            .part(
                "bundle",
                reqwest::multipart::Part::bytes(zip).file_name("bundle.zip"),
            );
        let response = self
            .http
            .post(format!("{}/api/v1/bundles.upload", self.server_management))
            .header("x-api-key", &self.key)
            .multipart(form)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn manage(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/api/v1/{path}", self.server_management))
            .header("x-api-key", &self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    pub async fn list(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/api/v1/{path}", self.server_management))
            .header("x-api-key", &self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn device(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.server_public))
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "CapacitorUpdater/8.51.14 (com.example.app) android/14",
            )
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// Uploads a valid bundle of `APP_ID` and returns its id.
    pub async fn upload_bundle(&self, version: &str) -> String {
        let (status, body) = self.upload(APP_ID, version, web_bundle(version)).await;
        assert_eq!(status, 200, "{body}");
        body["bundle"]["id"].as_str().unwrap().to_string()
    }

    /// Creates the `platform` 1.0.0 (10) release of `APP_ID` with `builtin` and returns its id.
    pub async fn create_release(&self, platform: &str, builtin: &str) -> String {
        let (status, body) = self
            .manage(
                "releases.create",
                json!({"platform": platform, "app_id": APP_ID, "version_name": "1.0.0",
                       "version_code": "10", "builtin_bundle_id": builtin}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["release"]["id"].as_str().unwrap().to_string()
    }

    /// Points `channel` of a release at a bundle.
    pub async fn set_active(&self, release: &str, bundle: &str, channel: &str) {
        let (status, body) = self
            .manage(
                "releases.set-active",
                json!({"release_id": release, "bundle_id": bundle, "channel": channel}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// What `/updates` offers each device of `ids` running the bundle `running` (an Android
    /// plugin 8 body, [`device_body`]): the version, or `""` for no update.
    pub async fn offers(
        &self,
        ids: &[String],
        running: &str,
    ) -> std::collections::BTreeMap<String, String> {
        use futures_util::StreamExt;
        futures_util::stream::iter(ids.iter().cloned())
            .map(|id| async move {
                let mut body = device_body(running, "8.51.14");
                body["device_id"] = json!(id);
                let (status, answer) = self.device("/updates", &body).await;
                assert_eq!(status, 200, "{answer}");
                let offered = answer["version"]
                    .as_str()
                    .filter(|_| answer.get("error").is_none())
                    .unwrap_or_default()
                    .to_string();
                (id, offered)
            })
            .buffer_unordered(32)
            .collect()
            .await
    }

    /// Posts `/stats` events, each `(device id, action, version name)`, in batches of 200 as
    /// plugins queue them.
    pub async fn report(&self, events: &[(String, &str, &str)]) {
        use futures_util::StreamExt;
        let batches: Vec<Value> = events
            .chunks(200)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|(id, action, version)| {
                        json!({"app_id": APP_ID, "device_id": id, "action": action,
                               "version_name": version, "platform": "android"})
                    })
                    .collect()
            })
            .collect();
        futures_util::stream::iter(batches)
            .for_each_concurrent(4, |batch| async move {
                let (status, answer) = self.device("/stats", &batch).await;
                assert_eq!(status, 200, "{answer}");
            })
            .await;
    }

    /// Each of `ids` reports `action` about `version` ([`Client::report`]).
    pub async fn report_all(&self, ids: &[String], action: &str, version: &str) {
        let events: Vec<_> = ids.iter().map(|id| (id.clone(), action, version)).collect();
        self.report(&events).await;
    }

    /// A series of the server's Prometheus metrics, e.g.
    /// `capgo_answer_cache_lookups_total{result="hit"}` (0 when absent).
    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.server_management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name_and_labels))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn download(&self, url: &str) -> Vec<u8> {
        let response = self.http.get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        response.bytes().await.unwrap().to_vec()
    }
}

/// The real MongoDB-compatible and S3 servers `scripts/services start` runs.
#[derive(Debug, Clone)]
pub struct Services {
    pub mongo_url: String,
    pub s3_endpoint: String,
    pub s3_bucket: String,
    pub aws: Vec<(String, String)>,
}

impl Services {
    /// The running services, or `None` (with a note) when they were not started. The test
    /// command sets CAPGO_REQUIRE_SERVICES=1, so there a missing service fails the test.
    pub fn get() -> Option<Services> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let found = (|| {
            Some(Services {
                mongo_url: var("CAPGO_TEST_MONGO_URL")?,
                s3_endpoint: var("CAPGO_TEST_S3_ENDPOINT")?,
                s3_bucket: var("CAPGO_TEST_S3_BUCKET")?,
                aws: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"]
                    .iter()
                    .map(|name| Some((name.to_string(), var(name)?)))
                    .collect::<Option<Vec<_>>>()?,
            })
        })();
        if found.is_none() {
            assert!(
                var("CAPGO_REQUIRE_SERVICES").is_none(),
                "MongoDB/S3 test services are required: run `scripts/services start` and source target/test-services/env"
            );
            eprintln!("skipped: no test services (run `scripts/services start` and source target/test-services/env)");
        }
        found
    }

    /// An S3 client for the test server (credentials from the environment).
    pub async fn s3_client(&self) -> aws_sdk_s3::Client {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.s3_endpoint)
            .load()
            .await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// A bucket no other test uses (tests that count objects need one of their own).
    pub async fn fresh_bucket(&self) -> String {
        let name = format!("capgo-test-{}", capgo_server::domain::RecordId::generate());
        self.s3_client()
            .await
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("cannot create bucket {name}: {e:?}"));
        name
    }

    /// A database name no other test uses.
    pub fn fresh_database() -> String {
        format!("capgo_test_{}", capgo_server::domain::RecordId::generate())
    }

    /// Server settings for MongoDB + S3 with a fresh database, through `mongo_url`/`s3_endpoint`
    /// (a [`FaultyProxy`] address, or the services' own).
    pub fn server_env(
        &self,
        database: &str,
        mongo_url: &str,
        s3_endpoint: &str,
    ) -> Vec<(String, String)> {
        self.server_env_with_bucket(database, mongo_url, s3_endpoint, &self.s3_bucket)
    }

    /// A bucket of its own and server settings for it, connected to both services directly.
    pub async fn env_with_fresh_bucket(&self) -> (String, Vec<(String, String)>) {
        let bucket = self.fresh_bucket().await;
        let env = self.server_env_with_bucket(
            &Self::fresh_database(),
            &self.mongo_url,
            &self.s3_endpoint,
            &bucket,
        );
        (bucket, env)
    }

    pub fn server_env_with_bucket(
        &self,
        database: &str,
        mongo_url: &str,
        s3_endpoint: &str,
        bucket: &str,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("MONGO_CONNECTION_STRING".to_string(), mongo_url.to_string()),
            ("MONGO_DATABASE".to_string(), database.to_string()),
            ("S3_BUCKET".to_string(), bucket.to_string()),
            ("S3_BASE_ENDPOINT".to_string(), s3_endpoint.to_string()),
            ("MANAGEMENT_API_TOKENS".to_string(), API_KEY.to_string()),
        ];
        env.extend(self.aws.iter().cloned());
        env
    }
}

/// Borrowed `(&str, &str)` pairs for [`ServerProcess::start`].
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A TCP forwarder in front of a real server, which a test can cut (dropping every open
/// connection and refusing new ones) and restore: a real network fault on loopback. It runs
/// on its own thread and runtime, so it keeps forwarding while the test thread blocks.
pub struct FaultyProxy {
    pub address: std::net::SocketAddr,
    open: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
    stop: tokio_util::sync::CancellationToken,
}

impl FaultyProxy {
    pub async fn start(target: &str) -> FaultyProxy {
        let target = target.to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let stop = tokio_util::sync::CancellationToken::new();
        let (open_flag, cut_token, stopped) = (open.clone(), cut.clone(), stop.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Some(Ok((mut inbound, _))) =
                    stopped.run_until_cancelled(listener.accept()).await
                {
                    if !open_flag.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let token = cut_token.lock().unwrap().clone();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = token.cancelled() => {}
                        }
                    });
                }
            });
        });
        FaultyProxy {
            address,
            open,
            cut,
            stop,
        }
    }

    /// `host:port` of a URL such as `mongodb://127.0.0.1:1234` or `http://127.0.0.1:1234`.
    pub fn target_of(url: &str) -> String {
        url.split("://")
            .nth(1)
            .unwrap()
            .trim_end_matches('/')
            .to_string()
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut token = self.cut.lock().unwrap();
        token.cancel();
        *token = tokio_util::sync::CancellationToken::new();
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().unwrap().cancel();
    }
}

/// A valid bundle of about `size` bytes (incompressible), so its upload takes a while.
pub fn sized_bundle(marker: &str, size: usize) -> Vec<u8> {
    zip_of(&[
        ("index.html", format!("<html>{marker}</html>").as_bytes()),
        ("noise.bin", &incompressible(size)),
    ])
}

/// Starts `uploads` (version, bytes) at once against `server`, then kills it with SIGKILL
/// after `after`, whatever each upload had reached.
pub async fn kill_during_uploads(
    server: ServerProcess,
    uploads: Vec<(String, Vec<u8>)>,
    after: Duration,
) {
    let client = Client::new(&server, API_KEY);
    let client = Arc::new(client);
    for (version, bytes) in uploads {
        let client = client.clone();
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .text("app_id", APP_ID)
                .text("version_name", version)
                .part(
                    "bundle",
                    reqwest::multipart::Part::bytes(bytes).file_name("b.zip"),
                );
            // Cut off by the kill: the outcome does not matter, what is stored does.
            let _ = client
                .http
                .post(format!(
                    "{}/api/v1/bundles.upload",
                    client.server_management
                ))
                .header("x-api-key", &client.key)
                .multipart(form)
                .timeout(Duration::from_secs(30))
                .send()
                .await;
        });
    }
    tokio::time::sleep(after).await;
    drop(server); // SIGKILL, then wait
}

/// After crashes: every recorded bundle downloads with its recorded size and SHA-256.
/// Returns the recorded versions.
pub async fn assert_every_record_has_its_bytes(server: &ServerProcess) -> Vec<String> {
    use sha2::Digest;
    let client = Client::new(server, API_KEY);
    let listed = client.list("bundles.list").await;
    let mut versions = Vec::new();
    for bundle in listed["data"].as_array().unwrap() {
        let url = bundle["public_download_url"].as_str().unwrap();
        let response = client.http.get(url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{url}");
        let bytes = response.bytes().await.unwrap();
        assert_eq!(
            bytes.len() as u64,
            bundle["size"].as_u64().unwrap(),
            "{bundle}"
        );
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            bundle["sha256"].as_str().unwrap(),
            "{bundle}"
        );
        versions.push(bundle["version_name"].as_str().unwrap().to_string());
    }
    versions
}

/// The value of a variable `scripts/services start` writes for a tool or service: `None`
/// (with a note) when unset, a failure when the test command requires services.
pub fn service_var(name: &str, what: &str) -> Option<String> {
    let value = std::env::var(name).ok().filter(|v| !v.is_empty());
    if value.is_none() {
        assert!(
            std::env::var_os("CAPGO_REQUIRE_SERVICES").is_none(),
            "{what} is required ({name} is not set): run `scripts/services start` and source target/test-services/env"
        );
        eprintln!("skipped: no {what} ({name} not set; run `scripts/services start` and source target/test-services/env)");
    }
    value
}

/// The Kubernetes API server (with etcd) that `scripts/services start` runs on loopback, with
/// kubectl of the same version and an admin token (group system:masters).
#[derive(Debug, Clone)]
pub struct KubeControlPlane {
    pub kubeconfig: String,
    pub kubectl: String,
    pub server: String,
    /// The serving certificate, to trust as the cluster CA.
    pub ca: String,
    pub admin_token: String,
}

/// The control plane, or `None` (with a note) when it was not started; a failure under
/// CAPGO_REQUIRE_SERVICES=1.
pub fn kube_control_plane() -> Option<KubeControlPlane> {
    let what = "Kubernetes control plane";
    Some(KubeControlPlane {
        kubeconfig: service_var("CAPGO_TEST_KUBECONFIG", what)?,
        kubectl: service_var("CAPGO_TEST_KUBECTL", what)?,
        server: service_var("CAPGO_TEST_KUBE_SERVER", what)?,
        ca: service_var("CAPGO_TEST_KUBE_CA", what)?,
        admin_token: service_var("CAPGO_TEST_KUBE_TOKEN", what)?,
    })
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    /// Stdout, after asserting success (stderr in the message otherwise).
    pub fn ok(self) -> String {
        assert!(
            self.success,
            "kubectl failed: {}{}",
            self.stderr, self.stdout
        );
        self.stdout
    }
}

impl KubeControlPlane {
    /// Runs kubectl as the admin with `stdin` as its input (for `-f -`).
    pub fn kubectl_with_input(&self, args: &[&str], stdin: &str) -> KubectlOutput {
        // Discovery is cached beside the kubeconfig, so `scripts/services stop` removes it.
        let cache = Path::new(&self.kubeconfig)
            .with_file_name("kube")
            .join("cache");
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(cache)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        KubectlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.kubectl_with_input(args, "")
    }

    /// A new namespace named `prefix-<random>`, so tests run in parallel against one API
    /// server and again without a restart (a deleted namespace stays Terminating here: no
    /// controller-manager runs).
    pub fn fresh_namespace(&self, prefix: &str) -> String {
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).unwrap();
        let name = format!("{prefix}-{}", hex::encode(suffix));
        self.kubectl(&["create", "namespace", &name]).ok();
        name
    }

    /// Installs the committed CRDs (server-side apply: idempotent, so every test may call it)
    /// and waits until they serve.
    pub fn install_crds(&self) {
        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        self.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=capgo-tests",
            "-f",
            crds.to_str().unwrap(),
        ])
        .ok();
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/bundles.capgo-server.io",
            "crd/releases.capgo-server.io",
            "crd/channels.capgo-server.io",
        ])
        .ok();
    }
}

/// The channel `channel` of the first release in an `apps.overview` answer.
pub fn overview_channel(overview: &Value, channel: &str) -> Value {
    overview["releases"][0]["channels"]
        .as_array()
        .unwrap_or_else(|| panic!("no releases in {overview}"))
        .iter()
        .find(|c| c["channel"] == channel)
        .unwrap_or_else(|| panic!("no channel {channel} in {overview}"))
        .clone()
}
