//! Finding the credential in an upgrade request (protocol.md §1.1).
//!
//! Sources, first non-empty wins, as the real server reads them: cookie `token`, query
//! `?token=`, header `Authorization: Bearer <jwt>`, cookie `accesskey`, query `?accesskey=`.
//! A `token` that starts with `vb_` is an access key (the tutorial passes keys that way).

use std::fmt;

/// A credential as the client sent it.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A JWT.
    Token(String),
    /// An access key (`vb_…`).
    AccessKey(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret itself.
        match self {
            Credential::Token(_) => f.write_str("Credential::Token(..)"),
            Credential::AccessKey(_) => f.write_str("Credential::AccessKey(..)"),
        }
    }
}

/// The access-key prefix.
pub const ACCESS_KEY_PREFIX: &str = "vb_";

fn classify(value: String) -> Credential {
    if value.starts_with(ACCESS_KEY_PREFIX) {
        Credential::AccessKey(value)
    } else {
        Credential::Token(value)
    }
}

fn cookie<'a>(cookie_headers: &[&'a str], name: &str) -> Option<&'a str> {
    cookie_headers
        .iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, v)| k.trim() == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim().trim_matches('"'))
}

fn query(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Finds the credential among the request's `Cookie` headers, its query string (without the
/// `?`) and its `Authorization` header.
pub fn find(
    cookie_headers: &[&str],
    query_string: Option<&str>,
    authorization: Option<&str>,
) -> Option<Credential> {
    if let Some(token) = cookie(cookie_headers, "token") {
        return Some(classify(token.to_owned()));
    }
    if let Some(token) = query(query_string, "token") {
        return Some(classify(token));
    }
    if let Some(token) = bearer(authorization) {
        return Some(classify(token.to_owned()));
    }
    if let Some(key) = cookie(cookie_headers, "accesskey") {
        return Some(Credential::AccessKey(key.to_owned()));
    }
    query(query_string, "accesskey").map(Credential::AccessKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> Option<Credential> {
        Some(Credential::Token(s.into()))
    }

    fn key(s: &str) -> Option<Credential> {
        Some(Credential::AccessKey(s.into()))
    }

    #[test]
    fn sources_in_order() {
        let all_cookies = ["a=1; token=cookie-jwt", "accesskey=vb_cookie"];
        let all_query = Some("token=query-jwt&accesskey=vb_query");
        let bearer_header = Some("Bearer header-jwt");
        assert_eq!(
            find(&all_cookies, all_query, bearer_header),
            token("cookie-jwt")
        );
        assert_eq!(
            find(&all_cookies[1..], all_query, bearer_header),
            token("query-jwt")
        );
        assert_eq!(
            find(&all_cookies[1..], Some("accesskey=vb_query"), bearer_header),
            token("header-jwt")
        );
        assert_eq!(
            find(&all_cookies[1..], Some("accesskey=vb_query"), None),
            key("vb_cookie")
        );
        assert_eq!(find(&[], Some("accesskey=vb_query"), None), key("vb_query"));
        assert_eq!(find(&[], None, None), None);
    }

    #[test]
    fn empty_values_do_not_count() {
        assert_eq!(
            find(&["token="], Some("token=&accesskey=vb_x"), Some("Bearer  ")),
            key("vb_x")
        );
    }

    #[test]
    fn vb_tokens_are_access_keys_and_query_values_are_decoded() {
        assert_eq!(find(&[], Some("token=vb_abc"), None), key("vb_abc"));
        assert_eq!(find(&[], Some("token=a%2Bb.c"), None), token("a+b.c"));
        assert_eq!(find(&[], None, Some("bearer lower")), token("lower"));
        assert_eq!(find(&[], None, Some("Basic abc")), None);
    }

    #[test]
    fn debug_hides_the_secret() {
        let text = format!("{:?}", Credential::Token("secret-jwt".into()));
        assert!(!text.contains("secret"));
    }
}
