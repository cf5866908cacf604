//! ferrox's protocol core, free of I/O.
//!
//! What it owns: turning bytes into requests and finding where replies end,
//! under configured limits (`resp`, `memcache`); placing keys on servers
//! exactly as twemproxy does (`route`); reading and validating
//! configuration (`config`). What it never does: sockets, DPDK, clocks,
//! allocation per request (callers pass reusable buffers). The dataplane
//! drives it over smoltcp; the control process uses it to validate; tests
//! drive it with literal wire bytes.

pub mod config;
pub mod memcache;
pub mod resp;
pub mod route;
