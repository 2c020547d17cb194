//! Host tuning shared by turbo-dex and dex-trader: CPU lists, pinning,
//! rlimits, socket options, MTU/MSS and host checks.
//!
//! Everything that reads `/sys` or `/proc` takes the root of that tree as an
//! argument ([`SYS_ROOT`] and [`PROC_ROOT`] on a real machine), so tests run
//! the same code against fake trees. Nothing here changes the host except
//! what a function's name says (pinning the calling thread, raising this
//! process's memlock limit, setting options on a socket);
//! `scripts/tune-host.sh` changes the host.

pub mod cpu;
pub mod host;
pub mod mtu;
pub mod rlimit;
pub mod sock;

pub use cpu::{
    CPU_ID_LIMIT, CpuList, CpuUnavailableError, ParseCpuListError, ParseErrorKind, PinError,
    SmtSiblings, allowed_cpus, current_thread_affinity, one_cpu_per_physical_core, online_cpus,
    pin_current_thread, set_current_thread_affinity, smt_sibling_pairs, thread_siblings,
};
pub use host::{
    CheckItem, HostCheckConfig, HostReport, Status, check_host, print_startup_warnings,
};
pub use mtu::{
    MtuWarning, SegmentFit, batch_filling_segments, interface_for_local_addr, interface_mtu,
    mss_for_mtu, mtu_warning, orders_filling_segments, segment_payload_bytes, send_coalesce_bytes,
};
pub use rlimit::{MEMLOCK_UNLIMITED, MemlockLimit, MemlockRaise, memlock_limit, raise_memlock};
pub use sock::{
    ListenError, SocketOptionError, StreamOptions, listen_reuseport, set_busy_poll,
    set_recv_buffer, set_reuseport, set_send_buffer, set_tcp_nodelay, tcp_max_segment,
};

/// Where sysfs is mounted on a real machine.
pub const SYS_ROOT: &str = "/sys";
/// Where procfs is mounted on a real machine.
pub const PROC_ROOT: &str = "/proc";

#[cfg(test)]
mod testdir;
