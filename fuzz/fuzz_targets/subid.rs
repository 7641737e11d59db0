#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pct_passthrough::fuzzcheck::subid(data));
