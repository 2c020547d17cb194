//! Host tuning shared by turbo-dex and dex-trader: CPU lists, pinning,
//! rlimits, socket options, MTU/MSS and host checks.
//!
//! Everything that reads `/sys` or `/proc` takes the root of that tree as an
//! argument ([`SYS_ROOT`] and [`PROC_ROOT`] on a real machine), so tests run
//! the same code against fake trees.

pub mod cpu;

pub use cpu::{
    CPU_ID_LIMIT, CpuList, CpuUnavailableError, ParseCpuListError, ParseErrorKind, PinError,
    SmtSiblings, allowed_cpus, current_thread_affinity, one_cpu_per_physical_core, online_cpus,
    pin_current_thread, set_current_thread_affinity, smt_sibling_pairs, thread_siblings,
};

/// Where sysfs is mounted on a real machine.
pub const SYS_ROOT: &str = "/sys";
/// Where procfs is mounted on a real machine.
pub const PROC_ROOT: &str = "/proc";

#[cfg(test)]
mod testdir;
