//! The chunk pool: fixed-size chunks in a few size classes, and nodes that
//! chain chunks into buffers larger than one chunk.
//!
//! Each core allocates from its own cache (an owner-only free list: no
//! atomics beyond plain loads and stores, so O(1) with no contention). A
//! cache that runs dry takes a batch from the class's shared free list under
//! a short lock; one that overflows gives a batch back. A chunk freed by a
//! core other than its home goes back through the home core's remote-free
//! stack, which the home core empties when its cache runs dry. Exhaustion is
//! an error ([`PoolError::Exhausted`]) the caller turns into a protocol
//! error reply; nothing here panics on a full pool.
//!
//! Handles: [`Pool`] (any thread or process: stats, adding chunks, claiming
//! a core) and [`CoreCache`] (one per core: alloc and free).

use std::sync::atomic::Ordering;
use std::sync::Arc;

#[allow(unsafe_code)]
mod chunk;
#[allow(unsafe_code)] // declares its records `Shared`
mod layout;

pub use chunk::{Chunk, Node};
pub use layout::{CHUNK_HEADER, KIND, MAX_ARENAS, MAX_CLASSES, MAX_CORES, VERSION};

use crate::region::{Region, RegionError};
use crate::sync::{current_pid, process_alive};
use crate::Offset;
use layout::*;

/// Size classes and initial chunk counts of a new pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub classes: Vec<ClassConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassConfig {
    /// Chunk size in bytes, header included: a multiple of 64, at least 64.
    pub chunk_size: u32,
    /// Chunks to carve at creation.
    pub chunks: u32,
}

impl Default for PoolConfig {
    /// Small requests, packet-sized buffers, and large-value links.
    fn default() -> Self {
        PoolConfig {
            classes: vec![
                ClassConfig {
                    chunk_size: 256,
                    chunks: 16384,
                },
                ClassConfig {
                    chunk_size: 2048,
                    chunks: 8192,
                },
                ClassConfig {
                    chunk_size: 16384,
                    chunks: 1024,
                },
            ],
        }
    }
}

impl PoolConfig {
    /// Region bytes the pool needs, header included.
    pub fn bytes(&self) -> u64 {
        let arenas: u64 = self
            .classes
            .iter()
            .map(|c| c.chunk_size as u64 * c.chunks as u64)
            .sum();
        std::mem::size_of::<PoolHeader>() as u64 + arenas + 64 * self.classes.len() as u64
    }
}

/// What went wrong in the pool, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Every chunk of the class is in use: shed load or grow the pool.
    #[error("chunk pool exhausted: no free {chunk_size}-byte chunk")]
    Exhausted { class: usize, chunk_size: u32 },
    #[error("invalid pool configuration: {0}")]
    Config(String),
    #[error("no size class {0}")]
    NoSuchClass(usize),
    #[error("core slot {core} is in use by pid {pid}")]
    CoreBusy { core: usize, pid: u32 },
    #[error("core slot {0} is out of range (max {MAX_CORES})")]
    NoSuchCore(usize),
    /// An offset that is not a chunk of this pool in the expected state: a
    /// bug or corrupt message on the sending side; the chunk is not touched.
    #[error("offset {offset} is not a chunk in transit: {reason}")]
    NotAChunk {
        offset: Offset,
        reason: &'static str,
    },
    #[error("pool header is corrupt or of another version: {0}")]
    BadHeader(String),
    #[error("the pool already has the maximum of {MAX_ARENAS} arenas")]
    TooManyArenas,
    #[error(transparent)]
    Region(#[from] RegionError),
}

type Result<T, E = PoolError> = std::result::Result<T, E>;

/// Counters of one size class, readable from any process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassStats {
    pub chunk_size: u32,
    pub total: u64,
    pub in_use: u64,
    pub free: u64,
    /// Peak of chunks out of the shared free list: in use plus what core
    /// caches held at that moment (at most `2 × 32` per core above the true
    /// in-use peak).
    pub high_water: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    pub classes: Vec<ClassStats>,
}

/// A handle to a pool in a region. Cheap to clone; `Send + Sync`.
#[derive(Debug, Clone)]
pub struct Pool {
    region: Arc<Region>,
    header: HeaderRef,
}

impl Pool {
    /// Carves a new pool out of `region` and names it `name`.
    pub fn create(region: &Arc<Region>, name: &str, config: &PoolConfig) -> Result<Pool> {
        validate(config)?;
        let header_off = region.alloc(std::mem::size_of::<PoolHeader>() as u64, 64)?;
        let pool = Pool {
            region: region.clone(),
            header: HeaderRef::new(region, header_off)?,
        };
        let header = pool.header();
        header.version.store(VERSION, Ordering::Relaxed);
        header
            .class_count
            .store(config.classes.len() as u32, Ordering::Relaxed);
        for (class, c) in config.classes.iter().enumerate() {
            let shared = &header.classes[class];
            shared.chunk_size.store(c.chunk_size, Ordering::Relaxed);
            shared
                .free_head
                .store(Offset::NULL.to_raw(), Ordering::Relaxed);
        }
        for slot in &header.cores {
            for cc in &slot.classes {
                cc.local_head
                    .store(Offset::NULL.to_raw(), Ordering::Relaxed);
            }
        }
        for remote in &header.remote {
            for head in &remote.heads {
                head.store(Offset::NULL.to_raw(), Ordering::Relaxed);
            }
        }
        header.magic.store(MAGIC, Ordering::Release);
        for (class, c) in config.classes.iter().enumerate() {
            pool.add_chunks(class, c.chunks)?;
        }
        region.publish(name, KIND, VERSION, header_off)?;
        Ok(pool)
    }

    /// Finds pool `name` in `region` (created by this or another process).
    pub fn attach(region: &Arc<Region>, name: &str) -> Result<Pool> {
        let at = region.lookup(name, KIND, VERSION)?;
        let pool = Pool {
            region: region.clone(),
            header: HeaderRef::new(region, at)?,
        };
        let h = pool.header();
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(PoolError::BadHeader("bad magic".into()));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != VERSION {
            return Err(PoolError::BadHeader(format!(
                "version {version}, expected {VERSION}"
            )));
        }
        let classes = h.class_count.load(Ordering::Relaxed) as usize;
        if classes == 0 || classes > MAX_CLASSES {
            return Err(PoolError::BadHeader(format!("{classes} size classes")));
        }
        Ok(pool)
    }

    #[inline]
    fn header(&self) -> &PoolHeader {
        self.header.get()
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    pub fn class_count(&self) -> usize {
        self.header().class_count.load(Ordering::Relaxed) as usize
    }

    /// Chunk size of `class`, header included.
    pub fn chunk_size(&self, class: usize) -> u32 {
        self.header().classes[class]
            .chunk_size
            .load(Ordering::Relaxed)
    }

    /// Payload bytes of a chunk of `class`.
    pub fn payload_size(&self, class: usize) -> u32 {
        self.chunk_size(class) - CHUNK_HEADER
    }

    /// The smallest class whose payload holds `len` bytes, or the largest.
    pub fn class_for(&self, len: usize) -> usize {
        let count = self.class_count();
        (0..count)
            .find(|&c| self.payload_size(c) as usize >= len)
            .unwrap_or(count - 1)
    }

    /// Carves `count` more chunks of `class` from the region, growing the
    /// region first when this process owns it and it is full. Cores see the
    /// new chunks on their next refill; nothing pauses.
    pub fn add_chunks(&self, class: usize, count: u32) -> Result<()> {
        if class >= self.class_count() {
            return Err(PoolError::NoSuchClass(class));
        }
        if count == 0 {
            return Ok(());
        }
        let header = self.header();
        let _grow = header.grow_lock.lock();
        let arena_index = header.arena_count.load(Ordering::Relaxed) as usize;
        if arena_index >= MAX_ARENAS {
            return Err(PoolError::TooManyArenas);
        }
        let size = self.chunk_size(class) as u64;
        let bytes = size * count as u64;
        let start = match self.region.alloc(bytes, 64) {
            Err(RegionError::OutOfSpace { .. }) if self.region.is_owner() => {
                self.region.grow(bytes + 4096)?;
                self.region.alloc(bytes, 64)?
            }
            other => other?,
        };
        // Link the new chunks into one list, then splice it in whole.
        for i in 0..count as u64 {
            let chunk = self.chunk_header(start.add(i * size))?;
            let next = if i + 1 < count as u64 {
                start.add((i + 1) * size)
            } else {
                Offset::NULL
            };
            chunk.next.store(next.to_raw(), Ordering::Relaxed);
            chunk.len.store(0, Ordering::Relaxed);
            chunk
                .meta
                .store(pack_meta(STATE_FREE, class, 0), Ordering::Relaxed);
        }
        let arena = &header.arenas[arena_index];
        arena.start.store(start.to_raw(), Ordering::Relaxed);
        arena.chunks.store(count, Ordering::Relaxed);
        arena.class.store(class as u32, Ordering::Relaxed);
        header
            .arena_count
            .store(arena_index as u32 + 1, Ordering::Release);
        let last = start.add((count as u64 - 1) * size);
        let shared = &header.classes[class];
        let _lock = shared.lock.lock();
        self.chunk_header(last)?
            .next
            .store(shared.free_head.load(Ordering::Relaxed), Ordering::Relaxed);
        shared.free_head.store(start.to_raw(), Ordering::Relaxed);
        shared.free_count.fetch_add(count as u64, Ordering::Relaxed);
        shared.total.fetch_add(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Claims core slot `core` for this thread's exclusive use.
    ///
    /// A slot held by a process that no longer exists is taken over together
    /// with the chunks its cache held (a restarted dataplane inherits them).
    pub fn core(&self, core: usize) -> Result<CoreCache> {
        if core >= MAX_CORES {
            return Err(PoolError::NoSuchCore(core));
        }
        let slot = &self.header().cores[core];
        let me = current_pid();
        loop {
            let holder = slot.claim.load(Ordering::Acquire);
            let free = holder == 0 || (holder != me && !process_alive(holder));
            if !free {
                return Err(PoolError::CoreBusy { core, pid: holder });
            }
            if slot
                .claim
                .compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Ok(CoreCache {
                    pool: self.clone(),
                    core,
                    _not_sync: Default::default(),
                });
            }
        }
    }

    /// Counters per class, summed over cores. Reads only; stops nobody.
    pub fn stats(&self) -> PoolStats {
        let header = self.header();
        let classes = (0..self.class_count())
            .map(|class| {
                let shared = &header.classes[class];
                let (mut allocs, mut frees) = (0u64, 0u64);
                for slot in &header.cores {
                    allocs += slot.classes[class].allocs.load(Ordering::Relaxed);
                    frees += slot.classes[class].frees.load(Ordering::Relaxed);
                }
                let total = shared.total.load(Ordering::Relaxed);
                let in_use = allocs.saturating_sub(frees).min(total);
                ClassStats {
                    chunk_size: shared.chunk_size.load(Ordering::Relaxed),
                    total,
                    in_use,
                    free: total - in_use,
                    high_water: shared.high_water.load(Ordering::Relaxed),
                }
            })
            .collect();
        PoolStats { classes }
    }

    fn chunk_header(&self, chunk: Offset) -> Result<&ChunkHeader> {
        Ok(self.region.view(chunk)?)
    }

    /// Checks that `offset` is the start of a chunk of this pool.
    fn check_chunk(&self, offset: Offset) -> Result<()> {
        let header = self.header();
        let arenas = header.arena_count.load(Ordering::Acquire) as usize;
        let found = header.arenas[..arenas].iter().any(|arena| {
            let start = Offset::from_raw(arena.start.load(Ordering::Relaxed));
            let size = self.chunk_size(arena.class.load(Ordering::Relaxed) as usize) as u64;
            let len = size * arena.chunks.load(Ordering::Relaxed) as u64;
            start.segment() == offset.segment()
                && offset.byte() >= start.byte()
                && offset.byte() < start.byte() + len
                && (offset.byte() - start.byte()).is_multiple_of(size)
        });
        if found {
            Ok(())
        } else {
            Err(PoolError::NotAChunk {
                offset,
                reason: "not a chunk boundary of this pool",
            })
        }
    }
}

fn validate(config: &PoolConfig) -> Result<()> {
    let bad = |why: String| Err(PoolError::Config(why));
    if config.classes.is_empty() || config.classes.len() > MAX_CLASSES {
        return bad(format!(
            "1 to {MAX_CLASSES} size classes, got {}",
            config.classes.len()
        ));
    }
    let mut previous = 0;
    for c in &config.classes {
        if c.chunk_size < 64 || c.chunk_size % 64 != 0 || c.chunk_size > (1 << 24) {
            return bad(format!(
                "chunk size {} is not a multiple of 64 in 64..=16M",
                c.chunk_size
            ));
        }
        if c.chunk_size <= previous {
            return bad("size classes must be in increasing order".into());
        }
        previous = c.chunk_size;
    }
    Ok(())
}

/// One core's allocator: the only handle that allocates and frees.
///
/// `Send` (a core may be set up on one thread and run on another) but not
/// `Sync`: exactly one thread uses a core slot at a time.
#[derive(Debug)]
pub struct CoreCache {
    pool: Pool,
    core: usize,
    _not_sync: std::marker::PhantomData<std::cell::Cell<()>>,
}

impl CoreCache {
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn core(&self) -> usize {
        self.core
    }

    fn slot(&self) -> &CoreSlot {
        &self.pool.header().cores[self.core]
    }

    /// Takes a chunk of `class`, empty (`len` 0).
    pub fn alloc(&mut self, class: usize) -> Result<Chunk> {
        if class >= self.pool.class_count() {
            return Err(PoolError::NoSuchClass(class));
        }
        let cc = &self.slot().classes[class];
        let mut head = Offset::from_raw(cc.local_head.load(Ordering::Relaxed));
        if head.is_null() {
            head = self.refill(class)?;
        }
        let chunk = self.pool.chunk_header(head)?;
        let cc = &self.slot().classes[class];
        cc.local_head
            .store(chunk.next.load(Ordering::Relaxed), Ordering::Relaxed);
        cc.local_count.store(
            cc.local_count.load(Ordering::Relaxed) - 1,
            Ordering::Relaxed,
        );
        cc.allocs
            .store(cc.allocs.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        chunk.next.store(Offset::NULL.to_raw(), Ordering::Relaxed);
        chunk.len.store(0, Ordering::Relaxed);
        chunk
            .meta
            .store(pack_meta(STATE_OWNED, class, self.core), Ordering::Relaxed);
        Ok(Chunk::new(head, class as u8))
    }

    /// Returns a chunk to the pool: to this core's cache when this core is
    /// its home, otherwise to its home core's remote-free stack.
    pub fn free(&mut self, chunk: Chunk) {
        let offset = chunk.into_offset();
        self.free_offset(offset);
    }

    fn free_offset(&mut self, offset: Offset) {
        let header = self
            .pool
            .chunk_header(offset)
            .expect("a Chunk is always a valid offset");
        let meta = header.meta.load(Ordering::Relaxed);
        let (class, home) = (meta_class(meta), meta_home(meta));
        debug_assert_eq!(
            meta_state(meta),
            STATE_OWNED,
            "free of a chunk that is not owned"
        );
        header
            .meta
            .store(pack_meta(STATE_FREE, class, home), Ordering::Relaxed);
        let cc = &self.slot().classes[class];
        cc.frees
            .store(cc.frees.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if home == self.core {
            header
                .next
                .store(cc.local_head.load(Ordering::Relaxed), Ordering::Relaxed);
            cc.local_head.store(offset.to_raw(), Ordering::Relaxed);
            let count = cc.local_count.load(Ordering::Relaxed) + 1;
            cc.local_count.store(count, Ordering::Relaxed);
            if count > 2 * BATCH {
                self.give_back(class);
            }
        } else {
            let stack = &self.pool.header().remote[home].heads[class];
            let mut top = stack.load(Ordering::Relaxed);
            loop {
                header.next.store(top, Ordering::Relaxed);
                match stack.compare_exchange_weak(
                    top,
                    offset.to_raw(),
                    Ordering::Release,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(seen) => top = seen,
                }
            }
        }
    }

    /// Fills the empty local list of `class`: first from chunks other cores
    /// freed back to us, then a batch from the shared list.
    #[cold]
    fn refill(&mut self, class: usize) -> Result<Offset> {
        let pool = &self.pool;
        let header = pool.header();
        let cc = &header.cores[self.core].classes[class];
        let remote =
            header.remote[self.core].heads[class].swap(Offset::NULL.to_raw(), Ordering::Acquire);
        let (head, count) = if remote != Offset::NULL.to_raw() {
            let mut count = 0;
            let mut at = Offset::from_raw(remote);
            while !at.is_null() {
                count += 1;
                at = Offset::from_raw(pool.chunk_header(at)?.next.load(Ordering::Relaxed));
            }
            (Offset::from_raw(remote), count)
        } else {
            let shared = &header.classes[class];
            let _lock = shared.lock.lock();
            let head = Offset::from_raw(shared.free_head.load(Ordering::Relaxed));
            if head.is_null() {
                return Err(PoolError::Exhausted {
                    class,
                    chunk_size: pool.chunk_size(class),
                });
            }
            let (mut last, mut count) = (head, 1);
            while count < BATCH {
                let next = Offset::from_raw(pool.chunk_header(last)?.next.load(Ordering::Relaxed));
                if next.is_null() {
                    break;
                }
                last = next;
                count += 1;
            }
            let last = pool.chunk_header(last)?;
            shared
                .free_head
                .store(last.next.load(Ordering::Relaxed), Ordering::Relaxed);
            last.next.store(Offset::NULL.to_raw(), Ordering::Relaxed);
            let free = shared.free_count.load(Ordering::Relaxed) - count;
            shared.free_count.store(free, Ordering::Relaxed);
            let out = shared.total.load(Ordering::Relaxed) - free;
            shared.high_water.fetch_max(out, Ordering::Relaxed);
            (head, count)
        };
        // Re-homing: chunks taken from the shared list become ours.
        cc.local_head.store(head.to_raw(), Ordering::Relaxed);
        cc.local_count.store(count, Ordering::Relaxed);
        Ok(head)
    }

    /// Moves a batch from the local list of `class` to the shared list.
    #[cold]
    fn give_back(&mut self, class: usize) {
        let pool = &self.pool;
        let header = pool.header();
        let cc = &header.cores[self.core].classes[class];
        let head = Offset::from_raw(cc.local_head.load(Ordering::Relaxed));
        let mut last = head;
        for _ in 1..BATCH {
            last = Offset::from_raw(
                pool.chunk_header(last)
                    .expect("local list")
                    .next
                    .load(Ordering::Relaxed),
            );
        }
        let last_header = pool.chunk_header(last).expect("local list");
        cc.local_head
            .store(last_header.next.load(Ordering::Relaxed), Ordering::Relaxed);
        cc.local_count.store(
            cc.local_count.load(Ordering::Relaxed) - BATCH,
            Ordering::Relaxed,
        );
        let shared = &header.classes[class];
        let _lock = shared.lock.lock();
        last_header
            .next
            .store(shared.free_head.load(Ordering::Relaxed), Ordering::Relaxed);
        shared.free_head.store(head.to_raw(), Ordering::Relaxed);
        shared.free_count.fetch_add(BATCH, Ordering::Relaxed);
    }

    /// Hands a chunk to another core or process: its offset goes into a
    /// message, and the receiver takes it back with [`CoreCache::adopt`].
    pub fn send(&mut self, chunk: Chunk) -> Offset {
        let offset = chunk.into_offset();
        let header = self
            .pool
            .chunk_header(offset)
            .expect("a Chunk is always a valid offset");
        let meta = header.meta.load(Ordering::Relaxed);
        header.meta.store(
            pack_meta(STATE_TRANSIT, meta_class(meta), meta_home(meta)),
            Ordering::Release,
        );
        offset
    }

    /// Takes ownership of a chunk another core [`send`](CoreCache::send)s.
    /// An offset that is not a chunk in transit is refused, untouched.
    pub fn adopt(&mut self, offset: Offset) -> Result<Chunk> {
        self.pool.check_chunk(offset)?;
        let header = self.pool.chunk_header(offset)?;
        let meta = header.meta.load(Ordering::Acquire);
        if meta_state(meta) != STATE_TRANSIT {
            return Err(PoolError::NotAChunk {
                offset,
                reason: "chunk is not in transit",
            });
        }
        let owned = pack_meta(STATE_OWNED, meta_class(meta), meta_home(meta));
        header
            .meta
            .compare_exchange(meta, owned, Ordering::AcqRel, Ordering::Relaxed)
            .map_err(|_| PoolError::NotAChunk {
                offset,
                reason: "adopted twice",
            })?;
        Ok(Chunk::new(offset, meta_class(meta) as u8))
    }
}

impl Drop for CoreCache {
    /// Releases the slot; the cached chunks stay with it for the next
    /// claimant (so a restarted core loses nothing).
    fn drop(&mut self) {
        self.slot().claim.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
