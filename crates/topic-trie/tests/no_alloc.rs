//! The match path allocates nothing: counted with an instrumented global allocator. This
//! binary holds one test so no other test's allocations are counted.

use fanout_protocol::{Pattern, Topic};
use fanout_topic_trie::Trie;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const C: &str = "12345678-1234-1234-1234-123456789012";
const A: &str = "98765432-4321-4321-4321-210987654321";

#[test]
fn matching_does_not_allocate() {
    let trie = Trie::new();
    let patterns = [
        format!("customer_id:{C}"),
        format!("customer_id:{C}:call:*"),
        format!("customer_id:{C}:call:call_hangup"),
        format!("customer_id:{C}:*:k1"),
        format!("agent_id:{A}:call"),
    ];
    for s in 0..200u64 {
        let pattern = Pattern::parse(&patterns[(s % 5) as usize]).expect("valid");
        trie.insert(&pattern, s);
    }
    let topics: Vec<Topic> = [
        format!("customer_id:{C}:call:k1"),
        format!("customer_id:{C}:call:call_hangup:k1"),
        format!("agent_id:{A}:call:k1"),
        format!("agent_id:{A}:call:call_hangup:k1"),
    ]
    .iter()
    .map(|t| Topic::parse(t).expect("valid"))
    .collect();
    let single = [Topic::parse(&format!("customer_id:{C}:queue:q")).expect("valid")];
    // Warm the thread's scratch set up.
    let mut total = 0;
    trie.match_topics(&topics, |_, _| total += 1);
    assert_eq!(total, 200);

    let region = Region::new(GLOBAL);
    let mut delivered = 0u64;
    for _ in 0..1000 {
        trie.match_topics(&topics, |s, i| delivered += s + i as u64);
        trie.match_topics(&single, |s, _| delivered += s);
    }
    let change = region.change();
    assert!(delivered > 0);
    assert_eq!(change.allocations, 0, "{change:?}");
    assert_eq!(change.reallocations, 0, "{change:?}");
}
