//! The pipeline's vocabulary, shared by sessions and backend connections:
//! a request's place in its session's pipeline ([`Slot`], named from a
//! backend's FIFO by [`SlotRef`]), what reply to expect for it
//! ([`Expect`]: where the reply ends, and whether the client is owed it),
//! and how the replies of a split request's pieces are merged into one.

use std::ops::Range;

use ferrox_proto::{memcache, resp};

use crate::command::Merge;

/// Names a slot from a backend's FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotRef {
    pub session: u32,
    pub generation: u32,
    pub seq: u64,
    pub piece: u16,
}

/// How to find where a reply ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    Resp,
    Memcache(memcache::ReplyKind),
}

/// Whether the client is owed the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suppress {
    No,
    /// memcached `noreply`: the proxy asked for a reply (to keep the FIFO
    /// in step) and drops it.
    Always,
    /// A meta command's `q` flag: drop the replies it would have hidden.
    Quiet(memcache::Command),
}

/// What reply a request sent to a server waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Expect {
    pub shape: Shape,
    pub suppress: Suppress,
}

impl Expect {
    /// A RESP reply, owed to the client.
    pub const RESP: Expect = Expect {
        shape: Shape::Resp,
        suppress: Suppress::No,
    };
}

/// How a slot's reply is made from its pieces' replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Combine {
    /// One piece, or a reply the proxy made: written as it is.
    #[default]
    Pass,
    /// A Redis multi-key command split per server.
    Redis(Merge),
    /// A memcached multi-get split per server.
    MemcacheGet,
    /// A `SCAN` of server `shard` (in configuration order): the cursor of
    /// its reply is rewritten to carry the shard, and a finished shard
    /// hands on to `next` (none: the scan is over).
    Scan { shard: u16, next: Option<u16> },
    /// `INFO` with its keyspace section: the proxy's own sections (kept
    /// in the slot's `keys`), then every server's keyspace added up.
    Info,
    /// Pub/sub confirmations the proxy made (in the slot's `keys`), given
    /// once every server confirmed; a server's error instead, if any.
    Confirm,
    /// A memcached binary request sent as a meta command: the meta reply
    /// becomes a binary response (the request's key, for the ops that
    /// return it, is in the slot's `keys`).
    Binary(memcache::binary::meta::Bridged),
}

/// Shards a proxy `SCAN` cursor can name: the low byte of the cursor.
pub(super) const SCAN_SHARDS: usize = 256;

/// Room a recycled slot keeps in each of its buffers: a spare slot is
/// reused by any request, so what a large reply grew goes back (a burst
/// leaves up to `SPARE_SLOTS_KEPT` spares).
const SLOT_KEEP: usize = 32 << 10;

/// One request's slot. Slots and their buffers are recycled.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// Pieces whose replies have not arrived.
    pub pending: u16,
    pub combine: Combine,
    /// The reply, or the pieces' replies one after another.
    pub reply: Vec<u8>,
    /// Where each piece's reply is in `reply` (merges only).
    pub pieces: Vec<Range<usize>>,
    /// The piece that holds each key, in key order (merges only).
    pub key_piece: Vec<u16>,
    /// A memcached multi-get's keys, one after another, and where each
    /// ends in it: its values are merged back into key order.
    pub keys: Vec<u8>,
    pub key_ends: Vec<u32>,
    /// Close the session once this slot's reply is written.
    pub close_after: bool,
    /// A cluster pool's request: the bytes each piece was sent with, one
    /// after another, and where each piece's are, to send them again
    /// where a redirection says; and how many redirections it followed.
    pub sent: Vec<u8>,
    pub sent_at: Vec<Range<usize>>,
    pub redirects: u8,
    /// Who its request was, when a rate limit counts reply bytes; and the
    /// bytes already written out for it.
    pub rate: Option<super::ratelimit::Who>,
    pub out_bytes: usize,
    /// When the request arrived.
    pub opened: super::Micros,
    /// What its reply needs before the client sees it.
    pub decode: super::compression::Decode,
    /// A read of a hot key whose reply fills the cache (the key is in
    /// `keys`): the cache's ticket when it was sent, and the server.
    pub fill: Option<(crate::hotkey::FillTicket, u32)>,
    /// Its request is not a plain read (in a pool with a hot-key cache).
    pub may_write: bool,
}

impl Slot {
    /// Bytes of room its buffers hold.
    pub fn capacity(&self) -> usize {
        self.reply.capacity()
            + self.pieces.capacity() * std::mem::size_of::<Range<usize>>()
            + self.key_piece.capacity() * 2
            + self.keys.capacity()
            + self.key_ends.capacity() * 4
            + self.sent.capacity()
            + self.sent_at.capacity() * std::mem::size_of::<Range<usize>>()
    }

    /// Gives back large buffers before the slot is kept for reuse, so a
    /// client that once fetched a large value does not pin its room.
    pub fn shed(&mut self) {
        if self.reply.capacity() > SLOT_KEEP {
            self.reply = Vec::new();
        }
        if self.keys.capacity() > SLOT_KEEP {
            self.keys = Vec::new();
            self.key_ends = Vec::new();
        }
        if self.sent.capacity() > SLOT_KEEP {
            self.sent = Vec::new();
        }
    }

    /// Makes a recycled slot ready for a new request.
    pub fn reset(&mut self) {
        self.pending = 0;
        self.combine = Combine::Pass;
        self.reply.clear();
        self.pieces.clear();
        self.key_piece.clear();
        self.keys.clear();
        self.key_ends.clear();
        self.close_after = false;
        self.sent.clear();
        self.sent_at.clear();
        self.redirects = 0;
        self.rate = None;
        self.out_bytes = 0;
        self.decode = super::compression::Decode::None;
        self.fill = None;
        self.may_write = false;
    }

    /// Keeps the bytes piece `piece` was sent with.
    pub fn keep_sent(&mut self, piece: u16, bytes: &[u8]) {
        let start = self.sent.len();
        self.sent.extend_from_slice(bytes);
        let piece = piece as usize;
        if self.sent_at.len() <= piece {
            self.sent_at.resize(piece + 1, 0..0);
        }
        self.sent_at[piece] = start..self.sent.len();
    }

    /// Stores piece `piece`'s reply.
    pub fn fill(&mut self, piece: u16, bytes: &[u8]) {
        let start = self.reply.len();
        self.reply.extend_from_slice(bytes);
        if self.combine != Combine::Pass {
            let piece = piece as usize;
            if self.pieces.len() <= piece {
                self.pieces.resize(piece + 1, 0..0);
            }
            self.pieces[piece] = start..self.reply.len();
        }
        self.pending -= 1;
    }

    /// Writes the finished reply to `out`. `cursors` is scratch.
    pub fn write(&self, out: &mut Vec<u8>, limits: &resp::Limits, cursors: &mut Vec<usize>) {
        let piece = |i: usize| &self.reply[self.pieces[i].clone()];
        match self.combine {
            Combine::Pass => out.extend_from_slice(&self.reply),
            Combine::Redis(merge) => {
                // An error from any piece is the reply.
                if let Some(error) = (0..self.pieces.len())
                    .map(piece)
                    .find(|p| p.first() == Some(&b'-'))
                {
                    out.extend_from_slice(error);
                    return;
                }
                let merged = match merge {
                    Merge::Array => self.merge_arrays(out, limits, cursors),
                    Merge::Sum => merge_sum((0..self.pieces.len()).map(piece), out),
                    Merge::Ok => merge_ok((0..self.pieces.len()).map(piece), out),
                    Merge::Concat => merge_concat((0..self.pieces.len()).map(piece), out),
                    Merge::AnyKey => {
                        let found = (0..self.pieces.len()).map(piece).find(|p| !is_null(p));
                        out.extend_from_slice(found.unwrap_or(piece(0)));
                        Ok(())
                    }
                    Merge::First => {
                        out.extend_from_slice(piece(0));
                        Ok(())
                    }
                    Merge::Min => merge_min((0..self.pieces.len()).map(piece), out),
                    Merge::SumPairs => {
                        merge_sum_pairs((0..self.pieces.len()).map(piece), limits, out)
                    }
                };
                if merged.is_err() {
                    out.extend_from_slice(b"-ERR ferrox: a server sent an unexpected reply\r\n");
                }
            }
            Combine::Scan { shard, next } => {
                let reply = piece(0);
                if reply.first() == Some(&b'-') {
                    out.extend_from_slice(reply);
                } else if rewrite_scan_cursor(reply, shard, next, out).is_err() {
                    out.extend_from_slice(
                        b"-ERR ferrox: a server sent an unexpected SCAN reply\r\n",
                    );
                }
            }
            Combine::Confirm => {
                match (0..self.pieces.len())
                    .map(piece)
                    .find(|p| p.first() == Some(&b'-'))
                {
                    Some(error) => out.extend_from_slice(error),
                    None => out.extend_from_slice(&self.keys),
                }
            }
            Combine::Binary(bridged) => {
                memcache::binary::meta::write_response(&self.reply, bridged, &self.keys, out)
            }
            Combine::Info => {
                let pieces = (0..self.pieces.len()).map(piece);
                if let Some(error) = pieces.clone().find(|p| p.first() == Some(&b'-')) {
                    out.extend_from_slice(error);
                    return;
                }
                match super::info::merge_keyspace(pieces) {
                    Some(keyspace) => {
                        // One bulk string: the proxy's sections, a blank
                        // line, the keyspace.
                        let gap: &[u8] = if self.keys.is_empty() { b"" } else { b"\r\n" };
                        let len = self.keys.len() + gap.len() + keyspace.len();
                        out.push(b'$');
                        out.extend_from_slice(len.to_string().as_bytes());
                        out.extend_from_slice(b"\r\n");
                        for part in [&self.keys[..], gap, keyspace.as_bytes()] {
                            out.extend_from_slice(part);
                        }
                        out.extend_from_slice(b"\r\n");
                    }
                    None => out.extend_from_slice(
                        b"-ERR ferrox: a server sent an unexpected INFO keyspace reply\r\n",
                    ),
                }
            }
            Combine::MemcacheGet => {
                // Each piece is VALUE blocks, then END or an error line;
                // an error from any server is the reply.
                let last_line = |p: &'_ [u8]| {
                    let mut values = memcache::values(p);
                    values.by_ref().for_each(drop);
                    values.position()
                };
                for p in (0..self.pieces.len()).map(piece) {
                    let at = last_line(p);
                    if &p[at..] != b"END\r\n" {
                        out.extend_from_slice(&p[at..]);
                        return;
                    }
                }
                self.merge_values(out, cursors);
                out.extend_from_slice(b"END\r\n");
            }
        }
    }

    /// A memcached multi-get: the `VALUE` blocks in the order of the keys
    /// asked for, as one memcached would answer (each server answers its
    /// keys in order and leaves misses out). Blocks a server sent in
    /// another order still go out, after the others: nothing is dropped.
    fn merge_values(&self, out: &mut Vec<u8>, cursors: &mut Vec<usize>) {
        cursors.clear();
        cursors.extend(self.pieces.iter().map(|r| r.start));
        let mut key_start = 0;
        for (&piece, &key_end) in self.key_piece.iter().zip(&self.key_ends) {
            let key = &self.keys[key_start..key_end as usize];
            key_start = key_end as usize;
            let piece = piece as usize;
            let (at, end) = (cursors[piece], self.pieces[piece].end);
            if let Some((name, block)) = memcache::values(&self.reply[at..end]).next() {
                if &self.reply[at + name.start..at + name.end] == key {
                    out.extend_from_slice(&self.reply[at + block.start..at + block.end]);
                    cursors[piece] = at + block.end;
                }
            }
        }
        for (piece, range) in self.pieces.iter().enumerate() {
            let rest = &self.reply[cursors[piece]..range.end];
            let mut values = memcache::values(rest);
            values.by_ref().for_each(drop);
            out.extend_from_slice(&rest[..values.position()]);
        }
    }

    /// `MGET`: one array, its elements taken from each key's piece in key
    /// order. On a malformed piece, `out` is left as it was.
    fn merge_arrays(
        &self,
        out: &mut Vec<u8>,
        limits: &resp::Limits,
        cursors: &mut Vec<usize>,
    ) -> Result<(), ()> {
        let mark = out.len();
        cursors.clear();
        for range in &self.pieces {
            let p = &self.reply[range.clone()];
            let header = p.iter().position(|&b| b == b'\n').ok_or(())? + 1;
            if p.first() != Some(&b'*') {
                return Err(());
            }
            cursors.push(range.start + header);
        }
        resp::write_array_header(out, self.key_piece.len());
        for &piece in &self.key_piece {
            let piece = piece as usize;
            let end = self.pieces[piece].end;
            let at = cursors[piece];
            match resp::reply_len(&self.reply[at..end], limits) {
                Ok(Some(len)) => {
                    out.extend_from_slice(&self.reply[at..at + len]);
                    cursors[piece] = at + len;
                }
                _ => {
                    out.truncate(mark);
                    return Err(());
                }
            }
        }
        Ok(())
    }
}

/// `WAIT`: the least of the pieces' integers.
fn merge_min<'a>(pieces: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) -> Result<(), ()> {
    merge_integers(pieces, out, i64::MAX, i64::min)
}

/// `DEL`, `EXISTS`, ...: the pieces' integers summed.
fn merge_sum<'a>(pieces: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) -> Result<(), ()> {
    merge_integers(pieces, out, 0, i64::saturating_add)
}

/// The pieces' integer replies folded into one.
fn merge_integers<'a>(
    pieces: impl Iterator<Item = &'a [u8]>,
    out: &mut Vec<u8>,
    start: i64,
    fold: impl Fn(i64, i64) -> i64,
) -> Result<(), ()> {
    let mut folded = start;
    for p in pieces {
        let digits = p
            .strip_prefix(b":")
            .and_then(|p| p.strip_suffix(b"\r\n"))
            .ok_or(())?;
        let n: i64 = std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or(())?;
        folded = fold(folded, n);
    }
    resp::write_integer(out, folded);
    Ok(())
}

/// `PUBSUB NUMSUB`: every piece is the same flat array of `name, count`
/// pairs; the names of the first, with each count summed over the pieces.
/// On a malformed piece, `out` is left as it was.
fn merge_sum_pairs<'a>(
    pieces: impl Iterator<Item = &'a [u8]> + Clone,
    limits: &resp::Limits,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    // Each piece's elements, as (start, end) in the piece.
    let elements = |p: &[u8]| -> Result<Vec<(usize, usize)>, ()> {
        let header = p.iter().position(|&b| b == b'\n').ok_or(())? + 1;
        let n: usize = p
            .strip_prefix(b"*")
            .and_then(|p| std::str::from_utf8(&p[..header - 3]).ok())
            .and_then(|n| n.parse().ok())
            .ok_or(())?;
        let mut at = header;
        let mut found = Vec::with_capacity(n);
        for _ in 0..n {
            let len = resp::reply_len(&p[at..], limits).ok().flatten().ok_or(())?;
            found.push((at, at + len));
            at += len;
        }
        Ok(found)
    };
    let first = pieces.clone().next().ok_or(())?;
    let names = elements(first)?;
    if names.len() % 2 == 1 {
        return Err(());
    }
    let mut sums = vec![0i64; names.len() / 2];
    for p in pieces {
        let found = elements(p)?;
        if found.len() != names.len() {
            return Err(());
        }
        for (sum, &(start, end)) in sums.iter_mut().zip(found.iter().skip(1).step_by(2)) {
            let digits = p[start..end]
                .strip_prefix(b":")
                .and_then(|d| d.strip_suffix(b"\r\n"))
                .ok_or(())?;
            let n: i64 = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse().ok())
                .ok_or(())?;
            *sum += n;
        }
    }
    resp::write_array_header(out, names.len());
    for (pair, sum) in names.chunks(2).zip(sums) {
        out.extend_from_slice(&first[pair[0].0..pair[0].1]);
        resp::write_integer(out, sum);
    }
    Ok(())
}

/// A null reply, RESP2 or RESP3.
fn is_null(reply: &[u8]) -> bool {
    matches!(reply, b"$-1\r\n" | b"_\r\n" | b"*-1\r\n")
}

/// `KEYS`: one array of every piece's elements.
fn merge_concat<'a>(
    pieces: impl Iterator<Item = &'a [u8]> + Clone,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    let split = |p: &'a [u8]| -> Result<(usize, &'a [u8]), ()> {
        let end = p.iter().position(|&b| b == b'\n').ok_or(())?;
        let count = p
            .strip_prefix(b"*")
            .map(|p| &p[..end - 2])
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse().ok())
            .ok_or(())?;
        Ok((count, &p[end + 1..]))
    };
    let mut total = 0;
    for p in pieces.clone() {
        total += split(p)?.0;
    }
    resp::write_array_header(out, total);
    for p in pieces {
        out.extend_from_slice(split(p)?.1);
    }
    Ok(())
}

/// A server's `SCAN` reply (`*2`, its cursor, its keys) with the cursor
/// made the proxy's: the server's cursor above the shard's byte, or, when
/// the shard is done, the next shard's first cursor (0 once none is left).
fn rewrite_scan_cursor(
    reply: &[u8],
    shard: u16,
    next: Option<u16>,
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    let rest = reply.strip_prefix(b"*2\r\n$").ok_or(())?;
    let len_end = rest.iter().position(|&b| b == b'\r').ok_or(())?;
    let len: usize = std::str::from_utf8(&rest[..len_end])
        .ok()
        .and_then(|l| l.parse().ok())
        .ok_or(())?;
    let digits = rest.get(len_end + 2..len_end + 2 + len).ok_or(())?;
    let keys = rest.get(len_end + 2 + len + 2..).ok_or(())?;
    let cursor: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(())?;
    let ours = match (cursor, next) {
        (0, None) => 0,
        (0, Some(next)) => u64::from(next),
        // A cursor with its top byte in use cannot carry the shard.
        (c, _) if c >> 56 != 0 => return Err(()),
        (c, _) => c << 8 | u64::from(shard),
    };
    out.extend_from_slice(b"*2\r\n");
    resp::write_bulk(out, ours.to_string().as_bytes());
    out.extend_from_slice(keys);
    Ok(())
}

/// `MSET`: `+OK` when every piece said so.
fn merge_ok<'a>(mut pieces: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) -> Result<(), ()> {
    if pieces.all(|p| p == b"+OK\r\n") {
        out.extend_from_slice(b"+OK\r\n");
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(combine: Combine, pieces: &[&[u8]], key_piece: &[u16]) -> Slot {
        let mut slot = Slot {
            combine,
            pending: pieces.len() as u16,
            key_piece: key_piece.to_vec(),
            ..Slot::default()
        };
        // Fill in reverse to show arrival order does not matter.
        for (i, p) in pieces.iter().enumerate().rev() {
            slot.fill(i as u16, p);
        }
        assert_eq!(slot.pending, 0);
        slot
    }

    fn written(slot: &Slot) -> Vec<u8> {
        let mut out = Vec::new();
        slot.write(&mut out, &resp::Limits::default(), &mut Vec::new());
        out
    }

    #[test]
    fn mget_pieces_merge_in_key_order() {
        // Keys a (piece 0), b (piece 1), c (piece 0), d (piece 1).
        let s = slot(
            Combine::Redis(Merge::Array),
            &[b"*2\r\n$1\r\nA\r\n$-1\r\n", b"*2\r\n$1\r\nB\r\n$1\r\nD\r\n"],
            &[0, 1, 0, 1],
        );
        assert_eq!(
            written(&s),
            b"*4\r\n$1\r\nA\r\n$1\r\nB\r\n$-1\r\n$1\r\nD\r\n"
        );
    }

    #[test]
    fn sums_oks_and_errors() {
        let s = slot(Combine::Redis(Merge::Sum), &[b":2\r\n", b":1\r\n"], &[]);
        assert_eq!(written(&s), b":3\r\n");
        let s = slot(Combine::Redis(Merge::Ok), &[b"+OK\r\n", b"+OK\r\n"], &[]);
        assert_eq!(written(&s), b"+OK\r\n");
        let s = slot(
            Combine::Redis(Merge::Sum),
            &[b":2\r\n", b"-ERR ferrox: server x unavailable\r\n"],
            &[],
        );
        assert_eq!(written(&s), b"-ERR ferrox: server x unavailable\r\n");
        let s = slot(Combine::Redis(Merge::Sum), &[b":2\r\n", b"+what\r\n"], &[]);
        assert!(written(&s).starts_with(b"-ERR ferrox: a server sent"));
        let s = slot(
            Combine::Redis(Merge::Array),
            &[b"*1\r\n$1\r\nA\r\n", b"*1\r\n"],
            &[0, 1],
        );
        assert!(written(&s).starts_with(b"-ERR ferrox: a server sent"));
    }

    #[test]
    fn pubsub_counts_add_up_per_channel_and_arrays_join() {
        let s = slot(
            Combine::Redis(Merge::SumPairs),
            &[
                b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:0\r\n",
                b"*4\r\n$1\r\na\r\n:0\r\n$1\r\nb\r\n:2\r\n",
            ],
            &[],
        );
        assert_eq!(written(&s), b"*4\r\n$1\r\na\r\n:1\r\n$1\r\nb\r\n:2\r\n");
        let s = slot(
            Combine::Redis(Merge::SumPairs),
            &[b"*2\r\n$1\r\na\r\n:1\r\n", b"*0\r\n"],
            &[],
        );
        assert!(written(&s).starts_with(b"-ERR ferrox: a server sent"));
        let s = slot(
            Combine::Redis(Merge::Concat),
            &[b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*1\r\n$1\r\nb\r\n"],
            &[],
        );
        assert_eq!(written(&s), b"*2\r\n$1\r\na\r\n$1\r\nb\r\n");
        let s = slot(Combine::Redis(Merge::First), &[b":3\r\n", b":3\r\n"], &[]);
        assert_eq!(written(&s), b":3\r\n");
    }

    fn with_keys(mut s: Slot, keys: &[&str]) -> Slot {
        for k in keys {
            s.keys.extend_from_slice(k.as_bytes());
            s.key_ends.push(s.keys.len() as u32);
        }
        s
    }

    #[test]
    fn memcache_gets_merge_values_in_key_order() {
        // Keys c, a, b, c, d: c and a on piece 0, b and d on piece 1, and
        // d missing; memcached answers a repeated key each time.
        let s = with_keys(
            slot(
                Combine::MemcacheGet,
                &[
                    b"VALUE c 0 1\r\nC\r\nVALUE a 0 1\r\nA\r\nVALUE c 0 1\r\nC\r\nEND\r\n",
                    b"VALUE b 0 1\r\nB\r\nEND\r\n",
                ],
                &[0, 0, 1, 0, 1],
            ),
            &["c", "a", "b", "c", "d"],
        );
        assert_eq!(
            written(&s),
            b"VALUE c 0 1\r\nC\r\nVALUE a 0 1\r\nA\r\nVALUE b 0 1\r\nB\r\nVALUE c 0 1\r\nC\r\nEND\r\n"
        );
        // A server that answers out of order loses nothing.
        let s = with_keys(
            slot(
                Combine::MemcacheGet,
                &[
                    b"VALUE b 0 1\r\nB\r\nVALUE a 0 1\r\nA\r\nEND\r\n",
                    b"VALUE c 0 1\r\nC\r\nEND\r\n",
                ],
                &[0, 0, 1],
            ),
            &["a", "b", "c"],
        );
        assert_eq!(
            written(&s),
            b"VALUE b 0 1\r\nB\r\nVALUE c 0 1\r\nC\r\nVALUE a 0 1\r\nA\r\nEND\r\n"
        );
    }

    #[test]
    fn memcache_gets_concatenate_values() {
        let s = slot(
            Combine::MemcacheGet,
            &[b"VALUE a 0 1\r\nA\r\nEND\r\n", b"SERVER_ERROR down\r\n"],
            &[],
        );
        assert_eq!(written(&s), b"SERVER_ERROR down\r\n");
        // A server that fails part-way through its values.
        let s = slot(
            Combine::MemcacheGet,
            &[
                b"END\r\n",
                b"VALUE b 0 1\r\nB\r\nSERVER_ERROR out of memory\r\n",
            ],
            &[],
        );
        assert_eq!(written(&s), b"SERVER_ERROR out of memory\r\n");
    }
}
