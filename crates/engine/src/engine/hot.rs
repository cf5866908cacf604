//! The hot-key cache of a pool (`[pools.NAME.hot_key_cache]`): each core
//! counts its reads per key ([`Detector`]) and answers the reads of hot
//! keys from its own [`Cache`].
//!
//! **Coherence, Redis.** The cache fills only from replies that came over
//! the core's *tracking* connection to the key's server: a RESP3
//! connection with `CLIENT TRACKING on`, so the server remembers the keys
//! it read and pushes `invalidate` for each when anyone changes it (a
//! client of the proxy or not). A push drops the entry before the next
//! read is served. Three races are closed:
//!
//! - a read sent before an invalidation and answered after it: the fill
//!   carries the cache's ticket from when the read was sent and is refused
//!   (see [`FillTicket`]);
//! - a write through the proxy: its keys are dropped on this core when the
//!   write is *read* from the client, before it is forwarded, so the same
//!   client's next read cannot be answered from the cache; the server's
//!   push then reaches every other core;
//! - the tracking connection fails, or the server is flushed (a push
//!   with no keys): every entry of that server goes.
//!
//! A session's read is sent on the tracking connection only when the
//! session waits for nothing else: otherwise it could overtake the
//! session's own earlier write to that key on its usual connection.
//!
//! **memcached** has no tracking: entries are dropped by writes through
//! the proxy on this core and live at most `max_staleness_ms` (default 1
//! s), which bounds what a write that bypasses the proxy (or reaches
//! another core) can leave stale.
//!
//! The cache lives on the core's heap, not in the shared chunk pool: no
//! other process may read it, and a successor binary could not keep it
//! coherent (its tracking connections end with the process).

use crate::hotkey::{Cache, Detector, FillTicket};

use super::{Micros, PoolCounters, Protocol};

/// Candidates the detector tracks per pool and core.
const TRACKED: usize = 64;

/// memcached's default bound on a cached value's age.
const MEMCACHE_MAX_AGE: Micros = 1_000_000;

/// What a read of a hot key found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup<'a> {
    /// Not hot: the read goes as usual.
    Cold,
    /// Hot and cached: these reply bytes (empty: a nil).
    Hit(&'a [u8]),
    /// Hot, not cached: send the read so that its reply fills the cache.
    Miss(FillTicket),
}

#[derive(Debug)]
pub(super) struct Hot {
    pub detector: Detector,
    pub cache: Cache,
    /// How long an entry may live.
    max_age: Option<Micros>,
    config: ferrox_config::HotKeyCache,
}

impl Hot {
    pub fn new(config: &ferrox_config::HotKeyCache, protocol: Protocol) -> Hot {
        let max_age = match (config.max_staleness_ms, protocol) {
            (Some(ms), _) => Some(ms.saturating_mul(1_000)),
            (None, Protocol::Memcache) => Some(MEMCACHE_MAX_AGE),
            (None, Protocol::Redis) => None,
        };
        Hot {
            detector: Detector::new(config.min_rate, TRACKED),
            cache: Cache::new(config.memory),
            max_age,
            config: config.clone(),
        }
    }

    /// Takes a new configuration in place: what was cached stays when the
    /// memory shrinks by eviction only.
    pub fn reconfigure(&mut self, config: &ferrox_config::HotKeyCache, protocol: Protocol) {
        if *config == self.config {
            return;
        }
        let fresh = Hot::new(config, protocol);
        self.detector.set_min_rate(config.min_rate);
        self.cache.set_memory(config.memory);
        if fresh.max_age != self.max_age {
            self.cache.clear();
        }
        self.max_age = fresh.max_age;
        self.config = config.clone();
    }

    /// Counts a read of `key`, and looks it up when it is hot.
    pub fn read(&mut self, key: &[u8], now: Micros, counters: &mut PoolCounters) -> Lookup<'_> {
        let hot = self.detector.record(key, now);
        self.forget_cooled();
        if !hot {
            return Lookup::Cold;
        }
        let ticket = self.cache.ticket();
        match self.cache.get(key, now) {
            Some(reply) => {
                counters.cache_hits += 1;
                Lookup::Hit(reply)
            }
            None => {
                counters.cache_misses += 1;
                Lookup::Miss(ticket)
            }
        }
    }

    /// Drops the entries of keys gone cold: the cache holds hot keys only.
    fn forget_cooled(&mut self) {
        let cache = &mut self.cache;
        self.detector.take_cooled(|key| {
            cache.invalidate(key);
        });
    }

    /// Stores the reply to a read sent under `ticket`.
    pub fn fill(
        &mut self,
        ticket: FillTicket,
        key: &[u8],
        server: usize,
        reply: &[u8],
        now: Micros,
    ) {
        let expires = self.max_age.map(|age| now + age);
        self.cache.fill(ticket, key, server as u32, reply, expires);
    }

    /// A write through the proxy changes `key`.
    pub fn written(&mut self, key: &[u8], counters: &mut PoolCounters) {
        if self.cache.invalidate(key) {
            counters.cache_invalidations_write += 1;
        }
    }

    /// The server pushed an invalidation of `key`.
    pub fn invalidated(&mut self, key: &[u8], counters: &mut PoolCounters) {
        if self.cache.invalidate(key) {
            counters.cache_invalidations_server += 1;
        }
    }

    /// `server`'s invalidations can no longer be trusted (its tracking
    /// connection failed) or it was flushed.
    pub fn lost(&mut self, server: usize, counters: &mut PoolCounters) {
        counters.cache_invalidations_lost += self.cache.invalidate_server(server as u32) as u64;
    }

    /// Lets keys cool while no read comes.
    pub fn tick(&mut self, now: Micros) {
        self.detector.tick(now);
        self.forget_cooled();
    }

    /// Copies the cache's own counters into the pool's.
    pub fn publish(&self, counters: &mut PoolCounters) {
        let c = self.cache.counters();
        counters.cache_fills = c.fills;
        counters.cache_evictions = c.evictions;
        counters.cache_expirations = c.expirations;
        counters.cache_memory = self.cache.memory() as u64;
        counters.hot_keys = self.detector.hot().count() as u64;
    }
}

/// The keys of a tracking connection's `invalidate` push: `Some(keys)`,
/// or `Some(empty)` for a flush (a null key list); `None` for any other
/// push. `each` is called with every key.
pub(super) fn invalidation(push: &[u8], mut each: impl FnMut(&[u8])) -> Option<bool> {
    // >2\r\n$10\r\ninvalidate\r\n then *N\r\n$k\r\nkey... or _\r\n
    let rest = push.strip_prefix(b">2\r\n$10\r\ninvalidate\r\n")?;
    if rest.starts_with(b"_\r\n") || rest.starts_with(b"*-1\r\n") {
        return Some(false);
    }
    let (count, mut at) = number_line(rest, b'*')?;
    for _ in 0..count {
        let (len, start) = number_line(&rest[at..], b'$')?;
        let start = at + start;
        let end = start.checked_add(len)?;
        each(rest.get(start..end)?);
        at = end + 2;
    }
    Some(true)
}

/// `<kind><n>\r\n` at the front: `n`, and where the line ends.
fn number_line(bytes: &[u8], kind: u8) -> Option<(usize, usize)> {
    if bytes.first() != Some(&kind) {
        return None;
    }
    let end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&bytes[1..end]).ok()?.parse().ok()?;
    Some((n, end + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(push: &[u8]) -> (Option<bool>, Vec<Vec<u8>>) {
        let mut keys = Vec::new();
        let found = invalidation(push, |k| keys.push(k.to_vec()));
        (found, keys)
    }

    #[test]
    fn invalidation_pushes_name_their_keys_or_a_flush() {
        assert_eq!(
            keys(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$3\r\nbcd\r\n"),
            (Some(true), vec![b"a".to_vec(), b"bcd".to_vec()])
        );
        assert_eq!(
            keys(b">2\r\n$10\r\ninvalidate\r\n_\r\n"),
            (Some(false), vec![])
        );
        assert_eq!(
            keys(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n").0,
            None
        );
    }
}
