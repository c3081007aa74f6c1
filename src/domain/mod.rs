//! Pure types and decisions: no I/O, no runtime. Everything here is unit-testable.

pub mod access;
pub mod bundle;
pub mod channel;
pub mod channel_policy;
pub mod device;
pub mod device_object;
pub mod duration;
pub mod encryption;
pub mod fleet;
pub mod ids;
pub mod manifest;
pub mod names;
pub mod net_policy;
pub mod ownership;
pub mod platform;
pub mod plugin_version;
pub mod release;
pub mod rollout;
pub mod seed;
pub mod sketch;
pub mod stats;
pub mod targeting;
pub mod update;
pub mod version;

pub use bundle::{Bundle, BundleEncryption};
pub use channel::{ChannelName, DEFAULT_CHANNEL};
pub use ids::RecordId;
pub use ownership::{Actor, ResourceRef};
pub use platform::Platform;
pub use plugin_version::PluginVersion;
pub use release::{Release, ReleaseKey, ReleaseRef};

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub type UnixMillis = i64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch as RFC 3339 in UTC (`2026-01-31T09:00:00.123Z`).
pub fn rfc3339(millis: UnixMillis) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(millis) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A name or value that people or devices supplied was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
