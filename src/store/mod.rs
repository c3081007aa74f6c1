//! Storage: metadata (bundles, releases, channels, stats) and blobs (bundle bytes).
//!
//! The catalog talks to these traits only. The embedded default is SQLite plus a folder;
//! MongoDB and S3 implement the same traits, and one contract suite (`tests/store_contract.rs`)
//! runs against every implementation.

pub mod fs_blobs;
pub mod mongo;
pub mod s3;
pub mod sqlite;
pub mod timed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::domain::access::{ApiToken, AuditCursor, AuditEntry};
use crate::domain::channel::Channel;
use crate::domain::stats::{ActivityCount, StatsEvent};
use crate::domain::{Bundle, ChannelName, RecordId, Release, ReleaseKey, UnixMillis};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness or reference rule of the store refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The store cannot be reached now; the same call may work later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage failure: {0}")]
    Internal(String),
}

#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Fails with `Conflict` when the app already has a bundle of that version name.
    async fn insert_bundle(&self, bundle: &Bundle) -> Result<(), StoreError>;
    async fn bundle(&self, id: &RecordId) -> Result<Option<Bundle>, StoreError>;
    async fn bundle_by_version(
        &self,
        app_id: &str,
        version_name: &str,
    ) -> Result<Option<Bundle>, StoreError>;
    /// Newest first.
    async fn list_bundles(&self) -> Result<Vec<Bundle>, StoreError>;
    /// Fails with `Conflict` while a release refers to the bundle. `false` when absent.
    async fn delete_bundle(&self, id: &RecordId) -> Result<bool, StoreError>;

    /// Fails with `Conflict` when a release with the same key exists. Creates the app's
    /// default channel.
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
    /// one atomic write. `false` when the release does not exist.
    async fn set_channel_bundle(
        &self,
        id: &RecordId,
        channel: &ChannelName,
        bundle_id: &RecordId,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// Sets a release's builtin bundle and replaces all its channel assignments in one atomic
    /// write (how the operator converges a record to its resource). `false` when absent.
    async fn replace_release_assignments(
        &self,
        id: &RecordId,
        builtin_bundle_id: &RecordId,
        channels: &BTreeMap<ChannelName, RecordId>,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError>;
    /// `false` when absent.
    async fn delete_release(&self, id: &RecordId) -> Result<bool, StoreError>;

    /// The channels of an app, by numeric id.
    async fn channels(&self, app_id: &str) -> Result<Vec<Channel>, StoreError>;

    /// Stores a batch of device events (at least once: a failed batch may be partly stored,
    /// and plugins send it again).
    async fn insert_stats(&self, events: &[StatsEvent]) -> Result<(), StoreError>;
    /// How many events of each action devices reported for a bundle (by version name), per
    /// UTC day, for events since `since`.
    async fn bundle_activity(
        &self,
        app_id: &str,
        version_name: &str,
        since: UnixMillis,
    ) -> Result<Vec<ActivityCount>, StoreError>;
    /// Blob keys that bundle records refer to (for the orphan sweep).
    async fn bundle_blob_keys(&self) -> Result<Vec<String>, StoreError>;

    /// What changes whenever another process changes what `/updates` answers; `None` for a
    /// store only this process writes (its own writes already clear the answer cache).
    async fn catalog_version(&self) -> Result<Option<CatalogVersion>, StoreError>;

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

/// A snapshot of the release collection that differs after any insert, promote or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogVersion {
    /// The newest stamp on a release (inserts and promotes).
    pub newest_revision: i64,
    /// How many releases were ever deleted.
    pub deletions: i64,
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
    /// Where the object is on local disk, when this server serves it itself.
    fn local_path(&self, _key: &str) -> Option<PathBuf> {
        None
    }
}
