//! Counts what checks and stats say about the fleet off the request path: a check or a report
//! adds a device hash to a bounded tally in memory (no allocation once its key is tallied),
//! and a background task turns the tallies into per-day sketches and merges them into the
//! store in one batch. Past the bounds, notes are dropped and counted, never waited for.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;

use crate::domain::fleet::{FleetCount, FleetKey, Outcome};
use crate::domain::rollout::event_version;
use crate::domain::sketch::device_hash;
use crate::domain::stats::{day_of, StatsEvent};
use crate::domain::{ChannelName, ReleaseKey, UnixMillis};

/// Most keys (day, build, channel, bundle or report) tallied between two flushes.
pub const MAX_KEYS: usize = 20_000;
/// Most device hashes held between two flushes (8 bytes each).
pub const MAX_NOTES: usize = 1_000_000;

#[derive(Default)]
pub struct FleetTally {
    state: Mutex<State>,
    hasher: std::collections::hash_map::RandomState,
}

#[derive(Default)]
struct State {
    /// By a hash of (day, key), checked against the key itself.
    tallies: HashMap<u64, Tally>,
    notes: usize,
}

/// What was noted for one day and key between two flushes: the events, and the device hashes
/// (turned into a sketch only when written, a few at a time, so memory stays at 8 bytes a
/// note rather than a 4 KiB sketch a key).
#[derive(Debug, Clone)]
pub struct Tally {
    day: UnixMillis,
    key: FleetKey,
    events: u64,
    devices: Vec<u64>,
}

impl Tally {
    pub fn notes(&self) -> usize {
        self.devices.len()
    }

    pub fn to_count(&self) -> FleetCount {
        let mut count = FleetCount::new(self.day, self.key.clone());
        count.events = self.events;
        for device in &self.devices {
            count.devices.insert_hash(*device);
        }
        count
    }
}

impl FleetTally {
    /// A device of `release` on `channel` checked in running `bundle`.
    pub fn note_check(
        &self,
        release: &ReleaseKey,
        channel: &ChannelName,
        bundle: &str,
        device_id: &str,
        at: UnixMillis,
    ) {
        let day = day_of(at);
        let slot = self.hasher.hash_one((day, 0u8, release, channel, bundle));
        let matches = |key: &FleetKey| match key {
            FleetKey::Check {
                release: r,
                channel: c,
                bundle: b,
            } => r == release && c == channel && b == bundle,
            FleetKey::Report { .. } => false,
        };
        self.note(slot, day, matches, device_id, || FleetKey::Check {
            release: release.clone(),
            channel: channel.clone(),
            bundle: bundle.to_string(),
        });
    }

    /// What a batch of stats reports: installs and failures, per bundle.
    pub fn note_reports(&self, events: &[StatsEvent]) {
        for event in events {
            let (Some(outcome), Some(bundle)) = (Outcome::of(event), event_version(event)) else {
                continue;
            };
            let day = day_of(event.occurred_at);
            let slot = self
                .hasher
                .hash_one((day, 1u8, &event.app_id, bundle, outcome));
            let matches = |key: &FleetKey| match key {
                FleetKey::Report {
                    app_id,
                    bundle: b,
                    outcome: o,
                } => *app_id == event.app_id && b == bundle && *o == outcome,
                FleetKey::Check { .. } => false,
            };
            self.note(slot, day, matches, &event.device_id, || FleetKey::Report {
                app_id: event.app_id.clone(),
                bundle: bundle.to_string(),
                outcome,
            });
        }
    }

    fn note(
        &self,
        slot: u64,
        day: UnixMillis,
        matches: impl Fn(&FleetKey) -> bool,
        device_id: &str,
        key: impl FnOnce() -> FleetKey,
    ) {
        let device = device_hash(device_id);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.notes >= MAX_NOTES {
            return self.drop_note();
        }
        let full = state.tallies.len() >= MAX_KEYS;
        match state.tallies.get_mut(&slot) {
            Some(tally) if tally.day == day && matches(&tally.key) => {
                tally.events += 1;
                tally.devices.push(device);
            }
            // Another key with the same 64-bit hash (vanishingly rare), or no room: dropped.
            Some(_) => return self.drop_note(),
            None if full => return self.drop_note(),
            None => {
                state.tallies.insert(
                    slot,
                    Tally {
                        day,
                        key: key(),
                        events: 1,
                        devices: vec![device],
                    },
                );
            }
        }
        state.notes += 1;
    }

    fn drop_note(&self) {
        crate::metrics::global().fleet_note_dropped();
    }

    /// Everything noted since the last take.
    pub fn take(&self) -> Vec<Tally> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.notes = 0;
        std::mem::take(&mut state.tallies).into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> ReleaseKey {
        ReleaseKey::example()
    }

    #[test]
    fn checks_and_reports_become_daily_counts() {
        let tally = FleetTally::default();
        let production = ChannelName::default_channel();
        for device in ["a", "b", "a"] {
            tally.note_check(&release(), &production, "1.0.1", device, 10);
        }
        tally.note_check(&release(), &production, "builtin", "c", 10);
        tally.note_check(&release(), &production, "1.0.1", "d", 86_400_000 + 5);
        tally.note_reports(&[
            StatsEvent::example("a", "set", "1.0.1"),
            StatsEvent::example("b", "download_fail", "1.0.1:assets/a.js"),
            StatsEvent::example("b", "app_moved_to_foreground", "1.0.1"),
        ]);
        let mut counts: Vec<FleetCount> = tally.take().iter().map(Tally::to_count).collect();
        counts.sort_by(|a, b| (a.day, &a.key).cmp(&(b.day, &b.key)));
        let summary: Vec<(UnixMillis, u64, u64)> = counts
            .iter()
            .map(|c| (c.day, c.events, c.devices.estimate()))
            .collect();
        assert_eq!(summary.len(), 5, "{counts:?}");
        assert!(summary.contains(&(0, 3, 2)), "three checks by two devices");
        assert!(summary.contains(&(86_400_000, 1, 1)), "the next day apart");
        let failed = counts
            .iter()
            .find(|c| matches!(&c.key, FleetKey::Report { outcome: Outcome::Failed, bundle, .. } if bundle == "1.0.1"))
            .expect("a per-file failure counts for its bundle");
        assert_eq!(failed.events, 1);
        assert!(tally.take().is_empty(), "taken once");
    }

    #[test]
    fn past_the_bounds_notes_are_dropped_not_waited_for() {
        let tally = FleetTally::default();
        let production = ChannelName::default_channel();
        for n in 0..MAX_KEYS + 10 {
            tally.note_check(&release(), &production, &n.to_string(), "a", 0);
        }
        assert_eq!(
            tally.take().len(),
            MAX_KEYS,
            "the last 10 keys were dropped"
        );
    }
}
