//! The public keys apps register for their encrypted bundles (`app_keys`, keyed by app id).

use mongodb::bson::{doc, DateTime};
use mongodb::Collection;
use serde::{Deserialize, Serialize};

use async_trait::async_trait;

use super::{all, map_error, MongoMetadataStore, StoreError};
use crate::domain::encryption::{AppKey, RsaPublicKey};
use crate::store::AppKeyStore;

#[derive(Debug, Serialize, Deserialize)]
struct AppKeyDoc {
    /// The app id.
    #[serde(rename = "_id")]
    app_id: String,
    /// PKCS#1 PEM, as the Capgo CLI writes it.
    public_key: String,
    registered_at: DateTime,
    registered_by: String,
}

impl AppKeyDoc {
    fn into_key(self) -> Result<AppKey, StoreError> {
        Ok(AppKey {
            public_key: RsaPublicKey::from_pem(&self.public_key)
                .map_err(|e| StoreError::invalid(format!("app_keys {:?}: {e}", self.app_id)))?,
            app_id: self.app_id,
            registered_at: self.registered_at.timestamp_millis(),
            registered_by: self.registered_by,
        })
    }
}

impl MongoMetadataStore {
    fn app_keys(&self) -> Collection<AppKeyDoc> {
        self.db.collection("app_keys")
    }
}

#[async_trait]
impl AppKeyStore for MongoMetadataStore {
    async fn app_key(&self, app_id: &str) -> Result<Option<AppKey>, StoreError> {
        self.app_keys()
            .find_one(doc! {"_id": app_id})
            .await
            .map_err(map_error)?
            .map(AppKeyDoc::into_key)
            .transpose()
    }

    async fn put_app_key(&self, key: &AppKey) -> Result<(), StoreError> {
        let document = AppKeyDoc {
            app_id: key.app_id.clone(),
            public_key: key.public_key.to_pem(),
            registered_at: DateTime::from_millis(key.registered_at),
            registered_by: key.registered_by.clone(),
        };
        self.app_keys()
            .replace_one(doc! {"_id": &key.app_id}, document)
            .upsert(true)
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn list_app_keys(&self) -> Result<Vec<AppKey>, StoreError> {
        all(self.app_keys().find(doc! {}).sort(doc! {"_id": 1}))
            .await?
            .into_iter()
            .map(AppKeyDoc::into_key)
            .collect()
    }

    async fn delete_app_key(&self, app_id: &str) -> Result<bool, StoreError> {
        let result = self
            .app_keys()
            .delete_one(doc! {"_id": app_id})
            .await
            .map_err(map_error)?;
        Ok(result.deleted_count > 0)
    }
}
