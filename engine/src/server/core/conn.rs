//! A connection's state on its owning core, and the slab that holds them.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use wire::FrameBuf;

use crate::book::{ClientOrderIds, SessionId, session_id};

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected; the first frame must be a Hello.
    AwaitHello,
    /// Logged in.
    Active,
    /// Closing: no more input is read; pending output is flushed, then the
    /// socket is shut down and freed once no operation is in flight.
    Closing,
}

/// One TCP connection (a session once its Hello is accepted).
pub struct Conn {
    pub fd: OwnedFd,
    /// Generation of the slab slot, so stale completions and stale session
    /// ids never reach a newer connection in the same slot.
    pub generation: u32,
    pub phase: Phase,
    /// Valid from the Hello on; 0 before.
    pub session: SessionId,
    pub account: u64,
    pub cancel_on_disconnect: bool,
    pub client_order_ids: ClientOrderIds,
    pub heartbeat_ms: u32,
    /// Bytes received but not yet processed (a partial frame, or input held
    /// back by backpressure).
    pub inbuf: Vec<u8>,
    /// Messages of the first frame in `inbuf` already processed (when
    /// backpressure stopped processing in the middle of a frame).
    pub cursor: usize,
    /// Reports and replies waiting for the next send.
    pub out: FrameBuf,
    /// The bytes of the send in flight (double buffer of `out`).
    pub sending: Vec<u8>,
    pub send_pos: usize,
    pub send_inflight: bool,
    /// When the send in flight was submitted (slow-consumer detection).
    pub send_started_ns: u64,
    pub recv_armed: bool,
    pub cancel_inflight: bool,
    /// Input processing is held back (backpressure or draining).
    pub blocked: bool,
    /// Already on the core's list of connections with output to send.
    pub dirty: bool,
    /// Already on the core's list of blocked connections.
    pub listed_blocked: bool,
    pub shut_down: bool,
    pub last_recv_ns: u64,
    pub last_out_ns: u64,
    /// When the connection entered `Closing`.
    pub closing_since_ns: u64,
    pub peer: Option<std::net::SocketAddr>,
}

impl Conn {
    pub fn new(
        fd: OwnedFd,
        generation: u32,
        now_ns: u64,
        out: FrameBuf,
        inbuf_capacity: usize,
    ) -> Conn {
        let peer = peer_of(fd.as_raw_fd());
        Conn {
            fd,
            generation,
            phase: Phase::AwaitHello,
            session: 0,
            account: 0,
            cancel_on_disconnect: false,
            client_order_ids: ClientOrderIds::new(),
            heartbeat_ms: 0,
            inbuf: Vec::with_capacity(inbuf_capacity),
            cursor: 0,
            out,
            sending: Vec::new(),
            send_pos: 0,
            send_inflight: false,
            send_started_ns: 0,
            recv_armed: false,
            cancel_inflight: false,
            blocked: false,
            dirty: false,
            listed_blocked: false,
            shut_down: false,
            last_recv_ns: now_ns,
            last_out_ns: now_ns,
            closing_since_ns: 0,
            peer,
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Operations of this connection the kernel still owns (its buffers
    /// must stay put and its fd open until they complete).
    pub fn ops_in_flight(&self) -> bool {
        self.recv_armed || self.send_inflight || self.cancel_inflight
    }

    /// Bytes this connection holds for output (pending plus in flight).
    pub fn out_bytes(&self) -> usize {
        self.out.len() + self.sending.len().saturating_sub(self.send_pos)
    }
}

fn peer_of(fd: RawFd) -> Option<std::net::SocketAddr> {
    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getpeername writes at most `len` bytes into `storage`.
    let rc = unsafe { libc::getpeername(fd, (&raw mut storage).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a: libc::sockaddr_in = unsafe { std::ptr::read((&raw const storage).cast()) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some((ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const storage).cast()) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some((ip, u16::from_be(a.sin6_port)).into())
        }
        _ => None,
    }
}

/// Slot index bits of a session's per-core sequence; the generation sits above.
pub const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// The most connections one core can hold (slot index width).
pub const SLOTS_MAX: usize = 1 << SLOT_BITS;

/// The session id for slot `slot` of core `core` in generation `generation`.
pub fn make_session(core: u16, slot: u32, generation: u32) -> SessionId {
    session_id(
        core,
        (u64::from(generation & 0xff_ffff) << SLOT_BITS) | u64::from(slot),
    )
}

/// The slot and generation a session id names.
pub fn session_slot(session: SessionId) -> (u32, u32) {
    let seq = session & ((1 << crate::book::SESSION_CORE_SHIFT) - 1);
    ((seq & SLOT_MASK) as u32, (seq >> SLOT_BITS) as u32)
}

/// Connections of one core, addressed by slot index; freed slots are reused
/// with a new generation.
#[derive(Default)]
pub struct Slab {
    slots: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    /// The generation new slots start at (above every session id a
    /// recovered journal still names).
    base: u32,
}

impl Slab {
    pub fn with_capacity(n: usize) -> Slab {
        Slab {
            slots: Vec::with_capacity(n),
            generations: Vec::with_capacity(n),
            free: Vec::with_capacity(n),
            live: 0,
            base: 1,
        }
    }

    /// Numbers new sessions from `generation` on (call before any accept).
    pub fn set_base_generation(&mut self, generation: u32) {
        self.base = generation.clamp(1, 0xff_ffff);
    }

    /// Reserves a slot: its index and the generation the new connection gets.
    pub fn reserve(&mut self) -> Option<(u32, u32)> {
        if let Some(slot) = self.free.pop() {
            let g = (self.generations[slot as usize] & 0xff_ffff) % 0xff_ffff + 1;
            self.generations[slot as usize] = g;
            return Some((slot, g));
        }
        if self.slots.len() >= SLOTS_MAX {
            return None;
        }
        // Generations start at `base` (at least 1, so no session id is 0).
        self.slots.push(None);
        self.generations.push(self.base);
        Some(((self.slots.len() - 1) as u32, self.base))
    }

    pub fn insert(&mut self, slot: u32, conn: Conn) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            debug_assert!(s.is_none());
            *s = Some(conn);
            self.live += 1;
        }
    }

    /// The connection in `slot` if its generation matches.
    #[inline]
    pub fn get_mut(&mut self, slot: u32, generation: u32) -> Option<&mut Conn> {
        match self.slots.get_mut(slot as usize) {
            Some(Some(c)) if c.generation == generation => Some(c),
            _ => None,
        }
    }

    /// The connection in `slot`, any generation.
    #[inline]
    pub fn slot_mut(&mut self, slot: u32) -> Option<&mut Conn> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// The connection that owns `session`, if it is still connected.
    #[inline]
    pub fn by_session(&mut self, session: SessionId) -> Option<&mut Conn> {
        let (slot, _) = session_slot(session);
        match self.slots.get_mut(slot as usize) {
            Some(Some(c)) if c.session == session && c.phase != Phase::AwaitHello => Some(c),
            _ => None,
        }
    }

    pub fn remove(&mut self, slot: u32) -> Option<Conn> {
        let c = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.live -= 1;
        Some(c)
    }

    pub fn live(&self) -> usize {
        self.live
    }

    /// Slot indexes of live connections.
    pub fn live_slots(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| i as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_encode_core_slot_and_generation() {
        let s = make_session(3, 77, 5);
        assert_eq!(crate::book::session_core(s), 3);
        assert_eq!(session_slot(s), (77, 5));
    }
}
