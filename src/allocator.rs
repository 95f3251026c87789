//! mimalloc's options, as the binary sets them; `examples/floor` (the
//! bare forwarders `bench/run.sh` measures beside the binary) includes this
//! file too, so that both run on the same allocator, set alike.

/// mimalloc's `purge_delay` option: how long freed pages stay committed
/// before they go back to the system. Its C library numbers options by
/// an enum; this is `mi_option_purge_delay`'s place in mimalloc 3
/// (libmimalloc-sys 0.1.49), read back by the test below.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The purge delay the binary runs with, in milliseconds: mimalloc 2's
/// default. mimalloc 3's own default (1,000 ms) keeps a second of freed
/// pages resident, and with 1,000 connections coming and going the
/// peak resident set then read 28 to 37 MiB; with 10 ms it stayed at
/// 26–27 MiB, for 4–11 % more CPU per request at 1,000 connections
/// (none seen at 64; BENCHMARKS.md, "mimalloc's purge delay").
/// `MIMALLOC_PURGE_DELAY=1000` in the environment takes the other side
/// of that trade.
const PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Sets [`PURGE_DELAY_MS`] as the default purge delay: the
/// environment's `MIMALLOC_PURGE_DELAY`, when set, still wins (mimalloc
/// read it when the process loaded, and a default does not override
/// it).
#[allow(unsafe_code)]
pub fn purge_freed_memory_soon() {
    // SAFETY: sets one option's value in mimalloc's table of options,
    // before any other thread exists (the only caution its
    // documentation gives: the call is not thread safe).
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: its documented
    /// default (1,000 ms in mimalloc 3) until the binary's own is set,
    /// and the new value after. A libmimalloc-sys upgrade that
    /// renumbers the options, or changes the default, fails here.
    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_set() {
        assert!(
            std::env::var_os("MIMALLOC_PURGE_DELAY").is_none(),
            "run without MIMALLOC_PURGE_DELAY: its value would be read back"
        );
        // SAFETY: reads and sets one option; the test harness's other
        // threads do not touch mimalloc's options.
        unsafe {
            assert_eq!(libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY), 1000);
            purge_freed_memory_soon();
            assert_eq!(
                libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                PURGE_DELAY_MS
            );
        }
    }
}
