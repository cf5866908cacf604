//! Key placement: which server of a pool holds a key, exactly as twemproxy
//! decides it.
//!
//! A [`Table`] is built once from a pool's definition (hash function,
//! distribution, hash tag, servers with weights) and the set of servers
//! currently live, and is then immutable: a lookup ([`Table::server_for`])
//! is a hash of the key and, for ketama, a binary search, with no
//! allocation. When a server is ejected or comes back, the caller builds a
//! new table, as twemproxy rebuilds its continuum with `auto_eject_hosts`.
//!
//! Placement equals twemproxy 0.5.0 on x86-64 for the same pool, which
//! `tests/route_golden.rs` checks against placements recorded from
//! nutcracker itself. What that takes, beyond the hash functions (see
//! [`HashFn`]):
//!
//! - twemproxy sorts a pool's servers by name, shorter names first and
//!   then bytewise, before building anything. Modula and random slots and
//!   ketama's tie order follow that order, not the order of the config.
//!   Indices returned here are still into the caller's `servers`.
//! - A server's name, which ketama hashes, is the name after the address
//!   if one is given, else the address text without the weight; see
//!   [`Server::parse`].
//! - The empty key hashes to 0 whatever the hash function.
//!
//! Each distribution is one small unit in its own file behind the private
//! `Strategy` trait: `ketama`, `modula`, `random`, and `jump`, which twemproxy
//! does not have.

pub mod cluster;
mod hash;
mod jump;
mod ketama;
mod md5;
mod modula;
mod random;

pub use hash::HashFn;

/// How keys are spread over a pool's live servers (`distribution:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Distribution {
    /// Consistent hashing on a continuum of 160 points per server, scaled
    /// by weight (twemproxy's `ketama`, libmemcached-compatible).
    Ketama,
    /// `hash % total weight` over one slot per unit of weight, slots in
    /// twemproxy's server order (`modula`).
    Modula,
    /// A live server chosen by caller-supplied randomness, ignoring the key
    /// and weights (`random`).
    Random,
    /// Lamping and Veach's jump consistent hash; not in twemproxy. The
    /// key's 32-bit hash, zero-extended, is the 64-bit jump key; the
    /// buckets are the live servers' weight units in config order, so
    /// appending a server to the config moves keys only onto it. Ejecting
    /// any but the last server reshuffles the keys of those after it.
    Jump,
    /// The servers are seed nodes of a Redis Cluster, whose own slot map
    /// (learnt at run time, see [`cluster`]) places the keys; a
    /// [`Table`] places none.
    RedisCluster,
}

impl Distribution {
    /// All five, twemproxy's three first.
    pub const ALL: [Distribution; 5] = [
        Distribution::Ketama,
        Distribution::Modula,
        Distribution::Random,
        Distribution::Jump,
        Distribution::RedisCluster,
    ];

    /// The distribution a config calls `name` (`ketama`, `modula`,
    /// `random`, `jump`, `redis_cluster`).
    pub fn from_name(name: &str) -> Option<Distribution> {
        Distribution::ALL.into_iter().find(|d| d.name() == name)
    }

    /// The name a config uses for this distribution.
    pub const fn name(self) -> &'static str {
        match self {
            Distribution::Ketama => "ketama",
            Distribution::Modula => "modula",
            Distribution::Random => "random",
            Distribution::Jump => "jump",
            Distribution::RedisCluster => "redis_cluster",
        }
    }
}

/// One server of a pool, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// What ketama hashes for this server's points: exactly the name
    /// twemproxy gives it (see [`Server::parse`]). Renaming a server moves
    /// its keys.
    pub name: String,
    /// Relative share of keys, at least 1.
    pub weight: u32,
}

/// twemproxy leaves the port out of a server's name on this port, for
/// compatibility with libmemcached's ketama.
const KETAMA_DEFAULT_PORT: u32 = 11211;

impl Server {
    /// A server named `name` with weight `weight`.
    pub fn new(name: impl Into<String>, weight: u32) -> Server {
        Server {
            name: name.into(),
            weight,
        }
    }

    /// A server from a twemproxy `servers:` line, named as twemproxy names
    /// it: `host:port:weight name` is `name`; `host:port:weight` is
    /// `host:port` (the port as written), or just `host` when the port is
    /// 11211; `/path/socket:weight` is `/path/socket:` (twemproxy keeps the
    /// colon).
    pub fn parse(spec: &str) -> Result<Server, RouteError> {
        let bad = |reason| RouteError::BadServer {
            spec: spec.to_owned(),
            reason,
        };
        let (address, name) = match spec.rsplit_once(' ') {
            Some((_, "")) => return Err(bad("empty name")),
            Some((address, name)) => (address, Some(name)),
            None => (spec, None),
        };
        let (head, weight) = address
            .rsplit_once(':')
            .ok_or_else(|| bad("expected host:port:weight or /path:weight"))?;
        let weight = match decimal(weight) {
            Some(0) => return Err(bad("zero weight")),
            Some(w) => w,
            None => return Err(bad("invalid weight")),
        };
        let unix = spec.starts_with('/');
        let derived = if unix {
            if head.contains(':') {
                return Err(bad("expected /path:weight"));
            }
            // twemproxy's name spans the address and the colon before the
            // (absent) port.
            &address[..head.len() + 1]
        } else {
            let (host, port) = head
                .rsplit_once(':')
                .ok_or_else(|| bad("expected host:port:weight"))?;
            match decimal(port) {
                Some(p) if (1..=u16::MAX as u32).contains(&p) => {}
                _ => return Err(bad("invalid port")),
            }
            if decimal(port) == Some(KETAMA_DEFAULT_PORT) {
                host
            } else {
                head
            }
        };
        Ok(Server::new(name.unwrap_or(derived), weight))
    }
}

/// A non-negative decimal that fits a C `int`, as twemproxy's `nc_atoi`
/// accepts it.
fn decimal(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u32>().ok().filter(|&n| n <= i32::MAX as u32)
}

/// Why a pool definition cannot be placed on. Always the configuration's
/// fault: the pool is rejected, and retrying the same definition fails
/// the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// A pool needs at least one server.
    #[error("pool has no servers")]
    NoServers,
    /// `live` must say, for every server, whether it is live.
    #[error("{servers} servers but {live} liveness flags")]
    LiveMismatch {
        /// Servers in the pool.
        servers: usize,
        /// Flags given.
        live: usize,
    },
    /// Weights start at 1.
    #[error("server {0} has weight 0")]
    ZeroWeight(usize),
    /// twemproxy refuses two servers of the same name; ketama could not
    /// tell them apart.
    #[error("servers {0} and {1} have the same name")]
    DuplicateName(usize, usize),
    /// The weights add up to more than a 32-bit total.
    #[error("total weight exceeds 2^32 - 1")]
    WeightOverflow,
    /// A twemproxy `servers:` line that twemproxy would refuse.
    #[error("server \"{spec}\": {reason}")]
    BadServer {
        /// The line as given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A live server as a strategy sees it: its index in the caller's list,
/// the name ketama hashes, and its weight.
#[derive(Debug, Clone, Copy)]
struct Member<'a> {
    index: u32,
    name: &'a [u8],
    weight: u32,
}

/// What every distribution provides. `build` gets the live servers in
/// twemproxy's order (never empty, total weight within `u32`); `pick`
/// returns a server index from them for a key's hash, or, for `random`,
/// for the caller's random number.
trait Strategy: Sized {
    fn build(live: &[Member<'_>]) -> Self;
    fn pick(&self, hash: u32, random: u32) -> u32;
}

#[derive(Debug, Clone)]
enum Placement {
    Ketama(ketama::Continuum),
    Modula(modula::Slots),
    Random(random::Live),
    Jump(jump::Buckets),
}

/// Where a pool's keys go, for one set of live servers.
#[derive(Debug, Clone)]
pub struct Table {
    hash: HashFn,
    distribution: Distribution,
    hash_tag: Option<[u8; 2]>,
    /// `None` when no server is live.
    placement: Option<Placement>,
}

impl Table {
    /// The table for a pool of `servers`, of which those with `live[i]`
    /// false are ejected: left out, and their keys rehashed onto the
    /// others, as twemproxy does with `auto_eject_hosts`.
    pub fn build(
        hash: HashFn,
        distribution: Distribution,
        hash_tag: Option<[u8; 2]>,
        servers: &[Server],
        live: &[bool],
    ) -> Result<Table, RouteError> {
        if servers.is_empty() {
            return Err(RouteError::NoServers);
        }
        if live.len() != servers.len() {
            return Err(RouteError::LiveMismatch {
                servers: servers.len(),
                live: live.len(),
            });
        }
        if let Some(i) = servers.iter().position(|s| s.weight == 0) {
            return Err(RouteError::ZeroWeight(i));
        }
        // Every weight is at least 1, so this also bounds the server count.
        let total: u64 = servers.iter().map(|s| u64::from(s.weight)).sum();
        if total > u64::from(u32::MAX) {
            return Err(RouteError::WeightOverflow);
        }
        let mut order: Vec<Member<'_>> = servers
            .iter()
            .enumerate()
            .map(|(i, s)| Member {
                index: i as u32,
                name: s.name.as_bytes(),
                weight: s.weight,
            })
            .collect();
        order.sort_by(|a, b| (a.name.len(), a.name).cmp(&(b.name.len(), b.name)));
        if let Some(pair) = order.windows(2).find(|p| p[0].name == p[1].name) {
            let (a, b) = (pair[0].index as usize, pair[1].index as usize);
            return Err(RouteError::DuplicateName(a.min(b), a.max(b)));
        }
        order.retain(|m| live[m.index as usize]);
        let placement = (!order.is_empty()).then(|| match distribution {
            Distribution::Ketama => Placement::Ketama(ketama::Continuum::build(&order)),
            Distribution::Modula => Placement::Modula(modula::Slots::build(&order)),
            Distribution::Random => Placement::Random(random::Live::build(&order)),
            Distribution::Jump => Placement::Jump(jump::Buckets::build(&order)),
            // Before the cluster's slot map is known: any live seed, which
            // redirects a key that is not its own.
            Distribution::RedisCluster => Placement::Random(random::Live::build(&order)),
        });
        Ok(Table {
            hash,
            distribution,
            hash_tag,
            placement,
        })
    }

    /// The index into the `servers` the table was built from of the
    /// server holding `key`, or `None` if no server is live. `random` is
    /// used by [`Distribution::Random`] only, which ignores the key.
    pub fn server_for(&self, key: &[u8], random: u32) -> Option<usize> {
        let index = match self.placement.as_ref()? {
            Placement::Ketama(p) => p.pick(self.hash_key(key), random),
            Placement::Modula(p) => p.pick(self.hash_key(key), random),
            Placement::Random(p) => p.pick(0, random),
            Placement::Jump(p) => p.pick(self.hash_key(key), random),
        };
        Some(index as usize)
    }

    /// The hash placement uses for `key`: the pool's hash function over
    /// the key's hash tag part (see [`hashtag`]), and 0 for the empty key.
    pub fn hash_key(&self, key: &[u8]) -> u32 {
        let key = match self.hash_tag {
            Some(tag) => hashtag(key, tag),
            None => key,
        };
        if key.is_empty() {
            0
        } else {
            self.hash.hash(key)
        }
    }

    /// The pool's hash function.
    pub fn hash_fn(&self) -> HashFn {
        self.hash
    }

    /// The pool's distribution.
    pub fn distribution(&self) -> Distribution {
        self.distribution
    }
}

/// The part of `key` that is hashed under hash tag `tag` (`hash_tag:`,
/// two characters, which may be equal): the bytes between the first
/// `tag[0]` and the first `tag[1]` after it. The whole key when there is
/// no `tag[0]`, no `tag[1]` after it, or nothing between them (`{}`); only
/// the first opening counts (`{}{a}` hashes whole).
pub fn hashtag(key: &[u8], tag: [u8; 2]) -> &[u8] {
    let Some(open) = key.iter().position(|&b| b == tag[0]) else {
        return key;
    };
    let inside = &key[open + 1..];
    match inside.iter().position(|&b| b == tag[1]) {
        Some(len) if len > 0 => &inside[..len],
        _ => key,
    }
}

#[cfg(test)]
mod tests;
