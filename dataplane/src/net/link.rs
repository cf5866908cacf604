//! The stack's one packet-I/O seam: whatever carries its frames.
//!
//! A DPDK queue is the production link; [`MemoryLink`] keeps frames in
//! memory, so the whole stack (accept, connect, timers, the application
//! on top) runs in `cargo test` against an smoltcp peer, with no DPDK and
//! no root.

use smoltcp::phy::DeviceCapabilities;

/// Where a stack sends its frames.
pub trait Link {
    /// What smoltcp may assume of the link (MTU, checksum duties).
    fn capabilities(&self) -> DeviceCapabilities;

    /// Builds a frame of `len` bytes with `build` and queues it for
    /// transmission. `build` runs exactly once, also when the frame must
    /// be dropped for lack of a buffer (smoltcp requires it); the second
    /// value says whether the frame was queued.
    fn transmit<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> (R, bool);
}

/// A link whose transmitted frames collect in memory.
#[derive(Debug, Clone)]
pub struct MemoryLink {
    pub caps: DeviceCapabilities,
    /// Frames sent, oldest first; the test drains them.
    pub sent: std::collections::VecDeque<Vec<u8>>,
}

impl MemoryLink {
    /// An Ethernet link of `mtu` where smoltcp computes and verifies every
    /// checksum.
    pub fn new(mtu: u16) -> MemoryLink {
        MemoryLink {
            caps: super::device::capabilities(mtu, crate::port::RxChecksum::Verify, false),
            sent: Default::default(),
        }
    }
}

impl Link for MemoryLink {
    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }

    fn transmit<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> (R, bool) {
        let mut frame = vec![0; len];
        let result = build(&mut frame);
        self.sent.push_back(frame);
        (result, true)
    }
}
