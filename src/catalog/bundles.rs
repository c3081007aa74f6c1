//! Bundles: the one ingest path (check the fields, stage the bytes, check them, store, record)
//! that REST uploads and `Bundle` resources share; lists, deletion, downloads, the orphan sweep.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};

use super::staging::StagedBlob;
use super::{zip_check, Catalog, CatalogError};
use crate::domain::bundle::{check_import_key, BundleDetails};
use crate::domain::manifest::is_file_object_key;
use crate::domain::names::{check_app_id, check_bundle_version};
use crate::domain::ownership::check_may_change;
use crate::domain::{
    now_millis, Actor, Bundle, BundleEncryption, RecordId, Release, ResourceRef, UnixMillis,
};
use crate::store::StoreError;

/// A bundle upload's fields, before the bytes are checked.
#[derive(Debug, Clone, Default)]
pub struct NewBundle {
    pub app_id: String,
    pub version_name: String,
    pub description: String,
    /// Release notes or a page about the bundle; an absolute http(s) URL.
    pub link: Option<String>,
    /// The lowest native version the bundle runs on (`major.minor.patch`).
    pub min_update_version: Option<String>,
    /// A checksum the uploaded bytes must have.
    pub expected_checksum: Option<ExpectedChecksum>,
    /// For encrypted uploads: `ivSessionKey` from `bundle encrypt`.
    pub session_key: Option<String>,
    /// For encrypted uploads: the encrypted checksum `bundle encrypt` printed.
    pub encrypted_checksum: Option<String>,
    pub key_id: Option<String>,
    /// Set when the operator creates the bundle for a Kubernetes `Bundle`.
    pub owner: Option<ResourceRef>,
}

impl NewBundle {
    pub fn details(&self) -> BundleDetails {
        BundleDetails {
            description: self.description.clone(),
            link: self.link.clone(),
            min_update_version: self.min_update_version.clone(),
        }
    }
}

/// A change to a stored bundle's details: `None` keeps a field; `Some(None)` clears a link or
/// a minimum.
#[derive(Debug, Clone, Default)]
pub struct BundleDetailsChange {
    pub description: Option<String>,
    pub link: Option<Option<String>>,
    pub min_update_version: Option<Option<String>>,
}

/// A checksum the caller expects the uploaded bytes to have: a SHA-256 (64 hex characters)
/// or, as the seed's clients sent, a CRC32 (8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedChecksum {
    pub value: String,
    /// The field it came in (`checksum`, `spec.sha256`), so a mismatch names it.
    pub field: &'static str,
}

impl ExpectedChecksum {
    /// The one checksum rule of every ingest path: the bytes' digests against this.
    pub(super) fn check(&self, sha256: &str, crc32: &str) -> Result<(), CatalogError> {
        let expected = self.value.to_ascii_lowercase();
        let (algorithm, actual) = match expected.len() {
            64 => ("SHA-256", sha256),
            8 => ("CRC32", crc32),
            _ => {
                return Err(CatalogError::Invalid(format!(
                    "{} must be a SHA-256 (64 hex characters) or a CRC32 (8), got {:?}",
                    self.field, self.value
                )))
            }
        };
        if expected != actual {
            return Err(CatalogError::ChecksumMismatch(format!(
                "checksum mismatch: the bundle's {algorithm} is {actual}, {} says {expected}",
                self.field
            )));
        }
        Ok(())
    }
}

/// Why bytes could not be staged: their source failed, or the catalog refused them.
#[derive(Debug, thiserror::Error)]
pub enum SourceError<E> {
    #[error("reading the bundle failed")]
    Source(#[source] E),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// How a device downloads a stored file the server keeps itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleDownload {
    /// Stream this local file.
    File(PathBuf),
    /// No such file here.
    NotFound,
}

impl Catalog {
    /// Checks an upload's fields before its bytes are read, so a bad or duplicate upload is
    /// refused without receiving the whole file.
    pub async fn check_new_bundle(&self, new: &NewBundle) -> Result<(), CatalogError> {
        check_app_id(&new.app_id)?;
        check_bundle_version(&new.version_name)?;
        new.details().check()?;
        if self
            .metadata
            .bundle_by_version(&new.app_id, &new.version_name)
            .await?
            .is_some()
        {
            return Err(duplicate_bundle(&new.app_id, &new.version_name));
        }
        Ok(())
    }

    /// Writes a bundle's bytes to a staging file while hashing them, refusing more than
    /// MAX_BUNDLE_SIZE. Nothing reaches the blob store before [`Catalog::add_bundle`] checks it.
    pub async fn stage<S, B, E>(&self, body: S) -> Result<StagedBlob, SourceError<E>>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
    {
        let mut file = self.staging.create(self.max_bundle_size).await?;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            file.write(chunk.map_err(SourceError::Source)?.as_ref())
                .await?;
        }
        Ok(file.finish().await?)
    }

    /// Stages `body`, then adds the bundle: the whole ingest path for a source that sends its
    /// bytes after the fields are known.
    pub async fn ingest<S, B, E>(&self, new: NewBundle, body: S) -> Result<Bundle, SourceError<E>>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
    {
        self.check_new_bundle(&new).await?;
        let staged = self.stage(body).await?;
        Ok(self.add_bundle(new, staged).await?)
    }

    /// Ingests an object already in the blob store under `key` (a `Bundle` resource's
    /// `source.bucketKey`), read directly from the store. Only objects below the import prefix
    /// qualify: the server's own objects belong to their records.
    pub async fn ingest_stored_object(
        &self,
        new: NewBundle,
        key: &str,
    ) -> Result<Bundle, CatalogError> {
        check_import_key(key, &self.import_prefix)?;
        self.check_new_bundle(&new).await?;
        let bytes =
            self.blobs.read(key).await?.ok_or_else(|| {
                CatalogError::NotFound(format!("no object {key:?} in the bucket"))
            })?;
        self.ingest(new, bytes).await.map_err(|e| match e {
            SourceError::Source(e) => e.into(),
            SourceError::Catalog(e) => e,
        })
    }

    /// Checks the staged bytes, stores them, then records the bundle. A failure at any step
    /// leaves neither a record nor a stored object behind.
    pub async fn add_bundle(
        &self,
        new: NewBundle,
        staged: StagedBlob,
    ) -> Result<Bundle, CatalogError> {
        self.add_bundle_as(RecordId::generate(), now_millis(), new, staged)
            .await
    }

    /// [`Catalog::add_bundle`] for a record with a given id and creation time (a record
    /// brought from another server keeps both).
    pub(super) async fn add_bundle_as(
        &self,
        id: RecordId,
        created_at: UnixMillis,
        new: NewBundle,
        staged: StagedBlob,
    ) -> Result<Bundle, CatalogError> {
        self.check_new_bundle(&new).await?;
        if staged.size == 0 {
            return Err(CatalogError::Invalid("the bundle file is empty".into()));
        }
        if let Some(expected) = &new.expected_checksum {
            expected.check(&staged.sha256, &staged.crc32)?;
        }
        let (encryption, unpacked) = match new.session_key {
            // Ciphertext is not a zip: with the app's public key it is decrypted and checked
            // as devices will; without one it is stored as sent (see `encryption_note`). Its
            // devices download the whole zip: there is no manifest of encrypted files.
            Some(session_key) => {
                let encryption =
                    BundleEncryption::new(session_key, new.encrypted_checksum, new.key_id)?;
                self.check_encrypted(&new.app_id, &encryption, &staged)
                    .await?;
                (Some(encryption), None)
            }
            None => {
                if new.key_id.is_some() {
                    return Err(CatalogError::Invalid(
                        "key_id is only meaningful for encrypted bundles (with session_key)".into(),
                    ));
                }
                let path = staged.path().to_path_buf();
                let summary =
                    tokio::task::spawn_blocking(move || zip_check::check_bundle_zip(&path))
                        .await
                        .map_err(|e| CatalogError::internal("the zip check task failed", e))??;
                let unpacked = self.unpack_files(staged.path(), summary.top_folder).await?;
                (None, unpacked)
            }
        };
        let bundle = Bundle {
            blob_key: Bundle::blob_key_for(&id),
            id,
            app_id: new.app_id,
            version_name: new.version_name,
            description: new.description,
            link: new.link,
            min_update_version: new.min_update_version,
            sha256: staged.sha256.clone(),
            crc32: staged.crc32.clone(),
            size: staged.size,
            encryption,
            created_at,
            owner: new.owner,
        };
        // Files first: an object no record names yet is the orphan sweep's, never the reverse.
        let manifest = match unpacked {
            Some(unpacked) => Some(self.store_files(unpacked).await?),
            None => None,
        };
        self.blobs.put_file(&bundle.blob_key, staged.path()).await?;
        let inserted = match &manifest {
            Some(manifest) => {
                self.metadata
                    .insert_bundle_with_manifest(&bundle, manifest)
                    .await
            }
            None => self.metadata.insert_bundle(&bundle).await,
        };
        if let Err(e) = inserted {
            self.remove_blob(&bundle.blob_key).await;
            return Err(match e {
                StoreError::Duplicate(_) => duplicate_bundle(&bundle.app_id, &bundle.version_name),
                other => other.into(),
            });
        }
        Ok(bundle)
    }

    pub async fn bundle(&self, id: &str) -> Result<Bundle, CatalogError> {
        let id = RecordId::parse(id, "bundle id")?;
        self.metadata
            .bundle(&id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("bundle {id} does not exist")))
    }

    /// The bundle of `app_id` named `version_name`, if any.
    pub async fn bundle_by_version(
        &self,
        app_id: &str,
        version_name: &str,
    ) -> Result<Option<Bundle>, CatalogError> {
        Ok(self
            .metadata
            .bundle_by_version(app_id, version_name)
            .await?)
    }

    pub async fn list_bundles(&self) -> Result<Vec<Bundle>, CatalogError> {
        Ok(self.metadata.list_bundles().await?)
    }

    /// The record a `Bundle` resource (acting as `actor`) already has, made its own when it
    /// adopts one made through the API; `None` when the app has no bundle of that version yet
    /// (then fetch and [`Catalog::ingest`] it). Refused when another resource owns it, when it
    /// was made through the API and is not adopted, or when its bytes differ from the checksum
    /// the resource expects (a stored bundle never changes).
    pub async fn existing_bundle_for(
        &self,
        new: &NewBundle,
        actor: &Actor,
    ) -> Result<Option<Bundle>, CatalogError> {
        let Some(mut record) = self
            .bundle_by_version(&new.app_id, &new.version_name)
            .await?
        else {
            return Ok(None);
        };
        check_may_change(record.owner.as_ref(), actor)
            .map_err(|refusal| CatalogError::owned(refusal, &describe(&record)))?;
        if let Some(expected) = &new.expected_checksum {
            expected.check(&record.sha256, &record.crc32)?;
        }
        if let (Some(resource), None) = (actor.resource(), &record.owner) {
            if !self.metadata.adopt_bundle(&record.id, resource).await? {
                return Err(CatalogError::Busy(format!(
                    "{} changed owner while being adopted; try again",
                    describe(&record)
                )));
            }
            tracing::info!(bundle = %record.id, %resource, "bundle adopted by its resource");
            record.owner = Some(resource.clone());
        }
        // Details may change in the resource's spec: the record follows.
        let wanted = new.details();
        if record.details() != wanted {
            self.write_details(&mut record, wanted).await?;
        }
        Ok(Some(record))
    }

    /// Changes what people and devices read about a bundle (description, link, minimum native
    /// version); its bytes and names never change. Refused for a bundle a resource manages.
    pub async fn update_bundle_details(
        &self,
        id: &str,
        change: BundleDetailsChange,
        actor: &Actor,
    ) -> Result<Bundle, CatalogError> {
        let mut bundle = self.bundle(id).await?;
        check_may_change(bundle.owner.as_ref(), actor)
            .map_err(|refusal| CatalogError::owned(refusal, &describe(&bundle)))?;
        let mut details = bundle.details();
        if let Some(description) = change.description {
            details.description = description;
        }
        if let Some(link) = change.link {
            details.link = link;
        }
        if let Some(minimum) = change.min_update_version {
            details.min_update_version = minimum;
        }
        self.write_details(&mut bundle, details).await?;
        Ok(bundle)
    }

    async fn write_details(
        &self,
        bundle: &mut Bundle,
        details: BundleDetails,
    ) -> Result<(), CatalogError> {
        details.check()?;
        if !self
            .metadata
            .update_bundle_details(&bundle.id, &details)
            .await?
        {
            return Err(CatalogError::NotFound(format!(
                "{} was deleted meanwhile",
                describe(bundle)
            )));
        }
        // Answers carry the link and description, and `version_number` reads the minimum.
        self.targets.invalidate();
        bundle.description = details.description;
        bundle.link = details.link;
        bundle.min_update_version = details.min_update_version;
        Ok(())
    }

    /// Deletes a bundle no release uses, then its stored bytes.
    pub async fn delete_bundle(&self, id: &str, actor: &Actor) -> Result<Bundle, CatalogError> {
        let bundle = self.bundle(id).await?;
        check_may_change(bundle.owner.as_ref(), actor)
            .map_err(|refusal| CatalogError::owned(refusal, &describe(&bundle)))?;
        let users = self.metadata.releases_using_bundle(&bundle.id).await?;
        if !users.is_empty() {
            return Err(bundle_in_use(&bundle, &users));
        }
        if let Some(rollout) = self.active_rollout_of_bundle(&bundle.id).await? {
            return Err(CatalogError::InUse(format!(
                "{} is the canary of the rollout of channel {} (release {}); abort or promote it first",
                describe(&bundle),
                rollout.channel,
                rollout.release_id
            )));
        }
        match self.metadata.delete_bundle(&bundle.id).await {
            Ok(_) => {}
            // A release started using it between our check and the delete, or a write that
            // names it is under way.
            Err(StoreError::Reference(detail)) => {
                let users = self.metadata.releases_using_bundle(&bundle.id).await?;
                return Err(if users.is_empty() {
                    CatalogError::Busy(format!("{}: {detail}", describe(&bundle)))
                } else {
                    bundle_in_use(&bundle, &users)
                });
            }
            Err(e) => return Err(e.into()),
        }
        self.remove_blob(&bundle.blob_key).await;
        Ok(bundle)
    }

    /// The absolute URL devices download `bundle` from.
    pub async fn download_url(&self, bundle: &Bundle) -> Result<String, CatalogError> {
        Ok(self.blobs.download_url(&bundle.blob_key).await?)
    }

    /// How the device API serves `GET /files/<key>`: a local file when the server keeps
    /// its objects itself.
    pub fn download(&self, key: &str) -> BundleDownload {
        match self.blobs.local_path(key) {
            Some(path) => BundleDownload::File(path),
            None => BundleDownload::NotFound,
        }
    }

    /// Deletes a stored object; a failure only leaves an orphan for [`Catalog::sweep_orphans`].
    async fn remove_blob(&self, key: &str) {
        if let Err(e) = self.blobs.delete(key).await {
            tracing::warn!(blob = key, error = %crate::error::Chain(&e), "could not delete a stored bundle; the orphan sweep will retry");
        }
    }

    /// Deletes stored objects that no bundle record refers to and that are older than
    /// `min_age` (younger ones may belong to an upload in progress). A bundle's zip has its own
    /// key and is deleted at once; a file object, which any upload may reuse, is marked doomed
    /// and deleted on a sweep at least `min_age` later if still unused (see
    /// `catalog::manifests`). Returns how many objects were deleted.
    pub async fn sweep_orphans(&self, min_age: Duration) -> Result<usize, CatalogError> {
        let in_use: HashSet<String> = self
            .metadata
            .bundle_blob_keys()
            .await?
            .into_iter()
            .collect();
        let marked = self.doomed_file_objects().await?;
        let now = SystemTime::now();
        let mut removed = 0;
        let mut to_mark = Vec::new();
        for blob in self.blobs.list().await? {
            let age = now.duration_since(blob.modified).unwrap_or_default();
            if in_use.contains(&blob.key) || age < min_age {
                continue;
            }
            if is_file_object_key(&blob.key) {
                if !marked.contains(&blob.key) {
                    to_mark.push(blob.key);
                }
                continue;
            }
            self.blobs.delete(&blob.key).await?;
            tracing::info!(blob = blob.key, "removed an orphaned bundle object");
            removed += 1;
        }
        if !to_mark.is_empty() {
            tracing::info!(
                objects = to_mark.len(),
                "file objects no bundle uses are marked for deletion"
            );
            self.metadata
                .mark_file_objects_doomed(&to_mark, now_millis())
                .await?;
        }
        // Read again: with no grace (a store no other process writes, at start-up) what was
        // just marked goes now.
        let grace = i64::try_from(min_age.as_millis()).unwrap_or(i64::MAX);
        let now_ms = now_millis();
        let mut unmark = Vec::new();
        for (key, marked_at) in self.metadata.doomed_file_objects().await? {
            if in_use.contains(&key) {
                unmark.push(key);
            } else if now_ms.saturating_sub(marked_at) >= grace {
                // Uploads stopped reusing it when it was marked; one that checked it before
                // has recorded its manifest by now.
                if !self.metadata.file_object_in_use(&key).await? {
                    self.blobs.delete(&key).await?;
                    tracing::info!(blob = key, "removed a file object no bundle uses");
                    removed += 1;
                }
                unmark.push(key);
            }
        }
        self.metadata.unmark_file_objects(&unmark).await?;
        Ok(removed + self.blobs.abort_stale_uploads(min_age).await?)
    }

    /// Looks up a bundle a request refers to in `field`, which must belong to `app_id`.
    pub(super) async fn bundle_for_app(
        &self,
        id: &str,
        field: &str,
        app_id: &str,
    ) -> Result<Bundle, CatalogError> {
        let parsed = RecordId::parse(id, field)?;
        let bundle = self
            .metadata
            .bundle(&parsed)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("{field} {id}: no such bundle")))?;
        if bundle.app_id != app_id {
            return Err(CatalogError::Invalid(format!(
                "{field} {id} is a bundle of {}, not of {app_id}",
                bundle.app_id
            )));
        }
        Ok(bundle)
    }
}

fn describe(bundle: &Bundle) -> String {
    format!("bundle {} ({})", bundle.id, bundle.version_name)
}

fn duplicate_bundle(app_id: &str, version_name: &str) -> CatalogError {
    CatalogError::Duplicate(format!(
        "{app_id} already has a bundle named {version_name:?}; devices tell bundles apart by \
         name, so upload the new one under a new version_name"
    ))
}

fn bundle_in_use(bundle: &Bundle, users: &[Release]) -> CatalogError {
    let names: Vec<String> = users
        .iter()
        .map(|r| format!("{} [{}]", r.key, r.id))
        .collect();
    CatalogError::InUse(format!(
        "bundle {} ({}) is used by release(s) {}; point them at another bundle first",
        bundle.id,
        bundle.version_name,
        names.join(", ")
    ))
}
