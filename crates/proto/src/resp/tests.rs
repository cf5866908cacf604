use super::*;
use proptest::prelude::*;

/// Bytes used and the arguments, as owned bytes for comparing.
type Parsed = Option<(usize, Vec<Vec<u8>>)>;

fn request(input: &[u8]) -> Result<Parsed, ProtocolError> {
    let mut args = Vec::new();
    Ok(
        parse_request(input, &Limits::default(), &mut args)?.map(|used| {
            (
                used,
                args.iter().map(|r| input[r.clone()].to_vec()).collect(),
            )
        }),
    )
}

fn words(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|w| w.as_bytes().to_vec()).collect()
}

#[test]
fn multibulk_requests() {
    assert_eq!(
        request(b"*1\r\n$4\r\nPING\r\n"),
        Ok(Some((14, words(&["PING"]))))
    );
    let set = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n";
    let mut stream = set.to_vec();
    stream.extend_from_slice(b"rest");
    assert_eq!(
        request(&stream),
        Ok(Some((set.len(), words(&["SET", "k", ""]))))
    );
    // Binary-safe: CRLF inside a bulk string is data.
    assert_eq!(
        request(b"*2\r\n$4\r\nECHO\r\n$2\r\n\r\n\r\n"),
        Ok(Some((22, words(&["ECHO", "\r\n"]))))
    );
    assert_eq!(request(b"*0\r\n"), Ok(Some((4, vec![]))));
}

#[test]
fn inline_requests() {
    assert_eq!(request(b"PING\r\n"), Ok(Some((6, words(&["PING"])))));
    assert_eq!(
        request(b"  SET  k\tv \n"),
        Ok(Some((12, words(&["SET", "k", "v"]))))
    );
    assert_eq!(request(b"\r\n"), Ok(Some((2, vec![]))));
}

#[test]
fn every_prefix_of_a_request_is_incomplete() {
    let full = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n";
    for cut in 0..full.len() {
        assert_eq!(request(&full[..cut]), Ok(None), "cut at {cut}");
    }
    assert_eq!(request(full).unwrap().unwrap().0, full.len());
}

#[test]
fn malformed_requests_name_the_problem() {
    let cases: [(&[u8], &str); 7] = [
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n!4\r\nPING\r\n", "expected '$'"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$4\r\nPINGxx", "bulk string not terminated by CRLF"),
        (b"*1\rX", "CR not followed by LF"),
        (b"*2000000\r\n", "invalid multibulk length"),
        (b"*1\r\n$99999999999999999999\r\n", "invalid bulk length"),
    ];
    for (input, why) in cases {
        assert_eq!(request(input), Err(ProtocolError(why)), "{input:?}");
    }
}

#[test]
fn limits_are_enforced() {
    let limits = Limits {
        max_bulk: 4,
        max_array: 2,
        max_depth: 2,
        max_inline: 8,
    };
    let mut args = Vec::new();
    assert!(parse_request(b"*1\r\n$4\r\nPING\r\n", &limits, &mut args).is_ok());
    for (request, why) in [
        (&b"*1\r\n$5\r\nHELLO\r\n"[..], "invalid bulk length"),
        (b"*3\r\n", "invalid multibulk length"),
        (b"a b c\r\n", "too many arguments"),
        (b"123456789", "too big inline request"),
    ] {
        assert_eq!(
            parse_request(request, &limits, &mut args),
            Err(ProtocolError(why)),
            "{request:?}"
        );
    }
    assert_eq!(
        reply_len(b"*1\r\n*1\r\n*1\r\n:1\r\n", &limits),
        Err(ProtocolError("reply nested too deeply"))
    );
    assert_eq!(reply_len(b"*1\r\n*1\r\n:1\r\n", &limits), Ok(Some(12)));
}

#[test]
fn replies_of_every_type_are_measured() {
    let cases: [&[u8]; 16] = [
        b"+OK\r\n",
        b"-ERR wrong\r\n",
        b":42\r\n",
        b"$5\r\nhello\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*2\r\n$1\r\na\r\n:1\r\n",
        b"*2\r\n*1\r\n+x\r\n*0\r\n",
        b"_\r\n",
        b"#t\r\n",
        b",3.14\r\n",
        b"(12345678901234567890\r\n",
        b"!5\r\nerror\r\n",
        b"=8\r\ntxt:abcd\r\n",
        b"%1\r\n+k\r\n~2\r\n:1\r\n:2\r\n",
        b"|1\r\n+ttl\r\n:5\r\n$3\r\nval\r\n",
    ];
    for reply in cases {
        let mut stream = reply.to_vec();
        stream.extend_from_slice(b"+NEXT\r\n");
        assert_eq!(
            reply_len(&stream, &Limits::default()),
            Ok(Some(reply.len())),
            "{:?}",
            String::from_utf8_lossy(reply)
        );
        for cut in 0..reply.len() {
            assert_eq!(
                reply_len(&reply[..cut], &Limits::default()),
                Ok(None),
                "{reply:?} cut at {cut}"
            );
        }
    }
    let push = b">2\r\n+message\r\n+hi\r\n";
    assert_eq!(reply_len(push, &Limits::default()), Ok(Some(push.len())));
}

#[test]
fn malformed_replies_are_refused() {
    for (reply, why) in [
        (&b"?\r\n"[..], "unknown reply type"),
        (b"\r\n", "empty reply line"),
        (b"$3\r\nabcd\r\n", "bulk string not terminated by CRLF"),
        (b"$?\r\n", "streamed strings are not supported"),
        (b"*?\r\n", "streamed aggregates are not supported"),
        (b"%-1\r\n", "invalid multibulk length"),
    ] {
        assert_eq!(
            reply_len(reply, &Limits::default()),
            Err(ProtocolError(why)),
            "{reply:?}"
        );
    }
}

#[test]
fn writers_emit_resp() {
    let mut out = Vec::new();
    write_array_header(&mut out, 12);
    write_bulk(&mut out, b"ab");
    write_bulk(&mut out, b"");
    write_integer(&mut out, -7);
    write_integer(&mut out, 0);
    write_error(&mut out, format_args!("ERR unknown command '{}'", "x"));
    assert_eq!(
        out,
        b"*12\r\n$2\r\nab\r\n$0\r\n\r\n:-7\r\n:0\r\n-ERR unknown command 'x'\r\n"
    );
    for (resp3, null, map) in [
        (false, &b"$-1\r\n"[..], &b"*4\r\n"[..]),
        (true, b"_\r\n", b"%2\r\n"),
    ] {
        out.clear();
        write_null(&mut out, resp3);
        assert_eq!(out, null);
        out.clear();
        write_map_header(&mut out, 2, resp3);
        assert_eq!(out, map);
    }
    out.clear();
    write_bulk_array(&mut out, [&b"SELECT"[..], b"3"]);
    assert_eq!(out, b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n");
}

#[test]
fn bulk_lengths_are_written_in_decimal() {
    for len in [0usize, 1, 9, 10, 99, 100, 12345] {
        let mut out = Vec::new();
        write_bulk(&mut out, &vec![b'x'; len]);
        assert!(out.starts_with(format!("${len}\r\n").as_bytes()), "{len}");
    }
    let mut out = Vec::new();
    write_integer(&mut out, i64::MIN);
    assert_eq!(out, b":-9223372036854775808\r\n");
}

proptest! {
    /// Arbitrary bytes never panic and never claim more than they have.
    #[test]
    fn arbitrary_input_is_safe(input in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut args = Vec::new();
        if let Ok(Some(used)) = parse_request(&input, &Limits::default(), &mut args) {
            prop_assert!(used <= input.len());
            prop_assert!(args.iter().all(|r| r.end <= used));
        }
        if let Ok(Some(used)) = reply_len(&input, &Limits::default()) {
            prop_assert!(used <= input.len());
        }
    }

    /// Encoded requests parse back to their arguments, whole and only whole.
    #[test]
    fn encoded_requests_round_trip(parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..8)) {
        let mut wire = format!("*{}\r\n", parts.len()).into_bytes();
        for p in &parts {
            wire.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            wire.extend_from_slice(p);
            wire.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(request(&wire), Ok(Some((wire.len(), parts.clone()))));
        prop_assert_eq!(request(&wire[..wire.len() - 1]), Ok(None));
        // The writer emits the same bytes.
        let mut written = Vec::new();
        write_bulk_array(&mut written, parts.iter().map(Vec::as_slice));
        prop_assert_eq!(written, wire);
    }
}
