//! Where the fleet is, aggregated per day (and, for checks, per hour over the last two days):
//! which bundle devices of each native build and channel run (from their checks), and what
//! they reported about each bundle (from their stats). Devices are counted with
//! [`DistinctSketch`]es, so nothing is stored per device and periods, processes and builds
//! combine into "distinct devices over 7 days".

use super::sketch::DistinctSketch;
use super::stats::{day_of, ActivityKind, DAY_MILLIS};
use super::{ChannelName, ReleaseKey, UnixMillis};

/// What one period's counts are about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FleetKey {
    /// Devices of a native build on a channel checked in running `bundle` (a version name,
    /// `builtin`, or [`OTHER_BUNDLE`]).
    Check {
        release: ReleaseKey,
        channel: ChannelName,
        bundle: String,
    },
    /// Devices of an app that reported `action` about `bundle`
    /// ([`aggregated_action`](super::stats::aggregated_action) names).
    Report {
        app_id: String,
        bundle: String,
        action: String,
    },
}

/// What checks and reports naming a bundle the app does not have are counted under, so
/// devices cannot make the counts grow with made-up version names.
pub const OTHER_BUNDLE: &str = "(other)";

impl FleetKey {
    pub fn app_id(&self) -> &str {
        match self {
            FleetKey::Check { release, .. } => &release.app_id,
            FleetKey::Report { app_id, .. } => app_id,
        }
    }

    /// The bundle the key is about.
    pub fn bundle(&self) -> &str {
        match self {
            FleetKey::Check { bundle, .. } | FleetKey::Report { bundle, .. } => bundle,
        }
    }

    pub fn bundle_mut(&mut self) -> &mut String {
        match self {
            FleetKey::Check { bundle, .. } | FleetKey::Report { bundle, .. } => bundle,
        }
    }

    /// For a report: whether it says the bundle installed or failed.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            FleetKey::Report { action, .. } => match ActivityKind::of(action) {
                ActivityKind::Install => Some(Outcome::Installed),
                ActivityKind::Failure => Some(Outcome::Failed),
                _ => None,
            },
            FleetKey::Check { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Installed,
    Failed,
}

/// How long a count's period is: days are kept for `FLEET_RETENTION`, hours (checks only)
/// for the last [`HOURLY_DAYS`] days, which makes "the last 24 hours" exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Span {
    Day,
    Hour,
}

/// Milliseconds in an hour.
pub const HOUR_MILLIS: UnixMillis = 3_600_000;
/// Days hourly counts are kept.
pub const HOURLY_DAYS: i64 = 2;

impl Span {
    /// The first millisecond of the period `at` falls in.
    pub fn start_of(self, at: UnixMillis) -> UnixMillis {
        match self {
            Span::Day => day_of(at),
            Span::Hour => at - at.rem_euclid(HOUR_MILLIS),
        }
    }
}

/// One period's count of a key: how many times it happened, and by how many distinct devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetCount {
    /// The period's first millisecond ([`Span::start_of`]).
    pub start: UnixMillis,
    pub span: Span,
    pub key: FleetKey,
    pub events: u64,
    pub devices: DistinctSketch,
}

impl FleetCount {
    pub fn new(span: Span, at: UnixMillis, key: FleetKey) -> FleetCount {
        FleetCount {
            start: span.start_of(at),
            span,
            key,
            events: 0,
            devices: DistinctSketch::default(),
        }
    }

    /// Adds what `other` (the same period and key) counted.
    pub fn merge(&mut self, other: &FleetCount) {
        debug_assert!((self.start, self.span, &self.key) == (other.start, other.span, &other.key));
        self.events += other.events;
        self.devices.merge(&other.devices);
    }
}

/// The overview's "recent" window: the current hour and the 23 before it.
pub const RECENT_HOURS: i64 = 24;
/// The overview's week: the last 7 UTC days, today included.
pub const WEEK_DAYS: i64 = 7;

/// Distinct devices among `counts` of periods from `since` on, for which `keep` holds.
fn devices_since(
    counts: &[FleetCount],
    since: UnixMillis,
    keep: impl Fn(&FleetKey) -> bool,
) -> DistinctSketch {
    let mut sketch = DistinctSketch::default();
    for count in counts.iter().filter(|c| c.start >= since && keep(&c.key)) {
        sketch.merge(&count.devices);
    }
    sketch
}

/// An app's counts, split by span.
#[derive(Debug, Clone, Default)]
pub struct FleetCounts {
    pub daily: Vec<FleetCount>,
    pub hourly: Vec<FleetCount>,
}

impl FromIterator<FleetCount> for FleetCounts {
    fn from_iter<I: IntoIterator<Item = FleetCount>>(counts: I) -> FleetCounts {
        let mut split = FleetCounts::default();
        for count in counts {
            match count.span {
                Span::Day => split.daily.push(count),
                Span::Hour => split.hourly.push(count),
            }
        }
        split
    }
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

/// [`ChannelDevices`] of a native build and channel at `now`.
pub fn channel_devices(
    counts: &FleetCounts,
    release: &ReleaseKey,
    channel: &ChannelName,
    now: UnixMillis,
) -> ChannelDevices {
    let recent = Span::Hour.start_of(now) - HOUR_MILLIS * (RECENT_HOURS - 1);
    let week = day_of(now) - DAY_MILLIS * (WEEK_DAYS - 1);
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
    let devices = |bundle: Option<&str>| {
        (
            devices_since(&counts.hourly, recent, on(release, channel, bundle)).estimate(),
            devices_since(&counts.daily, week, on(release, channel, bundle)).estimate(),
        )
    };
    let mut bundles: Vec<&str> = counts
        .daily
        .iter()
        .chain(&counts.hourly)
        .filter(|c| c.start >= week && on(release, channel, None)(&c.key))
        .map(|c| c.key.bundle())
        .collect();
    bundles.sort();
    bundles.dedup();
    let mut spread: Vec<BundleSpread> = bundles
        .into_iter()
        .map(|bundle| {
            let (devices_recent, devices_week) = devices(Some(bundle));
            BundleSpread {
                bundle: bundle.to_string(),
                devices_recent,
                devices_week,
            }
        })
        .collect();
    spread.sort_by(|a, b| {
        (b.devices_week, b.devices_recent, &a.bundle).cmp(&(
            a.devices_week,
            a.devices_recent,
            &b.bundle,
        ))
    });
    let (devices_recent, devices_week) = devices(None);
    ChannelDevices {
        devices_recent,
        devices_week,
        bundles: spread,
    }
}

/// Distinct devices among the reports `keep` selects: that installed, that failed, and the
/// failure rate among those that did either (`None` when none did).
fn reported(counts: &[FleetCount], keep: impl Fn(&FleetCount) -> bool) -> (u64, u64, Option<f64>) {
    let (mut installed, mut failed) = (DistinctSketch::default(), DistinctSketch::default());
    for count in counts.iter().filter(|c| keep(c)) {
        match count.key.outcome() {
            Some(Outcome::Installed) => installed.merge(&count.devices),
            Some(Outcome::Failed) => failed.merge(&count.devices),
            None => {}
        }
    }
    let mut either = installed.clone();
    either.merge(&failed);
    let reporting = either.estimate();
    let failed = failed.estimate().min(reporting);
    let rate = (reporting > 0).then(|| failed as f64 / reporting as f64);
    (installed.estimate(), failed, rate)
}

/// The distinct days of daily `counts`, oldest first.
fn days_of(counts: &[FleetCount]) -> Vec<UnixMillis> {
    let mut days: Vec<UnixMillis> = counts.iter().map(|c| c.start).collect();
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

/// [`BundleHealth`] of every bundle devices reported about in the week, worst rate first
/// (daily `counts`).
pub fn bundle_health(counts: &[FleetCount], today: UnixMillis) -> Vec<BundleHealth> {
    let week = today - DAY_MILLIS * (WEEK_DAYS - 1);
    let mut bundles: Vec<&str> = counts
        .iter()
        .filter(|c| c.start >= week)
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
                c.start >= week
                    && matches!(&c.key, FleetKey::Report { bundle: b, .. } if b == bundle)
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

/// [`DailyFailures`] of every day with reports, oldest first (daily `counts`).
pub fn failures_by_day(counts: &[FleetCount]) -> Vec<DailyFailures> {
    days_of(counts)
        .into_iter()
        .filter_map(|day| {
            let (installed, failed, rate) = reported(counts, |c| c.start == day);
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
    /// The day the times below count from: the day the channel was pointed at the bundle
    /// when that is known (`promoted`), else the first day a device ran it.
    pub counted_from: Option<UnixMillis>,
    pub promoted: bool,
    /// Days from `counted_from` to the first day half (and nine in ten) of the day's active
    /// devices ran the bundle; `None` while not reached.
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

/// The adoption of `bundle` by the devices of a native build on a channel, per day (daily
/// `counts`), the channel serving it since `promoted_at` if known.
pub fn adoption(
    counts: &[FleetCount],
    release: &ReleaseKey,
    channel: &ChannelName,
    bundle: &str,
    promoted_at: Option<UnixMillis>,
) -> Adoption {
    let mut points = Vec::new();
    for day in days_of(counts) {
        let mut active = DistinctSketch::default();
        let mut on = DistinctSketch::default();
        for count in counts.iter().filter(|c| c.start == day) {
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
    let counted_from = promoted_at
        .map(day_of)
        .or_else(|| points.iter().find(|p| p.on_bundle > 0).map(|p| p.day));
    let reached = |share: f64| {
        let from = counted_from?;
        points
            .iter()
            .find(|p| p.day >= from && p.share >= share)
            .map(|p| ((p.day - from) / DAY_MILLIS) as u32)
    };
    Adoption {
        counted_from,
        promoted: promoted_at.is_some(),
        days_to_half: reached(0.5),
        days_to_ninety_percent: reached(0.9),
        days: points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> ReleaseKey {
        ReleaseKey::example()
    }

    fn check_at(span: Span, at: i64, bundle: &str, devices: std::ops::Range<u32>) -> FleetCount {
        let key = FleetKey::Check {
            release: release(),
            channel: ChannelName::default_channel(),
            bundle: bundle.into(),
        };
        let mut count = FleetCount::new(span, at, key);
        for n in devices {
            count.devices.insert(&format!("device-{n}"));
            count.events += 1;
        }
        count
    }

    fn check(day: i64, bundle: &str, devices: std::ops::Range<u32>) -> FleetCount {
        check_at(Span::Day, day * DAY_MILLIS, bundle, devices)
    }

    fn report(day: i64, bundle: &str, action: &str, devices: std::ops::Range<u32>) -> FleetCount {
        let key = FleetKey::Report {
            app_id: "com.example.app".into(),
            bundle: bundle.into(),
            action: action.into(),
        };
        let mut count = FleetCount::new(Span::Day, day * DAY_MILLIS, key);
        for n in devices {
            count.devices.insert(&format!("device-{n}"));
        }
        count
    }

    #[test]
    fn installs_and_failures_are_outcomes_of_reports() {
        let outcome = |action: &str| report(0, "1.0.0", action, 0..1).key.outcome();
        assert_eq!(outcome("set"), Some(Outcome::Installed));
        assert_eq!(outcome("download_fail"), Some(Outcome::Failed));
        assert_eq!(outcome("other_fail"), Some(Outcome::Failed));
        assert_eq!(outcome("download_complete"), None);
        assert_eq!(check(0, "1.0.0", 0..1).key.outcome(), None);
    }

    #[test]
    fn the_overview_counts_distinct_devices_across_days() {
        // 100 devices on builtin on day 1; from day 8, 60 of them move to 1.1 over two days.
        let daily = vec![
            check(1, "builtin", 0..100),
            check(8, "builtin", 0..70),
            check(8, "1.1", 70..100),
            check(9, "builtin", 60..80),
            check(9, "1.1", 0..60),
            check(9, "1.1", 80..100),
        ];
        // The last 24 hours, hour by hour: 40 devices 30 hours ago (out of the window), 30 of
        // them again 2 hours ago on 1.1, and 10 others in the current hour.
        let now = 9 * DAY_MILLIS + 20 * HOUR_MILLIS + 1_234;
        let hourly = vec![
            check_at(Span::Hour, now - 30 * HOUR_MILLIS, "builtin", 0..40),
            check_at(Span::Hour, now - 2 * HOUR_MILLIS, "1.1", 0..30),
            check_at(Span::Hour, now, "builtin", 40..50),
        ];
        let counts = FleetCounts { daily, hourly };
        let production = ChannelName::default_channel();
        let devices = channel_devices(&counts, &release(), &production, now);
        // Sketch estimates: within 2 of the truth at these sizes.
        let near = |estimate: u64, truth: u64| estimate.abs_diff(truth) <= 2;
        // The week is days 3..=9: day 1 is out; the 100 devices were all active on days 8-9.
        assert!(near(devices.devices_week, 100), "{devices:?}");
        assert!(near(devices.devices_recent, 40), "{devices:?}");
        assert_eq!(devices.bundles[0].bundle, "1.1");
        assert!(near(devices.bundles[0].devices_week, 90), "{devices:?}");
        assert!(near(devices.bundles[0].devices_recent, 30), "{devices:?}");
        assert!(near(devices.bundles[1].devices_week, 80), "{devices:?}");
        assert!(near(devices.bundles[1].devices_recent, 10), "{devices:?}");

        let first_seen = adoption(&counts.daily, &release(), &production, "1.1", None);
        let shares: Vec<f64> = first_seen.days.iter().map(|d| d.share).collect();
        assert_eq!(shares.len(), 3);
        for (share, truth) in shares.iter().zip([0.0, 0.3, 0.8]) {
            assert!((share - truth).abs() < 0.03, "{shares:?}");
        }
        assert_eq!(first_seen.counted_from, Some(8 * DAY_MILLIS));
        assert!(!first_seen.promoted);
        assert_eq!(first_seen.days_to_half, Some(1));
        assert_eq!(first_seen.days_to_ninety_percent, None);
        // Promoted on day 7 (no device ran it that day): counted from the promote.
        let promoted = adoption(
            &counts.daily,
            &release(),
            &production,
            "1.1",
            Some(7 * DAY_MILLIS + 5 * HOUR_MILLIS),
        );
        assert_eq!(promoted.counted_from, Some(7 * DAY_MILLIS));
        assert!(promoted.promoted);
        assert_eq!(promoted.days_to_half, Some(2));
    }

    #[test]
    fn failure_rates_count_devices_that_installed_or_failed() {
        let counts = vec![
            report(9, "1.1", "set", 0..80),
            report(9, "1.1", "download_fail", 60..80),
            report(9, "1.1", "update_fail", 70..100),
            report(9, "1.1", "app_moved_to_foreground", 100..200),
            report(9, "1.0", "set", 0..10),
        ];
        let health = bundle_health(&counts, 9 * DAY_MILLIS);
        // 80 installed and 40 failed (some with two actions) of the 100 that did either.
        assert_eq!(health[0].bundle, "1.1");
        assert!(health[0].installed_week.abs_diff(80) <= 2);
        assert!(health[0].failed_week.abs_diff(40) <= 1, "{health:?}");
        assert!((health[0].failure_rate_week.unwrap() - 0.4).abs() < 0.02);
        assert_eq!(health[1].failure_rate_week, Some(0.0));
        let daily = failures_by_day(&counts);
        assert_eq!(daily.len(), 1);
        assert!((daily[0].failure_rate.unwrap() - 0.4).abs() < 0.02);
    }

    #[test]
    fn counts_of_one_period_merge() {
        let key = FleetKey::Check {
            release: ReleaseKey::example(),
            channel: ChannelName::default_channel(),
            bundle: "1.0.1".into(),
        };
        let mut a = FleetCount::new(Span::Day, 1_000, key.clone());
        a.events = 2;
        a.devices.insert("a");
        let mut b = FleetCount::new(Span::Day, 2_000, key.clone());
        b.events = 3;
        b.devices.insert("a");
        b.devices.insert("b");
        a.merge(&b);
        assert_eq!((a.events, a.devices.estimate()), (5, 2));
        assert_eq!(a.start, 0);
        let hour = FleetCount::new(Span::Hour, 2 * HOUR_MILLIS + 5, key);
        assert_eq!(hour.start, 2 * HOUR_MILLIS);
    }
}
