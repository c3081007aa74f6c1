use std::collections::BTreeMap;
use std::fmt;

use super::{ChannelName, Platform, RecordId, ResourceRef, UnixMillis};

/// What identifies a native build: devices send these four in every request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReleaseKey {
    pub platform: Platform,
    pub app_id: String,
    /// Native version name (`versionName` / `CFBundleShortVersionString`); the plugin's
    /// `version_build`.
    pub version_name: String,
    /// Native build number (`versionCode` / `CFBundleVersion`).
    pub version_code: String,
}

impl fmt::Display for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} ({})",
            self.platform, self.app_id, self.version_name, self.version_code
        )
    }
}

/// One native build, its builtin bundle, and the bundle each channel serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub id: RecordId,
    pub key: ReleaseKey,
    /// The bundle shipped inside the store binary.
    pub builtin_bundle_id: RecordId,
    /// The bundle each channel serves. A channel without an entry follows `production`, and
    /// `production` without an entry serves the builtin bundle.
    pub channels: BTreeMap<ChannelName, RecordId>,
    pub release_date: Option<UnixMillis>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// The Kubernetes `Release` this record was made from, if any.
    pub owner: Option<ResourceRef>,
}

impl Release {
    /// The bundle a device on `channel` should run.
    pub fn bundle_for(&self, channel: &ChannelName) -> &RecordId {
        self.channels
            .get(channel)
            .or_else(|| self.channels.get(&ChannelName::default_channel()))
            .unwrap_or(&self.builtin_bundle_id)
    }

    /// Bundles this release refers to, builtin first.
    pub fn referenced_bundles(&self) -> impl Iterator<Item = &RecordId> {
        std::iter::once(&self.builtin_bundle_id).chain(self.channels.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_fall_back_to_production_then_builtin() {
        let builtin = RecordId::generate();
        let prod = RecordId::generate();
        let beta = RecordId::generate();
        let mut release = Release {
            id: RecordId::generate(),
            key: ReleaseKey {
                platform: Platform::Android,
                app_id: "com.example.app".into(),
                version_name: "1.0.0".into(),
                version_code: "1".into(),
            },
            builtin_bundle_id: builtin.clone(),
            channels: BTreeMap::new(),
            release_date: None,
            created_at: 0,
            updated_at: 0,
            owner: None,
        };
        let beta_channel = ChannelName::parse("beta").unwrap();
        assert_eq!(release.bundle_for(&beta_channel), &builtin);
        release
            .channels
            .insert(ChannelName::default_channel(), prod.clone());
        assert_eq!(release.bundle_for(&beta_channel), &prod);
        release.channels.insert(beta_channel.clone(), beta.clone());
        assert_eq!(release.bundle_for(&beta_channel), &beta);
        assert_eq!(release.bundle_for(&ChannelName::default_channel()), &prod);
    }
}
