//! `fanout-gateway`: not built yet (issue 3).

fn main() {}
