//! What a device sends: the plugin's "InfoObject", read leniently where plugins differ and
//! strictly where a wrong value would mislead the update decision.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use super::channel_policy::DeviceTraits;
use super::device_object::{DeviceObject, FieldValue};
use super::stats::MAX_DEVICE_ID_LEN;
use super::{ChannelName, Platform, PluginVersion, ReleaseRef};

/// How the plugin treats a refusal (`kind` in the answer): `up_to_date` and `blocked` end
/// quietly, `failed` also emits `downloadFailed` and a `download_fail` stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    UpToDate,
    Blocked,
    Failed,
}

/// An expected outcome that is not an update, in the shape every plugin understands:
/// HTTP 200 with `error`, `message` and `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRefusal {
    pub error: &'static str,
    pub message: String,
    pub kind: RefusalKind,
    /// The bundle the device cannot get without a new native build. Sent as `version` with
    /// `major: true` and `breaking: true`, so plugins fire `majorAvailable` (5.x and 6.x read
    /// `major` with `version`) and `breakingAvailable` (7.22+ read `breaking`).
    pub store_update: Option<String>,
}

impl Serialize for DeviceRefusal {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("error", self.error)?;
        map.serialize_entry("message", &self.message)?;
        map.serialize_entry("kind", &self.kind)?;
        if let Some(version) = &self.store_update {
            map.serialize_entry("version", version)?;
            map.serialize_entry("major", &true)?;
            map.serialize_entry("breaking", &true)?;
        }
        map.end()
    }
}

impl DeviceRefusal {
    pub fn failed(error: &'static str, message: impl Into<String>) -> DeviceRefusal {
        DeviceRefusal {
            error,
            message: message.into(),
            kind: RefusalKind::Failed,
            store_update: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> DeviceRefusal {
        DeviceRefusal::failed("invalid_request", message)
    }
}

/// Reads the fields of a device's JSON object, with errors that name the field: the same
/// rules whether the object was parsed into a `Value` or read as a [`DeviceObject`].
pub struct DeviceFields<'a>(Source<'a>);

enum Source<'a> {
    Json(&'a Map<String, Value>),
    Object(&'a DeviceObject<'a>),
}

/// A field as the rules read it.
enum FieldRef<'a> {
    Null,
    Bool(bool),
    Number,
    Str(&'a str),
    Array,
    Object,
}

impl FieldRef<'_> {
    fn json_type(&self) -> &'static str {
        match self {
            FieldRef::Null => "null",
            FieldRef::Bool(_) => "a boolean",
            FieldRef::Number => "a number",
            FieldRef::Str(_) => "a string",
            FieldRef::Array => "an array",
            FieldRef::Object => "an object",
        }
    }
}

impl<'a> DeviceFields<'a> {
    pub fn new(body: &'a Value) -> Result<DeviceFields<'a>, DeviceRefusal> {
        body.as_object()
            .map(|map| DeviceFields(Source::Json(map)))
            .ok_or_else(|| {
                DeviceRefusal::invalid(
                    "the request body must be a JSON object of device information",
                )
            })
    }

    /// The fields of a [`DeviceObject`], which keeps only `device_object::FIELDS` (what
    /// [`DeviceInfo::from_fields`] reads): any other name reads as absent, so a rule that
    /// reads a new field needs it added there.
    pub fn of(object: &'a DeviceObject<'a>) -> DeviceFields<'a> {
        DeviceFields(Source::Object(object))
    }

    fn get(&self, name: &str) -> Option<FieldRef<'a>> {
        match self.0 {
            Source::Json(map) => map.get(name).map(|value| match value {
                Value::Null => FieldRef::Null,
                Value::Bool(b) => FieldRef::Bool(*b),
                Value::Number(_) => FieldRef::Number,
                Value::String(s) => FieldRef::Str(s),
                Value::Array(_) => FieldRef::Array,
                Value::Object(_) => FieldRef::Object,
            }),
            Source::Object(object) => object.get(name).map(|value| match value {
                FieldValue::Null => FieldRef::Null,
                FieldValue::Bool(b) => FieldRef::Bool(*b),
                FieldValue::Number => FieldRef::Number,
                FieldValue::Str(s) => FieldRef::Str(s),
            }),
        }
    }

    /// A string field; absent, null and "" all read as `None`.
    pub fn optional_str(&self, name: &str) -> Result<Option<&'a str>, DeviceRefusal> {
        match self.get(name) {
            None | Some(FieldRef::Null) => Ok(None),
            Some(FieldRef::Str("")) => Ok(None),
            Some(FieldRef::Str(s)) => Ok(Some(s)),
            Some(other) => Err(DeviceRefusal::invalid(format!(
                "field `{name}` must be a string, got {}",
                other.json_type()
            ))),
        }
    }

    /// [`Self::optional_str`] of at most `max` characters.
    pub fn bounded_str(&self, name: &str, max: usize) -> Result<Option<&'a str>, DeviceRefusal> {
        let value = self.optional_str(name)?;
        match value {
            Some(text) if text.chars().count() > max => Err(DeviceRefusal::invalid(format!(
                "field `{name}` is longer than {max} characters"
            ))),
            _ => Ok(value),
        }
    }

    pub fn required_str(&self, name: &str) -> Result<&'a str, DeviceRefusal> {
        self.optional_str(name)?.ok_or_else(|| {
            DeviceRefusal::failed("missing_info", format!("field `{name}` is required"))
        })
    }

    pub fn optional_bool(&self, name: &str) -> Result<Option<bool>, DeviceRefusal> {
        match self.get(name) {
            None | Some(FieldRef::Null) => Ok(None),
            Some(FieldRef::Bool(b)) => Ok(Some(b)),
            // Query-string requests (GET /channel_self) carry booleans as text.
            Some(FieldRef::Str(s)) if s == "true" || s == "false" => Ok(Some(s == "true")),
            Some(other) => Err(DeviceRefusal::invalid(format!(
                "field `{name}` must be a boolean, got {}",
                other.json_type()
            ))),
        }
    }

    pub fn platform(&self) -> Result<Platform, DeviceRefusal> {
        self.required_str("platform")?
            .parse()
            .map_err(|e: super::InvalidInput| DeviceRefusal::invalid(e.0))
    }

    pub fn plugin_version(&self) -> Result<Option<PluginVersion>, DeviceRefusal> {
        let Some(raw) = self.optional_str("plugin_version")? else {
            return Ok(None);
        };
        let version = PluginVersion::parse(raw).ok_or_else(|| {
            DeviceRefusal::invalid(format!("plugin_version {raw:?} is not a version"))
        })?;
        if !version.is_supported() {
            return Err(DeviceRefusal::failed(
                "unsupported_plugin_version",
                format!("plugin {raw} is too old; update @capgo/capacitor-updater to 5 or newer"),
            ));
        }
        Ok(Some(version))
    }

    /// What channel rules look at: the platform, and the emulator and production flags.
    pub fn traits(&self) -> Result<DeviceTraits, DeviceRefusal> {
        Ok(DeviceTraits {
            platform: self.platform()?,
            is_emulator: self.optional_bool("is_emulator")?,
            is_prod: self.optional_bool("is_prod")?,
        })
    }

    /// A device id: at most 36 characters, lowercased (plugins before 7 sent uppercase).
    pub fn device_id(&self) -> Result<Cow<'a, str>, DeviceRefusal> {
        let device_id = self.required_str("device_id")?;
        if device_id.len() > MAX_DEVICE_ID_LEN {
            return Err(DeviceRefusal::invalid(format!(
                "device_id is longer than {MAX_DEVICE_ID_LEN} characters"
            )));
        }
        // A fold, not `any`: without an early exit the scan is vectorised (ids are 36 bytes).
        let has_capitals = device_id
            .bytes()
            .fold(false, |seen, b| seen | b.is_ascii_uppercase());
        Ok(if has_capitals {
            Cow::Owned(device_id.to_ascii_lowercase())
        } else {
            Cow::Borrowed(device_id)
        })
    }

    /// The channel a device asks for in `field` (`defaultChannel` or `channel`).
    pub fn channel(&self, field: &str) -> Result<Option<ChannelName>, DeviceRefusal> {
        self.optional_str(field)?
            .map(|name| ChannelName::parse(name).map_err(|e| DeviceRefusal::invalid(e.0)))
            .transpose()
    }
}

/// The version name a device reports while it runs the bundle shipped in the binary.
pub const BUILTIN_VERSION: &str = "builtin";

/// What `POST /updates` needs from a device, borrowed from its request body (a check the
/// caches answer copies none of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo<'a> {
    pub release: ReleaseRef<'a>,
    /// Lowercased: a copy only when the device sent capitals (plugins before 7).
    pub device_id: Cow<'a, str>,
    /// The bundle the device runs now: a bundle version, `builtin`, or (plugin 8.44+ on the
    /// builtin bundle) the native `version_build`.
    pub version_name: &'a str,
    pub plugin_version: Option<PluginVersion>,
    /// The channel chosen with `setChannel` or configured as `defaultChannel`.
    pub channel: Option<ChannelName>,
    pub key_id: Option<&'a str>,
    pub is_emulator: Option<bool>,
    pub is_prod: Option<bool>,
}

impl<'a> DeviceInfo<'a> {
    pub fn parse(body: &'a Value) -> Result<DeviceInfo<'a>, DeviceRefusal> {
        DeviceInfo::from_fields(&DeviceFields::new(body)?)
    }

    /// What `fields` say, or why the device is refused.
    pub fn from_fields(fields: &DeviceFields<'a>) -> Result<DeviceInfo<'a>, DeviceRefusal> {
        // In this order: a body with several bad fields is refused for the first.
        let traits = fields.traits()?;
        let app_id = fields.required_str("app_id")?;
        let device_id = fields.device_id()?;
        let version_build = fields.required_str("version_build")?;
        let version_code = fields.required_str("version_code")?;
        Ok(DeviceInfo {
            release: ReleaseRef {
                platform: traits.platform,
                app_id,
                version_name: version_build,
                version_code,
            },
            device_id,
            version_name: fields
                .optional_str("version_name")?
                .unwrap_or(BUILTIN_VERSION),
            plugin_version: fields.plugin_version()?,
            channel: fields.channel("defaultChannel")?,
            key_id: fields.optional_str("key_id")?,
            is_emulator: traits.is_emulator,
            is_prod: traits.is_prod,
        })
    }

    /// True when the device reports that it runs the bundle shipped in the binary.
    pub fn runs_builtin(&self) -> bool {
        self.version_name == BUILTIN_VERSION || self.version_name == self.release.version_name
    }

    pub fn traits(&self) -> DeviceTraits {
        DeviceTraits {
            platform: self.release.platform,
            is_emulator: self.is_emulator,
            is_prod: self.is_prod,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plugin8() -> Value {
        json!({
            "platform": "android", "device_id": "9B1DEB4D-3B7D-4BAD-9BDD-2B0D7B3DCB6D",
            "app_id": "com.example.app", "version_name": "builtin", "version_build": "1.0.0",
            "version_code": "10", "version_os": "14", "plugin_version": "8.51.14",
            "is_emulator": false, "is_prod": true, "custom_id": "", "defaultChannel": "",
            "install_source": "google_play"
        })
    }

    #[test]
    fn parses_a_plugin_8_body() {
        let body = plugin8();
        let info = DeviceInfo::parse(&body).unwrap();
        assert_eq!(info.release.platform, Platform::Android);
        assert_eq!(info.device_id, "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d");
        assert_eq!(info.channel, None);
        assert_eq!(info.is_prod, Some(true));
        assert_eq!(info.is_emulator, Some(false));
        assert!(info.runs_builtin());
    }

    #[test]
    fn names_the_missing_or_mistyped_field() {
        let mut body = plugin8();
        body.as_object_mut().unwrap().remove("version_code");
        let refusal = DeviceInfo::parse(&body).unwrap_err();
        assert_eq!(refusal.error, "missing_info");
        assert!(refusal.message.contains("version_code"));

        let mut body = plugin8();
        body["app_id"] = json!(42);
        let refusal = DeviceInfo::parse(&body).unwrap_err();
        assert_eq!(refusal.error, "invalid_request");
        assert!(refusal.message.contains("app_id") && refusal.message.contains("number"));

        let mut body = plugin8();
        body["platform"] = json!("windows");
        assert!(DeviceInfo::parse(&body)
            .unwrap_err()
            .message
            .contains("windows"));

        let mut body = plugin8();
        body["plugin_version"] = json!("4.9.0");
        assert_eq!(
            DeviceInfo::parse(&body).unwrap_err().error,
            "unsupported_plugin_version"
        );

        assert_eq!(
            DeviceInfo::parse(&json!([1, 2])).unwrap_err().kind,
            RefusalKind::Failed
        );

        // Several bad fields: the first in reading order (app_id, device_id, version_build, ...)
        // is the one named.
        let mut body = plugin8();
        body["device_id"] = json!("x".repeat(MAX_DEVICE_ID_LEN + 1));
        body.as_object_mut().unwrap().remove("version_build");
        let refusal = DeviceInfo::parse(&body).unwrap_err();
        assert_eq!(refusal.error, "invalid_request");
        assert!(refusal.message.contains("device_id"), "{}", refusal.message);
    }
}
