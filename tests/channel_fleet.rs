//! A fleet against the real binary over real sockets: a few thousand devices of every platform,
//! emulators and store builds, on channels they chose or were put on, each answer checked
//! against the channel settings by an oracle written from the rules (not the server's code),
//! and the answer cache still one entry per (release, channel), not per device.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

const DEVICES: usize = 3000;

/// The settings the test gives each channel, as the management API takes them.
fn settings() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        (
            "production",
            json!({"allow_electron": false, "allow_emulator": false}),
        ),
        (
            "beta",
            json!({"allow_ios": false, "allow_dev_build": false}),
        ),
        (
            "private",
            json!({"allow_device_self_set": false, "allow_device": false}),
        ),
    ])
}

/// What each channel serves.
const BUNDLES: [(&str, &str); 3] = [
    ("production", "1.0.1"),
    ("beta", "1.1.0"),
    ("private", "1.2.0"),
];

struct Device {
    id: String,
    platform: &'static str,
    is_emulator: bool,
    is_prod: bool,
    /// `defaultChannel` it sends ("" for none).
    asks: &'static str,
    /// The channel a person put it on.
    forced: Option<&'static str>,
}

/// The rules, restated: the channel (override, else asked, else production); then platform,
/// private channel (only when the device chose it), build kind, device kind; else the bundle.
fn expected(device: &Device) -> String {
    let (channel, chose) = match (device.forced, device.asks) {
        (Some(forced), _) => (forced, false),
        (None, "") => ("production", false),
        (None, asked) => (asked, true),
    };
    let rules = &settings()[channel];
    let allows = |key: &str| rules.get(key).and_then(Value::as_bool).unwrap_or(true);
    if !allows(&format!("allow_{}", device.platform)) {
        return format!("disabled_platform_{}", device.platform);
    }
    if chose && channel != "production" && !allows("allow_device_self_set") {
        return "cannot_update_via_private_channel".into();
    }
    if device.is_prod && !allows("allow_prod_build") {
        return "disable_prod_build".into();
    }
    if !device.is_prod && !allows("allow_dev_build") {
        return "disable_dev_build".into();
    }
    if device.is_emulator && !allows("allow_emulator") {
        return "disable_emulator".into();
    }
    if !device.is_emulator && !allows("allow_device") {
        return "disable_device".into();
    }
    BUNDLES
        .iter()
        .find(|(c, _)| *c == channel)
        .unwrap()
        .1
        .to_string()
}

/// A deterministic spread of devices (a small linear congruential generator: no dependency,
/// the same fleet every run).
fn fleet() -> Vec<Device> {
    let mut state: u64 = 0x5eed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    (0..DEVICES)
        .map(|n| Device {
            id: format!("00000000-0000-4000-8000-{n:012x}"),
            platform: ["android", "ios", "electron"][next(3) as usize],
            is_emulator: next(4) == 0,
            is_prod: next(3) != 0,
            asks: ["", "", "beta", "private"][next(4) as usize],
            forced: match next(10) {
                0 => Some("beta"),
                1 => Some("private"),
                _ => None,
            },
        })
        .collect()
}

#[tokio::test]
async fn every_device_gets_what_its_channel_allows_and_the_cache_stays_per_channel() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("LIMIT_REQUEST_PER_MINUTE", "0"),
        ],
    );
    let client = Client::new(&server, API_KEY);
    let builtin = client.upload_bundle("1.0.0").await;
    let mut bundle_ids = BTreeMap::new();
    for (channel, version) in BUNDLES {
        bundle_ids.insert(channel, client.upload_bundle(version).await);
    }
    for platform in ["android", "ios", "electron"] {
        let release = client.create_release(platform, &builtin).await;
        for (channel, bundle) in &bundle_ids {
            client.set_active(&release, bundle, channel).await;
        }
    }
    for (channel, change) in settings() {
        let mut body = change.clone();
        body["app_id"] = json!(APP_ID);
        body["channel"] = json!(channel);
        let (status, answer) = client.manage("channels.update", body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let devices = fleet();
    for forced in ["beta", "private"] {
        let ids: Vec<&str> = devices
            .iter()
            .filter(|d| d.forced == Some(forced))
            .map(|d| d.id.as_str())
            .collect();
        let (status, answer) = client
            .manage(
                "devices.set-channel",
                json!({"app_id": APP_ID, "channel": forced, "device_ids": ids}),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    let misses_before = client
        .metric("capgo_answer_cache_lookups_total{result=\"miss\"}")
        .await;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for device in &devices {
        let body = json!({
            "platform": device.platform, "device_id": device.id, "app_id": APP_ID,
            "version_name": "builtin", "version_build": "1.0.0", "version_code": "10",
            "version_os": "14", "plugin_version": "8.51.14", "is_emulator": device.is_emulator,
            "is_prod": device.is_prod, "custom_id": "", "defaultChannel": device.asks,
        });
        let (status, answer) = client.device("/updates", &body).await;
        assert_eq!(status, 200, "{answer}");
        let want = expected(device);
        let got = answer["version"]
            .as_str()
            .filter(|_| answer.get("error").is_none())
            .or(answer["error"].as_str())
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            got,
            want,
            "device {} ({} emulator={} prod={} asks={:?} forced={:?}): {answer}",
            device.id,
            device.platform,
            device.is_emulator,
            device.is_prod,
            device.asks,
            device.forced
        );
        if answer.get("error").is_some() {
            assert_eq!(answer["kind"], "blocked", "{answer}");
        } else {
            assert_update_answer(&answer);
        }
        *outcomes.entry(got).or_default() += 1;
    }
    // Every rule answered someone, and most devices got a bundle.
    for outcome in [
        "1.0.1",
        "1.1.0",
        "1.2.0",
        "disabled_platform_electron",
        "disabled_platform_ios",
        "cannot_update_via_private_channel",
        "disable_dev_build",
        "disable_emulator",
        "disable_device",
    ] {
        assert!(
            outcomes.get(outcome).is_some_and(|n| *n > 0),
            "{outcome} never seen: {outcomes:?}"
        );
    }
    let misses = client
        .metric("capgo_answer_cache_lookups_total{result=\"miss\"}")
        .await
        - misses_before;
    // One resolution per (platform release, channel): 3 × 3, whatever the number of devices.
    assert!(
        misses <= 9.0,
        "{misses} cache misses for {DEVICES} devices: the cache must not be per device"
    );
    println!("fleet outcomes: {outcomes:?}; cache misses: {misses}");
    server.stop();
}
