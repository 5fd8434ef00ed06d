//! VoIPBIN's timestamp layout: `2026-01-20T10:30:00.000000Z` (UTC, microseconds).
//!
//! Tokens carry their expiry in this layout (`expire`), older ones in
//! `2026-01-20 10:30:00.000000`; envelopes carry the event time in it.

use std::time::SystemTime;

use time::format_description::FormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

const LAYOUT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
const OLD_LAYOUT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]");

/// Formats a point in time in VoIPBIN's layout.
pub fn format(at: SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    // Formatting a valid date with a fixed layout cannot fail; fall back to the epoch text
    // rather than panic if the time crate ever says otherwise.
    at.format(LAYOUT)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000000Z".to_owned())
}

/// Parses VoIPBIN's layout (or its older space-separated one) as UTC, or any RFC 3339 time
/// (seconds without a fraction, milliseconds, `+00:00` or another offset), as tokens minted
/// by other libraries write it.
///
/// Returns `None` for any other text.
pub fn parse(text: &str) -> Option<SystemTime> {
    if let Ok(parsed) = PrimitiveDateTime::parse(text, LAYOUT)
        .or_else(|_| PrimitiveDateTime::parse(text, OLD_LAYOUT))
    {
        return Some(parsed.assume_utc().into());
    }
    let parsed =
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    SystemTime::UNIX_EPOCH
        .checked_add(std::time::Duration::try_from(parsed - OffsetDateTime::UNIX_EPOCH).ok()?)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn round_trip() {
        let at = UNIX_EPOCH + Duration::from_micros(1_768_905_000_123_456);
        let text = format(at);
        assert_eq!(text, "2026-01-20T10:30:00.123456Z");
        assert_eq!(parse(&text), Some(at));
        assert_eq!(parse("2026-01-20 10:30:00.123456"), Some(at));
    }

    #[test]
    fn rfc3339_variants() {
        let at = UNIX_EPOCH + Duration::from_secs(1_768_905_000);
        for text in [
            "2026-01-20T10:30:00Z",
            "2026-01-20T10:30:00.000Z",
            "2026-01-20T10:30:00+00:00",
            "2026-01-20T10:30:00.000000+00:00",
            "2026-01-20T12:30:00+02:00",
            "2026-01-20t10:30:00z",
        ] {
            assert_eq!(parse(text), Some(at), "{text}");
        }
        assert_eq!(
            parse("2026-01-20T10:30:00.250Z"),
            Some(at + Duration::from_millis(250))
        );
        // Before the epoch: not a time a token can expire at here.
        assert_eq!(parse("1969-12-31T23:59:59Z"), None);
    }

    #[test]
    fn rejects_other_text() {
        for bad in [
            "",
            "2026-01-20",
            "2026-13-01T00:00:00.000000Z",
            "tomorrow",
            "2026-01-20T10:30:00",
            "2026-01-20T10:30:00+0000",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
