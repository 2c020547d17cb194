//! Test support shared by the integration tests of every workspace crate,
//! used only as a dev-dependency. It depends on std and libc alone, so any
//! crate's tests can use it without a dependency cycle.
//!
//! - [`TempDir`]: a fresh directory, removed on drop.
//! - [`CountingAllocator`] and [`count_allocations`]: "allocates nothing"
//!   checks. The allocator must be declared in each test binary that uses
//!   it (`#[global_allocator] static A: CountingAllocator = CountingAllocator;`).
//! - [`turbo_dex`] and [`ready_addr`]: start the server binary the way the
//!   tests do and wait for its ready line.
//! - [`skip!`] and [`missing`]: a test that cannot run here says so loudly
//!   instead of passing quietly.
//! - [`output_text`], [`bin_dir`]: small things every process test needs.

mod alloc;
mod host;
mod launch;
mod temp;

pub use alloc::{CountingAllocator, count_allocations};
pub use host::{RealHostLock, SKIP_LOG_ENV, have, is_root, missing, real_host_lock, skipped};
pub use launch::{assert_success, bin_dir, cargo_built, output_text, ready_addr, turbo_dex};
pub use temp::TempDir;
