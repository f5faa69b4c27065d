//! The wall clock, for the shells and the tests.
//!
//! The sans-IO cores never call this: they take the time as an argument.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall-clock time in Unix seconds (0 if the clock is before 1970). TURN REST credentials
/// and token expiry are wall-clock based.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
