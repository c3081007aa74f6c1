use std::fmt;
use std::str::FromStr;

use super::InvalidInput;

/// The native platform of a release, as devices send it in `platform`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Platform {
    Android,
    Ios,
    Electron,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Android => "android",
            Platform::Ios => "ios",
            Platform::Electron => "electron",
        }
    }
}

impl FromStr for Platform {
    type Err = InvalidInput;

    /// Accepts any case and surrounding spaces, as the seed did.
    fn from_str(value: &str) -> Result<Platform, InvalidInput> {
        let name = value.trim();
        [Platform::Android, Platform::Ios, Platform::Electron]
            .into_iter()
            .find(|platform| platform.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                InvalidInput(format!(
                    "unknown platform {value:?}: expected \"ios\", \"android\" or \"electron\""
                ))
            })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_in_any_case_and_unknown_ones_refused() {
        assert_eq!(" Android ".parse::<Platform>().unwrap(), Platform::Android);
        assert_eq!("IOS".parse::<Platform>().unwrap(), Platform::Ios);
        assert_eq!("electron".parse::<Platform>().unwrap(), Platform::Electron);
        for unknown in ["", "web", "androi", "android2", "i os"] {
            let error = unknown.parse::<Platform>().unwrap_err();
            assert!(error.0.contains("expected \"ios\""), "{}", error.0);
        }
    }
}
