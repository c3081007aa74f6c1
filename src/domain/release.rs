use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

use super::{ChannelName, Platform, RecordId, ResourceRef, UnixMillis};

/// What identifies a native build: devices send these four in every request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReleaseKey {
    pub platform: Platform,
    pub app_id: String,
    /// Native version name (`versionName` / `CFBundleShortVersionString`); the plugin's
    /// `version_build`.
    pub version_name: String,
    /// Native build number (`versionCode` / `CFBundleVersion`).
    pub version_code: String,
}

#[cfg(test)]
impl ReleaseKey {
    /// android 1.0.0 (1) of `com.example.app`, for unit tests.
    pub(crate) fn example() -> ReleaseKey {
        ReleaseKey {
            platform: Platform::Android,
            app_id: "com.example.app".into(),
            version_name: "1.0.0".into(),
            version_code: "1".into(),
        }
    }
}

impl ReleaseKey {
    pub fn as_ref(&self) -> ReleaseRef<'_> {
        ReleaseRef {
            platform: self.platform,
            app_id: &self.app_id,
            version_name: &self.version_name,
            version_code: &self.version_code,
        }
    }
}

/// A [`ReleaseKey`]'s hash is its [`ReleaseRef`]'s: the answer cache finds an entry stored under
/// a key with the parts a device sent (`catalog::target_cache`'s `KeyParts`).
impl Hash for ReleaseKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl fmt::Display for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

/// A [`ReleaseKey`] borrowed from where its parts are, such as a device's request body: a check
/// that the caches answer reads its build without copying the four parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReleaseRef<'a> {
    pub platform: Platform,
    pub app_id: &'a str,
    pub version_name: &'a str,
    pub version_code: &'a str,
}

impl ReleaseRef<'_> {
    pub fn to_key(self) -> ReleaseKey {
        ReleaseKey {
            platform: self.platform,
            app_id: self.app_id.to_string(),
            version_name: self.version_name.to_string(),
            version_code: self.version_code.to_string(),
        }
    }
}

impl PartialEq<ReleaseKey> for ReleaseRef<'_> {
    fn eq(&self, other: &ReleaseKey) -> bool {
        *self == other.as_ref()
    }
}

impl fmt::Display for ReleaseRef<'_> {
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
    /// The bundles people assigned to channels. What a channel *serves* is
    /// [`Release::bundle_for`]: a channel without an entry follows `production`, and
    /// `production` without an entry serves the builtin bundle.
    pub channels: BTreeMap<ChannelName, RecordId>,
    /// When each entry of `channels` was last pointed at another bundle (the promote), kept
    /// by the stores ([`Release::stamp_assignments`]); absent for assignments recorded before
    /// the time was kept.
    pub assigned_at: BTreeMap<ChannelName, UnixMillis>,
    pub release_date: Option<UnixMillis>,
    pub created_at: UnixMillis,
    pub updated_at: UnixMillis,
    /// The Kubernetes `Release` this record was made from, if any.
    pub owner: Option<ResourceRef>,
}

/// Why a channel serves the bundle it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedBecause {
    /// The channel has a bundle of its own.
    Assigned,
    /// The channel has none and follows `production`.
    FollowsProduction,
    /// Neither the channel nor `production` has one: the bundle inside the binary.
    Builtin,
}

impl ServedBecause {
    pub fn as_str(self) -> &'static str {
        match self {
            ServedBecause::Assigned => "assigned",
            ServedBecause::FollowsProduction => "production",
            ServedBecause::Builtin => "builtin",
        }
    }
}

/// What one channel of a release serves, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelServing<'a> {
    pub bundle_id: &'a RecordId,
    pub because: ServedBecause,
    /// Since when the channel serves it, when known (not for the builtin bundle).
    pub since: Option<UnixMillis>,
}

impl Release {
    /// The one rule for what a device on `channel` gets: the channel's own bundle, else what
    /// `production` has, else the builtin bundle.
    pub fn serving(&self, channel: &ChannelName) -> ChannelServing<'_> {
        if let Some(bundle_id) = self.channels.get(channel) {
            return ChannelServing {
                bundle_id,
                because: ServedBecause::Assigned,
                since: self.assigned_at.get(channel).copied(),
            };
        }
        let production = ChannelName::default_channel();
        match self.channels.get(&production) {
            Some(bundle_id) => ChannelServing {
                bundle_id,
                because: ServedBecause::FollowsProduction,
                since: self.assigned_at.get(&production).copied(),
            },
            None => ChannelServing {
                bundle_id: &self.builtin_bundle_id,
                because: ServedBecause::Builtin,
                since: None,
            },
        }
    }

    /// The bundle a device on `channel` should run.
    pub fn bundle_for(&self, channel: &ChannelName) -> &RecordId {
        self.serving(channel).bundle_id
    }

    /// The bundle assigned to `production` (the seed's `active_bundle_id`), if any.
    pub fn production_bundle(&self) -> Option<&RecordId> {
        self.channels.get(&ChannelName::default_channel())
    }

    /// What every channel people see serves: each assigned channel, and `production` always.
    pub fn serving_by_channel(&self) -> BTreeMap<ChannelName, ChannelServing<'_>> {
        std::iter::once(ChannelName::default_channel())
            .chain(self.channels.keys().cloned())
            .map(|channel| {
                let serving = self.serving(&channel);
                (channel, serving)
            })
            .collect()
    }

    /// Keeps `assigned_at` true after `channels` changed from `before`: an assignment that is
    /// new or names another bundle is stamped `at`, the others keep their time, and removed
    /// ones lose it ([`assignment_time`], which the SQLite store applies row by row).
    pub fn stamp_assignments(&mut self, before: &BTreeMap<ChannelName, RecordId>, at: UnixMillis) {
        let mut assigned_at = BTreeMap::new();
        for (channel, bundle) in &self.channels {
            let previous = before
                .get(channel)
                .map(|b| (b, self.assigned_at.get(channel).copied()));
            if let Some(since) = assignment_time(previous, bundle, at) {
                assigned_at.insert(channel.clone(), since);
            }
        }
        self.assigned_at = assigned_at;
    }

    /// Bundles this release refers to (so they cannot be deleted), builtin first.
    pub fn referenced_bundles(&self) -> impl Iterator<Item = &RecordId> {
        std::iter::once(&self.builtin_bundle_id).chain(self.channels.values())
    }

    pub fn refers_to(&self, bundle_id: &RecordId) -> bool {
        self.referenced_bundles().any(|id| id == bundle_id)
    }
}

/// When a channel that was assigned `previous` (its bundle and time) and is now assigned
/// `bundle` at `at` counts as assigned: `at` for a new or another bundle, else the time it
/// had (`None` stays `None`: rewriting the same bundle is no promote).
pub fn assignment_time(
    previous: Option<(&RecordId, Option<UnixMillis>)>,
    bundle: &RecordId,
    at: UnixMillis,
) -> Option<UnixMillis> {
    match previous {
        Some((was, since)) if was == bundle => since,
        _ => Some(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release_of(builtin: RecordId) -> Release {
        Release {
            id: RecordId::generate(),
            key: ReleaseKey::example(),
            builtin_bundle_id: builtin,
            channels: BTreeMap::new(),
            assigned_at: BTreeMap::new(),
            release_date: None,
            created_at: 0,
            updated_at: 0,
            owner: None,
        }
    }

    #[test]
    fn channels_fall_back_to_production_then_builtin() {
        let builtin = RecordId::generate();
        let prod = RecordId::generate();
        let beta = RecordId::generate();
        let mut release = release_of(builtin.clone());
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

    #[test]
    fn a_channel_is_stamped_when_it_is_pointed_at_another_bundle() {
        let (one, two) = (RecordId::generate(), RecordId::generate());
        let production = ChannelName::default_channel();
        let beta = ChannelName::parse("beta").unwrap();
        let mut release = release_of(RecordId::generate());
        assert_eq!(release.serving(&beta).since, None);
        let before = release.channels.clone();
        release.channels.insert(production.clone(), one.clone());
        release.stamp_assignments(&before, 10);
        // beta follows production, so it serves `one` since production does.
        assert_eq!(release.serving(&beta).since, Some(10));
        let before = release.channels.clone();
        release.channels.insert(beta.clone(), two.clone());
        release.stamp_assignments(&before, 20);
        assert_eq!(release.serving(&production).since, Some(10));
        assert_eq!(release.serving(&beta).since, Some(20));
        // Writing the same bundle again is no promote; another bundle is.
        let before = release.channels.clone();
        release.channels.insert(beta.clone(), two);
        release
            .channels
            .insert(production.clone(), RecordId::generate());
        release.stamp_assignments(&before, 30);
        assert_eq!(release.serving(&beta).since, Some(20));
        assert_eq!(release.serving(&production).since, Some(30));
        let before = release.channels.clone();
        release.channels.remove(&beta);
        release.stamp_assignments(&before, 40);
        assert_eq!(release.assigned_at.get(&beta), None);
        assert_eq!(release.serving(&beta).since, Some(30));
    }
}
