//! `capgo-server migrate` gives bundles stored before manifests existed theirs: resumable (a
//! run that failed part-way is finished by the next, which skips what is done), and on MongoDB
//! + S3 while a server serves (devices get the zip until the manifest is there, then it).

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

use capgo_server::domain::{now_millis, Bundle, BundleEncryption, RecordId};
use capgo_server::store::fs_blobs::FilesystemBlobStore;
use capgo_server::store::mongo::MongoMetadataStore;
use capgo_server::store::s3::{DownloadUrls, S3BlobStore, S3Settings};
use capgo_server::store::sqlite::SqliteMetadataStore;
use capgo_server::store::{BlobStore, CatalogStore};

/// Stores a bundle as a server from before manifests did: its zip and its record only.
async fn store_old_bundle(
    metadata: &dyn CatalogStore,
    blobs: &dyn BlobStore,
    version: &str,
    zip: &[u8],
    encryption: Option<BundleEncryption>,
) -> Bundle {
    let id = RecordId::generate();
    let bundle = Bundle {
        blob_key: Bundle::blob_key_for(&id),
        id,
        app_id: APP_ID.into(),
        version_name: version.into(),
        description: String::new(),
        link: None,
        min_update_version: None,
        sha256: sha256_hex(zip),
        crc32: format!("{:08x}", crc32fast::hash(zip)),
        size: zip.len() as u64,
        encryption,
        created_at: now_millis(),
        owner: None,
    };
    let staged = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(staged.path(), zip).unwrap();
    blobs
        .put_file(&bundle.blob_key, staged.path())
        .await
        .unwrap();
    metadata.insert_bundle(&bundle).await.unwrap();
    bundle
}

fn migrate(data: &Path, env: &[(String, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_capgo-server"))
        .arg("migrate")
        .env_clear()
        .env("DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .current_dir(data)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap()
}

fn summary(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("manifests:"))
        .unwrap_or_else(|| {
            panic!(
                "no summary: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string()
}

fn encrypted() -> BundleEncryption {
    BundleEncryption {
        session_key: "aXY=:a2V5".into(),
        checksum: "ab".repeat(256),
        key_id: None,
    }
}

/// Three old bundles, one encrypted; the first run cannot read 1.0.1's zip (moved away), the
/// second finishes, the third has nothing to do. `hide` and `restore` move 1.0.1's zip.
async fn runs_resume(
    data: &Path,
    env: &[(String, String)],
    hide: impl AsyncFnOnce(),
    restore: impl AsyncFnOnce(),
) {
    hide().await;
    let first = migrate(data, env);
    assert!(!first.status.success(), "a failed bundle fails the run");
    assert_eq!(
        summary(&first),
        "manifests: 1 recorded now, 0 already there, 1 bundles served as zips only \
         (encrypted, or more files than a manifest lists), 1 failed"
    );
    assert!(String::from_utf8_lossy(&first.stderr).contains("run again"));
    restore().await;
    let second = migrate(data, env);
    assert!(second.status.success(), "{second:?}");
    assert!(summary(&second).starts_with("manifests: 1 recorded now, 1 already there, 1 bundles"));
    let third = migrate(data, env);
    assert!(summary(&third).starts_with("manifests: 0 recorded now, 2 already there, 1 bundles"));
}

/// A device of 1.0.0 asking for 1.0.1 gets a manifest whose files are exactly 1.0.1's.
async fn manifest_offered(client: &Client) -> Option<Vec<Value>> {
    let (status, answer) = client
        .device("/updates", &device_body("1.0.0", "8.51.14"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], "1.0.1", "{answer}");
    answer["manifest"].as_array().cloned()
}

async fn check_manifest(client: &Client, manifest: &[Value]) {
    let mut names: Vec<&str> = manifest
        .iter()
        .map(|e| e["file_name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["assets/app.js", "index.html"]);
    for entry in manifest {
        let bytes = client
            .download(entry["download_url"].as_str().unwrap())
            .await;
        assert_eq!(sha256_hex(&bytes), entry["file_hash"]);
    }
}

async fn promote(client: &Client, builtin: &Bundle, next: &Bundle) {
    let release = client.create_release("android", builtin.id.as_str()).await;
    client
        .set_active(&release, next.id.as_str(), "production")
        .await;
}

#[tokio::test]
async fn migrate_fills_manifests_of_old_bundles_embedded() {
    let data = tempfile::tempdir().unwrap();
    let (builtin, next, hidden) = {
        let metadata = SqliteMetadataStore::open(&data.path().join("capgo.db")).unwrap();
        let blobs =
            FilesystemBlobStore::open(data.path().join("blobs"), "http://localhost").unwrap();
        let builtin =
            store_old_bundle(&metadata, &blobs, "1.0.0", &web_bundle("1.0.0"), None).await;
        let next = store_old_bundle(&metadata, &blobs, "1.0.1", &web_bundle("1.0.1"), None).await;
        store_old_bundle(&metadata, &blobs, "0.9.0", b"ciphertext", Some(encrypted())).await;
        let hidden = data.path().join("blobs").join(&next.blob_key);
        (builtin, next, hidden)
    };
    let aside = data.path().join("aside.zip");
    runs_resume(
        data.path(),
        &[],
        async || std::fs::rename(&hidden, &aside).unwrap(),
        async || std::fs::rename(&aside, &hidden).unwrap(),
    )
    .await;
    let server = start_with_public_url(data.path(), &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    let client = Client::new(&server, API_KEY);
    promote(&client, &builtin, &next).await;
    let manifest = manifest_offered(&client).await.expect("a manifest");
    check_manifest(&client, &manifest).await;
    assert!(server.stop().success());
}

#[tokio::test]
async fn migrate_fills_manifests_on_mongodb_and_s3_while_a_server_serves() {
    let Some(services) = Services::get() else {
        return;
    };
    let (bucket, env) = services.env_with_fresh_bucket().await;
    let database = env
        .iter()
        .find(|(k, _)| k == "MONGO_DATABASE")
        .unwrap()
        .1
        .clone();
    let metadata = MongoMetadataStore::connect(&services.mongo_url, &database)
        .await
        .unwrap();
    let blobs = S3BlobStore::connect(S3Settings {
        bucket: bucket.clone(),
        endpoint: Some(services.s3_endpoint.clone()),
        download_urls: DownloadUrls::Presigned(Duration::from_secs(600)),
    })
    .await
    .unwrap();
    let builtin = store_old_bundle(&metadata, &blobs, "1.0.0", &web_bundle("1.0.0"), None).await;
    let next = store_old_bundle(&metadata, &blobs, "1.0.1", &web_bundle("1.0.1"), None).await;
    store_old_bundle(&metadata, &blobs, "0.9.0", b"ciphertext", Some(encrypted())).await;

    // A replica serves throughout; it re-reads targets every second.
    let mut serving_env = env.clone();
    serving_env.push(("CACHE_RESULT_DURATION".into(), "1s".into()));
    let serving_dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(serving_dir.path(), &env_refs(&serving_env));
    let client = Client::new(&server, API_KEY);
    promote(&client, &builtin, &next).await;
    assert!(
        manifest_offered(&client).await.is_none(),
        "the zip until the manifest is recorded"
    );

    let data = tempfile::tempdir().unwrap();
    let zip = std::sync::Mutex::new(Vec::new());
    runs_resume(
        data.path(),
        &env,
        async || {
            let mut bytes = Vec::new();
            let mut chunks = blobs.read(&next.blob_key).await.unwrap().unwrap();
            while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
                bytes.extend_from_slice(&chunk.unwrap());
            }
            *zip.lock().unwrap() = bytes;
            blobs.delete(&next.blob_key).await.unwrap();
        },
        async || {
            let staged = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(staged.path(), zip.lock().unwrap().as_slice()).unwrap();
            blobs.put_file(&next.blob_key, staged.path()).await.unwrap();
        },
    )
    .await;

    let started = Instant::now();
    let manifest = loop {
        if let Some(manifest) = manifest_offered(&client).await {
            break manifest;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the serving replica sees it"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    check_manifest(&client, &manifest).await;
}
