//! What the engine does for a hot handover: stop taking requests and let
//! those in flight finish (drain), then hand each session's state to the
//! runtime (export) and take it back in a successor (import).
//!
//! Requests are never carried over: a drained session has no slot open,
//! and a request still in flight when the runtime gives up waiting fails
//! with the usual error once its backend connection is reset. Replaying
//! it could run a non-idempotent command (INCR) twice.

use super::{Engine, Handle, Tag};

/// A session's state across a handover (its output travels separately,
/// as the bytes the peer has not acknowledged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// Its pool's index and name.
    pub pool: usize,
    pub resp3: bool,
    pub authed: bool,
    /// The pool's user it authenticated as, by index (`None`: default).
    pub user: Option<u16>,
    /// The peer closed its side; the session closes once its output is
    /// sent.
    pub peer_closed: bool,
    /// The session was closing.
    pub closing: bool,
}

impl Engine {
    /// Stops taking new requests on every session (input stays in the
    /// sockets, whose windows close); requests in flight go on. New
    /// connections are still accepted.
    pub fn begin_drain(&mut self) {
        self.draining = true;
    }

    /// Takes requests again (a handover was called off).
    pub fn end_drain(&mut self) {
        self.draining = false;
        for index in 0..self.sessions.len() {
            if self.sessions[index].is_live() {
                self.session_wants_send(index);
            }
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether no session has a request in flight.
    pub fn drained(&self) -> bool {
        self.sessions.iter().all(|s| !s.is_live() || s.is_idle())
    }

    /// Hands over session `tag`: its state, and it is freed (the runtime
    /// does not report it gone). `None` for a tag that is not a live
    /// session.
    pub fn export_session(&mut self, tag: Tag) -> Option<Carried> {
        if tag.is_backend() {
            return None;
        }
        let session = self.sessions.get(tag.index()).filter(|s| s.is_live())?;
        let carried = session.carried();
        self.session_free(tag.index());
        Some(carried)
    }

    /// Takes over a session exported by a predecessor, on the runtime's
    /// connection `handle`, owing `output` to the peer. `None` when its
    /// pool is gone (the runtime resets the connection). A session of a
    /// pool since retired is closed once its output is sent.
    pub fn import_session(
        &mut self,
        handle: Handle,
        carried: Carried,
        output: &[u8],
    ) -> Option<Tag> {
        let pool = self.pools.get_mut(carried.pool)?;
        pool.sessions += 1;
        let retired = pool.retired;
        let index = match self.free_sessions.pop() {
            Some(i) => i as usize,
            None => {
                self.sessions.push(Default::default());
                self.sessions.len() - 1
            }
        };
        let session = &mut self.sessions[index];
        session.import(carried, handle, output);
        if carried.closing {
            // The runtime closes it once the output is sent, as before.
            self.actions.push_back(super::Action::Close(handle));
        } else if retired || carried.peer_closed {
            self.session_peer_closed(index);
        }
        self.session_wants_send(index);
        Some(Tag::session(index as u32))
    }
}
