//! Transparent value compression (`[pools.NAME.compression]`): string
//! values written through the proxy are stored compressed when that pays,
//! behind the self-describing header of [`crate::compress`], and read back
//! decompressed. Values without the header pass untouched both ways, so a
//! pool can turn compression on or off without migrating data.
//!
//! What each Redis command does with a compressed value:
//!
//! | commands | on a key compression covers |
//! |---|---|
//! | SET, SETNX, SETEX, PSETEX, GETSET, MSET, MSETNX | the value is compressed when it pays |
//! | GET, GETDEL, GETEX, MGET, SET ... GET, GETSET | the reply is decompressed |
//! | APPEND, SETRANGE, GETRANGE, SUBSTR, STRLEN, SETBIT, GETBIT, BITCOUNT, BITPOS, BITFIELD(_RO), BITOP, LCS | refused: on stored bytes they would read or write the compressed form |
//! | GET family inside MULTI | refused (EXEC's reply is not decompressed) |
//! | INCR family, INCRBYFLOAT | passed: Redis refuses a compressed value as "not an integer" |
//! | everything else (DUMP/RESTORE, COPY, RENAME, EVAL, ...) | passed: the bytes move as they are |
//!
//! memcached: `set`/`add`/`replace`/`cas` data is compressed and marked
//! with the pool's flag bit; `get`/`gets`/`gat`/`gats` replies with the bit
//! are decompressed and given back with the client's own flags. A store
//! whose flags already use the bit, `append`/`prepend`, and meta or binary
//! reads (`mg`), which would see the stored form, are refused on covered
//! keys.

use std::io::Write;
use std::sync::OnceLock;

use ferrox_proto::memcache;

use crate::command::{self, CommandId};
use crate::compress::{Algorithm, Codec, Encoded};

use super::PoolCounters;

/// The largest value a reply may decompress to (Redis's own limit on a
/// string).
pub(super) const MAX_DECODED: usize = 512 << 20;

/// A pool's compression: its codec, which keys it covers, and the
/// memcached flag bit.
#[derive(Debug)]
pub(super) struct Compression {
    codec: Codec,
    /// Key globs; empty covers every key.
    keys: Vec<Vec<u8>>,
    /// memcached: the flag bit that marks a compressed value.
    pub flag: u32,
    /// A value being compressed, before its length is written.
    scratch: Vec<u8>,
}

/// What a slot's reply needs before the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(in crate::engine) enum Decode {
    #[default]
    None,
    /// A bulk string (GET); any other reply passes.
    Bulk,
    /// An array of bulk strings (MGET).
    Array,
    /// memcached `VALUE` blocks.
    Memcache,
}

/// What a Redis command is to compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Pass,
    /// Writes values: arguments `first`, `first + step`, ... (`step` 0:
    /// only `first`); a reply with a value (SET ... GET, GETSET) is
    /// decompressed.
    Store {
        first: u8,
        step: u8,
    },
    /// Reads values; the reply needs this.
    Read(Decode),
    /// Would read or write a value's stored bytes.
    Refuse,
}

/// The role of Redis command `id`: a table, for the request path.
pub(super) fn role(id: CommandId) -> Role {
    static ROLES: OnceLock<[Role; command::COMMAND_IDS]> = OnceLock::new();
    ROLES.get_or_init(|| {
        let mut roles = [Role::Pass; command::COMMAND_IDS];
        for (name, id) in command::redis_commands() {
            roles[id.index()] = match name {
                b"SET" | b"SETNX" | b"GETSET" => Role::Store { first: 2, step: 0 },
                b"SETEX" | b"PSETEX" => Role::Store { first: 3, step: 0 },
                b"MSET" | b"MSETNX" => Role::Store { first: 2, step: 2 },
                b"GET" | b"GETDEL" | b"GETEX" => Role::Read(Decode::Bulk),
                b"MGET" => Role::Read(Decode::Array),
                b"APPEND" | b"SETRANGE" | b"GETRANGE" | b"SUBSTR" | b"STRLEN" | b"SETBIT"
                | b"GETBIT" | b"BITCOUNT" | b"BITPOS" | b"BITFIELD" | b"BITFIELD_RO" | b"BITOP"
                | b"LCS" => Role::Refuse,
                _ => Role::Pass,
            };
        }
        roles
    })[id.index()]
}

impl Compression {
    pub fn new(config: &ferrox_config::Compression) -> Compression {
        let algorithm = match config.algorithm {
            ferrox_config::CompressionAlgorithm::Lz4 => Algorithm::Lz4,
            ferrox_config::CompressionAlgorithm::Zstd => Algorithm::Zstd,
        };
        Compression {
            codec: Codec::new(algorithm, config.level, config.min_size),
            keys: config.keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
            flag: 1 << config.flag_bit,
            scratch: Vec::new(),
        }
    }

    /// Whether `key`'s values are compressed.
    pub fn covers(&self, key: &[u8]) -> bool {
        self.keys.is_empty() || self.keys.iter().any(|glob| crate::acl::glob(glob, key))
    }

    /// Appends `value` as a RESP bulk string, compressed when it pays.
    pub fn write_bulk(&mut self, out: &mut Vec<u8>, value: &[u8], counters: &mut PoolCounters) {
        self.encode(value, counters);
        ferrox_proto::resp::write_bulk(out, &self.scratch);
    }

    /// Compresses `value` into `self.scratch`; says whether it is stored
    /// as a frame or as it is.
    fn encode(&mut self, value: &[u8], counters: &mut PoolCounters) -> Encoded {
        self.scratch.clear();
        let started = std::time::Instant::now();
        let encoded = self.codec.encode(value, &mut self.scratch);
        counters.compress_ns += started.elapsed().as_nanos() as u64;
        if encoded == Encoded::Compressed {
            counters.compressed_values += 1;
            counters.compressed_bytes_in += value.len() as u64;
            counters.compressed_bytes_out += self.scratch.len() as u64;
        }
        encoded
    }

    /// Gives back the room a huge value grew.
    pub fn shed(&mut self) {
        if self.scratch.capacity() > 1 << 20 {
            self.scratch = Vec::new();
        }
    }

    /// Writes a Redis request with the values of covered keys compressed:
    /// `values` are the argument indices of values, and `key_of` the index
    /// of each one's key.
    pub fn write_request(
        &mut self,
        out: &mut Vec<u8>,
        request: &[u8],
        args: &[std::ops::Range<usize>],
        store: Role,
        counters: &mut PoolCounters,
    ) {
        let Role::Store { first, step } = store else {
            unreachable!("only stores are rewritten")
        };
        let (first, step) = (first as usize, step as usize);
        ferrox_proto::resp::write_array_header(out, args.len());
        for (i, arg) in args.iter().enumerate() {
            let bytes = &request[arg.clone()];
            let is_value = i >= first && (i == first || (step > 0 && (i - first) % step == 0));
            // MSET's key is just before its value; the others' is arg 1.
            let key = if step > 0 { i.wrapping_sub(1) } else { 1 };
            if is_value && self.covers(&request[args[key].clone()]) {
                self.write_bulk(out, bytes, counters);
            } else {
                ferrox_proto::resp::write_bulk(out, bytes);
            }
        }
    }

    /// Writes `reply` for the client as `decode` says, decompressed.
    pub fn decode_reply(
        &mut self,
        decode: Decode,
        reply: &[u8],
        out: &mut Vec<u8>,
        counters: &mut PoolCounters,
    ) {
        let done = match decode {
            Decode::None => Err(()),
            Decode::Bulk => self.decode_bulk(reply, out, counters),
            Decode::Array => self.decode_array(reply, out, counters),
            Decode::Memcache => self.decode_values(reply, out, counters),
        };
        if done.is_err() {
            // Not the shape expected (an error, a nil): as it is.
            out.extend_from_slice(reply);
        }
    }

    /// One bulk string, whole: `$N\r\n...\r\n`; anything else is `Err`
    /// and nothing is written.
    fn decode_bulk(
        &mut self,
        reply: &[u8],
        out: &mut Vec<u8>,
        counters: &mut PoolCounters,
    ) -> Result<(), ()> {
        let (value, _) = bulk(reply).ok_or(())?;
        if !crate::compress::is_frame(value) {
            out.extend_from_slice(reply);
            return Ok(());
        }
        self.scratch.clear();
        let started = std::time::Instant::now();
        let decoded = self.codec.decode(value, MAX_DECODED, &mut self.scratch);
        counters.compress_ns += started.elapsed().as_nanos() as u64;
        match decoded {
            Ok(_) => {
                counters.decompressed_values += 1;
                ferrox_proto::resp::write_bulk(out, &self.scratch);
            }
            Err(corrupt) => {
                counters.corrupt_values += 1;
                ferrox_proto::resp::write_error(
                    out,
                    format_args!("ERR ferrox: the stored value is unreadable: {corrupt}"),
                );
            }
        }
        Ok(())
    }

    /// An array whose elements are bulk strings or nils (MGET).
    fn decode_array(
        &mut self,
        reply: &[u8],
        out: &mut Vec<u8>,
        counters: &mut PoolCounters,
    ) -> Result<(), ()> {
        let (count, mut at) = header(reply, b'*').ok_or(())?;
        let start = out.len();
        out.extend_from_slice(&reply[..at]);
        for _ in 0..count {
            let element = &reply[at..];
            let len = match element.first() {
                Some(b'$') if element.starts_with(b"$-1\r\n") => Some(5),
                Some(b'$') => bulk(element).map(|(_, len)| len),
                // RESP2's nil bulk, RESP3's null.
                Some(b'_') => element.starts_with(b"_\r\n").then_some(3),
                _ => None,
            };
            let Some(len) = len else {
                out.truncate(start);
                return Err(());
            };
            if self.decode_bulk(&element[..len], out, counters).is_err() {
                out.extend_from_slice(&element[..len]);
            }
            at += len;
        }
        Ok(())
    }

    /// memcached `VALUE key flags bytes [cas]` blocks, then `END` (or
    /// anything): blocks with the flag bit are decompressed and lose it.
    fn decode_values(
        &mut self,
        reply: &[u8],
        out: &mut Vec<u8>,
        counters: &mut PoolCounters,
    ) -> Result<(), ()> {
        let start = out.len();
        let mut at = 0;
        while reply[at..].starts_with(b"VALUE ") {
            let line_end = at + find_crlf(&reply[at..]).ok_or(())?;
            let line = &reply[at..line_end];
            let mut tokens = line.split(|&b| b == b' ');
            let (_, key, flags, bytes) = (
                tokens.next(),
                tokens.next().ok_or(())?,
                parse_u64(tokens.next().ok_or(())?)?,
                parse_u64(tokens.next().ok_or(())?)? as usize,
            );
            let cas = tokens.next();
            let data_start = line_end + 2;
            let data_end = data_start + bytes;
            if reply.len() < data_end + 2 {
                out.truncate(start);
                return Err(());
            }
            let data = &reply[data_start..data_end];
            let flags = flags as u32;
            if flags & self.flag == 0 {
                out.extend_from_slice(&reply[at..data_end + 2]);
            } else {
                self.scratch.clear();
                let started = std::time::Instant::now();
                let decoded = self.codec.decode(data, MAX_DECODED, &mut self.scratch);
                counters.compress_ns += started.elapsed().as_nanos() as u64;
                if let Err(corrupt) = decoded {
                    // memcached has no error for one key of a get: the
                    // whole reply is the error.
                    counters.corrupt_values += 1;
                    out.truncate(start);
                    out.extend_from_slice(b"SERVER_ERROR ferrox: the stored value of ");
                    out.extend_from_slice(&key[..key.len().min(250)]);
                    let _ = write!(out, " is unreadable: {corrupt}\r\n");
                    return Ok(());
                }
                counters.decompressed_values += 1;
                out.extend_from_slice(b"VALUE ");
                out.extend_from_slice(key);
                let _ = write!(out, " {} {}", flags & !self.flag, self.scratch.len());
                if let Some(cas) = cas {
                    out.push(b' ');
                    out.extend_from_slice(cas);
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.scratch);
                out.extend_from_slice(b"\r\n");
            }
            at = data_end + 2;
        }
        out.extend_from_slice(&reply[at..]);
        Ok(())
    }

    /// Why a memcached store may not go through compression: its flags
    /// already use the bit that marks compressed values.
    pub fn store_refusal(&self, request: &[u8], req: &memcache::Request) -> Option<&'static str> {
        let flags = req.tokens.get(2).map(|t| &request[t.clone()])?;
        let flags = parse_u64(flags).ok()? as u32;
        (flags & self.flag != 0)
            .then_some("the flags use the bit this pool marks compressed values with")
    }

    /// Writes a memcached storage request (`set`, `add`, `replace`,
    /// `cas`) with its data compressed when it pays, the flag bit set then,
    /// and token `skip` (a `noreply`) left out.
    pub fn write_store(
        &mut self,
        out: &mut Vec<u8>,
        request: &[u8],
        req: &memcache::Request,
        skip: Option<usize>,
        counters: &mut PoolCounters,
    ) {
        let token = |i: usize| &request[req.tokens[i].clone()];
        let flags = parse_u64(token(2)).unwrap_or(0) as u32;
        let data = req.data.clone().expect("a storage request has data");
        let value = &request[data.start..data.end - 2];
        let framed = self.encode(value, counters) != Encoded::Plain;
        let len = self.scratch.len();
        for (i, range) in req.tokens.iter().enumerate() {
            if Some(i) == skip {
                continue;
            }
            if i > 0 {
                out.push(b' ');
            }
            match i {
                // Numbers written in place: no allocation per store.
                2 if framed => {
                    let _ = write!(out, "{}", flags | self.flag);
                }
                4 => {
                    let _ = write!(out, "{len}");
                }
                _ => out.extend_from_slice(&request[range.clone()]),
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.scratch[..len]);
        out.extend_from_slice(b"\r\n");
    }
}

/// A bulk string at the front of `reply`: its data, and its whole length.
fn bulk(reply: &[u8]) -> Option<(&[u8], usize)> {
    let (len, at) = header(reply, b'$')?;
    let end = at.checked_add(len)?;
    (reply.len() >= end + 2 && &reply[end..end + 2] == b"\r\n").then(|| (&reply[at..end], end + 2))
}

/// `<kind><n>\r\n` at the front of `reply`: `n` and where the line ends.
fn header(reply: &[u8], kind: u8) -> Option<(usize, usize)> {
    if reply.first() != Some(&kind) {
        return None;
    }
    let end = find_crlf(reply)?;
    let n = parse_u64(&reply[1..end]).ok()?;
    Some((usize::try_from(n).ok()?, end + 2))
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn parse_u64(digits: &[u8]) -> Result<u64, ()> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(())
}
