//! The permission table of protocol.md §1.4, as one function.
//!
//! | identity | `customer_id:<own>:…` | `customer_id:<own>:<r>:<x>` | `customer_id:<other>…` | `agent_id:<self>…` | `agent_id:<other>…` |
//! |---|---|---|---|---|---|
//! | agent with admin (0x20) or manager (0x40) | yes | yes | no | yes | no |
//! | plain agent | no | no | no | yes | no |
//! | agent with super-admin (0x01) | yes | yes | yes | yes | yes |
//! | access key | yes | yes | no | no | no |
//! | direct JWT | no | yes iff `<r>` is allowed | no | no | no |
//!
//! A direct token's `<x>` must be a concrete id (not `*`), and when the token names an
//! `allowed_resource_id`, that id: the real server's newer tokens bind a widget to its own
//! session, and a wildcard would show it every session of the customer.

use fanout_protocol::{Pattern, Scope};

use crate::identity::{Identity, Kind, permission_bits as bits};

/// Whether `identity` may subscribe to `pattern`.
pub fn permit(identity: &Identity, pattern: &Pattern) -> bool {
    if identity.has_permission(bits::PROJECT_SUPER_ADMIN) {
        return true;
    }
    match pattern.scope() {
        Scope::Customer => {
            if pattern.owner() != identity.customer_id {
                return false;
            }
            match &identity.kind {
                Kind::Agent { permission, .. } => {
                    permission & (bits::CUSTOMER_ADMIN | bits::CUSTOMER_MANAGER) != 0
                }
                Kind::AccessKey => true,
                Kind::Direct(direct) => {
                    let (allowed_resource_types, allowed_resource_id) =
                        (&direct.allowed_resource_types, &direct.allowed_resource_id);
                    let mut rest = pattern.rest();
                    let (Some(resource), Some(id), None) = (rest.next(), rest.next(), rest.next())
                    else {
                        return false;
                    };
                    id != fanout_protocol::topic::WILDCARD
                        && allowed_resource_types.iter().any(|r| r == resource)
                        && allowed_resource_id
                            .as_deref()
                            .is_none_or(|allowed| allowed == id)
                }
            }
        }
        Scope::Agent => identity.agent_id() == Some(pattern.owner()),
    }
}

#[cfg(test)]
mod tests;
