//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), kept here so the stable
//! test suite replays the committed corpus through exactly the same code
//! (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes and panics only on a real defect.

use std::io::Cursor;

use crate::catalog::zip_check::{check_bundle_archive, MAX_ENTRIES, MAX_UNCOMPRESSED_BYTES};
use crate::config::Config;
use crate::domain::device::DeviceInfo;
use crate::domain::stats::StatsEvent;
use crate::http::device::InfoObject;

/// A device request body through the parsers of `/updates`, `/channel_self` and `/stats`.
pub fn device_request(data: &[u8]) {
    compare_both_reads(data);
    let Ok(body) = crate::http::device::parse_json_body(data) else {
        return;
    };
    if let Ok(device) = DeviceInfo::parse(&body) {
        // What the decision reads from a parsed device is usable.
        let _ = (device.runs_builtin(), device.traits());
    }
    let events: Vec<&serde_json::Value> = match &body {
        serde_json::Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    for event in events {
        let _ = StatsEvent::parse(event, 0);
    }
}

/// Reads `bytes` both ways, as `/updates` does ([`InfoObject`]) and through the plain `Value`
/// parse, and panics unless both give the same device or the same refusal; true when they read a
/// device. For the fuzz target and the unit tests of `http::device`.
pub fn compare_both_reads(bytes: &[u8]) -> bool {
    let value = crate::http::device::parse_json_body(bytes);
    let through_value = value
        .as_ref()
        .map_err(Clone::clone)
        .and_then(DeviceInfo::parse);
    let object = InfoObject::read(bytes);
    let through_object = object
        .as_ref()
        .map_err(Clone::clone)
        .and_then(InfoObject::device);
    assert_eq!(
        through_object,
        through_value,
        "the two reads disagree on {}",
        String::from_utf8_lossy(bytes)
    );
    through_object.is_ok()
}

/// Uploaded bytes through the bundle zip check; what it accepts stays within its limits.
pub fn zip_check(data: &[u8]) {
    if let Ok(summary) = check_bundle_archive(Cursor::new(data)) {
        assert!(summary.entries <= MAX_ENTRIES);
        assert!(summary.uncompressed_bytes <= MAX_UNCOMPRESSED_BYTES);
    }
}

/// Text as `config.yml`, with no environment overrides.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_yaml(text, |_| None);
    }
}
