//! ferrox's wire protocols, free of I/O.
//!
//! What it owns: turning bytes into requests and finding where replies end,
//! under configured limits, and writing the replies and requests the proxy
//! makes itself: RESP2/RESP3 ([`resp`]) and memcached's text protocol and
//! binary header ([`memcache`]). What it never does: sockets, DPDK, clocks,
//! allocation per request (callers pass reusable buffers). Key placement
//! is `ferrox-route`'s, configuration `ferrox-config`'s. The dataplane
//! drives it over smoltcp; tests drive it with literal wire bytes.

pub mod memcache;
pub mod resp;
