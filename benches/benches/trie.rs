//! The topic trie against its baselines (issue 4's targets):
//! - `match`: 100k sessions across 5k owners, 4 patterns each, one thread; per topic.
//! - `match_2_threads_churn`: the same on 2 reader threads while a third churns
//!   subscriptions at a steady 20k changes per second.
//! - `subscribe_unsubscribe`: one insert and one remove, for owners already holding 10, 1k
//!   and 100k pairs.
//! - `storm`: 10k sessions × 4 patterns for one owner, all at once.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fanout_benches::{
    DashLists, Index, LockedLists, Scan, call_topics, fill, owner, session_patterns,
};
use fanout_protocol::{Pattern, Topic};
use fanout_topic_trie::Trie;

const OWNERS: u64 = 5_000;
const SESSIONS: u64 = 100_000;

fn indexes() -> Vec<Arc<dyn Index>> {
    vec![
        Arc::new(Trie::<u64>::new()),
        Arc::new(LockedLists::default()),
        Arc::new(DashLists::default()),
        Arc::new(Scan::default()),
    ]
}

/// 1000 events spread over the owners, each with its two call topics.
fn events() -> Vec<Vec<Topic>> {
    (0..1000u64)
        .map(|i| {
            let event_type = if i % 3 == 0 {
                "call_hangup"
            } else {
                "call_ringing"
            };
            call_topics(
                owner((i * 7919) % OWNERS),
                event_type,
                &format!("k{}", i % 60),
            )
        })
        .collect()
}

fn bench_match(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group("match");
    group.throughput(Throughput::Elements(2));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for index in indexes() {
        fill(index.as_ref(), OWNERS, SESSIONS);
        let mut i = 0;
        group.bench_function(BenchmarkId::from_parameter(index.name()), |b| {
            b.iter(|| {
                i = (i + 1) % events.len();
                black_box(index.count(&events[i]))
            })
        });
    }
    group.finish();
}

/// Runs `per_second` changes per second on `index` until `stop`, in bursts every 5 ms (so
/// the churner wakes 200 times a second, not once per change).
fn churner(
    index: Arc<dyn Index>,
    stop: Arc<AtomicBool>,
    per_second: u64,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut done = 0u64;
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
            let due = (started.elapsed().as_secs_f64() * per_second as f64) as u64;
            while done < due {
                let s = SESSIONS + done / 2;
                let pattern = session_patterns(owner(done % OWNERS), s)[0].clone();
                index.insert(&pattern, s);
                index.remove(&pattern, s);
                done += 2;
            }
        }
        done
    })
}

fn bench_match_churn(c: &mut Criterion) {
    let events = Arc::new(events());
    let mut group = c.benchmark_group("match_2_threads_churn");
    // One iteration: each of the two threads matches one event (two topics).
    group.throughput(Throughput::Elements(4));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(3));
    for index in indexes() {
        if index.name() == "scan-all" {
            continue; // far too slow to be worth the minutes
        }
        fill(index.as_ref(), OWNERS, SESSIONS);
        let stop = Arc::new(AtomicBool::new(false));
        let rate = std::env::var("FANOUT_BENCH_CHURN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20_000);
        let churn = churner(index.clone(), stop.clone(), rate);
        group.bench_function(BenchmarkId::from_parameter(index.name()), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for t in 0..2u64 {
                        let index = index.clone();
                        let events = events.clone();
                        scope.spawn(move || {
                            for i in 0..iters {
                                let event = &events[((i * 2 + t) % events.len() as u64) as usize];
                                black_box(index.count(event));
                            }
                        });
                    }
                });
                started.elapsed()
            })
        });
        stop.store(true, Ordering::Relaxed);
        let _ = churn.join();
    }
    group.finish();
}

fn bench_subscribe(c: &mut Criterion) {
    let mut group = c.benchmark_group("subscribe_unsubscribe");
    // One iteration: one insert and one remove.
    group.throughput(Throughput::Elements(2));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(2));
    for held in [10u64, 1_000, 100_000] {
        for index in indexes() {
            // All pairs on one owner: the cost must not depend on how many it holds.
            let o = owner(0);
            for s in 0..held {
                index.insert(&session_patterns(o, s)[(s % 4) as usize], s);
            }
            let pattern = Pattern::parse(&format!("customer_id:{o}:call:*")).expect("valid");
            let mut s = held;
            group.bench_function(BenchmarkId::new(index.name(), held), |b| {
                b.iter(|| {
                    s += 1;
                    index.insert(&pattern, s);
                    index.remove(&pattern, s);
                })
            });
        }
    }
    group.finish();
}

fn bench_storm(c: &mut Criterion) {
    let mut group = c.benchmark_group("storm");
    group.throughput(Throughput::Elements(40_000));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let o = owner(0);
    let patterns: Vec<[Pattern; 4]> = (0..10_000).map(|s| session_patterns(o, s)).collect();
    for name in ["trie", "rwlock-lists", "dashmap-lists", "scan-all"] {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let index: Box<dyn Index> = match name {
                        "trie" => Box::new(Trie::<u64>::new()),
                        "rwlock-lists" => Box::new(LockedLists::default()),
                        "dashmap-lists" => Box::new(DashLists::default()),
                        _ => Box::new(Scan::default()),
                    };
                    let started = Instant::now();
                    for (s, four) in patterns.iter().enumerate() {
                        for pattern in four {
                            index.insert(pattern, s as u64);
                        }
                    }
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_match,
    bench_match_churn,
    bench_subscribe,
    bench_storm
);
criterion_main!(benches);
