//! Lenient `major.minor.patch` versions: what plugins, native builds and bundle names carry.

/// `major.minor.patch`; missing parts are 0, a leading `v` and pre-release or build tags are
/// ignored (`7.0` is 7.0.0, `v6.14.0-beta.1` is 6.14.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// `None` when the text is not a version (`builtin`, `banana`, `1.2.3.4`).
    pub fn parse(value: &str) -> Option<Version> {
        let core = value.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        let patch = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        if parts.next().is_some() {
            return None;
        }
        Some(Version::new(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_leniently() {
        assert_eq!(Version::parse("8.51.14"), Some(Version::new(8, 51, 14)));
        assert_eq!(
            Version::parse("v6.14.0-beta.1"),
            Some(Version::new(6, 14, 0))
        );
        assert_eq!(Version::parse("7.0"), Some(Version::new(7, 0, 0)));
        assert_eq!(Version::parse("2"), Some(Version::new(2, 0, 0)));
        for not_a_version in ["builtin", "", "1.2.3.4", "1.x", "-1"] {
            assert_eq!(Version::parse(not_a_version), None, "{not_a_version}");
        }
        assert!(Version::new(1, 10, 0) > Version::new(1, 9, 9));
    }
}
