//! One contract for every store implementation, so the embedded and production paths cannot
//! drift. Each implementation runs the same functions below: SQLite and the filesystem always,
//! MongoDB and S3 against the real servers `scripts/services` starts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use capgo_server::domain::access::{secret_digest, ApiToken, AuditCursor, AuditEntry, Scope};
use capgo_server::domain::channel_policy::{ChannelRules, ChannelSettings, UpdatePolicy};
use capgo_server::domain::encryption::{AppKey, RsaPublicKey};
use capgo_server::domain::fleet::{FleetCount, FleetKey, Span};
use capgo_server::domain::manifest::{file_object_key, BrotliCopy, ManifestEntry};
use capgo_server::domain::rollout::{
    new_salt, CanaryHealth, CanaryMark, CanarySignal, Rollout, RolloutPhase, RolloutPlan,
    RolloutProgress,
};
use capgo_server::domain::stats::{StatsEvent, DAY_MILLIS as DAY};
use capgo_server::domain::targeting::{
    DeviceOverride, OverrideSource, UnregisteredBuild, MAX_UNREGISTERED_BUILDS,
};
use capgo_server::domain::{
    Bundle, BundleEncryption, ChannelName, Platform, RecordId, Release, ReleaseKey, ResourceRef,
};
use capgo_server::store::fs_blobs::FilesystemBlobStore;
use capgo_server::store::mongo::MongoMetadataStore;
use capgo_server::store::s3::{DownloadUrls, S3BlobStore, S3Settings};
use capgo_server::store::sqlite::SqliteMetadataStore;
use capgo_server::store::{
    BlobStore, CatalogStore, CatalogVersion, MetadataStore, SeenDevice, StoreError, TargetingStore,
};

fn bundle(app_id: &str, version: &str, created_at: i64) -> Bundle {
    let id = RecordId::generate();
    Bundle {
        blob_key: Bundle::blob_key_for(&id),
        id,
        app_id: app_id.into(),
        version_name: version.into(),
        description: format!("bundle {version}"),
        link: None,
        min_update_version: None,
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
        assigned_at: BTreeMap::new(),
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
    assert_eq!(
        stored.serving(&production).since,
        Some(21),
        "the promote's time"
    );
    // Writing the bundle a channel has is no promote.
    assert!(store
        .set_channel_bundle(&r.id, &production, &first.id, 23)
        .await
        .unwrap());
    let stored = store.release(&r.id).await.unwrap().unwrap();
    assert_eq!(
        (stored.updated_at, stored.serving(&production).since),
        (23, Some(21))
    );
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
    assert_eq!(
        replaced.assigned_at,
        BTreeMap::from([(ChannelName::parse("beta").unwrap(), 25)]),
        "a removed channel loses its time, a new one is stamped"
    );
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
    let restored_release = store.release(&r.id).await.unwrap().unwrap();
    assert_eq!(restored_release.serving(&production).since, Some(27));
    // A converge that leaves a channel's bundle as it is keeps its time.
    assert!(store
        .replace_release_assignments(&r.id, &first.id, &restored, 28)
        .await
        .unwrap());
    let kept = store.release(&r.id).await.unwrap().unwrap();
    assert_eq!(
        (kept.updated_at, kept.serving(&production).since),
        (28, Some(27))
    );
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
    bundle_details_contract(store.as_ref()).await;
    deletes_racing_writes_never_leave_a_dangling_reference(store.as_ref()).await;
    access_contract(store.as_ref()).await;
    app_key_contract(store.as_ref()).await;
    channel_settings_contract(store.as_ref()).await;
    device_override_contract(store.as_ref()).await;
    forced_overrides_win_races_with_device_choices(store.as_ref()).await;
    unregistered_build_contract(store.as_ref()).await;
    find_devices_contract(store.as_ref()).await;
    rollout_contract(store.as_ref()).await;
    canary_health_contract(store.as_ref()).await;
    lease_contract(store.as_ref()).await;
    manifest_contract(store.as_ref()).await;
    served_records_contract(store.as_ref()).await;
    fleet_contract(store.clone()).await;
}

fn fleet_count(span: Span, at: i64, key: &FleetKey, events: u64, devices: &[&str]) -> FleetCount {
    let mut count = FleetCount::new(span, at, key.clone());
    count.events = events;
    for device in devices {
        count.devices.insert(device);
    }
    count
}

/// Counts merge (events add, devices unite) per period, span and key, also when writers
/// race; reads are per app and from a time on; retention removes old periods of one span and
/// old raw stats.
async fn fleet_contract(store: Arc<dyn MetadataStore>) {
    let app = format!("com.fleet.{}", RecordId::generate());
    let check = FleetKey::Check {
        release: ReleaseKey {
            platform: Platform::Android,
            app_id: app.clone(),
            version_name: "1.0.0".into(),
            version_code: "10".into(),
        },
        channel: channel("beta"),
        bundle: "1.0.1".into(),
    };
    let failed = FleetKey::Report {
        app_id: app.clone(),
        bundle: "1.0.1".into(),
        action: "download_fail".into(),
    };
    let hour = 3_600_000;
    store
        .record_fleet_counts(&[
            fleet_count(Span::Day, 3 * DAY, &check, 2, &["a", "b"]),
            fleet_count(Span::Day, 3 * DAY, &failed, 1, &["a"]),
            // The first hour of the same day: a count of its own.
            fleet_count(Span::Hour, 3 * DAY, &check, 2, &["a", "b"]),
        ])
        .await
        .unwrap();
    store
        .record_fleet_counts(&[
            fleet_count(Span::Day, 3 * DAY, &check, 1, &["b", "c"]),
            fleet_count(Span::Hour, 3 * DAY + hour, &check, 1, &["c"]),
        ])
        .await
        .unwrap();
    // Two writers at once, 10 batches each: nothing is lost.
    let writers = (0..2).map(|w| {
        let (store, check) = (store.clone(), check.clone());
        tokio::spawn(async move {
            for i in 0..10 {
                let device = format!("w{w}-{i}");
                store
                    .record_fleet_counts(&[fleet_count(Span::Day, 4 * DAY, &check, 1, &[&device])])
                    .await
                    .unwrap();
            }
        })
    });
    for writer in writers {
        writer.await.unwrap();
    }
    let counts = store.fleet_counts(&app, 0).await.unwrap();
    let of = |span: Span, start: i64, key: &FleetKey| {
        counts
            .iter()
            .find(|c| c.span == span && c.start == start && &c.key == key)
            .map(|c| (c.events, c.devices.estimate()))
    };
    assert_eq!(of(Span::Day, 3 * DAY, &check), Some((3, 3)));
    assert_eq!(of(Span::Day, 3 * DAY, &failed), Some((1, 1)));
    assert_eq!(
        of(Span::Hour, 3 * DAY, &check),
        Some((2, 2)),
        "hours apart from days"
    );
    assert_eq!(of(Span::Hour, 3 * DAY + hour, &check), Some((1, 1)));
    assert_eq!(
        of(Span::Day, 4 * DAY, &check),
        Some((20, 20)),
        "racing writers"
    );
    assert_eq!(counts.len(), 5);
    assert_eq!(store.fleet_counts(&app, 4 * DAY).await.unwrap().len(), 1);
    assert!(store
        .fleet_counts("com.fleet.other", 0)
        .await
        .unwrap()
        .is_empty());
    // Retention of one span leaves the other.
    assert_eq!(
        store
            .delete_fleet_counts_before(Span::Hour, 3 * DAY + hour)
            .await
            .unwrap(),
        1
    );
    assert!(
        store
            .delete_fleet_counts_before(Span::Day, 4 * DAY)
            .await
            .unwrap()
            >= 2
    );
    let left: Vec<(Span, i64)> = store
        .fleet_counts(&app, 0)
        .await
        .unwrap()
        .iter()
        .map(|c| (c.span, c.start))
        .collect();
    assert_eq!(left, [(Span::Hour, 3 * DAY + hour), (Span::Day, 4 * DAY)]);

    // Raw stats past their retention go; newer ones stay.
    let mut old = event("set", "7.0.0");
    old.app_id = app.clone();
    old.device_id = "old-device".into();
    old.occurred_at = DAY;
    let mut new = old.clone();
    new.device_id = "new-device".into();
    new.occurred_at = 10 * DAY;
    store.insert_stats(&[old, new]).await.unwrap();
    let removed = store.delete_stats_before(5 * DAY).await.unwrap();
    assert!(removed >= 1, "{removed}");
    let seen = |id: &'static str| {
        let store = store.clone();
        let app = app.clone();
        async move { store.find_devices(&app, id, 10).await.unwrap().len() }
    };
    assert_eq!((seen("old-device").await, seen("new-device").await), (0, 1));
}

fn manifest_entry(path: &str, sha: &str, brotli: bool) -> ManifestEntry {
    ManifestEntry {
        path: path.into(),
        sha256: sha.repeat(32),
        size: 100,
        object_key: file_object_key(&sha.repeat(32), false, None),
        brotli: brotli.then(|| BrotliCopy {
            object_key: file_object_key(&sha.repeat(32), true, Some("n1")),
            size: 40,
        }),
    }
}

/// A bundle and its manifest are written together and read back by path; a manifest is set
/// once; manifests count as object references for the sweep; marks are kept first-wins and
/// removed.
async fn manifest_contract(store: &dyn MetadataStore) {
    let a = bundle("com.manifest.app", "1.0.0", 1);
    let files = vec![
        manifest_entry("index.html", "aa", false),
        manifest_entry("assets/app.js", "bb", true),
    ];
    store.insert_bundle_with_manifest(&a, &files).await.unwrap();
    let mut sorted = files.clone();
    sorted.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(
        store.bundle_manifest(&a.id).await.unwrap(),
        Some(sorted.clone())
    );
    // Bundle reads are unchanged by the manifest.
    assert_eq!(store.bundle(&a.id).await.unwrap(), Some(a.clone()));
    assert!(
        !store.set_bundle_manifest(&a.id, &files[..1]).await.unwrap(),
        "a manifest is set once"
    );
    assert!(matches!(
        store.insert_bundle_with_manifest(&a, &files).await,
        Err(StoreError::Duplicate(_))
    ));
    let b = bundle("com.manifest.app", "1.0.1", 2);
    store.insert_bundle(&b).await.unwrap();
    assert_eq!(store.bundle_manifest(&b.id).await.unwrap(), None);
    let b_files = vec![manifest_entry("index.html", "cc", false)];
    assert!(store.set_bundle_manifest(&b.id, &b_files).await.unwrap());
    assert_eq!(
        store.bundle_manifest(&b.id).await.unwrap(),
        Some(b_files.clone())
    );
    assert!(!store
        .set_bundle_manifest(&RecordId::generate(), &b_files)
        .await
        .unwrap());

    let keys = store.bundle_blob_keys().await.unwrap();
    for key in files.iter().chain(&b_files).flat_map(|f| f.object_keys()) {
        assert!(keys.iter().any(|k| k == key), "{key} is in use");
        assert!(store.file_object_in_use(key).await.unwrap(), "{key}");
    }
    assert!(!store.file_object_in_use("files/none").await.unwrap());

    // Deleting the bundle deletes its manifest: its objects are no longer in use.
    assert!(store.delete_bundle(&a.id).await.unwrap());
    assert_eq!(store.bundle_manifest(&a.id).await.unwrap(), None);
    let app_js = &files[1];
    for key in app_js.object_keys() {
        assert!(!store.file_object_in_use(key).await.unwrap(), "{key}");
    }
    assert!(store
        .file_object_in_use(&b_files[0].object_key)
        .await
        .unwrap());

    let marked: Vec<String> = app_js.object_keys().map(str::to_string).collect();
    store
        .mark_file_objects_doomed(&marked, 1_000)
        .await
        .unwrap();
    store
        .mark_file_objects_doomed(&marked[..1], 5_000)
        .await
        .unwrap();
    let mut doomed = store.doomed_file_objects().await.unwrap();
    doomed.sort();
    let mut expected: Vec<(String, i64)> = marked.iter().map(|k| (k.clone(), 1_000)).collect();
    expected.sort();
    assert_eq!(doomed, expected, "the first mark is kept");
    store.unmark_file_objects(&marked[..1]).await.unwrap();
    store.unmark_file_objects(&[]).await.unwrap();
    assert_eq!(
        store.doomed_file_objects().await.unwrap(),
        vec![(marked[1].clone(), 1_000)]
    );
    store.unmark_file_objects(&marked).await.unwrap();
    assert!(store.doomed_file_objects().await.unwrap().is_empty());
    assert!(store.delete_bundle(&b.id).await.unwrap());
}

/// What an update check reads when the answer cache misses: the release, the channel's bundle
/// with its manifest, the channel's own settings (not another channel's or app's), and the
/// rollout only while it is active, with its canary bundle.
async fn served_records_contract(store: &dyn MetadataStore) {
    let app = "com.contract.served";
    let builtin = bundle(app, "1.0.0", 1);
    let stable = bundle(app, "1.0.1", 2);
    let canary = bundle(app, "1.1.0", 3);
    let files = vec![manifest_entry("index.html", "dd", true)];
    store.insert_bundle(&builtin).await.unwrap();
    store
        .insert_bundle_with_manifest(&stable, &files)
        .await
        .unwrap();
    store.insert_bundle(&canary).await.unwrap();
    let mut r = release(&builtin, "700");
    r.channels
        .insert(ChannelName::default_channel(), stable.id.clone());
    store.insert_release(&r).await.unwrap();
    let production = ChannelName::default_channel();
    let beta = channel("beta");

    let mut unknown = r.key.clone();
    unknown.version_code = "701".into();
    assert!(store
        .served_records(&unknown, &production)
        .await
        .unwrap()
        .is_none());

    let served = store
        .served_records(&r.key, &production)
        .await
        .unwrap()
        .expect("the release");
    assert_eq!(served.release, store.release(&r.id).await.unwrap().unwrap());
    let served_bundle = served.bundle.expect("the channel's bundle");
    assert_eq!(
        (served_bundle.bundle, served_bundle.manifest),
        (stable.clone(), Some(files.clone()))
    );
    assert_eq!(served.settings, None, "nobody configured it");
    assert!(served.rollout.is_none());

    let beta_settings = settings(
        app,
        "beta",
        ChannelRules {
            allow_emulator: false,
            ..ChannelRules::default()
        },
        None,
        5,
    );
    store.put_channel_settings(&beta_settings).await.unwrap();
    let mut other_app = beta_settings.clone();
    other_app.app_id = "com.contract.served-other".into();
    store.put_channel_settings(&other_app).await.unwrap();
    let on_beta = store.served_records(&r.key, &beta).await.unwrap().unwrap();
    assert_eq!(on_beta.settings, Some(beta_settings));
    assert_eq!(
        on_beta.bundle.map(|b| b.bundle.id),
        Some(r.bundle_for(&beta).clone())
    );
    assert_eq!(
        store
            .served_records(&r.key, &production)
            .await
            .unwrap()
            .unwrap()
            .settings,
        None
    );

    let mut rollout = new_rollout(&r, &production, &stable, &canary, 10);
    rollout.owner = None;
    store.insert_rollout(&rollout).await.unwrap();
    let during = store
        .served_records(&r.key, &production)
        .await
        .unwrap()
        .unwrap()
        .rollout
        .expect("an active rollout");
    assert_eq!(during.rollout, rollout);
    let canary_record = during.canary.expect("the canary bundle");
    assert_eq!(
        (canary_record.bundle, canary_record.manifest),
        (canary, None)
    );
    assert!(store
        .served_records(&r.key, &beta)
        .await
        .unwrap()
        .unwrap()
        .rollout
        .is_none());

    let mut finished = rollout.clone();
    finished.progress.phase = RolloutPhase::RolledBack {
        reason: "contract".into(),
    };
    finished.finished_at = Some(20);
    finished.revision += 1;
    assert!(store.update_rollout(&finished).await.unwrap());
    assert!(store
        .served_records(&r.key, &production)
        .await
        .unwrap()
        .unwrap()
        .rollout
        .is_none());
}

/// One public key per app: registered, read back as registered, replaced, listed, removed.
async fn app_key_contract(store: &dyn MetadataStore) {
    let key = |app_id: &str, pem: &str, at: i64| AppKey {
        app_id: app_id.into(),
        public_key: RsaPublicKey::from_pem(pem).unwrap(),
        registered_at: at,
        registered_by: "contract".into(),
    };
    let public = include_str!("fixtures/cli/public_key.pem");
    let other = include_str!("fixtures/cli/other_public_key.pem");
    assert_eq!(store.app_key("com.contract.keys").await.unwrap(), None);
    let first = key("com.contract.keys", public, 1_000);
    store.put_app_key(&first).await.unwrap();
    assert_eq!(
        store.app_key("com.contract.keys").await.unwrap(),
        Some(first)
    );
    let replaced = key("com.contract.keys", other, 2_000);
    store.put_app_key(&replaced).await.unwrap();
    let second = key("com.contract.keys-2", public, 3_000);
    store.put_app_key(&second).await.unwrap();
    assert_eq!(
        store.list_app_keys().await.unwrap(),
        [replaced.clone(), second.clone()]
    );
    assert!(store.delete_app_key("com.contract.keys").await.unwrap());
    assert!(!store.delete_app_key("com.contract.keys").await.unwrap());
    assert_eq!(store.list_app_keys().await.unwrap(), [second]);
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

/// A bundle's description, link and minimum change in place, and can be cleared; nothing else
/// of the record moves.
async fn bundle_details_contract(store: &dyn MetadataStore) {
    use capgo_server::domain::bundle::BundleDetails;
    let stored = bundle("com.contract.details", "1.0.0", 1);
    store.insert_bundle(&stored).await.unwrap();
    let details = BundleDetails {
        description: "Faster checkout".into(),
        link: Some("https://example.com/notes".into()),
        min_update_version: Some("1.2.0".into()),
    };
    assert!(store
        .update_bundle_details(&stored.id, &details)
        .await
        .unwrap());
    let read = store.bundle(&stored.id).await.unwrap().unwrap();
    assert_eq!(read.details(), details);
    assert_eq!(
        Bundle {
            description: stored.description.clone(),
            link: stored.link.clone(),
            min_update_version: stored.min_update_version.clone(),
            ..read
        },
        stored,
        "only the details changed"
    );
    let cleared = BundleDetails::default();
    assert!(store
        .update_bundle_details(&stored.id, &cleared)
        .await
        .unwrap());
    assert_eq!(
        store.bundle(&stored.id).await.unwrap().unwrap().details(),
        cleared
    );
    assert!(!store
        .update_bundle_details(&RecordId::generate(), &details)
        .await
        .unwrap());
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

/// One revision of the catalog version of a store other processes share, followed across
/// writes: every write that changes an answer must move it, or other replicas keep serving
/// stale answers. SQLite reports none (its only writer clears its own cache).
struct CatalogRevision {
    name: &'static str,
    of: fn(&CatalogVersion) -> i64,
    seen: Option<i64>,
}

impl CatalogRevision {
    /// Moved by channel-settings and device-override writes.
    async fn targeting(store: &dyn MetadataStore) -> CatalogRevision {
        CatalogRevision::follow(store, "targeting", |v| v.targeting_revision).await
    }

    /// Moved by rollout starts and steps.
    async fn rollouts(store: &dyn MetadataStore) -> CatalogRevision {
        CatalogRevision::follow(store, "rollout", |v| v.rollout_revision).await
    }

    async fn follow(
        store: &dyn MetadataStore,
        name: &'static str,
        of: fn(&CatalogVersion) -> i64,
    ) -> CatalogRevision {
        let mut revision = CatalogRevision {
            name,
            of,
            seen: None,
        };
        revision.seen = revision.read(store).await;
        revision
    }

    async fn read(&self, store: &dyn MetadataStore) -> Option<i64> {
        store
            .catalog_version()
            .await
            .unwrap()
            .map(|v| (self.of)(&v))
    }

    async fn assert_moved(&mut self, store: &dyn MetadataStore, write: &str) {
        let now = self.read(store).await;
        match (self.seen, now) {
            (Some(before), Some(after)) => assert!(
                after > before,
                "{write} left the {} revision at {before}",
                self.name
            ),
            (None, None) => {}
            changed => panic!("{write}: the catalog version appeared or vanished: {changed:?}"),
        }
        self.seen = now;
    }

    async fn assert_unchanged(&self, store: &dyn MetadataStore, write: &str) {
        assert_eq!(
            self.read(store).await,
            self.seen,
            "{write} moved the {} revision",
            self.name
        );
    }
}

fn channel(name: &str) -> ChannelName {
    ChannelName::parse(name).unwrap()
}

fn settings(
    app_id: &str,
    name: &str,
    rules: ChannelRules,
    owner: Option<ResourceRef>,
    updated_at: i64,
) -> ChannelSettings {
    ChannelSettings {
        app_id: app_id.into(),
        channel: channel(name),
        rules,
        owner,
        updated_at,
    }
}

/// Settings per (app, channel): stored as given, listed by app then channel, replaced, and
/// forgotten; storing them creates the channel (with its numeric id) or keeps the one there.
async fn channel_settings_contract(store: &dyn MetadataStore) {
    let app = "com.contract.channels";
    let mut revision = CatalogRevision::targeting(store).await;
    assert!(store.channel_settings(Some(app)).await.unwrap().is_empty());
    let strict = ChannelRules {
        allow_android: false,
        allow_emulator: false,
        allow_dev_build: false,
        update_policy: UpdatePolicy::Major,
        block_under_native: true,
        allow_device_self_set: false,
        ..ChannelRules::default()
    };
    let beta = settings(
        app,
        "beta",
        strict,
        Some(ResourceRef::new("Channel", "apps", "beta")),
        100,
    );
    store.put_channel_settings(&beta).await.unwrap();
    revision.assert_moved(store, "storing settings").await;
    let channels = store.channels(app).await.unwrap();
    assert_eq!(
        channels.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["beta"],
        "settings create their channel"
    );
    let beta_id = channels[0].id;
    assert_eq!(
        store.channel_settings(Some(app)).await.unwrap(),
        std::slice::from_ref(&beta),
        "round trip"
    );

    let alpha = settings(
        app,
        "alpha",
        ChannelRules {
            allow_ios: false,
            allow_electron: false,
            allow_device: false,
            allow_prod_build: false,
            update_policy: UpdatePolicy::VersionNumber,
            ..ChannelRules::default()
        },
        None,
        110,
    );
    store.put_channel_settings(&alpha).await.unwrap();
    let elsewhere = settings(
        "com.contract.channels-2",
        "production",
        ChannelRules::default(),
        None,
        120,
    );
    store.put_channel_settings(&elsewhere).await.unwrap();
    assert_eq!(
        store.channel_settings(Some(app)).await.unwrap(),
        [alpha.clone(), beta.clone()],
        "by channel"
    );
    let of_these_apps: Vec<ChannelSettings> = store
        .channel_settings(None)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.app_id.starts_with("com.contract.channels"))
        .collect();
    assert_eq!(
        of_these_apps,
        [alpha.clone(), beta.clone(), elsewhere],
        "by app, then channel"
    );

    let replaced = settings(app, "beta", ChannelRules::default(), None, 200);
    store.put_channel_settings(&replaced).await.unwrap();
    revision.assert_moved(store, "replacing settings").await;
    assert_eq!(
        store.channel_settings(Some(app)).await.unwrap(),
        [alpha.clone(), replaced]
    );
    for policy in UpdatePolicy::ALL {
        let rules = ChannelRules {
            update_policy: policy,
            ..ChannelRules::default()
        };
        store
            .put_channel_settings(&settings(app, "policies", rules, None, 300))
            .await
            .unwrap();
        let stored = store.channel_settings(Some(app)).await.unwrap();
        let stored = stored.iter().find(|s| s.channel.as_str() == "policies");
        assert_eq!(stored.unwrap().rules.update_policy, policy);
    }

    assert!(store
        .delete_channel_settings(app, &channel("beta"))
        .await
        .unwrap());
    revision.assert_moved(store, "forgetting settings").await;
    assert!(!store
        .delete_channel_settings(app, &channel("beta"))
        .await
        .unwrap());
    assert!(!store
        .delete_channel_settings(app, &channel("never-configured"))
        .await
        .unwrap());
    let left: Vec<String> = store
        .channel_settings(Some(app))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.channel.to_string())
        .collect();
    assert_eq!(left, ["alpha", "policies"]);
    let channels = store.channels(app).await.unwrap();
    assert_eq!(
        channels
            .iter()
            .map(|c| (c.name.as_str(), c.id == beta_id))
            .collect::<Vec<_>>(),
        [("beta", true), ("alpha", false), ("policies", false)],
        "channels keep their ids, in the order they were made, settings or not"
    );

    // A channel a release made keeps its id when it gets settings.
    let made_by_release = store.channels("com.contract.app").await.unwrap();
    let production = settings(
        "com.contract.app",
        "production",
        ChannelRules::default(),
        None,
        400,
    );
    store.put_channel_settings(&production).await.unwrap();
    assert_eq!(
        store.channels("com.contract.app").await.unwrap(),
        made_by_release
    );
}

fn device_override(
    app_id: &str,
    device_id: &str,
    channel_name: &str,
    source: &OverrideSource,
    updated_at: i64,
) -> DeviceOverride {
    DeviceOverride {
        app_id: app_id.into(),
        device_id: device_id.into(),
        channel: channel(channel_name),
        source: source.clone(),
        updated_at,
    }
}

/// One override per (app, device): forced ones put and replaced, a device's own choice that
/// never replaces a forced one, a resource's set replaced as a whole, removals by source.
async fn device_override_contract(store: &dyn MetadataStore) {
    let app = "com.contract.overrides";
    let (api, device) = (OverrideSource::Api, OverrideSource::Device);
    let resource = OverrideSource::Resource(ResourceRef::new("Channel", "apps", "beta"));
    let other_resource = OverrideSource::Resource(ResourceRef::new("Channel", "apps", "alpha"));
    let o = |device_id: &str, channel_name: &str, source: &OverrideSource, at: i64| {
        device_override(app, device_id, channel_name, source, at)
    };
    let mut revision = CatalogRevision::targeting(store).await;
    assert!(store.device_overrides(app).await.unwrap().is_empty());

    store
        .put_device_overrides(&[o("d2", "beta", &api, 10), o("d1", "beta", &api, 10)])
        .await
        .unwrap();
    revision.assert_moved(store, "forcing devices").await;
    assert_eq!(
        store.device_overrides(app).await.unwrap(),
        [o("d1", "beta", &api, 10), o("d2", "beta", &api, 10)],
        "by device id"
    );

    assert!(store
        .put_device_choice(&o("d3", "alpha", &device, 20))
        .await
        .unwrap());
    revision.assert_moved(store, "a device's choice").await;
    assert!(store
        .put_device_choice(&o("d3", "beta", &device, 21))
        .await
        .unwrap());
    revision.assert_moved(store, "a device's next choice").await;
    assert!(
        !store
            .put_device_choice(&o("d1", "alpha", &device, 22))
            .await
            .unwrap(),
        "a forced override is never replaced by the device's choice"
    );
    assert_eq!(
        store.device_overrides(app).await.unwrap(),
        [
            o("d1", "beta", &api, 10),
            o("d2", "beta", &api, 10),
            o("d3", "beta", &device, 21)
        ],
        "one record per device: the next choice replaced the first"
    );
    store
        .put_device_overrides(&[o("d3", "alpha", &api, 23)])
        .await
        .unwrap();
    assert!(!store
        .put_device_choice(&o("d3", "beta", &device, 24))
        .await
        .unwrap());
    assert_eq!(
        store.device_overrides(app).await.unwrap()[2],
        o("d3", "alpha", &api, 23),
        "forcing replaces the device's choice"
    );
    let elsewhere = device_override("com.contract.overrides-2", "d1", "beta", &api, 25);
    store
        .put_device_overrides(std::slice::from_ref(&elsewhere))
        .await
        .unwrap();
    assert_eq!(
        store
            .device_overrides("com.contract.overrides-2")
            .await
            .unwrap(),
        std::slice::from_ref(&elsewhere),
        "the same device id in another app is another device"
    );
    assert_eq!(store.device_overrides(app).await.unwrap().len(), 3);

    store
        .replace_resource_overrides(
            &resource,
            &[
                o("d4", "beta", &resource, 30),
                o("d5", "beta", &resource, 30),
            ],
        )
        .await
        .unwrap();
    revision.assert_moved(store, "a resource's devices").await;
    store
        .replace_resource_overrides(
            &resource,
            &[
                o("d1", "beta", &resource, 31),
                o("d5", "beta", &resource, 31),
                o("d6", "beta", &resource, 31),
            ],
        )
        .await
        .unwrap();
    revision
        .assert_moved(store, "a resource's new devices")
        .await;
    assert_eq!(
        store.device_overrides(app).await.unwrap(),
        [
            o("d1", "beta", &resource, 31),
            o("d2", "beta", &api, 10),
            o("d3", "alpha", &api, 23),
            o("d5", "beta", &resource, 31),
            o("d6", "beta", &resource, 31),
        ],
        "exactly the resource's devices: d4 released, d1 taken over, the others untouched"
    );
    assert!(!store
        .put_device_choice(&o("d5", "alpha", &device, 32))
        .await
        .unwrap());
    store
        .replace_resource_overrides(&other_resource, &[o("d7", "alpha", &other_resource, 33)])
        .await
        .unwrap();
    store
        .replace_resource_overrides(&resource, &[])
        .await
        .unwrap();
    revision
        .assert_moved(store, "releasing a resource's devices")
        .await;
    assert_eq!(
        store.device_overrides(app).await.unwrap(),
        [
            o("d2", "beta", &api, 10),
            o("d3", "alpha", &api, 23),
            o("d7", "alpha", &other_resource, 33),
        ],
        "another resource's devices stay"
    );

    assert!(store
        .put_device_choice(&o("d8", "beta", &device, 40))
        .await
        .unwrap());
    let ids = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
    assert_eq!(
        store
            .delete_device_overrides(app, &ids(&["d2", "d8"]), Some(&device))
            .await
            .unwrap(),
        1,
        "only the device's own choice"
    );
    revision.assert_moved(store, "forgetting a choice").await;
    assert_eq!(
        store
            .delete_device_overrides(app, &ids(&["d2", "d3", "nobody"]), None)
            .await
            .unwrap(),
        2
    );
    revision.assert_moved(store, "releasing devices").await;
    assert_eq!(
        store
            .delete_device_overrides(app, &ids(&["d7"]), Some(&api))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .delete_device_overrides(app, &ids(&["d7"]), Some(&other_resource))
            .await
            .unwrap(),
        1
    );
    assert!(store.device_overrides(app).await.unwrap().is_empty());
    assert_eq!(
        store
            .device_overrides("com.contract.overrides-2")
            .await
            .unwrap(),
        [elsewhere]
    );
}

/// A device's choice racing a forced override of the same device: whichever runs first, the
/// forced one is what stays (on MongoDB without transactions: see its store). And two choices
/// of a new device at once are both choices, neither mistaken for a forced override.
async fn forced_overrides_win_races_with_device_choices(store: &dyn MetadataStore) {
    let app = "com.contract.override-race";
    let resource = OverrideSource::Resource(ResourceRef::new("Channel", "apps", "race"));
    for round in 0..20 {
        let device_id = format!("race-{round}");
        let choice = device_override(app, &device_id, "alpha", &OverrideSource::Device, round);
        let source = if round % 2 == 0 {
            OverrideSource::Api
        } else {
            resource.clone()
        };
        let forced = device_override(app, &device_id, "beta", &source, round);
        let force = async {
            match &source {
                OverrideSource::Api => {
                    store
                        .put_device_overrides(std::slice::from_ref(&forced))
                        .await
                }
                _ => {
                    store
                        .replace_resource_overrides(&source, std::slice::from_ref(&forced))
                        .await
                }
            }
        };
        let (chose, forced_result) = tokio::join!(store.put_device_choice(&choice), force);
        forced_result.unwrap();
        let chose = chose.unwrap();
        let stored = store.device_overrides(app).await.unwrap();
        assert_eq!(
            stored.iter().find(|o| o.device_id == device_id),
            Some(&forced),
            "round {round}: the forced override stands (the choice answered {chose})"
        );
    }
    for round in 0..10 {
        let device_id = format!("twice-{round}");
        let choose =
            |name: &str| device_override(app, &device_id, name, &OverrideSource::Device, 1);
        let (alpha, beta) = (choose("alpha"), choose("beta"));
        let (first, second) = tokio::join!(
            store.put_device_choice(&alpha),
            store.put_device_choice(&beta)
        );
        assert!(
            first.unwrap() && second.unwrap(),
            "round {round}: no forced override was in the way"
        );
        let stored = store.device_overrides(app).await.unwrap();
        let stored = stored.iter().find(|o| o.device_id == device_id).unwrap();
        assert!(
            *stored == alpha || *stored == beta,
            "round {round}: {stored:?}"
        );
    }
}

fn unregistered(code: &str, devices: u64, checks: u64, first: i64, last: i64) -> UnregisteredBuild {
    UnregisteredBuild {
        key: ReleaseKey {
            platform: Platform::Android,
            app_id: "com.contract.builds".into(),
            version_name: "3.0.0".into(),
            version_code: code.into(),
        },
        devices,
        checks,
        first_seen: first,
        last_seen: last,
    }
}

/// Sightings of builds without a release add up per build, are listed newest first, are
/// forgotten by key, and never number more than the cap.
async fn unregistered_build_contract(store: &dyn MetadataStore) {
    assert!(store.unregistered_builds().await.unwrap().is_empty());
    store
        .record_unregistered_builds(&[
            unregistered("1", 3, 5, 10, 20),
            unregistered("2", 1, 1, 15, 30),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.unregistered_builds().await.unwrap(),
        [
            unregistered("2", 1, 1, 15, 30),
            unregistered("1", 3, 5, 10, 20)
        ],
        "seen most recently first"
    );
    store
        .record_unregistered_builds(&[unregistered("1", 2, 4, 5, 40)])
        .await
        .unwrap();
    store
        .record_unregistered_builds(&[unregistered("1", 7, 1, 50, 45)])
        .await
        .unwrap();
    assert_eq!(
        store.unregistered_builds().await.unwrap(),
        [
            unregistered("1", 7, 10, 5, 45),
            unregistered("2", 1, 1, 15, 30)
        ],
        "checks add up, devices keep the largest count, first and last seen widen"
    );
    let gone = unregistered("2", 0, 0, 0, 0).key;
    store.delete_unregistered_build(&gone).await.unwrap();
    store.delete_unregistered_build(&gone).await.unwrap();
    assert_eq!(
        store.unregistered_builds().await.unwrap(),
        [unregistered("1", 7, 10, 5, 45)]
    );

    let many: Vec<UnregisteredBuild> = (0..MAX_UNREGISTERED_BUILDS as i64)
        .map(|i| unregistered(&format!("n{i}"), 1, 1, 1000 + i, 1000 + i))
        .collect();
    store.record_unregistered_builds(&many).await.unwrap();
    store
        .record_unregistered_builds(&[
            unregistered("old", 1, 1, 0, 1),
            unregistered("new", 1, 1, 9000, 9000),
        ])
        .await
        .unwrap();
    let kept = store.unregistered_builds().await.unwrap();
    assert_eq!(kept.len(), MAX_UNREGISTERED_BUILDS, "bounded");
    assert_eq!(kept[0].key.version_code, "new");
    let codes: Vec<&str> = kept.iter().map(|b| b.key.version_code.as_str()).collect();
    for dropped in ["1", "old", "n0"] {
        assert!(
            !codes.contains(&dropped),
            "{dropped} was seen longest ago and should be dropped"
        );
    }
    assert_eq!(kept.last().unwrap().last_seen, 1001);
}

/// Devices found by device id (compared lowercased) or custom id, each as its latest event
/// shows it, most recently seen first.
async fn find_devices_contract(store: &dyn MetadataStore) {
    let app = "com.contract.devices";
    let seen_event =
        |device_id: &str, custom_id: Option<&str>, platform: &str, version: &str, at: i64| {
            StatsEvent {
                app_id: app.into(),
                device_id: device_id.into(),
                platform: Some(platform.into()),
                version_name: Some(version.into()),
                custom_id: custom_id.map(str::to_string),
                occurred_at: at,
                ..event("get", version)
            }
        };
    let mut elsewhere = seen_event("abc-1", Some("user-7"), "ios", "9.9.9", 999);
    elsewhere.app_id = "com.contract.devices-2".into();
    store
        .insert_stats(&[
            seen_event("abc-1", Some("user-7"), "ios", "1.0.0", 100),
            seen_event("abc-1", Some("user-7"), "ios", "1.0.1", 300),
            seen_event("abc-2", Some("user-7"), "android", "2.0.0", 200),
            seen_event("abc-3", None, "android", "2.0.1", 400),
            seen_event("abc-4", Some("someone"), "ios", "2.0.1", 500),
            elsewhere,
        ])
        .await
        .unwrap();
    let device =
        |device_id: &str, custom_id: Option<&str>, platform: &str, version: &str, at: i64| {
            SeenDevice {
                device_id: device_id.into(),
                custom_id: custom_id.map(str::to_string),
                platform: Some(platform.into()),
                version_name: Some(version.into()),
                last_seen: at,
            }
        };
    assert_eq!(
        store.find_devices(app, "user-7", 10).await.unwrap(),
        [
            device("abc-1", Some("user-7"), "ios", "1.0.1", 300),
            device("abc-2", Some("user-7"), "android", "2.0.0", 200),
        ],
        "by custom id, each device as its latest event shows it, most recently seen first"
    );
    assert_eq!(
        store.find_devices(app, "user-7", 1).await.unwrap(),
        [device("abc-1", Some("user-7"), "ios", "1.0.1", 300)],
        "at most the limit"
    );
    assert_eq!(
        store.find_devices(app, "ABC-3", 10).await.unwrap(),
        [device("abc-3", None, "android", "2.0.1", 400)],
        "device ids are stored lowercased"
    );
    assert!(
        store
            .find_devices(app, "USER-7", 10)
            .await
            .unwrap()
            .is_empty(),
        "custom ids are exact"
    );
    assert!(store
        .find_devices(app, "nobody", 10)
        .await
        .unwrap()
        .is_empty());
}

/// A release of `app` whose production channel serves its stable bundle, and a canary bundle:
/// `(release, stable, canary)`.
async fn rollout_release(store: &dyn MetadataStore, app: &str) -> (Release, Bundle, Bundle) {
    let stable = bundle(app, "1.0.0", 1);
    let canary = bundle(app, "1.1.0", 2);
    store.insert_bundle(&stable).await.unwrap();
    store.insert_bundle(&canary).await.unwrap();
    let mut r = release(&stable, "300");
    r.channels
        .insert(ChannelName::default_channel(), stable.id.clone());
    store.insert_release(&r).await.unwrap();
    (r, stable, canary)
}

/// A rollout of a release's channel from `stable` to `canary`, just started.
fn new_rollout(
    r: &Release,
    channel: &ChannelName,
    stable: &Bundle,
    canary: &Bundle,
    started_at: i64,
) -> Rollout {
    Rollout {
        id: RecordId::generate(),
        release_id: r.id.clone(),
        app_id: r.key.app_id.clone(),
        channel: channel.clone(),
        stable_bundle_id: stable.id.clone(),
        canary_bundle_id: canary.id.clone(),
        plan: RolloutPlan::new(
            &[5.0, 50.0, 100.0],
            Duration::from_secs(60),
            Duration::from_secs(3600),
            0.05,
            20,
        )
        .unwrap(),
        progress: RolloutProgress {
            phase: RolloutPhase::Progressing,
            step: 0,
            step_started_at: started_at,
        },
        salt: new_salt(),
        health: CanaryHealth::default(),
        started_by: "contract".into(),
        owner: Some(ResourceRef::new("Release", "apps", "shop-ios")),
        started_at,
        updated_at: started_at,
        finished_at: None,
        revision: 1,
    }
}

fn canary_mark(
    rollout_id: &RecordId,
    device_key: i64,
    signal: CanarySignal,
    at: i64,
) -> CanaryMark {
    CanaryMark {
        rollout_id: rollout_id.clone(),
        device_key,
        signal,
        at,
    }
}

/// The crash rule of the contract: a crash this soon after installing is a failure.
const CRASH_AFTER_SET: Duration = Duration::from_secs(600);

/// One rollout per (release, channel): an active one refuses a second, a finished one makes way
/// (with its health records); writes are compare-and-swap on the revision; completing points
/// the channel at the canary; every start or step moves the rollout revision, health alone does
/// not; rollouts and their health records go with their release.
async fn rollout_contract(store: &dyn MetadataStore) {
    let app = "com.contract.rollouts";
    let (r, stable, canary) = rollout_release(store, app).await;
    let (production, beta) = (ChannelName::default_channel(), channel("beta"));
    let rollouts_of_app = |active_only: bool| async move {
        store
            .list_rollouts(active_only)
            .await
            .unwrap()
            .into_iter()
            .filter(|listed| listed.app_id == app)
            .collect::<Vec<_>>()
    };
    let mut revision = CatalogRevision::rollouts(store).await;

    let started = new_rollout(&r, &production, &stable, &canary, 1_000);
    store.insert_rollout(&started).await.unwrap();
    revision.assert_moved(store, "starting a rollout").await;
    assert_eq!(
        store.rollout(&r.id, &production).await.unwrap(),
        Some(started.clone()),
        "round trip"
    );
    assert_eq!(store.rollout(&r.id, &beta).await.unwrap(), None);
    let second = new_rollout(&r, &production, &stable, &canary, 1_100);
    assert!(
        matches!(
            store.insert_rollout(&second).await,
            Err(StoreError::Duplicate(_))
        ),
        "one active rollout per channel"
    );
    let mut orphan = new_rollout(&r, &production, &stable, &canary, 1_100);
    orphan.release_id = RecordId::generate();
    assert!(
        matches!(
            store.insert_rollout(&orphan).await,
            Err(StoreError::Reference(_))
        ),
        "the release must exist"
    );
    assert_eq!(
        store
            .rollout(&orphan.release_id, &production)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.rollout(&r.id, &production).await.unwrap(),
        Some(started.clone()),
        "refused starts change nothing"
    );
    revision.assert_unchanged(store, "refused starts").await;
    let on_beta = new_rollout(&r, &beta, &stable, &canary, 2_000);
    store.insert_rollout(&on_beta).await.unwrap();
    revision
        .assert_moved(store, "starting another channel's rollout")
        .await;

    // Every write names the revision it read: the first of two writers wins, the other is told.
    let paused = started.moved(
        RolloutProgress {
            phase: RolloutPhase::Paused,
            ..started.progress.clone()
        },
        1_500,
    );
    assert!(store.update_rollout(&paused).await.unwrap());
    revision.assert_moved(store, "pausing").await;
    assert!(
        !store.update_rollout(&paused).await.unwrap(),
        "the same revision is written once"
    );
    let stale = started.moved(
        RolloutProgress {
            step: 1,
            ..started.progress.clone()
        },
        1_600,
    );
    assert!(
        !store.update_rollout(&stale).await.unwrap(),
        "a write from a stale read loses"
    );
    let mut absent = paused.moved(paused.progress.clone(), 1_600);
    absent.id = RecordId::generate();
    assert!(!store.update_rollout(&absent).await.unwrap());
    assert_eq!(
        store.rollout(&r.id, &production).await.unwrap(),
        Some(paused.clone()),
        "losing writes change nothing"
    );
    revision.assert_unchanged(store, "losing writes").await;
    let measured = Rollout {
        health: CanaryHealth {
            devices: 40,
            failed: 1,
        },
        updated_at: 1_700,
        revision: paused.revision + 1,
        ..paused.clone()
    };
    assert!(store.update_rollout(&measured).await.unwrap());
    revision.assert_unchanged(store, "a health update").await;
    let resumed = measured.moved(
        RolloutProgress {
            phase: RolloutPhase::Progressing,
            step: 1,
            step_started_at: 1_800,
        },
        1_800,
    );
    assert!(store.update_rollout(&resumed).await.unwrap());
    revision.assert_moved(store, "a step").await;
    assert_eq!(
        store.rollout(&r.id, &production).await.unwrap(),
        Some(resumed.clone())
    );
    let rolled_back = on_beta.moved(
        RolloutProgress {
            phase: RolloutPhase::RolledBack {
                reason: "3 of 20 devices failed on the canary".into(),
            },
            ..on_beta.progress.clone()
        },
        2_500,
    );
    assert!(store.update_rollout(&rolled_back).await.unwrap());
    revision.assert_moved(store, "rolling back").await;
    assert_eq!(
        rollouts_of_app(false).await,
        [rolled_back.clone(), resumed.clone()],
        "newest first, finished ones kept"
    );
    assert_eq!(
        rollouts_of_app(true).await,
        vec![resumed.clone()],
        "active ones"
    );

    // A new start replaces the finished rollout of the channel, and its health records.
    store
        .record_canary_marks(&[
            canary_mark(&rolled_back.id, 1, CanarySignal::Answered, 2_100),
            canary_mark(&rolled_back.id, 1, CanarySignal::Installed, 2_200),
        ])
        .await
        .unwrap();
    let health_of = |rollout: &Rollout| {
        let id = rollout.id.clone();
        async move { store.canary_health(&id, 0, CRASH_AFTER_SET).await.unwrap() }
    };
    assert_eq!(
        health_of(&rolled_back).await,
        CanaryHealth {
            devices: 1,
            failed: 0
        }
    );
    let restarted = new_rollout(&r, &beta, &stable, &canary, 3_000);
    store.insert_rollout(&restarted).await.unwrap();
    revision
        .assert_moved(store, "restarting a finished rollout")
        .await;
    assert_eq!(
        store.rollout(&r.id, &beta).await.unwrap(),
        Some(restarted.clone())
    );
    assert_eq!(
        health_of(&rolled_back).await,
        CanaryHealth::default(),
        "the replaced rollout's health records are gone"
    );

    // Completing points the channel at the canary, once.
    let done = resumed.moved(
        RolloutProgress {
            phase: RolloutPhase::Done,
            step: 2,
            step_started_at: 1_800,
        },
        4_000,
    );
    assert!(store.complete_rollout(&done).await.unwrap());
    revision.assert_moved(store, "completing").await;
    let completed = store.release_by_key(&r.key).await.unwrap().unwrap();
    assert_eq!(
        completed.bundle_for(&production),
        &canary.id,
        "the channel serves the canary"
    );
    assert_eq!(completed.updated_at, 4_000);
    assert_eq!(
        completed.serving(&production).since,
        Some(4_000),
        "promoted by the rollout"
    );
    assert_eq!(
        store.rollout(&r.id, &production).await.unwrap(),
        Some(done.clone())
    );
    assert!(
        !store.complete_rollout(&done).await.unwrap(),
        "completed once"
    );
    assert_eq!(
        store.repair_completions().await.unwrap(),
        0,
        "no completion was interrupted"
    );

    // Rollouts and their health records go with their release.
    store
        .record_canary_marks(&[
            canary_mark(&restarted.id, 1, CanarySignal::Answered, 3_100),
            canary_mark(&restarted.id, 1, CanarySignal::Installed, 3_200),
        ])
        .await
        .unwrap();
    assert_eq!(health_of(&restarted).await.devices, 1);
    assert!(store.delete_release(&r.id).await.unwrap());
    assert!(rollouts_of_app(false).await.is_empty());
    assert_eq!(
        health_of(&restarted).await,
        CanaryHealth::default(),
        "the deleted rollout's health records are gone"
    );
}

/// Health records merged from marks in any order and batch (the latest time of each signal),
/// and the health they give: devices answered with the canary that installed it or failed
/// since `since`; of them, those that failed since then, or crashed since then within
/// `crash_after_set` after installing.
async fn canary_health_contract(store: &dyn MetadataStore) {
    use CanarySignal::{Answered, Crashed, Failed, Installed};
    const MINUTE: i64 = 60_000;
    let (r, stable, canary) = rollout_release(store, "com.contract.rollouts-health").await;
    let started = new_rollout(&r, &ChannelName::default_channel(), &stable, &canary, 0);
    store.insert_rollout(&started).await.unwrap();
    let since = 100 * MINUTE;
    let mark = |device_key: i64, signal: CanarySignal, at: i64| {
        canary_mark(&started.id, device_key, signal, at)
    };
    store
        .record_canary_marks(&[
            // Healthy, and reported twice: one device.
            mark(1, Answered, since - 5 * MINUTE),
            mark(1, Installed, since + MINUTE),
            mark(1, Answered, since + MINUTE),
            mark(1, Installed, since + 2 * MINUTE),
            // Crashed a minute after installing: failed.
            mark(2, Answered, since),
            mark(2, Installed, since + MINUTE),
            mark(2, Crashed, since + 2 * MINUTE),
            // Crashed twenty minutes after installing: the app's own business.
            mark(3, Answered, since),
            mark(3, Installed, since + MINUTE),
            mark(3, Crashed, since + 21 * MINUTE),
            // Never answered with the canary: not counted, whatever it reports.
            mark(4, Installed, since + MINUTE),
            mark(4, Failed, since + 2 * MINUTE),
            // Installed and failed before `since`.
            mark(5, Answered, since - 10 * MINUTE),
            mark(5, Installed, since - 9 * MINUTE),
            mark(5, Failed, since - MINUTE),
            // Failed to download: failed.
            mark(6, Answered, since),
            mark(6, Failed, since + 3 * MINUTE),
            // Crashed before installing (on the bundle it had): not the canary's failure.
            mark(7, Answered, since),
            mark(7, Crashed, since + MINUTE),
            mark(7, Installed, since + 2 * MINUTE),
            // Installed before `since`, crashed long after: neither a failure nor a report.
            mark(9, Answered, since - 6 * MINUTE),
            mark(9, Installed, since - 5 * MINUTE),
            mark(9, Crashed, since + 30 * MINUTE),
        ])
        .await
        .unwrap();
    // Another replica's batch, flushed late: device 2's older install does not replace the
    // later one (its crash still comes a minute after installing), and marks of a rollout that
    // does not exist are dropped.
    let unknown = RecordId::generate();
    store
        .record_canary_marks(&[
            mark(2, Installed, since - 30 * MINUTE),
            mark(2, Answered, since - 30 * MINUTE),
            canary_mark(&unknown, 8, Answered, since),
            canary_mark(&unknown, 8, Installed, since + MINUTE),
        ])
        .await
        .unwrap();
    let health = |since: i64, crash_after_set: Duration| {
        store.canary_health(&started.id, since, crash_after_set)
    };
    assert_eq!(
        health(since, CRASH_AFTER_SET).await.unwrap(),
        CanaryHealth {
            devices: 5,
            failed: 2
        },
        "devices 1, 2, 3, 6 and 7; 2 and 6 failed"
    );
    assert_eq!(
        health(since, Duration::from_secs(25 * 60)).await.unwrap(),
        CanaryHealth {
            devices: 5,
            failed: 3
        },
        "a longer crash rule makes device 3's crash a failure"
    );
    assert_eq!(
        health(since - 20 * MINUTE, CRASH_AFTER_SET).await.unwrap(),
        CanaryHealth {
            devices: 7,
            failed: 3
        },
        "an earlier start counts devices 5 and 9"
    );
    assert_eq!(
        health(since + 30 * MINUTE, CRASH_AFTER_SET).await.unwrap(),
        CanaryHealth::default(),
        "nothing reported since"
    );
    // All active rollouts at once, each from its own window: an hour before `now` here.
    let all = store
        .active_canary_health(since + 60 * MINUTE, CRASH_AFTER_SET)
        .await
        .unwrap();
    assert_eq!(
        all.iter()
            .find(|(id, _)| id == &started.id)
            .map(|(_, health)| *health),
        Some(CanaryHealth {
            devices: 5,
            failed: 2
        }),
        "the same counts as one rollout's health: {all:?}"
    );
    assert_eq!(
        store
            .canary_health(&unknown, 0, CRASH_AFTER_SET)
            .await
            .unwrap(),
        CanaryHealth::default(),
        "marks of an unknown rollout are dropped"
    );
}

/// The lease that picks the process driving rollouts: one holder until it expires, renewed by
/// its holder.
async fn lease_contract(store: &dyn MetadataStore) {
    let ttl = Duration::from_secs(30);
    let lease =
        |holder: &'static str, now: i64| store.acquire_lease("rollout-driver", holder, ttl, now);
    assert!(
        lease("a", 1_000).await.unwrap(),
        "the first holder takes it"
    );
    assert!(!lease("b", 2_000).await.unwrap(), "taken while it runs");
    assert!(lease("a", 20_000).await.unwrap(), "renewed by its holder");
    assert!(
        !lease("b", 40_000).await.unwrap(),
        "the renewal runs until 50 s"
    );
    assert!(lease("b", 50_001).await.unwrap(), "taken once expired");
    assert!(!lease("a", 50_002).await.unwrap(), "and lost by its holder");
    assert!(
        store
            .acquire_lease("another-lease", "a", ttl, 50_003)
            .await
            .unwrap(),
        "each name is a lease of its own"
    );
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
    assert_eq!(store.object_size(&key).await.unwrap(), Some(9));
    assert_eq!(store.object_size("bundles/absent.zip").await.unwrap(), None);
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
                && !b.app_id.starts_with("com.contract.details")
                && !b.app_id.starts_with("com.contract.rollouts")
                && !b.app_id.starts_with("com.contract.served")
        })
        .count();
    assert_eq!(of_the_main_contract, 2);
}

/// The tables of the release before channel settings, as `main` created them (bundles without
/// `link` and `min_update_version`; no settings, overrides or unregistered builds).
const SCHEMA_BEFORE_CHANNEL_SETTINGS: &str = r#"
CREATE TABLE IF NOT EXISTS bundles (
    id                 TEXT PRIMARY KEY,
    app_id             TEXT NOT NULL,
    version_name       TEXT NOT NULL,
    description        TEXT NOT NULL,
    sha256             TEXT NOT NULL,
    crc32              TEXT NOT NULL,
    size               INTEGER NOT NULL,
    blob_key           TEXT NOT NULL,
    session_key        TEXT,
    encrypted_checksum TEXT,
    key_id             TEXT,
    created_at         INTEGER NOT NULL,
    owner              TEXT,
    UNIQUE (app_id, version_name)
);
CREATE TABLE IF NOT EXISTS releases (
    id                TEXT PRIMARY KEY,
    platform          TEXT NOT NULL,
    app_id            TEXT NOT NULL,
    version_name      TEXT NOT NULL,
    version_code      TEXT NOT NULL,
    builtin_bundle_id TEXT NOT NULL REFERENCES bundles(id),
    release_date      INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    owner             TEXT,
    UNIQUE (version_name, platform, app_id, version_code)
);
CREATE TABLE IF NOT EXISTS release_channels (
    release_id TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    channel    TEXT NOT NULL,
    bundle_id  TEXT NOT NULL REFERENCES bundles(id),
    PRIMARY KEY (release_id, channel)
);
CREATE INDEX IF NOT EXISTS release_channels_by_bundle ON release_channels (bundle_id);
CREATE INDEX IF NOT EXISTS releases_by_builtin ON releases (builtin_bundle_id);
CREATE TABLE IF NOT EXISTS channels (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL,
    name   TEXT NOT NULL,
    UNIQUE (app_id, name)
);
CREATE TABLE IF NOT EXISTS stats_events (
    id               INTEGER PRIMARY KEY,
    occurred_at      INTEGER NOT NULL,
    app_id           TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    action           TEXT NOT NULL,
    platform         TEXT,
    version_name     TEXT,
    old_version_name TEXT,
    version_build    TEXT,
    version_code     TEXT,
    plugin_version   TEXT,
    is_emulator      INTEGER,
    is_prod          INTEGER,
    custom_id        TEXT,
    metadata         TEXT
);
CREATE INDEX IF NOT EXISTS stats_by_bundle ON stats_events (app_id, version_name, occurred_at);
"#;

#[tokio::test]
async fn sqlite_brings_a_database_of_the_previous_schema_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capgo.db");
    let app = "com.contract.upgrade";
    let old = bundle(app, "1.0.0", 1);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(SCHEMA_BEFORE_CHANNEL_SETTINGS).unwrap();
        c.execute(
            "INSERT INTO bundles (id, app_id, version_name, description, sha256, crc32, size, \
             blob_key, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![
                old.id.as_str(),
                old.app_id,
                old.version_name,
                old.description,
                old.sha256,
                old.crc32,
                old.size as i64,
                old.blob_key,
                old.created_at
            ],
        )
        .unwrap();
        c.execute(
            "INSERT INTO channels (app_id, name) VALUES (?1, 'production'), (?1, 'beta')",
            [app],
        )
        .unwrap();
        c.execute(
            "INSERT INTO stats_events (occurred_at, app_id, device_id, action, custom_id) \
             VALUES (5, ?1, 'old-device', 'get', 'user-1')",
            [app],
        )
        .unwrap();
    }

    let store = SqliteMetadataStore::open(&path).unwrap();
    assert_eq!(
        store.bundle(&old.id).await.unwrap(),
        Some(old.clone()),
        "an old bundle has no link and no minimum"
    );
    let mut new = bundle(app, "2.0.0", 2);
    new.link = Some("https://example.com/notes/2.0.0".into());
    new.min_update_version = Some("1.2.0".into());
    store.insert_bundle(&new).await.unwrap();
    assert_eq!(store.bundle(&new.id).await.unwrap(), Some(new.clone()));

    let before: Vec<(String, i64)> = store
        .channels(app)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name.to_string(), c.id))
        .collect();
    let beta = settings(app, "beta", ChannelRules::default(), None, 10);
    store.put_channel_settings(&beta).await.unwrap();
    assert_eq!(store.channel_settings(Some(app)).await.unwrap(), [beta]);
    let after: Vec<(String, i64)> = store
        .channels(app)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.name.to_string(), c.id))
        .collect();
    assert_eq!(after, before, "existing channels keep their ids");
    let choice = device_override(app, "old-device", "beta", &OverrideSource::Device, 11);
    assert!(store.put_device_choice(&choice).await.unwrap());
    assert_eq!(store.device_overrides(app).await.unwrap(), [choice]);
    store
        .record_unregistered_builds(&[unregistered("7", 1, 1, 1, 1)])
        .await
        .unwrap();
    assert_eq!(store.unregistered_builds().await.unwrap().len(), 1);
    assert_eq!(
        store.find_devices(app, "user-1", 10).await.unwrap(),
        [SeenDevice {
            device_id: "old-device".into(),
            custom_id: Some("user-1".into()),
            platform: None,
            version_name: None,
            last_seen: 5,
        }],
        "stats stored before the upgrade are found"
    );
    drop(store);

    let reopened = SqliteMetadataStore::open(&path).unwrap();
    assert_eq!(
        reopened.list_bundles().await.unwrap(),
        [new, old],
        "opening an up-to-date database changes nothing"
    );
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

/// Documents an earlier release wrote: a bundle without `link` and `min_update_version`, a
/// channel without settings. They read as before, and the channel gets settings in place.
#[tokio::test]
async fn mongodb_reads_what_earlier_releases_stored() {
    let Some(services) = common::Services::get() else {
        return;
    };
    let database = common::Services::fresh_database();
    let app = "com.contract.upgrade";
    let old = bundle(app, "1.0.0", 1_000);
    let db = mongodb::Client::with_uri_str(&services.mongo_url)
        .await
        .unwrap()
        .database(&database);
    db.collection::<mongodb::bson::Document>("bundles")
        .insert_one(mongodb::bson::doc! {
            "_id": mongodb::bson::oid::ObjectId::parse_str(old.id.as_str()).unwrap(),
            "app_id": app, "version_name": &old.version_name, "description": &old.description,
            "sha256": &old.sha256, "crc_checksum": &old.crc32, "size": old.size as i64,
            "blob_key": &old.blob_key,
            "created_at": mongodb::bson::DateTime::from_millis(old.created_at),
        })
        .await
        .unwrap();
    db.collection::<mongodb::bson::Document>("channels")
        .insert_one(mongodb::bson::doc! {"_id": 41i64, "app_id": app, "name": "beta"})
        .await
        .unwrap();

    let store = MongoMetadataStore::connect(&services.mongo_url, &database)
        .await
        .unwrap();
    assert_eq!(store.bundle(&old.id).await.unwrap(), Some(old));
    assert!(store.channel_settings(None).await.unwrap().is_empty());
    let beta = settings(app, "beta", ChannelRules::default(), None, 10);
    store.put_channel_settings(&beta).await.unwrap();
    assert_eq!(store.channel_settings(Some(app)).await.unwrap(), [beta]);
    let channels = store.channels(app).await.unwrap();
    assert_eq!(
        channels
            .iter()
            .map(|c| (c.id, c.name.as_str()))
            .collect::<Vec<_>>(),
        [(41, "beta")],
        "the settings went into the existing channel"
    );
}

/// A completion interrupted between writing the rollout done and pointing the channel at the
/// canary (MongoDB has no transaction for the two): the mark it leaves makes the next repair
/// finish it, once.
#[tokio::test]
async fn mongodb_repairs_an_interrupted_completion() {
    let Some(services) = common::Services::get() else {
        return;
    };
    let database = common::Services::fresh_database();
    let connected = MongoMetadataStore::connect(&services.mongo_url, &database)
        .await
        .unwrap();
    let store: &dyn MetadataStore = &connected;
    let (r, stable, canary) = rollout_release(store, "com.contract.rollouts-repair").await;
    let production = ChannelName::default_channel();
    let started = new_rollout(&r, &production, &stable, &canary, 1_000);
    store.insert_rollout(&started).await.unwrap();
    let done = started.moved(
        RolloutProgress {
            phase: RolloutPhase::Done,
            step: 2,
            step_started_at: 1_000,
        },
        2_000,
    );
    // What `complete_rollout` leaves when its process dies after its first write.
    assert!(store.update_rollout(&done).await.unwrap());
    mongodb::Client::with_uri_str(&services.mongo_url)
        .await
        .unwrap()
        .database(&database)
        .collection::<mongodb::bson::Document>("rollouts")
        .update_one(
            mongodb::bson::doc! {
                "_id": mongodb::bson::oid::ObjectId::parse_str(done.id.as_str()).unwrap(),
            },
            mongodb::bson::doc! {"$set": {"switching": true}},
        )
        .await
        .unwrap();
    let serving = || async {
        store
            .release(&r.id)
            .await
            .unwrap()
            .unwrap()
            .bundle_for(&production)
            .clone()
    };
    assert_eq!(serving().await, stable.id, "interrupted");
    let mut revision = CatalogRevision::rollouts(store).await;

    assert_eq!(store.repair_completions().await.unwrap(), 1);
    assert_eq!(
        serving().await,
        canary.id,
        "the repair pointed the channel at the canary"
    );
    revision.assert_moved(store, "repairing a completion").await;
    assert_eq!(
        store.repair_completions().await.unwrap(),
        0,
        "repaired once"
    );
    assert_eq!(store.rollout(&r.id, &production).await.unwrap(), Some(done));
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
