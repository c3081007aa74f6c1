//! Replays what plugins 5.x to 8.x send (fields per docs/protocol.md §2) against the real
//! binary, and judges each answer the way that plugin's client code would (§1.2, §1.3, §2).

mod common;

use common::*;
use serde_json::{json, Value};

use capgo_server::domain::PluginVersion;

/// What differs between plugin versions on the wire.
struct Plugin {
    version: &'static str,
    platform: &'static str,
}

impl Plugin {
    fn v(&self) -> PluginVersion {
        PluginVersion::parse(self.version).unwrap()
    }

    fn at_least(&self, major: u32, minor: u32, patch: u32) -> bool {
        self.v() >= PluginVersion::new(major, minor, patch)
    }

    /// The InfoObject this plugin sends while running `current` (None: the builtin bundle).
    fn body(&self, current: Option<&str>) -> Value {
        // Before 7, device ids could be uppercase.
        let device_id = if self.v().major < 7 {
            DEVICE_ID.to_uppercase()
        } else {
            DEVICE_ID.to_string()
        };
        let on_builtin = if self.at_least(8, 44, 0) {
            "1.0.0"
        } else {
            "builtin"
        };
        let mut body = json!({
            "platform": self.platform,
            "device_id": device_id,
            "app_id": APP_ID,
            "version_name": current.unwrap_or(on_builtin),
            "version_build": "1.0.0",
            "version_code": "10",
            "version_os": if self.platform == "ios" { "17.4" } else { "14" },
            "plugin_version": self.version,
            "is_emulator": false,
            "is_prod": true,
            "custom_id": "",
        });
        if self.at_least(5, 5, 0) {
            body["defaultChannel"] = json!("");
        }
        if self.at_least(8, 50, 0) {
            body["install_source"] = json!(if self.platform == "ios" {
                "app_store"
            } else {
                "google_play"
            });
        }
        body
    }

    /// Models the plugin's handling of an `/updates` answer.
    fn interpret(&self, answer: &Value, current: &str) -> Outcome {
        if self.platform == "ios" {
            // AppVersionDec: these keys must be strings when present, else decode_error.
            for key in [
                "version",
                "checksum",
                "url",
                "message",
                "error",
                "kind",
                "session_key",
                "link",
                "comment",
            ] {
                if answer
                    .get(key)
                    .is_some_and(|v| !v.is_string() && !v.is_null())
                {
                    return Outcome::Broken(format!("decode_error on `{key}`"));
                }
            }
            for key in ["major", "breaking"] {
                if answer
                    .get(key)
                    .is_some_and(|v| !v.is_boolean() && !v.is_null())
                {
                    return Outcome::Broken(format!("decode_error on `{key}`"));
                }
            }
        }
        let has = |key: &str| answer.get(key).is_some();
        if self.at_least(8, 45, 11) && (has("error") || has("kind")) {
            return match answer["kind"].as_str() {
                Some("up_to_date") | Some("blocked") => Outcome::NoUpdate,
                _ => Outcome::Broken(format!("failed: {answer}")),
            };
        }
        if has("message") && !self.at_least(7, 0, 0) {
            return Outcome::NoUpdate;
        }
        if has("error") {
            return if answer["error"] == "no_new_version_available" {
                Outcome::NoUpdate
            } else {
                Outcome::Broken(answer.to_string())
            };
        }
        let Some(version) = answer["version"].as_str().filter(|v| !v.is_empty()) else {
            return Outcome::Broken("Error in update check: no version".into());
        };
        if version == "builtin" {
            return Outcome::Revert;
        }
        if version == current {
            return Outcome::NoUpdate;
        }
        let url = answer["url"].as_str().unwrap_or_default();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Outcome::Broken(format!("invalid url {url:?}"));
        }
        let session_key = if self.platform == "ios" {
            answer.get("session_key")
        } else {
            answer.get("session_key").or(answer.get("sessionKey"))
        };
        if session_key.is_none() {
            return Outcome::Broken("no session_key".into());
        }
        Outcome::Download {
            version: version.into(),
            url: url.into(),
            checksum: answer["checksum"].as_str().unwrap_or_default().into(),
        }
    }

    /// The events and stat a refusal makes this plugin emit (`shouldNotifyBreakingEvents` of
    /// current plugins; `major` with `message` and `version` for 5.x and 6.x; the
    /// `download_fail` stat of 8.45.11+ for anything not `up_to_date` or `blocked`).
    fn reactions(&self, answer: &Value) -> Reactions {
        let breaking = if self.at_least(7, 22, 0) {
            answer["breaking"] == true
                || answer["error"] == "disable_auto_update_to_major"
                || answer["message"] == "store_update_required"
        } else {
            answer["major"] == true
                && answer.get("message").is_some()
                && answer["version"].is_string()
        };
        let kind = answer["kind"].as_str().unwrap_or("failed");
        Reactions {
            store_update_event: breaking,
            download_fail_stat: self.at_least(8, 45, 11)
                && answer.get("error").is_some()
                && !matches!(kind, "up_to_date" | "blocked"),
        }
    }

    /// The plugin's checksum check after download.
    fn verify(&self, bytes: &[u8], checksum: &str) -> bool {
        if self.v().verifies_sha256() {
            checksum.len() == 64 && checksum == sha256_hex(bytes)
        } else {
            checksum == format!("{:08x}", crc32fast::hash(bytes))
        }
    }

    /// A `set` stat the way this plugin sends it: queued arrays since 8.42, objects before.
    fn stats_body(&self, version: &str) -> Value {
        let mut event = self.body(Some(version));
        event["action"] = json!("set");
        event["old_version_name"] = json!("builtin");
        if self.at_least(8, 42, 0) {
            // Queued events carry the time they happened: moments ago.
            event["timestamp"] = json!(capgo_server::domain::now_millis() - 1_000);
            Value::Array(vec![event])
        } else {
            event
        }
    }
}

#[derive(Debug, PartialEq)]
struct Reactions {
    /// `majorAvailable` / `breakingAvailable`: the app can prompt for a store update.
    store_update_event: bool,
    /// A `download_fail` stat sent on every check (what a quiet refusal must avoid).
    download_fail_stat: bool,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Download {
        version: String,
        url: String,
        checksum: String,
    },
    NoUpdate,
    Revert,
    Broken(String),
}

const VERSIONS: &[&str] = &[
    "5.2.0", "5.10.0", "6.14.0", "6.25.0", "7.0.29", "7.0.30", "7.36.1", "8.0.0", "8.44.0",
    "8.51.14",
];

#[tokio::test]
async fn plugins_5_to_8_update_verify_and_revert() {
    let data = tempfile::tempdir().unwrap();
    let server = start_with_public_url(
        data.path(),
        &[
            ("MANAGEMENT_API_TOKENS", API_KEY),
            ("LIMIT_REQUEST_PER_MINUTE", "0"),
        ],
    );
    let client = Client::new(&server, API_KEY);
    let (_, builtin) = client.upload(APP_ID, "1.0.0", web_bundle("builtin")).await;
    let builtin = builtin["bundle"]["id"].as_str().unwrap().to_string();
    let next_zip = web_bundle("ota");
    let (_, next) = client.upload(APP_ID, "1.0.1", next_zip.clone()).await;
    let next = next["bundle"]["id"].as_str().unwrap().to_string();
    let mut releases = Vec::new();
    for platform in ["android", "ios"] {
        let id = client.create_release(platform, &builtin).await;
        client.set_active(&id, &next, "production").await;
        releases.push(id);
    }

    let plugins: Vec<Plugin> = VERSIONS
        .iter()
        .flat_map(|version| ["android", "ios"].map(|platform| Plugin { version, platform }))
        .collect();
    for plugin in &plugins {
        let label = format!("{} {}", plugin.platform, plugin.version);
        let (status, answer) = client.device("/updates", &plugin.body(None)).await;
        assert_eq!(status, 200, "{label}");
        let current = plugin.body(None)["version_name"]
            .as_str()
            .unwrap()
            .to_string();
        let Outcome::Download {
            version,
            url,
            checksum,
        } = plugin.interpret(&answer, &current)
        else {
            panic!(
                "{label}: expected a download, the plugin saw {:?} in {answer}",
                plugin.interpret(&answer, &current)
            );
        };
        assert_eq!(version, "1.0.1", "{label}");
        let bytes = client.download(&url).await;
        assert!(
            plugin.verify(&bytes, &checksum),
            "{label}: checksum {checksum} fails the plugin's check"
        );
        assert_eq!(bytes, next_zip, "{label}");

        let (_, answer) = client.device("/updates", &plugin.body(Some("1.0.1"))).await;
        assert_eq!(
            plugin.interpret(&answer, "1.0.1"),
            Outcome::NoUpdate,
            "{label}: {answer}"
        );

        let (status, _) = client.device("/stats", &plugin.stats_body("1.0.1")).await;
        assert_eq!(status, 200, "{label}");
    }

    for release in &releases {
        client
            .manage(
                "releases.set-active",
                json!({"release_id": release, "bundle_id": builtin}),
            )
            .await;
    }
    for plugin in &plugins {
        let (_, answer) = client.device("/updates", &plugin.body(Some("1.0.1"))).await;
        assert_eq!(
            plugin.interpret(&answer, "1.0.1"),
            Outcome::Revert,
            "{} {}: {answer}",
            plugin.platform,
            plugin.version
        );
        let (_, answer) = client.device("/updates", &plugin.body(None)).await;
        let current = plugin.body(None)["version_name"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            plugin.interpret(&answer, &current),
            Outcome::NoUpdate,
            "{} {}: {answer}",
            plugin.platform,
            plugin.version
        );
    }

    let activity = client
        .http
        .get(format!(
            "{}/api/v1/bundles.activity?bundle_id={next}",
            server.management_url
        ))
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    // Every plugin's stat was accepted above; they all speak for one device, which the
    // activity counts once.
    assert_eq!(activity["actions"]["set"], 1, "{activity}");
}

/// Channel rules through every plugin: a store-update refusal makes each plugin fire its
/// major/breaking event, and no refusal of a rule (nor an unregistered build) makes any plugin
/// report a failure.
#[tokio::test]
async fn plugins_5_to_8_hear_store_updates_and_stay_quiet_when_blocked() {
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
    let major = client.upload_bundle("2.0.0").await;
    for platform in ["android", "ios"] {
        let id = client.create_release(platform, &builtin).await;
        client.set_active(&id, &major, "production").await;
    }
    let (status, answer) = client
        .manage(
            "channels.update",
            json!({"app_id": APP_ID, "channel": "production", "update_policy": "major"}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    for version in VERSIONS {
        for platform in ["android", "ios"] {
            let plugin = Plugin { version, platform };
            let label = format!("{platform} {version}");
            let (status, answer) = client.device("/updates", &plugin.body(None)).await;
            assert_eq!(status, 200, "{label}");
            let current = plugin.body(None)["version_name"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                !matches!(
                    plugin.interpret(&answer, &current),
                    Outcome::Download { .. }
                ),
                "{label}: a major bundle must not download: {answer}"
            );
            assert_eq!(
                plugin.reactions(&answer),
                Reactions {
                    store_update_event: true,
                    download_fail_stat: false
                },
                "{label}: {answer}"
            );
            let mut unregistered = plugin.body(None);
            unregistered["version_code"] = json!("99");
            let (_, answer) = client.device("/updates", &unregistered).await;
            assert_eq!(answer["error"], "no_release", "{label}");
            assert!(
                !plugin.reactions(&answer).download_fail_stat,
                "{label}: an unregistered build must not report failures: {answer}"
            );
        }
    }
    server.stop();
}

#[test]
fn the_judge_rejects_what_plugins_reject() {
    let current = Plugin {
        version: "8.51.14",
        platform: "ios",
    };
    let with_kind = json!({"version": "1.0.1", "url": "http://x/a.zip", "checksum": "", "session_key": "", "kind": "up_to_date"});
    assert_eq!(current.interpret(&with_kind, "builtin"), Outcome::NoUpdate);
    let number_version = json!({"version": 101, "url": "http://x/a.zip", "session_key": ""});
    assert!(matches!(
        current.interpret(&number_version, "builtin"),
        Outcome::Broken(_)
    ));
    let relative = json!({"version": "1.0.1", "url": "/a.zip", "session_key": ""});
    assert!(matches!(
        current.interpret(&relative, "builtin"),
        Outcome::Broken(_)
    ));
    let camel = json!({"version": "1.0.1", "url": "http://x/a.zip", "sessionKey": ""});
    assert!(
        matches!(current.interpret(&camel, "builtin"), Outcome::Broken(_)),
        "iOS ignores sessionKey"
    );
    let old = Plugin {
        version: "6.14.0",
        platform: "android",
    };
    assert!(
        !old.verify(b"abc", &sha256_hex(b"abc")),
        "6.14 verifies CRC32, not SHA-256"
    );
}
