//! Properties of the update decision, for any bundle, device, plugin version and channel
//! settings.

use proptest::prelude::*;
use sha2::Digest;

use capgo_server::domain::channel_policy::{ChannelChoice, ChannelRules, UpdatePolicy};
use capgo_server::domain::device::{DeviceInfo, RefusalKind};
use capgo_server::domain::update::{decide, ChannelTarget, UpdateAnswer};
use capgo_server::domain::{
    Bundle, BundleEncryption, ChannelName, Platform, PluginVersion, RecordId, ReleaseRef,
};

const VERSIONS: &[&str] = &[
    "1.0.0",
    "1.0.1",
    "2.0.0-beta.1",
    "0.9.0",
    "1.1.0",
    "builtin",
    "1.0.0-web",
];

fn plugin() -> impl Strategy<Value = Option<PluginVersion>> {
    prop_oneof![
        Just(None),
        (5u32..=8, 0u32..60, 0u32..40)
            .prop_map(|(major, minor, patch)| Some(PluginVersion::new(major, minor, patch))),
    ]
}

prop_compose! {
    fn bundle()(bytes in proptest::collection::vec(any::<u8>(), 1..256),
                version in proptest::sample::select(&VERSIONS[..5]),
                min_update_version in proptest::option::of(proptest::sample::select(&["0.5.0", "1.0.0", "1.2.0"][..])),
                encrypted in any::<bool>(),
                key in proptest::option::of(proptest::sample::select(&["KEYA", "KEYB"][..]))) -> (Bundle, Vec<u8>) {
        let id = RecordId::generate();
        let bundle = Bundle {
            blob_key: Bundle::blob_key_for(&id),
            id,
            app_id: "com.example.app".into(),
            version_name: version.to_string(),
            description: String::new(),
            link: None,
            min_update_version: min_update_version.map(Into::into),
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
                key_id in proptest::option::of(proptest::sample::select(&["KEYA", "KEYB"][..])),
                platform in proptest::sample::select(&[Platform::Ios, Platform::Android, Platform::Electron][..]),
                is_emulator in proptest::option::of(any::<bool>()),
                is_prod in proptest::option::of(any::<bool>())) -> DeviceInfo<'static> {
        DeviceInfo {
            release: ReleaseRef { platform, app_id: "com.example.app", version_name: "1.0.0", version_code: "1" },
            device_id: "d".into(),
            version_name,
            plugin_version,
            channel: None,
            key_id,
            is_emulator,
            is_prod,
        }
    }
}

prop_compose! {
    fn rules()(flags in proptest::collection::vec(any::<bool>(), 9),
               update_policy in proptest::sample::select(&UpdatePolicy::ALL[..])) -> ChannelRules {
        ChannelRules {
            allow_ios: flags[0],
            allow_android: flags[1],
            allow_electron: flags[2],
            allow_emulator: flags[3],
            allow_device: flags[4],
            allow_dev_build: flags[5],
            allow_prod_build: flags[6],
            update_policy,
            block_under_native: flags[7],
            allow_device_self_set: flags[8],
        }
    }
}

fn choice() -> impl Strategy<Value = ChannelChoice> {
    proptest::sample::select(
        &[
            ChannelChoice::Default,
            ChannelChoice::Forced,
            ChannelChoice::ByDevice,
        ][..],
    )
}

fn beta() -> ChannelName {
    ChannelName::parse("beta").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn answers_are_always_well_formed((bundle, bytes) in bundle(), device in device(), is_builtin in any::<bool>()) {
        let target = ChannelTarget { channel: beta(), url: "https://cdn.example.com/b.zip".into(), is_builtin, bundle: bundle.clone(), rules: ChannelRules::default(), manifest: None, memo: Default::default() };
        let answer = decide(&device, &target, ChannelChoice::Default);
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

    /// Channel rules only ever take updates away: with any settings, a device gets either the
    /// answer it would get with the defaults, or a quiet refusal (`blocked`), never `failed`.
    #[test]
    fn rules_only_block_quietly((bundle, _) in bundle(), device in device(), is_builtin in any::<bool>(),
                                rules in rules(), choice in choice()) {
        let open = ChannelTarget { channel: beta(), url: "https://cdn.example.com/b.zip".into(), is_builtin, bundle, rules: ChannelRules::default(), manifest: None, memo: Default::default() };
        let ruled = ChannelTarget { rules, ..open.clone() };
        let without = decide(&device, &open, choice);
        let with = decide(&device, &ruled, choice);
        if with != without {
            let UpdateAnswer::Refused(refusal) = &with else {
                return Err(TestCaseError::fail(format!("rules changed the answer to {with:?}")));
            };
            prop_assert_eq!(refusal.kind, RefusalKind::Blocked, "{:?}", refusal);
        }
        // A store-update refusal names the bundle the device cannot get.
        if let UpdateAnswer::Refused(refusal) = &with {
            if let Some(version) = &refusal.store_update {
                prop_assert_eq!(version, &ruled.bundle.version_name);
                prop_assert!(refusal.error.starts_with("disable_auto_update_to_"));
            }
        }
    }

    /// The answer depends on what a device reports about itself, never on its id: devices that
    /// differ only in id can share one cached resolution.
    #[test]
    fn answers_do_not_depend_on_the_device_id((bundle, _) in bundle(), device in device(), rules in rules(),
                                              choice in choice(), other_id in "[a-f0-9-]{1,36}") {
        let target = ChannelTarget { channel: beta(), url: "https://cdn.example.com/b.zip".into(), is_builtin: false, bundle, rules, manifest: None, memo: Default::default() };
        let renamed = DeviceInfo { device_id: other_id.into(), ..device.clone() };
        prop_assert_eq!(decide(&device, &target, choice), decide(&renamed, &target, choice));
    }
}
