//! The trie against a plain reference model, and its edge cases.

use proptest::prelude::*;

use super::*;

const OWNERS: [&str; 3] = [
    "12345678-1234-1234-1234-123456789012",
    "87654321-4321-4321-4321-210987654321",
    "11111111-2222-3333-4444-555555555555",
];

fn p(text: &str) -> Pattern {
    Pattern::parse(text).expect("valid pattern")
}

fn t(text: &str) -> Topic {
    Topic::parse(text).expect("valid topic")
}

fn matches(trie: &Trie<u64>, topics: &[Topic]) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    trie.match_topics(topics, |v, i| out.push((*v, i)));
    out.sort();
    out
}

/// The reference: a list of pairs, scanned.
#[derive(Default)]
struct Model {
    pairs: Vec<(Pattern, u64)>,
}

impl Model {
    fn insert(&mut self, pattern: &Pattern, s: u64) -> bool {
        if self.pairs.iter().any(|(p, v)| p == pattern && *v == s) {
            return false;
        }
        self.pairs.push((pattern.clone(), s));
        true
    }

    fn remove(&mut self, pattern: &Pattern, s: u64) -> bool {
        let before = self.pairs.len();
        self.pairs.retain(|(p, v)| !(p == pattern && *v == s));
        before != self.pairs.len()
    }

    fn remove_subscriber(&mut self, s: u64) -> usize {
        let before = self.pairs.len();
        self.pairs.retain(|(_, v)| *v != s);
        before - self.pairs.len()
    }

    fn matches(&self, topics: &[Topic]) -> Vec<(u64, usize)> {
        let mut out: Vec<(u64, usize)> = Vec::new();
        for (i, topic) in topics.iter().enumerate() {
            for (pattern, s) in &self.pairs {
                if pattern.matches(topic) && !out.iter().any(|(v, _)| v == s) {
                    out.push((*s, i));
                }
            }
        }
        out.sort();
        out
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(String, u64),
    Remove(String, u64),
    RemoveSubscriber(u64),
    Match(Vec<String>),
}

fn segment() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("call"),
        Just("queue"),
        Just("queuecall"),
        Just("call_hangup"),
        Just("k1"),
        Just("k2")
    ]
}

fn head() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("customer_id"), Just("agent_id")],
        prop::sample::select(&OWNERS[..]),
    )
        .prop_map(|(s, o)| format!("{s}:{o}"))
}

fn pattern_text() -> impl Strategy<Value = String> {
    let seg = prop_oneof![3 => segment(), 1 => Just("*")];
    (head(), prop::collection::vec(seg, 0..4)).prop_map(|(h, rest)| {
        std::iter::once(h.as_str())
            .chain(rest)
            .collect::<Vec<_>>()
            .join(":")
    })
}

fn topic_text() -> impl Strategy<Value = String> {
    (head(), prop::collection::vec(segment(), 0..4)).prop_map(|(h, rest)| {
        std::iter::once(h.as_str())
            .chain(rest)
            .collect::<Vec<_>>()
            .join(":")
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (pattern_text(), 0..6u64).prop_map(|(p, s)| Op::Insert(p, s)),
        2 => (pattern_text(), 0..6u64).prop_map(|(p, s)| Op::Remove(p, s)),
        1 => (0..6u64).prop_map(Op::RemoveSubscriber),
        3 => prop::collection::vec(topic_text(), 1..5).prop_map(Op::Match),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: Some(Box::new(
        proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))), ..ProptestConfig::default() })]

    #[test]
    fn agrees_with_the_reference(ops in prop::collection::vec(op(), 1..60)) {
        let trie = Trie::new();
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Insert(pattern, s) => {
                    let pattern = p(&pattern);
                    prop_assert_eq!(trie.insert(&pattern, s), model.insert(&pattern, s));
                }
                Op::Remove(pattern, s) => {
                    let pattern = p(&pattern);
                    prop_assert_eq!(trie.remove(&pattern, &s), model.remove(&pattern, s));
                }
                Op::RemoveSubscriber(s) => {
                    prop_assert_eq!(trie.remove_subscriber(&s), model.remove_subscriber(s));
                }
                Op::Match(topics) => {
                    let topics: Vec<Topic> = topics.iter().map(|x| t(x)).collect();
                    prop_assert_eq!(matches(&trie, &topics), model.matches(&topics));
                }
            }
            prop_assert_eq!(trie.len(), model.pairs.len());
            for (pattern, s) in &model.pairs {
                prop_assert!(trie.contains(pattern, s));
            }
            let mut everyone = Vec::new();
            trie.for_each_subscriber(|s| everyone.push(*s));
            let mut expected: Vec<u64> = model.pairs.iter().map(|(_, s)| *s).collect();
            expected.sort();
            expected.dedup();
            everyone.sort();
            prop_assert_eq!(everyone, expected);
        }
    }
}

#[test]
fn each_subscriber_once_under_its_first_topic() {
    let c = OWNERS[0];
    let trie = Trie::new();
    assert!(trie.insert(&p(&format!("customer_id:{c}:call:*")), 1));
    assert!(trie.insert(&p(&format!("customer_id:{c}")), 1));
    assert!(!trie.insert(&p(&format!("customer_id:{c}")), 1));
    assert!(trie.insert(&p(&format!("customer_id:{c}:call:call_hangup")), 2));
    let topics = [
        t(&format!("customer_id:{c}:call:k")),
        t(&format!("customer_id:{c}:call:call_hangup:k")),
    ];
    assert_eq!(matches(&trie, &topics), [(1, 0), (2, 1)]);
    assert_eq!(trie.remove_subscriber(&1), 2);
    assert_eq!(matches(&trie, &topics), [(2, 1)]);
    assert_eq!(trie.len(), 1);
}

#[test]
fn never_returns_a_subscriber_of_another_owner() {
    let trie = Trie::new();
    for (i, owner) in OWNERS.iter().enumerate() {
        let s = i as u64;
        for pattern in [
            format!("customer_id:{owner}"),
            format!("customer_id:{owner}:*"),
            format!("agent_id:{owner}:call"),
        ] {
            trie.insert(&p(&pattern), s);
        }
    }
    for (i, owner) in OWNERS.iter().enumerate() {
        for scope in ["customer_id", "agent_id"] {
            let topics = [
                t(&format!("{scope}:{owner}:call:k")),
                t(&format!("{scope}:{owner}:call:e:k")),
            ];
            let got = matches(&trie, &topics);
            assert_eq!(got, [(i as u64, 0)], "{scope}:{owner}");
        }
    }
}

#[test]
fn owners_leave_the_root_when_emptied_and_come_back() {
    let c = OWNERS[0];
    let trie = Trie::new();
    let pattern = p(&format!("customer_id:{c}:call:*"));
    assert!(trie.insert(&pattern, 7));
    assert_eq!(trie.owners(), 1);
    assert!(trie.remove(&pattern, &7));
    assert_eq!(trie.owners(), 0);
    assert!(!trie.remove(&pattern, &7));
    assert!(trie.insert(&pattern, 7));
    assert_eq!(
        matches(&trie, &[t(&format!("customer_id:{c}:call:k"))]),
        [(7, 0)]
    );
}

#[test]
fn many_hits_and_many_topics_take_the_general_path() {
    let c = OWNERS[0];
    let trie = Trie::new();
    // 40 distinct pattern nodes all matching one topic: more than the inline hit list.
    let mut expected = Vec::new();
    for i in 0..40u64 {
        let pattern = match i % 4 {
            0 => format!("customer_id:{c}"),
            1 => format!("customer_id:{c}:a"),
            2 => format!("customer_id:{c}:*:b"),
            _ => format!("customer_id:{c}:a:*:c"),
        };
        trie.insert(&p(&pattern), i);
        trie.insert(&p(&format!("customer_id:{c}:a:b:c:x{i}")), 1000 + i);
        expected.push((i, 0));
    }
    let topics = [t(&format!("customer_id:{c}:a:b:c"))];
    assert_eq!(matches(&trie, &topics), expected);
    // Nine topics: more than the inline snapshot list.
    let many: Vec<Topic> = (0..9)
        .map(|i| t(&format!("customer_id:{c}:a:b:c:x{i}")))
        .collect();
    let got = matches(&trie, &many);
    assert_eq!(got.len(), 40 + 9);
    assert!(got.contains(&(1000, 0)) && got.contains(&(1008, 8)));
}

#[test]
fn concurrent_writers_and_readers_agree_at_the_end() {
    let c = OWNERS[0];
    let trie = Arc::new(Trie::new());
    let topic = t(&format!("customer_id:{c}:call:k"));
    std::thread::scope(|scope| {
        for w in 0..4u64 {
            let trie = trie.clone();
            scope.spawn(move || {
                for i in 0..500u64 {
                    let s = w * 1000 + i;
                    let pattern = p(&format!("customer_id:{c}:call:*"));
                    assert!(trie.insert(&pattern, s));
                    if i % 2 == 0 {
                        assert!(trie.remove(&pattern, &s));
                    }
                }
            });
        }
        let trie = trie.clone();
        let topic = topic.clone();
        scope.spawn(move || {
            for _ in 0..2000 {
                let mut seen = std::collections::HashSet::new();
                trie.match_topics(std::slice::from_ref(&topic), |v, _| {
                    assert!(seen.insert(*v))
                });
            }
        });
    });
    assert_eq!(matches(&trie, &[topic]).len(), 1000);
    assert_eq!(trie.len(), 1000);
}
