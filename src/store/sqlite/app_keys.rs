//! The public keys apps register for their encrypted bundles (`app_keys`, one row per app).

use rusqlite::{params, OptionalExtension, Row};

use async_trait::async_trait;

use super::{SqliteMetadataStore, StoreError};
use crate::domain::encryption::{AppKey, RsaPublicKey};
use crate::store::AppKeyStore;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS app_keys (
    app_id        TEXT PRIMARY KEY,
    public_key    TEXT NOT NULL,
    registered_at INTEGER NOT NULL,
    registered_by TEXT NOT NULL
);
"#;

const COLUMNS: &str = "app_id, public_key, registered_at, registered_by";

#[async_trait]
impl AppKeyStore for SqliteMetadataStore {
    async fn app_key(&self, app_id: &str) -> Result<Option<AppKey>, StoreError> {
        let app_id = app_id.to_string();
        self.read(move |c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM app_keys WHERE app_id = ?1"))?
                .query_row([&app_id], app_key_from_row)
                .optional()
        })
        .await
    }

    async fn put_app_key(&self, key: &AppKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.run(move |c| {
            c.prepare_cached(&format!(
                "INSERT INTO app_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (app_id) DO UPDATE SET public_key = excluded.public_key, \
                 registered_at = excluded.registered_at, registered_by = excluded.registered_by"
            ))?
            .execute(params![
                key.app_id,
                key.public_key.to_pem(),
                key.registered_at,
                key.registered_by,
            ])
            .map(drop)
        })
        .await
    }

    async fn list_app_keys(&self) -> Result<Vec<AppKey>, StoreError> {
        self.run(|c| {
            c.prepare_cached(&format!("SELECT {COLUMNS} FROM app_keys ORDER BY app_id"))?
                .query_map([], app_key_from_row)?
                .collect()
        })
        .await
    }

    async fn delete_app_key(&self, app_id: &str) -> Result<bool, StoreError> {
        let app_id = app_id.to_string();
        self.run(move |c| {
            c.prepare_cached("DELETE FROM app_keys WHERE app_id = ?1")?
                .execute([&app_id])
                .map(|n| n > 0)
        })
        .await
    }
}

fn app_key_from_row(row: &Row<'_>) -> rusqlite::Result<AppKey> {
    let pem: String = row.get(1)?;
    Ok(AppKey {
        app_id: row.get(0)?,
        public_key: RsaPublicKey::from_pem(&pem).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, e.0.into())
        })?,
        registered_at: row.get(2)?,
        registered_by: row.get(3)?,
    })
}
