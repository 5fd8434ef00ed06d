//! The random event stream (`--event-rate N`): call lifecycles with agent owners, queue
//! calls, messages and flow updates across the customers the simulator knows (those with
//! access keys and those connected).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::hub::{EventSpec, Simulator};

/// How often the generator wakes; each tick publishes its share of the rate.
const TICK: Duration = Duration::from_millis(20);
/// Calls in progress kept per customer before new ones wait.
const MAX_ACTIVE_CALLS: usize = 50;

/// A call in progress and where its lifecycle stands.
struct Call {
    id: Uuid,
    owner: Option<Uuid>,
    step: usize,
}

const CALL_STEPS: &[(&str, &str)] = &[
    ("call_created", "dialing"),
    ("call_ringing", "ringing"),
    ("call_answered", "progressing"),
    ("call_hangup", "hangup"),
];

#[derive(Default)]
struct CustomerState {
    calls: Vec<Call>,
    agents: Vec<Uuid>,
}

fn now_text() -> String {
    fanout_protocol::timestamp::format(std::time::SystemTime::now())
}

fn owner_fields(owner: Option<Uuid>) -> (Value, Value) {
    match owner {
        Some(agent) => (json!("agent"), json!(agent)),
        None => (json!(""), json!("00000000-0000-0000-0000-000000000000")),
    }
}

fn next_event(rng: &mut impl Rng, customer: Uuid, state: &mut CustomerState) -> (String, Value) {
    let owner = state.agents.choose(rng).copied();
    let roll = rng.random_range(0..100);
    if roll < 60 || state.calls.is_empty() {
        // Advance a call, or start one.
        if state.calls.len() < MAX_ACTIVE_CALLS && (state.calls.is_empty() || rng.random_bool(0.3))
        {
            state.calls.push(Call {
                id: Uuid::new_v4(),
                owner,
                step: 0,
            });
        }
        let index = rng.random_range(0..state.calls.len());
        let call = &mut state.calls[index];
        let (event_type, status) = CALL_STEPS[call.step.min(CALL_STEPS.len() - 1)];
        let (owner_type, owner_id) = owner_fields(call.owner);
        let data = json!({
            "id": call.id,
            "customer_id": customer,
            "owner_type": owner_type,
            "owner_id": owner_id,
            "type": "flow",
            "direction": "incoming",
            "status": status,
            "source": {"type": "tel", "target": format!("+1555{:07}", rng.random_range(0..10_000_000))},
            "destination": {"type": "tel", "target": "+15551234567"},
            "tm_update": now_text(),
        });
        call.step += 1;
        if call.step >= CALL_STEPS.len() {
            state.calls.swap_remove(index);
        }
        return (event_type.to_owned(), data);
    }
    let (owner_type, owner_id) = owner_fields(owner);
    match roll {
        60..=74 => (
            "queuecall_created".to_owned(),
            json!({
                "id": Uuid::new_v4(),
                "customer_id": customer,
                "owner_type": owner_type,
                "owner_id": owner_id,
                "queue_id": Uuid::new_v4(),
                "reference_type": "call",
                "status": "waiting",
                "tm_create": now_text(),
            }),
        ),
        75..=89 => (
            "message_created".to_owned(),
            json!({
                "id": Uuid::new_v4(),
                "customer_id": customer,
                "owner_type": owner_type,
                "owner_id": owner_id,
                "type": "sms",
                "direction": "inbound",
                "source": {"type": "tel", "target": "+15559876543"},
                "text": "hello from the simulator",
                "tm_create": now_text(),
            }),
        ),
        _ => (
            "activeflow_updated".to_owned(),
            json!({
                "id": Uuid::new_v4(),
                "customer_id": customer,
                "flow_id": Uuid::new_v4(),
                "status": "running",
                "current_action": {"id": Uuid::new_v4(), "type": "talk"},
                "tm_update": now_text(),
            }),
        ),
    }
}

pub(crate) async fn run(sim: Arc<Simulator>) {
    let rate = f64::from(sim.config.event_rate);
    let per_tick = rate * TICK.as_secs_f64();
    let mut owed = 0.0;
    let mut states: HashMap<Uuid, CustomerState> = HashMap::new();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = sim.cancel.cancelled() => return,
            _ = interval.tick() => {}
        }
        let mut customers = sim.keys.customers();
        customers.extend(sim.connected_customers());
        customers.sort();
        customers.dedup();
        if customers.is_empty() {
            continue;
        }
        owed += per_tick;
        let count = owed.floor() as usize;
        owed -= count as f64;
        let mut specs = Vec::with_capacity(count);
        {
            let mut rng = rand::rng();
            for _ in 0..count {
                let Some(&customer) = customers.choose(&mut rng) else {
                    break;
                };
                let state = states.entry(customer).or_default();
                state.agents = sim.connected_agents(customer);
                state.agents.extend(
                    sim.config
                        .known_agents
                        .iter()
                        .filter(|(c, _)| *c == customer)
                        .map(|(_, agent)| *agent),
                );
                let (event_type, data) = next_event(&mut rng, customer, state);
                let Ok(data) = serde_json::value::to_raw_value(&data) else {
                    continue;
                };
                specs.push(EventSpec { event_type, data });
            }
        }
        if let Err(error) = sim.publish(&specs) {
            tracing::warn!(%error, "Generated event refused");
        }
    }
}
