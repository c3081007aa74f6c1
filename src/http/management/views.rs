//! Response shapes: the seed's fields first (so its scripts and UI keep working), then ours.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::catalog::{Catalog, CatalogError, ChannelOverview, DeviceLookup};
use crate::domain::channel_policy::ChannelRules;
use crate::domain::duration::format_go_duration;
use crate::domain::rollout::{Rollout, RolloutPhase};
use crate::domain::targeting::{DeviceOverride, UnregisteredBuild};
use crate::domain::{rfc3339, Bundle, Release};

#[derive(Serialize)]
pub struct BundleView {
    pub id: String,
    pub app_id: String,
    pub version_name: String,
    pub description: String,
    /// A link about the bundle (release notes) sent to devices with it, or `null`.
    pub link: Option<String>,
    /// The lowest native version devices need for it on `version_number` channels, or `null`.
    pub min_update_version: Option<String>,
    pub crc_checksum: String,
    pub public_download_url: String,
    pub created_at: String,
    /// SHA-256 of the stored bytes.
    pub sha256: String,
    /// What devices verify: the SHA-256, or the encrypted checksum for encrypted bundles.
    pub checksum: String,
    pub size: u64,
    pub encrypted: bool,
    pub session_key: String,
    pub key_id: Option<String>,
    /// The Kubernetes resource managing this record (`Bundle ns/name`), `null` when made
    /// through the API; owned records can only be changed through their resource.
    pub owner: Option<String>,
    /// The releases that refer to this bundle (so it cannot be deleted), and which of their
    /// channels serve it.
    pub used_by: Vec<BundleUser>,
}

/// A release that refers to a bundle.
#[derive(Serialize)]
pub struct BundleUser {
    pub release_id: String,
    pub platform: String,
    pub version_name: String,
    pub version_code: String,
    /// Whether it is the release's builtin bundle.
    pub builtin: bool,
    /// The channels whose devices get this bundle now.
    pub serving: Vec<String>,
}

impl BundleUser {
    /// Every release of `releases` that refers to `bundle`.
    pub fn of(bundle: &Bundle, releases: &[Release]) -> Vec<BundleUser> {
        releases
            .iter()
            .filter(|release| release.refers_to(&bundle.id))
            .map(|release| BundleUser {
                release_id: release.id.to_string(),
                platform: release.key.platform.to_string(),
                version_name: release.key.version_name.clone(),
                version_code: release.key.version_code.clone(),
                builtin: release.builtin_bundle_id == bundle.id,
                serving: release
                    .serving_by_channel()
                    .into_iter()
                    .filter(|(_, serving)| serving.bundle_id == &bundle.id)
                    .map(|(channel, _)| channel.to_string())
                    .collect(),
            })
            .collect()
    }
}

impl BundleView {
    /// The view of `bundle`, with the URL devices download it from and the releases (of
    /// `releases`) that use it.
    pub async fn new(
        bundle: &Bundle,
        releases: &[Release],
        catalog: &Catalog,
    ) -> Result<BundleView, CatalogError> {
        Ok(BundleView {
            id: bundle.id.to_string(),
            app_id: bundle.app_id.clone(),
            version_name: bundle.version_name.clone(),
            description: bundle.description.clone(),
            link: bundle.link.clone(),
            min_update_version: bundle.min_update_version.clone(),
            crc_checksum: bundle.crc32.clone(),
            public_download_url: catalog.download_url(bundle).await?,
            created_at: rfc3339(bundle.created_at),
            sha256: bundle.sha256.clone(),
            checksum: bundle.checksum_for(None).to_string(),
            size: bundle.size,
            encrypted: bundle.encryption.is_some(),
            session_key: bundle.session_key().to_string(),
            key_id: bundle.key_id().map(str::to_string),
            owner: bundle.owner.as_ref().map(ToString::to_string),
            used_by: BundleUser::of(bundle, releases),
        })
    }
}

/// What one channel serves: `because` is `assigned` (its own bundle), `production` (it
/// follows production) or `builtin` (nothing assigned: the bundle inside the binary);
/// `since` is when the channel (or production) was pointed at it, when known.
#[derive(Serialize)]
pub struct ServingView {
    pub bundle_id: String,
    pub because: &'static str,
    pub since: Option<String>,
}

#[derive(Serialize)]
pub struct ReleaseView {
    pub id: String,
    pub app_id: String,
    pub platform: String,
    pub version_name: String,
    pub version_code: String,
    pub release_date: Option<String>,
    pub builtin_bundle_id: String,
    /// The bundle the `production` channel serves; `null` when it serves the builtin bundle
    /// because none was set (as in the seed).
    pub active_bundle_id: Option<String>,
    pub updated_at: String,
    pub created_at: String,
    /// Every channel set on this release, by name.
    pub channels: BTreeMap<String, String>,
    /// What devices of each channel get, and why: every assigned channel and `production`.
    pub serving: BTreeMap<String, ServingView>,
    /// The Kubernetes resource managing this record (`Release ns/name`), or `null`.
    pub owner: Option<String>,
    /// The rollout of each channel that has one (active, or the last finished one).
    pub rollouts: BTreeMap<String, RolloutView>,
}

impl ReleaseView {
    /// The view with the rollouts of this release among `rollouts`.
    pub fn with_rollouts(release: &Release, rollouts: &[Rollout]) -> ReleaseView {
        let mut view = ReleaseView::from(release);
        view.rollouts = rollouts
            .iter()
            .filter(|r| r.release_id == release.id)
            .map(|r| (r.channel.to_string(), RolloutView::from(r)))
            .collect();
        view
    }
}

/// A staged rollout, with the names `rollouts.start` takes.
#[derive(Serialize)]
pub struct RolloutView {
    pub id: String,
    pub release_id: String,
    pub app_id: String,
    pub channel: String,
    pub stable_bundle_id: String,
    pub canary_bundle_id: String,
    /// `progressing`, `paused`, `rolled_back` or `done`.
    pub phase: &'static str,
    /// Why it rolled back (the health numbers, or who aborted it).
    pub reason: Option<String>,
    /// The plan's steps, in percent.
    pub steps: Vec<f64>,
    /// Index into `steps` of the current step.
    pub step: usize,
    /// The share of devices getting the canary now, in percent.
    pub percent: f64,
    pub interval: String,
    pub window: String,
    pub max_failure_rate: f64,
    pub min_devices: u64,
    /// Canary devices that reported (installed or failed) within the window, as last seen.
    pub devices: u64,
    pub failed: u64,
    pub failure_rate: f64,
    pub started_by: String,
    pub owner: Option<String>,
    pub started_at: String,
    pub step_started_at: String,
    /// When the current step may advance, if healthy (progressing rollouts only).
    pub next_step_at: Option<String>,
    pub updated_at: String,
    pub finished_at: Option<String>,
}

impl From<&Rollout> for RolloutView {
    fn from(r: &Rollout) -> RolloutView {
        let interval = i64::try_from(r.plan.interval.as_millis()).unwrap_or(i64::MAX);
        RolloutView {
            id: r.id.to_string(),
            release_id: r.release_id.to_string(),
            app_id: r.app_id.clone(),
            channel: r.channel.to_string(),
            stable_bundle_id: r.stable_bundle_id.to_string(),
            canary_bundle_id: r.canary_bundle_id.to_string(),
            phase: r.progress.phase.as_str(),
            reason: r.progress.phase.reason().map(str::to_string),
            steps: r.plan.percents(),
            step: r.progress.step,
            percent: f64::from(r.share()) / 100.0,
            interval: format_go_duration(r.plan.interval),
            window: format_go_duration(r.plan.window),
            max_failure_rate: r.plan.max_failure_rate,
            min_devices: r.plan.min_devices,
            devices: r.health.devices,
            failed: r.health.failed,
            failure_rate: r.health.failure_rate(),
            started_by: r.started_by.clone(),
            owner: r.owner.as_ref().map(ToString::to_string),
            started_at: rfc3339(r.started_at),
            step_started_at: rfc3339(r.progress.step_started_at),
            next_step_at: (r.progress.phase == RolloutPhase::Progressing)
                .then(|| rfc3339(r.progress.step_started_at.saturating_add(interval))),
            updated_at: rfc3339(r.updated_at),
            finished_at: r.finished_at.map(rfc3339),
        }
    }
}

impl From<&Release> for ReleaseView {
    fn from(release: &Release) -> ReleaseView {
        ReleaseView {
            id: release.id.to_string(),
            app_id: release.key.app_id.clone(),
            platform: release.key.platform.to_string(),
            version_name: release.key.version_name.clone(),
            version_code: release.key.version_code.clone(),
            release_date: release.release_date.map(rfc3339),
            builtin_bundle_id: release.builtin_bundle_id.to_string(),
            active_bundle_id: release.production_bundle().map(ToString::to_string),
            updated_at: rfc3339(release.updated_at),
            created_at: rfc3339(release.created_at),
            channels: release
                .channels
                .iter()
                .map(|(name, id)| (name.to_string(), id.to_string()))
                .collect(),
            serving: release
                .serving_by_channel()
                .into_iter()
                .map(|(channel, serving)| {
                    let view = ServingView {
                        bundle_id: serving.bundle_id.to_string(),
                        because: serving.because.as_str(),
                        since: serving.since.map(rfc3339),
                    };
                    (channel.to_string(), view)
                })
                .collect(),
            owner: release.owner.as_ref().map(ToString::to_string),
            rollouts: BTreeMap::new(),
        }
    }
}

/// What a channel allows, with the names `channels.update` takes.
#[derive(Serialize)]
pub struct ChannelRulesView {
    pub allow_ios: bool,
    pub allow_android: bool,
    pub allow_electron: bool,
    pub allow_emulator: bool,
    pub allow_device: bool,
    pub allow_dev_build: bool,
    pub allow_prod_build: bool,
    /// `none`, `major`, `minor`, `patch` or `version_number`.
    pub update_policy: &'static str,
    pub block_under_native: bool,
    pub allow_device_self_set: bool,
}

impl From<&ChannelRules> for ChannelRulesView {
    fn from(rules: &ChannelRules) -> ChannelRulesView {
        ChannelRulesView {
            allow_ios: rules.allow_ios,
            allow_android: rules.allow_android,
            allow_electron: rules.allow_electron,
            allow_emulator: rules.allow_emulator,
            allow_device: rules.allow_device,
            allow_dev_build: rules.allow_dev_build,
            allow_prod_build: rules.allow_prod_build,
            update_policy: rules.update_policy.as_str(),
            block_under_native: rules.block_under_native,
            allow_device_self_set: rules.allow_device_self_set,
        }
    }
}

/// A channel of an app, its settings and how many devices are on it by override.
#[derive(Serialize)]
pub struct ChannelView {
    pub app_id: String,
    pub channel: String,
    /// The numeric id devices see in `listChannels`; `null` until a release or a setting
    /// creates the channel.
    pub id: Option<i64>,
    /// Whether settings were stored; otherwise `settings` are the defaults.
    pub configured: bool,
    pub settings: ChannelRulesView,
    /// The Kubernetes resource managing the settings (`Channel ns/name`), or `null`.
    pub owner: Option<String>,
    /// Devices forced onto it (through the API or a `Channel` resource).
    pub forced_devices: usize,
    /// Devices that chose it themselves (plugins that keep no channel of their own).
    pub chosen_by_devices: usize,
    /// When the settings last changed; `null` for defaults.
    pub updated_at: Option<String>,
}

impl From<&ChannelOverview> for ChannelView {
    fn from(overview: &ChannelOverview) -> ChannelView {
        let settings = &overview.settings;
        ChannelView {
            app_id: settings.app_id.clone(),
            channel: settings.channel.to_string(),
            id: overview.id,
            configured: overview.configured,
            settings: ChannelRulesView::from(&settings.rules),
            owner: settings.owner.as_ref().map(ToString::to_string),
            forced_devices: overview.forced_devices,
            chosen_by_devices: overview.chosen_by_devices,
            updated_at: overview.configured.then(|| rfc3339(settings.updated_at)),
        }
    }
}

/// A device put on a channel.
#[derive(Serialize)]
pub struct DeviceOverrideView {
    pub app_id: String,
    pub device_id: String,
    pub channel: String,
    /// Who put it there: `api`, `device` (its own `setChannel`, remembered for old plugins) or
    /// the resource (`Channel ns/name`), which alone may change it.
    pub source: String,
    /// Whether it wins over the device's own choice (`api` and resources).
    pub forced: bool,
    pub updated_at: String,
}

impl From<&DeviceOverride> for DeviceOverrideView {
    fn from(o: &DeviceOverride) -> DeviceOverrideView {
        use crate::domain::targeting::OverrideSource;
        DeviceOverrideView {
            app_id: o.app_id.clone(),
            device_id: o.device_id.clone(),
            channel: o.channel.to_string(),
            source: match &o.source {
                OverrideSource::Resource(resource) => resource.to_string(),
                other => other.to_stored(),
            },
            forced: o.source.is_forced(),
            updated_at: rfc3339(o.updated_at),
        }
    }
}

/// A device found by `device_id` or `custom_id`: what its stats last said, and its override.
#[derive(Serialize)]
pub struct DeviceLookupView {
    pub device_id: String,
    /// From its latest stats event; `null` when it never sent stats (it has an override).
    pub custom_id: Option<String>,
    pub platform: Option<String>,
    /// The bundle it last reported running.
    pub version_name: Option<String>,
    pub last_seen: Option<String>,
    /// The channel it is put on, or `null` (it follows its own choice or the default).
    #[serde(rename = "override")]
    pub assigned: Option<DeviceOverrideView>,
}

impl From<&DeviceLookup> for DeviceLookupView {
    fn from(found: &DeviceLookup) -> DeviceLookupView {
        let seen = found.seen.as_ref();
        DeviceLookupView {
            device_id: found.device_id.clone(),
            custom_id: seen.and_then(|s| s.custom_id.clone()),
            platform: seen.and_then(|s| s.platform.clone()),
            version_name: seen.and_then(|s| s.version_name.clone()),
            last_seen: seen.map(|s| rfc3339(s.last_seen)),
            assigned: found.assigned.as_ref().map(DeviceOverrideView::from),
        }
    }
}

/// A native build devices check in with that has no release yet.
#[derive(Serialize)]
pub struct UnregisteredBuildView {
    pub platform: String,
    pub app_id: String,
    pub version_name: String,
    pub version_code: String,
    /// Distinct devices seen asking (a lower bound).
    pub devices: u64,
    /// Update checks seen.
    pub checks: u64,
    pub first_seen: String,
    pub last_seen: String,
}

impl From<&UnregisteredBuild> for UnregisteredBuildView {
    fn from(build: &UnregisteredBuild) -> UnregisteredBuildView {
        UnregisteredBuildView {
            platform: build.key.platform.to_string(),
            app_id: build.key.app_id.clone(),
            version_name: build.key.version_name.clone(),
            version_code: build.key.version_code.clone(),
            devices: build.devices,
            checks: build.checks,
            first_seen: rfc3339(build.first_seen),
            last_seen: rfc3339(build.last_seen),
        }
    }
}
