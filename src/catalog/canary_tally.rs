//! What this process saw of the devices in active rollouts' canaries, batched for the store.
//!
//! The device path only touches memory: a check that served the canary notes the device, a
//! stats event about a canary bundle notes its signal. Every second the catalog writes the
//! batch in one call ([`super::Catalog::run_rollout_background`]). Everything is bounded:
//! per rollout at most [`MAX_TRACKED_DEVICES`] devices are followed (the sample health is
//! computed from), and at most [`MAX_PENDING_MARKS`] marks wait for a write; past either,
//! marks are dropped and counted, never waited for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use crate::domain::rollout::{
    draw, event_version, CanaryMark, CanarySignal, Rollout, MAX_TRACKED_DEVICES,
};
use crate::domain::stats::StatsEvent;
use crate::domain::{RecordId, ReleaseKey, UnixMillis};

/// Marks waiting for the next write, at most.
pub const MAX_PENDING_MARKS: usize = 200_000;
/// Devices followed across every rollout, at most (about 40 MB).
pub const MAX_FOLLOWED_DEVICES: usize = 1_000_000;

/// What the tally needs to know about a rollout besides its record: its canary's version name
/// and its release's native build (read once per rollout: neither ever changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryFacts {
    pub version: String,
    pub release: ReleaseKey,
}

/// An active rollout as the stats path needs it.
#[derive(Debug, Clone)]
struct ActiveCanary {
    rollout_id: RecordId,
    facts: CanaryFacts,
    salt: String,
    share: u32,
}

impl ActiveCanary {
    /// Whether `event` can be about this rollout: it names the canary, and, when it says which
    /// native build sent it (plugins send `platform`, `version_build`, `version_code`), that
    /// build is the rollout's release. Devices of other releases are never hashed for it.
    fn concerns(&self, event: &StatsEvent, version: &str) -> bool {
        if self.facts.version != version {
            return false;
        }
        let release = &self.facts.release;
        match (&event.platform, &event.version_build, &event.version_code) {
            (Some(platform), Some(build), Some(code)) => {
                release.platform.as_str() == platform
                    && &release.version_name == build
                    && &release.version_code == code
            }
            _ => true,
        }
    }
}

#[derive(Default)]
pub struct CanaryTally {
    /// Active rollouts by app id (replaced whole at each refresh).
    active: RwLock<Arc<HashMap<String, Vec<ActiveCanary>>>>,
    /// Read-locked by checks of devices already noted (most checks during a rollout), write-
    /// locked to note something new.
    state: RwLock<TallyState>,
}

#[derive(Default)]
struct TallyState {
    /// Per rollout, the devices followed and which signals were already noted for each (a
    /// device that checks a thousand times is written once per signal).
    followed: HashMap<RecordId, HashMap<i64, SignalsSeen>>,
    /// Devices in `followed`, over every rollout.
    followed_count: usize,
    pending: Vec<CanaryMark>,
    /// Moves at every [`CanaryTally::take`]: a device's signals are queued at most once per
    /// batch.
    batch: u32,
    dropped: u64,
}

/// What was queued for a device: `Answered` once ever, the other signals once per batch (the
/// store keeps their latest time; a device repeating one within a second changes nothing).
#[derive(Default, Clone, Copy)]
struct SignalsSeen {
    answered: bool,
    batch: u32,
    queued: u8,
}

impl CanarySignal {
    fn bit(self) -> u8 {
        match self {
            CanarySignal::Answered => 1,
            CanarySignal::Installed => 2,
            CanarySignal::Failed => 4,
            CanarySignal::Crashed => 8,
        }
    }
}

impl CanaryTally {
    /// Replaces the active rollouts the stats path looks for; forgets the devices of rollouts
    /// that are no longer active.
    /// `facts` holds what the tally knows of each rollout, by rollout id (rollouts without are
    /// left out).
    pub fn set_active(&self, rollouts: &[Rollout], facts: &HashMap<RecordId, CanaryFacts>) {
        let mut by_app: HashMap<String, Vec<ActiveCanary>> = HashMap::new();
        for rollout in rollouts.iter().filter(|r| r.progress.phase.is_active()) {
            let Some(facts) = facts.get(&rollout.id) else {
                continue;
            };
            by_app
                .entry(rollout.app_id.clone())
                .or_default()
                .push(ActiveCanary {
                    rollout_id: rollout.id.clone(),
                    facts: facts.clone(),
                    salt: rollout.salt.clone(),
                    share: rollout.share(),
                });
        }
        let ids: HashSet<&RecordId> = by_app.values().flatten().map(|c| &c.rollout_id).collect();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.followed.retain(|id, _| ids.contains(id));
        state.followed_count = state.followed.values().map(HashMap::len).sum();
        drop(state);
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(by_app);
    }

    /// What the tally knows of its active rollouts, by rollout id (so a refresh reads only
    /// rollouts it has not seen).
    pub fn known_facts(&self) -> HashMap<RecordId, CanaryFacts> {
        let active = self
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        active
            .values()
            .flatten()
            .map(|c| (c.rollout_id.clone(), c.facts.clone()))
            .collect()
    }

    /// A check answered `device_key` with the canary of `rollout_id`.
    pub fn answered(&self, rollout_id: &RecordId, device_key: i64, at: UnixMillis) {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let known = state
            .followed
            .get(rollout_id)
            .and_then(|devices| devices.get(&device_key))
            .is_some_and(|seen| seen.answered);
        drop(state);
        if !known {
            self.note(rollout_id, device_key, CanarySignal::Answered, at);
        }
    }

    /// Notes what stats events say about active canaries: only events about a canary bundle,
    /// from devices whose bucket is in the canary (no other device can have been answered
    /// with it).
    pub fn reported(&self, events: &[StatsEvent]) {
        let active = self
            .active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if active.is_empty() {
            return;
        }
        for event in events {
            let Some(canaries) = active.get(&event.app_id) else {
                continue;
            };
            let Some(signal) = CanarySignal::of(event) else {
                continue;
            };
            let Some(version) = event_version(event) else {
                continue;
            };
            for canary in canaries.iter().filter(|c| c.concerns(event, version)) {
                let drawn = draw(&canary.salt, &event.device_id);
                if drawn.bucket < canary.share {
                    self.note(&canary.rollout_id, drawn.key, signal, event.occurred_at);
                }
            }
        }
    }

    fn note(&self, rollout_id: &RecordId, device_key: i64, signal: CanarySignal, at: UnixMillis) {
        let mut guard = self.state.write().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        let full = state.followed_count >= MAX_FOLLOWED_DEVICES;
        let devices = match state.followed.get_mut(rollout_id) {
            Some(devices) => devices,
            None if full => {
                state.dropped += 1;
                return;
            }
            None => state.followed.entry(rollout_id.clone()).or_default(),
        };
        let room = devices.len() < MAX_TRACKED_DEVICES && !full;
        let seen = match devices.get_mut(&device_key) {
            Some(seen) => seen,
            None if !room => {
                state.dropped += 1;
                return;
            }
            None => {
                state.followed_count += 1;
                devices.entry(device_key).or_default()
            }
        };
        if signal == CanarySignal::Answered {
            if seen.answered {
                return;
            }
            seen.answered = true;
        } else {
            if seen.batch != state.batch {
                seen.batch = state.batch;
                seen.queued = 0;
            }
            if seen.queued & signal.bit() != 0 {
                return;
            }
            seen.queued |= signal.bit();
        }
        if state.pending.len() >= MAX_PENDING_MARKS {
            state.dropped += 1;
            return;
        }
        state.pending.push(CanaryMark {
            rollout_id: rollout_id.clone(),
            device_key,
            signal,
            at,
        });
    }

    /// The marks to write, and how many were dropped since the last call.
    pub fn take(&self) -> (Vec<CanaryMark>, u64) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.batch = state.batch.wrapping_add(1);
        (
            std::mem::take(&mut state.pending),
            std::mem::take(&mut state.dropped),
        )
    }

    /// Puts back marks a failed write could not store (they are tried again with the next
    /// batch, within the same bound).
    pub fn put_back(&self, marks: Vec<CanaryMark>) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let room = MAX_PENDING_MARKS.saturating_sub(state.pending.len());
        let lost = marks.len().saturating_sub(room);
        state.pending.extend(marks.into_iter().take(room));
        state.dropped += lost as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::rollout::{CanaryHealth, DEFAULT_WINDOW};
    use crate::domain::rollout::{RolloutPhase, RolloutPlan, RolloutProgress, ALL_DEVICES};
    use crate::domain::ChannelName;
    use std::time::Duration;

    fn rollout(share_percent: f64) -> Rollout {
        let plan = RolloutPlan::new(
            &[share_percent, 100.0],
            Duration::from_secs(1),
            DEFAULT_WINDOW,
            0.1,
            1,
        )
        .unwrap();
        Rollout {
            id: RecordId::generate(),
            release_id: RecordId::generate(),
            app_id: "com.example.app".into(),
            channel: ChannelName::default_channel(),
            stable_bundle_id: RecordId::generate(),
            canary_bundle_id: RecordId::generate(),
            plan,
            progress: RolloutProgress {
                phase: RolloutPhase::Progressing,
                step: 0,
                step_started_at: 0,
            },
            salt: "salt".into(),
            health: CanaryHealth::default(),
            started_by: "test".into(),
            owner: None,
            started_at: 0,
            updated_at: 0,
            finished_at: None,
            revision: 1,
        }
    }

    fn event(device: &str, action: &str, version: &str) -> StatsEvent {
        StatsEvent::example(device, action, version)
    }

    #[test]
    fn answers_are_noted_once_and_stats_only_for_the_canary() {
        let tally = CanaryTally::default();
        let rollout = rollout(50.0);
        let release = ReleaseKey {
            platform: crate::domain::Platform::Android,
            app_id: "com.example.app".into(),
            version_name: "1.0.0".into(),
            version_code: "10".into(),
        };
        let versions = HashMap::from([(
            rollout.id.clone(),
            CanaryFacts {
                version: "2.0.0".into(),
                release,
            },
        )]);
        tally.set_active(std::slice::from_ref(&rollout), &versions);
        let inside = (0..100)
            .map(|n| format!("device-{n}"))
            .find(|id| draw("salt", id).bucket < rollout.share())
            .unwrap();
        let outside = (0..100)
            .map(|n| format!("device-{n}"))
            .find(|id| draw("salt", id).bucket >= rollout.share())
            .unwrap();
        let key = draw("salt", &inside).key;
        tally.answered(&rollout.id, key, 1);
        tally.answered(&rollout.id, key, 2);
        tally.reported(&[
            event(&inside, "set", "2.0.0"),
            event(&inside, "set", "2.0.0"),
            event(&inside, "download_fail", "2.0.0:www/index.html"),
            event(&inside, "set", "1.0.0"),
            event(&inside, "app_moved_to_foreground", "2.0.0"),
            event(&outside, "update_fail", "2.0.0"),
        ]);
        let (marks, dropped) = tally.take();
        let signals: Vec<_> = marks.iter().map(|m| m.signal).collect();
        assert_eq!(
            signals,
            [
                CanarySignal::Answered,
                CanarySignal::Installed,
                CanarySignal::Failed
            ]
        );
        assert!(marks.iter().all(|m| m.device_key == key));
        assert_eq!(dropped, 0);
        tally.reported(&[event(&inside, "set", "2.0.0")]);
        tally.answered(&rollout.id, key, 3);
        let (marks, _) = tally.take();
        assert_eq!(
            marks.iter().map(|m| m.signal).collect::<Vec<_>>(),
            [CanarySignal::Installed],
            "a later batch records the install again, never the answer"
        );
        let from_build = |build: &str| StatsEvent {
            platform: Some("android".into()),
            version_build: Some(build.into()),
            version_code: Some("10".into()),
            ..event(&inside, "update_fail", "2.0.0")
        };
        tally.reported(&[from_build("2.0.0")]);
        assert!(
            tally.take().0.is_empty(),
            "another native build's report is not the rollout's"
        );
        tally.reported(&[from_build("1.0.0")]);
        assert_eq!(tally.take().0.len(), 1, "its own build's report is");

        tally.set_active(&[], &versions);
        tally.reported(&[event(&inside, "set", "2.0.0")]);
        assert!(
            tally.take().0.is_empty(),
            "finished rollouts are not followed"
        );
        assert_eq!(rollout.plan.steps.last(), Some(&ALL_DEVICES));
    }

    #[test]
    fn the_number_of_followed_devices_is_bounded() {
        let tally = CanaryTally::default();
        let id = RecordId::generate();
        for key in 0..(MAX_TRACKED_DEVICES as i64 + 10) {
            tally.answered(&id, key, 1);
        }
        let (marks, dropped) = tally.take();
        assert_eq!(marks.len(), MAX_TRACKED_DEVICES);
        assert_eq!(dropped, 10);
    }
}
