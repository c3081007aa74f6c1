//! Bundle bytes in a folder, served by the public port under `/files/`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;

use super::{BlobBytes, BlobInfo, BlobStore, StoreError};
use crate::domain::bundle::FILES_ROUTE_PREFIX;

pub struct FilesystemBlobStore {
    root: PathBuf,
    public_base_url: String,
}

impl FilesystemBlobStore {
    pub fn open(root: PathBuf, public_base_url: &str) -> Result<FilesystemBlobStore, StoreError> {
        std::fs::create_dir_all(&root).map_err(|e| {
            StoreError::internal(format!("cannot create blob folder {}", root.display()), e)
        })?;
        Ok(FilesystemBlobStore {
            root,
            public_base_url: public_base_url.to_string(),
        })
    }

    /// Maps a key to a path below the root; `None` for keys that could escape it.
    fn path_of(&self, key: &str) -> Option<PathBuf> {
        let safe = !key.is_empty()
            && key.split('/').all(|part| {
                !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            });
        safe.then(|| self.root.join(key))
    }

    fn checked_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        self.path_of(key)
            .ok_or_else(|| StoreError::invalid(format!("refusing unsafe blob key {key:?}")))
    }
}

#[async_trait]
impl BlobStore for FilesystemBlobStore {
    async fn put_file(&self, key: &str, source: &Path) -> Result<(), StoreError> {
        let target = self.checked_path(key)?;
        let source = source.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let parent = target.parent().expect("blob paths are below the root");
            std::fs::create_dir_all(parent)?;
            // The staging folder is on the same disk, so this is an atomic rename; syncing the
            // folder makes the new name survive a power loss.
            std::fs::rename(&source, &target)?;
            std::fs::File::open(parent)?.sync_all()
        })
        .await
        .map_err(|e| StoreError::internal("blob write task failed", e))?
        .map_err(|e| StoreError::internal(format!("cannot store blob {key}"), e))
    }

    async fn read(&self, key: &str) -> Result<Option<BlobBytes>, StoreError> {
        let path = self.checked_path(key)?;
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::internal(format!("cannot read blob {key}"), e)),
        };
        let key = key.to_string();
        let chunks = tokio_util::io::ReaderStream::new(file).map(move |chunk| {
            chunk.map_err(|e| StoreError::internal(format!("cannot read blob {key}"), e))
        });
        Ok(Some(Box::pin(chunks)))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.checked_path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::internal(format!("cannot delete blob {key}"), e)),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            let mut folders = vec![root.clone()];
            while let Some(folder) = folders.pop() {
                for entry in std::fs::read_dir(&folder)? {
                    let entry = entry?;
                    let metadata = entry.metadata()?;
                    if metadata.is_dir() {
                        folders.push(entry.path());
                    } else if let Ok(relative) = entry.path().strip_prefix(&root) {
                        found.push(BlobInfo {
                            key: relative.to_string_lossy().replace('\\', "/"),
                            modified: metadata.modified()?,
                        });
                    }
                }
            }
            Ok(found)
        })
        .await
        .map_err(|e| StoreError::internal("blob listing task failed", e))?
        .map_err(|e: std::io::Error| StoreError::internal("cannot list blobs", e))
    }

    async fn object_size(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let path = self.checked_path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::internal(
                format!("cannot look for blob {key}"),
                e,
            )),
        }
    }

    async fn download_url(&self, key: &str) -> Result<String, StoreError> {
        Ok(format!("{}{FILES_ROUTE_PREFIX}{key}", self.public_base_url))
    }

    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.path_of(key)
    }
}
