//! Benchmarks for turbo-dex live in `benches/` beside this file (criterion,
//! `harness = false`); run them with `cargo bench -p benches`.
