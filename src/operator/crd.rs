//! The custom resources: `Bundle`, `Release` and `Channel` in `capgo-server.io/v1alpha1`. The YAML under
//! `crds/` is generated from these types (`capgo-server crdgen`), and a test keeps it in sync.

// kube's `printcolumn(name = …, type_ = "string", …)` repeats keys across columns by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::domain::rollout;

pub const GROUP: &str = "capgo-server.io";

// What the API server checks before anything is stored, so `kubectl apply` and Argo CD refuse
// a wrong manifest with a message instead of the operator stalling on it later. The operator
// checks the same rules again (domain::names), for API servers that skipped them.

/// App ids: letters, digits, `.`, `_`, `-` (domain::names::check_app_id).
const APP_ID_PATTERN: &str = r"^[A-Za-z0-9._-]+$";
/// No leading or trailing spaces (domain::names::check_text).
const TRIMMED_PATTERN: &str = r"^\S(.*\S)?$";
/// A resource name in the same namespace (an RFC 1123 subdomain).
const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Channel names (domain::channel::ChannelName, which also refuses `builtin`).
const CHANNEL_PATTERN: &str = r"^[A-Za-z0-9._-]{1,64}$";
/// Device ids as people write them (domain::targeting::parse_device_id).
const DEVICE_ID_PATTERN: &str = r"^[A-Za-z0-9._-]{1,36}$";
/// Go durations (`10m`, `1s`, `1h30m`, `1.5h`), as domain::duration::parse_go_duration reads
/// them (a macro, so the CEL rule below can quote the same pattern).
macro_rules! go_duration_pattern {
    () => {
        r"^(([0-9]+([.][0-9]*)?|[.][0-9]+)(ns|us|µs|ms|s|m|h))+$"
    };
}
const GO_DURATION_PATTERN: &str = go_duration_pattern!();
/// What domain::rollout::RolloutPlan accepts for its durations (MIN_INTERVAL to MAX_DURATION),
/// checked only on what the pattern accepts, so a wrong string gets the pattern's message alone.
const DURATION_BOUNDS_RULE: &str = concat!(
    "!self.matches('",
    go_duration_pattern!(),
    "') || (duration(self) >= duration('1s') && duration(self) <= duration('720h'))"
);
/// The keys of a map by channel: channel names (domain::channel::ChannelName).
const CHANNEL_KEYS_RULE: &str =
    "self.all(channel, channel.matches('^[A-Za-z0-9._-]{1,64}$') && channel != 'builtin')";
const CHANNEL_KEYS_MESSAGE: &str =
    "channel names are 1 to 64 letters, digits, '.', '_' or '-', and not \"builtin\"";

/// A condition in the Kubernetes shape (what `kubectl wait --for=condition=Ready`, kstatus and
/// Argo CD read).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `Reconciling` or `Stalled`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339; changes only when `status` does.
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The `metadata.generation` this condition describes.
    #[schemars(range(min = 0))]
    pub observed_generation: i64,
}

/// A web bundle (a zip of the app's web assets) that capgo-server fetches, checks and stores.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "capgo-server.io",
    version = "v1alpha1",
    kind = "Bundle",
    namespaced,
    status = "BundleStatus",
    shortname = "cbundle",
    category = "capgo",
    doc = "A Capgo live-update bundle: fetched from `source`, checked like an upload, stored and recorded by capgo-server.",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.appId"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.versionName"),
    printcolumn(name = "Size", type_ = "integer", json_path = ".status.size"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.versionName != 'builtin' && self.versionName != 'unknown'").message("versionName \"builtin\" and \"unknown\" are reserved by the plugin; choose another name"))]
pub struct BundleSpec {
    /// The app id, e.g. `com.example.app`. Cannot change: the stored record is keyed by it.
    #[schemars(length(min = 1, max = 255), regex(pattern = APP_ID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("appId cannot change once set: create another Bundle"))]
    pub app_id: String,
    /// The version name devices report once they run it (unique per app). Cannot change.
    #[schemars(length(min = 1, max = 128), regex(pattern = TRIMMED_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("versionName cannot change once set: create another Bundle"))]
    pub version_name: String,
    /// Shown in the UI, and sent to devices as `comment` (plugins x.35+).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 4096))]
    pub description: String,
    /// Release notes or a page about the bundle, sent to devices as `link` (plugins x.35+).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512), regex(pattern = r"^https?://[^\s/]+[^\s]*$"))]
    pub link: Option<String>,
    /// The lowest native version the bundle runs on, for channels whose update policy is
    /// `version_number`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^v?[0-9]+(\.[0-9]+){0,2}([-+].*)?$"))]
    pub min_update_version: Option<String>,
    pub source: BundleSource,
    /// Expected SHA-256 (lowercase hex) of the zip; the bundle stalls when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,
    /// For bundles made with `capgo bundle encrypt`: served to devices as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<BundleEncryptionSpec>,
}

/// Where the zip comes from: exactly one of `url` and `bucketKey`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.bucketKey)").message("set exactly one of source.url and source.bucketKey"))]
pub struct BundleSource {
    /// An http(s) URL to fetch the zip from: a public address (redirects included) unless
    /// the server allows private networks or lists allowed hosts (BUNDLE_SOURCE_*).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: Option<String>,
    /// The key of an object already in capgo-server's bucket, below its import prefix
    /// (BUNDLE_IMPORT_PREFIX, `imports/` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub bucket_key: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleEncryptionSpec {
    /// `ivSessionKey` from `bundle encrypt`.
    pub session_key: String,
    /// The encrypted checksum (512 hex characters).
    pub checksum: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub observed_generation: i64,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The record's id in capgo-server (what the REST API and UI show).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_id: Option<String>,
    /// SHA-256 of the stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Bytes stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub size: Option<u64>,
    /// Where the bytes are stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_key: Option<String>,
}

/// A native build of an app and the bundle each of its channels serves.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "capgo-server.io",
    version = "v1alpha1",
    kind = "Release",
    namespaced,
    status = "ReleaseStatus",
    shortname = "crel",
    category = "capgo",
    doc = "A native release of a Capacitor app (platform, app id, version name and code), its builtin bundle, and the bundle each channel serves.",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.appId"),
    printcolumn(name = "Platform", type_ = "string", json_path = ".spec.platform"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.versionName"),
    printcolumn(name = "Code", type_ = "string", json_path = ".spec.versionCode"),
    printcolumn(name = "Serving", type_ = "string", json_path = ".status.serving"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.rollouts) || self.rollouts.all(channel, channel in self.channels)").message("every channel in rollouts must be a channel in channels: rollouts.<channel> stages the changes of channels.<channel>"))]
pub struct ReleaseSpec {
    pub platform: PlatformSpec,
    #[schemars(length(min = 1, max = 255), regex(pattern = APP_ID_PATTERN))]
    pub app_id: String,
    /// Native version name (`versionName` / `CFBundleShortVersionString`). Changing it
    /// replaces the record made for the old one.
    #[schemars(length(min = 1, max = 64), regex(pattern = TRIMMED_PATTERN))]
    pub version_name: String,
    /// Native build number (`versionCode` / `CFBundleVersion`).
    #[schemars(length(min = 1, max = 64), regex(pattern = TRIMMED_PATTERN))]
    pub version_code: String,
    /// Name of the `Bundle` (same namespace) shipped inside the store binary.
    #[schemars(length(min = 1, max = 253), regex(pattern = NAME_PATTERN))]
    pub builtin_bundle: String,
    /// Channel name → name of the `Bundle` (same namespace) it serves. A channel left out
    /// follows `production`; `production` left out serves the builtin bundle.
    #[serde(default)]
    #[schemars(schema_with = "channels_schema")]
    pub channels: BTreeMap<String, String>,
    /// Channel → how a new bundle named for it in `channels` reaches its devices: in steps
    /// (a growing share of devices), each held for `interval` while devices stay healthy,
    /// rolled back by itself when too many fail. A channel left out switches at once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "rollouts_schema")]
    pub rollouts: BTreeMap<String, ChannelRolloutSpec>,
}

/// Channel names as domain::channel::ChannelName accepts them, Bundle names as resource names.
fn channels_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
            "pattern": NAME_PATTERN,
        },
        "x-kubernetes-validations": [{
            "rule": CHANNEL_KEYS_RULE,
            "message": CHANNEL_KEYS_MESSAGE,
        }],
    })
}

/// Channel names as keys, each a rollout plan.
fn rollouts_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let plan = generator.subschema_for::<ChannelRolloutSpec>();
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": plan,
        "x-kubernetes-validations": [{
            "rule": CHANNEL_KEYS_RULE,
            "message": CHANNEL_KEYS_MESSAGE,
        }],
    })
}

/// How a new bundle reaches a channel's devices, step by step; a field left out takes its
/// default. The operator checks the plan again (domain::rollout::RolloutSpec::plan).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelRolloutSpec {
    /// The percent of the channel's devices that get the new bundle at each step: growing,
    /// the last one 100. Default `[10, 50, 100]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = rollout::MAX_STEPS), inner(range(max = 100)))]
    // A CEL rule, not `minimum`: the API server compares an integer value with an integer
    // minimum (`0` passes `minimum: 0.01`).
    #[x_kube(
        validation = Rule::new("self.all(step, step >= 0.01)").message("steps are percents from 0.01 to 100"),
        validation = Rule::new("size(self) == 0 || (self.all(step, self.exists_one(other, other == step)) && self.isSorted() && self[size(self) - 1] == 100.0)").message("steps must grow at every step, and the last one must be 100")
    )]
    pub steps: Option<Vec<f64>>,
    /// How long each step must run, healthy, before the next one (a Go duration, at least
    /// `1s`). Default `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(DURATION_BOUNDS_RULE).message("interval must be at least 1s and at most 720h (30 days)"))]
    pub interval: Option<String>,
    /// Health counts what devices reported over this much time (a Go duration, at least
    /// `1s`), and never from before the rollout started. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = GO_DURATION_PATTERN))]
    #[x_kube(validation = Rule::new(DURATION_BOUNDS_RULE).message("window must be at least 1s and at most 720h (30 days)"))]
    pub window: Option<String>,
    /// The share of the new bundle's devices that may fail (a failed download or install, or
    /// a crash soon after switching), from 0 to 1, before every device goes back to the
    /// previous bundle. Default `0.05`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1))]
    pub max_failure_rate: Option<f64>,
    /// Devices that must have reported on the new bundle before a step advances (or the
    /// failure rate may roll it back). Default `10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = rollout::MAX_TRACKED_DEVICES), extend("format" = "int64"))]
    pub min_devices: Option<u64>,
}

impl ChannelRolloutSpec {
    /// The plan as the domain reads it.
    pub fn to_domain(&self) -> rollout::RolloutSpec {
        rollout::RolloutSpec {
            steps: self.steps.clone(),
            interval: self.interval.clone(),
            window: self.window.clone(),
            max_failure_rate: self.max_failure_rate,
            min_devices: self.min_devices,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PlatformSpec {
    Android,
    Ios,
    Electron,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub observed_generation: i64,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The record's id in capgo-server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    /// What devices get now, e.g. `production=1.4.1 beta=1.5.0-rc1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// Channel → bundle version name devices of that channel get (during a rollout, the
    /// stable bundle: devices in the canary get the canary).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, String>,
    /// Channel → its staged rollout: the one under way, or the last one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollouts: BTreeMap<String, ChannelRolloutStatus>,
}

/// Where a channel's staged rollout is, as capgo-server's driver moved it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelRolloutStatus {
    /// The rollout's id in capgo-server (the REST API's `rollouts` routes).
    pub id: String,
    pub phase: RolloutPhaseStatus,
    /// The current step, from 1.
    #[schemars(extend("format" = "int32"))]
    pub step: u32,
    /// The plan's steps, in percent of the channel's devices.
    pub steps: Vec<f64>,
    /// The percent of the channel's devices that get the canary now.
    pub percent: f64,
    /// Canary devices that reported (installed or failed) within the window, as last counted.
    #[schemars(extend("format" = "int64"))]
    pub devices: u64,
    /// Of those, devices that failed.
    #[schemars(extend("format" = "int64"))]
    pub failed: u64,
    /// `failed / devices`, from 0 to 1.
    pub failure_rate: f64,
    /// The bundle version the channel served when the rollout started.
    pub stable: String,
    /// The bundle version being rolled out.
    pub canary: String,
    /// Why it rolled back: the health numbers against the gate, or who aborted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339.
    #[schemars(extend("format" = "date-time"))]
    pub started_at: String,
    /// When the current step may advance if the canary stays healthy (while progressing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub next_step_at: Option<String>,
    /// When it completed or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub finished_at: Option<String>,
}

/// `Progressing` (a growing share of devices gets the canary), `Paused` (stopped by a person
/// at its step), `RolledBack` (every device back on stable) or `Done` (the canary became the
/// channel's bundle).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhaseStatus {
    Progressing,
    Paused,
    RolledBack,
    Done,
}

/// The settings of one channel of an app, and the devices forced onto it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "capgo-server.io",
    version = "v1alpha1",
    kind = "Channel",
    namespaced,
    status = "ChannelStatus",
    shortname = "cchannel",
    category = "capgo",
    doc = "A channel of a Capacitor app: which devices it serves, how far it may move them from their native version, whether devices may choose it, and the devices forced onto it.",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.appId"),
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.updatePolicy"),
    printcolumn(name = "Devices", type_ = "integer", json_path = ".status.devices"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    /// The app id, e.g. `com.example.app`. Cannot change: create another Channel.
    #[schemars(length(min = 1, max = 255), regex(pattern = APP_ID_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("appId cannot change once set: create another Channel"))]
    pub app_id: String,
    /// The channel's name, e.g. `production` or `beta`. Cannot change: create another Channel.
    #[schemars(regex(pattern = CHANNEL_PATTERN))]
    #[x_kube(
        validation = Rule::new("self != 'builtin'").message("\"builtin\" is not a channel name"),
        validation = Rule::new("self == oldSelf").message("channel cannot change once set: create another Channel")
    )]
    pub channel: String,
    /// Serve iOS devices (otherwise they get `disabled_platform_ios`).
    #[serde(default = "allowed")]
    pub allow_ios: bool,
    /// Serve Android devices (otherwise they get `disabled_platform_android`).
    #[serde(default = "allowed")]
    pub allow_android: bool,
    /// Serve Electron apps (otherwise they get `disabled_platform_electron`).
    #[serde(default = "allowed")]
    pub allow_electron: bool,
    /// Serve emulators and simulators (otherwise they get `disable_emulator`).
    #[serde(default = "allowed")]
    pub allow_emulator: bool,
    /// Serve physical devices (otherwise they get `disable_device`).
    #[serde(default = "allowed")]
    pub allow_device: bool,
    /// Serve debug builds (otherwise they get `disable_dev_build`).
    #[serde(default = "allowed")]
    pub allow_dev_build: bool,
    /// Serve store builds (otherwise they get `disable_prod_build`).
    #[serde(default = "allowed")]
    pub allow_prod_build: bool,
    /// How far a bundle may be from the device's native version: `none` (any bundle),
    /// `major`, `minor`, `patch` (not past the native build's major, minor or patch version),
    /// or `version_number` (the bundle's `minUpdateVersion` at most the native version).
    #[serde(default)]
    pub update_policy: UpdatePolicySpec,
    /// Never offer a bundle whose version is below the device's native version.
    #[serde(default)]
    pub block_under_native: bool,
    /// Devices may choose this channel themselves (`setChannel`, `defaultChannel`).
    #[serde(default = "allowed")]
    pub allow_device_self_set: bool,
    /// Device ids forced onto this channel, whatever they choose (compared lowercased).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(regex(pattern = DEVICE_ID_PATTERN)))]
    pub devices: Vec<String>,
}

/// Settings are permissive unless the spec says otherwise, as for channels without a resource.
fn allowed() -> bool {
    true
}

/// A channel's update policy as the spec spells it (domain::channel_policy::UpdatePolicy).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdatePolicySpec {
    #[default]
    None,
    Major,
    Minor,
    Patch,
    VersionNumber,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelStatus {
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub observed_generation: i64,
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// How many devices this resource forces onto the channel.
    #[serde(default)]
    #[schemars(extend("format" = "int32"))]
    pub devices: u32,
}

/// Every CRD as YAML documents: what `capgo-server crdgen` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let documents = [Bundle::crd(), Release::crd(), Channel::crd()]
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("a CRD serializes"))
        .collect::<Vec<_>>()
        .join("---\n");
    format!("# Generated by `capgo-server crdgen`: do not edit.\n---\n{documents}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_rust_types() {
        // The top-level copy, and the chart's (Helm installs CRDs from the chart's crds/).
        for path in [
            "crds/capgo-server.yaml",
            "charts/capgo-server/crds/capgo-server.yaml",
        ] {
            let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            let committed = std::fs::read_to_string(&full).unwrap_or_default();
            assert!(
                committed == crd_yaml(),
                "{path} is stale: run `cargo run -- crdgen > {path}`"
            );
        }
    }
}
