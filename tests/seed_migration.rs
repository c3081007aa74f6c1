//! `capgo-server migrate --from-seed-database`: a MongoDB database and a bucket written in the
//! seed's format (tanapoln/capgo-server: collections and fields of its Go models, objects under
//! `<YYYY-MM>/<version>_<xid>.zip` named only by `public_download_url`), migrated on the real
//! MongoDB-compatible and S3 servers (`scripts/services`), then served by the binary.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, DateTime, Document};
use serde_json::{json, Value};

const SEED_ID_HOST: &str = "http://minio:9000";

/// A seed bundle: id, version name, description, creation time (ms), object key, and for a
/// large one its size.
struct SeedBundle {
    id: &'static str,
    version: &'static str,
    description: &'static str,
    created_at: i64,
    key: &'static str,
    size: usize,
}

const B1: SeedBundle = SeedBundle {
    id: "66ed2f22a1b2c3d4e5000001",
    version: "1.0.0",
    description: "built into store build 1.0.0(1)",
    created_at: 1_726_820_130_123,
    key: "2024-09/1.0.0_crmiu8if78gh14g0000g.zip",
    size: 0,
};
/// 1.0.1, first upload: a duplicate the seed allowed.
const B2: SeedBundle = SeedBundle {
    id: "66fd27b0a1b2c3d4e5000002",
    version: "1.0.1",
    description: "",
    created_at: 1_727_866_800_500,
    key: "2024-10/1.0.1_cruifc2f78gh14g00010.zip",
    size: 0,
};
/// 1.0.1 again: the one a release serves.
const B3: SeedBundle = SeedBundle {
    id: "66fd28e6a1b2c3d4e5000003",
    version: "1.0.1",
    description: "re-upload of 1.0.1",
    created_at: 1_727_867_110_250,
    key: "2024-10/1.0.1_cruihpif78gh14g0001g.zip",
    size: 0,
};
/// A version name with a space: its key is percent-encoded in the URL.
const B4: SeedBundle = SeedBundle {
    id: "66fe63d8a1b2c3d4e5000004",
    version: "1.0.3 beta",
    description: "",
    created_at: 1_727_947_800_000,
    key: "2024-10/1.0.3 beta_crujpm2f78gh14g00020.zip",
    size: 0,
};
const BUNDLES: [&SeedBundle; 4] = [&B1, &B2, &B3, &B4];
/// A large bundle (its copy takes a while), uploaded last.
const LARGE: SeedBundle = SeedBundle {
    id: "66ff0a00a1b2c3d4e5000005",
    version: "2.0.0",
    description: "large",
    created_at: 1_727_990_000_000,
    key: "2024-10/2.0.0_crul2k2f78gh14g00030.zip",
    size: 12 << 20,
};

const R1: &str = "66ed3030a1b2c3d4e5000065";
const R2: &str = "66ed306ca1b2c3d4e5000066";
const R3: &str = "67010010a1b2c3d4e5000067";
const R4: &str = "67010020a1b2c3d4e5000068";
const R5: &str = "67010030a1b2c3d4e5000069";
const DANGLING: &str = "67010010a1b2c3d4e50003e7";

fn zip_for(bundle: &SeedBundle) -> Vec<u8> {
    let marker = format!("{} {}", bundle.version, bundle.id);
    match bundle.size {
        0 => web_bundle(&marker),
        size => sized_bundle(&marker, size),
    }
}

fn oid(hex: &str) -> ObjectId {
    ObjectId::parse_str(hex).unwrap()
}

/// The URL the seed's S3 uploader recorded: path-style, under an address only the seed's
/// network knew, the key escaped.
fn public_download_url(bucket: &str, key: &str) -> String {
    format!("{SEED_ID_HOST}/{bucket}/{}", key.replace(' ', "%20"))
}

/// A document as the seed's `db.Bundle` wrote it (every field, in its order).
fn bundle_doc(bucket: &str, b: &SeedBundle) -> Document {
    doc! {
        "_id": oid(b.id), "app_id": APP_ID, "version_name": b.version,
        "description": b.description,
        "crc_checksum": format!("{:08x}", crc32fast::hash(&zip_for(b))),
        "signature": "", "public_download_url": public_download_url(bucket, b.key),
        "created_at": DateTime::from_millis(b.created_at),
    }
}

/// A document as the seed's `db.Release` wrote it.
#[allow(clippy::too_many_arguments)]
fn release_doc(
    id: &str,
    platform: &str,
    version_name: &str,
    version_code: &str,
    released: Option<i64>,
    builtin: &str,
    active: Option<&str>,
    at: i64,
) -> Document {
    doc! {
        "_id": oid(id), "platform": platform, "app_id": APP_ID, "version_name": version_name,
        "version_code": version_code,
        "released_date": released.map_or(Bson::Null, |ms| Bson::DateTime(DateTime::from_millis(ms))),
        "builtin_bundle_id": oid(builtin),
        "active_bundle_id": active.map_or(Bson::Null, |id| Bson::ObjectId(oid(id))),
        "updated_at": DateTime::from_millis(at), "created_at": DateTime::from_millis(at),
    }
}

/// Writes the seed: its database (no unique index: the seed's Docker image never ran its
/// `migrate`) with `bundles` and the releases, and their objects in `bucket`, all but those of
/// `missing`.
async fn write_seed(
    services: &Services,
    database: &str,
    bucket: &str,
    bundles: &[&SeedBundle],
    missing: &[&SeedBundle],
) {
    let db = mongo(services).await.database(database);
    let docs: Vec<Document> = bundles.iter().map(|b| bundle_doc(bucket, b)).collect();
    db.collection::<Document>("bundles")
        .insert_many(docs)
        .await
        .unwrap();
    let releases = db.collection::<Document>("releases");
    // One at a time: the natural order is the insertion order.
    for release in [
        release_doc(
            R1,
            "android",
            "1.0.0",
            "1",
            None,
            B1.id,
            None,
            1_726_820_400_000,
        ),
        release_doc(
            R2,
            "ios",
            "1.0.0",
            "1",
            Some(1_726_876_800_000),
            B1.id,
            Some(B3.id),
            1_726_820_460_000,
        ),
        release_doc(
            R3,
            "android",
            "1.1.0",
            "5",
            None,
            B2.id,
            Some(DANGLING),
            1_728_118_800_000,
        ),
        release_doc(
            R4,
            "android",
            "1.2.0",
            "7",
            None,
            B2.id,
            Some("000000000000000000000000"),
            1_728_208_800_000,
        ),
        // The same native build as R1 again (allowed without the unique index).
        release_doc(
            R5,
            "android",
            "1.0.0",
            "1",
            None,
            B1.id,
            Some(B4.id),
            1_728_295_200_000,
        ),
    ] {
        releases.insert_one(release).await.unwrap();
    }
    for bundle in bundles {
        if !missing.iter().any(|m| m.id == bundle.id) {
            put_seed_object(services, bucket, bundle).await;
        }
    }
}

/// As the seed's uploader stored it: its user metadata says application/zip.
async fn put_seed_object(services: &Services, bucket: &str, bundle: &SeedBundle) {
    services
        .s3_client()
        .await
        .put_object()
        .bucket(bucket)
        .key(bundle.key)
        .metadata("content-type", "application/zip")
        .body(zip_for(bundle).into())
        .send()
        .await
        .unwrap();
}

async fn mongo(services: &Services) -> mongodb::Client {
    mongodb::Client::with_uri_str(&services.mongo_url)
        .await
        .unwrap()
}

/// Every document of every collection, and every index name: a database's whole state.
async fn dump_database(services: &Services, database: &str) -> BTreeMap<String, Vec<String>> {
    use futures_util::TryStreamExt;
    let db = mongo(services).await.database(database);
    let mut dump = BTreeMap::new();
    for name in db.list_collection_names().await.unwrap() {
        let collection = db.collection::<Document>(&name);
        let docs: Vec<Document> = collection
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut lines: Vec<String> = docs.iter().map(ToString::to_string).collect();
        for index in collection.list_index_names().await.unwrap() {
            lines.push(format!("index {index}"));
        }
        lines.sort();
        dump.insert(name, lines);
    }
    dump
}

/// Every object of a bucket with its ETag and size.
async fn dump_bucket(services: &Services, bucket: &str) -> Vec<(String, String, i64)> {
    let listed = services
        .s3_client()
        .await
        .list_objects_v2()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let mut objects: Vec<(String, String, i64)> = listed
        .contents()
        .iter()
        .map(|o| {
            (
                o.key().unwrap().to_string(),
                o.e_tag().unwrap_or_default().to_string(),
                o.size().unwrap_or_default(),
            )
        })
        .collect();
    objects.sort();
    objects
}

/// `capgo-server migrate <args>` with `env`, to the end.
fn migrate(data: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    migrate_command(data, env, args).output().unwrap()
}

fn migrate_command(data: &Path, env: &[(String, String)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capgo-server"));
    command
        .arg("migrate")
        .args(args)
        .env_clear()
        .env("DATA_DIR", data)
        .env("RUST_LOG", "warn")
        .current_dir(data)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// The seed's objects among a bucket's (this server's are under `bundles/` and `files/`).
fn seed_objects(objects: &[(String, String, i64)]) -> Vec<(String, String, i64)> {
    objects
        .iter()
        .filter(|o| !o.0.starts_with("bundles/") && !o.0.starts_with("files/"))
        .cloned()
        .collect()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The lines of one section of the summary (`- …` lines after its title).
fn section(summary: &str, title: &str) -> Vec<String> {
    summary
        .lines()
        .skip_while(|line| !line.starts_with(title))
        .skip(1)
        .take_while(|line| line.starts_with("  - "))
        .map(str::to_string)
        .collect()
}

fn assert_counts(summary: &str, bundles: &str, releases: &str) {
    assert!(
        summary.contains(&format!("bundles:  {bundles}")),
        "bundles should be {bundles:?}:\n{summary}"
    );
    assert!(
        summary.contains(&format!("releases: {releases}")),
        "releases should be {releases:?}:\n{summary}"
    );
}

#[tokio::test]
async fn a_seed_database_and_bucket_are_migrated_and_served() {
    let Some(services) = Services::get() else {
        return;
    };
    let seed_db = format!("seed_{}", Services::fresh_database());
    let ours = Services::fresh_database();
    // One bucket for both, as a team keeping its S3_BUCKET would have it.
    let bucket = services.fresh_bucket().await;
    write_seed(&services, &seed_db, &bucket, &BUNDLES, &[&B3]).await;
    let seed_before = dump_database(&services, &seed_db).await;
    let env =
        services.server_env_with_bucket(&ours, &services.mongo_url, &services.s3_endpoint, &bucket);
    let data = tempfile::tempdir().unwrap();
    let from_seed = ["--from-seed-database", seed_db.as_str()];

    // The seed's database is never a target, whatever the connection string says.
    let mut into_seed = env.clone();
    into_seed.push(("MONGO_DATABASE".into(), seed_db.clone()));
    let output = migrate(data.path(), &into_seed, &from_seed);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("never into the seed's database"),
        "{}",
        stderr(&output)
    );
    let other_spelling = format!(
        "{}/?appName=the-seed",
        services.mongo_url.trim_end_matches('/')
    );
    let output = migrate(
        data.path(),
        &into_seed,
        &[
            "--from-seed-database",
            &seed_db,
            "--from-seed-mongo",
            &other_spelling,
        ],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("holds the seed's records"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        dump_database(&services, &seed_db).await,
        seed_before,
        "no index or write there"
    );
    // Something that is not a seed database is refused.
    let output = migrate(
        data.path(),
        &env,
        &["--from-seed-database", "no_such_database_here"],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output)
            .contains("is not a tanapoln/capgo-server (seed) database: it has no collections"),
        "{}",
        stderr(&output)
    );

    // First run: one object is missing from the bucket. What does not depend on it is
    // migrated; the rest is listed, and the command fails.
    let output = migrate(data.path(), &env, &from_seed);
    let summary = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(1),
        "{summary}\n{}",
        stderr(&output)
    );
    assert_counts(
        &summary,
        "4 in the seed: 2 copied, 0 already here, 1 duplicate(s), 1 not migrated",
        "5 in the seed: 1 copied, 0 already here, 1 duplicate(s), 3 not migrated",
    );
    let not_migrated = section(&summary, "Not migrated:").join("\n");
    assert!(
        not_migrated.contains(&format!(
            "bundle {} ({APP_ID} 1.0.1): its object \"{}\" is not in the seed's bucket",
            B3.id, B3.key
        )),
        "{summary}"
    );
    assert!(
        not_migrated.contains(&format!(
            "release {R2} (ios {APP_ID} 1.0.0 (1)): its active_bundle_id {} is not here: its object",
            B3.id
        )),
        "{summary}"
    );
    assert!(
        section(&summary, "Duplicates the seed allowed")[1].contains(&format!(
            "release {R5} (android {APP_ID} 1.0.0 (1)): kept release {R1} of the same native \
             build, because the seed answered devices from it"
        )),
        "{summary}"
    );
    assert!(
        stderr(&output).contains("4 seed record(s) were not migrated"),
        "{}",
        stderr(&output)
    );

    // The object is back: the next run completes what the first could not.
    put_seed_object(&services, &bucket, &B3).await;
    let seed_before = (
        dump_database(&services, &seed_db).await,
        dump_bucket(&services, &bucket).await,
    );
    let output = migrate(
        data.path(),
        &env,
        &[
            "--from-seed-database",
            &seed_db,
            "--from-seed-bucket",
            &bucket,
        ],
    );
    let summary = stdout(&output);
    assert_counts(
        &summary,
        "4 in the seed: 1 copied, 2 already here, 1 duplicate(s), 0 not migrated",
        "5 in the seed: 2 copied, 1 already here, 1 duplicate(s), 1 not migrated",
    );
    let duplicates = section(&summary, "Duplicates the seed allowed");
    assert_eq!(duplicates.len(), 2, "{summary}");
    assert!(duplicates[0].contains(&format!("bundle {} ({APP_ID} 1.0.1): kept bundle {} of the same version name, because a release serves it", B2.id, B3.id)), "{summary}");
    assert!(duplicates[1].contains(&format!("release {R5} (android {APP_ID} 1.0.0 (1)): kept release {R1} of the same native build, because an earlier run brought it over")), "{summary}");
    let notes = section(&summary, "Notes:").join("\n");
    assert!(
        notes.contains(&format!("release {R4}")) && notes.contains("zero ObjectId"),
        "{summary}"
    );
    assert!(
        notes.contains(&format!(
            "its builtin_bundle_id {} is a duplicate of its version name: uses the kept bundle {}",
            B2.id, B3.id
        )),
        "{summary}"
    );
    let not_migrated = section(&summary, "Not migrated:");
    assert_eq!(
        not_migrated.len(),
        1,
        "only the dangling release: {summary}"
    );
    assert!(
        not_migrated[0].contains(&format!(
            "release {R3} (android {APP_ID} 1.1.0 (5)): its active_bundle_id {DANGLING} is no \
             bundle of the seed (the seed answered its devices \"bundle is not found\""
        )),
        "{summary}"
    );
    assert_eq!(output.status.code(), Some(1));

    // Again: nothing changes, here or in the seed.
    let ours_before = (
        dump_database(&services, &ours).await,
        dump_bucket(&services, &bucket).await,
    );
    let output = migrate(data.path(), &env, &from_seed);
    assert_counts(
        &stdout(&output),
        "4 in the seed: 0 copied, 3 already here, 1 duplicate(s), 0 not migrated",
        "5 in the seed: 0 copied, 3 already here, 1 duplicate(s), 1 not migrated",
    );
    let ours_after = (
        dump_database(&services, &ours).await,
        dump_bucket(&services, &bucket).await,
    );
    assert_eq!(ours_after, ours_before, "a second run writes nothing");
    assert_eq!(
        dump_database(&services, &seed_db).await,
        seed_before.0,
        "the seed's database is untouched"
    );
    assert_eq!(
        seed_objects(&ours_after.1),
        seed_objects(&seed_before.1),
        "the seed's objects are untouched"
    );
    assert_eq!(seed_objects(&ours_after.1).len(), 4);

    // A database of this server is not the seed's either.
    let output = migrate(
        data.path(),
        &services.server_env_with_bucket(
            &Services::fresh_database(),
            &services.mongo_url,
            &services.s3_endpoint,
            &bucket,
        ),
        &["--from-seed-database", &ours],
    );
    assert!(
        stderr(&output).contains("it is a capgo-server database"),
        "{}",
        stderr(&output)
    );

    // Served: the orphan sweep at start-up (no grace) leaves the seed's objects alone.
    let mut serve_env = env.clone();
    serve_env.push(("ORPHAN_GRACE_PERIOD".into(), "0s".into()));
    let server = ServerProcess::start(data.path(), &env_refs(&serve_env));
    let client = Client::new(&server, API_KEY);
    assert_eq!(
        dump_bucket(&services, &bucket).await,
        ours_after.1,
        "nothing swept"
    );

    // A device of the iOS build gets the bundle the seed served it, with its SHA-256.
    let mut ios = json!({"platform": "ios", "device_id": DEVICE_ID, "app_id": APP_ID,
        "version_name": "builtin", "version_build": "1.0.0", "version_code": "1",
        "plugin_version": "8.51.14", "is_emulator": false, "is_prod": true});
    let (status, answer) = client.device("/updates", &ios).await;
    assert_eq!(status, 200);
    assert_update_answer(&answer);
    assert_eq!(answer["version"], "1.0.1", "{answer}");
    let bytes = client.download(answer["url"].as_str().unwrap()).await;
    assert_eq!(bytes, zip_for(&B3));
    assert_eq!(answer["checksum"], sha256_hex(&bytes));
    // A plugin that verifies CRC32 gets the seed's crc_checksum.
    ios["plugin_version"] = json!("5.2.0");
    let (_, answer) = client.device("/updates", &ios).await;
    assert_eq!(
        answer["checksum"],
        format!("{:08x}", crc32fast::hash(&zip_for(&B3)))
    );
    // The Android build had no active bundle: up to date on its builtin one. The build whose
    // active bundle was dangling was not migrated: its devices keep what they run.
    let mut android = device_body("builtin", "8.51.14");
    android["version_build"] = json!("1.0.0");
    android["version_code"] = json!("1");
    assert_eq!(
        client.device("/updates", &android).await.1["kind"],
        "up_to_date"
    );
    android["version_build"] = json!("1.1.0");
    android["version_code"] = json!("5");
    assert_eq!(
        client.device("/updates", &android).await.1["error"],
        "no_release"
    );

    // Scripts: the seed's ids, fields and times.
    let releases = client.list("releases.list").await;
    let release = |id: &str| record(&releases, id);
    let r2 = release(R2);
    assert_eq!(r2["release_date"], "2024-09-21T00:00:00Z");
    assert_eq!(r2["created_at"], "2024-09-20T08:21:00Z");
    assert_eq!(
        (&r2["builtin_bundle_id"], &r2["active_bundle_id"]),
        (&json!(B1.id), &json!(B3.id))
    );
    assert_eq!(release(R4)["builtin_bundle_id"], B3.id);
    assert_eq!(release(R4)["active_bundle_id"], Value::Null);
    assert_eq!(releases["data"].as_array().unwrap().len(), 3);
    let bundles = client.list("bundles.list").await;
    let b1 = record(&bundles, B1.id);
    assert_eq!(b1["created_at"], "2024-09-20T08:15:30.123Z");
    assert_eq!(b1["description"], B1.description);
    assert_eq!(
        b1["crc_checksum"],
        format!("{:08x}", crc32fast::hash(&zip_for(&B1)))
    );
    assert_eq!(b1["sha256"], sha256_hex(&zip_for(&B1)));
    // A script promoting by the seed's ids keeps working.
    let (status, body) = client
        .manage(
            "releases.set-active",
            json!({"release_id": R1, "bundle_id": B4.id}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    android["version_build"] = json!("1.0.0");
    android["version_code"] = json!("1");
    let (_, answer) = client.device("/updates", &android).await;
    assert_eq!(answer["version"], B4.version, "{answer}");
    assert_eq!(
        client.download(answer["url"].as_str().unwrap()).await,
        zip_for(&B4)
    );
    server.stop();
}

#[tokio::test]
async fn a_migration_killed_part_way_continues_where_it_stopped() {
    let Some(services) = Services::get() else {
        return;
    };
    let seed_db = format!("seed_{}", Services::fresh_database());
    let seed_bucket = services.fresh_bucket().await;
    let with_large: Vec<&SeedBundle> = BUNDLES.iter().copied().chain([&LARGE]).collect();
    write_seed(&services, &seed_db, &seed_bucket, &with_large, &[]).await;
    let (bucket, env) = services.env_with_fresh_bucket().await;
    let data = tempfile::tempdir().unwrap();
    let args = [
        "--from-seed-database",
        seed_db.as_str(),
        "--from-seed-bucket",
        seed_bucket.as_str(),
    ];
    // SIGKILL while the large bundle is being copied (its staging file is growing): the
    // bundles before it are here, it and the releases are not.
    let staging = data.path().join("staging");
    let mut child = migrate_command(data.path(), &env, &args).spawn().unwrap();
    let staged_large = || {
        std::fs::read_dir(&staging)
            .into_iter()
            .flatten()
            .flatten()
            .any(|entry| entry.metadata().is_ok_and(|m| m.len() > 1 << 20))
    };
    while !staged_large() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the large copy was seen"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let client = mongo(&services).await;
    let ours = client.database(&env_value(&env, "MONGO_DATABASE"));
    let count = |collection: &str| {
        let collection = ours.collection::<Document>(collection);
        async move { collection.count_documents(doc! {}).await.unwrap() }
    };
    assert_eq!(
        (count("bundles").await, count("releases").await),
        (3, 0),
        "killed part-way"
    );
    // Then at other points of successive runs; whatever each had reached, the next run
    // continues from there.
    for after in [100, 300, 600] {
        let mut child = migrate_command(data.path(), &env, &args).spawn().unwrap();
        tokio::time::sleep(Duration::from_millis(after)).await;
        let _ = child.kill();
        let _ = child.wait();
    }
    let output = migrate(data.path(), &env, &args);
    let summary = stdout(&output);
    assert_eq!(
        section(&summary, "Not migrated:").len(),
        1,
        "only the dangling release: {summary}"
    );
    assert!(
        summary.contains("1 duplicate(s), 0 not migrated"),
        "{summary}"
    );
    let output = migrate(data.path(), &env, &args);
    assert_counts(
        &stdout(&output),
        "5 in the seed: 0 copied, 4 already here, 1 duplicate(s), 0 not migrated",
        "5 in the seed: 0 copied, 3 already here, 1 duplicate(s), 1 not migrated",
    );
    assert_eq!(
        list_files(&staging),
        Vec::<String>::new(),
        "no staging file left"
    );
    // Each record has its object, with the size and SHA-256 it records, and nothing else is
    // in the bucket once a server swept it: a kill between storing an object and recording it
    // leaves an orphan, which is the sweep's (one process here, so no grace is needed).
    let mut serve_env = env.clone();
    serve_env.push(("ORPHAN_GRACE_PERIOD".into(), "0s".into()));
    let server = ServerProcess::start(data.path(), &env_refs(&serve_env));
    let versions = assert_every_record_has_its_bytes(&server).await;
    assert_eq!(versions.len(), 4, "{versions:?}");
    server.stop();
    // Zips are `bundles/<id>-<32 random hex>.zip`: compare the ids they are named by (the
    // bundles' files, under `files/`, are shared by content: tests/delta.rs checks them).
    let ours: Vec<String> = dump_bucket(&services, &bucket)
        .await
        .into_iter()
        .filter(|(key, ..)| !key.starts_with("files/"))
        .map(|(key, ..)| {
            let (named, secret) = key
                .strip_suffix(".zip")
                .and_then(|k| k.rsplit_once('-'))
                .unwrap_or_else(|| panic!("unexpected object {key}"));
            assert!(
                secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
                "{key}"
            );
            format!("{named}.zip")
        })
        .collect();
    let mut expected: Vec<String> = [B1.id, B3.id, B4.id, LARGE.id]
        .iter()
        .map(|id| format!("bundles/{id}.zip"))
        .collect();
    expected.sort();
    assert_eq!(ours, expected, "one object per record, nothing left over");
}

/// The record with this id in a `{"data": [...]}` list answer.
fn record(list: &Value, id: &str) -> Value {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} missing: {list}"))
}

fn env_value(env: &[(String, String)], name: &str) -> String {
    env.iter().find(|(k, _)| k == name).unwrap().1.clone()
}
