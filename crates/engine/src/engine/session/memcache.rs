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
    pub(in crate::engine) fn memcache_input(
        &mut self,
        index: usize,
        input: &[u8],
        now: Micros,
    ) -> usize {
        let spec = &self.pools[self.sessions[index].pool].spec;
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
                        self.close_after_last(index);
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
        let seq = self.open_slot(index, Combine::Pass, 1);
        let skip = req.noreply.or(req.quiet);
        self.send_piece(
            self.slot_ref(index, seq, 0),
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
        let mut groups = std::mem::take(&mut self.scratch.groups);
        groups.clear();
        let mut unplaced = false;
        for (k, key) in req.key_ranges().iter().enumerate() {
            match self.place(index, &request[key.clone()]) {
                Some(server) => groups.push((server as u32, k as u32)),
                None => unplaced = true,
            }
        }
        groups.sort_unstable();
        let shape = Shape::Memcache(req.command.reply_kind());
        let one_server = groups.first().map(|g| g.0) == groups.last().map(|g| g.0);
        if unplaced || one_server {
            let server = (!unplaced).then(|| groups[0].0 as usize);
            let seq = self.open_slot(index, Combine::Pass, 1);
            self.send_piece(
                self.slot_ref(index, seq, 0),
                server,
                Expect {
                    shape,
                    suppress: Suppress::No,
                },
                now,
                |out| out.extend_from_slice(request),
            );
            self.scratch.groups = groups;
            return;
        }
        self.stats.split_requests += 1;
        let pieces = groups.chunk_by(|a, b| a.0 == b.0).count() as u16;
        let seq = self.open_slot(index, Combine::MemcacheGet, pieces);
        // Tokens before the keys: the command, and gat's exptime.
        let head = &req.tokens[..req.keys.start];
        let keys = req.key_ranges();
        {
            // The keys in request order, for merging the values back.
            let session = &mut self.sessions[index];
            let slot = &mut session.slots[(seq - session.head) as usize];
            slot.key_piece.resize(keys.len(), 0);
            for (piece, group) in groups.chunk_by(|a, b| a.0 == b.0).enumerate() {
                for &(_, key) in group {
                    slot.key_piece[key as usize] = piece as u16;
                }
            }
            for key in keys {
                slot.keys.extend_from_slice(&request[key.clone()]);
                slot.key_ends.push(slot.keys.len() as u32);
            }
        }
        for (piece, group) in groups.chunk_by(|a, b| a.0 == b.0).enumerate() {
            let server = Some(group[0].0 as usize);
            self.send_piece(
                self.slot_ref(index, seq, piece as u16),
                server,
                Expect {
                    shape,
                    suppress: Suppress::No,
                },
                now,
                |out| {
                    let words = head
                        .iter()
                        .chain(group.iter().map(|&(_, k)| &keys[k as usize]));
                    for (i, word) in words.enumerate() {
                        if i > 0 {
                            out.push(b' ');
                        }
                        out.extend_from_slice(&request[word.clone()]);
                    }
                    out.extend_from_slice(b"\r\n");
                },
            );
        }
        self.scratch.groups = groups;
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
    for (i, word) in words.enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.extend_from_slice(word);
    }
    out.extend_from_slice(b"\r\n");
    if let Some(data) = &req.data {
        out.extend_from_slice(&request[data.clone()]);
    }
}
