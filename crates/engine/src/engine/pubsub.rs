//! Pub/sub through the proxy. A channel lives on the server its name
//! hashes to, as a key does (`PUBLISH` is routed like a single-key
//! command); a subscribing session gets a connection of its own to each
//! server it subscribes on (`SUBSCRIBE` to the channel's, `PSUBSCRIBE`
//! to every server that takes keys, since a pattern may match a channel
//! on any), and what those connections push (`message`, `pmessage`) goes
//! to the client as it comes. The proxy keeps the session's channels and
//! patterns, so that the counts in the (un)subscribe confirmations are the
//! session's, not one server connection's, and a pattern's confirmation
//! from every server reaches the client once.
//!
//! Sharded pub/sub (`SSUBSCRIBE`, `SUNSUBSCRIBE`, `SPUBLISH`, Redis 7) is
//! routed the same way by the shard channel's name, and its counts are
//! the shard channels', as Redis keeps them apart. In a Redis Cluster pool
//! a pattern is subscribed on one node only: the cluster passes every
//! `PUBLISH` to all of its nodes, so one node sees every message (on
//! every node, each would come several times).

use std::collections::BTreeSet;

use ferrox_proto::resp;

use super::pipeline::{Combine, Expect, Shape, Suppress};
use super::{Engine, Micros};

/// A session's subscriptions.
#[derive(Debug, Default)]
pub(super) struct PubSub {
    /// Its connection to each server it subscribes on: (server, backend).
    pub conns: Vec<(u32, u32)>,
    pub channels: BTreeSet<Vec<u8>>,
    pub patterns: BTreeSet<Vec<u8>>,
    pub shard_channels: BTreeSet<Vec<u8>>,
    /// Confirmations still to come.
    pub pending: u32,
}

impl PubSub {
    /// Whether the session is in subscribed mode (only the pub/sub
    /// commands, `PING` and `QUIT` are taken).
    pub fn active(&self) -> bool {
        !self.channels.is_empty()
            || !self.patterns.is_empty()
            || !self.shard_channels.is_empty()
            || self.pending > 0
    }

    /// The count a confirmation of `kind` carries: channels and patterns
    /// together, shard channels apart.
    fn count(&self, kind: Kind) -> usize {
        match kind {
            Kind::Channel | Kind::Pattern => self.channels.len() + self.patterns.len(),
            Kind::Shard => self.shard_channels.len(),
        }
    }

    fn names(&mut self, kind: Kind) -> &mut BTreeSet<Vec<u8>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard_channels,
        }
    }
}

/// What a (un)subscription is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Channel,
    Pattern,
    Shard,
}

impl Kind {
    /// The commands, and the kinds of their confirmations.
    fn subscribe(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Kind::Channel => (b"SUBSCRIBE", b"subscribe"),
            Kind::Pattern => (b"PSUBSCRIBE", b"psubscribe"),
            Kind::Shard => (b"SSUBSCRIBE", b"ssubscribe"),
        }
    }

    fn unsubscribe(self) -> (&'static [u8], &'static [u8]) {
        match self {
            Kind::Channel => (b"UNSUBSCRIBE", b"unsubscribe"),
            Kind::Pattern => (b"PUNSUBSCRIBE", b"punsubscribe"),
            Kind::Shard => (b"SUNSUBSCRIBE", b"sunsubscribe"),
        }
    }
}

/// A pub/sub frame a server pushes: `[kind, name, count-or-payload, ...]`
/// as RESP2 array or RESP3 push. Returns the kind and, for confirmations,
/// the name (`None` for a null one).
fn frame_kind(frame: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let rest = match frame.first()? {
        b'*' | b'>' => &frame[frame.iter().position(|&b| b == b'\n')? + 1..],
        _ => return None,
    };
    /// A bulk string (or a null) at the start of `at`, and its length.
    fn bulk(at: &[u8]) -> Option<(Option<&[u8]>, usize)> {
        if at.starts_with(b"$-1\r\n") || at.starts_with(b"_\r\n") {
            return Some((None, if at[0] == b'_' { 3 } else { 5 }));
        }
        let body = at.strip_prefix(b"$")?;
        let end = body.iter().position(|&b| b == b'\r')?;
        let len: usize = std::str::from_utf8(&body[..end]).ok()?.parse().ok()?;
        let start = 1 + end + 2;
        Some((Some(at.get(start..start + len)?), start + len + 2))
    }
    let (kind, used) = bulk(rest)?;
    let (name, _) = bulk(rest.get(used..)?)?;
    Some((kind?, name))
}

impl Engine {
    /// `SUBSCRIBE ch...` or `PSUBSCRIBE pattern...`: each name to its
    /// server's subscriber connection (a pattern to every server's). The
    /// confirmations the client gets are made here, with the counts Redis
    /// would give one connection, and released once every server has
    /// confirmed (so a message published after the client saw one reaches
    /// it).
    pub(super) fn redis_subscribe(
        &mut self,
        index: usize,
        kind: Kind,
        names: &[&[u8]],
        now: Micros,
    ) {
        let pool = self.sessions[index].route().0;
        let mut live: Vec<usize> = self.pools[pool]
            .live
            .iter()
            .enumerate()
            .filter(|(_, &l)| l)
            .map(|(s, _)| s)
            .collect();
        if self.pools[pool].cluster.is_some() {
            // Every node sees every message: one is enough.
            live.truncate(1);
        }
        let resp3 = self.sessions[index].resp3;
        let (command, confirmation) = kind.subscribe();
        let mut frames = Vec::new();
        let mut sends: Vec<(usize, &[u8])> = Vec::new();
        for &name in names {
            let servers: Vec<usize> = if kind == Kind::Pattern {
                live.clone()
            } else {
                self.place(index, name).into_iter().collect()
            };
            if servers.is_empty() {
                frames.extend_from_slice(b"-ERR ferrox: no server is available\r\n");
                continue;
            }
            let state = self.sessions[index].pubsub.get_or_insert_default();
            state.names(kind).insert(name.to_vec());
            let count = state.count(kind);
            write_confirmation(&mut frames, resp3, confirmation, Some(name), count);
            sends.extend(servers.into_iter().map(|s| (s, name)));
        }
        let targets: Vec<(usize, &[u8])> = sends
            .into_iter()
            .map(|(server, name)| (self.subscriber(index, server, now), name))
            .collect();
        self.confirm_after(index, command, &targets, frames, now);
    }

    /// `UNSUBSCRIBE [ch...]` or `PUNSUBSCRIBE [pattern...]` (none: every
    /// one the session has), each to where it was subscribed; the
    /// confirmations as for [`Engine::redis_subscribe`].
    pub(super) fn redis_unsubscribe(
        &mut self,
        index: usize,
        kind: Kind,
        names: &[&[u8]],
        now: Micros,
    ) {
        let resp3 = self.sessions[index].resp3;
        let (command, confirmation) = kind.unsubscribe();
        let pattern = kind == Kind::Pattern;
        let state = self.sessions[index].pubsub.get_or_insert_default();
        let names: Vec<Vec<u8>> = if names.is_empty() {
            state.names(kind).iter().cloned().collect()
        } else {
            names.iter().map(|n| n.to_vec()).collect()
        };
        let mut frames = Vec::new();
        if names.is_empty() {
            // Nothing to leave: Redis answers with a null name.
            write_confirmation(&mut frames, resp3, confirmation, None, state.count(kind));
        }
        let conns = state.conns.clone();
        let mut targets: Vec<(usize, &[u8])> = Vec::new();
        for name in &names {
            let server = if pattern {
                None
            } else {
                self.place(index, name)
            };
            let state = self.sessions[index].pubsub.get_or_insert_default();
            if state.names(kind).remove(name) {
                targets.extend(
                    conns
                        .iter()
                        .filter(|&&(s, _)| pattern || Some(s as usize) == server)
                        .map(|&(_, b)| (b as usize, &name[..])),
                );
            }
            let count = state.count(kind);
            write_confirmation(&mut frames, resp3, confirmation, Some(name), count);
        }
        self.confirm_after(index, command, &targets, frames, now);
    }

    /// Sends `command name` on each of `targets` (subscriber connection,
    /// name) and answers the client `frames` once all of them confirmed.
    fn confirm_after(
        &mut self,
        index: usize,
        command: &[u8],
        targets: &[(usize, &[u8])],
        frames: Vec<u8>,
        now: Micros,
    ) {
        if targets.is_empty() {
            return self.local_reply(index, |out, _| out.extend_from_slice(&frames));
        }
        let seq = self.open_slot(index, Combine::Confirm, targets.len() as u16);
        self.set_slot_text(index, seq, &frames);
        self.sessions[index].pubsub.get_or_insert_default().pending += targets.len() as u32;
        for (piece, &(b, name)) in targets.iter().enumerate() {
            let at = self.slot_ref(index, seq, piece as u16);
            resp::write_bulk_array(self.backends[b].output_tail(), [command, name]);
            let expect = Expect {
                shape: Shape::Resp,
                suppress: Suppress::No,
            };
            self.queue_on(b, at, expect, now);
        }
    }

    /// Session `index`'s subscriber connection to `server`, opened (and
    /// remembered) the first time.
    fn subscriber(&mut self, index: usize, server: usize, now: Micros) -> usize {
        let state = self.sessions[index].pubsub.get_or_insert_default();
        if let Some(&(_, b)) = state.conns.iter().find(|&&(s, _)| s as usize == server) {
            return b as usize;
        }
        let b = self.open_dedicated(index, server, true, now);
        self.backends[b].make_subscriber();
        self.sessions[index]
            .pubsub
            .get_or_insert_default()
            .conns
            .push((server as u32, b as u32));
        b
    }

    /// A frame from a subscriber connection of session `index`: a message
    /// goes to the client at once (true); anything else answers the
    /// request in flight (false): a confirmation (its content is the
    /// proxy's, made at request time) or an error.
    pub(super) fn pubsub_frame(&mut self, index: usize, frame: &[u8]) -> bool {
        match frame_kind(frame) {
            Some((
                b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
                | b"sunsubscribe",
                _,
            )) => {
                let state = self.sessions[index].pubsub.get_or_insert_default();
                state.pending = state.pending.saturating_sub(1);
                false
            }
            // A message, or any other RESP3 push (the server's, unasked for).
            Some((b"message" | b"pmessage" | b"smessage", _)) => {
                self.session_push(index, frame);
                true
            }
            _ if frame.first() == Some(&b'>') => {
                self.session_push(index, frame);
                true
            }
            _ => false,
        }
    }
}

/// An (un)subscribe confirmation: `[kind, name, count]`.
fn write_confirmation(
    out: &mut Vec<u8>,
    resp3: bool,
    kind: &[u8],
    name: Option<&[u8]>,
    count: usize,
) {
    out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    resp::write_bulk(out, kind);
    match name {
        Some(name) => resp::write_bulk(out, name),
        None => resp::write_null(out, resp3),
    }
    resp::write_integer(out, count as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_told_apart() {
        assert_eq!(
            frame_kind(b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"),
            Some((&b"subscribe"[..], Some(&b"ch"[..])))
        );
        assert_eq!(
            frame_kind(b">3\r\n$11\r\nunsubscribe\r\n_\r\n:0\r\n"),
            Some((&b"unsubscribe"[..], None))
        );
        assert_eq!(
            frame_kind(b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"),
            Some((&b"message"[..], Some(&b"ch"[..])))
        );
        assert_eq!(frame_kind(b"+PONG\r\n"), None);
        let mut out = Vec::new();
        write_confirmation(&mut out, false, b"psubscribe", Some(b"n*"), 3);
        assert_eq!(out, b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:3\r\n");
    }
}
