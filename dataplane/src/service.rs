//! Services the dataplane serves on its TCP connections, as sans-IO state
//! machines: bytes in, bytes out, no sockets and no clock.

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
