#![no_main]
//! See `pusher_cutover::fuzz::legacy_route`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pusher_cutover::fuzz::legacy_route(data));
