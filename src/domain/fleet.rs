//! Where the fleet is, aggregated per day: which bundle devices of each native build and
//! channel run (from their checks), and which bundles they installed or failed (from their
//! stats). Devices are counted with [`DistinctSketch`]es, so nothing is stored per device and
//! days, processes and builds combine into "distinct devices over 7 days".

use super::sketch::DistinctSketch;
use super::stats::{day_of, ActivityKind, StatsEvent, DAY_MILLIS};
use super::{ChannelName, ReleaseKey, UnixMillis};

/// What one day's counts are about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FleetKey {
    /// Devices of a native build on a channel checked in running `bundle` (a version name,
    /// or `builtin`).
    Check {
        release: ReleaseKey,
        channel: ChannelName,
        bundle: String,
    },
    /// Devices of an app reported installing, or failing, `bundle`.
    Report {
        app_id: String,
        bundle: String,
        outcome: Outcome,
    },
}

impl FleetKey {
    pub fn app_id(&self) -> &str {
        match self {
            FleetKey::Check { release, .. } => &release.app_id,
            FleetKey::Report { app_id, .. } => app_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Installed,
    Failed,
}

impl Outcome {
    /// What a stats event reports about the bundle it names, if it counts for the fleet.
    pub fn of(event: &StatsEvent) -> Option<Outcome> {
        match ActivityKind::of(&event.action) {
            ActivityKind::Install => Some(Outcome::Installed),
            ActivityKind::Failure => Some(Outcome::Failed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Installed => "installed",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<Outcome> {
        match value {
            "installed" => Some(Outcome::Installed),
            "failed" => Some(Outcome::Failed),
            _ => None,
        }
    }
}

/// One day's count of a key: how many times it happened, and by how many distinct devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCount {
    /// The UTC day, as milliseconds at its midnight ([`day_of`]).
    pub day: UnixMillis,
    pub key: FleetKey,
    pub events: u64,
    pub devices: DistinctSketch,
}

impl FleetCount {
    pub fn new(at: UnixMillis, key: FleetKey) -> FleetCount {
        FleetCount {
            day: day_of(at),
            key,
            events: 0,
            devices: DistinctSketch::default(),
        }
    }

    /// Adds what `other` (the same day and key) counted.
    pub fn merge(&mut self, other: &FleetCount) {
        debug_assert!(self.day == other.day && self.key == other.key);
        self.events += other.events;
        self.devices.merge(&other.devices);
    }
}

/// The "recent" window of the overview: today and yesterday (UTC). Counts are per day, so a
/// sliding 24 hours is not available; this window always covers the last 24 hours and at most
/// 48.
pub const RECENT_DAYS: i64 = 2;
/// The overview's week: the last 7 UTC days, today included.
pub const WEEK_DAYS: i64 = 7;

/// Distinct devices among `counts` of days from `since` on, for which `keep` holds.
fn devices_since(
    counts: &[FleetCount],
    since: UnixMillis,
    keep: impl Fn(&FleetKey) -> bool,
) -> (u64, DistinctSketch) {
    let mut sketch = DistinctSketch::default();
    let mut events = 0;
    for count in counts.iter().filter(|c| c.day >= since && keep(&c.key)) {
        sketch.merge(&count.devices);
        events += count.events;
    }
    (events, sketch)
}

/// Which bundle the devices of one native build and channel run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BundleSpread {
    pub bundle: String,
    pub devices_recent: u64,
    pub devices_week: u64,
}

/// A native build's devices on one channel: how many checked in, and on which bundle.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChannelDevices {
    pub devices_recent: u64,
    pub devices_week: u64,
    /// Most devices first.
    pub bundles: Vec<BundleSpread>,
}

/// [`ChannelDevices`] of a native build and channel, `today` being a day ([`day_of`]).
pub fn channel_devices(
    counts: &[FleetCount],
    release: &ReleaseKey,
    channel: &ChannelName,
    today: UnixMillis,
) -> ChannelDevices {
    let recent = today - DAY_MILLIS * (RECENT_DAYS - 1);
    let week = today - DAY_MILLIS * (WEEK_DAYS - 1);
    fn on<'a>(
        release: &'a ReleaseKey,
        channel: &'a ChannelName,
        bundle: Option<&'a str>,
    ) -> impl Fn(&FleetKey) -> bool + 'a {
        move |key| match key {
            FleetKey::Check {
                release: r,
                channel: c,
                bundle: b,
            } => r == release && c == channel && bundle.is_none_or(|wanted| wanted == b),
            FleetKey::Report { .. } => false,
        }
    }
    let mut bundles: Vec<String> = counts
        .iter()
        .filter(|c| c.day >= week && on(release, channel, None)(&c.key))
        .filter_map(|c| match &c.key {
            FleetKey::Check { bundle, .. } => Some(bundle.clone()),
            FleetKey::Report { .. } => None,
        })
        .collect();
    bundles.sort();
    bundles.dedup();
    let mut spread: Vec<BundleSpread> = bundles
        .into_iter()
        .map(|bundle| BundleSpread {
            devices_recent: devices_since(counts, recent, on(release, channel, Some(&bundle)))
                .1
                .estimate(),
            devices_week: devices_since(counts, week, on(release, channel, Some(&bundle)))
                .1
                .estimate(),
            bundle,
        })
        .collect();
    spread.sort_by(|a, b| {
        (b.devices_week, b.devices_recent, &a.bundle).cmp(&(
            a.devices_week,
            a.devices_recent,
            &b.bundle,
        ))
    });
    ChannelDevices {
        devices_recent: devices_since(counts, recent, on(release, channel, None))
            .1
            .estimate(),
        devices_week: devices_since(counts, week, on(release, channel, None))
            .1
            .estimate(),
        bundles: spread,
    }
}

/// Distinct devices among the reports `keep` selects: that installed, that failed, and the
/// failure rate among those that did either (`None` when none did).
fn reported(counts: &[FleetCount], keep: impl Fn(&FleetCount) -> bool) -> (u64, u64, Option<f64>) {
    let (mut installed, mut failed) = (DistinctSketch::default(), DistinctSketch::default());
    for count in counts.iter().filter(|c| keep(c)) {
        match count.key {
            FleetKey::Report {
                outcome: Outcome::Installed,
                ..
            } => installed.merge(&count.devices),
            FleetKey::Report {
                outcome: Outcome::Failed,
                ..
            } => failed.merge(&count.devices),
            FleetKey::Check { .. } => {}
        }
    }
    let mut either = installed.clone();
    either.merge(&failed);
    let reporting = either.estimate();
    let failed = failed.estimate().min(reporting);
    let rate = (reporting > 0).then(|| failed as f64 / reporting as f64);
    (installed.estimate(), failed, rate)
}

/// The distinct days of `counts`, oldest first.
fn days_of(counts: &[FleetCount]) -> Vec<UnixMillis> {
    let mut days: Vec<UnixMillis> = counts.iter().map(|c| c.day).collect();
    days.sort();
    days.dedup();
    days
}

/// What devices reported about a bundle over the week: distinct devices that installed it and
/// that failed with it, and the failure rate among the devices that did either.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BundleHealth {
    pub bundle: String,
    pub installed_week: u64,
    pub failed_week: u64,
    /// `None` when no device reported either.
    pub failure_rate_week: Option<f64>,
}

/// [`BundleHealth`] of every bundle devices reported about in the week, worst rate first.
pub fn bundle_health(counts: &[FleetCount], today: UnixMillis) -> Vec<BundleHealth> {
    let week = today - DAY_MILLIS * (WEEK_DAYS - 1);
    let mut bundles: Vec<&str> = counts
        .iter()
        .filter(|c| c.day >= week)
        .filter_map(|c| match &c.key {
            FleetKey::Report { bundle, .. } => Some(bundle.as_str()),
            FleetKey::Check { .. } => None,
        })
        .collect();
    bundles.sort();
    bundles.dedup();
    let mut health: Vec<BundleHealth> = bundles
        .into_iter()
        .map(|bundle| {
            let (installed, failed, rate) = reported(counts, |c| {
                c.day >= week && matches!(&c.key, FleetKey::Report { bundle: b, .. } if b == bundle)
            });
            BundleHealth {
                bundle: bundle.to_string(),
                installed_week: installed,
                failed_week: failed,
                failure_rate_week: rate,
            }
        })
        .collect();
    health.sort_by(|a, b| {
        b.failure_rate_week
            .unwrap_or(0.0)
            .total_cmp(&a.failure_rate_week.unwrap_or(0.0))
            .then_with(|| a.bundle.cmp(&b.bundle))
    });
    health
}

/// One day of the app's reports: devices that installed a bundle, that failed, and the rate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DailyFailures {
    pub day: UnixMillis,
    pub installed: u64,
    pub failed: u64,
    pub failure_rate: Option<f64>,
}

/// [`DailyFailures`] of every day with reports, oldest first.
pub fn failures_by_day(counts: &[FleetCount]) -> Vec<DailyFailures> {
    days_of(counts)
        .into_iter()
        .filter_map(|day| {
            let (installed, failed, rate) = reported(counts, |c| c.day == day);
            rate.map(|rate| DailyFailures {
                day,
                installed,
                failed,
                failure_rate: Some(rate),
            })
        })
        .collect()
}

/// How a bundle spread over a native build's devices on a channel, day by day.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Adoption {
    pub days: Vec<AdoptionDay>,
    /// Days from the first day a device ran the bundle to the first day half (and nine in ten)
    /// of the day's active devices did; `None` while not reached.
    pub days_to_half: Option<u32>,
    pub days_to_ninety_percent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AdoptionDay {
    pub day: UnixMillis,
    pub active_devices: u64,
    pub on_bundle: u64,
    pub share: f64,
}

/// The adoption of `bundle` by the devices of a native build on a channel, per day.
pub fn adoption(
    counts: &[FleetCount],
    release: &ReleaseKey,
    channel: &ChannelName,
    bundle: &str,
) -> Adoption {
    let mut points = Vec::new();
    for day in days_of(counts) {
        let mut active = DistinctSketch::default();
        let mut on = DistinctSketch::default();
        for count in counts.iter().filter(|c| c.day == day) {
            if let FleetKey::Check {
                release: r,
                channel: c,
                bundle: b,
            } = &count.key
            {
                if r == release && c == channel {
                    active.merge(&count.devices);
                    if b == bundle {
                        on.merge(&count.devices);
                    }
                }
            }
        }
        let active_devices = active.estimate();
        if active_devices == 0 {
            continue;
        }
        let on_bundle = on.estimate().min(active_devices);
        points.push(AdoptionDay {
            day,
            active_devices,
            on_bundle,
            share: on_bundle as f64 / active_devices as f64,
        });
    }
    let first = points.iter().find(|p| p.on_bundle > 0).map(|p| p.day);
    let reached = |share: f64| {
        let first = first?;
        points
            .iter()
            .find(|p| p.day >= first && p.share >= share)
            .map(|p| ((p.day - first) / DAY_MILLIS) as u32)
    };
    Adoption {
        days_to_half: reached(0.5),
        days_to_ninety_percent: reached(0.9),
        days: points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_and_failures_count_for_the_fleet() {
        let outcome = |action: &str| Outcome::of(&StatsEvent::example("d", action, "1.0.0"));
        assert_eq!(outcome("set"), Some(Outcome::Installed));
        assert_eq!(outcome("download_fail"), Some(Outcome::Failed));
        assert_eq!(outcome("update_fail"), Some(Outcome::Failed));
        assert_eq!(outcome("download_complete"), None);
        assert_eq!(outcome("app_moved_to_foreground"), None);
        for outcome in [Outcome::Installed, Outcome::Failed] {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
    }

    fn release() -> ReleaseKey {
        ReleaseKey::example()
    }

    fn check(day: i64, bundle: &str, devices: std::ops::Range<u32>) -> FleetCount {
        let key = FleetKey::Check {
            release: release(),
            channel: ChannelName::default_channel(),
            bundle: bundle.into(),
        };
        let mut count = FleetCount::new(day * DAY_MILLIS, key);
        for n in devices {
            count.devices.insert(&format!("device-{n}"));
            count.events += 1;
        }
        count
    }

    fn report(
        day: i64,
        bundle: &str,
        outcome: Outcome,
        devices: std::ops::Range<u32>,
    ) -> FleetCount {
        let key = FleetKey::Report {
            app_id: "com.example.app".into(),
            bundle: bundle.into(),
            outcome,
        };
        let mut count = FleetCount::new(day * DAY_MILLIS, key);
        for n in devices {
            count.devices.insert(&format!("device-{n}"));
        }
        count
    }

    #[test]
    fn the_overview_counts_distinct_devices_across_days() {
        // 100 devices on builtin on day 1; from day 8, 60 of them move to 1.1 over two days.
        let counts = vec![
            check(1, "builtin", 0..100),
            check(8, "builtin", 0..70),
            check(8, "1.1", 70..100),
            check(9, "builtin", 60..80),
            check(9, "1.1", 0..60),
            check(9, "1.1", 80..100),
        ];
        let production = ChannelName::default_channel();
        let today = 9 * DAY_MILLIS;
        let devices = channel_devices(&counts, &release(), &production, today);
        // Sketch estimates: within 2 of the truth at these sizes.
        let near = |estimate: u64, truth: u64| estimate.abs_diff(truth) <= 2;
        // The week is days 3..=9: day 1 is out; the 100 devices were all active on days 8-9.
        assert!(near(devices.devices_recent, 100) && near(devices.devices_week, 100));
        assert_eq!(devices.bundles[0].bundle, "1.1");
        assert!(near(devices.bundles[0].devices_week, 90), "{devices:?}");
        assert!(near(devices.bundles[1].devices_week, 80), "{devices:?}");
        let adoption = adoption(&counts, &release(), &production, "1.1");
        let shares: Vec<f64> = adoption.days.iter().map(|d| d.share).collect();
        assert_eq!(shares.len(), 3);
        for (share, truth) in shares.iter().zip([0.0, 0.3, 0.8]) {
            assert!((share - truth).abs() < 0.03, "{shares:?}");
        }
        assert_eq!(adoption.days_to_half, Some(1));
        assert_eq!(adoption.days_to_ninety_percent, None);
    }

    #[test]
    fn failure_rates_count_devices_that_installed_or_failed() {
        let counts = vec![
            report(9, "1.1", Outcome::Installed, 0..80),
            report(9, "1.1", Outcome::Failed, 60..80),
            report(9, "1.1", Outcome::Failed, 80..100),
            report(9, "1.0", Outcome::Installed, 0..10),
        ];
        let health = bundle_health(&counts, 9 * DAY_MILLIS);
        // 80 installed and 40 failed of the 100 devices that did either.
        assert_eq!(health[0].bundle, "1.1");
        assert!(health[0].installed_week.abs_diff(80) <= 2);
        assert!(health[0].failed_week.abs_diff(40) <= 1);
        assert!((health[0].failure_rate_week.unwrap() - 0.4).abs() < 0.02);
        assert_eq!(health[1].failure_rate_week, Some(0.0));
        let daily = failures_by_day(&counts);
        assert_eq!(daily.len(), 1);
        assert!((daily[0].failure_rate.unwrap() - 0.4).abs() < 0.02);
    }

    #[test]
    fn counts_of_one_day_merge() {
        let key = FleetKey::Check {
            release: ReleaseKey::example(),
            channel: ChannelName::default_channel(),
            bundle: "1.0.1".into(),
        };
        let mut a = FleetCount::new(1_000, key.clone());
        a.events = 2;
        a.devices.insert("a");
        let mut b = FleetCount::new(2_000, key);
        b.events = 3;
        b.devices.insert("a");
        b.devices.insert("b");
        a.merge(&b);
        assert_eq!((a.events, a.devices.estimate()), (5, 2));
        assert_eq!(a.day, 0);
    }
}
