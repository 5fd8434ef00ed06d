//! A connection's subscriptions, in either of the simulator's worlds, and VoIPBIN's own
//! checks of a subscribe message (its `websockhandler`, as read in its public source).
//!
//! - The tutorial's world: a subscription is a [`Pattern`], matched segment by segment.
//! - VoIPBIN's code ([`crate::Quirks::raw_prefix`]): a subscription is the text as sent,
//!   matched as a raw string prefix of each published topic (`*` is an ordinary character),
//!   and validated only as far as VoIPBIN's server validates it ([`voipbin_permits`]).

use fanout_auth::Identity;
use fanout_auth::Kind;
use fanout_auth::permission_bits as bits;
use fanout_protocol::{Pattern, Scope, Topic};
use serde::Deserialize;
use uuid::Uuid;

/// One subscription of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    /// The text as the client sent it (a pattern's with its owner in lower case).
    text: Box<str>,
    /// Whose topics it can match: the scope and owner its text starts with, when it starts
    /// with one (a super-admin may subscribe to anything, `""` included, on VoIPBIN).
    owner: Option<(Scope, Uuid)>,
    /// Segment matching, in the tutorial's world.
    pattern: Option<Pattern>,
}

impl Subscription {
    /// A pattern, matched segment by segment.
    pub(crate) fn pattern(pattern: Pattern) -> Self {
        Subscription {
            text: pattern.as_str().into(),
            owner: Some((pattern.scope(), pattern.owner())),
            pattern: Some(pattern),
        }
    }

    /// A raw prefix, matched as VoIPBIN's code does.
    pub(crate) fn raw(text: &str) -> Self {
        let mut parts = text.split(':');
        let owner = match (parts.next(), parts.next().map(Uuid::try_parse)) {
            (Some("customer_id"), Some(Ok(owner))) => Some((Scope::Customer, owner)),
            (Some("agent_id"), Some(Ok(owner))) => Some((Scope::Agent, owner)),
            _ => None,
        };
        Subscription {
            text: text.into(),
            owner,
            pattern: None,
        }
    }

    /// Its text.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The scope and owner whose topics it can match, if it is limited to one. (A raw
    /// prefix whose second part is a UUID can only be a prefix of that owner's topics, which
    /// name their owner whole, in lower case, followed by `:`.)
    pub(crate) fn owner(&self) -> Option<(Scope, Uuid)> {
        self.owner
    }

    /// Whether it selects events published under `topic`.
    pub(crate) fn matches(&self, topic: &Topic) -> bool {
        match &self.pattern {
            Some(pattern) => pattern.matches(topic),
            None => topic.as_str().starts_with(&*self.text),
        }
    }
}

impl PartialEq for Subscription {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// A subscribe or unsubscribe as VoIPBIN's server reads it: Go's `json.Unmarshal` into
/// `{Type string; Topics []string}` (absent or `null` fields are empty; other fields are
/// ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct Hook {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    topics: Option<Vec<String>>,
}

impl Hook {
    /// Reads a text message; `None` for what VoIPBIN logs and skips (not a JSON object of
    /// that shape).
    pub(crate) fn parse(text: &[u8]) -> Option<Hook> {
        let is_object = text.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        is_object
            .then(|| serde_json::from_slice(text).ok())
            .flatten()
    }

    /// Its `type`.
    pub(crate) fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or_default()
    }

    /// Its topics.
    pub(crate) fn topics(&self) -> &[String] {
        self.topics.as_deref().unwrap_or_default()
    }
}

/// Whether VoIPBIN's server accepts `topic` from `identity` (its `validateTopics`): a project
/// super-admin anything at all; otherwise the text split on `:` (empty parts kept) needs a
/// scope word and a non-nil UUID second, and
/// - `agent_id:<A>…`: A is the identity's own agent, whatever follows;
/// - `customer_id:<C>…`: C is the identity's customer, and with exactly four parts a direct
///   token's resource (the third) is allowed, while with any other count a direct token is
///   refused; agents need admin or manager permission (an access key counts as admin).
pub(crate) fn voipbin_permits(identity: &Identity, topic: &str) -> bool {
    if identity.has_permission(bits::PROJECT_SUPER_ADMIN) {
        return true;
    }
    let parts: Vec<&str> = topic.split(':').collect();
    let Some(owner) = parts
        .get(1)
        .and_then(|p| Uuid::try_parse(p).ok())
        .filter(|u| !u.is_nil())
    else {
        return false;
    };
    let admin = match &identity.kind {
        Kind::Agent { permission, .. } => {
            permission & (bits::CUSTOMER_ADMIN | bits::CUSTOMER_MANAGER) != 0
        }
        Kind::AccessKey => true,
        Kind::Direct(_) => false,
    };
    match parts[0] {
        "agent_id" => identity.agent_id() == Some(owner),
        "customer_id" if owner == identity.customer_id => match (&identity.kind, parts.len()) {
            (Kind::Direct(direct), 4) => {
                direct.allowed_resource_types.iter().any(|r| r == parts[2])
            }
            (Kind::Direct(_), _) => false,
            _ => admin,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout_auth::Direct;

    const C: &str = "12345678-1234-1234-1234-123456789012";
    const A: &str = "98765432-4321-4321-4321-210987654321";

    fn agent(permission: u64) -> Identity {
        Identity {
            customer_id: Uuid::parse_str(C).expect("uuid"),
            kind: Kind::Agent {
                agent_id: Uuid::parse_str(A).expect("uuid"),
                permission,
            },
            expires_at: None,
        }
    }

    #[test]
    fn voipbin_checks_the_scope_the_owner_and_permissions_only() {
        let admin = agent(bits::CUSTOMER_ADMIN);
        let plain = agent(bits::CUSTOMER_AGENT);
        let key = Identity {
            kind: Kind::AccessKey,
            ..agent(0)
        };
        let direct = Identity {
            kind: Kind::Direct(Box::new(Direct {
                resource_type: "webchat_widget".into(),
                resource_id: None,
                allowed_resource_types: vec!["webchat_session".into()],
                allowed_resource_id: None,
            })),
            ..agent(0)
        };
        for (identity, topic, expected) in [
            (&admin, format!("customer_id:{C}:call:"), true),
            (&admin, format!("customer_id:{C}:call:*"), true),
            (&admin, format!("customer_id:{C}"), true),
            (&admin, format!("customer_id:{C}:queue:call_hangup:"), true),
            (&admin, format!("customer_id:{A}:call:"), false),
            (&admin, "customer_id:not-a-uuid:call".to_owned(), false),
            (&admin, "customer_id".to_owned(), false),
            (&admin, format!("account_id:{C}"), false),
            (&plain, format!("customer_id:{C}:call:"), false),
            (&plain, format!("agent_id:{A}:call:*"), true),
            (&key, format!("customer_id:{C}:call:"), true),
            (&key, format!("agent_id:{A}"), false),
            (&direct, format!("customer_id:{C}:webchat_session:"), true),
            (&direct, format!("customer_id:{C}:webchat_session"), false),
            (&direct, format!("customer_id:{C}:call:x"), false),
            (
                &agent(bits::PROJECT_SUPER_ADMIN),
                "anything at all".to_owned(),
                true,
            ),
        ] {
            assert_eq!(voipbin_permits(identity, &topic), expected, "{topic}");
        }
    }

    #[test]
    fn raw_prefixes_match_as_text() {
        let topic = |t: &str| Topic::parse(&format!("customer_id:{C}{t}")).expect("topic");
        let call = Subscription::raw(&format!("customer_id:{C}:call"));
        assert!(call.matches(&topic(":call:k1")));
        assert!(call.matches(&topic(":callx:k1")));
        let exact = Subscription::raw(&format!("customer_id:{C}:call:"));
        assert!(exact.matches(&topic(":call:k1")));
        assert!(!exact.matches(&topic(":callx:k1")));
        let wild = Subscription::raw(&format!("customer_id:{C}:call:*"));
        assert!(!wild.matches(&topic(":call:k1")));
        // One cut inside the owner is not limited to an owner.
        assert_eq!(Subscription::raw("customer_id:1234").owner(), None);
        assert_eq!(Subscription::raw("").owner(), None);
        assert!(Subscription::raw("").matches(&topic(":call:k1")));
        assert!(exact.owner().is_some());
    }
}
