//! Heap allocations counted per thread, so the statistics can show that a
//! warm dataplane core allocates nothing per request (`core_allocations`
//! in the `--stats-every` line).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting the allocations each thread makes.
/// Installed as the `#[global_allocator]` of `ferrox-dataplane`.
#[derive(Debug)]
pub struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // A const-initialized Cell: no allocation and no destructor, so this is
    // safe inside the allocator and during thread teardown.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call goes unchanged to `System`, which upholds the
// `GlobalAlloc` contract; counting only touches a thread-local `Cell`.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's guarantees, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above; `ptr` came from `System` through this allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations (and reallocations) this thread has made; 0 unless
/// [`CountingAllocator`] is the global allocator.
pub fn thread_allocations() -> u64 {
    ALLOCATIONS.try_with(Cell::get).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_this_thread_allocates() {
        let before = thread_allocations();
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a non-zero layout.
        let p = unsafe { CountingAllocator.alloc(layout) };
        assert!(!p.is_null());
        // SAFETY: `p` was allocated here with `layout`.
        let p = unsafe { CountingAllocator.realloc(p, layout, 128) };
        assert!(!p.is_null());
        // SAFETY: `p` now holds 128 bytes, freed once with that layout.
        unsafe { CountingAllocator.dealloc(p, Layout::from_size_align(128, 8).unwrap()) };
        assert_eq!(thread_allocations() - before, 2);
    }
}
