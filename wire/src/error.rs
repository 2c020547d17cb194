//! Typed decode and encode errors. Every message is written for a client
//! developer reading a log: it says what was received and what was expected.

use core::fmt;

use crate::types::SessionErrorCode;

/// Why bytes could not be decoded. A frame-level error (everything except
/// [`DecodeError::InvalidEnum`] and [`DecodeError::ReservedBits`]) means the
/// byte stream can no longer be trusted: the peer should be disconnected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The header's length field is smaller than the header itself.
    LengthTooSmall {
        /// The length field as received.
        length: u32,
    },
    /// The header's length field exceeds the decoder's maximum frame size.
    FrameTooLarge {
        /// The length field as received.
        length: u32,
        /// The decoder's configured maximum.
        max_frame_bytes: u32,
    },
    /// The header names a message kind this protocol version does not have.
    UnknownKind {
        /// The kind byte as received.
        kind: u8,
    },
    /// The header's protocol version is not one this decoder speaks.
    UnsupportedVersion {
        /// The version byte as received.
        version: u8,
        /// The newest version this decoder speaks (it speaks
        /// [`crate::PROTOCOL_VERSION_MIN`] up to this).
        supported: u8,
    },
    /// The length does not equal header + count * message size.
    BadCount {
        /// The kind named in the header.
        kind: u8,
        /// The count field as received.
        count: u16,
        /// The length field as received.
        length: u32,
        /// The fixed size of one message of this kind.
        message_bytes: u32,
    },
    /// A message kind that must come alone (Hello) came with another count.
    CountMustBeOne {
        /// The kind named in the header.
        kind: u8,
        /// The count field as received.
        count: u16,
    },
    /// A field holds a value outside its enumeration.
    InvalidEnum {
        /// The field name as documented in PROTOCOL.md.
        field: &'static str,
        /// The value as received.
        value: u64,
    },
    /// Reserved bits or bytes that must be zero are not.
    ReservedBits {
        /// The field name as documented in PROTOCOL.md.
        field: &'static str,
        /// The value as received.
        value: u64,
    },
}

impl DecodeError {
    /// True for errors after which the byte stream cannot be trusted (the
    /// framing itself is wrong), false for a bad value inside a well-framed message.
    pub const fn is_fatal(&self) -> bool {
        !matches!(
            self,
            DecodeError::InvalidEnum { .. } | DecodeError::ReservedBits { .. }
        )
    }

    /// The number a server puts in `SessionError.detail` for this error
    /// (PROTOCOL.md §9.1): the length, kind, count or version received,
    /// or for a bad field value the value itself (for reserved bits: the
    /// reserved bits that were set), saturated at `u32::MAX`.
    pub const fn detail(&self) -> u32 {
        match *self {
            DecodeError::LengthTooSmall { length } | DecodeError::FrameTooLarge { length, .. } => {
                length
            }
            DecodeError::UnknownKind { kind } => kind as u32,
            DecodeError::UnsupportedVersion { version, .. } => version as u32,
            DecodeError::BadCount { count, .. } | DecodeError::CountMustBeOne { count, .. } => {
                count as u32
            }
            DecodeError::InvalidEnum { value, .. } | DecodeError::ReservedBits { value, .. } => {
                if value > u32::MAX as u64 {
                    u32::MAX
                } else {
                    value as u32
                }
            }
        }
    }

    /// The session error code a server answers this error with (see the
    /// SessionError table in PROTOCOL.md).
    pub const fn session_error_code(&self) -> SessionErrorCode {
        match self {
            DecodeError::LengthTooSmall { .. } => SessionErrorCode::MalformedFrame,
            DecodeError::FrameTooLarge { .. } => SessionErrorCode::FrameTooLarge,
            DecodeError::UnknownKind { .. } => SessionErrorCode::UnknownKind,
            DecodeError::UnsupportedVersion { .. } => SessionErrorCode::UnsupportedVersion,
            DecodeError::BadCount { .. } | DecodeError::CountMustBeOne { .. } => {
                SessionErrorCode::BadCount
            }
            DecodeError::InvalidEnum { .. } | DecodeError::ReservedBits { .. } => {
                SessionErrorCode::InvalidField
            }
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::LengthTooSmall { length } => write!(
                f,
                "frame length {length} is smaller than the {}-byte header; the length counts the header too",
                crate::frame::HEADER_BYTES
            ),
            DecodeError::FrameTooLarge {
                length,
                max_frame_bytes,
            } => write!(
                f,
                "frame length {length} exceeds the maximum frame size of {max_frame_bytes} bytes; send smaller batches"
            ),
            DecodeError::UnknownKind { kind } => {
                write!(
                    f,
                    "unknown message kind 0x{kind:02x}; see PROTOCOL.md for the kinds"
                )
            }
            DecodeError::UnsupportedVersion { version, supported } => write!(
                f,
                "protocol version {version} is not supported; this side speaks versions {} to {supported}",
                crate::PROTOCOL_VERSION_MIN
            ),
            DecodeError::BadCount {
                kind,
                count,
                length,
                message_bytes,
            } => write!(
                f,
                "frame of kind 0x{kind:02x} says {count} messages of {message_bytes} bytes but its length is {length}; \
                 expected {} bytes",
                u64::from(crate::frame::HEADER_BYTES as u32)
                    + u64::from(count) * u64::from(message_bytes)
            ),
            DecodeError::CountMustBeOne { kind, count } => {
                write!(
                    f,
                    "a frame of kind 0x{kind:02x} must carry exactly one message, not {count}"
                )
            }
            DecodeError::InvalidEnum { field, value } => {
                write!(
                    f,
                    "field `{field}` has invalid value {value}; see PROTOCOL.md for the allowed values"
                )
            }
            DecodeError::ReservedBits { field, value } => {
                write!(
                    f,
                    "reserved bits of `{field}` must be zero, got 0x{value:x}"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded into a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The caller's buffer cannot take the frame.
    BufferFull {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The batch has more messages than one frame can carry.
    TooManyMessages {
        /// Messages given.
        count: usize,
        /// The most one frame can carry with the configured maximum frame size.
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferFull { needed, available } => {
                write!(
                    f,
                    "output buffer too small: need {needed} bytes, {available} available"
                )
            }
            EncodeError::TooManyMessages { count, max } => {
                write!(f, "{count} messages do not fit one frame; at most {max}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_is_the_number_received_and_saturates() {
        let value = |value| DecodeError::InvalidEnum {
            field: "side",
            value,
        };
        assert_eq!(value(9).detail(), 9);
        assert_eq!(value(u64::from(u32::MAX)).detail(), u32::MAX);
        assert_eq!(value(u64::MAX).detail(), u32::MAX);
        let bits = DecodeError::ReservedBits {
            field: "hello.flags",
            value: 0x8000,
        };
        assert_eq!(bits.detail(), 0x8000);
        let count = DecodeError::CountMustBeOne { kind: 1, count: 0 };
        assert_eq!(count.detail(), 0);
    }
}
