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
//! - [`NatsServer`], [`need_nats_server!`], [`free_port`]: a real
//!   nats-server for the tests that need one.

mod alloc;
mod host;
mod launch;
mod nats;
mod temp;

pub use alloc::{CountingAllocator, count_allocations};
pub use host::{RealHostLock, SKIP_LOG_ENV, have, is_root, missing, real_host_lock, skipped};
pub use launch::{assert_success, bin_dir, cargo_built, output_text, ready_addr, turbo_dex};
pub use nats::{Host, NO_NATS_SERVER, NatsCluster, NatsServer, free_port, nats_server_binary};
pub use temp::TempDir;
