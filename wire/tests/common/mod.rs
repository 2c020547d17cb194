//! Shared helpers for the wire integration tests: a typed batch of any
//! message kind, strategies that make them, and every way to encode them.

#![allow(dead_code)] // each test file uses a different part

pub mod invariants;

use proptest::collection::vec;
use proptest::prelude::*;
use wire::{EncodeError, Frame, FrameBuf, FrameWriter, Kind, Message, append_frame, encode_frame};

/// One message of type `M` with every byte arbitrary: every field value,
/// valid or not, since the codec moves bytes and never interprets them.
pub fn message<M: Message + core::fmt::Debug>() -> BoxedStrategy<M> {
    vec(any::<u8>(), M::BYTES)
        .prop_map(|bytes| M::read_from_bytes(&bytes).expect("exactly one message of bytes"))
        .boxed()
}

macro_rules! batches {
    ($($name:ident),+ $(,)?) => {
        /// A batch of messages of one kind, owned.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Batch {
            $( $name(Vec<wire::$name>) ),+
        }

        impl Batch {
            /// The batch's kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $( Batch::$name(_) => Kind::$name ),+
                }
            }

            /// Number of messages.
            pub fn len(&self) -> usize {
                match self {
                    $( Batch::$name(v) => v.len() ),+
                }
            }

            /// True when the batch has no messages.
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// The frame a decoder should return for this batch.
            pub fn as_frame(&self) -> Frame<'_> {
                match self {
                    $( Batch::$name(v) => Frame::$name(v) ),+
                }
            }

            /// Copies a decoded frame's messages out of the receive buffer.
            pub fn from_frame(frame: &Frame<'_>) -> Batch {
                match *frame {
                    $( Frame::$name(m) => Batch::$name(m.to_vec()) ),+
                }
            }

            /// Appends with [`append_frame`].
            pub fn append(&self, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
                match self {
                    $( Batch::$name(v) => append_frame(v, out) ),+
                }
            }

            /// Encodes with [`encode_frame`].
            pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
                match self {
                    $( Batch::$name(v) => encode_frame(v, out) ),+
                }
            }

            /// Pushes message by message into a [`FrameWriter`].
            pub fn push_each(&self, w: &mut FrameWriter<'_>) {
                match self {
                    $( Batch::$name(v) => v.iter().for_each(|m| w.push(m)) ),+
                }
            }

            /// Pushes the whole slice into a [`FrameWriter`].
            pub fn push_all(&self, w: &mut FrameWriter<'_>) {
                match self {
                    $( Batch::$name(v) => w.push_all(v) ),+
                }
            }

            /// Pushes message by message into a [`FrameBuf`].
            pub fn buf_push_each(&self, b: &mut FrameBuf) {
                match self {
                    $( Batch::$name(v) => v.iter().for_each(|m| b.push(m)) ),+
                }
            }

            /// Pushes the whole slice into a [`FrameBuf`].
            pub fn buf_push_all(&self, b: &mut FrameBuf) {
                match self {
                    $( Batch::$name(v) => b.push_all(v) ),+
                }
            }

            /// Splits into consecutive batches of the given sizes (which sum to `len`).
            pub fn split(&self, sizes: &[usize]) -> Vec<Batch> {
                let mut at = 0;
                sizes
                    .iter()
                    .map(|&n| {
                        let part = match self {
                            $( Batch::$name(v) => Batch::$name(v[at..at + n].to_vec()) ),+
                        };
                        at += n;
                        part
                    })
                    .collect()
            }

            /// Batches of `kind` with arbitrary messages: exactly one for
            /// Hello, else `0..=max_len`. The match over [`Kind`] is
            /// exhaustive, so a new kind must be added here to compile.
            pub fn strategy(kind: Kind, max_len: usize) -> BoxedStrategy<Batch> {
                let len = if kind == Kind::Hello { 1..=1 } else { 0..=max_len };
                match kind {
                    $( Kind::$name => vec(message::<wire::$name>(), len).prop_map(Batch::$name).boxed() ),+
                }
            }
        }
    };
}

batches! {
    Hello, NewOrder, Cancel, Replace, Heartbeat, Subscribe, OrderQuery, MassCancel, CancelAfter,
    HelloAck, SymbolEntry, Accepted, Rejected, Fill, Canceled, Replaced,
    ServerHeartbeat, Trade, TopOfBook, OrderStatus, SessionError,
    MdTrade, MdTopOfBook, MdDepth, MdStatus,
    ClusterMapRequest, ShardOwner, ClusterMap, ClusterNode, ClusterShard,
}

/// Any kind, any batch.
pub fn any_batch(max_len: usize) -> BoxedStrategy<Batch> {
    proptest::sample::select(Kind::ALL)
        .prop_flat_map(move |kind| Batch::strategy(kind, max_len))
        .boxed()
}

/// The ways a batch can be put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoder {
    /// [`append_frame`].
    AppendFrame,
    /// [`encode_frame`] into a slice.
    EncodeFrame,
    /// [`FrameWriter::push`] per message.
    WriterPush,
    /// [`FrameWriter::push_all`].
    WriterPushAll,
    /// [`FrameBuf::push`] per message.
    BufPush,
    /// [`FrameBuf::push_all`].
    BufPushAll,
}

impl Encoder {
    /// Every encoder.
    pub const ALL: [Encoder; 6] = [
        Encoder::AppendFrame,
        Encoder::EncodeFrame,
        Encoder::WriterPush,
        Encoder::WriterPushAll,
        Encoder::BufPush,
        Encoder::BufPushAll,
    ];

    /// True when an empty batch still makes a (count 0) frame; the writers
    /// only open a frame for a message.
    pub fn frames_empty_batches(self) -> bool {
        matches!(self, Encoder::AppendFrame | Encoder::EncodeFrame)
    }

    /// Appends `batch` to `out` as one frame (as none when the batch is
    /// empty and this encoder is a writer), ending any open frame so that
    /// batches stay separate frames.
    pub fn append(self, batch: &Batch, out: &mut Vec<u8>) {
        match self {
            Encoder::AppendFrame => {
                let n = batch.append(out).expect("a test batch fits one frame");
                assert_eq!(
                    n,
                    wire::HEADER_BYTES + batch.len() * batch.kind().message_bytes()
                );
            }
            Encoder::EncodeFrame => {
                let start = out.len();
                out.resize(
                    start + wire::HEADER_BYTES + batch.len() * batch.kind().message_bytes(),
                    0xA5,
                );
                let n = batch.encode(&mut out[start..]).expect("sized exactly");
                assert_eq!(start + n, out.len());
            }
            Encoder::WriterPush | Encoder::WriterPushAll => {
                let mut w = FrameWriter::new(out);
                if self == Encoder::WriterPush {
                    batch.push_each(&mut w);
                } else {
                    batch.push_all(&mut w);
                }
                w.finish();
            }
            Encoder::BufPush | Encoder::BufPushAll => {
                let mut b = FrameBuf::default();
                if self == Encoder::BufPush {
                    batch.buf_push_each(&mut b);
                } else {
                    batch.buf_push_all(&mut b);
                }
                out.extend_from_slice(b.as_bytes());
            }
        }
    }
}

/// Any encoder.
pub fn any_encoder() -> impl Strategy<Value = Encoder> {
    proptest::sample::select(&Encoder::ALL[..])
}
