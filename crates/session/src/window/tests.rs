//! The window against the whole history it was fed: a `Recovered` answer must be exactly the
//! history after the cursor with no gap in it, whatever was forgotten and whatever cursor a
//! client makes up.

use std::time::{Duration, UNIX_EPOCH};

use proptest::prelude::*;

use super::*;

const EPOCH: u64 = 0x5eed_5eed_5eed_5eed;

fn gap() -> Gap {
    Gap {
        reason: fanout_protocol::server::GapReason::UpstreamReconnect,
        since: UNIX_EPOCH + Duration::from_secs(1),
        until: UNIX_EPOCH + Duration::from_secs(2),
    }
}

fn at(epoch: u64, offset: u64) -> Cursor {
    Cursor { epoch, offset }
}

fn recovered(resume: Resume<'_, u32>) -> Option<Vec<(u64, u32)>> {
    match resume {
        Resume::Recovered(events) => {
            Some(events.into_iter().map(|(c, e)| (c.offset, *e)).collect())
        }
        Resume::Lost(_) => None,
    }
}

#[test]
fn resumes_within_the_window_and_across_a_gap_only_from_its_cursor() {
    let now = Instant::now();
    let mut window = Window::new(EPOCH, WindowLimits::default());
    assert_eq!(window.latest(), None);
    let c0 = window.push_event(10u32, 10, now);
    let c1 = window.push_event(11, 10, now);
    assert_eq!((c0, c1), (at(EPOCH, 0), at(EPOCH, 1)));
    assert_eq!(recovered(window.resume(c0)), Some(vec![(1, 11)]));
    assert_eq!(recovered(window.resume(c1)), Some(vec![]));
    let g = window.push_gap(gap(), now);
    window.push_event(13, 10, now);
    // Across the gap: lost, and told which gap.
    assert_eq!(window.resume(c1), Resume::Lost(vec![(g, gap())]));
    // From the gap's own cursor: nothing missing.
    assert_eq!(recovered(window.resume(g)), Some(vec![(3, 13)]));
    // Offsets never given out, another epoch: lost, no gaps claimed.
    assert_eq!(window.resume(at(EPOCH, 4)), Resume::Lost(vec![]));
    assert_eq!(window.resume(at(EPOCH ^ 1, 1)), Resume::Lost(vec![]));
}

#[test]
fn forgetting_past_any_limit_loses_older_cursors() {
    let now = Instant::now();
    let limits = WindowLimits {
        max_age: Duration::from_secs(60),
        max_bytes: 100,
        max_entries: 3,
    };
    let mut window = Window::new(EPOCH, limits);
    for i in 0..5u32 {
        window.push_event(i, 10, now);
    }
    // Three kept: offsets 2, 3, 4. A client at 1 misses nothing (2 is kept); at 0 it does.
    assert_eq!(window.len(), 3);
    assert_eq!(
        recovered(window.resume(at(EPOCH, 1))),
        Some(vec![(2, 2), (3, 3), (4, 4)])
    );
    assert_eq!(window.resume(at(EPOCH, 0)), Resume::Lost(vec![]));
    // Bytes: one big event pushes the others out.
    window.push_event(5, 95, now);
    assert_eq!(window.len(), 1);
    assert_eq!(window.bytes(), 95);
    assert_eq!(recovered(window.resume(at(EPOCH, 4))), Some(vec![(5, 5)]));
    assert_eq!(window.resume(at(EPOCH, 3)), Resume::Lost(vec![]));
    // Age: everything goes; the latest cursor still holds everything there was.
    window.forget(now + Duration::from_secs(61));
    assert!(window.is_empty());
    assert_eq!(window.bytes(), 0);
    assert_eq!(recovered(window.resume(at(EPOCH, 5))), Some(vec![]));
    assert_eq!(window.resume(at(EPOCH, 4)), Resume::Lost(vec![]));
}

#[derive(Debug, Clone)]
enum Op {
    Event(usize),
    Gap,
    Wait(u64),
    Resume { foreign: bool, offset: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..60).prop_map(Op::Event),
        1 => Just(Op::Gap),
        1 => (0u64..40).prop_map(Op::Wait),
        3 => (any::<bool>(), 0u64..80).prop_map(|(foreign, offset)| Op::Resume { foreign, offset }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn recovered_is_never_wrong(
        max_entries in 1usize..20,
        max_bytes in 40usize..400,
        max_age_ms in 1u64..100,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let limits = WindowLimits {
            max_age: Duration::from_millis(max_age_ms),
            max_bytes,
            max_entries,
        };
        let mut now = Instant::now();
        let mut window = Window::new(EPOCH, limits);
        // The whole history: (offset, Some(item) for an event, None for a gap).
        let mut history: Vec<(u64, Option<u32>)> = Vec::new();
        for op in ops {
            match op {
                Op::Event(size) => {
                    let item = history.len() as u32;
                    let cursor = window.push_event(item, size, now);
                    prop_assert_eq!(cursor, at(EPOCH, history.len() as u64));
                    history.push((cursor.offset, Some(item)));
                }
                Op::Gap => {
                    let cursor = window.push_gap(gap(), now);
                    history.push((cursor.offset, None));
                }
                Op::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    window.forget(now);
                }
                Op::Resume { foreign, offset } => {
                    let epoch = if foreign { EPOCH ^ 0xff } else { EPOCH };
                    let since = at(epoch, offset);
                    let after: Vec<&(u64, Option<u32>)> =
                        history.iter().filter(|(o, _)| *o > offset).collect();
                    let issued = (offset as usize) < history.len();
                    match window.resume(since) {
                        Resume::Recovered(events) => {
                            prop_assert!(!foreign, "recovered a foreign cursor");
                            prop_assert!(issued, "recovered a cursor never given out");
                            prop_assert!(after.iter().all(|(_, e)| e.is_some()), "recovered across a gap");
                            let want: Vec<(u64, u32)> =
                                after.iter().filter_map(|(o, e)| e.map(|e| (*o, e))).collect();
                            let got: Vec<(u64, u32)> =
                                events.iter().map(|(c, e)| (c.offset, **e)).collect();
                            prop_assert_eq!(got, want, "recovered with events missing or extra");
                            prop_assert!(events.iter().all(|(c, _)| c.epoch == EPOCH));
                        }
                        Resume::Lost(gaps) => {
                            // Every gap named is a real one after the cursor.
                            for (cursor, _) in &gaps {
                                prop_assert!(cursor.offset > offset);
                                prop_assert_eq!(history[cursor.offset as usize].1, None);
                            }
                            // Lost only for a reason: nothing forgotten, no gap, of this
                            // stream and issued would have been recovered.
                            let nothing_forgotten = window.len() == history.len();
                            let no_gap = after.iter().all(|(_, e)| e.is_some());
                            prop_assert!(
                                foreign || !issued || !nothing_forgotten || !no_gap,
                                "lost although everything after it is kept"
                            );
                        }
                    }
                }
            }
            prop_assert!(window.bytes() <= max_bytes.max(60) || window.len() == 1);
            prop_assert!(window.len() <= max_entries);
        }
    }
}

#[test]
fn a_jump_forgets_what_it_cannot_vouch_for() {
    let now = Instant::now();
    let mut window = Window::new(EPOCH, WindowLimits::default());
    // Numbered elsewhere: this window starts in the middle of the stream.
    assert!(window.jump(at(EPOCH, 5)));
    assert_eq!(window.push_event(5u32, 10, now), at(EPOCH, 5));
    window.push_event(6, 10, now);
    // From just before the first offset seen: everything after it is here.
    assert_eq!(
        recovered(window.resume(at(EPOCH, 4))),
        Some(vec![(5, 5), (6, 6)])
    );
    // Earlier: entries never seen here.
    assert_eq!(recovered(window.resume(at(EPOCH, 3))), None);
    // The next offset, or one already taken: nothing changes.
    assert!(!window.jump(at(EPOCH, 7)));
    assert!(!window.jump(at(EPOCH, 6)));
    assert_eq!(window.len(), 2);
    // A hole: 7 and 8 never arrived. Only a cursor from 8 on can be served.
    assert!(window.jump(at(EPOCH, 9)));
    assert_eq!(window.push_event(9, 10, now), at(EPOCH, 9));
    assert_eq!(recovered(window.resume(at(EPOCH, 6))), None);
    assert_eq!(recovered(window.resume(at(EPOCH, 8))), Some(vec![(9, 9)]));
    assert_eq!((window.len(), window.bytes()), (1, 10));
    // A new epoch (a new owner's term): the old one's cursors are lost.
    assert!(window.jump(at(EPOCH + 1, 0)));
    window.push_event(0, 10, now);
    assert_eq!(recovered(window.resume(at(EPOCH, 9))), None);
    assert_eq!(window.latest(), Some(at(EPOCH + 1, 0)));
}
