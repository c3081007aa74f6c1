//! The plugin version a device reports, and the wire differences that depend on it.

use std::cmp::Ordering;

use super::version::Version;

/// `major.minor.patch` of `@capgo/capacitor-updater`; pre-release tags are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PluginVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl PluginVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> PluginVersion {
        PluginVersion {
            major,
            minor,
            patch,
        }
    }

    /// Leniently parses `8.51.14`, `7.0`, `6.14.0-beta.1`, `v5.2.1` (see [`Version::parse`]);
    /// `None` if not a version.
    pub fn parse(value: &str) -> Option<PluginVersion> {
        Version::parse(value).map(|v| PluginVersion::new(v.major, v.minor, v.patch))
    }

    /// Plugins from 5.10.0, 6.25.0 and 7.0.30 verify SHA-256; older ones CRC32 (`%08x`).
    pub fn verifies_sha256(self) -> bool {
        let first_sha256 = match self.major {
            0..=4 => return false,
            5 => PluginVersion::new(5, 10, 0),
            6 => PluginVersion::new(6, 25, 0),
            7 => PluginVersion::new(7, 0, 30),
            _ => return true,
        };
        self.cmp(&first_sha256) != Ordering::Less
    }

    /// Plugins after 8.40.7 are told `key_id_mismatch` when their key differs from the bundle's.
    pub fn checks_key_id(self) -> bool {
        self > PluginVersion::new(8, 40, 7)
    }

    /// Plugins from 5.34.0, 6.34.0, 7.34.0 and all 8.x keep the channel chosen with
    /// `setChannel` themselves; older ones rely on the server to remember it.
    pub fn keeps_channel_locally(self) -> bool {
        self.major >= 8 || self.minor >= 34
    }

    /// Plugins from x.35.0 (5.35, 6.35, 7.35, 8.35 and later majors) read `link` and
    /// `comment` in an update answer, as the official backend sends them.
    pub fn reads_link_and_comment(self) -> bool {
        self.major > 8 || self.minor >= 35
    }

    /// Plugin 4 and older speak a protocol this server does not.
    pub fn is_supported(self) -> bool {
        self.major >= 5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plugin_versions() {
        assert_eq!(
            PluginVersion::parse("8.51.14"),
            Some(PluginVersion::new(8, 51, 14))
        );
        assert_eq!(
            PluginVersion::parse("6.14.0-beta.1"),
            Some(PluginVersion::new(6, 14, 0))
        );
        assert_eq!(
            PluginVersion::parse("7.0"),
            Some(PluginVersion::new(7, 0, 0))
        );
        assert_eq!(PluginVersion::parse("banana"), None);
        assert_eq!(PluginVersion::parse("1.2.3.4"), None);
    }

    #[test]
    fn checksum_thresholds_follow_the_protocol() {
        let sha = |v: &str| PluginVersion::parse(v).unwrap().verifies_sha256();
        assert!(!sha("5.9.5"));
        assert!(sha("5.10.0"));
        assert!(!sha("6.24.9"));
        assert!(sha("6.25.0"));
        assert!(!sha("7.0.29"));
        assert!(sha("7.0.30"));
        assert!(sha("8.0.0"));
        assert!(!sha("4.9.0"));
    }

    #[test]
    fn channel_and_link_thresholds_follow_the_protocol() {
        let v = |v: &str| PluginVersion::parse(v).unwrap();
        assert!(!v("5.33.9").keeps_channel_locally());
        assert!(v("5.34.0").keeps_channel_locally());
        assert!(!v("7.33.0").keeps_channel_locally());
        assert!(v("8.0.0").keeps_channel_locally());
        assert!(!v("6.34.2").reads_link_and_comment());
        assert!(v("6.35.0").reads_link_and_comment());
        assert!(!v("8.34.0").reads_link_and_comment());
        assert!(v("8.51.14").reads_link_and_comment());
    }
}
