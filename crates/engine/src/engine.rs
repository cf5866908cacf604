//! One core's proxy: its client sessions and its backend connections.
//!
//! ```text
//!  client bytes ─▶ session: parse ─▶ local reply ─────────────┐
//!                           │                                  ▼
//!                           └▶ route ─▶ backend FIFO ─▶ ... ─▶ slot ─▶ ready prefix ─▶ client bytes
//!                                        (server replies, in order per connection)
//! ```
//!
//! **Pipeline.** Each session keeps a FIFO of request slots; slot `seq` is
//! at index `seq - head` of the queue. A request sent to servers leaves a
//! slot with the number of pieces it waits for; each backend connection
//! keeps its own FIFO of what it was sent (client, session generation,
//! slot, piece), since a server answers in order. Replies fill slots out of
//! order across servers; the session writes out only the ready prefix, so
//! the client sees replies in request order, batched into one output buffer
//! per wake-up.
//!
//! **Buffers** (slot reply buffers, FIFOs, scratch lists) are recycled, so
//! once warmed up the engine allocates nothing per request.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddrV4;
use std::ops::Range;

use ferrox_proto::{memcache, resp};

mod backend;
mod cluster;
mod compression;
pub mod handover;
mod hot;
pub mod info;
mod output;
mod pipeline;
mod pubsub;
mod ratelimit;
pub mod reconfigure;
mod replica;
mod sentinel;
mod session;
#[cfg(test)]
mod tests;
mod validate;

use backend::Backend;
pub use output::Output;
use pipeline::Slot;
use session::Session;

/// Microseconds on the runtime's monotonic clock.
pub type Micros = u64;

/// The runtime's name for a connection; opaque to the engine.
pub type Handle = u64;

/// The engine's name for a connection: a session or a backend connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag(u32);

const BACKEND_BIT: u32 = 1 << 31;

impl Tag {
    fn session(index: u32) -> Tag {
        Tag(index)
    }

    fn backend(index: u32) -> Tag {
        Tag(index | BACKEND_BIT)
    }

    /// The tag as a plain integer, for the runtime to store.
    pub fn raw(self) -> u32 {
        self.0
    }

    pub fn from_raw(raw: u32) -> Tag {
        Tag(raw)
    }

    fn index(self) -> usize {
        (self.0 & !BACKEND_BIT) as usize
    }

    fn is_backend(self) -> bool {
        self.0 & BACKEND_BIT != 0
    }
}

/// What the engine asks of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a connection to `addr` for backend connection `tag`; tell the
    /// engine its handle with [`Engine::bind`], then
    /// [`Engine::handle_connected`] or [`Engine::handle_gone`].
    Connect { tag: Tag, addr: SocketAddrV4 },
    /// The connection has output waiting in [`Engine::output`].
    Send(Handle),
    /// Send what is queued, then close gracefully. The engine has
    /// forgotten the connection.
    Close(Handle),
    /// Reset the connection now (a backend that stopped answering). The
    /// engine has forgotten the connection.
    Abort(Handle),
}

/// The wire protocol of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Redis,
    Memcache,
}

/// Where a key goes: the pool's route table.
pub trait Placement: std::fmt::Debug + Send {
    /// The index of the server for `key`, or `None` when no server is
    /// live. `random` is fresh randomness for random distribution.
    fn server_for(&self, key: &[u8], random: u32) -> Option<usize>;

    /// Places keys on the servers whose `live` entry is true only (after
    /// an ejection or a return).
    fn set_live(&mut self, live: &[bool]);
}

/// twemproxy's `auto_eject_hosts`: a server that fails `failure_limit`
/// times in a row leaves the pool (its keys rehash onto the others) and is
/// tried again after `retry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    pub failure_limit: u32,
    pub retry: Micros,
}

/// A backend server as the engine needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub addr: SocketAddrV4,
    /// How errors name it.
    pub name: String,
    pub role: Role,
}

impl ServerSpec {
    /// A shard's server (its primary).
    pub fn shard(addr: SocketAddrV4, name: impl Into<String>) -> ServerSpec {
        ServerSpec {
            addr,
            name: name.into(),
            role: Role::Shard,
        }
    }
}

/// What a pool's server is there for. A pool lists its shards first (in
/// configuration order: placement's indices), then the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes the keys placement gives it (a primary).
    Shard,
    /// A replica of shard `.0`: takes reads by the pool's read policy.
    Replica(usize),
    /// A Redis Sentinel that names the shards' primaries and replicas.
    Sentinel,
}

/// One pool of servers behind one listener.
#[derive(Debug)]
pub struct PoolSpec {
    pub name: String,
    pub protocol: Protocol,
    pub servers: Vec<ServerSpec>,
    pub placement: Box<dyn Placement>,
    /// A request not answered within this is failed, and so is its
    /// backend connection (its replies can no longer be matched).
    pub timeout: Option<Micros>,
    pub connect_timeout: Micros,
    /// Clients must `AUTH` with this.
    pub auth: Option<Vec<u8>>,
    /// What backends are sent as `AUTH` on connect (the pool's
    /// `server_auth` and `server_user`); `None` sends them `auth`.
    pub server_login: Option<Credentials>,
    /// Backends `SELECT` this database on connect.
    pub db: u32,
    /// Connections per server (and per RESP version in use).
    pub server_connections: usize,
    /// Most sessions at once; 0 is no limit.
    pub client_connections: usize,
    /// Longest wait before reconnecting to a failed server (the wait
    /// doubles from [`RETRY_MIN`] up to this).
    pub retry_max: Micros,
    /// Upper-case names of commands refused by configuration.
    pub blocked: Vec<Vec<u8>>,
    pub limits: resp::Limits,
    pub memcache_limits: memcache::Limits,
    /// Requests in flight per session; further input waits.
    pub max_pipeline: usize,
    /// Longest Redis request a session may send (it is held whole).
    pub max_request: usize,
    /// Reply bytes a session may hold unsent (written out, or finished
    /// behind an unfinished one) before its input waits: what one client
    /// that does not read can cost (Redis's client-output-buffer-limit,
    /// as back-pressure rather than a disconnect). Replies to requests
    /// already read still complete.
    pub max_output: usize,
    /// Connect to every server at start rather than on first use.
    pub preconnect: bool,
    /// Eject failing servers; `None` keeps them (a request for a failed
    /// server reconnects, and fails if that attempt fails).
    pub ejection: Option<Ejection>,
    /// Users besides the default one (`auth`), with their permissions.
    pub users: Vec<UserSpec>,
    /// Rules every request must pass before it is forwarded.
    pub validate: ferrox_config::Validate,
    /// Sliding-window rate limits.
    pub rate_limits: Vec<ferrox_config::RateLimit>,
    /// The servers are seed nodes of a Redis Cluster, whose slot map
    /// places the keys (see the `cluster` module); `placement` then only
    /// serves until the map is known.
    pub cluster: bool,
    /// Where reads go when a shard has replicas.
    pub read_policy: ferrox_config::ReadPolicy,
    /// Redis Sentinels to ask for the shards' primaries and replicas
    /// (see the `sentinel` module); the shards' addresses are then
    /// unspecified until Sentinel names them.
    pub sentinels: Vec<SocketAddrV4>,
    /// Each shard's Sentinel master name, when there are sentinels.
    pub masters: Vec<String>,
    /// What connections to the sentinels log in with, if they must.
    pub sentinel_auth: Option<Credentials>,
    /// Transparent value compression (see the `compression` module).
    pub compression: Option<ferrox_config::Compression>,
    /// The per-core cache of hot keys' values.
    pub hot_key_cache: Option<ferrox_config::HotKeyCache>,
}

/// An `AUTH` to send: `AUTH password`, or `AUTH user password`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: Option<Vec<u8>>,
    pub password: Vec<u8>,
}

/// A user of a redis pool: `AUTH name password` with any of its
/// passwords gives a session its permissions.
#[derive(Debug, Clone)]
pub struct UserSpec {
    pub name: String,
    pub passwords: Vec<Vec<u8>>,
    pub acl: Box<crate::acl::Acl>,
}

impl PoolSpec {
    /// Whether a new session must authenticate first: the pool has a
    /// password, or users (without a password, the default user is off).
    pub fn needs_auth(&self) -> bool {
        self.auth.is_some() || !self.users.is_empty()
    }
}

/// The default of [`PoolSpec::max_output`].
pub const MAX_OUTPUT: usize = 1 << 20;

/// First wait before reconnecting to a failed server.
pub const RETRY_MIN: Micros = 100_000;

/// Latency histogram buckets: bucket `i` counts requests answered in less
/// than `2^i` microseconds (the last: everything longer).
pub const LATENCY_BUCKETS: usize = 24;

/// The latency bucket of a request answered in `micros`.
pub fn latency_bucket(micros: Micros) -> usize {
    ((u64::BITS - micros.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

/// Counters of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCounters {
    pub requests: u64,
    pub errors: u64,
    /// Request bytes read from clients.
    pub bytes_in: u64,
    /// Reply bytes written for clients.
    pub bytes_out: u64,
    /// From request to reply written out, by [`latency_bucket`].
    pub latency: [u64; LATENCY_BUCKETS],
    /// The same times added up, in microseconds (a histogram's sum).
    pub latency_sum_us: u64,
    /// Client connections that ended cleanly: the client closed, or
    /// asked to (`QUIT`).
    pub client_eof: u64,
    /// Client connections that ended otherwise: reset by the client, or
    /// closed by the proxy after a protocol error.
    pub client_err: u64,
    /// Requests (or pieces) answered with an error because no server
    /// could take them: none available, or theirs failed.
    pub forward_errors: u64,
    /// Pieces that split multi-key requests were cut into.
    pub fragments: u64,
    /// Servers ejected after failing `server_failure_limit` times.
    pub server_ejects: u64,
    /// Requests refused by a user's permissions (`NOPERM`).
    pub acl_refused: u64,
    /// Requests refused by the pool's validation rules.
    pub validation_refused: u64,
    /// Requests refused by a rate limit.
    pub rate_limited: u64,
    /// Requests refused because the core was overloaded.
    pub overload_refused: u64,
    /// Reads a failed replica held, sent again to another server of
    /// their shard.
    pub replica_retries: u64,
    /// Values stored compressed, and their bytes before and after.
    pub compressed_values: u64,
    pub compressed_bytes_in: u64,
    pub compressed_bytes_out: u64,
    /// Values read back and decompressed.
    pub decompressed_values: u64,
    /// Compressed values read back that failed their checks.
    pub corrupt_values: u64,
    /// Time spent compressing and decompressing, in nanoseconds.
    pub compress_ns: u64,
    /// The hot-key cache: reads it answered, reads of hot keys it could
    /// not, values it took and dropped (for room, for a write through the
    /// proxy, for a server's invalidation, for a lost invalidation
    /// channel, for age).
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_fills: u64,
    pub cache_evictions: u64,
    pub cache_invalidations_write: u64,
    pub cache_invalidations_server: u64,
    pub cache_invalidations_lost: u64,
    pub cache_expirations: u64,
    /// Gauges: bytes the cache holds, keys hot now.
    pub cache_memory: u64,
    pub hot_keys: u64,
}

impl PoolCounters {
    /// Adds what compression counted elsewhere.
    fn add_compression(&mut self, other: &PoolCounters) {
        self.compressed_values += other.compressed_values;
        self.compressed_bytes_in += other.compressed_bytes_in;
        self.compressed_bytes_out += other.compressed_bytes_out;
        self.decompressed_values += other.decompressed_values;
        self.corrupt_values += other.corrupt_values;
        self.compress_ns += other.compress_ns;
    }
}

/// One server as statistics see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerView {
    pub addr: SocketAddrV4,
    /// Requests (and pieces of split requests) sent.
    pub requests: u64,
    /// Their bytes, as written to the server.
    pub request_bytes: u64,
    /// Replies read, and their bytes (handshake replies not counted).
    pub responses: u64,
    pub response_bytes: u64,
    /// Connection failures.
    pub failures: u64,
    /// Requests or connection attempts that timed out.
    pub timeouts: u64,
    /// Times the server closed a connection (FIN).
    pub eofs: u64,
    /// Connections open to it now.
    pub connections: u64,
    /// Requests written or queued to it and not yet answered.
    pub in_flight: u64,
    pub ejected: bool,
    /// When it was last taken out of the pool (ejected or held out), in
    /// the engine's clock; `None` while it is in.
    pub ejected_since: Option<Micros>,
}

/// One pool as statistics see it.
#[derive(Debug)]
pub struct PoolView<'a> {
    pub name: &'a str,
    /// Left out of the configuration; finishing its sessions.
    pub retired: bool,
    pub sessions: usize,
    pub counters: &'a PoolCounters,
    pool: &'a Pool,
    backends: &'a [Backend],
}

impl PoolView<'_> {
    /// Its users' names, in their order.
    pub fn user_names(&self) -> impl Iterator<Item = &str> + '_ {
        self.pool.spec.users.iter().map(|u| u.name.as_str())
    }

    /// The name of its user `index`.
    pub fn user_name(&self, index: usize) -> Option<&str> {
        self.pool.spec.users.get(index).map(|u| u.name.as_str())
    }

    /// The keys this core counts as hot in the pool, hottest first (at
    /// most a few dozen).
    pub fn hot_keys(&self) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        let mut keys: Vec<(&[u8], u32)> = Vec::new();
        if let Some(hot) = &self.pool.hot {
            hot.detector.hot_sorted(&mut keys);
        }
        keys.into_iter()
    }

    pub fn servers(&self) -> impl Iterator<Item = ServerView> + '_ {
        let pool = self.pool;
        pool.spec
            .servers
            .iter()
            .zip(&pool.health)
            .zip(&pool.conns)
            .map(|((server, health), conns)| {
                let backends = || {
                    conns
                        .plain
                        .iter()
                        .chain(&conns.resp3)
                        .chain(&conns.tracking)
                        .map(|&b| &self.backends[b as usize])
                };
                ServerView {
                    addr: server.addr,
                    requests: health.requests,
                    request_bytes: health.request_bytes,
                    responses: health.responses,
                    response_bytes: health.response_bytes,
                    failures: health.failures_total,
                    timeouts: health.timeouts,
                    eofs: health.eofs,
                    connections: backends().filter(|b| b.is_connected()).count() as u64,
                    in_flight: backends().map(|b| b.in_flight() as u64).sum(),
                    ejected: !health.is_live(),
                    ejected_since: (!health.is_live()).then_some(health.out_since),
                }
            })
    }
}

/// Counters of one engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub sessions_opened: u64,
    pub sessions_refused: u64,
    pub requests: u64,
    /// Requests answered with an error the proxy made (routing, limits,
    /// unavailable or timed-out servers, protocol errors).
    pub errors: u64,
    pub split_requests: u64,
    pub backend_connects: u64,
    pub backend_failures: u64,
    /// Failed first connection attempts made again at once (their failure
    /// is in `backend_failures` too): a lost SYN, or a connect that raced
    /// neighbour discovery.
    pub connect_retries: u64,
    pub timeouts: u64,
    pub ejections: u64,
    pub reconfigurations: u64,
    /// Requests per command, by [`crate::command::CommandId`]
    /// ([`crate::command::COMMAND_IDS`] of them).
    pub commands: Vec<u64>,
}

/// One core's proxy.
#[derive(Debug)]
pub struct Engine {
    pools: Vec<Pool>,
    sessions: Vec<Session>,
    free_sessions: Vec<u32>,
    backends: Vec<Backend>,
    /// Backend slots of removed servers, for reuse.
    free_backends: Vec<u32>,
    actions: VecDeque<Action>,
    /// Backend deadlines (connect, request, backoff), earliest first; an
    /// entry is live while it equals its backend's `armed`, so a lookup
    /// costs O(log n) however many backends there are.
    timers: BinaryHeap<Reverse<(Micros, u32)>>,
    /// The earliest return of an ejected server, if any.
    next_return: Option<Micros>,
    /// Slots returned by sessions, with their buffers, for reuse.
    spare_slots: Vec<Slot>,
    scratch: Scratch,
    rng: u64,
    stats: EngineStats,
    /// The time of the call being handled.
    now: Micros,
    /// A handover is coming: no new requests are taken.
    draining: bool,
    /// The whole dataplane's figures for `INFO`, once the runtime gave them.
    totals: Option<info::Totals>,
    /// Other cores run engines too: the keys written through this one
    /// in pools with a hot-key cache, for the runtime to tell them
    /// ([`Engine::take_peer_invalidations`]).
    peers: bool,
    peer_invalidations: Vec<u8>,
    /// Overload watermarks, and where this core stands.
    overload: ferrox_config::Overload,
    /// Requests read and not yet answered (open slots), over every session.
    open_slots: usize,
    /// Reply bytes held for clients, as last measured, and when.
    client_buffer: usize,
    buffer_measured: Micros,
    /// When idle sessions' buffers are next given back (see
    /// [`Engine::trim_idle`]), while a pass is due; the sessions it has
    /// still to visit, and where it goes on.
    trim_at: Option<Micros>,
    trim_left: usize,
    trim_cursor: usize,
}

/// How often the bytes held for clients are measured when a watermark
/// asks for it (a walk over the sessions).
const BUFFER_MEASURE_EVERY: Micros = 10_000;

/// How often, after activity, idle sessions give back their buffers; the
/// most sessions one pass visits; the spare slots kept for reuse.
const TRIM_EVERY: Micros = 100_000;
const TRIM_BUDGET: usize = 4096;
const SPARE_SLOTS_KEPT: usize = 1024;

#[derive(Debug)]
struct Pool {
    spec: PoolSpec,
    /// Each server's backend connections (indices into `Engine::backends`).
    conns: Vec<ServerConns>,
    sessions: usize,
    health: Vec<Health>,
    /// Which servers keys are placed on (all but the ejected).
    live: Vec<bool>,
    counters: PoolCounters,
    /// Left out of the configuration: takes no new sessions; its sessions
    /// finish what they asked and are closed.
    retired: bool,
    /// A Redis Cluster pool's slot map.
    cluster: Option<Box<cluster::Cluster>>,
    /// A pool whose shards Sentinel names: what it said.
    sentinel: Option<Box<sentinel::Sentinel>>,
    /// Its rate limits' windows.
    limiter: ratelimit::Limiter,
    compression: Option<Box<compression::Compression>>,
    hot: Option<Box<hot::Hot>>,
}

/// One server's backend connections.
#[derive(Debug, Default)]
struct ServerConns {
    /// RESP2 (or memcached) connections.
    plain: Vec<u32>,
    /// RESP3 connections (after `HELLO 3`), for sessions that asked for it.
    resp3: Vec<u32>,
    /// The hot-key cache's connection, with `CLIENT TRACKING on` (see the
    /// `hot` module); opened when first needed.
    tracking: Option<u32>,
}

/// A server's failures, for ejection, and its counters.
#[derive(Debug, Clone, Copy, Default)]
struct Health {
    /// Connection failures since the last good reply.
    failures: u32,
    /// Ejected until then.
    ejected_until: Option<Micros>,
    /// Held out of the pool by the control process (its health checks, or
    /// an operator), until it says otherwise.
    held_out: bool,
    /// When it last left the pool (meaningful while it is out).
    out_since: Micros,
    /// A replica Sentinel no longer reports up.
    absent: bool,
    requests: u64,
    request_bytes: u64,
    responses: u64,
    response_bytes: u64,
    failures_total: u64,
    timeouts: u64,
    eofs: u64,
}

/// Lists reused from request to request.
#[derive(Debug, Default)]
struct Scratch {
    args: Vec<Range<usize>>,
    /// (server, key index) of a split request's keys.
    groups: Vec<(u32, u32)>,
    /// Positions in each piece's reply while merging.
    cursors: Vec<usize>,
    /// An error reply being made.
    error: Vec<u8>,
    memcache: memcache::Request,
    /// Who the request being handled is, when a rate limit counts its
    /// reply's bytes: the slot it opens is tagged with it.
    rate_who: Option<ratelimit::Who>,
    /// The request being handled only reads, in a pool whose read policy
    /// may send it to a replica.
    read: bool,
    /// A reply being decompressed; a hot key's cached reply.
    decoded: Vec<u8>,
    /// Which keys of an MGET the hot-key cache had.
    hits: Vec<bool>,
    /// The request being handled is not a plain read, in a pool with a
    /// hot-key cache: the slots it opens are marked.
    may_write: bool,
}

impl Engine {
    /// An engine for `pools`; `seed` feeds random distribution.
    pub fn new(pools: Vec<PoolSpec>, seed: u64) -> Engine {
        let mut engine = Engine {
            pools: Vec::new(),
            sessions: Vec::new(),
            free_sessions: Vec::new(),
            backends: Vec::new(),
            free_backends: Vec::new(),
            actions: VecDeque::new(),
            timers: BinaryHeap::new(),
            next_return: None,
            spare_slots: Vec::new(),
            scratch: Scratch::default(),
            rng: seed | 1,
            stats: EngineStats {
                commands: vec![0; crate::command::COMMAND_IDS],
                ..EngineStats::default()
            },
            now: 0,
            draining: false,
            totals: None,
            peers: false,
            peer_invalidations: Vec::new(),
            overload: Default::default(),
            open_slots: 0,
            client_buffer: 0,
            buffer_measured: 0,
            trim_at: None,
            trim_left: 0,
            trim_cursor: 0,
        };
        for spec in pools {
            engine.add_pool(spec);
        }
        engine
    }

    /// Sets the overload watermarks (`[overload]`), at start and on each
    /// reload.
    /// Whether other cores run engines of the same pools: then the keys
    /// written through this one are kept for them (see
    /// [`Engine::take_peer_invalidations`]).
    pub fn set_peers(&mut self, peers: bool) {
        self.peers = peers;
    }

    /// Hands `each` every message for the other cores since the last call:
    /// a key a write through this core changed, in a pool with a hot-key
    /// cache, as `pool (u16 LE) | key`. The runtime passes each to
    /// [`Engine::handle_peer_invalidation`] on every other core, before that
    /// core reads its next frames, so no core serves a value older than a
    /// write through the proxy that was answered.
    pub fn take_peer_invalidations(&mut self, mut each: impl FnMut(&[u8])) {
        let mut at = 0;
        let buf = &self.peer_invalidations;
        while at + 4 <= buf.len() {
            let len = u16::from_le_bytes([buf[at], buf[at + 1]]) as usize;
            each(&buf[at + 2..at + 2 + len]);
            at += 2 + len;
        }
        self.peer_invalidations.clear();
        if self.peer_invalidations.capacity() > 64 << 10 {
            self.peer_invalidations.shrink_to(64 << 10);
        }
    }

    /// Another core's message (see [`Engine::take_peer_invalidations`]).
    pub fn handle_peer_invalidation(&mut self, message: &[u8]) {
        let Some((pool, key)) = message.split_first_chunk::<2>() else {
            return;
        };
        let p = u16::from_le_bytes(*pool) as usize;
        if let Some(pool) = self.pools.get_mut(p) {
            if let Some(hot) = pool.hot.as_mut() {
                hot.written(key, &mut pool.counters);
            }
        }
    }

    /// Keeps the message telling other cores that `key` of pool `pool`
    /// changed.
    fn tell_peers(&mut self, pool: usize, key: &[u8]) {
        // Keys longer than a message can say are not cached by peers
        // either way: their entries expire or are evicted.
        if !self.peers || key.len() > u16::MAX as usize - 2 {
            return;
        }
        let len = (2 + key.len()) as u16;
        self.peer_invalidations
            .extend_from_slice(&len.to_le_bytes());
        self.peer_invalidations
            .extend_from_slice(&(pool as u16).to_le_bytes());
        self.peer_invalidations.extend_from_slice(key);
    }

    pub fn set_overload(&mut self, overload: ferrox_config::Overload) {
        self.overload = overload;
    }

    /// Requests read and not yet answered, and reply bytes held for
    /// clients (as last measured), over every session of this core.
    pub fn load(&self) -> (usize, usize) {
        (self.open_slots, self.client_buffer)
    }

    /// Bytes of buffer room the sessions hold (their output and slot
    /// queues, and the spare slots), used or not.
    pub fn session_buffers(&self) -> usize {
        let slot = std::mem::size_of::<pipeline::Slot>();
        let sessions: usize = self
            .sessions
            .iter()
            .filter(|s| s.is_live())
            .map(|s| s.capacity(slot))
            .sum();
        let spares: usize = self.spare_slots.iter().map(|s| slot + s.capacity()).sum();
        sessions + spares
    }

    /// Whether a new request must be refused: past the in-flight or the
    /// client-buffer watermark. Measures the buffers when due.
    fn overloaded(&mut self) -> bool {
        if self.overload.is_off() {
            return false;
        }
        if self
            .overload
            .max_in_flight
            .is_some_and(|max| self.open_slots >= max)
        {
            return true;
        }
        let Some(max) = self.overload.max_client_buffer_memory else {
            return false;
        };
        if self.now >= self.buffer_measured + BUFFER_MEASURE_EVERY
            || self.now < self.buffer_measured
        {
            self.buffer_measured = self.now;
            self.client_buffer = self
                .sessions
                .iter()
                .filter(|s| s.is_live())
                .map(|s| s.buffered())
                .sum();
        }
        self.client_buffer >= max
    }

    /// Appends a pool with fresh backend connections.
    fn add_pool(&mut self, spec: PoolSpec) -> usize {
        let p = self.pools.len();
        let servers = spec.servers.len();
        self.pools.push(Pool {
            spec,
            conns: Vec::new(),
            sessions: 0,
            health: vec![Health::default(); servers],
            live: vec![true; servers],
            counters: PoolCounters::default(),
            retired: false,
            cluster: None,
            sentinel: None,
            limiter: ratelimit::Limiter::default(),
            compression: None,
            hot: None,
        });
        self.pools[p].hot = self.pools[p]
            .spec
            .hot_key_cache
            .as_ref()
            .map(|h| Box::new(hot::Hot::new(h, self.pools[p].spec.protocol)));
        self.pools[p].compression = self.pools[p]
            .spec
            .compression
            .as_ref()
            .map(|c| Box::new(compression::Compression::new(c)));
        let users = self.pools[p].spec.users.len();
        self.pools[p].limiter =
            ratelimit::Limiter::new(&self.pools[p].spec.rate_limits, users, self.now);
        if self.pools[p].spec.cluster {
            self.pools[p].cluster = Some(Box::new(cluster::Cluster::new()));
        }
        let conns = (0..servers).map(|s| self.server_conns(p, s)).collect();
        self.pools[p].conns = conns;
        let sentinels = self.pools[p].spec.sentinels.clone();
        if !sentinels.is_empty() {
            self.sentinel_start(p, &sentinels);
        }
        p
    }

    /// Fresh connections (not yet connected) for server `server` of pool
    /// `pool`, as many as the pool asks for.
    fn server_conns(&mut self, pool: usize, server: usize) -> ServerConns {
        let spec = &self.pools[pool].spec;
        // A sentinel is asked a few questions a second, on one connection.
        let sentinel = spec.servers[server].role == Role::Sentinel;
        let count = if sentinel {
            1
        } else {
            spec.server_connections.max(1)
        };
        let resp3 = spec.protocol == Protocol::Redis && !sentinel;
        ServerConns {
            tracking: None,
            plain: (0..count)
                .map(|_| self.new_backend(pool, server, false))
                .collect(),
            resp3: (0..if resp3 { count } else { 0 })
                .map(|_| self.new_backend(pool, server, true))
                .collect(),
        }
    }

    fn new_backend(&mut self, pool: usize, server: usize, resp3: bool) -> u32 {
        let name = self.pools[pool].spec.servers[server].name.clone();
        let backend = Backend::new(pool, server, name, resp3);
        match self.free_backends.pop() {
            Some(b) => {
                self.backends[b as usize] = backend;
                b
            }
            None => {
                self.backends.push(backend);
                (self.backends.len() - 1) as u32
            }
        }
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The time of the latest call, in the engine's clock.
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Every pool, retired ones included, with its counters and servers.
    pub fn pools(&self) -> impl Iterator<Item = PoolView<'_>> {
        self.pools.iter().map(|pool| PoolView {
            name: &pool.spec.name,
            retired: pool.retired,
            sessions: pool.sessions,
            counters: &pool.counters,
            pool,
            backends: &self.backends,
        })
    }

    /// A client connected to pool `pool`. `None`: the pool is full, close
    /// the connection.
    pub fn accept(&mut self, pool: usize, handle: Handle) -> Option<Tag> {
        let limit = self.pools[pool].spec.client_connections;
        let open: usize = self.pools.iter().map(|p| p.sessions).sum();
        let full = (limit != 0 && self.pools[pool].sessions >= limit)
            || self.overload.max_connections.is_some_and(|max| open >= max);
        if full || self.pools[pool].retired {
            self.stats.sessions_refused += 1;
            return None;
        }
        self.pools[pool].sessions += 1;
        self.stats.sessions_opened += 1;
        let authed = !self.pools[pool].spec.needs_auth();
        let index = match self.free_sessions.pop() {
            Some(i) => {
                self.sessions[i as usize].open(pool, handle, authed);
                i
            }
            None => {
                let mut session = Session::default();
                session.open(pool, handle, authed);
                self.sessions.push(session);
                (self.sessions.len() - 1) as u32
            }
        };
        Some(Tag::session(index))
    }

    /// The backend connection `tag` asked for has `handle`.
    pub fn bind(&mut self, tag: Tag, handle: Handle) {
        debug_assert!(tag.is_backend());
        self.backends[tag.index()].bind(handle);
    }

    /// Bytes arrived on `tag`; returns how many were used (the rest is an
    /// incomplete message, or input held back while the pipeline is full).
    pub fn handle_input(&mut self, tag: Tag, input: &[u8], now: Micros) -> usize {
        self.now = now;
        if tag.is_backend() {
            self.backend_input(tag.index(), input, now)
        } else {
            self.session_input(tag.index(), input, now)
        }
    }

    /// Whether `tag` would use more input now (a session whose pipeline
    /// was full and has drained).
    pub fn wants_input(&self, tag: Tag) -> bool {
        tag.is_backend() || self.has_room(tag.index())
    }

    /// Output owed on `tag`, oldest first: what the peer has not
    /// acknowledged yet, sent or not (the runtime keeps its own count of
    /// what it handed its socket, and resends from here after a
    /// handover). The runtime tells what was acknowledged with
    /// [`Engine::output_acked`]. A `Send` is queued again only when more
    /// output is added after this call.
    pub fn output(&mut self, tag: Tag) -> &[u8] {
        if tag.is_backend() {
            self.backends[tag.index()].show_output()
        } else {
            self.sessions[tag.index()].show_output()
        }
    }

    /// The peer acknowledged the first `n` bytes of [`Engine::output`]:
    /// they are dropped. A session whose input waited for room may then
    /// take input again.
    pub fn output_acked(&mut self, tag: Tag, n: usize) {
        if tag.is_backend() {
            self.backends[tag.index()].output_acked(n);
        } else {
            self.sessions[tag.index()].output_acked(n);
        }
    }

    /// Whether actions wait for [`Engine::poll_action`].
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// The backend connection `tag` is established.
    pub fn handle_connected(&mut self, tag: Tag, now: Micros) {
        self.now = now;
        if tag.is_backend() {
            self.backend_connected(tag.index(), now);
        }
    }

    /// The peer closed its side (FIN). A session finishes its replies and
    /// is then closed; a backend connection has failed.
    pub fn handle_peer_closed(&mut self, tag: Tag, now: Micros) {
        self.now = now;
        if tag.is_backend() {
            self.backend_closed_by_server(tag.index());
            self.backend_failed(tag.index(), now, "closed the connection");
        } else {
            self.session_peer_closed(tag.index());
        }
    }

    /// The connection `handle` of `tag` is gone (closed, reset, refused, or
    /// it never connected); the runtime reports every connection's end
    /// this way, also those the engine closed.
    pub fn handle_gone(&mut self, tag: Tag, handle: Handle, now: Micros) {
        self.now = now;
        if tag.is_backend() {
            self.backend_gone(tag.index(), handle, now);
        } else if self.sessions[tag.index()].is_on(handle) {
            self.session_free(tag.index());
        }
    }

    /// The next thing the engine asks of the network.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Engine::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Micros> {
        // A stale entry on top only makes the call early: handle_timeout
        // then finds nothing due and files the real deadline.
        let backends = self.timers.peek().map(|Reverse((at, _))| *at);
        let clusters = self
            .pools
            .iter()
            .filter(|p| !p.retired)
            .filter_map(|p| Some(p.cluster.as_ref()?.deadline()))
            .min();
        let sentinels = self
            .pools
            .iter()
            .filter(|p| !p.retired)
            .filter_map(|p| Some(p.sentinel.as_ref()?.deadline()))
            .min();
        backends
            .into_iter()
            .chain(self.next_return)
            .chain(clusters)
            .chain(sentinels)
            .chain(self.trim_at)
            .min()
    }

    /// Fails requests and connection attempts that waited too long, ends
    /// reconnect backoffs, and puts ejected servers back.
    pub fn handle_timeout(&mut self, now: Micros) {
        self.now = now;
        while let Some(&Reverse((at, b))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let b = b as usize;
            if !self
                .backends
                .get_mut(b)
                .is_some_and(|backend| backend.disarm(at))
            {
                continue; // filed again since, or for a former occupant
            }
            self.backend_timeout(b, now);
            self.arm(b);
        }
        self.next_return = None;
        for pool in &mut self.pools {
            let mut changed = false;
            for (s, health) in pool.health.iter_mut().enumerate() {
                match health.ejected_until {
                    Some(at) if at <= now => {
                        health.ejected_until = None;
                        pool.live[s] = health.is_live();
                        changed = true;
                    }
                    Some(at) => {
                        self.next_return = Some(self.next_return.map_or(at, |n| n.min(at)));
                    }
                    None => {}
                }
            }
            if changed {
                pool.place_live();
            }
        }
        self.cluster_maintain(now);
        self.sentinel_maintain(now);
        if self.trim_at.is_some_and(|at| at <= now) {
            self.trim_idle(now);
        }
    }

    /// Gives back what idle sessions hold beyond a small reply buffer (a
    /// burst of large replies leaves each with its buffers grown), and the
    /// spare slots beyond a burst's worth: an idle connection costs little
    /// however busy it was. Runs every [`TRIM_EVERY`] after activity, at
    /// most [`TRIM_BUDGET`] sessions a pass, until every session has been
    /// visited since the last activity.
    fn trim_idle(&mut self, now: Micros) {
        let visit = self.trim_left.min(TRIM_BUDGET).min(self.sessions.len());
        for _ in 0..visit {
            if self.trim_cursor >= self.sessions.len() {
                self.trim_cursor = 0;
            }
            let session = &mut self.sessions[self.trim_cursor];
            if session.is_live() {
                session.trim();
            }
            self.trim_cursor += 1;
        }
        self.trim_left -= visit;
        for pool in &mut self.pools {
            if let Some(hot) = pool.hot.as_mut() {
                hot.tick(now);
                hot.publish(&mut pool.counters);
            }
        }
        if self.spare_slots.len() > SPARE_SLOTS_KEPT {
            self.spare_slots.truncate(SPARE_SLOTS_KEPT);
            self.spare_slots.shrink_to(SPARE_SLOTS_KEPT);
        }
        self.trim_at = (self.trim_left > 0).then_some(now + TRIM_EVERY);
    }

    /// Activity: a trim pass over every session is due.
    fn trim_later(&mut self) {
        self.trim_left = self.sessions.len();
        if self.trim_at.is_none() {
            self.trim_at = Some(self.now + TRIM_EVERY);
        }
    }

    /// Whether server `server` of pool `pool` takes keys now.
    pub fn is_live(&self, pool: usize, server: usize) -> bool {
        self.pools[pool].live[server]
    }

    /// Holds out of pool `pool` the servers whose bit is set in `held_out`
    /// (bit `i`: the pool's server `i`, in configuration order), and lets
    /// the others back, as the control process decides from its health
    /// checks or an operator's word. A held-out server takes no keys (they
    /// rehash onto the others, as an ejection does) but keeps its
    /// connections and answers what it holds. Servers past the 64th are
    /// never held out.
    pub fn hold_out(&mut self, pool: usize, held_out: u64) {
        let Some(p) = self.pools.get_mut(pool) else {
            return;
        };
        if p.cluster.is_some() {
            // The cluster fails over on its own; its map says who serves.
            return;
        }
        let mut changed = false;
        for (s, health) in p.health.iter_mut().enumerate() {
            let held = s < 64 && held_out & (1 << s) != 0;
            if health.held_out != held {
                if held && health.is_live() {
                    health.out_since = self.now;
                }
                health.held_out = held;
                p.live[s] = health.is_live();
                changed = true;
            }
        }
        if changed {
            p.place_live();
        }
    }

    /// Counts a failure of `server`; with ejection on, the server leaves
    /// the pool at the limit.
    fn server_failed(&mut self, pool: usize, server: usize, now: Micros) {
        let p = &mut self.pools[pool];
        let health = &mut p.health[server];
        health.failures += 1;
        health.failures_total += 1;
        // A replica that fails is left out of reads at once (its reads go
        // to the primary): there is no cost in trying it less.
        let replica = matches!(p.spec.servers[server].role, Role::Replica(_));
        let ejection = p.spec.ejection.or(replica.then_some(Ejection {
            failure_limit: 1,
            retry: p.spec.retry_max,
        }));
        let Some(mut ejection) = ejection else {
            return;
        };
        if replica {
            ejection.failure_limit = 1;
        }
        if health.failures >= ejection.failure_limit && health.ejected_until.is_none() {
            health.ejected_until = Some(now + ejection.retry);
            let at = now + ejection.retry;
            self.next_return = Some(self.next_return.map_or(at, |n| n.min(at)));
            health.failures = 0;
            if !health.held_out {
                health.out_since = now;
            }
            p.live[server] = false;
            p.place_live();
            p.counters.server_ejects += 1;
            self.stats.ejections += 1;
        }
    }

    fn random(&mut self) -> u32 {
        // xorshift64*: randomness for random distribution, without a clock
        // or an OS call.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }
}

impl Pool {
    /// How many servers take keys: the leading ones, shards (every node
    /// of a cluster pool).
    fn shards(&self) -> usize {
        self.spec
            .servers
            .iter()
            .take_while(|s| s.role == Role::Shard)
            .count()
    }

    /// Tells placement which shards are live.
    fn place_live(&mut self) {
        let shards = self.shards().min(self.live.len());
        self.spec.placement.set_live(&self.live[..shards]);
    }
}

impl Health {
    /// Takes keys: neither ejected for failures nor held out.
    fn is_live(&self) -> bool {
        self.ejected_until.is_none() && !self.held_out && !self.absent
    }
}
