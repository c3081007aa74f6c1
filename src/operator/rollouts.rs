//! How a `Release` reports the staged rollouts of its channels: their status, what they make
//! of the Release's conditions, and an Event on every transition. The catalog starts rollouts
//! (`apply_release`, when the spec changes a channel that has a plan) and its driver moves
//! them; the operator only watches. Pure, so it is tested without an API server.
//!
//! Conditions keep their kstatus meaning, which is also what Argo CD's health check reads:
//! - a rollout under way is work in progress: `Reconciling=True`, `Ready=False`, with reason
//!   `RolloutProgressing` (Argo CD: Progressing) or `RolloutPaused` (Argo CD: Suspended);
//! - a rollback the spec still asks past is a failure a person must resolve: `Stalled=True`
//!   with reason `RolledBack` (Argo CD: Degraded), until the spec names another bundle for the
//!   channel or a new rollout replaces it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::conditions::Outcome;
use super::crd::{ChannelRolloutStatus, RolloutPhaseStatus};
use crate::catalog::DesiredRelease;
use crate::domain::rollout::{Rollout, RolloutPhase, ALL_DEVICES};
use crate::domain::{rfc3339, RecordId, Release as ReleaseRecord};

/// How often a Release with a rollout under way is looked at again, so its status follows the
/// driver (which moves rollouts once a second).
pub const ROLLOUT_POLL: Duration = Duration::from_secs(2);

/// Condition reason while a rollout advances.
pub const PROGRESSING: &str = "RolloutProgressing";
/// Condition reason while every rollout under way is paused.
pub const PAUSED: &str = "RolloutPaused";
/// Condition (`Stalled`) reason after a rollback, while the spec still names the canary.
pub const ROLLED_BACK: &str = "RolledBack";

/// One channel's rollout as its Release reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelRollout {
    pub channel: String,
    pub status: ChannelRolloutStatus,
    /// It rolled back and the channel stays on stable although the spec names the canary.
    pub holds_back: bool,
}

impl ChannelRollout {
    /// The report of `rollout`, with bundle version names from `versions` (the id when a
    /// bundle is unknown). `desired` and `record` are what the spec asks and what the channel
    /// serves, when the spec could be applied.
    pub fn new(
        rollout: &Rollout,
        versions: &BTreeMap<RecordId, String>,
        applied: Option<(&DesiredRelease, &ReleaseRecord)>,
    ) -> ChannelRollout {
        let version = |id: &RecordId| versions.get(id).cloned().unwrap_or_else(|| id.to_string());
        let phase = &rollout.progress.phase;
        let interval = i64::try_from(rollout.plan.interval.as_millis()).unwrap_or(i64::MAX);
        let canary = &rollout.canary_bundle_id;
        let holds_back = matches!(phase, RolloutPhase::RolledBack { .. })
            && applied.is_some_and(|(desired, record)| {
                desired.channels.get(&rollout.channel) == Some(canary)
                    && record.channels.get(&rollout.channel) != Some(canary)
            });
        ChannelRollout {
            channel: rollout.channel.to_string(),
            holds_back,
            status: ChannelRolloutStatus {
                id: rollout.id.to_string(),
                phase: match phase {
                    RolloutPhase::Progressing => RolloutPhaseStatus::Progressing,
                    RolloutPhase::Paused => RolloutPhaseStatus::Paused,
                    RolloutPhase::RolledBack { .. } => RolloutPhaseStatus::RolledBack,
                    RolloutPhase::Done => RolloutPhaseStatus::Done,
                },
                step: u32::try_from(rollout.progress.step + 1).unwrap_or(u32::MAX),
                steps: rollout.plan.percents(),
                percent: percent(rollout.share()),
                devices: rollout.health.devices,
                failed: rollout.health.failed,
                // Four decimals: enough to compare with the gate, short in `kubectl get -o yaml`.
                failure_rate: (rollout.health.failure_rate() * 10_000.0).round() / 10_000.0,
                stable: version(&rollout.stable_bundle_id),
                canary: version(canary),
                reason: phase.reason().map(str::to_string),
                started_at: rfc3339(rollout.started_at),
                next_step_at: (*phase == RolloutPhase::Progressing)
                    .then(|| rfc3339(rollout.progress.step_started_at.saturating_add(interval))),
                finished_at: rollout.finished_at.map(rfc3339),
            },
        }
    }

    /// Progressing or paused: part of the channel's devices get the canary.
    pub fn is_active(&self) -> bool {
        is_active(self.status.phase)
    }
}

fn is_active(phase: RolloutPhaseStatus) -> bool {
    matches!(
        phase,
        RolloutPhaseStatus::Progressing | RolloutPhaseStatus::Paused
    )
}

fn percent(share: u32) -> f64 {
    f64::from(share) * 100.0 / f64::from(ALL_DEVICES)
}

/// Writes a percent without a useless `.0` (`50`, `0.5`).
fn show_percent(percent: f64) -> String {
    format!("{percent}%")
}

/// What the rollouts make of a Release whose spec is applied: a rollback the spec still asks
/// past stalls it, a rollout under way keeps it reconciling (paused only when none advances),
/// and `None` leaves it Ready.
pub fn outcome(rollouts: &[ChannelRollout]) -> Option<Outcome> {
    let held_back: Vec<String> = rollouts
        .iter()
        .filter(|r| r.holds_back)
        .map(|r| {
            let s = &r.status;
            format!(
                "{}: rolled back from {} to {}: {}; name another bundle for {} to roll out again",
                r.channel,
                s.canary,
                s.stable,
                s.reason.as_deref().unwrap_or("no reason given"),
                r.channel
            )
        })
        .collect();
    if !held_back.is_empty() {
        return Some(Outcome::Stalled {
            reason: ROLLED_BACK.into(),
            message: held_back.join("; "),
        });
    }
    let active: Vec<&ChannelRollout> = rollouts.iter().filter(|r| r.is_active()).collect();
    if active.is_empty() {
        return None;
    }
    let advancing = active
        .iter()
        .any(|r| r.status.phase == RolloutPhaseStatus::Progressing);
    let message = active
        .iter()
        .map(|r| describe_active(&r.channel, &r.status))
        .collect::<Vec<_>>()
        .join("; ");
    Some(Outcome::Progressing {
        reason: if advancing { PROGRESSING } else { PAUSED }.into(),
        message,
    })
}

fn describe_active(channel: &str, s: &ChannelRolloutStatus) -> String {
    let position = format!(
        "{} of devices on {} (step {} of {}; {} devices reported, {} failed)",
        show_percent(s.percent),
        s.canary,
        s.step,
        s.steps.len(),
        s.devices,
        s.failed
    );
    if s.phase == RolloutPhaseStatus::Paused {
        format!("{channel}: paused at {position}; resume, promote or abort it through the API")
    } else {
        format!("{channel}: rolling out, {position}")
    }
}

/// The `serving` summary of a channel: its version, and the canary's share while one rolls out
/// (`production=1.4.1 (50% on 1.5.0)`).
pub fn serving_entry(
    channel: &str,
    version: &str,
    rollout: Option<&ChannelRolloutStatus>,
) -> String {
    match rollout.filter(|r| is_active(r.phase)) {
        Some(r) => format!(
            "{channel}={version} ({} on {})",
            show_percent(r.percent),
            r.canary
        ),
        None => format!("{channel}={version}"),
    }
}

/// An Event to publish about a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

impl RolloutEvent {
    fn normal(reason: &'static str, note: String) -> RolloutEvent {
        RolloutEvent {
            warning: false,
            reason,
            note,
        }
    }
}

/// The transitions from the rollout the status showed (`previous`) to `current`, as Events:
/// started, step advanced, paused, resumed, completed (Normal), rolled back (Warning, with the
/// reason). Comparing with the stored status, not with memory, is what keeps a restarted
/// operator from announcing again what it announced before.
pub fn transitions(
    channel: &str,
    previous: Option<&ChannelRolloutStatus>,
    current: &ChannelRolloutStatus,
) -> Vec<RolloutEvent> {
    let mut events = Vec::new();
    // A rollout the status did not show yet counts as seen at its first step.
    let (phase, step) = match previous.filter(|p| p.id == current.id) {
        Some(previous) => (previous.phase, previous.step),
        None => {
            events.push(RolloutEvent::normal(
                "RolloutStarted",
                format!(
                    "{channel}: rolling out {} (from {}) in steps of {}",
                    current.canary,
                    current.stable,
                    current
                        .steps
                        .iter()
                        .map(|p| show_percent(*p))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            (RolloutPhaseStatus::Progressing, 1)
        }
    };
    if !is_active(phase) {
        return events;
    }
    if current.step > step && is_active(current.phase) {
        events.push(RolloutEvent::normal(
            "RolloutStepAdvanced",
            format!(
                "{channel}: {} now reaches {} of devices (step {} of {})",
                current.canary,
                show_percent(current.percent),
                current.step,
                current.steps.len()
            ),
        ));
    }
    match (phase, current.phase) {
        (RolloutPhaseStatus::Progressing, RolloutPhaseStatus::Paused) => {
            events.push(RolloutEvent::normal(
                "RolloutPaused",
                format!(
                    "{channel}: paused at {} of devices on {}",
                    show_percent(current.percent),
                    current.canary
                ),
            ))
        }
        (RolloutPhaseStatus::Paused, RolloutPhaseStatus::Progressing) => {
            events.push(RolloutEvent::normal(
                "RolloutResumed",
                format!(
                    "{channel}: resumed at {} of devices on {}",
                    show_percent(current.percent),
                    current.canary
                ),
            ))
        }
        (_, RolloutPhaseStatus::Done) => events.push(RolloutEvent::normal(
            "RolloutCompleted",
            format!(
                "{channel}: every device gets {} (was {})",
                current.canary, current.stable
            ),
        )),
        (_, RolloutPhaseStatus::RolledBack) => events.push(RolloutEvent {
            warning: true,
            reason: "RolloutRolledBack",
            note: format!(
                "{channel}: every device is back on {} instead of {}: {}",
                current.stable,
                current.canary,
                current.reason.as_deref().unwrap_or("no reason given")
            ),
        }),
        _ => {}
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, phase: RolloutPhaseStatus, step: u32) -> ChannelRolloutStatus {
        let steps = vec![5.0, 50.0, 100.0];
        ChannelRolloutStatus {
            id: id.into(),
            phase,
            step,
            percent: steps[step as usize - 1],
            steps,
            devices: 40,
            failed: 1,
            failure_rate: 0.025,
            stable: "1.0.1".into(),
            canary: "1.0.2".into(),
            reason: (phase == RolloutPhaseStatus::RolledBack)
                .then(|| "9 of 40 devices failed on the canary".into()),
            started_at: "2026-11-27T10:00:00Z".into(),
            next_step_at: None,
            finished_at: None,
        }
    }

    fn reasons(events: &[RolloutEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.reason).collect()
    }

    use RolloutPhaseStatus::{Done, Paused, Progressing, RolledBack};

    #[test]
    fn every_transition_is_announced_once() {
        let start = status("r1", Progressing, 1);
        assert_eq!(
            reasons(&transitions("production", None, &start)),
            ["RolloutStarted"]
        );
        assert!(
            transitions("production", Some(&start), &start).is_empty(),
            "nothing moved: nothing to say (a restart compares with the stored status)"
        );
        let second = status("r1", Progressing, 2);
        let advanced = transitions("production", Some(&start), &second);
        assert_eq!(reasons(&advanced), ["RolloutStepAdvanced"]);
        assert!(advanced[0].note.contains("50% of devices"), "{advanced:?}");
        let paused = status("r1", Paused, 2);
        assert_eq!(
            reasons(&transitions("production", Some(&second), &paused)),
            ["RolloutPaused"]
        );
        assert_eq!(
            reasons(&transitions("production", Some(&paused), &second)),
            ["RolloutResumed"]
        );
        assert_eq!(
            reasons(&transitions(
                "production",
                Some(&second),
                &status("r1", Done, 3)
            )),
            ["RolloutCompleted"]
        );
        let rolled_back = transitions("production", Some(&second), &status("r1", RolledBack, 2));
        assert_eq!(reasons(&rolled_back), ["RolloutRolledBack"]);
        assert!(rolled_back[0].warning);
        assert!(
            rolled_back[0].note.contains("9 of 40 devices failed"),
            "{rolled_back:?}"
        );
        assert!(
            transitions(
                "production",
                Some(&status("r1", RolledBack, 2)),
                &status("r1", RolledBack, 2)
            )
            .is_empty(),
            "a finished rollout says nothing more"
        );
    }

    #[test]
    fn what_happened_unseen_is_told_in_order() {
        // A new rollout that already moved on (the operator was down meanwhile).
        assert_eq!(
            reasons(&transitions(
                "production",
                Some(&status("r1", Done, 3)),
                &status("r2", Progressing, 2)
            )),
            ["RolloutStarted", "RolloutStepAdvanced"]
        );
        assert_eq!(
            reasons(&transitions(
                "production",
                None,
                &status("r2", RolledBack, 1)
            )),
            ["RolloutStarted", "RolloutRolledBack"]
        );
        assert_eq!(
            reasons(&transitions(
                "production",
                Some(&status("r2", Progressing, 1)),
                &status("r2", Paused, 2)
            )),
            ["RolloutStepAdvanced", "RolloutPaused"]
        );
    }

    fn report(channel: &str, status: ChannelRolloutStatus, holds_back: bool) -> ChannelRollout {
        ChannelRollout {
            channel: channel.into(),
            status,
            holds_back,
        }
    }

    #[test]
    fn a_rollback_stalls_a_rollout_under_way_reconciles() {
        assert_eq!(
            outcome(&[report("beta", status("r0", Done, 3), false)]),
            None
        );
        assert_eq!(
            outcome(&[report("beta", status("r0", RolledBack, 2), false)]),
            None,
            "a rollback the spec moved past (another bundle, or no plan) is history"
        );
        let Some(Outcome::Progressing { reason, message }) =
            outcome(&[report("production", status("r1", Progressing, 2), false)])
        else {
            panic!("a rollout under way")
        };
        assert_eq!(reason, PROGRESSING);
        assert!(message.contains("50% of devices on 1.0.2"), "{message}");
        let paused = [
            report("production", status("r1", Paused, 2), false),
            report("beta", status("r2", Done, 3), false),
        ];
        assert!(matches!(
            outcome(&paused),
            Some(Outcome::Progressing { reason, .. }) if reason == PAUSED
        ));
        let mixed = [
            report("production", status("r1", Paused, 2), false),
            report("beta", status("r2", Progressing, 1), false),
        ];
        assert!(matches!(
            outcome(&mixed),
            Some(Outcome::Progressing { reason, .. }) if reason == PROGRESSING
        ));
        let Some(Outcome::Stalled { reason, message }) = outcome(&[
            report("production", status("r1", RolledBack, 2), true),
            report("beta", status("r2", Progressing, 1), false),
        ]) else {
            panic!("a rollback held back")
        };
        assert_eq!(reason, ROLLED_BACK);
        assert!(
            message.contains("production: rolled back from 1.0.2 to 1.0.1: 9 of 40"),
            "{message}"
        );
    }

    #[test]
    fn serving_shows_the_canarys_share_while_it_rolls_out() {
        let active = status("r1", Progressing, 1);
        assert_eq!(
            serving_entry("production", "1.0.1", Some(&active)),
            "production=1.0.1 (5% on 1.0.2)"
        );
        assert_eq!(
            serving_entry("production", "1.0.2", Some(&status("r1", Done, 3))),
            "production=1.0.2"
        );
    }
}
