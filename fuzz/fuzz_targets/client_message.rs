//! Client messages: parsing never panics, and accepted requests hold only valid topics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = fanout_protocol::client::parse_request(data) {
        assert!(!request.topics.is_empty());
        for topic in &request.topics {
            assert!(fanout_protocol::Pattern::parse(topic.as_str()).is_ok());
        }
    }
});
