//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the fuzz targets' own
//! bodies on stable Rust, so every input the fuzzer ever kept stays a regression test.
//! `scripts/fuzz` runs the fuzzer itself (nightly).

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| body(&data));
        assert!(outcome.is_ok(), "{target} panicked on {}", path.display());
        count += 1;
    }
    assert!(count >= 3, "the {target} corpus is in {}", folder.display());
}

#[test]
fn device_request_corpus() {
    replay("device_request", capgo_server::fuzzing::device_request);
}

#[test]
fn zip_check_corpus() {
    replay("zip_check", capgo_server::fuzzing::zip_check);
}

#[test]
fn config_corpus() {
    replay("config", capgo_server::fuzzing::config);
}
