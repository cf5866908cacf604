//! ferrox's control block: what the control process and the dataplane
//! share, in a hugepage-pool region.
//!
//! - **The configuration board.** The control process publishes a
//!   validated configuration (its text) with a new version; every core
//!   compares the version once per loop, reads the text, and swaps its
//!   route tables at a safe point, then records the version it runs. The
//!   text sits in two buffers: the writer fills the one not in use and
//!   flips, a reader copies the current one and checks that the version
//!   did not move, so no core ever reads half a configuration.
//! - **Statistics.** Each core has a record it alone writes (plain stores
//!   of atomics), with core-wide counters, and per pool (by name) and per
//!   server (by address) counters and a latency histogram. The control
//!   process reads them at any time without stopping anyone. The
//!   heartbeat moves with every publication (at least every ~100 ms on a
//!   healthy core); the control process's watchdog acts when it stops.
//! - **The handover board.** The command for a hot handover (how long
//!   to drain) and the moments each step happened, stamped by the old and
//!   the new dataplane, which `ferroxctl upgrade` reports.
//! - **Test hooks.** Per core, a request to wedge itself, honoured only by
//!   a dataplane started with `--test-hooks`: the watchdog's fault
//!   injection.
//!
//! Everything is plain, versioned data: no pointers, so a restarted
//! control process or a new dataplane binary finds it as it was.

use std::net::SocketAddrV4;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hugepage_pool::{Offset, Region, RegionError};

mod handover;
#[allow(unsafe_code)] // declares the layout `Shared`
mod layout;

pub use handover::{monotonic_ns, HandoverReport, Step};

pub use layout::{
    BlockHeader, CoreRecord, HandoverBoard, HotKeyRecord, LogBoard, PoolRecord, ServerRecord,
    TestBoard, COMMANDS, CONFIG_BYTES, COUNTERS, FEATURE_COUNTERS, HOT_KEYS_SHOWN, HOT_KEY_BYTES,
    LATENCY_BUCKETS, LAYOUT_VERSION, LOG_FILTER_BYTES, MAX_CORES, MAX_POOLS, MAX_SERVERS,
    NAME_BYTES,
};

/// A pool feature counter: its name (metrics add `ferrox_pool_` and, for
/// counters, `_total`), whether it is a gauge, and what it counts.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    pub name: &'static str,
    pub gauge: bool,
    pub help: &'static str,
}

const fn counter(name: &'static str, help: &'static str) -> Feature {
    Feature {
        name,
        gauge: false,
        help,
    }
}

/// The feature counters, in their record order (append only: a record
/// is read by index).
pub const FEATURES: [Feature; 16] = [
    counter("compressed_values", "Values stored compressed."),
    counter(
        "compressed_bytes_in",
        "Bytes of the values stored compressed, before compression.",
    ),
    counter(
        "compressed_bytes_out",
        "Bytes of the values stored compressed, after compression.",
    ),
    counter(
        "decompressed_values",
        "Compressed values read back and decompressed.",
    ),
    counter(
        "corrupt_values",
        "Compressed values read back that failed their checks (answered with an error).",
    ),
    counter(
        "compression_ns",
        "Time spent compressing and decompressing, in nanoseconds.",
    ),
    counter("cache_hits", "Reads the hot-key cache answered."),
    counter(
        "cache_misses",
        "Reads of hot keys the cache could not answer.",
    ),
    counter("cache_fills", "Values the hot-key cache took."),
    counter(
        "cache_evictions",
        "Values the hot-key cache dropped for room.",
    ),
    counter(
        "cache_invalidations_write",
        "Cached values dropped for a write through the proxy.",
    ),
    counter(
        "cache_invalidations_server",
        "Cached values dropped because the server said they changed (tracking).",
    ),
    counter(
        "cache_invalidations_lost",
        "Cached values dropped because their server's invalidation channel was lost or flushed.",
    ),
    counter("cache_expirations", "Cached values dropped for their age."),
    Feature {
        name: "cache_memory_bytes",
        gauge: true,
        help: "Bytes the hot-key cache holds.",
    },
    Feature {
        name: "hot_keys",
        gauge: true,
        help: "Keys the cores count as hot now.",
    },
];

/// The index of feature `name` in [`FEATURES`].
pub fn feature(name: &str) -> usize {
    FEATURES
        .iter()
        .position(|f| f.name == name)
        .expect("a listed feature")
}

/// The region directory name of the block.
pub const ENTRY: &str = "control-block";

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error("the control block is of another layout (found {found:#x}, version {version})")]
    Layout { found: u64, version: u32 },
    #[error("the configuration is {len} bytes; the board holds {max}")]
    TooLarge { len: usize, max: usize },
    #[error("{cores} cores; the block has room for {max}")]
    TooManyCores { cores: usize, max: usize },
}

/// Defines [`Counter`] from one table: each counter's variant, its name in
/// statistics lines and metrics, and (its doc comment) what it counts.
macro_rules! counters {
    ($(#[doc = $help:literal] $variant:ident $name:literal,)*) => {
        /// Core-wide counters, as indices into [`CoreRecord::counters`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter {
            $(#[doc = $help] $variant,)*
        }

        impl Counter {
            pub const ALL: [Counter; [$(Counter::$variant),*].len()] = [$(Counter::$variant),*];

            pub fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => $name,)*
                }
            }

            /// What the counter counts, one sentence (its doc comment).
            pub fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => $help.trim_start(),)*
                }
            }
        }
    };
}

counters! {
    /// Frames received.
    Frames "frames",
    /// Client connections accepted.
    Accepted "accepted",
    /// Connections closed.
    Closed "closed",
    /// Connections open.
    Open "open",
    /// Requests read from clients.
    Requests "requests",
    /// Requests answered with an error the proxy made.
    Errors "errors",
    /// Multi-key requests split over servers.
    SplitRequests "split_requests",
    /// Connections opened to servers.
    BackendConnects "backend_connects",
    /// Server connections that failed.
    BackendFailures "backend_failures",
    /// Requests that timed out.
    Timeouts "timeouts",
    /// Servers ejected by the dataplane for failures.
    Ejections "ejections",
    /// Configurations taken.
    Reconfigurations "reconfigurations",
    /// Client connections refused (RST) by the proxy: a pool full or retired.
    Refused "refused",
    /// SYNs dropped unanswered with the handshake backlog full (the client retries).
    BacklogDrops "backlog_drops",
    /// SYNs dropped unanswered at the connection limit or for want of socket memory.
    LimitDrops "limit_drops",
    /// Frames dropped for want of a packet buffer (TCP retransmits).
    TxNoMbuf "tx_no_mbuf",
    /// Sends put off to the next poll because the connection's last service moved nothing.
    Deferred "deferred_sends",
    /// Polls that ran out of their budget of application actions.
    BudgetExhausted "budget_exhausted",
    /// Closing connections reset because the peer never finished closing.
    CloseTimeouts "close_timeouts",
    /// First connection attempts to a server retried at once after failing.
    ConnectRetries "connect_retries",
    /// Connections the dataplane opened to servers.
    Connects "connects",
    /// Poll loop iterations.
    Iterations "iterations",
    /// Frames received from the NIC queue.
    RxFrames "rx_frames",
    /// Times the idle core slept.
    Sleeps "sleeps",
    /// Frames copied to the core that owns their flow.
    Steered "steered",
    /// Frames dropped because the owning core's mailbox was full.
    SteerDrops "steer_drops",
    /// Frames dropped for a wrong checksum.
    BadChecksum "bad_checksum",
    /// Heap allocations made by the core's thread.
    Allocations "allocations",
    /// Frames the NIC queue refused to send (TCP retransmits).
    TxDropped "tx_dropped",
    /// Idle waits that failed (and were slept instead).
    FailedWaits "failed_waits",
    /// Requests read and not yet answered (a gauge).
    InFlight "in_flight",
    /// Reply bytes held for clients, as last measured under a buffer watermark (a gauge).
    ClientBuffered "client_buffered",
    /// Bytes of socket buffers the core's connections hold (a gauge).
    SocketBufferBytes "socket_buffer_bytes",
    /// Client connections moved from their idle buffers to full ones.
    BufferMoves "buffer_moves",
}

/// The control block in a region.
#[derive(Debug, Clone)]
pub struct Block {
    region: Arc<Region>,
    at: Offset,
}

impl Block {
    /// Region bytes the block takes.
    pub fn size() -> u64 {
        std::mem::size_of::<BlockHeader>() as u64
    }

    /// A new block for `cores` cores in `region`, published under [`ENTRY`].
    pub fn create(region: &Arc<Region>, cores: usize) -> Result<Block, BlockError> {
        if cores > MAX_CORES {
            return Err(BlockError::TooManyCores {
                cores,
                max: MAX_CORES,
            });
        }
        let at = region.alloc(Block::size(), 64)?;
        let block = Block {
            region: region.clone(),
            at,
        };
        let header = block.header();
        header.cores.store(cores as u32, Ordering::Relaxed);
        header.layout.store(LAYOUT_VERSION, Ordering::Relaxed);
        header.magic.store(layout::MAGIC, Ordering::Release);
        region.publish(ENTRY, layout::KIND, LAYOUT_VERSION, at)?;
        Ok(block)
    }

    /// The block another process created in `region`.
    pub fn attach(region: &Arc<Region>) -> Result<Block, BlockError> {
        let at = region.lookup(ENTRY, layout::KIND, LAYOUT_VERSION)?;
        let block = Block {
            region: region.clone(),
            at,
        };
        let header = block.header();
        let found = header.magic.load(Ordering::Acquire);
        let version = header.layout.load(Ordering::Relaxed);
        if found != layout::MAGIC || version != LAYOUT_VERSION {
            return Err(BlockError::Layout { found, version });
        }
        Ok(block)
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn header(&self) -> &BlockHeader {
        self.region
            .view::<BlockHeader>(self.at)
            .expect("the block was checked when created or attached")
    }

    pub fn cores(&self) -> usize {
        self.header().cores.load(Ordering::Relaxed) as usize
    }

    /// Publishes a configuration text; returns its version. One writer
    /// (the control process) at a time.
    pub fn publish_config(&self, text: &str) -> Result<u64, BlockError> {
        if text.len() > CONFIG_BYTES {
            return Err(BlockError::TooLarge {
                len: text.len(),
                max: CONFIG_BYTES,
            });
        }
        let board = &self.header().config;
        let next = 1 - board.current.load(Ordering::Relaxed) as usize;
        for (word, chunk) in board.text[next].iter().zip(text.as_bytes().chunks(8)) {
            let mut bytes = [0u8; 8];
            bytes[..chunk.len()].copy_from_slice(chunk);
            word.store(u64::from_le_bytes(bytes), Ordering::Relaxed);
        }
        board.len[next].store(text.len() as u32, Ordering::Relaxed);
        board.current.store(next as u32, Ordering::Release);
        Ok(board.version.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// The newest published configuration version (0: none yet). Cheap:
    /// one load, for every loop of every core.
    pub fn config_version(&self) -> u64 {
        self.header().config.version.load(Ordering::Acquire)
    }

    /// Copies the current configuration into `out`; returns its version.
    /// Retries while a publish overtakes the copy.
    pub fn read_config(&self, out: &mut String) -> u64 {
        let board = &self.header().config;
        loop {
            let version = board.version.load(Ordering::Acquire);
            let current = board.current.load(Ordering::Acquire) as usize;
            let len = (board.len[current].load(Ordering::Relaxed) as usize).min(CONFIG_BYTES);
            let mut bytes = Vec::with_capacity(len);
            for word in &board.text[current][..len.div_ceil(8)] {
                bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
            }
            bytes.truncate(len);
            // The buffer read is only rewritten after a second publish; the
            // version moves by then.
            std::sync::atomic::fence(Ordering::Acquire);
            if board.version.load(Ordering::Relaxed) == version {
                *out = String::from_utf8_lossy(&bytes).into_owned();
                return version;
            }
        }
    }

    /// Publishes which servers are held out of their pools: `masks[p]`
    /// has bit `s` set for server `s` of pool `p` of configuration
    /// `config_version`. One writer (the control process) at a time.
    /// Returns the board's new sequence number.
    pub fn publish_held_out(&self, config_version: u64, masks: &[u64]) -> u64 {
        let board = &self.header().health;
        board.sequence.fetch_add(1, Ordering::AcqRel);
        board
            .config_version
            .store(config_version, Ordering::Relaxed);
        for (p, word) in board.held_out.iter().enumerate() {
            word.store(masks.get(p).copied().unwrap_or(0), Ordering::Relaxed);
        }
        board.sequence.fetch_add(1, Ordering::Release) + 1
    }

    /// The held-out board's sequence number: changes with every publish.
    /// Cheap: one load, for every loop of every core.
    pub fn held_out_sequence(&self) -> u64 {
        self.header().health.sequence.load(Ordering::Acquire)
    }

    /// The held-out board as published last.
    pub fn held_out(&self) -> HeldOut {
        let board = &self.header().health;
        loop {
            let sequence = board.sequence.load(Ordering::Acquire);
            if sequence % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let config_version = board.config_version.load(Ordering::Relaxed);
            let masks = std::array::from_fn(|p| board.held_out[p].load(Ordering::Relaxed));
            std::sync::atomic::fence(Ordering::Acquire);
            if board.sequence.load(Ordering::Relaxed) == sequence {
                return HeldOut {
                    sequence,
                    config_version,
                    masks,
                };
            }
        }
    }

    /// Records that `core` runs configuration `version`.
    pub fn set_applied(&self, core: usize, version: u64) {
        self.header().config.applied[core].store(version, Ordering::Release);
    }

    /// The configuration version each core runs.
    pub fn applied(&self) -> Vec<u64> {
        let header = self.header();
        (0..self.cores())
            .map(|c| header.config.applied[c].load(Ordering::Acquire))
            .collect()
    }

    /// Every core's heartbeat, read now (cheap: one load per core).
    pub fn heartbeats(&self) -> Vec<u64> {
        let header = self.header();
        (0..self.cores())
            .map(|c| header.core[c].heartbeat.load(Ordering::Acquire))
            .collect()
    }

    /// Forgets the configuration versions the cores ran: a dataplane
    /// about to start has applied nothing yet. Only while no dataplane
    /// runs (the cores write these).
    pub fn clear_applied(&self) {
        for applied in &self.header().config.applied {
            applied.store(0, Ordering::Release);
        }
    }

    /// Test hook: asks core `core` to wedge itself (honoured only by a
    /// dataplane started with `--test-hooks`).
    pub fn request_stall(&self, core: usize) {
        self.header()
            .test
            .stall
            .fetch_or(1 << core, Ordering::Release);
    }

    /// Test hook: whether core `core` is asked to wedge itself.
    pub fn stall_requested(&self, core: usize) -> bool {
        self.header().test.stall.load(Ordering::Acquire) & (1 << core) != 0
    }

    /// Test hook: withdraws every stall request (before a dataplane
    /// starts, so that a new one does not wedge at once).
    pub fn clear_stalls(&self) {
        self.header().test.stall.store(0, Ordering::Release);
    }

    /// Publishes the log filter every dataplane is to use (cut at
    /// [`LOG_FILTER_BYTES`]). One writer: the control process.
    pub fn publish_log_filter(&self, filter: &str) {
        let board = &self.header().log;
        let bytes = &filter.as_bytes()[..filter.len().min(LOG_FILTER_BYTES)];
        board.sequence.fetch_add(1, Ordering::AcqRel);
        for (i, word) in board.text.iter().enumerate() {
            let mut w = [0u8; 8];
            for (j, b) in w.iter_mut().enumerate() {
                *b = bytes.get(i * 8 + j).copied().unwrap_or(0);
            }
            word.store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        board.len.store(bytes.len() as u32, Ordering::Relaxed);
        board.sequence.fetch_add(1, Ordering::AcqRel);
    }

    /// The log filter's sequence number alone (one load): whether
    /// [`Block::log_filter`] has anything new.
    pub fn log_filter_sequence(&self) -> u64 {
        self.header().log.sequence.load(Ordering::Acquire)
    }

    /// The log filter published last and its sequence number (even, 0
    /// when none was), read consistently; `None` while it is being written.
    pub fn log_filter(&self) -> Option<(u64, String)> {
        let board = &self.header().log;
        let before = board.sequence.load(Ordering::Acquire);
        if before % 2 == 1 {
            return None;
        }
        let len = (board.len.load(Ordering::Relaxed) as usize).min(LOG_FILTER_BYTES);
        let mut bytes = Vec::with_capacity(LOG_FILTER_BYTES);
        for word in &board.text {
            bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes.truncate(len);
        std::sync::atomic::fence(Ordering::Acquire);
        if board.sequence.load(Ordering::Relaxed) != before {
            return None;
        }
        Some((before, String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Core `core`'s record, for that core to write.
    pub fn core(&self, core: usize) -> &CoreRecord {
        &self.header().core[core]
    }

    /// Everything every core published, read now.
    pub fn snapshot(&self) -> Snapshot {
        let cores = (0..self.cores())
            .map(|c| {
                let record = self.core(c);
                CoreSnapshot {
                    heartbeat: record.heartbeat.load(Ordering::Acquire),
                    counters: std::array::from_fn(|i| record.counters[i].load(Ordering::Relaxed)),
                    commands: record
                        .commands
                        .iter()
                        .map(|c| c.load(Ordering::Relaxed))
                        .collect(),
                    pools: record
                        .pools
                        .iter()
                        .filter_map(PoolSnapshot::read)
                        .map(|mut pool| {
                            pool.hot_keys.iter_mut().for_each(|h| h.core = c);
                            pool
                        })
                        .collect(),
                }
            })
            .collect();
        Snapshot { cores }
    }
}

impl CoreRecord {
    pub fn set(&self, counter: Counter, value: u64) {
        self.counters[counter as usize].store(value, Ordering::Relaxed);
    }

    /// Sets each counter to its value.
    pub fn set_all<const N: usize>(&self, values: [(Counter, u64); N]) {
        for (counter, value) in values {
            self.set(counter, value);
        }
    }

    /// Marks a publication done.
    pub fn beat(&self) {
        self.heartbeat.fetch_add(1, Ordering::Release);
    }
}

impl PoolRecord {
    /// Shows `keys` (hottest first, at most [`HOT_KEYS_SHOWN`]) as the
    /// core's hot keys; without allocating.
    pub fn set_hot_keys<'a>(&self, keys: impl Iterator<Item = (&'a [u8], u32)>) {
        let mut keys = keys.take(HOT_KEYS_SHOWN);
        for record in &self.hot_keys {
            let Some((key, rate)) = keys.next() else {
                record.len.store(0, Ordering::Release);
                continue;
            };
            let key = &key[..key.len().min(HOT_KEY_BYTES)];
            record.len.store(0, Ordering::Release);
            for (i, word) in record.key.iter().enumerate() {
                let mut w = [0u8; 8];
                for (j, b) in w.iter_mut().enumerate() {
                    *b = key.get(i * 8 + j).copied().unwrap_or(0);
                }
                word.store(u64::from_le_bytes(w), Ordering::Relaxed);
            }
            record.rate.store(rate, Ordering::Relaxed);
            // A key of length 0 could not be told from an unused record.
            record.len.store(key.len().max(1) as u32, Ordering::Release);
        }
    }

    /// The hot keys a core showed.
    pub fn hot_keys(&self) -> impl Iterator<Item = (Vec<u8>, u32)> + '_ {
        self.hot_keys.iter().filter_map(|record| {
            let len = (record.len.load(Ordering::Acquire) as usize).min(HOT_KEY_BYTES);
            if len == 0 {
                return None;
            }
            let key: Vec<u8> = record
                .key
                .iter()
                .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
                .take(len)
                .collect();
            Some((key, record.rate.load(Ordering::Relaxed)))
        })
    }

    /// Names the record (empty: unused).
    pub fn set_name(&self, name: &str) {
        let bytes = &name.as_bytes()[..name.len().min(NAME_BYTES)];
        for (i, word) in self.name.iter().enumerate() {
            let mut w = [0u8; 8];
            for (j, b) in w.iter_mut().enumerate() {
                *b = bytes.get(i * 8 + j).copied().unwrap_or(0);
            }
            word.store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        self.name_len.store(bytes.len() as u32, Ordering::Release);
    }

    /// Whether the record holds `name` (without allocating: cores call
    /// it as they publish).
    pub fn name_is(&self, name: &str) -> bool {
        let bytes = &name.as_bytes()[..name.len().min(NAME_BYTES)];
        if self.name_len.load(Ordering::Acquire) as usize != bytes.len() {
            return false;
        }
        self.name.iter().enumerate().all(|(i, word)| {
            let mut w = [0u8; 8];
            for (j, b) in w.iter_mut().enumerate() {
                *b = bytes.get(i * 8 + j).copied().unwrap_or(0);
            }
            word.load(Ordering::Relaxed) == u64::from_le_bytes(w)
        })
    }

    pub fn name(&self) -> String {
        let len = (self.name_len.load(Ordering::Acquire) as usize).min(NAME_BYTES);
        let bytes: Vec<u8> = self
            .name
            .iter()
            .flat_map(|w| w.load(Ordering::Relaxed).to_le_bytes())
            .take(len)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl ServerRecord {
    pub fn set_addr(&self, addr: SocketAddrV4) {
        let ip = u32::from(*addr.ip()) as u64;
        self.addr
            .store((ip << 16) | addr.port() as u64, Ordering::Relaxed);
    }

    pub fn addr(&self) -> SocketAddrV4 {
        let raw = self.addr.load(Ordering::Relaxed);
        SocketAddrV4::new(((raw >> 16) as u32).into(), raw as u16)
    }
}

/// Which servers the control process holds out of their pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldOut {
    pub sequence: u64,
    /// The configuration whose order the masks follow.
    pub config_version: u64,
    /// Per pool, bit `s` for server `s`.
    pub masks: [u64; MAX_POOLS],
}

/// The latency bucket of a request that took `micros`.
pub fn latency_bucket(micros: u64) -> usize {
    ((u64::BITS - micros.leading_zeros()) as usize).min(LATENCY_BUCKETS - 1)
}

/// What every core published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub cores: Vec<CoreSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreSnapshot {
    pub heartbeat: u64,
    pub counters: [u64; COUNTERS],
    /// Requests per command id ([`COMMANDS`] of them).
    pub commands: Vec<u64>,
    pub pools: Vec<PoolSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolSnapshot {
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub sessions: u64,
    pub latency: [u64; LATENCY_BUCKETS],
    /// The latencies added up, microseconds.
    pub latency_sum_us: u64,
    pub client_eof: u64,
    pub client_err: u64,
    pub forward_errors: u64,
    pub fragments: u64,
    pub server_ejects: u64,
    pub acl_refused: u64,
    pub validation_refused: u64,
    pub rate_limited: u64,
    pub overload_refused: u64,
    pub replica_retries: u64,
    /// By index in [`FEATURES`].
    pub features: [u64; FEATURE_COUNTERS],
    /// Each core's hottest keys.
    pub hot_keys: Vec<HotKey>,
    pub servers: Vec<ServerSnapshot>,
}

/// A key a core counts as hot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKey {
    pub core: usize,
    /// Cut at [`HOT_KEY_BYTES`].
    pub key: Vec<u8>,
    /// Reads per second on that core.
    pub rate: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSnapshot {
    pub addr: SocketAddrV4,
    pub requests: u64,
    pub request_bytes: u64,
    pub responses: u64,
    pub response_bytes: u64,
    pub failures: u64,
    pub timeouts: u64,
    pub eofs: u64,
    pub connections: u64,
    pub in_flight: u64,
    pub ejected: bool,
    /// Microseconds since the Unix epoch; 0: never ejected.
    pub ejected_at_us: u64,
}

impl PoolSnapshot {
    fn read(record: &PoolRecord) -> Option<PoolSnapshot> {
        if record.name_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let servers = (record.server_count.load(Ordering::Relaxed) as usize).min(MAX_SERVERS);
        Some(PoolSnapshot {
            name: record.name(),
            requests: record.requests.load(Ordering::Relaxed),
            errors: record.errors.load(Ordering::Relaxed),
            bytes_in: record.bytes_in.load(Ordering::Relaxed),
            bytes_out: record.bytes_out.load(Ordering::Relaxed),
            sessions: record.sessions.load(Ordering::Relaxed),
            latency: std::array::from_fn(|i| record.latency[i].load(Ordering::Relaxed)),
            latency_sum_us: record.latency_sum_us.load(Ordering::Relaxed),
            client_eof: record.client_eof.load(Ordering::Relaxed),
            client_err: record.client_err.load(Ordering::Relaxed),
            forward_errors: record.forward_errors.load(Ordering::Relaxed),
            fragments: record.fragments.load(Ordering::Relaxed),
            server_ejects: record.server_ejects.load(Ordering::Relaxed),
            acl_refused: record.acl_refused.load(Ordering::Relaxed),
            validation_refused: record.validation_refused.load(Ordering::Relaxed),
            rate_limited: record.rate_limited.load(Ordering::Relaxed),
            overload_refused: record.overload_refused.load(Ordering::Relaxed),
            replica_retries: record.replica_retries.load(Ordering::Relaxed),
            features: std::array::from_fn(|i| record.features[i].load(Ordering::Relaxed)),
            hot_keys: record
                .hot_keys()
                .map(|(key, rate)| HotKey { core: 0, key, rate })
                .collect(),
            servers: record.servers[..servers]
                .iter()
                .map(|s| ServerSnapshot {
                    addr: s.addr(),
                    requests: s.requests.load(Ordering::Relaxed),
                    request_bytes: s.request_bytes.load(Ordering::Relaxed),
                    responses: s.responses.load(Ordering::Relaxed),
                    response_bytes: s.response_bytes.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                    timeouts: s.timeouts.load(Ordering::Relaxed),
                    eofs: s.eofs.load(Ordering::Relaxed),
                    connections: s.connections.load(Ordering::Relaxed),
                    in_flight: s.in_flight.load(Ordering::Relaxed),
                    ejected: s.ejected.load(Ordering::Relaxed) != 0,
                    ejected_at_us: s.ejected_at_us.load(Ordering::Relaxed),
                })
                .collect(),
        })
    }

    /// Adds another core's view of the same pool.
    pub fn add(&mut self, other: &PoolSnapshot) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.sessions += other.sessions;
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
        self.latency_sum_us += other.latency_sum_us;
        self.client_eof += other.client_eof;
        self.client_err += other.client_err;
        self.forward_errors += other.forward_errors;
        self.fragments += other.fragments;
        self.server_ejects += other.server_ejects;
        self.acl_refused += other.acl_refused;
        self.validation_refused += other.validation_refused;
        self.rate_limited += other.rate_limited;
        self.overload_refused += other.overload_refused;
        self.replica_retries += other.replica_retries;
        for (a, b) in self.features.iter_mut().zip(other.features) {
            *a += b;
        }
        self.hot_keys.extend(other.hot_keys.iter().cloned());
        for server in &other.servers {
            match self.servers.iter_mut().find(|s| s.addr == server.addr) {
                Some(s) => {
                    s.requests += server.requests;
                    s.request_bytes += server.request_bytes;
                    s.responses += server.responses;
                    s.response_bytes += server.response_bytes;
                    s.failures += server.failures;
                    s.timeouts += server.timeouts;
                    s.eofs += server.eofs;
                    s.connections += server.connections;
                    s.in_flight += server.in_flight;
                    s.ejected |= server.ejected;
                    // Each core ejects on its own: the latest one counts.
                    s.ejected_at_us = s.ejected_at_us.max(server.ejected_at_us);
                }
                None => self.servers.push(server.clone()),
            }
        }
    }

    /// The latency below which `quantile` (0..=1) of the requests fell, in
    /// microseconds (the upper bound of its bucket), or `None` before any
    /// request.
    pub fn latency_quantile(&self, quantile: f64) -> Option<u64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (quantile * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(1u64 << i);
            }
        }
        Some(1u64 << (LATENCY_BUCKETS - 1))
    }
}

impl Snapshot {
    /// Every core's counter `counter`, added up.
    pub fn total(&self, counter: Counter) -> u64 {
        self.cores
            .iter()
            .map(|c| c.counters[counter as usize])
            .sum()
    }

    /// Requests per command id, every core's added up.
    pub fn commands(&self) -> Vec<u64> {
        let mut total = vec![0; COMMANDS];
        for core in &self.cores {
            for (t, n) in total.iter_mut().zip(&core.commands) {
                *t += n;
            }
        }
        total
    }

    /// Pools by name, every core's figures added up, in first-seen order.
    pub fn pools(&self) -> Vec<PoolSnapshot> {
        let mut pools: Vec<PoolSnapshot> = Vec::new();
        for pool in self.cores.iter().flat_map(|c| &c.pools) {
            match pools.iter_mut().find(|p| p.name == pool.name) {
                Some(p) => p.add(pool),
                None => pools.push(pool.clone()),
            }
        }
        pools
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> Block {
        let region = Region::heap(Block::size() + (1 << 20));
        Block::create(&region, 2).unwrap()
    }

    #[test]
    fn a_published_configuration_is_read_whole_with_its_version() {
        let block = block();
        assert_eq!(block.config_version(), 0);
        let v1 = block.publish_config("first = 1\n").unwrap();
        let v2 = block.publish_config("second = \"two\"\n").unwrap();
        assert_eq!((v1, v2), (1, 2));
        let mut text = String::new();
        assert_eq!(block.read_config(&mut text), 2);
        assert_eq!(text, "second = \"two\"\n");
        block.set_applied(1, 2);
        assert_eq!(block.applied(), [0, 2]);
        let big = "x".repeat(CONFIG_BYTES + 1);
        assert!(matches!(
            block.publish_config(&big),
            Err(BlockError::TooLarge { .. })
        ));
    }

    #[test]
    fn held_out_servers_are_read_whole_with_their_configuration_version() {
        let block = block();
        assert_eq!(block.held_out().masks, [0; MAX_POOLS]);
        let before = block.held_out_sequence();
        let after = block.publish_held_out(3, &[0b101, 0, 1 << 63]);
        assert!(after > before && after.is_multiple_of(2));
        assert_eq!(block.held_out_sequence(), after);
        let held = block.held_out();
        assert_eq!(held.config_version, 3);
        assert_eq!(held.masks[..4], [0b101, 0, 1 << 63, 0]);
    }

    #[test]
    fn heartbeats_applied_versions_and_stall_requests() {
        let block = block();
        block.core(1).beat();
        block.core(1).beat();
        assert_eq!(block.heartbeats(), [0, 2]);
        block.set_applied(0, 3);
        block.clear_applied();
        assert_eq!(block.applied(), [0, 0]);
        assert!(!block.stall_requested(1));
        block.request_stall(1);
        assert!(block.stall_requested(1) && !block.stall_requested(0));
        block.clear_stalls();
        assert!(!block.stall_requested(1));
    }

    #[test]
    fn attach_finds_the_block_and_checks_its_layout() {
        let block = block();
        let again = Block::attach(block.region()).unwrap();
        assert_eq!(again.cores(), 2);
        let other = Region::heap(1 << 20);
        assert!(Block::attach(&other).is_err());
    }

    #[test]
    fn statistics_add_up_across_cores_by_pool_name() {
        let block = block();
        for core in 0..2 {
            let record = block.core(core);
            record.set(Counter::Requests, 10 + core as u64);
            record.commands[3].store(core as u64 + 1, Ordering::Relaxed);
            let pool = &record.pools[core]; // different slots, same name
            pool.set_name("cache");
            pool.requests.store(5, Ordering::Relaxed);
            pool.latency[latency_bucket(300)].store(4, Ordering::Relaxed);
            pool.latency[latency_bucket(3000)].store(1, Ordering::Relaxed);
            pool.server_count.store(1, Ordering::Relaxed);
            pool.servers[0].set_addr("10.0.0.1:7001".parse().unwrap());
            pool.servers[0].requests.store(5, Ordering::Relaxed);
            record.beat();
        }
        let snapshot = block.snapshot();
        assert_eq!(snapshot.total(Counter::Requests), 21);
        assert_eq!(snapshot.commands()[3], 3);
        let pools = snapshot.pools();
        assert_eq!(pools.len(), 1);
        assert_eq!(pools[0].name, "cache");
        assert_eq!(pools[0].requests, 10);
        assert_eq!(pools[0].servers[0].requests, 10);
        assert_eq!(pools[0].latency_quantile(0.5), Some(512));
        assert_eq!(pools[0].latency_quantile(0.99), Some(4096));
    }

    #[test]
    fn the_log_filter_round_trips_and_is_cut_at_its_room() {
        let region = hugepage_pool::Region::heap(Block::size() + (1 << 20));
        let block = Block::create(&region, 2).unwrap();
        assert_eq!(block.log_filter(), Some((0, String::new())));
        block.publish_log_filter("warn,ferrox_dataplane=debug");
        assert_eq!(
            block.log_filter(),
            Some((2, "warn,ferrox_dataplane=debug".to_owned()))
        );
        block.publish_log_filter(&"x".repeat(LOG_FILTER_BYTES + 10));
        let (sequence, filter) = block.log_filter().unwrap();
        assert_eq!((sequence, filter.len()), (4, LOG_FILTER_BYTES));
    }

    #[test]
    fn latency_buckets_are_powers_of_two() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 1);
        assert_eq!(latency_bucket(511), 9);
        assert_eq!(latency_bucket(512), 10);
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
    }
}
