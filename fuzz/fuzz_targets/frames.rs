//! WebSocket frames from clients: the decoder never panics, never returns more than the
//! limit, and never needs a buffer beyond the limit.
#![no_main]

use bytes::BytesMut;
use fanout_protocol::ws::{Decoder, Message, Role};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(Role::Server, 1024);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(7) {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Message::Text(t) | Message::Binary(t))) => assert!(t.len() <= 1024),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
