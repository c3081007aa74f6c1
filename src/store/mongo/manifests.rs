//! Bundle manifests and the orphan sweep's marks (see [`ManifestStore`]).
//!
//! - A bundle's manifest is an array in its own document (`manifest`), so a bundle and its
//!   manifest are written in one atomic insert; bundle reads leave it out (a projection).
//!   Multikey indexes on `manifest.object_key` and `manifest.brotli_key` make "does any
//!   manifest name this object" a point lookup.
//! - `doomed_file_objects`: one document per file object the sweep marked, keyed by its key.

use async_trait::async_trait;
use mongodb::bson::{self, doc, Document};
use mongodb::Collection;
use serde::{Deserialize, Serialize};

use super::{all, map_error, oid, plain_index, BundleDoc, MongoMetadataStore, StoreError};
use crate::domain::manifest::{BrotliCopy, ManifestEntry};
use crate::domain::{Bundle, RecordId, UnixMillis};
use crate::store::ManifestStore;

/// Left out of every bundle read but the manifest's own.
pub(super) fn without_manifest() -> Document {
    doc! {"manifest": 0}
}

#[derive(Debug, Serialize, Deserialize)]
struct FileDoc {
    path: String,
    sha256: String,
    size: i64,
    object_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    brotli_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    brotli_size: Option<i64>,
}

impl From<&ManifestEntry> for FileDoc {
    fn from(entry: &ManifestEntry) -> FileDoc {
        FileDoc {
            path: entry.path.clone(),
            sha256: entry.sha256.clone(),
            size: entry.size as i64,
            object_key: entry.object_key.clone(),
            brotli_key: entry.brotli.as_ref().map(|b| b.object_key.clone()),
            brotli_size: entry.brotli.as_ref().map(|b| b.size as i64),
        }
    }
}

impl From<FileDoc> for ManifestEntry {
    fn from(file: FileDoc) -> ManifestEntry {
        ManifestEntry {
            path: file.path,
            sha256: file.sha256,
            size: file.size as u64,
            object_key: file.object_key,
            brotli: match (file.brotli_key, file.brotli_size) {
                (Some(object_key), Some(size)) => Some(BrotliCopy {
                    object_key,
                    size: size as u64,
                }),
                _ => None,
            },
        }
    }
}

#[derive(Debug, Deserialize)]
struct ManifestOnly {
    #[serde(default)]
    manifest: Option<Vec<FileDoc>>,
}

fn manifest_bson(manifest: &[ManifestEntry]) -> Result<bson::Bson, StoreError> {
    let files: Vec<FileDoc> = manifest.iter().map(FileDoc::from).collect();
    bson::to_bson(&files).map_err(|e| StoreError::internal("cannot encode a manifest", e))
}

#[derive(Debug, Serialize, Deserialize)]
struct DoomedDoc {
    #[serde(rename = "_id")]
    object_key: String,
    marked_at: i64,
}

impl MongoMetadataStore {
    fn bundle_docs(&self) -> Collection<Document> {
        self.db.collection("bundles")
    }

    fn doomed(&self) -> Collection<DoomedDoc> {
        self.db.collection("doomed_file_objects")
    }

    pub(super) async fn migrate_manifests(&self) -> Result<(), StoreError> {
        self.bundle_docs()
            .create_indexes([
                plain_index(doc! {"manifest.object_key": 1}),
                plain_index(doc! {"manifest.brotli_key": 1}),
            ])
            .await
            .map_err(map_error)?;
        Ok(())
    }

    /// The object keys of every manifest, for the orphan sweep.
    pub(super) async fn manifest_object_keys(&self) -> Result<Vec<String>, StoreError> {
        let docs: Vec<Document> = all(self
            .bundle_docs()
            .find(doc! {"manifest": {"$exists": true}})
            .projection(doc! {"_id": 0, "manifest.object_key": 1, "manifest.brotli_key": 1}))
        .await?;
        let mut keys = Vec::new();
        for file in docs
            .iter()
            .filter_map(|d| d.get_array("manifest").ok())
            .flatten()
            .filter_map(|f| f.as_document())
        {
            for field in ["object_key", "brotli_key"] {
                if let Ok(key) = file.get_str(field) {
                    keys.push(key.to_string());
                }
            }
        }
        Ok(keys)
    }
}

#[async_trait]
impl ManifestStore for MongoMetadataStore {
    async fn insert_bundle_with_manifest(
        &self,
        bundle: &Bundle,
        manifest: &[ManifestEntry],
    ) -> Result<(), StoreError> {
        let mut document = bson::to_document(&BundleDoc::from(bundle))
            .map_err(|e| StoreError::internal("cannot encode a bundle", e))?;
        document.insert("manifest", manifest_bson(manifest)?);
        self.bundle_docs()
            .insert_one(document)
            .await
            .map_err(map_error)?;
        Ok(())
    }

    async fn bundle_manifest(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Option<Vec<ManifestEntry>>, StoreError> {
        let found = self
            .db
            .collection::<ManifestOnly>("bundles")
            .find_one(doc! {"_id": oid(bundle_id)})
            .projection(doc! {"manifest": 1})
            .await
            .map_err(map_error)?;
        Ok(found.and_then(|d| d.manifest).map(|files| {
            let mut entries: Vec<ManifestEntry> =
                files.into_iter().map(ManifestEntry::from).collect();
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            entries
        }))
    }

    async fn set_bundle_manifest(
        &self,
        bundle_id: &RecordId,
        manifest: &[ManifestEntry],
    ) -> Result<bool, StoreError> {
        let result = self
            .bundle_docs()
            .update_one(
                doc! {"_id": oid(bundle_id), "manifest": {"$exists": false}},
                doc! {"$set": {"manifest": manifest_bson(manifest)?}},
            )
            .await
            .map_err(map_error)?;
        Ok(result.matched_count > 0)
    }

    async fn file_object_in_use(&self, object_key: &str) -> Result<bool, StoreError> {
        let found = self
            .bundle_docs()
            .find_one(doc! {"$or": [
                {"manifest.object_key": object_key},
                {"manifest.brotli_key": object_key},
            ]})
            .projection(doc! {"_id": 1})
            .await
            .map_err(map_error)?;
        Ok(found.is_some())
    }

    async fn doomed_file_objects(&self) -> Result<Vec<(String, UnixMillis)>, StoreError> {
        let docs: Vec<DoomedDoc> = all(self.doomed().find(doc! {})).await?;
        Ok(docs
            .into_iter()
            .map(|d| (d.object_key, d.marked_at))
            .collect())
    }

    async fn mark_file_objects_doomed(
        &self,
        object_keys: &[String],
        at: UnixMillis,
    ) -> Result<(), StoreError> {
        for key in object_keys {
            self.doomed()
                .update_one(doc! {"_id": key}, doc! {"$setOnInsert": {"marked_at": at}})
                .upsert(true)
                .await
                .map_err(map_error)?;
        }
        Ok(())
    }

    async fn unmark_file_objects(&self, object_keys: &[String]) -> Result<(), StoreError> {
        if object_keys.is_empty() {
            return Ok(());
        }
        self.doomed()
            .delete_many(doc! {"_id": {"$in": object_keys}})
            .await
            .map_err(map_error)?;
        Ok(())
    }
}
