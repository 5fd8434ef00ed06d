//! The identity a credential stands for.

use std::time::SystemTime;

use uuid::Uuid;

/// Permission bits of an agent (VoIPBIN's `permission` bitmask).
pub mod permission_bits {
    /// Project super-admin: may see everything.
    pub const PROJECT_SUPER_ADMIN: u64 = 0x0001;
    /// A customer's agent.
    pub const CUSTOMER_AGENT: u64 = 0x0010;
    /// A customer's admin.
    pub const CUSTOMER_ADMIN: u64 = 0x0020;
    /// A customer's manager.
    pub const CUSTOMER_MANAGER: u64 = 0x0040;
    /// Every permission.
    pub const ALL: u64 = 0xFFFF;
}

/// What kind of principal an identity is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An agent's JWT (`type` `"agent"` or absent).
    Agent {
        /// The agent's id.
        agent_id: Uuid,
        /// The permission bitmask ([`permission_bits`]).
        permission: u64,
    },
    /// An access key: the whole customer with admin rights and no agent.
    AccessKey,
    /// A `direct` JWT, as a web widget holds (boxed: it is rare and large, and every session
    /// holds an identity).
    Direct(Box<Direct>),
}

/// The claims of a `direct` JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Direct {
    /// The kind of resource the token was issued for (`webchat_widget`).
    pub resource_type: String,
    /// The resource it was issued for.
    pub resource_id: Option<Uuid>,
    /// The resource types it may subscribe to.
    pub allowed_resource_types: Vec<String>,
    /// When set, the one resource id it may subscribe to.
    pub allowed_resource_id: Option<String>,
}

/// An authenticated principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The customer it belongs to.
    pub customer_id: Uuid,
    /// What it is.
    pub kind: Kind,
    /// When its credential stops being valid, if it ever does.
    pub expires_at: Option<SystemTime>,
}

impl Identity {
    /// Whether the identity is an agent holding any of `bits`.
    pub fn has_permission(&self, bits: u64) -> bool {
        matches!(self.kind, Kind::Agent { permission, .. } if permission & bits != 0)
    }

    /// The agent id, for agent identities.
    pub fn agent_id(&self) -> Option<Uuid> {
        match self.kind {
            Kind::Agent { agent_id, .. } => Some(agent_id),
            _ => None,
        }
    }

    /// A short label of the kind, for logs and metrics.
    pub fn kind_label(&self) -> &'static str {
        match self.kind {
            Kind::Agent { .. } => "agent",
            Kind::AccessKey => "accesskey",
            Kind::Direct(_) => "direct",
        }
    }
}
