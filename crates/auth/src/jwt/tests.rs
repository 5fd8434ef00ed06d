use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const SECRET: &[u8] = b"test-secret";
const C: &str = "12345678-1234-1234-1234-123456789012";
const A: &str = "98765432-4321-4321-4321-210987654321";
const FUTURE: &str = "2099-01-01T00:00:00.000000Z";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_768_905_000) // 2026-01-20T10:30:00Z
}

fn sign_with(alg: Algorithm, claims: &Value, secret: &[u8]) -> String {
    let key = EncodingKey::from_secret(secret).expect("non-empty secret");
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("encodes")
}

fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, claims, SECRET)
}

fn verify(token: &str) -> Result<Identity, AuthError> {
    Verifier::new(SECRET)
        .expect("non-empty")
        .verify(token, now())
}

fn agent_claims(permission: Value) -> Value {
    json!({"type":"agent","agent":{"id":A,"customer_id":C,"permission":permission,"username":"a"},"expire":FUTURE})
}

fn check_invalid(token: &str, reason: Invalid) {
    assert_eq!(verify(token), Err(AuthError::Invalid(reason)), "{token}");
}

#[test]
fn agent_token() {
    let identity = verify(&sign(&agent_claims(json!(32)))).expect("valid");
    assert_eq!(identity.customer_id.to_string(), C);
    assert_eq!(
        identity.kind,
        Kind::Agent {
            agent_id: Uuid::parse_str(A).expect("uuid"),
            permission: 32
        }
    );
    assert_eq!(
        identity.expires_at,
        fanout_protocol::timestamp::parse(FUTURE)
    );
}

#[test]
fn missing_type_is_an_agent_and_other_hmacs_verify() {
    let mut claims = agent_claims(json!(16));
    claims.as_object_mut().expect("object").remove("type");
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let identity = verify(&sign_with(alg, &claims, SECRET)).expect("valid");
        assert_eq!(identity.kind_label(), "agent");
    }
}

#[test]
fn direct_token() {
    let claims = json!({"type":"direct","direct":{"customer_id":C,"resource_type":"webchat_widget","resource_id":A,"allowed_resource_types":["webchat_session"]},"expire":FUTURE});
    let identity = verify(&sign(&claims)).expect("valid");
    let Kind::Direct(direct) = identity.kind else {
        panic!("not direct: {identity:?}");
    };
    assert_eq!(direct.allowed_resource_types, ["webchat_session"]);
    assert_eq!(direct.resource_type, "webchat_widget");
}

#[test]
fn delegate_and_unknown_types_are_refused() {
    let claims =
        json!({"type":"delegate","sub":A,"aud":"voipbin-api","customer_id":C,"expire":FUTURE});
    check_invalid(&sign(&claims), Invalid::TokenType);
    let claims = json!({"type":"service","expire":FUTURE});
    check_invalid(&sign(&claims), Invalid::TokenType);
}

#[test]
fn forged_signature() {
    let token = sign_with(
        Algorithm::HS256,
        &agent_claims(json!(32)),
        b"another secret",
    );
    check_invalid(&token, Invalid::Signature);
    // A valid token whose payload was swapped keeps a signature that no longer verifies.
    let good = sign(&agent_claims(json!(16)));
    let mut parts: Vec<&str> = good.split('.').collect();
    let admin = URL_SAFE_NO_PAD.encode(agent_claims(json!(0xFFFF)).to_string());
    parts[1] = &admin;
    check_invalid(&parts.join("."), Invalid::Signature);
}

#[test]
fn alg_none_and_public_key_algorithms_are_refused() {
    let payload = URL_SAFE_NO_PAD.encode(agent_claims(json!(0xFFFF)).to_string());
    for alg in ["none", "None", "RS256", "ES256", "PS256", "EdDSA"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg":alg,"typ":"JWT"}).to_string());
        for signature in ["", "c2ln"] {
            let token = format!("{header}.{payload}.{signature}");
            let got = verify(&token);
            assert!(
                matches!(
                    got,
                    Err(AuthError::Invalid(Invalid::Algorithm | Invalid::Malformed))
                ),
                "{alg}: {got:?}"
            );
        }
    }
}

#[test]
fn expiry() {
    let mut claims = agent_claims(json!(32));
    claims["expire"] = json!("2026-01-20T10:29:59.999999Z");
    check_invalid(&sign(&claims), Invalid::Expired);
    claims["expire"] = json!("2026-01-20 10:29:59.000000");
    check_invalid(&sign(&claims), Invalid::Expired);
    // A numeric exp in the past wins over a future expire.
    claims["expire"] = json!(FUTURE);
    claims["exp"] = json!(1_768_904_999u64);
    check_invalid(&sign(&claims), Invalid::Expired);
    claims["exp"] = json!(1_768_905_060u64);
    let identity = verify(&sign(&claims)).expect("valid for a minute");
    assert_eq!(
        identity.expires_at,
        Some(UNIX_EPOCH + Duration::from_secs(1_768_905_060))
    );
}

#[test]
fn expire_in_rfc3339_variants() {
    let mut claims = agent_claims(json!(32));
    for expire in [
        "2026-01-20T10:31:00Z",
        "2026-01-20T10:31:00.000Z",
        "2026-01-20T10:31:00+00:00",
        "2026-01-20T11:31:00+01:00",
    ] {
        claims["expire"] = json!(expire);
        let identity = verify(&sign(&claims)).unwrap_or_else(|e| panic!("{expire}: {e}"));
        assert_eq!(
            identity.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(1_768_905_060)),
            "{expire}"
        );
    }
    claims["expire"] = json!("2026-01-20T10:29:00Z");
    check_invalid(&sign(&claims), Invalid::Expired);
}

#[test]
fn huge_or_fractional_exp_never_overflows() {
    let mut claims = agent_claims(json!(32));
    for exp in [
        json!(u64::MAX),
        json!(1e300),
        json!(f64::MAX),
        json!(i64::MAX),
    ] {
        claims["exp"] = exp.clone();
        // Past anything the clock holds: `expire` alone decides.
        let identity = verify(&sign(&claims)).unwrap_or_else(|e| panic!("{exp}: {e}"));
        assert_eq!(identity.expires_at, far_expire(), "{exp}");
    }
    claims["exp"] = json!(1_768_905_060.5);
    let identity = verify(&sign(&claims)).expect("valid");
    assert_eq!(
        identity.expires_at,
        Some(UNIX_EPOCH + Duration::from_millis(1_768_905_060_500))
    );
    claims["exp"] = json!(-1);
    check_invalid(&sign(&claims), Invalid::Claims);
}

fn far_expire() -> Option<SystemTime> {
    fanout_protocol::timestamp::parse(FUTURE)
}

#[test]
fn malformed_claims_are_a_clear_401() {
    let base = agent_claims(json!(32));
    type Mutation = Box<dyn Fn(&mut Value)>;
    let mutations: Vec<Mutation> = vec![
        Box::new(|c| {
            c.as_object_mut().expect("object").remove("expire");
        }),
        Box::new(|c| c["expire"] = json!(1_900_000_000)),
        Box::new(|c| c["expire"] = json!("next week")),
        Box::new(|c| c["expire"] = json!(null)),
        Box::new(|c| c["exp"] = json!("soon")),
        Box::new(|c| c["type"] = json!(5)),
        Box::new(|c| {
            c.as_object_mut().expect("object").remove("agent");
        }),
        Box::new(|c| c["agent"]["id"] = json!("not-a-uuid")),
        Box::new(|c| c["agent"]["customer_id"] = json!(null)),
        Box::new(|c| c["agent"]["customer_id"] = json!("00000000-0000-0000-0000-000000000000")),
        Box::new(|c| c["agent"]["permission"] = json!("admin")),
        Box::new(|c| c["agent"]["permission"] = json!(-1)),
        Box::new(|c| c["agent"] = json!([1, 2])),
    ];
    for mutate in mutations {
        let mut claims = base.clone();
        mutate(&mut claims);
        check_invalid(&sign(&claims), Invalid::Claims);
    }
    let direct = json!({"type":"direct","direct":{"customer_id":C,"allowed_resource_types":"webchat_session"},"expire":FUTURE});
    check_invalid(&sign(&direct), Invalid::Claims);
    check_invalid(&sign(&json!([1, 2, 3])), Invalid::Claims);
    check_invalid(&sign(&json!("string")), Invalid::Claims);
}

#[test]
fn garbage_tokens() {
    for token in [
        "",
        ".",
        "..",
        "a.b.c",
        "abc",
        "😀.😀.😀",
        "eyJhbGciOiJIUzI1NiJ9..",
        &"a".repeat(10_000),
    ] {
        let got = verify(token);
        assert!(
            matches!(got, Err(AuthError::Invalid(_))),
            "{token:?}: {got:?}"
        );
    }
}

#[test]
fn empty_secret_is_refused() {
    assert!(Verifier::new(b"").is_err());
}
