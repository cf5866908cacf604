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

/// What smoltcp may assume of a port with this MTU and these checksum
/// duties: smoltcp verifies received checksums only under
/// [`RxChecksum::Verify`] (the NIC or the runtime does under `Nic`, nobody
/// needs to under `Trust`), and fills TCP checksums unless the NIC does.
pub fn capabilities(mtu: u16, rx: RxChecksum, tx_tcp_offload: bool) -> DeviceCapabilities {
    let mut caps = DeviceCapabilities::default();
    caps.medium = Medium::Ethernet;
    caps.max_transmission_unit = mtu as usize + ETHERNET_HEADER;
    caps.max_burst_size = Some(crate::port::BURST);
    let verify = rx == RxChecksum::Verify;
    caps.checksum.ipv4 = if verify { Checksum::Both } else { Checksum::Tx };
    caps.checksum.tcp = match (verify, tx_tcp_offload) {
        (true, false) => Checksum::Both,
        (true, true) => Checksum::Rx,
        (false, false) => Checksum::Tx,
        (false, true) => Checksum::None,
    };
    caps
}

/// The IPv4 header length of an Ethernet/IPv4/TCP frame, else `None`.
fn tcp_over_ipv4(frame: &[u8]) -> Option<u8> {
    const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
    const PROTOCOL_TCP: u8 = 6;
    let ip = frame.get(ETHERNET_HEADER..)?;
    let is_tcp =
        frame[12..14] == ETHERTYPE_IPV4 && ip.first()? >> 4 == 4 && *ip.get(9)? == PROTOCOL_TCP;
    is_tcp.then(|| (ip[0] & 0x0f) * 4)
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
        capabilities(port.mtu(), port.rx_checksum(), port.tx_checksum_offload())
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
        let offload = self.queue.port().tx_checksum_offload();
        let l3_len = if offload { tcp_over_ipv4(buf) } else { None };
        let mut mbuf = mbuf.expect("the frame was built in it");
        if let Some(l3_len) = l3_len {
            mbuf.offload_tcp_checksum(l3_len);
        }
        self.queue.send(mbuf);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoltcp_checks_and_fills_only_what_nobody_else_does() {
        let tcp = |rx, offload| capabilities(1500, rx, offload).checksum.tcp;
        assert!(matches!(tcp(RxChecksum::Verify, false), Checksum::Both));
        assert!(matches!(tcp(RxChecksum::Verify, true), Checksum::Rx));
        assert!(matches!(tcp(RxChecksum::Nic, false), Checksum::Tx));
        assert!(matches!(tcp(RxChecksum::Trust, true), Checksum::None));
        let caps = capabilities(3438, RxChecksum::Trust, false);
        assert!(matches!(caps.checksum.ipv4, Checksum::Tx));
        assert_eq!(caps.max_transmission_unit, 3438 + ETHERNET_HEADER);
    }

    #[test]
    fn only_ipv4_tcp_frames_are_offloaded() {
        let mut frame = [0u8; 60];
        frame[12..14].copy_from_slice(&[0x08, 0x00]);
        frame[14] = 0x46; // IPv4, 24-byte header
        frame[14 + 9] = 6;
        assert_eq!(tcp_over_ipv4(&frame), Some(24));
        frame[14 + 9] = 17; // UDP
        assert_eq!(tcp_over_ipv4(&frame), None);
        frame[12..14].copy_from_slice(&[0x08, 0x06]); // ARP
        assert_eq!(tcp_over_ipv4(&frame), None);
        assert_eq!(tcp_over_ipv4(&frame[..14]), None);
    }
}
