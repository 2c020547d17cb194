//! Host tuning shared by turbo-dex and dex-trader: CPU lists, pinning,
//! rlimits, socket options, MTU/MSS and host checks.
//!
//! Everything that reads `/sys` or `/proc` takes the root of that tree as an
//! argument ([`SYS_ROOT`] and [`PROC_ROOT`] on a real machine), so tests run
//! the same code against fake trees. Nothing here changes the host except
//! what a function's name says (pinning the calling thread, raising this
//! process's memlock limit, setting options on a socket);
//! `scripts/tune-host.sh` changes the host.
//!
//! A binary's start-up, in the order the calls belong:
//!
//! ```no_run
//! use std::os::fd::AsRawFd;
//! use tuning::{CpuList, HostCheckConfig, StreamOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // --cores: parse (errors name the bad item), then check it against the
//! // machine (errors name missing or disallowed cores and list usable ones).
//! let cores: CpuList = "0-3".parse()?;
//! cores.check_on_this_host()?;
//!
//! // Warnings (governor, irqbalance, THP, NIC IRQs, memlock, MTU, sysctls)
//! // go to stderr; nothing is fatal.
//! let config = HostCheckConfig::new(cores.clone()).with_iface("eth0").with_mtu(9000);
//! tuning::print_startup_warnings("turbo-dex", &config);
//!
//! let memlock = tuning::raise_memlock(tuning::MEMLOCK_UNLIMITED)?;
//! if let Some(why) = memlock.explanation() {
//!     eprintln!("turbo-dex: warning: {why}");
//! }
//!
//! // One listener per core on the same port; the first picks the port.
//! let listener = tuning::listen_reuseport("0.0.0.0:9000".parse()?, tuning::sock::DEFAULT_LISTEN_BACKLOG)?;
//! let coalesce_bytes = tuning::send_coalesce_bytes(9000, false); // 8948
//! for cpu in cores.iter() {
//!     std::thread::spawn(move || {
//!         tuning::pin_current_thread(cpu).expect("checked above");
//!         // ... this core's loop; on each accepted socket:
//!         // StreamOptions::default().apply(stream.as_raw_fd())?;
//!     });
//! }
//! # let _ = (listener, coalesce_bytes, StreamOptions::default(), std::io::stdin().as_raw_fd());
//! # Ok(())
//! # }
//! ```

pub mod admin;
pub mod cpu;
pub mod host;
pub mod mtu;
pub mod rlimit;
pub mod sock;
pub mod units;

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
    local_interface_mtu, mss_for_mtu, mtu_warning, orders_filling_segments, segment_payload_bytes,
    send_coalesce_bytes,
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
