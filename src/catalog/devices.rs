//! What devices ask and report: the target of an update check (cached), the channels an app
//! has, and device stats with their per-bundle activity.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::target_cache::{Lookup, Resolution, TargetKey};
use super::{Catalog, CatalogError};
use crate::domain::channel::Channel;
use crate::domain::device::{DeviceInfo, DeviceRefusal};
use crate::domain::stats::{self, StatsEvent};
use crate::domain::update::ChannelTarget;
use crate::domain::{now_millis, Bundle, ChannelName, UnixMillis};
use crate::error::Chain;

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

impl Catalog {
    /// What the device's release and channel serve now (cached; see [`super::TargetCache`]).
    /// When the metadata store is unreachable, the last known answer is served, however old.
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
            (Err(error @ CatalogError::Unavailable { .. }), Some(last_known)) => {
                tracing::warn!(error = %Chain(&error), release = %key.release, "storage unavailable: serving the last known answer");
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
}
