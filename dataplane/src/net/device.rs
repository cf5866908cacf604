//! smoltcp's `phy::Device` over a [`Link`], seen one frame at a time, and
//! the DPDK queue as a link.
//!
//! The flow table has already picked the connection a frame belongs to; this
//! device hands the interface exactly that frame (receive) and passes what
//! the interface transmits to the link. On a DPDK queue an mbuf is taken
//! from the pool only inside `TxToken::consume`, so a token smoltcp drops
//! unused costs nothing.

use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

use ferrox_handover::segment::{flags, Segment};

use super::link::Link;
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
pub struct FrameDevice<'a, L: Link> {
    rx: Option<&'a [u8]>,
    link: &'a mut L,
    /// Frames smoltcp built while the mbuf pool was empty (dropped).
    pub tx_no_mbuf: u64,
    /// Δ of a restored connection, added to the sequence number of every
    /// frame sent.
    xlate: Option<u32>,
    /// Whether to note the sequence number of a SYN sent.
    capture_syn: bool,
    /// The (real) sequence number of the SYN this device sent, if asked.
    pub syn_seq: Option<u32>,
}

impl<'a, L: Link> FrameDevice<'a, L> {
    /// A device that receives `frame` once, then nothing.
    pub fn ingress(frame: &'a [u8], link: &'a mut L) -> Self {
        FrameDevice {
            rx: Some(frame),
            link,
            tx_no_mbuf: 0,
            xlate: None,
            capture_syn: false,
            syn_seq: None,
        }
    }

    /// A device that only transmits.
    pub fn egress(link: &'a mut L) -> Self {
        FrameDevice {
            rx: None,
            link,
            tx_no_mbuf: 0,
            xlate: None,
            capture_syn: false,
            syn_seq: None,
        }
    }

    /// Frames sent are translated by `xlate` (a restored connection's Δ).
    pub fn translated(mut self, xlate: Option<u32>) -> Self {
        self.xlate = xlate;
        self
    }

    /// Notes the sequence number of a SYN sent (the ISN a handover must
    /// carry; smoltcp keeps it private).
    pub fn capturing_syn(mut self) -> Self {
        self.capture_syn = true;
        self
    }

    fn tx(&mut self) -> LinkTx<'_, L> {
        LinkTx {
            link: self.link,
            no_mbuf: &mut self.tx_no_mbuf,
            xlate: self.xlate,
            syn_seq: self.capture_syn.then_some(&mut self.syn_seq),
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

impl<L: Link> Device for FrameDevice<'_, L> {
    type RxToken<'b>
        = FrameRx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = LinkTx<'b, L>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((FrameRx(frame), self.tx()))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(self.tx())
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.link.capabilities()
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
pub struct LinkTx<'a, L: Link> {
    link: &'a mut L,
    no_mbuf: &'a mut u64,
    xlate: Option<u32>,
    syn_seq: Option<&'a mut Option<u32>>,
}

impl<L: Link> TxToken for LinkTx<'_, L> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (xlate, syn_seq) = (self.xlate, self.syn_seq);
        let (result, sent) = self.link.transmit(len, |frame| {
            let result = f(frame);
            if let Some(delta) = xlate {
                ferrox_handover::xlate::egress(frame, delta);
            }
            if let Some(syn_seq) = syn_seq {
                if let Some(segment) = Segment::parse(frame) {
                    if segment.has(flags::SYN) {
                        *syn_seq = Some(segment.seq);
                    }
                }
            }
            result
        });
        if !sent {
            *self.no_mbuf += 1;
        }
        result
    }
}

impl Link for Queue<'_> {
    fn capabilities(&self) -> DeviceCapabilities {
        let port = self.port();
        capabilities(port.mtu(), port.rx_checksum(), port.tx_checksum_offload())
    }

    fn transmit<R>(&mut self, len: usize, build: impl FnOnce(&mut [u8]) -> R) -> (R, bool) {
        let mut mbuf = self.port().pool().alloc();
        let Some(buf) = mbuf.as_mut().and_then(|mbuf| mbuf.append(len)) else {
            // No buffer: build the frame into scratch space and drop it; TCP
            // retransmits.
            let mut scratch = [0u8; MAX_FRAME];
            return (build(&mut scratch[..len.min(MAX_FRAME)]), false);
        };
        let result = build(buf);
        let offload = self.port().tx_checksum_offload();
        let l3_len = if offload { tcp_over_ipv4(buf) } else { None };
        let mut mbuf = mbuf.expect("the frame was built in it");
        if let Some(l3_len) = l3_len {
            mbuf.offload_tcp_checksum(l3_len);
        }
        self.send(mbuf);
        (result, true)
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
