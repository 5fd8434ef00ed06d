//! A loom model of one owner: a match racing a subscribe and an unsubscribe, including the
//! case where the unsubscribe empties and retires the owner while the subscribe is queued.
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p fanout-topic-trie --release loom`.

use std::collections::BTreeSet;
use std::sync::Arc;

use fanout_protocol::{Pattern, Topic};

use crate::owner::{Change, Outcome, Owner, Queued, Submitted};

const C: &str = "12345678-1234-1234-1234-123456789012";

fn pattern(text: &str) -> Pattern {
    Pattern::parse(&format!("customer_id:{C}{text}")).expect("valid")
}

fn matched(owner: &Owner<u64>, topic: &Topic) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    owner.snapshot().visit(topic.rest(), &mut |node| {
        out.extend(node.subscribers().map(|(id, _)| *id));
    });
    out
}

/// The owner slot of the root map, as `Trie::change` uses it: a retired owner is replaced.
struct Slot(loom::sync::Mutex<Arc<Owner<u64>>>);

impl Slot {
    fn current(&self) -> Arc<Owner<u64>> {
        self.0
            .lock()
            .map(|g| g.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn replace_if(&self, old: &Arc<Owner<u64>>) {
        let mut current = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, old) {
            *current = Arc::new(Owner::new());
        }
    }

    /// `Trie::change` for one owner slot.
    fn change(&self, change: Change<u64>) -> bool {
        let outcome = Outcome::new();
        let mut todo = vec![Queued {
            change,
            outcome: outcome.clone(),
        }];
        loop {
            let owner = self.current();
            match owner.submit(std::mem::take(&mut todo)) {
                Submitted::Done => {}
                Submitted::Emptied => self.replace_if(&owner),
                Submitted::Retired(rest) => {
                    self.replace_if(&owner);
                    todo = rest;
                    continue;
                }
            }
            if let Some(applied) = outcome.get() {
                return applied;
            }
            loom::thread::yield_now();
        }
    }
}

#[test]
fn loom_match_races_subscribe_and_unsubscribe() {
    loom::model(|| {
        let slot = Arc::new(Slot(loom::sync::Mutex::new(Arc::new(Owner::new()))));
        let topic = Topic::parse(&format!("customer_id:{C}:call:k")).expect("valid");
        assert!(slot.change(Change::Insert {
            pattern: pattern(":call"),
            id: 1,
            subscriber: 1
        }));

        let subscribe = {
            let slot = slot.clone();
            loom::thread::spawn(move || {
                slot.change(Change::Insert {
                    pattern: pattern(":call:*"),
                    id: 2,
                    subscriber: 2,
                })
            })
        };
        let unsubscribe = {
            let slot = slot.clone();
            loom::thread::spawn(move || {
                slot.change(Change::Remove {
                    pattern: pattern(":call"),
                    id: 1,
                })
            })
        };
        // A match sees a whole snapshot: one of the four states, never anything else.
        let seen = matched(&slot.current(), &topic);
        let states: [BTreeSet<u64>; 4] = [[1].into(), [1, 2].into(), [2].into(), BTreeSet::new()];
        assert!(states.contains(&seen), "{seen:?}");

        assert!(subscribe.join().expect("joins"), "the subscribe was lost");
        assert!(
            unsubscribe.join().expect("joins"),
            "the unsubscribe was lost"
        );
        assert_eq!(matched(&slot.current(), &topic), [2].into());
    });
}
