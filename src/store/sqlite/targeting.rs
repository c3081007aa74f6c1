//! Channel settings, device overrides and unregistered native builds (see [`TargetingStore`]).
//!
//! - `channel_settings`: one row per configured channel, keyed like the channel it belongs to
//!   (`channels (app_id, name)`, which a put creates). A separate table rather than columns on
//!   `channels`: a row exists exactly when someone configured the channel, and databases made
//!   before settings existed need no migration. One typed column per rule, so the file stays
//!   readable with `sqlite3`.
//! - `device_overrides`: one row per (app, device) that has one; the primary key is what makes
//!   "one record per device" hold, and the device's own choice a single conditional upsert.
//! - `unregistered_builds`: one row per native build, at most
//!   [`MAX_UNREGISTERED_BUILDS`] (trimmed in the same transaction as each batch).
//! - No index on `stats_events` for finding devices: finding one by id or custom id reads the
//!   app's events (`stats_by_bundle` starts with the app), which a person waits for once, while
//!   every index on that table is paid by each stats insert (two more cut the stats benchmark
//!   about five times).
//!
//! This process is the only writer of its database, so nothing here moves a catalog version:
//! the catalog clears its own answer cache after each write.

use std::sync::LazyLock;

use async_trait::async_trait;
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};

use super::{ensure_channel, owner_from, SqliteMetadataStore, StoreError};
use crate::domain::channel_policy::{ChannelRules, ChannelSettings, UpdatePolicy};
use crate::domain::targeting::{
    DeviceOverride, OverrideSource, UnregisteredBuild, MAX_UNREGISTERED_BUILDS,
};
use crate::domain::{ChannelName, InvalidInput, ReleaseKey, ResourceRef};
use crate::store::{SeenDevice, TargetingStore};

/// Run after the main schema and its column migrations.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS channel_settings (
    app_id                TEXT NOT NULL,
    channel               TEXT NOT NULL,
    allow_ios             INTEGER NOT NULL,
    allow_android         INTEGER NOT NULL,
    allow_electron        INTEGER NOT NULL,
    allow_emulator        INTEGER NOT NULL,
    allow_device          INTEGER NOT NULL,
    allow_dev_build       INTEGER NOT NULL,
    allow_prod_build      INTEGER NOT NULL,
    update_policy         TEXT NOT NULL,
    block_under_native    INTEGER NOT NULL,
    allow_device_self_set INTEGER NOT NULL,
    owner                 TEXT,
    updated_at            INTEGER NOT NULL,
    PRIMARY KEY (app_id, channel),
    FOREIGN KEY (app_id, channel) REFERENCES channels (app_id, name)
);
CREATE TABLE IF NOT EXISTS device_overrides (
    app_id     TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    channel    TEXT NOT NULL,
    source     TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (app_id, device_id)
);
CREATE INDEX IF NOT EXISTS device_overrides_by_source ON device_overrides (source);
CREATE TABLE IF NOT EXISTS unregistered_builds (
    platform     TEXT NOT NULL,
    app_id       TEXT NOT NULL,
    version_name TEXT NOT NULL,
    version_code TEXT NOT NULL,
    devices      INTEGER NOT NULL,
    checks       INTEGER NOT NULL,
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    PRIMARY KEY (platform, app_id, version_name, version_code)
);
CREATE INDEX IF NOT EXISTS unregistered_builds_by_last_seen ON unregistered_builds (last_seen);
"#;

const SETTINGS_COLUMNS: &str = "app_id, channel, allow_ios, allow_android, allow_electron, \
    allow_emulator, allow_device, allow_dev_build, allow_prod_build, update_policy, \
    block_under_native, allow_device_self_set, owner, updated_at";
const OVERRIDE_COLUMNS: &str = "app_id, device_id, channel, source, updated_at";
const BUILD_COLUMNS: &str =
    "platform, app_id, version_name, version_code, devices, checks, first_seen, last_seen";

/// Puts a device on a channel whatever override it had.
const UPSERT_OVERRIDE: &str = "INSERT INTO device_overrides (app_id, device_id, channel, source, \
    updated_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (app_id, device_id) DO UPDATE SET \
    channel = excluded.channel, source = excluded.source, updated_at = excluded.updated_at";

#[async_trait]
impl TargetingStore for SqliteMetadataStore {
    async fn channel_settings(
        &self,
        app_id: Option<&str>,
    ) -> Result<Vec<ChannelSettings>, StoreError> {
        let app_id = app_id.map(str::to_string);
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {SETTINGS_COLUMNS} FROM channel_settings \
                 WHERE ?1 IS NULL OR app_id = ?1 ORDER BY app_id, channel"
            ))?
            .query_map([&app_id], settings_from_row)?
            .collect()
        })
        .await
    }

    async fn put_channel_settings(&self, settings: &ChannelSettings) -> Result<(), StoreError> {
        let s = settings.clone();
        self.run(move |c| {
            let tx = c.transaction()?;
            ensure_channel(&tx, &s.app_id, s.channel.as_str())?;
            let r = &s.rules;
            tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO channel_settings ({SETTINGS_COLUMNS}) VALUES \
                 (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
            ))?
            .execute(params![
                s.app_id,
                s.channel.as_str(),
                r.allow_ios,
                r.allow_android,
                r.allow_electron,
                r.allow_emulator,
                r.allow_device,
                r.allow_dev_build,
                r.allow_prod_build,
                r.update_policy.as_str(),
                r.block_under_native,
                r.allow_device_self_set,
                s.owner.as_ref().map(ResourceRef::to_stored),
                s.updated_at,
            ])?;
            tx.commit()
        })
        .await
    }

    async fn delete_channel_settings(
        &self,
        app_id: &str,
        channel: &ChannelName,
    ) -> Result<bool, StoreError> {
        let (app_id, channel) = (app_id.to_string(), channel.clone());
        self.run(move |c| {
            c.prepare_cached("DELETE FROM channel_settings WHERE app_id = ?1 AND channel = ?2")?
                .execute([&app_id, channel.as_str()])
                .map(|n| n > 0)
        })
        .await
    }

    async fn device_overrides(&self, app_id: &str) -> Result<Vec<DeviceOverride>, StoreError> {
        let app_id = app_id.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {OVERRIDE_COLUMNS} FROM device_overrides WHERE app_id = ?1 \
                 ORDER BY device_id"
            ))?
            .query_map([&app_id], override_from_row)?
            .collect()
        })
        .await
    }

    async fn put_device_overrides(&self, overrides: &[DeviceOverride]) -> Result<(), StoreError> {
        let overrides = overrides.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            upsert_overrides(&tx, &overrides)?;
            tx.commit()
        })
        .await
    }

    async fn put_device_choice(&self, choice: &DeviceOverride) -> Result<bool, StoreError> {
        let choice = choice.clone();
        self.run(move |c| {
            // One statement: the conflict clause only replaces a choice the device made.
            let written = c
                .prepare_cached(&format!(
                    "INSERT INTO device_overrides ({OVERRIDE_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5) ON CONFLICT (app_id, device_id) DO UPDATE SET \
                     channel = excluded.channel, updated_at = excluded.updated_at \
                     WHERE device_overrides.source = excluded.source"
                ))?
                .execute(params![
                    choice.app_id,
                    choice.device_id,
                    choice.channel.as_str(),
                    OverrideSource::Device.to_stored(),
                    choice.updated_at,
                ])?;
            Ok(written > 0)
        })
        .await
    }

    async fn delete_device_overrides(
        &self,
        app_id: &str,
        device_ids: &[String],
        source: Option<&OverrideSource>,
    ) -> Result<u64, StoreError> {
        let (app_id, device_ids) = (app_id.to_string(), device_ids.to_vec());
        let source = source.map(OverrideSource::to_stored);
        self.run(move |c| {
            let tx = c.transaction()?;
            let mut removed = 0;
            {
                let mut delete = tx.prepare_cached(
                    "DELETE FROM device_overrides WHERE app_id = ?1 AND device_id = ?2 \
                     AND (?3 IS NULL OR source = ?3)",
                )?;
                for device_id in &device_ids {
                    removed += delete.execute(params![app_id, device_id, source])? as u64;
                }
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn replace_resource_overrides(
        &self,
        owner: &OverrideSource,
        overrides: &[DeviceOverride],
    ) -> Result<(), StoreError> {
        let (owner, overrides) = (owner.to_stored(), overrides.to_vec());
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.prepare_cached("DELETE FROM device_overrides WHERE source = ?1")?
                .execute([&owner])?;
            upsert_overrides(&tx, &overrides)?;
            tx.commit()
        })
        .await
    }

    async fn record_unregistered_builds(
        &self,
        sightings: &[UnregisteredBuild],
    ) -> Result<(), StoreError> {
        let sightings = sightings.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut upsert = tx.prepare_cached(&format!(
                    "INSERT INTO unregistered_builds ({BUILD_COLUMNS}) VALUES \
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                     ON CONFLICT (platform, app_id, version_name, version_code) DO UPDATE SET \
                     devices = MAX(devices, excluded.devices), \
                     checks = checks + excluded.checks, \
                     first_seen = MIN(first_seen, excluded.first_seen), \
                     last_seen = MAX(last_seen, excluded.last_seen)"
                ))?;
                for b in &sightings {
                    upsert.execute(params![
                        b.key.platform.as_str(),
                        b.key.app_id,
                        b.key.version_name,
                        b.key.version_code,
                        clamped(b.devices),
                        clamped(b.checks),
                        b.first_seen,
                        b.last_seen,
                    ])?;
                }
            }
            trim_unregistered_builds(&tx)?;
            tx.commit()
        })
        .await
    }

    async fn unregistered_builds(&self) -> Result<Vec<UnregisteredBuild>, StoreError> {
        self.run(|c| {
            c.prepare_cached(&format!(
                "SELECT {BUILD_COLUMNS} FROM unregistered_builds ORDER BY last_seen DESC, \
                 app_id, platform, version_name, version_code"
            ))?
            .query_map([], build_from_row)?
            .collect()
        })
        .await
    }

    async fn delete_unregistered_build(&self, key: &ReleaseKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |c| {
            c.prepare_cached(
                "DELETE FROM unregistered_builds WHERE platform = ?1 AND app_id = ?2 \
                 AND version_name = ?3 AND version_code = ?4",
            )?
            .execute(params![
                key.platform.as_str(),
                key.app_id,
                key.version_name,
                key.version_code
            ])
            .map(drop)
        })
        .await
    }

    async fn find_devices(
        &self,
        app_id: &str,
        id: &str,
        limit: usize,
    ) -> Result<Vec<SeenDevice>, StoreError> {
        let (app_id, device_id, custom_id) =
            (app_id.to_string(), id.to_ascii_lowercase(), id.to_string());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            // The device with that id (no lookup needed: without events it yields no row)
            // and those with that custom id, as a UNION so each half uses its index. With
            // MAX(), SQLite takes the other (bare) columns from the row holding the maximum:
            // the device's latest event.
            c.prepare_cached(
                "SELECT device_id, custom_id, platform, version_name, \
                 MAX(occurred_at) AS last_seen FROM stats_events \
                 WHERE app_id = ?1 AND device_id IN (SELECT ?2 UNION \
                 SELECT device_id FROM stats_events WHERE app_id = ?1 AND custom_id = ?3) \
                 GROUP BY device_id ORDER BY last_seen DESC, device_id LIMIT ?4",
            )?
            .query_map(params![app_id, device_id, custom_id, limit], |row| {
                Ok(SeenDevice {
                    device_id: row.get(0)?,
                    custom_id: row.get(1)?,
                    platform: row.get(2)?,
                    version_name: row.get(3)?,
                    last_seen: row.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }
}

fn upsert_overrides(tx: &Transaction<'_>, overrides: &[DeviceOverride]) -> rusqlite::Result<()> {
    let mut upsert = tx.prepare_cached(UPSERT_OVERRIDE)?;
    for o in overrides {
        upsert.execute(params![
            o.app_id,
            o.device_id,
            o.channel.as_str(),
            o.source.to_stored(),
            o.updated_at,
        ])?;
    }
    Ok(())
}

/// Drops the builds seen longest ago beyond [`MAX_UNREGISTERED_BUILDS`].
fn trim_unregistered_builds(connection: &Connection) -> rusqlite::Result<()> {
    connection
        .prepare_cached(
            "DELETE FROM unregistered_builds WHERE rowid IN (SELECT rowid FROM \
             unregistered_builds ORDER BY last_seen DESC, rowid DESC LIMIT -1 OFFSET ?1)",
        )?
        .execute([MAX_UNREGISTERED_BUILDS as i64])
        .map(drop)
}

/// Counts are `u64` in the domain and `INTEGER` (signed) in SQLite.
fn clamped(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn conversion_error(column: usize, e: InvalidInput) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, e.0.into())
}

fn settings_from_row(row: &Row<'_>) -> rusqlite::Result<ChannelSettings> {
    let policy: String = row.get(9)?;
    Ok(ChannelSettings {
        app_id: row.get(0)?,
        channel: ChannelName::from_stored(row.get(1)?),
        rules: ChannelRules {
            allow_ios: row.get(2)?,
            allow_android: row.get(3)?,
            allow_electron: row.get(4)?,
            allow_emulator: row.get(5)?,
            allow_device: row.get(6)?,
            allow_dev_build: row.get(7)?,
            allow_prod_build: row.get(8)?,
            update_policy: policy
                .parse::<UpdatePolicy>()
                .map_err(|e| conversion_error(9, e))?,
            block_under_native: row.get(10)?,
            allow_device_self_set: row.get(11)?,
        },
        owner: owner_from(row.get(12)?),
        updated_at: row.get(13)?,
    })
}

fn override_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceOverride> {
    let source: String = row.get(3)?;
    Ok(DeviceOverride {
        app_id: row.get(0)?,
        device_id: row.get(1)?,
        channel: ChannelName::from_stored(row.get(2)?),
        source: OverrideSource::from_stored(&source).ok_or_else(|| {
            conversion_error(
                3,
                InvalidInput(format!(
                    "override source {source:?} is not api, device or Kind/namespace/name"
                )),
            )
        })?,
        updated_at: row.get(4)?,
    })
}

fn build_from_row(row: &Row<'_>) -> rusqlite::Result<UnregisteredBuild> {
    let platform: String = row.get(0)?;
    Ok(UnregisteredBuild {
        key: ReleaseKey {
            platform: platform.parse().map_err(|e| conversion_error(0, e))?,
            app_id: row.get(1)?,
            version_name: row.get(2)?,
            version_code: row.get(3)?,
        },
        devices: row.get::<_, i64>(4)?.max(0) as u64,
        checks: row.get::<_, i64>(5)?.max(0) as u64,
        first_seen: row.get(6)?,
        last_seen: row.get(7)?,
    })
}

/// The stored settings of one channel of an app (`None`: it has the defaults).
pub(super) fn settings_of(
    connection: &Connection,
    app_id: &str,
    channel: &ChannelName,
) -> rusqlite::Result<Option<ChannelSettings>> {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {SETTINGS_COLUMNS} FROM channel_settings WHERE app_id = ?1 AND channel = ?2"
        )
    });
    connection
        .prepare_cached(&SQL)?
        .query_row(params![app_id, channel.as_str()], settings_from_row)
        .optional()
}
