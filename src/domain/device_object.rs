//! A device's JSON object read without building a `serde_json::Value`: one pass over the
//! bytes that keeps the top-level fields the update check reads ([`FIELDS`]), strings borrowed
//! from the body where they have no escapes, and checks the others' syntax without keeping
//! them. It reads only what plugins send (one flat object); anything else, a nested array or
//! object, a number with an exponent, any syntax error, is [`NotFlat`], and the caller reads the
//! body with the `Value` parse instead, which gives the refusal message. So this reader never
//! decides on its own that a body is bad, and the two reads cannot disagree about what a good
//! one says (a unit test and the fuzz target compare them). The `/updates` check reads its
//! InfoObject this way; [`super::device::DeviceFields`] gives both forms the same field rules.

use std::borrow::Cow;

/// One top-level field's value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Bool(bool),
    Number,
    Str(Cow<'a, str>),
}

/// Declares the fields a [`DeviceObject`] keeps: their names in [`FIELDS`], and the slot of
/// each name (its place in the list), found by comparing it with each kept name in turn
/// instead of a scan of the fields read.
macro_rules! kept_fields {
    ($($name:literal),* $(,)?) => {
        /// The InfoObject fields the update check reads (`DeviceInfo::from_fields`); a
        /// [`DeviceObject`] keeps these and no others.
        pub const FIELDS: [&str; [$($name),*].len()] = [$($name),*];

        #[allow(unused_assignments)] // the count after the last name
        fn slot_of(name: &str) -> Option<usize> {
            let mut slot = 0;
            $(
                if name == $name {
                    return Some(slot);
                }
                slot += 1;
            )*
            None
        }
    };
}

kept_fields! {
    "platform",
    "app_id",
    "device_id",
    "version_build",
    "version_code",
    "version_name",
    "plugin_version",
    "defaultChannel",
    "key_id",
    "is_emulator",
    "is_prod",
}

/// The [`FIELDS`] of a flat JSON object, each where its name puts it (a repeated name: the last
/// one counts, as in `serde_json`). The values borrow the body; only a string with escapes is
/// decoded into a copy.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DeviceObject<'a> {
    values: [Option<FieldValue<'a>>; FIELDS.len()],
}

impl<'a> DeviceObject<'a> {
    /// The object `bytes` hold, if they are UTF-8 text of one flat JSON object and nothing else.
    pub fn from_json(bytes: &'a [u8]) -> Result<DeviceObject<'a>, NotFlat> {
        // Checked once here; every string then is a slice of valid text.
        let text = std::str::from_utf8(bytes).map_err(|_| NotFlat)?;
        let mut reader = Reader { text, at: 0 };
        let object = reader.object()?;
        reader.skip_whitespace();
        if reader.at != text.len() {
            return Err(NotFlat);
        }
        Ok(object)
    }

    /// The value of `name`, one of [`FIELDS`] (any other name is not kept: `None`).
    pub fn get(&self, name: &str) -> Option<&FieldValue<'a>> {
        let slot = slot_of(name);
        debug_assert!(slot.is_some(), "{name} is not a kept InfoObject field");
        self.values[slot?].as_ref()
    }
}

/// The bytes are not one flat JSON object this reader takes (the `Value` parse decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFlat;

/// Integer digits beyond which a number might overflow an `f64`, which `serde_json` refuses.
const MAX_PLAIN_DIGITS: usize = 300;

/// A cursor over JSON text (RFC 8259 grammar, the subset a flat object uses).
struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), NotFlat> {
        self.skip_whitespace();
        if self.peek() != Some(byte) {
            return Err(NotFlat);
        }
        self.at += 1;
        Ok(())
    }

    fn object(&mut self) -> Result<DeviceObject<'a>, NotFlat> {
        self.expect(b'{')?;
        let mut object = DeviceObject::default();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(object);
        }
        loop {
            self.expect(b'"')?;
            let slot = slot_of(&self.string()?);
            self.expect(b':')?;
            self.skip_whitespace();
            let value = self.value()?;
            if let Some(slot) = slot {
                object.values[slot] = Some(value);
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(object);
                }
                _ => return Err(NotFlat),
            }
        }
    }

    fn value(&mut self) -> Result<FieldValue<'a>, NotFlat> {
        match self.peek().ok_or(NotFlat)? {
            b'"' => {
                self.at += 1;
                Ok(FieldValue::Str(self.string()?))
            }
            b't' => self.word("true", FieldValue::Bool(true)),
            b'f' => self.word("false", FieldValue::Bool(false)),
            b'n' => self.word("null", FieldValue::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => Err(NotFlat),
        }
    }

    fn word(&mut self, word: &str, value: FieldValue<'a>) -> Result<FieldValue<'a>, NotFlat> {
        if !self.text[self.at..].starts_with(word) {
            return Err(NotFlat);
        }
        self.at += word.len();
        Ok(value)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)?`; an exponent or a very long integer part is left to
    /// the `Value` parse (it refuses numbers out of an `f64`'s range).
    fn number(&mut self) -> Result<FieldValue<'a>, NotFlat> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = self.digits();
        let leading_zero = self.text.as_bytes()[self.at - digits..].first() == Some(&b'0');
        if digits == 0 || digits > MAX_PLAIN_DIGITS || (leading_zero && digits > 1) {
            return Err(NotFlat);
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(NotFlat);
            }
        }
        match self.peek() {
            Some(b'e' | b'E') => Err(NotFlat),
            _ => Ok(FieldValue::Number),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        self.at - start
    }

    /// The rest of a string whose opening quote was read: borrowed when it has no escapes,
    /// decoded by `serde_json` when it has (escapes are rare in an InfoObject).
    fn string(&mut self) -> Result<Cow<'a, str>, NotFlat> {
        let start = self.at;
        let bytes = self.text.as_bytes();
        let end = start + plain_text_len(&bytes[start..]);
        if bytes.get(end) == Some(&b'"') {
            self.at = end + 1;
            return Ok(Cow::Borrowed(&self.text[start..end]));
        }
        let mut at = end;
        loop {
            match bytes.get(at).copied().ok_or(NotFlat)? {
                b'"' => break,
                b'\\' => at += 2,
                0x00..=0x1f => return Err(NotFlat),
                _ => at += 1,
            }
        }
        self.at = at + 1;
        serde_json::from_str::<String>(&self.text[start - 1..self.at])
            .map(Cow::Owned)
            .map_err(|_| NotFlat)
    }
}

/// How many bytes at the start of `bytes` can be string text as they are: up to the first quote,
/// backslash or control character (JSON strings hold those escaped only), or the end. Eight
/// bytes at a time: in each 64-bit word, `(x - 0x01..) & !x & 0x80..` marks bytes of `x` that
/// are zero (`word ^ quotes`: a quote) or, with `0x20..`, below 0x20. A mark can be wrong only
/// above a right one (a borrow), so the lowest mark of a word is exact.
fn plain_text_len(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH_BITS: u64 = ONES * 0x80;
    let below = |word: u64, byte: u8| word.wrapping_sub(ONES * u64::from(byte)) & !word;
    let mut chunks = bytes.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let marks = (below(word ^ (ONES * u64::from(b'"')), 1)
            | below(word ^ (ONES * u64::from(b'\\')), 1)
            | below(word, 0x20))
            & HIGH_BITS;
        if marks != 0 {
            return at + marks.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    let rest = chunks.remainder();
    at + rest
        .iter()
        .position(|byte| matches!(byte, b'"' | b'\\' | 0x00..=0x1f))
        .unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_fields_are_read() {
        let body = br#" {"app_id": "com.example.app", "n": -0.5, "version_code": 10,
            "is_prod": false, "is_emulator": true, "key_id": null, "other": "x",
            "version_name": "a\"b\u00e9", "app_id": "com.example.last", "": "",
            "platform": "" } "#;
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
            object.get("version_name"),
            Some(&FieldValue::Str(Cow::Owned("a\"bé".into())))
        );
        assert_eq!(object.get("version_code"), Some(&FieldValue::Number));
        assert_eq!(object.get("is_prod"), Some(&FieldValue::Bool(false)));
        assert_eq!(object.get("is_emulator"), Some(&FieldValue::Bool(true)));
        assert_eq!(object.get("key_id"), Some(&FieldValue::Null));
        assert_eq!(
            object.get("platform"),
            Some(&FieldValue::Str(Cow::Borrowed("")))
        );
        assert_eq!(object.get("device_id"), None);
        assert_eq!(DeviceObject::from_json(b"{}"), Ok(DeviceObject::default()));
    }

    #[test]
    fn every_kept_name_has_its_own_slot() {
        let slots: Vec<_> = FIELDS.iter().map(|name| slot_of(name)).collect();
        let expected: Vec<_> = (0..FIELDS.len()).map(Some).collect();
        assert_eq!(slots, expected);
        assert_eq!(slot_of("version_os"), None);
    }

    #[test]
    fn plain_text_ends_at_the_first_quote_backslash_or_control_character() {
        for length in 0..40 {
            for stop in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                // Bytes around the stops (0x20, '#', ']', 0xff), and one more stop after it.
                let mut text: Vec<u8> = (0..length)
                    .map(|i| [b' ', b'#', b']', b'a', 0xff, b'!'][i % 6])
                    .collect();
                text.push(stop);
                text.extend_from_slice(b"abc\"\\");
                assert_eq!(plain_text_len(&text), length, "{text:?}");
            }
            assert_eq!(plain_text_len(&vec![b'x'; length]), length);
        }
    }

    #[test]
    fn anything_but_one_flat_object_is_left_to_the_value_parse() {
        for body in [
            &b"[]"[..],
            b"\"text\"",
            b"{} {}",
            b"{\"a\": }",
            b"",
            b"{\"a\": 1",
            b"{\"a\": 1,}",
            b"{\"a\" 1}",
            b"{a: 1}",
            b"{\"a\": [1]}",
            b"{\"a\": {\"b\": 1}}",
            b"{\"a\": 1e3}",
            b"{\"a\": 01}",
            b"{\"a\": 1.}",
            b"{\"a\": -}",
            b"{\"a\": +1}",
            b"{\"a\": tru}",
            b"{\"a\": nul}",
            b"{\"a\": \"tab\there\"}",
            b"{\"a\": \"\\ud800\"}",
            b"{\"a\": \"\\x\"}",
            b"{\"a\": \"unterminated\\\"}",
            b"{\"a\": 1}\x0c",
            b"{\"a\": \"\xff\"}",
        ] {
            assert_eq!(
                DeviceObject::from_json(body),
                Err(NotFlat),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!("{{\"a\": {}}}", "9".repeat(MAX_PLAIN_DIGITS + 1));
        assert_eq!(DeviceObject::from_json(long.as_bytes()), Err(NotFlat));
    }
}
