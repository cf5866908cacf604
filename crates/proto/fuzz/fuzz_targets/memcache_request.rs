//! Any bytes: `parse_request` never panics; what it reports as used lies
//! inside the input, every token inside the command line, every key among
//! the tokens; a refused request that can be skipped is skipped whole.
#![no_main]

use ferrox_proto::memcache::{parse_request, Limits, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_key: 250,
        max_value: 1 << 12,
        max_line: 1 << 10,
        max_retrieval_line: 1 << 12,
        max_keys: 64,
    };
    let mut req = Request::new();
    let mut rest = data;
    loop {
        match parse_request(rest, &limits, &mut req) {
            Ok(Some(used)) => {
                assert!(used > 0 && used <= rest.len() && used == req.len);
                assert!(req.line_len <= used);
                assert!(req
                    .tokens
                    .iter()
                    .all(|t| t.start < t.end && t.end < req.line_len));
                assert!(req.keys.end <= req.tokens.len());
                assert!(!req.key_ranges().is_empty() || req.keys.is_empty());
                if let Some(d) = &req.data {
                    assert!(
                        d.start == req.line_len
                            && d.end == used
                            && &rest[d.end - 2..d.end] == b"\r\n"
                    );
                }
                for i in req.noreply.into_iter().chain(req.quiet) {
                    assert!(i < req.tokens.len());
                }
                rest = &rest[used..];
            }
            Err(e) if !e.fatal() => {
                assert!(req.len > 0 && req.len <= rest.len());
                rest = &rest[req.len..];
            }
            _ => break,
        }
    }
});
