//! Channel settings, device overrides and unregistered native builds (see [`TargetingStore`]).
//!
//! - Channel settings live in the channel's own document (`channels`, field `settings`): a put
//!   is one write to a document [`MongoMetadataStore::ensure_channel`] made, and a channel has
//!   settings exactly when the field is there.
//! - `device_overrides`: one document per (app, device), which a unique index guarantees. That
//!   index is also what keeps a device's own choice from replacing a forced override without
//!   transactions: the choice is an upsert filtered on `source: "device"`, so it either updates
//!   the device's earlier choice or inserts, and an insert next to a forced override fails on the
//!   index (see [`TargetingStore::put_device_choice`] below).
//! - `unregistered_builds`: one document per native build, counters changed with `$inc`,
//!   `$max` and `$min` (commutative, so replicas flushing at once lose nothing), at most
//!   [`MAX_UNREGISTERED_BUILDS`].
//!
//! Every settings or override write (a removal: when it removed something) then bumps a shared
//! counter that [`crate::store::CatalogStore::catalog_version`] reports as `targeting_revision`,
//! so other replicas clear their answer caches. It is bumped after the write: a replica that
//! sees the new value also sees the write. (A process that dies between the two leaves the
//! change unnoticed until the next bump, as with release deletions.)

use async_trait::async_trait;
use futures_util::{stream, StreamExt, TryStreamExt};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::Collection;
use serde::{Deserialize, Serialize};

use super::{
    all, map_error, millis, plain_index, unique_index, MongoMetadataStore, StoreError,
    WRITE_ATTEMPTS,
};
use crate::domain::channel_policy::{ChannelRules, ChannelSettings, UpdatePolicy};
use crate::domain::targeting::{
    DeviceOverride, OverrideSource, UnregisteredBuild, MAX_UNREGISTERED_BUILDS,
};
use crate::domain::{ChannelName, InvalidInput, ReleaseKey, ResourceRef};
use crate::store::{SeenDevice, TargetingStore};

/// The shared counter behind [`crate::store::CatalogVersion::targeting_revision`].
pub(super) const TARGETING_COUNTER: &str = "targeting_revision";
/// Override writes in flight at once for one call (up to
/// [`crate::domain::targeting::MAX_DEVICES_PER_REQUEST`] devices).
const OVERRIDE_WRITES_IN_FLIGHT: usize = 16;

/// A channel's settings, inside its `channels` document. Rules missing from a document (written
/// before the rule existed) read as the permissive default.
#[derive(Debug, Serialize, Deserialize)]
#[serde(default)]
struct StoredSettings {
    allow_ios: bool,
    allow_android: bool,
    allow_electron: bool,
    allow_emulator: bool,
    allow_device: bool,
    allow_dev_build: bool,
    allow_prod_build: bool,
    update_policy: String,
    block_under_native: bool,
    allow_device_self_set: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    updated_at: DateTime,
}

impl Default for StoredSettings {
    fn default() -> StoredSettings {
        StoredSettings::new(&ChannelRules::default(), None, 0)
    }
}

impl StoredSettings {
    fn new(rules: &ChannelRules, owner: Option<&ResourceRef>, updated_at: i64) -> StoredSettings {
        StoredSettings {
            allow_ios: rules.allow_ios,
            allow_android: rules.allow_android,
            allow_electron: rules.allow_electron,
            allow_emulator: rules.allow_emulator,
            allow_device: rules.allow_device,
            allow_dev_build: rules.allow_dev_build,
            allow_prod_build: rules.allow_prod_build,
            update_policy: rules.update_policy.as_str().to_string(),
            block_under_native: rules.block_under_native,
            allow_device_self_set: rules.allow_device_self_set,
            owner: owner.map(ResourceRef::to_stored),
            updated_at: DateTime::from_millis(updated_at),
        }
    }
}

/// The part of a `channels` document that settings are read from.
#[derive(Debug, Deserialize)]
struct ConfiguredChannelDoc {
    app_id: String,
    name: String,
    settings: StoredSettings,
}

impl ConfiguredChannelDoc {
    fn into_settings(self) -> Result<ChannelSettings, StoreError> {
        let s = self.settings;
        let update_policy = s.update_policy.parse::<UpdatePolicy>().map_err(|e| {
            StoreError::internal(
                format!("settings of channel {} of {}", self.name, self.app_id),
                e,
            )
        })?;
        Ok(ChannelSettings {
            app_id: self.app_id,
            channel: ChannelName::from_stored(self.name),
            rules: ChannelRules {
                allow_ios: s.allow_ios,
                allow_android: s.allow_android,
                allow_electron: s.allow_electron,
                allow_emulator: s.allow_emulator,
                allow_device: s.allow_device,
                allow_dev_build: s.allow_dev_build,
                allow_prod_build: s.allow_prod_build,
                update_policy,
                block_under_native: s.block_under_native,
                allow_device_self_set: s.allow_device_self_set,
            },
            owner: s.owner.as_deref().and_then(ResourceRef::from_stored),
            updated_at: millis(s.updated_at),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct OverrideDoc {
    #[serde(rename = "_id", default, skip_serializing_if = "Option::is_none")]
    id: Option<ObjectId>,
    app_id: String,
    device_id: String,
    channel: String,
    /// `api`, `device` or the `Kind/namespace/name` of a resource.
    source: String,
    updated_at: DateTime,
}

impl From<&DeviceOverride> for OverrideDoc {
    fn from(o: &DeviceOverride) -> OverrideDoc {
        OverrideDoc {
            id: None,
            app_id: o.app_id.clone(),
            device_id: o.device_id.clone(),
            channel: o.channel.as_str().to_string(),
            source: o.source.to_stored(),
            updated_at: DateTime::from_millis(o.updated_at),
        }
    }
}

impl OverrideDoc {
    fn into_override(self) -> Result<DeviceOverride, StoreError> {
        let source = OverrideSource::from_stored(&self.source).ok_or_else(|| {
            StoreError::invalid(format!(
                "override of device {} of {} has source {:?}, not api, device or Kind/namespace/name",
                self.device_id, self.app_id, self.source
            ))
        })?;
        Ok(DeviceOverride {
            app_id: self.app_id,
            device_id: self.device_id,
            channel: ChannelName::from_stored(self.channel),
            source,
            updated_at: millis(self.updated_at),
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct UnregisteredBuildDoc {
    platform: String,
    app_id: String,
    version_name: String,
    version_code: String,
    devices: i64,
    checks: i64,
    first_seen: DateTime,
    last_seen: DateTime,
}

impl UnregisteredBuildDoc {
    fn into_build(self) -> Result<UnregisteredBuild, StoreError> {
        Ok(UnregisteredBuild {
            key: ReleaseKey {
                platform: self.platform.parse().map_err(|e: InvalidInput| {
                    StoreError::internal(
                        format!("unregistered build of {} has a bad platform", self.app_id),
                        e,
                    )
                })?,
                app_id: self.app_id,
                version_name: self.version_name,
                version_code: self.version_code,
            },
            devices: self.devices.max(0) as u64,
            checks: self.checks.max(0) as u64,
            first_seen: millis(self.first_seen),
            last_seen: millis(self.last_seen),
        })
    }
}

fn override_key(app_id: &str, device_id: &str) -> Document {
    doc! {"app_id": app_id, "device_id": device_id}
}

fn build_key(key: &ReleaseKey) -> Document {
    doc! {
        "platform": key.platform.as_str(), "app_id": &key.app_id,
        "version_name": &key.version_name, "version_code": &key.version_code,
    }
}

/// Counts are `u64` in the domain and `i64` in BSON.
fn clamped(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl MongoMetadataStore {
    fn configured_channels(&self) -> Collection<ConfiguredChannelDoc> {
        self.db.collection("channels")
    }
    fn overrides(&self) -> Collection<OverrideDoc> {
        self.db.collection("device_overrides")
    }
    fn unregistered(&self) -> Collection<UnregisteredBuildDoc> {
        self.db.collection("unregistered_builds")
    }

    /// Indexes for the collections of this module; part of [`MongoMetadataStore::migrate`].
    pub(super) async fn migrate_targeting(&self) -> Result<(), StoreError> {
        self.overrides()
            .create_indexes([
                // One record per device: what keeps a device's choice from replacing a
                // forced override (see `put_device_choice`).
                unique_index(doc! {"app_id": 1, "device_id": 1}),
                plain_index(doc! {"source": 1}),
            ])
            .await
            .map_err(map_error)?;
        self.unregistered()
            .create_indexes([
                unique_index(
                    doc! {"platform": 1, "app_id": 1, "version_name": 1, "version_code": 1},
                ),
                plain_index(doc! {"last_seen": -1}),
            ])
            .await
            .map_err(map_error)?;
        self.db
            .collection::<Document>("stats_events")
            .create_indexes([
                // For find_devices: a device's events newest first, and devices by custom id.
                plain_index(doc! {"app_id": 1, "device_id": 1, "occurred_at": -1}),
                plain_index(doc! {"app_id": 1, "custom_id": 1}),
            ])
            .await
            .map_err(map_error)?;
        Ok(())
    }

    /// Tells other replicas that channel settings or overrides changed.
    async fn targeting_changed(&self) -> Result<(), StoreError> {
        self.next(TARGETING_COUNTER).await.map(drop)
    }

    /// Puts a device on a channel whatever override it had (replacing the whole record). Two
    /// upserts of a new device racing each other can both try the insert; the loser retries
    /// and then updates.
    async fn upsert_override(&self, document: OverrideDoc) -> Result<(), StoreError> {
        let filter = override_key(&document.app_id, &document.device_id);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .overrides()
                .replace_one(filter.clone(), &document)
                .upsert(true)
                .await
                .map_err(map_error)
            {
                Err(StoreError::Duplicate(_)) if attempt < WRITE_ATTEMPTS => continue,
                outcome => return outcome.map(drop),
            }
        }
    }

    async fn upsert_overrides(&self, overrides: &[DeviceOverride]) -> Result<(), StoreError> {
        // Owned documents: a closure over borrowed ones would make the future `async_trait`
        // boxes generic over their lifetime, which the compiler cannot prove `Send`.
        let documents: Vec<OverrideDoc> = overrides.iter().map(OverrideDoc::from).collect();
        stream::iter(documents)
            .map(|document| self.upsert_override(document))
            .buffer_unordered(OVERRIDE_WRITES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    /// Drops the builds seen longest ago beyond [`MAX_UNREGISTERED_BUILDS`].
    async fn trim_unregistered_builds(&self) -> Result<(), StoreError> {
        let stored = self
            .unregistered()
            .count_documents(doc! {})
            .await
            .map_err(map_error)?;
        if stored <= MAX_UNREGISTERED_BUILDS as u64 {
            return Ok(());
        }
        let oldest: Vec<Document> = all(self
            .db
            .collection::<Document>("unregistered_builds")
            .find(doc! {})
            .sort(doc! {"last_seen": -1, "_id": -1})
            .skip(MAX_UNREGISTERED_BUILDS as u64)
            .projection(doc! {"_id": 1}))
        .await?;
        let ids: Vec<Bson> = oldest
            .into_iter()
            .filter_map(|d| d.get("_id").cloned())
            .collect();
        self.unregistered()
            .delete_many(doc! {"_id": {"$in": ids}})
            .await
            .map_err(map_error)?;
        Ok(())
    }
}

#[async_trait]
impl TargetingStore for MongoMetadataStore {
    async fn channel_settings(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<ChannelSettings>, StoreError> {
        let mut filter = doc! {"settings": {"$exists": true}};
        if let Some(app_id) = app_id {
            filter.insert("app_id", app_id);
        }
        all(self
            .configured_channels()
            .find(filter)
            .sort(doc! {"app_id": 1, "name": 1}))
        .await?
        .into_iter()
        .map(ConfiguredChannelDoc::into_settings)
        .collect()
    }

    async fn put_channel_settings(&self, settings: &ChannelSettings) -> Result<(), StoreError> {
        let (app_id, channel) = (&settings.app_id, settings.channel.as_str());
        self.ensure_channel(app_id, channel).await?;
        let stored = StoredSettings::new(
            &settings.rules,
            settings.owner.as_ref(),
            settings.updated_at,
        );
        let stored = mongodb::bson::to_document(&stored)
            .map_err(|e| StoreError::internal("channel settings as BSON", e))?;
        self.channel_docs()
            .update_one(
                doc! {"app_id": app_id, "name": channel},
                doc! {"$set": {"settings": stored}},
            )
            .await
            .map_err(map_error)?;
        self.targeting_changed().await
    }

    async fn delete_channel_settings(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, StoreError> {
        let result = self
            .channel_docs()
            .update_one(
                doc! {"app_id": app_id, "name": channel.as_str(), "settings": {"$exists": true}},
                doc! {"$unset": {"settings": ""}},
            )
            .await
            .map_err(map_error)?;
        let deleted = result.modified_count > 0;
        if deleted {
            self.targeting_changed().await?;
        }
        Ok(deleted)
    }

    async fn device_overrides(&self, app_id: &str) -> Result<Vec<DeviceOverride>, StoreError> {
        all(self
            .overrides()
            .find(doc! {"app_id": app_id})
            .sort(doc! {"device_id": 1}))
        .await?
        .into_iter()
        .map(OverrideDoc::into_override)
        .collect()
    }

    async fn put_device_overrides(&self, overrides: &[DeviceOverride]) -> Result<(), StoreError> {
        if overrides.is_empty() {
            return Ok(());
        }
        // Bumped even after a partial failure: some devices may have moved.
        let written = self.upsert_overrides(overrides).await;
        self.targeting_changed().await?;
        written
    }

    async fn put_device_choice(&self, choice: &DeviceOverride) -> Result<bool, StoreError> {
        let device = OverrideSource::Device.to_stored();
        let mut filter = override_key(&choice.app_id, &choice.device_id);
        filter.insert("source", device.as_str());
        let update = doc! {"$set": {
            "channel": choice.channel.as_str(),
            "updated_at": DateTime::from_millis(choice.updated_at),
        }};
        for _ in 0..WRITE_ATTEMPTS {
            // Updates the device's earlier choice, or inserts (app, device, source: device
            // from the filter); the unique (app, device) index refuses that insert when the
            // device has another record, so a forced override is never replaced.
            let upserted = self
                .overrides()
                .update_one(filter.clone(), update.clone())
                .upsert(true)
                .await
                .map_err(map_error);
            match upserted {
                Ok(_) => {
                    self.targeting_changed().await?;
                    return Ok(true);
                }
                Err(StoreError::Duplicate(_)) => {}
                Err(e) => return Err(e),
            }
            // Either forced, or another call inserted the device's choice first (then the
            // next attempt updates it).
            let current = self
                .overrides()
                .find_one(override_key(&choice.app_id, &choice.device_id))
                .await
                .map_err(map_error)?;
            if current.is_some_and(|o| o.source != device) {
                return Ok(false);
            }
        }
        Err(StoreError::unavailable(
            format!(
                "the override of device {} of {} kept changing while being written",
                choice.device_id, choice.app_id
            ),
            format!("{WRITE_ATTEMPTS} attempts"),
        ))
    }

    async fn delete_device_overrides(
        &self,
        app_id: &str,
        device_ids: &[String],
        source: Option<&OverrideSource>,
    ) -> Result<u64, StoreError> {
        if device_ids.is_empty() {
            return Ok(0);
        }
        let mut filter = doc! {"app_id": app_id, "device_id": {"$in": device_ids}};
        if let Some(source) = source {
            filter.insert("source", source.to_stored());
        }
        let result = self
            .overrides()
            .delete_many(filter)
            .await
            .map_err(map_error)?;
        if result.deleted_count > 0 {
            self.targeting_changed().await?;
        }
        Ok(result.deleted_count)
    }

    async fn replace_resource_overrides(
        &self,
        owner: &OverrideSource,
        overrides: &[DeviceOverride],
    ) -> Result<(), StoreError> {
        let owner = owner.to_stored();
        let had = all(self.overrides().find(doc! {"source": &owner})).await?;
        // Not one atomic write: the wanted devices are put first, then the owner's others
        // released (filtered on the owner, so a device someone else took meanwhile stays).
        // A reconcile that fails half way leaves a mix the next reconcile converges.
        let written = self.upsert_overrides(overrides).await;
        let released: Vec<ObjectId> = had
            .iter()
            .filter(|old| {
                !overrides
                    .iter()
                    .any(|o| o.app_id == old.app_id && o.device_id == old.device_id)
            })
            .filter_map(|old| old.id)
            .collect();
        let released = if written.is_ok() && !released.is_empty() {
            self.overrides()
                .delete_many(doc! {"_id": {"$in": released}, "source": &owner})
                .await
                .map(drop)
                .map_err(map_error)
        } else {
            Ok(())
        };
        if !overrides.is_empty() || !had.is_empty() {
            self.targeting_changed().await?;
        }
        written.and(released)
    }

    async fn record_unregistered_builds(
        &self,
        sightings: &[UnregisteredBuild],
    ) -> Result<(), StoreError> {
        for b in sightings {
            let update = doc! {
                "$inc": {"checks": clamped(b.checks)},
                "$max": {"devices": clamped(b.devices), "last_seen": DateTime::from_millis(b.last_seen)},
                "$min": {"first_seen": DateTime::from_millis(b.first_seen)},
            };
            let mut attempt = 0;
            loop {
                attempt += 1;
                let upserted = self
                    .unregistered()
                    .update_one(build_key(&b.key), update.clone())
                    .upsert(true)
                    .await
                    .map_err(map_error);
                match upserted {
                    // Another replica inserted the same build first: now it is an update.
                    Err(StoreError::Duplicate(_)) if attempt < WRITE_ATTEMPTS => continue,
                    outcome => {
                        outcome?;
                        break;
                    }
                }
            }
        }
        self.trim_unregistered_builds().await
    }

    async fn unregistered_builds(&self) -> Result<Vec<UnregisteredBuild>, StoreError> {
        all(self.unregistered().find(doc! {}).sort(doc! {
            "last_seen": -1, "app_id": 1, "platform": 1, "version_name": 1, "version_code": 1,
        }))
        .await?
        .into_iter()
        .map(UnregisteredBuildDoc::into_build)
        .collect()
    }

    async fn delete_unregistered_build(&self, key: &ReleaseKey) -> Result<(), StoreError> {
        self.unregistered()
            .delete_one(build_key(key))
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn find_devices(
        &self,
        app_id: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<SeenDevice>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let stats = self.db.collection::<Document>("stats_events");
        // The device with that id (if it has no events it matches nothing below) and those
        // with that custom id; then each one's latest event, so what is shown is the device's
        // latest state rather than that of its latest event that matched.
        let by_custom_id: Vec<Document> = all(stats.aggregate([
            doc! {"$match": {"app_id": app_id, "custom_id": id}},
            doc! {"$group": {"_id": "$device_id"}},
        ]))
        .await?;
        let devices: Vec<Bson> = std::iter::once(Bson::from(id.to_ascii_lowercase()))
            .chain(
                by_custom_id
                    .into_iter()
                    .filter_map(|d| d.get("_id").cloned()),
            )
            .collect();
        let latest: Vec<Document> = all(stats.aggregate([
            doc! {"$match": {"app_id": app_id, "device_id": {"$in": devices}}},
            doc! {"$sort": {"occurred_at": -1}},
            doc! {"$group": {
                "_id": "$device_id",
                "custom_id": {"$first": "$custom_id"},
                "platform": {"$first": "$platform"},
                "version_name": {"$first": "$version_name"},
                "last_seen": {"$first": "$occurred_at"},
            }},
            doc! {"$sort": {"last_seen": -1, "_id": 1}},
            doc! {"$limit": i64::try_from(limit).unwrap_or(i64::MAX)},
        ]))
        .await?;
        latest
            .iter()
            .map(|d| {
                let text = |field: &str| d.get_str(field).ok().map(str::to_string);
                Ok(SeenDevice {
                    device_id: d
                        .get_str("_id")
                        .map_err(|e| StoreError::internal("stats_events device_id", e))?
                        .to_string(),
                    custom_id: text("custom_id"),
                    platform: text("platform"),
                    version_name: text("version_name"),
                    last_seen: d
                        .get_datetime("last_seen")
                        .map(|at| millis(*at))
                        .map_err(|e| StoreError::internal("stats_events occurred_at", e))?,
                })
            })
            .collect()
    }
}
