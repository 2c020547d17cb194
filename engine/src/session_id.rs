//! The server's id for a session (a connection after its Hello), in one
//! place: the bit layout, and every conversion to and from it.
//!
//! | bits | field | why |
//! |---|---|---|
//! | 63..48 | core | the index (into `--cores`) of the core that owns the session: a shard routes a report home from the id alone |
//! | 47..24 | generation | bumped each time a connection slot is reused, so a late report or completion never reaches the slot's next connection |
//! | 23..0 | slot | the connection's index in its core's slab |
//!
//! The id travels in journal records and snapshots as its raw `u64`
//! ([`SessionId::get`], [`SessionId::from_raw`]); generation and slot
//! together are the per-core *sequence* that recovery reports, so that new
//! sessions after a restart are numbered above every id the journal names.
//! The io_uring `user_data` word carries a generation and a slot too; its
//! layout (`server::core::ops`) asserts at compile time that they fit.

/// Bits of the owning core's index.
pub const CORE_BITS: u32 = 16;
/// Bits of the slot generation.
pub const GENERATION_BITS: u32 = 24;
/// Bits of the slot index.
pub const SLOT_BITS: u32 = 24;

const _: () = assert!(CORE_BITS + GENERATION_BITS + SLOT_BITS == u64::BITS);

/// Cores a session id can name.
pub const CORES_MAX: usize = 1 << CORE_BITS;
/// Connections one core can hold (slot index width).
pub const SLOTS_MAX: usize = 1 << SLOT_BITS;
/// The largest generation; generations run 1..=GENERATION_MAX and wrap to 1.
pub const GENERATION_MAX: u32 = (1 << GENERATION_BITS) - 1;

const SEQUENCE_BITS: u32 = GENERATION_BITS + SLOT_BITS;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
const SEQUENCE_MASK: u64 = (1 << SEQUENCE_BITS) - 1;

/// A session id: core | generation | slot. Zero is never a live session
/// (generations start at 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u64);

impl SessionId {
    /// The id of no session (a connection before its Hello).
    pub const NONE: SessionId = SessionId(0);

    /// The id of slot `slot` in generation `generation` on core `core`.
    /// Values wider than their fields are truncated (debug builds assert).
    #[inline]
    pub const fn new(core: u16, generation: u32, slot: u32) -> SessionId {
        debug_assert!(generation as u64 <= GENERATION_MASK);
        debug_assert!(slot as u64 <= SLOT_MASK);
        SessionId(
            ((core as u64) << SEQUENCE_BITS)
                | (((generation as u64) & GENERATION_MASK) << SLOT_BITS)
                | ((slot as u64) & SLOT_MASK),
        )
    }

    /// The id a journal record or snapshot stored.
    #[inline]
    pub const fn from_raw(raw: u64) -> SessionId {
        SessionId(raw)
    }

    /// The raw value (what the journal stores and the HelloAck carries).
    #[inline]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The index (into the server's core list) of the core that owns it.
    #[inline]
    pub const fn core(self) -> usize {
        (self.0 >> SEQUENCE_BITS) as usize
    }

    /// The slot generation.
    #[inline]
    pub const fn generation(self) -> u32 {
        ((self.0 >> SLOT_BITS) & GENERATION_MASK) as u32
    }

    /// The connection slot on its core.
    #[inline]
    pub const fn slot(self) -> u32 {
        (self.0 & SLOT_MASK) as u32
    }

    /// Generation and slot together: the per-core sequence recovery reports.
    #[inline]
    pub const fn sequence(self) -> u64 {
        self.0 & SEQUENCE_MASK
    }

    /// The generation of a per-core sequence (see [`SessionId::sequence`]).
    #[inline]
    pub const fn generation_of_sequence(sequence: u64) -> u32 {
        ((sequence >> SLOT_BITS) & GENERATION_MASK) as u32
    }

    /// The generation after `generation`: 1..=GENERATION_MAX, wrapping to 1.
    #[inline]
    pub const fn next_generation(generation: u32) -> u32 {
        (generation & GENERATION_MASK as u32) % GENERATION_MAX + 1
    }
}

impl std::fmt::LowerHex for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

impl From<SessionId> for u64 {
    fn from(s: SessionId) -> u64 {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip() {
        let s = SessionId::new(3, 5, 77);
        assert_eq!((s.core(), s.generation(), s.slot()), (3, 5, 77));
        assert_eq!(SessionId::from_raw(s.get()), s);
        let top = SessionId::new(u16::MAX, GENERATION_MAX, (SLOTS_MAX - 1) as u32);
        assert_eq!(top.core(), CORES_MAX - 1);
        assert_eq!(top.generation(), GENERATION_MAX);
        assert_eq!(top.slot(), (SLOTS_MAX - 1) as u32);
        assert_eq!(top.get(), u64::MAX);
    }

    #[test]
    fn the_sequence_is_generation_and_slot() {
        let s = SessionId::new(9, 42, 7);
        assert_eq!(s.sequence(), (42 << SLOT_BITS) | 7);
        assert_eq!(SessionId::generation_of_sequence(s.sequence()), 42);
        assert_eq!(SessionId::new(0, 42, 7).get(), s.sequence());
    }

    #[test]
    fn generations_wrap_to_one_never_zero() {
        assert_eq!(SessionId::next_generation(1), 2);
        assert_eq!(SessionId::next_generation(GENERATION_MAX), 1);
        assert_eq!(SessionId::next_generation(0), 1);
    }
}
