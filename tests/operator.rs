//! Controller flows against a fake Kubernetes API (kube's tower-test pattern: no API server can
//! run here) with the real catalog (SQLite + files) and a local HTTP server hosting zips.
//! Writes are counted on both sides, so idempotency is measured, not assumed.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{json, Value};

use capgo_server::catalog::staging::Staging;
use capgo_server::catalog::{Catalog, CatalogError, CatalogSettings, ChannelRulesChange};
use capgo_server::domain::bundle::BundleDetails;
use capgo_server::domain::channel::Channel;
use capgo_server::domain::channel_policy::{ChannelSettings, UpdatePolicy};
use capgo_server::domain::encryption::AppKey;
use capgo_server::domain::fleet::{FleetCount, Span};
use capgo_server::domain::manifest::ManifestEntry;
use capgo_server::domain::net_policy::SourcePolicy;
use capgo_server::domain::rollout::{CanaryHealth, CanaryMark, Rollout};
use capgo_server::domain::stats::StatsEvent;
use capgo_server::domain::targeting::{DeviceOverride, OverrideSource, UnregisteredBuild};
use capgo_server::domain::{
    Actor, Bundle as BundleRecord, ChannelName, RecordId, Release as ReleaseRecord, ReleaseKey,
    ResourceRef, UnixMillis,
};
use capgo_server::operator::crd::{Bundle, Channel as ChannelResource, Release};
use capgo_server::operator::fetch::SourceFetcher;
use capgo_server::operator::{bundles, channels, releases, Context};
use capgo_server::store::fs_blobs::FilesystemBlobStore;
use capgo_server::store::sqlite::SqliteMetadataStore;
use capgo_server::store::{
    AppKeyStore, BlobStore, CatalogStore, CatalogVersion, FleetStore, ManifestStore, RolloutStore,
    SeenDevice, StoreError, TargetingStore,
};

const NS: &str = "apps";

/// Counts the metadata writes that pass through it.
struct CountingStore {
    inner: SqliteMetadataStore,
    writes: AtomicUsize,
}

impl CountingStore {
    fn wrote(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
    fn count(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl AppKeyStore for CountingStore {
    async fn app_key(&self, app_id: &str) -> Result<Option<AppKey>, StoreError> {
        self.inner.app_key(app_id).await
    }
    async fn put_app_key(&self, key: &AppKey) -> Result<(), StoreError> {
        self.count();
        self.inner.put_app_key(key).await
    }
    async fn list_app_keys(&self) -> Result<Vec<AppKey>, StoreError> {
        self.inner.list_app_keys().await
    }
    async fn delete_app_key(&self, app_id: &str) -> Result<bool, StoreError> {
        self.count();
        self.inner.delete_app_key(app_id).await
    }
}

#[async_trait]
impl CatalogStore for CountingStore {
    async fn insert_bundle(&self, b: &BundleRecord) -> Result<(), StoreError> {
        self.count();
        self.inner.insert_bundle(b).await
    }
    async fn bundle(&self, id: &RecordId) -> Result<Option<BundleRecord>, StoreError> {
        self.inner.bundle(id).await
    }
    async fn bundle_by_version(
        &self,
        a: &str,
        v: &str,
    ) -> Result<Option<BundleRecord>, StoreError> {
        self.inner.bundle_by_version(a, v).await
    }
    async fn list_bundles(&self) -> Result<Vec<BundleRecord>, StoreError> {
        self.inner.list_bundles().await
    }
    async fn update_bundle_details(
        &self,
        id: &RecordId,
        details: &BundleDetails,
    ) -> Result<bool, StoreError> {
        self.count();
        self.inner.update_bundle_details(id, details).await
    }
    async fn delete_bundle(&self, id: &RecordId) -> Result<bool, StoreError> {
        self.count();
        self.inner.delete_bundle(id).await
    }
    async fn insert_release(&self, r: &ReleaseRecord) -> Result<(), StoreError> {
        self.count();
        self.inner.insert_release(r).await
    }
    async fn release(&self, id: &RecordId) -> Result<Option<ReleaseRecord>, StoreError> {
        self.inner.release(id).await
    }
    async fn release_by_key(&self, k: &ReleaseKey) -> Result<Option<ReleaseRecord>, StoreError> {
        self.inner.release_by_key(k).await
    }
    async fn list_releases(&self) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.inner.list_releases().await
    }
    async fn releases_using_bundle(&self, id: &RecordId) -> Result<Vec<ReleaseRecord>, StoreError> {
        self.inner.releases_using_bundle(id).await
    }
    async fn set_release_date(
        &self,
        id: &RecordId,
        d: Option<UnixMillis>,
        u: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.count();
        self.inner.set_release_date(id, d, u).await
    }
    async fn set_channel_bundle(
        &self,
        id: &RecordId,
        c: &ChannelName,
        b: &RecordId,
        u: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.count();
        self.inner.set_channel_bundle(id, c, b, u).await
    }
    async fn replace_release_assignments(
        &self,
        id: &RecordId,
        b: &RecordId,
        c: &BTreeMap<ChannelName, RecordId>,
        u: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.count();
        self.inner.replace_release_assignments(id, b, c, u).await
    }
    async fn delete_release(&self, id: &RecordId) -> Result<bool, StoreError> {
        self.count();
        self.inner.delete_release(id).await
    }
    async fn channels(&self, a: &str) -> Result<Vec<Channel>, StoreError> {
        self.inner.channels(a).await
    }
    async fn insert_stats(&self, e: &[StatsEvent]) -> Result<(), StoreError> {
        self.count();
        self.inner.insert_stats(e).await
    }
    async fn bundle_blob_keys(&self) -> Result<Vec<String>, StoreError> {
        self.inner.bundle_blob_keys().await
    }
    async fn catalog_version(&self) -> Result<Option<CatalogVersion>, StoreError> {
        self.inner.catalog_version().await
    }
    async fn adopt_release(&self, id: &RecordId, o: &ResourceRef) -> Result<bool, StoreError> {
        self.count();
        self.inner.adopt_release(id, o).await
    }
    async fn adopt_bundle(&self, id: &RecordId, o: &ResourceRef) -> Result<bool, StoreError> {
        self.count();
        self.inner.adopt_bundle(id, o).await
    }
}

#[async_trait]
impl FleetStore for CountingStore {
    async fn record_fleet_counts(&self, counts: &[FleetCount]) -> Result<(), StoreError> {
        self.count();
        self.inner.record_fleet_counts(counts).await
    }
    async fn fleet_counts(
        &self,
        app_id: &str,
        since: UnixMillis,
    ) -> Result<Vec<FleetCount>, StoreError> {
        self.inner.fleet_counts(app_id, since).await
    }
    async fn delete_fleet_counts_before(
        &self,
        span: Span,
        before: UnixMillis,
    ) -> Result<u64, StoreError> {
        self.count();
        self.inner.delete_fleet_counts_before(span, before).await
    }
    async fn delete_stats_before(&self, before: UnixMillis) -> Result<u64, StoreError> {
        self.count();
        self.inner.delete_stats_before(before).await
    }
}

#[async_trait]
impl ManifestStore for CountingStore {
    async fn insert_bundle_with_manifest(
        &self,
        bundle: &BundleRecord,
        manifest: &[ManifestEntry],
    ) -> Result<(), StoreError> {
        self.count();
        self.inner
            .insert_bundle_with_manifest(bundle, manifest)
            .await
    }
    async fn bundle_manifest(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Option<Vec<ManifestEntry>>, StoreError> {
        self.inner.bundle_manifest(bundle_id).await
    }
    async fn set_bundle_manifest(
        &self,
        bundle_id: &RecordId,
        manifest: &[ManifestEntry],
    ) -> Result<bool, StoreError> {
        self.count();
        self.inner.set_bundle_manifest(bundle_id, manifest).await
    }
    async fn file_object_in_use(&self, object_key: &str) -> Result<bool, StoreError> {
        self.inner.file_object_in_use(object_key).await
    }
    async fn doomed_file_objects(&self) -> Result<Vec<(String, UnixMillis)>, StoreError> {
        self.inner.doomed_file_objects().await
    }
    async fn mark_file_objects_doomed(
        &self,
        object_keys: &[String],
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        self.count();
        self.inner.mark_file_objects_doomed(object_keys, at).await
    }
    async fn unmark_file_objects(&self, object_keys: &[String]) -> Result<(), StoreError> {
        self.count();
        self.inner.unmark_file_objects(object_keys).await
    }
}

#[async_trait]
impl RolloutStore for CountingStore {
    async fn insert_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        self.count();
        self.inner.insert_rollout(rollout).await
    }
    async fn rollout(
        &self,
        release_id: &RecordId,
        channel: &ChannelName,
    ) -> Result<Option<Rollout>, StoreError> {
        self.inner.rollout(release_id, channel).await
    }
    async fn list_rollouts(&self, active_only: bool) -> Result<Vec<Rollout>, StoreError> {
        self.inner.list_rollouts(active_only).await
    }
    async fn update_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError> {
        self.count();
        self.inner.update_rollout(rollout).await
    }
    async fn complete_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError> {
        self.count();
        self.inner.complete_rollout(rollout).await
    }
    async fn record_canary_marks(&self, marks: &[CanaryMark]) -> Result<(), StoreError> {
        self.inner.record_canary_marks(marks).await
    }
    async fn canary_health(
        &self,
        rollout_id: &RecordId,
        since: UnixMillis,
        crash_after_set: std::time::Duration,
    ) -> Result<CanaryHealth, StoreError> {
        self.inner
            .canary_health(rollout_id, since, crash_after_set)
            .await
    }
    async fn active_canary_health(
        &self,
        now: UnixMillis,
        crash_after_set: std::time::Duration,
    ) -> Result<Vec<(RecordId, CanaryHealth)>, StoreError> {
        self.inner.active_canary_health(now, crash_after_set).await
    }
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.inner.acquire_lease(name, holder, ttl, now).await
    }
}

#[async_trait]
impl TargetingStore for CountingStore {
    async fn channel_settings(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<ChannelSettings>, StoreError> {
        self.inner.channel_settings(app_id).await
    }
    async fn put_channel_settings(&self, settings: &ChannelSettings) -> Result<(), StoreError> {
        self.count();
        self.inner.put_channel_settings(settings).await
    }
    async fn delete_channel_settings(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, StoreError> {
        self.count();
        self.inner.delete_channel_settings(app_id, channel).await
    }
    async fn device_overrides(&self, app_id: &str) -> Result<Vec<DeviceOverride>, StoreError> {
        self.inner.device_overrides(app_id).await
    }
    async fn put_device_overrides(&self, overrides: &[DeviceOverride]) -> Result<(), StoreError> {
        self.count();
        self.inner.put_device_overrides(overrides).await
    }
    async fn put_device_choice(&self, choice: &DeviceOverride) -> Result<bool, StoreError> {
        self.count();
        self.inner.put_device_choice(choice).await
    }
    async fn delete_device_overrides(
        &self,
        app_id: &str,
        device_ids: &[String],
        source: Option<&OverrideSource>,
    ) -> Result<u64, StoreError> {
        self.count();
        self.inner
            .delete_device_overrides(app_id, device_ids, source)
            .await
    }
    async fn replace_resource_overrides(
        &self,
        owner: &OverrideSource,
        overrides: &[DeviceOverride],
    ) -> Result<(), StoreError> {
        self.count();
        self.inner
            .replace_resource_overrides(owner, overrides)
            .await
    }
    async fn record_unregistered_builds(
        &self,
        sightings: &[UnregisteredBuild],
    ) -> Result<(), StoreError> {
        self.count();
        self.inner.record_unregistered_builds(sightings).await
    }
    async fn unregistered_builds(&self) -> Result<Vec<UnregisteredBuild>, StoreError> {
        self.inner.unregistered_builds().await
    }
    async fn delete_unregistered_build(&self, key: &ReleaseKey) -> Result<(), StoreError> {
        self.count();
        self.inner.delete_unregistered_build(key).await
    }
    async fn find_devices(
        &self,
        app_id: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<SeenDevice>, StoreError> {
        self.inner.find_devices(app_id, id, limit).await
    }
}

/// A minimal Kubernetes API for the two CRDs and Events: objects by path, every write recorded.
#[derive(Default)]
struct FakeApi {
    objects: Mutex<BTreeMap<String, Value>>,
    writes: Mutex<Vec<(String, String, Value)>>,
    /// Every request's method and path, in order.
    requests: Mutex<Vec<(String, String)>>,
    /// Whether listing Bundles works (the CRDs are installed); 404 until then.
    crds_installed: std::sync::atomic::AtomicBool,
}

impl FakeApi {
    fn path_of(kind: &str, name: &str) -> String {
        format!("/apis/capgo-server.io/v1alpha1/namespaces/{NS}/{kind}/{name}")
    }

    fn put(&self, kind: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        self.objects
            .lock()
            .unwrap()
            .insert(Self::path_of(kind, &name), object);
    }

    fn get(&self, kind: &str, name: &str) -> Value {
        self.objects.lock().unwrap()[&Self::path_of(kind, name)].clone()
    }

    fn writes(&self) -> Vec<(String, String, Value)> {
        self.writes.lock().unwrap().clone()
    }

    fn handle(&self, method: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.requests
            .lock()
            .unwrap()
            .push((method.to_string(), path.to_string()));
        let lists_bundles = method == "GET" && path.ends_with("/bundles");
        if lists_bundles && self.crds_installed.load(Ordering::SeqCst) {
            let list = json!({"apiVersion": "capgo-server.io/v1alpha1", "kind": "BundleList",
                              "metadata": {"resourceVersion": "1"}, "items": []});
            return (StatusCode::OK, list);
        }
        if method != "GET" {
            self.writes
                .lock()
                .unwrap()
                .push((method.to_string(), path.to_string(), body.clone()));
        }
        if path.contains("/events") {
            return (StatusCode::CREATED, body);
        }
        let (object_path, is_status) = match path.strip_suffix("/status") {
            Some(object) => (object.to_string(), true),
            None => (path.to_string(), false),
        };
        let mut objects = self.objects.lock().unwrap();
        let Some(object) = objects.get_mut(&object_path) else {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": format!("{path} not found"), "reason": "NotFound", "code": 404});
            return (StatusCode::NOT_FOUND, status);
        };
        match (method, is_status) {
            ("GET", _) => {}
            ("PATCH", true) => object["status"] = body["status"].clone(),
            ("PATCH", false) => {
                // The finalizer's JSON patch: apply its adds and removes on metadata.finalizers.
                for op in body.as_array().cloned().unwrap_or_default() {
                    match op["op"].as_str() {
                        Some("remove") => object["metadata"]["finalizers"] = json!([]),
                        Some("add") => {
                            object["metadata"]["finalizers"] = json!([op["value"].clone()])
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        (StatusCode::OK, object.clone())
    }
}

/// Sources for most tests: the zips are served on loopback, which only the opt-in allows.
fn loopback_sources() -> SourceFetcher {
    SourceFetcher::new(SourcePolicy {
        allow_private: true,
        ..Default::default()
    })
}

struct Harness {
    api: Arc<FakeApi>,
    /// The catalog's blob store, for objects put into the "bucket" by hand.
    blobs: Arc<FilesystemBlobStore>,
    store: Arc<CountingStore>,
    ctx: Arc<Context>,
    catalog: Arc<Catalog>,
    zips: String,
    _data: tempfile::TempDir,
}

impl Harness {
    async fn new() -> Harness {
        Harness::with_sources(loopback_sources()).await
    }

    async fn with_sources(sources: SourceFetcher) -> Harness {
        common::install_crypto_provider();
        let data = tempfile::tempdir().unwrap();
        let store = Arc::new(CountingStore {
            inner: SqliteMetadataStore::in_memory().unwrap(),
            writes: AtomicUsize::new(0),
        });
        // The local server below also serves the blob folder, so download URLs resolve.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let zips = format!("http://{}", listener.local_addr().unwrap());
        let blobs = Arc::new(FilesystemBlobStore::open(data.path().join("blobs"), &zips).unwrap());
        let catalog = Arc::new(Catalog::new(
            store.clone(),
            blobs.clone(),
            CatalogSettings {
                cache_duration: std::time::Duration::from_secs(600),
                staging: Staging::new(data.path().join("staging")).unwrap(),
                max_bundle_size: 64 << 20,
                import_prefix: "imports/".into(),
            },
        ));

        let api = Arc::new(FakeApi::default());
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = api.clone();
        tokio::spawn(async move {
            while let Some((request, reply)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_string();
                let bytes = request.into_body().collect().await.unwrap().to_bytes();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                let (status, answer) = fake.handle(&method, &path, body);
                reply.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = kube::Client::new(service, NS);
        let ctx = Arc::new(Context::new(
            client,
            catalog.clone(),
            "test-replica",
            sources,
        ));

        // Zips served over HTTP, as a Bundle's source.url.
        let app = axum::Router::new().route(
            "/{name}",
            axum::routing::get(
                |axum::extract::Path(name): axum::extract::Path<String>| async move {
                    match name.as_str() {
                        "web-1.0.0.zip" => (StatusCode::OK, common::web_bundle("1.0.0")),
                        "web-1.0.1.zip" => (StatusCode::OK, common::web_bundle("1.0.1")),
                        _ => (StatusCode::NOT_FOUND, Vec::new()),
                    }
                },
            ),
        );
        let blob_dir = data.path().join("blobs");
        let app = app.nest_service("/files", tower_http::services::ServeDir::new(blob_dir));
        tokio::spawn(async move { axum::serve(listener, app.into_make_service()).await });
        Harness {
            api,
            blobs,
            store,
            ctx,
            catalog,
            zips,
            _data: data,
        }
    }

    fn bundle(&self, name: &str, version: &str, file: &str, sha256: Option<String>) -> Value {
        json!({
            "apiVersion": "capgo-server.io/v1alpha1", "kind": "Bundle",
            "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": format!("uid-{name}"),
                         "finalizers": ["capgo-server.io/cleanup"]},
            "spec": {"appId": common::APP_ID, "versionName": version,
                     "source": {"url": format!("{}/{file}", self.zips)}, "sha256": sha256},
        })
    }

    fn release(&self, name: &str, builtin: &str, channels: Value) -> Value {
        json!({
            "apiVersion": "capgo-server.io/v1alpha1", "kind": "Release",
            "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": format!("uid-{name}"),
                         "finalizers": ["capgo-server.io/cleanup"]},
            "spec": {"platform": "android", "appId": common::APP_ID, "versionName": "1.0.0",
                     "versionCode": "10", "builtinBundle": builtin, "channels": channels},
        })
    }

    async fn reconcile_bundle(&self, name: &str) -> Result<(), String> {
        let object: Bundle = serde_json::from_value(self.api.get("bundles", name)).unwrap();
        bundles::reconcile(Arc::new(object), self.ctx.clone())
            .await
            .map(|_| ())
            .map_err(|e| capgo_server::error::Chain(&e).to_string())
    }

    fn channel(&self, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "capgo-server.io/v1alpha1", "kind": "Channel",
            "metadata": {"name": name, "namespace": NS, "generation": 1, "uid": format!("uid-{name}"),
                         "finalizers": ["capgo-server.io/cleanup"]},
            "spec": spec,
        })
    }

    async fn reconcile_channel(&self, name: &str) -> Result<(), String> {
        let object: ChannelResource =
            serde_json::from_value(self.api.get("channels", name)).unwrap();
        channels::reconcile(Arc::new(object), self.ctx.clone())
            .await
            .map(|_| ())
            .map_err(|e| capgo_server::error::Chain(&e).to_string())
    }

    /// The settings stored for a channel of the test app (`None`: the defaults).
    async fn stored_settings(&self, channel: &str) -> Option<ChannelSettings> {
        self.catalog
            .list_channels(Some(common::APP_ID))
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.settings.channel.as_str() == channel && c.configured)
            .map(|c| c.settings)
    }

    /// Device id → (channel, who put it there) for the test app.
    async fn overrides(&self) -> BTreeMap<String, (String, String)> {
        self.catalog
            .device_overrides(common::APP_ID)
            .await
            .unwrap()
            .into_iter()
            .map(|o| (o.device_id, (o.channel.to_string(), o.source.to_stored())))
            .collect()
    }

    async fn reconcile_release(&self, name: &str) -> Result<(), String> {
        let object: Release = serde_json::from_value(self.api.get("releases", name)).unwrap();
        releases::reconcile(Arc::new(object), self.ctx.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn condition(&self, kind: &str, name: &str, type_: &str) -> Value {
        let object = self.api.get(kind, name);
        object["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap()
    }

    fn events(&self) -> Vec<Value> {
        self.api
            .writes()
            .into_iter()
            .filter(|(_, path, _)| path.contains("/events"))
            .map(|(_, _, body)| body)
            .collect()
    }

    fn mark_deleted(&self, kind: &str, name: &str) {
        let mut object = self.api.get(kind, name);
        object["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
        self.api.put(kind, object);
    }
}

#[tokio::test]
async fn bundles_and_releases_become_ready_and_stay_unwritten_when_unchanged() {
    let h = Harness::new().await;
    h.api.put(
        "bundles",
        h.bundle("web-1-0-0", "1.0.0", "web-1.0.0.zip", None),
    );
    h.api.put(
        "bundles",
        h.bundle(
            "web-1-0-1",
            "1.0.1",
            "web-1.0.1.zip",
            Some(common::sha256_hex(&common::web_bundle("1.0.1"))),
        ),
    );
    h.reconcile_bundle("web-1-0-0").await.unwrap();
    h.reconcile_bundle("web-1-0-1").await.unwrap();
    assert_eq!(
        h.condition("bundles", "web-1-0-1", "Ready")["status"],
        "True"
    );
    assert_eq!(
        h.condition("bundles", "web-1-0-1", "Ready")["observedGeneration"],
        1
    );
    let status = h.api.get("bundles", "web-1-0-1")["status"].clone();
    assert_eq!(
        status["checksum"],
        common::sha256_hex(&common::web_bundle("1.0.1"))
    );
    let record = h
        .catalog
        .bundle(status["bundleId"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(record.owner.unwrap().to_string(), "Bundle apps/web-1-0-1");
    // A resource's bundle gets its manifest as an upload's does.
    let manifest = h.catalog.manifest_of(&record.id).await.unwrap().unwrap();
    let paths: Vec<&str> = manifest.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["assets/app.js", "index.html"]);

    h.api.put(
        "releases",
        h.release(
            "shop",
            "web-1-0-0",
            json!({"production": "web-1-0-1", "beta": "web-1-0-0"}),
        ),
    );
    h.reconcile_release("shop").await.unwrap();
    assert_eq!(h.condition("releases", "shop", "Ready")["status"], "True");
    let status = h.api.get("releases", "shop")["status"].clone();
    assert_eq!(status["serving"], "beta=1.0.0 production=1.0.1");
    let record = h
        .catalog
        .release(status["releaseId"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(record.owner.unwrap().to_string(), "Release apps/shop");

    // Again, with the status the API now holds: nothing is written anywhere.
    let (store_writes, api_writes) = (h.store.wrote(), h.api.writes().len());
    for _ in 0..3 {
        h.reconcile_bundle("web-1-0-0").await.unwrap();
        h.reconcile_bundle("web-1-0-1").await.unwrap();
        h.reconcile_release("shop").await.unwrap();
    }
    assert_eq!(
        h.store.wrote(),
        store_writes,
        "no store writes for unchanged resources"
    );
    assert_eq!(
        h.api.writes().len(),
        api_writes,
        "no API writes for unchanged resources"
    );

    // A promote in Git: one store write, one status write.
    let mut changed = h.api.get("releases", "shop");
    changed["spec"]["channels"]["beta"] = json!("web-1-0-1");
    changed["metadata"]["generation"] = json!(2);
    h.api.put("releases", changed);
    h.reconcile_release("shop").await.unwrap();
    assert_eq!(h.store.wrote(), store_writes + 1);
    assert_eq!(
        h.condition("releases", "shop", "Ready")["observedGeneration"],
        2
    );
}

#[tokio::test]
async fn spec_errors_stall_with_a_message_and_an_event() {
    let h = Harness::new().await;
    h.api.put(
        "bundles",
        h.bundle("bad-sum", "2.0.0", "web-1.0.0.zip", Some("0".repeat(64))),
    );
    h.api
        .put("bundles", h.bundle("gone", "2.0.1", "missing.zip", None));
    h.reconcile_bundle("bad-sum").await.unwrap();
    h.reconcile_bundle("gone").await.unwrap();
    let stalled = h.condition("bundles", "bad-sum", "Stalled");
    assert_eq!(
        (stalled["status"].as_str(), stalled["reason"].as_str()),
        (Some("True"), Some("ChecksumMismatch"))
    );
    assert!(
        stalled["message"].as_str().unwrap().contains("spec.sha256"),
        "{stalled}"
    );
    assert_eq!(
        h.condition("bundles", "gone", "Stalled")["reason"],
        "SourceNotFound"
    );
    assert_eq!(h.condition("bundles", "gone", "Ready")["status"], "False");
    assert!(
        h.catalog.list_bundles().await.unwrap().is_empty(),
        "nothing stored"
    );

    h.api
        .put("releases", h.release("shop", "no-such-bundle", json!({})));
    h.reconcile_release("shop").await.unwrap();
    let stalled = h.condition("releases", "shop", "Stalled");
    assert_eq!(stalled["reason"], "BundleNotFound");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("no-such-bundle"),
        "{stalled}"
    );
    let reasons: Vec<String> = h
        .events()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    for reason in ["ChecksumMismatch", "SourceNotFound", "BundleNotFound"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "an Event for {reason}: {reasons:?}"
        );
    }
}

#[tokio::test]
async fn deleting_a_used_bundle_is_held_then_finalizers_clean_up() {
    let h = Harness::new().await;
    h.api.put(
        "bundles",
        h.bundle("web-1-0-0", "1.0.0", "web-1.0.0.zip", None),
    );
    h.reconcile_bundle("web-1-0-0").await.unwrap();
    h.api
        .put("releases", h.release("shop", "web-1-0-0", json!({})));
    h.reconcile_release("shop").await.unwrap();

    h.mark_deleted("bundles", "web-1-0-0");
    let held = h.reconcile_bundle("web-1-0-0").await;
    assert!(
        held.is_err(),
        "deletion is held while a release uses the bundle"
    );
    let blocked = h.condition("bundles", "web-1-0-0", "Stalled");
    assert_eq!(blocked["reason"], "DeletionBlocked");
    assert!(
        blocked["message"]
            .as_str()
            .unwrap()
            .contains("android com.example.app 1.0.0 (10)"),
        "names the release: {blocked}"
    );
    assert!(h.events().iter().any(|e| e["reason"] == "DeletionBlocked"));
    assert_eq!(
        h.api.get("bundles", "web-1-0-0")["metadata"]["finalizers"],
        json!(["capgo-server.io/cleanup"])
    );
    assert_eq!(h.catalog.list_bundles().await.unwrap().len(), 1);

    h.mark_deleted("releases", "shop");
    h.reconcile_release("shop").await.unwrap();
    assert!(
        h.catalog.list_releases().await.unwrap().is_empty(),
        "release record removed"
    );
    assert_eq!(
        h.api.get("releases", "shop")["metadata"]["finalizers"],
        json!([]),
        "finalizer removed"
    );

    h.reconcile_bundle("web-1-0-0").await.unwrap();
    assert!(
        h.catalog.list_bundles().await.unwrap().is_empty(),
        "bundle record removed"
    );
    assert!(
        common::list_files(&h._data.path().join("blobs/bundles")).is_empty(),
        "stored zip removed (its files go with the orphan sweep)"
    );
    assert_eq!(
        h.api.get("bundles", "web-1-0-0")["metadata"]["finalizers"],
        json!([])
    );

    // Cleanup succeeds when the record is already gone.
    h.api.put(
        "bundles",
        h.bundle("never-stored", "9.9.9", "missing.zip", None),
    );
    h.mark_deleted("bundles", "never-stored");
    h.reconcile_bundle("never-stored").await.unwrap();
    assert_eq!(
        h.api.get("bundles", "never-stored")["metadata"]["finalizers"],
        json!([])
    );
}

#[tokio::test]
async fn a_bundle_can_come_from_an_object_already_in_the_bucket() {
    let h = Harness::new().await;
    let staged = h._data.path().join("incoming.zip");
    std::fs::write(&staged, common::web_bundle("from the bucket")).unwrap();
    h.blobs
        .put_file("imports/web-3.0.0.zip", &staged)
        .await
        .unwrap();
    let mut bundle = h.bundle("from-bucket", "3.0.0", "unused", None);
    bundle["spec"]["source"] = json!({"bucketKey": "imports/web-3.0.0.zip"});
    h.api.put("bundles", bundle);
    h.reconcile_bundle("from-bucket").await.unwrap();
    assert_eq!(
        h.condition("bundles", "from-bucket", "Ready")["status"],
        "True"
    );
    let status = h.api.get("bundles", "from-bucket")["status"].clone();
    assert_eq!(
        status["checksum"],
        common::sha256_hex(&common::web_bundle("from the bucket"))
    );
    assert_ne!(
        status["storedKey"], "imports/web-3.0.0.zip",
        "stored as its own object"
    );

    // The server's own objects are not for a resource to copy: another app's bundle, say.
    let stored = status["storedKey"].as_str().unwrap().to_string();
    for (i, key) in [stored.as_str(), "imports/../bundles/x.zip", "other/web.zip"]
        .into_iter()
        .enumerate()
    {
        let name = format!("copy-{i}");
        let mut copy = h.bundle(&name, &format!("3.0.{}", i + 1), "unused", None);
        copy["spec"]["appId"] = json!("com.other.app");
        copy["spec"]["source"] = json!({ "bucketKey": key });
        h.api.put("bundles", copy);
        h.reconcile_bundle(&name).await.unwrap();
        let stalled = h.condition("bundles", &name, "Stalled");
        assert_eq!(stalled["reason"], "InvalidSpec", "{key}: {stalled}");
        assert!(
            stalled["message"]
                .as_str()
                .unwrap()
                .contains("BUNDLE_IMPORT_PREFIX"),
            "{stalled}"
        );
    }
    assert_eq!(h.catalog.list_bundles().await.unwrap().len(), 1);
}

/// Argo CD sync waves and cold clusters apply the CRDs after the server starts: the operator
/// keeps checking (with backoff) instead of giving up, and goes on once they are served.
#[tokio::test]
async fn without_the_crds_the_operator_waits_for_them() {
    let h = Harness::new().await;
    let settings = capgo_server::operator::OperatorSettings {
        namespaces: vec![NS.into()],
        lease_namespace: NS.into(),
        lease_name: "capgo-server-controller".into(),
        identity: "test-replica".into(),
    };
    let ctx = Context::new(
        h.ctx.client.clone(),
        h.catalog.clone(),
        "test-replica",
        SourceFetcher::new(SourcePolicy::default()),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let operator = tokio::spawn(capgo_server::operator::run(settings, ctx, shutdown.clone()));
    let bundle_lists = |api: &FakeApi| {
        api.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(method, path)| method == "GET" && path.ends_with("/bundles"))
            .count()
    };
    // The fake API answers 404 for the Bundle list, as an API server without the CRD does.
    wait_for(|| bundle_lists(&h.api) >= 2, "a second look for the CRDs").await;
    assert!(!operator.is_finished(), "still waiting, not given up");
    assert!(
        h.api.writes().is_empty(),
        "nothing written without the CRDs"
    );

    h.api.crds_installed.store(true, Ordering::SeqCst);
    // Past the CRD check, the next step is the controller lease.
    wait_for(
        || {
            h.api
                .requests
                .lock()
                .unwrap()
                .iter()
                .any(|(_, path)| path.contains("/leases"))
        },
        "the lease asked for once the CRDs are there",
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), operator)
        .await
        .expect("the operator stops on shutdown while waiting")
        .unwrap();
}

/// Polls `done` every 50 ms for up to 30 s.
async fn wait_for(done: impl Fn() -> bool, what: &str) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_release_resource_takes_over_an_api_release_only_when_it_adopts_it() {
    use capgo_server::catalog::NewRelease;

    let h = Harness::new().await;
    for (name, version) in [("web-1-0-0", "1.0.0"), ("web-1-0-1", "1.0.1")] {
        h.api.put(
            "bundles",
            h.bundle(name, version, &format!("web-{version}.zip"), None),
        );
        h.reconcile_bundle(name).await.unwrap();
    }
    let bundle_id = |name: &str| {
        h.api.get("bundles", name)["status"]["bundleId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Made by hand through the API, for the native build the resource below describes.
    let by_hand = h
        .catalog
        .create_release(NewRelease {
            platform: "android".into(),
            app_id: common::APP_ID.into(),
            version_name: "1.0.0".into(),
            version_code: "10".into(),
            builtin_bundle_id: bundle_id("web-1-0-0"),
        })
        .await
        .unwrap();

    h.api.put(
        "releases",
        h.release("shop", "web-1-0-0", json!({"production": "web-1-0-1"})),
    );
    h.reconcile_release("shop").await.unwrap();
    let stalled = h.condition("releases", "shop", "Stalled");
    assert_eq!(stalled["status"], "True");
    assert_eq!(stalled["reason"], "AdoptionRequired");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("REST API") && message.contains("capgo-server.io/adopt=true"),
        "says how to adopt: {message}"
    );
    assert_eq!(
        h.catalog.release(by_hand.id.as_str()).await.unwrap(),
        by_hand,
        "refused: the record made by hand is untouched"
    );

    // Deleting the refused resource leaves the record made by hand alone.
    h.mark_deleted("releases", "shop");
    h.reconcile_release("shop").await.unwrap();
    assert_eq!(
        h.catalog.release(by_hand.id.as_str()).await.unwrap(),
        by_hand
    );

    // Adopted: the resource owns the record and converges it to its spec.
    let mut adopting = h.release("shop", "web-1-0-0", json!({"production": "web-1-0-1"}));
    adopting["metadata"]["annotations"] = json!({"capgo-server.io/adopt": "true"});
    h.api.put("releases", adopting);
    h.reconcile_release("shop").await.unwrap();
    assert_eq!(h.condition("releases", "shop", "Ready")["status"], "True");
    let adopted = h.catalog.release(by_hand.id.as_str()).await.unwrap();
    assert_eq!(
        adopted.owner.as_ref().map(|o| o.to_string()).as_deref(),
        Some("Release apps/shop")
    );
    assert_eq!(
        adopted.production_bundle().map(|id| id.to_string()),
        Some(bundle_id("web-1-0-1"))
    );
    assert_eq!(
        h.api.get("releases", "shop")["status"]["releaseId"],
        by_hand.id.as_str()
    );

    // Now the resource's own: deleting it removes the record.
    h.mark_deleted("releases", "shop");
    h.reconcile_release("shop").await.unwrap();
    assert!(h.catalog.list_releases().await.unwrap().is_empty());
}

#[tokio::test]
async fn rest_uploads_and_bundle_resources_share_one_checksum_rule() {
    let h = Harness::new().await;
    let zip = common::web_bundle("1.0.0");
    let crc = format!("{:08x}", crc32fast::hash(&zip));
    // A CRC32, as the seed's clients sent it, is accepted by both paths.
    h.api.put(
        "bundles",
        h.bundle("by-crc", "1.0.0", "web-1.0.0.zip", Some(crc)),
    );
    h.reconcile_bundle("by-crc").await.unwrap();
    assert_eq!(h.condition("bundles", "by-crc", "Ready")["status"], "True");
    // A mismatch reads the same as a REST upload's, naming the field it came in.
    h.api.put(
        "bundles",
        h.bundle("wrong", "1.0.1", "web-1.0.1.zip", Some("ab".repeat(32))),
    );
    h.reconcile_bundle("wrong").await.unwrap();
    let stalled = h.condition("bundles", "wrong", "Stalled");
    let expected = format!(
        "checksum mismatch: the bundle's SHA-256 is {}, spec.sha256 says {}",
        common::sha256_hex(&common::web_bundle("1.0.1")),
        "ab".repeat(32)
    );
    assert_eq!(stalled["message"], expected.as_str());
}

/// An internal service a Bundle must never reach: counts every request it gets.
async fn internal_service() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, "AWS_SECRET_ACCESS_KEY=internal-secret")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port.to_string(), hits)
}

fn with_encryption(mut bundle: Value) -> Value {
    bundle["spec"]["encryption"] = json!({
        "sessionKey": "aXY=:a2V5", "checksum": "f".repeat(512),
    });
    bundle
}

#[tokio::test]
async fn a_bundle_source_on_an_internal_address_is_refused_and_never_fetched() {
    // The default rules; `internal.test` stands for a name whose DNS answer is internal.
    let hosts = [(
        "internal.test".to_string(),
        vec!["127.0.0.1".parse().unwrap()],
    )];
    let h = Harness::with_sources(SourceFetcher::with_hosts(
        SourcePolicy::default(),
        hosts.into_iter().collect(),
    ))
    .await;
    let (port, hits) = internal_service().await;
    let urls = [
        format!("http://127.0.0.1:{port}/latest/meta-data"),
        format!("http://localhost:{port}/metrics"),
        format!("http://2130706433:{port}/x"),
        format!("http://0x7f000001:{port}/x"),
        format!("http://0177.0.0.1:{port}/x"),
        format!("http://127.1:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        format!("http://internal.test:{port}/x"),
    ];
    for (i, url) in urls.iter().enumerate() {
        let name = format!("internal-{i}");
        let mut bundle = with_encryption(h.bundle(&name, &format!("6.0.{i}"), "unused", None));
        bundle["spec"]["source"] = json!({ "url": url });
        h.api.put("bundles", bundle);
        h.reconcile_bundle(&name).await.unwrap();
        let stalled = h.condition("bundles", &name, "Stalled");
        assert_eq!(stalled["status"], "True", "{url}: {stalled}");
        assert_eq!(stalled["reason"], "SourceRefused", "{url}: {stalled}");
        let message = stalled["message"].as_str().unwrap();
        assert!(!message.contains("internal-secret"), "{url}: {message}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no request reached it");
    assert!(h.catalog.list_bundles().await.unwrap().is_empty());
}

#[tokio::test]
async fn every_redirect_of_a_source_is_checked_like_the_source() {
    // Loopback allowed (the test's own server), so the redirects' targets are what is refused.
    let hosts = [(
        "metadata.test".to_string(),
        vec!["169.254.169.254".parse().unwrap()],
    )];
    let h = Harness::with_sources(SourceFetcher::with_hosts(
        SourcePolicy {
            allow_private: true,
            ..Default::default()
        },
        hosts.into_iter().collect(),
    ))
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let zip_url = format!("{}/web-1.0.0.zip", h.zips);
    let app = axum::Router::new()
        .route(
            "/to/{target}",
            axum::routing::get(
                move |axum::extract::Path(target): axum::extract::Path<String>| {
                    let zip_url = zip_url.clone();
                    async move {
                        let location = match target.as_str() {
                            "metadata" => "http://169.254.169.254/latest/meta-data/".to_string(),
                            "decimal" => "http://2852039166/latest/meta-data/".to_string(),
                            "mapped" => "http://[::ffff:169.254.169.254]/".to_string(),
                            "ec2-v6" => "http://[fd00:ec2::254]/".to_string(),
                            "by-name" => "http://metadata.test/latest/meta-data/".to_string(),
                            "file" => "file:///etc/passwd".to_string(),
                            _ => zip_url,
                        };
                        (StatusCode::FOUND, [("location", location)])
                    }
                },
            ),
        )
        .route(
            "/loop/{n}",
            axum::routing::get(
                |axum::extract::Path(n): axum::extract::Path<u32>| async move {
                    (
                        StatusCode::FOUND,
                        [("location", format!("/loop/{}", n + 1))],
                    )
                },
            ),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cases = [
        ("metadata", "a cloud metadata address"),
        ("decimal", "a cloud metadata address"),
        ("mapped", "a cloud metadata address"),
        ("ec2-v6", "a cloud metadata address"),
        ("by-name", "a cloud metadata address"),
        ("file", "only http and https redirects"),
    ];
    for (i, (target, needle)) in cases.iter().enumerate() {
        let name = format!("redirect-{target}");
        let mut bundle = with_encryption(h.bundle(&name, &format!("7.0.{i}"), "unused", None));
        bundle["spec"]["source"] = json!({ "url": format!("{base}/to/{target}") });
        h.api.put("bundles", bundle);
        h.reconcile_bundle(&name).await.unwrap();
        let stalled = h.condition("bundles", &name, "Stalled");
        assert_eq!(stalled["reason"], "SourceRefused", "{target}: {stalled}");
        let message = stalled["message"].as_str().unwrap();
        assert!(message.contains(needle), "{target}: {message}");
        assert!(
            !message.contains("169.254") && !message.contains("metadata.test"),
            "the redirect's target is not echoed: {message}"
        );
    }

    let mut looping = h.bundle("looping", "7.1.0", "unused", None);
    looping["spec"]["source"] = json!({ "url": format!("{base}/loop/0") });
    h.api.put("bundles", looping);
    h.reconcile_bundle("looping").await.unwrap();
    let stalled = h.condition("bundles", "looping", "Stalled");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("more than 5 redirects"),
        "{stalled}"
    );

    // A redirect to an acceptable place is followed.
    let mut fine = h.bundle("redirected", "7.2.0", "unused", None);
    fine["spec"]["source"] = json!({ "url": format!("{base}/to/zip") });
    h.api.put("bundles", fine);
    h.reconcile_bundle("redirected").await.unwrap();
    assert_eq!(
        h.condition("bundles", "redirected", "Ready")["status"],
        "True"
    );
    assert_eq!(h.catalog.list_bundles().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_allow_list_limits_sources_to_the_hosts_it_names() {
    let h = Harness::with_sources(SourceFetcher::new(SourcePolicy {
        allow_private: true,
        allowed_hosts: vec![capgo_server::domain::net_policy::HostPattern::parse(
            "cdn.example.com",
        )
        .unwrap()],
    }))
    .await;
    h.api.put(
        "bundles",
        h.bundle("unlisted", "8.0.0", "web-1.0.0.zip", None),
    );
    h.reconcile_bundle("unlisted").await.unwrap();
    let stalled = h.condition("bundles", "unlisted", "Stalled");
    assert_eq!(stalled["reason"], "SourceRefused");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("BUNDLE_SOURCE_ALLOWED_HOSTS"),
        "{stalled}"
    );
}

/// A Bundle of an encrypted zip the real Capgo CLI made (tests/fixtures/cli), imported from the
/// bucket, with the encryption block as `bundle encrypt` printed it.
async fn encrypted_bundle(
    h: &Harness,
    name: &str,
    version: &str,
    zip: &[u8],
    run: &str,
    checksum_of: &str,
) -> Value {
    let fixtures: Value =
        serde_json::from_str(include_str!("fixtures/cli/encryption.json")).unwrap();
    let staged = h._data.path().join(format!("{name}.zip"));
    std::fs::write(&staged, zip).unwrap();
    let key = format!("imports/{name}.zip");
    h.blobs.put_file(&key, &staged).await.unwrap();
    let mut bundle = h.bundle(name, version, "unused", None);
    bundle["spec"]["appId"] = json!("com.example.fixture");
    bundle["spec"]["source"] = json!({ "bucketKey": key });
    bundle["spec"]["encryption"] = json!({
        "sessionKey": fixtures[run]["session_key"],
        "checksum": fixtures[checksum_of]["checksum"],
        "keyId": fixtures["key_id"],
    });
    bundle
}

#[tokio::test]
async fn encrypted_bundles_are_checked_with_the_apps_registered_key() {
    const V3_ZIP: &[u8] = include_bytes!("fixtures/cli/bundle.zip_encrypted.zip");
    let h = Harness::new().await;

    // No key registered: stored as sent, and the Ready message says it was not checked.
    let unchecked =
        encrypted_bundle(&h, "unchecked", "1.0.0", b"arbitrary bytes", "v3", "v3").await;
    h.api.put("bundles", unchecked);
    h.reconcile_bundle("unchecked").await.unwrap();
    let ready = h.condition("bundles", "unchecked", "Ready");
    assert_eq!(ready["status"], "True", "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("without verification"),
        "{ready}"
    );

    h.catalog
        .register_app_key(
            "com.example.fixture",
            include_str!("fixtures/cli/public_key.pem"),
            "test",
        )
        .await
        .unwrap();
    // The registry changed what the resource reports, not what was stored.
    h.reconcile_bundle("unchecked").await.unwrap();
    let ready = h.condition("bundles", "unchecked", "Ready");
    assert!(
        !ready["message"].as_str().unwrap().contains("verification"),
        "{ready}"
    );

    // The CLI's bundle checks out.
    let good = encrypted_bundle(&h, "good", "1.0.1", V3_ZIP, "v3", "v3").await;
    h.api.put("bundles", good);
    h.reconcile_bundle("good").await.unwrap();
    let ready = h.condition("bundles", "good", "Ready");
    assert_eq!(ready["status"], "True", "{ready}");

    // Tampered bytes, and a checksum of another zip: Stalled, nothing stored.
    let mut tampered_zip = V3_ZIP.to_vec();
    tampered_zip[V3_ZIP.len() / 2] ^= 0x01;
    let cases = [
        (
            encrypted_bundle(&h, "tampered", "1.0.2", &tampered_zip, "v3", "v3").await,
            "InvalidSpec",
            "not a valid bundle",
        ),
        (
            encrypted_bundle(&h, "wrong-checksum", "1.0.3", V3_ZIP, "v3", "not_a_bundle").await,
            "ChecksumMismatch",
            "checksum mismatch",
        ),
    ];
    for (bundle, reason, needle) in cases {
        let name = bundle["metadata"]["name"].as_str().unwrap().to_string();
        h.api.put("bundles", bundle);
        h.reconcile_bundle(&name).await.unwrap();
        let stalled = h.condition("bundles", &name, "Stalled");
        assert_eq!(stalled["reason"], reason, "{name}: {stalled}");
        assert!(
            stalled["message"].as_str().unwrap().contains(needle),
            "{name}: {stalled}"
        );
    }
    // Only the two that checked out (or could not be checked) were stored.
    assert_eq!(h.catalog.list_bundles().await.unwrap().len(), 2);
    for version in ["1.0.0", "1.0.1"] {
        let stored = h
            .catalog
            .bundle_by_version("com.example.fixture", version)
            .await;
        assert!(stored.unwrap().is_some(), "{version}");
    }
}

/// A Release of the test app whose `beta` channel serves 1.0.0, so the app and its channel
/// exist for the REST calls below.
async fn app_with_a_beta_channel(h: &Harness) {
    h.api.put(
        "bundles",
        h.bundle("web-1-0-0", "1.0.0", "web-1.0.0.zip", None),
    );
    h.reconcile_bundle("web-1-0-0").await.unwrap();
    h.api.put(
        "releases",
        h.release("shop", "web-1-0-0", json!({"beta": "web-1-0-0"})),
    );
    h.reconcile_release("shop").await.unwrap();
}

fn owned_by_the_resource(result: Result<impl std::fmt::Debug, CatalogError>, what: &str) {
    match result {
        Err(CatalogError::Owned {
            message,
            adoptable: false,
        }) => assert!(
            message.contains("Channel apps/shop-beta"),
            "{what}: names the resource: {message}"
        ),
        other => panic!("{what}: refused as managed by the resource, got {other:?}"),
    }
}

#[tokio::test]
async fn a_channel_resource_sets_settings_and_devices_and_gives_them_back() {
    let h = Harness::new().await;
    app_with_a_beta_channel(&h).await;
    let owner = OverrideSource::Resource(ResourceRef::new("Channel", NS, "shop-beta")).to_stored();
    h.api.put(
        "channels",
        h.channel(
            "shop-beta",
            json!({"appId": common::APP_ID, "channel": "beta", "allowAndroid": false,
                   "updatePolicy": "minor", "devices": ["QA-Phone-1", "qa-phone-2", "qa-phone-1"]}),
        ),
    );
    h.reconcile_channel("shop-beta").await.unwrap();
    assert_eq!(
        h.condition("channels", "shop-beta", "Ready")["status"],
        "True"
    );
    let status = h.api.get("channels", "shop-beta")["status"].clone();
    assert_eq!(status["devices"], 2, "{status}");
    assert_eq!(status["observedGeneration"], 1, "{status}");
    let settings = h.stored_settings("beta").await.expect("settings stored");
    assert!(!settings.rules.allow_android && settings.rules.allow_ios);
    assert_eq!(settings.rules.update_policy, UpdatePolicy::Minor);
    assert_eq!(
        settings.owner.map(|o| o.to_string()).as_deref(),
        Some("Channel apps/shop-beta")
    );
    assert_eq!(
        h.overrides().await,
        BTreeMap::from([
            (
                "qa-phone-1".to_string(),
                ("beta".to_string(), owner.clone())
            ),
            (
                "qa-phone-2".to_string(),
                ("beta".to_string(), owner.clone())
            ),
        ])
    );

    // Again, with the status the API now holds: nothing is written anywhere.
    let (store_writes, api_writes) = (h.store.wrote(), h.api.writes().len());
    for _ in 0..3 {
        h.reconcile_channel("shop-beta").await.unwrap();
    }
    assert_eq!(h.store.wrote(), store_writes, "no store writes");
    assert_eq!(h.api.writes().len(), api_writes, "no API writes");

    // People change it through its resource only; nothing changed.
    let allow_android = ChannelRulesChange {
        allow_android: Some(true),
        ..Default::default()
    };
    owned_by_the_resource(
        h.catalog
            .configure_channel(common::APP_ID, "beta", allow_android, &Actor::Api)
            .await,
        "settings",
    );
    owned_by_the_resource(
        h.catalog
            .force_devices(common::APP_ID, &["QA-PHONE-1".into()], "production")
            .await,
        "forcing a managed device elsewhere",
    );
    owned_by_the_resource(
        h.catalog
            .release_devices(common::APP_ID, &["qa-phone-2".into()])
            .await,
        "releasing a managed device",
    );
    assert_eq!(h.store.wrote(), store_writes, "refusals write nothing");

    // A device list edited in Git: exactly the new list, one status write.
    let mut edited = h.api.get("channels", "shop-beta");
    edited["spec"]["devices"] = json!(["qa-phone-2", "qa-phone-3"]);
    edited["metadata"]["generation"] = json!(2);
    h.api.put("channels", edited);
    h.reconcile_channel("shop-beta").await.unwrap();
    let devices: Vec<String> = h.overrides().await.into_keys().collect();
    assert_eq!(devices, ["qa-phone-2", "qa-phone-3"]);
    let status = h.api.get("channels", "shop-beta")["status"].clone();
    assert_eq!(
        (
            status["devices"].clone(),
            status["observedGeneration"].clone()
        ),
        (json!(2), json!(2)),
        "{status}"
    );

    // Deleted: the settings go back to the defaults and the devices are free again.
    h.mark_deleted("channels", "shop-beta");
    h.reconcile_channel("shop-beta").await.unwrap();
    assert_eq!(h.stored_settings("beta").await, None);
    assert!(h.overrides().await.is_empty());
    assert_eq!(
        h.api.get("channels", "shop-beta")["metadata"]["finalizers"],
        json!([])
    );
    h.catalog
        .force_devices(common::APP_ID, &["qa-phone-2".into()], "beta")
        .await
        .expect("people may place a released device");
}

#[tokio::test]
async fn a_channel_resource_refuses_what_it_does_not_own_and_what_cannot_work() {
    let h = Harness::new().await;
    app_with_a_beta_channel(&h).await;
    let beta = |name: &str| {
        h.channel(
            name,
            json!({"appId": common::APP_ID, "channel": "beta", "allowIos": false}),
        )
    };
    // Configured by hand first: the resource says how to adopt, and changes nothing.
    let by_hand = ChannelRulesChange {
        allow_electron: Some(false),
        ..Default::default()
    };
    h.catalog
        .configure_channel(common::APP_ID, "beta", by_hand, &Actor::Api)
        .await
        .unwrap();
    h.api.put("channels", beta("shop-beta"));
    h.reconcile_channel("shop-beta").await.unwrap();
    let stalled = h.condition("channels", "shop-beta", "Stalled");
    assert_eq!(stalled["reason"], "AdoptionRequired", "{stalled}");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("capgo-server.io/adopt=true"),
        "{stalled}"
    );
    let settings = h.stored_settings("beta").await.unwrap();
    assert!(settings.rules.allow_ios && !settings.rules.allow_electron);
    assert_eq!(settings.owner, None);

    // Adopted: the resource's settings, all of them (what it leaves out is the default).
    let mut adopting = beta("shop-beta");
    adopting["metadata"]["annotations"] = json!({"capgo-server.io/adopt": "true"});
    h.api.put("channels", adopting);
    h.reconcile_channel("shop-beta").await.unwrap();
    assert_eq!(
        h.condition("channels", "shop-beta", "Ready")["status"],
        "True"
    );
    let settings = h.stored_settings("beta").await.unwrap();
    assert!(!settings.rules.allow_ios && settings.rules.allow_electron);

    // A second resource for the same channel is refused, naming the first; deleting it
    // leaves the first one's settings alone.
    h.api.put("channels", beta("other-beta"));
    h.reconcile_channel("other-beta").await.unwrap();
    let stalled = h.condition("channels", "other-beta", "Stalled");
    assert_eq!(stalled["reason"], "ManagedElsewhere", "{stalled}");
    assert!(
        stalled["message"]
            .as_str()
            .unwrap()
            .contains("Channel apps/shop-beta"),
        "{stalled}"
    );
    h.mark_deleted("channels", "other-beta");
    h.reconcile_channel("other-beta").await.unwrap();
    assert!(h.stored_settings("beta").await.is_some());

    // A device another resource forces is refused the same way, before anything is written.
    let mut with_device = h.api.get("channels", "shop-beta");
    with_device["spec"]["devices"] = json!(["qa-phone-1"]);
    h.api.put("channels", with_device);
    h.reconcile_channel("shop-beta").await.unwrap();
    h.api.put(
        "channels",
        h.channel(
            "shop-alpha",
            json!({"appId": common::APP_ID, "channel": "alpha", "devices": ["QA-Phone-1"]}),
        ),
    );
    h.reconcile_channel("shop-alpha").await.unwrap();
    let stalled = h.condition("channels", "shop-alpha", "Stalled");
    assert_eq!(stalled["reason"], "ManagedElsewhere", "{stalled}");
    let message = stalled["message"].as_str().unwrap();
    assert!(
        message.contains("device qa-phone-1") && message.contains("Channel apps/shop-beta"),
        "{message}"
    );
    assert_eq!(h.stored_settings("alpha").await, None);
    assert_eq!(
        h.overrides().await["qa-phone-1"].0,
        "beta",
        "still where its resource put it"
    );

    // Specs that slipped past the schema (an API server that skipped it): stalled with the
    // field, and their deletion still completes.
    for (name, spec, needle) in [
        (
            "bad-device",
            json!({"appId": common::APP_ID, "channel": "nightly", "devices": ["qa phone"]}),
            "spec.devices",
        ),
        (
            "bad-channel",
            json!({"appId": common::APP_ID, "channel": "builtin"}),
            "builtin",
        ),
    ] {
        h.api.put("channels", h.channel(name, spec));
        h.reconcile_channel(name).await.unwrap();
        let stalled = h.condition("channels", name, "Stalled");
        assert_eq!(stalled["reason"], "InvalidSpec", "{name}: {stalled}");
        assert!(
            stalled["message"].as_str().unwrap().contains(needle),
            "{name}: {stalled}"
        );
        h.mark_deleted("channels", name);
        h.reconcile_channel(name).await.unwrap();
        assert_eq!(
            h.api.get("channels", name)["metadata"]["finalizers"],
            json!([])
        );
    }
    assert_eq!(h.stored_settings("nightly").await, None, "nothing stored");
    let reasons: Vec<String> = h
        .events()
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .collect();
    for reason in ["AdoptionRequired", "ManagedElsewhere", "InvalidSpec"] {
        assert!(
            reasons.iter().any(|r| r == reason),
            "an Event for {reason}: {reasons:?}"
        );
    }
}

/// A Bundle's description, link and minimum native version follow its spec (its bytes and
/// names never change): one store write per change, none when unchanged, and a bad value in
/// the spec stalls the Bundle and changes nothing.
#[tokio::test]
async fn a_bundles_details_follow_its_spec() {
    let h = Harness::new().await;
    h.api.put(
        "bundles",
        h.bundle("web-1-0-0", "1.0.0", "web-1.0.0.zip", None),
    );
    h.reconcile_bundle("web-1-0-0").await.unwrap();
    let bundle_id = h.api.get("bundles", "web-1-0-0")["status"]["bundleId"]
        .as_str()
        .unwrap()
        .to_string();
    let writes = h.store.wrote();

    let mut edited = h.api.get("bundles", "web-1-0-0");
    edited["spec"]["description"] = json!("Faster checkout");
    edited["spec"]["minUpdateVersion"] = json!("1.2.0");
    edited["metadata"]["generation"] = json!(2);
    h.api.put("bundles", edited.clone());
    h.reconcile_bundle("web-1-0-0").await.unwrap();
    let record = h.catalog.bundle(&bundle_id).await.unwrap();
    assert_eq!(record.description, "Faster checkout");
    assert_eq!(record.min_update_version.as_deref(), Some("1.2.0"));
    assert_eq!(h.store.wrote(), writes + 1);
    h.reconcile_bundle("web-1-0-0").await.unwrap();
    assert_eq!(h.store.wrote(), writes + 1, "unchanged: no write");

    // A spec the schema lets through but the catalog refuses: Stalled, record unchanged.
    edited["spec"]["link"] = json!("http://");
    edited["metadata"]["generation"] = json!(3);
    h.api.put("bundles", edited);
    let _ = h.reconcile_bundle("web-1-0-0").await;
    let ready = h.condition("bundles", "web-1-0-0", "Ready");
    assert_eq!(ready["status"], "False", "{ready}");
    assert!(
        ready["message"].as_str().unwrap().contains("link"),
        "{ready}"
    );
    assert_eq!(h.catalog.bundle(&bundle_id).await.unwrap().link, None);
}
