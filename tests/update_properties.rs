//! Properties of the update decision, for any bundle, device and plugin version.

use proptest::prelude::*;
use sha2::Digest;

use capgo_server::domain::device::DeviceInfo;
use capgo_server::domain::update::{decide, ChannelTarget, UpdateAnswer};
use capgo_server::domain::{
    Bundle, BundleEncryption, Platform, PluginVersion, RecordId, ReleaseKey,
};

const VERSIONS: &[&str] = &["1.0.0", "1.0.1", "2.0.0-beta.1", "builtin", "1.0.0-web"];

fn plugin() -> impl Strategy<Value = Option<PluginVersion>> {
    prop_oneof![
        Just(None),
        (5u32..=8, 0u32..60, 0u32..40)
            .prop_map(|(major, minor, patch)| Some(PluginVersion::new(major, minor, patch))),
    ]
}

prop_compose! {
    fn bundle()(bytes in proptest::collection::vec(any::<u8>(), 1..256),
                version in proptest::sample::select(&VERSIONS[..3]),
                encrypted in any::<bool>(),
                key in proptest::option::of(proptest::sample::select(&["KEYA", "KEYB"][..]))) -> (Bundle, Vec<u8>) {
        let id = RecordId::generate();
        let bundle = Bundle {
            blob_key: Bundle::blob_key_for(&id),
            id,
            app_id: "com.example.app".into(),
            version_name: version.to_string(),
            description: String::new(),
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            crc32: format!("{:08x}", crc32fast::hash(&bytes)),
            size: bytes.len() as u64,
            encryption: encrypted.then(|| BundleEncryption::new("aXY=:a2V5".into(), Some("e".repeat(512)), key.map(Into::into)).unwrap()),
            created_at: 0,
            owner: None,
        };
        (bundle, bytes)
    }
}

prop_compose! {
    fn device()(version_name in proptest::sample::select(VERSIONS), plugin_version in plugin(),
                key_id in proptest::option::of(proptest::sample::select(&["KEYA", "KEYB"][..]))) -> DeviceInfo {
        DeviceInfo {
            release: ReleaseKey { platform: Platform::Ios, app_id: "com.example.app".into(), version_name: "1.0.0".into(), version_code: "1".into() },
            device_id: "d".into(),
            version_name: version_name.into(),
            plugin_version,
            channel: None,
            key_id: key_id.map(Into::into),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn answers_are_always_well_formed((bundle, bytes) in bundle(), device in device(), is_builtin in any::<bool>()) {
        let target = ChannelTarget { url: "https://cdn.example.com/b.zip".into(), is_builtin, bundle: bundle.clone() };
        let answer = decide(&device, &target);
        let json = serde_json::to_value(&answer).unwrap();
        match &answer {
            UpdateAnswer::Update(offer) => {
                for key in ["error", "kind", "message"] {
                    prop_assert!(json.get(key).is_none(), "update answer carries {}: {}", key, json);
                }
                prop_assert!(!is_builtin, "the builtin target never triggers a download");
                prop_assert_ne!(&device.version_name, &bundle.version_name, "a device on the target gets no update");
                prop_assert_eq!(&offer.version, &bundle.version_name);
                let verifies_sha256 = device.plugin_version.is_none_or(|v| v.verifies_sha256());
                let expected = match &bundle.encryption {
                    Some(encryption) => encryption.checksum.clone(),
                    None if verifies_sha256 => hex::encode(sha2::Sha256::digest(&bytes)),
                    None => format!("{:08x}", crc32fast::hash(&bytes)),
                };
                prop_assert_eq!(&offer.checksum, &expected, "the checksum matches the stored bytes");
            }
            UpdateAnswer::RevertToBuiltin { version } => {
                prop_assert!(is_builtin);
                prop_assert_eq!(*version, "builtin");
                prop_assert_eq!(json, serde_json::json!({"version": "builtin"}));
            }
            UpdateAnswer::Refused(refusal) => {
                prop_assert!(!refusal.error.is_empty() && !refusal.message.is_empty());
                prop_assert!(json.get("kind").is_some_and(|k| k.is_string()));
            }
        }
    }
}
