#![no_main]
//! See `pusher_cutover::fuzz::stats_mapper`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| pusher_cutover::fuzz::stats_mapper(data));
