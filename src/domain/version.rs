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
        // Byte by byte: plugins send their version on every check.
        let text = value.trim().trim_start_matches('v').as_bytes();
        let core_len = text
            .iter()
            .position(|&b| b == b'-' || b == b'+')
            .unwrap_or(text.len());
        let mut numbers = [0u32; 3];
        let mut parts = text[..core_len].split(|&b| b == b'.');
        for (index, number) in numbers.iter_mut().enumerate() {
            match parts.next() {
                Some(part) => *number = decimal(part)?,
                None if index > 0 => break,
                None => return None,
            }
        }
        if parts.next().is_some() {
            return None;
        }
        let [major, minor, patch] = numbers;
        Some(Version::new(major, minor, patch))
    }
}

/// Digits only (no sign, not empty) that fit a `u32`.
fn decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |value, &digit| {
        if !digit.is_ascii_digit() {
            return None;
        }
        value.checked_mul(10)?.checked_add(u32::from(digit - b'0'))
    })
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
        assert_eq!(
            Version::parse(" 1.2.3+build.5 "),
            Some(Version::new(1, 2, 3))
        );
        assert_eq!(
            Version::parse("4294967295.0.1"),
            Some(Version::new(u32::MAX, 0, 1))
        );
        for not_a_version in [
            "builtin",
            "",
            "v",
            "1.2.3.4",
            "1.x",
            "-1",
            "1..2",
            "1.2.",
            ".1",
            "+1",
            "1.+2",
            "4294967296",
            "１.2.3",
        ] {
            assert_eq!(Version::parse(not_a_version), None, "{not_a_version}");
        }
        assert!(Version::new(1, 10, 0) > Version::new(1, 9, 9));
    }
}
