//! Client sessions: the pipeline of slots, and what is common to both
//! protocols (opening a slot, filling it, writing the ready prefix,
//! closing).

use std::collections::VecDeque;

use super::compression::Decode;
use super::pipeline::{Combine, Expect, Slot, SlotRef};
use super::{Action, Engine, Handle, Micros, Output, PoolSpec, Protocol};

mod memcache;
mod redis;

/// One client connection's state.
#[derive(Debug, Default)]
pub(super) struct Session {
    /// Bumped when the session is freed, so late replies to a former
    /// occupant are recognised and dropped.
    generation: u32,
    live: bool,
    handle: Handle,
    pool: usize,
    pub resp3: bool,
    authed: bool,
    /// The pool's user it authenticated as (an index into the pool's
    /// users); `None`: the default user, with every permission.
    pub user: Option<u16>,
    /// Closing: no more input is read; the engine waits for the runtime to
    /// report the connection gone.
    closing: bool,
    /// The peer sent FIN: close once every slot is written.
    peer_closed: bool,
    /// Closing after a protocol error (for the statistics).
    failed: bool,
    /// How far the incomplete memcached request at the front of the
    /// held-back input was read, so a long line is searched once.
    memcache_progress: ferrox_proto::memcache::Progress,
    /// Slot `seq` is `slots[seq - head]`.
    slots: VecDeque<Slot>,
    head: u64,
    output: Output,
    /// Reply bytes held in finished slots behind an unfinished one.
    held: usize,
    send_queued: bool,
    /// Input stopped for want of room (pipeline or output full); the
    /// runtime is woken when room is back.
    input_waits: bool,
    /// Its read of a hot key is in flight on the tracking connection: it
    /// takes no more requests until answered, since one sent on its usual
    /// connection could overtake that read (see the `hot` module).
    pub tracking_read: bool,
    /// Backend connections opened for its blocking commands and
    /// transactions (some may have answered and been freed since: their
    /// owner says).
    dedicated: Vec<u32>,
    /// Between `MULTI` and `EXEC`/`DISCARD`.
    pub tx: Option<Box<Transaction>>,
    /// Its subscriptions, once it subscribed.
    pub pubsub: Option<Box<super::pubsub::PubSub>>,
    /// The server of its watched keys and the connection holding the
    /// `WATCH`, until `EXEC`, `DISCARD` or `UNWATCH`.
    pub watch: Option<(usize, u32)>,
}

/// A transaction being queued: the proxy answers `+QUEUED` and sends it
/// whole (`MULTI`, the commands, `EXEC`) on a connection of its own at
/// `EXEC`, so no other session's request comes between.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// The server every key so far is on.
    pub server: Option<usize>,
    /// The commands, as written to the server.
    pub queued: Vec<u8>,
    /// In a pool with a hot-key cache: the keys its commands may write,
    /// each after its length (u16 LE), dropped from the caches at `EXEC`.
    pub written: Vec<u8>,
    pub count: usize,
    /// A command was refused while queueing: `EXEC` answers `EXECABORT`.
    pub failed: bool,
}

/// The most commands a transaction may queue (each is a piece of the
/// `EXEC` slot).
pub(super) const MAX_TRANSACTION: usize = 10_000;

impl Session {
    /// Its output for the runtime to send; what it shows now is no longer
    /// news, so only later output asks for another `Send`.
    pub fn show_output(&mut self) -> &[u8] {
        self.send_queued = false;
        self.output.show()
    }

    /// The peer acknowledged the first `n` bytes of its output.
    pub fn output_acked(&mut self, n: usize) {
        self.output.consume(n);
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Reply bytes it holds: written and not yet acknowledged, or
    /// finished behind an unfinished slot.
    pub fn buffered(&self) -> usize {
        self.output.len() + self.held
    }

    /// Gives back its buffers if it is idle (nothing in flight, nothing
    /// to send): what a burst grew beyond a small reply buffer.
    pub fn trim(&mut self) {
        if self.slots.is_empty() && self.output.is_empty() {
            self.output.shrink(super::output::KEEP_IDLE);
            self.slots.shrink_to_fit();
        }
    }

    /// Bytes of room it holds: output, and its slot queue (`slot` bytes a
    /// slot) with each slot's buffers.
    pub fn capacity(&self, slot: usize) -> usize {
        let slots: usize = self.slots.iter().map(Slot::capacity).sum();
        self.output.capacity() + self.slots.capacity() * slot + slots
    }

    /// Whether it authenticated (or its pool asks for nothing).
    pub fn is_authed(&self) -> bool {
        self.authed
    }

    /// Whether no request of it is in flight, nor a transaction queued, a
    /// subscription or a WATCH held (which a successor could not carry on).
    pub fn is_idle(&self) -> bool {
        self.slots.is_empty() && self.tx.is_none() && self.pubsub.is_none() && self.watch.is_none()
    }

    /// Its state for a successor.
    pub fn carried(&self) -> super::handover::Carried {
        super::handover::Carried {
            pool: self.pool,
            resp3: self.resp3,
            authed: self.authed,
            user: self.user,
            peer_closed: self.peer_closed,
            closing: self.closing,
        }
    }

    /// Opens it with a predecessor's state, on `handle`, owing `output`.
    pub fn import(&mut self, carried: super::handover::Carried, handle: Handle, output: &[u8]) {
        self.open(carried.pool, handle, carried.authed);
        self.resp3 = carried.resp3;
        self.user = carried.user;
        self.closing = carried.closing;
        self.output.tail().extend_from_slice(output);
    }

    /// Its user is gone, or its password changed: it is the default user
    /// again, and must authenticate when the pool asks for it.
    pub fn deauthenticate(&mut self, needs_auth: bool) {
        self.user = None;
        self.authed = !needs_auth;
    }

    /// Whether it is open on the runtime's connection `handle`.
    pub fn is_on(&self, handle: Handle) -> bool {
        self.live && self.handle == handle
    }

    /// Whether it is open in pool `pool`.
    pub fn is_in(&self, pool: usize) -> bool {
        self.live && self.pool == pool
    }

    /// Its pool, and whether it speaks RESP3 (its requests take the
    /// servers' RESP3 connections).
    pub fn route(&self) -> (usize, bool) {
        (self.pool, self.resp3)
    }

    /// The slot of `at`, if it is this session's (the same occupant) and
    /// still open.
    /// The slot opened last.
    pub fn newest_slot(&mut self) -> &mut Slot {
        self.slots.back_mut().expect("a slot was just opened")
    }

    pub fn slot(&self, at: SlotRef) -> Option<&Slot> {
        if !self.live || self.generation != at.generation || at.seq < self.head {
            return None;
        }
        self.slots.get((at.seq - self.head) as usize)
    }

    pub fn slot_mut(&mut self, at: SlotRef) -> Option<&mut Slot> {
        if !self.live || self.generation != at.generation || at.seq < self.head {
            return None;
        }
        self.slots.get_mut((at.seq - self.head) as usize)
    }

    /// How far the incremental parse of a long memcached line got.
    #[cfg(test)]
    pub fn memcache_searched(&self) -> usize {
        self.memcache_progress.searched()
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Drops the dedicated connections for which `still_ours` is false.
    pub fn forget_dedicated(&mut self, still_ours: impl Fn(u32) -> bool) {
        self.dedicated.retain(|&b| still_ours(b));
    }

    pub fn add_dedicated(&mut self, b: u32) {
        self.dedicated.push(b);
    }

    pub fn open(&mut self, pool: usize, handle: Handle, authed: bool) {
        debug_assert!(!self.live && self.slots.is_empty() && self.output.is_empty());
        self.live = true;
        self.handle = handle;
        self.pool = pool;
        self.resp3 = false;
        self.authed = authed;
        self.user = None;
        self.closing = false;
        self.peer_closed = false;
        self.failed = false;
        self.tx = None;
        self.pubsub = None;
        self.watch = None;
        self.memcache_progress = Default::default();
        self.send_queued = false;
        self.input_waits = false;
        self.tracking_read = false;
        self.held = 0;
    }
}

/// Where a key group's server is in its id: above the slot, which takes
/// 14 bits (Redis Cluster's 16384 slots; 0 outside a cluster pool).
pub(super) const GROUP_SERVER_SHIFT: u32 = 14;

/// The server of key group `id`.
pub(super) fn group_server(id: u32) -> usize {
    (id >> GROUP_SERVER_SHIFT) as usize
}

impl Engine {
    pub(super) fn session_input(&mut self, index: usize, input: &[u8], now: Micros) -> usize {
        let session = &self.sessions[index];
        if !session.live || session.closing {
            return input.len();
        }
        let pool = session.pool;
        let used = match self.pools[pool].spec.protocol {
            Protocol::Redis => self.redis_input(index, input, now),
            Protocol::Memcache => self.memcache_input(index, input, now),
        };
        self.pools[pool].counters.bytes_in += used as u64;
        if !self.has_room(index) {
            self.sessions[index].input_waits = true;
        }
        self.flush_ready(index);
        used
    }

    pub(super) fn slot_ref(&self, index: usize, seq: u64, piece: u16) -> SlotRef {
        SlotRef {
            session: index as u32,
            generation: self.sessions[index].generation,
            seq,
            piece,
        }
    }

    /// The configuration of the session's pool.
    fn session_spec(&self, index: usize) -> &PoolSpec {
        &self.pools[self.sessions[index].pool].spec
    }

    /// The server of `key` in the session's pool, or `None` when the pool
    /// has no live server.
    pub(super) fn place(&mut self, index: usize, key: &[u8]) -> Option<usize> {
        let pool = self.sessions[index].pool;
        if self.pools[pool].cluster.is_some() {
            return self.cluster_place(pool, key);
        }
        let random = self.random();
        self.session_spec(index).placement.server_for(key, random)
    }

    /// Sends slot piece `at` to `server`, or fails it at once when there
    /// is no server.
    pub(super) fn send_piece(
        &mut self,
        at: SlotRef,
        server: Option<usize>,
        expect: Expect,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let pool = self.sessions[at.session as usize].pool;
        match server {
            Some(server) => self.send_to_server(server, at, expect, now, write),
            None => {
                self.stats.errors += 1;
                self.pools[pool].counters.errors += 1;
                self.pools[pool].counters.forward_errors += 1;
                let error: &[u8] = match self.pools[pool].spec.protocol {
                    Protocol::Redis => b"-ERR ferrox: no server is available\r\n",
                    Protocol::Memcache => b"SERVER_ERROR ferrox: no server is available\r\n",
                };
                self.fill_slot(at, error);
            }
        }
    }

    /// Sends a request whole to `server` (or fails it at once when there
    /// is none), in a slot of its own whose reply passes as it is.
    pub(super) fn send_whole(
        &mut self,
        index: usize,
        server: Option<usize>,
        expect: Expect,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let seq = self.open_slot(index, Combine::Pass, 1);
        self.send_piece(self.slot_ref(index, seq, 0), server, expect, now, write);
    }

    /// [`Self::send_whole`] for a reply that needs `decode` first.
    pub(super) fn send_whole_decoded(
        &mut self,
        index: usize,
        server: Option<usize>,
        expect: Expect,
        decode: Decode,
        now: Micros,
        write: impl FnOnce(&mut Vec<u8>),
    ) {
        let seq = self.open_slot(index, Combine::Pass, 1);
        self.sessions[index].newest_slot().decode = decode;
        self.send_piece(self.slot_ref(index, seq, 0), server, expect, now, write);
    }

    /// Places the keys of a multi-key request and groups them by server
    /// (and, in a Redis Cluster pool, by slot, since a cluster node
    /// refuses a command whose keys are in different slots):
    /// `(group, key number)` sorted, one piece per group, the group's
    /// server in its high bits ([`group_server`]). `Err(server)`
    /// when splitting buys nothing and the request goes whole to
    /// `server`: every key is on one server, or some key has none
    /// (`None`, and the request fails). The groups are the scratch
    /// list's; [`Self::send_pieces`] gives them back.
    pub(super) fn group_keys<'k>(
        &mut self,
        index: usize,
        keys: impl Iterator<Item = &'k [u8]>,
    ) -> Result<Vec<(u32, u32)>, Option<usize>> {
        let mut groups = std::mem::take(&mut self.scratch.groups);
        groups.clear();
        let mut unplaced = false;
        let cluster = self.pools[self.sessions[index].pool].cluster.is_some();
        for (k, key) in keys.enumerate() {
            let slot = if cluster {
                u32::from(ferrox_route::cluster::key_slot(key))
            } else {
                0
            };
            match self.place(index, key) {
                Some(server) => {
                    groups.push(((server as u32) << GROUP_SERVER_SHIFT | slot, k as u32))
                }
                None => unplaced = true,
            }
        }
        groups.sort_unstable();
        let one_server = groups.first().map(|g| g.0) == groups.last().map(|g| g.0);
        if unplaced || one_server {
            let server = (!unplaced).then(|| group_server(groups[0].0));
            self.scratch.groups = groups;
            return Err(server);
        }
        Ok(groups)
    }

    /// Opens the slot of a request split into `groups` (from
    /// [`Self::group_keys`]): one piece per server, each key's piece
    /// recorded for the merge. Returns the slot's sequence number.
    pub(super) fn open_split_slot(
        &mut self,
        index: usize,
        combine: Combine,
        groups: &[(u32, u32)],
    ) -> u64 {
        self.stats.split_requests += 1;
        let pieces = groups.chunk_by(|a, b| a.0 == b.0).count() as u16;
        let pool = self.sessions[index].pool;
        self.pools[pool].counters.fragments += u64::from(pieces);
        let seq = self.open_slot(index, combine, pieces);
        let session = &mut self.sessions[index];
        let slot = &mut session.slots[(seq - session.head) as usize];
        slot.key_piece.resize(groups.len(), 0);
        for (piece, group) in groups.chunk_by(|a, b| a.0 == b.0).enumerate() {
            for &(_, key) in group {
                slot.key_piece[key as usize] = piece as u16;
            }
        }
        seq
    }

    /// Sends each server its piece of split request `seq`, written by
    /// `write` from the piece's group of keys, and gives the groups back
    /// to the scratch list.
    pub(super) fn send_pieces(
        &mut self,
        index: usize,
        seq: u64,
        groups: Vec<(u32, u32)>,
        expect: Expect,
        now: Micros,
        mut write: impl FnMut(&mut Vec<u8>, &[(u32, u32)]),
    ) {
        for (piece, group) in groups.chunk_by(|a, b| a.0 == b.0).enumerate() {
            let server = Some(group_server(group[0].0));
            let at = self.slot_ref(index, seq, piece as u16);
            self.send_piece(at, server, expect, now, |out| write(out, group));
        }
        self.scratch.groups = groups;
    }

    /// Whether session `index`'s pool has rate limits (else nothing need
    /// be worked out for them).
    pub(super) fn has_rate_limits(&self, index: usize) -> bool {
        !self.pools[self.sessions[index].pool].limiter.is_empty()
    }

    /// Counts a request of session `index` (`bytes` long, `command`, its
    /// first key `key`) against its pool's rate limits: `Err` names the
    /// rule that refused it (counted). When a rule counts bytes, the slot
    /// the request opens is tagged, so its reply is counted too
    /// ([`Engine::tag_rate`]).
    pub(super) fn rate_admit(
        &mut self,
        index: usize,
        command: Option<crate::command::CommandId>,
        key: Option<&[u8]>,
        bytes: usize,
    ) -> Result<(), String> {
        let session = &self.sessions[index];
        let pool = &mut self.pools[session.pool];
        if pool.limiter.is_empty() {
            return Ok(());
        }
        let who = super::ratelimit::Who {
            session: (index as u32, session.generation),
            user: session.user.map_or(0, |u| u as usize + 1),
            command: command.map(|c| c.index() as u16),
            key: key
                .filter(|_| pool.limiter.by_key())
                .map(super::ratelimit::key_hash),
        };
        match pool.limiter.admit(who, self.now, bytes as u64) {
            Ok(()) => {
                if pool.limiter.counts_bytes() {
                    self.scratch.rate_who = Some(who);
                }
                Ok(())
            }
            Err(rule) => {
                let rule = rule.to_owned();
                pool.counters.rate_limited += 1;
                Err(rule)
            }
        }
    }

    /// Tags slot `seq` of session `index` (if the request just handled
    /// opened it) with who the request was, for its reply's bytes.
    pub(super) fn tag_rate(&mut self, index: usize, seq: u64) {
        let Some(who) = self.scratch.rate_who.take() else {
            return;
        };
        let session = &mut self.sessions[index];
        if let Some(slot) = seq
            .checked_sub(session.head)
            .and_then(|at| session.slots.get_mut(at as usize))
        {
            slot.rate = Some(who);
        }
    }

    /// The sequence number the next slot of session `index` gets.
    pub(super) fn next_seq(&self, index: usize) -> u64 {
        let session = &self.sessions[index];
        session.head + session.slots.len() as u64
    }

    /// Queues a `Send` for a session, once per batch of output, or when
    /// its input waited for room and room is back (the runtime then
    /// offers the input it held back).
    pub(super) fn session_wants_send(&mut self, index: usize) {
        let wake = self.sessions[index].input_waits && self.has_room(index);
        let session = &mut self.sessions[index];
        if wake {
            session.input_waits = false;
        }
        if !session.send_queued && (session.output.has_news() || wake) {
            session.send_queued = true;
            self.actions.push_back(Action::Send(session.handle));
        }
    }

    /// Whether the session may take another request now: it is open, its
    /// pipeline has a free slot, and the replies it has not sent stay
    /// under the pool's `max_output`.
    pub(super) fn has_room(&self, index: usize) -> bool {
        let session = &self.sessions[index];
        let spec = &self.pools[session.pool].spec;
        !self.draining
            && !session.closing
            && !session.peer_closed
            && !session.tracking_read
            && session.slots.len() < spec.max_pipeline
            && session.output.len() + session.held < spec.max_output
    }

    /// Opens a slot at the tail of the session's pipeline and returns its
    /// sequence number.
    pub(super) fn open_slot(&mut self, index: usize, combine: Combine, pieces: u16) -> u64 {
        let mut slot = self.spare_slots.pop().unwrap_or_default();
        slot.reset();
        slot.combine = combine;
        slot.pending = pieces;
        slot.opened = self.now;
        let session = &mut self.sessions[index];
        session.slots.push_back(slot);
        self.open_slots += 1;
        self.stats.requests += 1;
        self.pools[session.pool].counters.requests += 1;
        session.head + session.slots.len() as u64 - 1
    }

    /// A slot answered by the proxy itself, with the reply `write` makes.
    pub(super) fn local_reply(&mut self, index: usize, write: impl FnOnce(&mut Vec<u8>, bool)) {
        let resp3 = self.sessions[index].resp3;
        self.open_slot(index, Combine::Pass, 0);
        let session = &mut self.sessions[index];
        if session.slots.len() == 1 {
            // Nothing ahead of it: straight to the output.
            let before = session.output.len();
            write(session.output.tail(), resp3);
            self.pools[session.pool].counters.bytes_out += (session.output.len() - before) as u64;
        } else {
            let slot = session.slots.back_mut().expect("just opened");
            let before = slot.reply.len();
            write(&mut slot.reply, resp3);
            session.held += slot.reply.len() - before;
        }
    }

    /// Like [`Engine::local_reply`], for an error the proxy makes.
    pub(super) fn local_error(&mut self, index: usize, write: impl FnOnce(&mut Vec<u8>, bool)) {
        self.stats.errors += 1;
        self.pools[self.sessions[index].pool].counters.errors += 1;
        self.local_reply(index, write);
    }

    /// Closes the session after a protocol error, once the error reply
    /// is written.
    pub(super) fn close_for_error(&mut self, index: usize) {
        self.sessions[index].failed = true;
        self.close_after_last(index);
    }

    /// Marks the newest slot to close the session once written.
    pub(super) fn close_after_last(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        if let Some(slot) = session.slots.back_mut() {
            slot.close_after = true;
        }
        session.closing = true;
    }

    /// Puts piece `piece` of slot `at` in place; `reply` is what the
    /// server (or the proxy, for a failure) answered.
    pub(super) fn fill_slot(&mut self, at: SlotRef, reply: &[u8]) {
        let (decode, fill) = self
            .sessions
            .get(at.session as usize)
            .and_then(|s| s.slot(at))
            .map_or((Decode::None, None), |slot| (slot.decode, slot.fill));
        if decode == Decode::None && fill.is_none() {
            return self.fill_slot_with(at, reply);
        }
        let index = at.session as usize;
        let p = self.sessions[index].pool;
        let pool = &mut self.pools[p];
        let mut decoded = std::mem::take(&mut self.scratch.decoded);
        decoded.clear();
        let mut bytes = reply;
        if let (Some(compression), true) = (pool.compression.as_mut(), decode != Decode::None) {
            compression.decode_reply(decode, reply, &mut decoded, &mut pool.counters);
            if decoded.capacity() > 1 << 20 {
                compression.shed();
            }
            bytes = &decoded;
        }
        if fill.is_some() && self.sessions[index].tracking_read {
            // Answered: the session's next requests may go.
            self.sessions[index].tracking_read = false;
            self.sessions[index].input_waits = true;
        }
        let pool = &mut self.pools[p];
        if let (Some((ticket, server)), Some(hot)) = (fill, pool.hot.as_mut()) {
            // A value, or a nil (kept as no bytes); never an error.
            let cached: Option<&[u8]> = match pool.spec.protocol {
                Protocol::Redis if bytes == b"_\r\n" || bytes == b"$-1\r\n" => Some(b""),
                Protocol::Redis => (bytes.first() == Some(&b'$')).then_some(bytes),
                Protocol::Memcache => (bytes.ends_with(b"END\r\n")
                    && (bytes.starts_with(b"VALUE ") || bytes == b"END\r\n"))
                    .then_some(bytes),
            };
            let slot = self.sessions[index].slot(at).expect("found above");
            if let Some(cached) = cached {
                hot.fill(ticket, &slot.keys, server as usize, cached, self.now);
            }
            // The tracking connection speaks RESP3: a RESP2 client's nil.
            if bytes == b"_\r\n" && !self.sessions[index].resp3 {
                bytes = b"$-1\r\n";
            }
        }
        self.fill_slot_with(at, bytes);
        if decoded.capacity() > 1 << 20 {
            decoded = Vec::new();
        }
        self.scratch.decoded = decoded;
    }

    pub(super) fn fill_slot_with(&mut self, at: SlotRef, reply: &[u8]) {
        let Some(session) = self.sessions.get_mut(at.session as usize) else {
            return;
        };
        if !session.live || session.generation != at.generation || at.seq < session.head {
            return;
        }
        let position = (at.seq - session.head) as usize;
        let Some(slot) = session.slots.get_mut(position) else {
            return;
        };
        if position == 0 && slot.combine == Combine::Pass && slot.reply.is_empty() {
            // The front slot's only piece: straight to the output.
            session.output.tail().extend_from_slice(reply);
            self.pools[session.pool].counters.bytes_out += reply.len() as u64;
            slot.out_bytes += reply.len();
            slot.pending -= 1;
        } else {
            slot.fill(at.piece, reply);
            session.held += reply.len();
        }
        if position == 0 && slot.pending == 0 {
            self.flush_ready(at.session as usize);
        }
    }

    /// Writes out every finished slot at the front of the pipeline.
    pub(super) fn flush_ready(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        let pool = &mut self.pools[session.pool];
        let limits = pool.spec.limits;
        let mut close = false;
        while session.slots.front().is_some_and(|s| s.pending == 0) {
            let mut slot = session.slots.pop_front().expect("checked");
            self.open_slots -= 1;
            session.head += 1;
            let before = session.output.len();
            slot.write(session.output.tail(), &limits, &mut self.scratch.cursors);
            let written = session.output.len() - before;
            if let Some(who) = slot.rate {
                pool.limiter
                    .charge(who, self.now, (written + slot.out_bytes) as u64);
            }
            let counters = &mut pool.counters;
            counters.bytes_out += written as u64;
            let took = self.now.saturating_sub(slot.opened);
            counters.latency[super::latency_bucket(took)] += 1;
            counters.latency_sum_us += took;
            close |= slot.close_after;
            session.held = session.held.saturating_sub(slot.reply.len());
            slot.shed();
            self.spare_slots.push(slot);
            if close {
                break;
            }
        }
        let drained = session.slots.is_empty();
        if drained {
            self.trim_later();
        }
        let session = &mut self.sessions[index];
        if close || (drained && session.peer_closed && !session.closing) {
            session.closing = true;
            self.actions.push_back(Action::Close(session.handle));
        } else {
            self.session_wants_send(index);
        }
    }

    /// Keeps `text` in slot `seq` of session `index` (for a combine that
    /// writes it: `Info`, `Confirm`).
    pub(super) fn set_slot_text(&mut self, index: usize, seq: u64, text: &[u8]) {
        let session = &mut self.sessions[index];
        let slot = &mut session.slots[(seq - session.head) as usize];
        slot.keys.clear();
        slot.keys.extend_from_slice(text);
    }

    /// Bytes a server pushed (a pub/sub message), for the client now:
    /// after whatever is already written or held, before replies still to
    /// come.
    pub(super) fn session_push(&mut self, index: usize, frame: &[u8]) {
        let session = &mut self.sessions[index];
        match session.slots.back_mut() {
            Some(slot) => {
                slot.reply.extend_from_slice(frame);
                session.held += frame.len();
            }
            None => session.output.tail().extend_from_slice(frame),
        }
        self.pools[session.pool].counters.bytes_out += frame.len() as u64;
        self.session_wants_send(index);
    }

    /// Closes the session once the replies it is owed are written (at
    /// once when it is owed none).
    pub(super) fn session_close_soon(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        if session.closing {
            return;
        }
        if session.slots.is_empty() {
            session.closing = true;
            self.actions.push_back(Action::Close(session.handle));
        } else {
            self.close_after_last(index);
        }
    }

    pub(super) fn session_peer_closed(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        if !session.live || session.closing {
            return;
        }
        session.peer_closed = true;
        if session.slots.is_empty() {
            session.closing = true;
            self.actions.push_back(Action::Close(session.handle));
        }
    }

    /// Frees a session whose connection is gone. Replies still owed to it
    /// are dropped when they arrive (the generation no longer matches).
    pub(super) fn session_free(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        if !session.live {
            return;
        }
        session.live = false;
        let owner = (index as u32, session.generation);
        let dedicated = std::mem::take(&mut session.dedicated);
        let counters = &mut self.pools[session.pool].counters;
        if session.peer_closed || (session.closing && !session.failed) {
            counters.client_eof += 1;
        } else {
            counters.client_err += 1;
        }
        session.generation = session.generation.wrapping_add(1);
        session.head += session.slots.len() as u64;
        self.open_slots -= session.slots.len();
        for mut slot in session.slots.drain(..) {
            slot.shed();
            self.spare_slots.push(slot);
        }
        session.output.clear();
        session.held = 0;
        session.tx = None;
        session.pubsub = None;
        session.watch = None;
        self.pools[session.pool].sessions -= 1;
        self.free_sessions.push(index as u32);
        self.close_dedicated(&dedicated, owner);
    }
}
