//! The ring protocol: single producer, single consumer, variable-size
//! records, no locks.
//!
//! Positions (`head`, `tail`) count bytes ever written and never wrap; the
//! byte index is `pos & (capacity - 1)`. A record is an 8-byte header
//! (`len: u32`, `tag: u32`, little-endian) and its payload padded to 8
//! bytes. A record never straddles the end of the ring: when it would, the
//! producer writes a header with tag [`WRAP`] and the record starts again at
//! index 0. A record is at most `capacity / 2` bytes, so it always fits in
//! an empty ring whatever the wrap waste.
//!
//! Ordering: the producer writes bytes, then stores `tail` (Release); the
//! consumer loads `tail` (Acquire), reads bytes, then stores `head`
//! (Release); the producer loads `head` (Acquire) before reusing bytes. Each
//! side caches the other's index and rereads it only when it looks
//! full/empty, so the busy path touches the other side's cache line rarely.
//!
//! The byte storage is a trait so that the same code runs over shared
//! memory and, under `--cfg loom`, over cells loom can check for races.

use crate::sync::model::{AtomicU64, Ordering};

/// Tag of a record that only says "continue at index 0".
pub(crate) const WRAP: u32 = u32::MAX;
pub(crate) const RECORD_HEADER: usize = 8;
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"FERROXMQ");
/// Kind of a ring in the region directory.
pub const KIND: u32 = 0x5249_4e47; // "RING"
/// Layout version of the ring header and record format.
pub const VERSION: u32 = 1;
pub const MIN_CAPACITY: u64 = 64;
pub const MAX_CAPACITY: u64 = 1 << 31;

/// The fields of one side, alone on a cache line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(crate) struct Side {
    /// This side's own position (producer: tail; consumer: head).
    pub(crate) pos: AtomicU64,
    /// This side's last view of the other side's position.
    pub(crate) cached_other: AtomicU64,
}

#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct RingHeader {
    pub(crate) meta: super::layout::RingMeta,
    pub(crate) producer: Side,
    pub(crate) consumer: Side,
}

/// Bytes of a ring, with the two accessors the protocol needs.
pub(crate) trait Storage {
    fn capacity(&self) -> usize;

    /// Copies `src` to index `at`.
    ///
    /// # Safety
    ///
    /// `at + src.len() <= capacity`, and the range is free (the producer
    /// owns it: not yet published, and already released by the consumer).
    unsafe fn write(&self, at: usize, src: &[u8]);

    /// Runs `f` over `len` bytes at index `at`.
    ///
    /// # Safety
    ///
    /// `at + len <= capacity`, and the range is published and not yet
    /// released, so nobody writes it while `f` runs.
    unsafe fn read<R>(&self, at: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R;

    /// Runs `f` over `len` writable bytes at index `at`.
    ///
    /// # Safety
    ///
    /// As for [`Storage::write`].
    unsafe fn fill(&self, at: usize, len: usize, f: impl FnOnce(&mut [u8]));
}

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// No room now: the consumer is behind. Retry later or shed load.
    #[error("queue full")]
    Full,
    /// The message can never fit this ring.
    #[error("message of {len} bytes exceeds the ring's limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// Tag `u32::MAX` is reserved for the ring's own use.
    #[error("tag {0:#x} is reserved")]
    ReservedTag(u32),
}

pub(crate) fn record_len(payload: usize) -> usize {
    RECORD_HEADER + payload.div_ceil(8) * 8
}

/// Largest payload a ring of `capacity` bytes accepts.
pub(crate) fn max_payload(capacity: usize) -> usize {
    capacity / 2 - RECORD_HEADER
}

fn encode_header(len: u32, tag: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&len.to_le_bytes());
    h[4..].copy_from_slice(&tag.to_le_bytes());
    h
}

fn decode_header(h: &[u8]) -> (u32, u32) {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let tag = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    (len, tag)
}

/// The producer's half of the protocol.
///
/// `pending` is the producer's private tail: records written but not yet
/// published by [`publish`].
pub(crate) fn write<S: Storage>(
    header: &RingHeader,
    storage: &S,
    pending: &mut u64,
    tag: u32,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Result<(), PushError> {
    if tag == WRAP {
        return Err(PushError::ReservedTag(tag));
    }
    let cap = storage.capacity();
    let max = max_payload(cap);
    if len > max {
        return Err(PushError::TooLarge { len, max });
    }
    let rec = record_len(len);
    let tail = *pending;
    let index = (tail as usize) & (cap - 1);
    let to_end = cap - index;
    let needed = if rec <= to_end { rec } else { to_end + rec };
    let side = &header.producer;
    let mut head = side.cached_other.load(Ordering::Relaxed);
    if tail + needed as u64 - head > cap as u64 {
        head = header.consumer.pos.load(Ordering::Acquire);
        side.cached_other.store(head, Ordering::Relaxed);
        if tail + needed as u64 - head > cap as u64 {
            return Err(PushError::Full);
        }
    }
    let mut at = index;
    if rec > to_end {
        // SAFETY: index + 8 <= cap (index is 8-aligned and below cap), and the
        // bytes up to `tail + needed` are free: checked against `head` above.
        unsafe { storage.write(index, &encode_header(0, WRAP)) };
        at = 0;
    }
    // SAFETY: at + rec <= cap by construction, and the range is free (above).
    unsafe {
        storage.write(at, &encode_header(len as u32, tag));
    }
    // SAFETY: as above; the payload follows the header inside the record.
    unsafe { storage.fill(at + RECORD_HEADER, len, fill) };
    *pending = tail + needed as u64;
    Ok(())
}

/// Makes every record written so far visible to the consumer.
pub(crate) fn publish(header: &RingHeader, pending: u64) {
    header.producer.pos.store(pending, Ordering::Release);
}

/// Whether the consumer has nothing to read (rereads the producer's tail).
pub(crate) fn is_empty(header: &RingHeader) -> bool {
    let head = header.consumer.pos.load(Ordering::Relaxed);
    let tail = header.producer.pos.load(Ordering::Acquire);
    header.consumer.cached_other.store(tail, Ordering::Relaxed);
    head == tail
}

/// The consumer's half: reads one record, hands it to `f`, releases it.
pub(crate) fn read<S: Storage, R>(
    header: &RingHeader,
    storage: &S,
    f: impl FnOnce(u32, &[u8]) -> R,
) -> Option<R> {
    let cap = storage.capacity();
    let side = &header.consumer;
    let mut head = side.pos.load(Ordering::Relaxed);
    let mut tail = side.cached_other.load(Ordering::Relaxed);
    if head == tail {
        tail = header.producer.pos.load(Ordering::Acquire);
        side.cached_other.store(tail, Ordering::Relaxed);
        if head == tail {
            return None;
        }
    }
    let mut index = (head as usize) & (cap - 1);
    // SAFETY: a published record starts at `head`; its 8-byte header is in
    // bounds (index is 8-aligned and below cap) and stable until released.
    let (mut len, mut tag) = unsafe { storage.read(index, RECORD_HEADER, decode_header) };
    if tag == WRAP {
        head += (cap - index) as u64;
        index = 0;
        // SAFETY: the producer publishes a wrap marker together with the
        // record after it, so a record header is published at index 0.
        (len, tag) = unsafe { storage.read(0, RECORD_HEADER, decode_header) };
    }
    // A length no producer could have written (corrupt memory) is clamped so
    // the read stays inside the ring.
    let len = (len as usize)
        .min(max_payload(cap))
        .min(cap - index - RECORD_HEADER);
    // SAFETY: index + 8 + len <= cap (clamped above); the range lies inside
    // the published record, which nobody writes until `head` moves past it.
    let out = unsafe { storage.read(index + RECORD_HEADER, len, |payload| f(tag, payload)) };
    side.pos
        .store(head + record_len(len) as u64, Ordering::Release);
    Some(out)
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! `RUSTFLAGS="--cfg loom" cargo test -p hugepage-pool --lib --release loom`
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;

    /// Ring bytes as loom cells (one per 8-byte word), so loom reports any
    /// read that is not ordered after the write it observes.
    struct Cells(Vec<UnsafeCell<u64>>);

    impl Storage for Cells {
        fn capacity(&self) -> usize {
            self.0.len() * 8
        }

        unsafe fn write(&self, at: usize, src: &[u8]) {
            // SAFETY: forwarded from the caller.
            unsafe { self.fill(at, src.len(), |dst| dst.copy_from_slice(src)) }
        }

        unsafe fn read<R>(&self, at: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
            let mut buf = vec![0u8; len];
            for (i, b) in buf.iter_mut().enumerate() {
                let word = self.0[(at + i) / 8].with(|p| {
                    // SAFETY: loom checks that this read is ordered after the write.
                    unsafe { *p }
                });
                *b = word.to_le_bytes()[(at + i) % 8];
            }
            f(&buf)
        }

        unsafe fn fill(&self, at: usize, len: usize, f: impl FnOnce(&mut [u8])) {
            let mut buf = vec![0u8; len];
            f(&mut buf);
            for (i, b) in buf.iter().enumerate() {
                self.0[(at + i) / 8].with_mut(|p| {
                    // SAFETY: loom checks that no other access races this one.
                    let mut bytes = unsafe { *p }.to_le_bytes();
                    bytes[(at + i) % 8] = *b;
                    // SAFETY: as above.
                    unsafe { *p = u64::from_le_bytes(bytes) };
                });
            }
        }
    }

    #[test]
    fn loom_records_arrive_intact_and_in_order_across_wrap() {
        loom::model(|| {
            // 64 bytes: room for a few 8..24-byte records, forcing wraps.
            let ring = Arc::new((
                RingHeader::default(),
                Cells((0..8).map(|_| UnsafeCell::new(0)).collect()),
            ));
            let producer = {
                let ring = ring.clone();
                loom::thread::spawn(move || {
                    let mut pending = 0;
                    let mut sent = 0u8;
                    while sent < 3 {
                        let len = 4 + 8 * sent as usize;
                        let ok = write(&ring.0, &ring.1, &mut pending, sent as u32, len, |b| {
                            b.fill(sent + 1)
                        });
                        if ok.is_ok() {
                            publish(&ring.0, pending);
                            sent += 1;
                        } else {
                            loom::thread::yield_now();
                        }
                    }
                })
            };
            let mut got = 0u8;
            while got < 3 {
                let seen = read(&ring.0, &ring.1, |tag, payload| {
                    assert_eq!(tag, got as u32);
                    assert_eq!(payload.len(), 4 + 8 * got as usize);
                    assert!(payload.iter().all(|&b| b == got + 1));
                });
                if seen.is_some() {
                    got += 1;
                } else {
                    loom::thread::yield_now();
                }
            }
            producer.join().unwrap();
        });
    }
}

/// A ring mapped in this process: its header and bytes, kept alive by the
/// region handle it holds.
#[cfg(not(loom))]
#[derive(Debug)]
pub(crate) struct RingRef {
    region: std::sync::Arc<crate::Region>,
    header: std::ptr::NonNull<RingHeader>,
    data: std::ptr::NonNull<u8>,
    capacity: usize,
}

#[cfg(not(loom))]
impl RingRef {
    /// Checks the ring at `ring` and maps its bytes.
    pub(crate) fn new(
        region: &std::sync::Arc<crate::Region>,
        ring: crate::Offset,
    ) -> Result<RingRef, super::MqError> {
        use std::sync::atomic::Ordering as O;
        let header: &RingHeader = region.view(ring)?;
        let corrupt = |why: String| super::MqError::Corrupt {
            offset: ring,
            reason: why,
        };
        if header.meta.magic.load(O::Acquire) != MAGIC {
            return Err(corrupt("bad ring magic".into()));
        }
        let version = header.meta.version.load(O::Relaxed);
        if version != VERSION {
            return Err(corrupt(format!(
                "ring layout version {version}, expected {VERSION}"
            )));
        }
        let capacity = header.meta.capacity.load(O::Relaxed);
        if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
            return Err(corrupt(format!("ring capacity {capacity}")));
        }
        let data = crate::Offset::from_raw(header.meta.data.load(O::Relaxed));
        let data = region.ptr(data, capacity)?;
        Ok(RingRef {
            region: region.clone(),
            header: std::ptr::NonNull::from(header),
            data: std::ptr::NonNull::new(data).expect("mapped memory is never null"),
            capacity: capacity as usize,
        })
    }

    pub(crate) fn header(&self) -> &RingHeader {
        // SAFETY: `header` came from `Region::view` on `self.region`, whose
        // mappings live as long as the region, which `self` keeps alive.
        unsafe { self.header.as_ref() }
    }

    pub(crate) fn region(&self) -> &std::sync::Arc<crate::Region> {
        &self.region
    }
}

// SAFETY: the pointers target shared memory kept mapped by the held region;
// every access through them follows the ring protocol, which is correct
// from any thread.
#[cfg(not(loom))]
unsafe impl Send for RingRef {}

#[cfg(not(loom))]
impl Storage for RingRef {
    fn capacity(&self) -> usize {
        self.capacity
    }

    unsafe fn write(&self, at: usize, src: &[u8]) {
        debug_assert!(at + src.len() <= self.capacity);
        // SAFETY: the caller guarantees the range is in bounds and owned by
        // the producer; `src` is process memory, so the two cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.data.as_ptr().wrapping_add(at),
                src.len(),
            )
        }
    }

    unsafe fn read<R>(&self, at: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        debug_assert!(at + len <= self.capacity);
        // SAFETY: in bounds and published-not-released (caller's contract).
        f(unsafe { std::slice::from_raw_parts(self.data.as_ptr().wrapping_add(at), len) })
    }

    unsafe fn fill(&self, at: usize, len: usize, f: impl FnOnce(&mut [u8])) {
        debug_assert!(at + len <= self.capacity);
        // SAFETY: in bounds and exclusively the producer's (caller's contract).
        f(unsafe { std::slice::from_raw_parts_mut(self.data.as_ptr().wrapping_add(at), len) })
    }
}
