//! The embedded metadata store: one SQLite file in DATA_DIR.
//!
//! SQLite (bundled build, so nothing to install) gives unique indexes that turn duplicate
//! uploads into clean conflicts, foreign keys that stop a used bundle from vanishing,
//! transactions for batches, WAL for crash safety, and a file people can open with `sqlite3`.

mod app_keys;
mod fleet;
mod manifests;
mod rollouts;
mod targeting;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};

use super::{
    AccessStore, BundleRecord, CatalogStore, CatalogVersion, ServedRecords, ServedRollout,
    StoreError,
};
use crate::domain::access::{ApiToken, AuditCursor, AuditEntry};
use crate::domain::bundle::BundleDetails;
use crate::domain::channel::Channel;
use crate::domain::release::assignment_time;
use crate::domain::stats::StatsEvent;
use crate::domain::{
    Bundle, BundleEncryption, ChannelName, RecordId, Release, ReleaseKey, ResourceRef, UnixMillis,
    DEFAULT_CHANNEL,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS bundles (
    id                 TEXT PRIMARY KEY,
    app_id             TEXT NOT NULL,
    version_name       TEXT NOT NULL,
    description        TEXT NOT NULL,
    sha256             TEXT NOT NULL,
    crc32              TEXT NOT NULL,
    size               INTEGER NOT NULL,
    blob_key           TEXT NOT NULL,
    session_key        TEXT,
    encrypted_checksum TEXT,
    key_id             TEXT,
    created_at         INTEGER NOT NULL,
    owner              TEXT,
    link               TEXT,
    min_update_version TEXT,
    UNIQUE (app_id, version_name)
);
CREATE TABLE IF NOT EXISTS releases (
    id                TEXT PRIMARY KEY,
    platform          TEXT NOT NULL,
    app_id            TEXT NOT NULL,
    version_name      TEXT NOT NULL,
    version_code      TEXT NOT NULL,
    builtin_bundle_id TEXT NOT NULL REFERENCES bundles(id),
    release_date      INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    owner             TEXT,
    UNIQUE (version_name, platform, app_id, version_code)
);
CREATE TABLE IF NOT EXISTS release_channels (
    release_id TEXT NOT NULL REFERENCES releases(id) ON DELETE CASCADE,
    channel    TEXT NOT NULL,
    bundle_id  TEXT NOT NULL REFERENCES bundles(id),
    PRIMARY KEY (release_id, channel)
);
CREATE INDEX IF NOT EXISTS release_channels_by_bundle ON release_channels (bundle_id);
CREATE INDEX IF NOT EXISTS releases_by_builtin ON releases (builtin_bundle_id);
CREATE TABLE IF NOT EXISTS channels (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    app_id TEXT NOT NULL,
    name   TEXT NOT NULL,
    UNIQUE (app_id, name)
);
CREATE TABLE IF NOT EXISTS stats_events (
    id               INTEGER PRIMARY KEY,
    occurred_at      INTEGER NOT NULL,
    app_id           TEXT NOT NULL,
    device_id        TEXT NOT NULL,
    action           TEXT NOT NULL,
    platform         TEXT,
    version_name     TEXT,
    old_version_name TEXT,
    version_build    TEXT,
    version_code     TEXT,
    plugin_version   TEXT,
    is_emulator      INTEGER,
    is_prod          INTEGER,
    custom_id        TEXT,
    metadata         TEXT
);
CREATE INDEX IF NOT EXISTS stats_by_bundle ON stats_events (app_id, version_name, occurred_at);
CREATE TABLE IF NOT EXISTS api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    scope      TEXT NOT NULL,
    digest     TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    id        TEXT PRIMARY KEY,
    at        INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    client_ip TEXT NOT NULL,
    status    INTEGER NOT NULL,
    message   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_log (at, id);
"#;

const TOKEN_COLUMNS: &str = "id, name, scope, digest, created_at, created_by";
const AUDIT_COLUMNS: &str = "id, at, actor, action, target, client_ip, status, message";

const BUNDLE_COLUMNS: &str = "id, app_id, version_name, description, sha256, crc32, size, \
    blob_key, session_key, encrypted_checksum, key_id, created_at, owner, link, min_update_version";
const RELEASE_COLUMNS: &str = "id, platform, app_id, version_name, version_code, \
    builtin_bundle_id, release_date, created_at, updated_at, owner";

/// Columns added after the first release of the schema: (table, column, declaration).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("bundles", "owner", "TEXT"),
    ("releases", "owner", "TEXT"),
    ("bundles", "link", "TEXT"),
    ("bundles", "min_update_version", "TEXT"),
    // When the channel was pointed at `bundle_id` (NULL: before this was kept).
    ("release_channels", "assigned_at", "INTEGER"),
];

fn has_column(connection: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    connection
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
        ))?
        .exists([column])
}

pub struct SqliteMetadataStore {
    /// Every write, and reads that return many rows, run here on the blocking pool.
    connection: Arc<Mutex<Connection>>,
    /// Read-only connections for point lookups (the `/updates` path), run on the calling task:
    /// a lookup of cached pages takes microseconds, less than handing it to another thread.
    /// WAL lets them read while the writer writes. Empty for in-memory databases.
    readers: Vec<Mutex<Connection>>,
}

/// Read connections per database file.
const READERS: usize = 4;

impl SqliteMetadataStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteMetadataStore, StoreError> {
        let connection = Connection::open(path).map_err(|e| {
            StoreError::internal(format!("cannot open database {}", path.display()), e)
        })?;
        let mut store = Self::prepare(connection)?;
        for _ in 0..READERS {
            let reader = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|c| {
                // Never wait on the calling task: a busy database sends the read to `run`.
                c.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 0;")?;
                Ok(c)
            })
            .map_err(|e| {
                StoreError::internal(format!("cannot open database {}", path.display()), e)
            })?;
            store.readers.push(Mutex::new(reader));
        }
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<SqliteMetadataStore, StoreError> {
        Self::prepare(Connection::open_in_memory().map_err(internal)?)
    }

    fn prepare(connection: Connection) -> Result<SqliteMetadataStore, StoreError> {
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
            )
            .map_err(internal)?;
        connection.execute_batch(SCHEMA).map_err(internal)?;
        connection
            .execute_batch(app_keys::SCHEMA)
            .map_err(internal)?;
        for (table, column, declaration) in ADDED_COLUMNS {
            if !has_column(&connection, table, column).map_err(internal)? {
                connection
                    .execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column} {declaration}"
                    ))
                    .map_err(internal)?;
            }
        }
        connection
            .execute_batch(targeting::SCHEMA)
            .map_err(internal)?;
        connection
            .execute_batch(rollouts::SCHEMA)
            .map_err(internal)?;
        connection
            .execute_batch(manifests::SCHEMA)
            .map_err(internal)?;
        if has_column(&connection, "fleet_counts", "day").map_err(internal)? {
            connection
                .execute_batch(fleet::DROP_DEVELOPMENT_TABLE)
                .map_err(internal)?;
        }
        connection.execute_batch(fleet::SCHEMA).map_err(internal)?;
        Ok(SqliteMetadataStore {
            connection: Arc::new(Mutex::new(connection)),
            readers: Vec::new(),
        })
    }

    /// Runs `work` on the connection off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .map_err(|_| StoreError::invalid("database lock poisoned"))?;
            work(&mut guard).map_err(map_error)
        })
        .await
        .map_err(|e| StoreError::internal("database task failed", e))?
    }
}

impl SqliteMetadataStore {
    /// Indexed lookups (a record, or the records of an answer-cache miss with their manifests)
    /// on a free read connection, on this task; on the writer's thread when every reader is in
    /// use or the database is momentarily busy.
    async fn read<T: Send + 'static>(
        &self,
        work: impl Fn(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        for reader in &self.readers {
            let Ok(mut connection) = reader.try_lock() else {
                continue;
            };
            match work(&mut connection) {
                Err(e) if is_busy(&e) => break,
                result => return result.map_err(map_error),
            }
        }
        self.run(work).await
    }
}

impl SqliteMetadataStore {
    /// Sets the owner of an unowned record of `table` (`releases` or `bundles`).
    async fn adopt(
        &self,
        table: &'static str,
        id: &RecordId,
        owner: &ResourceRef,
    ) -> Result<bool, StoreError> {
        let (id, owner) = (id.clone(), owner.to_stored());
        self.run(move |c| {
            Ok(c.prepare_cached(&format!(
                "UPDATE {table} SET owner = ?2 WHERE id = ?1 AND owner IS NULL"
            ))?
            .execute(params![id.as_str(), owner])?
                > 0)
        })
        .await
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn internal(e: rusqlite::Error) -> StoreError {
    StoreError::internal("SQLite", e)
}

fn map_error(e: rusqlite::Error) -> StoreError {
    if is_busy(&e) {
        return StoreError::unavailable("SQLite is busy", e);
    }
    match &e {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::Reference(e.to_string())
        }
        _ if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
            StoreError::Duplicate(e.to_string())
        }
        _ => internal(e),
    }
}

fn owner_from(stored: Option<String>) -> Option<ResourceRef> {
    stored.as_deref().and_then(ResourceRef::from_stored)
}

fn bundle_from_row(row: &Row<'_>) -> rusqlite::Result<Bundle> {
    let session_key: Option<String> = row.get(8)?;
    let encrypted_checksum: Option<String> = row.get(9)?;
    let key_id: Option<String> = row.get(10)?;
    Ok(Bundle {
        id: RecordId::from_stored(row.get(0)?),
        app_id: row.get(1)?,
        version_name: row.get(2)?,
        description: row.get(3)?,
        link: row.get(13)?,
        min_update_version: row.get(14)?,
        sha256: row.get(4)?,
        crc32: row.get(5)?,
        size: row.get::<_, i64>(6)? as u64,
        blob_key: row.get(7)?,
        encryption: session_key.map(|session_key| BundleEncryption {
            session_key,
            checksum: encrypted_checksum.unwrap_or_default(),
            key_id,
        }),
        created_at: row.get(11)?,
        owner: owner_from(row.get(12)?),
    })
}

fn release_from_row(row: &Row<'_>) -> rusqlite::Result<Release> {
    let platform: String = row.get(1)?;
    Ok(Release {
        id: RecordId::from_stored(row.get(0)?),
        key: ReleaseKey {
            platform: platform.parse().map_err(|e: crate::domain::InvalidInput| {
                rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.into())
            })?,
            app_id: row.get(2)?,
            version_name: row.get(3)?,
            version_code: row.get(4)?,
        },
        builtin_bundle_id: RecordId::from_stored(row.get(5)?),
        channels: BTreeMap::new(),
        assigned_at: BTreeMap::new(),
        release_date: row.get(6)?,
        created_at: row.get(7)?,
        updated_at: row.get(8)?,
        owner: owner_from(row.get(9)?),
    })
}

fn bundle_of(connection: &Connection, id: &RecordId) -> rusqlite::Result<Option<Bundle>> {
    static SQL: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {BUNDLE_COLUMNS} FROM bundles WHERE id = ?1"));
    connection
        .prepare_cached(&SQL)?
        .query_row([id.as_str()], bundle_from_row)
        .optional()
}

fn bundle_record(connection: &Connection, id: &RecordId) -> rusqlite::Result<Option<BundleRecord>> {
    let Some(bundle) = bundle_of(connection, id)? else {
        return Ok(None);
    };
    let manifest = manifests::manifest_of(connection, id)?;
    Ok(Some(BundleRecord { bundle, manifest }))
}

/// Runs `reads` in one read transaction, so they see one snapshot of the catalog. BEGIN and
/// COMMIT are cached statements: rusqlite's `transaction()` parses `BEGIN DEFERRED` and, when
/// dropped, `ROLLBACK` on every call, a tenth of a cache miss's store read.
fn in_snapshot<T>(
    connection: &Connection,
    reads: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    connection.prepare_cached("BEGIN")?.execute([])?;
    let result = reads(connection);
    // Nothing was written: COMMIT only ends the snapshot. Should it fail, the connection must
    // not stay inside the transaction for its next user; the reads' own error (a busy database
    // is retried elsewhere) is still the one returned.
    let end = connection
        .prepare_cached("COMMIT")
        .and_then(|mut commit| commit.execute([]));
    if !connection.is_autocommit() {
        let _ = connection.execute_batch("ROLLBACK");
    }
    let value = result?;
    end?;
    Ok(value)
}

fn release_by_key(connection: &Connection, key: &ReleaseKey) -> rusqlite::Result<Option<Release>> {
    // Built once: this runs on every device check the answer cache does not answer.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        releases_query(
            "r.platform = ?1 AND r.app_id = ?2 AND r.version_name = ?3 AND r.version_code = ?4",
        )
    });
    Ok(releases_with_channels(
        connection,
        &SQL,
        &[
            &key.platform.as_str(),
            &key.app_id,
            &key.version_name,
            &key.version_code,
        ],
    )?
    .pop())
}

/// Loads releases matching `filter` (a WHERE clause over `releases r`) with their channels.
fn load_releases(
    connection: &Connection,
    filter: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<Release>> {
    releases_with_channels(connection, &releases_query(filter), params)
}

/// The query of the releases matching `filter`, newest first.
fn releases_query(filter: &str) -> String {
    static COLUMNS: LazyLock<String> = LazyLock::new(|| {
        RELEASE_COLUMNS
            .split(", ")
            .map(|c| format!("r.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    });
    format!(
        "SELECT {} FROM releases r WHERE {filter} ORDER BY r.created_at DESC, r.id DESC",
        *COLUMNS
    )
}

/// The releases `sql` (a [`releases_query`]) selects, with their channels.
fn releases_with_channels(
    connection: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<Release>> {
    let mut releases: Vec<Release> = connection
        .prepare_cached(sql)?
        .query_map(params, release_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let mut channels = connection.prepare_cached(
        "SELECT channel, bundle_id, assigned_at FROM release_channels WHERE release_id = ?1",
    )?;
    for release in &mut releases {
        let rows = channels.query_map([release.id.as_str()], |row| {
            Ok((
                ChannelName::from_stored(row.get(0)?),
                RecordId::from_stored(row.get(1)?),
                row.get::<_, Option<UnixMillis>>(2)?,
            ))
        })?;
        for row in rows {
            let (channel, bundle, assigned_at) = row?;
            if let Some(at) = assigned_at {
                release.assigned_at.insert(channel.clone(), at);
            }
            release.channels.insert(channel, bundle);
        }
    }
    Ok(releases)
}

/// Points `channel` of a release at `bundle_id`, keeping when it was assigned if the bundle
/// is the one it had ([`assignment_time`]).
pub(super) fn assign_channel(
    tx: &Connection,
    release_id: &RecordId,
    channel: &ChannelName,
    bundle_id: &RecordId,
    at: UnixMillis,
) -> rusqlite::Result<()> {
    let previous: Option<(String, Option<UnixMillis>)> = tx
        .prepare_cached(
            "SELECT bundle_id, assigned_at FROM release_channels \
             WHERE release_id = ?1 AND channel = ?2",
        )?
        .query_row(params![release_id.as_str(), channel.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    let previous = previous.map(|(bundle, since)| (RecordId::from_stored(bundle), since));
    let since = assignment_time(
        previous.as_ref().map(|(bundle, since)| (bundle, *since)),
        bundle_id,
        at,
    );
    tx.prepare_cached(
        "INSERT INTO release_channels (release_id, channel, bundle_id, assigned_at) \
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (release_id, channel) \
         DO UPDATE SET bundle_id = excluded.bundle_id, assigned_at = excluded.assigned_at",
    )?
    .execute(params![
        release_id.as_str(),
        channel.as_str(),
        bundle_id.as_str(),
        since
    ])?;
    Ok(())
}

/// Inserts a bundle's row (the caller's transaction, if any, makes it atomic with more).
fn insert_bundle_row(c: &Connection, bundle: &Bundle) -> rusqlite::Result<()> {
    let encryption = bundle.encryption.as_ref();
    c.prepare_cached(&format!(
        "INSERT INTO bundles ({BUNDLE_COLUMNS}) VALUES \
             (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        bundle.id.as_str(),
        bundle.app_id,
        bundle.version_name,
        bundle.description,
        bundle.sha256,
        bundle.crc32,
        bundle.size as i64,
        bundle.blob_key,
        encryption.map(|e| &e.session_key),
        encryption.map(|e| &e.checksum),
        encryption.and_then(|e| e.key_id.as_ref()),
        bundle.created_at,
        bundle.owner.as_ref().map(ResourceRef::to_stored),
        bundle.link,
        bundle.min_update_version,
    ])?;
    Ok(())
}

/// The app of a release, read inside the caller's transaction; `None` when it does not exist.
fn release_app_id(connection: &Connection, id: &RecordId) -> rusqlite::Result<Option<String>> {
    connection
        .prepare_cached("SELECT app_id FROM releases WHERE id = ?1")?
        .query_row([id.as_str()], |row| row.get(0))
        .optional()
}

fn ensure_channel(connection: &Connection, app_id: &str, name: &str) -> rusqlite::Result<()> {
    connection
        .prepare_cached("INSERT OR IGNORE INTO channels (app_id, name) VALUES (?1, ?2)")?
        .execute(params![app_id, name])?;
    Ok(())
}

#[async_trait]
impl CatalogStore for SqliteMetadataStore {
    async fn insert_bundle(&self, bundle: &Bundle) -> Result<(), StoreError> {
        let bundle = bundle.clone();
        self.run(move |c| insert_bundle_row(c, &bundle)).await
    }

    async fn update_bundle_details(
        &self,
        id: &RecordId,
        details: &BundleDetails,
    ) -> Result<bool, StoreError> {
        let (id, details) = (id.clone(), details.clone());
        self.run(move |c| {
            c.prepare_cached(
                "UPDATE bundles SET description = ?2, link = ?3, min_update_version = ?4 \
                 WHERE id = ?1",
            )?
            .execute(params![
                id.as_str(),
                details.description,
                details.link,
                details.min_update_version,
            ])
            .map(|n| n > 0)
        })
        .await
    }

    async fn bundle(&self, id: &RecordId) -> Result<Option<Bundle>, StoreError> {
        let id = id.clone();
        self.read(move |c| bundle_of(c, &id)).await
    }

    async fn bundle_by_version(
        &self,
        app_id: &str,
        version_name: &str,
    ) -> Result<Option<Bundle>, StoreError> {
        let (app_id, version_name) = (app_id.to_string(), version_name.to_string());
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {BUNDLE_COLUMNS} FROM bundles WHERE app_id = ?1 AND version_name = ?2"
            ))?
            .query_row([&app_id, &version_name], bundle_from_row)
            .optional()
        })
        .await
    }

    async fn list_bundles(&self) -> Result<Vec<Bundle>, StoreError> {
        self.run(|c| {
            c.prepare_cached(&format!(
                "SELECT {BUNDLE_COLUMNS} FROM bundles ORDER BY created_at DESC, id DESC"
            ))?
            .query_map([], bundle_from_row)?
            .collect()
        })
        .await
    }

    async fn delete_bundle(&self, id: &RecordId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            Ok(c.prepare_cached("DELETE FROM bundles WHERE id = ?1")?
                .execute([id.as_str()])?
                > 0)
        })
        .await
    }

    async fn insert_release(&self, release: &Release) -> Result<(), StoreError> {
        let r = release.clone();
        self.run(move |c| {
            let tx = c.transaction()?;
            tx.prepare_cached(&format!(
                "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
            ))?
            .execute(params![
                r.id.as_str(),
                r.key.platform.as_str(),
                r.key.app_id,
                r.key.version_name,
                r.key.version_code,
                r.builtin_bundle_id.as_str(),
                r.release_date,
                                r.created_at,
                r.updated_at,
                r.owner.as_ref().map(ResourceRef::to_stored),
            ])?;
            ensure_channel(&tx, &r.key.app_id, DEFAULT_CHANNEL)?;
            for (channel, bundle) in &r.channels {
                ensure_channel(&tx, &r.key.app_id, channel.as_str())?;
                tx.prepare_cached(
                    "INSERT INTO release_channels (release_id, channel, bundle_id, assigned_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    r.id.as_str(),
                    channel.as_str(),
                    bundle.as_str(),
                    r.assigned_at.get(channel)
                ])?;
            }
            tx.commit()
        })
        .await
    }

    async fn release(&self, id: &RecordId) -> Result<Option<Release>, StoreError> {
        let id = id.clone();
        self.read(move |c| Ok(load_releases(c, "r.id = ?1", &[&id.as_str()])?.pop()))
            .await
    }

    async fn release_by_key(&self, key: &ReleaseKey) -> Result<Option<Release>, StoreError> {
        let key = key.clone();
        self.read(move |c| release_by_key(c, &key)).await
    }

    async fn list_releases(&self) -> Result<Vec<Release>, StoreError> {
        self.run(|c| load_releases(c, "1 = 1", &[])).await
    }

    async fn releases_using_bundle(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Vec<Release>, StoreError> {
        let id = bundle_id.clone();
        self.run(move |c| {
            load_releases(
                c,
                "r.builtin_bundle_id = ?1 OR r.id IN \
                 (SELECT release_id FROM release_channels WHERE bundle_id = ?1)",
                &[&id.as_str()],
            )
        })
        .await
    }

    async fn set_release_date(
        &self,
        id: &RecordId,
        release_date: Option<UnixMillis>,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            Ok(c.prepare_cached(
                "UPDATE releases SET release_date = ?2, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id.as_str(), release_date, updated_at])?
                > 0)
        })
        .await
    }

    async fn set_channel_bundle(
        &self,
        id: &RecordId,
        channel: &ChannelName,
        bundle_id: &RecordId,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let (id, channel, bundle_id) = (id.clone(), channel.clone(), bundle_id.clone());
        self.run(move |c| {
            let tx = c.transaction()?;
            let Some(app_id) = release_app_id(&tx, &id)? else {
                return Ok(false);
            };
            ensure_channel(&tx, &app_id, channel.as_str())?;
            assign_channel(&tx, &id, &channel, &bundle_id, updated_at)?;
            tx.prepare_cached("UPDATE releases SET updated_at = ?2 WHERE id = ?1")?
                .execute(params![id.as_str(), updated_at])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn replace_release_assignments(
        &self,
        id: &RecordId,
        builtin_bundle_id: &RecordId,
        channels: &BTreeMap<ChannelName, RecordId>,
        updated_at: UnixMillis,
    ) -> Result<bool, StoreError> {
        let (id, builtin, channels) = (id.clone(), builtin_bundle_id.clone(), channels.clone());
        self.run(move |c| {
            let tx = c.transaction()?;
            let Some(app_id) = release_app_id(&tx, &id)? else {
                return Ok(false);
            };
            tx.prepare_cached(
                "UPDATE releases SET builtin_bundle_id = ?2, updated_at = ?3 WHERE id = ?1",
            )?
            .execute(params![id.as_str(), builtin.as_str(), updated_at])?;
            let assigned: Vec<String> = tx
                .prepare_cached("SELECT channel FROM release_channels WHERE release_id = ?1")?
                .query_map([id.as_str()], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for removed in assigned
                .iter()
                .filter(|c| !channels.keys().any(|kept| kept.as_str() == c.as_str()))
            {
                tx.prepare_cached(
                    "DELETE FROM release_channels WHERE release_id = ?1 AND channel = ?2",
                )?
                .execute(params![id.as_str(), removed])?;
            }
            for (channel, bundle) in &channels {
                ensure_channel(&tx, &app_id, channel.as_str())?;
                assign_channel(&tx, &id, channel, bundle, updated_at)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn delete_release(&self, id: &RecordId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            Ok(c.prepare_cached("DELETE FROM releases WHERE id = ?1")?
                .execute([id.as_str()])?
                > 0)
        })
        .await
    }

    async fn channels(&self, app_id: &str) -> Result<Vec<Channel>, StoreError> {
        let app_id = app_id.to_string();
        self.read(move |c| {
            c.prepare_cached("SELECT id, app_id, name FROM channels WHERE app_id = ?1 ORDER BY id")?
                .query_map([&app_id], |row| {
                    Ok(Channel {
                        id: row.get(0)?,
                        app_id: row.get(1)?,
                        name: ChannelName::from_stored(row.get(2)?),
                    })
                })?
                .collect()
        })
        .await
    }

    async fn insert_stats(&self, events: &[StatsEvent]) -> Result<(), StoreError> {
        let events = events.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO stats_events (occurred_at, app_id, device_id, action, platform, \
                     version_name, old_version_name, version_build, version_code, plugin_version, \
                     is_emulator, is_prod, custom_id, metadata) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                )?;
                for e in &events {
                    insert.execute(params![
                        e.occurred_at,
                        e.app_id,
                        e.device_id,
                        e.action,
                        e.platform,
                        e.version_name,
                        e.old_version_name,
                        e.version_build,
                        e.version_code,
                        e.plugin_version,
                        e.is_emulator,
                        e.is_prod,
                        e.custom_id,
                        e.metadata,
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn bundle_blob_keys(&self) -> Result<Vec<String>, StoreError> {
        self.run(|c| {
            c.prepare_cached(
                "SELECT blob_key FROM bundles UNION SELECT object_key FROM bundle_files \
                 UNION SELECT brotli_key FROM bundle_files WHERE brotli_key IS NOT NULL",
            )?
            .query_map([], |r| r.get(0))?
            .collect()
        })
        .await
    }

    async fn catalog_version(&self) -> Result<Option<CatalogVersion>, StoreError> {
        // DATA_DIR is locked to this process, whose writes clear its cache directly.
        Ok(None)
    }

    /// One read transaction on one connection: a consistent snapshot, and one lock and one
    /// transaction instead of one per record (most of a store read's cost for these small
    /// point lookups).
    async fn served_records(
        &self,
        key: &ReleaseKey,
        channel: &ChannelName,
    ) -> Result<Option<ServedRecords>, StoreError> {
        let (key, channel) = (key.clone(), channel.clone());
        self.read(move |c| {
            in_snapshot(c, |snapshot| {
                let Some(release) = release_by_key(snapshot, &key)? else {
                    return Ok(None);
                };
                let bundle = bundle_record(snapshot, release.bundle_for(&channel))?;
                let settings = targeting::settings_of(snapshot, &key.app_id, &channel)?;
                let rollout = match rollouts::rollout_of(snapshot, &release.id, &channel)? {
                    Some(rollout) if rollout.progress.phase.is_active() => {
                        let canary = bundle_record(snapshot, &rollout.canary_bundle_id)?;
                        Some(ServedRollout { rollout, canary })
                    }
                    _ => None,
                };
                Ok(Some(ServedRecords {
                    release,
                    bundle,
                    settings,
                    rollout,
                }))
            })
        })
        .await
    }

    async fn adopt_release(&self, id: &RecordId, owner: &ResourceRef) -> Result<bool, StoreError> {
        self.adopt("releases", id, owner).await
    }

    async fn adopt_bundle(&self, id: &RecordId, owner: &ResourceRef) -> Result<bool, StoreError> {
        self.adopt("bundles", id, owner).await
    }
}

#[async_trait]
impl AccessStore for SqliteMetadataStore {
    async fn insert_api_token(&self, token: &ApiToken) -> Result<(), StoreError> {
        let token = token.clone();
        self.run(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ))?
            .execute(params![
                token.id.as_str(),
                token.name,
                token.scope.as_str(),
                token.digest,
                token.created_at,
                token.created_by,
            ])
            .map(drop)
        })
        .await
    }

    async fn api_token_by_digest(&self, digest: &str) -> Result<Option<ApiToken>, StoreError> {
        let digest = digest.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE digest = ?1"
            ))?
            .query_row([&digest], api_token_from_row)
            .optional()
        })
        .await
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        self.run(|c| {
            c.prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY name"
            ))?
            .query_map([], api_token_from_row)?
            .collect()
        })
        .await
    }

    async fn delete_api_token(&self, id: &RecordId) -> Result<bool, StoreError> {
        let id = id.clone();
        self.run(move |c| {
            c.prepare_cached("DELETE FROM api_tokens WHERE id = ?1")?
                .execute([id.as_str()])
                .map(|n| n > 0)
        })
        .await
    }

    async fn insert_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.run(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ))?
            .execute(params![
                e.id.as_str(),
                e.at,
                e.actor,
                e.action,
                e.target,
                e.client_ip,
                e.status,
                e.message,
            ])
            .map(drop)
        })
        .await
    }

    async fn audit_page(
        &self,
        before: Option<&AuditCursor>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let (at, id) = before.map_or((i64::MAX, String::new()), |c| (c.at, c.id.to_string()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE at < ?1 OR (at = ?1 AND id < ?2) \
                 ORDER BY at DESC, id DESC LIMIT ?3"
            ))?
            .query_map(params![at, id, limit], |row| {
                Ok(AuditEntry {
                    id: RecordId::from_stored(row.get(0)?),
                    at: row.get(1)?,
                    actor: row.get(2)?,
                    action: row.get(3)?,
                    target: row.get(4)?,
                    client_ip: row.get(5)?,
                    status: row.get(6)?,
                    message: row.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }
}

fn api_token_from_row(row: &Row<'_>) -> rusqlite::Result<ApiToken> {
    let scope: String = row.get(2)?;
    Ok(ApiToken {
        id: RecordId::from_stored(row.get(0)?),
        name: row.get(1)?,
        scope: scope.parse().map_err(|e: crate::domain::InvalidInput| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, e.0.into())
        })?,
        digest: row.get(3)?,
        created_at: row.get(4)?,
        created_by: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_ends_whatever_its_reads_return() {
        let connection = Connection::open_in_memory().unwrap();
        connection
            .execute_batch("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        let count = |c: &Connection| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0));
        let read: i64 = in_snapshot(&connection, |c| {
            assert!(!c.is_autocommit(), "the reads run inside a transaction");
            count(c)
        })
        .unwrap();
        assert_eq!(read, 1);
        assert!(connection.is_autocommit());
        let failed = in_snapshot(&connection, |c| {
            c.query_row("SELECT n FROM missing_table", [], |r| r.get::<_, i64>(0))
        });
        assert!(failed.is_err());
        assert!(
            connection.is_autocommit(),
            "a failed read ends the snapshot too"
        );
        assert_eq!(in_snapshot(&connection, count).unwrap(), 1);
    }
}
