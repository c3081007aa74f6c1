//! Staged rollouts, their devices' health records and the driver's lease (see
//! [`RolloutStore`]).
//!
//! - `rollouts`: one document per (release, channel), which a unique index guarantees: the
//!   active rollout or the last finished one, deleted with its release. Every write names the
//!   revision it read in its filter (compare-and-swap). Completing is two documents and no
//!   transaction: the rollout is written done with a `switching` mark, then the release's
//!   channel is pointed at the canary (through `set_channel_bundle`, so the release's revision
//!   stamp moves and other replicas see it), then the mark is removed;
//!   [`RolloutStore::repair_completions`] redoes the last two steps for documents a crash left
//!   marked.
//! - `rollout_devices`: one document per (rollout, device key), which a unique index
//!   guarantees, with the latest time of each signal in milliseconds (absent when never seen).
//!   Marks are merged with `$max` (commutative, so replicas flushing at once lose nothing);
//!   health is one aggregation over a rollout's documents.
//! - `leases`: one document per lease name, taken by an upsert that matches only a lease that is
//!   ours or expired, so the insert it falls back to fails on `_id` while another holder's runs.
//!
//! Inserting a rollout and every write that changes its phase or step then bumps a shared
//! counter that [`crate::store::CatalogStore::catalog_version`] reports as `rollout_revision`
//! (after the write, as in `targeting.rs`); a write of health only does not. Health records of a
//! rollout replaced or deleted while marks for it were being written can outlive it: they name
//! a rollout id nothing reads again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{stream, StreamExt, TryStreamExt};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use serde::{Deserialize, Serialize};

use super::{
    all, map_error, millis, oid, plain_index, record_id, unique_index, MongoMetadataStore,
    StoreError, WRITE_ATTEMPTS,
};
use crate::domain::rollout::{
    CanaryHealth, CanaryMark, CanarySignal, Rollout, RolloutPhase, RolloutPlan, RolloutProgress,
};
use crate::domain::{ChannelName, RecordId, ResourceRef, UnixMillis};
use crate::store::{CatalogStore, RolloutStore};

/// The shared counter behind [`crate::store::CatalogVersion::rollout_revision`].
pub(super) const ROLLOUT_COUNTER: &str = "rollout_revision";
/// Health-record writes in flight at once for one batch of marks.
const MARK_WRITES_IN_FLIGHT: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
struct RolloutDoc {
    #[serde(rename = "_id")]
    id: ObjectId,
    release_id: ObjectId,
    app_id: String,
    channel: String,
    stable_bundle_id: ObjectId,
    canary_bundle_id: ObjectId,
    /// Shares in basis points.
    steps: Vec<i32>,
    interval_ms: i64,
    window_ms: i64,
    max_failure_rate: f64,
    min_devices: i64,
    /// [`RolloutPhase::as_str`].
    phase: String,
    /// Why it rolled back. Written as null rather than left out, so a `$set` of the whole
    /// document clears it (the same for every optional field).
    reason: Option<String>,
    step: i64,
    step_started_at: DateTime,
    salt: String,
    health_devices: i64,
    health_failed: i64,
    started_by: String,
    /// `Kind/namespace/name` of the Kubernetes resource that started it.
    owner: Option<String>,
    started_at: DateTime,
    updated_at: DateTime,
    finished_at: Option<DateTime>,
    revision: i64,
}

/// The fields of a rollout that change what devices are answered: a write that leaves them as
/// they were (health only) moves no catalog version.
#[derive(Debug, PartialEq, Deserialize)]
struct RolloutPosition {
    phase: String,
    step: i64,
    step_started_at: DateTime,
}

impl RolloutPosition {
    fn projection() -> Document {
        doc! {"phase": 1, "step": 1, "step_started_at": 1}
    }
}

/// Counts and steps are unsigned in the domain and signed in BSON.
fn clamped(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn duration_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl From<&Rollout> for RolloutDoc {
    fn from(r: &Rollout) -> RolloutDoc {
        RolloutDoc {
            id: oid(&r.id),
            release_id: oid(&r.release_id),
            app_id: r.app_id.clone(),
            channel: r.channel.as_str().to_string(),
            stable_bundle_id: oid(&r.stable_bundle_id),
            canary_bundle_id: oid(&r.canary_bundle_id),
            steps: r
                .plan
                .steps
                .iter()
                .map(|share| i32::try_from(*share).unwrap_or(i32::MAX))
                .collect(),
            interval_ms: duration_millis(r.plan.interval),
            window_ms: duration_millis(r.plan.window),
            max_failure_rate: r.plan.max_failure_rate,
            min_devices: clamped(r.plan.min_devices),
            phase: r.progress.phase.as_str().to_string(),
            reason: r.progress.phase.reason().map(str::to_string),
            step: clamped(r.progress.step as u64),
            step_started_at: DateTime::from_millis(r.progress.step_started_at),
            salt: r.salt.clone(),
            health_devices: clamped(r.health.devices),
            health_failed: clamped(r.health.failed),
            started_by: r.started_by.clone(),
            owner: r.owner.as_ref().map(ResourceRef::to_stored),
            started_at: DateTime::from_millis(r.started_at),
            updated_at: DateTime::from_millis(r.updated_at),
            finished_at: r.finished_at.map(DateTime::from_millis),
            revision: r.revision,
        }
    }
}

impl RolloutDoc {
    fn position(&self) -> RolloutPosition {
        RolloutPosition {
            phase: self.phase.clone(),
            step: self.step,
            step_started_at: self.step_started_at,
        }
    }

    fn into_rollout(self) -> Result<Rollout, StoreError> {
        let phase = RolloutPhase::from_stored(&self.phase, self.reason).ok_or_else(|| {
            StoreError::invalid(format!(
                "rollout {} has phase {:?}, not progressing, paused, rolled_back or done",
                self.id, self.phase
            ))
        })?;
        let steps = self
            .steps
            .iter()
            .map(|share| u32::try_from(*share))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StoreError::internal(format!("rollout {} has a bad step", self.id), e))?;
        let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok(Rollout {
            id: record_id(self.id),
            release_id: record_id(self.release_id),
            app_id: self.app_id,
            channel: ChannelName::from_stored(self.channel),
            stable_bundle_id: record_id(self.stable_bundle_id),
            canary_bundle_id: record_id(self.canary_bundle_id),
            plan: RolloutPlan {
                steps,
                interval: Duration::from_millis(unsigned(self.interval_ms)),
                window: Duration::from_millis(unsigned(self.window_ms)),
                max_failure_rate: self.max_failure_rate,
                min_devices: unsigned(self.min_devices),
            },
            progress: RolloutProgress {
                phase,
                step: usize::try_from(self.step).unwrap_or(0),
                step_started_at: millis(self.step_started_at),
            },
            salt: self.salt,
            health: CanaryHealth {
                devices: unsigned(self.health_devices),
                failed: unsigned(self.health_failed),
            },
            started_by: self.started_by,
            owner: self.owner.as_deref().and_then(ResourceRef::from_stored),
            started_at: millis(self.started_at),
            updated_at: millis(self.updated_at),
            finished_at: self.finished_at.map(millis),
            revision: self.revision,
        })
    }
}

/// The phases of a rollout that is still running (filters on `phase`).
fn active_phases() -> Vec<&'static str> {
    vec![
        RolloutPhase::Progressing.as_str(),
        RolloutPhase::Paused.as_str(),
    ]
}

/// The field of a health record that keeps the latest time of a signal.
fn signal_field(signal: CanarySignal) -> &'static str {
    match signal {
        CanarySignal::Answered => "answered_at",
        CanarySignal::Installed => "installed_at",
        CanarySignal::Failed => "failed_at",
        CanarySignal::Crashed => "crashed_at",
    }
}

/// A count from an aggregation (`$sum` answers an int32 while it fits).
fn count(group: &Document, field: &str) -> u64 {
    let value = group
        .get_i32(field)
        .map(i64::from)
        .or_else(|_| group.get_i64(field))
        .unwrap_or(0);
    u64::try_from(value).unwrap_or(0)
}

impl MongoMetadataStore {
    fn rollouts(&self) -> Collection<RolloutDoc> {
        self.db.collection("rollouts")
    }
    fn rollout_positions(&self) -> Collection<RolloutPosition> {
        self.db.collection("rollouts")
    }
    fn rollout_devices(&self) -> Collection<Document> {
        self.db.collection("rollout_devices")
    }
    fn leases(&self) -> Collection<Document> {
        self.db.collection("leases")
    }

    /// Indexes for the collections of this module; part of [`MongoMetadataStore::migrate`].
    pub(super) async fn migrate_rollouts(&self) -> Result<(), StoreError> {
        self.rollouts()
            .create_indexes([
                // One rollout per release and channel: what refuses a second active one.
                unique_index(doc! {"release_id": 1, "channel": 1}),
                // Completions to repair, looked up every driver tick.
                plain_index(doc! {"switching": 1}),
            ])
            .await
            .map_err(map_error)?;
        self.rollout_devices()
            .create_index(unique_index(doc! {"rollout_id": 1, "device_key": 1}))
            .await
            .map_err(map_error)?;
        Ok(())
    }

    /// Tells other replicas that a rollout started or moved.
    async fn rollouts_changed(&self) -> Result<(), StoreError> {
        self.next(ROLLOUT_COUNTER).await.map(drop)
    }

    /// Writes `document` over the stored rollout if the stored revision is the one before
    /// (marked as switching when `switching`); the position it had, `None` when another write
    /// came first or it is gone. A `$set` rather than a replacement, so a write never drops the
    /// mark of a completion still under way.
    async fn swap_rollout(
        &self,
        document: &RolloutDoc,
        switching: bool,
    ) -> Result<Option<RolloutPosition>, StoreError> {
        let mut fields = mongodb::bson::to_document(document)
            .map_err(|e| StoreError::internal(format!("rollout {} as BSON", document.id), e))?;
        fields.remove("_id");
        if switching {
            fields.insert("switching", true);
        }
        self.rollout_positions()
            .find_one_and_update(
                doc! {"_id": document.id, "revision": document.revision - 1},
                doc! {"$set": fields},
            )
            .projection(RolloutPosition::projection())
            .return_document(ReturnDocument::Before)
            .await
            .map_err(map_error)
    }

    /// The second half of a completion: points the channel of a rollout written done at its
    /// canary, tells other replicas, and removes the mark. Safe to run again, and by several
    /// processes at once (they all write the same).
    async fn finish_completion(&self, rollout: &RolloutDoc) -> Result<(), StoreError> {
        let channel = ChannelName::from_stored(rollout.channel.clone());
        let pointed = self
            .set_channel_bundle(
                &record_id(rollout.release_id),
                &channel,
                &record_id(rollout.canary_bundle_id),
                millis(rollout.updated_at),
            )
            .await;
        match pointed {
            // `false`: the release is gone, and its rollouts with it.
            Ok(_) => {}
            // Nothing can point at a canary deleted meanwhile: the channel keeps its bundle.
            Err(StoreError::Reference(reason)) => tracing::warn!(
                rollout = %rollout.id,
                %reason,
                "a completed rollout's channel cannot point at its canary"
            ),
            Err(e) => return Err(e),
        }
        self.rollouts_changed().await?;
        self.rollouts()
            .update_one(
                doc! {"_id": rollout.id, "switching": true},
                doc! {"$unset": {"switching": ""}},
            )
            .await
            .map_err(map_error)?;
        Ok(())
    }

    /// Merges one device's signals into its health record: the later time of each is kept.
    /// Two replicas inserting the same new record race on the unique index; the loser retries
    /// and then updates.
    async fn merge_device_signals(
        &self,
        record: Document,
        latest: Document,
    ) -> Result<(), StoreError> {
        let update = doc! {"$max": latest};
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .rollout_devices()
                .update_one(record.clone(), update.clone())
                .upsert(true)
                .await
                .map_err(map_error)
            {
                Err(StoreError::Duplicate(_)) if attempt < WRITE_ATTEMPTS => continue,
                outcome => return outcome.map(drop),
            }
        }
    }

    /// Deletes the rollouts of a release and their health records (part of
    /// [`CatalogStore::delete_release`]); also those an interrupted earlier delete left.
    pub(super) async fn delete_release_rollouts(
        &self,
        release: &RecordId,
    ) -> Result<(), StoreError> {
        let rollouts: Vec<Document> = all(self
            .db
            .collection::<Document>("rollouts")
            .find(doc! {"release_id": oid(release)})
            .projection(doc! {"_id": 1}))
        .await?;
        let ids: Vec<Bson> = rollouts
            .into_iter()
            .filter_map(|d| d.get("_id").cloned())
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        // The rollouts first: marks written after this are dropped as marks of no rollout.
        self.rollouts()
            .delete_many(doc! {"_id": {"$in": &ids}})
            .await
            .map_err(map_error)?;
        self.rollout_devices()
            .delete_many(doc! {"rollout_id": {"$in": ids}})
            .await
            .map_err(map_error)?;
        Ok(())
    }
}

#[async_trait]
impl RolloutStore for MongoMetadataStore {
    async fn insert_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        let document = RolloutDoc::from(rollout);
        // A finished rollout of the channel makes way, with its health records; an active one
        // stays, and the insert fails on the unique index.
        let finished = self
            .rollouts()
            .find_one_and_delete(doc! {
                "release_id": document.release_id,
                "channel": &document.channel,
                "phase": {"$nin": active_phases()},
            })
            .await
            .map_err(map_error)?;
        if let Some(finished) = finished {
            self.rollout_devices()
                .delete_many(doc! {"rollout_id": finished.id})
                .await
                .map_err(map_error)?;
        }
        match self
            .rollouts()
            .insert_one(&document)
            .await
            .map_err(map_error)
        {
            Ok(_) => {}
            Err(StoreError::Duplicate(_)) => {
                return Err(StoreError::Duplicate(format!(
                    "channel {} of release {} already has an active rollout",
                    rollout.channel, rollout.release_id
                )))
            }
            Err(e) => return Err(e),
        }
        // Checked after the insert: `delete_release` deletes the release before its rollouts,
        // so either it sees this rollout or this check sees the release gone.
        let release = self
            .db
            .collection::<Document>("releases")
            .find_one(doc! {"_id": document.release_id})
            .projection(doc! {"_id": 1})
            .await
            .map_err(map_error)?;
        if release.is_none() {
            self.rollouts()
                .delete_one(doc! {"_id": document.id})
                .await
                .map_err(map_error)?;
            return Err(StoreError::Reference(format!(
                "release {} does not exist",
                rollout.release_id
            )));
        }
        self.rollouts_changed().await
    }

    async fn rollout(
        &self,
        release_id: &RecordId,
        channel: &ChannelName,
    ) -> Result<Option<Rollout>, StoreError> {
        self.rollouts()
            .find_one(doc! {"release_id": oid(release_id), "channel": channel.as_str()})
            .await
            .map_err(map_error)?
            .map(RolloutDoc::into_rollout)
            .transpose()
    }

    async fn list_rollouts(&self, active_only: bool) -> Result<Vec<Rollout>, StoreError> {
        let filter = if active_only {
            doc! {"phase": {"$in": active_phases()}}
        } else {
            doc! {}
        };
        all(self
            .rollouts()
            .find(filter)
            .sort(doc! {"started_at": -1, "_id": -1}))
        .await?
        .into_iter()
        .map(RolloutDoc::into_rollout)
        .collect()
    }

    async fn update_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError> {
        let document = RolloutDoc::from(rollout);
        let Some(before) = self.swap_rollout(&document, false).await? else {
            return Ok(false);
        };
        if before != document.position() {
            self.rollouts_changed().await?;
        }
        Ok(true)
    }

    async fn complete_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError> {
        let document = RolloutDoc::from(rollout);
        if self.swap_rollout(&document, true).await?.is_none() {
            return Ok(false);
        }
        self.finish_completion(&document)
            .await
            .map_err(|e| StoreError::Unavailable {
                context: format!(
                    "rollout {} is done, but pointing its channel at the canary did not finish \
                     (the next repair of completions finishes it)",
                    rollout.id
                ),
                source: e.into(),
            })?;
        Ok(true)
    }

    async fn repair_completions(&self) -> Result<usize, StoreError> {
        let interrupted = all(self.rollouts().find(doc! {"switching": true})).await?;
        for rollout in &interrupted {
            self.finish_completion(rollout).await?;
        }
        Ok(interrupted.len())
    }

    async fn record_canary_marks(&self, marks: &[CanaryMark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        // One write per (rollout, device), with the latest time of each signal in the batch.
        let mut latest: HashMap<(ObjectId, i64), BTreeMap<&'static str, i64>> = HashMap::new();
        for mark in marks {
            let at = latest
                .entry((oid(&mark.rollout_id), mark.device_key))
                .or_default()
                .entry(signal_field(mark.signal))
                .or_insert(mark.at);
            *at = (*at).max(mark.at);
        }
        let named: HashSet<ObjectId> = latest.keys().map(|(rollout, _)| *rollout).collect();
        let existing: HashSet<ObjectId> = all(self
            .db
            .collection::<Document>("rollouts")
            .find(doc! {"_id": {"$in": named.into_iter().collect::<Vec<_>>()}})
            .projection(doc! {"_id": 1}))
        .await?
        .iter()
        .filter_map(|d| d.get_object_id("_id").ok())
        .collect();
        // Owned documents: a closure over borrowed ones would make the future `async_trait`
        // boxes generic over their lifetime, which the compiler cannot prove `Send`.
        let writes: Vec<(Document, Document)> = latest
            .into_iter()
            .filter(|((rollout, _), _)| existing.contains(rollout))
            .map(|((rollout, device_key), signals)| {
                let record = doc! {"rollout_id": rollout, "device_key": device_key};
                let times: Document = signals
                    .into_iter()
                    .map(|(field, at)| (field.to_string(), Bson::Int64(at)))
                    .collect();
                (record, times)
            })
            .collect();
        stream::iter(writes)
            .map(|(record, times)| self.merge_device_signals(record, times))
            .buffer_unordered(MARK_WRITES_IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    async fn canary_health(
        &self,
        rollout_id: &RecordId,
        since: UnixMillis,
        crash_after_set: Duration,
    ) -> Result<CanaryHealth, StoreError> {
        let crash_after_set = duration_millis(crash_after_set);
        // Absent times compare below every number, and the gap is null when either is absent,
        // so a record without a signal never satisfies a condition on it.
        let failed = doc! {"$or": [
            {"$gte": ["$failed_at", since]},
            {"$and": [
                {"$gte": ["$crashed_at", since]},
                {"$gte": ["$crash_gap", 0i64]},
                {"$lte": ["$crash_gap", crash_after_set]},
            ]},
        ]};
        let pipeline = [
            doc! {"$match": {
                "rollout_id": oid(rollout_id),
                "answered_at": {"$exists": true},
                "$or": [
                    {"installed_at": {"$gte": since}},
                    {"failed_at": {"$gte": since}},
                    {"crashed_at": {"$gte": since}},
                ],
            }},
            doc! {"$project": {
                "installed_at": 1,
                "failed_at": 1,
                "crashed_at": 1,
                "crash_gap": {"$subtract": ["$crashed_at", "$installed_at"]},
            }},
            // A crash outside the crash rule is neither a failure nor a report.
            doc! {"$project": {
                "installed": {"$gte": ["$installed_at", since]},
                "failed": failed,
            }},
            doc! {"$match": {"$or": [{"installed": true}, {"failed": true}]}},
            doc! {"$group": {
                "_id": null,
                "devices": {"$sum": 1},
                "failed": {"$sum": {"$cond": ["$failed", 1, 0]}},
            }},
        ];
        let groups: Vec<Document> = all(self.rollout_devices().aggregate(pipeline)).await?;
        Ok(groups
            .first()
            .map(|group| CanaryHealth {
                devices: count(group, "devices"),
                failed: count(group, "failed"),
            })
            .unwrap_or_default())
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let expires_at = DateTime::from_millis(now.saturating_add(duration_millis(ttl)));
        // Matches the lease when it is ours or expired; otherwise the upsert inserts a second
        // document with the lease's `_id`, which fails while another holder's lease runs.
        let taken = self
            .leases()
            .update_one(
                doc! {"_id": name, "$or": [
                    {"holder": holder},
                    {"expires_at": {"$lt": DateTime::from_millis(now)}},
                ]},
                doc! {"$set": {"holder": holder, "expires_at": expires_at}},
            )
            .upsert(true)
            .await
            .map_err(map_error);
        match taken {
            Ok(_) => Ok(true),
            Err(StoreError::Duplicate(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
