#![no_main]
// PLACEHOLDER
libfuzzer_sys::fuzz_target!(|_d: &[u8]| {});
