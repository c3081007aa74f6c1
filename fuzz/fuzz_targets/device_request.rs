#![no_main]
//! See `capgo_server::fuzzing::device_request`: the same body replays the corpus in the test suite.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| capgo_server::fuzzing::device_request(data));
