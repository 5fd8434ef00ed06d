//! When to take, renew and give up a lease (a node's), and whether its holder may serve
//! right now: the state machine around [`crate::membership::Membership`]'s leases, sans-IO (time is an
//! argument, the store's answers are fed back in).
//!
//! ```text
//!            acquired(Some)                     renewed(Some), every ttl/3
//! Seeking ────────────────────▶ Holding ◀──────────────────────────────┐
//!   ▲  │ acquired(None): retry    │  │ renewed(Err): retry soon          │
//!   │  └──────────────────────────┘  └───────────────────────────────────┘
//!   └──── renewed(None) (taken: someone else wrote the key) / release() ─┘
//! ```
//!
//! **Self-fencing.** [`Ownership::may_serve`] answers the term only while the last renewal
//! that succeeded was *sent* less than 0.7 TTL ago. The store counts the lease's age from
//! when it wrote the renewal, which is later, so this node stops serving before any other
//! node can have taken the lease; a node paused past that wakes up not serving, and its next
//! renewal is refused if anyone took over (the store-side fence).

use std::time::{Duration, Instant};

/// A lease this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The revision that took it: the term it gives.
    pub term: u64,
    /// The latest revision written (the one a renewal or release must expect).
    pub revision: u64,
}

/// What the caller should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try to take the lease ([`crate::membership::Membership::join`]), then call
    /// [`Ownership::acquired`].
    Acquire,
    /// Renew it ([`crate::membership::Membership::renew`]), then call [`Ownership::renewed`].
    Renew(Lease),
    /// Nothing before [`Ownership::due`].
    Wait,
}

/// Fractions of the TTL.
const RENEW_EVERY: f64 = 1.0 / 3.0;
const SERVE_FOR: f64 = 0.7;
const RETRY_AFTER_ERROR: f64 = 0.1;

#[derive(Debug, Clone, Copy)]
struct Held {
    lease: Lease,
    /// When the last renewal (or the take) that succeeded was sent.
    renewed: Instant,
}

/// A lease, as this node pursues it.
#[derive(Debug)]
pub struct Ownership {
    ttl: Duration,
    held: Option<Held>,
    /// When to act next.
    next: Instant,
    /// A request is out; its answer has not been fed back.
    in_flight: Option<Instant>,
    /// Released for good.
    given_up: bool,
}

impl Ownership {
    /// Seeking the lease from `now`, which lasts `ttl` in the store.
    pub fn new(ttl: Duration, now: Instant) -> Self {
        Ownership {
            ttl,
            held: None,
            next: now,
            in_flight: None,
            given_up: false,
        }
    }

    fn part(&self, fraction: f64) -> Duration {
        self.ttl.mul_f64(fraction)
    }

    /// When [`Ownership::poll`] may have something to do.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// What to do at `now`. An action returned is in flight until its answer is fed back;
    /// no other is returned meanwhile.
    pub fn poll(&mut self, now: Instant) -> Next {
        if self.in_flight.is_some() || now < self.next {
            return Next::Wait;
        }
        self.in_flight = Some(now);
        match self.held {
            Some(held) => Next::Renew(held.lease),
            None => Next::Acquire,
        }
    }

    fn sent(&mut self) -> Instant {
        self.in_flight.take().unwrap_or_else(Instant::now)
    }

    /// The answer to [`Next::Acquire`]: the lease, or `None` if another node holds it.
    pub fn acquired(&mut self, lease: Option<Lease>, now: Instant) {
        let sent = self.sent();
        match lease {
            Some(lease) => {
                self.held = Some(Held {
                    lease,
                    renewed: sent,
                });
                self.next = sent + self.part(RENEW_EVERY);
            }
            // Held elsewhere: look again before its holder could have lost it unnoticed.
            None => self.next = now + self.part(RENEW_EVERY),
        }
    }

    /// The answer to [`Next::Renew`]: renewed, taken by another node (`Ok(None)`), or not
    /// carried out (`Err`: NATS did not answer; the lease may still be held).
    pub fn renewed(&mut self, result: Result<Option<Lease>, ()>, now: Instant) {
        let sent = self.sent();
        match result {
            Ok(Some(lease)) => {
                self.held = Some(Held {
                    lease,
                    renewed: sent,
                });
                self.next = sent + self.part(RENEW_EVERY);
            }
            Ok(None) => {
                self.held = None;
                self.next = now + self.part(RENEW_EVERY);
            }
            Err(()) => self.next = now + self.part(RETRY_AFTER_ERROR),
        }
    }

    /// The term this node may serve the customer's upstream in at `now`, if any: it holds
    /// the lease and renewed it recently enough that no other node can have taken it.
    pub fn may_serve(&self, now: Instant) -> Option<u64> {
        self.held
            .filter(|held| now < held.renewed + self.part(SERVE_FOR))
            .map(|held| held.lease.term)
    }

    /// Until when [`Ownership::may_serve`] answers the term, if a lease is held.
    pub fn serve_until(&self) -> Option<Instant> {
        self.held.map(|held| held.renewed + self.part(SERVE_FOR))
    }

    /// The lease held, if any.
    pub fn lease(&self) -> Option<Lease> {
        self.held.map(|held| held.lease)
    }

    /// The lease may be free now (its release or expiry was seen): a node seeking it tries
    /// at once instead of at its next turn.
    pub fn look_now(&mut self, now: Instant) {
        if self.held.is_none() && !self.given_up {
            self.next = self.next.min(now);
        }
    }

    /// Gives the lease up (linger over, or shutting down): answers it, for
    /// [`crate::Leases::release`], if it was held. From now on this node does not serve and
    /// does not seek it.
    pub fn release(&mut self) -> Option<Lease> {
        self.given_up = true;
        self.next = far_future(self.next);
        self.held.take().map(|held| held.lease)
    }
}

/// A time that does not come: about thirty years after `from`.
fn far_future(from: Instant) -> Instant {
    from + Duration::from_secs(30 * 365 * 24 * 3600)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(15);

    fn lease(term: u64, revision: u64) -> Lease {
        Lease { term, revision }
    }

    #[test]
    fn takes_renews_every_third_of_the_ttl_and_serves_in_its_term() {
        let t0 = Instant::now();
        let mut own = Ownership::new(TTL, t0);
        assert_eq!(own.may_serve(t0), None);
        assert_eq!(own.poll(t0), Next::Acquire);
        assert_eq!(own.poll(t0), Next::Wait, "one request at a time");
        own.acquired(Some(lease(7, 7)), t0 + Duration::from_millis(5));
        assert_eq!(own.may_serve(t0 + Duration::from_secs(1)), Some(7));
        assert_eq!(own.due(), t0 + TTL / 3);
        assert_eq!(own.poll(t0 + Duration::from_secs(4)), Next::Wait);
        let t1 = t0 + TTL / 3;
        assert_eq!(own.poll(t1), Next::Renew(lease(7, 7)));
        own.renewed(Ok(Some(lease(7, 9))), t1 + Duration::from_millis(5));
        assert_eq!(own.poll(t1 + TTL / 3), Next::Renew(lease(7, 9)));
        // The term stays what the take made it.
        own.renewed(Ok(Some(lease(7, 12))), t1 + TTL / 3);
        assert_eq!(
            own.may_serve(t1 + TTL / 3 + Duration::from_secs(1)),
            Some(7)
        );
    }

    #[test]
    fn stops_serving_before_the_store_can_give_the_lease_away() {
        let t0 = Instant::now();
        let mut own = Ownership::new(TTL, t0);
        own.poll(t0);
        own.acquired(Some(lease(3, 3)), t0);
        // Renewals fail (NATS unreachable): retried soon, serving only within 0.7 TTL of
        // the last renewal that succeeded.
        let mut now = t0 + TTL / 3;
        while now < t0 + TTL {
            if own.poll(now) != Next::Wait {
                own.renewed(Err(()), now);
            }
            now += Duration::from_millis(100);
        }
        assert_eq!(own.may_serve(t0 + TTL.mul_f64(0.69)), Some(3));
        assert_eq!(own.may_serve(t0 + TTL.mul_f64(0.7)), None);
        assert_eq!(own.may_serve(t0 + TTL), None);
        // A renewal that finally gets through while nobody took over: serving again.
        assert!(matches!(own.poll(now + TTL), Next::Renew(_)));
        own.renewed(Ok(Some(lease(3, 4))), now + TTL);
        assert_eq!(own.may_serve(now + TTL), Some(3));
    }

    #[test]
    fn a_renewal_counts_from_when_it_was_sent() {
        let t0 = Instant::now();
        let mut own = Ownership::new(TTL, t0);
        own.poll(t0);
        // The answer took ten seconds (a slow NATS): the lease's age counts from the send.
        own.acquired(Some(lease(1, 1)), t0 + Duration::from_secs(10));
        assert_eq!(own.may_serve(t0 + TTL.mul_f64(0.7)), None);
        assert!(matches!(
            own.poll(t0 + Duration::from_secs(10)),
            Next::Renew(_)
        ));
    }

    #[test]
    fn taken_by_another_node_it_stops_at_once_and_seeks_again_later() {
        let t0 = Instant::now();
        let mut own = Ownership::new(TTL, t0);
        own.poll(t0);
        own.acquired(Some(lease(5, 5)), t0);
        let t1 = t0 + TTL / 3;
        assert!(matches!(own.poll(t1), Next::Renew(_)));
        own.renewed(Ok(None), t1);
        assert_eq!(own.may_serve(t1), None);
        assert_eq!(own.poll(t1), Next::Wait);
        assert_eq!(own.poll(t1 + TTL / 3), Next::Acquire);
        own.acquired(None, t1 + TTL / 3);
        assert_eq!(own.may_serve(t1 + TTL / 3), None);
    }

    #[test]
    fn a_released_lease_is_neither_served_nor_sought() {
        let t0 = Instant::now();
        let mut own = Ownership::new(TTL, t0);
        own.poll(t0);
        own.acquired(Some(lease(2, 2)), t0);
        assert_eq!(own.release(), Some(lease(2, 2)));
        assert_eq!(own.may_serve(t0), None);
        assert_eq!(own.poll(t0 + TTL * 100), Next::Wait);
        assert_eq!(own.release(), None);
    }
}
