//! Topics, patterns and upstream prefixes: parsing never panics, round-trips, and matching
//! agrees with a plain segment-wise comparison.
#![no_main]

use fanout_protocol::prefix::Prefix;
use fanout_protocol::{Pattern, Topic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(prefix) = Prefix::parse(text) {
        assert_eq!(Prefix::parse(prefix.as_str()).as_ref(), Ok(&prefix));
        assert!(prefix.covers(&prefix));
    }
    let (left, right) = text.split_once('|').unwrap_or((text, text));
    let (Ok(pattern), Ok(topic)) = (Pattern::parse(left), Topic::parse(right)) else { return };
    assert_eq!(Pattern::parse(pattern.as_str()).as_ref(), Ok(&pattern));
    let p: Vec<&str> = pattern.as_str().split(':').collect();
    let t: Vec<&str> = topic.as_str().split(':').collect();
    let plain = p.len() <= t.len() && p.iter().zip(&t).enumerate().all(|(i, (p, t))| (i >= 2 && *p == "*") || p == t);
    assert_eq!(pattern.matches(&topic), plain);
});
