//! The public keys apps register for their encrypted bundles, and the one rule that uses them:
//! an encrypted upload of an app with a registered key is decrypted with it and must be a
//! bundle whose checksum is the one its encrypted checksum stands for, exactly what a device
//! will check. Without a key the bytes cannot be checked; the upload is stored as sent and the
//! answer says so ([`Catalog::encryption_note`]).

use tokio::io::AsyncReadExt;

use super::staging::StagedBlob;
use super::{zip_check, Catalog, CatalogError, ExpectedChecksum};
use crate::domain::encryption::{recover_checksum, AppKey, RsaPublicKey, SessionKey};
use crate::domain::names::check_app_id;
use crate::domain::{now_millis, Bundle, BundleEncryption};

/// How much ciphertext is decrypted at a time.
const DECRYPT_CHUNK: usize = 64 * 1024;

impl Catalog {
    /// Registers `pem` as the public key of `app_id`'s encrypted bundles (replacing the
    /// previous one). Bundles already stored are not checked again.
    pub async fn register_app_key(
        &self,
        app_id: &str,
        pem: &str,
        registered_by: &str,
    ) -> Result<AppKey, CatalogError> {
        check_app_id(app_id)?;
        let key = AppKey {
            app_id: app_id.to_string(),
            public_key: RsaPublicKey::from_pem(pem)?,
            registered_at: now_millis(),
            registered_by: registered_by.to_string(),
        };
        self.metadata.put_app_key(&key).await?;
        Ok(key)
    }

    pub async fn app_keys(&self) -> Result<Vec<AppKey>, CatalogError> {
        Ok(self.metadata.list_app_keys().await?)
    }

    /// Removes the app's key: its encrypted uploads are stored unchecked again.
    pub async fn remove_app_key(&self, app_id: &str) -> Result<AppKey, CatalogError> {
        let not_found = || CatalogError::NotFound(format!("{app_id} has no registered public key"));
        let key = self.metadata.app_key(app_id).await?.ok_or_else(not_found)?;
        if !self.metadata.delete_app_key(app_id).await? {
            return Err(not_found());
        }
        Ok(key)
    }

    /// What an encrypted bundle's uploader must know: that it was stored unchecked, because its
    /// app has no registered public key. `None` for plain bundles and apps with a key.
    pub async fn encryption_note(&self, bundle: &Bundle) -> Result<Option<String>, CatalogError> {
        if bundle.encryption.is_none() || self.metadata.app_key(&bundle.app_id).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(format!(
            "encrypted bundle stored without verification: {} has no registered public key, so \
             the server could not decrypt it to check the zip and its checksum (devices will). \
             Register the app's public key (public-keys.set) to have encrypted uploads checked.",
            bundle.app_id
        )))
    }

    /// The encrypted-upload rule: with a registered key, `staged` must decrypt with the session
    /// key to a bundle zip whose checksum is the one `encryption.checksum` stands for.
    pub(super) async fn check_encrypted(
        &self,
        app_id: &str,
        encryption: &BundleEncryption,
        staged: &StagedBlob,
    ) -> Result<(), CatalogError> {
        let Some(key) = self.metadata.app_key(app_id).await? else {
            return Ok(());
        };
        let registered = key.public_key.key_id();
        if let Some(key_id) = encryption.key_id.as_deref().filter(|&id| id != registered) {
            return Err(CatalogError::Invalid(format!(
                "the bundle was encrypted for key_id {key_id}, but {app_id}'s registered public \
                 key is {registered}: encrypt with the app's key"
            )));
        }
        let session = SessionKey::open(&encryption.session_key, &key.public_key)?;
        let expected = recover_checksum(&encryption.checksum, &key.public_key)?;
        let plain = self.decrypt_staged(&session, staged).await?;
        let path = plain.path().to_path_buf();
        tokio::task::spawn_blocking(move || zip_check::check_bundle_zip(&path))
            .await
            .map_err(|e| CatalogError::internal("the zip check task failed", e))?
            .map_err(|e| {
                CatalogError::Invalid(format!("the decrypted bundle is not a valid bundle: {e}"))
            })?;
        ExpectedChecksum {
            value: expected,
            field: "checksum (recovered with the app's public key)",
        }
        .check(&plain.sha256, &plain.crc32)
    }

    /// Decrypts a staged upload into a staging file of its own (hashed as it is written).
    async fn decrypt_staged(
        &self,
        session: &SessionKey,
        staged: &StagedBlob,
    ) -> Result<StagedBlob, CatalogError> {
        let io = |e| CatalogError::internal("cannot read the staged upload", e);
        let mut input = tokio::fs::File::open(staged.path()).await.map_err(io)?;
        let mut output = self.staging.create(self.max_bundle_size).await?;
        let mut decryptor = session.decryptor()?;
        let (mut chunk, mut plain) = (vec![0u8; DECRYPT_CHUNK], Vec::new());
        loop {
            let read = input.read(&mut chunk).await.map_err(io)?;
            if read == 0 {
                break;
            }
            plain.clear();
            decryptor.update(&chunk[..read], &mut plain)?;
            output.write(&plain).await?;
        }
        plain.clear();
        decryptor.finish(&mut plain)?;
        output.write(&plain).await?;
        output.finish().await
    }
}
