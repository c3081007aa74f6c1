//! Manifests: a bundle's files stored once by content, so devices download only the files
//! they lack. Derived at upload from the checked zip (REST and `Bundle` resources alike), or
//! later by `capgo-server migrate` for bundles stored before.
//!
//! File objects are shared by every bundle (of any app) with the same content, so deleting a
//! bundle deletes none: the orphan sweep does, in two passes (see [`crate::store::ManifestStore`]):
//! unreferenced objects are marked doomed, and deleted a grace period later if still
//! unreferenced. Uploads never reuse a doomed object; they store a fresh copy under another
//! key. So no transaction is needed on MongoDB: an upload that checked an object before it was
//! marked records its manifest within the grace period (ORPHAN_GRACE_PERIOD must be longer
//! than any upload), and the sweep's second pass then sees it in use.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::staging::{ScratchFile, Staging};
use super::{Catalog, CatalogError};
use crate::domain::ids::random_hex;
use crate::domain::manifest::{
    file_object_key, size_files, BrotliCopy, ManifestEntry, ManifestSizes, SizeQuery,
    MAX_MANIFEST_FILES,
};
use crate::domain::{Bundle, InvalidInput, RecordId};

/// Brotli quality of stored copies: close to the best ratio for web assets at a fraction of
/// quality 11's time (uploads pay it once; devices save on every download).
const BROTLI_QUALITY: u32 = 9;
/// Brotli window (log2 of bytes): 4 MiB, what browsers and the plugin's decoders accept.
const BROTLI_WINDOW: u32 = 22;
/// Files smaller than this get no Brotli copy: it would save less than the copy costs to keep.
const BROTLI_MIN_SIZE: u64 = 1024;
/// Files larger than this are first probed: when their first bytes do not compress (images,
/// fonts, media), no copy is made.
const PROBE_ABOVE: u64 = 256 * 1024;
const PROBE_BYTES: usize = 128 * 1024;

/// A bundle's files unpacked to the staging folder, not stored yet.
pub(super) struct UnpackedFiles {
    files: Vec<UnpackedFile>,
}

struct UnpackedFile {
    path: String,
    sha256: String,
    size: u64,
    /// `None` for a file whose content an earlier file of the bundle already has.
    content: Option<UnpackedContent>,
}

struct UnpackedContent {
    plain: ScratchFile,
    brotli: Option<(ScratchFile, u64)>,
}

/// What `capgo-server migrate` did to the manifests of stored bundles.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ManifestFill {
    /// Bundles that got their manifest now.
    pub filled: usize,
    /// Bundles that already had one.
    pub present: usize,
    /// Bundles that cannot have one (encrypted, or more files than a manifest lists).
    pub not_applicable: usize,
    /// Bundles that failed (named in the log); run again.
    pub failed: usize,
}

/// Unpacks every file of the checked zip at `zip` into `staging`, hashing each and making a
/// Brotli copy where it is worth it (blocking: run it off the runtime). `None` when the bundle
/// is served as a zip only: more than [`MAX_MANIFEST_FILES`] files, or paths that collide once
/// cleaned.
pub(super) fn unpack(
    zip: &Path,
    top_folder: Option<&str>,
    staging: &Staging,
) -> Result<Option<UnpackedFiles>, CatalogError> {
    let unreadable = |e: &dyn std::fmt::Display| {
        CatalogError::Invalid(format!("the bundle cannot be unpacked: {e}"))
    };
    let file = std::fs::File::open(zip)
        .map_err(|e| CatalogError::internal("cannot open the staged bundle", e))?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| unreadable(&e))?;
    let prefix = top_folder.map(|folder| format!("{folder}/"));
    let mut files = Vec::new();
    let mut paths = HashSet::new();
    let mut contents = HashSet::new();
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(|e| unreadable(&e))?;
        if entry.is_dir() {
            continue;
        }
        if files.len() == MAX_MANIFEST_FILES {
            return Ok(None);
        }
        let name = entry.name().replace('\\', "/");
        let relative = match &prefix {
            Some(prefix) => name.strip_prefix(prefix.as_str()).unwrap_or(&name),
            None => &name,
        };
        let Some(path) = clean_path(relative) else {
            return Ok(None);
        };
        if !paths.insert(path.clone()) {
            return Ok(None);
        }
        let plain = staging.scratch_file("file");
        let (sha256, size) = copy_hashing(&mut entry, plain.path())?;
        let content = if contents.insert(sha256.clone()) {
            Some(UnpackedContent {
                brotli: brotli_copy(plain.path(), size, staging)?,
                plain,
            })
        } else {
            None
        };
        files.push(UnpackedFile {
            path,
            sha256,
            size,
            content,
        });
    }
    Ok(Some(UnpackedFiles { files }))
}

/// The path a device writes a file to: `/`-separated, without empty or `.` segments (the zip
/// check already refused `..`, absolute paths and NUL); `None` if nothing is left.
fn clean_path(relative: &str) -> Option<String> {
    let parts: Vec<&str> = relative
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

fn copy_hashing(from: &mut impl Read, to: &Path) -> Result<(String, u64), CatalogError> {
    let io = |e: std::io::Error| CatalogError::internal("cannot unpack a bundle file", e);
    let mut out = std::io::BufWriter::new(std::fs::File::create(to).map_err(io)?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let read = from.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        out.write_all(&buffer[..read]).map_err(io)?;
        size += read as u64;
    }
    out.flush().map_err(io)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// A Brotli copy of `plain` when it saves at least a twentieth of the file; small files, and
/// large files whose beginning does not compress, are not tried.
fn brotli_copy(
    plain: &Path,
    size: u64,
    staging: &Staging,
) -> Result<Option<(ScratchFile, u64)>, CatalogError> {
    if size < BROTLI_MIN_SIZE {
        return Ok(None);
    }
    let io = |e: std::io::Error| CatalogError::internal("cannot compress a bundle file", e);
    let mut source = std::fs::File::open(plain).map_err(io)?;
    if size > PROBE_ABOVE {
        let mut head = vec![0u8; PROBE_BYTES];
        source.read_exact(&mut head).map_err(io)?;
        let mut probe = brotli::CompressorWriter::new(Vec::new(), 4096, 1, BROTLI_WINDOW);
        probe.write_all(&head).map_err(io)?;
        if probe.into_inner().len() * 10 > PROBE_BYTES * 9 {
            return Ok(None);
        }
        source = std::fs::File::open(plain).map_err(io)?;
    }
    let copy = staging.scratch_file("br");
    let out = std::fs::File::create(copy.path()).map_err(io)?;
    let mut compressor = brotli::CompressorWriter::new(
        std::io::BufWriter::new(out),
        64 * 1024,
        BROTLI_QUALITY,
        BROTLI_WINDOW,
    );
    std::io::copy(&mut std::io::BufReader::new(source), &mut compressor).map_err(io)?;
    let mut out = compressor.into_inner();
    out.flush().map_err(io)?;
    drop(out);
    let copy_size = std::fs::metadata(copy.path()).map_err(io)?.len();
    Ok((copy_size + copy_size / 19 < size).then_some((copy, copy_size)))
}

impl Catalog {
    /// Unpacks a checked zip (see [`unpack`]) off the runtime.
    pub(super) async fn unpack_files(
        &self,
        zip: &Path,
        top_folder: Option<String>,
    ) -> Result<Option<UnpackedFiles>, CatalogError> {
        let (zip, staging) = (zip.to_path_buf(), self.staging.clone());
        tokio::task::spawn_blocking(move || unpack(&zip, top_folder.as_deref(), &staging))
            .await
            .map_err(|e| CatalogError::internal("the unpack task failed", e))?
    }

    /// Stores each distinct content once, reusing the object another bundle stored unless the
    /// orphan sweep doomed it; the manifest to record.
    pub(super) async fn store_files(
        &self,
        unpacked: UnpackedFiles,
    ) -> Result<Vec<ManifestEntry>, CatalogError> {
        // Read before any object is looked at (see the module's notes).
        let doomed = self.doomed_file_objects().await?;
        let mut stored: HashMap<String, (String, Option<BrotliCopy>)> = HashMap::new();
        let mut manifest = Vec::with_capacity(unpacked.files.len());
        for file in unpacked.files {
            if let Some(content) = &file.content {
                let object_key = self
                    .place_object(&file.sha256, false, &content.plain, &doomed)
                    .await?
                    .0;
                let brotli = match &content.brotli {
                    Some((copy, _)) => {
                        let (object_key, size) =
                            self.place_object(&file.sha256, true, copy, &doomed).await?;
                        Some(BrotliCopy { object_key, size })
                    }
                    None => None,
                };
                stored.insert(file.sha256.clone(), (object_key, brotli));
            }
            let (object_key, brotli) = stored
                .get(&file.sha256)
                .cloned()
                .expect("the first file of each content is stored first");
            manifest.push(ManifestEntry {
                path: file.path,
                sha256: file.sha256,
                size: file.size,
                object_key,
                brotli,
            });
        }
        manifest.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(manifest)
    }

    /// The keys of the file objects the orphan sweep marked for deletion.
    pub(super) async fn doomed_file_objects(&self) -> Result<HashSet<String>, CatalogError> {
        Ok(self
            .metadata
            .doomed_file_objects()
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    /// The key and size of the object holding `file`: the existing one when it is not doomed,
    /// else a new one.
    async fn place_object(
        &self,
        sha256: &str,
        brotli: bool,
        file: &ScratchFile,
        doomed: &HashSet<String>,
    ) -> Result<(String, u64), CatalogError> {
        let key = file_object_key(sha256, brotli, None);
        let key = if doomed.contains(&key) {
            file_object_key(sha256, brotli, Some(&random_hex::<8>()))
        } else if let Some(size) = self.blobs.object_size(&key).await? {
            return Ok((key, size));
        } else {
            key
        };
        let size = tokio::fs::metadata(file.path())
            .await
            .map_err(|e| CatalogError::internal("cannot read an unpacked file", e))?
            .len();
        self.blobs.put_file(&key, file.path()).await?;
        Ok((key, size))
    }

    /// Gives every stored bundle that can have a manifest its manifest: what `capgo-server
    /// migrate` runs. Resumable (a bundle is done once its manifest is recorded) and safe
    /// while other processes serve (objects are placed as uploads place them; devices get a
    /// manifest once it is complete, until then the zip).
    pub async fn fill_manifests(&self) -> Result<ManifestFill, CatalogError> {
        let mut fill = ManifestFill::default();
        for bundle in self.metadata.list_bundles().await? {
            if bundle.encryption.is_some() {
                fill.not_applicable += 1;
                continue;
            }
            if self.metadata.bundle_manifest(&bundle.id).await?.is_some() {
                fill.present += 1;
                continue;
            }
            match self.fill_manifest(&bundle).await {
                Ok(true) => {
                    tracing::info!(bundle = %bundle.id, version = bundle.version_name, "manifest recorded");
                    fill.filled += 1;
                }
                Ok(false) => fill.not_applicable += 1,
                Err(e) => {
                    tracing::warn!(bundle = %bundle.id, version = bundle.version_name, error = %crate::error::Chain(&e), "could not record the bundle's manifest");
                    fill.failed += 1;
                }
            }
        }
        Ok(fill)
    }

    async fn fill_manifest(&self, bundle: &Bundle) -> Result<bool, CatalogError> {
        let bytes = self.blobs.read(&bundle.blob_key).await?.ok_or_else(|| {
            CatalogError::NotFound(format!("the stored zip {} is missing", bundle.blob_key))
        })?;
        let staged = self.stage(bytes).await.map_err(|e| match e {
            super::SourceError::Source(e) => e.into(),
            super::SourceError::Catalog(e) => e,
        })?;
        if staged.sha256 != bundle.sha256 {
            return Err(CatalogError::internal(
                format!("the stored zip {} changed", bundle.blob_key),
                InvalidInput(format!(
                    "SHA-256 {} instead of {}",
                    staged.sha256, bundle.sha256
                )),
            ));
        }
        let path = staged.path().to_path_buf();
        let summary =
            tokio::task::spawn_blocking(move || super::zip_check::check_bundle_zip(&path))
                .await
                .map_err(|e| CatalogError::internal("the zip check task failed", e))??;
        let Some(unpacked) = self.unpack_files(staged.path(), summary.top_folder).await? else {
            return Ok(false);
        };
        let manifest = self.store_files(unpacked).await?;
        if !self
            .metadata
            .set_bundle_manifest(&bundle.id, &manifest)
            .await?
        {
            // Deleted meanwhile, or another process was first: its objects are the sweep's.
            return Ok(true);
        }
        self.targets.invalidate();
        Ok(true)
    }

    /// A bundle's manifest, if it has one.
    pub async fn manifest_of(
        &self,
        bundle_id: &RecordId,
    ) -> Result<Option<Vec<ManifestEntry>>, CatalogError> {
        Ok(self.metadata.bundle_manifest(bundle_id).await?)
    }

    /// What `POST /updates/manifest_size` answers: the queried files of the app's bundle
    /// named `version`, sized ([`size_files`]; unknown everywhere when there is no such bundle
    /// or it has no manifest).
    pub async fn manifest_sizes(
        &self,
        app_id: &str,
        version: &str,
        queries: Vec<SizeQuery>,
    ) -> Result<ManifestSizes, CatalogError> {
        let manifest = match self.bundle_by_version(app_id, version).await? {
            Some(bundle) => self.manifest_of(&bundle.id).await?,
            None => None,
        };
        Ok(size_files(queries, manifest.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_as_devices_write_them() {
        assert_eq!(clean_path("assets//a.js").as_deref(), Some("assets/a.js"));
        assert_eq!(clean_path("./index.html").as_deref(), Some("index.html"));
        assert_eq!(clean_path("/"), None);
    }

    fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        for (name, bytes) in entries {
            zip.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn unpacks_files_below_the_top_folder_with_brotli_copies_where_they_pay() {
        let dir = std::env::temp_dir().join(format!("capgo-unpack-{}", RecordId::generate()));
        let staging = Staging::new(dir.clone()).unwrap();
        let text = b"console.log('hello');\n".repeat(200);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let noise: Vec<u8> = (0..400_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let zip_path = dir.join("bundle.zip");
        std::fs::write(
            &zip_path,
            zip_of(&[
                ("dist/index.html", b"<html></html>".to_vec()),
                ("dist/assets/app.js", text.clone()),
                ("dist/assets/copy.js", text.clone()),
                ("dist/noise.bin", noise.clone()),
            ]),
        )
        .unwrap();
        let unpacked = unpack(&zip_path, Some("dist"), &staging).unwrap().unwrap();
        let by_path: HashMap<&str, &UnpackedFile> = unpacked
            .files
            .iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let app = by_path["assets/app.js"];
        assert_eq!(app.sha256, hex::encode(Sha256::digest(&text)));
        assert_eq!(app.size, text.len() as u64);
        let (copy, copy_size) = app.content.as_ref().unwrap().brotli.as_ref().unwrap();
        let mut inflated = Vec::new();
        brotli::Decompressor::new(std::fs::File::open(copy.path()).unwrap(), 4096)
            .read_to_end(&mut inflated)
            .unwrap();
        assert_eq!(inflated, text);
        assert!(*copy_size < 200, "{copy_size}");
        // The same content twice is unpacked once.
        assert!(by_path["assets/copy.js"].content.is_none());
        // Incompressible bytes get no copy; tiny files neither.
        assert!(by_path["noise.bin"]
            .content
            .as_ref()
            .unwrap()
            .brotli
            .is_none());
        assert!(by_path["index.html"]
            .content
            .as_ref()
            .unwrap()
            .brotli
            .is_none());
        drop(unpacked);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn colliding_paths_mean_zip_only() {
        let dir = std::env::temp_dir().join(format!("capgo-unpack-{}", RecordId::generate()));
        let staging = Staging::new(dir.clone()).unwrap();
        let zip_path = dir.join("bundle.zip");
        std::fs::write(
            &zip_path,
            zip_of(&[
                ("index.html", b"a".to_vec()),
                ("a//b.js", b"1".to_vec()),
                ("a/b.js", b"2".to_vec()),
            ]),
        )
        .unwrap();
        assert!(unpack(&zip_path, None, &staging).unwrap().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
