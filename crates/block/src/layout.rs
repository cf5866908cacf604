//! The control block's shared layout: `repr(C)` records of atomic
//! integers only, so any process may read any field at any time, and a
//! later binary finds the same bytes where it expects them (the layout
//! version says when it would not).

// Records of thousands of atomics: no useful Debug output.
#![allow(missing_debug_implementations)]

use std::sync::atomic::{AtomicU32, AtomicU64};

use hugepage_pool::region::Shared;

/// "FXBLOCK1".
pub const MAGIC: u64 = u64::from_le_bytes(*b"FXBLOCK1");
/// Bumped on any change below.
pub const LAYOUT_VERSION: u32 = 12;
/// The region directory entry's kind.
pub const KIND: u32 = 0x4658_424b;

pub const MAX_CORES: usize = 16;
pub const MAX_POOLS: usize = 16;
pub const MAX_SERVERS: usize = 64;
/// Longest configuration text: each of the two buffers holds this much.
pub const CONFIG_BYTES: usize = 256 << 10;
/// Longest pool name kept in a record.
pub const NAME_BYTES: usize = 64;
/// Latency buckets: bucket `i` counts requests that took less than
/// `2^i` microseconds (the last one: everything longer).
pub const LATENCY_BUCKETS: usize = 24;
/// Counters of a pool's optional features (compression, the hot-key
/// cache), by index in [`crate::FEATURES`].
pub const FEATURE_COUNTERS: usize = 24;
/// Hot keys each core shows per pool.
pub const HOT_KEYS_SHOWN: usize = 8;
/// Longest hot key shown (longer ones are cut).
pub const HOT_KEY_BYTES: usize = 64;

#[repr(C)]
pub struct BlockHeader {
    pub magic: AtomicU64,
    pub layout: AtomicU32,
    pub cores: AtomicU32,
    pub config: ConfigBoard,
    pub health: HealthBoard,
    pub core: [CoreRecord; MAX_CORES],
    pub test: TestBoard,
    pub handover: HandoverBoard,
    pub log: LogBoard,
}

/// Longest log filter the control process passes to the dataplanes.
pub const LOG_FILTER_BYTES: usize = 256;

/// The log filter the control process asks every dataplane to use
/// (`ferroxctl log-level`). One writer; `sequence` is odd while it
/// writes, and grows by two with each filter.
#[repr(C)]
pub struct LogBoard {
    pub sequence: AtomicU64,
    pub len: AtomicU32,
    pub text: [AtomicU64; LOG_FILTER_BYTES / 8],
}

/// Steps of a hot handover that the board stamps.
pub const HANDOVER_STEPS: usize = 8;

/// A hot handover as the processes taking part see it. The control
/// process clears it and writes the command before it asks the running
/// dataplane to hand over; each step is stamped once, by the first core
/// to get there, in `CLOCK_MONOTONIC` nanoseconds (0: not yet).
#[repr(C)]
pub struct HandoverBoard {
    /// How long the running dataplane lets requests in flight finish, in
    /// milliseconds; 0: its own `--drain-ms`.
    pub drain_ms: AtomicU64,
    /// By [`crate::Step`].
    pub stamps: [AtomicU64; HANDOVER_STEPS],
    /// Connections the old dataplane wrote to the handover file.
    pub exported: AtomicU64,
    /// Connections the new one restored, and those it had to reset.
    pub restored: AtomicU64,
    pub reset_on_restore: AtomicU64,
}

/// Requests for a dataplane started with `--test-hooks` only (any other
/// ignores them): fault injection for the tests of the supervisor.
#[repr(C)]
pub struct TestBoard {
    /// Bit `c`: core `c` is to wedge itself, spinning in its loop and
    /// ignoring its stop flag, as a livelocked core would.
    pub stall: AtomicU64,
}

/// The servers the control process holds out of their pools (failed
/// health checks, or an operator's `server eject`): one bit per server,
/// in configuration order, per pool. A sequence lock: the writer makes
/// `sequence` odd, writes, and makes it even again; a reader retries
/// while it is odd or moved.
#[repr(C)]
pub struct HealthBoard {
    pub sequence: AtomicU64,
    /// The configuration version whose pool and server order the masks
    /// follow; a core running another version waits for the next publish.
    pub config_version: AtomicU64,
    pub held_out: [AtomicU64; MAX_POOLS],
}

/// Two text buffers: the control process writes the one not in use, then
/// flips `current` and bumps `version`; a reader copies the current one
/// and checks that the version did not move meanwhile.
#[repr(C)]
pub struct ConfigBoard {
    pub version: AtomicU64,
    pub current: AtomicU32,
    pub len: [AtomicU32; 2],
    pub text: [[AtomicU64; CONFIG_BYTES / 8]; 2],
    /// The version each core runs.
    pub applied: [AtomicU64; MAX_CORES],
}

/// One core's statistics, written only by that core.
#[repr(C)]
pub struct CoreRecord {
    /// Bumped by the core as it publishes: a reader sees a live core.
    pub heartbeat: AtomicU64,
    pub counters: [AtomicU64; COUNTERS],
    /// Requests per command, by the proxy's command id.
    pub commands: [AtomicU64; COMMANDS],
    pub pools: [PoolRecord; MAX_POOLS],
}

/// Per-command counters in each core's record.
pub const COMMANDS: usize = 256;

/// Core-wide counters, by [`crate::Counter`] index.
pub const COUNTERS: usize = 40;

#[repr(C)]
pub struct PoolRecord {
    /// 0: unused; otherwise the length of the name that follows.
    pub name_len: AtomicU32,
    pub server_count: AtomicU32,
    pub name: [AtomicU64; NAME_BYTES / 8],
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub sessions: AtomicU64,
    pub latency: [AtomicU64; LATENCY_BUCKETS],
    /// The latencies added up, microseconds.
    pub latency_sum_us: AtomicU64,
    /// Client connections that ended cleanly, and otherwise.
    pub client_eof: AtomicU64,
    pub client_err: AtomicU64,
    /// Requests answered with an error for want of a server.
    pub forward_errors: AtomicU64,
    /// Pieces of split multi-key requests.
    pub fragments: AtomicU64,
    pub server_ejects: AtomicU64,
    /// Requests refused by a user's permissions, and by the pool's
    /// validation rules.
    pub acl_refused: AtomicU64,
    pub validation_refused: AtomicU64,
    /// Requests refused by a rate limit.
    pub rate_limited: AtomicU64,
    /// Requests refused because the core was overloaded.
    pub overload_refused: AtomicU64,
    /// Reads a failed replica held, sent again to another server.
    pub replica_retries: AtomicU64,
    pub features: [AtomicU64; FEATURE_COUNTERS],
    /// The core's hottest keys of the pool, hottest first.
    pub hot_keys: [HotKeyRecord; HOT_KEYS_SHOWN],
    pub servers: [ServerRecord; MAX_SERVERS],
}

#[repr(C)]
pub struct HotKeyRecord {
    /// 0: unused; otherwise the key's length (cut at [`HOT_KEY_BYTES`]).
    pub len: AtomicU32,
    /// Reads per second on this core.
    pub rate: AtomicU32,
    pub key: [AtomicU64; HOT_KEY_BYTES / 8],
}

#[repr(C)]
pub struct ServerRecord {
    /// IPv4 address << 16 | port.
    pub addr: AtomicU64,
    pub requests: AtomicU64,
    pub request_bytes: AtomicU64,
    pub responses: AtomicU64,
    pub response_bytes: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    /// Connections the server closed.
    pub eofs: AtomicU64,
    /// Connections open now.
    pub connections: AtomicU64,
    /// Requests sent or queued and not yet answered.
    pub in_flight: AtomicU64,
    /// 1 while ejected.
    pub ejected: AtomicU64,
    /// When it was ejected, microseconds since the Unix epoch (0: never).
    pub ejected_at_us: AtomicU64,
}

// SAFETY: repr(C) structs made only of atomic integers (and arrays of
// them); any bit pattern, zeroes included, is a valid value, and every
// mutation through a shared reference is atomic.
unsafe impl Shared for BlockHeader {}
