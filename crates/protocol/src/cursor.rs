//! Cursors (protocol.md §1.7): an event's position in its customer's stream, as the opaque
//! string `"cursor"` of envelopes, gap frames and resume requests.
//!
//! A cursor is an epoch and an offset. The epoch names one unbroken stretch of a customer's
//! stream: it changes whenever continuity may have been lost in a way the window cannot
//! describe (the customer's entry was created anew on this node, and, in a cluster, a new
//! owner's term). Within an epoch, offsets grow by one per event, so cursors of one epoch are
//! totally ordered and an offset says exactly which events came after it.
//!
//! On the wire: 16 lower-case hex digits of epoch, `-`, then the offset in lower-case hex
//! without leading zeros (`"9f3c0a1b22d4e5f6-2a"`). Clients store and send it back; they
//! never take it apart. Anything else parses as no cursor at all.

use std::fmt;

/// A position in one customer's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cursor {
    /// The stretch of the stream the offset counts in.
    pub epoch: u64,
    /// The event's number in its epoch, from 0.
    pub offset: u64,
}

/// The longest cursor text: 16 digits, `-`, 16 digits.
pub const MAX_LEN: usize = 33;

impl Cursor {
    /// Parses the wire form; `None` for anything that is not exactly one.
    pub fn parse(text: &str) -> Option<Cursor> {
        if text.len() > MAX_LEN {
            return None;
        }
        let (epoch, offset) = text.split_once('-')?;
        let lower_hex =
            |s: &str| !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if epoch.len() != 16 || !lower_hex(epoch) || !lower_hex(offset) || offset.len() > 16 {
            return None;
        }
        // One spelling per cursor: no leading zeros in the offset.
        if offset.len() > 1 && offset.starts_with('0') {
            return None;
        }
        Some(Cursor {
            epoch: u64::from_str_radix(epoch, 16).ok()?,
            offset: u64::from_str_radix(offset, 16).ok()?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{:x}", self.epoch, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wire_form() {
        let cursor = Cursor {
            epoch: 0x9f3c_0a1b_22d4_e5f6,
            offset: 42,
        };
        assert_eq!(cursor.to_string(), "9f3c0a1b22d4e5f6-2a");
        assert_eq!(Cursor::parse("9f3c0a1b22d4e5f6-2a"), Some(cursor));
        assert_eq!(
            Cursor::parse("0000000000000000-0"),
            Some(Cursor {
                epoch: 0,
                offset: 0
            })
        );
        for bad in [
            "",
            "-",
            "9f3c0a1b22d4e5f6",
            "9f3c0a1b22d4e5f6-",
            "9F3C0A1B22D4E5F6-2a",
            "9f3c0a1b22d4e5f-2a",
            "9f3c0a1b22d4e5f6-02a",
            "9f3c0a1b22d4e5f6-2a-1",
            "9f3c0a1b22d4e5f6-+2a",
            "9f3c0a1b22d4e5f6-10000000000000000",
            " 9f3c0a1b22d4e5f6-2a",
        ] {
            assert_eq!(Cursor::parse(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_and_orders(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let (a, b) = (Cursor { epoch: a.0, offset: a.1 }, Cursor { epoch: b.0, offset: b.1 });
            prop_assert_eq!(Cursor::parse(&a.to_string()), Some(a));
            prop_assert!(a.to_string().len() <= MAX_LEN);
            if a.epoch == b.epoch {
                prop_assert_eq!(a.offset.cmp(&b.offset), a.cmp(&b));
            }
        }

        #[test]
        fn parsing_never_panics(text in ".{0,40}") {
            if let Some(cursor) = Cursor::parse(&text) {
                prop_assert_eq!(cursor.to_string(), text);
            }
        }
    }
}
