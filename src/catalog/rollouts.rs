//! Staged rollouts: start one on a channel, pause, resume, abort or promote it by hand, and the
//! driver that moves every progressing rollout on by itself (one process at a time, chosen by
//! a lease in the metadata store). The decisions are [`crate::domain::rollout`]'s; this module
//! stores them and keeps the answer cache and the canary tally in step.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::canary_tally::CanaryFacts;
use super::{Catalog, CatalogError};
use crate::domain::ownership::check_may_change;
use crate::domain::rollout::{
    new_salt, CanaryHealth, Rollout, RolloutDecision, RolloutPhase, RolloutPlan, RolloutProgress,
    CRASH_AFTER_SET,
};
use crate::domain::{now_millis, Actor, ChannelName, RecordId, Release, UnixMillis};
use crate::error::Chain;
use crate::store::StoreError;

/// The lease that makes one process the driver.
const DRIVER_LEASE: &str = "rollout-driver";
/// How long a driver's lease lasts without renewal: another process takes over this long after
/// the driver dies.
pub const DRIVER_LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the driver looks at rollouts, and the tally writes its batch.
pub const ROLLOUT_TICK: Duration = Duration::from_secs(1);
/// The shortest time between two writes of a rollout's shown health (milliseconds).
const HEALTH_WRITE_EVERY: UnixMillis = 5_000;

/// A rollout to start: what people send (steps in percent, durations as Go durations).
#[derive(Debug, Clone)]
pub struct NewRollout {
    pub channel: ChannelName,
    /// The canary: a bundle of the release's app.
    pub bundle_id: String,
    pub plan: RolloutPlan,
}

/// What a person does to a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    /// Every device back to stable, now.
    Abort,
    /// The canary becomes the channel's bundle now, whatever the step.
    Promote,
}

impl RolloutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
            RolloutAction::Promote => "promote",
        }
    }
}

impl Catalog {
    /// Starts a rollout on a channel of a release, from the bundle the channel serves now to
    /// `new.bundle_id`. Refused when the channel already serves that bundle, when a rollout of
    /// the channel is active, or when `actor` may not change the release.
    pub async fn start_rollout(
        &self,
        release_id: &str,
        new: NewRollout,
        actor: &Actor,
        started_by: &str,
    ) -> Result<Rollout, CatalogError> {
        let release = self.release(release_id).await?;
        check_may_change(release.owner.as_ref(), actor)
            .map_err(|refusal| CatalogError::owned(refusal, &format!("release {}", release.key)))?;
        let canary = self
            .bundle_for_app(&new.bundle_id, "bundle_id", &release.key.app_id)
            .await?;
        let stable = release.bundle_for(&new.channel).clone();
        if stable == canary.id {
            return Err(CatalogError::Invalid(format!(
                "bundle_id: channel {} already serves bundle {}",
                new.channel, canary.version_name
            )));
        }
        let now = now_millis();
        let rollout = Rollout {
            id: RecordId::generate(),
            release_id: release.id.clone(),
            app_id: release.key.app_id.clone(),
            channel: new.channel,
            stable_bundle_id: stable,
            canary_bundle_id: canary.id,
            plan: new.plan,
            progress: RolloutProgress {
                phase: RolloutPhase::Progressing,
                step: 0,
                step_started_at: now,
            },
            salt: new_salt(),
            health: CanaryHealth::default(),
            started_by: started_by.to_string(),
            owner: actor.resource().cloned(),
            started_at: now,
            updated_at: now,
            finished_at: None,
            revision: 1,
        };
        match self.metadata.insert_rollout(&rollout).await {
            Ok(()) => {}
            Err(StoreError::Duplicate(_)) => {
                return Err(CatalogError::InUse(format!(
                "a rollout of channel {} of release {} is in progress; promote or abort it first",
                rollout.channel, release.key
            )))
            }
            Err(StoreError::Reference(_)) => {
                return Err(CatalogError::NotFound(format!(
                    "release {release_id} does not exist"
                )))
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(release = %release.key, channel = %rollout.channel, rollout = %rollout.id, started_by, "rollout started");
        self.rollouts_changed().await;
        Ok(rollout)
    }

    /// The rollout of a release's channel: the active one, or the last finished one.
    pub async fn rollout(
        &self,
        release_id: &RecordId,
        channel: &ChannelName,
    ) -> Result<Option<Rollout>, CatalogError> {
        Ok(self.metadata.rollout(release_id, channel).await?)
    }

    /// Every rollout (active, and the last finished one of each channel), newest first.
    pub async fn list_rollouts(&self) -> Result<Vec<Rollout>, CatalogError> {
        Ok(self.metadata.list_rollouts(false).await?)
    }

    /// Pauses, resumes, aborts or promotes a rollout by hand. Anyone allowed to manage
    /// releases may, whoever started it: these are operational moves, not desired state (a
    /// `Release` resource does not start a rollout again for a canary that was aborted).
    pub async fn act_on_rollout(
        &self,
        release_id: &str,
        channel: &ChannelName,
        action: RolloutAction,
        by: &str,
    ) -> Result<Rollout, CatalogError> {
        let release_id = RecordId::parse(release_id, "release id")?;
        let rollout = self
            .metadata
            .rollout(&release_id, channel)
            .await?
            .filter(|r| r.progress.phase.is_active())
            .ok_or_else(|| {
                CatalogError::NotFound(format!(
                    "no rollout of channel {channel} of release {release_id} is in progress"
                ))
            })?;
        let now = now_millis();
        let phase = &rollout.progress.phase;
        let progress = match action {
            RolloutAction::Pause if *phase == RolloutPhase::Paused => return Ok(rollout),
            RolloutAction::Resume if *phase == RolloutPhase::Progressing => return Ok(rollout),
            RolloutAction::Pause => RolloutProgress {
                phase: RolloutPhase::Paused,
                ..rollout.progress.clone()
            },
            // The step runs its whole interval again: health seen while paused does not count
            // as time at this step.
            RolloutAction::Resume => RolloutProgress {
                phase: RolloutPhase::Progressing,
                step_started_at: now,
                ..rollout.progress.clone()
            },
            RolloutAction::Abort => RolloutProgress {
                phase: RolloutPhase::RolledBack {
                    reason: format!("aborted by {by}"),
                },
                ..rollout.progress.clone()
            },
            RolloutAction::Promote => RolloutProgress {
                phase: RolloutPhase::Done,
                step: rollout.plan.steps.len() - 1,
                step_started_at: now,
            },
        };
        let moved = rollout.moved(progress, now);
        if !self.write_transition(&moved).await? {
            return Err(CatalogError::Busy(format!(
                "the rollout of channel {channel} changed meanwhile; look at it again"
            )));
        }
        tracing::info!(rollout = %moved.id, channel = %channel, action = action.as_str(), by, "rollout changed by hand");
        Ok(moved)
    }

    /// Writes a rollout that moved (compare-and-swap on its revision); a completion also
    /// points the channel at the canary. Clears the answers on success.
    async fn write_transition(&self, moved: &Rollout) -> Result<bool, CatalogError> {
        let written = if moved.progress.phase == RolloutPhase::Done {
            self.metadata.complete_rollout(moved).await?
        } else {
            self.metadata.update_rollout(moved).await?
        };
        if written {
            self.rollouts_changed().await;
        }
        Ok(written)
    }

    /// After a rollout starts or moves: answers change, and the stats path must know which
    /// canaries are active.
    async fn rollouts_changed(&self) {
        self.targets.invalidate();
        let refreshed = match self.metadata.list_rollouts(true).await {
            Ok(active) => self.refresh_active_canaries(&active).await,
            Err(error) => Err(error.into()),
        };
        if let Err(error) = refreshed {
            tracing::warn!(error = %Chain(&error), "cannot read the active rollouts; the tally catches up within a second");
        }
    }

    /// Tells the canary tally which rollouts are active (and which version each canary is).
    async fn refresh_active_canaries(&self, active: &[Rollout]) -> Result<(), CatalogError> {
        let mut facts = self.canaries.known_facts();
        let ids: HashSet<&RecordId> = active.iter().map(|r| &r.id).collect();
        facts.retain(|id, _| ids.contains(id));
        let unknown: Vec<&Rollout> = active
            .iter()
            .filter(|r| !facts.contains_key(&r.id))
            .collect();
        for rollout in unknown {
            let bundle = self.metadata.bundle(&rollout.canary_bundle_id).await?;
            let release = self.metadata.release(&rollout.release_id).await?;
            if let (Some(bundle), Some(release)) = (bundle, release) {
                let learned = CanaryFacts {
                    version: bundle.version_name,
                    release: release.key,
                };
                facts.insert(rollout.id.clone(), learned);
            }
        }
        self.canaries.set_active(active, &facts);
        Ok(())
    }

    /// Whether a bundle is the canary of an active rollout (it may not be deleted then).
    pub(super) async fn active_rollout_of_bundle(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Option<Rollout>, CatalogError> {
        Ok(self
            .metadata
            .list_rollouts(true)
            .await?
            .into_iter()
            .find(|r| &r.canary_bundle_id == bundle_id))
    }

    /// The active rollout of a release's channel, if any (a promote must not bypass it).
    pub(super) async fn check_no_active_rollout(
        &self,
        release: &Release,
        channel: &ChannelName,
    ) -> Result<(), CatalogError> {
        match self.metadata.rollout(&release.id, channel).await? {
            Some(rollout) if rollout.progress.phase.is_active() => Err(CatalogError::InUse(format!(
                "a rollout of channel {channel} of release {} is in progress; promote or abort it first",
                release.key
            ))),
            _ => Ok(()),
        }
    }

    /// What every process does in the background for rollouts, once a [`ROLLOUT_TICK`]: write
    /// the canary tally's batch, learn which rollouts are active, and, while this process holds
    /// the driver's lease, move rollouts on.
    pub async fn run_rollout_background(&self, holder: String, shutdown: CancellationToken) {
        let mut ticks = super::ticker(ROLLOUT_TICK);
        let mut driving = false;
        let mut failing = false;
        while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
            let result = async {
                self.flush_canary_tally().await?;
                let active = self.metadata.list_rollouts(true).await?;
                self.refresh_active_canaries(&active).await?;
                let leading = self
                    .metadata
                    .acquire_lease(DRIVER_LEASE, &holder, DRIVER_LEASE_TTL, now_millis())
                    .await?;
                if leading != driving {
                    tracing::info!(holder, leading, "rollout driver lease changed hands");
                    driving = leading;
                }
                if leading {
                    self.drive_rollouts(active, now_millis()).await?;
                }
                Ok::<(), CatalogError>(())
            }
            .await;
            match result {
                Ok(()) if failing => {
                    tracing::info!("rollouts are driven again");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) => {
                    if !failing {
                        tracing::warn!(error = %Chain(&error), "cannot drive rollouts now; trying again every second");
                    }
                    failing = true;
                }
            }
        }
        let _ = self.flush_canary_tally().await;
    }

    async fn flush_canary_tally(&self) -> Result<(), CatalogError> {
        let (marks, dropped) = self.canaries.take();
        if dropped > 0 {
            crate::metrics::global().canary_marks_dropped(dropped);
        }
        if marks.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.metadata.record_canary_marks(&marks).await {
            self.canaries.put_back(marks);
            return Err(error.into());
        }
        Ok(())
    }

    /// One pass of the driver over the `active` rollouts: health (one store call for all),
    /// then each decision, written with compare-and-swap (a rollout another process moved
    /// meanwhile is left for the next pass).
    async fn drive_rollouts(
        &self,
        active: Vec<Rollout>,
        now: UnixMillis,
    ) -> Result<(), CatalogError> {
        self.metadata.repair_completions().await?;
        let healths: HashMap<RecordId, CanaryHealth> = self
            .metadata
            .active_canary_health(now, CRASH_AFTER_SET)
            .await?
            .into_iter()
            .collect();
        for rollout in active {
            let health = healths.get(&rollout.id).copied().unwrap_or_default();
            let decision = rollout.progress.decide(&rollout.plan, health, now);
            let observed = Rollout {
                health,
                ..rollout.clone()
            };
            let progress = match &decision {
                RolloutDecision::Wait => {
                    // Shown to people only (decisions use fresh counts): written when it
                    // changed, at most every few seconds, so a busy fleet costs no write per
                    // rollout per tick.
                    let stale = now.saturating_sub(rollout.updated_at) >= HEALTH_WRITE_EVERY;
                    if health != rollout.health && stale {
                        let updated = Rollout {
                            updated_at: now,
                            revision: rollout.revision + 1,
                            ..observed
                        };
                        self.metadata.update_rollout(&updated).await?;
                    }
                    continue;
                }
                RolloutDecision::Advance { step } => RolloutProgress {
                    phase: RolloutPhase::Progressing,
                    step: *step,
                    step_started_at: now,
                },
                RolloutDecision::Complete => RolloutProgress {
                    phase: RolloutPhase::Done,
                    ..rollout.progress.clone()
                },
                RolloutDecision::RollBack { reason } => RolloutProgress {
                    phase: RolloutPhase::RolledBack {
                        reason: reason.clone(),
                    },
                    ..rollout.progress.clone()
                },
            };
            let moved = observed.moved(progress, now);
            if self.write_transition(&moved).await? {
                tracing::info!(rollout = %moved.id, channel = %moved.channel, phase = moved.progress.phase.as_str(), step = moved.progress.step, share = moved.share(), devices = health.devices, failed = health.failed, "rollout moved");
            }
        }
        Ok(())
    }
}
