//! Growable shared memory for ferrox: a region addressed by offsets, a chunk
//! pool built on it, and message queues between cores and processes.
//!
//! What this crate owns: the bytes of the shared region and every structure
//! inside it. What it never does: DPDK, networking, protocol parsing. Several
//! processes (the control process, one or more dataplane versions) attach to
//! the same region by name; nothing inside it is a pointer, so a process that
//! maps it at another address, or a newer binary, reads it the same way.
//!
//! # Memory layout
//!
//! A region is a list of segments. Segment 0 starts with the region header;
//! the owner appends segments when the region grows, and attached processes
//! map them when they first meet an offset inside one. An [`Offset`] names a
//! segment and a byte inside it, so offsets handed out before a grow stay
//! valid after it.
//!
//! ```text
//!  file ferrox-<name>.0 (hugetlbfs, or /dev/shm when no hugepages are free)
//!  +---------------------------------------------------------------------+
//!  | RegionHeader (4 KiB)                                                |
//!  |   magic "FERROXRG", layout version, header size                     |
//!  |   lock (holder pid), segment count, generation                      |
//!  |   segment table [64]: size, bump cursor, hugepage flag              |
//!  |   directory [32]: name -> Offset, kind, version                     |
//!  +---------------------------------------------------------------------+
//!  | bump-allocated objects, cache-line aligned:                         |
//!  |   PoolHeader: size classes, shared free lists, per-core slots       |
//!  |   chunk arena: [chunk][chunk][chunk]...  (one size class each)      |
//!  |   RingHeader + ring bytes ...                                       |
//!  +---------------------------------------------------------------------+
//!  file ferrox-<name>.1, .2, ...  (added by Region::grow)
//!  +---------------------------------------------------------------------+
//!  | more arenas, rings, ...                                             |
//!  +---------------------------------------------------------------------+
//!
//!  chunk (size class S)                     Node: a buffer larger than a chunk
//!  +--------------------+----------------+  +------+    +------+    +------+
//!  | ChunkHeader 16 B   | payload S-16 B |  | head |--->|      |--->| tail |
//!  | next, len, class,  |                |  +------+    +------+    +------+
//!  | state, home core   |                |   chained through ChunkHeader.next
//!  +--------------------+----------------+
//!
//!  ring (SPSC)
//!  +-------------+---------------+---------------+--------------------------+
//!  | line 0      | line 1        | line 2        | data: capacity bytes     |
//!  | magic, cap, | tail (prod.)  | head (cons.)  | [len|tag|payload..pad]   |
//!  | doorbell    | cached head   | cached tail   | [len|tag|payload..pad]...|
//!  +-------------+---------------+---------------+--------------------------+
//! ```
//!
//! Every shared structure is `#[repr(C)]`, made only of atomics and integers,
//! carries a magic and a layout version, and is checked when a process
//! attaches: a region of another layout is refused with an error, never read.
//!
//! # Modules
//!
//! - [`region`]: create, attach, grow, a bump allocator and a name directory.
//! - [`pool`]: fixed-size chunks in size classes, per-core caches, chunk
//!   chains ([`pool::Node`]).
//! - [`mq`]: single-producer/single-consumer rings of variable-size messages
//!   with an eventfd wake-up, and a multi-producer fan-in made of such rings.
//!
//! `unsafe` lives only in `region::mapping` (mapping and raw access),
//! `mq::ring` (the ring's byte copies), `mq::doorbell` (eventfd, epoll,
//! pidfd) and `pool::chunk` (chunk payload access).

// Under `--cfg loom` only the lock-free protocol cores are exercised; the
// shared-memory handles around them are compiled out, leaving some layout
// items unused in that build alone.
#![cfg_attr(loom, allow(dead_code))]

pub mod mq;
mod offset;
pub mod pool;
pub mod region;
mod sync;
#[cfg(test)]
mod testing;

pub use offset::{Offset, SegmentId};
pub use region::{Backing, Region, RegionError, RegionOptions};
