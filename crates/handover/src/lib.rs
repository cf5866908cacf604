//! What a dataplane hands its successor so that client TCP connections
//! survive a restart, as bytes and arithmetic only (no sockets, no clock,
//! no smoltcp):
//!
//! - [`segment`]: a read-only view of an Ethernet/IPv4/TCP frame's header
//!   and the handshake options the restore must repeat;
//! - [`xlate`]: the per-flow sequence translation of a restored
//!   connection (our sequence numbers shift by Δ; the peer's do not), with
//!   incremental checksums;
//! - [`record`]: the versioned per-connection record, a typed view over
//!   128 bytes.
//!
//! The design, and why the peer never notices, is in
//! `docs/architecture.md` ("Hot handover").

pub mod record;
pub mod segment;
pub mod xlate;
