//! What makes a zip a bundle the plugin can install, checked from the central directory alone
//! (no decompression, so a zip bomb costs nothing to refuse).

use std::collections::BTreeSet;
use std::path::Path;

use crate::domain::InvalidInput;

/// Most entries a bundle may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// Most bytes a bundle may expand to.
pub const MAX_UNCOMPRESSED_BYTES: u64 = 4 << 30;

/// Where `index.html` was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipSummary {
    pub entries: usize,
    pub uncompressed_bytes: u64,
    /// `None` when `index.html` is at the root, else the single top folder holding it.
    pub top_folder: Option<String>,
}

/// Checks the zip at `path`: a valid archive, no absolute or `..` paths, size limits, and
/// `index.html` at its root or inside a single top-level folder (what the plugin unpacks).
pub fn check_bundle_zip(path: &Path) -> Result<ZipSummary, InvalidInput> {
    let file = std::fs::File::open(path)
        .map_err(|e| InvalidInput(format!("cannot read the uploaded file: {e}")))?;
    check_bundle_archive(std::io::BufReader::new(file))
}

/// [`check_bundle_zip`] on any seekable bytes (the fuzz target feeds it memory).
pub fn check_bundle_archive(
    reader: impl std::io::Read + std::io::Seek,
) -> Result<ZipSummary, InvalidInput> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| {
        InvalidInput(format!(
            "the bundle is not a valid zip archive ({e}); upload the zip of your web assets"
        ))
    })?;
    if archive.len() > MAX_ENTRIES {
        return Err(InvalidInput(format!(
            "the zip holds {} entries; at most {MAX_ENTRIES} are accepted",
            archive.len()
        )));
    }
    let mut uncompressed: u64 = 0;
    let mut files = BTreeSet::new();
    let mut top_level = BTreeSet::new();
    for index in 0..archive.len() {
        let entry = archive
            .by_index_raw(index)
            .map_err(|e| InvalidInput(format!("the zip's entry #{index} cannot be read: {e}")))?;
        let name = entry.name().to_string();
        check_entry_name(&name)?;
        uncompressed = uncompressed.saturating_add(entry.size());
        if uncompressed > MAX_UNCOMPRESSED_BYTES {
            return Err(InvalidInput(format!(
                "the zip expands to more than {MAX_UNCOMPRESSED_BYTES} bytes"
            )));
        }
        let normalized = name.replace('\\', "/");
        if let Some(first) = normalized.split('/').find(|p| !p.is_empty()) {
            let is_folder_part = normalized.trim_start_matches('/').len() > first.len();
            top_level.insert((first.to_string(), is_folder_part || entry.is_dir()));
        }
        if !entry.is_dir() {
            files.insert(normalized);
        }
    }
    let summary = |top_folder| ZipSummary {
        entries: archive.len(),
        uncompressed_bytes: uncompressed,
        top_folder,
    };
    if files.contains("index.html") {
        return Ok(summary(None));
    }
    let top_names: BTreeSet<&str> = top_level.iter().map(|(n, _)| n.as_str()).collect();
    if let [single] = top_names.iter().collect::<Vec<_>>()[..] {
        if files.contains(&format!("{single}/index.html")) {
            return Ok(summary(Some(single.to_string())));
        }
    }
    Err(InvalidInput(if top_names.len() > 1 {
        format!(
            "index.html is missing at the zip's root, and the zip has {} top-level entries ({}), \
             so it is not one folder either; zip the contents of your build folder (e.g. dist/)",
            top_names.len(),
            top_names
                .iter()
                .take(5)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        "index.html is missing: it must be at the zip's root or inside its single top-level folder"
            .to_string()
    }))
}

fn check_entry_name(name: &str) -> Result<(), InvalidInput> {
    let normalized = name.replace('\\', "/");
    let absolute = normalized.starts_with('/')
        || normalized.as_bytes().get(1) == Some(&b':')
            && normalized.as_bytes()[0].is_ascii_alphabetic();
    if absolute {
        return Err(InvalidInput(format!(
            "the zip entry {name:?} has an absolute path"
        )));
    }
    if normalized.split('/').any(|part| part == "..") {
        return Err(InvalidInput(format!(
            "the zip entry {name:?} climbs out of the bundle with '..'"
        )));
    }
    if name.contains('\0') {
        return Err(InvalidInput(format!(
            "the zip entry {name:?} has a NUL character"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[&str]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut writer = zip::ZipWriter::new(file.reopen().unwrap());
        for name in entries {
            if name.ends_with('/') {
                writer
                    .add_directory(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
            } else {
                writer
                    .start_file(*name, zip::write::SimpleFileOptions::default())
                    .unwrap();
                writer.write_all(b"<html></html>").unwrap();
            }
        }
        writer.finish().unwrap();
        file
    }

    #[test]
    fn index_at_root_or_in_one_folder() {
        let root = zip_of(&["index.html", "assets/app.js"]);
        assert_eq!(check_bundle_zip(root.path()).unwrap().top_folder, None);
        let nested = zip_of(&["dist/", "dist/index.html", "dist/assets/app.js"]);
        assert_eq!(
            check_bundle_zip(nested.path())
                .unwrap()
                .top_folder
                .as_deref(),
            Some("dist")
        );
    }

    #[test]
    fn refuses_what_the_plugin_cannot_install() {
        let missing = zip_of(&["app.js"]);
        assert!(check_bundle_zip(missing.path())
            .unwrap_err()
            .0
            .contains("index.html"));
        let two_folders = zip_of(&["dist/index.html", "__MACOSX/dist/index.html"]);
        assert!(check_bundle_zip(two_folders.path())
            .unwrap_err()
            .0
            .contains("top-level"));
        let escape = zip_of(&["index.html", "../evil.sh"]);
        assert!(check_bundle_zip(escape.path())
            .unwrap_err()
            .0
            .contains(".."));
        let absolute = zip_of(&["index.html", "/etc/passwd"]);
        assert!(check_bundle_zip(absolute.path())
            .unwrap_err()
            .0
            .contains("absolute"));
    }

    #[test]
    fn refuses_non_zips() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"this is not a zip").unwrap();
        assert!(check_bundle_zip(file.path())
            .unwrap_err()
            .0
            .contains("not a valid zip"));
    }
}
