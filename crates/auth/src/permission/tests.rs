//! One test per row of the permission table, each checking every column.

use uuid::Uuid;

use super::*;
use crate::identity::Identity;

const OWN: &str = "12345678-1234-1234-1234-123456789012";
const OTHER: &str = "87654321-4321-4321-4321-210987654321";
const SELF_AGENT: &str = "98765432-4321-4321-4321-210987654321";
const OTHER_AGENT: &str = "11111111-2222-3333-4444-555555555555";
const SESSION: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).expect("valid uuid")
}

fn agent(permission: u64) -> Identity {
    Identity {
        customer_id: uuid(OWN),
        kind: Kind::Agent {
            agent_id: uuid(SELF_AGENT),
            permission,
        },
        expires_at: None,
    }
}

fn direct(allowed_resource_id: Option<&str>) -> Identity {
    Identity {
        customer_id: uuid(OWN),
        kind: Kind::Direct(Box::new(crate::identity::Direct {
            resource_type: "webchat_widget".into(),
            resource_id: None,
            allowed_resource_types: vec!["webchat_session".into()],
            allowed_resource_id: allowed_resource_id.map(str::to_owned),
        })),
        expires_at: None,
    }
}

fn accesskey() -> Identity {
    Identity {
        customer_id: uuid(OWN),
        kind: Kind::AccessKey,
        expires_at: None,
    }
}

/// The five columns, in table order, with a verdict each.
fn check(identity: &Identity, row: [bool; 5]) {
    let columns: [Vec<String>; 5] = [
        vec![
            format!("customer_id:{OWN}"),
            format!("customer_id:{OWN}:call"),
            format!("customer_id:{OWN}:call:*"),
            format!("customer_id:{OWN}:call:call_hangup:{SESSION}"),
        ],
        vec![
            format!("customer_id:{OWN}:call:{SESSION}"),
            format!("customer_id:{OWN}:queue:{SESSION}"),
        ],
        vec![
            format!("customer_id:{OTHER}"),
            format!("customer_id:{OTHER}:call:*"),
            format!("customer_id:{OTHER}:call:{SESSION}"),
        ],
        vec![
            format!("agent_id:{SELF_AGENT}"),
            format!("agent_id:{SELF_AGENT}:queue:*"),
            format!("agent_id:{SELF_AGENT}:call:{SESSION}"),
        ],
        vec![
            format!("agent_id:{OTHER_AGENT}:queue:*"),
            format!("agent_id:{OWN}:call:*"),
        ],
    ];
    for (column, expected) in columns.iter().zip(row) {
        for topic in column {
            let pattern = Pattern::parse(topic).expect("valid pattern");
            assert_eq!(
                permit(identity, &pattern),
                expected,
                "{identity:?} on {topic}"
            );
        }
    }
}

#[test]
fn agent_with_admin() {
    check(
        &agent(bits::CUSTOMER_ADMIN),
        [true, true, false, true, false],
    );
    check(
        &agent(bits::CUSTOMER_ADMIN | bits::CUSTOMER_AGENT),
        [true, true, false, true, false],
    );
}

#[test]
fn agent_with_manager() {
    check(
        &agent(bits::CUSTOMER_MANAGER),
        [true, true, false, true, false],
    );
}

#[test]
fn plain_agent() {
    check(
        &agent(bits::CUSTOMER_AGENT),
        [false, false, false, true, false],
    );
    check(&agent(0), [false, false, false, true, false]);
}

#[test]
fn agent_with_super_admin() {
    check(
        &agent(bits::PROJECT_SUPER_ADMIN),
        [true, true, true, true, true],
    );
    check(&agent(bits::ALL), [true, true, true, true, true]);
}

#[test]
fn access_key() {
    check(&accesskey(), [true, true, false, false, false]);
}

#[test]
fn direct_token() {
    let widget = direct(None);
    let allowed = |topic: String| permit(&widget, &Pattern::parse(&topic).expect("valid"));
    // Only four-segment topics of an allowed resource type, with a concrete id.
    assert!(allowed(format!(
        "customer_id:{OWN}:webchat_session:{SESSION}"
    )));
    assert!(!allowed(format!("customer_id:{OWN}:webchat_session:*")));
    assert!(!allowed(format!("customer_id:{OWN}:webchat_session")));
    assert!(!allowed(format!(
        "customer_id:{OWN}:webchat_session:x:{SESSION}"
    )));
    assert!(!allowed(format!("customer_id:{OWN}:call:{SESSION}")));
    assert!(!allowed(format!(
        "customer_id:{OTHER}:webchat_session:{SESSION}"
    )));
    // Every other column of the row is "no".
    check(&widget, [false, false, false, false, false]);
    // A token bound to one resource id allows that id only.
    let bound = direct(Some(SESSION));
    let allowed = |topic: String| permit(&bound, &Pattern::parse(&topic).expect("valid"));
    assert!(allowed(format!(
        "customer_id:{OWN}:webchat_session:{SESSION}"
    )));
    assert!(!allowed(format!(
        "customer_id:{OWN}:webchat_session:{OTHER}"
    )));
}
