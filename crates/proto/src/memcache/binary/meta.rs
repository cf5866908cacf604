//! Binary requests as meta commands, and meta replies as binary responses.
//!
//! A proxy that speaks the binary protocol to clients and the text
//! protocol to its servers sends each binary request as one meta command
//! ([`write_request`]), whose flags ask for everything the binary response
//! carries (client flags, cas, value), and turns the meta reply back into
//! the response memcached itself would have sent ([`write_response`]),
//! status for status, quiet rules included: memcached's `proto_bin.c` is
//! the reference.
//!
//! Binary keys may hold any byte; a key that is not a valid text token
//! (a space, a control byte) is sent base64-encoded with the meta `b` flag.
//! Meta commands need memcached 1.6 or later.

use super::{Op, Request, Response};
use super::{
    STATUS_INTERNAL_ERROR, STATUS_INVALID_ARGUMENTS, STATUS_KEY_EXISTS, STATUS_KEY_NOT_FOUND,
    STATUS_NON_NUMERIC, STATUS_NOT_STORED, STATUS_OK, STATUS_OUT_OF_MEMORY, STATUS_TOO_LARGE,
    STATUS_UNKNOWN_COMMAND,
};

/// What [`write_response`] needs to know of the request a reply answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bridged {
    pub op: Op,
    pub quiet: bool,
    pub opcode: u8,
    pub opaque: u32,
}

impl Bridged {
    pub fn of(request: &Request) -> Bridged {
        Bridged {
            op: request.op,
            quiet: request.quiet,
            opcode: request.opcode,
            opaque: request.opaque,
        }
    }
}

/// Whether `op` is answered by a server (through a meta command), rather
/// than by the proxy.
pub fn is_forwarded(op: Op) -> bool {
    !matches!(
        op,
        Op::Noop | Op::Quit | Op::Version | Op::Stat | Op::Flush | Op::Unknown
    )
}

/// Whether the response to `op` carries the request's key (which the
/// caller keeps and passes to [`write_response`]).
pub fn returns_key(op: Op) -> bool {
    matches!(op, Op::GetK | Op::GatK)
}

/// Writes the meta command for `request` (a forwarded op, see
/// [`is_forwarded`]), parsed from `packet`.
pub fn write_request(packet: &[u8], request: &Request, out: &mut Vec<u8>) {
    let key = &packet[request.key.clone()];
    let value = &packet[request.value.clone()];
    let code: &[u8] = match request.op {
        Op::Get | Op::GetK | Op::Gat | Op::GatK | Op::Touch => b"mg",
        Op::Set | Op::Add | Op::Replace | Op::Append | Op::Prepend => b"ms",
        Op::Delete => b"md",
        Op::Increment | Op::Decrement => b"ma",
        _ => unreachable!("{:?} is answered by the proxy", request.op),
    };
    out.extend_from_slice(code);
    out.push(b' ');
    let base64 = !is_text_key(key);
    if base64 {
        write_base64(key, out);
    } else {
        out.extend_from_slice(key);
    }
    if code == b"ms" {
        word(out, "", value.len() as u64);
    }
    if base64 {
        out.extend_from_slice(b" b");
    }
    let mut flag = |text: &[u8]| {
        out.push(b' ');
        out.extend_from_slice(text);
    };
    match request.op {
        Op::Get | Op::GetK => flag(b"f v c"),
        Op::Gat | Op::GatK => flag(b"f v c"),
        Op::Touch => flag(b"f c"),
        Op::Set => flag(b"MS c"),
        Op::Add => flag(b"ME c"),
        Op::Replace => flag(b"MR c"),
        Op::Append => flag(b"MA c"),
        Op::Prepend => flag(b"MP c"),
        Op::Delete => {}
        Op::Increment => flag(b"MI v c"),
        Op::Decrement => flag(b"MD v c"),
        _ => {}
    }
    match request.op {
        Op::Gat | Op::GatK | Op::Touch => word(out, "T", request.expiration.into()),
        Op::Set | Op::Add | Op::Replace => {
            word(out, "F", request.flags.into());
            word(out, "T", request.expiration.into());
        }
        Op::Increment | Op::Decrement => {
            word(out, "D", request.delta);
            if request.expiration != super::NO_CREATE {
                // Created on a miss, with the initial value, which is
                // what the reply then says.
                word(out, "N", request.expiration.into());
                word(out, "J", request.initial);
            }
        }
        _ => {}
    }
    // Reads and add ignore a cas, as memcached does.
    let compares = matches!(
        request.op,
        Op::Set
            | Op::Replace
            | Op::Append
            | Op::Prepend
            | Op::Delete
            | Op::Increment
            | Op::Decrement
    );
    if compares && request.cas != 0 {
        word(out, "C", request.cas);
    }
    out.extend_from_slice(b"\r\n");
    if code == b"ms" {
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
}

/// A space, then `prefix` and `n` in decimal.
fn word(out: &mut Vec<u8>, prefix: &str, n: u64) {
    out.push(b' ');
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(n.to_string().as_bytes());
}

/// Whether `key` can be a text-protocol token as it is.
fn is_text_key(key: &[u8]) -> bool {
    !key.is_empty() && key.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// Standard base64 with padding, as memcached decodes a `b` key.
fn write_base64(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
}

/// Writes the binary response to a request bridged as `bridged`, from the
/// server's meta reply `reply` (one whole reply, or the proxy's own error
/// line when the server could not be reached). `key` is the request's
/// key, for the ops that return it. A quiet request's response may be
/// nothing at all.
pub fn write_response(reply: &[u8], bridged: Bridged, key: &[u8], out: &mut Vec<u8>) {
    let Bridged {
        op,
        quiet,
        opcode,
        opaque,
    } = bridged;
    let line_end = reply
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(reply.len());
    let line = &reply[..line_end];
    let mut words = line.split(|&b| b == b' ');
    let code = words.next().unwrap_or_default();
    // The meta flags of the reply: client flags and cas.
    let (mut flags, mut cas) = (0u32, 0u64);
    let mut size = None;
    for (i, w) in words.enumerate() {
        if i == 0 && code == b"VA" {
            size = parse(w);
            continue;
        }
        match w.split_first() {
            Some((b'f', n)) => flags = parse(n).unwrap_or(0) as u32,
            Some((b'c', n)) => cas = parse(n).unwrap_or(0),
            _ => {}
        }
    }
    let error = |out: &mut Vec<u8>, status: u16, message: &[u8]| {
        Response::error(opcode, opaque, status, message).emit(out)
    };
    let ok = |out: &mut Vec<u8>, extras: &[u8], key: &[u8], value: &[u8]| {
        Response {
            opcode,
            opaque,
            status: STATUS_OK,
            cas,
            extras,
            key,
            value,
        }
        .emit(out)
    };
    let key = if returns_key(op) { key } else { b"" };
    let flags = flags.to_be_bytes();
    match (code, op) {
        (b"VA", Op::Get | Op::GetK | Op::Gat | Op::GatK) => {
            let start = line_end + 2;
            match size.and_then(|n| reply.get(start..start + n as usize)) {
                Some(value) => ok(out, &flags, key, value),
                None => error(out, STATUS_INTERNAL_ERROR, UNEXPECTED),
            }
        }
        (b"HD", Op::Touch) => ok(out, &flags, b"", b""),
        (b"EN", Op::Get | Op::GetK | Op::Gat | Op::GatK | Op::Touch) => {
            if quiet {
            } else if returns_key(op) {
                // memcached's miss for getk: the key, no message.
                Response {
                    status: STATUS_KEY_NOT_FOUND,
                    key,
                    ..Response::error(opcode, opaque, STATUS_KEY_NOT_FOUND, b"")
                }
                .emit(out)
            } else {
                error(out, STATUS_KEY_NOT_FOUND, NOT_FOUND)
            }
        }
        (b"HD", Op::Set | Op::Add | Op::Replace | Op::Append | Op::Prepend | Op::Delete) => {
            if !quiet {
                ok(out, b"", b"", b"")
            }
        }
        (b"VA", Op::Increment | Op::Decrement) => {
            let start = line_end + 2;
            let number = size
                .and_then(|n| reply.get(start..start + n as usize))
                .and_then(parse);
            match number {
                Some(n) if !quiet => ok(out, b"", b"", &n.to_be_bytes()),
                Some(_) => {}
                None => error(out, STATUS_INTERNAL_ERROR, UNEXPECTED),
            }
        }
        // Not stored: what memcached's binary side says for each store.
        (b"NS", Op::Add) => error(out, STATUS_KEY_EXISTS, EXISTS),
        (b"NS", Op::Replace) => error(out, STATUS_KEY_NOT_FOUND, NOT_FOUND),
        (b"NS", _) => error(out, STATUS_NOT_STORED, NOT_STORED),
        (b"NF", _) => error(out, STATUS_KEY_NOT_FOUND, NOT_FOUND),
        (b"EX", _) => error(out, STATUS_KEY_EXISTS, EXISTS),
        (b"ERROR", _) => error(out, STATUS_UNKNOWN_COMMAND, b"Unknown command"),
        (b"CLIENT_ERROR", _) => {
            let message = text_after(line, code);
            if matches!(op, Op::Increment | Op::Decrement) && contains(message, b"non-numeric") {
                error(out, STATUS_NON_NUMERIC, NON_NUMERIC)
            } else {
                error(out, STATUS_INVALID_ARGUMENTS, message)
            }
        }
        (b"SERVER_ERROR", _) => {
            let message = text_after(line, code);
            let status = if contains(message, b"out of memory") {
                STATUS_OUT_OF_MEMORY
            } else if contains(message, b"too large") {
                STATUS_TOO_LARGE
            } else {
                STATUS_INTERNAL_ERROR
            };
            error(out, status, message)
        }
        _ => error(out, STATUS_INTERNAL_ERROR, UNEXPECTED),
    }
}

// memcached's texts for its statuses.
const NOT_FOUND: &[u8] = b"Not found";
const EXISTS: &[u8] = b"Data exists for key.";
const NOT_STORED: &[u8] = b"Not stored.";
const NON_NUMERIC: &[u8] = b"Non-numeric server-side value for incr or decr";
const UNEXPECTED: &[u8] = b"ferrox: a server sent an unexpected reply";

/// A decimal number, all of `digits`.
fn parse(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The message after an error line's code.
fn text_after<'a>(line: &'a [u8], code: &[u8]) -> &'a [u8] {
    line.get(code.len() + 1..).unwrap_or_default()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::super::{parse_request, Header, Limits, HEADER_LEN};
    use super::*;

    const LIMITS: Limits = Limits {
        max_key: 250,
        max_value: 1 << 20,
    };

    /// A request packet: opcode, extras, key, value, cas; opaque 0x11.
    fn packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> Vec<u8> {
        let body = extras.len() + key.len() + value.len();
        let mut p = vec![0x80, opcode];
        p.extend((key.len() as u16).to_be_bytes());
        p.extend([extras.len() as u8, 0, 0, 0]);
        p.extend((body as u32).to_be_bytes());
        p.extend(0x11u32.to_be_bytes());
        p.extend(cas.to_be_bytes());
        p.extend([extras, key, value].concat());
        p
    }

    fn meta(packet: &[u8]) -> String {
        let request = parse_request(packet, &LIMITS).unwrap().unwrap();
        let mut out = Vec::new();
        write_request(packet, &request, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// The response to `packet` given the meta reply `reply`, its header
    /// fields and body.
    fn response(packet: &[u8], reply: &[u8]) -> Option<(u16, u64, Vec<u8>)> {
        let request = parse_request(packet, &LIMITS).unwrap().unwrap();
        let mut out = Vec::new();
        let key = &packet[request.key.clone()];
        write_response(reply, Bridged::of(&request), key, &mut out);
        if out.is_empty() {
            return None;
        }
        let header = Header::new_checked(&out[..]).unwrap();
        assert_eq!(header.opcode(), request.opcode);
        assert_eq!(header.opaque(), 0x11);
        assert_eq!(header.body_length() as usize, out.len() - HEADER_LEN);
        Some((header.status(), header.cas(), out[HEADER_LEN..].to_vec()))
    }

    use super::super::opcode as o;

    const SET_EXTRAS: [u8; 8] = [0, 0, 0, 5, 0, 0, 0, 60];

    #[test]
    fn requests_become_meta_commands_that_ask_for_what_the_response_carries() {
        assert_eq!(meta(&packet(o::GET, &[], b"k", b"", 0)), "mg k f v c\r\n");
        assert_eq!(
            meta(&packet(o::GATKQ, &[0, 0, 0, 9], b"k", b"", 0)),
            "mg k f v c T9\r\n"
        );
        assert_eq!(
            meta(&packet(o::TOUCH, &[0, 0, 0, 9], b"k", b"", 0)),
            "mg k f c T9\r\n"
        );
        assert_eq!(
            meta(&packet(o::SETQ, &SET_EXTRAS, b"k", b"hello", 0)),
            "ms k 5 MS c F5 T60\r\nhello\r\n"
        );
        assert_eq!(
            meta(&packet(o::REPLACE, &SET_EXTRAS, b"k", b"", 42)),
            "ms k 0 MR c F5 T60 C42\r\n\r\n"
        );
        assert_eq!(
            meta(&packet(o::ADD, &SET_EXTRAS, b"k", b"v", 42)),
            "ms k 1 ME c F5 T60\r\nv\r\n"
        );
        assert_eq!(
            meta(&packet(o::PREPEND, &[], b"k", b"v", 0)),
            "ms k 1 MP c\r\nv\r\n"
        );
        assert_eq!(meta(&packet(o::DELETEQ, &[], b"k", b"", 7)), "md k C7\r\n");
        let incr = [[0, 0, 0, 0, 0, 0, 0, 2], [0, 0, 0, 0, 0, 0, 0, 10]].concat();
        let create = [&incr[..], &[0, 0, 0, 0]].concat();
        let no_create = [&incr[..], &[0xff; 4]].concat();
        assert_eq!(
            meta(&packet(o::INCREMENT, &create, b"n", b"", 0)),
            "ma n MI v c D2 N0 J10\r\n"
        );
        assert_eq!(
            meta(&packet(o::DECREMENT, &no_create, b"n", b"", 0)),
            "ma n MD v c D2\r\n"
        );
        // A key that is no text token goes base64-encoded.
        assert_eq!(
            meta(&packet(o::GET, &[], b"a b\n", b"", 0)),
            "mg YSBiCg== b f v c\r\n"
        );
        assert_eq!(
            meta(&packet(o::APPEND, &[], b"\x00", b"v", 0)),
            "ms AA== 1 b MA c\r\nv\r\n"
        );
    }

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xff\xfe\xfd", "//79"),
        ] {
            let mut out = Vec::new();
            write_base64(bytes, &mut out);
            assert_eq!(out, text.as_bytes());
        }
    }

    #[test]
    fn replies_become_the_responses_memcached_sends() {
        let get = packet(o::GET, &[], b"k", b"", 0);
        assert_eq!(
            response(&get, b"VA 3 f7 c99\r\nabc\r\n"),
            Some((STATUS_OK, 99, [&[0, 0, 0, 7][..], b"abc"].concat()))
        );
        assert_eq!(
            response(&get, b"EN\r\n"),
            Some((STATUS_KEY_NOT_FOUND, 0, b"Not found".to_vec()))
        );
        // getk: the key after the flags; a miss carries the key alone.
        let getk = packet(o::GETK, &[], b"k", b"", 0);
        assert_eq!(
            response(&getk, b"VA 1 f0 c1\r\nv\r\n"),
            Some((STATUS_OK, 1, [&[0, 0, 0, 0][..], b"kv"].concat()))
        );
        assert_eq!(
            response(&getk, b"EN\r\n"),
            Some((STATUS_KEY_NOT_FOUND, 0, b"k".to_vec()))
        );
        // Quiet: a miss says nothing, a hit does.
        let getkq = packet(o::GETKQ, &[], b"k", b"", 0);
        assert_eq!(response(&getkq, b"EN\r\n"), None);
        assert!(response(&getkq, b"VA 1 f0 c1\r\nv\r\n").is_some());
        // touch: flags and cas, no value.
        let touch = packet(o::TOUCH, &[0, 0, 0, 1], b"k", b"", 0);
        assert_eq!(
            response(&touch, b"HD f3 c4\r\n"),
            Some((STATUS_OK, 4, vec![0, 0, 0, 3]))
        );
        // Stores: the new cas; quiet success says nothing, failure does.
        let set = packet(o::SET, &SET_EXTRAS, b"k", b"v", 0);
        assert_eq!(response(&set, b"HD c5\r\n"), Some((STATUS_OK, 5, vec![])));
        let setq = packet(o::SETQ, &SET_EXTRAS, b"k", b"v", 0);
        assert_eq!(response(&setq, b"HD c5\r\n"), None);
        assert_eq!(response(&setq, b"EX\r\n").unwrap().0, STATUS_KEY_EXISTS);
        let add = packet(o::ADD, &SET_EXTRAS, b"k", b"v", 0);
        assert_eq!(response(&add, b"NS\r\n").unwrap().0, STATUS_KEY_EXISTS);
        let replace = packet(o::REPLACE, &SET_EXTRAS, b"k", b"v", 0);
        assert_eq!(
            response(&replace, b"NS\r\n").unwrap().0,
            STATUS_KEY_NOT_FOUND
        );
        let append = packet(o::APPENDQ, &[], b"k", b"v", 0);
        assert_eq!(response(&append, b"NS\r\n").unwrap().0, STATUS_NOT_STORED);
        let delete = packet(o::DELETE, &[], b"k", b"", 0);
        assert_eq!(
            response(&delete, b"NF\r\n").unwrap().0,
            STATUS_KEY_NOT_FOUND
        );
        // Counters: the value as 8 bytes, big-endian.
        let extras = [0u8; 20];
        let incr = packet(o::INCREMENT, &extras, b"n", b"", 0);
        assert_eq!(
            response(&incr, b"VA 3 c8\r\n258\r\n"),
            Some((STATUS_OK, 8, 258u64.to_be_bytes().to_vec()))
        );
        assert_eq!(
            response(
                &incr,
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
            )
            .unwrap()
            .0,
            STATUS_NON_NUMERIC
        );
    }

    #[test]
    fn errors_keep_their_message_under_the_nearest_status() {
        let get = packet(o::GET, &[], b"k", b"", 0);
        assert_eq!(
            response(&get, b"SERVER_ERROR ferrox: server s0 timed out\r\n"),
            Some((
                STATUS_INTERNAL_ERROR,
                0,
                b"ferrox: server s0 timed out".to_vec()
            ))
        );
        assert_eq!(
            response(&get, b"SERVER_ERROR out of memory storing object\r\n")
                .unwrap()
                .0,
            STATUS_OUT_OF_MEMORY
        );
        assert_eq!(
            response(&get, b"CLIENT_ERROR bad data chunk\r\n"),
            Some((STATUS_INVALID_ARGUMENTS, 0, b"bad data chunk".to_vec()))
        );
        assert_eq!(
            response(&get, b"ERROR\r\n").unwrap().0,
            STATUS_UNKNOWN_COMMAND
        );
        // A reply that does not fit the request: an error, never a panic.
        for reply in [
            &b"HD\r\n"[..],
            b"VA 9 f1\r\nab\r\n",
            b"VA x\r\n",
            b"",
            b"\r\n",
        ] {
            assert_eq!(
                response(&get, reply).unwrap().0,
                STATUS_INTERNAL_ERROR,
                "{reply:?}"
            );
        }
    }

    proptest::proptest! {
        /// Whatever bytes follow the magic, parsing neither panics nor
        /// reads past the packet, and a parsed request's meta command is
        /// one line (plus a data block for `ms`) however odd its key.
        #[test]
        fn arbitrary_packets_parse_or_are_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            let input = [&[0x80][..], &body].concat();
            if let Ok(Some(request)) = parse_request(&input, &LIMITS) {
                proptest::prop_assert!(request.len <= input.len());
                if is_forwarded(request.op) {
                    let mut out = Vec::new();
                    write_request(&input, &request, &mut out);
                    let line = out.iter().position(|&b| b == b'\n').unwrap();
                    proptest::prop_assert!(out[..line].iter().all(|&b| b >= b' ' || b == b'\r'));
                }
            }
        }

        /// Whatever a server answers, the response is one well-formed
        /// packet (or nothing, for a quiet request), never a panic.
        #[test]
        fn arbitrary_replies_become_one_packet(opcode in 0u8..0x30, reply in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let (op, quiet) = Op::of(opcode);
            let bridged = Bridged { op, quiet, opcode, opaque: 1 };
            let mut out = Vec::new();
            write_response(&reply, bridged, b"key", &mut out);
            if !out.is_empty() {
                let header = Header::new_checked(&out[..]).unwrap();
                proptest::prop_assert_eq!(header.body_length() as usize, out.len() - HEADER_LEN);
            }
        }
    }
}
