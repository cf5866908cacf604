//! Shared-memory records of the queues that are not part of the lock-free
//! protocol itself: identity, claims, the doorbell and the fan-in table.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64};

use crate::sync::model;

/// A ring's identity and who uses it. Written once at creation except the
/// claim words.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct RingMeta {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    _reserved: AtomicU32,
    pub(crate) capacity: AtomicU64,
    /// Offset of the ring bytes (raw).
    pub(crate) data: AtomicU64,
    /// Offset of the doorbell the consumer sleeps on (raw).
    pub(crate) doorbell: AtomicU64,
    /// Pid of the process holding the producer / consumer end; 0 = free.
    pub(crate) producer_claim: AtomicU32,
    pub(crate) consumer_claim: AtomicU32,
}

/// How a consumer is woken: a flag it raises before sleeping and the
/// eventfd it sleeps on, named by (pid, fd) so another process can obtain
/// its own descriptor for it with `pidfd_getfd`.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct DoorbellShared {
    /// 1 while the consumer may be asleep; producers swap it to 0 and ring
    /// when they see 1.
    pub(crate) sleeping: model::AtomicU32,
    pub(crate) consumer_pid: AtomicU32,
    pub(crate) consumer_fd: AtomicI32,
    /// Bumped each time a consumer registers a new eventfd.
    pub(crate) generation: AtomicU32,
}

pub(crate) const FANIN_MAGIC: u64 = u64::from_le_bytes(*b"FERROXFI");
/// Kind of a fan-in in the region directory.
pub const FANIN_KIND: u32 = 0x4641_4e49; // "FANI"
pub const FANIN_VERSION: u32 = 1;
/// Most producer lanes of one fan-in.
pub const MAX_LANES: usize = 64;

#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct FaninHeader {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) lanes: AtomicU32,
    pub(crate) doorbell: DoorbellShared,
    /// Raw offsets of each lane's ring header.
    pub(crate) lane_rings: [AtomicU64; MAX_LANES],
}

#[cfg(not(loom))]
mod shared_impls {
    use super::*;
    use crate::region::Shared;

    // SAFETY: repr(C) of atomic integers only.
    unsafe impl Shared for super::super::ring::RingHeader {}
    // SAFETY: repr(C) of atomic integers only.
    unsafe impl Shared for DoorbellShared {}
    // SAFETY: repr(C) of atomic integers only.
    unsafe impl Shared for FaninHeader {}
}
