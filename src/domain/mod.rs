//! Pure types and decisions: no I/O, no runtime. Everything here is unit-testable.

pub mod bundle;
pub mod channel;
pub mod device;
pub mod ids;
pub mod names;
pub mod ownership;
pub mod platform;
pub mod plugin_version;
pub mod release;
pub mod stats;
pub mod update;

pub use bundle::{Bundle, BundleEncryption};
pub use channel::{ChannelName, DEFAULT_CHANNEL};
pub use ids::RecordId;
pub use ownership::{Actor, ResourceRef};
pub use platform::Platform;
pub use plugin_version::PluginVersion;
pub use release::{Release, ReleaseKey};

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub type UnixMillis = i64;

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A name or value that people or devices supplied was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);
