//! io_uring setup with clear diagnostics, and the provided-buffer ring that
//! multishot recv reads into.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// How a core's ring was set up (reported once at start-up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMode {
    /// SINGLE_ISSUER + DEFER_TASKRUN (kernel >= 6.1): completions are only
    /// processed when the owning thread asks, no inter-processor interrupts.
    DeferTaskrun,
    /// COOP_TASKRUN (kernel >= 5.19).
    CoopTaskrun,
    /// No optional flags (older kernels).
    Plain,
}

impl RingMode {
    /// A short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RingMode::DeferTaskrun => "single-issuer+defer-taskrun",
            RingMode::CoopTaskrun => "coop-taskrun",
            RingMode::Plain => "plain",
        }
    }
}

/// Creates a ring with the best flags this kernel supports. Must be called
/// on the thread that will use it (SINGLE_ISSUER).
pub fn new_ring(entries: u32, cq_entries: u32) -> io::Result<(IoUring, RingMode)> {
    let first = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(cq_entries)
        .build(entries);
    match first {
        Ok(ring) => return Ok((ring, RingMode::DeferTaskrun)),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(explain_setup_error(e)),
        Err(_) => {}
    }
    match IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .setup_cqsize(cq_entries)
        .build(entries)
    {
        Ok(ring) => return Ok((ring, RingMode::CoopTaskrun)),
        Err(e) if e.raw_os_error() != Some(libc::EINVAL) => return Err(explain_setup_error(e)),
        Err(_) => {}
    }
    IoUring::builder()
        .setup_cqsize(cq_entries)
        .build(entries)
        .map(|ring| (ring, RingMode::Plain))
        .map_err(explain_setup_error)
}

/// Reads `kernel.io_uring_disabled` (absent on kernels before 6.6).
fn io_uring_disabled_sysctl() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Turns an io_uring_setup failure into a message that says which of the
/// usual causes it is and how to fix it.
pub fn explain_setup_error(e: io::Error) -> io::Error {
    let disabled = io_uring_disabled_sysctl();
    let why = match (e.raw_os_error(), disabled) {
        (Some(libc::EPERM), Some(2)) => {
            "io_uring is disabled on this host (sysctl kernel.io_uring_disabled=2); \
             enable it with `sysctl -w kernel.io_uring_disabled=0`"
                .to_string()
        }
        (Some(libc::EPERM), Some(1)) => {
            "io_uring is restricted to the group in kernel.io_uring_group \
             (sysctl kernel.io_uring_disabled=1); run as root, add this user to that group, \
             or `sysctl -w kernel.io_uring_disabled=0`"
                .to_string()
        }
        (Some(libc::EPERM) | Some(libc::ENOSYS), _) => {
            "io_uring_setup was refused: a seccomp profile \
             (Docker's default blocks io_uring) or an old kernel; run the container with \
             `--security-opt seccomp=unconfined` (or a profile that allows io_uring_setup, \
             io_uring_enter and io_uring_register), or use Linux >= 6.1"
                .to_string()
        }
        (Some(libc::ENOMEM), _) => format!(
            "io_uring could not lock memory for its rings (RLIMIT_MEMLOCK is {}); raise it with \
             `ulimit -l unlimited`, LimitMEMLOCK=infinity in a systemd unit, or `--ulimit memlock=-1` for docker",
            memlock_text()
        ),
        _ => format!("io_uring setup failed: {e}"),
    };
    io::Error::new(e.kind(), why)
}

fn memlock_text() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    }
}

/// A ring of provided buffers (IORING_REGISTER_PBUF_RING): the kernel picks
/// a free buffer for each multishot recv completion and names it in the
/// CQE; we hand it back with [`BufRing::recycle`] once its bytes are consumed.
///
/// Memory: `entries * buf_bytes` for the buffers plus one page-aligned
/// array of 16-byte ring entries; nothing is allocated after construction.
pub struct BufRing {
    entries: NonNull<BufRingEntry>,
    ring_bytes: usize,
    count: u16,
    tail: u16,
    /// The buffers: memory the kernel writes into, so it is a raw mapping,
    /// never a Rust-owned slice the compiler could assume unchanged.
    bufs: NonNull<u8>,
    bufs_bytes: usize,
    buf_bytes: usize,
    bgid: u16,
}

/// An anonymous private read-write mapping of `bytes`.
fn map_anonymous(bytes: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

impl BufRing {
    /// Maps and registers a buffer ring of `count` buffers (a power of two,
    /// at most 32768) of `buf_bytes` each, as buffer group `bgid`.
    pub fn new(ring: &IoUring, count: u16, buf_bytes: usize, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the buffer ring size must be a power of two up to 32768",
            ));
        }
        let ring_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let bufs_bytes = usize::from(count) * buf_bytes;
        let entries = map_anonymous(ring_bytes)?.cast::<BufRingEntry>();
        let bufs = match map_anonymous(bufs_bytes) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: mapped just above with this length.
                unsafe { libc::munmap(entries.as_ptr().cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut me = BufRing {
            entries,
            ring_bytes,
            count,
            tail: 0,
            bufs,
            bufs_bytes,
            buf_bytes,
            bgid,
        };
        // SAFETY: the mapping lives until `Drop`, which runs after the ring
        // that uses it is unregistered or closed (see `Drop`).
        let reg = unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries.as_ptr() as u64, count, bgid, 0)
        };
        if let Err(e) = reg {
            let why = match e.raw_os_error() {
                Some(libc::EINVAL) => io::Error::new(
                    e.kind(),
                    "this kernel has no provided-buffer rings (IORING_REGISTER_PBUF_RING needs Linux >= 5.19)",
                ),
                Some(libc::ENOMEM) => explain_setup_error(e),
                _ => e,
            };
            return Err(why);
        }
        for bid in 0..count {
            me.push(bid);
        }
        me.publish();
        Ok(me)
    }

    /// The buffer group id to name in recv SQEs.
    pub fn group(&self) -> u16 {
        self.bgid
    }

    /// The size of each buffer.
    pub fn buf_bytes(&self) -> usize {
        self.buf_bytes
    }

    /// The first `len` bytes of buffer `bid`, as filled by the kernel.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        if bid >= self.count {
            return &[];
        }
        let start = usize::from(bid) * self.buf_bytes;
        let len = len.min(self.buf_bytes);
        // SAFETY: bid < count keeps start + len inside the mapping; the kernel
        // handed this buffer to us in a completion and writes it again only
        // after `recycle`, which needs `&mut self` and so ends this borrow.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(start), len) }
    }

    fn push(&mut self, bid: u16) {
        let mask = self.count - 1;
        let idx = usize::from(self.tail & mask);
        let addr = self.bufs.as_ptr() as u64 + (usize::from(bid) * self.buf_bytes) as u64;
        debug_assert!(usize::from(bid) * self.buf_bytes < self.bufs_bytes);
        // SAFETY: idx < count, so the entry lies inside the mapping, and the
        // kernel only reads entries between its head and our published tail,
        // which excludes this one until `publish`.
        let entry = unsafe { &mut *self.entries.as_ptr().add(idx) };
        entry.set_addr(addr);
        entry.set_len(self.buf_bytes as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field overlays the first entry's reserved field,
        // inside the mapping; the kernel reads it concurrently, hence atomic.
        let tail = unsafe { &*BufRingEntry::tail(self.entries.as_ptr()).cast::<AtomicU16>() };
        tail.store(self.tail, Ordering::Release);
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        if bid < self.count {
            self.push(bid);
            self.publish();
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The kernel pins the ring pages while registered; the owning core
        // drops its IoUring (closing the registration) before this.
        // SAFETY: both mappings were created in `new` with these lengths.
        unsafe {
            libc::munmap(self.entries.as_ptr().cast(), self.ring_bytes);
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_bytes);
        }
    }
}

/// An eventfd that wakes a sleeping core: the core keeps a read of it in
/// its ring, and any thread writes to it.
#[derive(Debug)]
pub struct WakeFd(std::os::fd::OwnedFd);

impl WakeFd {
    /// A new non-blocking, close-on-exec eventfd.
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new
        // descriptor nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        Ok(WakeFd(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    /// The descriptor, for the core's read.
    pub fn raw(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    /// Adds one to the counter, waking a reader. A full counter (EAGAIN)
    /// already wakes it, so the result is not needed.
    pub fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write from a valid u64 to an eventfd we own.
        unsafe { libc::write(self.raw(), (&raw const one).cast(), 8) };
    }
}

/// Probes io_uring on the calling thread with the same setup the cores use,
/// so that a blocked io_uring is reported once, clearly, before any thread starts.
pub fn probe() -> io::Result<RingMode> {
    let (ring, mode) = new_ring(8, 16)?;
    let buf = BufRing::new(&ring, 2, 64, 0)?;
    drop(ring);
    drop(buf);
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_works_on_this_host() {
        // The test machines have io_uring; if this fails, every server test would.
        let mode = probe().expect("io_uring must be available to run the server tests");
        // SINGLE_ISSUER and DEFER_TASKRUN came in Linux 6.1: on a newer
        // kernel anything less means the probe's flags are wrong.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release
            .trim()
            .split(['.', '-'])
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if (major, minor) >= (6, 1) {
            assert_eq!(mode, RingMode::DeferTaskrun, "kernel {}", release.trim());
        } else {
            assert_ne!(mode, RingMode::DeferTaskrun, "kernel {}", release.trim());
        }
    }

    #[test]
    fn a_kick_wakes_a_read_of_the_eventfd() {
        let wake = WakeFd::new().unwrap();
        let mut buf = [0u8; 8];
        let mut file = std::fs::File::from(wake.0.try_clone().unwrap());
        use std::io::Read;
        assert!(
            file.read(&mut buf).is_err(),
            "nothing to read before a kick"
        );
        wake.kick();
        wake.kick();
        assert_eq!(file.read(&mut buf).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(buf), 2);
    }

    #[test]
    fn buffer_ring_size_must_be_a_power_of_two() {
        let (ring, _) = new_ring(8, 16).unwrap();
        assert!(BufRing::new(&ring, 3, 64, 0).is_err());
    }

    #[test]
    fn setup_errors_name_the_cause() {
        let e = explain_setup_error(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(e.to_string().contains("ulimit -l"), "{e}");
        let e = explain_setup_error(io::Error::from_raw_os_error(libc::ENOSYS));
        assert!(e.to_string().contains("seccomp"), "{e}");
    }
}
