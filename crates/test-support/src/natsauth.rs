//! NATS credentials made in the test: a user NKey, and an operator, account and user with
//! the JWTs that nats-server's operator mode trusts, written as a `.creds` file.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde_json::{Value, json};

/// A user NKey: its seed (what the client holds) and its public key (what the server lists).
pub struct UserNkey {
    /// `SU…`
    pub seed: String,
    /// `U…`
    pub public: String,
}

/// A new user NKey.
pub fn user_nkey() -> UserNkey {
    let user = KeyPair::new_user();
    UserNkey {
        seed: user.seed().expect("a seed"),
        public: user.public_key(),
    }
}

/// An operator that trusts a system account and one JetStream-enabled account, and a user
/// of the latter.
pub struct Operator {
    /// The server's configuration for it (`trusted`, a memory resolver with the account).
    pub server_conf: String,
    /// The user's `.creds` file text.
    pub creds: String,
}

/// A new [`Operator`].
pub fn operator() -> Operator {
    let operator = KeyPair::new_operator();
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let system = KeyPair::new_account();
    let system_jwt = sign(
        &operator,
        &system.public_key(),
        json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
            },
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        }),
    );
    let account_jwt = sign(
        &operator,
        &account.public_key(),
        json!({
            "limits": {
                "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                "wildcards": true, "conn": -1, "leaf": -1,
                "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
                "max_ack_pending": -1, "mem_max_stream_bytes": -1, "disk_max_stream_bytes": -1,
            },
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        }),
    );
    let user_jwt = sign(
        &account,
        &user.public_key(),
        json!({
            "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
            "type": "user",
            "version": 2,
        }),
    );
    let server_conf = format!(
        "trusted: [\"{}\"]\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{ {}: \"{system_jwt}\", {}: \"{account_jwt}\" }}\n",
        operator.public_key(),
        system.public_key(),
        system.public_key(),
        account.public_key(),
    );
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().expect("a seed")
    );
    Operator { server_conf, creds }
}

/// A JWT about `subject` with `nats` claims, signed by `issuer`.
fn sign(issuer: &KeyPair, subject: &str, nats: Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let claims = json!({
        "jti": uuid::Uuid::new_v4().simple().to_string().to_uppercase(),
        "iat": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "iss": issuer.public_key(),
        "name": "fanout-test",
        "sub": subject,
        "nats": nats,
    });
    let body = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer.sign(body.as_bytes()).expect("signed");
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(signature))
}
