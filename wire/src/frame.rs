//! Framing: an 8-byte header followed by `count` fixed-size messages of one kind.
//!
//! ```text
//! offset  size  field
//!      0     4  length    u32 LE, whole frame in bytes, header included
//!      4     1  kind      message kind (see [`Kind`])
//!      5     1  version   protocol version, 1 or 2
//!      6     2  count     u16 LE, number of messages that follow
//!      8     *  count * size_of(kind) bytes of messages
//! ```
//!
//! The decoder borrows the caller's bytes and hands back a typed slice of
//! messages: no copy, no allocation. It never reads past the bytes it was
//! given and never panics: a partial frame is [`Decoded::NeedMore`], and a
//! frame that breaks the rules is a [`DecodeError`].

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::cluster::*;
use crate::error::{DecodeError, EncodeError};
use crate::md::*;
use crate::msg::*;

/// The newest protocol version this crate speaks (2: market data).
pub const PROTOCOL_VERSION: u8 = 2;
/// The oldest protocol version this crate still speaks (1: order entry only).
pub const PROTOCOL_VERSION_MIN: u8 = 1;
/// Size of the frame header.
pub const HEADER_BYTES: usize = 8;
/// Default maximum frame size (header included) a decoder accepts: 1 MiB,
/// room for 32,767 new orders in one frame.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 20;
/// The largest maximum a decoder can be configured with: 16 MiB. A bound on
/// what a single length field can make a receiver buffer.
pub const MAX_FRAME_BYTES_LIMIT: u32 = 16 << 20;
/// The most messages one frame can carry (the count field is a u16).
pub const MAX_MESSAGES_PER_FRAME: usize = u16::MAX as usize;

/// The frame header.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug, PartialEq, Eq,
)]
#[repr(C)]
pub struct Header {
    /// Whole frame length in bytes, header included.
    pub length: U32,
    /// Message kind.
    pub kind: u8,
    /// Protocol version.
    pub version: u8,
    /// Number of messages.
    pub count: U16,
}
const _: () = assert!(core::mem::size_of::<Header>() == HEADER_BYTES);

macro_rules! kinds {
    ($( $(#[$m:meta])* $name:ident = $code:literal => $ty:ident, $dir:ident ),+ $(,)?) => {
        /// A message kind: the second field of every frame header.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Kind {
            $( $(#[$m])* $name = $code ),+
        }

        impl Kind {
            /// Every kind.
            pub const ALL: &'static [Kind] = &[$(Kind::$name),+];

            /// Parses a kind byte.
            pub const fn from_wire(code: u8) -> Result<Kind, DecodeError> {
                match code {
                    $( $code => Ok(Kind::$name), )+
                    kind => Err(DecodeError::UnknownKind { kind }),
                }
            }

            /// The size of one message of this kind.
            pub const fn message_bytes(self) -> usize {
                match self {
                    $( Kind::$name => core::mem::size_of::<$ty>() ),+
                }
            }

            /// Who sends it.
            pub const fn direction(self) -> Direction {
                match self {
                    $( Kind::$name => Direction::$dir ),+
                }
            }
        }

        /// A decoded frame: a borrowed, typed view of its messages.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Frame<'a> {
            $( $(#[$m])* $name(&'a [$ty]) ),+
        }

        impl<'a> Frame<'a> {
            fn view(kind: Kind, body: &'a [u8]) -> Frame<'a> {
                match kind {
                    $( Kind::$name => Frame::$name(cast::<$ty>(body)) ),+
                }
            }

            /// The kind of this frame.
            pub fn kind(&self) -> Kind {
                match self {
                    $( Frame::$name(_) => Kind::$name ),+
                }
            }

            /// Number of messages.
            pub fn len(&self) -> usize {
                match self {
                    $( Frame::$name(m) => m.len() ),+
                }
            }

            /// True when the frame carries no messages.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }
        }
    };
}

/// Which side sends a message kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

kinds! {
    /// Logon; exactly one message, first frame of a connection.
    Hello = 0x01 => Hello, ToServer,
    /// New orders.
    NewOrder = 0x02 => NewOrder, ToServer,
    /// Cancels.
    Cancel = 0x03 => Cancel, ToServer,
    /// Replaces.
    Replace = 0x04 => Replace, ToServer,
    /// Client heartbeats.
    Heartbeat = 0x05 => Heartbeat, ToServer,
    /// Market-data subscription (version 2; refused by version 1 sessions).
    Subscribe = 0x06 => Subscribe, ToServer,
    /// Order status queries.
    OrderQuery = 0x07 => OrderQuery, ToServer,
    /// Cancel all of the account's orders on a symbol or all (version 2;
    /// refused by version 1 sessions).
    MassCancel = 0x08 => MassCancel, ToServer,
    /// Dead-man's timer: arm, re-arm or disarm (version 2; refused by
    /// version 1 sessions).
    CancelAfter = 0x09 => CancelAfter, ToServer,
    /// Ask a cluster node for its cluster map (version 2; refused by
    /// version 1 sessions and by servers outside a cluster).
    ClusterMapRequest = 0x0a => ClusterMapRequest, ToServer,
    /// Logon answer.
    HelloAck = 0x81 => HelloAck, ToClient,
    /// Symbol directory rows.
    SymbolEntry = 0x82 => SymbolEntry, ToClient,
    /// Order accepted.
    Accepted = 0x83 => Accepted, ToClient,
    /// Request rejected.
    Rejected = 0x84 => Rejected, ToClient,
    /// Execution (fill) of one of the session's orders.
    Fill = 0x85 => Fill, ToClient,
    /// Order canceled.
    Canceled = 0x86 => Canceled, ToClient,
    /// Order replaced.
    Replaced = 0x87 => Replaced, ToClient,
    /// Server heartbeats.
    ServerHeartbeat = 0x88 => ServerHeartbeat, ToClient,
    /// Public trades: a version 1 placeholder, never sent (see `MdTrade`).
    Trade = 0x89 => Trade, ToClient,
    /// Best bid and offer: a version 1 placeholder, never sent (see `MdTopOfBook`).
    TopOfBook = 0x8a => TopOfBook, ToClient,
    /// Order status answers.
    OrderStatus = 0x8b => OrderStatus, ToClient,
    /// Public trades with sequence numbers (market data, version 2).
    MdTrade = 0x8c => MdTrade, ToClient,
    /// Best bid and ask (market data, version 2).
    MdTopOfBook = 0x8d => MdTopOfBook, ToClient,
    /// Depth by price level: updates and snapshot rows (market data, version 2).
    MdDepth = 0x8e => MdDepth, ToClient,
    /// Market-data session events (market data, version 2).
    MdStatus = 0x90 => MdStatus, ToClient,
    /// Session error; the server closes the connection after it.
    SessionError = 0x8f => SessionError, ToClient,
    /// The owner of a shard, after a `Rejected(WrongNode)` (version 2).
    ShardOwner = 0x91 => ShardOwner, ToClient,
    /// The cluster map's header, answer to a ClusterMapRequest (version 2).
    ClusterMap = 0x92 => ClusterMap, ToClient,
    /// One node of the cluster map (version 2).
    ClusterNode = 0x93 => ClusterNode, ToClient,
    /// One shard of the cluster map and its owner (version 2).
    ClusterShard = 0x94 => ClusterShard, ToClient,
}

/// Casts a body whose length the decoder has already checked.
#[inline]
fn cast<M: Message>(body: &[u8]) -> &[M] {
    // The decoder checked `body.len() == count * size_of::<M>()` and every
    // message type is `Unaligned`, so this cast cannot fail; an empty slice
    // keeps the function total without a panic path.
    <[M]>::ref_from_bytes(body).unwrap_or(&[])
}

/// The outcome of one decode step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame, and how many bytes of the input it used.
    Frame(Frame<'a>, usize),
    /// The input holds only part of a frame: at least this many bytes in
    /// total are needed before the next call can make progress.
    NeedMore(usize),
}

/// A stateless frame decoder with a configured maximum frame size.
#[derive(Clone, Copy, Debug)]
pub struct Decoder {
    max_frame_bytes: u32,
    accept: Option<Direction>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder {
    /// A decoder that refuses frames longer than `max_frame_bytes` (clamped
    /// to `HEADER_BYTES..=MAX_FRAME_BYTES_LIMIT`). It accepts both directions.
    pub fn new(max_frame_bytes: u32) -> Self {
        Decoder {
            max_frame_bytes: max_frame_bytes.clamp(HEADER_BYTES as u32, MAX_FRAME_BYTES_LIMIT),
            accept: None,
        }
    }

    /// A server's decoder: server-to-client kinds are [`DecodeError::UnknownKind`].
    pub fn for_server(max_frame_bytes: u32) -> Self {
        Decoder {
            accept: Some(Direction::ToServer),
            ..Decoder::new(max_frame_bytes)
        }
    }

    /// A client's decoder: client-to-server kinds are [`DecodeError::UnknownKind`].
    pub fn for_client(max_frame_bytes: u32) -> Self {
        Decoder {
            accept: Some(Direction::ToClient),
            ..Decoder::new(max_frame_bytes)
        }
    }

    /// The configured maximum frame size.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// The most messages of `kind` that fit one frame under this decoder's limit.
    pub fn max_messages(&self, kind: Kind) -> usize {
        ((self.max_frame_bytes as usize - HEADER_BYTES) / kind.message_bytes())
            .min(MAX_MESSAGES_PER_FRAME)
    }

    /// Decodes the first frame in `input`.
    ///
    /// The header is validated before the body is waited for, so an absurd
    /// length or an unknown kind is reported as soon as 8 bytes have arrived.
    #[inline]
    pub fn decode<'a>(&self, input: &'a [u8]) -> Result<Decoded<'a>, DecodeError> {
        let Ok((header, _)) = Header::ref_from_prefix(input) else {
            return Ok(Decoded::NeedMore(HEADER_BYTES));
        };
        let length = header.length.get();
        if (length as usize) < HEADER_BYTES {
            return Err(DecodeError::LengthTooSmall { length });
        }
        if length > self.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge {
                length,
                max_frame_bytes: self.max_frame_bytes,
            });
        }
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&header.version) {
            return Err(DecodeError::UnsupportedVersion {
                version: header.version,
                supported: PROTOCOL_VERSION,
            });
        }
        let kind = Kind::from_wire(header.kind)?;
        if self.accept.is_some_and(|d| d != kind.direction()) {
            return Err(DecodeError::UnknownKind { kind: header.kind });
        }
        let count = header.count.get();
        let message_bytes = kind.message_bytes();
        let body_bytes = length as usize - HEADER_BYTES;
        if body_bytes != usize::from(count) * message_bytes {
            return Err(DecodeError::BadCount {
                kind: header.kind,
                count,
                length,
                message_bytes: message_bytes as u32,
            });
        }
        if kind == Kind::Hello && count != 1 {
            return Err(DecodeError::CountMustBeOne {
                kind: header.kind,
                count,
            });
        }
        let Some(body) = input.get(HEADER_BYTES..length as usize) else {
            return Ok(Decoded::NeedMore(length as usize));
        };
        Ok(Decoded::Frame(Frame::view(kind, body), length as usize))
    }

    /// Iterates over every whole frame in `input`; the iterator's
    /// [`Frames::consumed`] tells how many bytes were used, so the caller
    /// can keep the unconsumed tail for the next read.
    pub fn frames<'a>(&self, input: &'a [u8]) -> Frames<'a> {
        Frames {
            decoder: *self,
            input,
            consumed: 0,
            error: None,
        }
    }
}

/// Iterator over the whole frames of a buffer. It stops at the first
/// partial frame or error; see [`Frames::consumed`] and [`Frames::error`].
#[derive(Debug)]
pub struct Frames<'a> {
    decoder: Decoder,
    input: &'a [u8],
    consumed: usize,
    error: Option<DecodeError>,
}

impl<'a> Frames<'a> {
    /// Bytes of the input used by the frames returned so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// The error that stopped iteration, if any.
    pub fn error(&self) -> Option<DecodeError> {
        self.error
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.error.is_some() {
            return None;
        }
        let rest = self.input.get(self.consumed..)?;
        match self.decoder.decode(rest) {
            Ok(Decoded::Frame(frame, used)) => {
                self.consumed += used;
                Some(frame)
            }
            Ok(Decoded::NeedMore(_)) => None,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }
}

/// The frame a writer is appending to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct OpenFrame {
    start: usize,
    kind: Kind,
    count: u16,
}

/// Appends `msg` to `out`, continuing `open` when it is a frame of the same
/// kind with room under `max_frame_bytes` and `max_count`, else starting a
/// new frame. The header is patched on every push, so `out` always holds
/// whole frames between pushes. A Hello always gets a frame of its own
/// (the decoder refuses a Hello frame whose count is not 1).
///
/// The continuing path is the hot one (a report run, a client batch): one
/// capacity check, one fixed-size copy and two fixed-size header stores.
#[inline]
fn push_message<M: Message>(
    out: &mut Vec<u8>,
    open: &mut Option<OpenFrame>,
    max_frame_bytes: usize,
    max_count: u16,
    version: u8,
    msg: &M,
) {
    let frame = match open {
        Some(f)
            if M::KIND != Kind::Hello
                && f.kind == M::KIND
                && f.count < max_count
                && f.start <= out.len()
                && out.len() - f.start + M::BYTES <= max_frame_bytes =>
        {
            f.count += 1;
            *f
        }
        _ => {
            let f = OpenFrame {
                start: out.len(),
                kind: M::KIND,
                count: 1,
            };
            let header = Header {
                length: U32::new(HEADER_BYTES as u32),
                kind: M::KIND as u8,
                version,
                count: U16::new(1),
            };
            out.extend_from_slice(header.as_bytes());
            *open = Some(f);
            f
        }
    };
    out.extend_from_slice(msg.as_bytes());
    let length = (out.len() - frame.start) as u32;
    if let Some(h) = out
        .get_mut(frame.start..)
        .and_then(|s| s.first_chunk_mut::<HEADER_BYTES>())
    {
        h[0..4].copy_from_slice(&length.to_le_bytes());
        h[6..8].copy_from_slice(&frame.count.to_le_bytes());
    }
}

/// Appends a slice of messages: each frame is opened (or continued) by
/// [`push_message`], then filled with one copy of as many of the remaining
/// messages as it has room for, so a batch costs a copy, not a push per message.
#[inline]
fn push_slice<M: Message>(
    out: &mut Vec<u8>,
    open: &mut Option<OpenFrame>,
    max_frame_bytes: usize,
    max_count: u16,
    version: u8,
    msgs: &[M],
) {
    let mut rest = msgs;
    while let Some((first, tail)) = rest.split_first() {
        push_message(out, open, max_frame_bytes, max_count, version, first);
        rest = tail;
        let Some(f) = open else { continue };
        if M::KIND == Kind::Hello || f.kind != M::KIND {
            continue;
        }
        let used_bytes = out.len().saturating_sub(f.start);
        let room = (max_frame_bytes.saturating_sub(used_bytes) / M::BYTES)
            .min(usize::from(max_count.saturating_sub(f.count)));
        let (chunk, tail) = rest.split_at(room.min(rest.len()));
        if chunk.is_empty() {
            continue;
        }
        out.extend_from_slice(chunk.as_bytes());
        // `room` is bounded by `max_count - count`, so this stays within u16.
        f.count += chunk.len() as u16;
        let length = (out.len() - f.start) as u32;
        if let Some(h) = out
            .get_mut(f.start..)
            .and_then(|s| s.first_chunk_mut::<HEADER_BYTES>())
        {
            h[0..4].copy_from_slice(&length.to_le_bytes());
            h[6..8].copy_from_slice(&f.count.to_le_bytes());
        }
        rest = tail;
    }
}

fn clamp_max_frame(max_frame_bytes: u32) -> usize {
    max_frame_bytes.clamp(HEADER_BYTES as u32 + 64, MAX_FRAME_BYTES_LIMIT) as usize
}

/// Appends messages to a caller's buffer as frames, opening a new frame
/// whenever the kind changes or the current frame is full. Messages are
/// copied once, straight into `out`; if `out` has the capacity reserved,
/// nothing is allocated.
///
/// The header's count is kept up to date as messages are pushed, so the
/// buffer is always a sequence of whole frames between pushes.
#[derive(Debug)]
pub struct FrameWriter<'b> {
    out: &'b mut Vec<u8>,
    open: Option<OpenFrame>,
    max_frame_bytes: usize,
    version: u8,
}

impl<'b> FrameWriter<'b> {
    /// A writer with the default maximum frame size.
    pub fn new(out: &'b mut Vec<u8>) -> Self {
        Self::with_max_frame(out, DEFAULT_MAX_FRAME_BYTES)
    }

    /// A writer whose frames stay within `max_frame_bytes` (the peer's limit).
    pub fn with_max_frame(out: &'b mut Vec<u8>, max_frame_bytes: u32) -> Self {
        FrameWriter {
            out,
            open: None,
            max_frame_bytes: clamp_max_frame(max_frame_bytes),
            version: PROTOCOL_VERSION,
        }
    }

    /// Writes frame headers with `version` (the session's negotiated
    /// version) instead of [`PROTOCOL_VERSION`].
    pub fn with_version(mut self, version: u8) -> Self {
        self.finish();
        self.version = version;
        self
    }

    /// Appends one message, continuing the open frame when it is of the
    /// same kind and has room.
    #[inline]
    pub fn push<M: Message>(&mut self, msg: &M) {
        push_message(
            self.out,
            &mut self.open,
            self.max_frame_bytes,
            u16::MAX,
            self.version,
            msg,
        );
    }

    /// Appends a batch of messages of one kind, splitting into as many
    /// frames as needed; the same bytes as pushing them one by one, with one
    /// copy per frame instead of one per message.
    pub fn push_all<M: Message>(&mut self, msgs: &[M]) {
        push_slice(
            self.out,
            &mut self.open,
            self.max_frame_bytes,
            u16::MAX,
            self.version,
            msgs,
        );
    }

    /// Ends the open frame; the next push starts a new one.
    pub fn finish(&mut self) {
        self.open = None;
    }

    /// Bytes in the underlying buffer.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True when the underlying buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
}

/// An owned output buffer that coalesces messages into frames across many
/// calls: a connection's pending output. Like [`FrameWriter`], but it owns
/// its bytes and remembers the open frame between pushes, and it can cap
/// the messages per frame (a server's `--batch`).
#[derive(Debug)]
pub struct FrameBuf {
    out: Vec<u8>,
    open: Option<OpenFrame>,
    max_frame_bytes: usize,
    max_count: u16,
    version: u8,
}

impl Default for FrameBuf {
    /// An empty buffer with no capacity reserved, the default maximum frame
    /// size and no cap on messages per frame beyond the u16 count.
    fn default() -> Self {
        FrameBuf::new(0, DEFAULT_MAX_FRAME_BYTES, u16::MAX)
    }
}

impl FrameBuf {
    /// An empty buffer with `capacity_bytes` reserved, frames of at most
    /// `max_frame_bytes` and at most `max_count` messages (at least 1).
    pub fn new(capacity_bytes: usize, max_frame_bytes: u32, max_count: u16) -> Self {
        FrameBuf {
            out: Vec::with_capacity(capacity_bytes),
            open: None,
            max_frame_bytes: clamp_max_frame(max_frame_bytes),
            max_count: max_count.max(1),
            version: PROTOCOL_VERSION,
        }
    }

    /// Writes the headers of frames opened from now on with `version` (the
    /// session's negotiated version; [`PROTOCOL_VERSION`] by default).
    pub fn set_version(&mut self, version: u8) {
        self.open = None;
        self.version = version;
    }

    /// The version frames are written with.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// Appends one message.
    #[inline]
    pub fn push<M: Message>(&mut self, msg: &M) {
        push_message(
            &mut self.out,
            &mut self.open,
            self.max_frame_bytes,
            self.max_count,
            self.version,
            msg,
        );
    }

    /// Appends a batch of messages of one kind (see [`FrameWriter::push_all`]).
    pub fn push_all<M: Message>(&mut self, msgs: &[M]) {
        push_slice(
            &mut self.out,
            &mut self.open,
            self.max_frame_bytes,
            self.max_count,
            self.version,
            msgs,
        );
    }

    /// Ends the open frame; the next push starts a new one.
    pub fn finish(&mut self) {
        self.open = None;
    }

    /// The pending bytes: whole frames.
    pub fn as_bytes(&self) -> &[u8] {
        &self.out
    }

    /// Pending bytes.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// Swaps the pending bytes into `other` (which must be empty; its
    /// capacity is reused here), leaving this buffer empty: double buffering
    /// without a copy or an allocation.
    pub fn swap_out(&mut self, other: &mut Vec<u8>) {
        other.clear();
        std::mem::swap(&mut self.out, other);
        self.open = None;
    }

    /// Drops the pending bytes.
    pub fn clear(&mut self) {
        self.out.clear();
        self.open = None;
    }
}

/// Encodes `msgs` as one frame into the front of `out` and returns the
/// number of bytes written. Errors if `out` is too small or the batch is
/// too large for one frame.
///
/// Only the format's own limit (65,535 messages) is checked: keeping the
/// frame within the peer's maximum frame size (`HelloAck.max_frame_bytes`,
/// [`DEFAULT_MAX_FRAME_BYTES`] by default) and sending a Hello alone are the
/// caller's job. [`FrameWriter`] does both.
pub fn encode_frame<M: Message>(msgs: &[M], out: &mut [u8]) -> Result<usize, EncodeError> {
    if msgs.len() > MAX_MESSAGES_PER_FRAME {
        return Err(EncodeError::TooManyMessages {
            count: msgs.len(),
            max: MAX_MESSAGES_PER_FRAME,
        });
    }
    let needed = HEADER_BYTES + msgs.len() * M::BYTES;
    let available = out.len();
    let Some(dst) = out.get_mut(..needed) else {
        return Err(EncodeError::BufferFull { needed, available });
    };
    let header = Header {
        length: U32::new(needed as u32),
        kind: M::KIND as u8,
        version: PROTOCOL_VERSION,
        count: U16::new(msgs.len() as u16),
    };
    dst[..HEADER_BYTES].copy_from_slice(header.as_bytes());
    dst[HEADER_BYTES..].copy_from_slice(msgs.as_bytes());
    Ok(needed)
}

/// Appends one frame holding `msgs` to `out` (which must fit in one frame).
///
/// It copies the messages once, straight after the header (no zero-fill of
/// the space first); on error `out` is left as it was.
pub fn append_frame<M: Message>(msgs: &[M], out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    if msgs.len() > MAX_MESSAGES_PER_FRAME {
        return Err(EncodeError::TooManyMessages {
            count: msgs.len(),
            max: MAX_MESSAGES_PER_FRAME,
        });
    }
    let needed = HEADER_BYTES + msgs.len() * M::BYTES;
    let header = Header {
        length: U32::new(needed as u32),
        kind: M::KIND as u8,
        version: PROTOCOL_VERSION,
        count: U16::new(msgs.len() as u16),
    };
    out.reserve(needed);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(msgs.as_bytes());
    Ok(needed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    fn order(id: u64) -> NewOrder {
        NewOrder::limit(id, 7, Side::Buy, 100 + id as i64, 10)
    }

    #[test]
    fn round_trip_a_batch_without_copying() {
        let orders: Vec<NewOrder> = (0..2000).map(order).collect();
        let mut buf = Vec::new();
        append_frame(&orders, &mut buf).unwrap();
        assert_eq!(buf.len(), HEADER_BYTES + 2000 * 32);
        let Decoded::Frame(Frame::NewOrder(view), used) = Decoder::default().decode(&buf).unwrap()
        else {
            panic!("expected a new-order frame");
        };
        assert_eq!(used, buf.len());
        assert_eq!(view, &orders[..]);
        // The view points into the buffer: a cast, not a copy.
        assert_eq!(view.as_ptr() as usize, buf.as_ptr() as usize + HEADER_BYTES);
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let mut buf = Vec::new();
        append_frame(&[order(1), order(2)], &mut buf).unwrap();
        let d = Decoder::default();
        for cut in 0..buf.len() {
            let want = if cut < HEADER_BYTES {
                HEADER_BYTES
            } else {
                buf.len()
            };
            assert_eq!(
                d.decode(&buf[..cut]).unwrap(),
                Decoded::NeedMore(want),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn header_errors_are_typed() {
        let d = Decoder::new(1024);
        let mut h = [0u8; 8];
        h[0..4].copy_from_slice(&4u32.to_le_bytes());
        assert_eq!(d.decode(&h), Err(DecodeError::LengthTooSmall { length: 4 }));
        h[0..4].copy_from_slice(&4096u32.to_le_bytes());
        assert!(matches!(
            d.decode(&h),
            Err(DecodeError::FrameTooLarge { length: 4096, .. })
        ));
        h[0..4].copy_from_slice(&8u32.to_le_bytes());
        h[4] = 0x02;
        h[5] = 9;
        assert!(matches!(
            d.decode(&h),
            Err(DecodeError::UnsupportedVersion { version: 9, .. })
        ));
        h[5] = PROTOCOL_VERSION;
        h[4] = 0x55;
        assert_eq!(d.decode(&h), Err(DecodeError::UnknownKind { kind: 0x55 }));
        h[4] = 0x02;
        h[6] = 1; // count 1 but no body bytes in the length
        assert!(matches!(
            d.decode(&h),
            Err(DecodeError::BadCount { count: 1, .. })
        ));
    }

    #[test]
    fn direction_filter_refuses_the_other_sides_kinds() {
        let mut buf = Vec::new();
        append_frame(&[ServerHeartbeat { token: 1.into() }], &mut buf).unwrap();
        assert_eq!(
            Decoder::for_server(4096).decode(&buf),
            Err(DecodeError::UnknownKind { kind: 0x88 })
        );
        assert!(matches!(
            Decoder::for_client(4096).decode(&buf),
            Ok(Decoded::Frame(..))
        ));
    }

    #[test]
    fn hello_must_come_alone() {
        let h = Hello::new(1, 0, 0, "x");
        let mut buf = Vec::new();
        append_frame(&[h, h], &mut buf).unwrap();
        assert!(matches!(
            Decoder::default().decode(&buf),
            Err(DecodeError::CountMustBeOne { count: 2, .. })
        ));
    }

    #[test]
    fn writer_coalesces_runs_of_one_kind_and_splits_on_kind_change() {
        let mut buf = Vec::with_capacity(4096);
        let mut w = FrameWriter::new(&mut buf);
        w.push(&Canceled::new(1, 1, CancelReason::Requested, 5));
        w.push(&Canceled::new(2, 1, CancelReason::Requested, 5));
        w.push(&Fill::new(3, 9, 1, Side::Buy, Liquidity::Taker, 10, 1, 0));
        w.push(&Canceled::new(4, 1, CancelReason::Requested, 5));
        w.finish();
        let frames: Vec<Frame<'_>> = Decoder::default().frames(&buf).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].kind(), Kind::Canceled);
        assert_eq!(frames[0].len(), 2);
        assert_eq!(frames[1].kind(), Kind::Fill);
        assert_eq!(frames[2].len(), 1);
    }

    #[test]
    fn writer_respects_the_max_frame_size() {
        let mut buf = Vec::new();
        let mut w = FrameWriter::with_max_frame(&mut buf, 8 + 32 * 10);
        for i in 0..25 {
            w.push(&order(i));
        }
        let d = Decoder::new(8 + 32 * 10);
        let mut it = d.frames(&buf);
        let counts: Vec<usize> = it.by_ref().map(|f| f.len()).collect();
        assert_eq!(counts, vec![10, 10, 5]);
        assert_eq!(it.consumed(), buf.len());
        assert_eq!(it.error(), None);
    }

    #[test]
    fn frame_buf_keeps_its_frame_open_across_pushes_and_caps_the_count() {
        let mut b = FrameBuf::new(1024, DEFAULT_MAX_FRAME_BYTES, 3);
        for i in 0..7 {
            b.push(&order(i));
        }
        b.push(&Heartbeat { token: 5.into() });
        let counts: Vec<(Kind, usize)> = Decoder::default()
            .frames(b.as_bytes())
            .map(|f| (f.kind(), f.len()))
            .collect();
        assert_eq!(
            counts,
            vec![
                (Kind::NewOrder, 3),
                (Kind::NewOrder, 3),
                (Kind::NewOrder, 1),
                (Kind::Heartbeat, 1)
            ]
        );
        let mut sending = Vec::new();
        b.swap_out(&mut sending);
        assert!(b.is_empty());
        assert_eq!(Decoder::default().frames(&sending).count(), 4);
        // After the swap a push starts a fresh frame in the (reused) buffer.
        b.push(&order(9));
        assert_eq!(Decoder::default().frames(b.as_bytes()).count(), 1);
    }

    #[test]
    fn encode_frame_reports_a_small_buffer() {
        let mut small = [0u8; 20];
        assert_eq!(
            encode_frame(&[order(1)], &mut small),
            Err(EncodeError::BufferFull {
                needed: 40,
                available: 20
            })
        );
    }
}
