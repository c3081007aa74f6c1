//! The fleet overview's counts (`fleet_counts`, one row per period and key, the device
//! sketch as a blob) and the retention of raw stats (see [`FleetStore`]).

use async_trait::async_trait;
use rusqlite::types::ToSql;
use rusqlite::{params, params_from_iter, OptionalExtension, Row};

use super::{SqliteMetadataStore, StoreError};
use crate::domain::fleet::{FleetCount, FleetKey, Span};
use crate::domain::sketch::DistinctSketch;
use crate::domain::{ChannelName, Platform, ReleaseKey, UnixMillis};
use crate::store::FleetStore;

/// Run after the main schema. `start` is the period's first millisecond; `kind` says what the
/// key is about and the period's span ([`kind`]). Dimensions a key does not have are stored
/// as `''`, so the primary key is the whole key.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS fleet_counts (
    app_id        TEXT NOT NULL,
    start         INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    platform      TEXT NOT NULL,
    version_build TEXT NOT NULL,
    version_code  TEXT NOT NULL,
    channel       TEXT NOT NULL,
    bundle        TEXT NOT NULL,
    action        TEXT NOT NULL,
    events        INTEGER NOT NULL,
    devices       BLOB NOT NULL,
    PRIMARY KEY (app_id, start, kind, platform, version_build, version_code, channel, bundle, action)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fleet_counts_by_start ON fleet_counts (kind, start);
CREATE INDEX IF NOT EXISTS stats_by_time ON stats_events (occurred_at);
"#;

/// Run first when `fleet_counts` has a `day` column: development builds before hourly counts
/// made it (no release did), and its daily counts are dropped.
pub(super) const DROP_DEVELOPMENT_TABLE: &str =
    "DROP INDEX IF EXISTS fleet_counts_by_day; DROP TABLE fleet_counts;";

/// The `kind` column: what a key is about, and its period's span.
fn kind(key: &FleetKey, span: Span) -> &'static str {
    match (key, span) {
        (FleetKey::Check { .. }, Span::Day) => "check",
        (FleetKey::Check { .. }, Span::Hour) => "hourly_check",
        (FleetKey::Report { .. }, Span::Day) => "report",
        (FleetKey::Report { .. }, Span::Hour) => "hourly_report",
    }
}

/// The `kind` values of a span.
fn kinds_of(span: Span) -> [&'static str; 2] {
    match span {
        Span::Day => ["check", "report"],
        Span::Hour => ["hourly_check", "hourly_report"],
    }
}

/// Rows deleted per statement when applying retention.
const DELETE_BATCH: i64 = 5_000;

/// The key's columns after `app_id` and `start`.
fn columns(key: &FleetKey, span: Span) -> [&str; 7] {
    match key {
        FleetKey::Check {
            release,
            channel,
            bundle,
        } => [
            kind(key, span),
            release.platform.as_str(),
            &release.version_name,
            &release.version_code,
            channel.as_str(),
            bundle,
            "",
        ],
        FleetKey::Report { bundle, action, .. } => {
            [kind(key, span), "", "", "", "", bundle, action]
        }
    }
}

fn count_from_row(row: &Row) -> rusqlite::Result<Option<FleetCount>> {
    let text = |i: usize| row.get::<_, String>(i);
    let app_id = text(0)?;
    let kind = text(2)?;
    let Some(span) = [Span::Day, Span::Hour]
        .into_iter()
        .find(|span| kinds_of(*span).contains(&kind.as_str()))
    else {
        return Ok(None);
    };
    let key = match kind.as_str() {
        "check" | "hourly_check" => {
            let (Some(platform), Ok(channel)) = (
                text(3)?.parse::<Platform>().ok(),
                ChannelName::parse(&text(6)?),
            ) else {
                return Ok(None);
            };
            FleetKey::Check {
                release: ReleaseKey {
                    platform,
                    app_id,
                    version_name: text(4)?,
                    version_code: text(5)?,
                },
                channel,
                bundle: text(7)?,
            }
        }
        _ => FleetKey::Report {
            app_id,
            bundle: text(7)?,
            action: text(8)?,
        },
    };
    let Some(devices) = DistinctSketch::from_bytes(&row.get::<_, Vec<u8>>(10)?) else {
        return Ok(None);
    };
    Ok(Some(FleetCount {
        start: row.get(1)?,
        span,
        key,
        events: row.get::<_, i64>(9)? as u64,
        devices,
    }))
}

#[async_trait]
impl FleetStore for SqliteMetadataStore {
    async fn record_fleet_counts(&self, counts: &[FleetCount]) -> Result<(), StoreError> {
        let counts = counts.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut read = tx.prepare_cached(
                    "SELECT events, devices FROM fleet_counts WHERE app_id = ?1 AND start = ?2 \
                     AND kind = ?3 AND platform = ?4 AND version_build = ?5 \
                     AND version_code = ?6 AND channel = ?7 AND bundle = ?8 AND action = ?9",
                )?;
                let mut write = tx.prepare_cached(
                    "INSERT OR REPLACE INTO fleet_counts (app_id, start, kind, platform, \
                     version_build, version_code, channel, bundle, action, events, devices) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                for count in &counts {
                    let [kind, platform, build, code, channel, bundle, action] =
                        columns(&count.key, count.span);
                    let app_id = count.key.app_id();
                    let key: [&dyn ToSql; 9] = [
                        &app_id,
                        &count.start,
                        &kind,
                        &platform,
                        &build,
                        &code,
                        &channel,
                        &bundle,
                        &action,
                    ];
                    let stored: Option<(i64, Vec<u8>)> = read
                        .query_row(&key[..], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()?;
                    let mut merged = count.clone();
                    if let Some((events, devices)) = stored {
                        merged.events += events as u64;
                        if let Some(sketch) = DistinctSketch::from_bytes(&devices) {
                            merged.devices.merge(&sketch);
                        }
                    }
                    let (events, devices) = (merged.events as i64, merged.devices.to_bytes());
                    write.execute(params_from_iter(
                        key.iter().copied().chain([&events as &dyn ToSql, &devices]),
                    ))?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn fleet_counts(
        &self,
        app_id: &str,
        since: UnixMillis,
    ) -> Result<Vec<FleetCount>, StoreError> {
        let app_id = app_id.to_string();
        let rows: Vec<Option<FleetCount>> = self
            .read(move |c| {
                c.prepare_cached(
                    "SELECT app_id, start, kind, platform, version_build, version_code, channel, \
                     bundle, action, events, devices FROM fleet_counts \
                     WHERE app_id = ?1 AND start >= ?2 ORDER BY start",
                )?
                .query_map(params![app_id, since], count_from_row)?
                .collect()
            })
            .await?;
        Ok(rows.into_iter().flatten().collect())
    }

    async fn delete_fleet_counts_before(
        &self,
        span: Span,
        before: UnixMillis,
    ) -> Result<u64, StoreError> {
        // A few rows per app and period: one statement.
        let [a, b] = kinds_of(span);
        self.run(move |c| {
            c.prepare_cached("DELETE FROM fleet_counts WHERE kind IN (?1, ?2) AND start < ?3")?
                .execute(params![a, b, before])
                .map(|n| n as u64)
        })
        .await
    }

    async fn delete_stats_before(&self, before: UnixMillis) -> Result<u64, StoreError> {
        self.delete_in_batches(
            "DELETE FROM stats_events WHERE id IN \
             (SELECT id FROM stats_events WHERE occurred_at < ?1 LIMIT ?2)",
            before,
        )
        .await
    }
}

impl SqliteMetadataStore {
    /// Runs `statement` (bound to `before` and a batch size) until it deletes nothing, one
    /// short transaction per batch so writers are never held up for long.
    async fn delete_in_batches(
        &self,
        statement: &'static str,
        before: UnixMillis,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        loop {
            let deleted = self
                .run(move |c| {
                    c.prepare_cached(statement)?
                        .execute(params![before, DELETE_BATCH])
                })
                .await?;
            removed += deleted as u64;
            if (deleted as i64) < DELETE_BATCH {
                return Ok(removed);
            }
        }
    }
}
