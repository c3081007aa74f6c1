//! Decorators that time every store operation into
//! `capgo_store_operation_duration_seconds{store, operation, result}`: the one place store
//! latency is measured, whichever back end is configured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{
    AccessStore, AppKeyStore, BlobBytes, BlobInfo, BlobStore, CatalogStore, CatalogVersion,
    FleetStore, ManifestStore, MetadataStore, RolloutStore, SeenDevice, ServedRecords, StoreError,
    TargetingStore,
};
use crate::domain::access::{ApiToken, AuditCursor, AuditEntry};
use crate::domain::bundle::BundleDetails;
use crate::domain::channel::Channel;
use crate::domain::channel_policy::ChannelSettings;
use crate::domain::encryption::AppKey;
use crate::domain::fleet::{FleetCount, Span};
use crate::domain::manifest::ManifestEntry;
use crate::domain::rollout::{CanaryHealth, CanaryMark, Rollout};
use crate::domain::stats::StatsEvent;
use crate::domain::targeting::{DeviceOverride, OverrideSource, UnregisteredBuild};
use crate::domain::{Bundle, ChannelName, RecordId, Release, ReleaseKey, ResourceRef, UnixMillis};

async fn timed<T>(
    store: &'static str,
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.await;
    crate::metrics::global().store_operation(store, operation, result.is_ok(), started.elapsed());
    result
}

pub struct TimedMetadataStore(pub Arc<dyn MetadataStore>);
pub struct TimedBlobStore(pub Arc<dyn BlobStore>);

/// Implements `$trait` for `$wrapper` by forwarding each listed method to the wrapped store,
/// timed under its own name. (The whole impl is generated so `async_trait` sees the methods.)
macro_rules! timed_impl {
    (
        $trait:ident for $wrapper:ty, $store:literal:
        $( fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $out:ty; )*
        $( plain $plain:item )*
    ) => {
        #[async_trait]
        impl $trait for $wrapper {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$out, StoreError> {
                    timed($store, stringify!($name), self.0.$name($($arg),*)).await
                }
            )*
            $( $plain )*
        }
    };
}

timed_impl! { CatalogStore for TimedMetadataStore, "metadata":
        fn insert_bundle(&self, bundle: &Bundle) -> ();
        fn bundle(&self, id: &RecordId) -> Option<Bundle>;
        fn bundle_by_version(&self, app_id: &str, version_name: &str) -> Option<Bundle>;
        fn list_bundles(&self) -> Vec<Bundle>;
        fn update_bundle_details(&self, id: &RecordId, details: &BundleDetails) -> bool;
        fn delete_bundle(&self, id: &RecordId) -> bool;
        fn insert_release(&self, release: &Release) -> ();
        fn release(&self, id: &RecordId) -> Option<Release>;
        fn release_by_key(&self, key: &ReleaseKey) -> Option<Release>;
        fn list_releases(&self) -> Vec<Release>;
        fn releases_using_bundle(&self, bundle_id: &RecordId) -> Vec<Release>;
        fn set_release_date(&self, id: &RecordId, release_date: Option<UnixMillis>, updated_at: UnixMillis) -> bool;
        fn set_channel_bundle(&self, id: &RecordId, channel: &ChannelName, bundle_id: &RecordId, updated_at: UnixMillis) -> bool;
        fn replace_release_assignments(&self, id: &RecordId, builtin_bundle_id: &RecordId, channels: &BTreeMap<ChannelName, RecordId>, updated_at: UnixMillis) -> bool;
        fn delete_release(&self, id: &RecordId) -> bool;
        fn adopt_release(&self, id: &RecordId, owner: &ResourceRef) -> bool;
        fn adopt_bundle(&self, id: &RecordId, owner: &ResourceRef) -> bool;
        fn channels(&self, app_id: &str) -> Vec<Channel>;
        fn insert_stats(&self, events: &[StatsEvent]) -> ();
        fn bundle_blob_keys(&self) -> Vec<String>;
        fn catalog_version(&self) -> Option<CatalogVersion>;
        fn served_records(&self, key: &ReleaseKey, channel: &ChannelName) -> Option<ServedRecords>;
}

timed_impl! { AppKeyStore for TimedMetadataStore, "metadata":
        fn app_key(&self, app_id: &str) -> Option<AppKey>;
        fn put_app_key(&self, key: &AppKey) -> ();
        fn list_app_keys(&self) -> Vec<AppKey>;
        fn delete_app_key(&self, app_id: &str) -> bool;
}

timed_impl! { TargetingStore for TimedMetadataStore, "metadata":
        fn channel_settings(&self, app_id: Option<&str>) -> Vec<ChannelSettings>;
        fn put_channel_settings(&self, settings: &ChannelSettings) -> ();
        fn delete_channel_settings(&self, app_id: &str, channel: &ChannelName) -> bool;
        fn device_overrides(&self, app_id: &str) -> Vec<DeviceOverride>;
        fn put_device_overrides(&self, overrides: &[DeviceOverride]) -> ();
        fn put_device_choice(&self, choice: &DeviceOverride) -> bool;
        fn delete_device_overrides(&self, app_id: &str, device_ids: &[String], source: Option<&OverrideSource>) -> u64;
        fn replace_resource_overrides(&self, owner: &OverrideSource, overrides: &[DeviceOverride]) -> ();
        fn record_unregistered_builds(&self, sightings: &[UnregisteredBuild]) -> ();
        fn unregistered_builds(&self) -> Vec<UnregisteredBuild>;
        fn delete_unregistered_build(&self, key: &ReleaseKey) -> ();
        fn find_devices(&self, app_id: &str, id: &str, limit: usize) -> Vec<SeenDevice>;
}

timed_impl! { RolloutStore for TimedMetadataStore, "metadata":
        fn insert_rollout(&self, rollout: &Rollout) -> ();
        fn rollout(&self, release_id: &RecordId, channel: &ChannelName) -> Option<Rollout>;
        fn list_rollouts(&self, active_only: bool) -> Vec<Rollout>;
        fn update_rollout(&self, rollout: &Rollout) -> bool;
        fn complete_rollout(&self, rollout: &Rollout) -> bool;
        fn repair_completions(&self) -> usize;
        fn record_canary_marks(&self, marks: &[CanaryMark]) -> ();
        fn canary_health(&self, rollout_id: &RecordId, since: UnixMillis, crash_after_set: Duration) -> CanaryHealth;
        fn active_canary_health(&self, now: UnixMillis, crash_after_set: Duration) -> Vec<(RecordId, CanaryHealth)>;
        fn acquire_lease(&self, name: &str, holder: &str, ttl: Duration, now: UnixMillis) -> bool;
}

timed_impl! { ManifestStore for TimedMetadataStore, "metadata":
        fn insert_bundle_with_manifest(&self, bundle: &Bundle, manifest: &[ManifestEntry]) -> ();
        fn bundle_manifest(&self, bundle_id: &RecordId) -> Option<Vec<ManifestEntry>>;
        fn set_bundle_manifest(&self, bundle_id: &RecordId, manifest: &[ManifestEntry]) -> bool;
        fn file_object_in_use(&self, object_key: &str) -> bool;
        fn doomed_file_objects(&self) -> Vec<(String, UnixMillis)>;
        fn mark_file_objects_doomed(&self, object_keys: &[String], at: UnixMillis) -> ();
        fn unmark_file_objects(&self, object_keys: &[String]) -> ();
}

timed_impl! { FleetStore for TimedMetadataStore, "metadata":
        fn record_fleet_counts(&self, counts: &[FleetCount]) -> ();
        fn fleet_counts(&self, app_id: &str, since: UnixMillis) -> Vec<FleetCount>;
        fn delete_fleet_counts_before(&self, span: Span, before: UnixMillis) -> u64;
        fn delete_stats_before(&self, before: UnixMillis) -> u64;
}

timed_impl! { AccessStore for TimedMetadataStore, "metadata":
        fn insert_api_token(&self, token: &ApiToken) -> ();
        fn api_token_by_digest(&self, digest: &str) -> Option<ApiToken>;
        fn list_api_tokens(&self) -> Vec<ApiToken>;
        fn delete_api_token(&self, id: &RecordId) -> bool;
        fn insert_audit(&self, entry: &AuditEntry) -> ();
        fn audit_page(&self, before: Option<&AuditCursor>, limit: usize) -> Vec<AuditEntry>;
}

timed_impl! { BlobStore for TimedBlobStore, "blob":
        fn put_file(&self, key: &str, source: &Path) -> ();
        fn read(&self, key: &str) -> Option<BlobBytes>;
        fn delete(&self, key: &str) -> ();
        fn object_size(&self, key: &str) -> Option<u64>;
        fn list(&self) -> Vec<BlobInfo>;
        fn download_url(&self, key: &str) -> String;
        fn abort_stale_uploads(&self, min_age: Duration) -> usize;
        plain fn local_path(&self, key: &str) -> Option<PathBuf> {
            self.0.local_path(key)
        }
}
