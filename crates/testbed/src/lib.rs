//! The end-to-end tests' test bed, a dev-dependency of the two processes'
//! crates: network namespaces this test creates, a veth pair, real
//! `redis-server` backends and clients in them ([`netns`]), and a running
//! `ferrox-dataplane` on a DPDK virtual NIC there ([`dataplane`]), each
//! removed on every path (guards), failure included.
#![allow(clippy::disallowed_methods)] // test support waits for processes

pub mod dataplane;
pub mod netns;

pub use dataplane::*;
pub use netns::*;
