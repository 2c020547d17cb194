//! RLIMIT_MEMLOCK: how much memory this process may lock. io_uring rings
//! and registered buffers are charged to it on kernels before 5.12, and
//! `mlockall` (keeping the book out of swap) needs it on all of them.

use std::fmt;
use std::io;

/// The value that means "no limit" (`RLIM_INFINITY`, `ulimit -l unlimited`).
pub const MEMLOCK_UNLIMITED: u64 = libc::RLIM_INFINITY;

/// The soft and hard RLIMIT_MEMLOCK of this process, in bytes
/// ([`MEMLOCK_UNLIMITED`] for none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemlockLimit {
    /// The limit in force; a process may raise it up to `hard_bytes`.
    pub soft_bytes: u64,
    /// The ceiling; only a privileged (CAP_SYS_RESOURCE) process raises it.
    pub hard_bytes: u64,
}

/// Formats a limit the way `ulimit -l` users read it: `64 MiB`, `unlimited`.
pub fn format_limit_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    if bytes == MEMLOCK_UNLIMITED {
        "unlimited".to_string()
    } else if bytes >= KIB * KIB && bytes.is_multiple_of(KIB * KIB) {
        format!("{} MiB", bytes / (KIB * KIB))
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

impl fmt::Display for MemlockLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "soft {}, hard {}",
            format_limit_bytes(self.soft_bytes),
            format_limit_bytes(self.hard_bytes)
        )
    }
}

/// This process's RLIMIT_MEMLOCK.
pub fn memlock_limit() -> io::Result<MemlockLimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is a writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(MemlockLimit {
        soft_bytes: limit.rlim_cur,
        hard_bytes: limit.rlim_max,
    })
}

fn set_memlock(limit: MemlockLimit) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: limit.soft_bytes,
        rlim_max: limit.hard_bytes,
    };
    // SAFETY: limit is a valid rlimit that lives across the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The result of [`raise_memlock`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemlockRaise {
    /// The limit before.
    pub before: MemlockLimit,
    /// The limit after (equal to `before` when nothing changed).
    pub after: MemlockLimit,
    /// The soft limit that was wanted.
    pub wanted_bytes: u64,
}

impl MemlockRaise {
    /// Whether the soft limit now reaches what was wanted.
    pub fn is_enough(&self) -> bool {
        self.after.soft_bytes >= self.wanted_bytes
    }

    /// When not [`MemlockRaise::is_enough`]: what the user can do, naming
    /// the places the limit usually comes from.
    pub fn explanation(&self) -> Option<String> {
        (!self.is_enough()).then(|| memlock_advice(self.after, self.wanted_bytes))
    }
}

/// Why a memlock limit is short and how to raise it.
pub fn memlock_advice(current: MemlockLimit, wanted_bytes: u64) -> String {
    format!(
        "the locked-memory limit (RLIMIT_MEMLOCK) is {current} but {} is wanted, and only root \
         (CAP_SYS_RESOURCE) may raise a hard limit. Raise it where the process starts: in a \
         shell `ulimit -l unlimited` (as root, or after a `* - memlock unlimited` line in \
         /etc/security/limits.d/ and a new login); for a systemd service `LimitMEMLOCK=infinity`; \
         in docker `--ulimit memlock=-1`. scripts/tune-host.sh writes the limits.d entry",
        format_limit_bytes(wanted_bytes)
    )
}

/// Raises the soft RLIMIT_MEMLOCK to `wanted_bytes` ([`MEMLOCK_UNLIMITED`]
/// for no limit). Above the hard limit it first tries to raise the hard
/// limit too (works with CAP_SYS_RESOURCE, as root usually); when that is
/// refused it raises the soft limit as far as the hard limit, and the
/// result's [`MemlockRaise::explanation`] says what to do. Never lowers a
/// limit. Errors only when the limit cannot be read.
pub fn raise_memlock(wanted_bytes: u64) -> io::Result<MemlockRaise> {
    let before = memlock_limit()?;
    let result = |after| MemlockRaise {
        before,
        after,
        wanted_bytes,
    };
    if before.soft_bytes >= wanted_bytes {
        return Ok(result(before));
    }
    if before.hard_bytes < wanted_bytes {
        let both = MemlockLimit {
            soft_bytes: wanted_bytes,
            hard_bytes: wanted_bytes,
        };
        if set_memlock(both).is_ok() {
            return Ok(result(memlock_limit()?));
        }
    }
    let soft = MemlockLimit {
        soft_bytes: wanted_bytes.min(before.hard_bytes),
        hard_bytes: before.hard_bytes,
    };
    // A refusal leaves the limit as it was, and `after` shows that.
    let _ = set_memlock(soft);
    Ok(result(memlock_limit()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_limits() {
        assert_eq!(format_limit_bytes(MEMLOCK_UNLIMITED), "unlimited");
        assert_eq!(format_limit_bytes(8 << 20), "8 MiB");
        assert_eq!(format_limit_bytes(64 << 10), "64 KiB");
        assert_eq!(format_limit_bytes(1000), "1000 bytes");
        let l = MemlockLimit {
            soft_bytes: 8 << 20,
            hard_bytes: MEMLOCK_UNLIMITED,
        };
        assert_eq!(l.to_string(), "soft 8 MiB, hard unlimited");
    }

    #[test]
    fn advice_names_every_place_the_limit_comes_from() {
        let limit = MemlockLimit {
            soft_bytes: 64 << 10,
            hard_bytes: 64 << 10,
        };
        let raise = MemlockRaise {
            before: limit,
            after: limit,
            wanted_bytes: 64 << 20,
        };
        assert!(!raise.is_enough());
        let text = raise.explanation().unwrap();
        for needle in [
            "soft 64 KiB",
            "64 MiB is wanted",
            "ulimit -l",
            "limits.d",
            "LimitMEMLOCK",
            "--ulimit memlock=-1",
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        let enough = MemlockRaise {
            wanted_bytes: 1,
            ..raise
        };
        assert!(enough.is_enough());
        assert_eq!(enough.explanation(), None);
    }

    /// Changing the limit affects the whole process, so this runs in a
    /// child: the test binary re-runs itself with only this test selected.
    #[test]
    fn raise_memlock_in_a_child_process() {
        if std::env::var_os("TUNING_MEMLOCK_CHILD").is_some() {
            memlock_child();
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let output = std::process::Command::new(exe)
            .args([
                "--exact",
                "rlimit::tests::raise_memlock_in_a_child_process",
                "--nocapture",
            ])
            .env("TUNING_MEMLOCK_CHILD", "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn memlock_child() {
        let start = memlock_limit().unwrap();
        // Asking for less than we have changes nothing.
        let r = raise_memlock(0).unwrap();
        assert_eq!(r.after, start);
        assert!(r.is_enough());

        // Lowering limits is always permitted: lower the hard limit to at
        // most 1 MiB and the soft one below it to have something to raise.
        let cap = start.hard_bytes.min(1 << 20);
        let low = cap / 16;
        set_memlock(MemlockLimit {
            soft_bytes: low,
            hard_bytes: cap,
        })
        .unwrap();

        // Within the hard limit: raised exactly.
        let r = raise_memlock(cap / 2).unwrap();
        assert_eq!(r.before.soft_bytes, low);
        assert_eq!(r.after.soft_bytes, cap / 2);
        assert_eq!(r.after.hard_bytes, cap);
        assert!(r.is_enough());

        // Beyond it: the hard limit goes up with the capability; without
        // it the soft limit stops at the hard one and advice comes back.
        let r = raise_memlock(cap * 4).unwrap();
        if crate::testdir::has_capability(crate::testdir::CAP_SYS_RESOURCE) {
            assert_eq!(r.after.soft_bytes, cap * 4);
            assert_eq!(r.after.hard_bytes, cap * 4);
            assert!(r.is_enough());
        } else {
            assert_eq!(r.after.soft_bytes, cap);
            assert_eq!(r.after.hard_bytes, cap);
            assert!(r.explanation().unwrap().contains("ulimit -l"));
        }
    }
}
