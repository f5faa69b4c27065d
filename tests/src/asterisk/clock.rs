//! Time stamps and identifiers in the formats Asterisk uses on the wire.
//!
//! Written by hand (no date crate) because only two fixed formats are needed: ARI's
//! `2026-11-24T20:24:55.021+0000` and the HTTP/SIP `Date:` header.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds and milliseconds since the Unix epoch.
fn now_parts(t: SystemTime) -> (i64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_millis())
}

/// Unix seconds now (Asterisk builds channel ids and nonces from it).
pub use icegate_common::clock::unix_now;

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// ARI's timestamp format, always UTC: `2026-11-24T20:24:55.021+0000`.
pub fn ari_timestamp(t: SystemTime) -> String {
    let (secs, ms) = now_parts(t);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}+0000",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The `Date:` header format (RFC 7231 IMF-fixdate), e.g. `Tue, 24 Nov 2026 20:24:53 GMT`.
pub fn http_date(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (secs, _) = now_parts(t);
    let days = secs.div_euclid(86_400);
    let (y, mo, d) = civil(days);
    let s = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[mo as usize - 1],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// `n` random lowercase hex digits.
pub fn hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(rand::random::<u32>() % 16, 16).unwrap_or('0'))
        .collect()
}

/// A random (version 4 shaped) UUID, as Asterisk uses for tags, Call-IDs and playback ids.
pub fn uuid() -> String {
    let h = hex(32);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_match_the_recordings() {
        // 1795551893 s is the nonce time of register.json; its Date header was taken then.
        let t = UNIX_EPOCH + Duration::from_millis(1_795_551_893_021);
        assert_eq!(ari_timestamp(t), "2026-11-24T20:24:53.021+0000");
        assert_eq!(http_date(t), "Tue, 24 Nov 2026 20:24:53 GMT");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29, a leap day
        assert_eq!(http_date(t), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn uuid_shape() {
        let u = uuid();
        let parts: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_ne!(uuid(), u);
    }
}
