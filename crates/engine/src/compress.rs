//! Value compression: a self-describing frame around a string value.
//!
//! The proxy compresses the values it writes to a backend (`SET` and its
//! kin) and decompresses them in replies (`GET`). A stored value says by
//! itself whether it is a frame, so plain values pass through untouched and
//! a pool can turn compression on or off, or change algorithm, without
//! migrating data. Clients that bypass the proxy read this layout
//! (integers little-endian):
//!
//! ```text
//!  offset size
//!  0      4    magic 0xF7 'F' 'X' 'Z'  (0xF7 never starts UTF-8 text)
//!  4      1    format version, 1
//!  5      1    method: 0 stored (the original bytes as they are),
//!               1 LZ4 (one block, no size prefix), 2 zstd (one frame)
//!  6      4    original length, u32
//!  10     4    CRC-32 (IEEE) of the original bytes
//!  14     2    header check: low 16 bits of the CRC-32 of bytes 0..14
//!  16     ..   payload
//! ```
//!
//! A value is a frame only if it is at least [`HEADER_LEN`] bytes long, its
//! magic, version and method are known and its header check matches;
//! anything else is plain. A frame whose payload does not decode to exactly
//! the original length, or whose CRC differs, is [`Corrupt`]: decoding
//! never hands back wrong bytes.
//!
//! [`Codec::encode`] compresses values of at least `min_size` bytes and
//! keeps the frame only when it is smaller. What it leaves uncompressed is
//! written as it is, except a value that would read as a frame: that one is
//! wrapped in a stored frame, so it reads back exactly. Everything appends
//! to a caller's `Vec<u8>` (a backend's output buffer, say) and the codec
//! keeps its compression contexts: a value costs no allocation beyond what
//! that buffer grows by and zstd's own working memory.

use std::fmt;
use std::io::Cursor;

use lz4_flex::block::{self as lz4, CompressTable, DecompressError};
use zstd::bulk::{Compressor, Decompressor};
use zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode;

/// How many bytes a frame's header takes, before the payload.
pub const HEADER_LEN: usize = 16;
/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = [0xF7, b'F', b'X', b'Z'];
/// The frame format this module writes and reads.
pub const VERSION: u8 = 1;

/// The compression a pool writes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// LZ4 (lz4_flex): fast, modest ratio, no levels.
    Lz4,
    /// zstd: better ratio, at the configured level.
    Zstd,
}

impl Algorithm {
    /// The name configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Lz4 => "lz4",
            Algorithm::Zstd => "zstd",
        }
    }

    /// The algorithm [`name`](Self::name) gives, if any.
    pub fn parse(name: &str) -> Option<Algorithm> {
        [Algorithm::Lz4, Algorithm::Zstd]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// How a frame's payload holds the original bytes (the header's byte 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Method {
    Stored = 0,
    Lz4 = 1,
    Zstd = 2,
}

/// What a value is, judged from its header alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Not a frame: the value is its own content.
    Plain,
    /// A frame, its payload not checked yet; `crc` is the original bytes'.
    Framed {
        method: Method,
        original_len: usize,
        crc: u32,
        payload: &'a [u8],
    },
}

/// Reads a value's header: cheap, it checksums 14 bytes at most.
pub fn parse(value: &[u8]) -> Frame<'_> {
    let Some((header, payload)) = value.split_first_chunk::<HEADER_LEN>() else {
        return Frame::Plain;
    };
    let method = match header[5] {
        0 => Method::Stored,
        1 => Method::Lz4,
        2 => Method::Zstd,
        _ => return Frame::Plain,
    };
    let check = u16::from_le_bytes([header[14], header[15]]);
    if header[..4] != MAGIC || header[4] != VERSION || header_check(header) != check {
        return Frame::Plain;
    }
    let original_len = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
    let crc = u32::from_le_bytes([header[10], header[11], header[12], header[13]]);
    Frame::Framed {
        method,
        original_len: original_len as usize,
        crc,
        payload,
    }
}

/// Whether `value` reads as a frame (see [`parse`]).
pub fn is_frame(value: &[u8]) -> bool {
    matches!(parse(value), Frame::Framed { .. })
}

fn header_check(header: &[u8; HEADER_LEN]) -> u16 {
    crc32fast::hash(&header[..14]) as u16
}

fn header(method: Method, original_len: u32, crc: u32) -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = method as u8;
    header[6..10].copy_from_slice(&original_len.to_le_bytes());
    header[10..14].copy_from_slice(&crc.to_le_bytes());
    let check = header_check(&header);
    header[14..].copy_from_slice(&check.to_le_bytes());
    header
}

/// What [`Codec::encode`] wrote; the caller measures the bytes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// A frame with a compressed payload, smaller than the value.
    Compressed,
    /// The value in a stored frame, because as it is it would read as one.
    Stored,
    /// The value as it is.
    Plain,
}

/// A frame whose payload does not give back its original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("compressed value is corrupt ({why})")]
pub struct Corrupt {
    pub why: Why,
}

/// Why a frame is [`Corrupt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    /// The bytes decoded, but their CRC is not the header's.
    #[error("checksum mismatch")]
    Checksum,
    /// The payload ends before the original length is reached.
    #[error("truncated")]
    Truncated,
    /// The payload does not decode, or decodes to too many bytes.
    #[error("malformed payload")]
    Malformed,
    /// The header declares more bytes than the caller accepts.
    #[error("declares {declared} bytes, over the limit {limit}")]
    OverLimit { declared: usize, limit: usize },
}

/// Encodes with one algorithm, decodes any. Its compression contexts are
/// created on first use and kept, hence `&mut self`.
pub struct Codec {
    algorithm: Algorithm,
    level: i32,
    min_size: usize,
    lz4_table: Option<CompressTable>,
    compressor: Option<Compressor<'static>>,
    decompressor: Option<Decompressor<'static>>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("algorithm", &self.algorithm)
            .field("level", &self.level)
            .field("min_size", &self.min_size)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec that compresses values of at least `min_size` bytes.
    /// `level` is zstd's, clamped to the range it accepts (negative levels
    /// are its fast modes, 0 its default); lz4_flex has a single speed and
    /// ignores it.
    pub fn new(algorithm: Algorithm, level: i32, min_size: usize) -> Codec {
        let levels = zstd::compression_level_range();
        let level = level.clamp(*levels.start(), *levels.end());
        Codec {
            algorithm,
            level,
            min_size,
            lz4_table: None,
            compressor: None,
            decompressor: None,
        }
    }

    /// Appends to `out` what to store for `value`. A value over 4 GiB
    /// cannot be framed and goes as it is; neither Redis (512 MiB) nor
    /// memcached stores one.
    pub fn encode(&mut self, value: &[u8], out: &mut Vec<u8>) -> Encoded {
        if value.len() >= self.min_size && self.compress(value, out) {
            return Encoded::Compressed;
        }
        match u32::try_from(value.len()) {
            Ok(len) if is_frame(value) => {
                out.extend_from_slice(&header(Method::Stored, len, crc32fast::hash(value)));
                out.extend_from_slice(value);
                Encoded::Stored
            }
            _ => {
                out.extend_from_slice(value);
                Encoded::Plain
            }
        }
    }

    /// Appends a compressed frame if it is smaller than `value`; leaves
    /// `out` as it was otherwise.
    fn compress(&mut self, value: &[u8], out: &mut Vec<u8>) -> bool {
        let Ok(original_len) = u32::try_from(value.len()) else {
            return false;
        };
        // No frame is smaller than a value that fits in a header.
        if value.len() <= HEADER_LEN {
            return false;
        }
        let start = out.len();
        // Room for the header, written once the payload is known to pay.
        out.extend_from_slice(&[0; HEADER_LEN]);
        let (method, packed) = match self.algorithm {
            Algorithm::Lz4 => {
                let table = self.lz4_table.get_or_insert_with(CompressTable::small);
                (Method::Lz4, lz4_append(table, value, out))
            }
            Algorithm::Zstd => (Method::Zstd, self.zstd_append(value, out)),
        };
        if !packed || out.len() - start >= value.len() {
            out.truncate(start);
            return false;
        }
        let header = header(method, original_len, crc32fast::hash(value));
        out[start..start + HEADER_LEN].copy_from_slice(&header);
        true
    }

    fn zstd_append(&mut self, value: &[u8], out: &mut Vec<u8>) -> bool {
        if self.compressor.is_none() {
            // Fails only when zstd cannot allocate: the value goes uncompressed.
            self.compressor = Compressor::new(self.level).ok();
        }
        let Some(compressor) = self.compressor.as_mut() else {
            return false;
        };
        out.reserve(zstd::compress_bound(value.len()));
        compressor
            .compress_to_buffer(value, &mut after_end(out))
            .is_ok()
    }

    /// Appends the original bytes of `value` to `out`: Ok(true) if it was a
    /// frame, Ok(false) if plain (appended as it is, whatever `max_len`).
    /// A frame declaring more than `max_len` bytes is refused before
    /// anything is allocated for it. On error `out` is left as it was.
    pub fn decode(
        &mut self,
        value: &[u8],
        max_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, Corrupt> {
        let Frame::Framed {
            method,
            original_len,
            crc,
            payload,
        } = parse(value)
        else {
            out.extend_from_slice(value);
            return Ok(false);
        };
        if original_len > max_len {
            let why = Why::OverLimit {
                declared: original_len,
                limit: max_len,
            };
            return Err(Corrupt { why });
        }
        let start = out.len();
        let unpacked = match method {
            Method::Stored if payload.len() < original_len => Err(Why::Truncated),
            Method::Stored if payload.len() > original_len => Err(Why::Malformed),
            Method::Stored => {
                out.extend_from_slice(payload);
                Ok(())
            }
            Method::Lz4 => lz4_append_decoded(payload, original_len, out),
            Method::Zstd => {
                let decompressor = self.decompressor.get_or_insert_with(Decompressor::default);
                zstd_append_decoded(decompressor, payload, original_len, out)
            }
        };
        // Each unpacker appends exactly `original_len` bytes or fails.
        let checked = unpacked.and_then(|()| {
            let intact = crc32fast::hash(&out[start..]) == crc;
            intact.then_some(true).ok_or(Why::Checksum)
        });
        checked.map_err(|why| {
            out.truncate(start);
            Corrupt { why }
        })
    }
}

fn lz4_append(table: &mut CompressTable, value: &[u8], out: &mut Vec<u8>) -> bool {
    // Safe lz4_flex writes to initialized memory only, and insists on room
    // for the worst case.
    let at = out.len();
    out.resize(at + lz4::get_maximum_output_size(value.len()), 0);
    let written = lz4::compress_into_with_table(value, &mut out[at..], table);
    written.map(|written| out.truncate(at + written)).is_ok()
}

fn lz4_append_decoded(payload: &[u8], original_len: usize, out: &mut Vec<u8>) -> Result<(), Why> {
    let at = out.len();
    out.resize(at + original_len, 0);
    // The output ends at `original_len`, so a payload that decodes to more
    // fails rather than grows it.
    match lz4::decompress_into(payload, &mut out[at..]) {
        Ok(written) if written == original_len => Ok(()),
        Ok(_) => Err(Why::Truncated),
        Err(DecompressError::ExpectedAnotherByte | DecompressError::LiteralOutOfBounds) => {
            Err(Why::Truncated)
        }
        Err(_) => Err(Why::Malformed),
    }
}

fn zstd_append_decoded(
    decompressor: &mut Decompressor<'static>,
    payload: &[u8],
    original_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), Why> {
    out.reserve_exact(original_len);
    // Spare capacity may exceed `original_len`: a longer result is refused
    // by length rather than by room.
    match decompressor.decompress_to_buffer(payload, &mut after_end(out)) {
        Ok(written) if written == original_len => Ok(()),
        Ok(written) if written < original_len => Err(Why::Truncated),
        Ok(_) => Err(Why::Malformed),
        Err(error) => {
            let zstd_error = error
                .get_ref()
                .and_then(|e| e.downcast_ref::<zstd::Error>());
            match zstd_error {
                Some(e) if e.is(ZSTD_ErrorCode::ZSTD_error_srcSize_wrong) => Err(Why::Truncated),
                _ => Err(Why::Malformed),
            }
        }
    }
}

/// A zstd destination that appends to `out`, in its spare capacity: zstd's
/// own `WriteBuf` for a `Vec` writes from index 0.
fn after_end(out: &mut Vec<u8>) -> Cursor<&mut Vec<u8>> {
    let end = out.len() as u64;
    let mut cursor = Cursor::new(out);
    cursor.set_position(end);
    cursor
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use proptest::sample::{select, Index};
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

    /// "hi" in a stored frame, and in an LZ4 frame (one token: 2 literals).
    const STORED_HI: [u8; 18] = *b"\xf7FXZ\x01\x00\x02\0\0\0\xac\x2a\x93\xd8\x73\xe2hi";
    const LZ4_HI: [u8; 19] = *b"\xf7FXZ\x01\x01\x02\0\0\0\xac\x2a\x93\xd8\x30\xf6\x20hi";
    const BOTH: [Algorithm; 2] = [Algorithm::Lz4, Algorithm::Zstd];

    /// Whether it was a frame, and what it appended; checks that an error
    /// leaves `out` as it was.
    fn decode(codec: &mut Codec, value: &[u8], max_len: usize) -> Result<(bool, Vec<u8>), Why> {
        let mut out = b"<".to_vec();
        let result = codec.decode(value, max_len, &mut out);
        assert!(result.is_ok() || out == b"<");
        result
            .map(|was_frame| (was_frame, out.split_off(1)))
            .map_err(|e| e.why)
    }

    fn reader() -> Codec {
        Codec::new(Algorithm::Lz4, 3, 0)
    }

    fn round_trip(codec: &mut Codec, value: &[u8]) -> (Encoded, Vec<u8>) {
        let mut framed = Vec::new();
        let encoded = codec.encode(value, &mut framed);
        let decoded = decode(codec, &framed, value.len());
        assert_eq!(decoded, Ok((encoded != Encoded::Plain, value.to_vec())));
        (encoded, framed)
    }

    fn json_like(len: usize) -> Vec<u8> {
        let row = |i: u64| format!(r#"{{"id":{i},"user":"u{}","on":{}}},"#, i * 7919, i % 3);
        (0..)
            .map(row)
            .flat_map(String::into_bytes)
            .take(len)
            .collect()
    }

    fn noise(len: usize) -> Vec<u8> {
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        (0..len).map(|i| hasher.hash_one(i) as u8).collect()
    }

    #[test]
    fn the_layout_is_pinned() {
        let hi = Ok((true, b"hi".to_vec()));
        assert_eq!(decode(&mut reader(), &STORED_HI, 2), hi);
        assert_eq!(decode(&mut reader(), &LZ4_HI, 2), hi);
        let stored_hi = header(Method::Stored, 2, crc32fast::hash(b"hi"));
        assert_eq!(stored_hi, STORED_HI[..HEADER_LEN]);
        for algorithm in BOTH {
            assert_eq!(Algorithm::parse(algorithm.name()), Some(algorithm));
        }
        assert_eq!(Algorithm::parse("gzip"), None);
    }

    #[test]
    fn round_trips_at_every_size() {
        for algorithm in BOTH {
            let mut codec = Codec::new(algorithm, 3, 64);
            for len in [0, 1, 63, 64, 4096, 1 << 20] {
                let value = json_like(len);
                let (encoded, framed) = round_trip(&mut codec, &value);
                if len < 64 {
                    assert_eq!((encoded, &framed), (Encoded::Plain, &value));
                } else if len >= 4096 {
                    assert_eq!(encoded, Encoded::Compressed, "{algorithm:?} {len}");
                    assert!(framed.len() < value.len() / 2, "{algorithm:?} {len}");
                }
            }
        }
        // A pool that changed algorithm still reads what it wrote before.
        let (value, mut framed) = (json_like(4096), Vec::new());
        Codec::new(Algorithm::Zstd, 0, 0).encode(&value, &mut framed);
        assert_eq!(decode(&mut reader(), &framed, 4096), Ok((true, value)));
    }

    #[test]
    fn incompressible_stays_plain_unless_it_looks_like_a_frame() {
        let random = noise(4096);
        let lookalike = [&STORED_HI[..], &random].concat();
        for algorithm in BOTH {
            let mut codec = Codec::new(algorithm, 3, 64);
            assert_eq!(
                round_trip(&mut codec, &random),
                (Encoded::Plain, random.clone())
            );
            // Too short to compress, then incompressible: wrapped either way.
            for value in [&STORED_HI[..], &lookalike] {
                let (encoded, framed) = round_trip(&mut codec, value);
                assert_eq!(encoded, Encoded::Stored);
                assert_eq!(framed.len(), HEADER_LEN + value.len());
            }
        }
    }

    #[test]
    fn damage_is_corrupt() {
        let value = json_like(4096);
        for algorithm in BOTH {
            let mut codec = Codec::new(algorithm, 3, 0);
            let (_, framed) = round_trip(&mut codec, &value);
            let mut flipped = framed.clone();
            *flipped.last_mut().unwrap() ^= 0x40;
            assert!(decode(&mut codec, &flipped, 4096).is_err());
            let truncated = &framed[..framed.len() - 1];
            assert_eq!(decode(&mut codec, truncated, 4096), Err(Why::Truncated));
        }
        let mut wrong = STORED_HI;
        wrong[17] = b'o';
        assert_eq!(decode(&mut reader(), &wrong, 2), Err(Why::Checksum));
        assert_eq!(
            decode(&mut reader(), &STORED_HI[..17], 2),
            Err(Why::Truncated)
        );
        assert_eq!(decode(&mut reader(), &LZ4_HI[..18], 2), Err(Why::Truncated));
        let longer = [&STORED_HI[..], b"!"].concat();
        assert_eq!(decode(&mut reader(), &longer, 2), Err(Why::Malformed));
    }

    #[test]
    fn a_length_over_the_limit_is_refused_unallocated() {
        let huge = [&header(Method::Stored, u32::MAX, 0)[..], b"x"].concat();
        let mut out = Vec::new();
        let corrupt = reader().decode(&huge, 1 << 20, &mut out).unwrap_err();
        assert_eq!(out.capacity(), 0);
        let message = "compressed value is corrupt (declares 4294967295 bytes, over the limit \
                       1048576)";
        assert_eq!(corrupt.to_string(), message);
        let checksum = Corrupt { why: Why::Checksum }.to_string();
        assert_eq!(checksum, "compressed value is corrupt (checksum mismatch)");
    }

    #[test]
    fn a_bad_header_means_plain() {
        for at in 0..HEADER_LEN {
            let mut value = STORED_HI;
            value[at] ^= 1;
            assert_eq!(
                decode(&mut reader(), &value, 2),
                Ok((false, value.to_vec()))
            );
        }
        assert!(!is_frame(&STORED_HI[..HEADER_LEN - 1]));
    }

    /// Arbitrary bytes, some compressible, some behind the magic, some
    /// behind a valid header with arbitrary fields.
    fn values() -> impl Strategy<Value = Vec<u8>> {
        let methods = select(vec![Method::Stored, Method::Lz4, Method::Zstd]);
        let lengths = prop_oneof![0u32..600, any::<u32>()];
        let framed = (methods, lengths, any::<u32>(), vec(any::<u8>(), 0..600))
            .prop_map(|(method, len, crc, tail)| [&header(method, len, crc)[..], &tail].concat());
        let magic =
            vec(any::<u8>(), 0..64).prop_map(|tail| [&MAGIC[..], &[VERSION], &tail].concat());
        let random = vec(any::<u8>(), 0..8192);
        prop_oneof![random, vec(0u8..4, 0..8192), magic, framed]
    }

    /// A repeated unit with a few bytes changed.
    fn compressible() -> impl Strategy<Value = Vec<u8>> {
        let changes = vec((any::<Index>(), any::<u8>()), 0..8);
        (vec(any::<u8>(), 1..16), 64usize..4096, changes).prop_map(|(unit, len, changes)| {
            let mut value: Vec<u8> = unit.iter().cycle().take(len).copied().collect();
            for (at, byte) in changes {
                value[at.index(len)] = byte;
            }
            value
        })
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(
            value in prop_oneof![values(), compressible()],
            algorithm in select(BOTH.to_vec()),
            min_size in 0usize..64,
        ) {
            round_trip(&mut Codec::new(algorithm, 3, min_size), &value);
        }

        #[test]
        fn non_frames_pass_untouched(value in values()) {
            let decoded = decode(&mut reader(), &value, 1 << 16);
            if !is_frame(&value) {
                prop_assert_eq!(decoded, Ok((false, value)));
            } else {
                prop_assert!(decoded.is_err() || decoded.unwrap().0);
            }
        }

        #[test]
        fn a_changed_payload_byte_never_decodes_wrong(
            value in compressible(),
            algorithm in select(BOTH.to_vec()),
            at in any::<Index>(),
            flip in 1u8..=255,
        ) {
            let mut codec = Codec::new(algorithm, 3, 0);
            let mut framed = Vec::new();
            prop_assume!(codec.encode(&value, &mut framed) == Encoded::Compressed);
            let payload_len = framed.len() - HEADER_LEN;
            framed[HEADER_LEN + at.index(payload_len)] ^= flip;
            let decoded = decode(&mut codec, &framed, value.len());
            prop_assert!(decoded.is_err() || decoded == Ok((true, value)));
        }
    }
}
