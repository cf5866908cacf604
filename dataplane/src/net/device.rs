//! smoltcp's `phy::Device` over a DPDK queue, seen one frame at a time.
//!
//! The flow table has already picked the connection a frame belongs to; this
//! device hands the interface exactly that frame (receive) and turns what the
//! interface transmits into mbufs queued for the next TX burst. An mbuf is
//! taken from the pool only inside `TxToken::consume`, so a token smoltcp
//! drops unused costs nothing.

use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use crate::port::{Queue, RxChecksum};

/// The MTU of a port unless `--mtu` says otherwise.
pub const DEFAULT_MTU: u16 = 1500;
/// The largest MTU ferrox supports (jumbo frames; one mbuf per frame).
pub const MAX_MTU: u16 = 9000;
/// Ethernet header length: an Ethernet frame is at most MTU + this.
pub const ETHERNET_HEADER: usize = 14;
/// Largest Ethernet frame at [`MAX_MTU`].
const MAX_FRAME: usize = MAX_MTU as usize + ETHERNET_HEADER;

/// The device view for one poll of the interface.
#[derive(Debug)]
pub struct FrameDevice<'a, 'p> {
    rx: Option<&'a [u8]>,
    queue: &'a mut Queue<'p>,
    /// Frames smoltcp built while the mbuf pool was empty (dropped).
    pub tx_no_mbuf: u64,
}

impl<'a, 'p> FrameDevice<'a, 'p> {
    /// A device that receives `frame` once, then nothing.
    pub fn ingress(frame: &'a [u8], queue: &'a mut Queue<'p>) -> Self {
        FrameDevice {
            rx: Some(frame),
            queue,
            tx_no_mbuf: 0,
        }
    }

    /// A device that only transmits.
    pub fn egress(queue: &'a mut Queue<'p>) -> Self {
        FrameDevice {
            rx: None,
            queue,
            tx_no_mbuf: 0,
        }
    }
}

/// What smoltcp may assume of a port with this MTU and checksum policy.
pub fn capabilities(mtu: u16, rx_checksum: RxChecksum) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = mtu as usize + ETHERNET_HEADER;
    caps.max_burst_size = Some(crate::port::BURST);
    if rx_checksum == RxChecksum::Trust {
        // Still computed on transmit: the peer may forward what it gets.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
    }
    caps
}

impl<'p> Device for FrameDevice<'_, 'p> {
    type RxToken<'b>
        = FrameRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = MbufTx<'b, 'p>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((
            FrameRx(frame),
            MbufTx {
                queue: self.queue,
                no_mbuf: &mut self.tx_no_mbuf,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(MbufTx {
            queue: self.queue,
            no_mbuf: &mut self.tx_no_mbuf,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let port = self.queue.port();
        capabilities(port.mtu(), port.rx_checksum())
    }
}

#[derive(Debug)]
pub struct FrameRx<'a>(&'a [u8]);

impl RxToken for FrameRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

#[derive(Debug)]
pub struct MbufTx<'a, 'p> {
    queue: &'a mut Queue<'p>,
    no_mbuf: &'a mut u64,
}

impl TxToken for MbufTx<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut mbuf = self.queue.port().pool().alloc();
        let Some(buf) = mbuf.as_mut().and_then(|mbuf| mbuf.append(len)) else {
            // No buffer: build the frame into scratch space and drop it; TCP
            // retransmits. smoltcp requires `f` to run either way.
            *self.no_mbuf += 1;
            let mut scratch = [0u8; MAX_FRAME];
            return f(&mut scratch[..len.min(MAX_FRAME)]);
        };
        let result = f(buf);
        self.queue.send(mbuf.expect("the frame was built in it"));
        result
    }
}
