//! Hot-key read cache, per core, free of I/O.
//!
//! A few keys can take a large share of the reads; answering those from
//! the proxy spares their server. [`Detector`] finds the keys this core
//! reads at least `min_rate` times a second (a count-min sketch per
//! one-second window feeding a small table of candidates with exact
//! counts and a decayed rate), and reports the keys that cool down again.
//! [`Cache`] keeps whole reply bytes by key, bounded in bytes with O(1)
//! CLOCK eviction, dropped by key, by server or all at once when the
//! servers' invalidations say so, and guarded against a reply that left
//! the server before an invalidation of its key (see [`FillTicket`]).
//! The engine would read through the cache only for keys the detector
//! calls hot, fill it from replies to reads it sent, and drop the entries
//! of keys reported cooled.

pub mod cache;
pub mod detector;

pub use cache::{Cache, CacheCounters, FillTicket, ENTRY_OVERHEAD};
pub use detector::Detector;

/// A key's 64-bit hash, shared by both units: 8-byte words mixed by
/// multiply and rotate, then a final avalanche (MurmurHash3's `fmix64`),
/// so every bit slice of the result is usable as an index. Not keyed: it
/// is only used where a collision costs a miss, a shared sketch counter
/// or a refused fill, never a wrong answer.
pub(crate) fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, word: u64| (h ^ word).wrapping_mul(K).rotate_left(29);
    let mut h = (key.len() as u64).wrapping_mul(K);
    let mut words = key.chunks_exact(8);
    for word in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        h = mix(h, u64::from_le_bytes(bytes));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut bytes = [0u8; 8];
        bytes[..rest.len()].copy_from_slice(rest);
        h = mix(h, u64::from_le_bytes(bytes));
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}
