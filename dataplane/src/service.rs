//! Applications the dataplane runs on its connections.
//!
//! [`proxy`] is the product: the sans-IO proxy engine of `ferrox-proxy`
//! behind the stack's [`App`] interface. [`Service`] is the smaller shape
//! for a request/response service that needs no other connection (the
//! echo service that proves the dataplane); [`PerConnection`] runs one on
//! the stack.

use ferrox_engine::Output;

use ferrox_engine::{Action, Handle, Tag};

use crate::lcore::CoreService;
use crate::net::stack::{App, Carry};

pub mod proxy;
pub mod resp_echo;

/// What a service tells the stack after handling input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep the connection open.
    Continue,
    /// Send what was written, then close the connection gracefully.
    Close,
}

/// A request/response service on one TCP connection.
pub trait Service {
    /// Per-connection state, created when a connection is accepted.
    type Conn: Default;

    /// Consumes complete requests from the front of `input` and appends the
    /// replies to `output`. Returns how many input bytes were used (an
    /// incomplete request stays for the next call) and whether to go on.
    fn on_input(
        &mut self,
        conn: &mut Self::Conn,
        input: &[u8],
        output: &mut Vec<u8>,
    ) -> (usize, Verdict);
}

/// Runs a [`Service`] as an [`App`]: each accepted connection gets its own
/// state and output buffer; nothing else happens. A connection whose
/// unsent output reaches [`MAX_UNSENT`] is not read until it drains.
#[derive(Debug, Default)]
pub struct PerConnection<S: Service> {
    service: S,
    conns: Vec<Option<Open<S::Conn>>>,
    free: Vec<u32>,
    actions: Vec<Action>,
    /// Connections closed for a malformed request.
    pub protocol_errors: u64,
}

/// Unsent output at which a [`PerConnection`] stops reading a connection.
pub const MAX_UNSENT: usize = 256 << 10;

/// One open connection of a [`PerConnection`].
#[derive(Debug)]
struct Open<C> {
    handle: Handle,
    state: C,
    output: Output,
}

impl<S: Service> PerConnection<S> {
    pub fn new(service: S) -> Self {
        PerConnection {
            service,
            conns: Vec::new(),
            free: Vec::new(),
            actions: Vec::new(),
            protocol_errors: 0,
        }
    }

    fn conn(&mut self, tag: Tag) -> &mut Open<S::Conn> {
        self.conns[tag.raw() as usize]
            .as_mut()
            .expect("the stack names live connections")
    }
}

impl<S: Service> App for PerConnection<S> {
    fn accept(&mut self, handle: Handle, _local_port: u16) -> Option<Tag> {
        let state = Some(Open {
            handle,
            state: S::Conn::default(),
            output: Output::default(),
        });
        let index = match self.free.pop() {
            Some(index) => {
                self.conns[index as usize] = state;
                index
            }
            None => {
                self.conns.push(state);
                (self.conns.len() - 1) as u32
            }
        };
        Some(Tag::from_raw(index))
    }

    fn bind(&mut self, _tag: Tag, _handle: Handle) {}

    fn handle_input(&mut self, tag: Tag, data: &[u8], _now: u64) -> usize {
        let open = self.conns[tag.raw() as usize]
            .as_mut()
            .expect("the stack names live connections");
        let (used, verdict) = self
            .service
            .on_input(&mut open.state, data, open.output.tail());
        if verdict == Verdict::Close {
            self.protocol_errors += 1;
            self.actions.push(Action::Close(open.handle));
            return data.len();
        }
        used
    }

    fn wants_input(&self, tag: Tag) -> bool {
        self.conns[tag.raw() as usize]
            .as_ref()
            .is_some_and(|open| open.output.len() < MAX_UNSENT)
    }

    fn output(&mut self, tag: Tag) -> &[u8] {
        self.conn(tag).output.pending()
    }

    fn output_acked(&mut self, tag: Tag, n: usize) {
        self.conn(tag).output.consume(n);
    }

    fn handle_connected(&mut self, _tag: Tag, _now: u64) {}

    fn handle_peer_closed(&mut self, tag: Tag, _now: u64) {
        let handle = self.conn(tag).handle;
        self.actions.push(Action::Close(handle));
    }

    fn handle_gone(&mut self, tag: Tag, _handle: Handle, _now: u64) {
        self.conns[tag.raw() as usize] = None;
        self.free.push(tag.raw());
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop()
    }

    fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    fn poll_timeout(&self) -> Option<u64> {
        None
    }

    fn handle_timeout(&mut self, _now: u64) {}

    fn export(&mut self, tag: Tag) -> Option<Carry> {
        let open = self.conns.get_mut(tag.raw() as usize)?.take()?;
        self.free.push(tag.raw());
        drop(open);
        Some(Carry::default())
    }

    fn import(&mut self, handle: Handle, _carry: Carry, output: &[u8]) -> Option<Tag> {
        let tag = self.accept(handle, 0)?;
        self.conn(tag).output.tail().extend_from_slice(output);
        Some(tag)
    }
}

/// A per-connection service has no configuration to take; it counts the
/// connections it closed for a malformed request as errors.
impl<S: Service> CoreService for PerConnection<S> {
    fn publish(&mut self, record: &ferrox_block::CoreRecord) {
        record.set(ferrox_block::Counter::Errors, self.protocol_errors);
    }
}
