//! Encoding and decoding on the event path: an upstream frame decoded once, and its envelope
//! encoded once per topic.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fanout_protocol::prefix::Label;
use fanout_protocol::server::EnvelopeHead;
use fanout_protocol::upstream::{Context, decode};
use uuid::Uuid;

fn bench(c: &mut Criterion) {
    let customer = Uuid::from_u128(0x1234_5678_1234_1234_1234_1234_5678_9012);
    let frame = Bytes::from(format!(
        r#"{{"type":"call_hangup","data":{{"id":"a1b2c3d4-e5f6-7890-abcd-ef1234567890","customer_id":"{customer}","owner_type":"agent","owner_id":"98765432-4321-4321-4321-210987654321","status":"hangup","direction":"incoming","source":{{"type":"tel","target":"+15551112222"}},"destination":{{"type":"tel","target":"+15553334444"}},"tm_update":"2026-01-20 10:30:00.000000"}}}}"#
    ));
    let none = Label::none();
    let cx = Context {
        customer_id: customer,
        received_at: SystemTime::now(),
        label: &none,
    };
    let mut group = c.benchmark_group("event_path");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("decode_webhook_frame", |b| {
        b.iter(|| black_box(decode(&frame, &cx)))
    });
    // VoIPBIN's code today: the bare object, labelled by the connection it arrived on.
    let bare = Bytes::from(format!(
        r#"{{"id":"a1b2c3d4-e5f6-7890-abcd-ef1234567890","customer_id":"{customer}","owner_type":"agent","owner_id":"98765432-4321-4321-4321-210987654321","type":"flow","status":"hangup","direction":"incoming","source":{{"type":"tel","target":"+15551112222"}},"destination":{{"type":"tel","target":"+15553334444"}},"tm_hangup":"2026-01-20T10:30:00.000000Z","tm_update":"2026-01-20T10:30:00.000000Z"}}"#
    ));
    let call = Label::of("call", None);
    let labelled = Context { label: &call, ..cx };
    group.bench_function("decode_bare_object", |b| {
        b.iter(|| black_box(decode(&bare, &labelled)))
    });
    let event = decode(&frame, &cx).expect("valid");
    group.bench_function("encode_envelope", |b| {
        b.iter(|| {
            let head = EnvelopeHead::new(&event.event_type, &event.timestamp);
            black_box(head.frame(&event.topics[0], &event.data))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
