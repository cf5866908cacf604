//! Redis sessions: parse, answer locally, route, or split.

use std::ops::Range;

use ferrox_proto::resp;

use super::super::compression::{self, Decode, Role};
use super::super::hot::Lookup;
use super::super::pipeline::{Combine, Expect};
use super::super::{Engine, Micros, PoolCounters};
use super::MAX_TRANSACTION;
use crate::command::{self, Keys, Local, Merge, Route};
use ferrox_config::ReadPolicy;

const WRONGPASS: &[u8] = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n";
const NOPERM_KEYS: &[u8] =
    b"-NOPERM this user has no permissions to access one of the keys used as arguments\r\n";

/// Redis's refusal of a command the user may not run: the name in lower
/// case, as Redis writes it.
fn error_about_noperm(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(b"-NOPERM this user has no permissions to run the '");
    out.extend(
        name.iter()
            .filter(|b| b.is_ascii_graphic() && **b != b'\'')
            .map(u8::to_ascii_lowercase),
    );
    out.extend_from_slice(b"' command\r\n");
}

/// Why the proxy refused a request, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::engine) enum Refusal {
    Acl,
    Validation,
}

/// Compares two secrets in time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

/// What a (un)subscribing command is to.
fn pubsub_kind(local: Local) -> super::super::pubsub::Kind {
    use super::super::pubsub::Kind;
    match local {
        Local::Psubscribe | Local::Punsubscribe => Kind::Pattern,
        Local::Ssubscribe | Local::Sunsubscribe => Kind::Shard,
        _ => Kind::Channel,
    }
}

/// The longest a `WAIT` may hold a shared server connection, in ms.
const MAX_WAIT_MS: i64 = 1_000;

impl Engine {
    pub(super) fn redis_input(&mut self, index: usize, input: &[u8], now: Micros) -> usize {
        let spec = self.session_spec(index);
        let (limits, max_request) = (spec.limits, spec.max_request);
        let mut args = std::mem::take(&mut self.scratch.args);
        let mut used = 0;
        while self.has_room(index) {
            let rest = &input[used..];
            match resp::parse_request(rest, &limits, &mut args) {
                Ok(None) if rest.len() > max_request => {
                    // Incomplete, and already longer than a request may be.
                    self.local_error(index, |out, _| {
                        resp::write_error(
                            out,
                            format_args!(
                                "ERR Protocol error: request longer than max_request ({max_request} bytes)"
                            ),
                        )
                    });
                    self.close_for_error(index);
                    used = input.len();
                }
                Ok(None) => break,
                Ok(Some(len)) => {
                    let seq = self.next_seq(index);
                    self.redis_request(index, &rest[..len], &args, now);
                    self.scratch.read = false;
                    if std::mem::take(&mut self.scratch.may_write) {
                        self.mark_may_write(index, seq);
                    }
                    self.tag_rate(index, seq);
                    used += len;
                }
                Err(error) => {
                    self.local_error(index, |out, _| {
                        resp::write_error(out, format_args!("ERR Protocol error: {error}"))
                    });
                    self.close_for_error(index);
                    used = input.len();
                }
            }
        }
        self.scratch.args = args;
        used
    }

    /// Handles one request: `request` is its bytes, `args` its arguments.
    fn redis_request(&mut self, index: usize, request: &[u8], args: &[Range<usize>], now: Micros) {
        let Some(name) = args.first().map(|r| &request[r.clone()]) else {
            // `*0` or a blank inline line: no command, no reply.
            return;
        };
        let arg = |i: usize| &request[args[i].clone()];
        let blocked = &self.session_spec(index).blocked;
        let (found, blocked) = command::lookup_blocked(name, blocked);
        let route = found.map(|(id, route)| {
            self.stats.commands[id.index()] += 1;
            route
        });
        if !self.sessions[index].authed
            && !matches!(
                route,
                Some(Route::Local(Local::Auth | Local::Hello | Local::Quit))
            )
        {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"-NOAUTH Authentication required.\r\n")
            });
        }
        if route != Some(Route::Local(Local::Quit)) && self.overloaded() {
            self.pools[self.sessions[index].route().0]
                .counters
                .overload_refused += 1;
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"-ERR ferrox: overloaded\r\n")
            });
        }
        if self.sessions[index]
            .pubsub
            .as_ref()
            .is_some_and(|p| p.active())
            && !matches!(
                route,
                Some(Route::Local(
                    Local::Subscribe
                        | Local::Psubscribe
                        | Local::Ssubscribe
                        | Local::Unsubscribe
                        | Local::Punsubscribe
                        | Local::Sunsubscribe
                        | Local::Ping
                        | Local::Quit
                ))
            )
        {
            return self.local_error(index, |out, _| {
                error_about(
                    out,
                    "can't execute '",
                    name,
                    &["': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT are allowed while subscribed"],
                )
            });
        }
        if let Some((id, _)) = found {
            let exempt = matches!(
                route,
                Some(Route::Local(Local::Auth | Local::Hello | Local::Quit))
            );
            if !exempt
                && self
                    .session_acl(index)
                    .is_some_and(|acl| !acl.allows_command(id))
            {
                // Refused while queueing: EXEC will discard the transaction.
                if let Some(tx) = self.sessions[index].tx.as_mut() {
                    tx.failed = true;
                }
                self.count_refusal(index, Refusal::Acl);
                return self.local_error(index, |out, _| {
                    error_about_noperm(out, name);
                });
            }
        }
        if route != Some(Route::Local(Local::Quit)) && self.has_rate_limits(index) {
            let key = route
                .and_then(|r| {
                    command::key_positions(r, args.len(), |i| {
                        std::str::from_utf8(arg(i)).ok()?.parse().ok()
                    })
                    .ok()
                })
                .filter(|k| k.start < args.len())
                .map(|k| arg(k.start));
            if let Err(rule) = self.rate_admit(index, found.map(|(id, _)| id), key, request.len()) {
                if let Some(tx) = self.sessions[index].tx.as_mut() {
                    tx.failed = true;
                }
                return self.local_error(index, |out, _| {
                    resp::write_error(
                        out,
                        format_args!("ERR ferrox: rate limit exceeded ({rule})"),
                    )
                });
            }
        }
        let compress = match found {
            Some((id, _)) if self.pools[self.sessions[index].pool].compression.is_some() => {
                compression::role(id)
            }
            _ => Role::Pass,
        };
        if compress != Role::Pass {
            if let Some(why) = self.compression_refuses(index, compress, route, request, args) {
                if let Some(tx) = self.sessions[index].tx.as_mut() {
                    tx.failed = true;
                }
                return self.local_error(index, |out, _| error_about(out, "", name, &[why]));
            }
        }
        if self.sessions[index].tx.is_some()
            && !matches!(
                route,
                Some(Route::Local(
                    Local::Exec | Local::Discard | Local::Multi | Local::Quit | Local::Watch
                ))
            )
        {
            return self.redis_tx_queue(
                index,
                found.map(|(id, _)| id),
                route,
                blocked,
                request,
                args,
            );
        }
        if blocked {
            return self.local_error(index, |out, _| {
                error_about(out, "command '", name, &["' is blocked by configuration"])
            });
        }
        let Some(mut route) = route else {
            return self.local_error(index, |out, _| {
                error_about(out, "unknown command '", name, &["'"])
            });
        };
        // A read may go to a replica (see `replica`), except a blocking
        // one (its connection is the session's own, to the primary).
        self.scratch.read = self.session_spec(index).read_policy != ReadPolicy::Primary
            && found.is_some_and(|(id, _)| crate::acl::is_read_only(id));
        let keys = match route {
            Route::Local(local) => return self.redis_local(index, local, request, args),
            Route::Refuse(why) => {
                return self.local_error(index, |out, _| {
                    error_about(out, "'", name, &["' is not supported: ", why])
                })
            }
            Route::All(merge) => return self.redis_all(index, merge, request, args, now),
            Route::Scan => return self.redis_scan(index, request, args, now),
            Route::Together(Keys::Streams) => match command::stream_keys(args.len(), arg) {
                Ok((keys, blocks)) => {
                    if blocks {
                        route = Route::Blocking(Keys::Streams);
                    }
                    Ok(keys)
                }
                Err(why) => Err(why),
            },
            _ => command::key_positions(route, args.len(), |i| {
                std::str::from_utf8(arg(i)).ok()?.parse().ok()
            }),
        };
        let keys = match keys {
            Ok(keys) => keys,
            Err(why) => {
                return self.local_error(index, |out, _| error_about(out, "", name, &[": ", why]))
            }
        };
        if !self.keys_allowed(index, route, request, args, keys.clone()) {
            self.count_refusal(index, Refusal::Acl);
            return self.local_error(index, |out, _| out.extend_from_slice(NOPERM_KEYS));
        }
        let id = found.map(|(id, _)| id);
        if let Err(why) = self.redis_validate(index, id, route, request, args, keys.clone()) {
            self.count_refusal(index, Refusal::Validation);
            return self.local_error(index, |out, _| {
                resp::write_error(out, format_args!("ERR ferrox: {why}"))
            });
        }
        let pool = self.sessions[index].pool;
        // In a pool with a hot-key cache, a request that is not a plain
        // read keeps the session's reads off the tracking connection
        // until it is answered (see `redis_hot_read`).
        self.scratch.may_write =
            self.pools[pool].hot.is_some() && !id.is_some_and(crate::acl::is_read_only);
        if self.pools[pool].hot.is_some() && id.is_some_and(crate::acl::is_write_command) {
            // Dropped before the write is forwarded: the client's next
            // read cannot be answered with the old value.
            let step = if route == Route::Split(Merge::Ok) {
                2
            } else {
                1
            };
            let dest = command::dest_key(route).then_some(1);
            for k in keys.clone().step_by(step).chain(dest) {
                let p = &mut self.pools[pool];
                let hot = p.hot.as_mut().expect("checked");
                hot.written(arg(k), &mut p.counters);
                self.tell_peers(pool, arg(k));
            }
        }
        match route {
            Route::Split(merge) => {
                self.redis_split(index, merge, compress, request, args, keys, now)
            }
            _ => {
                // Every key must be on one server.
                let mut server = None;
                let key_args = keys.clone().chain(command::dest_key(route).then_some(1));
                for i in key_args {
                    let here = self.place(index, arg(i));
                    if server.is_some() && server != Some(here) {
                        return self.local_error(index, |out, _| {
                            error_about(
                                out,
                                "the keys of '",
                                name,
                                &["' are on different servers (a hashtag keeps them together)"],
                            )
                        });
                    }
                    server = Some(here);
                }
                let server = server.expect("a routed command has a key");
                if let Route::Blocking(_) = route {
                    let seq = self.open_slot(index, Combine::Pass, 1);
                    let at = self.slot_ref(index, seq, 0);
                    let write = |out: &mut Vec<u8>| write_whole(out, request, args);
                    return match server {
                        Some(server) => self.send_blocking(server, at, now, write),
                        None => self.send_piece(at, None, Expect::RESP, now, write),
                    };
                }
                if self.pools[pool].hot.is_some()
                    && name.eq_ignore_ascii_case(b"GET")
                    && self.redis_hot_read(index, server, compress, request, args, now)
                {
                    return;
                }
                self.redis_forward(index, server, compress, request, args, now);
            }
        }
    }

    /// Why a request may not touch compressed values: a command that
    /// would see or change their stored bytes, or a read inside a
    /// transaction (EXEC's reply is not decompressed), on a covered key.
    fn compression_refuses(
        &self,
        index: usize,
        role: Role,
        route: Option<Route>,
        request: &[u8],
        args: &[Range<usize>],
    ) -> Option<&'static str> {
        let why = match role {
            Role::Refuse => {
                ": refused on this pool, whose values may be stored compressed (GET and SET them whole)"
            }
            Role::Read(_) if self.sessions[index].tx.is_some() => {
                ": refused inside MULTI on this pool, whose values may be stored compressed"
            }
            _ => return None,
        };
        let compression = self.pools[self.sessions[index].pool].compression.as_ref()?;
        let keys = command::key_positions(route?, args.len(), |i| {
            std::str::from_utf8(&request[args[i].clone()])
                .ok()?
                .parse()
                .ok()
        })
        .ok()?;
        let mut keys = keys.chain(route.is_some_and(command::dest_key).then_some(1));
        keys.any(|k| k < args.len() && compression.covers(&request[args[k].clone()]))
            .then_some(why)
    }

    /// Marks the slots request `seq` opened as possibly writing.
    fn mark_may_write(&mut self, index: usize, seq: u64) {
        let session = &mut self.sessions[index];
        let from = seq.saturating_sub(session.head) as usize;
        for slot in session.slots.iter_mut().skip(from) {
            slot.may_write = true;
        }
    }

    /// A GET of a hot key: answered from the cache, or sent on the
    /// tracking connection so that its reply fills the cache. False when
    /// the key is not hot, or the read must take the usual way: a request
    /// of the session that may write waits for its reply (the read, on
    /// another connection, could overtake it). Requests behind the read
    /// wait for it (`tracking_read`).
    fn redis_hot_read(
        &mut self,
        index: usize,
        server: Option<usize>,
        compress: Role,
        request: &[u8],
        args: &[Range<usize>],
        now: Micros,
    ) -> bool {
        let Some(server) = server else {
            return false;
        };
        let key = &request[args[1].clone()];
        let pool = self.sessions[index].pool;
        let p = &mut self.pools[pool];
        let hot = p.hot.as_mut().expect("checked by the caller");
        let ticket = match hot.read(key, now, &mut p.counters) {
            Lookup::Cold => return false,
            Lookup::Hit(reply) => {
                let mut bytes = std::mem::take(&mut self.scratch.decoded);
                bytes.clear();
                bytes.extend_from_slice(reply);
                self.local_reply(index, |out, resp3| {
                    if bytes.is_empty() {
                        resp::write_null(out, resp3);
                    } else {
                        out.extend_from_slice(&bytes);
                    }
                });
                self.scratch.decoded = bytes;
                return true;
            }
            Lookup::Miss(ticket) => ticket,
        };
        if self.sessions[index]
            .slots
            .iter()
            .any(|slot| slot.may_write && slot.pending > 0)
        {
            return false;
        }
        let seq = self.open_slot(index, Combine::Pass, 1);
        let slot = self.sessions[index].newest_slot();
        if let Role::Read(decode) = compress {
            slot.decode = decode;
        }
        slot.fill = Some((ticket, server as u32));
        slot.keys.extend_from_slice(key);
        let at = self.slot_ref(index, seq, 0);
        self.sessions[index].tracking_read = true;
        let b = self.tracking_backend(pool, server, now);
        self.send_on(b, at, Expect::RESP, now, |out| {
            write_whole(out, request, args)
        });
        true
    }

    /// An MGET some of whose keys are hot and cached: those are answered
    /// from the cache, the others asked of their servers, and the replies
    /// merged in key order (the cached values are one more piece). False
    /// when no key was cached (the MGET goes as usual). Misses are filled
    /// by GETs, not here.
    fn redis_mget_cached(
        &mut self,
        index: usize,
        compress: Role,
        request: &[u8],
        args: &[Range<usize>],
        keys: Range<usize>,
        now: Micros,
    ) -> bool {
        let (pool, resp3) = self.sessions[index].route();
        let count = keys.len();
        // Scratch lists, given back on every way out: no allocation per
        // request once warm.
        let mut local = std::mem::take(&mut self.scratch.decoded);
        local.clear();
        let mut hit = std::mem::take(&mut self.scratch.hits);
        hit.clear();
        hit.resize(count, false);
        let mut hits = 0;
        {
            let p = &mut self.pools[pool];
            let hot = p.hot.as_mut().expect("checked by the caller");
            for (k, arg) in keys.clone().enumerate() {
                if let Lookup::Hit(reply) =
                    hot.read(&request[args[arg].clone()], now, &mut p.counters)
                {
                    if reply.is_empty() {
                        resp::write_null(&mut local, resp3);
                    } else {
                        local.extend_from_slice(reply);
                    }
                    hit[k] = true;
                    hits += 1;
                }
            }
        }
        // The cached values as one array: the reply, or a piece of it.
        let mut piece = std::mem::take(&mut self.scratch.error);
        piece.clear();
        resp::write_array_header(&mut piece, hits);
        piece.extend_from_slice(&local);
        self.scratch.decoded = local;
        if hits == 0 || hits == count {
            if hits == count {
                self.local_reply(index, |out, _| out.extend_from_slice(&piece));
            }
            self.scratch.error = piece;
            self.scratch.hits = hit;
            return hits > 0;
        }
        // The other keys, grouped by server as a split would.
        let mut groups = std::mem::take(&mut self.scratch.groups);
        groups.clear();
        for (k, arg) in keys.enumerate() {
            if hit[k] {
                continue;
            }
            match self.place(index, &request[args[arg].clone()]) {
                Some(server) => {
                    groups.push(((server as u32) << super::GROUP_SERVER_SHIFT, k as u32))
                }
                None => {
                    // The MGET goes as usual, and fails as usual.
                    self.scratch.error = piece;
                    self.scratch.hits = hit;
                    self.scratch.groups = groups;
                    return false;
                }
            }
        }
        self.scratch.hits = hit;
        groups.sort_unstable();
        let servers = groups.chunk_by(|a, b| a.0 == b.0).count();
        self.stats.split_requests += 1;
        self.pools[pool].counters.fragments += servers as u64;
        let seq = self.open_slot(index, Combine::Redis(Merge::Array), servers as u16 + 1);
        let slot = self.sessions[index].newest_slot();
        if let Role::Read(decode) = compress {
            slot.decode = decode;
        }
        slot.key_piece.clear();
        slot.key_piece.resize(count, servers as u16);
        for (piece, group) in groups.chunk_by(|a, b| a.0 == b.0).enumerate() {
            for &(_, k) in group {
                slot.key_piece[k as usize] = piece as u16;
            }
        }
        // The cached values: the last piece, as they are (not decoded
        // again).
        self.fill_slot_with(self.slot_ref(index, seq, servers as u16), &piece);
        self.scratch.error = piece;
        self.send_pieces(index, seq, groups, Expect::RESP, now, |out, group| {
            let keys = group.iter().map(|&(_, k)| 1 + k as usize);
            write_piece(out, request, args, 1, keys)
        });
        true
    }

    /// Sends a request whole to `server`: its values compressed, or its
    /// reply decompressed, as `role` says.
    fn redis_forward(
        &mut self,
        index: usize,
        server: Option<usize>,
        role: Role,
        request: &[u8],
        args: &[Range<usize>],
        now: Micros,
    ) {
        let decode = match role {
            Role::Pass | Role::Refuse => {
                return self.send_whole(index, server, Expect::RESP, now, |out| {
                    write_whole(out, request, args)
                })
            }
            Role::Read(decode) => decode,
            // SET ... GET and GETSET answer with the old value.
            Role::Store { .. } => Decode::Bulk,
        };
        let seq = self.open_slot(index, Combine::Pass, 1);
        self.sessions[index].newest_slot().decode = decode;
        let at = self.slot_ref(index, seq, 0);
        let Role::Store { .. } = role else {
            return self.send_piece(at, server, Expect::RESP, now, |out| {
                write_whole(out, request, args)
            });
        };
        let pool = self.sessions[index].pool;
        let mut compression = self.pools[pool]
            .compression
            .take()
            .expect("checked by role");
        let mut counters = PoolCounters::default();
        self.send_piece(at, server, Expect::RESP, now, |out| {
            compression.write_request(out, request, args, role, &mut counters)
        });
        self.pools[pool].compression = Some(compression);
        self.pools[pool].counters.add_compression(&counters);
    }

    /// `MGET`, `MSET`, `DEL`, ...: one piece per server, in key order
    /// within each; the replies are merged in the slot.
    #[allow(clippy::too_many_arguments)]
    fn redis_split(
        &mut self,
        index: usize,
        merge: Merge,
        compress: Role,
        request: &[u8],
        args: &[Range<usize>],
        keys: Range<usize>,
        now: Micros,
    ) {
        if merge == Merge::Array
            && self.pools[self.sessions[index].pool].hot.is_some()
            && request[args[0].clone()].eq_ignore_ascii_case(b"MGET")
            && self.redis_mget_cached(index, compress, request, args, keys.clone(), now)
        {
            return;
        }
        // MSET's keys are every other argument.
        let step = if merge == Merge::Ok { 2 } else { 1 };
        let key_args = keys.step_by(step).map(|i| &request[args[i].clone()]);
        let groups = match self.group_keys(index, key_args) {
            Ok(groups) => groups,
            // One server (or none): the request goes as it is, and so
            // does its reply.
            Err(server) => return self.redis_forward(index, server, compress, request, args, now),
        };
        let seq = self.open_split_slot(index, Combine::Redis(merge), &groups);
        if let Role::Read(decode) = compress {
            // Each piece's reply is decompressed as it arrives, before
            // the merge.
            self.sessions[index].newest_slot().decode = decode;
        }
        let pool = self.sessions[index].pool;
        let mut compression = match compress {
            Role::Store { .. } => self.pools[pool].compression.take(),
            _ => None,
        };
        let mut counters = PoolCounters::default();
        self.send_pieces(index, seq, groups, Expect::RESP, now, |out, group| {
            let keys = group.iter().map(|&(_, k)| 1 + k as usize * step);
            match compression.as_mut() {
                // MSET: each key's value, compressed when covered.
                Some(compression) => {
                    resp::write_array_header(out, 1 + keys.clone().count() * step);
                    resp::write_bulk(out, &request[args[0].clone()]);
                    for k in keys {
                        let key = &request[args[k].clone()];
                        resp::write_bulk(out, key);
                        let value = &request[args[k + 1].clone()];
                        if compression.covers(key) {
                            compression.write_bulk(out, value, &mut counters);
                        } else {
                            resp::write_bulk(out, value);
                        }
                    }
                }
                None => write_piece(out, request, args, step, keys),
            }
        });
        if compression.is_some() {
            self.pools[pool].compression = compression;
            self.pools[pool].counters.add_compression(&counters);
        }
    }

    /// A command between `MULTI` and `EXEC`: checked as it would be
    /// routed (its keys on the transaction's one server), queued and
    /// answered `+QUEUED`; refused, it is answered with the reason and
    /// `EXEC` will discard the transaction, as Redis does.
    fn redis_tx_queue(
        &mut self,
        index: usize,
        id: Option<command::CommandId>,
        route: Option<Route>,
        blocked: bool,
        request: &[u8],
        args: &[Range<usize>],
    ) {
        let name = &request[args[0].clone()];
        let arg = |i: usize| &request[args[i].clone()];
        let refused: Result<Option<usize>, Vec<u8>> = (|| {
            let mut why = Vec::new();
            if blocked {
                error_about(
                    &mut why,
                    "command '",
                    name,
                    &["' is blocked by configuration"],
                );
                return Err(why);
            }
            let Some(route) = route else {
                error_about(&mut why, "unknown command '", name, &["'"]);
                return Err(why);
            };
            if !matches!(route, Route::Single | Route::Together(_) | Route::Split(_)) {
                error_about(
                    &mut why,
                    "'",
                    name,
                    &["' cannot be part of a transaction through the proxy"],
                );
                return Err(why);
            }
            let keys = command::key_positions(route, args.len(), |i| {
                std::str::from_utf8(arg(i)).ok()?.parse().ok()
            })
            .map_err(|e| {
                error_about(&mut why, "", name, &[": ", e]);
                std::mem::take(&mut why)
            })?;
            let step = if route == Route::Split(Merge::Ok) {
                2
            } else {
                1
            };
            if !self.keys_allowed(index, route, request, args, keys.clone()) {
                self.count_refusal(index, Refusal::Acl);
                why.extend_from_slice(NOPERM_KEYS);
                return Err(why);
            }
            if let Err(rule) = self.redis_validate(index, id, route, request, args, keys.clone()) {
                self.count_refusal(index, Refusal::Validation);
                resp::write_error(&mut why, format_args!("ERR ferrox: {rule}"));
                return Err(why);
            }
            let mut server = self.sessions[index].tx.as_ref().and_then(|tx| tx.server);
            let key_args = keys
                .step_by(step)
                .chain(command::dest_key(route).then_some(1));
            for i in key_args {
                let Some(here) = self.place(index, arg(i)) else {
                    why.extend_from_slice(b"-ERR ferrox: no server is available\r\n");
                    return Err(why);
                };
                if server.is_some_and(|s| s != here) {
                    why.extend_from_slice(
                        b"-CROSSSLOT ferrox: the keys of a transaction must be on one server (a hashtag keeps them together)\r\n",
                    );
                    return Err(why);
                }
                server = Some(here);
            }
            if self.sessions[index]
                .tx
                .as_ref()
                .is_some_and(|tx| tx.count >= MAX_TRANSACTION)
            {
                why.extend_from_slice(
                    b"-ERR ferrox: a transaction through the proxy holds at most 10000 commands\r\n",
                );
                return Err(why);
            }
            Ok(server)
        })();
        let tx = self.sessions[index].tx.as_mut().expect("in a transaction");
        match refused {
            Ok(server) => {
                tx.server = server;
                tx.count += 1;
                write_whole(&mut tx.queued, request, args);
                let pool = self.sessions[index].pool;
                let writes = id.is_some_and(crate::acl::is_write_command);
                if let (true, Some(route)) = (self.pools[pool].hot.is_some() && writes, route) {
                    let tx = self.sessions[index].tx.as_mut().expect("in a transaction");
                    let arg = |i: usize| &request[args[i].clone()];
                    if let Ok(keys) = command::key_positions(route, args.len(), |i| {
                        std::str::from_utf8(arg(i)).ok()?.parse().ok()
                    }) {
                        let dest = command::dest_key(route).then_some(1);
                        for k in keys.chain(dest).filter(|&k| k < args.len()) {
                            let key = arg(k);
                            let len = key.len().min(u16::MAX as usize);
                            tx.written.extend_from_slice(&(len as u16).to_le_bytes());
                            tx.written.extend_from_slice(&key[..len]);
                        }
                    }
                }
                self.local_reply(index, |out, _| out.extend_from_slice(b"+QUEUED\r\n"));
            }
            Err(why) => {
                tx.failed = true;
                self.local_error(index, |out, _| out.extend_from_slice(&why));
            }
        }
    }

    /// `WATCH key...`: on a connection of the session's own to the keys'
    /// server (every watched key on one), kept until `EXEC` (the
    /// transaction then runs there), `DISCARD` or `UNWATCH`.
    fn redis_watch(&mut self, index: usize, request: &[u8], args: &[Range<usize>]) {
        if !self.keys_allowed(
            index,
            Route::Together(Keys::All),
            request,
            args,
            1..args.len(),
        ) {
            return self.local_error(index, |out, _| out.extend_from_slice(NOPERM_KEYS));
        }
        let mut server = self.sessions[index].watch.map(|(server, _)| server);
        for key in &args[1..] {
            let Some(here) = self.place(index, &request[key.clone()]) else {
                return self.local_error(index, |out, _| {
                    out.extend_from_slice(b"-ERR ferrox: no server is available\r\n")
                });
            };
            if server.is_some_and(|s| s != here) {
                return self.local_error(index, |out, _| {
                    out.extend_from_slice(
                        b"-CROSSSLOT ferrox: watched keys must be on one server (a hashtag keeps them together)\r\n",
                    )
                });
            }
            server = Some(here);
        }
        let server = server.expect("WATCH has a key");
        let now = self.now;
        let b = match self.sessions[index].watch {
            Some((_, b)) => b as usize,
            None => {
                let b = self.open_dedicated(index, server, false, now);
                self.backends[b].keep_open(true);
                self.sessions[index].watch = Some((server, b as u32));
                b
            }
        };
        let seq = self.open_slot(index, Combine::Pass, 1);
        let at = self.slot_ref(index, seq, 0);
        write_whole(self.backends[b].output_tail(), request, args);
        self.queue_on(b, at, Expect::RESP, now);
    }

    /// `DBSIZE`, `FLUSHDB`, `KEYS`: the request whole to every server
    /// that takes keys, the replies merged.
    fn redis_all(
        &mut self,
        index: usize,
        merge: Merge,
        request: &[u8],
        args: &[Range<usize>],
        now: Micros,
    ) {
        let mut groups = self.live_groups(index);
        if groups.len() < 2 {
            let server = groups.first().map(|&(id, _)| super::group_server(id));
            self.scratch.groups = groups;
            return self.send_whole(index, server, Expect::RESP, now, |out| {
                write_whole(out, request, args)
            });
        }
        if merge == Merge::AnyKey {
            // Pieces are read in order: start from a random server.
            let start = self.random() as usize % groups.len();
            groups.rotate_left(start);
        }
        let seq = self.open_split_slot(index, Combine::Redis(merge), &groups);
        self.send_pieces(index, seq, groups, Expect::RESP, now, |out, _| {
            write_whole(out, request, args)
        });
    }

    /// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]` over every server in
    /// turn: the low byte of the proxy's cursor is the server (in
    /// configuration order), the rest the server's own cursor. Servers out
    /// of the pool are skipped.
    fn redis_scan(&mut self, index: usize, request: &[u8], args: &[Range<usize>], now: Micros) {
        let cursor = args
            .get(1)
            .and_then(|a| std::str::from_utf8(&request[a.clone()]).ok())
            .and_then(|c| c.parse::<u64>().ok());
        let pool = &self.pools[self.sessions[index].pool];
        let servers = pool.shards().min(pool.live.len());
        let Some(cursor) = cursor.filter(|&c| ((c & 0xff) as usize) < servers.max(1)) else {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(if args.len() < 2 {
                    b"-ERR wrong number of arguments for 'scan' command\r\n"
                } else {
                    b"-ERR invalid cursor\r\n"
                })
            });
        };
        if servers > super::super::pipeline::SCAN_SHARDS {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"-ERR ferrox: SCAN covers pools of at most 256 servers\r\n")
            });
        }
        let live_from = |from: usize| (from..servers).find(|&s| pool.live[s]);
        let asked = (cursor & 0xff) as usize;
        let (shard, server_cursor) = match live_from(asked) {
            Some(shard) if shard == asked => (shard, cursor >> 8),
            // Its server left the pool: the next one, from its start.
            Some(shard) => (shard, 0),
            None => {
                return self.local_reply(index, |out, _| {
                    out.extend_from_slice(b"*2\r\n$1\r\n0\r\n*0\r\n")
                })
            }
        };
        let next = live_from(shard + 1).map(|s| s as u16);
        let combine = Combine::Scan {
            shard: shard as u16,
            next,
        };
        let seq = self.open_slot(index, combine, 1);
        let at = self.slot_ref(index, seq, 0);
        self.send_piece(at, Some(shard), Expect::RESP, now, |out| {
            resp::write_array_header(out, args.len());
            resp::write_bulk(out, &request[args[0].clone()]);
            resp::write_bulk(out, server_cursor.to_string().as_bytes());
            for arg in &args[2..] {
                resp::write_bulk(out, &request[arg.clone()]);
            }
        });
    }

    /// Authenticates session `index` as `user` (`None` or `default`: the
    /// pool's default user, whose password is the pool's `auth`) with
    /// `password`. On success the session has the user's permissions.
    pub(super) fn authenticate(
        &mut self,
        index: usize,
        user: Option<&[u8]>,
        password: &[u8],
    ) -> bool {
        let spec = self.session_spec(index);
        let found = match user {
            None | Some(b"default") => spec
                .auth
                .as_deref()
                .is_some_and(|expected| same_secret(expected, password))
                .then_some(None),
            Some(name) => spec
                .users
                .iter()
                .position(|u| u.name.as_bytes() == name)
                .filter(|&i| {
                    spec.users[i]
                        .passwords
                        .iter()
                        .any(|p| same_secret(p, password))
                })
                .map(|i| Some(i as u16)),
        };
        match found {
            Some(user) => {
                let session = &mut self.sessions[index];
                session.authed = true;
                session.user = user;
                true
            }
            None => false,
        }
    }

    /// The permissions of session `index`'s user; `None` for the default
    /// user, who has them all.
    pub(super) fn session_acl(&self, index: usize) -> Option<&crate::acl::Acl> {
        let user = self.sessions[index].user?;
        self.session_spec(index)
            .users
            .get(user as usize)
            .map(|u| &*u.acl)
    }

    /// Whether session `index`'s user may touch every key of a request
    /// routed by `route` whose key arguments are `keys`.
    fn keys_allowed(
        &self,
        index: usize,
        route: Route,
        request: &[u8],
        args: &[Range<usize>],
        keys: Range<usize>,
    ) -> bool {
        let Some(acl) = self.session_acl(index) else {
            return true;
        };
        let step = if route == Route::Split(Merge::Ok) {
            2
        } else {
            1
        };
        keys.step_by(step)
            .chain(command::dest_key(route).then_some(1))
            .all(|i| acl.allows_key(&request[args[i].clone()]))
    }

    /// Counts a refusal in session `index`'s pool.
    pub(in crate::engine) fn count_refusal(&mut self, index: usize, refusal: Refusal) {
        let counters = &mut self.pools[self.sessions[index].route().0].counters;
        match refusal {
            Refusal::Acl => counters.acl_refused += 1,
            Refusal::Validation => counters.validation_refused += 1,
        }
    }

    /// The pool's validation rules for a request routed by `route` whose
    /// key arguments are `keys`: the broken rule's message, if any.
    fn redis_validate(
        &self,
        index: usize,
        id: Option<command::CommandId>,
        route: Route,
        request: &[u8],
        args: &[Range<usize>],
        keys: Range<usize>,
    ) -> Result<(), String> {
        let rules = &self.session_spec(index).validate;
        if rules.is_off() {
            return Ok(());
        }
        let arg = |i: usize| &request[args[i].clone()];
        let step = if route == Route::Split(Merge::Ok) {
            2
        } else {
            1
        };
        let key_args = || {
            keys.clone()
                .step_by(step)
                .chain(command::dest_key(route).then_some(1))
        };
        super::super::validate::keys(rules, key_args().map(arg))?;
        if rules.max_value_bytes.is_some() && id.is_some_and(crate::acl::is_write_command) {
            let dest = command::dest_key(route);
            let is_key = |i: usize| {
                (keys.contains(&i) && (i - keys.start).is_multiple_of(step)) || (dest && i == 1)
            };
            for i in (1..args.len()).filter(|&i| !is_key(i)) {
                super::super::validate::value(rules, arg(i).len())?;
            }
        }
        if !rules.require_ttl && rules.max_ttl_s.is_none() {
            return Ok(());
        }
        // The name upper-cased on the stack: longer ones are no command.
        let mut upper = [0u8; 32];
        let name = arg(0);
        let Some(buffer) = upper.get_mut(..name.len()) else {
            return Ok(());
        };
        buffer.copy_from_slice(name);
        buffer.make_ascii_uppercase();
        super::super::validate::redis_ttl(rules, buffer, args.len(), arg)
    }

    /// `WAIT numreplicas timeout`: a client's writes to a server went
    /// through its one connection to that server (shared with other
    /// clients), and `WAIT` on that connection waits for every write made
    /// on it, the client's among them. So it is asked of every server on
    /// those connections, and the least count is the answer. Other
    /// clients' requests queue behind it there, so the timeout is bounded:
    /// [`MAX_WAIT_MS`], or half the pool's timeout if that is shorter.
    fn redis_wait(&mut self, index: usize, replicas: &[u8], timeout: &[u8]) {
        let number = |arg: &[u8]| std::str::from_utf8(arg).ok()?.parse::<i64>().ok();
        let (Some(replicas), Some(timeout)) = (number(replicas), number(timeout)) else {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"-ERR value is not an integer or out of range\r\n")
            });
        };
        if timeout < 0 {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"-ERR timeout is negative\r\n")
            });
        }
        let pool_cap = self
            .session_spec(index)
            .timeout
            .map_or(MAX_WAIT_MS, |t| (t / 2_000).max(1) as i64);
        let cap = MAX_WAIT_MS.min(pool_cap);
        let timeout = if timeout == 0 { cap } else { timeout.min(cap) };
        let request = format!("WAIT {replicas} {timeout}");
        let words: Vec<&[u8]> = request.split(' ').map(str::as_bytes).collect();
        let groups = self.live_groups(index);
        let now = self.now;
        if groups.is_empty() {
            self.scratch.groups = groups;
            return self.send_whole(index, None, Expect::RESP, now, |_| {});
        }
        let seq = self.open_split_slot(index, Combine::Redis(Merge::Min), &groups);
        self.send_pieces(index, seq, groups, Expect::RESP, now, |out, _| {
            resp::write_bulk_array(out, words.iter().copied())
        });
    }

    /// One group per server of session `index`'s pool that takes keys,
    /// in the scratch list (given back by `send_pieces`, or by hand).
    fn live_groups(&mut self, index: usize) -> Vec<(u32, u32)> {
        let pool = &self.pools[self.sessions[index].pool];
        let mut groups = std::mem::take(&mut self.scratch.groups);
        groups.clear();
        let shards = pool.shards().min(pool.live.len());
        groups.extend(
            pool.live[..shards]
                .iter()
                .enumerate()
                .filter(|(_, &live)| live)
                .map(|(server, _)| ((server as u32) << super::GROUP_SERVER_SHIFT, 0)),
        );
        groups
    }

    /// Commands the proxy answers itself.
    fn redis_local(&mut self, index: usize, local: Local, request: &[u8], args: &[Range<usize>]) {
        let arg = |i: usize| &request[args[i].clone()];
        let argc = args.len();
        let pool = self.session_spec(index);
        let subscribed = self.sessions[index]
            .pubsub
            .as_ref()
            .is_some_and(|p| p.active());
        match local {
            // Subscribed, RESP2 answers PING as a message would come.
            Local::Ping if subscribed && argc <= 2 && !self.sessions[index].resp3 => {
                let payload: &[u8] = if argc == 2 { arg(1) } else { b"" };
                self.local_reply(index, |out, _| {
                    resp::write_bulk_array(out, [&b"pong"[..], payload])
                })
            }
            Local::Subscribe | Local::Psubscribe | Local::Ssubscribe if argc >= 2 => {
                let names: Vec<&[u8]> = (1..argc).map(arg).collect();
                let now = self.now;
                self.redis_subscribe(index, pubsub_kind(local), &names, now)
            }
            Local::Unsubscribe | Local::Punsubscribe | Local::Sunsubscribe => {
                let names: Vec<&[u8]> = (1..argc).map(arg).collect();
                let now = self.now;
                self.redis_unsubscribe(index, pubsub_kind(local), &names, now)
            }
            Local::Ping if argc == 1 => {
                self.local_reply(index, |out, _| out.extend_from_slice(b"+PONG\r\n"))
            }
            Local::Ping | Local::Echo if argc == 2 => {
                self.local_reply(index, |out, _| resp::write_bulk(out, arg(1)))
            }
            Local::Quit => {
                self.local_reply(index, |out, _| out.extend_from_slice(b"+OK\r\n"));
                self.close_after_last(index);
            }
            Local::Auth if argc == 2 && pool.auth.is_none() => self.local_error(index, |out, _| {
                out.extend_from_slice(
                    b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
                )
            }),
            Local::Auth if argc == 2 || argc == 3 => {
                let user = (argc == 3).then(|| arg(1));
                if self.authenticate(index, user, arg(argc - 1)) {
                    self.local_reply(index, |out, _| out.extend_from_slice(b"+OK\r\n"))
                } else {
                    self.local_error(index, |out, _| out.extend_from_slice(WRONGPASS))
                }
            }
            Local::Hello => self.redis_hello(index, request, args),
            Local::Select if argc == 2 => {
                let db: Option<u32> = std::str::from_utf8(arg(1)).ok().and_then(|d| d.parse().ok());
                let configured = pool.db;
                if db == Some(configured) {
                    self.local_reply(index, |out, _| out.extend_from_slice(b"+OK\r\n"))
                } else {
                    self.local_error(index, |out, _| {
                        resp::write_error(
                            out,
                            format_args!(
                                "ERR ferrox: the database is fixed to {configured} by configuration"
                            ),
                        )
                    })
                }
            }
            Local::Client if argc >= 2 => {
                let sub = arg(1);
                if sub.eq_ignore_ascii_case(b"SETNAME") || sub.eq_ignore_ascii_case(b"SETINFO") {
                    self.local_reply(index, |out, _| out.extend_from_slice(b"+OK\r\n"))
                } else if sub.eq_ignore_ascii_case(b"GETNAME") {
                    self.local_reply(index, resp::write_null)
                } else {
                    self.local_error(index, |out, _| {
                        error_about(out, "'CLIENT ", sub, &["' is not supported"])
                    })
                }
            }
            Local::Command => self.redis_command(index, request, args),
            Local::Multi if argc == 1 => {
                if self.sessions[index].tx.is_some() {
                    self.local_error(index, |out, _| {
                        out.extend_from_slice(b"-ERR MULTI calls can not be nested\r\n")
                    })
                } else {
                    self.sessions[index].tx = Some(Box::default());
                    self.local_reply(index, |out, _| out.extend_from_slice(b"+OK\r\n"))
                }
            }
            Local::Exec if argc == 1 => {
                let watched = self.sessions[index].watch.map(|(server, _)| server);
                match self.sessions[index].tx.take() {
                    None => self.local_error(index, |out, _| {
                        out.extend_from_slice(b"-ERR EXEC without MULTI\r\n")
                    }),
                    Some(tx) if tx.failed => {
                        self.drop_watch(index);
                        self.local_error(index, |out, _| {
                            out.extend_from_slice(
                                b"-EXECABORT Transaction discarded because of previous errors.\r\n",
                            )
                        })
                    }
                    Some(tx) if watched.is_some() && tx.server.is_some() && tx.server != watched => {
                        self.drop_watch(index);
                        self.local_error(index, |out, _| {
                            out.extend_from_slice(
                                b"-EXECABORT ferrox: the transaction's keys are not on the server of the watched keys\r\n",
                            )
                        })
                    }
                    // Nothing queued, nothing watched: nothing to run.
                    Some(tx) if tx.server.is_none() && watched.is_none() => {
                        self.local_reply(index, |out, _| out.extend_from_slice(b"*0\r\n"))
                    }
                    Some(tx) => {
                        let server = tx.server.or(watched).expect("one of them, checked above");
                        // Its writes leave the caches before it is sent.
                        let pool = self.sessions[index].pool;
                        let mut at = 0;
                        while at + 2 <= tx.written.len() {
                            let len = u16::from_le_bytes([tx.written[at], tx.written[at + 1]]);
                            let key = &tx.written[at + 2..at + 2 + len as usize];
                            let p = &mut self.pools[pool];
                            if let Some(hot) = p.hot.as_mut() {
                                hot.written(key, &mut p.counters);
                            }
                            self.tell_peers(pool, key);
                            at += 2 + len as usize;
                        }
                        let seq = self.open_slot(index, Combine::Pass, (tx.count + 2) as u16);
                        let now = self.now;
                        self.send_transaction(index, server, seq, &tx.queued, tx.count, now);
                    }
                }
            }
            Local::Discard if argc == 1 => match self.sessions[index].tx.take() {
                None => self.local_error(index, |out, _| {
                    out.extend_from_slice(b"-ERR DISCARD without MULTI\r\n")
                }),
                Some(_) => {
                    self.drop_watch(index);
                    self.local_reply(index, |out, _| out.extend_from_slice(b"+OK\r\n"))
                }
            },
            Local::Watch if self.sessions[index].tx.is_some() => self.local_error(index, |out, _| {
                out.extend_from_slice(b"-ERR WATCH inside MULTI is not allowed\r\n")
            }),
            Local::Watch if argc >= 2 => self.redis_watch(index, request, args),
            Local::Pubsub if argc >= 2 => {
                let sub = arg(1).to_ascii_uppercase();
                let merge = match &sub[..] {
                    b"CHANNELS" => Some(Merge::Concat),
                    b"NUMSUB" => Some(Merge::SumPairs),
                    b"NUMPAT" => Some(Merge::First),
                    b"SHARDCHANNELS" => Some(Merge::Concat),
                    b"SHARDNUMSUB" => Some(Merge::SumPairs),
                    _ => None,
                };
                match merge {
                    Some(merge) => {
                        let now = self.now;
                        self.redis_all(index, merge, request, args, now)
                    }
                    None => {
                        let sub = arg(1);
                        self.local_error(index, |out, _| {
                            error_about(out, "'PUBSUB ", sub, &["' is not supported by the proxy"])
                        })
                    }
                }
            }
            // Closing the connection holding the WATCH unwatches.
            Local::Unwatch => {
                self.drop_watch(index);
                self.local_reply(index, |out, _| out.extend_from_slice(b"+OK\r\n"))
            }
            Local::Info => {
                let (text, keyspace) = self.info_text(index, (1..argc).map(arg));
                if keyspace {
                    self.redis_info_keyspace(index, text);
                } else {
                    self.local_reply(index, |out, _| resp::write_bulk(out, text.as_bytes()))
                }
            }
            Local::Wait if argc == 3 => self.redis_wait(index, arg(1), arg(2)),
            // `redis-benchmark` reads `save` and `appendonly` before it
            // starts; the proxy has no such settings.
            Local::Config if argc >= 3 && arg(1).eq_ignore_ascii_case(b"GET") => {
                self.local_reply(index, |out, resp3| resp::write_map_header(out, 0, resp3))
            }
            Local::Config => self.local_error(index, |out, _| {
                out.extend_from_slice(
                    b"-ERR ferrox: only CONFIG GET is answered (with nothing); configure the servers directly\r\n",
                )
            }),
            _ => {
                let name = arg(0);
                self.local_error(index, |out, _| {
                    error_about(out, "wrong number of arguments for '", name, &["'"])
                })
            }
        }
    }

    /// `INFO` with a keyspace section: `INFO keyspace` to every server
    /// that takes keys, added up after the proxy's own sections (`text`).
    fn redis_info_keyspace(&mut self, index: usize, text: String) {
        let groups = self.live_groups(index);
        if groups.is_empty() {
            self.scratch.groups = groups;
            return self.local_reply(index, |out, _| {
                resp::write_bulk(out, format!("{text}\r\n# Keyspace\r\n").as_bytes())
            });
        }
        let seq = self.open_split_slot(index, Combine::Info, &groups);
        self.set_slot_text(index, seq, text.as_bytes());
        let now = self.now;
        self.send_pieces(index, seq, groups, Expect::RESP, now, |out, _| {
            resp::write_bulk_array(out, [&b"INFO"[..], b"keyspace"])
        });
    }

    /// `COMMAND`, `COMMAND COUNT|LIST|INFO name...|DOCS`: from the
    /// command table, the commands the proxy serves.
    fn redis_command(&mut self, index: usize, request: &[u8], args: &[Range<usize>]) {
        let arg = |i: usize| &request[args[i].clone()];
        let sub = (args.len() >= 2).then(|| arg(1).to_ascii_uppercase());
        match sub.as_deref() {
            None => self.local_reply(index, |out, _| {
                let served: Vec<_> = command::served().collect();
                resp::write_array_header(out, served.len());
                for info in &served {
                    write_command_info(out, info);
                }
            }),
            Some(b"COUNT") => self.local_reply(index, |out, _| {
                resp::write_integer(out, command::served().count() as i64)
            }),
            Some(b"LIST") => self.local_reply(index, |out, _| {
                let served: Vec<_> = command::served().collect();
                resp::write_array_header(out, served.len());
                for info in &served {
                    resp::write_bulk(out, info.name.to_ascii_lowercase().as_bytes());
                }
            }),
            Some(b"INFO") => self.local_reply(index, |out, _| {
                resp::write_array_header(out, args.len() - 2);
                for i in 2..args.len() {
                    let wanted = arg(i);
                    match command::served().find(|c| c.name.as_bytes().eq_ignore_ascii_case(wanted))
                    {
                        Some(info) => write_command_info(out, &info),
                        None => out.extend_from_slice(b"*-1\r\n"),
                    }
                }
            }),
            // No documentation is kept: an empty answer, which clients
            // take as "no hints".
            Some(b"DOCS") => {
                self.local_reply(index, |out, resp3| resp::write_map_header(out, 0, resp3))
            }
            Some(_) => {
                let sub = arg(1);
                self.local_error(index, |out, _| {
                    error_about(out, "'COMMAND ", sub, &["' is not supported"])
                })
            }
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    fn redis_hello(&mut self, index: usize, request: &[u8], args: &[Range<usize>]) {
        let arg = |i: usize| &request[args[i].clone()];
        let mut version = None;
        if args.len() >= 2 {
            match arg(1) {
                b"2" => version = Some(false),
                b"3" => version = Some(true),
                _ => {
                    return self.local_error(index, |out, _| {
                        out.extend_from_slice(b"-NOPROTO unsupported protocol version\r\n")
                    })
                }
            }
        }
        let mut i = 2;
        let mut authed = self.sessions[index].authed;
        while i < args.len() {
            let option = arg(i);
            if option.eq_ignore_ascii_case(b"AUTH") && i + 2 < args.len() {
                if !self.authenticate(index, Some(arg(i + 1)), arg(i + 2)) {
                    return self.local_error(index, |out, _| out.extend_from_slice(WRONGPASS));
                }
                authed = true;
                i += 3;
            } else if option.eq_ignore_ascii_case(b"SETNAME") && i + 1 < args.len() {
                i += 2;
            } else {
                return self.local_error(index, |out, _| {
                    error_about(out, "syntax error in HELLO option '", option, &["'"])
                });
            }
        }
        if !authed {
            return self.local_error(index, |out, _| {
                out.extend_from_slice(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n")
            });
        }
        let session = &mut self.sessions[index];
        session.authed = true;
        if let Some(resp3) = version {
            session.resp3 = resp3;
        }
        let id = index as i64 + 1;
        self.local_reply(index, |out, resp3| {
            resp::write_map_header(out, 7, resp3);
            resp::write_bulk(out, b"server");
            resp::write_bulk(out, b"ferrox");
            resp::write_bulk(out, b"version");
            resp::write_bulk(out, env!("CARGO_PKG_VERSION").as_bytes());
            resp::write_bulk(out, b"proto");
            resp::write_integer(out, if resp3 { 3 } else { 2 });
            resp::write_bulk(out, b"id");
            resp::write_integer(out, id);
            resp::write_bulk(out, b"mode");
            resp::write_bulk(out, b"proxy");
            resp::write_bulk(out, b"role");
            resp::write_bulk(out, b"master");
            resp::write_bulk(out, b"modules");
            out.extend_from_slice(b"*0\r\n");
        });
    }
}

/// One `COMMAND INFO` entry, as Redis 7 writes it: name, arity, flags,
/// first key, last key, step, ACL categories, tips, key specs and
/// subcommands (the last four empty).
fn write_command_info(out: &mut Vec<u8>, info: &command::CommandInfo) {
    resp::write_array_header(out, 10);
    resp::write_bulk(out, info.name.to_ascii_lowercase().as_bytes());
    resp::write_integer(out, info.arity);
    resp::write_array_header(out, info.flags.len());
    for flag in info.flags {
        out.push(b'+');
        out.extend_from_slice(flag.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let (first, last, step) = info.keys;
    resp::write_integer(out, first);
    resp::write_integer(out, last);
    resp::write_integer(out, step);
    out.extend_from_slice(b"*0\r\n*0\r\n*0\r\n*0\r\n");
}

/// Writes a request in RESP (an inline request comes out as an array).
fn write_whole(out: &mut Vec<u8>, request: &[u8], args: &[Range<usize>]) {
    if request.first() == Some(&b'*') {
        out.extend_from_slice(request);
    } else {
        resp::write_bulk_array(out, args.iter().map(|a| &request[a.clone()]));
    }
}

/// Writes one piece of a split request: the command name, then for each
/// of `keys` (argument indices) that argument and the `step - 1` after it.
fn write_piece(
    out: &mut Vec<u8>,
    request: &[u8],
    args: &[Range<usize>],
    step: usize,
    keys: impl Iterator<Item = usize> + Clone,
) {
    resp::write_array_header(out, 1 + keys.clone().count() * step);
    resp::write_bulk(out, &request[args[0].clone()]);
    for k in keys {
        for arg in &args[k..k + step] {
            resp::write_bulk(out, &request[arg.clone()]);
        }
    }
}

/// `-ERR ferrox: <before><token><after...>`, where the token is
/// client-visible (a command or key), shown lossily and cut at 64
/// characters.
fn error_about(out: &mut Vec<u8>, before: &str, token: &[u8], after: &[&str]) {
    out.extend_from_slice(b"-ERR ferrox: ");
    out.extend_from_slice(before.as_bytes());
    let shown = &token[..token.len().min(64)];
    for &b in shown {
        // Keep the error a single printable line.
        out.push(if b.is_ascii_graphic() || b == b' ' {
            b
        } else {
            b'?'
        });
    }
    for part in after {
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_about_a_token_stay_one_printable_line() {
        let mut out = Vec::new();
        error_about(&mut out, "unknown command '", b"x\r\ny", &["'"]);
        assert_eq!(out, b"-ERR ferrox: unknown command 'x??y'\r\n");
    }
}
