//! Classifying frames to connections without touching smoltcp's socket set.
//!
//! The core's flow table maps a TCP 4-tuple to the connection that owns it,
//! so each frame reaches exactly one connection's one-socket `SocketSet`
//! and per-packet cost does not grow with the number of connections.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket,
};

/// A TCP flow as seen from this host: the peer's address and port and our
/// port (each core serves one local address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey(u64);

impl FlowKey {
    pub fn new(peer: Ipv4Address, peer_port: u16, local_port: u16) -> FlowKey {
        let ip = u32::from_be_bytes(peer.octets()) as u64;
        FlowKey((ip << 32) | ((peer_port as u64) << 16) | local_port as u64)
    }

    pub fn peer(&self) -> (Ipv4Address, u16) {
        (
            Ipv4Address::from_bits((self.0 >> 32) as u32),
            (self.0 >> 16) as u16,
        )
    }

    pub fn local_port(&self) -> u16 {
        self.0 as u16
    }

    /// The core, of `cores`, that owns this flow.
    pub fn owner(self, cores: usize) -> usize {
        let mut h = FlowHasher::default();
        h.write_u64(self.0);
        (h.finish() % cores.max(1) as u64) as usize
    }
}

/// What a received frame is, as far as demultiplexing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// TCP to `dst`; `opens` is a bare SYN (a connection attempt).
    Tcp {
        key: FlowKey,
        dst: Ipv4Address,
        opens: bool,
    },
    /// Anything else (ARP, ICMP, other protocols, malformed): the interface
    /// handles or drops it without any connection.
    Other,
}

/// A received frame's IPv4 header and TCP segment.
type Ipv4Tcp<'a> = (Ipv4Packet<&'a [u8]>, TcpPacket<&'a [u8]>);

/// The IPv4 header and TCP segment of an unfragmented Ethernet/IPv4/TCP
/// frame; `None` for any other frame, or one too short for a header it
/// claims. Never panics.
fn ipv4_tcp(frame: &[u8]) -> Option<Ipv4Tcp<'_>> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some((ip, tcp))
}

/// Parses just enough of `frame` to find its flow: anything but an
/// unfragmented IPv4/TCP frame is `Other`.
pub fn classify(frame: &[u8]) -> Frame {
    let Some((ip, tcp)) = ipv4_tcp(frame) else {
        return Frame::Other;
    };
    Frame::Tcp {
        key: FlowKey::new(ip.src_addr(), tcp.src_port(), tcp.dst_port()),
        dst: ip.dst_addr(),
        opens: tcp.syn() && !tcp.ack() && !tcp.rst(),
    }
}

/// Whether a frame's TCP checksum is right (a frame that is not an
/// unfragmented IPv4/TCP one passes: the stack checks the rest). For the
/// frames a NIC with checksum offload did not check.
pub fn tcp_checksum_ok(frame: &[u8]) -> bool {
    ipv4_tcp(frame)
        .is_none_or(|(ip, tcp)| tcp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()))
}

/// Multiply-xorshift hasher for 64-bit flow keys (SipHash's DoS resistance
/// costs ~20 ns a lookup; a peer can pick only its own port and address,
/// and the starting state is a random seed of this process, so where a
/// flow lands is not known outside it).
#[derive(Debug, Clone, Copy)]
pub struct FlowHasher(u64);

impl Default for FlowHasher {
    fn default() -> FlowHasher {
        FlowHasher(process_seed())
    }
}

/// A random number of this process, taken once: the seed of every flow
/// hash (the same on every core, which must agree on which one owns a
/// flow; a successor process has another and assigns the flows it
/// restores anew), and the root of the stacks' and engines' seeds (their
/// initial sequence numbers and ephemeral ports), never to be guessed from
/// the pid.
pub fn process_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(std::process::id())
    })
}

impl Hasher for FlowHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, key: u64) {
        let x = (self.0 ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = x ^ (x >> 29);
    }
}

/// 4-tuple → connection index.
pub type FlowTable = HashMap<FlowKey, u32, BuildHasherDefault<FlowHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, IpAddress, Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber,
    };

    fn tcp_frame(control: TcpControl, ack: Option<u32>) -> Vec<u8> {
        let (src, dst) = (
            Ipv4Address::new(198, 18, 0, 1),
            Ipv4Address::new(198, 18, 0, 2),
        );
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 6379,
            control,
            seq_number: TcpSeqNumber(1),
            ack_number: ack.map(|n| TcpSeqNumber(n as i32)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: b"",
        };
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
        let mut frame = EthernetFrame::new_unchecked(&mut buf);
        eth.emit(&mut frame);
        let mut ip_packet = Ipv4Packet::new_unchecked(frame.payload_mut());
        ip.emit(
            &mut ip_packet,
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
        let mut tcp_packet = TcpPacket::new_unchecked(ip_packet.payload_mut());
        tcp.emit(
            &mut tcp_packet,
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            &smoltcp::phy::ChecksumCapabilities::default(),
        );
        buf
    }

    #[test]
    fn the_flow_hash_starts_from_this_process_seed_on_every_core() {
        // Not the fixed state anyone could compute (0 has odds of 2^-64).
        assert_ne!(FlowHasher::default().0, 0);
        let key = FlowKey::new(Ipv4Address::new(198, 18, 0, 1), 40_000, 6379);
        let owners: Vec<usize> = (0..4).map(|_| key.owner(3)).collect();
        assert!(
            owners.iter().all(|&o| o == owners[0] && o < 3),
            "{owners:?}"
        );
    }

    #[test]
    fn a_bare_syn_opens_and_carries_its_flow() {
        let Frame::Tcp { key, dst, opens } = classify(&tcp_frame(TcpControl::Syn, None)) else {
            panic!()
        };
        assert!(opens);
        assert_eq!(dst, Ipv4Address::new(198, 18, 0, 2));
        assert_eq!(key.peer(), (Ipv4Address::new(198, 18, 0, 1), 40000));
        assert_eq!(key.local_port(), 6379);
    }

    #[test]
    fn syn_ack_and_data_do_not_open() {
        assert!(matches!(
            classify(&tcp_frame(TcpControl::Syn, Some(5))),
            Frame::Tcp { opens: false, .. }
        ));
        assert!(matches!(
            classify(&tcp_frame(TcpControl::None, Some(5))),
            Frame::Tcp { opens: false, .. }
        ));
    }

    #[test]
    fn truncated_and_foreign_frames_are_other() {
        let frame = tcp_frame(TcpControl::Syn, None);
        for len in 0..frame.len() - 20 {
            assert_eq!(classify(&frame[..len]), Frame::Other, "length {len}");
        }
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp), Frame::Other);
    }

    #[test]
    fn a_wrong_tcp_checksum_is_found_and_other_frames_pass() {
        let frame = tcp_frame(TcpControl::Syn, None);
        assert!(tcp_checksum_ok(&frame));
        // The sequence number's last byte: 14 (Ethernet) + 20 (IPv4) + 7.
        let mut bad = frame.clone();
        bad[14 + 20 + 7] ^= 1;
        assert!(!tcp_checksum_ok(&bad));
        let mut arp = bad.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(tcp_checksum_ok(&arp));
        assert!(tcp_checksum_ok(&bad[..30]));
    }

    #[test]
    fn flow_keys_of_different_peers_differ() {
        let a = FlowKey::new(Ipv4Address::new(1, 2, 3, 4), 1, 2);
        let b = FlowKey::new(Ipv4Address::new(1, 2, 3, 4), 2, 1);
        assert_ne!(a, b);
        let mut table = FlowTable::default();
        table.insert(a, 1);
        table.insert(b, 2);
        assert_eq!(table[&a], 1);
    }
}
