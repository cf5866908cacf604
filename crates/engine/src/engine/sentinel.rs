//! Shards named by their Redis Sentinel master: each core asks the
//! pool's sentinels for every master's primary and replicas, and follows
//! a failover without a configuration change or a restart.
//!
//! ```text
//!  sentinel ◀── SENTINEL GET-MASTER-ADDR-BY-NAME m, SENTINEL REPLICAS m
//!     │          (at start, every second, and at most every 100 ms while
//!     │           a primary is failing; sentinels asked in turn)
//!     └──────▶ SUBSCRIBE +switch-master: a failover applies at once
//! ```
//!
//! The sentinels are servers of the pool after its shards (role
//! [`Role::Sentinel`]), spoken to without the pool's handshake (only
//! `AUTH` with the pool's `sentinel_auth`, if it has one). A shard's
//! primary is its server's address: when Sentinel names another, the
//! shard's connections are retired (what they hold fails with the old
//! primary, or completes if it still answers) and new ones opened to the
//! new primary. Placement hashes the shard's name, so keys never move.
//! Until Sentinel has named a primary, its shard's requests fail with an
//! error saying so. Replicas Sentinel reports up (not down, link ok) take
//! reads by the read policy (see `replica`); those it stops reporting are
//! left out.

use std::net::{Ipv4Addr, SocketAddrV4};

use ferrox_proto::resp;

use super::cluster::{array_header, bulk, INTERNAL};
use super::pipeline::{Expect, SlotRef};
use super::{Engine, Health, Micros, Role, ServerSpec};

/// Periodic refresh of every master's primary and replicas.
const REFRESH_EVERY: Micros = 1_000_000;
/// The least time between two refreshes (while a primary fails, each of
/// its failures asks for one).
const REFRESH_GAP: Micros = 100_000;
/// Most servers a pool grows to with the replicas Sentinel names.
const MAX_SERVERS: usize = 250;

/// Internal requests (their piece number; the shard is their `seq`).
pub(super) const MASTER_QUERY: u16 = 10;
const REPLICAS_QUERY: u16 = 11;
const SUBSCRIBE: u16 = 12;

/// One pool's Sentinel state.
#[derive(Debug)]
pub(super) struct Sentinel {
    /// Each shard's master name, by shard.
    masters: Vec<String>,
    /// When the next refresh is due, and when the last was sent.
    next_refresh: Micros,
    last_asked: Option<Micros>,
    /// The sentinel asked last (they are asked in turn).
    asked: usize,
    /// The connection subscribed to `+switch-master`, if open.
    subscriber: Option<u32>,
    /// Primaries changed, for the statistics and tests.
    pub switches: u64,
}

impl Sentinel {
    pub fn new(masters: Vec<String>) -> Sentinel {
        Sentinel {
            masters,
            next_refresh: 0,
            last_asked: None,
            asked: usize::MAX,
            subscriber: None,
            switches: 0,
        }
    }

    /// Asks for a refresh as soon as the gap allows.
    pub fn make_stale(&mut self) {
        let earliest = self.last_asked.map_or(0, |at| at + REFRESH_GAP);
        self.next_refresh = self.next_refresh.min(earliest);
    }

    pub fn deadline(&self) -> Micros {
        self.next_refresh
    }

    pub fn masters(&self) -> &[String] {
        &self.masters
    }
}

impl Engine {
    /// Adds pool `pool`'s sentinels as servers (after its shards and
    /// replicas), and its Sentinel state.
    pub(super) fn sentinel_start(&mut self, pool: usize, sentinels: &[SocketAddrV4]) {
        let masters = self.pools[pool].spec.masters.clone();
        for &addr in sentinels {
            self.add_server(pool, addr, format!("sentinel {addr}"), Role::Sentinel);
        }
        self.pools[pool].sentinel = Some(Box::new(Sentinel::new(masters)));
    }

    /// Appends a server to pool `pool` (with its connections); its index.
    pub(super) fn add_server(
        &mut self,
        pool: usize,
        addr: SocketAddrV4,
        name: String,
        role: Role,
    ) -> usize {
        let p = &mut self.pools[pool];
        let s = p.spec.servers.len();
        p.spec.servers.push(ServerSpec { addr, name, role });
        p.health.push(Health::default());
        p.live.push(role != Role::Sentinel);
        let conns = self.server_conns(pool, s);
        self.pools[pool].conns.push(conns);
        s
    }

    /// Sends the refreshes that are due, and subscribes again where the
    /// subscription was lost.
    pub(super) fn sentinel_maintain(&mut self, now: Micros) {
        for pool in 0..self.pools.len() {
            let p = &self.pools[pool];
            let Some(sentinel) = &p.sentinel else {
                continue;
            };
            if p.retired {
                continue;
            }
            let sentinels: Vec<usize> = (0..p.spec.servers.len())
                .filter(|&s| p.spec.servers[s].role == Role::Sentinel)
                .collect();
            if sentinels.is_empty() {
                continue;
            }
            if sentinel.next_refresh > now {
                continue;
            }
            let lost = sentinel
                .subscriber
                .is_none_or(|b| !self.backends[b as usize].is_proxy_subscriber(pool));
            if lost {
                self.sentinel_subscribe(pool, &sentinels, now);
            }
            let sentinel = self.pools[pool].sentinel.as_mut().expect("checked");
            // Ask the sentinels in turn, so one that is down costs one
            // round.
            sentinel.asked = sentinel.asked.wrapping_add(1) % sentinels.len();
            sentinel.last_asked = Some(now);
            sentinel.next_refresh = now + REFRESH_EVERY;
            let server = sentinels[sentinel.asked];
            let masters = sentinel.masters.clone();
            for (shard, master) in masters.iter().enumerate() {
                let name = master.as_bytes();
                self.sentinel_ask(pool, server, shard, MASTER_QUERY, now, |out| {
                    resp::write_bulk_array(
                        out,
                        [&b"SENTINEL"[..], b"GET-MASTER-ADDR-BY-NAME", name],
                    )
                });
                self.sentinel_ask(pool, server, shard, REPLICAS_QUERY, now, |out| {
                    resp::write_bulk_array(out, [&b"SENTINEL"[..], b"REPLICAS", name])
                });
            }
        }
    }

    /// Opens a connection of its own to one of `sentinels` (the next in
    /// turn) subscribed to `+switch-master`. Tried at most once per
    /// refresh while the sentinels are down.
    fn sentinel_subscribe(&mut self, pool: usize, sentinels: &[usize], now: Micros) {
        let sentinel = self.pools[pool].sentinel.as_ref().expect("a sentinel pool");
        let server = sentinels[sentinel.asked.wrapping_add(1) % sentinels.len()];
        let b = self.new_backend(pool, server, false) as usize;
        self.backends[b].make_proxy_subscriber();
        self.backend_connect(b, now);
        resp::write_bulk_array(
            self.backends[b].output_tail(),
            [&b"SUBSCRIBE"[..], b"+switch-master"],
        );
        let at = internal(SUBSCRIBE, 0);
        self.queue_on(b, at, Expect::RESP, now);
        let sentinel = self.pools[pool].sentinel.as_mut().expect("a sentinel pool");
        sentinel.subscriber = Some(b as u32);
    }

    fn sentinel_ask(
        &mut self,
        pool: usize,
        server: usize,
        shard: usize,
        kind: u16,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let b = self.pick_backend(pool, server, false, 0, now);
        write(self.backends[b].output_tail());
        self.queue_on(b, internal(kind, shard), Expect::RESP, now);
    }

    /// A message on a sentinel subscription: a `+switch-master` applies
    /// at once (and a refresh confirms it).
    pub(super) fn sentinel_message(&mut self, b: usize, frame: &[u8]) {
        let (pool, _) = self.backend_place(b);
        // The confirmation of SUBSCRIBE leaves nothing waiting.
        self.backends[b].forget_inflight();
        let Some((3, at)) = array_header(frame, 0) else {
            return;
        };
        let Some((b"message", at)) = bulk(frame, at) else {
            return;
        };
        let Some((b"+switch-master", at)) = bulk(frame, at) else {
            return;
        };
        let Some((text, _)) = bulk(frame, at) else {
            return;
        };
        // `<master> <old ip> <old port> <new ip> <new port>`
        let words: Vec<&[u8]> = text.split(|&c| c == b' ').collect();
        let [master, _, _, ip, port] = words[..] else {
            return;
        };
        let Some(addr) = address(ip, port) else {
            return;
        };
        let Some(sentinel) = self.pools[pool].sentinel.as_mut() else {
            return;
        };
        sentinel.make_stale();
        if let Some(shard) = sentinel.masters.iter().position(|m| m.as_bytes() == master) {
            self.set_primary(pool, shard, addr);
        }
    }

    /// The reply to a question to a sentinel, from backend `b`.
    pub(super) fn sentinel_reply(&mut self, b: usize, at: SlotRef, reply: &[u8]) {
        let (pool, _) = self.backend_place(b);
        let shard = at.seq as usize;
        let known = self.pools[pool]
            .sentinel
            .as_ref()
            .is_some_and(|s| shard < s.masters.len());
        if !known {
            return; // asked before a reconfiguration changed the masters
        }
        match at.piece {
            MASTER_QUERY => {
                if let Some(addr) = master_addr(reply) {
                    self.set_primary(pool, shard, addr);
                }
            }
            REPLICAS_QUERY => {
                if let Some(replicas) = replicas_up(reply) {
                    self.set_replicas(pool, shard, &replicas);
                }
            }
            _ => {}
        }
    }

    /// Shard `shard` of `pool` is served by `addr` now.
    fn set_primary(&mut self, pool: usize, shard: usize, addr: SocketAddrV4) {
        let p = &mut self.pools[pool];
        if p.spec.servers[shard].addr == addr {
            return;
        }
        p.spec.servers[shard].addr = addr;
        p.spec.servers[shard].name = addr.to_string();
        let old = std::mem::take(&mut p.conns[shard]);
        // Counters stay; failures and ejection were the old primary's.
        let health = &mut p.health[shard];
        health.failures = 0;
        health.ejected_until = None;
        p.live[shard] = health.is_live();
        if let Some(sentinel) = p.sentinel.as_mut() {
            sentinel.switches += 1;
        }
        for &b in old.plain.iter().chain(&old.resp3).chain(&old.tracking) {
            self.backend_retire(b as usize);
        }
        // Cached values of the old primary go with its tracking.
        let p = &mut self.pools[pool];
        if let Some(hot) = p.hot.as_mut() {
            hot.lost(shard, &mut p.counters);
        }
        let conns = self.server_conns(pool, shard);
        self.pools[pool].conns[shard] = conns;
        if self.pools[pool].spec.preconnect {
            let plain = self.pools[pool].conns[shard].plain.clone();
            for b in plain {
                self.backend_connect(b as usize, self.now);
            }
        }
    }

    /// The replicas of `shard` of `pool` Sentinel reports up are
    /// `replicas`: new ones join, missing ones are left out.
    fn set_replicas(&mut self, pool: usize, shard: usize, replicas: &[SocketAddrV4]) {
        let p = &mut self.pools[pool];
        let primary = p.spec.servers[shard].addr;
        for s in 0..p.spec.servers.len() {
            if p.spec.servers[s].role == Role::Replica(shard) {
                let addr = p.spec.servers[s].addr;
                let health = &mut p.health[s];
                health.absent = !replicas.contains(&addr) || addr == primary;
                p.live[s] = health.is_live();
            }
        }
        for &addr in replicas {
            let p = &self.pools[pool];
            let known = p
                .spec
                .servers
                .iter()
                .any(|s| s.addr == addr && s.role == Role::Replica(shard));
            if known || addr == primary || p.spec.servers.len() >= MAX_SERVERS {
                continue;
            }
            let name = format!("{}/replica {addr}", p.sentinel_master(shard));
            self.add_server(pool, addr, name, Role::Replica(shard));
        }
    }
}

impl super::Pool {
    /// The master name of `shard` of a sentinel pool.
    fn sentinel_master(&self, shard: usize) -> &str {
        self.sentinel
            .as_ref()
            .and_then(|s| s.masters.get(shard))
            .map_or("", String::as_str)
    }
}

/// Names an internal request of kind `kind` about `shard`.
fn internal(kind: u16, shard: usize) -> SlotRef {
    SlotRef {
        session: INTERNAL,
        generation: 0,
        seq: shard as u64,
        piece: kind,
    }
}

fn address(ip: &[u8], port: &[u8]) -> Option<SocketAddrV4> {
    let ip: Ipv4Addr = std::str::from_utf8(ip).ok()?.parse().ok()?;
    let port: u16 = std::str::from_utf8(port).ok()?.parse().ok()?;
    Some(SocketAddrV4::new(ip, port))
}

/// `SENTINEL GET-MASTER-ADDR-BY-NAME`'s reply: `*2 ip port`; `None` for
/// a master Sentinel does not know (a null array), or a host that is no
/// IPv4 address.
fn master_addr(reply: &[u8]) -> Option<SocketAddrV4> {
    let (2, at) = array_header(reply, 0)? else {
        return None;
    };
    let (ip, at) = bulk(reply, at)?;
    let (port, _) = bulk(reply, at)?;
    address(ip, port)
}

/// The replicas in a `SENTINEL REPLICAS` reply (RESP2: an array of flat
/// field/value arrays) that are up: not flagged down or disconnected,
/// their link to the primary up.
fn replicas_up(reply: &[u8]) -> Option<Vec<SocketAddrV4>> {
    let (count, mut at) = array_header(reply, 0)?;
    let mut up = Vec::with_capacity(count);
    for _ in 0..count {
        let (fields, mut next) = array_header(reply, at)?;
        let (mut ip, mut port, mut flags, mut link) = (None, None, None, None);
        for _ in 0..fields / 2 {
            let (field, after) = bulk(reply, next)?;
            let (value, after) = bulk(reply, after)?;
            match field {
                b"ip" => ip = Some(value),
                b"port" => port = Some(value),
                b"flags" => flags = Some(value),
                b"master-link-status" => link = Some(value),
                _ => {}
            }
            next = after;
        }
        at = next;
        let down = flags.is_none_or(|f| {
            f.split(|&c| c == b',')
                .any(|flag| matches!(flag, b"s_down" | b"o_down" | b"disconnected"))
        });
        if down || link != Some(&b"ok"[..]) {
            continue;
        }
        if let Some(addr) = address(ip?, port?) {
            up.push(addr);
        }
    }
    Some(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulks(words: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        resp::write_bulk_array(&mut out, words.iter().map(|w| w.as_bytes()));
        out
    }

    #[test]
    fn a_masters_address_is_read() {
        assert_eq!(
            master_addr(&bulks(&["198.18.0.1", "7001"])),
            Some("198.18.0.1:7001".parse().unwrap())
        );
        assert_eq!(master_addr(b"*-1\r\n"), None);
        assert_eq!(master_addr(&bulks(&["redis.local", "7001"])), None);
    }

    #[test]
    fn replicas_that_are_up_are_read() {
        let replica = |port: &str, flags: &str, link: &str| {
            bulks(&[
                "name",
                "x",
                "ip",
                "198.18.0.1",
                "port",
                port,
                "runid",
                "abc",
                "flags",
                flags,
                "master-link-status",
                link,
            ])
        };
        let mut reply = b"*4\r\n".to_vec();
        reply.extend(replica("7101", "slave", "ok"));
        reply.extend(replica("7102", "s_down,slave,disconnected", "err"));
        reply.extend(replica("7103", "slave", "err"));
        reply.extend(replica("7104", "slave", "ok"));
        assert_eq!(
            replicas_up(&reply).unwrap(),
            [
                "198.18.0.1:7101".parse::<SocketAddrV4>().unwrap(),
                "198.18.0.1:7104".parse().unwrap()
            ]
        );
        assert_eq!(replicas_up(b"*0\r\n").unwrap(), []);
    }
}
