//! This process's view of a region's segments: where each is mapped, and the
//! raw accesses every other module builds on.
//!
//! The only module of the region that dereferences pointers. A segment is a
//! file mapped shared (hugetlbfs or tmpfs) or, for tests under Miri and loom,
//! a zeroed heap block; both give a page-aligned base that never moves while
//! the [`Mapping`] lives.

use std::alloc::Layout;
use std::fs::File;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Mutex;

use memmap2::{MmapOptions, MmapRaw};

use super::header::MAX_SEGMENTS;
use super::{Region, RegionError};
use crate::Offset;

/// Alignment of every segment base, and of heap blocks.
pub(crate) const SEGMENT_ALIGN: usize = 4096;

/// Memory that backs one segment.
#[derive(Debug)]
pub(crate) enum SegmentMemory {
    Mapped(MmapRaw),
    Heap(HeapBlock),
}

impl SegmentMemory {
    pub(crate) fn map_file(file: &File, len: u64) -> std::io::Result<SegmentMemory> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map(SegmentMemory::Mapped)
    }

    pub(crate) fn heap(len: u64) -> SegmentMemory {
        SegmentMemory::Heap(HeapBlock::zeroed(len as usize))
    }

    fn base(&self) -> *mut u8 {
        match self {
            SegmentMemory::Mapped(map) => map.as_mut_ptr(),
            SegmentMemory::Heap(block) => block.ptr.as_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            SegmentMemory::Mapped(map) => map.len(),
            SegmentMemory::Heap(block) => block.layout.size(),
        }
    }
}

/// A zeroed, page-aligned heap allocation standing in for a mapped segment.
#[derive(Debug)]
pub(crate) struct HeapBlock {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl HeapBlock {
    fn zeroed(len: usize) -> HeapBlock {
        let layout = Layout::from_size_align(len.max(SEGMENT_ALIGN), SEGMENT_ALIGN)
            .expect("segment size overflows a Layout");
        // SAFETY: the layout has a non-zero size (at least SEGMENT_ALIGN).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        HeapBlock { ptr, layout }
    }
}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout and
        // is freed once, here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

// SAFETY: a HeapBlock is plain memory owned by its Mapping; all access to it
// goes through atomics or through the unsafe accessors whose callers uphold
// the cross-thread protocol, exactly as for a shared mapping.
unsafe impl Send for HeapBlock {}
// SAFETY: as above; `&HeapBlock` gives no access by itself.
unsafe impl Sync for HeapBlock {}

/// Where each segment of the region is mapped in this process.
///
/// Lookups are lock-free (one acquire load); adding a segment takes the
/// mutex and publishes base and length before any reader can see the base.
#[derive(Debug)]
pub(crate) struct Mapping {
    bases: [AtomicPtr<u8>; MAX_SEGMENTS],
    lens: [AtomicU64; MAX_SEGMENTS],
    memory: Mutex<Vec<SegmentMemory>>,
}

impl Mapping {
    pub(crate) fn new() -> Mapping {
        Mapping {
            bases: std::array::from_fn(|_| AtomicPtr::new(std::ptr::null_mut())),
            lens: std::array::from_fn(|_| AtomicU64::new(0)),
            memory: Mutex::new(Vec::new()),
        }
    }

    /// Base address and length of segment `seg`, if it is mapped here.
    #[inline]
    pub(crate) fn segment(&self, seg: usize) -> Option<(*mut u8, u64)> {
        let base = self.bases.get(seg)?.load(Ordering::Acquire);
        if base.is_null() {
            None
        } else {
            Some((base, self.lens[seg].load(Ordering::Relaxed)))
        }
    }

    /// Runs `map` to produce segment `seg` unless another thread already did.
    pub(crate) fn install<E>(
        &self,
        seg: usize,
        map: impl FnOnce() -> Result<SegmentMemory, E>,
    ) -> Result<(), E> {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        if !self.bases[seg].load(Ordering::Acquire).is_null() {
            return Ok(());
        }
        let segment = map()?;
        let base = segment.base();
        self.lens[seg].store(segment.len() as u64, Ordering::Relaxed);
        self.bases[seg].store(base, Ordering::Release);
        memory.push(segment);
        Ok(())
    }
}

/// Marker for types that may be viewed in shared memory.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` types whose every field is an atomic
/// integer (or an array or struct of such): any bit pattern, including all
/// zeroes, must be a valid value, and every mutation through `&Self` must be
/// an atomic operation, so that processes sharing the bytes never race.
pub unsafe trait Shared: Sized {}

/// Reinterprets `len` bytes at `ptr` as a `T`.
///
/// # Safety
///
/// `ptr` must point into a live mapping with at least `size_of::<T>()`
/// bytes left, aligned for `T`, and the mapping must outlive `'a`.
pub(crate) unsafe fn view<'a, T: Shared>(ptr: *mut u8) -> &'a T {
    debug_assert_eq!(ptr as usize % std::mem::align_of::<T>(), 0);
    // SAFETY: the caller guarantees bounds, alignment and lifetime; `Shared`
    // guarantees every bit pattern is a valid `T` and all mutation is atomic.
    unsafe { &*ptr.cast::<T>() }
}

/// Typed and raw access to the region's bytes.
impl Region {
    /// The shared object of type `T` at `offset`.
    pub fn view<T: Shared>(&self, offset: Offset) -> Result<&T, RegionError> {
        let ptr = self.ptr(offset, std::mem::size_of::<T>() as u64)?;
        if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
            return Err(RegionError::Misaligned {
                offset,
                type_name: std::any::type_name::<T>(),
            });
        }
        // SAFETY: `ptr` is inside a mapping owned by `self.mapping`, which
        // never unmaps while `self` lives; bounds and alignment were checked.
        Ok(unsafe { view::<T>(ptr) })
    }

    /// The `len` bytes at `offset`.
    ///
    /// # Safety
    ///
    /// No process may write these bytes while the returned slice lives (the
    /// caller's protocol, e.g. chunk ownership or a ring's published range,
    /// must guarantee it).
    pub unsafe fn bytes(&self, offset: Offset, len: usize) -> Result<&[u8], RegionError> {
        let ptr = self.ptr(offset, len as u64)?;
        // SAFETY: in bounds of a live mapping (checked by `ptr`); the caller
        // guarantees no concurrent writer.
        Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
    }

    /// The `len` bytes at `offset`, writable.
    ///
    /// # Safety
    ///
    /// The caller must have exclusive access to these bytes (no other
    /// reader or writer in any process) while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn bytes_mut(&self, offset: Offset, len: usize) -> Result<&mut [u8], RegionError> {
        let ptr = self.ptr(offset, len as u64)?;
        // SAFETY: in bounds of a live mapping (checked by `ptr`); the caller
        // guarantees exclusive access.
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
    }
}
