//! The region header: the first 4 KiB of segment 0.
//!
//! Every field is an atomic so that any process may read any field at any
//! time without a data race; fields that never change after creation are
//! written before the magic is published (Release) and read after it is
//! checked (Acquire).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::sync::{load_name, store_name, ShmLock};

/// "FERROXRG" as a little-endian word.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"FERROXRG");
/// Bumped whenever anything in this file or in the layouts the region
/// contains changes incompatibly. A process refuses to attach to a region of
/// another layout version.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes reserved for the header at the start of segment 0.
pub(crate) const HEADER_SIZE: u64 = 4096;
/// Most segments a region can have.
pub const MAX_SEGMENTS: usize = 64;
/// Most named objects in a region's directory.
pub const DIRECTORY_ENTRIES: usize = 32;
/// Longest name of a directory entry, in bytes.
pub const MAX_ENTRY_NAME: usize = 32;

/// Segment flag: backed by hugetlbfs.
pub(crate) const SEGMENT_HUGEPAGES: u64 = 1;

#[repr(C)]
#[derive(Debug)]
pub(crate) struct SegmentDesc {
    /// Mapped size in bytes; 0 while the segment does not exist yet.
    pub(crate) size: AtomicU64,
    /// Bump cursor: bytes handed out from the start of the segment.
    pub(crate) used: AtomicU64,
    pub(crate) flags: AtomicU64,
    _reserved: AtomicU64,
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct DirEntry {
    name: [AtomicU64; MAX_ENTRY_NAME / 8],
    /// Raw [`crate::Offset`]; `u64::MAX` marks a free entry. Written last.
    pub(crate) offset: AtomicU64,
    /// Object kind (high 32 bits) and its layout version (low 32 bits).
    pub(crate) kind_version: AtomicU64,
}

impl DirEntry {
    pub(crate) fn name(&self) -> String {
        load_name(&self.name)
    }

    pub(crate) fn set_name(&self, name: &str) {
        store_name(&self.name, name);
    }
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct RegionHeader {
    pub(crate) magic: AtomicU64,
    pub(crate) layout_version: AtomicU32,
    pub(crate) header_size: AtomicU32,
    /// Serialises grow, alloc and directory changes between processes.
    pub(crate) lock: ShmLock,
    pub(crate) segment_count: AtomicU32,
    /// Bumped by every grow; lets a reader notice new segments cheaply.
    pub(crate) generation: AtomicU64,
    pub(crate) owner_pid: AtomicU32,
    _pad0: [AtomicU32; 7],
    name: [AtomicU64; 8],
    huge_dir: [AtomicU64; 16],
    shm_dir: [AtomicU64; 16],
    pub(crate) segments: [SegmentDesc; MAX_SEGMENTS],
    pub(crate) directory: [DirEntry; DIRECTORY_ENTRIES],
}

const _: () = assert!(std::mem::size_of::<RegionHeader>() as u64 <= HEADER_SIZE);
const _: () = assert!(std::mem::size_of::<SegmentDesc>() == 32);
const _: () = assert!(std::mem::size_of::<DirEntry>() == 48);

impl RegionHeader {
    pub(crate) fn name(&self) -> String {
        load_name(&self.name)
    }

    pub(crate) fn huge_dir(&self) -> String {
        load_name(&self.huge_dir)
    }

    pub(crate) fn shm_dir(&self) -> String {
        load_name(&self.shm_dir)
    }

    /// Fills a zeroed header; the magic is published last.
    pub(crate) fn initialise(&self, name: &str, huge_dir: &str, shm_dir: &str, first: (u64, u64)) {
        self.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        self.header_size
            .store(HEADER_SIZE as u32, Ordering::Relaxed);
        self.owner_pid.store(std::process::id(), Ordering::Relaxed);
        store_name(&self.name, name);
        store_name(&self.huge_dir, huge_dir);
        store_name(&self.shm_dir, shm_dir);
        for entry in &self.directory {
            entry.offset.store(u64::MAX, Ordering::Relaxed);
        }
        let (size, flags) = first;
        self.segments[0].size.store(size, Ordering::Relaxed);
        self.segments[0].used.store(HEADER_SIZE, Ordering::Relaxed);
        self.segments[0].flags.store(flags, Ordering::Relaxed);
        self.segment_count.store(1, Ordering::Relaxed);
        self.magic.store(MAGIC, Ordering::Release);
    }
}

// SAFETY: repr(C) of atomic integers only (ShmLock is one AtomicU32), so any
// bit pattern is valid and all mutation through `&RegionHeader` is atomic.
unsafe impl super::Shared for RegionHeader {}
