//! Mempools, owned mbufs, and RX/TX bursts of them.

use std::ffi::CString;
use std::ptr::NonNull;

use dpdk_sys as sys;

use super::{errno_string, last_errno};

/// A pool of packet buffers in DPDK's hugepage memory.
#[derive(Debug)]
pub struct Mempool(NonNull<sys::rte_mempool>);

// SAFETY: DPDK mempools are multi-thread safe (per-lcore caches plus a
// lock-free ring) and live until freed.
unsafe impl Send for Mempool {}
// SAFETY: as above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// A pool of `mbufs` packet buffers with `data_room` bytes each
    /// (headroom included).
    pub fn create(
        name: &str,
        mbufs: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool, String> {
        let name = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; DPDK copies the name.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(name.as_ptr(), mbufs, cache, 0, data_room, socket)
        };
        NonNull::new(pool)
            .map(Mempool)
            .ok_or_else(|| errno_string(last_errno()))
    }

    /// The pool named `name` that another process of this DPDK instance
    /// created (a secondary finds its primary's pool this way).
    pub fn lookup(name: &str) -> Result<Mempool, String> {
        let name = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string for the call.
        let pool = unsafe { sys::rte_mempool_lookup(name.as_ptr()) };
        NonNull::new(pool)
            .map(Mempool)
            .ok_or_else(|| errno_string(last_errno()))
    }

    pub(crate) fn raw(&self) -> *mut sys::rte_mempool {
        self.0.as_ptr()
    }

    /// Gives the pool back to DPDK, after a port that failed to start was
    /// closed (nothing refers to its buffers any more).
    pub(crate) fn free(self) {
        // SAFETY: the pool was created by `create` and is freed once (this
        // consumes it); its only user, the port, is closed.
        unsafe { sys::rte_mempool_free(self.0.as_ptr()) };
    }

    /// Buffers free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid while self lives.
        unsafe { sys::rte_mempool_avail_count(self.0.as_ptr()) }
    }

    /// Allocates one mbuf.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid while self lives.
        NonNull::new(unsafe { sys::ferrox_pktmbuf_alloc(self.0.as_ptr()) }).map(Mbuf)
    }
}

/// One owned packet buffer (single segment).
#[derive(Debug)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

impl Mbuf {
    /// Grows the packet by `len` bytes and returns them for writing.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: we own the mbuf; append returns NULL when it has no room.
        let data = unsafe { sys::ferrox_pktmbuf_append(self.0.as_ptr(), len16) };
        // SAFETY: append returned `len` bytes of data room inside our mbuf.
        NonNull::new(data).map(|p| unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) })
    }

    /// Leaves the TCP checksum of this Ethernet/IPv4/TCP frame to the NIC
    /// (the IPv4 header is `l3_len` bytes).
    pub fn offload_tcp_checksum(&mut self, l3_len: u8) {
        // SAFETY: we own the mbuf, and it holds the frame described.
        unsafe { sys::ferrox_pktmbuf_tx_tcp_cksum(self.0.as_ptr(), l3_len) }
    }

    fn into_raw(self) -> *mut sys::rte_mbuf {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and free it once.
        unsafe { sys::ferrox_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// What the NIC found of a received frame's L4 checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// Correct, or the data verified with the field left partial.
    Good,
    Bad,
    /// Not checked (not TCP/UDP, or the NIC could not tell).
    Unchecked,
}

/// Up to N owned mbufs, freed together when dropped: [`RxBurst`] and
/// [`TxBurst`].
#[derive(Debug)]
pub struct Burst<D, const N: usize> {
    mbufs: [*mut sys::rte_mbuf; N],
    len: usize,
    direction: std::marker::PhantomData<D>,
}

/// Marks a [`Burst`] filled by `rx_burst`.
#[derive(Debug)]
pub enum Rx {}

/// Marks a [`Burst`] emptied by `tx_burst`.
#[derive(Debug)]
pub enum Tx {}

/// Packets received by one `rx_burst`, freed together when dropped.
pub type RxBurst<const N: usize> = Burst<Rx, N>;

/// Mbufs waiting for one `tx_burst`.
pub type TxBurst<const N: usize> = Burst<Tx, N>;

impl<D, const N: usize> Default for Burst<D, N> {
    fn default() -> Self {
        Burst {
            mbufs: [std::ptr::null_mut(); N],
            len: 0,
            direction: std::marker::PhantomData,
        }
    }
}

// SAFETY: the burst owns its mbufs; DPDK mbufs may be sent or freed from any
// thread.
unsafe impl<D, const N: usize> Send for Burst<D, N> {}

impl<D, const N: usize> Burst<D, N> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Frees every packet of the burst.
    pub fn clear(&mut self) {
        if self.len > 0 {
            // SAFETY: the first `len` pointers are mbufs we own, freed once.
            unsafe { sys::ferrox_pktmbuf_free_bulk(self.mbufs.as_mut_ptr(), self.len as u32) };
            self.len = 0;
        }
    }
}

impl<D, const N: usize> Drop for Burst<D, N> {
    fn drop(&mut self) {
        self.clear();
    }
}

impl<const N: usize> RxBurst<N> {
    /// The bytes of packet `i` (its first segment: ferrox never enables
    /// scattered RX, so that is the whole frame).
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(i < self.len);
        let m = self.mbufs[i];
        // SAFETY: `m` is a received mbuf we own until `clear`.
        let data = unsafe { sys::ferrox_pktmbuf_data(m) };
        // SAFETY: as above.
        let len = unsafe { sys::ferrox_pktmbuf_data_len(m) } as usize;
        // SAFETY: data pointer and data_len describe the first segment, which
        // stays valid and unwritten until the burst is cleared.
        unsafe { std::slice::from_raw_parts(data, len) }
    }

    /// What the NIC found of packet `i`'s L4 checksum, where the port has
    /// RX checksum offload.
    pub fn l4_checksum(&self, i: usize) -> L4Checksum {
        assert!(i < self.len);
        // SAFETY: `m` is a received mbuf we own until `clear`.
        match unsafe { sys::ferrox_pktmbuf_rx_l4_cksum(self.mbufs[i]) } {
            1 => L4Checksum::Good,
            -1 => L4Checksum::Bad,
            _ => L4Checksum::Unchecked,
        }
    }
}

impl<const N: usize> TxBurst<N> {
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Queues a packet; the caller flushes when full.
    pub fn push(&mut self, mbuf: Mbuf) {
        assert!(self.len < N, "flush a full TxBurst before pushing");
        self.mbufs[self.len] = mbuf.into_raw();
        self.len += 1;
    }
}

/// Receives up to N packets from `queue` of `port` into `burst` (which
/// must be empty). Returns how many.
pub fn rx_burst<const N: usize>(port: u16, queue: u16, burst: &mut RxBurst<N>) -> usize {
    debug_assert!(burst.is_empty());
    // SAFETY: the array has room for N pointers; the port and queue were
    // set up and started by `Port`, and only this lcore polls this queue.
    let n = unsafe { sys::ferrox_rx_burst(port, queue, burst.mbufs.as_mut_ptr(), N as u16) };
    burst.len = n as usize;
    burst.len
}

/// Sends the queued packets; those the NIC did not take are freed (the TCP
/// layer retransmits). Returns (sent, dropped).
pub fn tx_burst<const N: usize>(port: u16, queue: u16, burst: &mut TxBurst<N>) -> (usize, usize) {
    if burst.len == 0 {
        return (0, 0);
    }
    // SAFETY: the first `len` entries are valid mbufs we own; the PMD takes
    // ownership of the ones it reports sent.
    let sent =
        unsafe { sys::ferrox_tx_burst(port, queue, burst.mbufs.as_mut_ptr(), burst.len as u16) }
            as usize;
    let dropped = burst.len - sent;
    if dropped > 0 {
        // SAFETY: entries sent..len are still ours; free them once.
        unsafe {
            sys::ferrox_pktmbuf_free_bulk(
                burst.mbufs.as_mut_ptr().wrapping_add(sent),
                dropped as u32,
            )
        };
    }
    burst.len = 0;
    (sent, dropped)
}
