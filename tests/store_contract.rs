//! One contract for every store implementation, so the embedded and production paths cannot
//! drift. Each implementation runs the same functions below: SQLite and the filesystem always,
//! MongoDB and S3 against the real servers `scripts/services` starts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use capgo_server::domain::access::{secret_digest, ApiToken, AuditCursor, AuditEntry, Scope};
use capgo_server::domain::stats::{ActivityCount, StatsEvent, DAY_MILLIS as DAY};
use capgo_server::domain::{
    Bundle, BundleEncryption, ChannelName, Platform, RecordId, Release, ReleaseKey, ResourceRef,
};
use capgo_server::store::fs_blobs::FilesystemBlobStore;
use capgo_server::store::mongo::MongoMetadataStore;
use capgo_server::store::s3::{DownloadUrls, S3BlobStore, S3Settings};
use capgo_server::store::sqlite::SqliteMetadataStore;
use capgo_server::store::{BlobStore, CatalogStore, MetadataStore, StoreError};

fn bundle(app_id: &str, version: &str, created_at: i64) -> Bundle {
    let id = RecordId::generate();
    Bundle {
        blob_key: Bundle::blob_key_for(&id),
        id,
        app_id: app_id.into(),
        version_name: version.into(),
        description: format!("bundle {version}"),
        sha256: "ab".repeat(32),
        crc32: "0badf00d".into(),
        size: 1234,
        encryption: None,
        created_at,
        owner: None,
    }
}

fn release(builtin: &Bundle, code: &str) -> Release {
    Release {
        id: RecordId::generate(),
        key: ReleaseKey {
            platform: Platform::Ios,
            app_id: builtin.app_id.clone(),
            version_name: "2.0.0".into(),
            version_code: code.into(),
        },
        builtin_bundle_id: builtin.id.clone(),
        channels: BTreeMap::new(),
        release_date: None,
        created_at: 10,
        updated_at: 10,
        owner: None,
    }
}

fn event(action: &str, version: &str) -> StatsEvent {
    StatsEvent {
        app_id: "com.contract.app".into(),
        device_id: "d1".into(),
        action: action.into(),
        platform: Some("ios".into()),
        version_name: Some(version.into()),
        old_version_name: None,
        version_build: None,
        version_code: None,
        plugin_version: Some("8.51.14".into()),
        is_emulator: Some(false),
        is_prod: Some(true),
        custom_id: None,
        metadata: Some(r#"{"k":"v"}"#.into()),
        occurred_at: 5,
    }
}

async fn metadata_contract(store: Arc<dyn MetadataStore>) {
    let app = "com.contract.app";
    let mut first = bundle(app, "1.0.0", 1);
    first.encryption = Some(
        BundleEncryption::new(
            "aXY=:a2V5".into(),
            Some("c".repeat(512)),
            Some("KEYID".into()),
        )
        .unwrap(),
    );
    let mut second = bundle(app, "1.0.1", 2);
    second.owner = Some(ResourceRef::new("Bundle", "apps", "web-1.0.1"));
    store.insert_bundle(&first).await.unwrap();
    store.insert_bundle(&second).await.unwrap();
    assert_eq!(
        store.bundle(&first.id).await.unwrap().as_ref(),
        Some(&first),
        "round trip"
    );
    assert_eq!(
        store
            .bundle_by_version(app, "1.0.1")
            .await
            .unwrap()
            .as_ref(),
        Some(&second)
    );
    assert_eq!(store.bundle(&RecordId::generate()).await.unwrap(), None);
    let duplicate = bundle(app, "1.0.0", 3);
    assert!(matches!(
        store.insert_bundle(&duplicate).await,
        Err(StoreError::Duplicate(_))
    ));
    store
        .insert_bundle(&bundle("com.other.app", "1.0.0", 3))
        .await
        .unwrap();
    let listed: Vec<String> = store
        .list_bundles()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.version_name)
        .collect();
    assert_eq!(listed, ["1.0.0", "1.0.1", "1.0.0"], "newest first");

    let mut r = release(&first, "7");
    r.owner = Some(ResourceRef::new("Release", "apps", "shop-ios"));
    r.channels
        .insert(ChannelName::parse("beta").unwrap(), second.id.clone());
    store.insert_release(&r).await.unwrap();
    assert_eq!(store.release(&r.id).await.unwrap().as_ref(), Some(&r));
    assert_eq!(
        store.release_by_key(&r.key).await.unwrap().as_ref(),
        Some(&r)
    );
    let mut same_key = release(&first, "7");
    same_key.id = RecordId::generate();
    assert!(matches!(
        store.insert_release(&same_key).await,
        Err(StoreError::Duplicate(_))
    ));
    let mut other_key = r.key.clone();
    other_key.platform = Platform::Android;
    assert_eq!(store.release_by_key(&other_key).await.unwrap(), None);

    let production = ChannelName::default_channel();
    assert!(store
        .set_channel_bundle(&r.id, &production, &second.id, 20)
        .await
        .unwrap());
    assert!(
        store
            .set_channel_bundle(&r.id, &production, &first.id, 21)
            .await
            .unwrap(),
        "upsert"
    );
    assert!(!store
        .set_channel_bundle(&RecordId::generate(), &production, &first.id, 22)
        .await
        .unwrap());
    let stored = store.release(&r.id).await.unwrap().unwrap();
    assert_eq!(stored.channels.get(&production), Some(&first.id));
    assert_eq!(stored.updated_at, 21);
    // The operator's converge: builtin and every channel in one write.
    let converged = BTreeMap::from([(ChannelName::parse("beta").unwrap(), first.id.clone())]);
    assert!(store
        .replace_release_assignments(&r.id, &second.id, &converged, 25)
        .await
        .unwrap());
    let replaced = store.release(&r.id).await.unwrap().unwrap();
    assert_eq!(
        (
            replaced.builtin_bundle_id.clone(),
            replaced.channels.clone()
        ),
        (second.id.clone(), converged)
    );
    assert_eq!(replaced.owner, r.owner, "ownership survives");
    assert!(!store
        .replace_release_assignments(&RecordId::generate(), &first.id, &BTreeMap::new(), 26)
        .await
        .unwrap());
    let mut restored = r.channels.clone();
    restored.insert(production.clone(), first.id.clone());
    assert!(store
        .replace_release_assignments(&r.id, &first.id, &restored, 27)
        .await
        .unwrap());
    assert!(store.set_release_date(&r.id, Some(99), 30).await.unwrap());
    assert_eq!(
        store.release(&r.id).await.unwrap().unwrap().release_date,
        Some(99)
    );
    assert!(!store
        .set_release_date(&RecordId::generate(), None, 30)
        .await
        .unwrap());

    let channels = store.channels(app).await.unwrap();
    let names: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["production", "beta"]);
    assert_ne!(channels[0].id, channels[1].id);
    assert_eq!(
        store.channels(app).await.unwrap(),
        channels,
        "ids are stable"
    );
    assert!(store.channels("com.nobody").await.unwrap().is_empty());

    let users = store.releases_using_bundle(&second.id).await.unwrap();
    assert_eq!(
        users.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&r.id],
        "used by a channel"
    );
    assert_eq!(
        store.releases_using_bundle(&first.id).await.unwrap().len(),
        1,
        "used as builtin"
    );
    assert!(matches!(
        store.delete_bundle(&first.id).await,
        Err(StoreError::Reference(_))
    ));
    assert!(
        store.bundle(&first.id).await.unwrap().is_some(),
        "a refused delete keeps the record"
    );

    let mut other_device = event("set", "1.0.1");
    other_device.device_id = "d2".into();
    store
        .insert_stats(&[
            event("set", "1.0.1"),
            other_device,
            // Repeated by one device: counted once.
            event("download_fail", "1.0.1"),
            event("download_fail", "1.0.1"),
            event("download_fail", "1.0.1"),
        ])
        .await
        .unwrap();
    let mut next_day = event("set", "1.0.1");
    next_day.occurred_at = DAY + 7;
    store.insert_stats(&[next_day]).await.unwrap();
    store.insert_stats(&[]).await.unwrap();
    let count = |day: i64, action: &str, count: u64| ActivityCount {
        day,
        action: action.into(),
        count,
    };
    let activity = store.bundle_activity(app, "1.0.1", 0).await.unwrap();
    assert_eq!(
        activity,
        [
            count(0, "download_fail", 1),
            count(0, "set", 2),
            count(DAY, "set", 1)
        ],
        "distinct devices per day and action"
    );
    let since_day_one = store.bundle_activity(app, "1.0.1", DAY).await.unwrap();
    assert_eq!(since_day_one, [count(DAY, "set", 1)], "older days left out");
    assert!(store
        .bundle_activity(app, "9.9.9", 0)
        .await
        .unwrap()
        .is_empty());

    assert!(store.delete_release(&r.id).await.unwrap());
    assert!(!store.delete_release(&r.id).await.unwrap());
    assert!(store
        .releases_using_bundle(&second.id)
        .await
        .unwrap()
        .is_empty());
    assert!(store.delete_bundle(&second.id).await.unwrap());
    assert!(!store.delete_bundle(&second.id).await.unwrap());
    let mut keys = store.bundle_blob_keys().await.unwrap();
    keys.sort();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&first.blob_key));

    adoption_contract(store.as_ref()).await;
    deletes_racing_writes_never_leave_a_dangling_reference(store.as_ref()).await;
    access_contract(store.as_ref()).await;
}

/// A resource takes ownership of an unowned record once; an owned one is not taken again.
async fn adoption_contract(store: &dyn MetadataStore) {
    let builtin = bundle("com.contract.adopt", "1.0.0", 1);
    store.insert_bundle(&builtin).await.unwrap();
    let r = release(&builtin, "77");
    store.insert_release(&r).await.unwrap();
    let owner = ResourceRef::new("Release", "apps", "shop");
    let other = ResourceRef::new("Release", "apps", "other");
    assert!(store.adopt_release(&r.id, &owner).await.unwrap());
    assert!(
        !store.adopt_release(&r.id, &other).await.unwrap(),
        "already owned"
    );
    assert!(!store
        .adopt_release(&RecordId::generate(), &owner)
        .await
        .unwrap());
    assert_eq!(
        store.release(&r.id).await.unwrap().unwrap().owner,
        Some(owner)
    );
    let bundle_owner = ResourceRef::new("Bundle", "apps", "web");
    assert!(store
        .adopt_bundle(&builtin.id, &bundle_owner)
        .await
        .unwrap());
    assert!(!store
        .adopt_bundle(&builtin.id, &bundle_owner)
        .await
        .unwrap());
    assert_eq!(
        store.bundle(&builtin.id).await.unwrap().unwrap().owner,
        Some(bundle_owner)
    );
}

/// Deleting a bundle while another caller points a release at it: one of them loses, and
/// a release never ends up naming a bundle that is gone (MongoDB has no foreign keys and no
/// transactions here; see its store for how).
async fn deletes_racing_writes_never_leave_a_dangling_reference(store: &dyn MetadataStore) {
    let app = "com.contract.race";
    let builtin = bundle(app, "0.0.1", 1);
    store.insert_bundle(&builtin).await.unwrap();
    let r = release(&builtin, "99");
    store.insert_release(&r).await.unwrap();
    let beta = ChannelName::parse("beta").unwrap();
    let (mut deleted, mut promoted) = (0, 0);
    for round in 0..30 {
        let target = bundle(app, &format!("1.0.{round}"), 2);
        store.insert_bundle(&target).await.unwrap();
        let write = async {
            if round % 2 == 0 {
                store.set_channel_bundle(&r.id, &beta, &target.id, 3).await
            } else {
                let channels = BTreeMap::from([(beta.clone(), target.id.clone())]);
                store
                    .replace_release_assignments(&r.id, &builtin.id, &channels, 3)
                    .await
            }
        };
        let (delete, write) = tokio::join!(store.delete_bundle(&target.id), write);
        match &delete {
            Ok(true) => deleted += 1,
            Err(StoreError::Reference(_)) => {}
            other => panic!("round {round}: delete answered {other:?}"),
        }
        match &write {
            Ok(true) => promoted += 1,
            Err(StoreError::Reference(_)) => {}
            other => panic!("round {round}: write answered {other:?}"),
        }
        let current = store.release(&r.id).await.unwrap().unwrap();
        for id in current.referenced_bundles() {
            assert!(
                store.bundle(id).await.unwrap().is_some(),
                "round {round}: the release names {id}, which is gone (delete {delete:?}, write {write:?})"
            );
        }
        // Leave the next round a release that names no bundle of this round.
        store
            .replace_release_assignments(&r.id, &builtin.id, &BTreeMap::new(), 4)
            .await
            .unwrap();
    }
    assert!(deleted + promoted >= 30, "every round had a winner");
}

fn token(name: &str, scope: Scope) -> ApiToken {
    ApiToken {
        id: RecordId::generate(),
        name: name.into(),
        scope,
        digest: secret_digest(&format!("secret of {name}")),
        created_at: 1_700_000_000_000,
        created_by: "management-token".into(),
    }
}

fn audit(at: i64, action: &str, status: u16) -> AuditEntry {
    AuditEntry {
        id: RecordId::generate(),
        at,
        actor: "token:ci".into(),
        action: action.into(),
        target: "bundle com.example.app/1.0.0".into(),
        client_ip: "203.0.113.9".into(),
        status,
        message: if status < 400 {
            String::new()
        } else {
            "refused".into()
        },
    }
}

/// API tokens (unique names and digests, lookup, revoke) and audit paging.
async fn access_contract(store: &dyn MetadataStore) {
    let ci = token("ci", Scope::Upload);
    let viewer = token("viewer", Scope::ReadOnly);
    store.insert_api_token(&ci).await.unwrap();
    store.insert_api_token(&viewer).await.unwrap();
    let same_name = ApiToken {
        id: RecordId::generate(),
        digest: secret_digest("other"),
        ..ci.clone()
    };
    assert!(matches!(
        store.insert_api_token(&same_name).await,
        Err(StoreError::Duplicate(_))
    ));
    let same_secret = ApiToken {
        id: RecordId::generate(),
        name: "ci-2".into(),
        ..ci.clone()
    };
    assert!(matches!(
        store.insert_api_token(&same_secret).await,
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(
        store.api_token_by_digest(&ci.digest).await.unwrap(),
        Some(ci.clone())
    );
    assert_eq!(
        store
            .api_token_by_digest(&secret_digest("nope"))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.list_api_tokens().await.unwrap(),
        [ci.clone(), viewer.clone()]
    );
    assert!(store.delete_api_token(&ci.id).await.unwrap());
    assert!(!store.delete_api_token(&ci.id).await.unwrap());
    assert_eq!(store.api_token_by_digest(&ci.digest).await.unwrap(), None);
    assert_eq!(store.list_api_tokens().await.unwrap(), [viewer]);

    // Seven entries, three sharing one millisecond: pages of 3 must return each exactly once,
    // newest first, ties broken by id.
    let mut entries: Vec<AuditEntry> = (0..4)
        .map(|i| audit(1_000 + i, "bundles.upload", 200))
        .chain((0..3).map(|_| audit(2_000, "releases.set-active", 409)))
        .collect();
    for entry in &entries {
        store.insert_audit(entry).await.unwrap();
    }
    entries.sort_by(|a, b| (b.at, &b.id).cmp(&(a.at, &a.id)));
    let mut seen = Vec::new();
    let mut cursor: Option<AuditCursor> = None;
    loop {
        let page = store.audit_page(cursor.as_ref(), 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        cursor = Some(AuditCursor::after(last));
        seen.extend(page);
    }
    assert_eq!(seen, entries);
    assert!(!seen[0].succeeded() && seen[6].succeeded());
}

async fn blob_contract(store: Arc<dyn BlobStore>) {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("upload.part");
    std::fs::write(&source, b"zip bytes").unwrap();
    // Unique per run: a real bucket is shared with other tests.
    let key = format!("bundles/{}.zip", RecordId::generate());
    store.put_file(&key, &source).await.unwrap();
    let mut read = Vec::new();
    let mut chunks = store
        .read(&key)
        .await
        .unwrap()
        .expect("the object is there");
    while let Some(chunk) = chunks.next().await {
        read.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(read, b"zip bytes");
    assert!(store.read("bundles/absent.zip").await.unwrap().is_none());
    let listed = store.list().await.unwrap();
    assert!(listed.iter().any(|b| b.key == key), "{key} listed");
    let url = store.download_url(&key).await.unwrap();
    assert!(url.starts_with("http") && url.contains(&key), "{url}");
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    assert!(!store.list().await.unwrap().iter().any(|b| b.key == key));
}

#[tokio::test]
async fn sqlite_in_memory_meets_the_metadata_contract() {
    metadata_contract(Arc::new(SqliteMetadataStore::in_memory().unwrap())).await;
}

#[tokio::test]
async fn sqlite_file_meets_the_metadata_contract_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capgo.db");
    metadata_contract(Arc::new(SqliteMetadataStore::open(&path).unwrap())).await;
    let reopened = SqliteMetadataStore::open(&path).unwrap();
    let kept = reopened.list_bundles().await.unwrap();
    let of_the_main_contract = kept
        .iter()
        .filter(|b| {
            !b.app_id.starts_with("com.contract.adopt")
                && !b.app_id.starts_with("com.contract.race")
        })
        .count();
    assert_eq!(of_the_main_contract, 2);
}

#[tokio::test]
async fn filesystem_meets_the_blob_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        FilesystemBlobStore::open(dir.path().join("blobs"), "http://localhost:8000").unwrap();
    assert!(store.local_path("../escape").is_none());
    assert!(store.local_path("bundles/../../x").is_none());
    blob_contract(Arc::new(store)).await;
}

#[tokio::test]
async fn mongodb_meets_the_metadata_contract() {
    let Some(services) = common::Services::get() else {
        return;
    };
    let store =
        MongoMetadataStore::connect(&services.mongo_url, &common::Services::fresh_database())
            .await
            .unwrap();
    metadata_contract(Arc::new(store)).await;
}

async fn s3_store(services: &common::Services, download_urls: DownloadUrls) -> S3BlobStore {
    S3BlobStore::connect(S3Settings {
        bucket: services.s3_bucket.clone(),
        endpoint: Some(services.s3_endpoint.clone()),
        download_urls,
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn s3_meets_the_blob_contract() {
    let Some(services) = common::Services::get() else {
        return;
    };
    blob_contract(Arc::new(
        s3_store(&services, DownloadUrls::Presigned(Duration::from_secs(60))).await,
    ))
    .await;
    let public = s3_store(
        &services,
        DownloadUrls::Public("https://cdn.example.com/".into()),
    )
    .await;
    assert_eq!(
        public.download_url("bundles/x.zip").await.unwrap(),
        "https://cdn.example.com/bundles/x.zip"
    );
}

#[tokio::test]
async fn s3_multipart_upload_round_trips() {
    let Some(services) = common::Services::get() else {
        return;
    };
    let store = s3_store(&services, DownloadUrls::Presigned(Duration::from_secs(60))).await;
    let bytes = common::incompressible(40 << 20);
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("big.part");
    std::fs::write(&source, &bytes).unwrap();
    let key = format!("bundles/{}.zip", RecordId::generate());
    store.put_file(&key, &source).await.unwrap();
    let url = store.download_url(&key).await.unwrap();
    let downloaded = common::http_client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(common::sha256_hex(&downloaded), common::sha256_hex(&bytes));
    store.delete(&key).await.unwrap();
}
