//! The fleet overview's counts: written in batches off the request path, and the retention
//! of what devices report.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::fleet_tally::Tally;
use super::{Catalog, CatalogError};
use crate::domain::device::BUILTIN_VERSION;
use crate::domain::fleet::{
    adoption, bundle_health, channel_devices, failures_by_day, Adoption, BundleHealth,
    ChannelDevices, DailyFailures, FleetCount, FleetCounts, FleetKey, Span, HOURLY_DAYS,
    OTHER_BUNDLE,
};
use crate::domain::now_millis;
use crate::domain::rollout::Rollout;
use crate::domain::sketch::DistinctSketch;
use crate::domain::stats::{self, day_of, ActivityKind, DAY_MILLIS};
use crate::domain::targeting::UnregisteredBuild;
use crate::domain::{Bundle, ChannelName, RecordId, Release, ReleaseKey, UnixMillis};
use crate::error::Chain;
use crate::metrics::GaugeFamily;

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
    /// Every `every`, merges what checks and reports noted into the store's daily and hourly
    /// counts, in one batch; a failed batch is merged into the next.
    pub async fn record_fleet_periodically(&self, every: Duration, shutdown: CancellationToken) {
        let mut pending: Vec<Tally> = Vec::new();
        let mut ticks = super::ticker(every);
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

    /// Writes `tallies` a chunk at a time, within what the catalog has
    /// ([`CatalogBounds`]); what could not be written stays in it.
    async fn write_tallies(&self, tallies: &mut Vec<Tally>) -> Result<(), CatalogError> {
        if tallies.is_empty() {
            return Ok(());
        }
        let bounds = self.catalog_bounds(tallies).await?;
        while !tallies.is_empty() {
            let chunk = tallies.len().min(WRITE_CHUNK);
            let counts: Vec<FleetCount> = tallies[..chunk]
                .iter()
                .flat_map(Tally::to_counts)
                .filter_map(|count| bounds.bound(count))
                .collect();
            self.metadata.record_fleet_counts(&counts).await?;
            tallies.drain(..chunk);
        }
        Ok(())
    }

    /// What the catalog has for the apps `tallies` are about.
    async fn catalog_bounds(&self, tallies: &[Tally]) -> Result<CatalogBounds, CatalogError> {
        let apps: HashSet<&str> = tallies.iter().map(|t| t.key().app_id()).collect();
        let mut bounds = CatalogBounds::default();
        if apps.is_empty() {
            return Ok(bounds);
        }
        for bundle in self.metadata.list_bundles().await? {
            if apps.contains(bundle.app_id.as_str()) {
                bounds.apps.insert(bundle.app_id.clone());
                bounds.bundles.insert((bundle.app_id, bundle.version_name));
            }
        }
        for release in self.list_releases().await? {
            if apps.contains(release.key.app_id.as_str()) {
                bounds.apps.insert(release.key.app_id.clone());
                bounds.releases.insert(release.key);
            }
        }
        for app in apps.into_iter().filter(|app| bounds.apps.contains(*app)) {
            let channels = self.metadata.channels(app).await?;
            bounds.channels.insert(
                app.to_string(),
                channels.into_iter().map(|c| c.name).collect(),
            );
        }
        Ok(bounds)
    }

    /// Writes what was noted now (tests, shutdown).
    pub async fn flush_fleet_counts(&self) -> Result<(), CatalogError> {
        self.write_tallies(&mut self.fleet.take()).await
    }

    /// Removes raw stats events older than `stats`, daily counts of days older than `fleet`
    /// (whole days: a day is kept while any of it is within the window), and hourly counts
    /// older than [`HOURLY_DAYS`].
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
        let daily = self
            .metadata
            .delete_fleet_counts_before(Span::Day, oldest_day.min(day_of(now) - DAY_MILLIS))
            .await?;
        let hourly = self
            .metadata
            .delete_fleet_counts_before(Span::Hour, now - DAY_MILLIS * HOURLY_DAYS)
            .await?;
        let fleet_counts = daily + hourly;
        Ok(Retained {
            stats_events,
            fleet_counts,
        })
    }
}

/// Notes not written yet, ready to be added to what the store has ([`Catalog::fleet_counts`]).
struct UnwrittenNotes {
    since: UnixMillis,
    tallies: Vec<Tally>,
    bounds: CatalogBounds,
}

/// What the fleet's counts may name, so devices cannot make them grow with made-up names:
/// reports about an app with no bundle or release and checks of builds with no release are
/// not counted (the unregistered builds list has those), a channel the app does not have is
/// counted as `production` (it is served like it), and a bundle the app does not have
/// (deleted, or made up) as [`OTHER_BUNDLE`].
#[derive(Default)]
struct CatalogBounds {
    /// Apps with a bundle or a release.
    apps: HashSet<String>,
    bundles: HashSet<(String, String)>,
    releases: HashSet<ReleaseKey>,
    channels: HashMap<String, HashSet<ChannelName>>,
}

impl CatalogBounds {
    fn bound(&self, mut count: FleetCount) -> Option<FleetCount> {
        let app_id = count.key.app_id().to_string();
        if !self.apps.contains(&app_id) {
            return None;
        }
        if let FleetKey::Check {
            release, channel, ..
        } = &mut count.key
        {
            if !self.releases.contains(release) {
                return None;
            }
            if !self
                .channels
                .get(&app_id)
                .is_some_and(|known| known.contains(channel))
            {
                *channel = ChannelName::default_channel();
            }
        }
        let bundle = count.key.bundle_mut();
        if bundle != BUILTIN_VERSION && !self.bundles.contains(&(app_id, bundle.clone())) {
            *bundle = OTHER_BUNDLE.to_string();
        }
        Some(count)
    }
}

impl Catalog {
    /// An app's counts of the last `days` days (today included), daily and hourly: what the
    /// store has, plus what this process noted and has not written yet (so a person sees
    /// their own test device at once; other replicas' notes arrive with their next flush).
    pub async fn fleet_counts(&self, app_id: &str, days: u32) -> Result<FleetCounts, CatalogError> {
        let apps = [app_id.to_string()];
        let unwritten = self.unwritten_notes(&apps, days).await?;
        self.app_fleet_counts(app_id, &unwritten).await
    }

    /// What this process noted for `apps` and has not written, with what bounds it: read once
    /// for several apps' counts.
    async fn unwritten_notes(
        &self,
        apps: &[String],
        days: u32,
    ) -> Result<UnwrittenNotes, CatalogError> {
        let since = Self::fleet_window_start(days);
        let tallies = self.fleet.pending(apps);
        let bounds = self.catalog_bounds(&tallies).await?;
        Ok(UnwrittenNotes {
            since,
            tallies,
            bounds,
        })
    }

    /// [`Catalog::fleet_counts`] of one app of `unwritten`. One app at a time: a count holds a
    /// 4 KiB sketch, and the counts of every app at once (the fleet gauges' apps) took tens of
    /// MiB for a few seconds each minute.
    async fn app_fleet_counts(
        &self,
        app_id: &str,
        unwritten: &UnwrittenNotes,
    ) -> Result<FleetCounts, CatalogError> {
        let since = unwritten.since;
        let mine = unwritten
            .tallies
            .iter()
            .filter(|tally| tally.key().app_id() == app_id)
            .flat_map(Tally::to_counts)
            .filter_map(|count| unwritten.bounds.bound(count))
            .filter(|count| count.start >= since);
        let stored = self.metadata.fleet_counts(app_id, since).await?;
        let mut merged: BTreeMap<(Span, UnixMillis, FleetKey), FleetCount> = BTreeMap::new();
        for count in stored.into_iter().chain(mine) {
            match merged.entry((count.span, count.start, count.key.clone())) {
                std::collections::btree_map::Entry::Occupied(mut stored) => {
                    stored.get_mut().merge(&count)
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(count);
                }
            }
        }
        Ok(merged.into_values().collect())
    }

    /// Only what the store has (tests).
    pub async fn stored_fleet_counts(
        &self,
        app_id: &str,
        days: u32,
    ) -> Result<FleetCounts, CatalogError> {
        let since = Self::fleet_window_start(days);
        Ok(self
            .metadata
            .fleet_counts(app_id, since)
            .await?
            .into_iter()
            .collect())
    }

    /// The first day of a window of `days` days ending today.
    fn fleet_window_start(days: u32) -> UnixMillis {
        day_of(now_millis()) - DAY_MILLIS * i64::from(days.saturating_sub(1))
    }
}

/// A bundle's device activity (see [`Catalog::bundle_activity`]), in distinct devices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BundleActivity {
    /// Devices per action over the whole period.
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
    /// What devices reported about one bundle over the last `days` days, from the fleet's
    /// daily counts (kept longer than raw stats): distinct devices per action over the
    /// period, and per day the devices that downloaded, installed and failed it.
    pub async fn bundle_activity(
        &self,
        bundle: &Bundle,
        days: u32,
    ) -> Result<BundleActivity, CatalogError> {
        let counts = self.fleet_counts(&bundle.app_id, days).await?.daily;
        let reports: Vec<(&FleetCount, ActivityKind)> = counts
            .iter()
            .filter_map(|count| match &count.key {
                FleetKey::Report {
                    bundle: b, action, ..
                } if *b == bundle.version_name => Some((count, ActivityKind::of(action))),
                _ => None,
            })
            .collect();
        let mut actions: BTreeMap<&str, DistinctSketch> = BTreeMap::new();
        for (count, _) in &reports {
            if let FleetKey::Report { action, .. } = &count.key {
                actions.entry(action).or_default().merge(&count.devices);
            }
        }
        let today = stats::day_of(now_millis());
        let since = today - stats::DAY_MILLIS * i64::from(days.saturating_sub(1));
        let days = (0..i64::from(days))
            .map(|i| {
                let day = since + i * stats::DAY_MILLIS;
                let devices = |kind: ActivityKind| {
                    let mut sketch = DistinctSketch::default();
                    for (count, _) in reports.iter().filter(|(c, k)| c.start == day && *k == kind) {
                        sketch.merge(&count.devices);
                    }
                    sketch.estimate()
                };
                DailyActivity {
                    day,
                    downloads: devices(ActivityKind::Download),
                    installs: devices(ActivityKind::Install),
                    failures: devices(ActivityKind::Failure),
                }
            })
            .collect();
        Ok(BundleActivity {
            actions: actions
                .into_iter()
                .map(|(action, devices)| (action.to_string(), devices.estimate()))
                .collect(),
            days,
        })
    }
}

/// What a release manager opens first: where an app's fleet is (see `apps.overview`).
#[derive(Debug, Clone)]
pub struct FleetOverview {
    pub app_id: String,
    /// When the figures were computed.
    pub now: UnixMillis,
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
        let mut overviews = self.fleet_overviews(&[app_id.to_string()]).await?;
        Ok(overviews.remove(0))
    }

    /// [`FleetOverview`]s of `apps`, in order, reading the catalog's lists once for all.
    async fn fleet_overviews(&self, apps: &[String]) -> Result<Vec<FleetOverview>, CatalogError> {
        let now = now_millis();
        let versions: HashMap<RecordId, String> = self
            .metadata
            .list_bundles()
            .await?
            .into_iter()
            .filter(|b| apps.contains(&b.app_id))
            .map(|b| (b.id, b.version_name))
            .collect();
        let rollouts = self.list_rollouts().await?;
        let releases = self.list_releases().await?;
        let unregistered = self.unregistered_builds().await?;
        let mut overviews = Vec::with_capacity(apps.len());
        let unwritten = self.unwritten_notes(apps, OVERVIEW_DAYS).await?;
        for app_id in apps {
            let counts = self.app_fleet_counts(app_id, &unwritten).await?;
            let mut fleets = Vec::new();
            for release in releases.iter().filter(|r| r.key.app_id == *app_id) {
                // Channels the release sets, production, and any its devices checked in on.
                let mut channels: BTreeSet<ChannelName> =
                    release.channels.keys().cloned().collect();
                channels.insert(ChannelName::default_channel());
                channels.extend(counts.daily.iter().filter_map(|c| match &c.key {
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
                        let serving = release.serving(&channel);
                        let serves = versions.get(serving.bundle_id).cloned();
                        ChannelFleet {
                            devices: channel_devices(&counts, &release.key, &channel, now),
                            adoption: adoption(
                                &counts.daily,
                                &release.key,
                                &channel,
                                serves.as_deref().unwrap_or_default(),
                                serving.since,
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
                fleets.push(ReleaseFleet {
                    release: release.clone(),
                    channels,
                });
            }
            overviews.push(FleetOverview {
                app_id: app_id.clone(),
                now,
                releases: fleets,
                bundles: bundle_health(&counts.daily, day_of(now)),
                failures_by_day: failures_by_day(&counts.daily),
                unregistered_builds: unregistered
                    .iter()
                    .filter(|b| b.key.app_id == *app_id)
                    .cloned()
                    .collect(),
            });
        }
        Ok(overviews)
    }
}

/// How often the fleet's figures on `/metrics` are computed.
pub const FLEET_GAUGES_INTERVAL: Duration = Duration::from_secs(60);

impl Catalog {
    /// Every `every`, computes the fleet's figures and sets them as gauges on `/metrics`, so a
    /// scrape costs nothing more (every replica computes the same figures from the store).
    pub async fn publish_fleet_gauges_periodically(
        &self,
        every: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticks = super::ticker(every);
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            if let Err(e) = self.publish_fleet_gauges().await {
                tracing::warn!(error = %Chain(&e), "could not compute the fleet gauges; keeping the last ones");
            }
        }
    }

    /// Computes the fleet's figures for every app with a release and sets them as gauges.
    pub async fn publish_fleet_gauges(&self) -> Result<(), CatalogError> {
        let apps: BTreeSet<String> = self
            .list_releases()
            .await?
            .into_iter()
            .map(|r| r.key.app_id)
            .collect();
        let apps: Vec<String> = apps.into_iter().collect();
        let overviews = self.fleet_overviews(&apps).await?;
        crate::metrics::global().set_fleet_gauges(fleet_gauges(&overviews));
        Ok(())
    }
}

/// The overview's figures as Prometheus gauges (names and labels in the README).
fn fleet_gauges(overviews: &[FleetOverview]) -> Vec<GaugeFamily> {
    let mut devices = GaugeFamily::new(
        "capgo_fleet_devices",
        "Distinct devices of a native build on a channel that checked in running a bundle, \
         over the window (24h: the current hour and the 23 before; 7d: the last 7 UTC days).",
    );
    let mut channel_devices = GaugeFamily::new(
        "capgo_fleet_channel_devices",
        "Distinct devices of a native build that checked in on a channel, over the window.",
    );
    let mut adoption = GaugeFamily::new(
        "capgo_fleet_adoption_ratio",
        "Share of a native build's devices on a channel that ran the bundle it serves, on the \
         last UTC day with check-ins.",
    );
    let mut reported = GaugeFamily::new(
        "capgo_fleet_bundle_devices",
        "Distinct devices that reported installing (outcome=installed) or failing \
         (outcome=failed) a bundle over the last 7 UTC days.",
    );
    let mut failure_rate = GaugeFamily::new(
        "capgo_fleet_bundle_failure_ratio",
        "Devices that failed a bundle among those that installed or failed it, last 7 UTC days.",
    );
    for overview in overviews {
        let app = overview.app_id.as_str();
        for fleet in &overview.releases {
            let key = &fleet.release.key;
            for channel in &fleet.channels {
                let build = [
                    ("app_id", app),
                    ("platform", key.platform.as_str()),
                    ("version_name", key.version_name.as_str()),
                    ("version_code", key.version_code.as_str()),
                    ("channel", channel.channel.as_str()),
                ];
                let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
                    build.iter().chain(extra).copied().collect()
                };
                let counts = &channel.devices;
                channel_devices.sample(&with(&[("window", "24h")]), counts.devices_recent as f64);
                channel_devices.sample(&with(&[("window", "7d")]), counts.devices_week as f64);
                for spread in &counts.bundles {
                    let mut labels = with(&[]);
                    labels.push(("bundle", &spread.bundle));
                    for (window, value) in
                        [("24h", spread.devices_recent), ("7d", spread.devices_week)]
                    {
                        let mut labels = labels.clone();
                        labels.push(("window", window));
                        devices.sample(&labels, value as f64);
                    }
                }
                if let (Some(serves), Some(last)) = (&channel.serves, channel.adoption.days.last())
                {
                    let mut labels = with(&[]);
                    labels.push(("bundle", serves));
                    adoption.sample(&labels, last.share);
                }
            }
        }
        for health in &overview.bundles {
            let bundle = [("app_id", app), ("bundle", health.bundle.as_str())];
            for (outcome, value) in [
                ("installed", health.installed_week),
                ("failed", health.failed_week),
            ] {
                let mut labels = bundle.to_vec();
                labels.push(("outcome", outcome));
                reported.sample(&labels, value as f64);
            }
            if let Some(rate) = health.failure_rate_week {
                failure_rate.sample(&bundle, rate);
            }
        }
    }
    vec![devices, channel_devices, adoption, reported, failure_rate]
}
