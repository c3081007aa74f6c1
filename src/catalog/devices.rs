//! What devices ask and report: the target of an update check (cached), the channels an app
//! has, and device stats with their per-bundle activity.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::target_cache::{
    CacheView, Canary, Lookup, OverrideMap, Resolution, Resolved, Served, TargetKey,
};
use super::{Catalog, CatalogError};
use crate::domain::channel::Channel;
use crate::domain::channel_policy::{ChannelChoice, ChannelRules, DeviceTraits};
use crate::domain::device::{DeviceInfo, DeviceRefusal, RefusalKind, BUILTIN_VERSION};
use crate::domain::manifest::{ManifestEntry, ServedManifest};
use crate::domain::rollout;
use crate::domain::stats::StatsEvent;
use crate::domain::targeting::{DeviceOverride, OverrideSource};
use crate::domain::update::{decide, ChannelTarget, UpdateAnswer};
use crate::domain::{now_millis, ChannelName, Release, ReleaseRef};
use crate::error::Chain;
use crate::store::{BundleRecord, ServedRecords, ServedRollout, StoreError};

/// An override that decides a device's channel.
struct FoundOverride {
    channel: ChannelName,
    choice: ChannelChoice,
}

/// The override of `overrides` that decides a device's channel, if any: forced ones always, a
/// choice the server remembered only for plugins that keep none themselves (a device that
/// updated its plugin follows its own choice again).
fn override_in(overrides: &OverrideMap, device: &DeviceInfo<'_>) -> Option<FoundOverride> {
    let found = overrides.get(device.device_id.as_ref())?;
    let choice = if found.source.is_forced() {
        ChannelChoice::Forced
    } else if device
        .plugin_version
        .is_some_and(|v| !v.keeps_channel_locally())
    {
        ChannelChoice::ByDevice
    } else {
        return None;
    };
    Some(FoundOverride {
        channel: found.channel.clone(),
        choice,
    })
}

/// The channel a device's check reads, and how the device came to be on it: the one an
/// override puts it on, else the one it asks for, else the default one.
fn channel_of<'a>(
    overridden: &'a Option<FoundOverride>,
    device: &'a DeviceInfo<'_>,
) -> (&'a ChannelName, ChannelChoice) {
    match overridden {
        Some(found) => (&found.channel, found.choice),
        None => match &device.channel {
            Some(channel) => (channel, ChannelChoice::ByDevice),
            None => (ChannelName::default_ref(), ChannelChoice::Default),
        },
    }
}

/// The override that decides a device's channel, and what `cache` knows about the channel.
fn look_up(
    cache: &CacheView<'_>,
    overrides: &OverrideMap,
    device: &DeviceInfo<'_>,
) -> (Option<FoundOverride>, Lookup) {
    let overridden = override_in(overrides, device);
    let lookup = cache.get(device.release, channel_of(&overridden, device).0);
    (overridden, lookup)
}

/// What a device's check resolved to: what its channel serves, and how it came to be on it.
pub struct DeviceTarget {
    pub resolution: Resolution,
    pub choice: ChannelChoice,
    /// The device is in the canary of the channel's rollout.
    pub in_canary: bool,
}

impl DeviceTarget {
    /// The answer the device gets.
    pub fn answer(&self, device: &DeviceInfo<'_>) -> UpdateAnswer {
        match self.resolution.as_ref() {
            Resolved::Target(served) => {
                let target = match &served.canary {
                    Some(canary) if self.in_canary => &canary.target,
                    _ => &served.stable,
                };
                decide(device, target, self.choice)
            }
            Resolved::Refused(refusal) | Resolved::Unregistered(refusal) => {
                UpdateAnswer::refused(refusal.clone())
            }
        }
    }
}

/// What `setChannel` (`POST /channel_self`) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelChange {
    Accepted,
    /// The app has no such channel.
    NotFound,
    /// The channel's settings do not let this device choose it.
    NotAllowed(DeviceRefusal),
    /// A person or a resource put the device on `channel`; the device cannot leave it.
    Forced(ChannelName),
}

/// What `getChannel` (`PUT /channel_self`) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceChannel {
    pub channel: ChannelName,
    /// True when the server decides it (an override or a remembered choice), not the device.
    pub overridden: bool,
}

impl Catalog {
    /// What the device's channel serves now (cached; see [`super::TargetCache`]), on the
    /// channel an override puts it on, else the one it asks for, else the default one.
    /// When the metadata store is unreachable, the last known answer is served, however old.
    /// A check answered from the caches awaits nothing; the reads of a miss are boxed, so
    /// every check's future stays the size of a hit's (it is moved as the request starts).
    pub async fn resolve_target(
        &self,
        device: &DeviceInfo<'_>,
    ) -> Result<DeviceTarget, CatalogError> {
        // The overrides and the answer under one read of the cache, when it knows both.
        let known = {
            let cache = self.targets.view();
            let overrides = cache.overrides(device.release.app_id);
            overrides.map(|overrides| look_up(&cache, overrides, device))
        };
        let (overridden, lookup) = match known {
            Ok(known) => known,
            Err(generation) => {
                let app_id = device.release.app_id;
                let overrides = Box::pin(self.read_overrides(app_id, generation)).await?;
                look_up(&self.targets.view(), &overrides, device)
            }
        };
        let (channel, choice) = channel_of(&overridden, device);
        let resolution = match lookup {
            Lookup::Fresh(resolution) => {
                crate::metrics::global().cache_lookup(true);
                resolution
            }
            Lookup::Stale(last_known, generation) => {
                Box::pin(self.load(device.release, channel, Some(last_known), generation)).await?
            }
            Lookup::Missing(generation) => {
                Box::pin(self.load(device.release, channel, None, generation)).await?
            }
        };
        let mut in_canary = false;
        match resolution.as_ref() {
            Resolved::Unregistered(_) => {
                self.unregistered.note(device.release, &device.device_id);
            }
            Resolved::Target(served) => {
                // Plugins 8.44+ on the builtin bundle send the native version as its name.
                let running = if device.runs_builtin() {
                    BUILTIN_VERSION
                } else {
                    device.version_name
                };
                self.fleet.note_check(
                    device.release,
                    channel,
                    running,
                    &device.device_id,
                    now_millis(),
                );
                if let Some(canary) = &served.canary {
                    let drawn = rollout::draw(&canary.salt, &device.device_id);
                    in_canary = drawn.bucket < canary.share;
                    if in_canary {
                        self.canaries
                            .answered(&canary.rollout_id, drawn.key, now_millis());
                    }
                }
            }
            Resolved::Refused(_) => {}
        }
        Ok(DeviceTarget {
            resolution,
            choice,
            in_canary,
        })
    }

    /// What the store says `release` on `channel` serves now (the answer cache missed or
    /// expired), remembered at `generation`; when the store is unreachable, `last_known`.
    async fn load(
        &self,
        release: ReleaseRef<'_>,
        channel: &ChannelName,
        last_known: Option<Resolution>,
        generation: u64,
    ) -> Result<Resolution, CatalogError> {
        crate::metrics::global().cache_lookup(false);
        let key = TargetKey {
            release: release.to_key(),
            channel: channel.clone(),
        };
        match (self.load_target(&key).await, last_known) {
            (Ok(resolved), _) => {
                let resolution = Arc::new(resolved);
                self.targets.store(key, generation, resolution.clone());
                Ok(resolution)
            }
            (Err(error @ CatalogError::Unavailable { .. }), Some(last_known)) => {
                tracing::warn!(error = %Chain(&error), %release, "storage unavailable: serving the last known answer");
                Ok(self.with_fresh_url(last_known).await)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// An app's overrides (cached until the next write). When the store is unreachable and
    /// they are not known, there are none: devices then follow their own choice.
    pub(super) async fn overrides_of(&self, app_id: &str) -> Result<OverrideMap, CatalogError> {
        match self.targets.overrides(app_id) {
            Ok(overrides) => Ok(overrides),
            // Boxed: the read's state would make every check's future larger.
            Err(generation) => Box::pin(self.read_overrides(app_id, generation)).await,
        }
    }

    /// An app's overrides as the store has them, remembered at `generation`.
    async fn read_overrides(
        &self,
        app_id: &str,
        generation: u64,
    ) -> Result<OverrideMap, CatalogError> {
        match self.metadata.device_overrides(app_id).await {
            Ok(list) => {
                let overrides: OverrideMap =
                    Arc::new(list.into_iter().map(|o| (o.device_id.clone(), o)).collect());
                self.targets
                    .store_overrides(app_id, generation, overrides.clone());
                Ok(overrides)
            }
            Err(error @ StoreError::Unavailable { .. }) => {
                tracing::warn!(error = %Chain(&error), app_id, "storage unavailable: devices follow their own channel until it is back");
                Ok(OverrideMap::default())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Re-signs the download URLs of an old resolution (presigned URLs expire); signing is
    /// local.
    async fn with_fresh_url(&self, resolution: Resolution) -> Resolution {
        let Resolved::Target(served) = resolution.as_ref() else {
            return resolution;
        };
        let mut fresh = (**served).clone();
        let Ok(url) = self.download_url(&fresh.stable.bundle).await else {
            return resolution;
        };
        fresh.stable.url = url;
        if let Some(canary) = &mut fresh.canary {
            let Ok(url) = self.download_url(&canary.target.bundle).await else {
                return resolution;
            };
            canary.target.url = url;
        }
        Arc::new(Resolved::Target(Box::new(fresh)))
    }

    async fn load_target(&self, key: &TargetKey) -> Result<Resolved, CatalogError> {
        let Some(records) = self
            .metadata
            .served_records(&key.release, &key.channel)
            .await?
        else {
            // Quiet (`blocked`): a `failed` answer makes plugins 8.45.11+ report a
            // `download_fail` on every launch until someone registers the build.
            let refusal = DeviceRefusal {
                error: "no_release",
                message: format!("No release is registered for {}", key.release),
                kind: RefusalKind::Blocked,
                store_update: None,
            };
            let app_known = !self
                .metadata
                .channels(&key.release.app_id)
                .await?
                .is_empty();
            return Ok(if app_known {
                Resolved::Unregistered(refusal)
            } else {
                Resolved::Refused(refusal)
            });
        };
        let ServedRecords {
            release,
            bundle,
            settings,
            rollout,
        } = records;
        let Some(bundle) = bundle else {
            return Ok(Resolved::Refused(DeviceRefusal::failed(
                "no_bundle",
                format!("The bundle of channel {} is missing", key.channel),
            )));
        };
        let rules = settings.map(|s| s.rules).unwrap_or_default();
        let canary = match rollout {
            Some(ServedRollout {
                rollout,
                canary: Some(canary),
            }) => Some(Canary {
                share: rollout.share(),
                rollout_id: rollout.id,
                salt: rollout.salt,
                target: self
                    .channel_target(&release, &key.channel, canary, rules.clone())
                    .await?,
            }),
            Some(ServedRollout { rollout, .. }) => {
                tracing::warn!(rollout = %rollout.id, "the canary bundle of a rollout is missing; its devices get the stable bundle");
                None
            }
            None => None,
        };
        Ok(Resolved::Target(Box::new(Served {
            stable: self
                .channel_target(&release, &key.channel, bundle, rules)
                .await?,
            canary,
        })))
    }

    /// What a channel of `release` serves when it serves `bundle`: its download URLs and
    /// manifest resolved once for every device.
    async fn channel_target(
        &self,
        release: &Release,
        channel: &ChannelName,
        BundleRecord { bundle, manifest }: BundleRecord,
        rules: ChannelRules,
    ) -> Result<ChannelTarget, CatalogError> {
        let is_builtin = bundle.id == release.builtin_bundle_id;
        let manifest = match manifest {
            Some(entries) if !is_builtin => {
                let mut urls = HashMap::new();
                for key in entries.iter().flat_map(ManifestEntry::object_keys) {
                    if !urls.contains_key(key) {
                        urls.insert(key.to_string(), self.blobs.download_url(key).await?);
                    }
                }
                Some(ServedManifest::new(&entries, |key| urls[key].clone()))
            }
            _ => None,
        };
        Ok(ChannelTarget {
            channel: channel.clone(),
            url: self.download_url(&bundle).await?,
            is_builtin,
            bundle,
            rules,
            manifest,
            memo: Default::default(),
        })
    }

    /// Follows changes other replicas make: clears the answer cache whenever the store's
    /// catalog version moves. Returns at once for a store only this process writes.
    pub async fn follow_external_changes(&self, every: Duration, shutdown: CancellationToken) {
        let mut last = None;
        let mut failing = false;
        let mut ticks = super::ticker(every);
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
                        tracing::warn!(error = %Chain(&e), "cannot check the catalog for other replicas' changes");
                    }
                    failing = true;
                }
            }
        }
    }

    pub async fn channels(&self, app_id: &str) -> Result<Vec<Channel>, CatalogError> {
        Ok(self.metadata.channels(app_id).await?)
    }

    /// The channels a device may choose itself (`listChannels`), with whether each is the
    /// default one: those of its app whose settings allow this device to pick them.
    pub async fn channels_for_device(
        &self,
        app_id: &str,
        device: DeviceTraits,
    ) -> Result<Vec<(Channel, ChannelRules)>, CatalogError> {
        let settings = self.settings_by_channel(app_id).await?;
        Ok(self
            .channels(app_id)
            .await?
            .into_iter()
            .filter_map(|channel| {
                let rules = settings.get(&channel.name).cloned().unwrap_or_default();
                rules
                    .check_self_set(&channel.name, device)
                    .is_ok()
                    .then_some((channel, rules))
            })
            .collect())
    }

    /// `setChannel`: whether the device may choose `channel`, and for plugins that keep no
    /// channel of their own (`remember`), the server remembers the choice (one record per
    /// device, replaced by its next choice).
    pub async fn choose_channel(
        &self,
        app_id: &str,
        device_id: &str,
        device: DeviceTraits,
        channel: &ChannelName,
        remember: bool,
    ) -> Result<ChannelChange, CatalogError> {
        if !channel.is_default()
            && !self
                .channels(app_id)
                .await?
                .iter()
                .any(|c| &c.name == channel)
        {
            return Ok(ChannelChange::NotFound);
        }
        let overrides = self.overrides_of(app_id).await?;
        if let Some(forced) = overrides.get(device_id).filter(|o| o.source.is_forced()) {
            if &forced.channel != channel {
                return Ok(ChannelChange::Forced(forced.channel.clone()));
            }
        }
        let rules = self.channel_settings_of(app_id, channel).await?.rules;
        if let Err(refusal) = rules.check_self_set(channel, device) {
            return Ok(ChannelChange::NotAllowed(refusal));
        }
        if remember {
            let choice = DeviceOverride {
                app_id: app_id.to_string(),
                device_id: device_id.to_string(),
                channel: channel.clone(),
                source: OverrideSource::Device,
                updated_at: now_millis(),
            };
            let unchanged = overrides
                .get(device_id)
                .is_some_and(|o| o.source == OverrideSource::Device && &o.channel == channel);
            if !unchanged {
                let stored = self.metadata.put_device_choice(&choice).await?;
                self.targets.invalidate_overrides(app_id);
                if !stored {
                    // Forced by someone else a moment ago.
                    let forced = self.overrides_of(app_id).await?;
                    let channel = forced.get(device_id).map_or(channel, |o| &o.channel);
                    return Ok(ChannelChange::Forced(channel.clone()));
                }
            }
        }
        Ok(ChannelChange::Accepted)
    }

    /// `getChannel`: the channel the server puts the device on, else the one it sent
    /// (`requested`), else the default one.
    pub async fn channel_of_device(
        &self,
        app_id: &str,
        device_id: Option<&str>,
        requested: Option<ChannelName>,
    ) -> Result<DeviceChannel, CatalogError> {
        let overrides = self.overrides_of(app_id).await?;
        Ok(match device_id.and_then(|id| overrides.get(id)) {
            Some(found) => DeviceChannel {
                channel: found.channel.clone(),
                overridden: true,
            },
            None => DeviceChannel {
                channel: requested.unwrap_or_else(ChannelName::default_channel),
                overridden: false,
            },
        })
    }

    /// `unsetChannel` of old plugins: forgets the choice the server remembered for the device
    /// (a forced override stays).
    pub async fn forget_device_choice(
        &self,
        app_id: &str,
        device_id: &str,
    ) -> Result<(), CatalogError> {
        let removed = self
            .metadata
            .delete_device_overrides(
                app_id,
                &[device_id.to_string()],
                Some(&OverrideSource::Device),
            )
            .await?;
        if removed > 0 {
            self.targets.invalidate_overrides(app_id);
        }
        Ok(())
    }

    pub async fn record_stats(&self, events: &[StatsEvent]) -> Result<(), CatalogError> {
        if events.is_empty() {
            return Ok(());
        }
        self.metadata.insert_stats(events).await?;
        self.canaries.reported(events);
        self.fleet.note_reports(events);
        Ok(())
    }
}
