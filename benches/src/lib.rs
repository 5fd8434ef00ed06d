//! Benchmarks: not built yet (issue 4).
