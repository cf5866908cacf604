//! Backend connections: connect and handshake, the FIFO of requests each
//! connection was sent, matching replies to it, timeouts, and reconnecting
//! after a failure.
//!
//! A failed connection costs exactly the requests it holds: each gets an
//! error reply naming the server, and the connection is reset.
//!
//! **Reconnecting.** A connection attempt that fails when the connection
//! had no failure before it (the first attempt, or the first after a good
//! reply) is made again at once, and the requests queued on it wait for
//! that attempt: a lost SYN or ARP exchange, or a start-up race between
//! the first connect and neighbour discovery, costs no request and no
//! ejection. After any other failure the connection reconnects on demand:
//! the next request routed to it opens a connection and waits for it, so
//! the first request after a server comes back reaches it. At most one
//! attempt per server is in flight while it fails: a request finds the
//! server's other connection that is connected or connecting and goes
//! there instead of starting another. Pools that preconnect also
//! reconnect in the background, after a backoff (100 ms doubling up to
//! `server_retry_timeout`). With ejection on, a server whose failures
//! reach the limit takes no keys until its retry time, so it sees no
//! attempt before then.

use std::collections::VecDeque;
use std::io::Write;

use ferrox_proto::{memcache, resp};

use super::pipeline::{Expect, Shape, SlotRef, Suppress};
use super::{Action, Engine, Handle, Micros, PoolSpec, Protocol, Tag, RETRY_MIN};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// No connection; one is opened for the next request.
    Idle,
    Connecting,
    Ready,
    /// Failed: the next request reconnects; a pool that preconnects
    /// reconnects on its own at `since`.
    Backoff,
}

/// A request a connection was sent and has not answered.
#[derive(Debug, Clone, Copy)]
pub(super) struct InFlight {
    pub at: SlotRef,
    pub expect: Expect,
    pub sent: Micros,
}

#[derive(Debug)]
pub(super) struct Backend {
    pool: usize,
    server: usize,
    /// How errors name the server (it outlives the server's place in the
    /// pool while the connection retires).
    name: String,
    /// Speaks RESP3 (after `HELLO 3`), for sessions that asked for it.
    resp3: bool,
    state: State,
    handle: Option<Handle>,
    output: super::Output,
    send_queued: bool,
    inflight: VecDeque<InFlight>,
    /// Handshake replies (`AUTH`, `SELECT`, `HELLO`) still to come.
    handshake: u8,
    /// When connecting began, or when the backoff ends.
    since: Micros,
    /// Failures in a row.
    failures: u32,
    /// The attempt in flight is the immediate retry of a failed first
    /// attempt: if it fails too, the failure counts.
    retrying: bool,
    /// Its server left the configuration: it takes no new requests and is
    /// closed once it has answered the ones it holds.
    retiring: bool,
    /// The deadline filed for it in the engine's timer heap.
    armed: Option<Micros>,
    /// A connection of one session's own, for a blocking command: the
    /// session (index, generation). It has no request timeout (the command
    /// waits as long as the client asked) and is closed once answered, or
    /// when the session goes.
    owner: Option<(u32, u32)>,
    /// No request timeout (a blocking command waits as long as asked).
    untimed: bool,
    /// A session's pub/sub connection: frames come unasked for (messages),
    /// and it stays open when it has answered everything.
    subscriber: bool,
    /// A dedicated connection kept open when it has answered everything
    /// (a subscriber's, or one holding a `WATCH`).
    keep_open: bool,
    /// The hot-key cache's connection to its server: `CLIENT TRACKING on`,
    /// and invalidation pushes come unasked for.
    tracking: bool,
}

impl Backend {
    /// Connected (or connecting) to its server now.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Ready | State::Connecting) && self.handle.is_some()
    }

    /// Requests written or queued to it and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The runtime's connection for it is `handle`.
    pub fn bind(&mut self, handle: Handle) {
        self.handle = Some(handle);
    }

    /// Its output for the runtime to send (the request that follows asks
    /// for another `Send`).
    pub fn show_output(&mut self) -> &[u8] {
        self.send_queued = false;
        self.output.show()
    }

    /// The peer acknowledged the first `n` bytes of its output.
    pub fn output_acked(&mut self, n: usize) {
        self.output.consume(n);
    }

    /// Its server is now the pool's server `server` (a reconfiguration
    /// renumbered the servers).
    pub fn renumber(&mut self, server: usize) {
        self.server = server;
    }

    /// Whether `at` is its live entry in the timer heap; if so, it is no
    /// longer filed.
    pub fn disarm(&mut self, at: Micros) -> bool {
        let live = self.armed == Some(at);
        if live {
            self.armed = None;
        }
        live
    }

    pub fn new(pool: usize, server: usize, name: String, resp3: bool) -> Backend {
        Backend {
            pool,
            server,
            name,
            resp3,
            state: State::Idle,
            handle: None,
            output: super::Output::default(),
            send_queued: false,
            inflight: VecDeque::new(),
            handshake: 0,
            since: 0,
            failures: 0,
            retrying: false,
            retiring: false,
            armed: None,
            owner: None,
            untimed: false,
            subscriber: false,
            keep_open: false,
            tracking: false,
        }
    }

    /// Makes this fresh RESP3 connection the hot-key cache's, tracking
    /// the keys it reads.
    pub fn make_tracking(&mut self) {
        self.tracking = true;
    }

    /// Makes this fresh connection the proxy's own subscription (to a
    /// sentinel): nobody else's requests, no timeout, freed when it fails.
    pub fn make_proxy_subscriber(&mut self) {
        self.subscriber = true;
        self.retiring = true;
        self.keep_open = true;
        self.untimed = true;
    }

    /// Whether this is the proxy's own subscription of pool `pool`, open
    /// or opening (a failed one is freed, and its slot may serve another).
    pub fn is_proxy_subscriber(&self, pool: usize) -> bool {
        self.subscriber
            && self.owner.is_none()
            && self.pool == pool
            && matches!(self.state, State::Connecting | State::Ready)
    }

    /// Forgets the requests it was sent (a subscription's confirmation
    /// leaves nothing to wait for).
    pub fn forget_inflight(&mut self) {
        self.inflight.clear();
    }

    pub fn make_subscriber(&mut self) {
        self.subscriber = true;
        self.keep_open = true;
    }

    pub fn keep_open(&mut self, keep: bool) {
        self.keep_open = keep;
    }

    /// Where the next request's bytes go.
    pub fn output_tail(&mut self) -> &mut Vec<u8> {
        self.output.tail()
    }

    /// When this connection next needs [`Engine::handle_timeout`].
    pub fn deadline(&self, spec: &PoolSpec) -> Option<Micros> {
        match self.state {
            State::Idle => None,
            State::Connecting => Some(self.since + spec.connect_timeout),
            State::Ready if self.untimed => None,
            State::Ready => Some(self.inflight.front()?.sent + spec.timeout?),
            State::Backoff => Some(self.since),
        }
    }
}

impl Engine {
    /// Asks for a connection to every server of pools that preconnect.
    pub fn preconnect(&mut self, now: Micros) {
        for b in 0..self.backends.len() {
            let backend = &self.backends[b];
            let pool = &self.pools[backend.pool];
            let known = !pool.spec.servers[backend.server].addr.ip().is_unspecified();
            if pool.spec.preconnect && !backend.resp3 && !backend.retiring && known {
                self.backend_connect(b, now);
            }
        }
    }

    /// Files backend `b`'s deadline in the timer heap, unless an earlier
    /// or equal one is already filed for it.
    pub(super) fn arm(&mut self, b: usize) {
        let backend = &mut self.backends[b];
        let Some(at) = backend.deadline(&self.pools[backend.pool].spec) else {
            return;
        };
        if backend.armed.is_none_or(|armed| at < armed) {
            backend.armed = Some(at);
            self.timers.push(std::cmp::Reverse((at, b as u32)));
        }
    }

    /// The runtime's connection `handle` of backend `b` is gone.
    pub(super) fn backend_gone(&mut self, b: usize, handle: Handle, now: Micros) {
        let backend = &mut self.backends[b];
        if backend.handle != Some(handle) {
            // A connection the engine already reset.
            return;
        }
        backend.handle = None;
        let why = if backend.state == State::Connecting {
            "refused the connection"
        } else {
            "reset the connection"
        };
        self.backend_failed(b, now, why);
    }

    /// Queues the request of slot piece `at` for `server` of its
    /// session's pool on one of the server's connections (RESP3 ones for
    /// a RESP3 session), opening it when needed; `write` appends the
    /// request bytes. A cluster pool's request keeps a copy of them in its
    /// slot, to follow a redirection.
    pub(super) fn send_to_server(
        &mut self,
        server: usize,
        at: SlotRef,
        expect: Expect,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let (pool, resp3) = self.sessions[at.session as usize].route();
        if self.pools[pool].spec.servers[server]
            .addr
            .ip()
            .is_unspecified()
        {
            // A shard whose primary Sentinel has not named yet.
            let p = &mut self.pools[pool];
            p.counters.errors += 1;
            p.counters.forward_errors += 1;
            self.stats.errors += 1;
            let master = p.spec.masters.get(server).map_or("", String::as_str);
            let error = format!(
                "-ERR ferrox: no primary of master {master} is known yet (asking Sentinel)\r\n"
            );
            return self.fill_slot(at, error.as_bytes());
        }
        let server = if self.scratch.read {
            match self.read_server(pool, server, at.session as usize, None) {
                Some(server) => server,
                None => {
                    let p = &mut self.pools[pool];
                    p.counters.errors += 1;
                    p.counters.forward_errors += 1;
                    self.stats.errors += 1;
                    let name = &p.spec.servers[server].name;
                    let error = format!("-ERR ferrox: no replica of server {name} is up\r\n");
                    return self.fill_slot(at, error.as_bytes());
                }
            }
        } else {
            server
        };
        let b = self.pick_backend(pool, server, resp3, at.session as usize, now);
        // A copy to send again: after a redirection, or elsewhere when a
        // replica fails.
        let keep = self.pools[pool].cluster.is_some() || self.is_replica(pool, server);
        if self
            .overload
            .max_backend_queue
            .is_some_and(|max| self.backends[b].inflight.len() >= max)
        {
            // Refused at once rather than queued without bound.
            let p = &mut self.pools[pool];
            p.counters.overload_refused += 1;
            p.counters.errors += 1;
            self.stats.errors += 1;
            let error: &[u8] = match p.spec.protocol {
                Protocol::Redis => b"-ERR ferrox: overloaded (the server's queue is full)\r\n",
                Protocol::Memcache => b"SERVER_ERROR overloaded (the server's queue is full)\r\n",
            };
            return self.fill_slot(at, error);
        }
        let backend = &mut self.backends[b];
        let before = backend.output.tail().len();
        write(backend.output.tail());
        let tail = backend.output.tail();
        let written = tail.len() - before;
        self.pools[pool].health[server].request_bytes += written as u64;
        if keep {
            if let Some(slot) = self.sessions[at.session as usize].slot_mut(at) {
                slot.keep_sent(at.piece, &tail[before..]);
            }
        }
        self.queue_on(b, at, expect, now);
    }

    /// The connection of `server` of `pool` for session `session`'s
    /// requests (RESP3 ones for `resp3`), opened when needed.
    pub(super) fn pick_backend(
        &mut self,
        pool: usize,
        server: usize,
        resp3: bool,
        session: usize,
        now: Micros,
    ) -> usize {
        let p = &mut self.pools[pool];
        let conns = &p.conns[server];
        let list = if resp3 && !conns.resp3.is_empty() {
            &conns.resp3
        } else {
            &conns.plain
        };
        // A session always uses the same one of a server's connections, so
        // its requests reach the server in the order it sent them (a read
        // after a write sees the write); sessions spread over them.
        let mut b = list[session % list.len()] as usize;
        p.health[server].requests += 1;
        if self.backends[b].state == State::Backoff {
            // A failed connection: use one of the server's connections
            // that works, or that is being opened, rather than start a
            // second attempt on a server that may be down.
            let state = |c: &u32| self.backends[*c as usize].state;
            let other = list
                .iter()
                .find(|c| state(c) == State::Ready)
                .or_else(|| list.iter().find(|c| state(c) == State::Connecting));
            if let Some(&other) = other {
                b = other as usize;
            }
        }
        match self.backends[b].state {
            State::Idle | State::Backoff => self.backend_connect(b, now),
            State::Connecting | State::Ready => {}
        }
        b
    }

    /// Whether backend `b` is one session's own (a blocking command's,
    /// a transaction's, a WATCH's or a subscriber's).
    pub(super) fn is_dedicated(&self, b: usize) -> bool {
        self.backends[b].owner.is_some()
    }

    /// Backend `b`'s pool and server.
    pub(super) fn backend_place(&self, b: usize) -> (usize, usize) {
        (self.backends[b].pool, self.backends[b].server)
    }

    /// Sends slot piece `at`, a blocking command, to `server` on a new
    /// connection of the session's own, closed once it has answered (or
    /// when the session goes); `write` appends the request bytes.
    pub(super) fn send_blocking(
        &mut self,
        server: usize,
        at: SlotRef,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let b = self.open_dedicated(at.session as usize, server, true, now);
        let backend = &mut self.backends[b];
        let before = backend.output.tail().len();
        write(backend.output.tail());
        let pool = backend.pool;
        if self.pools[pool].cluster.is_some() {
            let tail = self.backends[b].output.tail();
            if let Some(slot) = self.sessions[at.session as usize].slot_mut(at) {
                slot.keep_sent(at.piece, &tail[before..]);
            }
        }
        let backend = &mut self.backends[b];
        backend.inflight.push_back(InFlight {
            at,
            expect: Expect::RESP,
            sent: now,
        });
        self.arm(b);
    }

    /// Sends session `index`'s transaction (`queued`, `count` commands)
    /// to `server` as `MULTI`, the commands, `EXEC` on a new connection of
    /// its own; slot `seq` has a piece per reply, and only `EXEC`'s is
    /// kept.
    pub(super) fn send_transaction(
        &mut self,
        index: usize,
        server: usize,
        seq: u64,
        queued: &[u8],
        count: usize,
        now: Micros,
    ) {
        // On the connection holding the session's WATCH, if any (EXEC
        // ends the WATCH: the connection is let go once it has answered).
        let b = match self.sessions[index].watch.take() {
            Some((_, b)) => {
                self.backends[b as usize].keep_open(false);
                b as usize
            }
            None => self.open_dedicated(index, server, false, now),
        };
        let pieces = count + 2;
        let out = self.backends[b].output.tail();
        resp::write_bulk_array(out, [&b"MULTI"[..]]);
        out.extend_from_slice(queued);
        resp::write_bulk_array(out, [&b"EXEC"[..]]);
        for piece in 0..pieces {
            let at = self.slot_ref(index, seq, piece as u16);
            let suppress = if piece + 1 == pieces {
                Suppress::No
            } else {
                Suppress::Always
            };
            let expect = Expect {
                shape: Shape::Resp,
                suppress,
            };
            self.queue_on(b, at, expect, now);
        }
    }

    /// Records that backend `b` was sent slot piece `at`'s request (its
    /// bytes already in the output), and asks for the send.
    pub(super) fn queue_on(&mut self, b: usize, at: SlotRef, expect: Expect, now: Micros) {
        let backend = &mut self.backends[b];
        backend.inflight.push_back(InFlight {
            at,
            expect,
            sent: now,
        });
        if backend.state == State::Ready && !backend.send_queued {
            backend.send_queued = true;
            let handle = backend.handle.expect("a ready connection has a handle");
            self.actions.push_back(Action::Send(handle));
        }
        self.arm(b);
    }

    /// A new connection to `server` of session `index`'s own, being
    /// opened (with the pool's handshake in its output): retiring from
    /// the start, so that it takes nothing else and is freed once it has
    /// answered; `untimed`: no request timeout.
    pub(super) fn open_dedicated(
        &mut self,
        index: usize,
        server: usize,
        untimed: bool,
        now: Micros,
    ) -> usize {
        let (pool, resp3) = self.sessions[index].route();
        let b = self.new_backend(pool, server, resp3) as usize;
        let owner = (index as u32, self.sessions[index].generation());
        let backend = &mut self.backends[b];
        backend.retiring = true;
        backend.owner = Some(owner);
        backend.untimed = untimed;
        let backends = &self.backends;
        let session = &mut self.sessions[index];
        session.forget_dedicated(|d| backends[d as usize].owner == Some(owner));
        session.add_dedicated(b as u32);
        self.backend_connect(b, now);
        b
    }

    /// Lets go of session `index`'s WATCH connection, if any: closed once
    /// it has answered what it holds (the server then unwatches).
    pub(super) fn drop_watch(&mut self, index: usize) {
        let Some((_, b)) = self.sessions[index].watch.take() else {
            return;
        };
        let b = b as usize;
        let owner = (index as u32, self.sessions[index].generation());
        if self.backends[b].owner == Some(owner) {
            self.backends[b].keep_open(false);
            if self.backends[b].inflight.is_empty() {
                self.backend_free(b);
            }
        }
    }

    /// Closes the connections of session `index` (whose generation was
    /// `generation`) that still wait for a blocking command: the server
    /// then stops holding it.
    pub(super) fn close_dedicated(&mut self, dedicated: &[u32], owner: (u32, u32)) {
        for &b in dedicated {
            let b = b as usize;
            if self.backends[b].owner == Some(owner) {
                self.backends[b].inflight.clear();
                self.backend_free(b);
            }
        }
    }

    /// Answers one piece with an error naming backend `b`'s server.
    fn fail_piece(&mut self, b: usize, why: &str, at: SlotRef, suppress: Suppress) {
        let counters = &mut self.pools[self.backends[b].pool].counters;
        counters.errors += 1;
        counters.forward_errors += 1;
        let mut error = std::mem::take(&mut self.scratch.error);
        error.clear();
        if suppress != Suppress::Always {
            let backend = &self.backends[b];
            let prefix = match self.pools[backend.pool].spec.protocol {
                Protocol::Redis => "-ERR ferrox: ",
                Protocol::Memcache => "SERVER_ERROR ferrox: ",
            };
            let name = &backend.name;
            // Writing to a Vec cannot fail.
            let _ = write!(error, "{prefix}server {name} {why}\r\n");
        }
        self.fill_slot(at, &error);
        self.scratch.error = error;
    }

    /// Opens backend connection `b` (idle, or failed and waiting), its
    /// handshake first in its output.
    pub(super) fn backend_connect(&mut self, b: usize, now: Micros) {
        let backend = &mut self.backends[b];
        if !matches!(backend.state, State::Idle | State::Backoff) {
            return;
        }
        let spec = &self.pools[backend.pool].spec;
        backend.output.clear();
        backend.handshake = 0;
        // A sentinel knows nothing of the pool's password or database; it
        // may have a password of its own.
        let sentinel = spec.servers[backend.server].role == super::Role::Sentinel;
        let login = match sentinel {
            true => spec.sentinel_auth.as_ref(),
            false => spec.server_login.as_ref(),
        };
        let (user, password) = match login {
            Some(login) => (login.user.as_deref(), Some(&login.password[..])),
            // A data server without a login of its own gets the clients'
            // password (twemproxy's redis_auth).
            None if !sentinel => (None, spec.auth.as_deref()),
            None => (None, None),
        };
        if let (Protocol::Redis, Some(password)) = (spec.protocol, password) {
            let out = backend.output.tail();
            match user {
                Some(user) => resp::write_bulk_array(out, [&b"AUTH"[..], user, password]),
                None => resp::write_bulk_array(out, [&b"AUTH"[..], password]),
            }
            backend.handshake += 1;
        }
        if spec.protocol == Protocol::Redis && !sentinel {
            if spec.db != 0 {
                let db = spec.db.to_string();
                resp::write_bulk_array(backend.output.tail(), [&b"SELECT"[..], db.as_bytes()]);
                backend.handshake += 1;
            }
            if backend.resp3 {
                resp::write_bulk_array(backend.output.tail(), [&b"HELLO"[..], b"3"]);
                backend.handshake += 1;
            }
            if backend.tracking {
                resp::write_bulk_array(backend.output.tail(), [&b"CLIENT"[..], b"TRACKING", b"on"]);
                backend.handshake += 1;
            }
        }
        self.backend_dial(b, now);
    }

    /// Asks the runtime for backend connection `b`'s TCP connection; its
    /// output (handshake, then any queued requests) goes once connected.
    fn backend_dial(&mut self, b: usize, now: Micros) {
        let backend = &mut self.backends[b];
        backend.state = State::Connecting;
        backend.since = now;
        let addr = self.pools[backend.pool].spec.servers[backend.server].addr;
        self.stats.backend_connects += 1;
        self.actions.push_back(Action::Connect {
            tag: Tag::backend(b as u32),
            addr,
        });
        self.arm(b);
    }

    pub(super) fn backend_connected(&mut self, b: usize, now: Micros) {
        let backend = &mut self.backends[b];
        if backend.state != State::Connecting {
            return;
        }
        backend.state = State::Ready;
        backend.retrying = false;
        // Requests queued while connecting are timed from now.
        for request in &mut backend.inflight {
            request.sent = now;
        }
        if !backend.output.is_empty() && !backend.send_queued {
            backend.send_queued = true;
            let handle = backend.handle.expect("a connected backend has a handle");
            self.actions.push_back(Action::Send(handle));
        }
        self.arm(b);
    }

    /// Takes replies from the front of `input`; returns the bytes used.
    pub(super) fn backend_input(&mut self, b: usize, input: &[u8], now: Micros) -> usize {
        let spec = &self.pools[self.backends[b].pool].spec;
        let (limits, memcache_limits) = (spec.limits, spec.memcache_limits);
        let mut used = 0;
        while used < input.len() {
            let backend = &mut self.backends[b];
            if backend.state != State::Ready {
                break;
            }
            let rest = &input[used..];
            let shape = match (backend.handshake, backend.inflight.front()) {
                (1.., _) => Shape::Resp,
                (0, Some(request)) => request.expect.shape,
                // A subscriber's messages, and a tracking connection's
                // invalidations, come unasked for.
                (0, None) if backend.subscriber || backend.tracking => Shape::Resp,
                (0, None) => {
                    self.backend_failed(b, now, "sent a reply to no request");
                    return input.len();
                }
            };
            let len = match shape {
                Shape::Resp => resp::reply_len(rest, &limits).map_err(|_| ()),
                Shape::Memcache(kind) => {
                    memcache::reply_len(rest, kind, &memcache_limits).map_err(|_| ())
                }
            };
            let len = match len {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(()) => {
                    self.backend_failed(b, now, "sent a malformed reply");
                    return input.len();
                }
            };
            let reply = &rest[..len];
            used += len;
            // An invalidation may come at any time, handshake included.
            if backend.tracking && reply.first() == Some(&b'>') {
                self.tracking_push(b, reply);
                continue;
            }
            if backend.handshake > 0 {
                backend.handshake -= 1;
                if reply.first() == Some(&b'-') {
                    self.backend_failed(b, now, "refused the handshake (AUTH, SELECT or HELLO)");
                    return input.len();
                }
                continue;
            }
            if backend.inflight.is_empty() && !backend.subscriber {
                self.backend_failed(b, now, "sent a reply to no request");
                return input.len();
            }
            backend.failures = 0;
            if backend.subscriber {
                self.subscriber_input(b, reply);
                continue;
            }
            if !backend.retiring {
                let (pool, server) = (backend.pool, backend.server);
                let health = &mut self.pools[pool].health[server];
                health.failures = 0;
                health.responses += 1;
                health.response_bytes += len as u64;
            }
            let request = self.backends[b]
                .inflight
                .pop_front()
                .expect("checked above");
            let suppressed = match request.expect.suppress {
                Suppress::No => false,
                Suppress::Always => true,
                Suppress::Quiet(command) => memcache::quiet_suppresses(command, reply),
            };
            let pool = self.backends[b].pool;
            if request.at.session == super::cluster::INTERNAL {
                self.internal_reply(b, request.at, reply, now);
            } else if reply.first() == Some(&b'-')
                && self.pools[pool].cluster.is_some()
                && self.cluster_redirect(b, &request, reply, now)
            {
                // Sent again where the cluster said; the reply comes
                // from there.
            } else {
                self.fill_slot(request.at, if suppressed { b"" } else { reply });
            }
            let backend = &self.backends[b];
            if backend.retiring && !backend.keep_open && backend.inflight.is_empty() {
                self.backend_free(b);
                return input.len();
            }
        }
        // The next request in flight is timed from its own sending.
        self.arm(b);
        used
    }

    /// Closes session `index` (if it is still the one of `generation`)
    /// after what it has been answered.
    fn close_subscriber_session(&mut self, index: usize, generation: u32) {
        let session = &self.sessions[index];
        if session.is_live() && session.generation() == generation {
            self.session_close_soon(index);
        }
    }

    /// A frame on subscriber connection `b`: a message for its session's
    /// client, or a confirmation for the slot of the request it answers.
    fn subscriber_input(&mut self, b: usize, frame: &[u8]) {
        let Some((index, generation)) = self.backends[b].owner else {
            // The proxy's own subscription, to a sentinel.
            return self.sentinel_message(b, frame);
        };
        let index = index as usize;
        if !self.sessions[index].is_live() || self.sessions[index].generation() != generation {
            return;
        }
        if self.pubsub_frame(index, frame) {
            return;
        }
        let Some(request) = self.backends[b].inflight.pop_front() else {
            // A confirmation no request of ours asked for: dropped.
            return;
        };
        self.fill_slot(request.at, frame);
    }

    /// A push on a tracking connection: an invalidation drops keys (a
    /// flush, every entry of the server); other pushes are dropped.
    fn tracking_push(&mut self, b: usize, push: &[u8]) {
        let (pool, server) = (self.backends[b].pool, self.backends[b].server);
        let p = &mut self.pools[pool];
        let Some(hot) = p.hot.as_mut() else {
            return;
        };
        let counters = &mut p.counters;
        let keys = super::hot::invalidation(push, |key| hot.invalidated(key, counters));
        if keys == Some(false) {
            hot.lost(server, &mut p.counters);
        }
    }

    /// The hot-key cache's connection to `server` of `pool`, opened when
    /// needed.
    pub(super) fn tracking_backend(&mut self, pool: usize, server: usize, now: Micros) -> usize {
        let b = match self.pools[pool].conns[server].tracking {
            Some(b) => b as usize,
            None => {
                let b = self.new_backend(pool, server, true);
                self.backends[b as usize].make_tracking();
                self.pools[pool].conns[server].tracking = Some(b);
                b as usize
            }
        };
        self.pools[pool].health[server].requests += 1;
        if matches!(self.backends[b].state, State::Idle | State::Backoff) {
            self.backend_connect(b, now);
        }
        b
    }

    /// Sends slot piece `at` on backend `b` (already chosen).
    pub(super) fn send_on(
        &mut self,
        b: usize,
        at: SlotRef,
        expect: Expect,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let (pool, server) = (self.backends[b].pool, self.backends[b].server);
        let backend = &mut self.backends[b];
        let before = backend.output.tail().len();
        write(backend.output.tail());
        let written = backend.output.tail().len() - before;
        self.pools[pool].health[server].request_bytes += written as u64;
        self.queue_on(b, at, expect, now);
    }

    /// Gives up a backend connection whose server left the configuration:
    /// at once if it holds no request, else once it has answered them.
    pub(super) fn backend_retire(&mut self, b: usize) {
        self.backends[b].retiring = true;
        if self.backends[b].inflight.is_empty() {
            self.backend_free(b);
        }
    }

    /// Closes a retiring connection and frees its slot.
    fn backend_free(&mut self, b: usize) {
        let backend = &mut self.backends[b];
        backend.owner = None;
        if let Some(handle) = backend.handle.take() {
            self.actions.push_back(Action::Close(handle));
        }
        backend.state = State::Idle;
        backend.output.clear();
        backend.send_queued = false;
        self.free_backends.push(b as u32);
    }

    /// The connection failed: it is reset, and every request it holds gets
    /// an error reply; or, for a first connection attempt, it is tried
    /// again at once and its requests wait for that attempt.
    pub(super) fn backend_failed(&mut self, b: usize, now: Micros, why: &str) {
        let backend = &mut self.backends[b];
        if matches!(backend.state, State::Idle | State::Backoff) {
            return;
        }
        if let Some(handle) = backend.handle.take() {
            self.actions.push_back(Action::Abort(handle));
        }
        self.stats.backend_failures += 1;
        let first_attempt = backend.state == State::Connecting
            && backend.failures == 0
            && !backend.retrying
            && !backend.retiring;
        if first_attempt {
            // Nothing was sent: the handshake and the queued requests stay
            // in the output for the new connection, and the failure is not
            // counted against the server.
            backend.retrying = true;
            self.stats.connect_retries += 1;
            self.backend_dial(b, now);
            return;
        }
        // Requests queued while connecting were never sent.
        let never_sent = backend.state == State::Connecting;
        backend.retrying = false;
        backend.failures += 1;
        let spec = &self.pools[backend.pool].spec;
        let shift = (backend.failures - 1).min(20);
        backend.since = now + (RETRY_MIN << shift).min(spec.retry_max.max(RETRY_MIN));
        backend.state = State::Backoff;
        backend.output.clear();
        backend.send_queued = false;
        backend.handshake = 0;
        let (pool, server) = (backend.pool, backend.server);
        if let Some(cluster) = self.pools[pool].cluster.as_mut() {
            // A node failed: the cluster may be failing over.
            cluster.make_stale(now);
        }
        if let Some(sentinel) = self.pools[pool].sentinel.as_mut() {
            // A primary or replica failed: Sentinel may be failing it over.
            sentinel.make_stale();
        }
        let backend = &mut self.backends[b];
        if backend.subscriber {
            // Its subscriptions are gone with it: the client is closed, to
            // subscribe again on its next connection.
            if let Some((index, generation)) = backend.owner {
                self.close_subscriber_session(index as usize, generation);
            }
        }
        let backend = &mut self.backends[b];
        if backend.tracking {
            // Its invalidations may have been lost with it.
            let p = &mut self.pools[pool];
            if let Some(hot) = p.hot.as_mut() {
                hot.lost(server, &mut p.counters);
            }
        }
        let backend = &mut self.backends[b];
        let mut inflight = std::mem::take(&mut backend.inflight);
        let park = never_sent && self.pools[pool].cluster.is_some() && !self.is_dedicated(b);
        for request in inflight.drain(..) {
            // A cluster pool's request that never left waits for the
            // cluster to fail over (see `cluster`), rather than fail.
            if park && self.cluster_park(pool, server, &request) {
                continue;
            }
            // A read a replica held goes to another server of its shard.
            if self.replica_retry(pool, server, &request, now) {
                continue;
            }
            self.stats.errors += 1;
            self.fail_piece(b, why, request.at, request.expect.suppress);
        }
        self.backends[b].inflight = inflight;
        if self.backends[b].retiring {
            self.backends[b].state = State::Idle;
            // Freed: no session may close it again.
            self.backends[b].owner = None;
            self.free_backends.push(b as u32);
            return;
        }
        self.arm(b);
        self.server_failed(pool, server, now);
    }

    /// Counts a timeout against backend `b`'s server (not for a
    /// connection that outlived its server's place in the pool).
    fn server_timed_out(&mut self, b: usize) {
        let backend = &self.backends[b];
        if !backend.retiring {
            self.pools[backend.pool].health[backend.server].timeouts += 1;
        }
    }

    /// Counts the server's FIN on backend `b` (a failure follows).
    pub(super) fn backend_closed_by_server(&mut self, b: usize) {
        let backend = &self.backends[b];
        if !backend.retiring && backend.state == State::Ready {
            self.pools[backend.pool].health[backend.server].eofs += 1;
        }
    }

    pub(super) fn backend_timeout(&mut self, b: usize, now: Micros) {
        let backend = &self.backends[b];
        let spec = &self.pools[backend.pool].spec;
        let due = backend.deadline(spec).is_some_and(|at| at <= now);
        if !due {
            return;
        }
        match backend.state {
            State::Connecting => {
                self.stats.timeouts += 1;
                self.server_timed_out(b);
                self.backend_failed(b, now, "did not accept a connection in time");
            }
            State::Ready => {
                self.stats.timeouts += 1;
                self.server_timed_out(b);
                self.backend_failed(b, now, "timed out");
            }
            State::Backoff => {
                let preconnect = spec.preconnect && !backend.resp3;
                self.backends[b].state = State::Idle;
                if preconnect {
                    self.backend_connect(b, now);
                }
            }
            State::Idle => {}
        }
    }
}
