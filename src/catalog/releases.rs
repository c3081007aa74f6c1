//! Releases: register native builds, choose what each channel serves (promote, roll back),
//! and converge a release to what a Kubernetes `Release` asks for.

use std::collections::BTreeMap;

use super::{Catalog, CatalogError, NewRollout, RolloutAction};
use crate::domain::names::{check_app_id, check_native_version};
use crate::domain::ownership::check_may_change;
use crate::domain::rollout::{RolloutPhase, RolloutPlan};
use crate::domain::{
    now_millis, Actor, ChannelName, Platform, RecordId, Release, ReleaseKey, ResourceRef,
    UnixMillis,
};
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct NewRelease {
    pub platform: String,
    pub app_id: String,
    pub version_name: String,
    pub version_code: String,
    pub builtin_bundle_id: String,
}

/// What a Kubernetes `Release` asks for: the record the operator converges to.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRelease {
    pub key: ReleaseKey,
    pub builtin_bundle_id: RecordId,
    pub channels: BTreeMap<ChannelName, RecordId>,
    /// Channels whose bundle changes go through a staged rollout, with its plan.
    pub rollouts: BTreeMap<ChannelName, RolloutPlan>,
    pub owner: ResourceRef,
    /// The resource asks to take over a record made through the API (its adopt annotation).
    pub adopt: bool,
}

impl DesiredRelease {
    /// Who acts when the operator applies this.
    pub fn actor(&self) -> Actor {
        if self.adopt {
            Actor::AdoptingResource(self.owner.clone())
        } else {
            Actor::Resource(self.owner.clone())
        }
    }

    /// The record this describes, as it would be created now.
    fn new_record(&self) -> Release {
        let now = now_millis();
        Release {
            id: RecordId::generate(),
            key: self.key.clone(),
            builtin_bundle_id: self.builtin_bundle_id.clone(),
            channels: self.channels.clone(),
            assigned_at: self.channels.keys().map(|c| (c.clone(), now)).collect(),
            release_date: None,
            created_at: now,
            updated_at: now,
            owner: Some(self.owner.clone()),
        }
    }
}

impl Catalog {
    pub async fn create_release(&self, new: NewRelease) -> Result<Release, CatalogError> {
        let release = self
            .checked_release(new, RecordId::generate(), now_millis())
            .await?;
        self.insert_release(&release).await?;
        Ok(release)
    }

    /// The record `new` describes, once it passed the rules of every new release (names, a
    /// builtin bundle of the same app), with no channel assigned.
    pub(super) async fn checked_release(
        &self,
        new: NewRelease,
        id: RecordId,
        created_at: UnixMillis,
    ) -> Result<Release, CatalogError> {
        let platform: Platform = new.platform.parse()?;
        check_app_id(&new.app_id)?;
        check_native_version(&new.version_name, "version_name")?;
        check_native_version(&new.version_code, "version_code")?;
        let builtin = self
            .bundle_for_app(&new.builtin_bundle_id, "builtin_bundle_id", &new.app_id)
            .await?;
        Ok(Release {
            id,
            key: ReleaseKey {
                platform,
                app_id: new.app_id,
                version_name: new.version_name,
                version_code: new.version_code,
            },
            builtin_bundle_id: builtin.id,
            channels: Default::default(),
            assigned_at: Default::default(),
            release_date: None,
            created_at,
            updated_at: created_at,
            owner: None,
        })
    }

    pub(super) async fn insert_release(&self, release: &Release) -> Result<(), CatalogError> {
        match self.metadata.insert_release(release).await {
            Ok(()) => {
                // A device of this build may have been told "no release" a moment ago.
                self.targets.invalidate();
                self.forget_unregistered(&release.key).await;
                Ok(())
            }
            Err(StoreError::Duplicate(_)) => Err(CatalogError::Duplicate(format!(
                "a release for {} already exists",
                release.key
            ))),
            Err(StoreError::Reference(detail)) => Err(bundle_vanished(&detail)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn release(&self, id: &str) -> Result<Release, CatalogError> {
        let id = RecordId::parse(id, "release id")?;
        self.metadata
            .release(&id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("release {id} does not exist")))
    }

    /// The release record for a native build, if any.
    pub async fn release_by_key(&self, key: &ReleaseKey) -> Result<Option<Release>, CatalogError> {
        Ok(self.metadata.release_by_key(key).await?)
    }

    pub async fn list_releases(&self) -> Result<Vec<Release>, CatalogError> {
        Ok(self.metadata.list_releases().await?)
    }

    pub async fn set_release_date(
        &self,
        id: &str,
        release_date: Option<UnixMillis>,
        actor: &Actor,
    ) -> Result<Release, CatalogError> {
        let release = self.changeable_release(id, actor).await?;
        if !self
            .metadata
            .set_release_date(&release.id, release_date, now_millis())
            .await?
        {
            return Err(CatalogError::NotFound(format!(
                "release {id} does not exist"
            )));
        }
        self.release(id).await
    }

    /// Points a channel of a release at a bundle of the same app: how a bundle is promoted,
    /// and how it is rolled back (to an earlier bundle, or to the builtin one).
    pub async fn set_active_bundle(
        &self,
        release_id: &str,
        bundle_id: &str,
        channel: Option<&str>,
        actor: &Actor,
    ) -> Result<Release, CatalogError> {
        let channel = ChannelName::parse_or_default(channel)?;
        let release = self.changeable_release(release_id, actor).await?;
        let bundle = self
            .bundle_for_app(bundle_id, "bundle_id", &release.key.app_id)
            .await?;
        self.check_no_active_rollout(&release, &channel).await?;
        let updated = self
            .metadata
            .set_channel_bundle(&release.id, &channel, &bundle.id, now_millis())
            .await;
        match updated {
            Ok(true) => {
                // Only after a write: a failed one must not discard the last known answers.
                self.targets.invalidate();
                self.release(release_id).await
            }
            Ok(false) => Err(CatalogError::NotFound(format!(
                "release {release_id} does not exist"
            ))),
            Err(StoreError::Reference(detail)) => Err(bundle_vanished(&detail)),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete_release(&self, id: &str, actor: &Actor) -> Result<Release, CatalogError> {
        let release = self.changeable_release(id, actor).await?;
        self.metadata.delete_release(&release.id).await?;
        self.targets.invalidate();
        Ok(release)
    }

    /// A release `actor` may change (refused naming who manages it otherwise).
    async fn changeable_release(&self, id: &str, actor: &Actor) -> Result<Release, CatalogError> {
        let release = self.release(id).await?;
        check_may_change(release.owner.as_ref(), actor)
            .map_err(|refusal| CatalogError::owned(refusal, &format!("release {}", release.key)))?;
        Ok(release)
    }

    /// Creates the record a Kubernetes `Release` describes, or converges the existing one to it
    /// (builtin bundle and every channel, in one write). A record made through the API is only
    /// taken over when the resource adopts it. Returns whether anything was written, so an
    /// unchanged resource costs no write.
    ///
    /// A channel with a rollout plan does not switch: the change starts a rollout from what the
    /// channel serves to the new bundle, and the channel keeps serving its bundle until the
    /// rollout completes (see [`Catalog::plan_rollouts`]).
    pub async fn apply_release(
        &self,
        desired: &DesiredRelease,
    ) -> Result<(Release, bool), CatalogError> {
        let record = desired.new_record();
        for bundle_id in record.referenced_bundles() {
            self.bundle_for_app(bundle_id.as_str(), "bundle", &desired.key.app_id)
                .await?;
        }
        let Some(existing) = self.metadata.release_by_key(&desired.key).await? else {
            return match self.insert_release(&record).await {
                Ok(()) => Ok((record, true)),
                Err(CatalogError::Duplicate(_)) => Err(CatalogError::Busy(format!(
                    "a release for {} was created concurrently; the next attempt adopts or refuses it",
                    desired.key
                ))),
                Err(e) => Err(e),
            };
        };
        let actor = desired.actor();
        check_may_change(existing.owner.as_ref(), &actor).map_err(|refusal| {
            CatalogError::owned(refusal, &format!("the release for {}", desired.key))
        })?;
        let mut written = false;
        if existing.owner.is_none() {
            if !self
                .metadata
                .adopt_release(&existing.id, &desired.owner)
                .await?
            {
                return Err(CatalogError::Busy(format!(
                    "the release for {} changed owner while being adopted; the next attempt retries",
                    desired.key
                )));
            }
            tracing::info!(release = %existing.id, owner = %desired.owner, "release adopted by its resource");
            written = true;
        }
        let plan = self.plan_rollouts(&existing, desired).await?;
        if existing.builtin_bundle_id != desired.builtin_bundle_id
            || existing.channels != plan.assignments
        {
            let replaced = self
                .metadata
                .replace_release_assignments(
                    &existing.id,
                    &desired.builtin_bundle_id,
                    &plan.assignments,
                    now_millis(),
                )
                .await;
            match replaced {
                Ok(true) => {}
                Ok(false) => {
                    return Err(CatalogError::NotFound(format!(
                        "release {} vanished while being updated",
                        existing.id
                    )))
                }
                Err(StoreError::Reference(detail)) => return Err(bundle_vanished(&detail)),
                Err(e) => return Err(e.into()),
            }
            self.targets.invalidate();
            written = true;
        }
        let actor = desired.actor();
        let started_by = desired.owner.to_string();
        for (channel, reason) in plan.aborts {
            match self
                .act_on_rollout(
                    existing.id.as_str(),
                    &channel,
                    RolloutAction::Abort,
                    &reason,
                )
                .await
            {
                Ok(_) | Err(CatalogError::NotFound(_)) => written = true,
                Err(e) => return Err(e),
            }
        }
        for (channel, canary, plan) in plan.starts {
            let new = NewRollout {
                channel,
                bundle_id: canary.to_string(),
                plan,
            };
            self.start_rollout(existing.id.as_str(), new, &actor, &started_by)
                .await?;
            written = true;
        }
        if !written {
            return Ok((existing, false));
        }
        let updated = self.release(existing.id.as_str()).await?;
        Ok((updated, true))
    }
}

/// What converging a release to its resource does to its channels with rollouts.
struct RolloutPlanning {
    /// The channels' bundles to write: the resource's, except channels that keep what they
    /// serve while a rollout runs (or after one rolled back).
    assignments: BTreeMap<ChannelName, RecordId>,
    /// Active rollouts to stop, with who stops them and why.
    aborts: Vec<(ChannelName, String)>,
    /// Rollouts to start: channel, canary, plan.
    starts: Vec<(ChannelName, RecordId, RolloutPlan)>,
}

impl Catalog {
    /// Decides, per channel, between switching at once and a rollout:
    /// - a channel with a plan whose bundle changes starts a rollout (stable: what it serves);
    /// - while that rollout runs toward the same bundle, nothing changes;
    /// - a rollout that rolled back toward the same bundle is not started again: the channel
    ///   stays on stable until the resource names another bundle;
    /// - a rollout whose channel now names another bundle, or no longer has a plan, is aborted
    ///   (and the channel then follows the resource as usual).
    async fn plan_rollouts(
        &self,
        existing: &Release,
        desired: &DesiredRelease,
    ) -> Result<RolloutPlanning, CatalogError> {
        let mut planning = RolloutPlanning {
            assignments: desired.channels.clone(),
            aborts: Vec::new(),
            starts: Vec::new(),
        };
        let keep_current = |assignments: &mut BTreeMap<ChannelName, RecordId>, channel| {
            match existing.channels.get(channel) {
                Some(current) => assignments.insert(channel.clone(), current.clone()),
                None => assignments.remove(channel),
            };
        };
        let stored = self.metadata.list_rollouts(false).await?;
        let rollouts: BTreeMap<&ChannelName, _> = stored
            .iter()
            .filter(|r| r.release_id == existing.id)
            .map(|r| (&r.channel, r))
            .collect();
        for (channel, rollout) in &rollouts {
            if !rollout.progress.phase.is_active() {
                continue;
            }
            let wanted = desired.channels.get(*channel);
            let reason = if !desired.rollouts.contains_key(*channel) {
                "it no longer asks for a staged rollout of this channel"
            } else if wanted != Some(&rollout.canary_bundle_id) {
                "it now names another bundle for this channel"
            } else {
                continue;
            };
            planning
                .aborts
                .push(((*channel).clone(), format!("{}: {reason}", desired.owner)));
        }
        for (channel, plan) in &desired.rollouts {
            let Some(wanted) = desired.channels.get(channel) else {
                continue;
            };
            let current = existing.bundle_for(channel);
            if wanted == current {
                continue;
            }
            keep_current(&mut planning.assignments, channel);
            let aborted = planning.aborts.iter().any(|(c, _)| c == channel);
            match rollouts.get(channel) {
                Some(r) if r.canary_bundle_id == *wanted && !aborted => {
                    // Running toward it, or rolled back from it (stays on stable until the
                    // resource names another bundle), or done (the channel already switched).
                    if r.progress.phase == RolloutPhase::Done {
                        planning.assignments.insert(channel.clone(), wanted.clone());
                    }
                }
                _ => planning
                    .starts
                    .push((channel.clone(), wanted.clone(), plan.clone())),
            }
        }
        Ok(planning)
    }
}

/// A bundle a write named was deleted (or was being deleted) meanwhile.
fn bundle_vanished(detail: &str) -> CatalogError {
    CatalogError::Busy(format!(
        "a bundle this change names was deleted while it was being applied ({detail}); \
         choose an existing bundle"
    ))
}
