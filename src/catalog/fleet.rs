//! The fleet overview's counts: written in batches off the request path, and the retention
//! of what devices report.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fleet_tally::Tally;
use super::{Catalog, CatalogError};
use crate::domain::fleet::{
    adoption, bundle_health, channel_devices, failures_by_day, Adoption, BundleHealth,
    ChannelDevices, DailyFailures, FleetCount, FleetKey,
};
use crate::domain::now_millis;
use crate::domain::rollout::Rollout;
use crate::domain::stats::{day_of, DAY_MILLIS};
use crate::domain::targeting::UnregisteredBuild;
use crate::domain::{ChannelName, RecordId, Release, UnixMillis};
use crate::error::Chain;

/// Most notes kept for the next flush when a flush fails (the store is down): past it the
/// oldest tallies are dropped.
const MAX_PENDING_NOTES: usize = super::fleet_tally::MAX_NOTES;
/// Tallies turned into sketches and written per store call, which bounds the memory a flush
/// takes (a sketch is up to 4 KiB).
const WRITE_CHUNK: usize = 256;

/// What the retention job removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Retained {
    pub stats_events: u64,
    pub fleet_counts: u64,
}

impl Catalog {
    /// Every `every`, merges what checks and reports noted into the store's daily counts, in
    /// one batch; a failed batch is merged into the next.
    pub async fn record_fleet_periodically(&self, every: Duration, shutdown: CancellationToken) {
        let mut pending: Vec<Tally> = Vec::new();
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = shutdown.run_until_cancelled(ticks.tick()).await.is_none();
            pending.extend(self.fleet.take());
            let mut notes: usize = pending.iter().map(Tally::notes).sum();
            while notes > MAX_PENDING_NOTES && !pending.is_empty() {
                notes -= pending.remove(0).notes();
            }
            if let Err(e) = self.write_tallies(&mut pending).await {
                tracing::warn!(tallies = pending.len(), error = %Chain(&e), "could not write the fleet counts; retrying with the next batch");
            }
            if stopping {
                return;
            }
        }
    }

    /// Writes `tallies` a chunk at a time; what could not be written stays in it.
    async fn write_tallies(&self, tallies: &mut Vec<Tally>) -> Result<(), CatalogError> {
        while !tallies.is_empty() {
            let chunk = tallies.len().min(WRITE_CHUNK);
            let counts: Vec<FleetCount> = tallies[..chunk].iter().map(Tally::to_count).collect();
            self.metadata.record_fleet_counts(&counts).await?;
            tallies.drain(..chunk);
        }
        Ok(())
    }

    /// Writes what was noted now (tests, shutdown).
    pub async fn flush_fleet_counts(&self) -> Result<(), CatalogError> {
        self.write_tallies(&mut self.fleet.take()).await
    }

    /// Removes raw stats events older than `stats` and daily counts of days older than
    /// `fleet` (whole days: a day is kept while any of it is within the window).
    pub async fn apply_retention(
        &self,
        stats: Duration,
        fleet: Duration,
    ) -> Result<Retained, CatalogError> {
        let now = now_millis();
        let millis = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let stats_events = self
            .metadata
            .delete_stats_before(now.saturating_sub(millis(stats)))
            .await?;
        let oldest_day = day_of(now.saturating_sub(millis(fleet)));
        let fleet_counts = self
            .metadata
            .delete_fleet_counts_before(oldest_day.min(day_of(now) - DAY_MILLIS))
            .await?;
        Ok(Retained {
            stats_events,
            fleet_counts,
        })
    }
}

impl Catalog {
    /// An app's daily counts of the last `days` days (today included).
    pub async fn fleet_counts(
        &self,
        app_id: &str,
        days: u32,
    ) -> Result<Vec<FleetCount>, CatalogError> {
        let today = day_of(now_millis());
        let since = today - DAY_MILLIS * i64::from(days.saturating_sub(1));
        Ok(self.metadata.fleet_counts(app_id, since).await?)
    }
}

/// What a release manager opens first: where an app's fleet is (see `apps.overview`).
#[derive(Debug, Clone)]
pub struct FleetOverview {
    pub app_id: String,
    /// The UTC day the figures end with.
    pub today: UnixMillis,
    pub releases: Vec<ReleaseFleet>,
    /// Bundles devices reported about in the week, worst failure rate first.
    pub bundles: Vec<BundleHealth>,
    pub failures_by_day: Vec<DailyFailures>,
    /// Native builds devices ask about that have no release.
    pub unregistered_builds: Vec<UnregisteredBuild>,
}

#[derive(Debug, Clone)]
pub struct ReleaseFleet {
    pub release: Release,
    pub channels: Vec<ChannelFleet>,
}

#[derive(Debug, Clone)]
pub struct ChannelFleet {
    pub channel: ChannelName,
    /// The version name of the bundle the channel serves (`None` if it is missing).
    pub serves: Option<String>,
    pub devices: ChannelDevices,
    /// How the bundle it serves spread over the channel's devices.
    pub adoption: Adoption,
    /// The channel's rollout, while one is active.
    pub rollout: Option<Rollout>,
}

/// Days of counts the overview reads (its charts' span).
pub const OVERVIEW_DAYS: u32 = 30;

impl Catalog {
    /// [`FleetOverview`] of `app_id`.
    pub async fn fleet_overview(&self, app_id: &str) -> Result<FleetOverview, CatalogError> {
        let today = day_of(now_millis());
        let counts = self.fleet_counts(app_id, OVERVIEW_DAYS).await?;
        let versions: HashMap<RecordId, String> = self
            .metadata
            .list_bundles()
            .await?
            .into_iter()
            .filter(|b| b.app_id == app_id)
            .map(|b| (b.id, b.version_name))
            .collect();
        let rollouts = self.list_rollouts().await?;
        let mut releases = Vec::new();
        for release in self.list_releases().await? {
            if release.key.app_id != app_id {
                continue;
            }
            // Channels the release sets, production, and any its devices checked in on.
            let mut channels: BTreeSet<ChannelName> = release.channels.keys().cloned().collect();
            channels.insert(ChannelName::default_channel());
            channels.extend(counts.iter().filter_map(|c| match &c.key {
                FleetKey::Check {
                    release: key,
                    channel,
                    ..
                } if *key == release.key => Some(channel.clone()),
                _ => None,
            }));
            let channels = channels
                .into_iter()
                .map(|channel| {
                    let serves = versions.get(release.bundle_for(&channel)).cloned();
                    ChannelFleet {
                        devices: channel_devices(&counts, &release.key, &channel, today),
                        adoption: adoption(
                            &counts,
                            &release.key,
                            &channel,
                            serves.as_deref().unwrap_or_default(),
                        ),
                        rollout: rollouts
                            .iter()
                            .find(|r| {
                                r.release_id == release.id
                                    && r.channel == channel
                                    && r.progress.phase.is_active()
                            })
                            .cloned(),
                        serves,
                        channel,
                    }
                })
                .collect();
            releases.push(ReleaseFleet { release, channels });
        }
        let unregistered_builds = self
            .unregistered_builds()
            .await?
            .into_iter()
            .filter(|b| b.key.app_id == app_id)
            .collect();
        Ok(FleetOverview {
            app_id: app_id.to_string(),
            today,
            releases,
            bundles: bundle_health(&counts, today),
            failures_by_day: failures_by_day(&counts),
            unregistered_builds,
        })
    }
}
