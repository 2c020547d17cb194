//! The turbo-dex wire protocol: fixed-layout little-endian messages in
//! length-prefixed frames, each frame a batch of messages of one kind.
//!
//! This crate does no I/O. Decoding borrows the caller's bytes and returns
//! typed slices of messages ([`Frame`]); encoding appends frames to a
//! caller's buffer ([`FrameWriter`]). Untrusted input never panics and is
//! never read out of bounds. The byte-level specification is `PROTOCOL.md`
//! beside this crate.
//!
//! ```
//! use wire::{Decoded, Decoder, Frame, FrameWriter, NewOrder, Side};
//!
//! let mut buf = Vec::with_capacity(64 * 1024);
//! let mut w = FrameWriter::new(&mut buf);
//! for id in 1..=2000u64 {
//!     w.push(&NewOrder::limit(id, 0, Side::Buy, 10_000, 5));
//! }
//! w.finish();
//! let Ok(Decoded::Frame(Frame::NewOrder(orders), used)) = Decoder::default().decode(&buf) else {
//!     unreachable!()
//! };
//! assert_eq!((orders.len(), used), (2000, buf.len()));
//! assert_eq!(orders[41].client_order_id.get(), 42);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod error;
pub mod frame;
pub mod limits;
pub mod md;
pub mod msg;
pub mod types;

pub use cluster::*;
pub use error::{DecodeError, EncodeError};
pub use frame::{
    DEFAULT_MAX_FRAME_BYTES, Decoded, Decoder, Direction, Frame, FrameBuf, FrameWriter, Frames,
    HEADER_BYTES, Header, Kind, MAX_FRAME_BYTES_LIMIT, MAX_MESSAGES_PER_FRAME, PROTOCOL_VERSION,
    PROTOCOL_VERSION_MIN, append_frame, encode_frame,
};
pub use limits::*;
pub use md::*;
pub use msg::*;
pub use types::*;
pub use zerocopy::little_endian::{I64, U16, U32, U64};
