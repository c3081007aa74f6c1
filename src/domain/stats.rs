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

/// Milliseconds in a day: activity is counted per UTC day.
pub const DAY_MILLIS: UnixMillis = 86_400_000;

/// The UTC day (its first millisecond) an instant falls in.
pub fn day_of(at: UnixMillis) -> UnixMillis {
    at - at.rem_euclid(DAY_MILLIS)
}

/// Events of one action on one day, as the stores count them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityCount {
    pub day: UnixMillis,
    pub action: String,
    pub count: u64,
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
        let owned = |name: &str| -> Result<Option<String>, DeviceRefusal> {
            Ok(fields.optional_str(name)?.map(str::to_string))
        };
        let occurred_at = match value.get("timestamp") {
            None | Some(Value::Null) => received_at,
            Some(Value::Number(n)) => n.as_i64().filter(|ms| *ms > 0).ok_or_else(|| {
                DeviceRefusal::invalid("timestamp must be milliseconds since the epoch")
            })?,
            Some(_) => {
                return Err(DeviceRefusal::invalid(
                    "timestamp must be milliseconds since the epoch",
                ))
            }
        };
        Ok(StatsEvent {
            app_id: fields.required_str("app_id")?.to_string(),
            device_id: fields.required_str("device_id")?.to_ascii_lowercase(),
            action: action.to_string(),
            platform: owned("platform")?,
            version_name: owned("version_name")?,
            old_version_name: owned("old_version_name")?,
            version_build: owned("version_build")?,
            version_code: owned("version_code")?,
            plugin_version: owned("plugin_version")?,
            is_emulator: fields.optional_bool("is_emulator")?,
            is_prod: fields.optional_bool("is_prod")?,
            custom_id: owned("custom_id")?,
            metadata: parse_metadata(value.get("metadata"))?,
            occurred_at,
        })
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
            5,
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
