//! Synchronisation primitives for shared memory.
//!
//! [`ShmLock`] is a lock that lives in shared memory and works across
//! processes; it guards only control-path work (growing, refilling a core
//! cache from the shared free list), never a per-message path.
//!
//! [`model`] holds the atomics of the ring and doorbell protocols: `std`'s,
//! or `loom`'s when the crate is built with `--cfg loom`, so that the
//! protocols' orderings are model-checked on exactly the code that runs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Atomics of the lock-free protocols (std, or loom under `--cfg loom`).
pub(crate) mod model {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
}

/// This process's id, as stored in lock and claim words.
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}

/// Whether a process with this id still exists.
pub(crate) fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A spin lock in shared memory holding the pid of its holder.
///
/// A holder that died with the lock held is detected (its pid no longer
/// exists) and the lock is taken over, so a crashed process cannot wedge the
/// region. Threads of one process share a pid and simply spin.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct ShmLock {
    holder: AtomicU32,
}

impl ShmLock {
    pub(crate) fn lock(&self) -> ShmLockGuard<'_> {
        let me = current_pid();
        let mut spins: u32 = 0;
        loop {
            let seen = self.holder.load(Ordering::Relaxed);
            if seen == 0
                && self
                    .holder
                    .compare_exchange_weak(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return ShmLockGuard { lock: self };
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                if seen != 0 && seen != me && spins.is_multiple_of(4096) && !process_alive(seen) {
                    // The holder died inside its critical section. The data it
                    // guarded is only ever changed by single-word publishes, so
                    // taking the lock over is safe.
                    let _ =
                        self.holder
                            .compare_exchange(seen, 0, Ordering::Relaxed, Ordering::Relaxed);
                }
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct ShmLockGuard<'a> {
    lock: &'a ShmLock,
}

impl Drop for ShmLockGuard<'_> {
    fn drop(&mut self) {
        self.lock.holder.store(0, Ordering::Release);
    }
}

/// Copies `name` into a fixed-size field of `N` words (names in shared
/// memory are stored as atomics so readers never race a writer).
pub(crate) fn store_name<const N: usize>(field: &[AtomicU64; N], name: &str) {
    let mut bytes = vec![0u8; N * 8];
    let len = name.len().min(N * 8);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    for (word, chunk) in field.iter().zip(bytes.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        word.store(u64::from_le_bytes(w), Ordering::Relaxed);
    }
}

/// Reads a name stored by [`store_name`].
pub(crate) fn load_name<const N: usize>(field: &[AtomicU64; N]) -> String {
    let mut bytes = Vec::with_capacity(N * 8);
    for word in field {
        bytes.extend_from_slice(&word.load(Ordering::Relaxed).to_le_bytes());
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
