//! Storage: metadata (bundles, releases, channels, stats) and blobs (bundle bytes).
//!
//! The catalog talks to these traits only. The embedded default is SQLite plus a folder;
//! MongoDB and S3 implement the same traits, and one contract suite (`tests/store_contract.rs`)
//! runs against every implementation.

pub mod fs_blobs;
pub mod mongo;
pub mod s3;
pub mod seed;
pub mod sqlite;
pub mod timed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

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
pub use crate::error::BoxError;

/// A stored object's bytes, as they are read.
pub type BlobBytes = BoxStream<'static, Result<Bytes, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with the same unique key exists.
    #[error("duplicate: {0}")]
    Duplicate(String),
    /// A reference rule refused the write: a record it names is missing (or being deleted),
    /// or the record being deleted is still referred to.
    #[error("reference conflict: {0}")]
    Reference(String),
    /// The store cannot be reached now; the same call may work later.
    #[error("{context}")]
    Unavailable {
        context: String,
        #[source]
        source: BoxError,
    },
    /// The store failed, or holds something it should not.
    #[error("{context}")]
    Internal {
        context: String,
        #[source]
        source: Option<BoxError>,
    },
}

impl StoreError {
    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> StoreError {
        StoreError::Unavailable {
            context: context.into(),
            source: source.into(),
        }
    }

    pub fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> StoreError {
        StoreError::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A failure with no underlying error: a record or setting the store cannot use.
    pub fn invalid(context: impl Into<String>) -> StoreError {
        StoreError::Internal {
            context: context.into(),
            source: None,
        }
    }
}

/// Everything the metadata back end stores: the catalog's records and the access records.
/// Each back end implements both halves; each service holds only the half it needs.
pub trait MetadataStore: CatalogStore + AccessStore {}

impl<T: CatalogStore + AccessStore> MetadataStore for T {}

/// Bundles, releases, channels and device stats: what the catalog reads and writes.
#[async_trait]
pub trait CatalogStore:
    AppKeyStore + TargetingStore + RolloutStore + ManifestStore + FleetStore + Send + Sync + 'static
{
    /// Fails with `Duplicate` when the app already has a bundle of that version name.
    async fn insert_bundle(&self, bundle: &Bundle) -> Result<(), StoreError>;
    async fn bundle(&self, id: &RecordId) -> Result<Option<Bundle>, StoreError>;
    async fn bundle_by_version(
        &self,
        app_id: &str,
        version_name: &str,
    ) -> Result<Option<Bundle>, StoreError>;
    /// Newest first.
    async fn list_bundles(&self) -> Result<Vec<Bundle>, StoreError>;
    /// Replaces a bundle's description, link and minimum native version; `false` when absent.
    async fn update_bundle_details(
        &self,
        id: &RecordId,
        details: &BundleDetails,
    ) -> Result<bool, StoreError>;
    /// Fails with `Reference` while a release refers to the bundle, or while a write that
    /// names it is under way (so a release never points at a deleted bundle, on every back
    /// end: see the MongoDB store for how without transactions). `false` when absent.
    async fn delete_bundle(&self, id: &RecordId) -> Result<bool, StoreError>;

    /// Fails with `Duplicate` when a release with the same key exists, and with `Reference`
    /// when a bundle it names does not exist (or is being deleted). Creates the app's default
    /// channel.
    async fn insert_release(&self, release: &Release) -> Result<(), StoreError>;
    async fn release(&self, id: &RecordId) -> Result<Option<Release>, StoreError>;
    async fn release_by_key(&self, key: &ReleaseKey) -> Result<Option<Release>, StoreError>;
    /// Newest first.
    async fn list_releases(&self) -> Result<Vec<Release>, StoreError>;
    async fn releases_using_bundle(&self, bundle_id: &RecordId)
        -> Result<Vec<Release>, StoreError>;
    /// `false` when the release does not exist.
    async fn set_release_date(
        &self,
        id: &RecordId,
        release_date: Option<UnixMillis>,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// Points `channel` of a release at a bundle, creating the app's channel if it is new, in
    /// one atomic write. `false` when the release does not exist; `Reference` when the bundle
    /// does not (or is being deleted).
    async fn set_channel_bundle(
        &self,
        id: &RecordId,
        channel: &ChannelName,
        bundle_id: &RecordId,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// Sets a release's builtin bundle and replaces all its channel assignments in one atomic
    /// write (how the operator converges a record to its resource). `false` when absent;
    /// `Reference` when a bundle it names does not exist (or is being deleted).
    async fn replace_release_assignments(
        &self,
        id: &RecordId,
        builtin_bundle_id: &RecordId,
        channels: &BTreeMap<ChannelName, RecordId>,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// `false` when absent.
    async fn delete_release(&self, id: &RecordId) -> Result<bool, StoreError>;
    /// Makes a Kubernetes resource the owner of a release nobody owns (adoption). `false`
    /// when the release is absent or already has an owner.
    async fn adopt_release(&self, id: &RecordId, owner: &ResourceRef) -> Result<bool, StoreError>;
    /// The same for a bundle.
    async fn adopt_bundle(&self, id: &RecordId, owner: &ResourceRef) -> Result<bool, StoreError>;

    /// The channels of an app, by numeric id.
    async fn channels(&self, app_id: &str) -> Result<Vec<Channel>, StoreError>;

    /// Stores a batch of device events (at least once: a failed batch may be partly stored,
    /// and plugins send it again).
    async fn insert_stats(&self, events: &[StatsEvent]) -> Result<(), StoreError>;
    /// Blob keys that bundle records refer to (for the orphan sweep).
    /// Every object key a record refers to: bundle zips and the file objects of manifests.
    async fn bundle_blob_keys(&self) -> Result<Vec<String>, StoreError>;

    /// What changes whenever another process changes what `/updates` answers; `None` for a
    /// store only this process writes (its own writes already clear the answer cache).
    async fn catalog_version(&self) -> Result<Option<CatalogVersion>, StoreError>;

    /// Everything an update check needs about one channel of a release (`None`: no such
    /// release), read when the answer cache misses. Read one record at a time here; a back end
    /// that can read them together overrides it (SQLite: one read transaction, so the records
    /// are also one consistent snapshot).
    async fn served_records(
        &self,
        key: &ReleaseKey,
        channel: &ChannelName,
    ) -> Result<Option<ServedRecords>, StoreError> {
        let Some(release) = self.release_by_key(key).await? else {
            return Ok(None);
        };
        let bundle = bundle_record(self, release.bundle_for(channel)).await?;
        let settings = self
            .channel_settings(Some(&key.app_id))
            .await?
            .into_iter()
            .find(|s| &s.channel == channel);
        let rollout = match self.rollout(&release.id, channel).await? {
            Some(rollout) if rollout.progress.phase.is_active() => {
                let canary = bundle_record(self, &rollout.canary_bundle_id).await?;
                Some(ServedRollout { rollout, canary })
            }
            _ => None,
        };
        Ok(Some(ServedRecords {
            release,
            bundle,
            settings,
            rollout,
        }))
    }
}

/// A bundle with its manifest, for the default [`CatalogStore::served_records`].
async fn bundle_record<S: CatalogStore + ?Sized>(
    store: &S,
    id: &RecordId,
) -> Result<Option<BundleRecord>, StoreError> {
    let Some(bundle) = store.bundle(id).await? else {
        return Ok(None);
    };
    let manifest = store.bundle_manifest(id).await?;
    Ok(Some(BundleRecord { bundle, manifest }))
}

/// What one channel of a release serves, as stored ([`CatalogStore::served_records`]).
#[derive(Debug, Clone)]
pub struct ServedRecords {
    pub release: Release,
    /// The bundle the channel serves (`None`: missing).
    pub bundle: Option<BundleRecord>,
    /// The channel's stored settings (`None`: the defaults).
    pub settings: Option<ChannelSettings>,
    /// The channel's rollout while it is active.
    pub rollout: Option<ServedRollout>,
}

#[derive(Debug, Clone)]
pub struct BundleRecord {
    pub bundle: Bundle,
    pub manifest: Option<Vec<ManifestEntry>>,
}

/// An active rollout and its canary bundle (`None`: missing).
#[derive(Debug, Clone)]
pub struct ServedRollout {
    pub rollout: Rollout,
    pub canary: Option<BundleRecord>,
}

/// The public keys apps' encrypted bundles are checked with (one per app); part of what the
/// catalog reads and writes.
#[async_trait]
pub trait AppKeyStore: Send + Sync + 'static {
    async fn app_key(&self, app_id: &str) -> Result<Option<AppKey>, StoreError>;
    /// Registers the key, replacing the app's previous one.
    async fn put_app_key(&self, key: &AppKey) -> Result<(), StoreError>;
    /// By app id.
    async fn list_app_keys(&self) -> Result<Vec<AppKey>, StoreError>;
    /// `false` when the app has none.
    async fn delete_app_key(&self, app_id: &str) -> Result<bool, StoreError>;
}

/// Channel settings, device overrides and the native builds devices run that have no release:
/// what decides which channel a device is on and what the channel lets it have. Part of what
/// the catalog reads and writes; every settings or override write that changes something moves
/// [`CatalogVersion::targeting_revision`] on stores other processes share (unregistered builds
/// change no answer and do not).
#[async_trait]
pub trait TargetingStore: Send + Sync + 'static {
    /// The settings stored for the channels of `app_id` (all apps when `None`), by app then
    /// channel. Channels nobody configured are not listed (they have the defaults).
    async fn channel_settings(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<ChannelSettings>, StoreError>;
    /// Stores a channel's settings, replacing earlier ones, and creates the app's channel (with
    /// its numeric id) if it is new.
    async fn put_channel_settings(&self, settings: &ChannelSettings) -> Result<(), StoreError>;
    /// Forgets a channel's settings (back to the defaults); `false` when none were stored.
    async fn delete_channel_settings(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, StoreError>;

    /// Every override of an app's devices, by device id.
    async fn device_overrides(&self, app_id: &str) -> Result<Vec<DeviceOverride>, StoreError>;
    /// Puts each device on its channel, replacing what it had: one record per (app, device).
    async fn put_device_overrides(&self, overrides: &[DeviceOverride]) -> Result<(), StoreError>;
    /// Remembers a device's own choice (source [`OverrideSource::Device`]) unless the device
    /// has a forced override, in one atomic write; `false` when a forced one is in the way.
    async fn put_device_choice(&self, choice: &DeviceOverride) -> Result<bool, StoreError>;
    /// Removes the overrides of these devices of an app — only those from `source` when given;
    /// how many.
    async fn delete_device_overrides(
        &self,
        app_id: &str,
        device_ids: &[String],
        source: Option<&OverrideSource>,
    ) -> Result<u64, StoreError>;
    /// Makes `owner`'s overrides exactly `overrides` (all from `owner`): its other devices are
    /// released, and these devices replace whatever override they had. One call per resource
    /// reconcile.
    async fn replace_resource_overrides(
        &self,
        owner: &OverrideSource,
        overrides: &[DeviceOverride],
    ) -> Result<(), StoreError>;

    /// Adds sightings of builds without a release: `checks` are added, `devices` keep the
    /// largest count, first and last seen widen. Keeps at most
    /// [`crate::domain::targeting::MAX_UNREGISTERED_BUILDS`] builds, dropping the ones seen
    /// longest ago.
    async fn record_unregistered_builds(
        &self,
        sightings: &[UnregisteredBuild],
    ) -> Result<(), StoreError>;
    /// Seen most recently first.
    async fn unregistered_builds(&self) -> Result<Vec<UnregisteredBuild>, StoreError>;
    /// Forgets a build (once it has a release); absent is not an error.
    async fn delete_unregistered_build(&self, key: &ReleaseKey) -> Result<(), StoreError>;

    /// Devices of an app that reported stats with this `device_id` or `custom_id` (exact, as
    /// stored: device ids lowercased), most recently seen first, at most `limit`.
    async fn find_devices(
        &self,
        app_id: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<SeenDevice>, StoreError>;
}

/// Staged rollouts, their devices' health records, and the lease that lets one process drive
/// them. Part of what the catalog reads and writes. Inserting a rollout and every write that
/// changes its phase or step moves [`CatalogVersion::rollout_revision`] on stores other
/// processes share (health updates change no answer and do not).
#[async_trait]
pub trait RolloutStore: Send + Sync + 'static {
    /// Starts a rollout. A finished rollout of the same release and channel is replaced, with
    /// its health records; `Duplicate` when an active one (progressing or paused) exists;
    /// `Reference` when the release does not exist.
    async fn insert_rollout(&self, rollout: &Rollout) -> Result<(), StoreError>;
    /// The rollout of a release's channel (active or the last finished one).
    async fn rollout(
        &self,
        release_id: &RecordId,
        channel: &ChannelName,
    ) -> Result<Option<Rollout>, StoreError>;
    /// Every stored rollout (active and the last finished one per release and channel), newest
    /// first; only active ones when `active_only`.
    async fn list_rollouts(&self, active_only: bool) -> Result<Vec<Rollout>, StoreError>;
    /// Replaces the rollout if its stored revision is `rollout.revision - 1`; `false` when
    /// another write came first (or it is gone). The revision is the only concurrency control:
    /// a step is applied once however many processes try.
    async fn update_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError>;
    /// [`RolloutStore::update_rollout`] to a finished rollout whose canary won, and points the
    /// channel at the canary: atomically where the store can. MongoDB writes the rollout first,
    /// marked, then the channel, then clears the mark; [`RolloutStore::repair_completions`]
    /// finishes a completion a crash interrupted.
    async fn complete_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError>;
    /// Finishes completions a crash interrupted (see above); how many. Nothing to do on stores
    /// that complete atomically.
    async fn repair_completions(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// Adds devices' signals to rollouts' health records (one record per rollout and device,
    /// merged: the latest time of each signal is kept). Marks of rollouts that no longer exist
    /// are dropped.
    async fn record_canary_marks(&self, marks: &[CanaryMark]) -> Result<(), StoreError>;
    /// A rollout's health since `since`: devices that were answered with the canary and
    /// installed it or failed since then; of them, those that failed, or crashed within
    /// `crash_after_set` after installing.
    async fn canary_health(
        &self,
        rollout_id: &RecordId,
        since: UnixMillis,
        crash_after_set: Duration,
    ) -> Result<CanaryHealth, StoreError>;
    /// [`RolloutStore::canary_health`] of every active rollout in one call, each since
    /// [`Rollout::health_since`] at `now`, by rollout id (rollouts without a record are left
    /// out: nothing reported). Stores that can group it in one query do.
    async fn active_canary_health(
        &self,
        now: UnixMillis,
        crash_after_set: Duration,
    ) -> Result<Vec<(RecordId, CanaryHealth)>, StoreError> {
        let mut health = Vec::new();
        for rollout in self.list_rollouts(true).await? {
            let since = rollout.health_since(now);
            let counted = self
                .canary_health(&rollout.id, since, crash_after_set)
                .await?;
            health.push((rollout.id, counted));
        }
        Ok(health)
    }
    /// Takes or renews the named lease for `holder` until `now + ttl`; `false` while another
    /// holder's lease runs.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<bool, StoreError>;
}

/// Bundle manifests (every file of a bundle and the object it is stored in) and the marks of
/// file objects the orphan sweep is about to delete. Several bundles share a file object, so
/// deleting a bundle never deletes objects: the sweep does, in two passes without
/// transactions (see [`crate::catalog`]'s `sweep_orphans`):
///
/// 1. a file object no manifest names is marked doomed (with the time);
/// 2. a grace period later, it is deleted if still no manifest names it, else unmarked.
///
/// An upload never reuses a doomed object (it writes a fresh copy under another key), so a
/// manifest written within the grace period after its objects were checked never names a
/// deleted object.
#[async_trait]
pub trait ManifestStore: Send + Sync + 'static {
    /// Inserts a bundle with its manifest in one atomic write; `Duplicate` as
    /// [`CatalogStore::insert_bundle`].
    async fn insert_bundle_with_manifest(
        &self,
        bundle: &Bundle,
        manifest: &[ManifestEntry],
    ) -> Result<(), StoreError>;
    /// The manifest of a bundle, by path; `None` when it has none (encrypted, too many files,
    /// or stored before manifests and not migrated yet) or does not exist.
    async fn bundle_manifest(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Option<Vec<ManifestEntry>>, StoreError>;
    /// Gives a stored bundle its manifest; `false` when the bundle is gone or already has one.
    async fn set_bundle_manifest(
        &self,
        bundle_id: &RecordId,
        manifest: &[ManifestEntry],
    ) -> Result<bool, StoreError>;
    /// True when some manifest names this object.
    async fn file_object_in_use(&self, object_key: &str) -> Result<bool, StoreError>;
    /// The file objects marked doomed, with when they were marked.
    async fn doomed_file_objects(&self) -> Result<Vec<(String, UnixMillis)>, StoreError>;
    /// Marks objects doomed at `at`; an object already marked keeps its first mark.
    async fn mark_file_objects_doomed(
        &self,
        object_keys: &[String],
        at: UnixMillis,
    ) -> Result<(), StoreError>;
    /// Removes the marks of these objects (deleted, or in use again).
    async fn unmark_file_objects(&self, object_keys: &[String]) -> Result<(), StoreError>;
}

/// The fleet overview's per-day and per-hour counts, and the retention of raw stats. Counts
/// from several processes for the same period and key merge (events add, device sketches
/// unite), so replicas flushing at once lose nothing.
#[async_trait]
pub trait FleetStore: Send + Sync + 'static {
    /// Merges each count into the stored one of its period and key.
    async fn record_fleet_counts(&self, counts: &[FleetCount]) -> Result<(), StoreError>;
    /// An app's counts (both spans) of periods starting at `since` or later.
    async fn fleet_counts(
        &self,
        app_id: &str,
        since: UnixMillis,
    ) -> Result<Vec<FleetCount>, StoreError>;
    /// Forgets the counts of `span` of periods that start before `before`; how many.
    async fn delete_fleet_counts_before(
        &self,
        span: Span,
        before: UnixMillis,
    ) -> Result<u64, StoreError>;
    /// Forgets raw stats events that occurred before `before`, in batches that never hold
    /// writers up for long; how many were removed.
    async fn delete_stats_before(&self, before: UnixMillis) -> Result<u64, StoreError>;
}

/// A device as its stats show it (for finding devices to put on a channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenDevice {
    pub device_id: String,
    pub custom_id: Option<String>,
    pub platform: Option<String>,
    pub version_name: Option<String>,
    pub last_seen: UnixMillis,
}

/// API tokens and the audit log: what [`crate::access`] reads and writes.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    // ----- API tokens (names are unique: a duplicate is a Conflict) -----
    async fn insert_api_token(&self, token: &ApiToken) -> Result<(), StoreError>;
    async fn api_token_by_digest(&self, digest: &str) -> Result<Option<ApiToken>, StoreError>;
    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError>;
    /// False when no such token exists.
    async fn delete_api_token(&self, id: &RecordId) -> Result<bool, StoreError>;

    // ----- audit log -----
    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Newest first: up to `limit` entries older than `before` (all when `None`), ordered by
    /// (`at`, `id`) descending.
    async fn audit_page(
        &self,
        before: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError>;
}

/// A snapshot of what `/updates` answers from that differs after any release insert, promote or
/// delete, after any channel-settings or device-override write, and after any rollout start
/// or step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogVersion {
    /// The newest stamp on a release (inserts and promotes).
    pub newest_revision: i64,
    /// How many releases were ever deleted.
    pub deletions: i64,
    /// The stamp of the last channel-settings or device-override write.
    pub targeting_revision: i64,
    /// The stamp of the last rollout start or step.
    pub rollout_revision: i64,
}

/// A stored object, as listed for the orphan sweep.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub key: String,
    pub modified: SystemTime,
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the file at `source` under `key`. The source file may be moved away.
    async fn put_file(&self, key: &str, source: &Path) -> Result<(), StoreError>;
    /// Reads an object. An absent object is `Ok(None)`.
    async fn read(&self, key: &str) -> Result<Option<BlobBytes>, StoreError>;
    /// Removes an object; an absent object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError>;
    /// The absolute URL devices download `key` from (computed locally, no network call).
    async fn download_url(&self, key: &str) -> Result<String, StoreError>;
    /// Abandons uploads that were started at least `min_age` ago and never completed (S3
    /// multipart uploads of a process that died); how many. Stores without such uploads have
    /// nothing to do.
    async fn abort_stale_uploads(&self, _min_age: Duration) -> Result<usize, StoreError> {
        Ok(0)
    }
    /// The size of the object stored under `key`; `None` when there is none.
    async fn object_size(&self, key: &str) -> Result<Option<u64>, StoreError>;
    /// Where the object is on local disk, when this server serves it itself.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}
