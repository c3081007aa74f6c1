//! Which channel a device is on when it is not its own choice: overrides that force devices
//! onto a channel, the choices old plugins ask the server to remember, and the native builds
//! devices run that have no release yet.

use std::fmt;

use super::{ChannelName, InvalidInput, ReleaseKey, ResourceRef, UnixMillis};

/// Most device ids one override request names.
pub const MAX_DEVICES_PER_REQUEST: usize = 1000;

/// Who put a device on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideSource {
    /// A person or script through the management API or the UI: forced.
    Api,
    /// A Kubernetes `Channel` resource: forced, changed only through that resource.
    Resource(ResourceRef),
    /// The device itself, through `setChannel` of a plugin that keeps no channel of its own
    /// (before 5.34 / 6.34 / 7.34). Replaced by its next choice, cleared by its `unsetChannel`.
    Device,
}

impl OverrideSource {
    /// Forced overrides win over the device's own choice, and the device cannot change them.
    pub fn is_forced(&self) -> bool {
        !matches!(self, OverrideSource::Device)
    }

    /// How it is stored: `api`, `device` or the resource's `Kind/namespace/name`.
    pub fn to_stored(&self) -> String {
        match self {
            OverrideSource::Api => "api".into(),
            OverrideSource::Device => "device".into(),
            OverrideSource::Resource(resource) => resource.to_stored(),
        }
    }

    pub fn from_stored(value: &str) -> Option<OverrideSource> {
        match value {
            "api" => Some(OverrideSource::Api),
            "device" => Some(OverrideSource::Device),
            other => ResourceRef::from_stored(other).map(OverrideSource::Resource),
        }
    }
}

impl fmt::Display for OverrideSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverrideSource::Api => f.write_str("the API"),
            OverrideSource::Device => f.write_str("the device"),
            OverrideSource::Resource(resource) => write!(f, "{resource}"),
        }
    }
}

/// One device of an app put on a channel. One record per device that has one (never one per
/// check), keyed by (app, device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOverride {
    pub app_id: String,
    pub device_id: String,
    pub channel: ChannelName,
    pub source: OverrideSource,
    pub updated_at: UnixMillis,
}

/// A device id as people type it: 1 to 36 characters, compared lowercased as devices send it.
pub fn parse_device_id(value: &str) -> Result<String, InvalidInput> {
    let value = value.trim();
    let valid = !value.is_empty()
        && value.len() <= super::stats::MAX_DEVICE_ID_LEN
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(InvalidInput(format!(
            "device id {value:?} must be 1 to 36 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(value.to_ascii_lowercase())
}

/// A native build devices check in with that has no release: counted, not stored per check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnregisteredBuild {
    pub key: ReleaseKey,
    /// Distinct devices seen asking, as a lower bound: each server counts the devices it saw
    /// since it started (up to [`MAX_DEVICES_COUNTED`]) and the store keeps the largest count.
    pub devices: u64,
    /// Update checks seen.
    pub checks: u64,
    pub first_seen: UnixMillis,
    pub last_seen: UnixMillis,
}

/// Distinct devices a server counts per unregistered build (memory bound).
pub const MAX_DEVICES_COUNTED: usize = 10_000;
/// Unregistered builds kept (per store, oldest seen dropped first).
pub const MAX_UNREGISTERED_BUILDS: usize = 1_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_round_trip() {
        for source in [
            OverrideSource::Api,
            OverrideSource::Device,
            OverrideSource::Resource(ResourceRef::new("Channel", "apps", "beta")),
        ] {
            assert_eq!(
                OverrideSource::from_stored(&source.to_stored()),
                Some(source.clone())
            );
            assert_eq!(source.is_forced(), source != OverrideSource::Device);
        }
    }

    #[test]
    fn device_ids_are_lowercased_and_bounded() {
        assert_eq!(
            parse_device_id(" 9B1DEB4D-3B7D-4BAD-9BDD-2B0D7B3DCB6D ").unwrap(),
            "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
        );
        assert!(parse_device_id("").is_err());
        assert!(parse_device_id(&"a".repeat(37)).is_err());
        assert!(parse_device_id("a b").is_err());
    }
}
