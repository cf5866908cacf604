//! ferrox's proxy engine, free of I/O.
//!
//! What it owns: client sessions (parse, authenticate, answer locally or
//! route), each session's in-order pipeline of request slots, the split of
//! multi-key commands per server and the merge of their replies, and every
//! backend connection's request FIFO, handshake, timeout and reconnect
//! backoff. What it never does: sockets, DPDK, reading a clock. The
//! runtime feeds it bytes, connection events and `now` (`handle_*`), and
//! takes bytes to send and network actions from it (`output`,
//! `poll_action`, `poll_timeout`); tests drive it with an in-memory
//! network.

pub mod acl;
pub mod command;
pub mod compress;
pub mod configure;
pub mod engine;
pub mod hotkey;
#[doc(hidden)]
pub mod testing;

pub use engine::handover::Carried;
pub use engine::info::Totals;
pub use engine::reconfigure::Changes;
pub use engine::{
    latency_bucket, Action, Ejection, Engine, EngineStats, Handle, Micros, Output, Placement,
    PoolCounters, PoolSpec, PoolView, Protocol, Role, ServerSpec, ServerView, Tag, UserSpec,
    LATENCY_BUCKETS, MAX_OUTPUT,
};
