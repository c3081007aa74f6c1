//! Bundle manifests and the orphan sweep's marks (see [`ManifestStore`]).
//!
//! - `bundle_files`: one row per (bundle, path), deleted with its bundle; indexed by object
//!   key, so "does any manifest name this object" is a point lookup.
//! - `doomed_file_objects`: one row per file object the sweep marked.

use async_trait::async_trait;
use rusqlite::{params, Connection, Row};

use super::{insert_bundle_row, SqliteMetadataStore, StoreError};
use crate::domain::manifest::{BrotliCopy, ManifestEntry};
use crate::domain::{Bundle, RecordId, UnixMillis};
use crate::store::ManifestStore;

/// Run after the main schema.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS bundle_files (
    bundle_id   TEXT NOT NULL REFERENCES bundles(id) ON DELETE CASCADE,
    path        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    object_key  TEXT NOT NULL,
    brotli_key  TEXT,
    brotli_size INTEGER,
    PRIMARY KEY (bundle_id, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bundle_files_by_object ON bundle_files (object_key);
CREATE INDEX IF NOT EXISTS bundle_files_by_brotli ON bundle_files (brotli_key)
    WHERE brotli_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS doomed_file_objects (
    object_key TEXT PRIMARY KEY,
    marked_at  INTEGER NOT NULL
) WITHOUT ROWID;
"#;

fn insert_manifest(
    c: &Connection,
    bundle_id: &RecordId,
    manifest: &[ManifestEntry],
) -> rusqlite::Result<()> {
    let mut insert = c.prepare_cached(
        "INSERT INTO bundle_files \
         (bundle_id, path, sha256, size, object_key, brotli_key, brotli_size) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for entry in manifest {
        insert.execute(params![
            bundle_id.as_str(),
            entry.path,
            entry.sha256,
            entry.size as i64,
            entry.object_key,
            entry.brotli.as_ref().map(|b| &b.object_key),
            entry.brotli.as_ref().map(|b| b.size as i64),
        ])?;
    }
    Ok(())
}

fn entry_from_row(row: &Row) -> rusqlite::Result<ManifestEntry> {
    Ok(ManifestEntry {
        path: row.get(0)?,
        sha256: row.get(1)?,
        size: row.get::<_, i64>(2)? as u64,
        object_key: row.get(3)?,
        brotli: match (
            row.get::<_, Option<String>>(4)?,
            row.get::<_, Option<i64>>(5)?,
        ) {
            (Some(object_key), Some(size)) => Some(BrotliCopy {
                object_key,
                size: size as u64,
            }),
            _ => None,
        },
    })
}

#[async_trait]
impl ManifestStore for SqliteMetadataStore {
    async fn insert_bundle_with_manifest(
        &self,
        bundle: &Bundle,
        manifest: &[ManifestEntry],
    ) -> Result<(), StoreError> {
        let (bundle, manifest) = (bundle.clone(), manifest.to_vec());
        self.run(move |c| {
            let tx = c.transaction()?;
            insert_bundle_row(&tx, &bundle)?;
            insert_manifest(&tx, &bundle.id, &manifest)?;
            tx.commit()
        })
        .await
    }

    async fn bundle_manifest(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Option<Vec<ManifestEntry>>, StoreError> {
        let bundle_id = bundle_id.clone();
        self.read(move |c| manifest_of(c, &bundle_id)).await
    }

    async fn set_bundle_manifest(
        &self,
        bundle_id: &RecordId,
        manifest: &[ManifestEntry],
    ) -> Result<bool, StoreError> {
        let (bundle_id, manifest) = (bundle_id.clone(), manifest.to_vec());
        self.run(move |c| {
            let tx = c.transaction()?;
            let exists = tx
                .prepare_cached("SELECT 1 FROM bundles WHERE id = ?1")?
                .exists([bundle_id.as_str()])?;
            let has_one = tx
                .prepare_cached("SELECT 1 FROM bundle_files WHERE bundle_id = ?1 LIMIT 1")?
                .exists([bundle_id.as_str()])?;
            if !exists || has_one {
                return Ok(false);
            }
            insert_manifest(&tx, &bundle_id, &manifest)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn file_object_in_use(&self, object_key: &str) -> Result<bool, StoreError> {
        let key = object_key.to_string();
        self.run(move |c| {
            c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM bundle_files WHERE object_key = ?1) \
                 OR EXISTS (SELECT 1 FROM bundle_files WHERE brotli_key = ?1)",
            )?
            .query_row([&key], |row| row.get(0))
        })
        .await
    }

    async fn doomed_file_objects(&self) -> Result<Vec<(String, UnixMillis)>, StoreError> {
        self.run(|c| {
            c.prepare_cached("SELECT object_key, marked_at FROM doomed_file_objects")?
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect()
        })
        .await
    }

    async fn mark_file_objects_doomed(
        &self,
        object_keys: &[String],
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        let keys = object_keys.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut mark = tx.prepare_cached(
                    "INSERT OR IGNORE INTO doomed_file_objects (object_key, marked_at) \
                     VALUES (?1, ?2)",
                )?;
                for key in &keys {
                    mark.execute(params![key, at])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn unmark_file_objects(&self, object_keys: &[String]) -> Result<(), StoreError> {
        let keys = object_keys.to_vec();
        self.run(move |c| {
            let tx = c.transaction()?;
            {
                let mut unmark =
                    tx.prepare_cached("DELETE FROM doomed_file_objects WHERE object_key = ?1")?;
                for key in &keys {
                    unmark.execute([key])?;
                }
            }
            tx.commit()
        })
        .await
    }
}

/// The manifest of a bundle, by path; `None` when it has none.
pub(super) fn manifest_of(
    connection: &Connection,
    bundle_id: &RecordId,
) -> rusqlite::Result<Option<Vec<ManifestEntry>>> {
    let entries: Vec<ManifestEntry> = connection
        .prepare_cached(
            "SELECT path, sha256, size, object_key, brotli_key, brotli_size \
             FROM bundle_files WHERE bundle_id = ?1 ORDER BY path",
        )?
        .query_map([bundle_id.as_str()], entry_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    // A manifest lists at least `index.html`: none stored means no manifest.
    Ok(Some(entries).filter(|e| !e.is_empty()))
}
