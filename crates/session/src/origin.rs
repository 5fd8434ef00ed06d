//! The origins browsers may open sessions from (`--allowed-origins`).
//!
//! Browsers send `Origin` with every WebSocket handshake, and a page of any site can open
//! one: with a `token` cookie set for the gateway's site, a page elsewhere would ride on it
//! (cross-site WebSocket hijacking). The allow-list closes that. Clients that are not
//! browsers send no `Origin` and are not concerned: they hold their credential themselves.
//!
//! An entry is an origin, `scheme://host[:port]` (`https://app.example.com`,
//! `http://localhost:3000`), or a pattern whose host starts with `*.`, which matches any
//! host below that domain (not the domain itself): `https://*.example.com`. Without a
//! scheme a pattern means `https`: `*.example.com`. `null` (the origin of sandboxed frames
//! and `file:` pages) matches only when listed. An empty list allows every origin.

/// One entry of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// This origin, normalized.
    Exact(String),
    /// Hosts below `suffix` (which starts with a dot), with this scheme and port.
    Below {
        scheme: String,
        suffix: String,
        port: u16,
    },
}

/// The allowed origins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    entries: Vec<Entry>,
}

/// An origin split into its parts: scheme, host, port (the scheme's default when absent).
fn split(origin: &str) -> Option<(&str, &str, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let default = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    // An IPv6 literal keeps its colons inside brackets.
    let (host, port) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => (&rest[..i], rest[i + 1..].parse().ok()?),
        _ => (rest, default),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host, port))
}

fn normalize(scheme: &str, host: &str, port: u16) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    if port == default {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

impl Origins {
    /// Reads the list.
    ///
    /// # Errors
    /// The entries that are not origins or patterns, each with why.
    pub fn parse<S: AsRef<str>>(list: &[S]) -> Result<Origins, Vec<String>> {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for raw in list {
            let entry = raw.as_ref().trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            if !entry.is_ascii() {
                // Browsers send international names in their ASCII (punycode) form.
                problems.push(format!(
                    "allowed origin {entry:?}: write international names in their xn-- form"
                ));
                continue;
            }
            if entry == "null" {
                entries.push(Entry::Exact(entry));
                continue;
            }
            let with_scheme = if entry.starts_with("*.") {
                format!("https://{entry}")
            } else {
                entry.clone()
            };
            match split(&with_scheme) {
                Some((scheme, host, port)) => match host.strip_prefix('*') {
                    Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 && !suffix[1..].contains('*') => {
                        entries.push(Entry::Below {
                            scheme: scheme.to_owned(),
                            suffix: suffix.to_owned(),
                            port,
                        });
                    }
                    None if !host.contains('*') => {
                        entries.push(Entry::Exact(normalize(scheme, host, port)));
                    }
                    _ => problems.push(format!(
                        "allowed origin {entry:?}: a wildcard may only be the first label (*.example.com)"
                    )),
                },
                None => problems.push(format!(
                    "allowed origin {entry:?} is not an origin (https://host[:port]) or a pattern (https://*.example.com)"
                )),
            }
        }
        if problems.is_empty() {
            Ok(Origins { entries })
        } else {
            Err(problems)
        }
    }

    /// Whether the list is empty (every origin allowed).
    pub fn allows_all(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a handshake with this `Origin` header (`None`: without one) may proceed.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.entries.is_empty() {
            return true;
        }
        let origin = origin.trim().to_ascii_lowercase();
        if origin == "null" {
            return self.entries.contains(&Entry::Exact(origin));
        }
        let Some((scheme, host, port)) = split(&origin) else {
            return false;
        };
        let normalized = normalize(scheme, host, port);
        self.entries.iter().any(|entry| match entry {
            Entry::Exact(exact) => *exact == normalized,
            Entry::Below {
                scheme: s,
                suffix,
                port: p,
            } => {
                s == scheme
                    && *p == port
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Origins {
        Origins::parse(list).expect("valid list")
    }

    #[test]
    fn exact_origins_match_with_and_without_default_ports() {
        let o = origins(&["https://app.example.com", "http://localhost:3000/"]);
        assert!(o.allows(Some("https://app.example.com")));
        assert!(o.allows(Some("https://APP.example.com:443")));
        assert!(o.allows(Some("http://localhost:3000")));
        assert!(!o.allows(Some("http://app.example.com")), "another scheme");
        assert!(
            !o.allows(Some("https://app.example.com:8443")),
            "another port"
        );
        assert!(!o.allows(Some("https://app.example.com.evil.net")));
        assert!(!o.allows(Some("https://evilapp.example.com")));
        assert!(!o.allows(Some("http://localhost:3001")));
        assert!(!o.allows(Some("not an origin")));
    }

    #[test]
    fn patterns_match_hosts_below_the_domain_only() {
        let o = origins(&["*.example.com", "http://*.dev.test:8080"]);
        assert!(o.allows(Some("https://app.example.com")));
        assert!(o.allows(Some("https://a.b.example.com")));
        assert!(!o.allows(Some("https://example.com")), "the domain itself");
        assert!(!o.allows(Some("https://badexample.com")));
        assert!(
            !o.allows(Some("http://app.example.com")),
            "a bare pattern is https"
        );
        assert!(!o.allows(Some("https://example.com.evil.net")));
        assert!(o.allows(Some("http://x.dev.test:8080")));
        assert!(!o.allows(Some("http://x.dev.test")));
    }

    #[test]
    fn no_origin_is_a_client_that_is_not_a_browser() {
        let o = origins(&["https://app.example.com"]);
        assert!(o.allows(None));
        assert!(
            !o.allows(Some("")),
            "an empty or undecodable Origin is one all the same"
        );
        assert!(!o.allows(Some("null")), "null only when listed");
        assert!(origins(&["null"]).allows(Some("null")));
        let all = origins(&[]);
        assert!(all.allows_all());
        assert!(all.allows(Some("https://anything.example")));
    }

    #[test]
    fn bad_entries_are_all_reported() {
        let err = Origins::parse(&[
            "ftp://x",
            "https://*",
            "https://a.*.com",
            "https://x/path",
            "ok.example.com",
        ])
        .expect_err("invalid");
        assert_eq!(err.len(), 5, "{err:?}");
        assert!(Origins::parse(&["https://bücher.example"]).is_err());
        assert!(Origins::parse(&["https://[::1]:8443", "https://*.example.com"]).is_ok());
        assert!(origins(&["https://[::1]:8443"]).allows(Some("https://[::1]:8443")));
    }
}
