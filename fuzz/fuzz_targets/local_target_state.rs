//! cargo-fuzz target: `helios::fuzzing::local_target_state` on raw bytes (see src/fuzzing.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| helios::fuzzing::local_target_state(data));
