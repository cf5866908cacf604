//! The pool's shared-memory records. All atomics, all `#[repr(C)]`.
//!
//! Fields marked "owner-only" are written by the core that owns the slot
//! (plain load + store, never a read-modify-write), and may be read by
//! anyone (statistics), which is why they are atomics at all.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::Arc;

use crate::region::{Region, RegionError, Shared};
use crate::sync::ShmLock;
use crate::Offset;

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"FERROXPL");
/// Kind number of a pool in the region directory.
pub const KIND: u32 = 0x504f_4f4c; // "POOL"
/// Layout version of everything in this file.
pub const VERSION: u32 = 1;

pub const MAX_CLASSES: usize = 8;
pub const MAX_CORES: usize = 64;
pub const MAX_ARENAS: usize = 128;
/// Bytes of [`ChunkHeader`] at the start of every chunk.
pub const CHUNK_HEADER: u32 = 16;
/// Chunks moved at once between a core cache and the shared free list.
pub(crate) const BATCH: u64 = 32;

pub(crate) const STATE_FREE: u32 = 1;
pub(crate) const STATE_OWNED: u32 = 2;
pub(crate) const STATE_TRANSIT: u32 = 3;

/// The first 16 bytes of every chunk.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ChunkHeader {
    /// Next chunk of a free list or of a node's chain (raw Offset).
    pub(crate) next: AtomicU64,
    /// Payload bytes in use.
    pub(crate) len: AtomicU32,
    /// state (bits 24..32) | class (16..24) | home core (0..16).
    pub(crate) meta: AtomicU32,
}

pub(crate) fn pack_meta(state: u32, class: usize, home: usize) -> u32 {
    (state << 24) | ((class as u32) << 16) | home as u32
}

pub(crate) fn meta_state(meta: u32) -> u32 {
    meta >> 24
}

pub(crate) fn meta_class(meta: u32) -> usize {
    ((meta >> 16) & 0xff) as usize
}

pub(crate) fn meta_home(meta: u32) -> usize {
    (meta & 0xffff) as usize
}

/// One size class's shared free list.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct ClassShared {
    pub(crate) lock: ShmLock,
    pub(crate) chunk_size: AtomicU32,
    pub(crate) free_head: AtomicU64,
    pub(crate) free_count: AtomicU64,
    pub(crate) total: AtomicU64,
    /// Peak of chunks outside the shared free list (in use or cached by a core).
    pub(crate) high_water: AtomicU64,
}

/// A contiguous run of chunks of one class.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ArenaDesc {
    pub(crate) start: AtomicU64,
    pub(crate) chunks: AtomicU32,
    pub(crate) class: AtomicU32,
}

/// One core's cache of one class. Owner-only except for reads.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct CoreClass {
    pub(crate) local_head: AtomicU64,
    pub(crate) local_count: AtomicU64,
    pub(crate) allocs: AtomicU64,
    pub(crate) frees: AtomicU64,
}

#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct CoreSlot {
    /// Pid of the process using the slot; 0 when free.
    pub(crate) claim: AtomicU32,
    pub(crate) classes: [CoreClass; MAX_CLASSES],
}

/// Chunks other cores freed back to this core, one stack per class.
/// Others push (CAS); the owner takes the whole stack (swap), so the
/// stack has no ABA problem. On its own cache line, away from `CoreSlot`.
#[repr(C, align(64))]
#[derive(Debug)]
pub(crate) struct RemoteFree {
    pub(crate) heads: [AtomicU64; MAX_CLASSES],
}

#[repr(C)]
#[derive(Debug)]
pub(crate) struct PoolHeader {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    pub(crate) class_count: AtomicU32,
    /// Serialises adding arenas.
    pub(crate) grow_lock: ShmLock,
    pub(crate) arena_count: AtomicU32,
    pub(crate) classes: [ClassShared; MAX_CLASSES],
    pub(crate) arenas: [ArenaDesc; MAX_ARENAS],
    pub(crate) cores: [CoreSlot; MAX_CORES],
    pub(crate) remote: [RemoteFree; MAX_CORES],
}

// SAFETY: repr(C) structs whose fields are all atomic integers (ShmLock is
// one AtomicU32); any bit pattern is valid and all mutation is atomic.
unsafe impl Shared for ChunkHeader {}
// SAFETY: as above.
unsafe impl Shared for PoolHeader {}

/// A checked reference to a pool header, kept valid by the region handle
/// it holds: the hot path reaches the header with one pointer instead of an
/// offset translation with bounds checks.
#[derive(Debug, Clone)]
pub(crate) struct HeaderRef {
    /// Keeps the mapping `header` points into alive.
    _region: Arc<Region>,
    header: NonNull<PoolHeader>,
}

impl HeaderRef {
    pub(crate) fn new(region: &Arc<Region>, at: Offset) -> Result<HeaderRef, RegionError> {
        let header: &PoolHeader = region.view(at)?;
        Ok(HeaderRef {
            _region: region.clone(),
            header: NonNull::from(header),
        })
    }

    #[inline]
    pub(crate) fn get(&self) -> &PoolHeader {
        // SAFETY: `header` came from `Region::view` (bounds and alignment
        // checked) on `self._region`, whose mappings live while it does.
        unsafe { self.header.as_ref() }
    }
}

// SAFETY: the pointer targets shared memory kept mapped by the held region,
// and `PoolHeader` is all atomics: safe to reach from any thread.
unsafe impl Send for HeaderRef {}
// SAFETY: as above.
unsafe impl Sync for HeaderRef {}
