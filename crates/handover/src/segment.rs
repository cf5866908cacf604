//! A read-only view of the TCP segment in an Ethernet/IPv4 frame: where
//! its header sits, its sequence fields, and the options of a handshake.
//!
//! Every accessor checks lengths first: any byte string is a valid input,
//! and anything that is not an unfragmented IPv4/TCP frame with
//! consistent lengths is `None`. Lengths come from the IPv4 header, not
//! the frame, because NICs pad short frames to 60 bytes.

/// Ethernet header length.
pub const ETHERNET_HEADER: usize = 14;

/// TCP flag bits (byte 13 of the TCP header).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// Where the TCP segment of a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Offset of the IPv4 header.
    pub ip: usize,
    /// Offset of the TCP header.
    pub tcp: usize,
    /// Offset of the TCP payload (after the options).
    pub payload: usize,
    /// End of the IPv4 datagram (padding excluded).
    pub end: usize,
}

/// Finds the TCP segment of `frame`, or `None` when it is not an
/// unfragmented Ethernet/IPv4/TCP frame whose lengths hold together.
pub fn bounds(frame: &[u8]) -> Option<Bounds> {
    const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
    const PROTOCOL_TCP: u8 = 6;
    if frame.get(12..14)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = ETHERNET_HEADER;
    let version_ihl = *frame.get(ip)?;
    let ihl = (version_ihl & 0x0f) as usize * 4;
    if version_ihl >> 4 != 4 || ihl < 20 || *frame.get(ip + 9)? != PROTOCOL_TCP {
        return None;
    }
    // More-fragments flag or a fragment offset: not a whole segment.
    if u16::from_be_bytes([*frame.get(ip + 6)?, *frame.get(ip + 7)?]) & 0x3fff != 0 {
        return None;
    }
    let total = u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]) as usize;
    let end = ip + total;
    let tcp = ip + ihl;
    if total < ihl + 20 || end > frame.len() {
        return None;
    }
    let data_offset = (frame[tcp + 12] >> 4) as usize * 4;
    let payload = tcp + data_offset;
    if data_offset < 20 || payload > end {
        return None;
    }
    Some(Bounds {
        ip,
        tcp,
        payload,
        end,
    })
}

fn u32_at(frame: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(frame[at..at + 4].try_into().expect("four bytes"))
}

fn u16_at(frame: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([frame[at], frame[at + 1]])
}

/// The options a handshake negotiates (those a restored connection must
/// agree on with the peer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handshake {
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    /// TSval and TSecr.
    pub timestamp: Option<(u32, u32)>,
}

/// A TCP segment's header fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub src_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    /// The acknowledgment number, when the ACK flag is set.
    pub ack: Option<u32>,
    pub flags: u8,
    /// The window field as sent (in the sender's window-scale units).
    pub window: u16,
    pub payload_len: usize,
    pub options: Handshake,
}

impl Segment {
    /// The TCP segment of `frame`, or `None` (see [`bounds`]).
    pub fn parse(frame: &[u8]) -> Option<Segment> {
        let b = bounds(frame)?;
        let t = b.tcp;
        let flags = frame[t + 13];
        Some(Segment {
            src_mac: frame[6..12].try_into().expect("six bytes"),
            src_ip: frame[b.ip + 12..b.ip + 16].try_into().expect("four bytes"),
            dst_ip: frame[b.ip + 16..b.ip + 20].try_into().expect("four bytes"),
            src_port: u16_at(frame, t),
            dst_port: u16_at(frame, t + 2),
            seq: u32_at(frame, t + 4),
            ack: (flags & flags::ACK != 0).then(|| u32_at(frame, t + 8)),
            flags,
            window: u16_at(frame, t + 14),
            payload_len: b.end - b.payload,
            options: handshake(&frame[t + 20..b.payload]),
        })
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// What a live connection notes of each segment of its peer's, read at
/// fixed offsets without walking the options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Glance {
    /// The window field, when the segment acknowledges (ACK set).
    pub window: Option<u16>,
    /// The sequence number just past its data (its own sequence number
    /// when it carries none).
    pub data_end: u32,
}

/// A [`Glance`] at `frame`'s segment; `None` when it is not one.
pub fn glance(frame: &[u8]) -> Option<Glance> {
    let b = bounds(frame)?;
    let seq = u32_at(frame, b.tcp + 4);
    Some(Glance {
        window: (frame[b.tcp + 13] & flags::ACK != 0).then(|| u16_at(frame, b.tcp + 14)),
        data_end: seq.wrapping_add((b.end - b.payload) as u32),
    })
}

/// TCP option kinds (RFC 9293, 7323, 2018).
mod kind {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMP: u8 = 8;
}

/// One option: its kind and where its body sits in `options`.
pub(crate) struct TcpOption {
    pub kind: u8,
    pub body: std::ops::Range<usize>,
}

/// The options in a TCP options area, up to the first malformed one.
pub(crate) fn options(area: &[u8]) -> impl Iterator<Item = TcpOption> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let kind = *area.get(at)?;
        match kind {
            kind::END => return None,
            kind::NOP => at += 1,
            _ => {
                let len = *area.get(at + 1)? as usize;
                if len < 2 || at + len > area.len() {
                    return None;
                }
                let body = at + 2..at + len;
                at += len;
                return Some(TcpOption { kind, body });
            }
        }
    })
}

/// Whether an option of `kind` is a SACK block list.
pub(crate) fn is_sack(kind: u8) -> bool {
    kind == kind::SACK
}

/// The handshake options in a TCP options area.
pub fn handshake(area: &[u8]) -> Handshake {
    let mut found = Handshake::default();
    for option in options(area) {
        let body = &area[option.body];
        match (option.kind, body.len()) {
            (kind::MSS, 2) => found.mss = Some(u16_at(body, 0)),
            (kind::WINDOW_SCALE, 1) => found.window_scale = Some(body[0]),
            (kind::SACK_PERMITTED, 0) => found.sack_permitted = true,
            (kind::TIMESTAMP, 8) => found.timestamp = Some((u32_at(body, 0), u32_at(body, 4))),
            _ => {}
        }
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet/IPv4/TCP frame with these fields and a valid checksum.
    pub fn frame(seq: u32, ack: Option<u32>, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let tcp_len = 20 + options.len() + payload.len();
        let mut f = vec![0u8; 14 + 20 + tcp_len];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = 14;
        f[ip] = 0x45;
        f[ip + 2..ip + 4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        f[ip + 8] = 64;
        f[ip + 9] = 6;
        f[ip + 12..ip + 16].copy_from_slice(&[198, 18, 0, 1]);
        f[ip + 16..ip + 20].copy_from_slice(&[198, 18, 0, 2]);
        let t = ip + 20;
        f[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
        f[t + 2..t + 4].copy_from_slice(&6379u16.to_be_bytes());
        f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        let flags = flags | if ack.is_some() { flags::ACK } else { 0 };
        f[t + 8..t + 12].copy_from_slice(&ack.unwrap_or(0).to_be_bytes());
        f[t + 12] = (((20 + options.len()) / 4) as u8) << 4;
        f[t + 13] = flags;
        f[t + 14..t + 16].copy_from_slice(&1000u16.to_be_bytes());
        f[t + 20..t + 20 + options.len()].copy_from_slice(options);
        f[t + 20 + options.len()..].copy_from_slice(payload);
        let sum = crate::xlate::tcp_checksum(&f).expect("a TCP frame");
        f[t + 16..t + 18].copy_from_slice(&sum.to_be_bytes());
        f
    }

    #[test]
    fn a_syn_shows_its_options() {
        let options = [
            2, 4, 0x05, 0xb4, // MSS 1460
            4, 2, // SACK permitted
            8, 10, 0, 0, 0, 7, 0, 0, 0, 0, // timestamps 7, 0
            1, // NOP
            3, 3, 7, // window scale 7
        ];
        let seg = Segment::parse(&frame(100, None, flags::SYN, &options, b"")).unwrap();
        assert_eq!(seg.seq, 100);
        assert_eq!(seg.ack, None);
        assert!(seg.has(flags::SYN));
        assert_eq!(
            seg.options,
            Handshake {
                mss: Some(1460),
                window_scale: Some(7),
                sack_permitted: true,
                timestamp: Some((7, 0)),
            }
        );
        assert_eq!((seg.src_port, seg.dst_port), (40000, 6379));
    }

    #[test]
    fn a_glance_reads_the_window_and_the_data_end_without_the_options() {
        let f = frame(1, Some(2), 0, &[1, 1, 1, 1], b"");
        assert_eq!(
            glance(&f),
            Some(Glance {
                window: Some(1000),
                data_end: 1
            })
        );
        let syn = glance(&frame(u32::MAX, None, flags::SYN, &[], b"abc")).unwrap();
        assert_eq!((syn.window, syn.data_end), (None, 2));
        assert_eq!(glance(&f[..30]), None);
    }

    #[test]
    fn padding_is_not_payload() {
        let mut f = frame(1, Some(2), 0, &[], b"ab");
        f.resize(80, 0);
        let seg = Segment::parse(&f).unwrap();
        assert_eq!(seg.payload_len, 2);
        assert_eq!(seg.ack, Some(2));
    }

    #[test]
    fn truncated_and_foreign_frames_are_refused() {
        let f = frame(1, Some(2), 0, &[1, 1, 1, 1], b"xyz");
        for len in 0..f.len() {
            assert_eq!(Segment::parse(&f[..len]), None, "length {len}");
        }
        let mut udp = f.clone();
        udp[14 + 9] = 17;
        assert_eq!(bounds(&udp), None);
        let mut fragment = f.clone();
        fragment[14 + 6] = 0x20; // more fragments
        assert_eq!(bounds(&fragment), None);
        let mut short_offset = f.clone();
        short_offset[34 + 12] = 0x40; // data offset 16 < 20
        assert_eq!(bounds(&short_offset), None);
    }

    #[test]
    fn malformed_options_stop_the_walk_without_panicking() {
        assert_eq!(handshake(&[2, 0, 1, 1]), Handshake::default());
        assert_eq!(handshake(&[2, 9, 1]), Handshake::default());
        assert_eq!(handshake(&[3, 3]), Handshake::default());
        assert_eq!(handshake(&[0, 2, 4, 0x05, 0xb4]), Handshake::default());
        let h = handshake(&[4, 2, 2, 4]);
        assert!(h.sack_permitted);
        assert_eq!(h.mss, None);
    }
}
