//! A minimal Redis-protocol service for proving the dataplane: `PING`,
//! `ECHO`, and enough of `CONFIG GET` for `redis-benchmark` to start. Every
//! other command gets an error reply naming it; a malformed request gets a
//! protocol error and the connection is closed gracefully.

use std::ops::Range;

use ferrox_proto::resp::{self, Limits};

use super::{Service, Verdict};

/// The echo service: the RESP framing of `ferrox-proto` with its own
/// limits, and an argument list reused from request to request.
#[derive(Debug)]
pub struct RespEcho {
    limits: Limits,
    args: Vec<Range<usize>>,
}

impl Default for RespEcho {
    fn default() -> Self {
        RespEcho {
            limits: Limits {
                max_bulk: 64 << 10,
                max_array: 1024,
                ..Limits::default()
            },
            args: Vec::with_capacity(16),
        }
    }
}

/// Longest request the echo service holds while waiting for its end.
const MAX_REQUEST: usize = 1 << 20;

/// Writes the reply to the request whose arguments are `args` of `input`.
/// The common commands allocate nothing (the output buffer is reused);
/// error replies may.
fn reply(input: &[u8], args: &[Range<usize>], output: &mut Vec<u8>) {
    let arg = |i: usize| &input[args[i].clone()];
    let Some(name) = args.first().map(|r| &input[r.clone()]) else {
        return;
    };
    let is = |command: &[u8]| name.eq_ignore_ascii_case(command);
    if is(b"PING") && args.len() == 1 {
        output.extend_from_slice(b"+PONG\r\n");
    } else if (is(b"PING") || is(b"ECHO")) && args.len() == 2 {
        resp::write_bulk(output, arg(1));
    } else if is(b"PING") || is(b"ECHO") {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        resp::write_error(
            output,
            format_args!("ERR wrong number of arguments for '{name}' command"),
        );
    } else if is(b"CONFIG") && args.len() == 3 && arg(1).eq_ignore_ascii_case(b"GET") {
        // redis-benchmark asks for these before it starts.
        resp::write_bulk_array(output, [arg(2), b""]);
    } else {
        let shown: String = String::from_utf8_lossy(name).chars().take(64).collect();
        resp::write_error(output, format_args!("ERR unknown command '{shown}'"));
    }
}

impl Service for RespEcho {
    type Conn = ();

    fn on_input(&mut self, _conn: &mut (), input: &[u8], output: &mut Vec<u8>) -> (usize, Verdict) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match resp::parse_request(rest, &self.limits, &mut self.args) {
                Ok(None) if rest.len() > MAX_REQUEST => {
                    resp::write_error(output, format_args!("ERR Protocol error: request too long"));
                    return (input.len(), Verdict::Close);
                }
                Ok(None) => return (used, Verdict::Continue),
                Ok(Some(n)) => {
                    reply(rest, &self.args, output);
                    used += n;
                }
                Err(e) => {
                    resp::write_error(output, format_args!("ERR Protocol error: {e}"));
                    return (input.len(), Verdict::Close);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (usize, Verdict, Vec<u8>) {
        let mut out = Vec::new();
        let (used, verdict) = RespEcho::default().on_input(&mut (), input, &mut out);
        (used, verdict, out)
    }

    #[test]
    fn an_endless_request_is_refused() {
        // Incomplete but short: waited for.
        let mut input = b"*2\r\n$4\r\nECHO\r\n$100\r\n".to_vec();
        input.resize(input.len() + 50, b'x');
        assert_eq!(run(&input), (0, Verdict::Continue, Vec::new()));
        // Incomplete and past MAX_REQUEST: refused.
        let mut input = b"*20\r\n".to_vec();
        while input.len() <= MAX_REQUEST {
            input.extend_from_slice(b"$65536\r\n");
            input.resize(input.len() + 65536, b'x');
            input.extend_from_slice(b"\r\n");
        }
        let (used, verdict, out) = run(&input);
        assert_eq!((used, verdict), (input.len(), Verdict::Close));
        assert_eq!(out, b"-ERR Protocol error: request too long\r\n");
    }

    #[test]
    fn ping_inline_and_multibulk() {
        assert_eq!(
            run(b"PING\r\n"),
            (6, Verdict::Continue, b"+PONG\r\n".to_vec())
        );
        assert_eq!(
            run(b"*1\r\n$4\r\nping\r\n"),
            (14, Verdict::Continue, b"+PONG\r\n".to_vec())
        );
        assert_eq!(
            run(b"*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n").2,
            b"$2\r\nhi\r\n".to_vec()
        );
    }

    #[test]
    fn pipelined_requests_reply_in_order_and_partial_ones_wait() {
        let (used, verdict, out) = run(b"PING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n*1\r\n$4\r\nPI");
        assert_eq!(verdict, Verdict::Continue);
        assert_eq!(out, b"+PONG\r\n$1\r\nx\r\n".to_vec());
        assert_eq!(
            used,
            6 + 21,
            "PING and the ECHO are used; the partial request waits"
        );
    }

    #[test]
    fn every_split_point_gives_the_same_replies() {
        let input = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\nPING\r\n";
        for cut in 0..input.len() {
            let mut out = Vec::new();
            let mut pending = input[..cut].to_vec();
            let (used, _) = RespEcho::default().on_input(&mut (), &pending, &mut out);
            pending.drain(..used);
            pending.extend_from_slice(&input[cut..]);
            let (used, _) = RespEcho::default().on_input(&mut (), &pending, &mut out);
            assert_eq!(used, pending.len(), "cut at {cut}");
            assert_eq!(out, b"$5\r\nhello\r\n+PONG\r\n".to_vec(), "cut at {cut}");
        }
    }

    #[test]
    fn malformed_requests_get_a_protocol_error_and_close() {
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n!4\r\nPING\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$4\r\nPINGxx",
            b"*99999\r\n",
        ] {
            let (_, verdict, out) = run(bad);
            assert_eq!(verdict, Verdict::Close, "{bad:?}");
            assert!(out.starts_with(b"-ERR Protocol error: "), "{bad:?}");
        }
    }

    #[test]
    fn commands_are_matched_without_case() {
        assert_eq!(
            run(b"ping\r\nPiNg x\r\n").2,
            b"+PONG\r\n$1\r\nx\r\n".to_vec()
        );
    }

    #[test]
    fn unknown_commands_are_named_in_the_error() {
        assert_eq!(
            run(b"GET k\r\n").2,
            b"-ERR unknown command 'GET'\r\n".to_vec()
        );
        assert_eq!(
            run(b"CONFIG GET save\r\n").2,
            b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n".to_vec()
        );
    }
}
