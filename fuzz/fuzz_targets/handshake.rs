//! Upgrade requests: the handshake parser never panics, never claims more bytes than it was
//! given, and accepts an upgrade only with a key that is a base64 16-byte nonce.
#![no_main]

use fanout_protocol::rest::HttpError;
use fanout_session::handshake;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fed whole and cut short: every prefix is either a request, more-to-come or malformed.
    for end in [data.len(), data.len() / 2] {
        let Ok(Some((request, len))) = handshake::parse(&data[..end]) else {
            continue;
        };
        assert!(len <= end);
        if request.check().is_ok() {
            let key = request.websocket_key.as_deref().expect("an upgrade has a key");
            assert_eq!(key.len(), 24);
            assert!(handshake::switching_protocols(key).starts_with(b"HTTP/1.1 101 "));
        }
    }
    let _ = handshake::error_response(HttpError::UNSUPPORTED_VERSION, "fuzz");
});
