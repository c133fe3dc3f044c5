//! cargo-fuzz target: `helios::fuzzing::lock_file` on raw bytes (see src/fuzzing.rs).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| helios::fuzzing::lock_file(data));
