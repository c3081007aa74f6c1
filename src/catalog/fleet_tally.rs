//! Counts what checks and stats say about the fleet off the request path: a check or a report
//! adds a device hash to a bounded tally in memory (no allocation once its key is tallied),
//! and a background task turns the tallies into per-day (and, for checks, per-hour) sketches
//! and merges them into the store in one batch. Past the bounds, notes are dropped and
//! counted, never waited for.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;

use crate::domain::fleet::{FleetCount, FleetKey, Span};
use crate::domain::rollout::event_version;
use crate::domain::sketch::device_hash;
use crate::domain::stats::{aggregated_action, StatsEvent};
use crate::domain::{ChannelName, ReleaseRef, UnixMillis};

/// Most keys (hour, build, channel, bundle or report) tallied between two flushes.
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
    /// By a hash of (hour, key), checked against the key itself.
    tallies: HashMap<u64, Tally, BuildHasherDefault<SlotHasher>>,
    notes: usize,
}

/// The tally map's hash of a slot: the slot itself, which is already SipHash under the
/// tally's secret keys (hashing it again would cost a second SipHash per check, and could not
/// make it less predictable).
#[derive(Default)]
struct SlotHasher(u64);

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, _: &[u8]) {
        unreachable!("the tally map hashes only u64 slots");
    }

    fn write_u64(&mut self, slot: u64) {
        self.0 = slot;
    }
}

/// What was noted for one period and key between two flushes: the events, and the device
/// hashes (turned into sketches only when written, a few at a time, so memory stays at 8
/// bytes a note rather than a 4 KiB sketch a key).
#[derive(Debug, Clone)]
pub struct Tally {
    /// The hour of a check, the day of a report (reports are counted per day only).
    start: UnixMillis,
    key: FleetKey,
    events: u64,
    devices: Vec<u64>,
}

/// Device hashes a tally holds before it first drops repeats.
const FIRST_COMPACTION: usize = 64;

impl Tally {
    /// Adds a device's hash. A device checks many times between two flushes and its sketch
    /// needs it once, so when the list is full it first drops the repeats (sorted, then
    /// deduplicated): memory follows the distinct devices, not the checks, and a busy fleet
    /// does not reach [`MAX_NOTES`] by checking often. Returns how many repeats it dropped.
    fn add_device(&mut self, device: u64) -> usize {
        let mut repeats = 0;
        let capacity = self.devices.capacity();
        if self.devices.len() == capacity && capacity >= FIRST_COMPACTION {
            self.devices.sort_unstable();
            self.devices.dedup();
            repeats = capacity - self.devices.len();
            // Mostly distinct devices: grow now, so the next compaction is `capacity` notes
            // away (a compaction sorts the list: this keeps its cost per note logarithmic).
            if self.devices.len() > capacity / 2 {
                self.devices.reserve(capacity);
            }
        }
        self.devices.push(device);
        repeats
    }

    pub fn notes(&self) -> usize {
        self.devices.len()
    }

    pub fn key(&self) -> &FleetKey {
        &self.key
    }

    /// The counts this tally adds to: its day's, and for checks its hour's too.
    pub fn to_counts(&self) -> Vec<FleetCount> {
        let spans: &[Span] = match self.key {
            FleetKey::Check { .. } => &[Span::Day, Span::Hour],
            FleetKey::Report { .. } => &[Span::Day],
        };
        let mut day = FleetCount::new(Span::Day, self.start, self.key.clone());
        day.events = self.events;
        for device in &self.devices {
            day.devices.insert_hash(*device);
        }
        spans
            .iter()
            .map(|span| FleetCount {
                start: span.start_of(self.start),
                span: *span,
                ..day.clone()
            })
            .collect()
    }
}

impl FleetTally {
    /// A device of `release` on `channel` checked in running `bundle`.
    pub fn note_check(
        &self,
        release: ReleaseRef<'_>,
        channel: &ChannelName,
        bundle: &str,
        device_id: &str,
        at: UnixMillis,
    ) {
        let hour = Span::Hour.start_of(at);
        let slot = self.hasher.hash_one((hour, 0u8, release, channel, bundle));
        let matches = |key: &FleetKey| match key {
            FleetKey::Check {
                release: r,
                channel: c,
                bundle: b,
            } => release == *r && c == channel && b == bundle,
            FleetKey::Report { .. } => false,
        };
        self.note(slot, hour, matches, device_id, || FleetKey::Check {
            release: release.to_key(),
            channel: channel.clone(),
            bundle: bundle.to_string(),
        });
    }

    /// What a batch of stats reports: each action about a bundle.
    pub fn note_reports(&self, events: &[StatsEvent]) {
        for event in events {
            let Some(bundle) = event_version(event) else {
                continue;
            };
            let action = aggregated_action(&event.action);
            let day = Span::Day.start_of(event.occurred_at);
            let slot = self
                .hasher
                .hash_one((day, 1u8, &event.app_id, bundle, action));
            let matches = |key: &FleetKey| match key {
                FleetKey::Report {
                    app_id,
                    bundle: b,
                    action: a,
                } => *app_id == event.app_id && b == bundle && a == action,
                FleetKey::Check { .. } => false,
            };
            self.note(slot, day, matches, &event.device_id, || FleetKey::Report {
                app_id: event.app_id.clone(),
                bundle: bundle.to_string(),
                action: action.to_string(),
            });
        }
    }

    fn note(
        &self,
        slot: u64,
        start: UnixMillis,
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
            Some(tally) if tally.start == start && matches(&tally.key) => {
                tally.events += 1;
                let repeats = tally.add_device(device);
                state.notes -= repeats;
            }
            // Another key with the same 64-bit hash (vanishingly rare), or no room: dropped.
            Some(_) => return self.drop_note(),
            None if full => return self.drop_note(),
            None => {
                state.tallies.insert(
                    slot,
                    Tally {
                        start,
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

    /// Copies of what was noted for `apps` and not written yet.
    pub fn pending(&self, apps: &[String]) -> Vec<Tally> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .tallies
            .values()
            .filter(|t| apps.iter().any(|app| app == t.key.app_id()))
            .cloned()
            .collect()
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
    use crate::domain::ReleaseKey;

    fn release() -> ReleaseKey {
        ReleaseKey::example()
    }

    #[test]
    fn checks_and_reports_become_daily_and_hourly_counts() {
        let tally = FleetTally::default();
        let production = ChannelName::default_channel();
        const HOUR: i64 = 3_600_000;
        for (device, at) in [("a", 10), ("b", 10), ("a", HOUR + 10)] {
            tally.note_check(release().as_ref(), &production, "1.0.1", device, at);
        }
        tally.note_check(release().as_ref(), &production, "builtin", "c", 10);
        tally.note_check(
            release().as_ref(),
            &production,
            "1.0.1",
            "d",
            86_400_000 + 5,
        );
        tally.note_reports(&[
            StatsEvent::example("a", "set", "1.0.1"),
            StatsEvent::example("b", "download_fail", "1.0.1:assets/a.js"),
            StatsEvent::example("b", "app_moved_to_foreground", "1.0.1"),
            StatsEvent::example("b", "made_up_fail", "1.0.1"),
        ]);
        let tallies = tally.take();
        let merged: std::collections::BTreeMap<_, FleetCount> = tallies
            .iter()
            .flat_map(Tally::to_counts)
            .fold(Default::default(), |mut merged, count| {
                merged
                    .entry((count.span, count.start, count.key.clone()))
                    .and_modify(|c: &mut FleetCount| c.merge(&count))
                    .or_insert(count);
                merged
            });
        let summary = |span: Span, start: i64, bundle: &str| {
            merged
                .iter()
                .find(|((s, at, key), _)| {
                    *s == span
                        && *at == start
                        && matches!(key, FleetKey::Check { .. })
                        && key.bundle() == bundle
                })
                .map(|(_, c)| (c.events, c.devices.estimate()))
        };
        assert_eq!(
            summary(Span::Day, 0, "1.0.1"),
            Some((3, 2)),
            "three checks by two devices"
        );
        assert_eq!(summary(Span::Hour, 0, "1.0.1"), Some((2, 2)));
        assert_eq!(summary(Span::Hour, HOUR, "1.0.1"), Some((1, 1)));
        assert_eq!(
            summary(Span::Day, 86_400_000, "1.0.1"),
            Some((1, 1)),
            "the next day apart"
        );
        let actions: Vec<&str> = merged
            .keys()
            .filter_map(|(span, _, key)| match key {
                FleetKey::Report { bundle, action, .. } => {
                    assert_eq!(
                        (*span, bundle.as_str()),
                        (Span::Day, "1.0.1"),
                        "per-file failures count for their bundle; reports by day only"
                    );
                    Some(action.as_str())
                }
                FleetKey::Check { .. } => None,
            })
            .collect();
        assert_eq!(
            actions,
            [
                "app_moved_to_foreground",
                "download_fail",
                "other_fail",
                "set"
            ]
        );
        assert!(tally.take().is_empty(), "taken once");
    }

    #[test]
    fn a_tally_holds_each_device_about_once_however_often_it_checks() {
        let tally = FleetTally::default();
        let production = ChannelName::default_channel();
        let devices: Vec<String> = (0..1_000).map(|n| format!("device-{n}")).collect();
        // 1,000 devices, 200 checks each, in rounds (each round every device once).
        for _ in 0..200 {
            for device in &devices {
                tally.note_check(release().as_ref(), &production, "1.0.1", device, 10);
            }
        }
        // One more device, checking 50,000 times alone.
        for _ in 0..50_000 {
            tally.note_check(release().as_ref(), &production, "1.0.1", "busy", 10);
        }
        let state = tally.state.lock().unwrap();
        let held = state.notes;
        assert_eq!(
            held,
            state.tallies.values().map(Tally::notes).sum::<usize>(),
            "the bound counts what is held"
        );
        drop(state);
        assert!(held < 4 * 1_001, "{held} hashes held for 1,001 devices");
        let taken = tally.take();
        assert_eq!(taken.len(), 1);
        let day = taken[0]
            .to_counts()
            .into_iter()
            .find(|count| count.span == Span::Day)
            .unwrap();
        assert_eq!(day.events, 250_000, "every check is counted");
        let estimate = day.devices.estimate();
        assert!(
            (980..=1_020).contains(&estimate),
            "{estimate} devices estimated for 1,001"
        );
    }

    #[test]
    fn past_the_bounds_notes_are_dropped_not_waited_for() {
        let tally = FleetTally::default();
        let production = ChannelName::default_channel();
        for n in 0..MAX_KEYS + 10 {
            tally.note_check(release().as_ref(), &production, &n.to_string(), "a", 0);
        }
        assert_eq!(
            tally.take().len(),
            MAX_KEYS,
            "the last 10 keys were dropped"
        );
    }
}
