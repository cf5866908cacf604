//! What a validated configuration says, whichever file it came from.
//!
//! Pure data: every value here has passed validation, so the dataplane and
//! the control process use it without checking again.

use std::net::SocketAddrV4;

pub use ferrox_route::{Distribution, HashFn};
use serde::Serialize;

/// The names of every value of `$t` (its `ALL`, in order), as a constant.
macro_rules! names_of {
    ($t:ty) => {{
        let mut names = [""; <$t>::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = <$t>::ALL[i].name();
            i += 1;
        }
        names
    }};
}

/// twemproxy's hash function names (`HASH_CODEC` in `nc_hashkit.h`), in
/// its order.
pub const HASHES: [&str; HashFn::ALL.len()] = names_of!(HashFn);

/// Distribution names: twemproxy's three (`DIST_CODEC`), then jump
/// consistent hashing, which ferrox adds.
pub const DISTRIBUTIONS: [&str; Distribution::ALL.len()] = names_of!(Distribution);

/// A whole configuration: pools in file order, and the limits every
/// connection is held to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub pools: Vec<Pool>,
    pub limits: Limits,
    /// Users of the redis pools (`[[users]]`), in file order.
    pub users: Vec<User>,
    /// Watermarks past which each dataplane core refuses work.
    pub overload: Overload,
}

/// Overload protection (`[overload]`), per dataplane core: past a
/// watermark, new requests are refused at once (`-ERR ferrox:
/// overloaded`, memcached `SERVER_ERROR overloaded`) and new connections
/// refused, rather than queued without bound. Every watermark is off by
/// default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overload {
    /// Requests read and not yet answered, over every client.
    pub max_in_flight: Option<usize>,
    /// Reply bytes held for clients (sent and unacknowledged, or waiting
    /// behind an earlier reply), over every client.
    pub max_client_buffer_memory: Option<usize>,
    /// Requests queued on one server connection.
    pub max_backend_queue: Option<usize>,
    /// Client connections open.
    pub max_connections: Option<usize>,
}

impl Overload {
    pub fn is_off(&self) -> bool {
        *self == Overload::default()
    }
}

/// One user of the redis pools, besides each pool's default user (its
/// `auth` password, with every permission). Users are equal whatever
/// lines they were read from.
#[derive(Debug, Clone, Eq, Serialize)]
pub struct User {
    pub name: String,
    /// Any of them authenticates the user (several: a rotation).
    pub passwords: Vec<String>,
    /// The pools it may use; empty: every redis pool (a memcached pool
    /// takes only the users that name it).
    pub pools: Vec<String>,
    /// Redis ACL rules, checked for their syntax (see [`ACL_CATEGORIES`]);
    /// the command names are the engine's to check.
    pub acl: String,
    /// Where the user is in its file, for the engine's diagnostics.
    #[serde(skip)]
    pub line: usize,
}

impl PartialEq for User {
    fn eq(&self, other: &User) -> bool {
        (&self.name, &self.passwords, &self.pools, &self.acl)
            == (&other.name, &other.passwords, &other.pools, &other.acl)
    }
}

/// The command categories an `acl` may name (`+@read`, `-@dangerous`),
/// Redis's, and `all`.
pub const ACL_CATEGORIES: [&str; 22] = [
    "all",
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// The protocol a pool speaks to clients and servers alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Redis,
    Memcache,
}

/// One listening address and the servers its keys are spread over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    pub name: String,
    /// The dataplane has IPv4 only; `0.0.0.0:P` means the dataplane's own
    /// address.
    pub listen: SocketAddrV4,
    pub protocol: Protocol,
    #[serde(serialize_with = "hash_name")]
    pub hash: HashFn,
    #[serde(serialize_with = "distribution_name")]
    pub distribution: Distribution,
    /// Only the bytes between these two delimiters are hashed, when the
    /// key has them.
    #[serde(serialize_with = "hash_tag_text")]
    pub hash_tag: Option<[u8; 2]>,
    /// How long a request waits for its reply; `None` waits forever.
    pub timeout_ms: Option<u64>,
    pub backlog: u32,
    /// Most client connections at once; 0 is unlimited.
    pub client_connections: u32,
    /// Connect to every server at start rather than on first use.
    pub preconnect: bool,
    /// TCP keep-alive on client connections (twemproxy's `tcpkeepalive`).
    pub tcp_keepalive: bool,
    /// Clients must `AUTH` with this; it is also sent to the servers,
    /// unless `server_auth` is set.
    pub auth: Option<String>,
    /// What the servers are sent as `AUTH` instead of `auth`: their own
    /// password, as their ACL user `server_user` if that is set.
    pub server_auth: Option<String>,
    pub server_user: Option<String>,
    /// The database servers `SELECT`.
    pub db: u32,
    /// Connections to each server, per dataplane core.
    pub server_connections: u32,
    /// Take a server off the ring after `server_failure_limit` failures in
    /// a row, and try it again after `server_retry_timeout_ms`.
    pub auto_eject_hosts: bool,
    pub server_retry_timeout_ms: u64,
    pub server_failure_limit: u32,
    /// Commands refused with an error instead of forwarded, upper-cased.
    pub blocked_commands: Vec<String>,
    pub servers: Vec<Server>,
    /// Rules every request must pass before it is forwarded.
    pub validate: Validate,
    /// Sliding-window rate limits, in file order.
    pub rate_limits: Vec<RateLimit>,
    /// Where read commands go when a shard has replicas.
    pub read_policy: ReadPolicy,
    /// Redis Sentinels that know the shards' primaries and replicas
    /// (each server is then named by its Sentinel master name).
    pub sentinels: Vec<SocketAddrV4>,
    /// The sentinels' password (`requirepass` in sentinel.conf), sent as
    /// `AUTH` on each connection to a sentinel; the pool's `auth` is the
    /// data servers'.
    pub sentinel_auth: Option<String>,
    /// With `sentinel_auth`, the ACL user it belongs to (`AUTH user
    /// password`); without, Sentinel's default user.
    pub sentinel_user: Option<String>,
    /// Transparent value compression (`[pools.NAME.compression]`).
    pub compression: Option<Compression>,
    /// The per-core cache of hot keys' values (`[pools.NAME.hot_key_cache]`).
    pub hot_key_cache: Option<HotKeyCache>,
}

/// A pool's transparent value compression: string values written through
/// the proxy are stored compressed behind a self-describing header when
/// that makes them smaller, and read back decompressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compression {
    pub algorithm: CompressionAlgorithm,
    /// Values shorter than this are stored as they are.
    pub min_size: usize,
    /// zstd's level (lz4 has one speed).
    pub level: i32,
    /// Only keys matching one of these globs; empty: every key.
    pub keys: Vec<String>,
    /// memcached pools: the bit of the item flags that marks a compressed
    /// value (0-31).
    pub flag_bit: u8,
}

impl Default for Compression {
    fn default() -> Compression {
        Compression {
            algorithm: CompressionAlgorithm::Lz4,
            min_size: 1024,
            level: 1,
            keys: Vec::new(),
            flag_bit: 29,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    #[default]
    Lz4,
    Zstd,
}

impl CompressionAlgorithm {
    pub const ALL: [(&'static str, CompressionAlgorithm); 2] = [
        ("lz4", CompressionAlgorithm::Lz4),
        ("zstd", CompressionAlgorithm::Zstd),
    ];

    pub fn name(self) -> &'static str {
        match self {
            CompressionAlgorithm::Lz4 => "lz4",
            CompressionAlgorithm::Zstd => "zstd",
        }
    }
}

/// zstd's levels, fastest to smallest.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=22;

/// A pool's hot-key cache: each core counts reads per key, and keeps the
/// values of the keys read more than `min_rate` times a second, to answer
/// their reads itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HotKeyCache {
    /// Reads per second (on one core) that make a key hot.
    pub min_rate: u32,
    /// Bytes of cached values per core.
    pub memory: usize,
    /// How old a cached value may get: memcached has no invalidation, so
    /// this bounds how stale a write that bypasses the proxy leaves it
    /// (default 1000 ms there); a Redis pool's entries are invalidated by
    /// the servers and have no age limit unless this is set.
    pub max_staleness_ms: Option<u64>,
}

impl Default for HotKeyCache {
    fn default() -> HotKeyCache {
        HotKeyCache {
            min_rate: 1000,
            memory: 64 << 20,
            max_staleness_ms: None,
        }
    }
}

/// Where a redis pool sends read commands (Redis's `@read` category,
/// blocking ones and transactions excepted) of a shard that has replicas.
/// Writes always go to the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadPolicy {
    /// Every request to the primary.
    #[default]
    Primary,
    /// A replica that is up, else the primary.
    PreferReplica,
    /// A replica that is up, else the read fails.
    Replica,
    /// The primary or any replica that is up.
    Any,
}

impl ReadPolicy {
    pub const ALL: [(&'static str, ReadPolicy); 4] = [
        ("primary", ReadPolicy::Primary),
        ("prefer_replica", ReadPolicy::PreferReplica),
        ("replica", ReadPolicy::Replica),
        ("any", ReadPolicy::Any),
    ];

    pub fn name(self) -> &'static str {
        ReadPolicy::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map(|(name, _)| *name)
            .expect("every policy is listed")
    }
}

/// One rate limit (`[[pools.NAME.rate_limits]]`): at most `requests`
/// requests and `bytes` bytes (request and reply) in any `per_ms` span,
/// counted separately for each client, user, key, command, or for the
/// whole pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub by: RateBy,
    /// Only these commands (upper case) count; empty: every command.
    pub commands: Vec<String>,
    pub requests: Option<u64>,
    pub bytes: Option<usize>,
    pub per_ms: u64,
}

/// What a rate limit counts separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateBy {
    Client,
    User,
    Key,
    Command,
    Pool,
}

impl RateBy {
    pub const ALL: [(&'static str, RateBy); 5] = [
        ("client", RateBy::Client),
        ("user", RateBy::User),
        ("key", RateBy::Key),
        ("command", RateBy::Command),
        ("pool", RateBy::Pool),
    ];

    pub fn name(self) -> &'static str {
        RateBy::ALL
            .iter()
            .find(|(_, by)| *by == self)
            .map(|(name, _)| *name)
            .expect("every kind is listed")
    }
}

impl RateLimit {
    /// How errors and statistics name it: `by client, SET: 1000 requests
    /// per 1000 ms`.
    pub fn describe(&self) -> String {
        let mut text = format!("by {}", self.by.name());
        if !self.commands.is_empty() {
            text += &format!(" {}", self.commands.join(" "));
        }
        let mut amounts = Vec::new();
        if let Some(n) = self.requests {
            amounts.push(format!("{n} requests"));
        }
        if let Some(n) = self.bytes {
            amounts.push(format!("{n} bytes"));
        }
        format!("{text}: {} per {} ms", amounts.join(" and "), self.per_ms)
    }
}

/// A pool's data validation (`[pools.NAME.validate]`): requests that
/// break a rule are refused with the rule's name; nothing reaches a
/// server. Every rule is off by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Validate {
    /// Key globs (Redis's glob syntax); every key must match one.
    pub key_patterns: Vec<String>,
    pub max_key_bytes: Option<usize>,
    /// The longest value a write may carry (each argument of a Redis
    /// write command other than its name and keys; a memcached data
    /// block).
    pub max_value_bytes: Option<usize>,
    /// The most keys one request may name.
    pub max_keys: Option<usize>,
    /// A SET (and SETNX, MSET, GETSET, which cannot have one) or a
    /// memcached store without an expiry is refused.
    pub require_ttl: bool,
    /// The longest expiry a request may set, in seconds.
    pub max_ttl_s: Option<u64>,
}

impl Validate {
    pub fn is_off(&self) -> bool {
        *self == Validate::default()
    }
}

/// One backend server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Server {
    pub addr: SocketAddrV4,
    /// Share of the keys, relative to the other servers; at least 1.
    pub weight: u32,
    /// What ketama hashes to place the server on the ring: the name given
    /// after the address, else the address exactly as twemproxy names it
    /// (`host:port`, or just `host` when the port is 11211, for
    /// libmemcached compatibility).
    pub name: String,
    /// Replicas of this shard (`replicaof` it), for reads by the pool's
    /// read policy; placement never sees them.
    pub replicas: Vec<SocketAddrV4>,
    /// The shard's Sentinel master name, in a pool with sentinels: its
    /// primary and replicas are asked of them, and `addr` is unspecified.
    pub master: Option<String>,
}

impl Server {
    /// A plain server: no replicas, not named by Sentinel.
    pub fn new(addr: SocketAddrV4, weight: u32, name: impl Into<String>) -> Server {
        Server {
            addr,
            weight,
            name: name.into(),
            replicas: Vec::new(),
            master: None,
        }
    }
}

/// Bounds on what a peer may send, for every pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Longest RESP bulk string.
    pub max_bulk: usize,
    /// Most elements in one RESP array (arguments in one request).
    pub max_array: usize,
    /// Deepest nesting of aggregates in a reply.
    pub max_depth: usize,
    /// Longest inline command line.
    pub max_inline: usize,
    /// Requests in flight per client connection.
    pub max_pipeline: usize,
    /// Longest key.
    pub max_key: usize,
    /// Longest value.
    pub max_value: usize,
    /// Longest Redis request, all of its arguments together: a request is
    /// held whole before it is forwarded, so this bounds what one client
    /// connection may make ferrox hold.
    pub max_request: usize,
}

/// Redis's own bound on a client's query buffer (client-query-buffer-limit).
pub const DEFAULT_MAX_REQUEST: usize = 1 << 30;

/// The deepest reply nesting [`ferrox_proto::resp::reply_len`] can track.
pub const MAX_DEPTH: usize = 64;

impl Default for Limits {
    /// The RESP limits are Redis's own defaults (see
    /// [`ferrox_proto::resp::Limits`]); a value may be as long as a bulk string.
    fn default() -> Self {
        let resp = ferrox_proto::resp::Limits::default();
        Limits {
            max_bulk: resp.max_bulk,
            max_array: resp.max_array,
            max_depth: resp.max_depth,
            max_inline: resp.max_inline,
            max_pipeline: 1024,
            max_key: 64 << 10,
            max_value: resp.max_bulk,
            max_request: DEFAULT_MAX_REQUEST,
        }
    }
}

impl Limits {
    /// The part of these limits the RESP parser takes.
    pub fn resp(&self) -> ferrox_proto::resp::Limits {
        ferrox_proto::resp::Limits {
            max_bulk: self.max_bulk,
            max_array: self.max_array,
            max_depth: self.max_depth,
            max_inline: self.max_inline,
        }
    }
}

impl Pool {
    /// Every server's address: the shards in order, then each shard's
    /// replicas with the shard's index (the order the dataplane numbers
    /// them, and health checks hold them out, in).
    pub fn all_servers(&self) -> impl Iterator<Item = (SocketAddrV4, Option<usize>)> + '_ {
        let shards = self.servers.iter().map(|s| (s.addr, None));
        let replicas = self
            .servers
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.replicas.iter().map(move |&r| (r, Some(i))));
        shards.chain(replicas)
    }

    /// A pool with twemproxy's defaults for everything but its name,
    /// address and protocol, and no servers yet.
    pub fn new(name: impl Into<String>, listen: SocketAddrV4, protocol: Protocol) -> Pool {
        Pool {
            name: name.into(),
            listen,
            protocol,
            hash: HashFn::Fnv1a_64,
            distribution: Distribution::Ketama,
            hash_tag: None,
            timeout_ms: None,
            backlog: 512,
            client_connections: 0,
            preconnect: false,
            tcp_keepalive: false,
            auth: None,
            server_auth: None,
            server_user: None,
            db: 0,
            server_connections: 1,
            auto_eject_hosts: false,
            server_retry_timeout_ms: 30_000,
            server_failure_limit: 2,
            blocked_commands: Vec::new(),
            servers: Vec::new(),
            validate: Validate::default(),
            rate_limits: Vec::new(),
            read_policy: ReadPolicy::Primary,
            sentinels: Vec::new(),
            sentinel_auth: None,
            sentinel_user: None,
            compression: None,
            hot_key_cache: None,
        }
    }
}

/// Shows a hash function by its twemproxy name.
fn hash_name<S: serde::Serializer>(hash: &HashFn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(hash.name())
}

/// Shows a distribution by its name.
fn distribution_name<S: serde::Serializer>(d: &Distribution, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

/// Shows a hash tag as the two characters it was written as.
fn hash_tag_text<S: serde::Serializer>(tag: &Option<[u8; 2]>, s: S) -> Result<S::Ok, S::Error> {
    match tag {
        Some(tag) => s.serialize_some(&String::from_utf8_lossy(tag)),
        None => s.serialize_none(),
    }
}
