//! RESP2 and RESP3 framing.
//!
//! [`parse_request`] reads one client request, either a RESP array of bulk
//! strings or an inline command, into argument ranges of the caller's
//! buffer (zero-copy; the argument list is a caller-owned `Vec` reused from
//! request to request, so nothing is allocated once it has grown).
//! [`reply_len`] finds where one complete RESP2/RESP3 value ends, so a
//! backend's reply can be passed to the client as it is, without decoding.
//! The `write_*` functions emit the values the proxy makes itself.
//!
//! "Not enough bytes yet" is `Ok(None)`, never an error; an error means the
//! stream can never become valid and names what is wrong, for a
//! `-ERR Protocol error: ...` reply.

use std::ops::Range;

mod emit;
pub use emit::{
    write_array_header, write_bulk, write_bulk_array, write_error, write_integer, write_map_header,
    write_null,
};

/// Bounds on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string.
    pub max_bulk: usize,
    /// Most elements in one array (arguments in one request).
    pub max_array: usize,
    /// Deepest nesting of aggregates in a reply.
    pub max_depth: usize,
    /// Longest inline command line.
    pub max_inline: usize,
}

impl Default for Limits {
    /// Redis's own defaults for bulk length and inline size.
    fn default() -> Self {
        Limits {
            max_bulk: 512 << 20,
            max_array: 1 << 20,
            max_depth: 32,
            max_inline: 64 << 10,
        }
    }
}

/// Why a stream is not valid RESP. The message is what a client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProtocolError(pub &'static str);

/// The longest header line (`*<count>` or `$<len>`) that can be valid.
const MAX_HEADER: usize = 32;

/// The line at the start of `input` without its CRLF, and the bytes it
/// takes with the CRLF. `Ok(None)`: no CRLF yet within `limit` bytes.
fn line<'a>(
    input: &'a [u8],
    limit: usize,
    too_long: &'static str,
) -> Result<Option<(&'a [u8], usize)>, ProtocolError> {
    match memchr_cr(input) {
        Some(cr) if input.get(cr + 1) == Some(&b'\n') => Ok(Some((&input[..cr], cr + 2))),
        Some(cr) if cr + 1 < input.len() => Err(ProtocolError("CR not followed by LF")),
        _ if input.len() > limit => Err(ProtocolError(too_long)),
        _ => Ok(None),
    }
}

fn memchr_cr(input: &[u8]) -> Option<usize> {
    input.iter().position(|&b| b == b'\r')
}

/// A decimal integer as RESP writes lengths and counts.
fn integer(digits: &[u8]) -> Option<i64> {
    let (negative, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits.iter().fold(0i64, |n, &d| n * 10 + (d - b'0') as i64);
    Some(if negative { -value } else { value })
}

/// Parses one request at the start of `input` into `args` (cleared first)
/// as ranges of `input`. Returns the bytes it takes, `Ok(None)` while
/// incomplete, or why it can never be valid.
pub fn parse_request(
    input: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ProtocolError> {
    args.clear();
    match input.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(input, limits, args),
        Some(_) => parse_inline(input, limits, args),
    }
}

fn parse_inline(
    input: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ProtocolError> {
    // Inline commands may end in a bare LF, as redis-server accepts.
    let Some(lf) = input.iter().position(|&b| b == b'\n') else {
        return if input.len() > limits.max_inline {
            Err(ProtocolError("too big inline request"))
        } else {
            Ok(None)
        };
    };
    if lf > limits.max_inline {
        return Err(ProtocolError("too big inline request"));
    }
    let end = if lf > 0 && input[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    let mut at = 0;
    while at < end {
        while at < end && (input[at] == b' ' || input[at] == b'\t') {
            at += 1;
        }
        let start = at;
        while at < end && input[at] != b' ' && input[at] != b'\t' {
            at += 1;
        }
        if at > start {
            if args.len() == limits.max_array {
                return Err(ProtocolError("too many arguments"));
            }
            args.push(start..at);
        }
    }
    Ok(Some(lf + 1))
}

fn parse_multibulk(
    input: &[u8],
    limits: &Limits,
    args: &mut Vec<Range<usize>>,
) -> Result<Option<usize>, ProtocolError> {
    let Some((head, mut at)) = line(input, MAX_HEADER, "invalid multibulk length")? else {
        return Ok(None);
    };
    let count = match integer(&head[1..]) {
        Some(n) if n > limits.max_array as i64 => {
            return Err(ProtocolError("invalid multibulk length"))
        }
        Some(n) if n >= 0 => n as usize,
        // `*-1` and `*0` carry no command; redis-server skips them.
        Some(_) => 0,
        None => return Err(ProtocolError("invalid multibulk length")),
    };
    for _ in 0..count {
        let Some((head, used)) = line(&input[at..], MAX_HEADER, "invalid bulk length")? else {
            return Ok(None);
        };
        if head.first() != Some(&b'$') {
            return Err(ProtocolError("expected '$'"));
        }
        let len = match integer(&head[1..]) {
            Some(n) if n >= 0 && n as usize <= limits.max_bulk => n as usize,
            _ => return Err(ProtocolError("invalid bulk length")),
        };
        let start = at + used;
        let Some(end) = start.checked_add(len) else {
            return Err(ProtocolError("invalid bulk length"));
        };
        if input.len() < end + 2 {
            return Ok(None);
        }
        if &input[end..end + 2] != b"\r\n" {
            return Err(ProtocolError("bulk string not terminated by CRLF"));
        }
        args.push(start..end);
        at = end + 2;
    }
    Ok(Some(at))
}

/// The length of the one complete RESP2/RESP3 value at the start of
/// `input`, `Ok(None)` while incomplete, or why it is not valid.
///
/// Aggregates are walked with an explicit stack bounded by
/// `limits.max_depth`, so a hostile reply cannot exhaust the call stack.
pub fn reply_len(input: &[u8], limits: &Limits) -> Result<Option<usize>, ProtocolError> {
    // Elements still expected at each open aggregate level.
    let mut pending = [0u64; 64];
    let max_depth = limits.max_depth.min(pending.len());
    let mut depth = 0usize;
    let mut at = 0usize;
    loop {
        let Some((head, used)) = line(
            &input[at..],
            MAX_HEADER.max(limits.max_inline),
            "reply line too long",
        )?
        else {
            return Ok(None);
        };
        let Some(&kind) = head.first() else {
            return Err(ProtocolError("empty reply line"));
        };
        let mut elements: u64 = 0;
        match kind {
            // Simple string, error, integer, null, boolean, double, big number.
            b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => at += used,
            // Bulk string, bulk error, verbatim string.
            b'$' | b'!' | b'=' => {
                if head.get(1) == Some(&b'?') {
                    return Err(ProtocolError("streamed strings are not supported"));
                }
                match integer(&head[1..]) {
                    // RESP2's null bulk string.
                    Some(-1) if kind == b'$' => at += used,
                    Some(n) if n >= 0 && n as usize <= limits.max_bulk => {
                        let end = at + used + n as usize;
                        if input.len() < end + 2 {
                            return Ok(None);
                        }
                        if &input[end..end + 2] != b"\r\n" {
                            return Err(ProtocolError("bulk string not terminated by CRLF"));
                        }
                        at = end + 2;
                    }
                    _ => return Err(ProtocolError("invalid bulk length")),
                }
            }
            // Array, set, push: n elements; map, attribute: n pairs.
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                if head.get(1) == Some(&b'?') {
                    return Err(ProtocolError("streamed aggregates are not supported"));
                }
                let n = match integer(&head[1..]) {
                    // RESP2's null array.
                    Some(-1) if kind == b'*' => 0,
                    Some(n) if n >= 0 && n as usize <= limits.max_array => n as u64,
                    _ => return Err(ProtocolError("invalid multibulk length")),
                };
                elements = if matches!(kind, b'%' | b'|') {
                    2 * n
                } else {
                    n
                };
                // An attribute annotates the value that follows it: both
                // make one reply.
                if kind == b'|' {
                    elements += 1;
                }
                at += used;
            }
            _ => return Err(ProtocolError("unknown reply type")),
        }
        if elements > 0 {
            if depth == max_depth {
                return Err(ProtocolError("reply nested too deeply"));
            }
            pending[depth] = elements;
            depth += 1;
            continue;
        }
        // One value finished: close every aggregate it completes.
        loop {
            if depth == 0 {
                return Ok(Some(at));
            }
            pending[depth - 1] -= 1;
            if pending[depth - 1] > 0 {
                break;
            }
            depth -= 1;
        }
    }
}

#[cfg(test)]
mod tests;
