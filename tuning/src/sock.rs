//! Socket options in one place, on raw file descriptors so the io_uring
//! server and the load generator use the same code (`stream.as_raw_fd()`
//! or an fd an io_uring accept returned).
//!
//! Every function only calls `setsockopt`/`getsockopt` on the fd given; a
//! wrong fd gives `EBADF` or `ENOTSOCK`, never undefined behaviour.

use std::fmt;
use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: value lives across the call and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    let mut value: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: value and len are writable and len holds value's size, so the
    // kernel writes at most that many bytes.
    let rc =
        unsafe { libc::getsockopt(fd, level, name, (&mut value as *mut i32).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn clamp_to_int(bytes: usize) -> i32 {
    i32::try_from(bytes).unwrap_or(i32::MAX)
}

/// Turns Nagle's algorithm off (`on = true`) so a small send leaves at
/// once instead of waiting for the previous segment's ACK. We coalesce in
/// user space (one send per loop iteration), so Nagle would only add delay.
pub fn set_tcp_nodelay(fd: RawFd, on: bool) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, i32::from(on))
}

/// Whether `TCP_NODELAY` is on.
pub fn tcp_nodelay(fd: RawFd) -> io::Result<bool> {
    Ok(get_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY)? != 0)
}

/// Lets several sockets bind the same address and port (`SO_REUSEPORT`);
/// the kernel spreads incoming connections over them, which is how each
/// engine core gets its own listener. Set it before `bind`.
pub fn set_reuseport(fd: RawFd, on: bool) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, i32::from(on))
}

/// Sets the receive buffer (`SO_RCVBUF`) and returns what the kernel
/// reports afterwards. The kernel doubles the value asked for (half is
/// bookkeeping overhead) and first caps the request at
/// `net.core.rmem_max`, so the result is usually `2 * min(bytes, rmem_max)`.
/// Setting it turns off receive-buffer autotuning for this socket.
pub fn set_recv_buffer(fd: RawFd, bytes: usize) -> io::Result<usize> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, clamp_to_int(bytes))?;
    recv_buffer(fd)
}

/// The receive buffer size the kernel reports (`SO_RCVBUF`), in bytes.
pub fn recv_buffer(fd: RawFd) -> io::Result<usize> {
    Ok(get_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?.max(0) as usize)
}

/// Sets the send buffer (`SO_SNDBUF`) and returns what the kernel reports
/// afterwards: like [`set_recv_buffer`], doubled and capped at
/// `net.core.wmem_max` first. Setting it turns off send-buffer autotuning.
pub fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<usize> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, clamp_to_int(bytes))?;
    send_buffer(fd)
}

/// The send buffer size the kernel reports (`SO_SNDBUF`), in bytes.
pub fn send_buffer(fd: RawFd) -> io::Result<usize> {
    Ok(get_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?.max(0) as usize)
}

/// Sets `SO_BUSY_POLL`: a blocking receive on this socket spins on the
/// device queue for up to `usecs` microseconds before sleeping. Raising it
/// above `net.core.busy_read` needs CAP_NET_ADMIN (`EPERM` otherwise).
/// Returns the value the kernel reports afterwards.
pub fn set_busy_poll(fd: RawFd, usecs: u32) -> io::Result<u32> {
    let usecs = i32::try_from(usecs).unwrap_or(i32::MAX);
    set_int(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL, usecs)?;
    busy_poll(fd)
}

/// The socket's `SO_BUSY_POLL`, in microseconds.
pub fn busy_poll(fd: RawFd) -> io::Result<u32> {
    Ok(get_int(fd, libc::SOL_SOCKET, libc::SO_BUSY_POLL)?.max(0) as u32)
}

/// The maximum segment size of a connected TCP socket (`TCP_MAXSEG`): the
/// payload one segment carries on this connection, with the TCP options in
/// use (timestamps) already taken off. 1448 on Ethernet with timestamps.
/// Before the connection is established it reports the default (536); on
/// loopback it is often below what the MTU allows, as Linux bounds it to
/// half the largest window the peer has offered.
pub fn tcp_max_segment(fd: RawFd) -> io::Result<usize> {
    Ok(get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)?.max(0) as usize)
}

/// The path MTU of a connected socket (`IP_MTU`, or `IPV6_MTU` for an IPv6
/// socket): the MTU of the route its packets take, at most 65535 for IPv4
/// (the largest IPv4 packet, so loopback's 65536 reads as 65535).
/// `ENOTCONN` when it is not connected.
pub fn ip_mtu(fd: RawFd) -> io::Result<usize> {
    let mtu = match socket_family(fd)? {
        libc::AF_INET6 => get_int(fd, libc::IPPROTO_IPV6, libc::IPV6_MTU)?,
        _ => get_int(fd, libc::IPPROTO_IP, libc::IP_MTU)?,
    };
    Ok(mtu.max(0) as usize)
}

fn socket_family(fd: RawFd) -> io::Result<i32> {
    get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
}

/// The options a connection's owner wants on every accepted or connected
/// socket, applied with one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// `TCP_NODELAY`; on by default, see [`set_tcp_nodelay`].
    pub nodelay: bool,
    /// `SO_RCVBUF` request in bytes; `None` keeps autotuning.
    pub recv_buffer_bytes: Option<usize>,
    /// `SO_SNDBUF` request in bytes; `None` keeps autotuning.
    pub send_buffer_bytes: Option<usize>,
    /// `SO_BUSY_POLL` in microseconds; `None` leaves it at the sysctl default.
    pub busy_poll_us: Option<u32>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            nodelay: true,
            recv_buffer_bytes: None,
            send_buffer_bytes: None,
            busy_poll_us: None,
        }
    }
}

/// What the kernel reports after [`StreamOptions::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedStreamOptions {
    /// `TCP_NODELAY` as read back.
    pub nodelay: bool,
    /// `SO_RCVBUF` as read back (doubled by the kernel, see [`set_recv_buffer`]).
    pub recv_buffer_bytes: usize,
    /// `SO_SNDBUF` as read back.
    pub send_buffer_bytes: usize,
    /// `SO_BUSY_POLL` as read back.
    pub busy_poll_us: u32,
}

/// Which option failed in [`StreamOptions::apply`].
#[derive(Debug)]
pub struct SocketOptionError {
    /// The option's name, as in `man 7 socket`/`man 7 tcp`.
    pub option: &'static str,
    /// What the kernel said.
    pub source: io::Error,
}

impl fmt::Display for SocketOptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot set {}: {}", self.option, self.source)?;
        if self.option == "SO_BUSY_POLL" && self.source.raw_os_error() == Some(libc::EPERM) {
            f.write_str(
                "; a value above net.core.busy_read needs CAP_NET_ADMIN: raise the sysctl \
                 (scripts/tune-host.sh does) or run as root",
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for SocketOptionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl StreamOptions {
    /// Sets every option on `fd`, then reads them back.
    pub fn apply(&self, fd: RawFd) -> Result<AppliedStreamOptions, SocketOptionError> {
        let named = |option| move |source| SocketOptionError { option, source };
        set_tcp_nodelay(fd, self.nodelay).map_err(named("TCP_NODELAY"))?;
        if let Some(bytes) = self.recv_buffer_bytes {
            set_recv_buffer(fd, bytes).map_err(named("SO_RCVBUF"))?;
        }
        if let Some(bytes) = self.send_buffer_bytes {
            set_send_buffer(fd, bytes).map_err(named("SO_SNDBUF"))?;
        }
        if let Some(usecs) = self.busy_poll_us {
            set_busy_poll(fd, usecs).map_err(named("SO_BUSY_POLL"))?;
        }
        Ok(AppliedStreamOptions {
            nodelay: tcp_nodelay(fd).map_err(named("TCP_NODELAY"))?,
            recv_buffer_bytes: recv_buffer(fd).map_err(named("SO_RCVBUF"))?,
            send_buffer_bytes: send_buffer(fd).map_err(named("SO_SNDBUF"))?,
            busy_poll_us: busy_poll(fd).map_err(named("SO_BUSY_POLL"))?,
        })
    }
}

/// The listen backlog used when the caller has no reason to pick another:
/// Linux 5.4+'s default `net.core.somaxconn`, which also caps whatever is asked.
pub const DEFAULT_LISTEN_BACKLOG: u32 = 4096;

/// Why [`listen_reuseport`] failed.
#[derive(Debug)]
pub struct ListenError {
    /// The address it tried.
    pub addr: SocketAddr,
    /// The step that failed: `socket`, `setsockopt(SO_REUSEPORT)`, `bind`, `listen`.
    pub step: &'static str,
    /// What the kernel said.
    pub source: io::Error,
}

impl ListenError {
    /// The port is taken by a socket without `SO_REUSEPORT` (another
    /// program, or a turbo-dex of another user): print "port in use".
    pub fn is_addr_in_use(&self) -> bool {
        self.source.kind() == io::ErrorKind::AddrInUse
    }

    /// The address is not one of this machine's (`EADDRNOTAVAIL`).
    pub fn is_addr_not_available(&self) -> bool {
        self.source.kind() == io::ErrorKind::AddrNotAvailable
    }

    /// Binding a port below 1024 without CAP_NET_BIND_SERVICE.
    pub fn is_permission_denied(&self) -> bool {
        self.source.kind() == io::ErrorKind::PermissionDenied
    }
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = self.addr;
        if self.is_addr_in_use() {
            write!(
                f,
                "port {} is in use on {}: another program listens there (see `ss -ltnp 'sport = :{}'`); \
                 stop it or pick another --listen port",
                addr.port(),
                addr.ip(),
                addr.port()
            )
        } else if self.is_addr_not_available() {
            write!(
                f,
                "cannot listen on {addr}: {} is not an address of this machine (see `ip addr`); \
                 use one of its addresses or 0.0.0.0",
                addr.ip()
            )
        } else if self.is_permission_denied() {
            write!(
                f,
                "cannot listen on {addr}: ports below 1024 need root or CAP_NET_BIND_SERVICE; \
                 pick a port of 1024 or more"
            )
        } else {
            write!(
                f,
                "cannot listen on {addr}: {} failed: {}",
                self.step, self.source
            )
        }
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// A blocking TCP listener (as std makes them; call `set_nonblocking` or
/// hand its fd to io_uring as needed) on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT` set, listening with
/// `backlog` (the kernel caps it at `net.core.somaxconn`). Call it once per
/// engine core with the same address: each core gets its own accept queue.
/// Port 0 picks a free port; read it back with `local_addr()` and pass that
/// to the other cores' calls.
pub fn listen_reuseport(addr: SocketAddr, backlog: u32) -> Result<TcpListener, ListenError> {
    let with_error = |step: &'static str, source: io::Error| ListenError { addr, step, source };
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket has no memory arguments.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(with_error("socket", io::Error::last_os_error()));
    }
    // SAFETY: raw is a socket we just created and nothing else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
    // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME_WAIT.
    set_int(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(|e| with_error("setsockopt(SO_REUSEADDR)", e))?;
    set_reuseport(raw, true).map_err(|e| with_error("setsockopt(SO_REUSEPORT)", e))?;
    let (storage, len) = sockaddr_of(addr);
    // SAFETY: storage holds a sockaddr of `len` bytes for addr's family.
    let rc = unsafe { libc::bind(raw, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if rc != 0 {
        return Err(with_error("bind", io::Error::last_os_error()));
    }
    let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
    // SAFETY: listen has no memory arguments.
    if unsafe { libc::listen(raw, backlog) } != 0 {
        return Err(with_error("listen", io::Error::last_os_error()));
    }
    Ok(TcpListener::from(owned))
}

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::AsRawFd;

    fn sysctl_bytes(name: &str) -> Option<usize> {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn nodelay_round_trips() {
        let listener = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = stream.as_raw_fd();
        set_tcp_nodelay(fd, true).unwrap();
        assert!(tcp_nodelay(fd).unwrap());
        set_tcp_nodelay(fd, false).unwrap();
        assert!(!tcp_nodelay(fd).unwrap());
    }

    #[test]
    fn buffer_sizes_are_doubled_and_capped() {
        let listener = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = stream.as_raw_fd();
        // 64 KiB is below every distribution's rmem_max/wmem_max default (208 KiB).
        assert_eq!(set_recv_buffer(fd, 65536).unwrap(), 2 * 65536);
        assert_eq!(set_send_buffer(fd, 65536).unwrap(), 2 * 65536);
        if let (Some(rmem_max), Some(wmem_max)) =
            (sysctl_bytes("rmem_max"), sysctl_bytes("wmem_max"))
        {
            let huge = 1 << 30;
            assert_eq!(set_recv_buffer(fd, huge).unwrap(), 2 * rmem_max.min(huge));
            assert_eq!(set_send_buffer(fd, huge).unwrap(), 2 * wmem_max.min(huge));
        }
    }

    #[test]
    fn busy_poll_zero_is_always_allowed() {
        let listener = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let fd = listener.as_raw_fd();
        assert_eq!(set_busy_poll(fd, 0).unwrap(), 0);
        // With CAP_NET_ADMIN (root in CI) any value is allowed and reads back.
        if crate::testdir::has_capability(crate::testdir::CAP_NET_ADMIN) {
            assert_eq!(set_busy_poll(fd, 50).unwrap(), 50);
        }
    }

    #[test]
    fn connected_socket_reports_mss_and_mtu() {
        let listener = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).unwrap();
        let mtu = ip_mtu(client.as_raw_fd()).unwrap();
        let lo_mtu = crate::mtu::interface_mtu(std::path::Path::new("/sys"), "lo").unwrap();
        // IPv4 caps a path MTU at 65535, the largest IPv4 packet.
        assert_eq!(mtu, lo_mtu.min(65535), "the loopback route's MTU is lo's");
        let mss = tcp_max_segment(client.as_raw_fd()).unwrap();
        // The MSS never exceeds what the MTU allows. (On loopback it is
        // often far less: Linux bounds it to half the largest window the
        // peer offered. The exact MTU 9000 -> 8948 case is checked over
        // veth in tests/tune_host.rs.)
        assert!(
            mss > 0 && mss <= crate::mtu::mss_for_mtu(mtu, false),
            "mss {mss} mtu {mtu}"
        );

        let unconnected = listen_reuseport("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let e = ip_mtu(unconnected.as_raw_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN));
    }

    #[test]
    fn stream_options_apply_and_read_back() {
        let listener = listen_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let applied = StreamOptions {
            nodelay: true,
            recv_buffer_bytes: Some(32768),
            send_buffer_bytes: Some(16384),
            busy_poll_us: Some(0),
        }
        .apply(stream.as_raw_fd())
        .unwrap();
        assert_eq!(
            applied,
            AppliedStreamOptions {
                nodelay: true,
                recv_buffer_bytes: 65536,
                send_buffer_bytes: 32768,
                busy_poll_us: 0
            }
        );
        let e = StreamOptions::default().apply(-1).unwrap_err();
        assert_eq!(e.option, "TCP_NODELAY");
        assert_eq!(e.source.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn reuseport_listeners_share_a_port_and_others_get_addr_in_use() {
        let first =
            listen_reuseport("127.0.0.1:0".parse().unwrap(), DEFAULT_LISTEN_BACKLOG).unwrap();
        let addr = first.local_addr().unwrap();
        let second = listen_reuseport(addr, DEFAULT_LISTEN_BACKLOG).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        // A listener without SO_REUSEPORT (another program) is refused, and
        // so are we when such a program holds the port.
        assert_eq!(
            TcpListener::bind(addr).unwrap_err().kind(),
            io::ErrorKind::AddrInUse
        );
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = listen_reuseport(plain.local_addr().unwrap(), 16).unwrap_err();
        assert!(e.is_addr_in_use(), "{e:?}");
        assert_eq!(e.step, "bind");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "port {} is in use on 127.0.0.1",
                plain.local_addr().unwrap().port()
            )),
            "{text}"
        );

        // Connections to the shared port are accepted by one of the listeners.
        let _client = TcpStream::connect(addr).unwrap();
        first.set_nonblocking(true).unwrap();
        second.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if first.accept().is_ok() || second.accept().is_ok() {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no listener accepted");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn foreign_address_is_not_available_and_ipv6_works() {
        // A documentation address (RFC 5737), unless this machine has it.
        let foreign: std::net::IpAddr = "198.51.100.254".parse().unwrap();
        assert_eq!(crate::mtu::interface_for_local_addr(foreign).unwrap(), None);
        let e = listen_reuseport((foreign, 0).into(), 16).unwrap_err();
        assert!(e.is_addr_not_available(), "{e:?}");
        assert!(e.to_string().contains("is not an address of this machine"));
        // IPv6 loopback may be disabled in containers; only check when it exists.
        if let Ok(l) = listen_reuseport("[::1]:0".parse().unwrap(), 16) {
            let addr = l.local_addr().unwrap();
            assert!(addr.is_ipv6());
            let s = TcpStream::connect(addr).unwrap();
            let _ = l.accept().unwrap();
            assert!(ip_mtu(s.as_raw_fd()).unwrap() >= crate::mtu::IPV6_MIN_MTU_BYTES);
        }
    }
}
