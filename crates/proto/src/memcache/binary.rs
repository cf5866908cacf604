//! memcached's binary protocol: the 24-byte packet header, as a typed view
//! over a byte slice (smoltcp's `wire` style).
//!
//! [`parse_request`] reads one whole request packet into a [`Request`]
//! (ranges of the caller's buffer, extras decoded), checking each opcode's
//! lengths as memcached does; [`Response`] writes a response packet. The
//! proxy serves binary clients by translating each request into a meta
//! command for its servers and the meta reply back into a response
//! packet, so both protocols share pools, placement and connections.
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

use std::ops::Range;

pub mod meta;

/// The first byte of every binary request. No text command starts with it.
pub const REQUEST_MAGIC: u8 = 0x80;
/// The first byte of every binary response.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Bytes of a header, request or response.
pub const HEADER_LEN: usize = 24;

/// Response status: success.
pub const STATUS_OK: u16 = 0x0000;
/// Response status: no item has the key.
pub const STATUS_KEY_NOT_FOUND: u16 = 0x0001;
/// Response status: an item has the key (`add`), or its cas differs.
pub const STATUS_KEY_EXISTS: u16 = 0x0002;
/// Response status: the value is larger than the server takes.
pub const STATUS_TOO_LARGE: u16 = 0x0003;
/// Response status: the request's fields are not valid for its opcode.
pub const STATUS_INVALID_ARGUMENTS: u16 = 0x0004;
/// Response status: the item was not stored (`append` to a missing key).
pub const STATUS_NOT_STORED: u16 = 0x0005;
/// Response status: `incr`/`decr` of a value that is not a number.
pub const STATUS_NON_NUMERIC: u16 = 0x0006;
/// Response status: authentication is needed, or failed.
pub const STATUS_AUTH_ERROR: u16 = 0x0020;
/// Response status: the server does not know the command.
pub const STATUS_UNKNOWN_COMMAND: u16 = 0x0081;
/// Response status: the server is out of memory.
pub const STATUS_OUT_OF_MEMORY: u16 = 0x0082;
/// Response status: the command is known but not supported.
pub const STATUS_NOT_SUPPORTED: u16 = 0x0083;
/// Response status: the server failed to serve the request.
pub const STATUS_INTERNAL_ERROR: u16 = 0x0084;
/// Response status: the server is too busy to take the request.
pub const STATUS_BUSY: u16 = 0x0085;
/// Response status: try again later (a rate limit, say).
pub const STATUS_TEMPORARY_FAILURE: u16 = 0x0086;

/// The opcodes of memcached's `protocol_binary.h` that [`Op`] knows.
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// What a request asks for; its quiet variant is the same op with
/// [`Request::quiet`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    /// `get` whose response carries the key.
    GetK,
    /// Get and touch.
    Gat,
    GatK,
    /// Sets the expiry; the response carries the flags, not the value.
    Touch,
    Set,
    Add,
    Replace,
    Append,
    Prepend,
    Delete,
    Increment,
    Decrement,
    Noop,
    Quit,
    Version,
    Stat,
    Flush,
    /// An opcode not listed here (SASL, verbosity, ...): answered "unknown
    /// command", and the connection goes on.
    Unknown,
}

impl Op {
    /// The op of `opcode`, and whether it is the quiet variant (no
    /// response on success; for gets, none on a miss).
    pub fn of(code: u8) -> (Op, bool) {
        use self::opcode as o;
        match code {
            o::GET => (Op::Get, false),
            o::GETQ => (Op::Get, true),
            o::GETK => (Op::GetK, false),
            o::GETKQ => (Op::GetK, true),
            o::GAT => (Op::Gat, false),
            o::GATQ => (Op::Gat, true),
            o::GATK => (Op::GatK, false),
            o::GATKQ => (Op::GatK, true),
            o::TOUCH => (Op::Touch, false),
            o::SET => (Op::Set, false),
            o::SETQ => (Op::Set, true),
            o::ADD => (Op::Add, false),
            o::ADDQ => (Op::Add, true),
            o::REPLACE => (Op::Replace, false),
            o::REPLACEQ => (Op::Replace, true),
            o::APPEND => (Op::Append, false),
            o::APPENDQ => (Op::Append, true),
            o::PREPEND => (Op::Prepend, false),
            o::PREPENDQ => (Op::Prepend, true),
            o::DELETE => (Op::Delete, false),
            o::DELETEQ => (Op::Delete, true),
            o::INCREMENT => (Op::Increment, false),
            o::INCREMENTQ => (Op::Increment, true),
            o::DECREMENT => (Op::Decrement, false),
            o::DECREMENTQ => (Op::Decrement, true),
            o::NOOP => (Op::Noop, false),
            o::QUIT => (Op::Quit, false),
            o::QUITQ => (Op::Quit, true),
            o::VERSION => (Op::Version, false),
            o::STAT => (Op::Stat, false),
            o::FLUSH => (Op::Flush, false),
            o::FLUSHQ => (Op::Flush, true),
            _ => (Op::Unknown, false),
        }
    }

    /// Whether the request is well formed for this op: memcached's checks
    /// of extras, key and value lengths (it closes the connection on any
    /// other shape).
    fn accepts(self, extras: usize, key: usize, value: usize) -> bool {
        match self {
            Op::Get | Op::GetK | Op::Delete => extras == 0 && key > 0 && value == 0,
            Op::Gat | Op::GatK | Op::Touch => extras == 4 && key > 0 && value == 0,
            Op::Set | Op::Add | Op::Replace => extras == 8 && key > 0,
            Op::Append | Op::Prepend => extras == 0 && key > 0,
            Op::Increment | Op::Decrement => extras == 20 && key > 0 && value == 0,
            Op::Noop | Op::Quit | Op::Version => extras == 0 && key == 0 && value == 0,
            Op::Stat => extras == 0 && value == 0,
            Op::Flush => (extras == 0 || extras == 4) && key == 0 && value == 0,
            Op::Unknown => true,
        }
    }
}

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

/// One request packet, as ranges of the buffer it was parsed from, its
/// extras decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub opcode: u8,
    pub op: Op,
    /// The quiet variant of `op`.
    pub quiet: bool,
    /// Copied into the response, for the client to match it.
    pub opaque: u32,
    /// A compare-and-swap value (0: none).
    pub cas: u64,
    pub key: Range<usize>,
    pub value: Range<usize>,
    /// Client flags (set, add, replace).
    pub flags: u32,
    /// Expiry (set, add, replace, touch, gat, incr/decr, flush), as
    /// memcached reads an exptime: seconds from now up to 30 days, else a
    /// Unix time. For incr/decr, `0xffff_ffff` means "do not create".
    pub expiration: u32,
    /// incr/decr: the amount, and the value a missing counter starts at.
    pub delta: u64,
    pub initial: u64,
    /// Bytes of the packet.
    pub len: usize,
}

/// incr/decr's expiration that says a missing counter is not created.
pub const NO_CREATE: u32 = 0xffff_ffff;

/// A request refused before it could be served: its response, after which
/// the connection is closed (the stream cannot be trusted to be in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub opcode: u8,
    pub opaque: u32,
    pub status: u16,
    pub message: &'static str,
}

impl Refusal {
    /// Appends the error response to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        Response::error(
            self.opcode,
            self.opaque,
            self.status,
            self.message.as_bytes(),
        )
        .emit(out);
    }
}

/// Bounds on a request: keys and values as in the text protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_key: usize,
    pub max_value: usize,
}

/// Reads one request packet from the front of `input`, which starts with
/// [`REQUEST_MAGIC`]. `Ok(None)` until the whole packet is there.
pub fn parse_request(input: &[u8], limits: &Limits) -> Result<Option<Request>, Refusal> {
    let Ok(header) = Header::new_checked(input) else {
        return Ok(None);
    };
    let (opcode, opaque) = (header.opcode(), header.opaque());
    let refuse = |status, message| Refusal {
        opcode,
        opaque,
        status,
        message,
    };
    if header.magic() != REQUEST_MAGIC {
        return Err(refuse(STATUS_INVALID_ARGUMENTS, "not a binary request"));
    }
    let body = header.body_length() as usize;
    let (extras, key) = (
        header.extras_length() as usize,
        header.key_length() as usize,
    );
    let Some(value) = body.checked_sub(extras + key) else {
        return Err(refuse(
            STATUS_INVALID_ARGUMENTS,
            "key and extras longer than the body",
        ));
    };
    if key > limits.max_key {
        return Err(refuse(STATUS_INVALID_ARGUMENTS, "key too long"));
    }
    if value > limits.max_value {
        return Err(refuse(STATUS_TOO_LARGE, "object too large for cache"));
    }
    let (op, quiet) = Op::of(opcode);
    if !op.accepts(extras, key, value) {
        return Err(refuse(STATUS_INVALID_ARGUMENTS, "invalid arguments"));
    }
    let len = HEADER_LEN + body;
    if input.len() < len {
        return Ok(None);
    }
    let ext = &input[HEADER_LEN..HEADER_LEN + extras];
    let be = |at: usize, n: usize| {
        ext.get(at..at + n)
            .map_or(0, |b| b.iter().fold(0u64, |v, &x| v << 8 | u64::from(x)))
    };
    let mut request = Request {
        opcode,
        op,
        quiet,
        opaque,
        cas: header.cas(),
        key: HEADER_LEN + extras..HEADER_LEN + extras + key,
        value: HEADER_LEN + extras + key..len,
        flags: 0,
        expiration: 0,
        delta: 0,
        initial: 0,
        len,
    };
    match op {
        Op::Set | Op::Add | Op::Replace => {
            request.flags = be(0, 4) as u32;
            request.expiration = be(4, 4) as u32;
        }
        Op::Gat | Op::GatK | Op::Touch | Op::Flush => request.expiration = be(0, 4) as u32,
        Op::Increment | Op::Decrement => {
            request.delta = be(0, 8);
            request.initial = be(8, 8);
            request.expiration = be(16, 4) as u32;
        }
        _ => {}
    }
    Ok(Some(request))
}

/// A response packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response<'a> {
    pub opcode: u8,
    pub opaque: u32,
    pub status: u16,
    pub cas: u64,
    pub extras: &'a [u8],
    pub key: &'a [u8],
    /// The value; for an error, a text message, as memcached sends.
    pub value: &'a [u8],
}

impl<'a> Response<'a> {
    /// A response with a status and a message only.
    pub fn error(opcode: u8, opaque: u32, status: u16, message: &'a [u8]) -> Response<'a> {
        Response {
            opcode,
            opaque,
            status,
            cas: 0,
            extras: &[],
            key: &[],
            value: message,
        }
    }

    /// Bytes [`Response::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.extras.len() + self.key.len() + self.value.len()
    }

    /// Appends the response to `out`. Fields longer than the header can
    /// say are cut: extras at 255 bytes, the key at 64 KiB, the body at
    /// 4 GiB.
    pub fn emit(&self, out: &mut Vec<u8>) {
        let extras = &self.extras[..self.extras.len().min(u8::MAX as usize)];
        let key = &self.key[..self.key.len().min(u16::MAX as usize)];
        let room = u32::MAX as usize - extras.len() - key.len();
        let value = &self.value[..self.value.len().min(room)];
        let body = extras.len() + key.len() + value.len();
        let start = out.len();
        out.resize(start + HEADER_LEN, 0);
        let header = &mut out[start..];
        header[field::MAGIC].copy_from_slice(&[RESPONSE_MAGIC]);
        header[field::OPCODE].copy_from_slice(&[self.opcode]);
        header[field::KEY_LENGTH].copy_from_slice(&(key.len() as u16).to_be_bytes());
        header[field::EXTRAS_LENGTH].copy_from_slice(&[extras.len() as u8]);
        // The data type stays zero (raw bytes).
        header[field::STATUS].copy_from_slice(&self.status.to_be_bytes());
        header[field::BODY_LENGTH].copy_from_slice(&(body as u32).to_be_bytes());
        header[field::OPAQUE].copy_from_slice(&self.opaque.to_be_bytes());
        header[field::CAS].copy_from_slice(&self.cas.to_be_bytes());
        out.extend_from_slice(extras);
        out.extend_from_slice(key);
        out.extend_from_slice(value);
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
        let repr = Response::error(0x1d, 0x0102_0304, STATUS_NOT_SUPPORTED, b"no");
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

    #[test]
    fn a_getk_hit_is_laid_out_as_memcached_sends_it() {
        let mut out = Vec::new();
        Response {
            opcode: opcode::GETK,
            opaque: 3,
            status: STATUS_OK,
            cas: 0x0102,
            extras: &[0, 0, 0, 7],
            key: b"k",
            value: b"val",
        }
        .emit(&mut out);
        #[rustfmt::skip]
        assert_eq!(out, [
            0x81, 0x0c, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, // getk, key 1, extras 4
            0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x03, // body 8, opaque 3
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, // cas
            0x00, 0x00, 0x00, 0x07, b'k', b'v', b'a', b'l', // flags 7, key, value
        ]);
    }

    const LIMITS: Limits = Limits {
        max_key: 250,
        max_value: 1 << 20,
    };

    #[test]
    fn a_set_is_parsed_with_its_extras_once_whole() {
        for cut in 0..SET.len() {
            assert_eq!(
                parse_request(&SET[..cut], &LIMITS),
                Ok(None),
                "cut at {cut}"
            );
        }
        let mut input = SET.to_vec();
        input.extend_from_slice(b"next");
        let request = parse_request(&input, &LIMITS).unwrap().unwrap();
        assert_eq!((request.op, request.quiet), (Op::Set, false));
        assert_eq!((request.opaque, request.cas), (7, 9));
        assert_eq!((request.flags, request.expiration), (1, 2));
        assert_eq!(&input[request.key.clone()], b"k");
        assert_eq!(&input[request.value.clone()], b"v");
        assert_eq!(request.len, SET.len());
    }

    #[test]
    fn incr_extras_and_quiet_variants_are_decoded() {
        #[rustfmt::skip]
        let incrq: &[u8] = &[
            0x80, 0x15, 0x00, 0x01, 0x14, 0x00, 0x00, 0x00, // incrq, key 1, extras 20
            0x00, 0x00, 0x00, 0x15, 0x00, 0x00, 0x00, 0x00, // body 21
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0, 0, 0, 0, 0, 0, 0, 5, // delta
            0, 0, 0, 0, 0, 0, 1, 0, // initial
            0xff, 0xff, 0xff, 0xff, // expiration: do not create
            b'n',
        ];
        let request = parse_request(incrq, &LIMITS).unwrap().unwrap();
        assert_eq!((request.op, request.quiet), (Op::Increment, true));
        assert_eq!((request.delta, request.initial), (5, 256));
        assert_eq!(request.expiration, NO_CREATE);
    }

    #[test]
    fn malformed_requests_are_refused_with_their_opcode_and_opaque() {
        // A get with extras.
        let mut get = SET.to_vec();
        get[1] = opcode::GET;
        let refusal = parse_request(&get, &LIMITS).unwrap_err();
        assert_eq!(refusal.status, STATUS_INVALID_ARGUMENTS);
        assert_eq!((refusal.opcode, refusal.opaque), (opcode::GET, 7));
        // Key and extras longer than the body: refused from the header.
        let mut short = SET[..HEADER_LEN].to_vec();
        short[11] = 3;
        assert_eq!(
            parse_request(&short, &LIMITS).unwrap_err().status,
            STATUS_INVALID_ARGUMENTS
        );
        // A value over the limit: refused before it arrives.
        let mut big = SET[..HEADER_LEN].to_vec();
        big[8..12].copy_from_slice(&(9 + (1u32 << 20) + 1).to_be_bytes());
        assert_eq!(
            parse_request(&big, &LIMITS).unwrap_err().status,
            STATUS_TOO_LARGE
        );
        // An unknown opcode is a request, answered without closing.
        let mut sasl = SET.to_vec();
        sasl[1] = 0x20;
        let request = parse_request(&sasl, &LIMITS).unwrap().unwrap();
        assert_eq!(request.op, Op::Unknown);
    }
}
