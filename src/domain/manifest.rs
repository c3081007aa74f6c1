//! Manifests: every file of a bundle with its SHA-256, so a device downloads only the files it
//! does not already have (the plugin's "delta" or "partial" update). Files are stored once by
//! content under [`FILE_OBJECT_PREFIX`], whatever bundle or app they came from.

use std::sync::Arc;

use serde::Serialize;

use super::PluginVersion;

/// Where file objects live in the blob store: `files/<sha256>`, or `files/<sha256>.br` for a
/// Brotli copy; a copy written while an older object of the same content was being deleted
/// carries a random suffix before the extension (see the orphan sweep).
pub const FILE_OBJECT_PREFIX: &str = "files/";

/// Most files a manifest lists. A bundle with more is served as its zip only: every file of
/// the manifest is in the update answer, and past this the answer would outweigh the savings.
pub const MAX_MANIFEST_FILES: usize = 10_000;

/// The suffix that tells the plugin a download is Brotli-compressed (stripped on disk).
pub const BROTLI_SUFFIX: &str = ".br";

/// One file of a bundle, as stored: the file itself, and a Brotli copy when that is smaller.
/// Plugins 5.x never decompress manifest files and later ones decompress those named `.br`,
/// so the plain object is always kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative to the bundle's root (the zip's single top folder removed), `/`-separated.
    pub path: String,
    /// SHA-256 of the file's bytes, lowercase hex: what the device verifies after download.
    pub sha256: String,
    pub size: u64,
    /// The object holding the file's bytes.
    pub object_key: String,
    /// The object holding its Brotli copy, and that copy's size.
    pub brotli: Option<BrotliCopy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrotliCopy {
    pub object_key: String,
    pub size: u64,
}

impl ManifestEntry {
    /// The object keys this entry refers to.
    pub fn object_keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.object_key.as_str())
            .chain(self.brotli.as_ref().map(|b| b.object_key.as_str()))
    }

    /// What a device downloads: `(file_name, object key, bytes)`. With `brotli` (the plugin
    /// decompresses `.br` files) the Brotli copy when there is one, named with `.br`.
    pub fn download(&self, brotli: bool) -> (String, &str, u64) {
        match &self.brotli {
            Some(copy) if brotli => (
                format!("{}{BROTLI_SUFFIX}", self.path),
                &copy.object_key,
                copy.size,
            ),
            _ => (self.path.clone(), &self.object_key, self.size),
        }
    }
}

/// The object key of a file's content: `files/<sha256>[.br]`, or with `-<nonce>` when the
/// plain key may not be reused.
pub fn file_object_key(sha256: &str, brotli: bool, nonce: Option<&str>) -> String {
    let suffix = if brotli { BROTLI_SUFFIX } else { "" };
    match nonce {
        Some(nonce) => format!("{FILE_OBJECT_PREFIX}{sha256}-{nonce}{suffix}"),
        None => format!("{FILE_OBJECT_PREFIX}{sha256}{suffix}"),
    }
}

/// True for keys of file objects (as opposed to whole-bundle zips).
pub fn is_file_object_key(key: &str) -> bool {
    key.starts_with(FILE_OBJECT_PREFIX)
}

/// A bundle's manifest as update answers carry it, rendered once per cached target in both
/// forms: with Brotli copies for plugins that decompress them, plain for 5.x.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedManifest {
    with_brotli: Arc<[ManifestFile]>,
    plain: Arc<[ManifestFile]>,
}

impl ServedManifest {
    /// `url` gives the absolute URL of an object key.
    pub fn new(entries: &[ManifestEntry], url: impl Fn(&str) -> String) -> ServedManifest {
        let render = |brotli: bool| -> Arc<[ManifestFile]> {
            entries
                .iter()
                .map(|entry| {
                    let (file_name, key, _) = entry.download(brotli);
                    ManifestFile {
                        file_name,
                        file_hash: entry.sha256.clone(),
                        download_url: url(key),
                    }
                })
                .collect()
        };
        ServedManifest {
            with_brotli: render(true),
            plain: render(false),
        }
    }

    /// The manifest a device of this plugin gets; `None` for plugins that take none (they
    /// download the zip).
    pub fn for_plugin(&self, plugin: Option<PluginVersion>) -> Option<Arc<[ManifestFile]>> {
        let plugin = plugin.filter(|p| p.takes_manifest())?;
        Some(if plugin.decompresses_brotli_files() {
            self.with_brotli.clone()
        } else {
            self.plain.clone()
        })
    }
}

/// One file of an update answer's `manifest`, as the plugin reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestFile {
    pub file_name: String,
    pub file_hash: String,
    pub download_url: String,
}

/// A file a device asks the size of (`POST /updates/manifest_size`): an entry of the
/// manifest it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeQuery {
    pub file_name: String,
    pub file_hash: String,
    pub download_url: Option<String>,
}

/// The answer to `POST /updates/manifest_size`, as the official backend shapes it: the bytes
/// a device would download for each file (the Brotli copy's for a `.br` name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSizes {
    pub total_size: u64,
    pub known_files: usize,
    pub unknown_files: usize,
    pub files: Vec<FileSize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileSize {
    pub file_name: String,
    pub file_hash: String,
    pub download_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `size_unknown` when the bundle has no such file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
}

/// Sizes the queried files against a bundle's manifest (`None`: no such bundle, or it has
/// none). Repeated queries are answered once; hashes compare case-insensitively, as Android
/// does.
pub fn size_files(queries: Vec<SizeQuery>, manifest: Option<&[ManifestEntry]>) -> ManifestSizes {
    let by_hash: std::collections::HashMap<String, &ManifestEntry> = manifest
        .into_iter()
        .flatten()
        .map(|entry| (entry.sha256.to_ascii_lowercase(), entry))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut sizes = ManifestSizes {
        total_size: 0,
        known_files: 0,
        unknown_files: 0,
        files: Vec::new(),
    };
    for query in queries {
        let hash = query.file_hash.to_ascii_lowercase();
        if !seen.insert((query.file_name.clone(), hash.clone())) {
            continue;
        }
        let brotli = query.file_name.ends_with(BROTLI_SUFFIX);
        let size = by_hash.get(&hash).map(|entry| entry.download(brotli).2);
        match size {
            Some(size) => {
                sizes.total_size += size;
                sizes.known_files += 1;
            }
            None => sizes.unknown_files += 1,
        }
        sizes.files.push(FileSize {
            file_name: query.file_name,
            file_hash: query.file_hash,
            download_url: query.download_url,
            size,
            error: size.is_none().then_some("size_unknown"),
        });
    }
    sizes
}

impl PluginVersion {
    /// Whether an update answer may carry a `manifest` for this plugin: from 5.10.0, 6.25.0
    /// and 7.0.38, and all 8.x. 7.0.35 to 7.0.37 (which the official backend also sends
    /// manifests) Brotli-decode every manifest file whatever its name, so a file stored plain
    /// would fail there: they get the zip.
    pub fn takes_manifest(self) -> bool {
        let first = match self.major {
            0..=4 => return false,
            5 => PluginVersion::new(5, 10, 0),
            6 => PluginVersion::new(6, 25, 0),
            7 => PluginVersion::new(7, 0, 38),
            _ => return true,
        };
        self >= first
    }

    /// Whether the plugin Brotli-decodes manifest files named `.br` (6.3.0 on; 5.x writes
    /// every file as downloaded).
    pub fn decompresses_brotli_files(self) -> bool {
        self >= PluginVersion::new(6, 3, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(brotli: bool) -> ManifestEntry {
        let sha = "ab".repeat(32);
        ManifestEntry {
            path: "assets/app.js".into(),
            sha256: sha.clone(),
            size: 10,
            object_key: file_object_key(&sha, false, None),
            brotli: brotli.then(|| BrotliCopy {
                object_key: file_object_key(&sha, true, Some("n1")),
                size: 5,
            }),
        }
    }

    fn plugin(version: &str) -> PluginVersion {
        PluginVersion::parse(version).unwrap()
    }

    #[test]
    fn each_plugin_downloads_the_form_it_can_install() {
        let sha = "ab".repeat(32);
        let served = ServedManifest::new(&[entry(true)], |key| format!("https://cdn/{key}"));
        let files = served.for_plugin(Some(plugin("8.0.0"))).unwrap();
        assert_eq!(files[0].file_name, "assets/app.js.br");
        assert_eq!(
            files[0].download_url,
            format!("https://cdn/files/{sha}-n1.br")
        );
        assert_eq!(files[0].file_hash, sha);
        let files = served.for_plugin(Some(plugin("5.10.0"))).unwrap();
        assert_eq!(files[0].file_name, "assets/app.js");
        assert_eq!(files[0].download_url, format!("https://cdn/files/{sha}"));
        assert_eq!(served.for_plugin(Some(plugin("7.0.36"))), None);
        assert_eq!(served.for_plugin(None), None);
        let (name, _, size) = entry(true).download(true);
        assert_eq!((name.as_str(), size), ("assets/app.js.br", 5));
        assert_eq!(entry(false).download(true).0, "assets/app.js");
        assert_eq!(entry(true).object_keys().count(), 2);
        assert!(is_file_object_key("files/x"));
        assert!(!is_file_object_key("bundles/x.zip"));
    }

    #[test]
    fn sizes_are_what_the_device_would_download() {
        let sha = "ab".repeat(32);
        let query = |name: &str, hash: &str| SizeQuery {
            file_name: name.into(),
            file_hash: hash.into(),
            download_url: None,
        };
        let sizes = size_files(
            vec![
                query("assets/app.js.br", &sha.to_uppercase()),
                query("assets/app.js.br", &sha),
                query("assets/app.js", &sha),
                query("gone.js", &"cd".repeat(32)),
            ],
            Some(&[entry(true)]),
        );
        assert_eq!(
            (sizes.total_size, sizes.known_files, sizes.unknown_files),
            (15, 2, 1)
        );
        assert_eq!(sizes.files[0].size, Some(5));
        assert_eq!(sizes.files[1].size, Some(10));
        assert_eq!(sizes.files[2].error, Some("size_unknown"));
        let json = serde_json::to_value(&sizes).unwrap();
        assert_eq!(json["totalSize"], 15);
        assert_eq!(json["files"][2]["error"], "size_unknown");
        assert!(json["files"][0].get("error").is_none());
        assert_eq!(size_files(vec![query("a", &sha)], None).unknown_files, 1);
    }

    #[test]
    fn manifest_thresholds_follow_the_plugins() {
        for (version, expected) in [
            ("4.99.0", false),
            ("5.9.9", false),
            ("5.10.0", true),
            ("6.24.9", false),
            ("6.25.0", true),
            ("7.0.34", false),
            ("7.0.37", false),
            ("7.0.38", true),
            ("7.1.0", true),
            ("8.0.0", true),
        ] {
            assert_eq!(plugin(version).takes_manifest(), expected, "{version}");
        }
        assert!(!plugin("5.50.0").decompresses_brotli_files());
        assert!(plugin("6.25.0").decompresses_brotli_files());
    }
}
