use std::fmt;

use super::InvalidInput;

/// The channel devices follow when they have not chosen one.
pub const DEFAULT_CHANNEL: &str = "production";

/// A channel name such as `production` or `beta`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn parse(value: &str) -> Result<ChannelName, InvalidInput> {
        let valid_chars = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if value.is_empty() || value.len() > 64 || !valid_chars {
            return Err(InvalidInput(format!(
                "invalid channel {value:?}: use 1 to 64 letters, digits, '.', '_' or '-'"
            )));
        }
        if value == "builtin" {
            return Err(InvalidInput("\"builtin\" is not a channel name".into()));
        }
        Ok(ChannelName(value.to_string()))
    }

    /// A channel a request may leave out: absent or empty means `production`.
    pub fn parse_or_default(value: Option<&str>) -> Result<ChannelName, InvalidInput> {
        match value.filter(|name| !name.is_empty()) {
            Some(name) => ChannelName::parse(name),
            None => Ok(ChannelName::default_channel()),
        }
    }

    pub fn default_channel() -> ChannelName {
        ChannelName::default_ref().clone()
    }

    /// The default channel, borrowed (the update check takes it without allocating).
    pub fn default_ref() -> &'static ChannelName {
        static DEFAULT: std::sync::LazyLock<ChannelName> =
            std::sync::LazyLock::new(|| ChannelName(DEFAULT_CHANNEL.to_string()));
        &DEFAULT
    }

    pub fn from_stored(value: String) -> ChannelName {
        ChannelName(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_CHANNEL
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A channel of an app as `GET /channel_self` lists it: ids are numeric, as plugins require.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub id: i64,
    pub app_id: String,
    pub name: ChannelName,
}
