//! The operations people and devices perform on the catalog of bundles and releases. Every
//! rule lives here once; the REST API, the UI and (later) the operator all call these.

pub mod staging;
pub mod target_cache;
pub mod zip_check;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::domain::channel::Channel;
use crate::domain::device::{DeviceInfo, DeviceRefusal};
use crate::domain::names::{check_app_id, check_bundle_version, check_native_version};
use crate::domain::ownership::check_may_change;
use crate::domain::stats::{self, StatsEvent};
use crate::domain::update::ChannelTarget;
use crate::domain::{
    now_millis, Actor, Bundle, BundleEncryption, ChannelName, InvalidInput, Platform, RecordId,
    Release, ReleaseKey, ResourceRef, UnixMillis,
};
use crate::store::{BlobStore, MetadataStore, StoreError};
use staging::StagedBlob;
use target_cache::{Lookup, Resolution, TargetCache, TargetKey};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<InvalidInput> for CatalogError {
    fn from(e: InvalidInput) -> CatalogError {
        CatalogError::Invalid(e.0)
    }
}

impl From<StoreError> for CatalogError {
    fn from(e: StoreError) -> CatalogError {
        match e {
            StoreError::Conflict(detail) => CatalogError::Conflict(detail),
            StoreError::Unavailable(detail) => {
                CatalogError::Unavailable(format!("the metadata store is unavailable: {detail}"))
            }
            StoreError::Internal(detail) => CatalogError::Internal(detail),
        }
    }
}

/// A bundle upload's fields, before the bytes are checked.
#[derive(Debug, Clone, Default)]
pub struct NewBundle {
    pub app_id: String,
    pub version_name: String,
    pub description: String,
    /// Set for encrypted uploads (`bundle encrypt` output).
    pub session_key: Option<String>,
    /// The encrypted checksum for encrypted uploads; for plain uploads, an optional SHA-256
    /// the stored bytes must match.
    pub checksum: Option<String>,
    pub key_id: Option<String>,
    /// Set when the operator creates the bundle for a Kubernetes `Bundle`.
    pub owner: Option<ResourceRef>,
}

#[derive(Debug, Clone)]
pub struct NewRelease {
    pub platform: String,
    pub app_id: String,
    pub version_name: String,
    pub version_code: String,
    pub builtin_bundle_id: String,
}

/// A bundle's device activity (see [`Catalog::bundle_activity`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleActivity {
    /// Events per action over the whole period.
    pub actions: BTreeMap<String, u64>,
    /// One entry per day, oldest first, days without events included.
    pub days: Vec<DailyActivity>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyActivity {
    pub day: UnixMillis,
    pub downloads: u64,
    pub installs: u64,
    pub failures: u64,
}

/// What a Kubernetes `Release` asks for: the record the operator converges to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRelease {
    pub key: ReleaseKey,
    pub builtin_bundle_id: RecordId,
    pub channels: BTreeMap<ChannelName, RecordId>,
    pub owner: ResourceRef,
}

pub struct Catalog {
    metadata: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    targets: TargetCache,
}

impl Catalog {
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        blobs: Arc<dyn BlobStore>,
        cache_duration: Duration,
    ) -> Catalog {
        Catalog {
            metadata,
            blobs,
            targets: TargetCache::new(cache_duration),
        }
    }

    pub async fn download_url(&self, bundle: &Bundle) -> Result<String, CatalogError> {
        Ok(self.blobs.download_url(&bundle.blob_key).await?)
    }

    pub fn blobs(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    // ---- device side -------------------------------------------------------------------

    /// What the device's release and channel serve now (cached; see [`TargetCache`]). When
    /// the metadata store is unreachable, the last known answer is served, however old.
    pub async fn resolve_target(&self, device: &DeviceInfo) -> Result<Resolution, CatalogError> {
        let key = TargetKey {
            release: device.release.clone(),
            channel: device.channel_or_default(),
        };
        let (last_known, generation) = match self.targets.get(&key) {
            Lookup::Fresh(resolution) => {
                crate::metrics::global().cache_lookup(true);
                return Ok(resolution);
            }
            Lookup::Stale(resolution, generation) => (Some(resolution), generation),
            Lookup::Missing(generation) => (None, generation),
        };
        crate::metrics::global().cache_lookup(false);
        let loaded = self.load_target(&key).await;
        match (loaded, last_known) {
            (Ok(resolution), _) => {
                let resolution = Arc::new(resolution);
                self.targets.store(key, generation, resolution.clone());
                Ok(resolution)
            }
            (Err(CatalogError::Unavailable(reason)), Some(last_known)) => {
                tracing::warn!(%reason, release = %key.release, "storage unavailable: serving the last known answer");
                Ok(self.with_fresh_url(last_known).await)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// Re-signs the download URL of an old resolution (presigned URLs expire); signing is local.
    async fn with_fresh_url(&self, resolution: Resolution) -> Resolution {
        let Ok(target) = resolution.as_ref() else {
            return resolution;
        };
        match self.download_url(&target.bundle).await {
            Ok(url) => Arc::new(Ok(ChannelTarget {
                url,
                ..target.clone()
            })),
            Err(_) => resolution,
        }
    }

    /// Follows changes other replicas make: clears the answer cache whenever the store's
    /// catalog version moves. Returns at once for a store only this process writes.
    pub async fn follow_external_changes(&self, every: Duration, shutdown: CancellationToken) {
        let mut last = None;
        let mut failing = false;
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            match self.metadata.catalog_version().await {
                Ok(None) => return,
                Ok(Some(version)) => {
                    if failing {
                        tracing::info!("metadata store reachable again");
                        failing = false;
                    }
                    if last != Some(version) {
                        self.targets.invalidate();
                        last = Some(version);
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot check the catalog for other replicas' changes");
                    }
                    failing = true;
                }
            }
        }
    }

    async fn load_target(
        &self,
        key: &TargetKey,
    ) -> Result<Result<ChannelTarget, DeviceRefusal>, CatalogError> {
        let Some(release) = self.metadata.release_by_key(&key.release).await? else {
            return Ok(Err(DeviceRefusal::failed(
                "no_release",
                format!("No release is registered for {}", key.release),
            )));
        };
        let bundle_id = release.bundle_for(&key.channel);
        let Some(bundle) = self.metadata.bundle(bundle_id).await? else {
            return Ok(Err(DeviceRefusal::failed(
                "no_bundle",
                format!("The bundle of channel {} is missing", key.channel),
            )));
        };
        Ok(Ok(ChannelTarget {
            url: self.download_url(&bundle).await?,
            is_builtin: bundle.id == release.builtin_bundle_id,
            bundle,
        }))
    }

    pub async fn channels(&self, app_id: &str) -> Result<Vec<Channel>, CatalogError> {
        Ok(self.metadata.channels(app_id).await?)
    }

    /// Whether a device of `app_id` may choose `channel` with `setChannel`: the default channel
    /// always, others once some release of the app assigns them.
    pub async fn device_may_choose(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, CatalogError> {
        Ok(channel.is_default()
            || self
                .channels(app_id)
                .await?
                .iter()
                .any(|c| &c.name == channel))
    }

    pub async fn record_stats(&self, events: &[StatsEvent]) -> Result<(), CatalogError> {
        if events.is_empty() {
            return Ok(());
        }
        Ok(self.metadata.insert_stats(events).await?)
    }

    /// What devices reported about one bundle over the last `days` days: totals per action,
    /// and per day the downloads, installs and failures.
    pub async fn bundle_activity(
        &self,
        bundle: &Bundle,
        days: u32,
    ) -> Result<BundleActivity, CatalogError> {
        let today = stats::day_of(now_millis());
        let since = today - stats::DAY_MILLIS * i64::from(days.saturating_sub(1));
        let counts = self
            .metadata
            .bundle_activity(&bundle.app_id, &bundle.version_name, since)
            .await?;
        let mut activity = BundleActivity {
            days: (0..i64::from(days))
                .map(|i| DailyActivity {
                    day: since + i * stats::DAY_MILLIS,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        for count in counts {
            *activity.actions.entry(count.action.clone()).or_default() += count.count;
            let Some(day) = activity.days.iter_mut().find(|d| d.day == count.day) else {
                continue;
            };
            match stats::ActivityKind::of(&count.action) {
                stats::ActivityKind::Download => day.downloads += count.count,
                stats::ActivityKind::Install => day.installs += count.count,
                stats::ActivityKind::Failure => day.failures += count.count,
                stats::ActivityKind::Other => {}
            }
        }
        Ok(activity)
    }

    // ---- bundles -----------------------------------------------------------------------

    /// Checks an upload's fields before its bytes are read, so a bad or duplicate upload is
    /// refused without receiving the whole file.
    pub async fn check_new_bundle(&self, new: &NewBundle) -> Result<(), CatalogError> {
        check_app_id(&new.app_id)?;
        check_bundle_version(&new.version_name)?;
        if self
            .metadata
            .bundle_by_version(&new.app_id, &new.version_name)
            .await?
            .is_some()
        {
            return Err(duplicate_bundle(new));
        }
        Ok(())
    }

    /// Checks the staged bytes, stores them, then records the bundle. A failure at any step
    /// leaves neither a record nor a stored object behind.
    pub async fn add_bundle(
        &self,
        new: NewBundle,
        staged: StagedBlob,
    ) -> Result<Bundle, CatalogError> {
        self.check_new_bundle(&new).await?;
        if new.description.len() > 4096 {
            return Err(CatalogError::Invalid(
                "description is longer than 4096 characters".into(),
            ));
        }
        if staged.size == 0 {
            return Err(CatalogError::Invalid("the bundle file is empty".into()));
        }
        let encryption = match new.session_key {
            Some(session_key) => {
                // Ciphertext is not a zip: the uploader's checksum is what devices verify.
                Some(BundleEncryption::new(
                    session_key,
                    new.checksum,
                    new.key_id,
                )?)
            }
            None => {
                if new.key_id.is_some() {
                    return Err(CatalogError::Invalid(
                        "key_id is only meaningful for encrypted bundles (with session_key)".into(),
                    ));
                }
                let path = staged.path().to_path_buf();
                tokio::task::spawn_blocking(move || zip_check::check_bundle_zip(&path))
                    .await
                    .map_err(|e| CatalogError::Internal(format!("zip check task failed: {e}")))??;
                if let Some(expected) = &new.checksum {
                    let expected = expected.to_ascii_lowercase();
                    if expected != staged.sha256 && expected != staged.crc32 {
                        return Err(CatalogError::Invalid(format!(
                            "checksum mismatch: the upload's SHA-256 is {}, the request said {expected}",
                            staged.sha256
                        )));
                    }
                }
                None
            }
        };
        let id = RecordId::generate();
        let bundle = Bundle {
            blob_key: Bundle::blob_key_for(&id),
            id,
            app_id: new.app_id,
            version_name: new.version_name,
            description: new.description,
            sha256: staged.sha256.clone(),
            crc32: staged.crc32.clone(),
            size: staged.size,
            encryption,
            created_at: now_millis(),
            owner: new.owner,
        };
        self.blobs.put_file(&bundle.blob_key, staged.path()).await?;
        if let Err(e) = self.metadata.insert_bundle(&bundle).await {
            self.remove_blob(&bundle.blob_key).await;
            return Err(match e {
                StoreError::Conflict(_) => {
                    duplicate_bundle_of(&bundle.app_id, &bundle.version_name)
                }
                other => other.into(),
            });
        }
        Ok(bundle)
    }

    pub async fn bundle(&self, id: &str) -> Result<Bundle, CatalogError> {
        let id = RecordId::parse(id, "bundle id")?;
        self.metadata
            .bundle(&id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("bundle {id} does not exist")))
    }

    pub async fn list_bundles(&self) -> Result<Vec<Bundle>, CatalogError> {
        Ok(self.metadata.list_bundles().await?)
    }

    /// Deletes a bundle no release uses, then its stored bytes.
    pub async fn delete_bundle(&self, id: &str, actor: &Actor) -> Result<Bundle, CatalogError> {
        let bundle = self.bundle(id).await?;
        check_may_change(
            bundle.owner.as_ref(),
            actor,
            &format!("bundle {}", bundle.id),
        )
        .map_err(CatalogError::Conflict)?;
        let users = self.metadata.releases_using_bundle(&bundle.id).await?;
        if !users.is_empty() {
            return Err(bundle_in_use(&bundle, &users));
        }
        match self.metadata.delete_bundle(&bundle.id).await {
            Ok(_) => {}
            // A release started using it between our check and the delete.
            Err(StoreError::Conflict(_)) => {
                let users = self.metadata.releases_using_bundle(&bundle.id).await?;
                return Err(bundle_in_use(&bundle, &users));
            }
            Err(e) => return Err(e.into()),
        }
        self.remove_blob(&bundle.blob_key).await;
        Ok(bundle)
    }

    /// Deletes a stored object; a failure only leaves an orphan for [`Catalog::sweep_orphans`].
    async fn remove_blob(&self, key: &str) {
        if let Err(e) = self.blobs.delete(key).await {
            tracing::warn!(blob = key, error = %e, "could not delete a stored bundle; the orphan sweep will retry");
        }
    }

    /// Deletes stored objects that no bundle record refers to and that are older than
    /// `min_age` (younger ones may belong to an upload in progress).
    pub async fn sweep_orphans(&self, min_age: Duration) -> Result<usize, CatalogError> {
        let in_use: HashSet<String> = self
            .metadata
            .bundle_blob_keys()
            .await?
            .into_iter()
            .collect();
        let now = SystemTime::now();
        let mut removed = 0;
        for blob in self.blobs.list().await? {
            let age = now.duration_since(blob.modified).unwrap_or_default();
            if !in_use.contains(&blob.key) && age >= min_age {
                self.blobs.delete(&blob.key).await?;
                tracing::info!(blob = blob.key, "removed an orphaned bundle object");
                removed += 1;
            }
        }
        Ok(removed + self.blobs.abort_stale_uploads(min_age).await?)
    }

    // ---- releases ----------------------------------------------------------------------

    pub async fn create_release(&self, new: NewRelease) -> Result<Release, CatalogError> {
        let platform: Platform = new.platform.parse()?;
        check_app_id(&new.app_id)?;
        check_native_version(&new.version_name, "version_name")?;
        check_native_version(&new.version_code, "version_code")?;
        let builtin = self
            .bundle_for_app(&new.builtin_bundle_id, "builtin_bundle_id", &new.app_id)
            .await?;
        let now = now_millis();
        let release = Release {
            id: RecordId::generate(),
            key: ReleaseKey {
                platform,
                app_id: new.app_id,
                version_name: new.version_name,
                version_code: new.version_code,
            },
            builtin_bundle_id: builtin.id,
            channels: Default::default(),
            release_date: None,
            created_at: now,
            updated_at: now,
            owner: None,
        };
        match self.metadata.insert_release(&release).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(CatalogError::Conflict(format!(
                    "a release for {} already exists",
                    release.key
                )))
            }
            Err(e) => return Err(e.into()),
        }
        // A device of this build may have been told "no release" a moment ago.
        self.targets.invalidate();
        Ok(release)
    }

    pub async fn release(&self, id: &str) -> Result<Release, CatalogError> {
        let id = RecordId::parse(id, "release id")?;
        self.metadata
            .release(&id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("release {id} does not exist")))
    }

    pub async fn list_releases(&self) -> Result<Vec<Release>, CatalogError> {
        Ok(self.metadata.list_releases().await?)
    }

    pub async fn set_release_date(
        &self,
        id: &str,
        release_date: Option<UnixMillis>,
        actor: &Actor,
    ) -> Result<Release, CatalogError> {
        let release = self.changeable_release(id, actor).await?;
        if !self
            .metadata
            .set_release_date(&release.id, release_date, now_millis())
            .await?
        {
            return Err(CatalogError::NotFound(format!(
                "release {id} does not exist"
            )));
        }
        self.release(id).await
    }

    /// Points a channel of a release at a bundle of the same app: how a bundle is promoted,
    /// and how it is rolled back (to an earlier bundle, or to the builtin one).
    pub async fn set_active_bundle(
        &self,
        release_id: &str,
        bundle_id: &str,
        channel: Option<&str>,
        actor: &Actor,
    ) -> Result<Release, CatalogError> {
        let channel = match channel.filter(|c| !c.is_empty()) {
            Some(name) => ChannelName::parse(name)?,
            None => ChannelName::default_channel(),
        };
        let release = self.changeable_release(release_id, actor).await?;
        let bundle = self
            .bundle_for_app(bundle_id, "bundle_id", &release.key.app_id)
            .await?;
        let updated = self
            .metadata
            .set_channel_bundle(&release.id, &channel, &bundle.id, now_millis())
            .await;
        match updated {
            Ok(true) => {
                // Only after a write: a failed one must not discard the last known answers.
                self.targets.invalidate();
                self.release(release_id).await
            }
            Ok(false) => Err(CatalogError::NotFound(format!(
                "release {release_id} does not exist"
            ))),
            Err(StoreError::Conflict(_)) => Err(CatalogError::Conflict(format!(
                "bundle {bundle_id} was deleted while it was being activated"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_release(&self, id: &str, actor: &Actor) -> Result<Release, CatalogError> {
        let release = self.changeable_release(id, actor).await?;
        self.metadata.delete_release(&release.id).await?;
        self.targets.invalidate();
        Ok(release)
    }

    /// A release `actor` may change (409 naming the owning resource otherwise).
    async fn changeable_release(&self, id: &str, actor: &Actor) -> Result<Release, CatalogError> {
        let release = self.release(id).await?;
        check_may_change(
            release.owner.as_ref(),
            actor,
            &format!("release {}", release.key),
        )
        .map_err(CatalogError::Conflict)?;
        Ok(release)
    }

    /// Creates the record a Kubernetes `Release` describes, or converges the existing one to it
    /// (builtin bundle and every channel, in one write). Returns whether anything was written,
    /// so an unchanged resource costs no write.
    pub async fn apply_release(
        &self,
        desired: &DesiredRelease,
    ) -> Result<(Release, bool), CatalogError> {
        let actor = Actor::Resource(desired.owner.clone());
        for bundle_id in
            std::iter::once(&desired.builtin_bundle_id).chain(desired.channels.values())
        {
            self.bundle_for_app(bundle_id.as_str(), "bundle", &desired.key.app_id)
                .await?;
        }
        let Some(existing) = self.metadata.release_by_key(&desired.key).await? else {
            let now = now_millis();
            let release = Release {
                id: RecordId::generate(),
                key: desired.key.clone(),
                builtin_bundle_id: desired.builtin_bundle_id.clone(),
                channels: desired.channels.clone(),
                release_date: None,
                created_at: now,
                updated_at: now,
                owner: Some(desired.owner.clone()),
            };
            return match self.metadata.insert_release(&release).await {
                Ok(()) => {
                    self.targets.invalidate();
                    Ok((release, true))
                }
                Err(StoreError::Conflict(_)) => Err(CatalogError::Conflict(format!(
                    "a release for {} was created concurrently; retrying will adopt or refuse it",
                    desired.key
                ))),
                Err(e) => Err(e.into()),
            };
        };
        check_may_change(existing.owner.as_ref(), &actor, &format!("the release for {}", desired.key))
            .map_err(|_| {
                CatalogError::Conflict(format!(
                    "a release for {} already exists and is managed by {}; delete it there or choose another native version",
                    desired.key,
                    existing.owner.as_ref().map_or("the REST API".to_string(), |o| o.to_string())
                ))
            })?;
        if existing.builtin_bundle_id == desired.builtin_bundle_id
            && existing.channels == desired.channels
        {
            return Ok((existing, false));
        }
        let written = self
            .metadata
            .replace_release_assignments(
                &existing.id,
                &desired.builtin_bundle_id,
                &desired.channels,
                now_millis(),
            )
            .await?;
        if !written {
            return Err(CatalogError::NotFound(format!(
                "release {} vanished while being updated",
                existing.id
            )));
        }
        self.targets.invalidate();
        let updated = self.release(existing.id.as_str()).await?;
        Ok((updated, true))
    }

    /// The bundle record a Kubernetes `Bundle` made, if any.
    pub async fn bundle_by_version(
        &self,
        app_id: &str,
        version_name: &str,
    ) -> Result<Option<Bundle>, CatalogError> {
        Ok(self
            .metadata
            .bundle_by_version(app_id, version_name)
            .await?)
    }

    /// The release record for a native build, if any.
    pub async fn release_by_key(&self, key: &ReleaseKey) -> Result<Option<Release>, CatalogError> {
        Ok(self.metadata.release_by_key(key).await?)
    }

    /// Looks up a bundle a request refers to in `field`, which must belong to `app_id`.
    async fn bundle_for_app(
        &self,
        id: &str,
        field: &str,
        app_id: &str,
    ) -> Result<Bundle, CatalogError> {
        let parsed = RecordId::parse(id, field)?;
        let bundle = self
            .metadata
            .bundle(&parsed)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("{field} {id}: no such bundle")))?;
        if bundle.app_id != app_id {
            return Err(CatalogError::Invalid(format!(
                "{field} {id} is a bundle of {}, not of {app_id}",
                bundle.app_id
            )));
        }
        Ok(bundle)
    }
}

fn duplicate_bundle(new: &NewBundle) -> CatalogError {
    duplicate_bundle_of(&new.app_id, &new.version_name)
}

fn duplicate_bundle_of(app_id: &str, version_name: &str) -> CatalogError {
    CatalogError::Conflict(format!(
        "{app_id} already has a bundle named {version_name:?}; devices tell bundles apart by \
         name, so upload the new one under a new version_name"
    ))
}

fn bundle_in_use(bundle: &Bundle, users: &[Release]) -> CatalogError {
    let names: Vec<String> = users
        .iter()
        .map(|r| format!("{} [{}]", r.key, r.id))
        .collect();
    CatalogError::Conflict(format!(
        "bundle {} ({}) is used by release(s) {}; point them at another bundle first",
        bundle.id,
        bundle.version_name,
        names.join(", ")
    ))
}
