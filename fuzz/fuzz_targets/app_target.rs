//! cargo-fuzz target: `helios::fuzzing::app_target` on raw bytes (see src/fuzzing.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| helios::fuzzing::app_target(data));
