//! memcached sessions: parse, answer locally, route, or split a
//! multi-get per server.
//!
//! `noreply` and the meta `q` flag are stripped before forwarding: every
//! request the proxy sends gets a reply, which keeps each backend FIFO in
//! step, and the proxy drops the replies the client asked not to see.
//!
//! A request in the binary protocol (its first byte 0x80) is sent to its
//! server as a meta command, and the meta reply goes back to the client
//! as a binary response ([`memcache::binary::meta`]): binary and text
//! clients share pools, placement and backend connections.

use ferrox_proto::memcache::binary::{self, meta::Bridged, Op};
use ferrox_proto::memcache::{self, Command, Request};

use super::super::compression::Decode;
use super::super::hot::Lookup;
use super::super::pipeline::{Combine, Expect, Shape, Suppress};
use super::super::{Engine, Micros, PoolCounters};

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
            if rest.first() == Some(&binary::REQUEST_MAGIC) {
                progress = memcache::Progress::new();
                let binary_limits = binary::Limits {
                    max_key: limits.max_key,
                    max_value: limits.max_value,
                };
                match binary::parse_request(rest, &binary_limits) {
                    Ok(None) => break,
                    Ok(Some(request)) => {
                        let seq = self.next_seq(index);
                        self.binary_request(index, &rest[..request.len], &request, now);
                        self.tag_rate(index, seq);
                        used += request.len;
                    }
                    Err(refusal) => {
                        self.local_error(index, |out, _| refusal.emit(out));
                        self.close_for_error(index);
                        used = input.len();
                    }
                }
                continue;
            }
            match memcache::parse_request_resumed(rest, &limits, &mut req, &mut progress) {
                Ok(None) => break,
                Ok(Some(len)) => {
                    let seq = self.next_seq(index);
                    self.memcache_request(index, &rest[..len], &req, now);
                    self.tag_rate(index, seq);
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
        if !self.sessions[index].is_authed() && command != Command::Quit {
            return self.memcache_authenticate(index, request, req);
        }
        if command != Command::Quit && self.overloaded() {
            let pool = self.sessions[index].route().0;
            self.pools[pool].counters.overload_refused += 1;
            if req.noreply.is_some() {
                self.stats.errors += 1;
                self.pools[pool].counters.errors += 1;
                return;
            }
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"SERVER_ERROR overloaded\r\n")
            });
        }
        if let Some(refusal) = self.memcache_permission(index, command, request, req) {
            self.count_refusal(index, super::redis::Refusal::Acl);
            return self.local_error(index, |out, _| out.extend_from_slice(refusal));
        }
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
        if let Err(why) = self.memcache_validate(index, request, req) {
            self.count_refusal(index, super::redis::Refusal::Validation);
            self.stats.errors += 1;
            let pool = self.sessions[index].route().0;
            self.pools[pool].counters.errors += 1;
            // memcached answers nothing to a noreply request, errors
            // included: the client reads no reply.
            if req.noreply.is_none() {
                self.local_reply(index, |out, _| {
                    out.extend_from_slice(b"CLIENT_ERROR ferrox: ");
                    out.extend_from_slice(why.as_bytes());
                    out.extend_from_slice(b"\r\n");
                });
            }
            return;
        }
        let first_key = req.key_ranges().first().map(|k| &request[k.clone()]);
        let id = crate::command::CommandId::memcache(command);
        if let Err(rule) = self.rate_admit(index, Some(id), first_key, request.len()) {
            if req.noreply.is_some() {
                // No reply to a noreply request, errors included.
                self.stats.errors += 1;
                let pool = self.sessions[index].route().0;
                self.pools[pool].counters.errors += 1;
                return;
            }
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"SERVER_ERROR rate limit exceeded (");
                out.extend_from_slice(rule.as_bytes());
                out.extend_from_slice(b")\r\n");
            });
        }
        let keys = req.key_ranges();
        let shape = Shape::Memcache(command.reply_kind());
        let suppress = match (req.noreply, req.quiet) {
            (Some(_), _) => Suppress::Always,
            (None, Some(_)) => Suppress::Quiet(command),
            (None, None) => Suppress::No,
        };
        let pool = self.sessions[index].pool;
        let mut fill = None;
        if self.pools[pool].hot.is_some() {
            match command {
                Command::Set
                | Command::Add
                | Command::Replace
                | Command::Cas
                | Command::Append
                | Command::Prepend
                | Command::Delete
                | Command::Incr
                | Command::Decr
                | Command::MetaSet
                | Command::MetaDelete
                | Command::MetaArithmetic => {
                    for k in keys {
                        let p = &mut self.pools[pool];
                        let hot = p.hot.as_deref_mut().expect("checked above");
                        hot.written(&request[k.clone()], &mut p.counters);
                        self.tell_peers(pool, &request[k.clone()]);
                    }
                }
                // A plain get of one key: `gets` needs the CAS unique,
                // which a cached copy could not keep exact.
                Command::Get if keys.len() == 1 => {
                    let server = self.place(index, &request[keys[0].clone()]);
                    if let Some(server) = server {
                        let p = &mut self.pools[pool];
                        let hot = p.hot.as_deref_mut().expect("checked above");
                        let key = &request[keys[0].clone()];
                        match hot.read(key, now, &mut p.counters) {
                            Lookup::Cold => {}
                            Lookup::Hit(reply) => {
                                let mut bytes = std::mem::take(&mut self.scratch.decoded);
                                bytes.clear();
                                bytes.extend_from_slice(reply);
                                self.local_reply(index, |out, _| out.extend_from_slice(&bytes));
                                self.scratch.decoded = bytes;
                                return;
                            }
                            Lookup::Miss(ticket) => fill = Some((ticket, server as u32)),
                        }
                    }
                }
                _ => {}
            }
        }
        let (decode, compress) = match self.pools[pool].compression.as_deref() {
            None => (Decode::None, false),
            Some(compression) => {
                let covered = keys.iter().any(|k| compression.covers(&request[k.clone()]));
                match command {
                    Command::Get | Command::Gets | Command::Gat | Command::Gats => {
                        (Decode::Memcache, false)
                    }
                    Command::Set | Command::Add | Command::Replace | Command::Cas => {
                        (Decode::None, covered)
                    }
                    Command::Append | Command::Prepend if covered => {
                        return self.memcache_refuse(
                            index,
                            req,
                            "append and prepend are refused on this pool, whose values may be stored compressed",
                        );
                    }
                    // A meta get of the value would see its stored form.
                    Command::MetaGet
                        if covered && req.tokens[2..].iter().any(|t| request[t.start] == b'v') =>
                    {
                        return self.memcache_refuse(
                            index,
                            req,
                            "mg with v is refused on this pool, whose values may be stored compressed (use get)",
                        );
                    }
                    _ => (Decode::None, false),
                }
            }
        };
        if command.is_retrieval() && keys.len() > 1 {
            return self.memcache_split(index, request, req, decode, now);
        }
        let Some(key) = keys.first() else {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"CLIENT_ERROR bad command line format\r\n")
            });
        };
        let server = self.place(index, &request[key.clone()]);
        let skip = req.noreply.or(req.quiet);
        let expect = Expect { shape, suppress };
        if compress {
            let mut compression = self.pools[pool].compression.take().expect("checked above");
            if let Some(why) = compression.store_refusal(request, req) {
                self.pools[pool].compression = Some(compression);
                return self.memcache_refuse(index, req, why);
            }
            let mut counters = PoolCounters::default();
            self.send_whole(index, server, expect, now, |out| {
                compression.write_store(out, request, req, skip, &mut counters)
            });
            self.pools[pool].compression = Some(compression);
            self.pools[pool].counters.add_compression(&counters);
            return;
        }
        if let Some(fill) = fill {
            let seq = self.open_slot(index, Combine::Pass, 1);
            let slot = self.sessions[index].newest_slot();
            slot.decode = decode;
            slot.fill = Some(fill);
            slot.keys.extend_from_slice(&request[key.clone()]);
            let at = self.slot_ref(index, seq, 0);
            return self.send_piece(at, server, expect, now, |out| match skip {
                None => out.extend_from_slice(request),
                Some(skip) => write_without(out, request, req, skip),
            });
        }
        self.send_whole_decoded(index, server, expect, decode, now, |out| match skip {
            None => out.extend_from_slice(request),
            Some(skip) => write_without(out, request, req, skip),
        });
    }

    /// Refuses a text request with `CLIENT_ERROR ferrox: <why>` (nothing,
    /// to a `noreply` one).
    fn memcache_refuse(&mut self, index: usize, req: &Request, why: &str) {
        if req.noreply.is_some() {
            self.stats.errors += 1;
            let pool = self.sessions[index].route().0;
            self.pools[pool].counters.errors += 1;
            return;
        }
        self.local_error(index, |out, _| {
            out.extend_from_slice(b"CLIENT_ERROR ferrox: ");
            out.extend_from_slice(why.as_bytes());
            out.extend_from_slice(b"\r\n");
        })
    }

    /// A binary request: answered here (noop, version, quit, stat), or
    /// sent to its key's server as a meta command.
    fn binary_request(
        &mut self,
        index: usize,
        packet: &[u8],
        request: &binary::Request,
        now: Micros,
    ) {
        let (opcode, opaque) = (request.opcode, request.opaque);
        if let Some(command) = text_equivalent(request.op) {
            self.stats.commands[crate::command::CommandId::memcache(command).index()] += 1;
        }
        let error = |status: u16, message: &'static [u8]| {
            move |out: &mut Vec<u8>, _| {
                binary::Response::error(opcode, opaque, status, message).emit(out)
            }
        };
        let ok = |value: &[u8], out: &mut Vec<u8>| {
            binary::Response::error(opcode, opaque, binary::STATUS_OK, value).emit(out)
        };
        if !self.sessions[index].is_authed() && request.op != Op::Quit {
            return self.local_error(
                index,
                error(
                    binary::STATUS_AUTH_ERROR,
                    b"ferrox: authenticate first, with the text protocol (a set of '<user> <password>')",
                ),
            );
        }
        if request.op != Op::Quit && self.overloaded() {
            let pool = self.sessions[index].route().0;
            self.pools[pool].counters.overload_refused += 1;
            return self.local_error(index, error(binary::STATUS_BUSY, b"ferrox: overloaded"));
        }
        if let Some(acl) = self.session_acl(index) {
            let allowed = text_equivalent(request.op)
                .is_none_or(|c| acl.allows_command(crate::command::CommandId::memcache(c)))
                && (request.key.is_empty() || acl.allows_key(&packet[request.key.clone()]));
            if !allowed {
                self.count_refusal(index, super::redis::Refusal::Acl);
                return self.local_error(
                    index,
                    error(
                        binary::STATUS_AUTH_ERROR,
                        b"ferrox: this user has no permissions to run this command on this key",
                    ),
                );
            }
        }
        match request.op {
            Op::Noop => return self.local_reply(index, |out, _| ok(b"", out)),
            Op::Version => {
                let version = concat!("ferrox-", env!("CARGO_PKG_VERSION")).as_bytes();
                return self.local_reply(index, |out, _| ok(version, out));
            }
            Op::Quit => {
                let quiet = request.quiet;
                self.local_reply(index, |out, _| {
                    if !quiet {
                        ok(b"", out)
                    }
                });
                return self.close_after_last(index);
            }
            Op::Stat if request.key.is_empty() => {
                let stats = self.memcache_stats();
                return self.local_reply(index, |out, _| {
                    write_binary_stats(&stats, opcode, opaque, out)
                });
            }
            Op::Stat => {
                return self.local_error(
                    index,
                    error(
                        binary::STATUS_NOT_SUPPORTED,
                        b"ferrox answers plain stat only; ask the servers for the rest",
                    ),
                )
            }
            Op::Flush => {
                return self.local_error(
                    index,
                    error(
                        binary::STATUS_NOT_SUPPORTED,
                        b"ferrox does not flush every server at once; flush each server",
                    ),
                )
            }
            Op::Unknown => {
                return self.local_error(
                    index,
                    error(binary::STATUS_UNKNOWN_COMMAND, b"Unknown command"),
                )
            }
            _ => {}
        }
        let key = &packet[request.key.clone()];
        if let Err(why) = self.binary_validate(index, packet, request) {
            self.count_refusal(index, super::redis::Refusal::Validation);
            let message = format!("ferrox: {why}");
            return self.local_error(index, |out, _| {
                binary::Response::error(
                    opcode,
                    opaque,
                    binary::STATUS_INVALID_ARGUMENTS,
                    message.as_bytes(),
                )
                .emit(out)
            });
        }
        let id = text_equivalent(request.op).map(crate::command::CommandId::memcache);
        if let Err(rule) = self.rate_admit(index, id, Some(key), packet.len()) {
            let message = format!("rate limit exceeded ({rule})");
            return self.local_error(index, |out, _| {
                binary::Response::error(
                    opcode,
                    opaque,
                    binary::STATUS_TEMPORARY_FAILURE,
                    message.as_bytes(),
                )
                .emit(out)
            });
        }
        let pool = self.sessions[index].pool;
        let writes = matches!(
            request.op,
            Op::Set
                | Op::Add
                | Op::Replace
                | Op::Append
                | Op::Prepend
                | Op::Delete
                | Op::Increment
                | Op::Decrement
        );
        if writes && self.pools[pool].hot.is_some() {
            let p = &mut self.pools[pool];
            let hot = p.hot.as_mut().expect("checked");
            hot.written(key, &mut p.counters);
            self.tell_peers(pool, key);
        }
        let sees_stored_form = matches!(
            request.op,
            Op::Get | Op::GetK | Op::Gat | Op::GatK | Op::Append | Op::Prepend
        );
        if sees_stored_form
            && self.pools[pool]
                .compression
                .as_deref()
                .is_some_and(|c| c.covers(key))
        {
            return self.local_error(
                index,
                error(
                    binary::STATUS_NOT_SUPPORTED,
                    b"ferrox: this pool may store the value compressed; read and append it with the text protocol",
                ),
            );
        }
        let server = self.place(index, key);
        let seq = self.open_slot(index, Combine::Binary(Bridged::of(request)), 1);
        if binary::meta::returns_key(request.op) {
            let session = &mut self.sessions[index];
            let slot = &mut session.slots[(seq - session.head) as usize];
            slot.keys.extend_from_slice(key);
        }
        let expect = Expect {
            shape: Shape::Memcache(memcache::ReplyKind::Meta),
            suppress: Suppress::No,
        };
        let at = self.slot_ref(index, seq, 0);
        self.send_piece(at, server, expect, now, |out| {
            binary::meta::write_request(packet, request, out)
        });
    }

    /// memcached's text authentication (`-Y`): before anything else, a
    /// `set` whose data is `<user> <password>`, answered `STORED`.
    fn memcache_authenticate(&mut self, index: usize, request: &[u8], req: &Request) {
        let credentials = (req.command == Command::Set)
            .then_some(req.data.as_ref())
            .flatten()
            .map(|d| &request[d.start..d.end.saturating_sub(2)]);
        let Some(credentials) = credentials else {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"CLIENT_ERROR unauthenticated\r\n")
            });
        };
        let (user, password) = match credentials.iter().position(|&b| b == b' ') {
            Some(at) => (&credentials[..at], &credentials[at + 1..]),
            None => (credentials, &b""[..]),
        };
        if self.authenticate(index, Some(user), password) {
            if req.noreply.is_none() {
                self.local_reply(index, |out, _| out.extend_from_slice(b"STORED\r\n"));
            }
        } else {
            self.local_error(index, |out, _| {
                out.extend_from_slice(b"CLIENT_ERROR authentication failure\r\n")
            });
        }
    }

    /// The refusal of a text request its user may not make: the command,
    /// or one of its keys.
    fn memcache_permission(
        &self,
        index: usize,
        command: Command,
        request: &[u8],
        req: &Request,
    ) -> Option<&'static [u8]> {
        let acl = self.session_acl(index)?;
        if !acl.allows_command(crate::command::CommandId::memcache(command)) {
            return Some(
                b"CLIENT_ERROR ferrox: this user has no permissions to run this command\r\n",
            );
        }
        let keys = req.key_ranges();
        (!keys.iter().all(|k| acl.allows_key(&request[k.clone()]))).then_some(
            b"CLIENT_ERROR ferrox: this user has no permissions to access one of the keys\r\n",
        )
    }

    /// The pool's validation rules for a text request: the broken rule's
    /// message, if any.
    fn memcache_validate(&self, index: usize, request: &[u8], req: &Request) -> Result<(), String> {
        use super::super::validate;
        let rules = &self.session_spec(index).validate;
        if rules.is_off() {
            return Ok(());
        }
        let token = |i: usize| req.tokens.get(i).map(|t| &request[t.clone()]);
        let number =
            |t: Option<&[u8]>| -> Option<i64> { std::str::from_utf8(t?).ok()?.parse().ok() };
        validate::keys(rules, req.key_ranges().iter().map(|k| &request[k.clone()]))?;
        if let Some(data) = &req.data {
            validate::value(rules, data.len().saturating_sub(2))?;
        }
        let exptime = match req.command {
            Command::Set | Command::Add | Command::Replace | Command::Cas => number(token(3)),
            Command::Touch => number(token(2)),
            Command::Gat | Command::Gats => number(token(1)),
            // A meta set without T stores without an expiry.
            Command::MetaSet => Some(
                (3..req.tokens.len())
                    .filter_map(token)
                    .find_map(|t| t.strip_prefix(b"T"))
                    .and_then(|t| number(Some(t)))
                    .unwrap_or(0),
            ),
            _ => None,
        };
        validate::memcache_ttl(rules, exptime, true)
    }

    /// The pool's validation rules for a binary request.
    fn binary_validate(
        &self,
        index: usize,
        packet: &[u8],
        request: &binary::Request,
    ) -> Result<(), String> {
        use super::super::validate;
        let rules = &self.session_spec(index).validate;
        if rules.is_off() {
            return Ok(());
        }
        validate::keys(rules, std::iter::once(&packet[request.key.clone()]))?;
        let exptime = match request.op {
            Op::Set | Op::Add | Op::Replace => {
                validate::value(rules, request.value.len())?;
                Some(i64::from(request.expiration))
            }
            Op::Append | Op::Prepend => {
                validate::value(rules, request.value.len())?;
                None
            }
            Op::Touch | Op::Gat | Op::GatK => Some(i64::from(request.expiration)),
            _ => None,
        };
        validate::memcache_ttl(rules, exptime, true)
    }

    /// A multi-key `get`/`gets`/`gat`/`gats`: one piece per server; the
    /// `VALUE` blocks are concatenated and end with one `END`.
    fn memcache_split(
        &mut self,
        index: usize,
        request: &[u8],
        req: &Request,
        decode: Decode,
        now: Micros,
    ) {
        let expect = Expect {
            shape: Shape::Memcache(req.command.reply_kind()),
            suppress: Suppress::No,
        };
        let keys = req.key_ranges();
        let groups = match self.group_keys(index, keys.iter().map(|k| &request[k.clone()])) {
            Ok(groups) => groups,
            Err(server) => {
                return self.send_whole_decoded(index, server, expect, decode, now, |out| {
                    out.extend_from_slice(request)
                })
            }
        };
        let seq = self.open_split_slot(index, Combine::MemcacheGet, &groups);
        {
            // The keys in request order, for merging the values back.
            let session = &mut self.sessions[index];
            let slot = &mut session.slots[(seq - session.head) as usize];
            slot.decode = decode;
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

/// The text command a binary op is counted as, in the statistics.
fn text_equivalent(op: Op) -> Option<Command> {
    Some(match op {
        Op::Get | Op::GetK => Command::Get,
        Op::Gat | Op::GatK => Command::Gat,
        Op::Touch => Command::Touch,
        Op::Set => Command::Set,
        Op::Add => Command::Add,
        Op::Replace => Command::Replace,
        Op::Append => Command::Append,
        Op::Prepend => Command::Prepend,
        Op::Delete => Command::Delete,
        Op::Increment => Command::Incr,
        Op::Decrement => Command::Decr,
        Op::Noop => Command::MetaNoop,
        Op::Quit => Command::Quit,
        Op::Version => Command::Version,
        Op::Stat => Command::Stats,
        Op::Flush | Op::Unknown => return None,
    })
}

/// The binary `stat` reply: a response per `STAT name value` line of
/// `stats` (the text reply), then one with neither key nor value.
fn write_binary_stats(stats: &str, opcode: u8, opaque: u32, out: &mut Vec<u8>) {
    let mut response = binary::Response::error(opcode, opaque, binary::STATUS_OK, b"");
    for line in stats.lines() {
        let mut words = line.splitn(3, ' ');
        if let (Some("STAT"), Some(name), Some(value)) = (words.next(), words.next(), words.next())
        {
            response.key = name.as_bytes();
            response.value = value.as_bytes();
            response.emit(out);
        }
    }
    response.key = b"";
    response.value = b"";
    response.emit(out);
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
