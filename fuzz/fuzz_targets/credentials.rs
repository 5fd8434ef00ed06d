//! Credentials: finding them in headers and verifying tokens never panics.
#![no_main]

use std::time::SystemTime;

use fanout_auth::credential::{self, Credential};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\n');
    let (cookie, query, authorization) = (parts.next(), parts.next(), parts.next());
    let cookies: Vec<&str> = cookie.into_iter().collect();
    if let Some(Credential::Token(token)) = credential::find(&cookies, query, authorization) {
        let verifier = fanout_auth::jwt::Verifier::new(b"fuzz").expect("non-empty secret");
        let _ = verifier.verify(&token, SystemTime::now());
    }
    let _ = fanout_auth::jwt::Verifier::new(b"fuzz").expect("non-empty secret").verify(text, SystemTime::now());
});
