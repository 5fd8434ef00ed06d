//! `fanout-loadtest`: not built yet (issue 5).

fn main() {}
