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
        match value.trim().to_ascii_lowercase().as_str() {
            "android" => Ok(Platform::Android),
            "ios" => Ok(Platform::Ios),
            "electron" => Ok(Platform::Electron),
            _ => Err(InvalidInput(format!(
                "unknown platform {value:?}: expected \"ios\", \"android\" or \"electron\""
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
