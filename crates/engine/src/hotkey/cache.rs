//! A per-core cache of whole reply bytes by key, bounded in bytes.
//!
//! Entries live in a slab with a free list, found through a map from the
//! key's 64-bit hash (the entry keeps the key and is matched on it, so a
//! colliding key only displaces the other: a miss, never a wrong reply).
//! Eviction is CLOCK: a read sets an entry's reference bit, the hand
//! clears set bits as it passes and takes the first entry found clear, so
//! a re-read entry survives one sweep; O(1) amortized. A freed slot keeps
//! its small buffers for the next entry.
//!
//! **The fill race.** A read sent to a server before an invalidation of
//! its key may be answered after that invalidation arrives (Redis's
//! client-side caching documentation describes it: the invalidation and
//! the reply travel apart). Filling the cache with that reply would keep
//! a stale value with no invalidation left to come. So the caller takes a
//! [`FillTicket`] when it sends the read and fills with [`Cache::fill`],
//! which refuses a ticket older than the last invalidation that could
//! cover the key: a key's invalidation is noted in a table of `SLOTS`
//! counters indexed by its hash (a collision only refuses a fill more),
//! a server's or everything's in one floor for all keys (rare events).

use std::collections::HashMap;

use super::hash;
use crate::engine::Micros;

/// Bytes accounted per entry besides its key and reply: the slab entry
/// (88 bytes), its map slot (16 bytes and a control byte), its place in
/// the free list, and the allocator's headers of its two buffers.
pub const ENTRY_OVERHEAD: usize = 160;

/// An entry may take at most this fraction of the budget.
const MAX_SHARE: usize = 8;
/// Per-key invalidation counters (a power of two), 32 KiB.
const SLOTS: usize = 4096;
/// A freed slot keeps buffers up to this capacity for the next entry.
const KEEP_BUFFER: usize = 512;

/// What the cache did, for operators.
#[derive(Debug, Default, Clone)]
pub struct CacheCounters {
    pub hits: u64,
    /// Lookups that found nothing, or an expired entry.
    pub misses: u64,
    /// Entries stored.
    pub fills: u64,
    /// Entries dropped to make room.
    pub evictions: u64,
    /// Entries dropped by `invalidate`, `invalidate_server` or `clear`.
    pub invalidations: u64,
    /// Entries found expired by `get` (also counted as misses).
    pub expirations: u64,
    /// Fills refused because an invalidation overtook their read.
    pub stale_fills: u64,
    /// Fills refused because the entry alone exceeds budget / 8.
    pub oversize: u64,
}

/// The cache's invalidation count when a read was sent; see the module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket(u64);

#[derive(Debug, Default)]
struct Entry {
    live: bool,
    referenced: bool,
    server: u32,
    hash: u64,
    expires_at: Option<Micros>,
    key: Vec<u8>,
    reply: Vec<u8>,
}

impl Entry {
    fn size(&self) -> usize {
        self.key.len() + self.reply.len() + ENTRY_OVERHEAD
    }
}

/// Replies by key, within a memory budget.
pub struct Cache {
    budget: usize,
    /// Sum of the live entries' sizes, at most `budget`.
    memory: usize,
    entries: Vec<Entry>,
    free: Vec<u32>,
    index: HashMap<u64, u32>,
    /// The next slab index the CLOCK hand looks at.
    hand: usize,
    /// Invalidations so far; a ticket is its value at the read.
    epoch: u64,
    /// `epoch` after the last invalidation of a key with this slot.
    invalidated: Box<[u64]>,
    /// `epoch` after the last `invalidate_server` or `clear`.
    floor: u64,
    counters: CacheCounters,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Without the entries and the invalidation table.
        f.debug_struct("Cache")
            .field("budget", &self.budget)
            .field("memory", &self.memory)
            .field("len", &self.index.len())
            .field("epoch", &self.epoch)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// An empty cache of `memory` bytes as [`memory`](Self::memory) counts.
    pub fn new(memory: usize) -> Cache {
        Cache {
            budget: memory,
            memory: 0,
            entries: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            hand: 0,
            epoch: 0,
            invalidated: vec![0; SLOTS].into_boxed_slice(),
            floor: 0,
            counters: CacheCounters::default(),
        }
    }

    /// The reply stored for `key`, unless absent or expired (at
    /// `expires_at <= now`, then dropped).
    pub fn get(&mut self, key: &[u8], now: Micros) -> Option<&[u8]> {
        let Some(at) = self.lookup(hash(key), key) else {
            self.counters.misses += 1;
            return None;
        };
        if self.entries[at].expires_at.is_some_and(|t| t <= now) {
            self.remove(at);
            self.counters.expirations += 1;
            self.counters.misses += 1;
            return None;
        }
        self.counters.hits += 1;
        let entry = &mut self.entries[at];
        entry.referenced = true;
        Some(&entry.reply)
    }

    fn lookup(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let at = *self.index.get(&hash)? as usize;
        (self.entries[at].key == key).then_some(at)
    }

    /// Takes the ticket for a read about to be sent.
    pub fn ticket(&self) -> FillTicket {
        FillTicket(self.epoch)
    }

    /// Stores the reply to a read sent under `ticket`, unless an
    /// invalidation that may cover `key` came since (then refused).
    pub fn fill(
        &mut self,
        ticket: FillTicket,
        key: &[u8],
        server: u32,
        reply: &[u8],
        expires_at: Option<Micros>,
    ) -> bool {
        if ticket.0 < self.floor || ticket.0 < self.invalidated[slot(hash(key))] {
            self.counters.stale_fills += 1;
            return false;
        }
        self.insert(key, server, reply, expires_at)
    }

    /// Stores `reply` for `key` (filled from `server`) with no race check;
    /// false if the entry alone exceeds the budget / 8, and then no older
    /// reply for `key` is kept either.
    pub fn insert(
        &mut self,
        key: &[u8],
        server: u32,
        reply: &[u8],
        expires_at: Option<Micros>,
    ) -> bool {
        let hash = hash(key);
        // The old entry under this hash goes whatever happens next.
        if let Some(&at) = self.index.get(&hash) {
            self.remove(at as usize);
        }
        let size = key.len() + reply.len() + ENTRY_OVERHEAD;
        if size > self.budget / MAX_SHARE {
            self.counters.oversize += 1;
            return false;
        }
        while self.memory + size > self.budget {
            self.evict();
        }
        let at = match self.free.pop() {
            Some(at) => at as usize,
            None => {
                self.entries.push(Entry::default());
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[at];
        entry.live = true;
        entry.referenced = false; // a second chance is earned by a read
        entry.server = server;
        entry.hash = hash;
        entry.expires_at = expires_at;
        copy_into(&mut entry.key, key);
        copy_into(&mut entry.reply, reply);
        self.index.insert(hash, at as u32);
        self.memory += size;
        self.counters.fills += 1;
        true
    }

    /// Drops the entry the CLOCK hand reaches first with its reference
    /// bit clear, clearing the bits it passes. Needs a live entry.
    fn evict(&mut self) {
        loop {
            let at = self.hand;
            self.hand = (at + 1) % self.entries.len();
            let entry = &mut self.entries[at];
            if !entry.live {
                continue;
            }
            if entry.referenced {
                entry.referenced = false;
                continue;
            }
            self.remove(at);
            self.counters.evictions += 1;
            return;
        }
    }

    fn remove(&mut self, at: usize) {
        let entry = &mut self.entries[at];
        self.index.remove(&entry.hash);
        self.memory -= entry.size();
        entry.live = false;
        for buf in [&mut entry.key, &mut entry.reply] {
            if buf.capacity() > KEEP_BUFFER {
                *buf = Vec::new();
            } else {
                buf.clear();
            }
        }
        self.free.push(at as u32);
    }

    /// Drops `key`'s entry, and refuses fills of reads sent before.
    /// Whether there was one.
    pub fn invalidate(&mut self, key: &[u8]) -> bool {
        let hash = hash(key);
        self.epoch += 1;
        self.invalidated[slot(hash)] = self.epoch;
        let Some(at) = self.lookup(hash, key) else {
            return false;
        };
        self.remove(at);
        self.counters.invalidations += 1;
        true
    }

    /// Drops every entry filled from `server` (its invalidations can no
    /// longer be trusted), and refuses fills of every read sent before.
    /// How many entries went. O(slab).
    pub fn invalidate_server(&mut self, server: u32) -> usize {
        self.epoch += 1;
        self.floor = self.epoch;
        let mut dropped = 0;
        for at in 0..self.entries.len() {
            if self.entries[at].live && self.entries[at].server == server {
                self.remove(at);
                dropped += 1;
            }
        }
        self.counters.invalidations += dropped as u64;
        dropped
    }

    /// Drops everything, buffers too, and refuses fills of every read sent
    /// before.
    pub fn clear(&mut self) {
        self.epoch += 1;
        self.floor = self.epoch;
        self.counters.invalidations += self.index.len() as u64;
        self.entries.clear();
        self.free.clear();
        self.index.clear();
        self.memory = 0;
        self.hand = 0;
    }

    /// Changes the budget, evicting down to it at once.
    pub fn set_memory(&mut self, memory: usize) {
        self.budget = memory;
        while self.memory > self.budget {
            self.evict();
        }
    }

    /// Bytes accounted: key + reply + [`ENTRY_OVERHEAD`] per entry. The
    /// heap holds somewhat more: buffers keep up to twice their length,
    /// and free slots up to `KEEP_BUFFER` (512) bytes each of two buffers.
    pub fn memory(&self) -> usize {
        self.memory
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }
}

fn slot(hash: u64) -> usize {
    hash as usize & (SLOTS - 1)
}

/// Copies into a reused buffer, giving back room beyond twice the length.
fn copy_into(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.clear();
    buf.extend_from_slice(bytes);
    if buf.capacity() > 2 * bytes.len().max(16) {
        buf.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const SIZE: usize = 4 + 100 + ENTRY_OVERHEAD; // a u32 key, 100 bytes

    fn fill_with(cache: &mut Cache, keys: std::ops::Range<u32>) {
        for i in keys {
            assert!(cache.insert(&i.to_le_bytes(), 0, &[7; 100], None));
            assert!(cache.memory() <= cache.budget());
        }
    }

    #[test]
    fn the_overhead_covers_an_entry_and_its_map_slot() {
        let map_slot = std::mem::size_of::<(u64, u32)>() + 1;
        assert!(std::mem::size_of::<Entry>() + map_slot + 4 + 32 <= ENTRY_OVERHEAD);
    }

    #[test]
    fn hits_misses_and_expiry() {
        let mut cache = Cache::new(100_000);
        assert!(cache.insert(b"a", 0, b"$1\r\nx\r\n", None));
        assert_eq!(cache.get(b"a", 0), Some(&b"$1\r\nx\r\n"[..]));
        assert_eq!(cache.get(b"b", 0), None);
        assert_eq!(cache.memory(), 1 + 7 + ENTRY_OVERHEAD);
        assert!(cache.insert(b"a", 0, b"+y\r\n", Some(100)), "replaces");
        assert_eq!(cache.get(b"a", 99), Some(&b"+y\r\n"[..]));
        assert_eq!(cache.memory(), 1 + 4 + ENTRY_OVERHEAD);
        assert_eq!(cache.get(b"a", 100), None, "expired");
        assert!(cache.is_empty());
        let c = cache.counters();
        assert_eq!((c.hits, c.misses, c.fills, c.expirations), (2, 2, 2, 1));
    }

    #[test]
    fn eviction_keeps_within_the_budget() {
        let mut cache = Cache::new(10_000);
        fill_with(&mut cache, 0..500);
        assert_eq!(cache.len(), 10_000 / SIZE);
        assert_eq!(cache.counters().evictions, 500 - cache.len() as u64);
        assert!(cache.get(&499u32.to_le_bytes(), 0).is_some(), "newest kept");
    }

    #[test]
    fn a_reread_entry_survives_a_sweep() {
        let mut cache = Cache::new(16 * SIZE);
        fill_with(&mut cache, 0..16);
        assert!(cache.get(&3u32.to_le_bytes(), 0).is_some());
        fill_with(&mut cache, 100..116);
        for i in 0..16u32 {
            assert_eq!(cache.get(&i.to_le_bytes(), 0).is_some(), i == 3, "key {i}");
        }
        assert_eq!(cache.counters().evictions, 16);
    }

    #[test]
    fn invalidation_by_key_server_and_all() {
        let mut cache = Cache::new(100_000);
        cache.insert(b"a", 1, b"1", None);
        cache.insert(b"b", 2, b"2", None);
        cache.insert(b"c", 1, b"3", None);
        assert!(cache.invalidate(b"a"));
        assert!(!cache.invalidate(b"a"));
        assert_eq!(cache.get(b"a", 0), None);
        assert_eq!(cache.invalidate_server(1), 1);
        assert_eq!(cache.get(b"c", 0), None);
        assert_eq!(cache.get(b"b", 0), Some(&b"2"[..]));
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.memory(), 0);
        assert_eq!(cache.counters().invalidations, 3);
    }

    #[test]
    fn a_fill_overtaken_by_an_invalidation_is_refused() {
        let mut cache = Cache::new(100_000);
        let before = cache.ticket();
        cache.invalidate(b"k");
        assert!(!cache.fill(before, b"k", 0, b"old", None));
        assert_eq!(cache.counters().stale_fills, 1);
        assert_eq!(cache.get(b"k", 0), None);
        assert!(cache.fill(cache.ticket(), b"k", 0, b"new", None));
        assert_eq!(cache.get(b"k", 0), Some(&b"new"[..]));
        // Another key with another slot does not refuse it.
        let other = (0u32..)
            .map(|i| i.to_le_bytes())
            .find(|o| slot(hash(o)) != slot(hash(b"k")))
            .unwrap();
        let ticket = cache.ticket();
        cache.invalidate(&other);
        assert!(cache.fill(ticket, b"k", 0, b"newer", None));
        // A server's or everything's invalidation refuses every older fill.
        let ticket = cache.ticket();
        cache.invalidate_server(9);
        assert!(!cache.fill(ticket, b"k", 0, b"x", None));
        let ticket = cache.ticket();
        cache.clear();
        assert!(!cache.fill(ticket, b"k", 0, b"x", None));
        assert!(cache.fill(cache.ticket(), b"k", 0, b"x", None));
    }

    #[test]
    fn shrinking_evicts_and_oversize_is_refused() {
        let mut cache = Cache::new(100_000);
        fill_with(&mut cache, 0..50);
        cache.set_memory(3_000);
        assert_eq!(cache.len(), 3_000 / SIZE);
        assert!(cache.insert(b"k", 0, b"small", None));
        assert!(!cache.insert(b"k", 0, &[0; 300], None), "over 3000 / 8");
        assert_eq!(cache.get(b"k", 0), None, "the older reply went too");
        assert_eq!(cache.counters().oversize, 1);
        cache.set_memory(0);
        assert!(cache.is_empty() && cache.memory() == 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Get(u8),
        /// Key, reply length, server, time to live.
        Insert(u8, usize, u32, Option<u64>),
        Invalidate(u8),
        InvalidateServer(u32),
        Clear,
        /// A read of the key sent: take a ticket.
        Send(u8),
        /// Its reply: fill with the ticket.
        Fill(u8, usize, u32),
        Advance(u64),
        SetMemory(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let key = || 0u8..6;
        prop_oneof![
            4 => key().prop_map(Op::Get),
            4 => (key(), 0usize..400, 0u32..3, prop::option::of(1u64..50))
                .prop_map(|(k, n, s, ttl)| Op::Insert(k, n, s, ttl)),
            2 => key().prop_map(Op::Invalidate),
            1 => (0u32..3).prop_map(Op::InvalidateServer),
            1 => Just(Op::Clear),
            3 => key().prop_map(Op::Send),
            3 => (key(), 0usize..400, 0u32..3).prop_map(|(k, n, s)| Op::Fill(k, n, s)),
            1 => (0u64..30).prop_map(Op::Advance),
            1 => (0usize..20_000).prop_map(Op::SetMemory),
        ]
    }

    proptest! {
        /// Against a model of the last stored reply per key: the cache
        /// holds only that reply (or nothing), nothing after an
        /// invalidation or expiry, never a fill overtaken by an
        /// invalidation, and stays within its budget.
        #[test]
        fn agrees_with_a_model(budget in 0usize..20_000, ops in prop::collection::vec(op(), 0..200)) {
            let mut cache = Cache::new(budget);
            // Key -> (reply, expires_at, server) of the last stored reply.
            let mut model: HashMap<u8, (Vec<u8>, Option<u64>, u32)> = HashMap::new();
            // Key -> (ticket, overtaken by an invalidation) of a read sent.
            let mut sent: HashMap<u8, (FillTicket, bool)> = HashMap::new();
            let (mut now, mut serial) = (0u64, 0u32);
            let mut reply = |n: usize| {
                serial += 1;
                serial.to_le_bytes().into_iter().cycle().take(n.max(4)).collect::<Vec<u8>>()
            };
            for op in ops {
                match op {
                    Op::Get(k) => {
                        let live = model.get(&k).filter(|m| m.1.is_none_or(|t| t > now));
                        if let Some(got) = cache.get(&[k], now) {
                            prop_assert_eq!(Some(got), live.map(|m| &m.0[..]), "key {}", k);
                        }
                    }
                    Op::Insert(k, n, server, ttl) => {
                        let (r, expires_at) = (reply(n), ttl.map(|t| now + t));
                        if cache.insert(&[k], server, &r, expires_at) {
                            model.insert(k, (r, expires_at, server));
                        } else {
                            model.remove(&k);
                        }
                    }
                    Op::Invalidate(k) => {
                        cache.invalidate(&[k]);
                        model.remove(&k);
                        sent.entry(k).and_modify(|s| s.1 = true);
                    }
                    Op::InvalidateServer(server) => {
                        cache.invalidate_server(server);
                        model.retain(|_, m| m.2 != server);
                        sent.values_mut().for_each(|s| s.1 = true);
                    }
                    Op::Clear => {
                        cache.clear();
                        model.clear();
                        sent.values_mut().for_each(|s| s.1 = true);
                    }
                    Op::Send(k) => {
                        sent.insert(k, (cache.ticket(), false));
                    }
                    Op::Fill(k, n, server) => {
                        let Some((ticket, overtaken)) = sent.remove(&k) else { continue };
                        let (r, stale) = (reply(n), cache.counters().stale_fills);
                        let filled = cache.fill(ticket, &[k], server, &r, None);
                        prop_assert!(!(filled && overtaken), "stale fill of {}", k);
                        if filled {
                            model.insert(k, (r, None, server));
                        } else if cache.counters().stale_fills == stale {
                            model.remove(&k); // oversize: the older reply went
                        }
                    }
                    Op::Advance(dt) => now += dt,
                    Op::SetMemory(m) => cache.set_memory(m),
                }
                // Every live entry holds the model's reply for its key.
                let live: Vec<_> = cache.entries.iter().filter(|e| e.live).collect();
                for e in &live {
                    prop_assert_eq!(Some(&e.reply), model.get(&e.key[0]).map(|m| &m.0));
                }
                prop_assert_eq!(live.iter().map(|e| e.size()).sum::<usize>(), cache.memory());
                prop_assert!(cache.memory() <= cache.budget());
                prop_assert_eq!(live.len(), cache.len());
            }
        }
    }
}
