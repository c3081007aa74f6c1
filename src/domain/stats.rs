//! Telemetry events devices send to `/stats`.

use serde_json::Value;

use super::device::{DeviceFields, DeviceRefusal};
use super::UnixMillis;

/// One device event (`set`, `download_complete`, `update_fail`, …). Unknown actions are kept:
/// new plugin versions add actions, and dropping them would lose data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsEvent {
    pub app_id: String,
    pub device_id: String,
    pub action: String,
    pub platform: Option<String>,
    /// The bundle concerned; for per-file failures `1.2.3:path/file`.
    pub version_name: Option<String>,
    pub old_version_name: Option<String>,
    pub version_build: Option<String>,
    pub version_code: Option<String>,
    pub plugin_version: Option<String>,
    pub is_emulator: Option<bool>,
    pub is_prod: Option<bool>,
    pub custom_id: Option<String>,
    /// Extra string values, kept as a JSON object text.
    pub metadata: Option<String>,
    /// When the device recorded it (queued events carry `timestamp`), else when we got it.
    pub occurred_at: UnixMillis,
}

#[cfg(test)]
impl StatsEvent {
    /// An event of `com.example.app` with only what tests look at.
    pub(crate) fn example(device_id: &str, action: &str, version_name: &str) -> StatsEvent {
        StatsEvent {
            app_id: "com.example.app".into(),
            device_id: device_id.into(),
            action: action.into(),
            platform: None,
            version_name: Some(version_name.into()),
            old_version_name: None,
            version_build: None,
            version_code: None,
            plugin_version: None,
            is_emulator: None,
            is_prod: None,
            custom_id: None,
            metadata: None,
            occurred_at: 0,
        }
    }
}

/// Milliseconds in a day: activity is counted per UTC day.
pub const DAY_MILLIS: UnixMillis = 86_400_000;

/// The UTC day (its first millisecond) an instant falls in.
pub fn day_of(at: UnixMillis) -> UnixMillis {
    at - at.rem_euclid(DAY_MILLIS)
}

/// Actions the plugin sends (its sources, versions 5 to 8), counted by name in the fleet's
/// daily counts; others are counted as [`OTHER_FAILURE`] or [`OTHER_ACTION`], so devices
/// cannot make the counts grow with made-up names.
const KNOWN_ACTIONS: &[&str] = &[
    "set",
    "set_next",
    "set_fail",
    "reset",
    "delete",
    "update_fail",
    "download_10",
    "download_20",
    "download_30",
    "download_40",
    "download_50",
    "download_60",
    "download_70",
    "download_80",
    "download_90",
    "download_complete",
    "download_fail",
    "download_zip_start",
    "download_zip_complete",
    "download_manifest_start",
    "download_manifest_complete",
    "download_manifest_file_fail",
    "download_manifest_checksum_fail",
    "download_manifest_brotli_fail",
    "finish_download_fail",
    "manifest_path_fail",
    "checksum_fail",
    "checksum_required",
    "decrypt_fail",
    "unzip_fail",
    "windows_path_fail",
    "canonical_path_fail",
    "directory_path_fail",
    "low_mem_fail",
    "insufficient_disk_space",
    "app_moved_to_foreground",
    "app_moved_to_background",
    "app_launch_start",
    "app_launch_ready",
    "app_launch_timeout",
    "app_crash",
    "app_crash_native",
    "app_anr",
    "app_killed_low_memory",
    "app_killed_excessive_resource_usage",
    "app_initialization_failure",
    "app_memory_warning",
    "webview_javascript_error",
    "webview_unhandled_rejection",
    "webview_resource_error",
    "webview_security_policy_violation",
    "webview_unclean_restart",
    "webview_render_process_gone",
    "webview_content_process_terminated",
    "webview_dom_content_loaded",
    "webview_page_loaded",
    "os_version_changed",
    "native_app_version_changed",
    "rate_limit_reached",
    "blocked_by_server_url",
];
/// How an unknown action ending in `_fail` is counted (still a failure).
pub const OTHER_FAILURE: &str = "other_fail";
/// How any other unknown action is counted.
pub const OTHER_ACTION: &str = "other";

/// The name `action` is counted under in aggregates: itself if the plugin sends it, else
/// [`OTHER_FAILURE`] or [`OTHER_ACTION`] (its kind kept).
pub fn aggregated_action(action: &str) -> &str {
    match KNOWN_ACTIONS.iter().find(|known| **known == action) {
        Some(known) => known,
        None if ActivityKind::of(action) == ActivityKind::Failure => OTHER_FAILURE,
        None => OTHER_ACTION,
    }
}

/// What an action means for a bundle's health, as the UI charts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityKind {
    /// The zip arrived and passed its checks (`download_complete`).
    Download,
    /// The device switched to the bundle (`set`).
    Install,
    /// Anything that failed (`download_fail`, `update_fail`, `checksum_fail`, …).
    Failure,
    Other,
}

impl ActivityKind {
    pub fn of(action: &str) -> ActivityKind {
        match action {
            "download_complete" => ActivityKind::Download,
            "set" => ActivityKind::Install,
            _ if action.ends_with("_fail") => ActivityKind::Failure,
            _ => ActivityKind::Other,
        }
    }
}

/// Most events in one `/stats` post: more than a plugin ever queues (200); a larger batch is
/// refused whole.
pub const MAX_BATCH: usize = 1000;

/// Longest `device_id` and `custom_id`, as the official backend accepts (a UUID is 36).
pub const MAX_DEVICE_ID_LEN: usize = 36;
/// Longest `app_id`, as a bundle upload accepts.
const MAX_APP_ID_LEN: usize = 255;
/// Longest version name, as a bundle upload accepts; per-file failures add `:path/file`.
const MAX_VERSION_NAME_LEN: usize = 128;
const MAX_FILE_SUFFIX_LEN: usize = 1024;
/// Longest of the other short fields (platform, builds, plugin version).
const MAX_SHORT_FIELD_LEN: usize = 64;
/// How far back a queued event's `timestamp` may go (plugins queue while offline); older
/// events are refused, so nobody can write into months already charted.
pub const MAX_EVENT_AGE: UnixMillis = 31 * DAY_MILLIS;
/// A device clock this far ahead is still believed (and clamped to the receive time).
pub const MAX_CLOCK_AHEAD: UnixMillis = 60 * 60 * 1000;

const MAX_METADATA_KEYS: usize = 30;
const MAX_METADATA_KEY_LEN: usize = 64;
const MAX_METADATA_VALUE_LEN: usize = 2048;

impl StatsEvent {
    pub fn parse(value: &Value, received_at: UnixMillis) -> Result<StatsEvent, DeviceRefusal> {
        let fields = DeviceFields::new(value)?;
        let action = fields.required_str("action")?;
        if action.len() > 64
            || !action
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(DeviceRefusal::invalid(format!(
                "action {action:?} must be up to 64 letters, digits, '_' or '-'"
            )));
        }
        let owned = |name: &str, max: usize| -> Result<Option<String>, DeviceRefusal> {
            Ok(fields.bounded_str(name, max)?.map(str::to_string))
        };
        let required = |name: &str, max: usize| -> Result<String, DeviceRefusal> {
            fields.required_str(name)?;
            Ok(owned(name, max)?.unwrap_or_default())
        };
        let version = |name: &str| -> Result<Option<String>, DeviceRefusal> {
            let value = owned(name, MAX_VERSION_NAME_LEN + 1 + MAX_FILE_SUFFIX_LEN)?;
            match &value {
                Some(v) if v.split(':').next().unwrap_or("").chars().count() > MAX_VERSION_NAME_LEN => {
                    Err(DeviceRefusal::invalid(format!(
                        "field `{name}` names a version longer than {MAX_VERSION_NAME_LEN} characters"
                    )))
                }
                _ => Ok(value),
            }
        };
        Ok(StatsEvent {
            app_id: required("app_id", MAX_APP_ID_LEN)?,
            device_id: required("device_id", MAX_DEVICE_ID_LEN)?.to_ascii_lowercase(),
            action: action.to_string(),
            platform: owned("platform", MAX_SHORT_FIELD_LEN)?,
            version_name: version("version_name")?,
            old_version_name: version("old_version_name")?,
            version_build: owned("version_build", MAX_SHORT_FIELD_LEN)?,
            version_code: owned("version_code", MAX_SHORT_FIELD_LEN)?,
            plugin_version: owned("plugin_version", MAX_SHORT_FIELD_LEN)?,
            is_emulator: fields.optional_bool("is_emulator")?,
            is_prod: fields.optional_bool("is_prod")?,
            custom_id: owned("custom_id", MAX_DEVICE_ID_LEN)?,
            metadata: parse_metadata(value.get("metadata"))?,
            occurred_at: occurred_at(value.get("timestamp"), received_at)?,
        })
    }
}

/// When a queued event happened: its `timestamp` when that is within the last
/// [`MAX_EVENT_AGE`]; a clock up to [`MAX_CLOCK_AHEAD`] fast is clamped to the receive time;
/// anything else is refused.
fn occurred_at(
    timestamp: Option<&Value>,
    received_at: UnixMillis,
) -> Result<UnixMillis, DeviceRefusal> {
    let millis = match timestamp {
        None | Some(Value::Null) => return Ok(received_at),
        Some(Value::Number(n)) => n.as_i64(),
        Some(_) => None,
    };
    match millis {
        Some(ms) if ms > received_at && ms - received_at <= MAX_CLOCK_AHEAD => Ok(received_at),
        Some(ms) if ms <= received_at && received_at - ms <= MAX_EVENT_AGE => Ok(ms),
        _ => Err(DeviceRefusal::invalid(format!(
            "timestamp must be milliseconds since the epoch, at most {} days ago and not in \
             the future",
            MAX_EVENT_AGE / DAY_MILLIS
        ))),
    }
}

fn parse_metadata(value: Option<&Value>) -> Result<Option<String>, DeviceRefusal> {
    let object = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(DeviceRefusal::invalid(
                "metadata must be an object of strings",
            ))
        }
    };
    if object.len() > MAX_METADATA_KEYS {
        return Err(DeviceRefusal::invalid(format!(
            "metadata has {} keys; at most {MAX_METADATA_KEYS}",
            object.len()
        )));
    }
    for (key, value) in object {
        let Value::String(text) = value else {
            return Err(DeviceRefusal::invalid(format!(
                "metadata `{key}` must be a string"
            )));
        };
        if key.len() > MAX_METADATA_KEY_LEN || text.len() > MAX_METADATA_VALUE_LEN {
            return Err(DeviceRefusal::invalid(format!(
                "metadata `{key}` is too long (keys up to {MAX_METADATA_KEY_LEN}, values up to {MAX_METADATA_VALUE_LEN} characters)"
            )));
        }
    }
    Ok(Some(Value::Object(object.clone()).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_a_queued_event() {
        let event = StatsEvent::parse(
            &json!({"app_id": "com.example.app", "device_id": "ABC", "action": "set",
                    "version_name": "1.0.1", "old_version_name": "builtin",
                    "timestamp": 1_700_000_000_000i64, "metadata": {"reason": "x"}}),
            1_700_000_000_000 + 5_000,
        )
        .unwrap();
        assert_eq!(event.device_id, "abc");
        assert_eq!(event.occurred_at, 1_700_000_000_000);
        assert_eq!(event.metadata.as_deref(), Some(r#"{"reason":"x"}"#));
    }

    #[test]
    fn actions_map_to_kinds_and_days() {
        assert_eq!(
            ActivityKind::of("download_complete"),
            ActivityKind::Download
        );
        assert_eq!(ActivityKind::of("set"), ActivityKind::Install);
        assert_eq!(ActivityKind::of("checksum_fail"), ActivityKind::Failure);
        assert_eq!(
            ActivityKind::of("app_moved_to_foreground"),
            ActivityKind::Other
        );
        assert_eq!(day_of(DAY_MILLIS * 3 + 5), DAY_MILLIS * 3);
    }

    #[test]
    fn unknown_actions_are_aggregated_by_kind() {
        assert_eq!(aggregated_action("set"), "set");
        assert_eq!(
            aggregated_action("webview_page_loaded"),
            "webview_page_loaded"
        );
        assert_eq!(aggregated_action("made_up_fail"), OTHER_FAILURE);
        assert_eq!(ActivityKind::of(OTHER_FAILURE), ActivityKind::Failure);
        assert_eq!(aggregated_action("made-up-7"), OTHER_ACTION);
        assert_eq!(ActivityKind::of(OTHER_ACTION), ActivityKind::Other);
    }

    #[test]
    fn fields_are_bounded_as_the_official_backend_bounds_them() {
        let now = 1_700_000_000_000;
        let event = |extra: serde_json::Value| {
            let mut body = json!({"app_id": "com.example.app", "device_id": "d", "action": "set"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            StatsEvent::parse(&body, now)
        };
        assert!(event(json!({"device_id": "a".repeat(36), "custom_id": "c".repeat(36)})).is_ok());
        let per_file = format!("{}:{}", "1".repeat(128), "assets/".repeat(100));
        assert!(event(json!({ "version_name": per_file })).is_ok());
        for (field, value) in [
            ("device_id", "a".repeat(37)),
            ("custom_id", "c".repeat(37)),
            ("app_id", "a".repeat(3_900_000)),
            ("version_name", "9".repeat(129)),
            ("old_version_name", format!("{}:x", "9".repeat(129))),
            ("version_name", format!("1.0.0:{}", "x".repeat(2000))),
            ("plugin_version", "8".repeat(65)),
        ] {
            let refused = event(json!({ field: value })).unwrap_err();
            assert!(
                refused.message.contains(field),
                "{field}: {}",
                refused.message
            );
        }
    }

    #[test]
    fn timestamps_are_refused_or_clamped_outside_a_month() {
        let now = 1_700_000_000_000;
        let at = |ts: serde_json::Value| {
            StatsEvent::parse(
                &json!({"app_id": "a.b", "device_id": "d", "action": "set", "timestamp": ts}),
                now,
            )
            .map(|e| e.occurred_at)
        };
        assert_eq!(at(json!(now - DAY_MILLIS)), Ok(now - DAY_MILLIS));
        assert_eq!(at(json!(now + 60_000)), Ok(now), "a fast clock is clamped");
        for refused in [
            json!(1),
            json!(i64::MAX),
            json!(now - 32 * DAY_MILLIS),
            json!(now + 2 * MAX_CLOCK_AHEAD),
            json!(-5),
            json!(1.5),
            json!("x"),
        ] {
            assert!(at(refused.clone()).is_err(), "{refused}");
        }
    }

    #[test]
    fn refuses_bad_events() {
        assert!(StatsEvent::parse(&json!({"app_id": "a", "device_id": "d"}), 0).is_err());
        assert!(StatsEvent::parse(
            &json!({"app_id": "a", "device_id": "d", "action": "set", "metadata": {"k": 1}}),
            0
        )
        .is_err());
        assert!(StatsEvent::parse(
            &json!({"app_id": "a", "device_id": "d", "action": "drop table"}),
            0
        )
        .is_err());
    }
}
