//! Sequence translation for a restored connection.
//!
//! A restored socket picked its own initial sequence number, so its
//! sequence space is the real one shifted by a per-flow Δ (fixed for the
//! flow's life). The peer's sequence space needs no translation: the
//! synthetic handshake tells the new socket the peer's real numbers. So:
//!
//! ```text
//! egress  (socket → wire): SEQ += Δ
//! ingress (wire → socket): ACK −= Δ (when ACK is set), each SACK edge −= Δ
//! ```
//!
//! Nothing else changes. Checksums are updated incrementally (RFC 1624,
//! eqn. 3), so a translated frame costs a few loads and stores, not a pass
//! over its payload; the pseudo-header does not depend on the sequence
//! numbers, so checksum offload (which fills the field later) is not
//! disturbed. A frame that is not a whole IPv4/TCP segment is left
//! untouched and `false` is returned.

use crate::segment::{self, flags};

/// Rewrites an outgoing frame of a restored flow: SEQ += `delta`.
pub fn egress(frame: &mut [u8], delta: u32) -> bool {
    let Some(b) = segment::bounds(frame) else {
        return false;
    };
    rewrite(frame, b.tcp, b.tcp + 4, |seq| seq.wrapping_add(delta));
    true
}

/// Rewrites an incoming frame of a restored flow: ACK −= `delta` when the
/// ACK flag is set, and every SACK block edge −= `delta` (the peer
/// acknowledges in the real sequence space).
pub fn ingress(frame: &mut [u8], delta: u32) -> bool {
    let Some(b) = segment::bounds(frame) else {
        return false;
    };
    let t = b.tcp;
    if frame[t + 13] & flags::ACK != 0 {
        rewrite(frame, t, t + 8, |ack| ack.wrapping_sub(delta));
        // One SACK option at most fits the 40-byte options area.
        let area = t + 20..b.payload;
        let sack = segment::options(&frame[area.clone()])
            .find(|o| segment::is_sack(o.kind))
            .map(|o| area.start + o.body.start..area.start + o.body.end);
        if let Some(body) = sack {
            let mut edge = body.start;
            while edge + 4 <= body.end {
                rewrite(frame, t, edge, |e| e.wrapping_sub(delta));
                edge += 4;
            }
        }
    }
    true
}

/// Replaces the 32-bit field at `at` with `f(old)`, adjusting the TCP
/// checksum of the segment at `tcp`.
fn rewrite(frame: &mut [u8], tcp: usize, at: usize, f: impl FnOnce(u32) -> u32) {
    let old = u32::from_be_bytes(frame[at..at + 4].try_into().expect("four bytes"));
    let new = f(old);
    frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
    let sum = u16::from_be_bytes([frame[tcp + 16], frame[tcp + 17]]);
    frame[tcp + 16..tcp + 18].copy_from_slice(&adjust(sum, old, new).to_be_bytes());
}

/// RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), over both 16-bit halves of a
/// 32-bit field.
fn adjust(checksum: u16, old: u32, new: u32) -> u16 {
    let mut sum = !checksum as u32;
    for (m, m_new) in [(old >> 16, new >> 16), (old & 0xffff, new & 0xffff)] {
        sum += !m & 0xffff;
        sum += m_new;
    }
    !fold(sum)
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The TCP checksum `frame`'s segment should carry (computed in full over
/// the pseudo-header and segment, its own checksum field taken as zero);
/// `None` when it is not a TCP frame.
pub fn tcp_checksum(frame: &[u8]) -> Option<u16> {
    let b = segment::bounds(frame)?;
    let tcp_len = b.end - b.tcp;
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]) as u32;
        }
    };
    add(&frame[b.ip + 12..b.ip + 20]);
    add(&[0, 6]);
    add(&(tcp_len as u16).to_be_bytes());
    add(&frame[b.tcp..b.tcp + 16]);
    add(&frame[b.tcp + 18..b.end]);
    Some(!fold(sum))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::tests::frame;
    use crate::segment::Segment;
    use proptest::prelude::*;

    fn checksum_field(f: &[u8]) -> u16 {
        let t = segment::bounds(f).unwrap().tcp;
        u16::from_be_bytes([f[t + 16], f[t + 17]])
    }

    /// Whether the checksum field verifies (±0 are the same number in
    /// one's complement, so 0x0000 and 0xffff may stand for each other).
    fn verifies(f: &[u8]) -> bool {
        let (have, want) = (checksum_field(f), tcp_checksum(f).unwrap());
        have == want || (have | want == 0xffff && have & want == 0)
    }

    #[test]
    fn egress_moves_seq_and_nothing_else() {
        let mut f = frame(1000, Some(77), flags::PSH, &[], b"+OK\r\n");
        assert!(egress(&mut f, 5));
        let seg = Segment::parse(&f).unwrap();
        assert_eq!((seg.seq, seg.ack), (1005, Some(77)));
        assert!(verifies(&f));
    }

    #[test]
    fn ingress_moves_ack_and_sack_edges_back() {
        let sack = [
            1, 1, 5, 18, 0, 0, 0, 50, 0, 0, 0, 60, 0, 0, 0, 70, 0, 0, 0, 80,
        ];
        let mut f = frame(9, Some(40), 0, &sack, b"GET");
        assert!(ingress(&mut f, 30));
        let seg = Segment::parse(&f).unwrap();
        assert_eq!((seg.seq, seg.ack), (9, Some(10)));
        let t = segment::bounds(&f).unwrap().tcp;
        let edges: Vec<u32> = f[t + 24..t + 40]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(edges, [20, 30, 40, 50]);
        assert!(verifies(&f));
    }

    #[test]
    fn a_segment_without_ack_keeps_its_numbers() {
        let mut f = frame(9, None, flags::SYN, &[], b"");
        let before = f.clone();
        assert!(ingress(&mut f, 30));
        assert_eq!(f, before);
    }

    #[test]
    fn translation_round_trips_across_wrap() {
        let mut f = frame(u32::MAX - 2, Some(3), 0, &[], b"x");
        let before = f.clone();
        egress(&mut f, 10);
        assert_eq!(Segment::parse(&f).unwrap().seq, 7);
        egress(&mut f, 10u32.wrapping_neg());
        assert_eq!(f, before);
    }

    #[test]
    fn foreign_frames_are_left_alone() {
        let mut arp = frame(1, Some(2), 0, &[], b"");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let before = arp.clone();
        assert!(!egress(&mut arp, 1));
        assert!(!ingress(&mut arp, 1));
        assert_eq!(arp, before);
    }

    proptest! {
        #[test]
        fn incremental_checksums_equal_a_full_recomputation(
            seq: u32, ack: u32, delta: u32,
            edges in proptest::collection::vec(any::<u32>(), 0..4),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            pad in 0usize..20,
        ) {
            let mut options = vec![1, 1, 5, (2 + edges.len() * 8) as u8];
            for e in &edges {
                options.extend_from_slice(&e.to_be_bytes());
                options.extend_from_slice(&e.wrapping_add(100).to_be_bytes());
            }
            if edges.is_empty() {
                options.truncate(0);
            }
            let mut f = frame(seq, Some(ack), 0, &options, &payload);
            f.resize(f.len() + pad, 0xaa); // NIC padding is not summed
            prop_assert!(ingress(&mut f, delta));
            prop_assert!(verifies(&f));
            prop_assert!(egress(&mut f, delta));
            prop_assert!(verifies(&f));
            let seg = Segment::parse(&f).unwrap();
            prop_assert_eq!(seg.seq, seq.wrapping_add(delta));
            prop_assert_eq!(seg.ack, Some(ack.wrapping_sub(delta)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), delta: u32) {
            if bytes.len() > 14 {
                bytes[12] = 0x08;
                bytes[13] = 0x00;
                bytes[14] = 0x45;
            }
            let _ = ingress(&mut bytes, delta);
            let _ = egress(&mut bytes, delta);
            let _ = Segment::parse(&bytes);
        }
    }
}
