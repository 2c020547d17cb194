//! A connection's state on its owning core, and the slab that holds them.

use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use wire::{FrameBuf, SessionError};

use super::session::{Phase, Session};
use crate::session_id::{SLOTS_MAX, SessionId};

/// One TCP connection (a session once its Hello is accepted).
pub struct Conn {
    pub stream: TcpStream,
    /// Generation of the slab slot, so stale completions and stale session
    /// ids never reach a newer connection in the same slot.
    pub generation: u32,
    /// The session layer's state (phase, id, account, ids).
    pub session: Session,
    /// Commands of this session routed to shards (here or on other cores)
    /// whose processing is not yet confirmed. Answers of the session layer
    /// and the closing SessionError wait for it to reach zero, so that they
    /// never overtake the answers to earlier requests.
    pub in_flight: u32,
    /// Input waits for `in_flight` to reach zero (an answer of the session
    /// layer is next).
    pub fenced: bool,
    /// The SessionError to send once `in_flight` reaches zero.
    pub close_msg: Option<SessionError>,
    /// The SessionError is queued: it is the last message, nothing follows.
    pub final_sent: bool,
    /// Bytes received but not yet processed (a partial frame, or input held
    /// back by backpressure).
    pub inbuf: Vec<u8>,
    /// The capacity of `inbuf` counted in the core's input memory.
    pub inbuf_charged: usize,
    /// Messages of the first frame in `inbuf` already processed (when
    /// backpressure stopped processing in the middle of a frame).
    pub cursor: usize,
    /// Reports and replies waiting for the next send.
    pub out: FrameBuf,
    /// The bytes of the send in flight (double buffer of `out`). The kernel
    /// reads them while `send_inflight` is set: only the send's completion
    /// may change them then.
    pub sending: Vec<u8>,
    pub send_pos: usize,
    pub send_inflight: bool,
    /// When the send in flight was submitted (slow-consumer detection).
    pub send_started_ns: u64,
    pub recv_armed: bool,
    pub cancel_inflight: bool,
    /// Input processing is held back (backpressure, a fence or draining).
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
    /// Market-data subscriptions (None until the first Subscribe).
    pub md: Option<super::md::ConnMd>,
    /// When it was accepted (the logon deadline).
    pub accepted_ns: u64,
    /// When the first byte of the incomplete frame in `inbuf` arrived.
    pub frame_started_ns: Option<u64>,
    /// The session counts against its account's limit (release at close).
    pub session_counted: bool,
    /// The TLS session on a TLS listener (see `tls.rs`).
    pub tls: Option<Box<super::tls::ConnTls>>,
    /// Cluster only: a bit per shard (of all shards) this session sent a
    /// NewOrder or Replace to; empty until the first. When this node's
    /// copy of one of them passes to no session, the session is closed
    /// (`Core::close_detached`).
    pub shards_routed: Vec<u64>,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        id: SessionId,
        now_ns: u64,
        out: FrameBuf,
        peer: Option<std::net::SocketAddr>,
    ) -> Conn {
        Conn {
            stream,
            generation: id.generation(),
            session: Session::new(id),
            in_flight: 0,
            fenced: false,
            close_msg: None,
            final_sent: false,
            // Allocated on the first partial frame: an idle connection
            // (or one whose frames arrive whole) holds no input memory.
            inbuf: Vec::new(),
            inbuf_charged: 0,
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
            md: None,
            accepted_ns: now_ns,
            frame_started_ns: None,
            session_counted: false,
            tls: None,
            shards_routed: Vec::new(),
        }
    }

    /// Notes that the session sent a NewOrder or Replace to `shard`.
    pub fn routed_to(&mut self, shard: u32) {
        let (word, bit) = ((shard / 64) as usize, shard % 64);
        if self.shards_routed.len() <= word {
            self.shards_routed.resize(word + 1, 0);
        }
        self.shards_routed[word] |= 1 << bit;
    }

    /// Whether the session sent a NewOrder or Replace to `shard`.
    pub fn routed_to_shard(&self, shard: u32) -> bool {
        self.shards_routed
            .get((shard / 64) as usize)
            .is_some_and(|w| w & (1 << (shard % 64)) != 0)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn phase(&self) -> Phase {
        self.session.phase
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

    /// `n` of its routed commands were processed. Returns true when that
    /// let a waiting SessionError out (the connection needs a send).
    pub fn processed(&mut self, n: u32) -> bool {
        debug_assert!(
            self.in_flight >= n,
            "{} processed of {} in flight",
            n,
            self.in_flight
        );
        self.in_flight = self.in_flight.saturating_sub(n);
        if self.in_flight == 0
            && let Some(msg) = self.close_msg.take()
        {
            self.out.push(&msg);
            self.final_sent = true;
            return true;
        }
        false
    }
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
        self.base = generation.clamp(1, crate::session_id::GENERATION_MAX);
    }

    /// Reserves a slot: its index and the generation the new connection gets.
    pub fn reserve(&mut self) -> Option<(u32, u32)> {
        if let Some(slot) = self.free.pop() {
            let g = SessionId::next_generation(self.generations[slot as usize]);
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
        match self.slots.get_mut(session.slot() as usize) {
            Some(Some(c))
                if c.session.id == session
                    && !matches!(c.session.phase, Phase::AwaitHello | Phase::Authenticating) =>
            {
                Some(c)
            }
            _ => None,
        }
    }

    /// Frees a slot. The kernel must be done with the connection: freeing
    /// one with an operation in flight would free memory it may still use.
    pub fn remove(&mut self, slot: u32) -> Option<Conn> {
        let entry = self.slots.get_mut(slot as usize)?;
        assert!(
            entry.as_ref().is_none_or(|c| !c.ops_in_flight()),
            "connection in slot {slot} freed with an operation in flight"
        );
        let c = entry.take()?;
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
    fn reused_slots_get_a_new_generation() {
        let mut slab = Slab::with_capacity(2);
        slab.set_base_generation(7);
        let (slot, g) = slab.reserve().unwrap();
        assert_eq!((slot, g), (0, 7));
        slab.free.push(slot);
        let (again, g2) = slab.reserve().unwrap();
        assert_eq!((again, g2), (0, 8));
    }
}
