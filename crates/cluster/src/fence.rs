//! The reader-side fence: every node that receives a customer's events from the fleet keeps
//! the newest owner term it has seen, and takes each message, stamped `(term, offset)` by the
//! owner that published it, only if it belongs there. Sans-IO.
//!
//! - a message of an older term is dropped: its owner was replaced (paused, partitioned) and
//!   must not reach a session once the newer term began;
//! - an offset already taken (a redelivery, a duplicate publish) is dropped;
//! - the first message of a newer term, or an offset past the next one, is taken, and the
//!   caller is told that continuity broke there (a `gap`: `owner_failover`, or
//!   `owner_handoff` when the old owner said it handed over; lost messages in a term).

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// The next one of the current term: deliver it.
    Next,
    /// The first of a newer term than any seen (`previous`, if one was): deliver it after
    /// telling the customer's sessions of the owner change.
    NewTerm {
        /// The term it replaces.
        previous: Option<u64>,
    },
    /// Of the current term, but offsets `from..to` never arrived: deliver it after a gap.
    Skipped {
        /// The first offset missing.
        from: u64,
        /// The offset of this message (missing up to it, excluded).
        to: u64,
    },
    /// From an older term, or an offset already taken: drop it.
    Drop,
}

/// One customer's fence on one node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TermFence {
    /// The newest term seen, and the last offset taken in it.
    current: Option<(u64, u64)>,
}

impl TermFence {
    /// A fence that has seen nothing.
    pub fn new() -> Self {
        TermFence::default()
    }

    /// The newest term seen.
    pub fn term(&self) -> Option<u64> {
        self.current.map(|(term, _)| term)
    }

    /// Judges a message stamped `term` and `offset`, and takes it if it passes.
    pub fn admit(&mut self, term: u64, offset: u64) -> Admit {
        let admit = self.judge(term, offset);
        if admit != Admit::Drop {
            self.current = Some((term, offset));
        }
        admit
    }

    /// What [`TermFence::admit`] would answer, taking nothing.
    pub fn judge(&self, term: u64, offset: u64) -> Admit {
        let Some((current, last)) = self.current else {
            return Admit::NewTerm { previous: None };
        };
        if term < current || (term == current && offset <= last) {
            return Admit::Drop;
        }
        if term > current {
            return Admit::NewTerm {
                previous: Some(current),
            };
        }
        // `last` < `offset`, so `last + 1` does not overflow.
        if offset == last + 1 {
            Admit::Next
        } else {
            Admit::Skipped {
                from: last + 1,
                to: offset,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_messages_of_one_term_pass() {
        let mut fence = TermFence::new();
        assert_eq!(fence.admit(4, 0), Admit::NewTerm { previous: None });
        assert_eq!(fence.admit(4, 1), Admit::Next);
        assert_eq!(fence.admit(4, 2), Admit::Next);
        assert_eq!(fence.term(), Some(4));
    }

    #[test]
    fn a_stale_owner_is_dropped_once_a_newer_term_began() {
        let mut fence = TermFence::new();
        fence.admit(4, 0);
        fence.admit(4, 1);
        assert_eq!(fence.admit(9, 0), Admit::NewTerm { previous: Some(4) });
        // The old owner wakes up and publishes on: none of it passes, at any offset.
        for offset in [2, 3, 100] {
            assert_eq!(fence.admit(4, offset), Admit::Drop);
        }
        assert_eq!(fence.admit(9, 1), Admit::Next);
    }

    #[test]
    fn duplicates_are_dropped_and_holes_reported() {
        let mut fence = TermFence::new();
        fence.admit(2, 10);
        assert_eq!(fence.admit(2, 10), Admit::Drop);
        assert_eq!(fence.admit(2, 9), Admit::Drop);
        assert_eq!(fence.admit(2, 14), Admit::Skipped { from: 11, to: 14 });
        assert_eq!(fence.admit(2, 15), Admit::Next);
        assert_eq!(
            fence.admit(2, 12),
            Admit::Drop,
            "late: already reported lost"
        );
    }

    proptest::proptest! {
        /// Whatever arrives, in whatever order: what passes is strictly increasing in
        /// (term, offset), so nothing passes twice and nothing of an older term passes after
        /// a newer one; and every message newer than all before it passes.
        #[test]
        fn what_passes_only_moves_forward(
            messages in proptest::collection::vec((0u64..4, 0u64..8), 0..60)
        ) {
            let mut fence = TermFence::new();
            let mut passed: Option<(u64, u64)> = None;
            for (term, offset) in messages {
                let admit = fence.admit(term, offset);
                let newer = passed.is_none_or(|p| (term, offset) > p);
                proptest::prop_assert_eq!(admit != Admit::Drop, newer, "{:?} after {:?}", (term, offset), passed);
                if newer {
                    passed = Some((term, offset));
                }
            }
        }
    }

    #[test]
    fn extreme_offsets_neither_overflow_nor_pass_twice() {
        let mut fence = TermFence::new();
        fence.admit(1, u64::MAX - 1);
        assert_eq!(fence.admit(1, u64::MAX), Admit::Next);
        assert_eq!(fence.admit(1, u64::MAX), Admit::Drop);
        assert_eq!(
            fence.admit(u64::MAX, 0),
            Admit::NewTerm { previous: Some(1) }
        );
        assert_eq!(
            fence.admit(u64::MAX, u64::MAX),
            Admit::Skipped {
                from: 1,
                to: u64::MAX
            }
        );
    }
}
