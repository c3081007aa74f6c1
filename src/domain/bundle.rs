use super::{InvalidInput, PluginVersion, RecordId, ResourceRef, UnixMillis};

/// Where the device API serves the objects the server stores itself (the embedded blob
/// store): `GET /files/<blob key>`.
pub const FILES_ROUTE_PREFIX: &str = "/files/";

/// A zip of web assets for one app, under a version name devices will report once they run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub id: RecordId,
    pub app_id: String,
    pub version_name: String,
    /// Shown to people, and sent to devices as `comment` (plugins x.35+).
    pub description: String,
    /// A link about the bundle (release notes), sent to devices as `link` (plugins x.35+).
    pub link: Option<String>,
    /// The lowest native version this bundle runs on, for channels whose update policy is
    /// `version_number`.
    pub min_update_version: Option<String>,
    /// SHA-256 of the stored bytes, lowercase hex: guards our own storage and is what devices
    /// verify for unencrypted bundles.
    pub sha256: String,
    /// CRC32 of the stored bytes, `%08x`: what plugins older than SHA-256 support verify.
    pub crc32: String,
    pub size: u64,
    /// Where the bytes live in the blob store.
    pub blob_key: String,
    pub encryption: Option<BundleEncryption>,
    pub created_at: UnixMillis,
    /// The Kubernetes `Bundle` this record was made from, if any.
    pub owner: Option<ResourceRef>,
}

impl Bundle {
    /// A new blob key for a bundle: one object per bundle, so deleting a bundle never has to
    /// ask whether another record shares its bytes. Record ids are predictable (time, process,
    /// counter) and `/files/<key>` needs nothing else, so the key carries 128 random bits:
    /// only those given the URL (devices the bundle is served to, management callers) find it.
    pub fn blob_key_for(id: &RecordId) -> String {
        format!("bundles/{id}-{}.zip", super::ids::random_hex::<16>())
    }

    /// The checksum a device of this plugin version verifies after download.
    pub fn checksum_for(&self, plugin: Option<PluginVersion>) -> &str {
        match &self.encryption {
            Some(encryption) => &encryption.checksum,
            None if plugin.is_some_and(|v| !v.verifies_sha256()) => &self.crc32,
            None => &self.sha256,
        }
    }

    pub fn session_key(&self) -> &str {
        self.encryption
            .as_ref()
            .map_or("", |e| e.session_key.as_str())
    }

    pub fn key_id(&self) -> Option<&str> {
        self.encryption.as_ref().and_then(|e| e.key_id.as_deref())
    }
}

/// What the Capgo CLI's `bundle encrypt` produced for an encrypted bundle; served as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEncryption {
    /// `base64(IV):base64(RSA-encrypted AES key)`.
    pub session_key: String,
    /// The encrypted checksum (512 hex characters for "V3", base64 for legacy "V2").
    pub checksum: String,
    /// First 20 characters of the public key's PEM body, when the uploader gave it.
    pub key_id: Option<String>,
}

impl BundleEncryption {
    pub fn new(
        session_key: String,
        checksum: Option<String>,
        key_id: Option<String>,
    ) -> Result<BundleEncryption, InvalidInput> {
        let (iv, key) = session_key.split_once(':').ok_or_else(|| {
            InvalidInput(
                "session_key must be `base64(IV):base64(encrypted key)` as `bundle encrypt` prints it"
                    .into(),
            )
        })?;
        if !is_base64(iv) || !is_base64(key) {
            return Err(InvalidInput("session_key parts must be base64".into()));
        }
        let checksum = checksum.filter(|c| !c.is_empty()).ok_or_else(|| {
            InvalidInput(
                "an encrypted bundle (session_key given) needs its encrypted checksum in `checksum`: \
                 devices with a public key refuse bundles without one"
                    .into(),
            )
        })?;
        // RSA-2048 output is 256 bytes: 512 hex characters ("V3") or 344 base64 ones ("V2").
        let is_hex = checksum.bytes().all(|b| b.is_ascii_hexdigit());
        if !(is_hex && checksum.len() == 512 || is_base64(&checksum) && checksum.len() == 344) {
            return Err(InvalidInput(
                "checksum must be the encrypted checksum: 512 hex characters (or base64 for legacy plugins)"
                    .into(),
            ));
        }
        if let Some(key_id) = &key_id {
            if key_id.is_empty() || key_id.len() > 20 {
                return Err(InvalidInput("key_id must be 1 to 20 characters".into()));
            }
        }
        Ok(BundleEncryption {
            session_key,
            checksum,
            key_id,
        })
    }
}

/// What may change on a stored bundle: what people and devices read about it. Its bytes, app,
/// version name and checksums never change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BundleDetails {
    pub description: String,
    pub link: Option<String>,
    pub min_update_version: Option<String>,
}

/// Longest bundle description.
pub const MAX_DESCRIPTION: usize = 4096;

impl BundleDetails {
    /// The one check of every path that sets them (uploads, resources, updates).
    pub fn check(&self) -> Result<(), InvalidInput> {
        if self.description.len() > MAX_DESCRIPTION {
            return Err(InvalidInput(format!(
                "description is longer than {MAX_DESCRIPTION} characters"
            )));
        }
        if let Some(link) = &self.link {
            check_link(link)?;
        }
        if let Some(minimum) = &self.min_update_version {
            check_min_update_version(minimum)?;
        }
        Ok(())
    }
}

impl Bundle {
    pub fn details(&self) -> BundleDetails {
        BundleDetails {
            description: self.description.clone(),
            link: self.link.clone(),
            min_update_version: self.min_update_version.clone(),
        }
    }
}

/// Longest bundle link.
const MAX_LINK_LEN: usize = 512;

/// A bundle's link: an absolute `http(s)` URL, as devices open it.
pub fn check_link(value: &str) -> Result<(), InvalidInput> {
    let parsed = url::Url::parse(value).ok();
    let absolute_http = parsed
        .as_ref()
        .is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if value.len() > MAX_LINK_LEN || !absolute_http {
        return Err(InvalidInput(format!(
            "link must be an absolute http(s) URL of at most {MAX_LINK_LEN} characters"
        )));
    }
    Ok(())
}

/// A bundle's minimum native version: `major.minor.patch`.
pub fn check_min_update_version(value: &str) -> Result<(), InvalidInput> {
    match super::version::Version::parse(value) {
        Some(_) if value.len() <= 64 => Ok(()),
        _ => Err(InvalidInput(format!(
            "min_update_version {value:?} is not a version (major.minor.patch)"
        ))),
    }
}

/// The folder of the server's own bundle objects (see [`Bundle::blob_key_for`]).
const BUNDLES_PREFIX: &str = "bundles/";

/// BUNDLE_IMPORT_PREFIX: a folder of the bucket, not the server's own `bundles/`.
pub fn check_import_prefix(prefix: &str) -> Result<(), InvalidInput> {
    let valid = prefix.len() > 1
        && prefix.ends_with('/')
        && !prefix.starts_with('/')
        && prefix
            .trim_end_matches('/')
            .split('/')
            .all(is_plain_key_part)
        && !prefix.starts_with(BUNDLES_PREFIX)
        && !BUNDLES_PREFIX.starts_with(prefix);
    if valid {
        Ok(())
    } else {
        Err(InvalidInput(format!(
            "expected a folder of the bucket such as `imports/` (ending in `/`, outside the server's own `{BUNDLES_PREFIX}`)"
        )))
    }
}

/// A `Bundle` resource's `source.bucketKey`: an object below the import prefix. Anything else
/// in the bucket (other apps' stored bundles above all) is not for a resource to copy.
pub fn check_import_key(key: &str, prefix: &str) -> Result<(), InvalidInput> {
    let inside = key
        .strip_prefix(prefix)
        .is_some_and(|rest| !rest.is_empty() && rest.split('/').all(is_plain_key_part));
    if inside {
        Ok(())
    } else {
        Err(InvalidInput(format!(
            "source.bucketKey {key:?} must name an object below {prefix:?} (BUNDLE_IMPORT_PREFIX), \
             without `.` or `..` parts"
        )))
    }
}

fn is_plain_key_part(part: &str) -> bool {
    !part.is_empty() && part != "." && part != ".." && !part.contains('\\')
}

fn is_base64(value: &str) -> bool {
    let body = value.trim_end_matches('=');
    !body.is_empty()
        && value.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(encryption: Option<BundleEncryption>) -> Bundle {
        Bundle {
            id: RecordId::generate(),
            app_id: "com.example.app".into(),
            version_name: "1.0.1".into(),
            description: String::new(),
            link: None,
            min_update_version: None,
            sha256: "a".repeat(64),
            crc32: "0badf00d".into(),
            size: 10,
            blob_key: "bundles/x.zip".into(),
            encryption,
            created_at: 0,
            owner: None,
        }
    }

    #[test]
    fn checksum_depends_on_plugin_and_encryption() {
        let plain = bundle(None);
        assert_eq!(
            plain.checksum_for(PluginVersion::parse("6.14.0")),
            "0badf00d"
        );
        assert_eq!(
            plain.checksum_for(PluginVersion::parse("8.0.0")),
            "a".repeat(64)
        );
        assert_eq!(plain.checksum_for(None), "a".repeat(64));
        let enc = BundleEncryption::new("aXY=:a2V5".into(), Some("f".repeat(512)), None).unwrap();
        let encrypted = bundle(Some(enc));
        assert_eq!(
            encrypted.checksum_for(PluginVersion::parse("6.14.0")),
            "f".repeat(512)
        );
        assert_eq!(encrypted.session_key(), "aXY=:a2V5");
    }

    #[test]
    fn blob_keys_cannot_be_derived_from_the_id() {
        let id = RecordId::generate();
        let (first, second) = (Bundle::blob_key_for(&id), Bundle::blob_key_for(&id));
        assert_ne!(first, second);
        let secret = first
            .strip_prefix(&format!("bundles/{id}-"))
            .and_then(|rest| rest.strip_suffix(".zip"))
            .unwrap();
        assert_eq!(secret.len(), 32);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn imports_stay_below_their_prefix() {
        assert!(check_import_key("imports/web-1.0.0.zip", "imports/").is_ok());
        assert!(check_import_key("imports/ci/web.zip", "imports/").is_ok());
        for key in [
            "bundles/65f0c1f2e4b0a1b2c3d4e5f6.zip",
            "imports/../bundles/x.zip",
            "imports/",
            "imports//x.zip",
            "importsx/a.zip",
            "/imports/a.zip",
        ] {
            assert!(check_import_key(key, "imports/").is_err(), "{key}");
        }
        assert!(check_import_prefix("imports/").is_ok());
        assert!(check_import_prefix("ci/uploads/").is_ok());
        for prefix in [
            "",
            "/",
            "bundles/",
            "bundles/x/",
            "b",
            "imports",
            "../x/",
            "/imports/",
        ] {
            assert!(check_import_prefix(prefix).is_err(), "{prefix}");
        }
    }

    #[test]
    fn encryption_metadata_is_checked() {
        assert!(BundleEncryption::new("nocolon".into(), Some("f".repeat(512)), None).is_err());
        assert!(BundleEncryption::new("aXY=:a2V5".into(), None, None).is_err());
        assert!(BundleEncryption::new("aXY=:a2V5".into(), Some("zz".into()), None).is_err());
        assert!(BundleEncryption::new(
            "aXY=:a2V5".into(),
            Some("f".repeat(512)),
            Some("x".repeat(21))
        )
        .is_err());
    }
}
