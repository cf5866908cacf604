use super::*;
use proptest::prelude::*;

/// A parsed request as owned text, for comparing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Parsed {
    command: Command,
    tokens: Vec<String>,
    keys: Vec<String>,
    data: Option<Vec<u8>>,
    noreply: Option<usize>,
    quiet: Option<usize>,
    len: usize,
}

fn parse_with(input: &[u8], limits: &Limits) -> Result<Option<Parsed>, Error> {
    let mut req = Request::new();
    let Some(used) = parse_request(input, limits, &mut req)? else {
        return Ok(None);
    };
    assert_eq!(used, req.len);
    let text = |r: &Range<usize>| String::from_utf8_lossy(&input[r.clone()]).into_owned();
    Ok(Some(Parsed {
        command: req.command,
        tokens: req.tokens.iter().map(text).collect(),
        keys: req.key_ranges().iter().map(text).collect(),
        data: req.data.clone().map(|d| input[d].to_vec()),
        noreply: req.noreply,
        quiet: req.quiet,
        len: req.len,
    }))
}

fn parse(input: &[u8]) -> Result<Option<Parsed>, Error> {
    parse_with(input, &Limits::default())
}

/// The request that `input` must be, whole.
fn whole(input: &[u8]) -> Parsed {
    let parsed = parse(input)
        .unwrap_or_else(|e| panic!("{:?}: {e:?}", String::from_utf8_lossy(input)))
        .unwrap_or_else(|| panic!("{:?}: incomplete", String::from_utf8_lossy(input)));
    assert_eq!(
        parsed.len,
        input.len(),
        "{:?}",
        String::from_utf8_lossy(input)
    );
    parsed
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn reply_text(e: Error) -> String {
    let mut out = Vec::new();
    e.emit_reply(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn retrieval_commands_take_keys() {
    let get = whole(b"get foo\r\n");
    assert_eq!(get.command, Command::Get);
    assert_eq!(get.tokens, strings(&["get", "foo"]));
    assert_eq!(get.keys, strings(&["foo"]));
    assert_eq!((get.data, get.noreply, get.quiet), (None, None, None));

    let gets = whole(b"gets a bb  ccc\r\n");
    assert_eq!(gets.command, Command::Gets);
    assert_eq!(gets.keys, strings(&["a", "bb", "ccc"]));

    let gat = whole(b"gat 300 k1 k2\r\n");
    assert_eq!(gat.command, Command::Gat);
    assert_eq!(gat.tokens, strings(&["gat", "300", "k1", "k2"]));
    assert_eq!(gat.keys, strings(&["k1", "k2"]));

    let gats = whole(b"gats -1 k\r\n");
    assert_eq!(gats.command, Command::Gats);
    assert_eq!(gats.keys, strings(&["k"]));

    // `noreply` means nothing to a get: it is a key.
    assert_eq!(whole(b"get noreply\r\n").keys, strings(&["noreply"]));
    // UTF-8 keys are fine; only control characters are not.
    assert_eq!(whole("get clé\r\n".as_bytes()).keys, strings(&["clé"]));
}

#[test]
fn storage_commands_carry_a_data_block() {
    for (wire, command) in [
        (&b"set k 0 0 5\r\nhello\r\n"[..], Command::Set),
        (b"add k 1 2 5\r\nhello\r\n", Command::Add),
        (b"replace k 0 0 5\r\nhello\r\n", Command::Replace),
        (b"append k 0 0 5\r\nhello\r\n", Command::Append),
        (b"prepend k 0 0 5\r\nhello\r\n", Command::Prepend),
        (b"cas k 0 0 5 77\r\nhello\r\n", Command::Cas),
    ] {
        let p = whole(wire);
        assert_eq!(p.command, command);
        assert_eq!(p.keys, strings(&["k"]));
        assert_eq!(p.data.as_deref(), Some(&b"hello\r\n"[..]));
        assert_eq!(p.noreply, None);
    }

    let p = whole(b"set k 4294967295 -1 3 noreply\r\nabc\r\n");
    assert_eq!(p.noreply, Some(5));
    assert_eq!(p.tokens[5], "noreply");
    let p = whole(b"cas k 0 0 1 18446744073709551615 noreply\r\nx\r\n");
    assert_eq!(p.noreply, Some(6));

    // Data is binary: CR, LF and spaces inside it are data.
    let p = whole(b"set k 0 0 6\r\na\r\nb \n\r\n");
    assert_eq!(p.data.as_deref(), Some(&b"a\r\nb \n\r\n"[..]));
    // An empty value is an empty block, still ended by CRLF.
    let p = whole(b"set k 0 0 0\r\n\r\n");
    assert_eq!(p.data.as_deref(), Some(&b"\r\n"[..]));
}

#[test]
fn other_classic_commands() {
    let p = whole(b"delete k\r\n");
    assert_eq!(
        (p.command, p.keys.clone(), p.noreply),
        (Command::Delete, strings(&["k"]), None)
    );
    assert_eq!(whole(b"delete k noreply\r\n").noreply, Some(2));
    // The old hold-time form, which must be zero.
    assert_eq!(whole(b"delete k 0\r\n").noreply, None);
    assert_eq!(whole(b"delete k 0 noreply\r\n").noreply, Some(3));

    let p = whole(b"incr n 5\r\n");
    assert_eq!(
        (p.command, p.keys, p.noreply),
        (Command::Incr, strings(&["n"]), None)
    );
    let p = whole(b"decr n 18446744073709551615 noreply\r\n");
    assert_eq!((p.command, p.noreply), (Command::Decr, Some(3)));
    let p = whole(b"touch k 100\r\n");
    assert_eq!(
        (p.command, p.keys, p.noreply),
        (Command::Touch, strings(&["k"]), None)
    );
    assert_eq!(whole(b"touch k -5 noreply\r\n").noreply, Some(3));

    let p = whole(b"version\r\n");
    assert_eq!((p.command, p.keys.len()), (Command::Version, 0));
    let p = whole(b"quit\r\n");
    assert_eq!((p.command, p.keys.len()), (Command::Quit, 0));
}

#[test]
fn meta_commands() {
    let p = whole(b"mg foo s v t f O123 k q\r\n");
    assert_eq!(p.command, Command::MetaGet);
    assert_eq!(p.keys, strings(&["foo"]));
    assert_eq!(p.quiet, Some(8));
    assert_eq!(p.tokens[8], "q");
    assert_eq!(whole(b"mg foo\r\n").quiet, None);
    // A base64 key (the `b` flag) is still the token after the command.
    let p = whole(b"mg Zm9vYmFy b v\r\n");
    assert_eq!(p.keys, strings(&["Zm9vYmFy"]));

    let p = whole(b"ms foo 2 T90 F5 q\r\nhi\r\n");
    assert_eq!(p.command, Command::MetaSet);
    assert_eq!(p.keys, strings(&["foo"]));
    assert_eq!(p.data.as_deref(), Some(&b"hi\r\n"[..]));
    assert_eq!(p.quiet, Some(5));
    let p = whole(b"ms foo 0\r\n\r\n");
    assert_eq!((p.data.as_deref(), p.quiet), (Some(&b"\r\n"[..]), None));

    let p = whole(b"md foo q I T30\r\n");
    assert_eq!(
        (p.command, p.keys, p.quiet),
        (Command::MetaDelete, strings(&["foo"]), Some(2))
    );
    let p = whole(b"ma n N0 J13 v MD D9 q\r\n");
    assert_eq!((p.command, p.quiet), (Command::MetaArithmetic, Some(7)));
    // The flag is the first byte of its token.
    assert_eq!(whole(b"ma n qx\r\n").quiet, Some(2));

    let p = whole(b"mn\r\n");
    assert_eq!(
        (p.command, p.keys.len(), p.tokens.len()),
        (Command::MetaNoop, 0, 1)
    );
}

#[test]
fn a_bare_lf_ends_a_request_line_as_memcached_allows() {
    let p = whole(b"get a b\n");
    assert_eq!(p.keys, strings(&["a", "b"]));
    let p = whole(b"set k 0 0 2\nhi\r\n");
    assert_eq!(p.data.as_deref(), Some(&b"hi\r\n"[..]));
    // The data block itself must still end in CRLF.
    assert_eq!(parse(b"set k 0 0 2\nhi\n"), Ok(None));
    assert_eq!(
        parse(b"set k 0 0 2\nhi\nX"),
        Err(Error::Framing("bad data chunk"))
    );
}

/// A pipeline with every command, and its requests in order.
const PIPELINE: &[&[u8]] = &[
    b"get a\r\n",
    b"gets a b c\r\n",
    b"gat 10 a b\r\n",
    b"gats 0 a\r\n",
    b"set k 0 0 3\r\nabc\r\n",
    b"add k 0 0 4 noreply\r\n\r\n\r\n\r\n",
    b"replace k 1 1 1\r\nx\r\n",
    b"append k 0 0 2\r\nyz\r\n",
    b"prepend k 0 0 0\r\n\r\n",
    b"cas k 0 0 1 99\r\nq\r\n",
    b"delete k noreply\r\n",
    b"incr n 1\r\n",
    b"decr n 2 noreply\r\n",
    b"touch k 9\r\n",
    b"version\r\n",
    b"mg k v q\r\n",
    b"ms k 5 T0\r\nhello\r\n",
    b"md k\r\n",
    b"ma k D4\r\n",
    b"mn\n",
    b"quit\r\n",
];

#[test]
fn every_split_point_of_a_pipeline_waits_then_parses_the_same() {
    let stream = PIPELINE.concat();
    let all = {
        let mut at = 0;
        let mut out = Vec::new();
        while at < stream.len() {
            let p = parse(&stream[at..]).unwrap().unwrap();
            at += p.len;
            out.push(p);
        }
        out
    };
    assert_eq!(all.len(), PIPELINE.len());
    for (p, wire) in all.iter().zip(PIPELINE) {
        assert_eq!(p.len, wire.len());
    }
    for cut in 0..stream.len() {
        let buffer = &stream[..cut];
        let mut at = 0;
        let mut n = 0;
        while let Some(p) = parse(&buffer[at..]).unwrap() {
            assert_eq!(p, all[n], "cut at {cut}");
            at += p.len;
            n += 1;
        }
        // What is left is a proper prefix of the next request.
        assert!(cut - at < PIPELINE[n].len(), "cut at {cut}");
    }
}

#[test]
fn refused_requests_are_skipped_whole() {
    const BAD_FORMAT: Error = Error::Client("bad command line format");
    const BAD_EXPTIME: Error = Error::Client("invalid exptime argument");
    const CONTROL_CHARS: Error = Error::Client("key contains control characters");
    const BAD_DELTA: Error = Error::Client("invalid numeric delta argument");
    let long_key = format!("get {}\r\n", "k".repeat(251));
    let long_set = format!("set {} 0 0 2\r\nhi\r\n", "k".repeat(251));
    let cases: Vec<(&[u8], Error)> = vec![
        (b"\r\n", Error::UnknownCommand),
        (b"   \r\n", Error::UnknownCommand),
        (b"GET k\r\n", Error::UnknownCommand),
        (b"flush_all\r\n", Error::UnknownCommand),
        (b"stats a b c d\r\n", BAD_FORMAT),
        (b"me k\r\n", Error::UnknownCommand),
        (b"get\r\n", BAD_FORMAT),
        (b"gat 10\r\n", BAD_FORMAT),
        (b"gat x k\r\n", BAD_EXPTIME),
        (b"gat 99999999999 k\r\n", BAD_EXPTIME),
        (long_key.as_bytes(), Error::Client("key too long")),
        (b"get a\tb\r\n", CONTROL_CHARS),
        (b"get a\rb\r\n", CONTROL_CHARS),
        (b"get a\x7f\r\n", CONTROL_CHARS),
        // Storage commands are skipped with their data block.
        (long_set.as_bytes(), Error::Client("key too long")),
        (b"set k x 0 2\r\nhi\r\n", BAD_FORMAT),
        (b"set k 4294967296 0 2\r\nhi\r\n", BAD_FORMAT),
        (b"set k 0 x 2\r\nhi\r\n", BAD_FORMAT),
        (b"set k 0 0 2 norepl\r\nhi\r\n", BAD_FORMAT),
        (b"set k 0 0 2 noreply x\r\nhi\r\n", BAD_FORMAT),
        (b"cas k 0 0 2\r\nhi\r\n", BAD_FORMAT),
        (b"cas k 0 0 2 -1\r\nhi\r\n", BAD_FORMAT),
        (b"ms k 2 q q\r\nhi\r\n", Error::Client("duplicate flag")),
        (b"delete\r\n", BAD_FORMAT),
        (b"delete k 5\r\n", BAD_FORMAT),
        (b"delete k 0 0\r\n", BAD_FORMAT),
        (b"delete k noreply 0\r\n", BAD_FORMAT),
        (b"incr k\r\n", BAD_FORMAT),
        (b"incr k -1\r\n", BAD_DELTA),
        (b"decr k 18446744073709551616\r\n", BAD_DELTA),
        (b"touch k soon\r\n", BAD_EXPTIME),
        (b"touch k 1 2\r\n", BAD_FORMAT),
        (b"version 2\r\n", BAD_FORMAT),
        (b"quit now\r\n", BAD_FORMAT),
        (b"mn k\r\n", BAD_FORMAT),
        (b"mg\r\n", BAD_FORMAT),
        (b"mg k v v\r\n", Error::Client("duplicate flag")),
        (b"md k \xff\r\n", Error::Client("duplicate flag")),
        (
            b"mg k a b c d e f g h i j k l m n o p r s t\r\n",
            Error::Client("options flags are too long"),
        ),
    ];
    for (wire, error) in cases {
        let mut stream = wire.to_vec();
        stream.extend_from_slice(b"mn\r\n");
        let mut req = Request::new();
        let what = String::from_utf8_lossy(wire);
        assert_eq!(
            parse_request(&stream, &Limits::default(), &mut req),
            Err(error),
            "{what:?}"
        );
        assert!(!error.fatal(), "{what:?}");
        assert_eq!(req.len, wire.len(), "{what:?}");
        assert_eq!(
            whole(&stream[req.len..]).command,
            Command::MetaNoop,
            "{what:?}"
        );
        // Not reported before all of it is here.
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]), Ok(None), "{what:?} cut at {cut}");
        }
    }
    // The largest meta line memcached takes: 20 tokens.
    assert!(parse(b"mg k a b c d e f g h i j l m n o p r s t\r\n")
        .unwrap()
        .is_some());
}

#[test]
fn noreply_is_reported_even_when_refused() {
    // memcached sends no error to a noreply request, so the caller must
    // know about it to do the same.
    let mut req = Request::new();
    let limits = Limits::default();
    let wire = b"set k 0 x 1 noreply\r\nx\r\n";
    assert_eq!(
        parse_request(wire, &limits, &mut req),
        Err(Error::Client("bad command line format"))
    );
    assert_eq!(req.noreply, Some(5));
    assert_eq!(req.len, wire.len());
    let wire = b"incr k x noreply\r\n";
    assert!(parse_request(wire, &limits, &mut req).is_err());
    assert_eq!(req.noreply, Some(3));
}

#[test]
fn unrecoverable_streams_are_fatal() {
    const BAD_FORMAT: Error = Error::Framing("bad command line format");
    const BAD_CHUNK: Error = Error::Framing("bad data chunk");
    let cases: [(&[u8], Error); 9] = [
        (b"set k 0 0 3\r\nabcd\r\n", BAD_CHUNK),
        (b"set k 0 0 3\r\nabc\n\n", BAD_CHUNK),
        (b"set k 0 0\r\nabc\r\n", BAD_FORMAT),
        (b"set k 0 0 -1\r\n", BAD_FORMAT),
        (b"set k 0 0 x\r\n", BAD_FORMAT),
        (b"ms k\r\n", BAD_FORMAT),
        (b"ms k S2 T0\r\nhi\r\n", BAD_FORMAT),
        (b"set k 0 0 1048577\r\n", Error::TooLarge),
        (b"ms k 99999999999999999999999\r\n", Error::TooLarge),
    ];
    for (wire, error) in cases {
        assert_eq!(
            parse(wire),
            Err(error),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
        assert!(error.fatal());
    }
    // A line too long is refused as soon as it is known to be: a
    // retrieval line past max_retrieval_line, any other past max_line.
    let limits = Limits {
        max_line: 16,
        max_retrieval_line: 24,
        ..Limits::default()
    };
    let too_long = Err(Error::Framing("line too long"));
    assert_eq!(parse_with(b"delete 012345678", &limits), Ok(None));
    assert_eq!(
        parse_with(b"delete 012345678\n", &limits).map(|p| p.is_some()),
        Ok(true)
    );
    assert_eq!(parse_with(b"delete 0123456789", &limits), too_long);
    assert_eq!(parse_with(b"delete 0123456789\r\n", &limits), too_long);
    assert_eq!(parse_with(b"get 0123 4567 89ab cdef", &limits), Ok(None));
    assert_eq!(
        parse_with(b"get 0123 4567 89ab cdef\n", &limits).map(|p| p.unwrap().keys.len()),
        Ok(4)
    );
    assert_eq!(parse_with(b"get 0123 4567 89ab cdefgh", &limits), too_long);
    assert_eq!(parse_with(b"gats 1 234 4567 89ab cdef", &limits), too_long);
    // Until a retrieval name and its space are in, the line is held to
    // max_line; leading spaces are skipped as memcached does.
    assert_eq!(parse_with(b"  gets 0123456789ab", &limits), Ok(None));
    assert_eq!(parse_with(b"getx 0123456789abc", &limits), too_long);
    assert_eq!(parse_with(&[b' '; 17], &limits), too_long);
}

#[test]
fn limits_are_enforced() {
    let limits = Limits {
        max_key: 4,
        max_value: 3,
        max_line: 64,
        max_retrieval_line: 64,
        max_keys: 2,
    };
    assert!(parse_with(b"get abcd efgh\r\n", &limits).unwrap().is_some());
    assert_eq!(
        parse_with(b"get abcde\r\n", &limits),
        Err(Error::Client("key too long"))
    );
    assert_eq!(
        parse_with(b"get a b c\r\n", &limits),
        Err(Error::Client("too many keys"))
    );
    assert!(parse_with(b"gat 1 a b\r\n", &limits).unwrap().is_some());
    assert_eq!(
        parse_with(b"gat 1 a b c\r\n", &limits),
        Err(Error::Client("too many keys"))
    );
    assert!(parse_with(b"set k 0 0 3\r\nabc\r\n", &limits)
        .unwrap()
        .is_some());
    assert_eq!(
        parse_with(b"set k 0 0 4\r\n", &limits),
        Err(Error::TooLarge)
    );
    assert_eq!(parse_with(b"ms k 4\r\n", &limits), Err(Error::TooLarge));
    assert_eq!(
        parse_with(b"ms abcde 1\r\nx\r\n", &limits),
        Err(Error::Client("key too long"))
    );

    // The same bounds hold for backend replies.
    assert_eq!(
        reply_len(b"VA 3\r\nabc\r\n", ReplyKind::Meta, &limits),
        Ok(Some(11))
    );
    assert_eq!(
        reply_len(b"VA 4\r\n", ReplyKind::Meta, &limits),
        Err(Error::Backend("backend value too large"))
    );
    assert_eq!(
        reply_len(b"VALUE k 0 4\r\n", ReplyKind::Retrieval, &limits),
        Err(Error::Backend("backend value too large"))
    );
    let long = [b'x'; 65];
    assert_eq!(
        reply_len(&long, ReplyKind::Line, &limits),
        Err(Error::Backend("backend reply line too long"))
    );
    assert_eq!(reply_len(&long[..64], ReplyKind::Line, &limits), Ok(None));
}

#[test]
fn errors_become_memcached_reply_lines() {
    assert_eq!(reply_text(Error::UnknownCommand), "ERROR\r\n");
    assert_eq!(
        reply_text(Error::Client("bad command line format")),
        "CLIENT_ERROR bad command line format\r\n"
    );
    assert_eq!(
        reply_text(Error::Framing("bad data chunk")),
        "CLIENT_ERROR bad data chunk\r\n"
    );
    assert_eq!(
        reply_text(Error::TooLarge),
        "SERVER_ERROR object too large for cache\r\n"
    );
    assert_eq!(
        reply_text(Error::Backend("bad backend data chunk")),
        "SERVER_ERROR bad backend data chunk\r\n"
    );
    assert!(!Error::UnknownCommand.fatal());
    assert!(!Error::Client("x").fatal());
    assert!(Error::Framing("x").fatal());
    assert!(Error::TooLarge.fatal());
    assert!(Error::Backend("x").fatal());
    assert_eq!(Error::Client("key too long").to_string(), "key too long");
}

#[test]
fn commands_know_their_names_and_reply_shapes() {
    for command in COMMANDS {
        assert_eq!(Command::from_name(command.name().as_bytes()), Some(command));
    }
    assert_eq!(Command::from_name(b"Get"), None);
    assert_eq!(Command::from_name(b"me"), None);
    use Command::*;
    let retrieval: Vec<_> = COMMANDS.into_iter().filter(|c| c.is_retrieval()).collect();
    assert_eq!(retrieval, [Get, Gets, Gat, Gats]);
    let storage: Vec<_> = COMMANDS.into_iter().filter(|c| c.is_storage()).collect();
    assert_eq!(storage, [Set, Add, Replace, Append, Prepend, Cas, MetaSet]);
    for command in COMMANDS {
        let expected = if command.is_retrieval() {
            ReplyKind::Retrieval
        } else if command.is_meta() {
            ReplyKind::Meta
        } else if command == Command::Quit {
            ReplyKind::Close
        } else {
            ReplyKind::Line
        };
        assert_eq!(command.reply_kind(), expected, "{command:?}");
    }
}

/// Checks that `reply` is measured whole when followed by more bytes, and
/// that every proper prefix of it is incomplete.
fn measured_whole(reply: &[u8], kind: ReplyKind) {
    let limits = Limits::default();
    let what = String::from_utf8_lossy(reply);
    let mut stream = reply.to_vec();
    stream.extend_from_slice(b"NEXT\r\n");
    assert_eq!(
        reply_len(&stream, kind, &limits),
        Ok(Some(reply.len())),
        "{what:?}"
    );
    for cut in 0..reply.len() {
        assert_eq!(
            reply_len(&reply[..cut], kind, &limits),
            Ok(None),
            "{what:?} cut at {cut}"
        );
    }
}

#[test]
fn replies_of_every_shape_are_measured() {
    use ReplyKind::{Line, Meta, Retrieval};
    let cases: &[(ReplyKind, &[u8])] = &[
        (Line, b"STORED\r\n"),
        (Line, b"NOT_STORED\r\n"),
        (Line, b"EXISTS\r\n"),
        (Line, b"NOT_FOUND\r\n"),
        (Line, b"DELETED\r\n"),
        (Line, b"TOUCHED\r\n"),
        (Line, b"42\r\n"),
        (Line, b"18446744073709551615\r\n"),
        (Line, b"VERSION 1.6.21\r\n"),
        (Line, b"ERROR\r\n"),
        (Line, b"CLIENT_ERROR bad command line format\r\n"),
        (Line, b"SERVER_ERROR out of memory storing object\r\n"),
        (Retrieval, b"END\r\n"),
        (Retrieval, b"VALUE k 0 5\r\nhello\r\nEND\r\n"),
        (Retrieval, b"VALUE k 7 5 1234\r\nhello\r\nEND\r\n"),
        (
            Retrieval,
            b"VALUE a 0 0\r\n\r\nVALUE b 1 5\r\nEND\r\n\r\nEND\r\n",
        ),
        (Retrieval, b"VALUE k 0 2\r\n\r\n\r\nEND\r\n"),
        (Retrieval, b"ERROR\r\n"),
        (Retrieval, b"CLIENT_ERROR bad command line format\r\n"),
        (
            Retrieval,
            b"SERVER_ERROR out of memory writing get response\r\n",
        ),
        // memcached can fail part-way through a multi-get.
        (
            Retrieval,
            b"VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory writing get response\r\n",
        ),
        (Meta, b"HD\r\n"),
        (Meta, b"HD c123 t-1 Oabc k/foo b\r\n"),
        (Meta, b"VA 5 s5 f0\r\nhello\r\n"),
        (Meta, b"VA 0\r\n\r\n"),
        (Meta, b"VA 4 t10\r\n\r\n\r\n\r\n"),
        (Meta, b"EN\r\n"),
        (Meta, b"NF\r\n"),
        (Meta, b"NS\r\n"),
        (Meta, b"EX\r\n"),
        (Meta, b"MN\r\n"),
        (Meta, b"CLIENT_ERROR bad data chunk\r\n"),
        (Meta, b"SERVER_ERROR out of memory\r\n"),
    ];
    for &(kind, reply) in cases {
        measured_whole(reply, kind);
    }
    assert_eq!(
        reply_len(b"", ReplyKind::Close, &Limits::default()),
        Ok(Some(0))
    );
    assert_eq!(
        reply_len(b"STORED\r\n", ReplyKind::Close, &Limits::default()),
        Ok(Some(0))
    );
}

#[test]
fn malformed_replies_are_refused() {
    let cases: [(&[u8], ReplyKind, &str); 12] = [
        (
            b"STORED\n",
            ReplyKind::Line,
            "backend reply line not ended by CRLF",
        ),
        (
            b"\n",
            ReplyKind::Line,
            "backend reply line not ended by CRLF",
        ),
        (b"\r\n", ReplyKind::Line, "empty backend reply line"),
        (b"VA\r\n", ReplyKind::Meta, "bad backend value length"),
        (b"VA x\r\n", ReplyKind::Meta, "bad backend value length"),
        (
            b"VA 2\r\nabc\r\n",
            ReplyKind::Meta,
            "bad backend data chunk",
        ),
        (
            b"STORED\r\n",
            ReplyKind::Retrieval,
            "unexpected line in backend retrieval reply",
        ),
        (
            b"VALUE k 0\r\n",
            ReplyKind::Retrieval,
            "bad backend VALUE line",
        ),
        (
            b"VALUE k 0 1 2 3\r\n",
            ReplyKind::Retrieval,
            "bad backend VALUE line",
        ),
        (
            b"VALUE k 0 -1\r\n",
            ReplyKind::Retrieval,
            "bad backend value length",
        ),
        (
            b"VALUE k 0 1\r\nxy\r\n",
            ReplyKind::Retrieval,
            "bad backend data chunk",
        ),
        (
            b"VALUE k 0 1\r\nx\r\nEND\n",
            ReplyKind::Retrieval,
            "backend reply line not ended by CRLF",
        ),
    ];
    for (reply, kind, why) in cases {
        let got = reply_len(reply, kind, &Limits::default());
        assert_eq!(
            got,
            Err(Error::Backend(why)),
            "{:?}",
            String::from_utf8_lossy(reply)
        );
    }
    // "VALUES" is not "VALUE", nor "ENDING" "END".
    assert!(reply_len(
        b"VALUES k 0 1\r\n",
        ReplyKind::Retrieval,
        &Limits::default()
    )
    .is_err());
    assert!(reply_len(b"ENDING\r\n", ReplyKind::Retrieval, &Limits::default()).is_err());
}

#[test]
fn values_walks_the_blocks_of_a_retrieval_reply() {
    let reply = b"VALUE a 0 1\r\nx\r\nVALUE bb 3 5 99\r\nEND\r\n\r\nEND\r\n";
    assert_eq!(
        reply_len(reply, ReplyKind::Retrieval, &Limits::default()),
        Ok(Some(reply.len()))
    );
    let mut walk = values(reply);
    let found: Vec<_> = walk
        .by_ref()
        .map(|(key, block)| (reply[key].to_vec(), reply[block].to_vec()))
        .collect();
    assert_eq!(
        found,
        [
            (b"a".to_vec(), b"VALUE a 0 1\r\nx\r\n".to_vec()),
            (b"bb".to_vec(), b"VALUE bb 3 5 99\r\nEND\r\n\r\n".to_vec()),
        ]
    );
    assert_eq!(&reply[walk.position()..], b"END\r\n");
    assert_eq!(walk.next(), None);

    assert_eq!(values(b"END\r\n").count(), 0);
    let failed = b"VALUE a 0 1\r\nx\r\nSERVER_ERROR out of memory\r\n";
    let mut walk = values(failed);
    assert_eq!(walk.next(), Some((6..7, 0..16)));
    assert_eq!(walk.next(), None);
    assert!(is_error(&failed[walk.position()..]));
    // Truncated input ends the walk instead of yielding past the end.
    assert_eq!(values(b"VALUE a 0 10\r\nx\r\n").count(), 0);
}

#[test]
fn error_lines_are_recognised() {
    for (line, error) in [
        (&b"ERROR"[..], true),
        (b"ERROR\r\n", true),
        (b"ERROR unknown", true),
        (b"CLIENT_ERROR bad data chunk\r\n", true),
        (b"SERVER_ERROR out of memory\r\n", true),
        (b"ERRORS\r\n", false),
        (b"END\r\n", false),
        (b"SERVER_ERRORX\r\n", false),
        (b"", false),
    ] {
        assert_eq!(is_error(line), error, "{line:?}");
    }
}

#[test]
fn quiet_mode_hides_what_memcached_hides() {
    use Command::*;
    let cases: [(Command, &[u8], bool); 20] = [
        // mg: only the miss.
        (MetaGet, b"EN\r\n", true),
        (MetaGet, b"EN Oabc\r\n", true),
        (MetaGet, b"HD t-1\r\n", false),
        (MetaGet, b"VA 2\r\nhi\r\n", false),
        // ms: only the nominal HD.
        (MetaSet, b"HD\r\n", true),
        (MetaSet, b"HD c5\r\n", true),
        (MetaSet, b"NS\r\n", false),
        (MetaSet, b"EX\r\n", false),
        (MetaSet, b"NF\r\n", false),
        // md: HD only; memcached still sends NF.
        (MetaDelete, b"HD\r\n", true),
        (MetaDelete, b"NF\r\n", false),
        (MetaDelete, b"EX\r\n", false),
        // ma: success, with or without the value.
        (MetaArithmetic, b"HD\r\n", true),
        (MetaArithmetic, b"VA 2 t-1\r\n10\r\n", true),
        (MetaArithmetic, b"NF\r\n", false),
        (MetaArithmetic, b"NS\r\n", false),
        // Errors are always sent; other commands have no q.
        (MetaSet, b"CLIENT_ERROR bad data chunk\r\n", false),
        (MetaGet, b"SERVER_ERROR out of memory\r\n", false),
        (MetaNoop, b"MN\r\n", false),
        (Get, b"END\r\n", false),
    ];
    for (command, reply, hidden) in cases {
        assert_eq!(
            quiet_suppresses(command, reply),
            hidden,
            "{command:?} {:?}",
            String::from_utf8_lossy(reply)
        );
    }
    assert!(!quiet_suppresses(MetaSet, b"HDX\r\n"));
}

#[test]
fn the_request_is_reused_without_leftovers() {
    let mut req = Request::new();
    let limits = Limits::default();
    parse_request(b"ms k 1 q\r\nx\r\n", &limits, &mut req).unwrap();
    assert!(req.quiet.is_some() && req.data.is_some());
    parse_request(b"get a b\r\n", &limits, &mut req).unwrap();
    assert_eq!(req.tokens.len(), 3);
    assert_eq!(
        (req.quiet, req.data.clone(), req.noreply),
        (None, None, None)
    );
    assert_eq!(req.keys, 1..3);
    assert_eq!(parse_request(b"get", &limits, &mut req), Ok(None));
    assert!(req.tokens.is_empty());
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0x21u8..0x7f, 1..20)
}

/// A request on the wire, and what parsing it must give.
#[derive(Debug, Clone)]
struct Case {
    wire: Vec<u8>,
    command: Command,
    keys: Vec<Vec<u8>>,
    data: Option<Vec<u8>>,
    noreply: bool,
    quiet: bool,
}

impl Case {
    /// The request line `<name><args>\r\n`, with no data block, no
    /// `noreply` and no `q`.
    fn line(command: Command, keys: Vec<Vec<u8>>, args: &[u8]) -> Case {
        let wire = [command.name().as_bytes(), args, b"\r\n"].concat();
        Case {
            wire,
            command,
            keys,
            data: None,
            noreply: false,
            quiet: false,
        }
    }

    /// The line followed by the data block `data`.
    fn with_data(mut self, data: &[u8]) -> Case {
        let block = [data, b"\r\n"].concat();
        self.wire.extend_from_slice(&block);
        self.data = Some(block);
        self
    }
}

fn case() -> impl Strategy<Value = Case> {
    use Command::*;
    let retrieval = (
        prop::sample::select(vec![Get, Gets, Gat, Gats]),
        proptest::collection::vec(key(), 1..6),
        any::<i32>(),
    )
        .prop_map(|(command, keys, exptime)| {
            let mut args = Vec::new();
            if matches!(command, Gat | Gats) {
                args.extend_from_slice(format!(" {exptime}").as_bytes());
            }
            for k in &keys {
                args.push(b' ');
                args.extend_from_slice(k);
            }
            Case::line(command, keys, &args)
        });
    let storage = (
        prop::sample::select(vec![Set, Add, Replace, Append, Prepend, Cas]),
        key(),
        any::<u32>(),
        any::<i32>(),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(command, key, flags, exptime, cas, data, noreply)| {
            let mut args = [b" ", &key[..]].concat();
            args.extend_from_slice(format!(" {flags} {exptime} {}", data.len()).as_bytes());
            if command == Cas {
                args.extend_from_slice(format!(" {cas}").as_bytes());
            }
            if noreply {
                args.extend_from_slice(b" noreply");
            }
            let line = Case::line(command, vec![key], &args);
            Case {
                noreply,
                ..line.with_data(&data)
            }
        });
    let keyed = (
        prop::sample::select(vec![Delete, Incr, Decr, Touch]),
        key(),
        any::<u64>(),
        any::<i32>(),
        any::<bool>(),
    )
        .prop_map(|(command, key, delta, exptime, noreply)| {
            let mut args = [b" ", &key[..]].concat();
            match command {
                Incr | Decr => args.extend_from_slice(format!(" {delta}").as_bytes()),
                Touch => args.extend_from_slice(format!(" {exptime}").as_bytes()),
                _ => {}
            }
            if noreply {
                args.extend_from_slice(b" noreply");
            }
            Case {
                noreply,
                ..Case::line(command, vec![key], &args)
            }
        });
    let meta = (
        prop::sample::select(vec![MetaGet, MetaSet, MetaDelete, MetaArithmetic]),
        key(),
        proptest::sample::subsequence(b"bcfhklOqstuvNTR".to_vec(), 0..8),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(command, key, flags, data)| {
            let mut args = [b" ", &key[..]].concat();
            if command == MetaSet {
                args.extend_from_slice(format!(" {}", data.len()).as_bytes());
            }
            for &f in &flags {
                args.extend_from_slice(&[b' ', f]);
                if f.is_ascii_uppercase() {
                    args.extend_from_slice(b"123");
                }
            }
            let line = Case::line(command, vec![key], &args);
            Case {
                quiet: flags.contains(&b'q'),
                ..if command == MetaSet {
                    line.with_data(&data)
                } else {
                    line
                }
            }
        });
    prop_oneof![retrieval, storage, keyed, meta]
}

proptest! {
    /// Arbitrary bytes never panic, and whatever is reported lies inside
    /// the input.
    #[test]
    fn arbitrary_input_is_safe(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let limits = Limits {
            max_line: 64,
            max_retrieval_line: 96,
            max_value: 64,
            max_keys: 4,
            max_key: 8,
        };
        let mut req = Request::new();
        match parse_request(&input, &limits, &mut req) {
            Ok(Some(used)) => {
                prop_assert!(used > 0 && used <= input.len());
                prop_assert!(req.tokens.iter().all(|t| t.end < req.line_len));
                prop_assert!(req.keys.end <= req.tokens.len());
                prop_assert!(req.data.iter().all(|d| d.start == req.line_len && d.end == used));
            }
            Err(e) if !e.fatal() => prop_assert!(req.len > 0 && req.len <= input.len()),
            _ => {}
        }
        for kind in [ReplyKind::Retrieval, ReplyKind::Line, ReplyKind::Meta, ReplyKind::Close] {
            if let Ok(Some(used)) = reply_len(&input, kind, &limits) {
                prop_assert!(used <= input.len());
            }
        }
        for (key, block) in values(&input) {
            prop_assert!(block.start <= key.start && key.end <= block.end && block.end <= input.len());
        }
        quiet_suppresses(Command::MetaArithmetic, &input);
        is_error(&input);
    }

    /// Every VALUE block the reply framer accepts is walked by `values`.
    #[test]
    fn values_agree_with_reply_len(
        items in proptest::collection::vec((key(), proptest::collection::vec(any::<u8>(), 0..16)), 0..5),
    ) {
        let mut reply = Vec::new();
        for (k, data) in &items {
            reply.extend_from_slice(b"VALUE ");
            reply.extend_from_slice(k);
            reply.extend_from_slice(format!(" 0 {}\r\n", data.len()).as_bytes());
            reply.extend_from_slice(data);
            reply.extend_from_slice(b"\r\n");
        }
        reply.extend_from_slice(b"END\r\n");
        prop_assert_eq!(reply_len(&reply, ReplyKind::Retrieval, &Limits::default()), Ok(Some(reply.len())));
        prop_assert_eq!(reply_len(&reply[..reply.len() - 1], ReplyKind::Retrieval, &Limits::default()), Ok(None));
        let keys: Vec<_> = values(&reply).map(|(k, _)| reply[k].to_vec()).collect();
        let expected: Vec<_> = items.iter().map(|(k, _)| k.clone()).collect();
        prop_assert_eq!(keys, expected);
    }

    /// Encoded requests parse back to what was encoded, whole and only
    /// whole.
    #[test]
    fn encoded_requests_round_trip(case in case()) {
        let parsed = parse(&case.wire);
        let parsed = parsed.unwrap().unwrap();
        prop_assert_eq!(parsed.command, case.command);
        prop_assert_eq!(parsed.len, case.wire.len());
        let keys: Vec<Vec<u8>> = parsed.keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        prop_assert_eq!(keys, case.keys);
        prop_assert_eq!(parsed.data, case.data);
        prop_assert_eq!(parsed.noreply.map(|i| parsed.tokens[i].clone()), case.noreply.then(|| "noreply".to_string()));
        prop_assert_eq!(parsed.quiet.map(|i| parsed.tokens[i].clone()), case.quiet.then(|| "q".to_string()));
        prop_assert_eq!(parse(&case.wire[..case.wire.len() - 1]), Ok(None));
    }
}

/// `command` and `n` keys of 29 bytes: the line is 30 bytes a key.
fn long_get(command: &str, n: usize) -> Vec<u8> {
    let mut line = command.as_bytes().to_vec();
    for i in 0..n {
        line.extend_from_slice(format!(" key:{i:05}:padding-padding-xyz").as_bytes());
    }
    line.extend_from_slice(b"\r\n");
    line
}

#[test]
fn a_multi_get_of_5000_keys_is_one_request_within_the_default_limits() {
    for command in ["get", "gets"] {
        let line = long_get(command, 5_000);
        assert!(line.len() > 145_000, "{}", line.len());
        let p = whole(&line);
        assert_eq!(p.keys.len(), 5_000);
        assert_eq!(p.keys[0], "key:00000:padding-padding-xyz");
        assert_eq!(p.keys[4_999], "key:04999:padding-padding-xyz");
    }
    let mut gat = b"gat 60".to_vec();
    gat.extend_from_slice(&long_get("", 5_000));
    let p = whole(&gat);
    assert_eq!((p.command, p.keys.len()), (Command::Gat, 5_000));
}

#[test]
fn a_long_line_arriving_in_pieces_is_searched_once() {
    let limits = Limits::default();
    let mut line = long_get("get", 5_000);
    line.extend_from_slice(b"get next\r\n");
    let first = line.len() - b"get next\r\n".len();
    let mut req = Request::new();
    let mut progress = Progress::new();
    // TCP segments of a 1500-byte MTU, each offered with all before it,
    // as a runtime that holds back unused input does.
    let mut offered = 0;
    while offered < first {
        offered = (offered + 1448).min(first - 1);
        let before = progress.searched();
        assert_eq!(
            parse_request_resumed(&line[..offered], &limits, &mut req, &mut progress),
            Ok(None)
        );
        // The next search starts where this one stopped: nothing before
        // is searched again.
        assert!(before <= progress.searched() && progress.searched() == offered);
        if offered == first - 1 {
            break;
        }
    }
    let used = parse_request_resumed(&line, &limits, &mut req, &mut progress);
    assert_eq!(used, Ok(Some(first)));
    assert_eq!(req.key_ranges().len(), 5_000);
    assert_eq!(progress, Progress::new());
    // The same request as parsed whole, in one call.
    let mut whole_req = Request::new();
    parse_request(&line, &limits, &mut whole_req).unwrap();
    assert_eq!(req, whole_req);
    // A complete request leaves nothing behind for the next one.
    let rest = &line[first..];
    assert_eq!(
        parse_request_resumed(&rest[..4], &limits, &mut req, &mut progress),
        Ok(None)
    );
    assert_eq!(
        parse_request_resumed(rest, &limits, &mut req, &mut progress),
        Ok(Some(rest.len()))
    );
    assert_eq!(req.key_ranges().len(), 1);
    assert_eq!(req.key_ranges()[0], 4..8);
}

#[test]
fn a_long_retrieval_line_is_bounded_by_its_own_limit_even_in_pieces() {
    let limits = Limits {
        max_line: 100,
        max_retrieval_line: 1_000,
        ..Limits::default()
    };
    let line = long_get("gets", 100);
    let mut req = Request::new();
    let mut progress = Progress::new();
    assert_eq!(
        parse_request_resumed(&line[..1_000], &limits, &mut req, &mut progress),
        Ok(None)
    );
    assert_eq!(
        parse_request_resumed(&line[..1_001], &limits, &mut req, &mut progress),
        Err(Error::Framing("line too long"))
    );
    assert_eq!(progress, Progress::new());
    // Other commands keep max_line, however large the retrieval limit.
    let limits = Limits {
        max_line: 100,
        ..Limits::default()
    };
    let mut touch = b"touch ".to_vec();
    touch.resize(101, b'k');
    assert_eq!(
        parse_request_resumed(&touch, &limits, &mut req, &mut progress),
        Err(Error::Framing("line too long"))
    );
    // More keys than max_keys: refused, and skipped whole.
    let limits = Limits {
        max_keys: 4_999,
        ..Limits::default()
    };
    let line = long_get("get", 5_000);
    assert_eq!(
        parse_request_resumed(&line, &limits, &mut req, &mut progress),
        Err(Error::Client("too many keys"))
    );
    assert_eq!(req.len, line.len());
}

/// A binary `get foo` with opaque 0xdeadbeef.
const BINARY_GET: &[u8] = &[
    0x80, 0x00, 0x00, 0x03, // magic, opcode (get), key length 3
    0x00, 0x00, 0x00, 0x00, // extras, data type, vbucket
    0x00, 0x00, 0x00, 0x03, // body length 3
    0xde, 0xad, 0xbe, 0xef, // opaque
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // cas
    b'f', b'o', b'o',
];

#[test]
fn a_binary_request_gets_a_binary_error_and_the_stream_ends() {
    // Until the whole header is in, there is nothing to answer with.
    for cut in 1..binary::HEADER_LEN {
        assert_eq!(parse(&BINARY_GET[..cut]), Ok(None), "cut at {cut}");
    }
    let error = parse(BINARY_GET).unwrap_err();
    assert_eq!(
        error,
        Error::Binary {
            opcode: 0x00,
            opaque: 0xdead_beef
        }
    );
    assert!(error.fatal());
    let mut out = Vec::new();
    error.emit_reply(&mut out);
    #[rustfmt::skip]
    const EXPECTED: &[u8] = b"\
        \x81\x00\x00\x00\
        \x00\x00\x00\x81\
        \x00\x00\x00\x34\
        \xde\xad\xbe\xef\
        \x00\x00\x00\x00\x00\x00\x00\x00\
        binary protocol not supported: use the text protocol";
    // Response magic, the opcode echoed, no key, no extras, raw data,
    // status 0x0081 (unknown command), a body of 0x34 bytes (the message),
    // the opaque echoed, no cas.
    assert_eq!(out, EXPECTED);
    let response = binary::Header::new_checked(&out[..]).unwrap();
    assert_eq!(
        response.body_length() as usize,
        out.len() - binary::HEADER_LEN
    );
    // A binary quit (opcode 0x07) too: the opcode is echoed.
    let mut quit = BINARY_GET[..binary::HEADER_LEN].to_vec();
    quit[1] = 0x07;
    assert!(matches!(
        parse(&quit),
        Err(Error::Binary { opcode: 0x07, .. })
    ));
}

proptest! {
    /// A stream offered in growing prefixes, as a runtime offers what it
    /// holds back, parses to the same requests and errors with
    /// `parse_request_resumed` as with `parse_request` on all of it.
    #[test]
    fn resumed_parsing_agrees_with_parsing_whole(
        pieces in proptest::collection::vec(
            prop_oneof![
                Just(PIPELINE.concat()),
                Just(long_get("get", 40)),
                Just(long_get("gat 9", 40)),
                Just(BINARY_GET.to_vec()),
                proptest::collection::vec(any::<u8>(), 0..64),
            ],
            1..6,
        ),
        cuts in proptest::collection::vec(1usize..300, 1..40),
    ) {
        let stream = pieces.concat();
        let limits = Limits {
            max_line: 200,
            max_retrieval_line: 1_500,
            ..Limits::default()
        };
        let mut whole_req = Request::new();
        let mut req = Request::new();
        let mut progress = Progress::new();
        // Where the next request starts, and how much of the stream the
        // runtime holds.
        let (mut at, mut held) = (0usize, 0usize);
        for cut in cuts.iter().chain(std::iter::once(&usize::MAX)) {
            held = held.saturating_add(*cut).min(stream.len());
            loop {
                let input = &stream[at..held];
                let resumed = parse_request_resumed(input, &limits, &mut req, &mut progress);
                let fresh = parse_request(input, &limits, &mut whole_req);
                prop_assert_eq!(resumed, fresh);
                match resumed {
                    Ok(Some(used)) => {
                        prop_assert_eq!(&req, &whole_req);
                        at += used;
                    }
                    Err(e) if !e.fatal() => at += req.len,
                    Err(_) => return Ok(()),
                    Ok(None) => break,
                }
            }
        }
    }
}
