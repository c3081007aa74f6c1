//! Uploads are streamed into a staging file under DATA_DIR while being hashed, so memory stays
//! flat whatever the bundle size, and nothing reaches the blob store before it is checked.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::CatalogError;
use crate::domain::RecordId;

/// The folder staging files are written to; emptied at start-up.
#[derive(Debug, Clone)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    pub fn new(dir: PathBuf) -> Result<Staging, CatalogError> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            CatalogError::internal(format!("cannot create staging folder {}", dir.display()), e)
        })?;
        Ok(Staging { dir })
    }

    /// Removes what an interrupted process left behind. Only call when no upload can be running.
    pub fn remove_leftovers(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            std::fs::remove_file(entry?.path())?;
            removed += 1;
        }
        Ok(removed)
    }

    /// A new, unique path in the staging folder, removed when the returned guard is dropped
    /// (unless the blob store moved the file away).
    pub fn scratch_file(&self, suffix: &str) -> ScratchFile {
        ScratchFile(self.dir.join(format!("{}.{suffix}", RecordId::generate())))
    }

    /// Starts a staging file that refuses to grow past `max_size` bytes.
    pub async fn create(&self, max_size: u64) -> Result<StagingFile, CatalogError> {
        let path = self.dir.join(format!("{}.part", RecordId::generate()));
        let file = tokio::fs::File::create(&path).await.map_err(|e| {
            CatalogError::internal(format!("cannot create staging file {}", path.display()), e)
        })?;
        Ok(StagingFile {
            blob: StagedBlob {
                path,
                sha256: String::new(),
                crc32: String::new(),
                size: 0,
            },
            file,
            sha256: Sha256::new(),
            crc32: crc32fast::Hasher::new(),
            max_size,
        })
    }
}

/// A staging file being written.
pub struct StagingFile {
    blob: StagedBlob,
    file: tokio::fs::File,
    sha256: Sha256,
    crc32: crc32fast::Hasher,
    max_size: u64,
}

impl StagingFile {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), CatalogError> {
        self.blob.size += chunk.len() as u64;
        if self.blob.size > self.max_size {
            return Err(CatalogError::TooLarge(format!(
                "bundle is larger than the maximum of {} bytes (MAX_BUNDLE_SIZE)",
                self.max_size
            )));
        }
        self.sha256.update(chunk);
        self.crc32.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| CatalogError::internal("cannot write staging file", e))
    }

    /// Flushes to disk and returns the checked-in-nothing-yet blob with its checksums.
    pub async fn finish(mut self) -> Result<StagedBlob, CatalogError> {
        let io = |e: std::io::Error| CatalogError::internal("cannot sync staging file", e);
        self.file.flush().await.map_err(io)?;
        self.file.sync_all().await.map_err(io)?;
        self.blob.sha256 = hex::encode(self.sha256.finalize_reset());
        self.blob.crc32 = format!("{:08x}", self.crc32.clone().finalize());
        Ok(std::mem::replace(
            &mut self.blob,
            StagedBlob {
                path: PathBuf::new(),
                sha256: String::new(),
                crc32: String::new(),
                size: 0,
            },
        ))
    }
}

/// A complete staging file. Dropping it deletes the file unless the blob store moved it away.
#[derive(Debug)]
pub struct StagedBlob {
    path: PathBuf,
    pub sha256: String,
    pub crc32: String,
    pub size: u64,
}

impl StagedBlob {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagedBlob {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A file in the staging folder that is deleted when dropped, wherever it is in its life.
#[derive(Debug)]
pub struct ScratchFile(PathBuf);

impl ScratchFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
