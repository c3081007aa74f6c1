//! Staged rollouts, their devices' health records and the driver's lease (see
//! [`RolloutStore`]).
//!
//! - `rollouts`: one row per (release, channel), the active rollout or the last finished one;
//!   deleted with its release. The bundles it names have no foreign key: a finished rollout must
//!   not keep its canary from being deleted (the catalog refuses deleting the bundles of an
//!   active one).
//! - `rollout_devices`: one row per (rollout, device key), with the latest time of each signal;
//!   deleted with its rollout. Health is a count over one rollout's rows (its primary key
//!   starts with the rollout), never a scan of the stats.
//! - `leases`: one row per lease name.
//!
//! This process is the only writer of its database, so nothing here moves a catalog version.

use std::sync::LazyLock;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::types::{ToSql, Type};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::{assign_channel, owner_from, release_app_id, SqliteMetadataStore, StoreError};
use crate::domain::rollout::{
    CanaryHealth, CanaryMark, CanarySignal, Rollout, RolloutPhase, RolloutPlan, RolloutProgress,
};
use crate::domain::{ChannelName, RecordId, ResourceRef, UnixMillis};
use crate::store::RolloutStore;

/// Run after the main schema.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS rollouts (
    id               TEXT PRIMARY KEY,
    release_id       TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    app_id           TEXT NOT NULL,
    channel          TEXT NOT NULL,
    stable_bundle_id TEXT NOT NULL,
    canary_bundle_id TEXT NOT NULL,
    steps            TEXT NOT NULL,
    interval_ms      INTEGER NOT NULL,
    window_ms        INTEGER NOT NULL,
    max_failure_rate REAL NOT NULL,
    min_devices      INTEGER NOT NULL,
    phase            TEXT NOT NULL,
    reason           TEXT,
    step             INTEGER NOT NULL,
    step_started_at  INTEGER NOT NULL,
    salt             TEXT NOT NULL,
    health_devices   INTEGER NOT NULL,
    health_failed    INTEGER NOT NULL,
    started_by       TEXT NOT NULL,
    owner            TEXT,
    started_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    revision         INTEGER NOT NULL,
    UNIQUE (release_id, channel)
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id  TEXT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_key  INTEGER NOT NULL,
    answered_at INTEGER,
    installed_at INTEGER,
    failed_at   INTEGER,
    crashed_at  INTEGER,
    PRIMARY KEY (rollout_id, device_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
"#;

const COLUMNS: &str = "id, release_id, app_id, channel, stable_bundle_id, canary_bundle_id, \
    steps, interval_ms, window_ms, max_failure_rate, min_devices, phase, reason, step, \
    step_started_at, salt, health_devices, health_failed, started_by, owner, started_at, \
    updated_at, finished_at, revision";
const PLACEHOLDERS: &str = "?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, \
    ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24";

fn conversion(column: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, message.into())
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn duration(millis: i64) -> Duration {
    Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

fn rollout_from_row(row: &Row<'_>) -> rusqlite::Result<Rollout> {
    let steps: String = row.get(6)?;
    let steps = steps
        .split(',')
        .map(|s| s.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| conversion(6, format!("rollout steps: {e}")))?;
    let phase: String = row.get(11)?;
    let phase = RolloutPhase::from_stored(&phase, row.get(12)?)
        .ok_or_else(|| conversion(11, format!("unknown rollout phase {phase:?}")))?;
    Ok(Rollout {
        id: RecordId::from_stored(row.get(0)?),
        release_id: RecordId::from_stored(row.get(1)?),
        app_id: row.get(2)?,
        channel: ChannelName::from_stored(row.get(3)?),
        stable_bundle_id: RecordId::from_stored(row.get(4)?),
        canary_bundle_id: RecordId::from_stored(row.get(5)?),
        plan: RolloutPlan {
            steps,
            interval: duration(row.get(7)?),
            window: duration(row.get(8)?),
            max_failure_rate: row.get(9)?,
            min_devices: row.get::<_, i64>(10)?.max(0) as u64,
        },
        progress: RolloutProgress {
            phase,
            step: row.get::<_, i64>(13)?.max(0) as usize,
            step_started_at: row.get(14)?,
        },
        salt: row.get(15)?,
        health: CanaryHealth {
            devices: row.get::<_, i64>(16)?.max(0) as u64,
            failed: row.get::<_, i64>(17)?.max(0) as u64,
        },
        started_by: row.get(18)?,
        owner: owner_from(row.get(19)?),
        started_at: row.get(20)?,
        updated_at: row.get(21)?,
        finished_at: row.get(22)?,
        revision: row.get(23)?,
    })
}

/// Writes every column of `r` into the row with its id (or a new one), when `expected` is the
/// stored revision (`None`: insert).
fn write(connection: &Connection, r: &Rollout, expected: Option<i64>) -> rusqlite::Result<bool> {
    let steps = r
        .plan
        .steps
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let min_devices = i64::try_from(r.plan.min_devices).unwrap_or(i64::MAX);
    let (devices, failed) = (
        i64::try_from(r.health.devices).unwrap_or(i64::MAX),
        i64::try_from(r.health.failed).unwrap_or(i64::MAX),
    );
    let (interval, window, step) = (
        millis(r.plan.interval),
        millis(r.plan.window),
        r.progress.step as i64,
    );
    let owner = r.owner.as_ref().map(ResourceRef::to_stored);
    let (phase, reason) = (r.progress.phase.as_str(), r.progress.phase.reason());
    let ids = [
        r.id.as_str(),
        r.release_id.as_str(),
        r.channel.as_str(),
        r.stable_bundle_id.as_str(),
        r.canary_bundle_id.as_str(),
    ];
    let mut values: Vec<&dyn ToSql> = vec![
        &ids[0],
        &ids[1],
        &r.app_id,
        &ids[2],
        &ids[3],
        &ids[4],
        &steps,
        &interval,
        &window,
        &r.plan.max_failure_rate,
        &min_devices,
        &phase,
        &reason,
        &step,
        &r.progress.step_started_at,
        &r.salt,
        &devices,
        &failed,
        &r.started_by,
        &owner,
        &r.started_at,
        &r.updated_at,
        &r.finished_at,
        &r.revision,
    ];
    let sql = match &expected {
        None => format!("INSERT INTO rollouts ({COLUMNS}) VALUES ({PLACEHOLDERS})"),
        Some(expected) => {
            values.push(expected);
            let assignments = COLUMNS
                .split(", ")
                .enumerate()
                .skip(1)
                .map(|(i, column)| format!("{column} = ?{}", i + 1))
                .collect::<Vec<_>>()
                .join(", ");
            format!("UPDATE rollouts SET {assignments} WHERE id = ?1 AND revision = ?25")
        }
    };
    Ok(connection
        .prepare_cached(&sql)?
        .execute(params_from_iter(values))?
        > 0)
}

#[async_trait]
impl RolloutStore for SqliteMetadataStore {
    async fn insert_rollout(&self, rollout: &Rollout) -> Result<(), StoreError> {
        let r = rollout.clone();
        self.run(move |c| {
            let tx = c.transaction()?;
            if release_app_id(&tx, &r.release_id)?.is_none() {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some(format!("release {} does not exist", r.release_id)),
                ));
            }
            // A finished rollout of the channel makes way (its health records go with it); an
            // active one stays, and the insert fails on the unique key.
            tx.prepare_cached(
                "DELETE FROM rollouts WHERE release_id = ?1 AND channel = ?2 \
                 AND phase NOT IN ('progressing', 'paused')",
            )?
            .execute(params![r.release_id.as_str(), r.channel.as_str()])?;
            write(&tx, &r, None)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn rollout(
        &self,
        release_id: &RecordId,
        channel: &ChannelName,
    ) -> Result<Option<Rollout>, StoreError> {
        let (release_id, channel) = (release_id.clone(), channel.clone());
        self.read(move |c| rollout_of(c, &release_id, &channel))
            .await
    }

    async fn list_rollouts(&self, active_only: bool) -> Result<Vec<Rollout>, StoreError> {
        self.read(move |c| {
            let filter = if active_only {
                "WHERE phase IN ('progressing', 'paused')"
            } else {
                ""
            };
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM rollouts {filter} ORDER BY started_at DESC, id DESC"
            ))?
            .query_map([], rollout_from_row)?
            .collect()
        })
        .await
    }

    async fn update_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError> {
        let r = rollout.clone();
        self.run(move |c| write(c, &r, Some(r.revision - 1))).await
    }

    async fn complete_rollout(&self, rollout: &Rollout) -> Result<bool, StoreError> {
        let r = rollout.clone();
        self.run(move |c| {
            let tx = c.transaction()?;
            if !write(&tx, &r, Some(r.revision - 1))? {
                return Ok(false);
            }
            assign_channel(
                &tx,
                &r.release_id,
                &r.channel,
                &r.canary_bundle_id,
                r.updated_at,
            )?;
            tx.prepare_cached("UPDATE releases SET updated_at = ?2 WHERE id = ?1")?
                .execute(params![r.release_id.as_str(), r.updated_at])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn record_canary_marks(&self, marks: &[CanaryMark]) -> Result<(), StoreError> {
        if marks.is_empty() {
            return Ok(());
        }
        let marks = marks.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                // Only rollouts that still exist get records: the select finds nothing for the
                // others. `max` keeps the latest time of each signal whatever the order.
                let mut upsert = tx.prepare_cached(
                    "INSERT INTO rollout_devices \
                         (rollout_id, device_key, answered_at, installed_at, failed_at, crashed_at) \
                     SELECT id, ?2, ?3, ?4, ?5, ?6 FROM rollouts WHERE id = ?1 \
                     ON CONFLICT (rollout_id, device_key) DO UPDATE SET \
                         answered_at = max(coalesce(answered_at, excluded.answered_at), coalesce(excluded.answered_at, answered_at)), \
                         installed_at = max(coalesce(installed_at, excluded.installed_at), coalesce(excluded.installed_at, installed_at)), \
                         failed_at = max(coalesce(failed_at, excluded.failed_at), coalesce(excluded.failed_at, failed_at)), \
                         crashed_at = max(coalesce(crashed_at, excluded.crashed_at), coalesce(excluded.crashed_at, crashed_at))",
                )?;
                for mark in &marks {
                    let at = |signal| (mark.signal == signal).then_some(mark.at);
                    upsert.execute(params![
                        mark.rollout_id.as_str(),
                        mark.device_key,
                        at(CanarySignal::Answered),
                        at(CanarySignal::Installed),
                        at(CanarySignal::Failed),
                        at(CanarySignal::Crashed),
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn canary_health(
        &self,
        rollout_id: &RecordId,
        since: UnixMillis,
        crash_after_set: Duration,
    ) -> Result<CanaryHealth, StoreError> {
        let rollout_id = rollout_id.clone();
        let crash_after_set = millis(crash_after_set);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT count(*), coalesce(sum(failed), 0) FROM ( \
                     SELECT (failed_at >= ?2) OR (crashed_at >= ?2 AND crashed_at >= installed_at \
                             AND crashed_at - installed_at <= ?3) AS failed, \
                            installed_at >= ?2 AS installed \
                     FROM rollout_devices \
                     WHERE rollout_id = ?1 AND answered_at IS NOT NULL \
                 ) WHERE installed OR failed",
            )?
            .query_row(
                params![rollout_id.as_str(), since, crash_after_set],
                |row| {
                    Ok(CanaryHealth {
                        devices: row.get::<_, i64>(0)?.max(0) as u64,
                        failed: row.get::<_, i64>(1)?.max(0) as u64,
                    })
                },
            )
        })
        .await
    }

    async fn active_canary_health(
        &self,
        now: UnixMillis,
        crash_after_set: Duration,
    ) -> Result<Vec<(RecordId, CanaryHealth)>, StoreError> {
        let crash_after_set = millis(crash_after_set);
        self.read(move |c| {
            // The same rules as `canary_health`, for every active rollout at once, each from
            // its own start of the window.
            c.prepare_cached(
                "SELECT rollout_id, count(*), coalesce(sum(failed), 0) FROM ( \
                     SELECT d.rollout_id AS rollout_id, \
                            (d.failed_at >= s.since) OR (d.crashed_at >= s.since \
                             AND d.crashed_at >= d.installed_at \
                             AND d.crashed_at - d.installed_at <= ?2) AS failed, \
                            d.installed_at >= s.since AS installed \
                     FROM (SELECT id, max(started_at, ?1 - window_ms) AS since FROM rollouts \
                           WHERE phase IN ('progressing', 'paused')) AS s \
                     JOIN rollout_devices AS d ON d.rollout_id = s.id \
                     WHERE d.answered_at IS NOT NULL \
                 ) WHERE installed OR failed GROUP BY rollout_id",
            )?
            .query_map(params![now, crash_after_set], |row| {
                Ok((
                    RecordId::from_stored(row.get(0)?),
                    CanaryHealth {
                        devices: row.get::<_, i64>(1)?.max(0) as u64,
                        failed: row.get::<_, i64>(2)?.max(0) as u64,
                    },
                ))
            })?
            .collect()
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        let expires_at = now.saturating_add(millis(ttl));
        self.run(move |c| {
            Ok(c.prepare_cached(
                "INSERT INTO leases (name, holder, expires_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < ?4",
            )?
            .execute(params![name, holder, expires_at, now])?
                > 0)
        })
        .await
    }
}

/// The rollout of a release's channel (active or the last finished one).
pub(super) fn rollout_of(
    connection: &Connection,
    release_id: &RecordId,
    channel: &ChannelName,
) -> rusqlite::Result<Option<Rollout>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {COLUMNS} FROM rollouts WHERE release_id = ?1 AND channel = ?2")
    });
    connection
        .prepare_cached(&SQL)?
        .query_row(
            params![release_id.as_str(), channel.as_str()],
            rollout_from_row,
        )
        .optional()
}
