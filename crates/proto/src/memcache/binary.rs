//! memcached's binary protocol: the 24-byte packet header, as a typed view
//! over a byte slice (smoltcp's `wire` style).
//!
//! ferrox does not speak the binary protocol. It only reads enough of a
//! binary request to refuse it the way a binary client understands: a
//! response with the request's opcode and opaque, an error status and a
//! text message, after which the connection is closed. Without that, a
//! binary client waits forever for a text reply that never matches its
//! request.
//!
//! ```text
//!  byte    0         1         2         3
//!        +---------+---------+---------+---------+
//!     0  | magic   | opcode  | key length        |
//!     4  | extras  | data    | vbucket (request) |
//!        | length  | type    | status (response) |
//!     8  | total body length                     |
//!    12  | opaque                                |
//!    16  | cas                                   |
//!    20  |                                       |
//!        +---------+---------+---------+---------+
//! ```
//!
//! Multi-byte fields are big-endian. The layout and status codes are those
//! of memcached's `protocol_binary.h`.

/// The first byte of every binary request. No text command starts with it.
pub const REQUEST_MAGIC: u8 = 0x80;
/// The first byte of every binary response.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Bytes of a header, request or response.
pub const HEADER_LEN: usize = 24;

/// Response status: the server does not know the command.
pub const STATUS_UNKNOWN_COMMAND: u16 = 0x0081;
/// Response status: the command is known but not supported.
pub const STATUS_NOT_SUPPORTED: u16 = 0x0083;

/// Where each field is; a field is as wide as its accessor's type.
mod field {
    use std::ops::Range;

    pub const MAGIC: Range<usize> = 0..1;
    pub const OPCODE: Range<usize> = 1..2;
    pub const KEY_LENGTH: Range<usize> = 2..4;
    pub const EXTRAS_LENGTH: Range<usize> = 4..5;
    pub const DATA_TYPE: Range<usize> = 5..6;
    /// vbucket id in a request, status in a response.
    pub const STATUS: Range<usize> = 6..8;
    pub const BODY_LENGTH: Range<usize> = 8..12;
    pub const OPAQUE: Range<usize> = 12..16;
    pub const CAS: Range<usize> = 16..24;
}

/// Why a buffer is not a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("binary header truncated")]
    Truncated,
}

/// An accessor per header field: `name: type = field::RANGE;`.
macro_rules! header_fields {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $at:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> $ty {
                self.number(field::$at) as $ty
            }
        )*
    };
}

/// A binary protocol header over `buffer`. Once [`Header::new_checked`]
/// has accepted the buffer, no accessor panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// A view without a length check; accessors panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// A view of a buffer that holds at least a whole header.
    pub fn new_checked(buffer: T) -> Result<Header<T>, Error> {
        let header = Header::new_unchecked(buffer);
        header.check_len()?;
        Ok(header)
    }

    /// Whether the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    /// The big-endian number in bytes `at`.
    fn number(&self, at: std::ops::Range<usize>) -> u64 {
        self.buffer.as_ref()[at]
            .iter()
            .fold(0, |n, &b| n << 8 | u64::from(b))
    }

    header_fields! {
        magic: u8 = MAGIC;
        opcode: u8 = OPCODE;
        key_length: u16 = KEY_LENGTH;
        extras_length: u8 = EXTRAS_LENGTH;
        data_type: u8 = DATA_TYPE;
        /// The status of a response (a request's vbucket id).
        status: u16 = STATUS;
        /// Bytes after the header: extras, key and value.
        body_length: u32 = BODY_LENGTH;
        /// Copied from request to response, for the client to match them.
        opaque: u32 = OPAQUE;
        cas: u64 = CAS;
    }
}

/// A response that carries no key, extras or value: only a status and, as
/// memcached sends with its errors, a text message as the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRepr<'a> {
    pub opcode: u8,
    pub opaque: u32,
    pub status: u16,
    pub message: &'a [u8],
}

impl ErrorRepr<'_> {
    /// Bytes [`ErrorRepr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.message.len()
    }

    /// Appends the response to `out`. A message longer than a body can be
    /// (4 GiB) is cut.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let message = &self.message[..self.message.len().min(u32::MAX as usize)];
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let header = &mut out[start..];
        header[field::MAGIC].copy_from_slice(&[RESPONSE_MAGIC]);
        header[field::OPCODE].copy_from_slice(&[self.opcode]);
        // Key length, extras length and data type stay zero, and so does
        // the cas.
        header[field::STATUS].copy_from_slice(&self.status.to_be_bytes());
        header[field::BODY_LENGTH].copy_from_slice(&(message.len() as u32).to_be_bytes());
        header[field::OPAQUE].copy_from_slice(&self.opaque.to_be_bytes());
        out.extend_from_slice(message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary `set` request: key "k", value "v", flags 1, expiry 2,
    /// opaque 7, cas 9.
    #[rustfmt::skip]
    const SET: &[u8] = &[
        0x80, 0x01, 0x00, 0x01, 0x08, 0x00, 0x00, 0x05, // set, key 1, extras 8, vbucket 5
        0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x07, // body 10, opaque 7
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, // cas 9
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, b'k', b'v',
    ];

    #[test]
    fn the_header_fields_are_read_where_memcached_puts_them() {
        let header = Header::new_checked(SET).unwrap();
        assert_eq!(header.magic(), REQUEST_MAGIC);
        assert_eq!(header.opcode(), 0x01);
        assert_eq!(header.key_length(), 1);
        assert_eq!(header.extras_length(), 8);
        assert_eq!(header.data_type(), 0);
        assert_eq!(header.status(), 5);
        assert_eq!(header.body_length(), 10);
        assert_eq!(header.opaque(), 7);
        assert_eq!(header.cas(), 9);
    }

    #[test]
    fn a_short_buffer_is_refused() {
        assert_eq!(Header::new_checked(&SET[..23]), Err(Error::Truncated));
        assert!(Header::new_checked(&SET[..24]).is_ok());
    }

    #[test]
    fn an_error_response_round_trips() {
        let repr = ErrorRepr {
            opcode: 0x1d,
            opaque: 0x0102_0304,
            status: STATUS_NOT_SUPPORTED,
            message: b"no",
        };
        let mut out = vec![b'x'];
        repr.emit(&mut out);
        assert_eq!(out.len(), 1 + repr.buffer_len());
        let header = Header::new_checked(&out[1..]).unwrap();
        assert_eq!(header.magic(), RESPONSE_MAGIC);
        assert_eq!(header.opcode(), 0x1d);
        assert_eq!((header.key_length(), header.extras_length()), (0, 0));
        assert_eq!(header.status(), STATUS_NOT_SUPPORTED);
        assert_eq!(header.body_length(), 2);
        assert_eq!(header.opaque(), 0x0102_0304);
        assert_eq!(header.cas(), 0);
        assert_eq!(&out[1 + HEADER_LEN..], b"no");
    }
}
