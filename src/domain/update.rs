//! The update decision: a device, the channel it is on and the bundle that channel serves →
//! the answer it gets.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::Serialize;

use super::channel_policy::{ChannelChoice, ChannelRules};
use super::device::{DeviceInfo, DeviceRefusal, RefusalKind};
use super::manifest::{ManifestFile, ServedManifest};
use super::{Bundle, ChannelName, PluginVersion};

/// What a device's channel serves, resolved from the catalog: the same for every device of a
/// release on that channel, so it is cached once for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTarget {
    pub channel: ChannelName,
    pub bundle: Bundle,
    /// Absolute URL devices download the bundle from.
    pub url: String,
    /// True when the target is the release's builtin bundle (serving it means "roll back").
    pub is_builtin: bool,
    /// The channel's settings.
    pub rules: ChannelRules,
    /// The bundle's files, for plugins that download only those they lack.
    pub manifest: Option<ServedManifest>,
    /// What every device of the target shares, worked out once (the target is cached).
    pub memo: TargetMemo,
}

/// What plugin versions differ in, in an offer: the checksum they verify, whether they read
/// the bundle's link and comment, and the manifest they take (none, plain, Brotli).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OfferForm(usize);

/// How many [`OfferForm`]s there are.
const OFFER_FORMS: usize = 2 * 2 * 3;

impl OfferForm {
    fn of(plugin: Option<PluginVersion>) -> OfferForm {
        let sha256 = plugin.is_none_or(|v| v.verifies_sha256());
        let notes = plugin.is_some_and(|v| v.reads_link_and_comment());
        let manifest = match plugin.filter(|p| p.takes_manifest()) {
            None => 0,
            Some(p) if p.decompresses_brotli_files() => 2,
            Some(_) => 1,
        };
        OfferForm(usize::from(sha256) + 2 * usize::from(notes) + 4 * manifest)
    }
}

/// What a target's devices share, made on first use: the rendered offer of each
/// [`OfferForm`], and the bundle's version check against the release's native version (every
/// device of a cached target runs the same release). A clone starts empty: whoever clones a
/// target changes it (a re-signed download URL), and the old renderings would be stale.
#[derive(Debug, Default)]
pub struct TargetMemo {
    offers: [OnceLock<RenderedOffer>; OFFER_FORMS],
    bundle_check: OnceLock<(String, Result<(), DeviceRefusal>)>,
}

impl Clone for TargetMemo {
    fn clone(&self) -> TargetMemo {
        TargetMemo::default()
    }
}

impl PartialEq for TargetMemo {
    /// A cache, not part of what a target is.
    fn eq(&self, _: &TargetMemo) -> bool {
        true
    }
}

impl Eq for TargetMemo {}

impl ChannelTarget {
    /// [`ChannelRules::check_bundle`] of the bundle for native version `native`, computed once
    /// per target.
    fn bundle_check(&self, native: &str) -> Result<(), DeviceRefusal> {
        let (checked_for, result) = self.memo.bundle_check.get_or_init(|| {
            (
                native.to_string(),
                self.rules.check_bundle(native, &self.bundle),
            )
        });
        if checked_for == native {
            result.clone()
        } else {
            self.rules.check_bundle(native, &self.bundle)
        }
    }
}

/// An offer and its JSON body, rendered once per target and form and shared by every device
/// that gets it.
#[derive(Debug, Clone)]
pub struct RenderedOffer {
    pub offer: Arc<UpdateOffer>,
    pub json: Bytes,
}

impl RenderedOffer {
    fn new(offer: UpdateOffer) -> RenderedOffer {
        let json = serde_json::to_vec(&offer).expect("an offer serializes to JSON");
        RenderedOffer {
            offer: Arc::new(offer),
            json: Bytes::from(json),
        }
    }
}

impl std::ops::Deref for RenderedOffer {
    type Target = UpdateOffer;

    fn deref(&self) -> &UpdateOffer {
        &self.offer
    }
}

impl PartialEq for RenderedOffer {
    fn eq(&self, other: &RenderedOffer) -> bool {
        self.offer == other.offer
    }
}

impl Eq for RenderedOffer {}

impl Serialize for RenderedOffer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.offer.serialize(serializer)
    }
}

/// The body of a `POST /updates` answer. Serialized untagged: each variant is its own shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum UpdateAnswer {
    /// Download and switch to this bundle. Carries no `error`, `kind` or `message` key, which
    /// would send plugins down their error path.
    Update(RenderedOffer),
    /// `{"version":"builtin"}`: go back to the bundle shipped in the binary.
    RevertToBuiltin {
        version: &'static str,
    },
    Refused(DeviceRefusal),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpdateOffer {
    pub version: String,
    pub url: String,
    pub checksum: String,
    /// Always present, `""` for unencrypted bundles; snake case, as iOS decodes it.
    pub session_key: String,
    /// The bundle's link and description, for plugins that read them (x.35+).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Every file of the bundle, for plugins that take a manifest; they ignore `url` and
    /// `checksum` then, which stay for the others.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Arc<[ManifestFile]>>,
}

impl UpdateAnswer {
    pub fn refused(refusal: DeviceRefusal) -> UpdateAnswer {
        UpdateAnswer::Refused(refusal)
    }

    /// The answer's kind, for counting: `update`, `revert`, or the refusal's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            UpdateAnswer::Update(_) => "update",
            UpdateAnswer::RevertToBuiltin { .. } => "revert",
            UpdateAnswer::Refused(refusal) => match refusal.kind {
                RefusalKind::UpToDate => "up_to_date",
                RefusalKind::Blocked => "blocked",
                RefusalKind::Failed => "failed",
            },
        }
    }
}

pub fn up_to_date() -> DeviceRefusal {
    DeviceRefusal {
        error: "no_new_version_available",
        message: "No new version available".into(),
        kind: RefusalKind::UpToDate,
        store_update: None,
    }
}

/// Decides what a device gets. The plugin installs whatever `version` differs from its own by
/// plain string comparison, so "newer" is not ours to judge: the channel's bundle is the truth,
/// within what the channel's rules allow for this device (`choice`: how it came to the channel).
pub fn decide(device: &DeviceInfo, target: &ChannelTarget, choice: ChannelChoice) -> UpdateAnswer {
    let bundle = &target.bundle;
    let on_target = if target.is_builtin {
        device.runs_builtin() || device.version_name == bundle.version_name
    } else {
        device.version_name == bundle.version_name
    };
    if on_target {
        return UpdateAnswer::Refused(up_to_date());
    }
    if let Err(refusal) = target
        .rules
        .check_device(&target.channel, device.traits(), choice)
    {
        return UpdateAnswer::Refused(refusal);
    }
    if target.is_builtin {
        // Back to the bundle inside the binary: a rollback, which no version rule prevents.
        return UpdateAnswer::RevertToBuiltin { version: "builtin" };
    }
    if let Err(refusal) = target.bundle_check(device.release.version_name) {
        return UpdateAnswer::Refused(refusal);
    }
    if let (Some(bundle_key), Some(device_key)) = (bundle.key_id(), device.key_id) {
        let checks_key = device.plugin_version.is_none_or(|v| v.checks_key_id());
        if bundle_key != device_key && checks_key {
            return UpdateAnswer::Refused(DeviceRefusal {
                error: "key_id_mismatch",
                message: format!(
                    "bundle {} is encrypted for key {bundle_key}, the device has key {device_key}",
                    bundle.version_name
                ),
                kind: RefusalKind::Blocked,
                store_update: None,
            });
        }
    }
    let plugin = device.plugin_version;
    let form = OfferForm::of(plugin);
    let rendered = target.memo.offers[form.0].get_or_init(|| {
        let reads_notes = plugin.is_some_and(|v| v.reads_link_and_comment());
        RenderedOffer::new(UpdateOffer {
            version: bundle.version_name.clone(),
            url: target.url.clone(),
            checksum: bundle.checksum_for(plugin).to_string(),
            session_key: bundle.session_key().to_string(),
            link: bundle.link.clone().filter(|_| reads_notes),
            comment: Some(bundle.description.clone()).filter(|d| reads_notes && !d.is_empty()),
            manifest: target.manifest.as_ref().and_then(|m| m.for_plugin(plugin)),
        })
    });
    UpdateAnswer::Update(rendered.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BundleEncryption, Platform, PluginVersion, RecordId, ReleaseRef};

    fn bundle(version: &str) -> Bundle {
        Bundle {
            id: RecordId::generate(),
            app_id: "com.example.app".into(),
            version_name: version.into(),
            description: String::new(),
            link: None,
            min_update_version: None,
            sha256: "ab".repeat(32),
            crc32: "0badf00d".into(),
            size: 1,
            blob_key: "bundles/x.zip".into(),
            encryption: None,
            created_at: 0,
            owner: None,
        }
    }

    fn device<'a>(version_name: &'a str, plugin: &str) -> DeviceInfo<'a> {
        DeviceInfo {
            release: ReleaseRef {
                platform: Platform::Ios,
                app_id: "com.example.app",
                version_name: "1.0.0",
                version_code: "1",
            },
            device_id: "d".into(),
            version_name,
            plugin_version: PluginVersion::parse(plugin),
            channel: None,
            key_id: None,
            is_emulator: None,
            is_prod: None,
        }
    }

    fn decide_default(device: &DeviceInfo, target: &ChannelTarget) -> UpdateAnswer {
        decide(device, target, ChannelChoice::Default)
    }

    fn target(bundle: Bundle, is_builtin: bool) -> ChannelTarget {
        ChannelTarget {
            channel: ChannelName::default_channel(),
            bundle,
            url: "http://localhost:8000/files/x.zip".into(),
            is_builtin,
            rules: ChannelRules::default(),
            manifest: None,
            memo: TargetMemo::default(),
        }
    }

    #[test]
    fn a_cloned_target_renders_its_own_offer() {
        let device = device("builtin", "8.51.14");
        let first = target(bundle("1.0.1"), false);
        let UpdateAnswer::Update(offer) = decide_default(&device, &first) else {
            panic!("an update");
        };
        assert_eq!(offer.url, first.url);
        // As the store-outage path does: the last known target with a re-signed URL.
        let mut resigned = first.clone();
        resigned.url = "http://localhost:8000/files/x.zip?signature=new".into();
        let UpdateAnswer::Update(offer) = decide_default(&device, &resigned) else {
            panic!("an update");
        };
        assert_eq!(offer.url, resigned.url, "not the first target's rendering");
        assert!(String::from_utf8_lossy(&offer.json).contains("signature=new"));
    }

    #[test]
    fn offers_the_channel_bundle() {
        let answer = decide_default(
            &device("builtin", "8.51.14"),
            &target(bundle("1.0.1"), false),
        );
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["version"], "1.0.1");
        assert_eq!(json["checksum"], "ab".repeat(32));
        assert_eq!(json["session_key"], "");
        for forbidden in ["error", "kind", "message"] {
            assert!(json.get(forbidden).is_none(), "{forbidden} in {json}");
        }
    }

    #[test]
    fn old_plugins_get_crc32() {
        let answer = decide_default(
            &device("builtin", "6.14.0"),
            &target(bundle("1.0.1"), false),
        );
        assert_eq!(
            serde_json::to_value(&answer).unwrap()["checksum"],
            "0badf00d"
        );
    }

    #[test]
    fn device_on_target_is_up_to_date() {
        let answer = decide_default(&device("1.0.1", "8.51.14"), &target(bundle("1.0.1"), false));
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(json["error"], "no_new_version_available");
        assert_eq!(json["kind"], "up_to_date");
        assert_eq!(json["message"], "No new version available");
    }

    #[test]
    fn builtin_target_reverts_ota_devices_only() {
        let builtin = target(bundle("1.0.0-web"), true);
        let revert = decide_default(&device("1.0.1", "8.51.14"), &builtin);
        assert_eq!(
            serde_json::to_string(&revert).unwrap(),
            r#"{"version":"builtin"}"#
        );
        for on_builtin in ["builtin", "1.0.0", "1.0.0-web"] {
            let answer = decide_default(&device(on_builtin, "8.51.14"), &builtin);
            assert_eq!(
                serde_json::to_value(&answer).unwrap()["kind"],
                "up_to_date",
                "{on_builtin}"
            );
        }
    }

    #[test]
    fn encrypted_bundles_serve_the_uploaders_checksum_and_check_the_key() {
        let mut encrypted = bundle("2.0.0");
        encrypted.encryption = Some(
            BundleEncryption::new(
                "aXY=:a2V5".into(),
                Some("c".repeat(512)),
                Some("KEYA".into()),
            )
            .unwrap(),
        );
        let mut dev = device("builtin", "8.51.14");
        let json =
            serde_json::to_value(decide_default(&dev, &target(encrypted.clone(), false))).unwrap();
        assert_eq!(json["checksum"], "c".repeat(512));
        assert_eq!(json["session_key"], "aXY=:a2V5");
        dev.key_id = Some("KEYB");
        let json = serde_json::to_value(decide_default(&dev, &target(encrypted, false))).unwrap();
        assert_eq!(json["error"], "key_id_mismatch");
        assert_eq!(json["kind"], "blocked");
    }
}
