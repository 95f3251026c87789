#![no_main]
//! See `pusher_cutover::fuzz::query_and_verify`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pusher_cutover::fuzz::query_and_verify(data));
