//! Where the fleet is, aggregated per day: which bundle devices of each native build and
//! channel run (from their checks), and which bundles they installed or failed (from their
//! stats). Devices are counted with [`DistinctSketch`]es, so nothing is stored per device and
//! days, processes and builds combine into "distinct devices over 7 days".

use super::sketch::DistinctSketch;
use super::stats::{day_of, ActivityKind, StatsEvent};
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Platform;

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

    #[test]
    fn counts_of_one_day_merge() {
        let key = FleetKey::Check {
            release: ReleaseKey {
                platform: Platform::Android,
                app_id: "com.example.app".into(),
                version_name: "1.0.0".into(),
                version_code: "1".into(),
            },
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
