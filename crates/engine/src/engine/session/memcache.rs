//! memcached sessions: parse, answer locally, route, or split a
//! multi-get per server.
//!
//! `noreply` and the meta `q` flag are stripped before forwarding: every
//! request the proxy sends gets a reply, which keeps each backend FIFO in
//! step, and the proxy drops the replies the client asked not to see.

use ferrox_proto::memcache::{self, Command, Request};

use super::super::pipeline::{Combine, Expect, Shape, Suppress};
use super::super::{Engine, Micros};

impl Engine {
    pub(super) fn memcache_input(&mut self, index: usize, input: &[u8], now: Micros) -> usize {
        let spec = self.session_spec(index);
        // A retrieval line is held whole until it ends, as a Redis request
        // is: the pool's max_request bounds both.
        let limits = memcache::Limits {
            max_retrieval_line: spec.max_request,
            ..spec.memcache_limits
        };
        let mut req = std::mem::take(&mut self.scratch.memcache);
        // How far an incomplete request at the front of `input` was read
        // on earlier calls: the runtime offers it again with more bytes.
        let mut progress = self.sessions[index].memcache_progress;
        let mut used = 0;
        while self.has_room(index) {
            let rest = &input[used..];
            match memcache::parse_request_resumed(rest, &limits, &mut req, &mut progress) {
                Ok(None) => break,
                Ok(Some(len)) => {
                    self.memcache_request(index, &rest[..len], &req, now);
                    used += len;
                }
                Err(error) => {
                    // memcached sends no error to a `noreply` request
                    // unless it must close the connection.
                    if req.noreply.is_none() || error.fatal() {
                        self.local_error(index, |out, _| error.emit_reply(out));
                    }
                    if error.fatal() {
                        self.close_for_error(index);
                        used = input.len();
                    } else {
                        used += req.len;
                    }
                }
            }
        }
        self.sessions[index].memcache_progress = progress;
        self.scratch.memcache = req;
        used
    }

    fn memcache_request(&mut self, index: usize, request: &[u8], req: &Request, now: Micros) {
        let command = req.command;
        self.stats.commands[crate::command::CommandId::memcache(command).index()] += 1;
        match command {
            Command::Quit => {
                self.local_reply(index, |_, _| {});
                self.close_after_last(index);
                return;
            }
            Command::Version => {
                return self.local_reply(index, |out, _| {
                    out.extend_from_slice(b"VERSION ferrox-");
                    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
                    out.extend_from_slice(b"\r\n");
                })
            }
            Command::MetaNoop => {
                return self.local_reply(index, |out, _| out.extend_from_slice(b"MN\r\n"))
            }
            Command::Stats if req.tokens.len() == 1 => {
                let stats = self.memcache_stats();
                return self.local_reply(index, |out, _| out.extend_from_slice(stats.as_bytes()));
            }
            // `stats slabs`, `stats items`, ...: the servers' to say.
            Command::Stats => {
                return self.local_error(index, |out, _| {
                    out.extend_from_slice(
                        b"CLIENT_ERROR ferrox answers plain 'stats' only; ask the servers for the rest\r\n",
                    )
                })
            }
            _ => {}
        }
        let keys = req.key_ranges();
        let shape = Shape::Memcache(command.reply_kind());
        let suppress = match (req.noreply, req.quiet) {
            (Some(_), _) => Suppress::Always,
            (None, Some(_)) => Suppress::Quiet(command),
            (None, None) => Suppress::No,
        };
        if command.is_retrieval() && keys.len() > 1 {
            return self.memcache_split(index, request, req, now);
        }
        let Some(key) = keys.first() else {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"CLIENT_ERROR bad command line format\r\n")
            });
        };
        let server = self.place(index, &request[key.clone()]);
        let skip = req.noreply.or(req.quiet);
        self.send_whole(
            index,
            server,
            Expect { shape, suppress },
            now,
            |out| match skip {
                None => out.extend_from_slice(request),
                Some(skip) => write_without(out, request, req, skip),
            },
        );
    }

    /// A multi-key `get`/`gets`/`gat`/`gats`: one piece per server; the
    /// `VALUE` blocks are concatenated and end with one `END`.
    fn memcache_split(&mut self, index: usize, request: &[u8], req: &Request, now: Micros) {
        let expect = Expect {
            shape: Shape::Memcache(req.command.reply_kind()),
            suppress: Suppress::No,
        };
        let keys = req.key_ranges();
        let groups = match self.group_keys(index, keys.iter().map(|k| &request[k.clone()])) {
            Ok(groups) => groups,
            Err(server) => {
                return self.send_whole(index, server, expect, now, |out| {
                    out.extend_from_slice(request)
                })
            }
        };
        let seq = self.open_split_slot(index, Combine::MemcacheGet, &groups);
        {
            // The keys in request order, for merging the values back.
            let session = &mut self.sessions[index];
            let slot = &mut session.slots[(seq - session.head) as usize];
            for key in keys {
                slot.keys.extend_from_slice(&request[key.clone()]);
                slot.key_ends.push(slot.keys.len() as u32);
            }
        }
        // Tokens before the keys: the command, and gat's exptime.
        let head = &req.tokens[..req.keys.start];
        self.send_pieces(index, seq, groups, expect, now, |out, group| {
            let words = head
                .iter()
                .chain(group.iter().map(|&(_, k)| &keys[k as usize]));
            write_line(out, words.map(|word| &request[word.clone()]));
        });
    }
}

/// Writes `request` without its token `skip` (`noreply`, or a meta `q`).
fn write_without(out: &mut Vec<u8>, request: &[u8], req: &Request, skip: usize) {
    let words = req
        .tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != skip)
        .map(|(_, t)| &request[t.clone()]);
    write_line(out, words);
    if let Some(data) = &req.data {
        out.extend_from_slice(&request[data.clone()]);
    }
}

/// A request line: `words` separated by spaces, then CRLF.
fn write_line<'a>(out: &mut Vec<u8>, words: impl Iterator<Item = &'a [u8]>) {
    for (i, word) in words.enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out.extend_from_slice(b"\r\n");
}
