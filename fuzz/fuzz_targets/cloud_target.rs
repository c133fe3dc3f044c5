//! cargo-fuzz target: `helios::fuzzing::cloud_target` on raw bytes (see src/fuzzing.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| helios::fuzzing::cloud_target(data));
