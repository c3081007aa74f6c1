//! Channel settings: which devices a channel serves and which bundles it may move them to.
//! Settings belong to an app's channel, not to a release, so every native build of the app
//! follows the same rules. The checks are pure; the update decision ([`super::update::decide`])
//! applies them with what the device reported.

use std::fmt;
use std::str::FromStr;

use super::device::{DeviceRefusal, RefusalKind};
use super::version::Version;
use super::{Bundle, ChannelName, InvalidInput, Platform, ResourceRef, UnixMillis};

/// How far a channel may move a device from its native version (`disable_auto_update` of the
/// official backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpdatePolicy {
    /// Any bundle.
    #[default]
    None,
    /// Not to a bundle of a higher major version than the native build.
    Major,
    /// Only bundles of the native build's major and minor version.
    Minor,
    /// Only bundles of the native build's major, minor and patch version.
    Patch,
    /// Only to devices whose native version is at least the bundle's `min_update_version`.
    VersionNumber,
}

impl UpdatePolicy {
    pub const ALL: [UpdatePolicy; 5] = [
        UpdatePolicy::None,
        UpdatePolicy::Major,
        UpdatePolicy::Minor,
        UpdatePolicy::Patch,
        UpdatePolicy::VersionNumber,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpdatePolicy::None => "none",
            UpdatePolicy::Major => "major",
            UpdatePolicy::Minor => "minor",
            UpdatePolicy::Patch => "patch",
            UpdatePolicy::VersionNumber => "version_number",
        }
    }
}

impl FromStr for UpdatePolicy {
    type Err = InvalidInput;

    fn from_str(value: &str) -> Result<UpdatePolicy, InvalidInput> {
        UpdatePolicy::ALL
            .into_iter()
            .find(|p| p.as_str() == value)
            .ok_or_else(|| {
                InvalidInput(format!(
                    "update_policy {value:?} is not one of none, major, minor, patch, version_number"
                ))
            })
    }
}

impl fmt::Display for UpdatePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one channel of an app allows. [`ChannelRules::default`] allows everything, which is
/// how channels behaved before they had settings (the official backend starts stricter:
/// `major` and "never below native"; we keep existing installations' answers unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRules {
    pub allow_ios: bool,
    pub allow_android: bool,
    pub allow_electron: bool,
    pub allow_emulator: bool,
    /// Physical devices.
    pub allow_device: bool,
    /// Debug builds (`is_prod: false`).
    pub allow_dev_build: bool,
    /// Store builds (`is_prod: true`).
    pub allow_prod_build: bool,
    pub update_policy: UpdatePolicy,
    /// Never offer a bundle whose version is below the device's native version.
    pub block_under_native: bool,
    /// Devices may choose this channel themselves (`setChannel`, `defaultChannel`). The
    /// default channel can always be chosen.
    pub allow_device_self_set: bool,
}

impl Default for ChannelRules {
    fn default() -> ChannelRules {
        ChannelRules {
            allow_ios: true,
            allow_android: true,
            allow_electron: true,
            allow_emulator: true,
            allow_device: true,
            allow_dev_build: true,
            allow_prod_build: true,
            update_policy: UpdatePolicy::None,
            block_under_native: false,
            allow_device_self_set: true,
        }
    }
}

/// The settings of one channel of an app, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelSettings {
    pub app_id: String,
    pub channel: ChannelName,
    pub rules: ChannelRules,
    /// The Kubernetes `Channel` these settings were made from, if any.
    pub owner: Option<ResourceRef>,
    pub updated_at: UnixMillis,
}

impl ChannelSettings {
    /// The settings of a channel nobody configured.
    pub fn defaults(app_id: &str, channel: ChannelName) -> ChannelSettings {
        ChannelSettings {
            app_id: app_id.to_string(),
            channel,
            rules: ChannelRules::default(),
            owner: None,
            updated_at: 0,
        }
    }
}

/// What a device says about itself that channel rules look at. `None` (an old plugin, or a
/// query without the field) passes the check it would decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTraits {
    pub platform: Platform,
    pub is_emulator: Option<bool>,
    pub is_prod: Option<bool>,
}

/// How a device came to be on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelChoice {
    /// Nobody chose: the default channel.
    Default,
    /// Forced by a person or a Kubernetes resource (a device override).
    Forced,
    /// The device chose it: `defaultChannel` in its request, or (old plugins) what the server
    /// remembered from its `setChannel`.
    ByDevice,
}

impl ChannelRules {
    pub fn allows_platform(&self, platform: Platform) -> bool {
        match platform {
            Platform::Ios => self.allow_ios,
            Platform::Android => self.allow_android,
            Platform::Electron => self.allow_electron,
        }
    }

    /// Whether this channel serves a device like `device` at all, and may serve it when it
    /// came by `choice`: the platform, emulator and build checks, then the private-channel
    /// check (a device cannot pick a channel that does not allow it; a forced device can).
    pub fn check_device(
        &self,
        channel: &ChannelName,
        device: DeviceTraits,
        choice: ChannelChoice,
    ) -> Result<(), DeviceRefusal> {
        if !self.allows_platform(device.platform) {
            let error = match device.platform {
                Platform::Ios => "disabled_platform_ios",
                Platform::Android => "disabled_platform_android",
                Platform::Electron => "disabled_platform_electron",
            };
            return Err(blocked(
                error,
                format!(
                    "Channel {channel} does not serve {} devices",
                    device.platform
                ),
            ));
        }
        if choice == ChannelChoice::ByDevice && !channel.is_default() && !self.allow_device_self_set
        {
            return Err(blocked(
                "cannot_update_via_private_channel",
                format!("Channel {channel} cannot be chosen by devices"),
            ));
        }
        match device.is_prod {
            Some(true) if !self.allow_prod_build => {
                return Err(blocked(
                    "disable_prod_build",
                    format!("Channel {channel} does not serve production builds"),
                ))
            }
            Some(false) if !self.allow_dev_build => {
                return Err(blocked(
                    "disable_dev_build",
                    format!("Channel {channel} does not serve development builds"),
                ))
            }
            _ => {}
        }
        match device.is_emulator {
            Some(true) if !self.allow_emulator => Err(blocked(
                "disable_emulator",
                format!("Channel {channel} does not serve emulators"),
            )),
            Some(false) if !self.allow_device => Err(blocked(
                "disable_device",
                format!("Channel {channel} does not serve physical devices"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether a device may pick this channel itself (`setChannel`, and what `listChannels`
    /// shows it).
    pub fn check_self_set(
        &self,
        channel: &ChannelName,
        device: DeviceTraits,
    ) -> Result<(), DeviceRefusal> {
        self.check_device(channel, device, ChannelChoice::ByDevice)
    }

    /// Whether the channel may move a device of native version `native` (its `version_build`)
    /// to `bundle`. Versions that are not `major.minor.patch` (bundle names like `beta-3`)
    /// cannot be compared and pass the version rules. The refusals that ask for a store update
    /// carry the bundle's version, so plugins fire `majorAvailable` / `breakingAvailable`.
    pub fn check_bundle(&self, native: &str, bundle: &Bundle) -> Result<(), DeviceRefusal> {
        let (Some(native_version), bundle_version) =
            (Version::parse(native), Version::parse(&bundle.version_name))
        else {
            return Ok(());
        };
        let name = &bundle.version_name;
        let refusal = match (self.update_policy, bundle_version) {
            (UpdatePolicy::Major, Some(b)) if b.major > native_version.major => Some((
                "disable_auto_update_to_major",
                format!("Cannot upgrade major version: bundle {name} needs a new native build above {native}"),
            )),
            (UpdatePolicy::Minor, Some(b))
                if (b.major, b.minor) != (native_version.major, native_version.minor) =>
            {
                Some((
                    "disable_auto_update_to_minor",
                    format!("Cannot upgrade minor version: bundle {name} is not for native {native}"),
                ))
            }
            (UpdatePolicy::Patch, Some(b)) if b != native_version => Some((
                "disable_auto_update_to_patch",
                format!("Cannot upgrade patch version: bundle {name} is not for native {native}"),
            )),
            (UpdatePolicy::VersionNumber, _) => bundle
                .min_update_version
                .as_deref()
                .and_then(Version::parse)
                .filter(|minimum| *minimum > native_version)
                .map(|minimum| {
                    (
                        "disable_auto_update_to_metadata",
                        format!("Bundle {name} needs native version {minimum} or later, the device has {native}"),
                    )
                }),
            _ => None,
        };
        if let Some((error, message)) = refusal {
            return Err(DeviceRefusal {
                store_update: Some(name.clone()),
                ..blocked(error, message)
            });
        }
        match bundle_version {
            Some(b) if self.block_under_native && b < native_version => Err(blocked(
                "disable_auto_update_under_native",
                format!("Bundle {name} is below the native version {native}"),
            )),
            _ => Ok(()),
        }
    }
}

fn blocked(error: &'static str, message: String) -> DeviceRefusal {
    DeviceRefusal {
        error,
        message,
        kind: RefusalKind::Blocked,
        store_update: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RecordId;

    fn bundle(version: &str, min_update_version: Option<&str>) -> Bundle {
        Bundle {
            id: RecordId::generate(),
            app_id: "com.example.app".into(),
            version_name: version.into(),
            description: String::new(),
            link: None,
            min_update_version: min_update_version.map(str::to_string),
            sha256: "ab".repeat(32),
            crc32: "0badf00d".into(),
            size: 1,
            blob_key: "bundles/x.zip".into(),
            encryption: None,
            created_at: 0,
            owner: None,
        }
    }

    fn rules(update_policy: UpdatePolicy) -> ChannelRules {
        ChannelRules {
            update_policy,
            ..ChannelRules::default()
        }
    }

    fn error_of(result: Result<(), DeviceRefusal>) -> &'static str {
        result.err().map_or("ok", |refusal| refusal.error)
    }

    #[test]
    fn update_policies_compare_with_the_native_version() {
        let cases = [
            (UpdatePolicy::None, "1.2.3", "9.0.0", "ok"),
            (UpdatePolicy::Major, "1.2.3", "1.9.0", "ok"),
            (
                UpdatePolicy::Major,
                "1.2.3",
                "2.0.0",
                "disable_auto_update_to_major",
            ),
            (UpdatePolicy::Major, "2.0.0", "1.0.0", "ok"),
            (UpdatePolicy::Minor, "1.2.3", "1.2.9", "ok"),
            (
                UpdatePolicy::Minor,
                "1.2.3",
                "1.3.0",
                "disable_auto_update_to_minor",
            ),
            (
                UpdatePolicy::Minor,
                "1.2.3",
                "2.2.0",
                "disable_auto_update_to_minor",
            ),
            (UpdatePolicy::Patch, "1.2.3", "1.2.3", "ok"),
            (
                UpdatePolicy::Patch,
                "1.2.3",
                "1.2.4",
                "disable_auto_update_to_patch",
            ),
            // Bundle names that are not versions cannot be judged.
            (UpdatePolicy::Patch, "1.2.3", "beta-3", "ok"),
            (UpdatePolicy::Major, "builtin", "2.0.0", "ok"),
        ];
        for (policy, native, version, expected) in cases {
            let result = rules(policy).check_bundle(native, &bundle(version, None));
            assert_eq!(error_of(result), expected, "{policy} {native} → {version}");
        }
    }

    #[test]
    fn store_update_refusals_name_the_bundle() {
        let refusal = rules(UpdatePolicy::Major)
            .check_bundle("1.0.0", &bundle("2.0.0", None))
            .unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::Blocked);
        let json = serde_json::to_value(&refusal).unwrap();
        assert_eq!(json["major"], true);
        assert_eq!(json["breaking"], true);
        assert_eq!(json["version"], "2.0.0");
    }

    #[test]
    fn version_number_uses_the_bundles_minimum() {
        let policy = rules(UpdatePolicy::VersionNumber);
        let needs_2 = bundle("5.0.0", Some("2.0.0"));
        assert_eq!(
            error_of(policy.check_bundle("1.9.9", &needs_2)),
            "disable_auto_update_to_metadata"
        );
        assert_eq!(error_of(policy.check_bundle("2.0.0", &needs_2)), "ok");
        assert_eq!(
            error_of(policy.check_bundle("1.0.0", &bundle("5.0.0", None))),
            "ok",
            "a bundle without a minimum serves every native version"
        );
    }

    #[test]
    fn never_below_native() {
        let rules = ChannelRules {
            block_under_native: true,
            ..ChannelRules::default()
        };
        assert_eq!(
            error_of(rules.check_bundle("1.2.0", &bundle("1.1.9", None))),
            "disable_auto_update_under_native"
        );
        assert_eq!(
            error_of(rules.check_bundle("1.2.0", &bundle("1.2.0", None))),
            "ok"
        );
        let json = serde_json::to_value(
            rules
                .check_bundle("1.2.0", &bundle("1.0.0", None))
                .unwrap_err(),
        )
        .unwrap();
        assert!(json.get("breaking").is_none(), "not a store update: {json}");
    }

    #[test]
    fn device_checks_follow_platform_build_and_kind() {
        let beta = ChannelName::parse("beta").unwrap();
        let device = |platform, is_emulator, is_prod| DeviceTraits {
            platform,
            is_emulator,
            is_prod,
        };
        let strict = ChannelRules {
            allow_android: false,
            allow_emulator: false,
            allow_dev_build: false,
            allow_device_self_set: false,
            ..ChannelRules::default()
        };
        let check = |d, choice| error_of(strict.check_device(&beta, d, choice));
        let ios_phone = device(Platform::Ios, Some(false), Some(true));
        assert_eq!(check(ios_phone, ChannelChoice::Forced), "ok");
        assert_eq!(
            check(ios_phone, ChannelChoice::ByDevice),
            "cannot_update_via_private_channel"
        );
        assert_eq!(
            check(
                device(Platform::Android, Some(false), Some(true)),
                ChannelChoice::Forced
            ),
            "disabled_platform_android"
        );
        assert_eq!(
            check(
                device(Platform::Ios, Some(true), Some(true)),
                ChannelChoice::Forced
            ),
            "disable_emulator"
        );
        assert_eq!(
            check(
                device(Platform::Ios, Some(false), Some(false)),
                ChannelChoice::Forced
            ),
            "disable_dev_build"
        );
        assert_eq!(
            check(device(Platform::Ios, None, None), ChannelChoice::Forced),
            "ok",
            "unknown traits pass"
        );
        let no_devices = ChannelRules {
            allow_device: false,
            allow_prod_build: false,
            ..ChannelRules::default()
        };
        assert_eq!(
            error_of(no_devices.check_device(&beta, ios_phone, ChannelChoice::Default)),
            "disable_prod_build"
        );
        assert_eq!(
            error_of(no_devices.check_device(
                &beta,
                device(Platform::Ios, Some(false), None),
                ChannelChoice::Default
            )),
            "disable_device"
        );
        let production = ChannelName::default_channel();
        assert_eq!(
            error_of(strict.check_device(&production, ios_phone, ChannelChoice::ByDevice)),
            "ok",
            "the default channel can always be chosen"
        );
    }

    #[test]
    fn policies_round_trip_and_unknown_ones_name_the_field() {
        for policy in UpdatePolicy::ALL {
            assert_eq!(policy.as_str().parse::<UpdatePolicy>(), Ok(policy));
        }
        let error = "sometimes".parse::<UpdatePolicy>().unwrap_err();
        assert!(error.0.contains("update_policy"), "{error}");
    }
}
