//! Time, injected so tests can pin it (signature timestamps are checked
//! against it, and recorded legacy requests carry their recording time).

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of Unix time in seconds.
pub trait Clock: Send + Sync + Debug + 'static {
    /// Seconds since the Unix epoch.
    fn unix_now(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> u64 {
        // A clock set before 1970 reads as the epoch; every timestamp then
        // falls outside the window and is refused, which is the safe side.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A clock that reads whatever it was last set to.
#[derive(Debug, Default)]
pub struct FixedClock(AtomicU64);

impl FixedClock {
    /// A clock stopped at `unix_secs`.
    pub fn new(unix_secs: u64) -> Self {
        Self(AtomicU64::new(unix_secs))
    }

    /// Moves the clock to `unix_secs`.
    pub fn set(&self, unix_secs: u64) {
        self.0.store(unix_secs, Ordering::Relaxed);
    }
}

impl Clock for FixedClock {
    fn unix_now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Unix time `secs` as a UTC date and time (the epoch if out of range).
pub fn datetime(secs: u64) -> time::OffsetDateTime {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}
