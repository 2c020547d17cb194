//! MTU and MSS arithmetic, send-coalescing and batch sizes that fill whole
//! TCP segments, and finding the MTU an interface or a route carries.
//!
//! The MTU counts the IP packet; the MSS is what is left for TCP payload
//! after the IP and TCP headers: `MTU 9000 -> MSS 8960` on IPv4. Linux turns
//! TCP timestamps on by default (`net.ipv4.tcp_timestamps = 1`) and then
//! every segment also carries a 12-byte timestamp option (10 bytes padded to
//! 4-byte alignment), so a segment holds MSS - 12 payload bytes: 8948 at MTU
//! 9000, 1448 at MTU 1500. That is what `TCP_MAXSEG` reports on a connected
//! socket.
//!
//! Choice: the coalescing size ([`send_coalesce_bytes`]) and the batch
//! sizes here assume timestamps are on. If they are off, a full "segment"
//! leaves 12 bytes unused (0.13% at MTU 9000); if we assumed them off while
//! they are on, every full send would spill 12 bytes into an extra tiny
//! segment, which costs a whole packet's overhead and, with `TCP_NODELAY`,
//! an extra wire packet per send. The first error is the cheap one.
//! A connected socket's `TCP_MAXSEG` ([`crate::sock::tcp_max_segment`])
//! gives the exact value when one is at hand.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// Bytes of an IPv4 header without options.
pub const IPV4_HEADER_BYTES: usize = 20;
/// Bytes of an IPv6 header without extension headers.
pub const IPV6_HEADER_BYTES: usize = 40;
/// Bytes of a TCP header without options.
pub const TCP_HEADER_BYTES: usize = 20;
/// Bytes the TCP timestamp option takes in every segment once negotiated
/// (10 bytes, padded to 12 by two NOPs).
pub const TCP_TIMESTAMP_OPTION_BYTES: usize = 12;
/// The MTU of standard Ethernet.
pub const ETHERNET_MTU_BYTES: usize = 1500;
/// The usual jumbo-frame MTU.
pub const JUMBO_MTU_BYTES: usize = 9000;
/// The smallest MTU an IPv4 host must accept (RFC 791).
pub const IPV4_MIN_MTU_BYTES: usize = 68;
/// The smallest MTU an IPv6 link may have (RFC 8200).
pub const IPV6_MIN_MTU_BYTES: usize = 1280;
/// The largest MTU Linux allows on any device (loopback's default).
pub const MTU_MAX_BYTES: usize = 65536;

/// The TCP maximum segment size for an MTU: MTU minus the IP header (20
/// bytes IPv4, 40 IPv6) and the TCP header (20). MTU 9000 -> 8960 and
/// 1500 -> 1460 on IPv4; 9000 -> 8940 on IPv6. This is the value TCP
/// advertises in its SYN; TCP options such as timestamps take 12 more bytes
/// of every segment (see [`segment_payload_bytes`]). An MTU too small to
/// hold the headers gives 0.
pub const fn mss_for_mtu(mtu_bytes: usize, ipv6: bool) -> usize {
    let ip_header_bytes = if ipv6 {
        IPV6_HEADER_BYTES
    } else {
        IPV4_HEADER_BYTES
    };
    mtu_bytes.saturating_sub(ip_header_bytes + TCP_HEADER_BYTES)
}

/// The payload one full segment carries on Linux with its default TCP
/// timestamps: [`mss_for_mtu`] minus [`TCP_TIMESTAMP_OPTION_BYTES`]. MTU
/// 9000 -> 8948, 1500 -> 1448 on IPv4.
pub const fn segment_payload_bytes(mtu_bytes: usize, ipv6: bool) -> usize {
    mss_for_mtu(mtu_bytes, ipv6).saturating_sub(TCP_TIMESTAMP_OPTION_BYTES)
}

/// How many bytes a sender should gather before one `send`: exactly one
/// full segment ([`segment_payload_bytes`]), so a coalesced send leaves as
/// one wire packet with no tiny remainder. Senders that gather more than one
/// segment (GSO splits them) should gather a multiple of this.
pub const fn send_coalesce_bytes(mtu_bytes: usize, ipv6: bool) -> usize {
    segment_payload_bytes(mtu_bytes, ipv6)
}

/// How a batch of fixed-size messages in one frame lays out in segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentFit {
    /// Messages in the frame.
    pub orders: usize,
    /// The frame's bytes: header plus messages.
    pub frame_bytes: usize,
    /// Full-size segments the frame needs (the last one may be partial).
    pub segments: usize,
    /// Payload bytes left unused in the last segment.
    pub unused_bytes: usize,
}

/// The most messages of `order_bytes` each that one frame (with a
/// `frame_header_bytes` header) can hold within `segments` full segments of
/// `segment_bytes` payload (see [`segment_payload_bytes`]). 0 when not even
/// one fits or `order_bytes` is 0. Example: MTU 9000 (8948 bytes per
/// segment), 8-byte frame header, 32-byte orders: 279 orders per segment.
pub const fn orders_filling_segments(
    segment_bytes: usize,
    segments: usize,
    order_bytes: usize,
    frame_header_bytes: usize,
) -> usize {
    if order_bytes == 0 {
        return 0;
    }
    (segment_bytes.saturating_mul(segments)).saturating_sub(frame_header_bytes) / order_bytes
}

/// Rounds a wanted batch (`batch_orders`, say `--batch 2000`) up to the
/// count that fills the last of its segments, so no segment leaves
/// partly empty: 2000 orders of 32 bytes at MTU 9000 need 8 segments, and 8
/// segments hold 2236. A batch of 0 stays 0.
pub fn batch_filling_segments(
    batch_orders: usize,
    segment_bytes: usize,
    order_bytes: usize,
    frame_header_bytes: usize,
) -> SegmentFit {
    if batch_orders == 0 || order_bytes == 0 || segment_bytes == 0 {
        return fit(0, segment_bytes, order_bytes, frame_header_bytes);
    }
    let frame_bytes = frame_header_bytes + batch_orders * order_bytes;
    let segments = frame_bytes.div_ceil(segment_bytes);
    let orders = orders_filling_segments(segment_bytes, segments, order_bytes, frame_header_bytes);
    fit(orders, segment_bytes, order_bytes, frame_header_bytes)
}

fn fit(
    orders: usize,
    segment_bytes: usize,
    order_bytes: usize,
    frame_header_bytes: usize,
) -> SegmentFit {
    let frame_bytes = frame_header_bytes + orders * order_bytes;
    let segments = if segment_bytes == 0 {
        0
    } else {
        frame_bytes.div_ceil(segment_bytes)
    };
    SegmentFit {
        orders,
        frame_bytes,
        segments,
        unused_bytes: segments * segment_bytes - frame_bytes.min(segments * segment_bytes),
    }
}

/// The MTU of interface `iface`, from `<sys_root>/class/net/<iface>/mtu`.
/// A missing interface is `NotFound` with the existing interfaces named.
pub fn interface_mtu(sys_root: &Path, iface: &str) -> io::Result<usize> {
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    let path = sys_root.join("class/net").join(iface).join("mtu");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {:?} is not a number", path.display(), text.trim()),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "interface {iface} does not exist; this machine has {}",
                interfaces(sys_root)
                    .map(|names| names.join(", "))
                    .unwrap_or_else(|_| "no readable /sys/class/net".to_string())
            ),
        )),
        Err(e) => Err(e),
    }
}

/// The network interfaces under `<sys_root>/class/net`, sorted.
pub fn interfaces(sys_root: &Path) -> io::Result<Vec<String>> {
    let mut names = std::fs::read_dir(sys_root.join("class/net"))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect::<Vec<_>>();
    names.sort();
    Ok(names)
}

/// The interface that holds local address `addr` (the address a socket is
/// bound to, or `local_addr()` of a connected one), found with getifaddrs.
/// `None` when no interface has it (for example the unspecified address).
pub fn interface_for_local_addr(addr: IpAddr) -> io::Result<Option<String>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `list`, which we free below.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr is non-null and points at a sockaddr whose family
        // field says which larger struct it is.
        let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
        let entry_addr = match family {
            libc::AF_INET => {
                // SAFETY: the family is AF_INET, so it is a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
            }
            libc::AF_INET6 => {
                // SAFETY: the family is AF_INET6, so it is a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                IpAddr::from(sin6.sin6_addr.s6_addr)
            }
            _ => continue,
        };
        if entry_addr == canonical(addr) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            found = Some(name.to_string_lossy().into_owned());
            break;
        }
    }
    // SAFETY: list came from a successful getifaddrs and is freed once;
    // `found` holds an owned copy of the name.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The interface holding local address `addr` and its MTU: for a socket
/// bound to one address, or `local_addr()` of an accepted or connected
/// socket, the interface its traffic uses. `None` for an address no
/// interface holds (the unspecified `0.0.0.0` of a wildcard listener: use
/// [`crate::sock::ip_mtu`] on a connected socket then).
pub fn local_interface_mtu(sys_root: &Path, addr: IpAddr) -> io::Result<Option<(String, usize)>> {
    match interface_for_local_addr(addr)? {
        Some(iface) => {
            let mtu_bytes = interface_mtu(sys_root, &iface)?;
            Ok(Some((iface, mtu_bytes)))
        }
        None => Ok(None),
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack
/// socket reports) as the IPv4 address that interfaces carry.
fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A requested `--mtu` that the interface does not carry: frames sized for
/// it would be split (or, with DF set, dropped and rediscovered by PMTU).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtuWarning {
    /// The interface checked.
    pub iface: String,
    /// The MTU asked for.
    pub requested_mtu_bytes: usize,
    /// The interface's MTU.
    pub interface_mtu_bytes: usize,
}

impl fmt::Display for MtuWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--mtu {} is larger than interface {}'s MTU {}: sends sized for {} will be split into \
             {}-byte packets; raise it with `ip link set dev {} mtu {}` (the switch and the peer \
             must carry it too) or pass --mtu {}",
            self.requested_mtu_bytes,
            self.iface,
            self.interface_mtu_bytes,
            self.requested_mtu_bytes,
            self.interface_mtu_bytes,
            self.iface,
            self.requested_mtu_bytes,
            self.interface_mtu_bytes,
        )
    }
}

/// A warning when `requested_mtu_bytes` exceeds what interface `iface`
/// carries (`interface_mtu_bytes`, see [`interface_mtu`]); `None` when it fits.
pub fn mtu_warning(
    iface: &str,
    requested_mtu_bytes: usize,
    interface_mtu_bytes: usize,
) -> Option<MtuWarning> {
    (requested_mtu_bytes > interface_mtu_bytes).then(|| MtuWarning {
        iface: iface.to_string(),
        requested_mtu_bytes,
        interface_mtu_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdir::TestDir;

    #[test]
    fn mss_arithmetic() {
        assert_eq!(mss_for_mtu(9000, false), 8960);
        assert_eq!(mss_for_mtu(1500, false), 1460);
        assert_eq!(mss_for_mtu(9000, true), 8940);
        assert_eq!(mss_for_mtu(1500, true), 1440);
        assert_eq!(mss_for_mtu(65536, false), 65496);
        assert_eq!(mss_for_mtu(30, false), 0);
        assert_eq!(segment_payload_bytes(9000, false), 8948);
        assert_eq!(segment_payload_bytes(1500, false), 1448);
        assert_eq!(segment_payload_bytes(1500, true), 1428);
        assert_eq!(segment_payload_bytes(0, true), 0);
        assert_eq!(send_coalesce_bytes(9000, false), 8948);
    }

    #[test]
    fn batch_sizes_fill_whole_segments() {
        // wire: 8-byte frame header, 32-byte NewOrder.
        assert_eq!(orders_filling_segments(8948, 1, 32, 8), 279);
        assert_eq!(8 + 279 * 32, 8936);
        assert_eq!(orders_filling_segments(1448, 1, 32, 8), 45);
        assert_eq!(orders_filling_segments(8948, 8, 32, 8), 2236);
        assert_eq!(orders_filling_segments(8948, 1, 0, 8), 0);
        assert_eq!(orders_filling_segments(4, 1, 32, 8), 0);

        let fit = batch_filling_segments(2000, 8948, 32, 8);
        assert_eq!(
            fit,
            SegmentFit {
                orders: 2236,
                frame_bytes: 8 + 2236 * 32,
                segments: 8,
                unused_bytes: 8 * 8948 - (8 + 2236 * 32),
            }
        );
        assert!(fit.unused_bytes < 32, "less than one more order is left");
        // Already full: unchanged.
        assert_eq!(batch_filling_segments(279, 8948, 32, 8).orders, 279);
        assert_eq!(batch_filling_segments(1, 8948, 32, 8).orders, 279);
        assert_eq!(batch_filling_segments(0, 8948, 32, 8).orders, 0);
        assert_eq!(batch_filling_segments(5, 0, 32, 8).orders, 0);
    }

    #[test]
    fn reads_interface_mtu_from_a_fake_tree() {
        let sys = TestDir::new("mtu");
        sys.write("class/net/eth0/mtu", "1500\n");
        sys.write("class/net/lo/mtu", "65536\n");
        sys.write("class/net/bad/mtu", "lots\n");
        assert_eq!(interface_mtu(sys.path(), "eth0").unwrap(), 1500);
        assert_eq!(interface_mtu(sys.path(), "lo").unwrap(), 65536);
        let e = interface_mtu(sys.path(), "eth9").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "interface eth9 does not exist; this machine has bad, eth0, lo"
        );
        assert_eq!(
            interface_mtu(sys.path(), "bad").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            interface_mtu(sys.path(), "../x").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn warns_only_when_the_interface_is_smaller() {
        assert_eq!(mtu_warning("eth0", 1500, 9000), None);
        assert_eq!(mtu_warning("eth0", 9000, 9000), None);
        let w = mtu_warning("eth0", 9000, 1500).unwrap();
        assert_eq!(w.interface_mtu_bytes, 1500);
        let text = w.to_string();
        assert!(
            text.starts_with("--mtu 9000 is larger than interface eth0's MTU 1500"),
            "{text}"
        );
        assert!(text.contains("ip link set dev eth0 mtu 9000"), "{text}");
    }

    #[test]
    fn finds_the_loopback_interface_by_address() {
        let lo = interface_for_local_addr("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(lo.as_deref(), Some("lo"));
        let mapped = interface_for_local_addr("::ffff:127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(mapped.as_deref(), Some("lo"));
        assert_eq!(
            interface_for_local_addr("0.0.0.0".parse().unwrap()).unwrap(),
            None
        );
        let mtu = interface_mtu(Path::new(crate::SYS_ROOT), "lo").unwrap();
        assert!(mtu >= IPV4_MIN_MTU_BYTES);
        assert_eq!(
            local_interface_mtu(Path::new(crate::SYS_ROOT), "127.0.0.1".parse().unwrap()).unwrap(),
            Some(("lo".to_string(), mtu))
        );
        assert_eq!(
            local_interface_mtu(Path::new(crate::SYS_ROOT), "0.0.0.0".parse().unwrap()).unwrap(),
            None
        );
    }
}
