//! Continuity (docs/protocol.md §10) end to end, in both of the simulator's worlds: cursors on events, resume with `since`, the seam
//! between replay and live events, and `recovered` judged adversarially: across gaps, past
//! the window, for patterns the upstream did not cover, with cursors of another customer or
//! made up.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use fanout_test_support::*;
use serde_json::{Value, json};
use uuid::Uuid;

/// `n` call events of `customer`, ids `<prefix><i>` for `i` in `range`.
fn calls(customer: Uuid, prefix: &str, range: std::ops::Range<u32>) -> Value {
    Value::Array(
        range
            .map(|i| call(customer, &format!("{prefix}{i}"), None))
            .collect(),
    )
}

fn message(customer: Uuid, id: &str) -> Value {
    json!({"event_type": "message_created", "data": {"id": id, "customer_id": customer}})
}

/// Waits until what `pattern` needs upstream is covered (its subscription known applied):
/// only cursors after that can be resumed from for it.
async fn covered(stack: &Stack, customer: Uuid, pattern: &str) {
    upstream_covers(stack, customer, &[pattern]).await;
}

/// Subscribes with `since` (or without, for `None`).
async fn resume(client: &mut Client, topics: &[&str], since: Option<&str>) {
    let mut message = json!({"type": "subscribe", "topics": topics});
    if let Some(since) = since {
        message["since"] = json!(since);
    }
    client.send_json(&message).await;
}

/// The next frames up to and including the `resumed` answer.
async fn until_resumed(client: &mut Client) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let frame = client.recv_json().await;
        if frame["type"] == "resumed" {
            return (before, frame);
        }
        before.push(frame);
    }
}

fn ids(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["data"]["id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

async fn recv_events(client: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(client.recv_event().await);
    }
    out
}

fn cursor(frame: &Value) -> String {
    frame["cursor"]
        .as_str()
        .unwrap_or_else(|| panic!("no cursor: {frame}"))
        .to_owned()
}

/// A customer admin subscribed to `topic`, with the upstream covering it.
async fn watcher(stack: &Stack, customer: Uuid, topic: &str) -> Client {
    let mut client = Client::connect_token(stack.addr, &admin_token(customer)).await;
    client.subscribe_synced(&[topic]).await;
    covered(stack, customer, topic).await;
    client
}

fn long_linger(config: &mut fanout_gateway::config::Config) {
    config.upstream.linger = Duration::from_secs(10);
}

in_both_worlds! {
async fn a_reconnecting_client_gets_what_it_missed_once_in_order_then_live(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut first = watcher(&stack, c, &topic).await;
    publish_events(&stack, &calls(c, "a", 0..3)).await;
    let seen = recv_events(&mut first, 3).await;
    assert_eq!(ids(&seen), ["a0", "a1", "a2"]);
    // Cursors are distinct and increase in one stream.
    let cursors: Vec<String> = seen.iter().map(cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] != w[1]));
    let last = cursors[2].clone();
    first.close().await;
    // Missed while away.
    publish_events(&stack, &calls(c, "b", 0..4)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut second, &[&topic], Some(&last)).await;
    let (before, answer) = until_resumed(&mut second).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(answer["recovered"], true, "{answer}");
    let replay = recv_events(&mut second, 4).await;
    assert_eq!(ids(&replay), ["b0", "b1", "b2", "b3"]);
    assert_eq!(
        answer["cursor"],
        cursor(&replay[3]),
        "the answer names the seam"
    );
    publish_events(&stack, &calls(c, "c", 0..2)).await;
    assert_eq!(ids(&recv_events(&mut second, 2).await), ["c0", "c1"]);
    second.expect_silence(Duration::from_millis(200)).await;
    // From the latest cursor: recovered, nothing to replay.
    let mut third = Client::connect_token(stack.addr, &admin_token(c)).await;
    let latest = cursor(&json!({"cursor": answer["cursor"]}));
    resume(&mut third, &[&topic], Some(&latest)).await;
    let (_, answer) = until_resumed(&mut third).await;
    assert_eq!(answer["recovered"], true);
    assert_eq!(ids(&recv_events(&mut third, 2).await), ["c0", "c1"]);
    third.expect_silence(Duration::from_millis(200)).await;
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn events_arriving_during_the_replay_are_neither_lost_nor_repeated(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut first = watcher(&stack, c, &topic).await;
    publish_events(&stack, &calls(c, "x", 0..1)).await;
    let since = cursor(&first.recv_event().await);
    // A steady stream, before, during and after the resume.
    const TOTAL: u32 = 400;
    let sim = stack.sim_addr();
    let publisher = tokio::spawn(async move {
        for batch in 0..(TOTAL / 20) {
            let range = batch * 20..batch * 20 + 20;
            publish(sim, &calls(c, "n", range)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut second = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut second, &[&topic], Some(&since)).await;
    let (_, answer) = until_resumed(&mut second).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    publisher.await.expect("publisher");
    let got = ids(&recv_events(&mut second, TOTAL as usize).await);
    let want: Vec<String> = (0..TOTAL).map(|i| format!("n{i}")).collect();
    assert_eq!(got, want, "every event once, in order, across the seam");
    second.expect_silence(Duration::from_millis(200)).await;
    // The first session had them all live, with the same cursors.
    let live = recv_events(&mut first, TOTAL as usize).await;
    assert_eq!(ids(&live), want);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_gap_in_between_is_never_recovered_but_its_own_cursor_is(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut watching = watcher(&stack, c, &topic).await;
    publish_events(&stack, &calls(c, "a", 0..2)).await;
    let before_gap = cursor(&recv_events(&mut watching, 2).await[1]);
    let replaced_from = drop_upstream(&stack, c).await;
    let gap = watching.recv_json().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["reason"], "upstream_reconnect");
    let gap_cursor = cursor(&gap);
    upstream_replaced(&stack, c, replaced_from, 1).await;
    covered(&stack, c, &topic).await;
    publish_events(&stack, &calls(c, "b", 0..2)).await;
    assert_eq!(
        ids(&recv_events(&mut watching, 2).await),
        ["b0", "b1"],
        "events after the gap"
    );
    // Across the gap: not recovered, told the gap first, then live.
    let mut across = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut across, &[&topic], Some(&before_gap)).await;
    let (told, answer) = until_resumed(&mut across).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0]["type"], "gap");
    assert_eq!(told[0]["cursor"], gap_cursor);
    across.expect_silence(Duration::from_millis(200)).await;
    // From the gap's own cursor: nothing missing after it.
    let mut after = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut after, &[&topic], Some(&gap_cursor)).await;
    let (told, answer) = until_resumed(&mut after).await;
    assert!(told.is_empty());
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(ids(&recv_events(&mut after, 2).await), ["b0", "b1"]);
    // Both are live now.
    publish_events(&stack, &calls(c, "c", 0..1)).await;
    assert_eq!(ids(&recv_events(&mut across, 1).await), ["c0"]);
    assert_eq!(ids(&recv_events(&mut after, 1).await), ["c0"]);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_cursor_older_than_the_window_is_not_recovered(world) {
    let stack = start_in_with(world,
        |_| {},
        |config| {
            long_linger(config);
            config.resume.max_events = 5;
        },
    )
    .await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut watching = watcher(&stack, c, &topic).await;
    publish_events(&stack, &calls(c, "a", 0..10)).await;
    let seen = recv_events(&mut watching, 10).await;
    // a3's successor (a4) is forgotten: five kept are a5..a9.
    let mut old = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut old, &[&topic], Some(&cursor(&seen[3]))).await;
    let (told, answer) = until_resumed(&mut old).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert!(told.is_empty());
    old.expect_silence(Duration::from_millis(200)).await;
    // a4: everything after it (a5..a9) is still kept.
    let mut recent = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut recent, &[&topic], Some(&cursor(&seen[4]))).await;
    let (_, answer) = until_resumed(&mut recent).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(
        ids(&recv_events(&mut recent, 5).await),
        ["a5", "a6", "a7", "a8", "a9"]
    );
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_pattern_the_upstream_did_not_cover_is_not_recovered(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let calls_topic = format!("customer_id:{c}:call:*");
    let messages_topic = format!("customer_id:{c}:message:*");
    let mut watching = watcher(&stack, c, &calls_topic).await;
    publish_events(&stack, &calls(c, "a", 0..1)).await;
    let since = cursor(&watching.recv_event().await);
    // Messages were published while nobody held a message pattern: VoIPBIN never sent them.
    publish_events(&stack, &message(c, "m0")).await;
    publish_events(&stack, &calls(c, "a", 1..2)).await;
    watching.recv_event().await;
    let mut resuming = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(
        &mut resuming,
        &[&calls_topic, &messages_topic],
        Some(&since),
    )
    .await;
    let (_, answer) = until_resumed(&mut resuming).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    resuming.expect_silence(Duration::from_millis(200)).await;
    // Calls alone were covered throughout: recovered.
    let mut calls_only = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut calls_only, &[&calls_topic], Some(&since)).await;
    let (_, answer) = until_resumed(&mut calls_only).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(ids(&recv_events(&mut calls_only, 1).await), ["a1"]);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_session_that_left_is_covered_while_its_patterns_linger(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:message:*");
    // The only session holding the pattern leaves; the pattern stays subscribed.
    let mut only = watcher(&stack, c, &topic).await;
    publish_events(&stack, &message(c, "m0")).await;
    let since = cursor(&only.recv_event().await);
    only.close().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish_events(&stack, &message(c, "m1")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut back = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut back, &[&topic], Some(&since)).await;
    let (_, answer) = until_resumed(&mut back).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(ids(&recv_events(&mut back, 1).await), ["m1"]);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn cursors_of_another_customer_or_made_up_are_refused_and_replay_nothing(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let d = Uuid::new_v4();
    let c_topic = format!("customer_id:{c}");
    let d_topic = format!("customer_id:{d}");
    let mut watch_c = watcher(&stack, c, &c_topic).await;
    let mut watch_d = watcher(&stack, d, &d_topic).await;
    publish_events(&stack, &calls(d, "d", 0..1)).await;
    let d_cursor = cursor(&watch_d.recv_event().await);
    publish_events(&stack, &calls(d, "d", 1..4)).await;
    publish_events(&stack, &calls(c, "c", 0..2)).await;
    recv_events(&mut watch_c, 2).await;
    // C resumes from D's cursor: another stream; nothing of D's, ever.
    let mut thief = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut thief, &[&c_topic], Some(&d_cursor)).await;
    let (told, answer) = until_resumed(&mut thief).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert!(told.is_empty(), "{told:?}");
    thief.expect_silence(Duration::from_millis(200)).await;
    // Nor may C name D's topics to reach D's window.
    resume(&mut thief, &[&d_topic], Some(&d_cursor)).await;
    let refusal = thief.recv_json().await;
    assert_eq!(refusal["code"], "forbidden_topic", "{refusal}");
    // A cursor of C's epoch with an offset never given out: not recovered.
    let c_cursor = cursor(&json!({"cursor": answer["cursor"]}));
    let (epoch, _) = c_cursor.split_once('-').expect("epoch-offset");
    let mut liar = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut liar, &[&c_topic], Some(&format!("{epoch}-fffff"))).await;
    let (_, answer) = until_resumed(&mut liar).await;
    assert_eq!(answer["recovered"], false);
    // Not a cursor at all: a clear error, the session stays.
    resume(&mut liar, &[&c_topic], Some("yesterday")).await;
    let refusal = liar.recv_json().await;
    assert_eq!(refusal["code"], "invalid_cursor", "{refusal}");
    publish_events(&stack, &calls(c, "c", 2..3)).await;
    assert_eq!(ids(&recv_events(&mut liar, 1).await), ["c2"]);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn the_replay_applies_the_permission_table_like_live_events(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let agent = Uuid::new_v4();
    let other = Uuid::new_v4();
    let whole = format!("customer_id:{c}");
    // The customer's calls are covered (the agent's calls are served from them).
    let mut admin = watcher(&stack, c, &format!("customer_id:{c}:call:*")).await;
    publish_events(&stack, &calls(c, "a", 0..1)).await;
    let since = cursor(&admin.recv_event().await);
    publish_events(
        &stack,
        &json!([
            call(c, "mine", Some(agent)),
            call(c, "theirs", Some(other)),
            call(c, "nobody's", None),
            call(c, "mine2", Some(agent)),
        ]),
    )
    .await;
    recv_events(&mut admin, 4).await;
    // A plain agent resumes its own topics: only its own calls are replayed, under its topic.
    let token = agent_token(
        SECRET,
        c,
        agent,
        fanout_test_support::perm::CUSTOMER_AGENT,
        &far_future(),
    );
    let mut own = Client::connect_token(stack.addr, &token).await;
    resume(
        &mut own,
        &[&format!("agent_id:{agent}:call:*")],
        Some(&since),
    )
    .await;
    let (_, answer) = until_resumed(&mut own).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    let replay = recv_events(&mut own, 2).await;
    assert_eq!(ids(&replay), ["mine", "mine2"]);
    assert!(replay.iter().all(|e| {
        e["topic"]
            .as_str()
            .is_some_and(|t| t.starts_with("agent_id:"))
    }));
    own.expect_silence(Duration::from_millis(200)).await;
    // The whole customer is not the agent's to resume.
    resume(&mut own, &[&whole], Some(&since)).await;
    assert_eq!(own.recv_json().await["code"], "forbidden_topic");
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn resumes_are_bounded_per_session_and_in_work(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut watching = watcher(&stack, c, &topic).await;
    publish_events(&stack, &calls(c, "a", 0..1)).await;
    let since = cursor(&watching.recv_event().await);
    publish_events(&stack, &calls(c, "b", 0..2000)).await;
    recv_events(&mut watching, 2000).await;
    // 2,000 events × 256 patterns is past the work bound (200,000 checks): not recovered
    // (never wrong).
    let many: Vec<String> = (0..255)
        .map(|i| format!("customer_id:{c}:call:k{i}"))
        .chain([topic.clone()])
        .collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut greedy = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut greedy, &many, Some(&since)).await;
    let (_, answer) = until_resumed(&mut greedy).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    // × 80 patterns is within it: recovered, all 2,000 replayed.
    let mut fine = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut fine, &many[176..], Some(&since)).await;
    let (_, answer) = until_resumed(&mut fine).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(recv_events(&mut fine, 2000).await.len(), 2000);
    // A session resumes at most four times.
    for _ in 0..3 {
        fine.unsubscribe(&many[176..]).await;
        resume(&mut fine, &[&topic], Some(&since)).await;
        let (_, answer) = until_resumed(&mut fine).await;
        assert_eq!(answer["recovered"], true);
        recv_events(&mut fine, 2000).await;
    }
    fine.unsubscribe(&[&topic]).await;
    resume(&mut fine, &[&topic], Some(&since)).await;
    let refusal = fine.recv_json().await;
    assert_eq!(refusal["code"], "invalid_cursor", "{refusal}");
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_pattern_unsubscribed_before_its_barrier_is_answered_is_never_covered(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let calls_topic = format!("customer_id:{c}:call:*");
    let messages_topic = format!("customer_id:{c}:message:*");
    let one_message = format!("customer_id:{c}:message:m9");
    let mut watching = watcher(&stack, c, &calls_topic).await;
    // The messages' connection is open (for one message) and covered.
    let _holder = watcher(&stack, c, &one_message).await;
    // VoIPBIN answers late: the subscribe's pong comes after the unsubscribe was sent.
    stall_upstream(&stack, c, 600).await;
    let mut toggling = Client::connect_token(stack.addr, &admin_token(c)).await;
    toggling.subscribe_synced(&[&messages_topic]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    toggling.unsubscribe(&[&messages_topic]).await;
    toggling.sync().await;
    // The stall ends and the pong arrives: the pattern must not be taken for covered.
    upstream_carries(&stack, c, &[&calls_topic, &one_message]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish_events(&stack, &calls(c, "a", 0..1)).await;
    let since = cursor(&watching.recv_event().await);
    let expected: Vec<String> = prefixes_in(world, c, &[&calls_topic, &one_message])
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    assert_eq!(covered_now(&stack, c).await, expected);
    publish_events(&stack, &message(c, "m0")).await;
    publish_events(&stack, &calls(c, "a", 1..2)).await;
    watching.recv_event().await;
    let mut resuming = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut resuming, &[&messages_topic], Some(&since)).await;
    let (_, answer) = until_resumed(&mut resuming).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_resume_beside_patterns_held_only_since_later_is_not_recovered(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let calls_short = format!("customer_id:{c}:call");
    let calls_topic = format!("customer_id:{c}:call:*");
    let messages_topic = format!("customer_id:{c}:message:*");
    // Every topic below is covered from before the cursor.
    let mut watching = watcher(&stack, c, &calls_topic).await;
    let _messages = watcher(&stack, c, &messages_topic).await;
    publish_events(&stack, &calls(c, "a", 0..1)).await;
    let since = cursor(&watching.recv_event().await);
    publish_events(&stack, &calls(c, "a", 1..3)).await;
    recv_events(&mut watching, 2).await;
    // Subscribed live now, then a resume from before it: a1 and a2 match both patterns and
    // reached this session by neither.
    let mut late = Client::connect_token(stack.addr, &admin_token(c)).await;
    late.subscribe_synced(&[&calls_short]).await;
    resume(&mut late, &[&calls_topic], Some(&since)).await;
    let (_, answer) = until_resumed(&mut late).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    // Re-sending a held topic with `since`: nothing proves it was held since then.
    resume(&mut late, &[&calls_short], Some(&since)).await;
    let (_, answer) = until_resumed(&mut late).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    // Two resumes from the same cursor, the first recovered: the second may rely on it.
    let mut split = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut split, &[&calls_topic], Some(&since)).await;
    let (_, answer) = until_resumed(&mut split).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["replayed"], 2);
    assert_eq!(ids(&recv_events(&mut split, 2).await), ["a1", "a2"]);
    resume(&mut split, &[&messages_topic], Some(&since)).await;
    let (_, answer) = until_resumed(&mut split).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(
        answer["replayed"], 0,
        "the calls came with the first resume"
    );
    stack.shutdown().await;
}
}

in_both_worlds! {
/// The whole stream's frames say nothing of their resource in VoIPBIN's world: its
/// coverage is no coverage of a resource's pattern, in either world (the gateway cannot
/// tell the worlds apart by their subscriptions).
async fn the_whole_stream_alone_covers_no_resources_pattern(world) {
    let stack = start_in_with(world, |_| {}, long_linger).await;
    let c = tutorial_customer();
    let whole = format!("customer_id:{c}");
    let mut watching = watcher(&stack, c, &whole).await;
    publish_events(&stack, &calls(c, "a", 0..1)).await;
    let since = cursor(&watching.recv_event().await);
    publish_events(&stack, &calls(c, "a", 1..2)).await;
    watching.recv_event().await;
    let mut resuming = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut resuming, &[&format!("customer_id:{c}:call:*")], Some(&since)).await;
    let (_, answer) = until_resumed(&mut resuming).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    // The whole stream itself is recovered.
    let mut again = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut again, &[&whole], Some(&since)).await;
    let (_, answer) = until_resumed(&mut again).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(ids(&recv_events(&mut again, 1).await), ["a1"]);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn subscriptions_count_as_applied_only_after_the_settle_time(world) {
    let stack = start_in_with(world,
        |_| {},
        |config| {
            long_linger(config);
            config.upstream.subscribe_settle = Duration::from_millis(800);
        },
    )
    .await;
    let c = tutorial_customer();
    let topic = format!("customer_id:{c}:call:*");
    let mut early = Client::connect_token(stack.addr, &admin_token(c)).await;
    early.subscribe_synced(&[&topic]).await;
    upstream_subscriptions(&stack, c, 1).await;
    publish_events(&stack, &calls(c, "a", 0..1)).await;
    let too_early = cursor(&early.recv_event().await);
    assert!(covered_now(&stack, c).await.is_empty(), "not yet settled");
    covered(&stack, c, &topic).await;
    publish_events(&stack, &calls(c, "a", 1..3)).await;
    let seen = recv_events(&mut early, 2).await;
    let mut from_early = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut from_early, &[&topic], Some(&too_early)).await;
    let (_, answer) = until_resumed(&mut from_early).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    let mut settled = Client::connect_token(stack.addr, &admin_token(c)).await;
    resume(&mut settled, &[&topic], Some(&cursor(&seen[0]))).await;
    let (_, answer) = until_resumed(&mut settled).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(ids(&recv_events(&mut settled, 1).await), ["a2"]);
    stack.shutdown().await;
}
}

in_both_worlds! {
async fn a_subscription_voipbin_refuses_is_never_covered(world) {
    let c = tutorial_customer();
    // The upstream credential may see customer C only: VoIPBIN refuses subscribes to any
    // other customer (the tutorial's with an error frame, keeping the connection; its code
    // by dropping the connection, again after every reconnect).
    let stack = start_in_with(world,
        |_| {},
        |config| {
            long_linger(config);
            config.upstream.token = agent_token(
                SECRET,
                c,
                Uuid::new_v4(),
                perm::CUSTOMER_ADMIN,
                &far_future(),
            );
        },
    )
    .await;
    let d = Uuid::new_v4();
    let super_admin = agent_token(
        SECRET,
        c,
        Uuid::new_v4(),
        perm::PROJECT_SUPER_ADMIN,
        &far_future(),
    );
    let d_topic = format!("customer_id:{d}");
    let mut watching = Client::connect_token(stack.addr, &super_admin).await;
    watching.subscribe_synced(&[&d_topic]).await;
    // The subscribe was answered (refused) and its barrier too: still not covered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(covered_now(&stack, d).await.is_empty());
    // Counted (the metrics are the test process's: the other world's run counts too).
    assert!(
        metric(stack.admin, "fanout_upstream_refusals_total").await >= 1.0,
        "the refusal is counted"
    );
    // It stays so after the next pings.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(covered_now(&stack, d).await.is_empty());
    stack.shutdown().await;
}
}
