//! The random event stream (`--event-rate N`): call lifecycles with agent owners, queue
//! calls, messages and flow updates across the customers the simulator knows (those with
//! access keys and those connected). Each object has the fields VoIPBIN's managers give it
//! when they publish that event (their `WebhookMessage`s): a call's update time is its
//! status's own time, a new call has none, and only calls name an owner.

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
    created: String,
    source: String,
    /// The times earlier steps stamped: (field, time).
    stamped: Vec<(&'static str, String)>,
}

/// A call's events in order: the event, the status, and the time field the event stamps
/// (with `tm_update`) besides `tm_create`.
const CALL_STEPS: &[(&str, &str, Option<&str>)] = &[
    ("call_created", "dialing", None),
    ("call_ringing", "ringing", Some("tm_ringing")),
    ("call_progressing", "progressing", Some("tm_progressing")),
    ("call_hangup", "hangup", Some("tm_hangup")),
];

#[derive(Default)]
struct CustomerState {
    calls: Vec<Call>,
    agents: Vec<Uuid>,
}

fn now_text() -> String {
    fanout_protocol::timestamp::format(std::time::SystemTime::now())
}

const NIL: Uuid = Uuid::nil();

fn owner_fields(owner: Option<Uuid>) -> (Value, Value) {
    match owner {
        Some(agent) => (json!("agent"), json!(agent)),
        None => (json!(""), json!(NIL)),
    }
}

/// A call's object as its step publishes it (now), with the times earlier steps stamped.
fn call_object(customer: Uuid, call: &mut Call) -> (String, Value) {
    let now = now_text();
    let (event_type, status, stamp) = CALL_STEPS[call.step.min(CALL_STEPS.len() - 1)];
    let (owner_type, owner_id) = owner_fields(call.owner);
    let mut data = json!({
        "id": call.id,
        "customer_id": customer,
        "owner_type": owner_type,
        "owner_id": owner_id,
        "flow_id": NIL,
        "activeflow_id": NIL,
        "type": "flow",
        "master_call_id": NIL,
        "chained_call_ids": [],
        "recording_id": NIL,
        "recording_ids": [],
        "groupcall_id": NIL,
        "source": {"type": "tel", "target": call.source},
        "destination": {"type": "tel", "target": "+15551234567"},
        "status": status,
        "action": {"id": NIL, "type": ""},
        "direction": "incoming",
        "mute_direction": "",
        "hangup_by": "",
        "hangup_reason": "",
        "tm_create": call.created,
    });
    if call.step > 0 {
        data["tm_update"] = json!(now);
    }
    if let Some(field) = stamp {
        call.stamped.push((field, now));
    }
    for (field, at) in &call.stamped {
        data[*field] = json!(at);
    }
    if event_type == "call_hangup" {
        data["hangup_by"] = json!("remote");
        data["hangup_reason"] = json!("normal");
    }
    (event_type.to_owned(), data)
}

fn next_event(rng: &mut impl Rng, customer: Uuid, state: &mut CustomerState) -> (String, Value) {
    let roll = rng.random_range(0..100);
    if roll < 60 || state.calls.is_empty() {
        // Advance a call, or start one.
        if state.calls.len() < MAX_ACTIVE_CALLS && (state.calls.is_empty() || rng.random_bool(0.3))
        {
            state.calls.push(Call {
                id: Uuid::new_v4(),
                owner: state.agents.choose(rng).copied(),
                step: 0,
                created: now_text(),
                source: format!("+1555{:07}", rng.random_range(0..10_000_000)),
                stamped: Vec::new(),
            });
        }
        let index = rng.random_range(0..state.calls.len());
        let call = &mut state.calls[index];
        let (event_type, data) = call_object(customer, call);
        call.step += 1;
        if call.step >= CALL_STEPS.len() {
            state.calls.swap_remove(index);
        }
        return (event_type, data);
    }
    let now = now_text();
    match roll {
        60..=74 => (
            "queuecall_created".to_owned(),
            json!({
                "id": Uuid::new_v4(),
                "customer_id": customer,
                "reference_type": "call",
                "reference_id": Uuid::new_v4(),
                "status": "initiating",
                "service_agent_id": NIL,
                "tm_create": now,
                "tm_service": null,
                "tm_update": null,
                "tm_delete": null,
            }),
        ),
        75..=89 => (
            "message_created".to_owned(),
            json!({
                "id": Uuid::new_v4(),
                "customer_id": customer,
                "type": "sms",
                "source": {"type": "tel", "target": "+15559876543"},
                "targets": [{
                    "destination": {"type": "tel", "target": "+15551234567"},
                    "status": "received",
                    "parts": 1,
                    "tm_update": now,
                }],
                "text": "hello from the simulator",
                "direction": "inbound",
                "tm_create": now,
                "tm_update": now,
            }),
        ),
        _ => (
            "activeflow_updated".to_owned(),
            json!({
                "id": Uuid::new_v4(),
                "customer_id": customer,
                "flow_id": Uuid::new_v4(),
                "status": "running",
                "reference_type": "call",
                "reference_id": Uuid::new_v4(),
                "current_action": {"id": Uuid::new_v4(), "type": "talk"},
                "tm_create": now,
                "tm_update": now,
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
