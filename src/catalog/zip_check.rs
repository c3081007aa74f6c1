//! What makes a zip a bundle the plugin can install. The central directory is checked first
//! (names, sizes, compression ratio: a zip bomb is refused before anything is inflated), then
//! every local header must agree with it (Android's `ZipInputStream` reads local headers, not
//! the central directory), entries must not overlap, and each entry is inflated once to prove
//! it expands to exactly its declared size and CRC.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::domain::InvalidInput;

/// Most entries a bundle may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// Most bytes a bundle may expand to.
pub const MAX_UNCOMPRESSED_BYTES: u64 = 4 << 30;
/// Most an entry, or the whole archive, may expand relative to its compressed size. Web assets
/// deflate 3 to 10 times; deflate's own limit is about 1032.
pub const MAX_COMPRESSION_RATIO: u64 = 200;
/// Sizes below which the ratio is not checked (a small file of zeros is harmless).
const RATIO_FREE_BYTES: u64 = 1 << 20;

/// Where `index.html` was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipSummary {
    pub entries: usize,
    pub uncompressed_bytes: u64,
    /// `None` when `index.html` is at the root, else the single top folder holding it.
    pub top_folder: Option<String>,
}

/// Checks the zip at `path`: a valid archive, no absolute, `..` or duplicate paths, size and
/// ratio limits, local headers that match the central directory, and `index.html` at its root
/// or inside a single top-level folder (what the plugin unpacks).
pub fn check_bundle_zip(path: &Path) -> Result<ZipSummary, InvalidInput> {
    let file = std::fs::File::open(path)
        .map_err(|e| InvalidInput(format!("cannot read the uploaded file: {e}")))?;
    check_bundle_archive(std::io::BufReader::new(file))
}

/// What the central directory says about one entry.
struct CentralEntry {
    index: usize,
    name: String,
    raw_name: Vec<u8>,
    header_start: u64,
    compressed: u64,
    size: u64,
    crc32: u32,
    method: u16,
    is_dir: bool,
}

/// [`check_bundle_zip`] on any seekable bytes (the fuzz target feeds it memory).
pub fn check_bundle_archive(
    mut reader: impl std::io::Read + std::io::Seek,
) -> Result<ZipSummary, InvalidInput> {
    let archive_len = reader
        .seek(SeekFrom::End(0))
        .and_then(|len| reader.seek(SeekFrom::Start(0)).map(|_| len))
        .map_err(|e| InvalidInput(format!("cannot read the uploaded file: {e}")))?;
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
    let entries = read_central_directory(&mut archive)?;
    let uncompressed = check_sizes(&entries, archive_len)?;
    let central_start = archive.central_directory_start();
    let mut reader = archive.into_inner();
    // The zip crate keeps one entry per name: duplicates are found in the records themselves.
    let names = read_central_names(&mut reader, central_start)
        .map_err(|e| InvalidInput(format!("the zip's central directory cannot be read: {e}")))?;
    check_unique_paths(&names)?;
    check_local_headers(&mut reader, &entries, archive_len)?;
    let mut archive = zip::ZipArchive::new(reader)
        .map_err(|e| InvalidInput(format!("the bundle is not a valid zip archive ({e})")))?;
    for entry in entries.iter().filter(|e| !e.is_dir) {
        check_inflates_as_declared(&mut archive, entry)?;
    }
    let summary = |top_folder| ZipSummary {
        entries: entries.len(),
        uncompressed_bytes: uncompressed,
        top_folder,
    };
    locate_index(&entries).map(summary)
}

fn read_central_directory<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
) -> Result<Vec<CentralEntry>, InvalidInput> {
    (0..archive.len())
        .map(|index| {
            let entry = archive.by_index_raw(index).map_err(|e| {
                InvalidInput(format!("the zip's entry #{index} cannot be read: {e}"))
            })?;
            let name = entry.name().to_string();
            check_entry_name(&name)?;
            if entry.encrypted() {
                return Err(InvalidInput(format!(
                    "the zip entry {name:?} is password-protected; the plugin cannot unpack it"
                )));
            }
            let method = match entry.compression() {
                zip::CompressionMethod::Stored => 0,
                zip::CompressionMethod::Deflated => 8,
                other => {
                    return Err(InvalidInput(format!(
                        "the zip entry {name:?} is compressed with {other:?}; the plugin unpacks \
                         only stored and deflated entries"
                    )))
                }
            };
            Ok(CentralEntry {
                index,
                raw_name: entry.name_raw().to_vec(),
                header_start: entry.header_start(),
                compressed: entry.compressed_size(),
                size: entry.size(),
                crc32: entry.crc32(),
                method,
                is_dir: entry.is_dir(),
                name,
            })
        })
        .collect()
}

/// The declared sizes: the total cap and the compression ratio, before anything is inflated.
fn check_sizes(entries: &[CentralEntry], archive_len: u64) -> Result<u64, InvalidInput> {
    let mut uncompressed: u64 = 0;
    for entry in entries {
        if entry.size > RATIO_FREE_BYTES
            && entry.size > entry.compressed.saturating_mul(MAX_COMPRESSION_RATIO)
        {
            return Err(InvalidInput(format!(
                "the zip entry {:?} expands from {} to {} bytes, more than {MAX_COMPRESSION_RATIO} \
                 times: refused as a zip bomb",
                entry.name, entry.compressed, entry.size
            )));
        }
        uncompressed = uncompressed.saturating_add(entry.size);
        if uncompressed > MAX_UNCOMPRESSED_BYTES {
            return Err(InvalidInput(format!(
                "the zip expands to more than {MAX_UNCOMPRESSED_BYTES} bytes"
            )));
        }
    }
    if uncompressed > RATIO_FREE_BYTES
        && uncompressed > archive_len.saturating_mul(MAX_COMPRESSION_RATIO)
    {
        return Err(InvalidInput(format!(
            "the zip of {archive_len} bytes expands to {uncompressed}, more than \
             {MAX_COMPRESSION_RATIO} times: refused as a zip bomb"
        )));
    }
    Ok(uncompressed)
}

/// The name of every record of the central directory, in order.
fn read_central_names<R: Read + Seek>(reader: &mut R, start: u64) -> std::io::Result<Vec<String>> {
    const SIGNATURE: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
    reader.seek(SeekFrom::Start(start))?;
    let mut names = Vec::new();
    let mut fixed = [0u8; 46];
    while names.len() <= MAX_ENTRIES {
        if reader.read_exact(&mut fixed).is_err() || fixed[..4] != SIGNATURE {
            break;
        }
        let u16_at = |at: usize| usize::from(u16::from_le_bytes([fixed[at], fixed[at + 1]]));
        let mut name = vec![0u8; u16_at(28)];
        reader.read_exact(&mut name)?;
        reader.seek(SeekFrom::Current((u16_at(30) + u16_at(32)) as i64))?;
        names.push(String::from_utf8_lossy(&name).into_owned());
    }
    Ok(names)
}

/// Each path once, also ignoring case (iOS file systems are case-insensitive, so one of two
/// such files would silently replace the other), and no file where a folder is needed.
fn check_unique_paths(names: &[String]) -> Result<(), InvalidInput> {
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(names.len());
    let mut files = BTreeSet::new();
    for name in names {
        let path = normalized(name).trim_end_matches('/').to_string();
        if path.is_empty() {
            continue;
        }
        if let Some(first) = seen.insert(path.to_lowercase(), name) {
            return Err(InvalidInput(
                if normalized(first).trim_end_matches('/') == path {
                    format!("the zip holds {name:?} twice")
                } else {
                    format!(
                    "the zip holds {first:?} and {name:?}, which differ only in case: on iOS one \
                     would replace the other"
                )
                },
            ));
        }
        if !name.ends_with('/') {
            files.insert(path.to_lowercase());
        }
    }
    for name in names {
        let path = normalized(name).to_lowercase();
        let mut parent = path.trim_end_matches('/');
        while let Some((folder, _)) = parent.rsplit_once('/') {
            if files.contains(folder) {
                return Err(InvalidInput(format!(
                    "the zip entry {name:?} needs a folder where the zip has a file"
                )));
            }
            parent = folder;
        }
    }
    Ok(())
}

/// The local header of every entry says what the central directory says (name, method, and
/// unless they follow in a data descriptor, sizes and CRC), and no entry's data overlaps the
/// next header.
fn check_local_headers<R: Read + Seek>(
    reader: &mut R,
    entries: &[CentralEntry],
    archive_len: u64,
) -> Result<(), InvalidInput> {
    let mut spans = Vec::with_capacity(entries.len());
    for entry in entries {
        let local = LocalHeader::read(reader, entry.header_start).map_err(|e| {
            InvalidInput(format!(
                "the local header of the zip entry {:?} cannot be read: {e}",
                entry.name
            ))
        })?;
        let mismatch = |what: &str| {
            Err(InvalidInput(format!(
                "the zip entry {:?} has a local header whose {what} differs from the central \
                 directory's; such a zip unpacks differently on different devices",
                entry.name
            )))
        };
        if local.raw_name != entry.raw_name {
            return mismatch("name");
        }
        if local.method != entry.method {
            return mismatch("compression method");
        }
        if !local.sizes_follow_data {
            if local.crc32 != entry.crc32 {
                return mismatch("CRC-32");
            }
            if local.compressed != entry.compressed || local.size != entry.size {
                return mismatch("size");
            }
        }
        let data_end = local.data_start.saturating_add(entry.compressed);
        if data_end > archive_len {
            return Err(InvalidInput(format!(
                "the zip entry {:?} runs past the end of the file",
                entry.name
            )));
        }
        spans.push((entry.header_start, data_end, &entry.name));
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, end, name), (next_start, _, next)) = (pair[0], pair[1]);
        if next_start < end {
            return Err(InvalidInput(format!(
                "the zip entries {name:?} and {next:?} overlap: refused as a zip bomb"
            )));
        }
    }
    Ok(())
}

struct LocalHeader {
    raw_name: Vec<u8>,
    method: u16,
    crc32: u32,
    compressed: u64,
    size: u64,
    /// General-purpose flag bit 3: CRC and sizes are in a data descriptor after the data.
    sizes_follow_data: bool,
    data_start: u64,
}

impl LocalHeader {
    const SIGNATURE: u32 = 0x0403_4b50;
    const FIXED_LEN: usize = 30;

    fn read<R: Read + Seek>(reader: &mut R, start: u64) -> std::io::Result<LocalHeader> {
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        reader.seek(SeekFrom::Start(start))?;
        let mut fixed = [0u8; Self::FIXED_LEN];
        reader.read_exact(&mut fixed)?;
        let u16_at = |at: usize| u16::from_le_bytes([fixed[at], fixed[at + 1]]);
        let u32_at = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        if u32_at(0) != Self::SIGNATURE {
            return Err(invalid("no local header signature"));
        }
        let (name_len, extra_len) = (usize::from(u16_at(26)), usize::from(u16_at(28)));
        let mut raw_name = vec![0u8; name_len];
        reader.read_exact(&mut raw_name)?;
        let mut extra = vec![0u8; extra_len];
        reader.read_exact(&mut extra)?;
        let mut compressed = u64::from(u32_at(18));
        let mut size = u64::from(u32_at(22));
        if compressed == u64::from(u32::MAX) || size == u64::from(u32::MAX) {
            // Zip64: both sizes are in the extra field 0x0001, uncompressed first.
            let zip64 = zip64_sizes(&extra).ok_or_else(|| invalid("no zip64 sizes"))?;
            (size, compressed) = zip64;
        }
        Ok(LocalHeader {
            raw_name,
            method: u16_at(8),
            crc32: u32_at(14),
            compressed,
            size,
            sizes_follow_data: u16_at(6) & 0x08 != 0,
            data_start: start + (Self::FIXED_LEN + name_len + extra_len) as u64,
        })
    }
}

fn zip64_sizes(mut extra: &[u8]) -> Option<(u64, u64)> {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        let body = extra.get(4..4 + len)?;
        if id == 0x0001 && body.len() >= 16 {
            let size = u64::from_le_bytes(body[..8].try_into().ok()?);
            let compressed = u64::from_le_bytes(body[8..16].try_into().ok()?);
            return Some((size, compressed));
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Inflates an entry, counting: more bytes than declared, or a CRC that differs, is refused.
fn check_inflates_as_declared<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    entry: &CentralEntry,
) -> Result<(), InvalidInput> {
    let corrupt = |e: &dyn std::fmt::Display| {
        InvalidInput(format!(
            "the zip entry {:?} does not unpack: {e}",
            entry.name
        ))
    };
    let file = archive.by_index(entry.index).map_err(|e| corrupt(&e))?;
    let mut limited = file.take(entry.size.saturating_add(1));
    let inflated = std::io::copy(&mut limited, &mut std::io::sink()).map_err(|e| corrupt(&e))?;
    if inflated != entry.size {
        return Err(InvalidInput(format!(
            "the zip entry {:?} unpacks to {} bytes where the zip declares {}",
            entry.name,
            if inflated > entry.size {
                "more".to_string()
            } else {
                inflated.to_string()
            },
            entry.size
        )));
    }
    // The CRC is checked when the reader reaches the end of the entry.
    let mut file = limited.into_inner();
    let mut rest = [0u8; 1];
    file.read(&mut rest).map_err(|e| corrupt(&e))?;
    Ok(())
}

fn normalized(name: &str) -> String {
    name.replace('\\', "/")
}

/// `index.html` at the root, or in the single top-level folder.
fn locate_index(entries: &[CentralEntry]) -> Result<Option<String>, InvalidInput> {
    let mut files = BTreeSet::new();
    let mut top_level = BTreeSet::new();
    for entry in entries {
        let name = normalized(&entry.name);
        if let Some(first) = name.split('/').find(|p| !p.is_empty()) {
            top_level.insert(first.to_string());
        }
        if !entry.is_dir {
            files.insert(name);
        }
    }
    if files.contains("index.html") {
        return Ok(None);
    }
    if let [single] = top_level.iter().collect::<Vec<_>>()[..] {
        if files.contains(&format!("{single}/index.html")) {
            return Ok(Some(single.to_string()));
        }
    }
    Err(InvalidInput(if top_level.len() > 1 {
        format!(
            "index.html is missing at the zip's root, and the zip has {} top-level entries ({}), \
             so it is not one folder either; zip the contents of your build folder (e.g. dist/)",
            top_level.len(),
            top_level
                .iter()
                .take(5)
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        "index.html is missing: it must be at the zip's root or inside its single top-level folder"
            .to_string()
    }))
}

fn check_entry_name(name: &str) -> Result<(), InvalidInput> {
    let normalized = normalized(name);
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

    fn zip_with(entries: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
        let mut buffer = std::io::Cursor::new(Vec::new());
        let mut writer = zip::ZipWriter::new(&mut buffer);
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, contents) in entries {
            if name.ends_with('/') {
                writer.add_directory(*name, options).unwrap();
            } else {
                writer.start_file(*name, options).unwrap();
                writer.write_all(contents).unwrap();
            }
        }
        writer.finish().unwrap();
        buffer.into_inner()
    }

    fn zip_of(entries: &[&str]) -> Vec<u8> {
        let files: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|n| (*n, &b"<html></html>"[..]))
            .collect();
        zip_with(&files, zip::CompressionMethod::Deflated)
    }

    fn check(bytes: &[u8]) -> Result<ZipSummary, InvalidInput> {
        check_bundle_archive(std::io::Cursor::new(bytes))
    }

    fn refusal(bytes: &[u8]) -> String {
        check(bytes).unwrap_err().0
    }

    /// Replaces every occurrence of `from` (local header and central directory alike).
    fn patch_all(bytes: &mut [u8], from: &[u8], to: &[u8]) {
        assert_eq!(from.len(), to.len());
        let mut found = 0;
        let mut at = 0;
        while let Some(pos) = bytes[at..].windows(from.len()).position(|w| w == from) {
            bytes[at + pos..at + pos + to.len()].copy_from_slice(to);
            at += pos + to.len();
            found += 1;
        }
        assert!(found > 0, "nothing to patch");
    }

    /// Replaces the first occurrence only: the first entry's local header.
    fn patch_first(bytes: &mut [u8], from: &[u8], to: &[u8]) {
        let pos = bytes.windows(from.len()).position(|w| w == from).unwrap();
        bytes[pos..pos + to.len()].copy_from_slice(to);
    }

    /// Offsets of the central directory records, in order.
    fn central_records(bytes: &[u8]) -> Vec<usize> {
        bytes
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == [0x50, 0x4b, 0x01, 0x02])
            .map(|(i, _)| i)
            .collect()
    }

    fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
        bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn index_at_root_or_in_one_folder() {
        let root = zip_of(&["index.html", "assets/app.js"]);
        assert_eq!(check(&root).unwrap().top_folder, None);
        let nested = zip_of(&["dist/", "dist/index.html", "dist/assets/app.js"]);
        assert_eq!(check(&nested).unwrap().top_folder.as_deref(), Some("dist"));
        let stored = zip_with(
            &[("index.html", b"<html/>"), ("a.js", b"1")],
            zip::CompressionMethod::Stored,
        );
        assert_eq!(check(&stored).unwrap().entries, 2);
    }

    #[test]
    fn refuses_what_the_plugin_cannot_install() {
        assert!(refusal(&zip_of(&["app.js"])).contains("index.html"));
        let two_folders = zip_of(&["dist/index.html", "__MACOSX/dist/index.html"]);
        assert!(refusal(&two_folders).contains("top-level"));
        assert!(refusal(&zip_of(&["index.html", "../evil.sh"])).contains(".."));
        assert!(refusal(&zip_of(&["index.html", "/etc/passwd"])).contains("absolute"));
        assert!(refusal(b"this is not a zip").contains("not a valid zip"));
    }

    #[test]
    fn a_local_header_must_name_what_the_central_directory_names() {
        let mut zip = zip_of(&["index.html", "assets/aa.js"]);
        // The local header comes first in the file: only it says `../../../a.j`.
        patch_first(&mut zip, b"assets/aa.js", b"../../../a.j");
        let message = refusal(&zip);
        assert!(
            message.contains("local header") && message.contains("name"),
            "{message}"
        );
    }

    #[test]
    fn a_local_header_must_declare_the_same_sizes() {
        let mut zip = zip_with(
            &[("index.html", b"<html>hello</html>")],
            zip::CompressionMethod::Stored,
        );
        // Local header at 0: the uncompressed size field at 22.
        put_u32(&mut zip, 22, 7);
        let message = refusal(&zip);
        assert!(
            message.contains("local header") && message.contains("size"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_names_are_refused_even_when_they_differ_only_in_case() {
        let mut twice = zip_of(&["index.html", "index.htmX"]);
        patch_all(&mut twice, b"index.htmX", b"index.html");
        assert!(refusal(&twice).contains("twice"), "{}", refusal(&twice));
        let cased = zip_of(&["index.html", "assets/App.js", "assets/app.js"]);
        assert!(
            refusal(&cased).contains("differ only in case"),
            "{}",
            refusal(&cased)
        );
        let file_as_folder = zip_of(&["index.html", "assets", "assets/app.js"]);
        assert!(
            refusal(&file_as_folder).contains("folder"),
            "{}",
            refusal(&file_as_folder)
        );
        // A folder entry and the files in it are fine.
        assert!(check(&zip_of(&["index.html", "assets/", "assets/app.js"])).is_ok());
    }

    #[test]
    fn a_zip_bomb_is_refused_by_its_compression_ratio() {
        let zeros = vec![0u8; 16 << 20];
        let bomb = zip_with(
            &[("index.html", b"<html/>"), ("zeros.bin", &zeros)],
            zip::CompressionMethod::Deflated,
        );
        assert!(bomb.len() < 100_000, "deflate squeezes it: {}", bomb.len());
        let message = refusal(&bomb);
        assert!(message.contains("zip bomb"), "{message}");
        // Ordinary assets, and a small file of zeros, pass.
        let fine = zip_with(
            &[
                ("index.html", b"<html/>"),
                ("zeros.bin", &zeros[..512 << 10]),
            ],
            zip::CompressionMethod::Deflated,
        );
        assert!(check(&fine).is_ok());
    }

    #[test]
    fn an_entry_must_unpack_to_its_declared_size_and_crc() {
        let mut zip = zip_with(
            &[("index.html", b"<html>hello</html>")],
            zip::CompressionMethod::Deflated,
        );
        // Declare 4 bytes in both headers: the data says more.
        put_u32(&mut zip, 22, 4);
        let central = central_records(&zip)[0];
        put_u32(&mut zip, central + 24, 4);
        let message = refusal(&zip);
        assert!(message.contains("unpacks to more"), "{message}");

        let mut corrupted = zip_with(
            &[("index.html", b"<html>hello</html>")],
            zip::CompressionMethod::Stored,
        );
        patch_first(&mut corrupted, b"hello", b"jello");
        let message = refusal(&corrupted);
        assert!(message.contains("does not unpack"), "{message}");
    }

    #[test]
    fn overlapping_entries_are_refused() {
        let mut zip = zip_with(
            &[("index.html", b"<html>0123456789</html>"), ("b.js", b"1")],
            zip::CompressionMethod::Stored,
        );
        // The first entry claims 40 more bytes, in both headers: it now covers b.js's header.
        let len = 23 + 40;
        put_u32(&mut zip, 18, len);
        put_u32(&mut zip, 22, len);
        let central = central_records(&zip)[0];
        put_u32(&mut zip, central + 20, len);
        put_u32(&mut zip, central + 24, len);
        let message = refusal(&zip);
        assert!(message.contains("overlap"), "{message}");
    }
}
