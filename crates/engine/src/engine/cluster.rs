//! Redis Cluster pools: the servers of the configuration are seed nodes;
//! the cluster's own slot map says which node serves each of its 16384
//! slots, and the pool's servers grow as the map names new nodes.
//!
//! Each core learns the map on its own, as a cluster client does: a
//! `CLUSTER SLOTS` sent by the proxy itself (an internal request: no
//! session waits for it) at start, every [`REFRESH_EVERY`], after a
//! `MOVED`, and after a connection to a node failed. Until the map is
//! known, a key goes to a seed, which redirects it.
//!
//! Redirections never reach the client (but see below). A request of a
//! cluster pool keeps
//! a copy of its bytes in its slot until answered; a `-MOVED slot addr`
//! reply sends the copy to `addr` (and updates the slot's entry at once),
//! a `-ASK slot addr` sends `ASKING` and the copy to `addr` on the same
//! connection, leaving the map as it is; a blocking command is sent again
//! on a new connection of its own. A request redirected
//! [`MAX_REDIRECTS`] times gets the last redirection as its reply, and so
//! do the requests that keep no copy: a transaction's commands (redirected
//! while queued, `EXEC` then answers `EXECABORT`) and `WATCH`, which run
//! on a connection of the session's own; they reach the right node
//! whenever the map is current, and are redirected only while a slot
//! moves.
//!
//! **Failover.** A request whose node could not be reached (its
//! connection failed while connecting, so the request never left) is
//! parked rather than failed: the failure makes the map stale, and each
//! refresh sends the parked requests to whichever node now serves the
//! slots their node served (the promoted replica), or tries their node
//! again (it may be back). A request parked longer than the pool's
//! timeout ([`PARK_DEFAULT`] without one) fails. So a primary's failure
//! costs only the requests that were in flight to it; the others wait for
//! the cluster's failover.
//!
//! The pool's `live` servers are the nodes that serve slots, so commands
//! sent to every server (`DBSIZE`, `SCAN`, `INFO keyspace`, ...) reach each
//! primary once. Multi-key commands are split per slot (see
//! `group_keys`), as a node refuses keys of several slots.

use std::net::{Ipv4Addr, SocketAddrV4};

use ferrox_proto::resp;
use ferrox_route::cluster::{key_slot, SLOTS};

use super::backend::InFlight;
use super::pipeline::{Expect, SlotRef};
use super::{Engine, Health, Micros, ServerSpec};

/// Periodic refresh of the slot map.
pub(super) const REFRESH_EVERY: Micros = 2_000_000;
/// How long a refresh may stay unanswered before another is sent.
const REFRESH_PATIENCE: Micros = 1_000_000;
/// The least time between two refreshes (while a node is down, each
/// refresh retries the requests parked for it, whose failure asks for the
/// next).
const REFRESH_GAP: Micros = 100_000;
/// Redirections one request may follow.
pub(super) const MAX_REDIRECTS: u8 = 5;
/// Most nodes a cluster pool learns (each takes connections on every core).
const MAX_NODES: usize = 250;

/// How long a parked request waits for a failover when the pool sets no
/// timeout.
const PARK_DEFAULT: Micros = 10_000_000;

/// No node is known for the slot.
const UNKNOWN: u16 = u16::MAX;

/// The session index of a request the proxy sends for itself.
pub(super) const INTERNAL: u32 = u32::MAX;
/// Internal requests, told apart by their piece number.
pub(super) const ASKING: u16 = 0;
pub(super) const SLOTS_QUERY: u16 = 1;

/// One cluster pool's view of its cluster.
#[derive(Debug)]
pub(super) struct Cluster {
    /// Slot → the pool's server serving it, or [`UNKNOWN`].
    slots: Box<[u16]>,
    /// A `CLUSTER SLOTS` reply was applied.
    known: bool,
    /// When the next refresh is due.
    next_refresh: Micros,
    /// When the refresh in flight was sent.
    asked_at: Option<Micros>,
    /// When the last refresh was sent.
    last_asked: Option<Micros>,
    /// The server asked last (servers are asked in turn).
    asked: usize,
    /// Requests waiting for a failover, in the order they were sent.
    parked: std::collections::VecDeque<Parked>,
    /// Counters, for the statistics.
    pub moved: u64,
    pub asks: u64,
    pub refreshes: u64,
}

impl Cluster {
    pub fn new() -> Cluster {
        Cluster {
            slots: vec![UNKNOWN; SLOTS].into_boxed_slice(),
            known: false,
            next_refresh: 0,
            asked_at: None,
            last_asked: None,
            asked: usize::MAX,
            parked: std::collections::VecDeque::new(),
            moved: 0,
            asks: 0,
            refreshes: 0,
        }
    }

    /// The server of `key`'s slot, if the map names one.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        match self.slots[key_slot(key) as usize] {
            UNKNOWN => None,
            s => Some(s as usize),
        }
    }

    /// Asks for a refresh as soon as possible.
    pub fn make_stale(&mut self, now: Micros) {
        self.next_refresh = self.next_refresh.min(now);
    }

    /// When [`Engine::handle_timeout`] should refresh this map, or fail
    /// a parked request.
    pub fn deadline(&self) -> Micros {
        let refresh = match self.asked_at {
            Some(at) => self.next_refresh.max(at + REFRESH_PATIENCE),
            None => self.next_refresh,
        }
        .max(self.last_asked.map_or(0, |at| at + REFRESH_GAP));
        let parked = self.parked.iter().map(|p| p.deadline).min();
        parked.map_or(refresh, |p| p.min(refresh))
    }

    /// Which servers serve slots (all of them while the map is unknown).
    fn owners(&self, servers: usize) -> Vec<bool> {
        if !self.known {
            return vec![true; servers];
        }
        let mut live = vec![false; servers];
        for &s in self.slots.iter() {
            if let Some(l) = live.get_mut(s as usize) {
                *l = true;
            }
        }
        live
    }
}

/// A request waiting for its node's slots to be served again.
#[derive(Debug, Clone, Copy)]
struct Parked {
    request: InFlight,
    /// The server it was for, and a slot that server served then (where
    /// to look for the node that took over).
    server: usize,
    slot: Option<u16>,
    deadline: Micros,
}

/// A redirection: `-MOVED slot host:port` or `-ASK slot host:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Redirect {
    pub ask: bool,
    pub slot: u16,
    /// `None` for the host: the node that sent it (Redis leaves the host
    /// out when it does not know its own).
    pub ip: Option<Ipv4Addr>,
    pub port: u16,
}

/// Reads a redirection reply; anything else (or a host that is no IPv4
/// address) is `None`.
pub(super) fn redirect(reply: &[u8]) -> Option<Redirect> {
    let line = reply.strip_suffix(b"\r\n")?;
    let (ask, rest) = if let Some(rest) = line.strip_prefix(b"-MOVED ") {
        (false, rest)
    } else {
        (true, line.strip_prefix(b"-ASK ")?)
    };
    let text = std::str::from_utf8(rest).ok()?;
    let (slot, addr) = text.split_once(' ')?;
    let slot: u16 = slot.parse().ok().filter(|&s| (s as usize) < SLOTS)?;
    let (host, port) = addr.rsplit_once(':')?;
    let ip = if host.is_empty() {
        None
    } else {
        Some(host.parse().ok()?)
    };
    Some(Redirect {
        ask,
        slot,
        ip,
        port: port.parse().ok()?,
    })
}

/// One slot range of a `CLUSTER SLOTS` reply and its primary's address
/// (`None` for the host: the node asked).
type Range = (u16, u16, Option<Ipv4Addr>, u16);

/// The slot ranges of a `CLUSTER SLOTS` reply (RESP2): an array of
/// `[start, end, [host, port, id, ...], replicas...]`.
fn slot_ranges(reply: &[u8]) -> Option<Vec<Range>> {
    let (count, mut at) = array_header(reply, 0)?;
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let (fields, next) = array_header(reply, at)?;
        let end_of_range = at + resp::reply_len(&reply[at..], &resp::Limits::default()).ok()??;
        if fields < 3 {
            return None;
        }
        let (start, next) = integer(reply, next)?;
        let (end, next) = integer(reply, next)?;
        let (node_fields, next) = array_header(reply, next)?;
        if node_fields < 2 {
            return None;
        }
        let (host, next) = bulk(reply, next)?;
        let (port, _) = integer(reply, next)?;
        let host = std::str::from_utf8(host).ok()?;
        let ip = match host {
            // No endpoint, or one it does not know: the node asked.
            "" | "?" => None,
            host => Some(host.parse().ok()?),
        };
        let slot = |n: i64| u16::try_from(n).ok().filter(|&s| (s as usize) < SLOTS);
        ranges.push((slot(start)?, slot(end)?, ip, u16::try_from(port).ok()?));
        at = end_of_range;
    }
    Some(ranges)
}

/// `*n\r\n` at `at`: n, and where the elements start.
pub(super) fn array_header(reply: &[u8], at: usize) -> Option<(usize, usize)> {
    let (line, next) = line(reply, at)?;
    let n = std::str::from_utf8(line.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    Some((n, next))
}

fn integer(reply: &[u8], at: usize) -> Option<(i64, usize)> {
    let (line, next) = line(reply, at)?;
    Some((
        std::str::from_utf8(line.strip_prefix(b":")?)
            .ok()?
            .parse()
            .ok()?,
        next,
    ))
}

pub(super) fn bulk(reply: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let (line, next) = line(reply, at)?;
    let len: usize = std::str::from_utf8(line.strip_prefix(b"$")?)
        .ok()?
        .parse()
        .ok()?;
    let data = reply.get(next..next + len)?;
    Some((data, next + len + 2))
}

/// The line at `at`, without its CRLF, and where the next one starts.
fn line(reply: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = reply.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

impl Engine {
    /// The server of `key` in cluster pool `pool`: the map's, else a seed
    /// (one serving slots, or the first).
    pub(super) fn cluster_place(&self, pool: usize, key: &[u8]) -> Option<usize> {
        let p = &self.pools[pool];
        let cluster = p.cluster.as_ref()?;
        cluster
            .server_for(key)
            .or_else(|| p.live.iter().position(|&l| l))
            .or((!p.spec.servers.is_empty()).then_some(0))
    }

    /// The pool's server at `addr`, added (with its connections) when the
    /// map names a node the pool does not have yet; `None` past
    /// [`MAX_NODES`].
    fn cluster_server(&mut self, pool: usize, addr: SocketAddrV4) -> Option<usize> {
        let p = &self.pools[pool];
        if let Some(s) = p.spec.servers.iter().position(|s| s.addr == addr) {
            return Some(s);
        }
        if p.spec.servers.len() >= MAX_NODES {
            return None;
        }
        let s = p.spec.servers.len();
        let p = &mut self.pools[pool];
        p.spec
            .servers
            .push(ServerSpec::shard(addr, addr.to_string()));
        p.health.push(Health::default());
        p.live.push(false);
        let conns = self.server_conns(pool, s);
        self.pools[pool].conns.push(conns);
        Some(s)
    }

    /// Sets the pool's live servers from its map.
    pub(super) fn cluster_set_live(&mut self, pool: usize) {
        let p = &mut self.pools[pool];
        if let Some(cluster) = &p.cluster {
            p.live = cluster.owners(p.spec.servers.len());
        }
    }

    /// Sends the refreshes that are due, and fails the parked requests
    /// whose time is up.
    pub(super) fn cluster_maintain(&mut self, now: Micros) {
        for pool in 0..self.pools.len() {
            self.cluster_expire(pool, now);
        }
        for pool in 0..self.pools.len() {
            let p = &self.pools[pool];
            let Some(cluster) = &p.cluster else { continue };
            if p.retired || cluster.deadline() > now || p.spec.servers.is_empty() {
                continue;
            }
            // Ask the servers in turn, so one that is down costs one try.
            let server = cluster.asked.wrapping_add(1) % p.spec.servers.len();
            let cluster = self.pools[pool].cluster.as_mut().expect("checked");
            cluster.asked = server;
            cluster.asked_at = Some(now);
            cluster.last_asked = Some(now);
            cluster.next_refresh = now + REFRESH_EVERY;
            cluster.refreshes += 1;
            self.send_internal(pool, server, SLOTS_QUERY, now, |out| {
                resp::write_bulk_array(out, [&b"CLUSTER"[..], b"SLOTS"])
            });
        }
    }

    /// Sends a request of the proxy's own to `server` of `pool` on one of
    /// its plain connections.
    fn send_internal(
        &mut self,
        pool: usize,
        server: usize,
        kind: u16,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let b = self.pick_backend(pool, server, false, 0, now);
        write(self.backends[b].output_tail());
        self.queue_on(b, internal(kind), Expect::RESP, now);
    }

    /// The reply to an internal request, from backend `b`.
    pub(super) fn internal_reply(&mut self, b: usize, at: SlotRef, reply: &[u8], now: Micros) {
        if at.piece >= super::sentinel::MASTER_QUERY {
            return self.sentinel_reply(b, at, reply);
        }
        if at.piece != SLOTS_QUERY {
            return; // ASKING's +OK
        }
        let (pool, server) = self.backend_place(b);
        let Some(ranges) = slot_ranges(reply) else {
            return; // an error (not a cluster node?): asked again later
        };
        let asked_ip = *self.pools[pool].spec.servers[server].addr.ip();
        let mut slots = vec![UNKNOWN; SLOTS];
        for (start, end, ip, port) in ranges {
            let addr = SocketAddrV4::new(ip.unwrap_or(asked_ip), port);
            let Some(node) = self.cluster_server(pool, addr) else {
                continue;
            };
            for slot in &mut slots[start as usize..=end as usize] {
                *slot = node as u16;
            }
        }
        let Some(cluster) = self.pools[pool].cluster.as_mut() else {
            return;
        };
        cluster.slots.copy_from_slice(&slots);
        cluster.known = true;
        cluster.asked_at = None;
        cluster.next_refresh = now + REFRESH_EVERY;
        self.cluster_set_live(pool);
        self.cluster_unpark(pool, now);
    }

    /// Parks `request`, which never reached `server` of cluster pool
    /// `pool`; false when it cannot wait (it kept no copy, or its session
    /// is gone), and fails.
    pub(super) fn cluster_park(&mut self, pool: usize, server: usize, request: &InFlight) -> bool {
        // Since the request arrived: parked again after a retry, it keeps
        // its first deadline.
        let Some(opened) = self
            .sessions
            .get_mut(request.at.session as usize)
            .and_then(|s| s.slot_mut(request.at))
            .filter(|slot| slot.sent_at.get(request.at.piece as usize).is_some())
            .map(|slot| slot.opened)
        else {
            return false;
        };
        let wait = self.pools[pool].spec.timeout.unwrap_or(PARK_DEFAULT);
        let Some(cluster) = self.pools[pool].cluster.as_mut() else {
            return false;
        };
        let slot = cluster.slots.iter().position(|&s| s as usize == server);
        cluster.parked.push_back(Parked {
            request: *request,
            server,
            slot: slot.map(|s| s as u16),
            deadline: opened + wait,
        });
        true
    }

    /// Sends every parked request of `pool` to the node that now serves
    /// the slots of the node it was for (the same node, if no other took
    /// them: it is tried again).
    fn cluster_unpark(&mut self, pool: usize, now: Micros) {
        let Some(cluster) = self.pools[pool].cluster.as_mut() else {
            return;
        };
        let parked = std::mem::take(&mut cluster.parked);
        for p in parked {
            let cluster = self.pools[pool].cluster.as_ref().expect("a cluster pool");
            let target = p
                .slot
                .and_then(|s| match cluster.slots[s as usize] {
                    UNKNOWN => None,
                    node => Some(node as usize),
                })
                .unwrap_or(p.server);
            let index = p.request.at.session as usize;
            let Some(sent) = self
                .sessions
                .get_mut(index)
                .and_then(|s| s.slot_mut(p.request.at))
                .and_then(|slot| {
                    let range = slot.sent_at.get(p.request.at.piece as usize)?.clone();
                    Some(slot.sent[range].to_vec())
                })
            else {
                continue; // its session went
            };
            let resp3 = self.sessions[index].resp3;
            let b = self.pick_backend(pool, target, resp3, index, now);
            self.backends[b].output_tail().extend_from_slice(&sent);
            self.queue_on(b, p.request.at, p.request.expect, now);
        }
    }

    /// Fails the parked requests of `pool` whose wait is over.
    fn cluster_expire(&mut self, pool: usize, now: Micros) {
        let Some(cluster) = self.pools[pool].cluster.as_mut() else {
            return;
        };
        if cluster.parked.iter().all(|p| p.deadline > now) {
            return;
        }
        let (expired, kept): (Vec<Parked>, Vec<Parked>) =
            cluster.parked.drain(..).partition(|p| p.deadline <= now);
        cluster.parked.extend(kept);
        for p in expired {
            self.stats.errors += 1;
            let counters = &mut self.pools[pool].counters;
            counters.errors += 1;
            counters.forward_errors += 1;
            let name = &self.pools[pool].spec.servers[p.server].name;
            let error = format!(
                "-ERR ferrox: server {name} failed and no node took over its slots in time\r\n"
            );
            self.fill_slot(p.request.at, error.as_bytes());
        }
    }

    /// Follows a redirection of the request `request` answered on backend
    /// `b` by `reply`. Returns whether it was followed (else the reply is
    /// the client's).
    pub(super) fn cluster_redirect(
        &mut self,
        b: usize,
        request: &InFlight,
        reply: &[u8],
        now: Micros,
    ) -> bool {
        let Some(redirect) = redirect(reply) else {
            return false;
        };
        let (pool, server) = self.backend_place(b);
        let Some(sent) = self.kept_request(request.at) else {
            // The session went, or its request kept no copy: nothing to
            // send again; the reply is dropped with the slot, if any.
            return false;
        };
        let ip = redirect
            .ip
            .unwrap_or(*self.pools[pool].spec.servers[server].addr.ip());
        let Some(node) = self.cluster_server(pool, SocketAddrV4::new(ip, redirect.port)) else {
            return false;
        };
        let cluster = self.pools[pool].cluster.as_mut().expect("a cluster pool");
        if redirect.ask {
            cluster.asks += 1;
        } else {
            cluster.moved += 1;
            cluster.slots[redirect.slot as usize] = node as u16;
            // The map moved: learn the rest of it.
            cluster.make_stale(now);
        }
        let index = request.at.session as usize;
        let b = if self.is_dedicated(b) {
            // A blocking command (the only kind on a connection of its
            // own that keeps a copy): on a new one of its own there.
            self.open_dedicated(index, node, true, now)
        } else {
            let resp3 = self.sessions[index].resp3;
            self.pick_backend(pool, node, resp3, index, now)
        };
        if redirect.ask {
            resp::write_bulk_array(self.backends[b].output_tail(), [&b"ASKING"[..]]);
            self.queue_on(b, internal(ASKING), Expect::RESP, now);
        }
        self.backends[b].output_tail().extend_from_slice(&sent);
        self.queue_on(b, request.at, request.expect, now);
        if !redirect.ask {
            // It serves a slot now.
            self.pools[pool].live[node] = true;
        }
        true
    }

    /// A copy of the bytes slot piece `at` was sent with, if its slot is
    /// still there and may be redirected once more (counting this one).
    pub(super) fn kept_request(&mut self, at: SlotRef) -> Option<Vec<u8>> {
        let session = self.sessions.get_mut(at.session as usize)?;
        let slot = session.slot_mut(at)?;
        if slot.redirects >= MAX_REDIRECTS {
            return None;
        }
        slot.redirects += 1;
        let range = slot.sent_at.get(at.piece as usize)?.clone();
        Some(slot.sent[range].to_vec())
    }
}

/// Names an internal request of kind `kind`.
fn internal(kind: u16) -> SlotRef {
    SlotRef {
        session: INTERNAL,
        generation: 0,
        seq: 0,
        piece: kind,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirections_are_read() {
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect {
                ask: false,
                slot: 3999,
                ip: Some(Ipv4Addr::new(127, 0, 0, 1)),
                port: 6381
            })
        );
        assert_eq!(
            redirect(b"-ASK 12182 :7002\r\n"),
            Some(Redirect {
                ask: true,
                slot: 12182,
                ip: None,
                port: 7002
            })
        );
        for other in [
            &b"-ERR MOVED 1 1.2.3.4:5\r\n"[..],
            b"-MOVED 16384 1.2.3.4:5\r\n",
            b"-MOVED 1 host.example:5\r\n",
            b"-MOVED 1 1.2.3.4\r\n",
            b"+OK\r\n",
        ] {
            assert_eq!(redirect(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_cluster_slots_reply_gives_each_range_its_primary() {
        // Two ranges; the second's primary has no known endpoint, and a
        // replica and Redis 7's metadata map follow the primaries.
        let reply = b"*2\r\n\
            *4\r\n:0\r\n:5460\r\n*4\r\n$8\r\n10.0.0.1\r\n:7000\r\n$3\r\nid1\r\n*0\r\n\
            *3\r\n$8\r\n10.0.0.2\r\n:7003\r\n$3\r\nid4\r\n\
            *3\r\n:5461\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$3\r\nid2\r\n";
        assert_eq!(
            slot_ranges(reply),
            Some(vec![
                (0, 5460, Some(Ipv4Addr::new(10, 0, 0, 1)), 7000),
                (5461, 16383, None, 7001),
            ])
        );
        assert_eq!(
            slot_ranges(b"-ERR This instance has cluster support disabled\r\n"),
            None
        );
        assert_eq!(
            slot_ranges(b"*1\r\n*3\r\n:0\r\n:99999\r\n*2\r\n$1\r\nx\r\n:1\r\n"),
            None
        );
        assert_eq!(slot_ranges(b"*0\r\n"), Some(vec![]));
    }
}
