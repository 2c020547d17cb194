//! Benchmarks for turbo-dex live in `benches/` beside this file (criterion,
//! `harness = false`); run them with `cargo bench -p benches`.
//!
//! The library holds what the benches, the `book-ops` driver and their
//! tests share: the book's measured cases ([`flows`]) and the naive
//! reference book they are compared with ([`naive`]).

pub mod flows;
pub mod naive;
