//! Delta downloads against the real binary over real sockets, on the embedded store and on
//! MongoDB + S3: a device simulated as the plugin does it holds 1.0.0's files, asks for 1.0.1,
//! downloads only the manifest entries whose hash it lacks (decompressing `.br`, verifying each
//! `file_hash`) and ends with exactly 1.0.1's files; deleting a bundle keeps the files other
//! bundles use.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use common::*;
use serde_json::{json, Value};

use capgo_server::domain::manifest::file_object_key;
use capgo_server::domain::{now_millis, RecordId};
use capgo_server::store::mongo::MongoMetadataStore;
use capgo_server::store::sqlite::SqliteMetadataStore;
use capgo_server::store::MetadataStore;

/// A web build as bundlers emit it: an entry page, a large compressible script and style,
/// a vendor chunk, and an image that does not compress. `app` changes the app's own code.
fn web_build(app: &str) -> BTreeMap<String, Vec<u8>> {
    let script = |name: &str, lines: usize| -> Vec<u8> {
        (0..lines)
            .map(|i| format!("export function {name}{i}(a, b) {{ return a * {i} + b; }}\n"))
            .collect::<String>()
            .into_bytes()
    };
    let mut files = BTreeMap::new();
    files.insert(
        "index.html".to_string(),
        b"<!doctype html><html><head><script type=\"module\" src=\"/assets/app.js\"></script>\
          <link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body></body></html>"
            .to_vec(),
    );
    files.insert("assets/app.js".to_string(), script(app, 2000));
    files.insert("assets/vendor.js".to_string(), script("vendor", 6000));
    files.insert(
        "assets/style.css".to_string(),
        (0..1500)
            .map(|i| format!(".c{i} {{ margin: {i}px; color: #{:06x}; }}\n", i * 7919))
            .collect::<String>()
            .into_bytes(),
    );
    files.insert("assets/logo.png".to_string(), incompressible(300_000));
    files
}

/// The zip of a build, in a top folder as `bundle zip` of a `dist/` folder makes it.
fn zip_build(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let entries: Vec<(String, &[u8])> = files
        .iter()
        .map(|(path, bytes)| (format!("dist/{path}"), bytes.as_slice()))
        .collect();
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(p, b)| (p.as_str(), *b)).collect();
    zip_of(&refs)
}

/// A device's view of an app: the files of the bundle it runs, by path.
struct SimulatedDevice {
    files: BTreeMap<String, Vec<u8>>,
    downloaded_bytes: usize,
    downloads: usize,
}

impl SimulatedDevice {
    /// Installs from a manifest as the plugin does: a file whose hash the device already has
    /// is copied, any other is downloaded (decompressed when named `.br`) and must hash to
    /// its `file_hash`; the new bundle is exactly the manifest's files.
    async fn install(&mut self, client: &Client, manifest: &[Value]) {
        let by_hash: BTreeMap<String, Vec<u8>> = self
            .files
            .values()
            .map(|bytes| (sha256_hex(bytes), bytes.clone()))
            .collect();
        let mut next = BTreeMap::new();
        for entry in manifest {
            let name = entry["file_name"].as_str().unwrap();
            let hash = entry["file_hash"].as_str().unwrap();
            let url = entry["download_url"].as_str().unwrap();
            assert!(url.starts_with("http"), "absolute: {url}");
            let (path, brotli) = match name.strip_suffix(".br") {
                Some(path) => (path, true),
                None => (name, false),
            };
            let bytes = match by_hash.get(hash) {
                Some(bytes) => bytes.clone(),
                None => {
                    let body = client.download(url).await;
                    self.downloaded_bytes += body.len();
                    self.downloads += 1;
                    if brotli {
                        let mut inflated = Vec::new();
                        brotli::Decompressor::new(body.as_slice(), 4096)
                            .read_to_end(&mut inflated)
                            .unwrap();
                        inflated
                    } else {
                        body
                    }
                }
            };
            assert_eq!(sha256_hex(&bytes), hash, "{name}");
            assert!(
                next.insert(path.to_string(), bytes).is_none(),
                "{path} twice"
            );
        }
        self.files = next;
    }
}

fn device_running(version: &str, plugin: &str) -> Value {
    device_body(version, plugin)
}

/// Uploads 1.0.0 and 1.0.1 (one file changed) of APP_ID, makes 1.0.0 the builtin bundle of
/// an android release and points production at 1.0.1; returns the builds and 1.0.1's id.
async fn two_versions(
    client: &Client,
) -> (
    BTreeMap<String, Vec<u8>>,
    BTreeMap<String, Vec<u8>>,
    Vec<u8>,
) {
    let old = web_build("app");
    let new = web_build("appNext");
    let (status, body) = client.upload(APP_ID, "1.0.0", zip_build(&old)).await;
    assert_eq!(status, 200, "{body}");
    let builtin = body["bundle"]["id"].as_str().unwrap().to_string();
    let new_zip = zip_build(&new);
    let (status, body) = client.upload(APP_ID, "1.0.1", new_zip.clone()).await;
    assert_eq!(status, 200, "{body}");
    let next = body["bundle"]["id"].as_str().unwrap().to_string();
    let release = client.create_release("android", &builtin).await;
    client.set_active(&release, &next, "production").await;
    (old, new, new_zip)
}

async fn a_device_downloads_only_the_files_it_lacks(server: &ServerProcess) {
    let client = Client::new(server, API_KEY);
    let (old, new, new_zip) = two_versions(&client).await;

    let (status, answer) = client
        .device("/updates", &device_running("1.0.0", "8.51.14"))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], "1.0.1");
    // Kept for plugins that take no manifest, and because plugins check `url` is a URL.
    assert_eq!(answer["checksum"], sha256_hex(&new_zip));
    assert!(answer["url"].as_str().unwrap().starts_with("http"));
    let manifest = answer["manifest"].as_array().expect("a manifest").clone();
    let names: BTreeSet<&str> = manifest
        .iter()
        .map(|e| e["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "assets/app.js.br",
            "assets/logo.png",
            "assets/style.css.br",
            "assets/vendor.js.br",
            "index.html",
        ]),
        "compressible files as Brotli copies; the image and the small page as they are"
    );

    // What the plugin's getBundleDownloadSize asks before downloading.
    let lacking: Vec<Value> = manifest
        .iter()
        .filter(|e| !old.values().any(|b| sha256_hex(b) == e["file_hash"]))
        .cloned()
        .collect();
    assert_eq!(lacking.len(), 1, "only app.js changed: {lacking:?}");
    let mut sizes_body = device_running("1.0.0", "8.51.14");
    sizes_body["version"] = json!("1.0.1");
    sizes_body["manifest"] = json!(lacking);
    let (status, sizes) = client.device("/updates/manifest_size", &sizes_body).await;
    assert_eq!(status, 200, "{sizes}");
    assert_eq!(
        (sizes["knownFiles"].as_u64(), sizes["unknownFiles"].as_u64()),
        (Some(1), Some(0))
    );

    let mut device = SimulatedDevice {
        files: old,
        downloaded_bytes: 0,
        downloads: 0,
    };
    device.install(&client, &manifest).await;
    assert_eq!(device.files, new, "exactly 1.0.1's files");
    assert_eq!(device.downloads, 1);
    assert_eq!(
        device.downloaded_bytes as u64,
        sizes["totalSize"].as_u64().unwrap(),
        "manifest_size told what the download weighed"
    );
    eprintln!(
        "one changed file: {} bytes downloaded against the {}-byte zip ({:.3})",
        device.downloaded_bytes,
        new_zip.len(),
        device.downloaded_bytes as f64 / new_zip.len() as f64
    );
    assert!(device.downloaded_bytes * 20 < new_zip.len());

    // A device that has nothing (a fresh install of another build) gets every file.
    let mut fresh = SimulatedDevice {
        files: BTreeMap::new(),
        downloaded_bytes: 0,
        downloads: 0,
    };
    fresh.install(&client, &manifest).await;
    assert_eq!(fresh.files, new);
    assert!(
        fresh.downloaded_bytes < new_zip.len(),
        "Brotli beats deflate"
    );

    // Range on a file, as the plugin resumes one.
    let url = manifest
        .iter()
        .find(|e| e["file_name"] == "assets/logo.png")
        .unwrap()["download_url"]
        .as_str()
        .unwrap();
    let response = client
        .http
        .get(url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 206);
    assert!(response.headers().get("content-encoding").is_none());
    let part = response.bytes().await.unwrap();
    assert_eq!(&part[..], &new["assets/logo.png"][1000..2000]);

    // Plugins 5.x never decompress: plain files. 7.0.35-7.0.37 decompress every file and
    // older ones take no manifest: the zip.
    let (_, answer) = client
        .device("/updates", &device_running("1.0.0", "5.10.0"))
        .await;
    let plain = answer["manifest"].as_array().expect("a manifest for 5.10");
    assert!(plain
        .iter()
        .all(|e| !e["file_name"].as_str().unwrap().ends_with(".br")));
    let mut five = SimulatedDevice {
        files: BTreeMap::new(),
        downloaded_bytes: 0,
        downloads: 0,
    };
    five.install(&client, plain).await;
    assert_eq!(five.files, new);
    for old_plugin in ["5.9.0", "6.24.0", "7.0.36"] {
        let (_, answer) = client
            .device("/updates", &device_running("1.0.0", old_plugin))
            .await;
        assert_eq!(answer["version"], "1.0.1", "{old_plugin}: {answer}");
        assert!(answer.get("manifest").is_none(), "{old_plugin}: {answer}");
        let zip = client.download(answer["url"].as_str().unwrap()).await;
        assert_eq!(zip, new_zip, "{old_plugin} gets the zip");
    }

    // Bad manifest_size bodies: a 400 naming the problem; an unknown bundle: sizes unknown.
    for (field, value, says) in [
        ("manifest", json!("x"), "manifest must be the array"),
        ("manifest", json!([1]), "manifest[0] must be an object"),
        (
            "manifest",
            json!([{"file_name": 3, "file_hash": "a"}]),
            "manifest[0].file_name must be a string",
        ),
        ("version", json!(""), "version must name the bundle"),
    ] {
        let mut body = sizes_body.clone();
        body[field] = value;
        let (status, refusal) = client.device("/updates/manifest_size", &body).await;
        assert_eq!(status, 400, "{refusal}");
        assert!(
            refusal["message"].as_str().unwrap().contains(says),
            "{refusal}"
        );
    }
    let mut body = sizes_body.clone();
    body.as_object_mut().unwrap().remove("app_id");
    let (status, refusal) = client.device("/updates/manifest_size", &body).await;
    assert_eq!(status, 400, "{refusal}");
    let mut body = sizes_body.clone();
    body["version"] = json!("9.9.9");
    let (status, sizes) = client.device("/updates/manifest_size", &body).await;
    assert_eq!(status, 200, "{sizes}");
    assert_eq!(sizes["unknownFiles"], 1);
    assert_eq!(sizes["files"][0]["error"], "size_unknown");
}

#[tokio::test]
async fn a_device_downloads_only_the_files_it_lacks_embedded() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(data.path(), &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    a_device_downloads_only_the_files_it_lacks(&server).await;
    assert!(server.stop().success());
}

#[tokio::test]
async fn a_device_downloads_only_the_files_it_lacks_on_mongodb_and_s3() {
    let Some(services) = Services::get() else {
        return;
    };
    let (_bucket, env) = services.env_with_fresh_bucket().await;
    let data = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(data.path(), &env_refs(&env));
    a_device_downloads_only_the_files_it_lacks(&server).await;
}

/// The file objects stored now: `files/…` keys.
type ObjectLister<'a> = &'a (dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = BTreeSet<String>> + 'a>>
         + 'a);

/// Two bundles share files; deleting one and sweeping removes only the files it alone used,
/// and uploads after the sweep store what they need again.
async fn deleting_a_bundle_keeps_shared_files(
    start: &dyn Fn() -> ServerProcess,
    file_objects: ObjectLister<'_>,
) {
    let server = start();
    let client = Client::new(&server, API_KEY);
    let shared = web_build("shared");
    let mut other = shared.clone();
    other.insert(
        "assets/only-b.js".into(),
        b"export const b = 1;".repeat(100),
    );
    other.insert("assets/app.js".into(), b"export const a = 2;".repeat(100));
    let (status, a) = client.upload(APP_ID, "2.0.0", zip_build(&shared)).await;
    assert_eq!(status, 200, "{a}");
    let (status, b) = client
        .upload("com.example.other", "2.0.0", zip_build(&other))
        .await;
    assert_eq!(status, 200, "{b}");
    let before = file_objects().await;
    // Identical files across bundles and apps are stored once.
    let contents: BTreeSet<String> = shared
        .values()
        .chain(other.values())
        .map(|b| sha256_hex(b))
        .collect();
    let plain: Vec<&String> = before.iter().filter(|k| !k.ends_with(".br")).collect();
    assert_eq!(plain.len(), contents.len(), "{before:?}");
    let stored: BTreeSet<String> = before
        .iter()
        .map(|k| k["files/".len().."files/".len() + 64].to_string())
        .collect();
    assert_eq!(stored, contents);
    let (status, body) = client
        .manage("bundles.delete", json!({"bundle_id": a["bundle"]["id"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        file_objects().await,
        before,
        "deleting a bundle deletes no shared file"
    );
    drop(server);

    // A restart sweeps (no grace on these servers).
    let server = start();
    let after = file_objects().await;
    let gone: BTreeSet<&String> = before.difference(&after).collect();
    let app_js = sha256_hex(&shared["assets/app.js"]);
    assert!(
        !gone.is_empty() && gone.iter().all(|k| k.contains(&app_js)),
        "only a's own app.js: {gone:?}"
    );
    // b still installs completely from its manifest.
    let client = Client::new(&server, API_KEY);
    let release = client
        .manage(
            "releases.create",
            json!({"platform": "android", "app_id": "com.example.other", "version_name": "1.0.0",
                   "version_code": "10", "builtin_bundle_id": b["bundle"]["id"]}),
        )
        .await
        .1["release"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, c) = client
        .upload("com.example.other", "2.0.1", zip_build(&shared))
        .await;
    assert_eq!(status, 200, "{c}");
    client
        .set_active(&release, c["bundle"]["id"].as_str().unwrap(), "production")
        .await;
    let mut body = device_running("2.0.0", "8.51.14");
    body["app_id"] = json!("com.example.other");
    let (_, answer) = client.device("/updates", &body).await;
    let mut device = SimulatedDevice {
        files: BTreeMap::new(),
        downloaded_bytes: 0,
        downloads: 0,
    };
    device
        .install(&client, answer["manifest"].as_array().expect("a manifest"))
        .await;
    assert_eq!(device.files, shared, "the deleted file was stored again");
}

#[tokio::test]
async fn deleting_a_bundle_keeps_shared_files_embedded() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_path_buf();
    let start = || start_with_public_url(&path, &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    let blobs = data.path().join("blobs");
    let list = || -> std::pin::Pin<Box<dyn std::future::Future<Output = BTreeSet<String>>>> {
        let blobs = blobs.clone();
        Box::pin(async move {
            list_files(&blobs)
                .into_iter()
                .filter_map(|path| {
                    let key = path.strip_prefix(&format!("{}/", blobs.display()))?;
                    key.starts_with("files/").then(|| key.to_string())
                })
                .collect()
        })
    };
    deleting_a_bundle_keeps_shared_files(&start, &list).await;
}

#[tokio::test]
async fn deleting_a_bundle_keeps_shared_files_on_mongodb_and_s3() {
    let Some(services) = Services::get() else {
        return;
    };
    let (bucket, mut env) = services.env_with_fresh_bucket().await;
    env.push(("ORPHAN_GRACE_PERIOD".into(), "0s".into()));
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_path_buf();
    let start = || ServerProcess::start(&path, &env_refs(&env));
    let s3 = services.s3_client().await;
    let list = || -> std::pin::Pin<Box<dyn std::future::Future<Output = BTreeSet<String>> + '_>> {
        let (s3, bucket) = (&s3, &bucket);
        Box::pin(async move {
            let listed = s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix("files/")
                .send()
                .await
                .unwrap();
            listed
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect()
        })
    };
    deleting_a_bundle_keeps_shared_files(&start, &list).await;
}

/// The sweep's mark is respected: once a file object is marked doomed, an upload of the same
/// content stores a fresh copy under another key instead of relying on it, and the next sweep
/// deletes the doomed object (no manifest names it) while the new bundle keeps its files.
async fn uploads_never_reuse_a_doomed_object(
    start: &dyn Fn() -> ServerProcess,
    store: &dyn MetadataStore,
) {
    let server = start();
    let client = Client::new(&server, API_KEY);
    let build = web_build("doomed");
    let (status, a) = client.upload(APP_ID, "3.0.0", zip_build(&build)).await;
    assert_eq!(status, 200, "{a}");
    let app_js = sha256_hex(&build["assets/app.js"]);
    let doomed = [
        file_object_key(&app_js, false, None),
        file_object_key(&app_js, true, None),
    ];
    // What a sweep does when it finds them unused (here: forced, while a still uses them).
    store
        .mark_file_objects_doomed(&doomed, now_millis())
        .await
        .unwrap();
    let (status, b) = client.upload(APP_ID, "3.0.1", zip_build(&build)).await;
    assert_eq!(status, 200, "{b}");
    let b_id = RecordId::parse(b["bundle"]["id"].as_str().unwrap(), "id").unwrap();
    let manifest = store.bundle_manifest(&b_id).await.unwrap().unwrap();
    let entry = manifest.iter().find(|e| e.path == "assets/app.js").unwrap();
    let fresh: Vec<&str> = entry.object_keys().collect();
    for key in &fresh {
        assert!(!doomed.iter().any(|d| d == key), "{key} is a fresh copy");
        assert!(key.starts_with(&format!("files/{app_js}-")), "{key}");
    }
    let (status, body) = client
        .manage("bundles.delete", json!({"bundle_id": a["bundle"]["id"]}))
        .await;
    assert_eq!(status, 200, "{body}");
    drop(server);

    let server = start();
    let client = Client::new(&server, API_KEY);
    assert!(
        store.doomed_file_objects().await.unwrap().is_empty(),
        "the sweep deleted and unmarked them"
    );
    for key in &doomed {
        assert!(!store.file_object_in_use(key).await.unwrap());
    }
    // b's files, the fresh copies included, all download and hash right.
    let (status, c) = client
        .upload(APP_ID, "3.0.2", zip_build(&web_build("next")))
        .await;
    assert_eq!(status, 200, "{c}");
    let release = client
        .create_release("android", c["bundle"]["id"].as_str().unwrap())
        .await;
    client
        .set_active(&release, b["bundle"]["id"].as_str().unwrap(), "production")
        .await;
    let (_, answer) = client
        .device("/updates", &device_running("3.0.2", "8.51.14"))
        .await;
    let offered = answer["manifest"].as_array().expect("a manifest");
    assert!(offered.iter().any(|e| e["download_url"]
        .as_str()
        .unwrap()
        .contains(&format!("{app_js}-"))));
    let mut device = SimulatedDevice {
        files: BTreeMap::new(),
        downloaded_bytes: 0,
        downloads: 0,
    };
    device.install(&client, offered).await;
    assert_eq!(device.files, build);
}

#[tokio::test]
async fn uploads_never_reuse_a_doomed_object_embedded() {
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_path_buf();
    let start = || start_with_public_url(&path, &[("MANAGEMENT_API_TOKENS", API_KEY)]);
    // The server's own database, opened beside it as a sweep of another process would.
    let first = start();
    let store = SqliteMetadataStore::open(&data.path().join("capgo.db")).unwrap();
    drop(first);
    uploads_never_reuse_a_doomed_object(&start, &store).await;
}

#[tokio::test]
async fn uploads_never_reuse_a_doomed_object_on_mongodb_and_s3() {
    let Some(services) = Services::get() else {
        return;
    };
    let (_bucket, mut env) = services.env_with_fresh_bucket().await;
    env.push(("ORPHAN_GRACE_PERIOD".into(), "0s".into()));
    let database = env
        .iter()
        .find(|(k, _)| k == "MONGO_DATABASE")
        .unwrap()
        .1
        .clone();
    let store = MongoMetadataStore::connect(&services.mongo_url, &database)
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let path = data.path().to_path_buf();
    let start = || ServerProcess::start(&path, &env_refs(&env));
    uploads_never_reuse_a_doomed_object(&start, &store).await;
}
