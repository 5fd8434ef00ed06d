//! Upstream frames: decoding never panics, and an event never carries a foreign customer.
#![no_main]

use std::time::SystemTime;

use bytes::Bytes;
use fanout_protocol::prefix::Label;
use fanout_protocol::upstream::{Context, decode};
use fanout_protocol::Scope;
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let customer = Uuid::from_u128(0x1234_5678_1234_1234_1234_1234_5678_9012);
    let frame = Bytes::copy_from_slice(data);
    let label = Label::of("call", Some("call_hangup"));
    let cx = Context { customer_id: customer, received_at: SystemTime::UNIX_EPOCH, label: &label };
    if let Ok(event) = decode(&frame, &cx) {
        assert_eq!(event.fresh_from, 0);
        assert_eq!(event.customer_id, customer);
        assert!(!event.topics.is_empty());
        for topic in &event.topics {
            if topic.scope() == Scope::Customer {
                assert_eq!(topic.owner(), customer);
            }
        }
    }
});
