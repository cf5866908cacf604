//! ferrox's poll-mode dataplane.
//!
//! What it owns: DPDK (EAL, ports, queues, mbufs), the TCP stack on top of
//! the queues (smoltcp, driven through its public API with our own flow
//! table, over a [`net::link::Link`] that is a DPDK queue in service and
//! memory in tests), and the per-core loop that runs services on the
//! connections. What it never does: talk to operators (the control
//! process does), parse a configuration on a core (one thread checks each
//! configuration once and publishes it), or touch a PCI device that is
//! not allow-listed.
//!
//! ```text
//!  rx_burst ─> flow::classify ─> flow table ─> one connection's SocketSet
//!     │                                          │  Interface::poll_ingress_single
//!     │                                          ▼
//!     │                               service (sans-IO bytes in/out)
//!     │                                          │  Interface::poll_egress
//!     ▼                                          ▼
//!  ARP/ICMP/RST (no connection)       TxToken::consume: mbuf ─> tx burst
//! ```
//!
//! `unsafe` lives only in [`ffi`] (and the `dpdk-sys` crate below it), in
//! the socket buffers of `net::memory`, and in the counting allocator of
//! [`alloc_count`].

#[allow(unsafe_code)]
pub mod alloc_count;
pub mod eal;
#[allow(unsafe_code)]
pub mod ffi;
pub mod handover;
pub mod lcore;
pub mod net;
pub mod port;
pub mod service;
pub mod signals;
