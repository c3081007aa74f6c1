//! Channel settings and device overrides as people (REST, UI) and `Channel` resources change
//! them, the devices people look up to put on a channel, and the native builds devices run
//! that have no release yet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Catalog, CatalogError};
use crate::domain::channel_policy::{ChannelRules, ChannelSettings, UpdatePolicy};
use crate::domain::ownership::{check_may_change, OwnershipRefusal};
use crate::domain::targeting::{
    parse_device_id, DeviceOverride, OverrideSource, UnregisteredBuild, MAX_DEVICES_PER_REQUEST,
};
use crate::domain::{now_millis, Actor, ChannelName, ReleaseKey, ResourceRef};
use crate::error::Chain;
use crate::store::SeenDevice;

/// A change to a channel's settings: fields left `None` keep their value.
#[derive(Debug, Clone, Default)]
pub struct ChannelRulesChange {
    pub allow_ios: Option<bool>,
    pub allow_android: Option<bool>,
    pub allow_electron: Option<bool>,
    pub allow_emulator: Option<bool>,
    pub allow_device: Option<bool>,
    pub allow_dev_build: Option<bool>,
    pub allow_prod_build: Option<bool>,
    /// `none`, `major`, `minor`, `patch` or `version_number`.
    pub update_policy: Option<String>,
    pub block_under_native: Option<bool>,
    pub allow_device_self_set: Option<bool>,
}

impl ChannelRulesChange {
    fn apply_to(self, rules: &mut ChannelRules) -> Result<(), CatalogError> {
        let set = |target: &mut bool, value: Option<bool>| {
            if let Some(value) = value {
                *target = value;
            }
        };
        set(&mut rules.allow_ios, self.allow_ios);
        set(&mut rules.allow_android, self.allow_android);
        set(&mut rules.allow_electron, self.allow_electron);
        set(&mut rules.allow_emulator, self.allow_emulator);
        set(&mut rules.allow_device, self.allow_device);
        set(&mut rules.allow_dev_build, self.allow_dev_build);
        set(&mut rules.allow_prod_build, self.allow_prod_build);
        set(&mut rules.block_under_native, self.block_under_native);
        set(&mut rules.allow_device_self_set, self.allow_device_self_set);
        if let Some(policy) = self.update_policy {
            rules.update_policy = policy.parse::<UpdatePolicy>()?;
        }
        Ok(())
    }
}

/// What a Kubernetes `Channel` asks for: the channel's settings and the devices forced onto it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredChannel {
    pub app_id: String,
    pub channel: ChannelName,
    pub rules: ChannelRules,
    /// Device ids as written in the resource (checked and lowercased here).
    pub devices: Vec<String>,
    pub owner: ResourceRef,
    /// The resource asks to take over settings made through the API (its adopt annotation).
    pub adopt: bool,
}

/// A channel of an app as people see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelOverview {
    /// The numeric id devices see in `listChannels`.
    pub id: Option<i64>,
    pub settings: ChannelSettings,
    /// Whether settings were stored (otherwise these are the defaults).
    pub configured: bool,
    /// Devices forced onto it (by people or resources) and devices that chose it themselves.
    pub forced_devices: usize,
    pub chosen_by_devices: usize,
}

/// A device found by id, with the override it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLookup {
    pub device_id: String,
    pub seen: Option<SeenDevice>,
    pub assigned: Option<DeviceOverride>,
}

impl Catalog {
    /// A channel's settings: the stored ones, or the defaults.
    pub(super) async fn channel_settings_of(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<ChannelSettings, CatalogError> {
        Ok(self
            .metadata
            .channel_settings(Some(app_id))
            .await?
            .into_iter()
            .find(|s| &s.channel == channel)
            .unwrap_or_else(|| ChannelSettings::defaults(app_id, channel.clone())))
    }

    pub(super) async fn settings_by_channel(
        &self,
        app_id: &str,
    ) -> Result<BTreeMap<ChannelName, ChannelRules>, CatalogError> {
        Ok(self
            .metadata
            .channel_settings(Some(app_id))
            .await?
            .into_iter()
            .map(|s| (s.channel, s.rules))
            .collect())
    }

    /// The apps the server knows: those with a release or configured channels.
    async fn known_apps(&self) -> Result<BTreeSet<String>, CatalogError> {
        let mut apps: BTreeSet<String> = self
            .metadata
            .list_releases()
            .await?
            .into_iter()
            .map(|r| r.key.app_id)
            .collect();
        apps.extend(
            self.metadata
                .channel_settings(None)
                .await?
                .into_iter()
                .map(|s| s.app_id),
        );
        Ok(apps)
    }

    /// Every channel of `app_id` (all known apps when `None`) with its settings and how many
    /// devices are on it by override, by app then channel.
    pub async fn list_channels(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<ChannelOverview>, CatalogError> {
        let apps = match app_id {
            Some(app_id) => BTreeSet::from([app_id.to_string()]),
            None => self.known_apps().await?,
        };
        let mut overviews = Vec::new();
        for app_id in apps {
            let mut settings: BTreeMap<ChannelName, ChannelSettings> = self
                .metadata
                .channel_settings(Some(&app_id))
                .await?
                .into_iter()
                .map(|s| (s.channel.clone(), s))
                .collect();
            let overrides = self.metadata.device_overrides(&app_id).await?;
            let mut ids: BTreeMap<ChannelName, Option<i64>> = self
                .metadata
                .channels(&app_id)
                .await?
                .into_iter()
                .map(|c| (c.name, Some(c.id)))
                .collect();
            for channel in settings.keys() {
                ids.entry(channel.clone()).or_insert(None);
            }
            for (channel, id) in ids {
                let stored = settings.remove(&channel);
                let on_it = |forced: bool| {
                    overrides
                        .iter()
                        .filter(|o| o.channel == channel && o.source.is_forced() == forced)
                        .count()
                };
                overviews.push(ChannelOverview {
                    id,
                    configured: stored.is_some(),
                    forced_devices: on_it(true),
                    chosen_by_devices: on_it(false),
                    settings: stored
                        .unwrap_or_else(|| ChannelSettings::defaults(&app_id, channel.clone())),
                });
            }
        }
        Ok(overviews)
    }

    /// Changes a channel's settings (the app must have a release); creates the channel when it
    /// is new. Refused for settings a `Channel` resource manages.
    pub async fn configure_channel(
        &self,
        app_id: &str,
        channel: &str,
        change: ChannelRulesChange,
        actor: &Actor,
    ) -> Result<ChannelSettings, CatalogError> {
        let channel = ChannelName::parse(channel)?;
        self.require_known_app(app_id).await?;
        let mut settings = self.channel_settings_of(app_id, &channel).await?;
        check_may_change(settings.owner.as_ref(), actor).map_err(|refusal| {
            CatalogError::owned(refusal, &format!("channel {channel} of {app_id}"))
        })?;
        change.apply_to(&mut settings.rules)?;
        settings.updated_at = now_millis();
        self.metadata.put_channel_settings(&settings).await?;
        self.targets.invalidate();
        Ok(settings)
    }

    async fn require_known_app(&self, app_id: &str) -> Result<(), CatalogError> {
        if self.metadata.channels(app_id).await?.is_empty() {
            return Err(CatalogError::NotFound(format!(
                "app {app_id} has no release: register one of its native builds first"
            )));
        }
        Ok(())
    }

    /// Converges a channel to what its `Channel` resource asks for: its settings, and exactly
    /// the listed devices forced onto it by this resource. Settings made through the API are
    /// only taken over when the resource adopts them. Returns whether anything was written.
    pub async fn apply_channel(&self, desired: &DesiredChannel) -> Result<bool, CatalogError> {
        let devices = if desired.devices.is_empty() {
            Vec::new()
        } else {
            parse_device_ids(&desired.devices, "spec.devices")?
        };
        let actor = if desired.adopt {
            Actor::AdoptingResource(desired.owner.clone())
        } else {
            Actor::Resource(desired.owner.clone())
        };
        let current = self
            .channel_settings_of(&desired.app_id, &desired.channel)
            .await?;
        let stored = self
            .metadata
            .channel_settings(Some(&desired.app_id))
            .await?
            .into_iter()
            .any(|s| s.channel == desired.channel);
        if stored {
            check_may_change(current.owner.as_ref(), &actor).map_err(|refusal| {
                CatalogError::owned(
                    refusal,
                    &format!("channel {} of {}", desired.channel, desired.app_id),
                )
            })?;
        }
        let source = OverrideSource::Resource(desired.owner.clone());
        let existing: Vec<DeviceOverride> = self.metadata.device_overrides(&desired.app_id).await?;
        // A device another resource forces stays with it: two resources would otherwise take
        // it from each other at each resync, both reporting success. A device people forced
        // through the API is taken over only when the resource adopts (as for releases).
        for held in existing.iter().filter(|o| devices.contains(&o.device_id)) {
            let refusal = match &held.source {
                OverrideSource::Resource(other) if other != &desired.owner => {
                    OwnershipRefusal::ManagedBy(other.clone())
                }
                OverrideSource::Api if !desired.adopt => {
                    OwnershipRefusal::NotAdopted(desired.owner.clone())
                }
                _ => continue,
            };
            return Err(CatalogError::owned(
                refusal,
                &format!("the channel of device {}", held.device_id),
            ));
        }
        let mut written = false;
        if current.rules != desired.rules || current.owner.as_ref() != Some(&desired.owner) {
            self.metadata
                .put_channel_settings(&ChannelSettings {
                    app_id: desired.app_id.clone(),
                    channel: desired.channel.clone(),
                    rules: desired.rules.clone(),
                    owner: Some(desired.owner.clone()),
                    updated_at: now_millis(),
                })
                .await?;
            written = true;
        }
        let wanted: BTreeSet<&str> = devices.iter().map(String::as_str).collect();
        let have: BTreeSet<&str> = existing
            .iter()
            .filter(|o| o.source == source && o.channel == desired.channel)
            .map(|o| o.device_id.as_str())
            .collect();
        let others_of_owner = existing
            .iter()
            .any(|o| o.source == source && o.channel != desired.channel);
        if wanted != have || others_of_owner {
            let now = now_millis();
            let overrides: Vec<DeviceOverride> = devices
                .iter()
                .map(|device_id| DeviceOverride {
                    app_id: desired.app_id.clone(),
                    device_id: device_id.clone(),
                    channel: desired.channel.clone(),
                    source: source.clone(),
                    updated_at: now,
                })
                .collect();
            self.metadata
                .replace_resource_overrides(&source, &overrides)
                .await?;
            written = true;
        }
        if written {
            self.targets.invalidate();
        }
        Ok(written)
    }

    /// What a deleted `Channel` resource leaves: its settings go back to the defaults and its
    /// devices are released.
    pub async fn release_channel(
        &self,
        owner: &ResourceRef,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<(), CatalogError> {
        let settings = self.channel_settings_of(app_id, channel).await?;
        if settings.owner.as_ref() == Some(owner) {
            self.metadata
                .delete_channel_settings(app_id, channel)
                .await?;
        }
        self.metadata
            .replace_resource_overrides(&OverrideSource::Resource(owner.clone()), &[])
            .await?;
        self.targets.invalidate();
        Ok(())
    }

    /// The devices of an app that have an override, by device id.
    pub async fn device_overrides(
        &self,
        app_id: &str,
    ) -> Result<Vec<DeviceOverride>, CatalogError> {
        Ok(self.metadata.device_overrides(app_id).await?)
    }

    /// Forces devices onto a channel of their app (it must exist). Refused, changing nothing,
    /// when a `Channel` resource manages one of them.
    pub async fn force_devices(
        &self,
        app_id: &str,
        device_ids: &[String],
        channel: &str,
    ) -> Result<Vec<DeviceOverride>, CatalogError> {
        let devices = parse_device_ids(device_ids, "device_ids")?;
        let channel = ChannelName::parse(channel)?;
        if !channel.is_default()
            && !self
                .metadata
                .channels(app_id)
                .await?
                .iter()
                .any(|c| c.name == channel)
        {
            return Err(CatalogError::Invalid(format!(
                "channel: {app_id} has no channel {channel:?} (a release must assign it, or configure it first)"
            )));
        }
        self.require_known_app(app_id).await?;
        self.check_not_managed(app_id, &devices).await?;
        let now = now_millis();
        let overrides: Vec<DeviceOverride> = devices
            .into_iter()
            .map(|device_id| DeviceOverride {
                app_id: app_id.to_string(),
                device_id,
                channel: channel.clone(),
                source: OverrideSource::Api,
                updated_at: now,
            })
            .collect();
        self.metadata.put_device_overrides(&overrides).await?;
        self.targets.invalidate();
        Ok(overrides)
    }

    /// Removes the overrides of these devices (forced or chosen); how many. Refused, changing
    /// nothing, when a `Channel` resource manages one of them.
    pub async fn release_devices(
        &self,
        app_id: &str,
        device_ids: &[String],
    ) -> Result<u64, CatalogError> {
        let devices = parse_device_ids(device_ids, "device_ids")?;
        self.check_not_managed(app_id, &devices).await?;
        let removed = self
            .metadata
            .delete_device_overrides(app_id, &devices, None)
            .await?;
        self.targets.invalidate();
        Ok(removed)
    }

    async fn check_not_managed(
        &self,
        app_id: &str,
        devices: &[String],
    ) -> Result<(), CatalogError> {
        let overrides = self.metadata.device_overrides(app_id).await?;
        for o in overrides.iter().filter(|o| devices.contains(&o.device_id)) {
            if let OverrideSource::Resource(owner) = &o.source {
                return Err(CatalogError::owned(
                    OwnershipRefusal::ManagedBy(owner.clone()),
                    &format!("the channel of device {}", o.device_id),
                ));
            }
        }
        Ok(())
    }

    /// Devices of an app by `device_id` or `custom_id`, from what they reported and the
    /// overrides (a device with an override is found even if it never reported anything).
    pub async fn find_devices(
        &self,
        app_id: &str,
        id: &str,
    ) -> Result<Vec<DeviceLookup>, CatalogError> {
        let id = id.trim();
        if id.is_empty() || id.len() > crate::domain::stats::MAX_DEVICE_ID_LEN {
            return Err(CatalogError::Invalid(
                "q: give a device_id or custom_id of 1 to 36 characters".into(),
            ));
        }
        let overrides = self.metadata.device_overrides(app_id).await?;
        let override_of =
            |device_id: &str| overrides.iter().find(|o| o.device_id == device_id).cloned();
        let mut found: Vec<DeviceLookup> = self
            .metadata
            .find_devices(app_id, id, 50)
            .await?
            .into_iter()
            .map(|seen| DeviceLookup {
                device_id: seen.device_id.clone(),
                assigned: override_of(&seen.device_id),
                seen: Some(seen),
            })
            .collect();
        let lowered = id.to_ascii_lowercase();
        if !found.iter().any(|d| d.device_id == lowered) {
            if let Some(assigned) = override_of(&lowered) {
                found.insert(
                    0,
                    DeviceLookup {
                        device_id: lowered,
                        seen: None,
                        assigned: Some(assigned),
                    },
                );
            }
        }
        Ok(found)
    }

    /// Native builds devices ask about that have no release, seen most recently first.
    pub async fn unregistered_builds(&self) -> Result<Vec<UnregisteredBuild>, CatalogError> {
        self.flush_unregistered().await;
        Ok(self.metadata.unregistered_builds().await?)
    }

    /// Writes what was counted since the last flush (kept for the next one when it fails).
    pub async fn flush_unregistered(&self) {
        let builds = self.unregistered.take();
        if builds.is_empty() {
            return;
        }
        if let Err(e) = self.metadata.record_unregistered_builds(&builds).await {
            tracing::warn!(error = %Chain(&e), "cannot record the builds devices run without a release; retrying later");
            self.unregistered.restore(&builds);
        }
    }

    /// Flushes the unregistered-build counts every `every`, and once more at shutdown.
    pub async fn record_unregistered_periodically(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticks = super::ticker(every);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            self.flush_unregistered().await;
        }
        self.flush_unregistered().await;
    }

    /// A build that now has a release is no longer listed.
    pub(super) async fn forget_unregistered(&self, key: &ReleaseKey) {
        self.unregistered.forget(key);
        if let Err(e) = self.metadata.delete_unregistered_build(key).await {
            tracing::warn!(error = %Chain(&e), build = %key, "cannot remove a registered build from the unregistered list");
        }
    }
}

/// Device ids people or resources give: each checked, lowercased, without repeats.
fn parse_device_ids(ids: &[String], field: &str) -> Result<Vec<String>, CatalogError> {
    if ids.is_empty() {
        return Err(CatalogError::Invalid(format!(
            "{field}: name at least one device"
        )));
    }
    if ids.len() > MAX_DEVICES_PER_REQUEST {
        return Err(CatalogError::Invalid(format!(
            "{field}: at most {MAX_DEVICES_PER_REQUEST} devices at once"
        )));
    }
    let mut seen = BTreeSet::new();
    let mut parsed = Vec::with_capacity(ids.len());
    for id in ids {
        let id = parse_device_id(id).map_err(|e| CatalogError::Invalid(format!("{field}: {e}")))?;
        if seen.insert(id.clone()) {
            parsed.push(id);
        }
    }
    Ok(parsed)
}
