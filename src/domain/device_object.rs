//! A device's JSON object read without building a `serde_json::Value`: the top-level fields
//! only, strings borrowed from the request body where they have no escapes, nested arrays and
//! objects skipped (only their type is kept, for the refusal message). The `/updates` check
//! reads its InfoObject this way; [`super::device::DeviceFields`] gives both forms the same
//! field rules and messages.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One top-level field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    Number,
    Str(Cow<'a, str>),
    Array,
    Object,
}

/// The top-level fields of a JSON object, in order (a repeated name: the last one counts, as
/// in `serde_json`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceObject<'a> {
    fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
}

impl<'a> DeviceObject<'a> {
    /// The object `bytes` hold, if they are UTF-8 and one JSON object (and nothing else).
    pub fn from_json(bytes: &'a [u8]) -> Result<DeviceObject<'a>, NotAnObject> {
        // Checked once here, so the parser does not check each string again.
        let text = std::str::from_utf8(bytes).map_err(|_| NotAnObject)?;
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let object = deserializer
            .deserialize_map(ObjectVisitor)
            .map_err(|_| NotAnObject)?;
        deserializer.end().map_err(|_| NotAnObject)?;
        Ok(object)
    }

    /// True when a top-level value is an array or an object (skipped, so not checked as the
    /// `Value` parse checks them: depth, number range, escapes). InfoObjects are flat.
    pub fn has_nested_values(&self) -> bool {
        self.fields
            .iter()
            .any(|(_, value)| matches!(value, FieldValue::Array | FieldValue::Object))
    }

    pub fn get(&self, name: &str) -> Option<&FieldValue<'a>> {
        self.fields
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }
}

/// The bytes are not UTF-8 text of one JSON object (the `Value` parse says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAnObject;

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = DeviceObject<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<DeviceObject<'de>, M::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(key) = map.next_key::<BorrowedText>()? {
            fields.push((key.0, map.next_value::<Field>()?.0));
        }
        Ok(DeviceObject { fields })
    }
}

/// Text borrowed from the input when it has no escapes.
struct BorrowedText<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for BorrowedText<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = BorrowedText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedText(Cow::Borrowed(text)))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(BorrowedText(Cow::Owned(text.to_string())))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(BorrowedText(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A field's value, nested containers skipped.
struct Field<'a>(FieldValue<'a>);

impl<'de> de::Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Null))
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Bool(value)))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Number))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Number))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Number))
            }
            fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Str(Cow::Borrowed(text))))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Str(Cow::Owned(text.to_string()))))
            }
            fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
                Ok(Field(FieldValue::Str(Cow::Owned(text))))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, mut items: S) -> Result<Self::Value, S::Error> {
                while items.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field(FieldValue::Array))
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field(FieldValue::Object))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_fields_are_read_and_nested_ones_skipped() {
        let body = br#"{"app_id": "com.example.app", "n": 1.5, "b": false, "z": null,
            "escaped": "a\"b\u00e9", "list": [1, {"x": [2]}], "obj": {"k": "v"},
            "app_id": "com.example.last"}"#;
        let object = DeviceObject::from_json(body).unwrap();
        assert_eq!(
            object.get("app_id"),
            Some(&FieldValue::Str(Cow::Borrowed("com.example.last"))),
            "the last of a repeated name, as serde_json"
        );
        assert!(matches!(
            object.get("app_id"),
            Some(FieldValue::Str(Cow::Borrowed(_)))
        ));
        assert_eq!(
            object.get("escaped"),
            Some(&FieldValue::Str(Cow::Owned("a\"bé".into())))
        );
        assert_eq!(object.get("n"), Some(&FieldValue::Number));
        assert_eq!(object.get("b"), Some(&FieldValue::Bool(false)));
        assert_eq!(object.get("z"), Some(&FieldValue::Null));
        assert_eq!(object.get("list"), Some(&FieldValue::Array));
        assert_eq!(object.get("obj"), Some(&FieldValue::Object));
        assert_eq!(
            object.get("k"),
            None,
            "nested fields are not top-level ones"
        );
    }

    #[test]
    fn anything_but_one_object_is_an_error() {
        for body in [
            &b"[]"[..],
            b"\"text\"",
            b"{} {}",
            b"{\"a\": }",
            b"",
            b"{\"a\": 1",
        ] {
            assert!(DeviceObject::from_json(body).is_err(), "{body:?}");
        }
    }
}
