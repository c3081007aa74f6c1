//! Staged rollouts of a channel, as pure decisions: which devices are in the canary, and what a
//! rollout does next given how long its step has run and how healthy the canary is. Storage,
//! the driver that applies these decisions and the device path build on this module.
//!
//! - **Buckets are computed, not stored.** A device's bucket is a stable hash of the rollout's
//!   salt and its device id, in basis points (0..10,000). A device is in the canary while its
//!   bucket is below the current step's share, so it never flips back and forth while the share
//!   only grows, and a new rollout (a new salt) draws a new sample.
//! - **Health** is counted in distinct devices of the canary: a device that installed the
//!   canary, or failed with it, counts once however many events it sends, and only devices the
//!   server answered with the canary count at all (stats are written by anyone).

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::stats::{ActivityKind, StatsEvent};
use super::{ChannelName, InvalidInput, RecordId, ResourceRef, UnixMillis};

/// Shares are in basis points: 10,000 is every device.
pub const ALL_DEVICES: u32 = 10_000;
/// The shortest time between steps (tests run rollouts in seconds).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Most steps in a plan.
pub const MAX_STEPS: usize = 20;
/// The health window when a plan names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// A crash or reset reported this soon after a device switched to the canary counts as a
/// failure of the canary (later ones are the app's own business).
pub const CRASH_AFTER_SET: Duration = Duration::from_secs(600);
/// Distinct devices one process tracks per rollout: the sample health is computed from.
pub const MAX_TRACKED_DEVICES: usize = 100_000;

/// A device as one rollout sees it: its bucket, and a key that stands for its id in the
/// rollout's health records (the id itself is not stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceDraw {
    pub bucket: u32,
    pub key: i64,
}

/// Draws a device for a rollout: the same for the same salt and id.
pub fn draw(salt: &str, device_id: &str) -> DeviceDraw {
    let digest = Sha256::new()
        .chain_update(salt.as_bytes())
        .chain_update([0])
        .chain_update(device_id.as_bytes())
        .finalize();
    let head = u64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"));
    let tail = i64::from_be_bytes(digest[8..16].try_into().expect("a SHA-256 has 32 bytes"));
    DeviceDraw {
        bucket: (head % u64::from(ALL_DEVICES)) as u32,
        key: tail,
    }
}

/// The bucket of a device in a rollout: `0..ALL_DEVICES`, the same for the same salt and id.
pub fn bucket(salt: &str, device_id: &str) -> u32 {
    draw(salt, device_id).bucket
}

/// Whether a device gets the canary while the rollout is at `share` basis points.
pub fn in_canary(salt: &str, device_id: &str, share: u32) -> bool {
    bucket(salt, device_id) < share
}

/// A new rollout's salt: random, so nobody can pick device ids that land in the canary before
/// it starts.
pub fn new_salt() -> String {
    super::ids::random_hex::<16>()
}

/// How a rollout proceeds: the share of devices at each step, how long each step must stay
/// healthy, and the health gate.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutPlan {
    /// Shares in basis points, strictly increasing, the last one [`ALL_DEVICES`].
    pub steps: Vec<u32>,
    /// How long a step must run, healthy, before the next one.
    pub interval: Duration,
    /// The share of the canary's devices that may fail (0.0 to 1.0) before it rolls back.
    pub max_failure_rate: f64,
    /// Devices that must have reported on the canary before a step may advance.
    pub min_devices: u64,
    /// Health counts what devices reported over this much time (and since the rollout began).
    pub window: Duration,
}

impl RolloutPlan {
    /// A plan from percentages as people write them (`[5, 25, 50, 100]`), checked; errors name
    /// the field.
    pub fn new(
        percents: &[f64],
        interval: Duration,
        window: Duration,
        max_failure_rate: f64,
        min_devices: u64,
    ) -> Result<RolloutPlan, InvalidInput> {
        if percents.is_empty() || percents.len() > MAX_STEPS {
            return Err(InvalidInput(format!(
                "steps: give 1 to {MAX_STEPS} percentages, the last one 100"
            )));
        }
        let mut steps = Vec::with_capacity(percents.len());
        for percent in percents {
            if !(percent.is_finite() && *percent > 0.0 && *percent <= 100.0) {
                return Err(InvalidInput(format!(
                    "steps: {percent} is not a percentage above 0 and at most 100"
                )));
            }
            let share = (percent * 100.0).round() as u32;
            if share == 0 {
                return Err(InvalidInput(format!(
                    "steps: {percent} rounds to no device (the finest step is 0.01)"
                )));
            }
            if steps.last().is_some_and(|last| *last >= share) {
                return Err(InvalidInput(
                    "steps: percentages must grow at every step".into(),
                ));
            }
            steps.push(share);
        }
        if steps.last() != Some(&ALL_DEVICES) {
            return Err(InvalidInput("steps: the last step must be 100".into()));
        }
        if interval < MIN_INTERVAL || interval > MAX_DURATION {
            return Err(InvalidInput(
                "interval: at least 1s and at most 30 days".into(),
            ));
        }
        if window < MIN_INTERVAL || window > MAX_DURATION {
            return Err(InvalidInput(
                "window: at least 1s and at most 30 days".into(),
            ));
        }
        if min_devices > MAX_MIN_DEVICES {
            return Err(InvalidInput(format!(
                "minDevices: at most {MAX_MIN_DEVICES}"
            )));
        }
        if !(0.0..=1.0).contains(&max_failure_rate) {
            return Err(InvalidInput(format!(
                "maxFailureRate: {max_failure_rate} is not between 0 and 1"
            )));
        }
        Ok(RolloutPlan {
            steps,
            interval,
            max_failure_rate,
            min_devices,
            window,
        })
    }

    /// The steps as percentages, as people wrote them.
    pub fn percents(&self) -> Vec<f64> {
        self.steps.iter().map(|s| f64::from(*s) / 100.0).collect()
    }
}

/// A rollout plan as people write it, in a request or a `Release` resource: percentages and Go
/// durations. Absent fields take the defaults below.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolloutSpec {
    /// Default `[10, 50, 100]`.
    pub steps: Option<Vec<f64>>,
    /// Default `10m`.
    pub interval: Option<String>,
    /// Default `1h`.
    pub window: Option<String>,
    /// Default `0.05`.
    pub max_failure_rate: Option<f64>,
    /// Default `10`.
    pub min_devices: Option<u64>,
}

impl RolloutSpec {
    /// The plan, checked; errors name the field.
    pub fn plan(&self) -> Result<RolloutPlan, InvalidInput> {
        let duration = |field: &str, value: Option<&str>, default: Duration| match value {
            None => Ok(default),
            Some(text) => super::duration::parse_go_duration(text)
                .map_err(|e| InvalidInput(format!("{field}: {e}"))),
        };
        RolloutPlan::new(
            self.steps.as_deref().unwrap_or(&[10.0, 50.0, 100.0]),
            duration(
                "interval",
                self.interval.as_deref(),
                Duration::from_secs(600),
            )?,
            duration("window", self.window.as_deref(), DEFAULT_WINDOW)?,
            self.max_failure_rate.unwrap_or(0.05),
            self.min_devices.unwrap_or(10),
        )
    }
}

/// The longest interval or window (a rollout is not meant to take months per step).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);
/// More devices than one process tracks could never be reached.
const MAX_MIN_DEVICES: u64 = MAX_TRACKED_DEVICES as u64;

/// What the canary's devices reported since the rollout started (distinct devices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CanaryHealth {
    /// Devices that reported anything about the canary: installed it, or failed with it.
    pub devices: u64,
    /// Of those, devices that failed (a failed download, install, checksum, decryption or
    /// unzip, or a rollback soon after switching).
    pub failed: u64,
}

impl CanaryHealth {
    /// Failed devices over reporting devices (0 when none reported).
    pub fn failure_rate(self) -> f64 {
        if self.devices == 0 {
            0.0
        } else {
            self.failed as f64 / self.devices as f64
        }
    }
}

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutPhase {
    Progressing,
    /// Stopped by a person; resumes where it was.
    Paused,
    /// Every device is back on the stable bundle.
    RolledBack {
        reason: String,
    },
    /// The canary became the channel's bundle.
    Done,
}

impl RolloutPhase {
    /// As stored and shown: `progressing`, `paused`, `rolled_back`, `done`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "progressing",
            RolloutPhase::Paused => "paused",
            RolloutPhase::RolledBack { .. } => "rolled_back",
            RolloutPhase::Done => "done",
        }
    }

    /// From the stored name and reason.
    pub fn from_stored(name: &str, reason: Option<String>) -> Option<RolloutPhase> {
        Some(match name {
            "progressing" => RolloutPhase::Progressing,
            "paused" => RolloutPhase::Paused,
            "rolled_back" => RolloutPhase::RolledBack {
                reason: reason.unwrap_or_default(),
            },
            "done" => RolloutPhase::Done,
            _ => return None,
        })
    }

    /// Progressing or paused: the canary is served to part of the devices.
    pub fn is_active(&self) -> bool {
        matches!(self, RolloutPhase::Progressing | RolloutPhase::Paused)
    }

    /// Why it rolled back.
    pub fn reason(&self) -> Option<&str> {
        match self {
            RolloutPhase::RolledBack { reason } => Some(reason),
            _ => None,
        }
    }
}

/// A rollout's position: enough to resume after a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutProgress {
    pub phase: RolloutPhase,
    /// Index into [`RolloutPlan::steps`].
    pub step: usize,
    /// When the current step began (or resumed).
    pub step_started_at: UnixMillis,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutDecision {
    /// Nothing yet; look again later.
    Wait,
    /// Move to this step.
    Advance { step: usize },
    /// The last step ran healthy: the canary becomes the channel's bundle.
    Complete,
    /// The canary failed the gate: every device back to stable.
    RollBack { reason: String },
}

impl RolloutProgress {
    /// The share of devices in the canary now.
    pub fn share(&self, plan: &RolloutPlan) -> u32 {
        match self.phase {
            RolloutPhase::Progressing | RolloutPhase::Paused => {
                plan.steps.get(self.step).copied().unwrap_or(ALL_DEVICES)
            }
            RolloutPhase::RolledBack { .. } => 0,
            RolloutPhase::Done => ALL_DEVICES,
        }
    }

    /// The next move of an active rollout. The gate is checked first and at any time, paused
    /// or not (a failing canary rolls back as soon as enough devices reported, without waiting
    /// for the interval); a progressing step advances once it has run for the interval with at
    /// least `min_devices` reporting and the failure rate within the gate.
    pub fn decide(
        &self,
        plan: &RolloutPlan,
        health: CanaryHealth,
        now: UnixMillis,
    ) -> RolloutDecision {
        if !self.phase.is_active() {
            return RolloutDecision::Wait;
        }
        let enough = health.devices >= plan.min_devices.max(1);
        let rate = health.failure_rate();
        // A paused rollout still rolls back: pausing holds the share, not the gate.
        if enough && rate > plan.max_failure_rate {
            return RolloutDecision::RollBack {
                reason: format!(
                    "{} of {} devices failed on the canary ({:.1}%, the gate is {:.1}%)",
                    health.failed,
                    health.devices,
                    rate * 100.0,
                    plan.max_failure_rate * 100.0
                ),
            };
        }
        let interval = i64::try_from(plan.interval.as_millis()).unwrap_or(i64::MAX);
        let step_done = now.saturating_sub(self.step_started_at) >= interval;
        if self.phase == RolloutPhase::Paused || !(step_done && enough) {
            return RolloutDecision::Wait;
        }
        if self.step + 1 >= plan.steps.len() {
            RolloutDecision::Complete
        } else {
            RolloutDecision::Advance {
                step: self.step + 1,
            }
        }
    }
}

/// A staged rollout of one channel of one release, from the bundle the channel serves
/// (stable) to another (canary). The channel keeps pointing at stable until the rollout
/// completes; devices in the canary get the canary meanwhile.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: RecordId,
    pub release_id: RecordId,
    pub app_id: String,
    pub channel: ChannelName,
    pub stable_bundle_id: RecordId,
    pub canary_bundle_id: RecordId,
    pub plan: RolloutPlan,
    pub progress: RolloutProgress,
    /// Draws this rollout's sample of devices.
    pub salt: String,
    /// The health the driver saw last (kept once the rollout ends).
    pub health: CanaryHealth,
    /// Who started it: a principal name, or the resource.
    pub started_by: String,
    /// The Kubernetes `Release` that started it, if any.
    pub owner: Option<ResourceRef>,
    pub started_at: UnixMillis,
    pub updated_at: UnixMillis,
    pub finished_at: Option<UnixMillis>,
    /// Moves by one at every write: a write names the revision it read, so two drivers (or a
    /// driver and a person) never both apply a step.
    pub revision: i64,
}

impl Rollout {
    /// The share of devices in the canary now.
    pub fn share(&self) -> u32 {
        self.progress.share(&self.plan)
    }

    /// Where health counting starts at `now`: the rolling window, never before the start.
    pub fn health_since(&self, now: UnixMillis) -> UnixMillis {
        let window = i64::try_from(self.plan.window.as_millis()).unwrap_or(i64::MAX);
        now.saturating_sub(window).max(self.started_at)
    }

    /// The same rollout moved on by a decision or a person, one revision later.
    pub fn moved(&self, progress: RolloutProgress, now: UnixMillis) -> Rollout {
        let finished = !progress.phase.is_active();
        Rollout {
            progress,
            updated_at: now,
            finished_at: finished.then_some(now),
            revision: self.revision + 1,
            ..self.clone()
        }
    }
}

/// What a device did about a rollout's canary, as its health records keep it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CanarySignal {
    /// The server answered the device with the canary.
    Answered,
    /// The device switched to the canary (`set`).
    Installed,
    /// The device failed to download or apply it (any `*_fail` action).
    Failed,
    /// The app crashed or was reset while on the canary: a failure when it comes within
    /// [`CRASH_AFTER_SET`] of the install.
    Crashed,
}

impl CanarySignal {
    /// What a stats event says about the bundle it names, if anything.
    pub fn of(event: &StatsEvent) -> Option<CanarySignal> {
        match ActivityKind::of(&event.action) {
            ActivityKind::Install => Some(CanarySignal::Installed),
            ActivityKind::Failure => Some(CanarySignal::Failed),
            _ if CRASH_ACTIONS.contains(&event.action.as_str()) => Some(CanarySignal::Crashed),
            _ => None,
        }
    }
}

/// Actions that mean the app went down or was reset (the plugin's crash reports and `reset`).
const CRASH_ACTIONS: [&str; 5] = [
    "app_crash",
    "app_crash_native",
    "app_anr",
    "app_initialization_failure",
    "reset",
];

/// The bundle a stats event is about: its version name without a per-file `:path` suffix.
pub fn event_version(event: &StatsEvent) -> Option<&str> {
    let name = event.version_name.as_deref()?;
    Some(name.split(':').next().unwrap_or(name))
}

/// One device's signal for a rollout's health records, batched by the process that saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryMark {
    pub rollout_id: RecordId,
    /// [`DeviceDraw::key`].
    pub device_key: i64,
    pub signal: CanarySignal,
    pub at: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RolloutPlan {
        RolloutPlan::new(
            &[5.0, 25.0, 50.0, 100.0],
            Duration::from_secs(60),
            DEFAULT_WINDOW,
            0.05,
            20,
        )
        .unwrap()
    }

    fn device(n: usize) -> String {
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    #[test]
    fn buckets_are_uniform_within_two_percent_at_every_step() {
        let ids: Vec<String> = (0..5_000).map(device).collect();
        for share in plan().steps {
            let inside = ids
                .iter()
                .filter(|id| in_canary("salt-1", id, share))
                .count();
            let measured = inside as f64 / ids.len() as f64;
            let target = f64::from(share) / f64::from(ALL_DEVICES);
            assert!(
                (measured - target).abs() <= 0.02,
                "{measured} of devices at a {target} step"
            );
        }
    }

    #[test]
    fn devices_stay_in_the_canary_as_it_grows_and_salts_draw_new_samples() {
        let steps = plan().steps;
        for n in 0..2_000 {
            let id = device(n);
            let joined = steps
                .iter()
                .position(|share| in_canary("salt-1", &id, *share));
            if let Some(first) = joined {
                assert!(
                    steps[first..]
                        .iter()
                        .all(|share| in_canary("salt-1", &id, *share)),
                    "{id} left the canary"
                );
            }
        }
        let same = (0..2_000)
            .filter(|n| {
                in_canary("salt-1", &device(*n), 500) == in_canary("salt-2", &device(*n), 500)
            })
            .count();
        assert!(same < 2_000, "another rollout draws another sample");
    }

    #[test]
    fn plans_refuse_what_cannot_work_naming_the_field() {
        let interval = Duration::from_secs(60);
        for (steps, field) in [
            (vec![], "steps"),
            (vec![50.0, 25.0, 100.0], "steps"),
            (vec![5.0, 50.0], "steps"),
            (vec![0.0, 100.0], "steps"),
            (vec![5.0, 150.0], "steps"),
            (vec![f64::NAN, 100.0], "steps"),
            (vec![0.001, 100.0], "steps"),
        ] {
            let error = RolloutPlan::new(&steps, interval, interval, 0.1, 1).unwrap_err();
            assert!(error.0.starts_with(field), "{steps:?}: {error}");
        }
        let short = Duration::from_millis(10);
        let error = RolloutPlan::new(&[100.0], short, interval, 0.1, 1).unwrap_err();
        assert!(error.0.starts_with("interval"), "{error}");
        let error = RolloutPlan::new(&[100.0], interval, short, 0.1, 1).unwrap_err();
        assert!(error.0.starts_with("window"), "{error}");
        let error = RolloutPlan::new(&[100.0], interval, interval, 1.5, 1).unwrap_err();
        assert!(error.0.starts_with("maxFailureRate"), "{error}");
        let error = RolloutPlan::new(&[100.0], interval, interval, 0.1, u64::MAX).unwrap_err();
        assert!(error.0.starts_with("minDevices"), "{error}");
        assert_eq!(
            RolloutPlan::new(&[0.5, 100.0], interval, interval, 0.1, 1)
                .unwrap()
                .steps,
            [50, ALL_DEVICES]
        );
    }

    #[test]
    fn a_healthy_step_advances_after_its_interval_and_the_last_completes() {
        let plan = plan();
        let healthy = CanaryHealth {
            devices: 40,
            failed: 1,
        };
        let mut progress = RolloutProgress {
            phase: RolloutPhase::Progressing,
            step: 0,
            step_started_at: 0,
        };
        assert_eq!(
            progress.decide(&plan, healthy, 59_999),
            RolloutDecision::Wait
        );
        assert_eq!(
            progress.decide(&plan, healthy, 60_000),
            RolloutDecision::Advance { step: 1 }
        );
        let too_few = CanaryHealth {
            devices: 19,
            failed: 0,
        };
        assert_eq!(
            progress.decide(&plan, too_few, 600_000),
            RolloutDecision::Wait,
            "not enough devices reported"
        );
        progress.step = 3;
        assert_eq!(progress.share(&plan), ALL_DEVICES);
        assert_eq!(
            progress.decide(&plan, healthy, 60_000),
            RolloutDecision::Complete
        );
        progress.phase = RolloutPhase::Paused;
        assert_eq!(
            progress.decide(&plan, healthy, 60_000),
            RolloutDecision::Wait
        );
    }

    #[test]
    fn stats_actions_map_to_canary_signals() {
        let event = |action: &str, version: &str| StatsEvent::example("d", action, version);
        for (action, signal) in [
            ("set", Some(CanarySignal::Installed)),
            ("update_fail", Some(CanarySignal::Failed)),
            ("download_fail", Some(CanarySignal::Failed)),
            ("checksum_fail", Some(CanarySignal::Failed)),
            ("decrypt_fail", Some(CanarySignal::Failed)),
            ("unzip_fail", Some(CanarySignal::Failed)),
            ("app_crash", Some(CanarySignal::Crashed)),
            ("reset", Some(CanarySignal::Crashed)),
            ("download_complete", None),
            ("app_moved_to_foreground", None),
        ] {
            assert_eq!(
                CanarySignal::of(&event(action, "1.0.0")),
                signal,
                "{action}"
            );
        }
        let per_file = event("download_fail", "2.0.0:www/app.js");
        assert_eq!(event_version(&per_file), Some("2.0.0"));
    }

    #[test]
    fn a_failing_canary_rolls_back_at_once_with_the_reason() {
        let plan = plan();
        let progress = RolloutProgress {
            phase: RolloutPhase::Progressing,
            step: 1,
            step_started_at: 0,
        };
        let failing = CanaryHealth {
            devices: 20,
            failed: 2,
        };
        let RolloutDecision::RollBack { reason } = progress.decide(&plan, failing, 1) else {
            panic!("10% failed against a 5% gate")
        };
        assert!(reason.contains("2 of 20"), "{reason}");
        let paused = RolloutProgress {
            phase: RolloutPhase::Paused,
            ..progress.clone()
        };
        assert!(
            matches!(
                paused.decide(&plan, failing, 1),
                RolloutDecision::RollBack { .. }
            ),
            "pausing holds the share, not the gate"
        );
        let rolled_back = RolloutProgress {
            phase: RolloutPhase::RolledBack { reason },
            ..progress
        };
        assert_eq!(rolled_back.share(&plan), 0);
    }
}
