//! The per-connection handover record: what a dataplane exports about one
//! client connection so that a successor (possibly another binary) can
//! restore it.
//!
//! A record is 128 bytes, version first, every value a real (wire)
//! sequence number or a plain count: never a pointer, never smoltcp's
//! private state. [`Record`] is the typed view over the bytes (offsets in
//! `field`, a length and version check in [`Record::new_checked`]);
//! [`ConnRecord`] is the parsed form, with [`ConnRecord::parse`] and
//! [`ConnRecord::emit`]. The connection's byte streams (what it still
//! owes the peer, input the application has not used, input the socket
//! had not handed over) follow each other at `streams`, an offset into
//! whatever area carries them.

/// The layout this binary writes; it reads this one only.
pub const VERSION: u16 = 1;
/// Bytes of one record.
pub const LEN: usize = 128;

/// Why a record cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Fewer than [`LEN`] bytes.
    Truncated,
    /// A layout this binary does not know (an upgrade from or to a binary
    /// too far apart: fall back to draining).
    Version(u16),
    /// A TCP state no live connection can be exported in.
    State(u8),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Truncated => write!(f, "handover record truncated"),
            Error::Version(v) => {
                write!(f, "handover record layout {v}, this binary reads {VERSION}")
            }
            Error::State(s) => write!(f, "handover record with TCP state {s}"),
        }
    }
}

impl std::error::Error for Error {}

/// The TCP states a connection is exported in (TIME-WAIT, LISTEN and
/// CLOSED connections are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TcpState {
    /// The client's SYN was answered; its ACK has not arrived.
    SynReceived = 1,
    Established = 2,
    /// The peer closed its side; replies may still be owed.
    CloseWait = 3,
    /// We closed (FIN sent, not yet acknowledged).
    FinWait1 = 4,
    /// We closed and our FIN was acknowledged.
    FinWait2 = 5,
    /// Both closed at once.
    Closing = 6,
    /// The peer closed, then we did.
    LastAck = 7,
}

impl TcpState {
    fn from_u8(v: u8) -> Result<TcpState, Error> {
        Ok(match v {
            1 => TcpState::SynReceived,
            2 => TcpState::Established,
            3 => TcpState::CloseWait,
            4 => TcpState::FinWait1,
            5 => TcpState::FinWait2,
            6 => TcpState::Closing,
            7 => TcpState::LastAck,
            other => return Err(Error::State(other)),
        })
    }

    /// The peer's FIN has arrived (and is counted after `rcv_nxt`).
    pub fn peer_closed(self) -> bool {
        matches!(
            self,
            TcpState::CloseWait | TcpState::Closing | TcpState::LastAck
        )
    }

    /// We have sent our FIN.
    pub fn we_closed(self) -> bool {
        matches!(
            self,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing | TcpState::LastAck
        )
    }
}

/// Flag bits of [`field::FLAGS`].
pub mod flags {
    /// The peer's SYN allowed SACK.
    pub const SACK_OK: u16 = 1;
    /// Timestamps were negotiated.
    pub const TS_OK: u16 = 1 << 1;
    /// The session speaks RESP3.
    pub const RESP3: u16 = 1 << 2;
    /// The session authenticated.
    pub const AUTHED: u16 = 1 << 3;
    /// The application was told the peer closed.
    pub const PEER_CLOSED: u16 = 1 << 4;
    /// The application closes the connection once its output is sent.
    pub const CLOSING: u16 = 1 << 5;
}

/// Byte offsets of the fields (all big-endian).
mod field {
    use std::ops::Range;
    pub const VERSION: Range<usize> = 0..2;
    pub const STATE: usize = 2;
    pub const PEER_WS: usize = 3; // 0xff: none
    pub const FLAGS: Range<usize> = 4..6;
    pub const OLD_CORE: Range<usize> = 6..8;
    pub const PEER_IP: Range<usize> = 8..12;
    pub const LOCAL_IP: Range<usize> = 12..16;
    pub const PEER_PORT: Range<usize> = 16..18;
    pub const LOCAL_PORT: Range<usize> = 18..20;
    pub const PEER_MAC: Range<usize> = 20..26;
    pub const PEER_MSS: Range<usize> = 26..28;
    pub const OUR_MSS: Range<usize> = 28..30;
    pub const PEER_WINDOW: Range<usize> = 30..32;
    pub const SND_UNA: Range<usize> = 32..36;
    pub const RCV_NXT: Range<usize> = 36..40;
    pub const PEER_TSVAL: Range<usize> = 40..44;
    pub const RX_CAPACITY: Range<usize> = 44..48;
    pub const TX_CAPACITY: Range<usize> = 48..52;
    pub const POOL: Range<usize> = 52..56;
    pub const POOL_NAME_HASH: Range<usize> = 56..60;
    pub const TX_LEN: Range<usize> = 60..64;
    pub const HELD_LEN: Range<usize> = 64..68;
    pub const RX_LEN: Range<usize> = 68..72;
    pub const STREAMS: Range<usize> = 72..80;
    pub const USER_NAME_HASH: Range<usize> = 80..84;
    // 84..128 reserved, zero.
}

/// A typed view of a record's bytes.
#[derive(Debug, Clone)]
pub struct Record<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Record<T> {
    /// A view without checks (for writing a fresh record).
    pub fn new_unchecked(buffer: T) -> Record<T> {
        Record { buffer }
    }

    /// A view of a record this binary can read: long enough, and of its
    /// layout version.
    pub fn new_checked(buffer: T) -> Result<Record<T>, Error> {
        let record = Record { buffer };
        if record.buffer.as_ref().len() < LEN {
            return Err(Error::Truncated);
        }
        match record.version() {
            VERSION => Ok(record),
            other => Err(Error::Version(other)),
        }
    }

    fn bytes<const N: usize>(&self, at: std::ops::Range<usize>) -> [u8; N] {
        self.buffer.as_ref()[at].try_into().expect("field width")
    }

    pub fn version(&self) -> u16 {
        u16::from_be_bytes(self.bytes(field::VERSION))
    }

    fn u16(&self, at: std::ops::Range<usize>) -> u16 {
        u16::from_be_bytes(self.bytes(at))
    }

    fn u32(&self, at: std::ops::Range<usize>) -> u32 {
        u32::from_be_bytes(self.bytes(at))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Record<T> {
    fn put(&mut self, at: std::ops::Range<usize>, bytes: &[u8]) {
        self.buffer.as_mut()[at].copy_from_slice(bytes);
    }
}

/// Where a connection's streams are and how long each is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streams {
    /// Offset of the first byte (of `tx`, followed by `held`, then `rx`).
    pub at: u64,
    /// Everything owed to the peer from SND.UNA on: unacknowledged,
    /// then unsent.
    pub tx: u32,
    /// Received bytes the application has not used (older than `rx`).
    pub held: u32,
    /// Received bytes still in the socket, ending at `rcv_nxt`.
    pub rx: u32,
}

impl Streams {
    pub fn total(&self) -> usize {
        self.tx as usize + self.held as usize + self.rx as usize
    }
}

/// One exported client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRecord {
    pub state: TcpState,
    pub flags: u16,
    /// The core that exported it (diagnostics; the importer re-homes by
    /// the flow's hash).
    pub old_core: u16,
    pub peer_ip: [u8; 4],
    pub local_ip: [u8; 4],
    pub peer_port: u16,
    pub local_port: u16,
    /// The MAC the peer's frames came from (the next hop's).
    pub peer_mac: [u8; 6],
    /// Options of the peer's SYN.
    pub peer_mss: u16,
    pub peer_window_scale: Option<u8>,
    /// The MSS we announced (a successor with a smaller MTU cannot take
    /// the connection over).
    pub our_mss: u16,
    /// The window field of the peer's last segment, as sent (unscaled).
    pub peer_window: u16,
    /// Our first unacknowledged sequence number (for a connection still in
    /// the handshake: our ISN + 1).
    pub snd_una: u32,
    /// The peer's next sequence number after its in-order data (its FIN
    /// excluded).
    pub rcv_nxt: u32,
    pub peer_tsval: u32,
    /// The socket's buffer sizes; the receive size fixes our window scale,
    /// which the peer keeps applying.
    pub rx_capacity: u32,
    pub tx_capacity: u32,
    /// The application's pool, by index and by a hash of its name.
    pub pool: u32,
    pub pool_name_hash: u32,
    /// The user the session authenticated as, by [`name_hash`]; 0: the
    /// pool's default user.
    pub user_name_hash: u32,
    pub streams: Streams,
}

impl ConnRecord {
    pub fn parse<T: AsRef<[u8]>>(record: &Record<T>) -> Result<ConnRecord, Error> {
        let ws = record.buffer.as_ref()[field::PEER_WS];
        Ok(ConnRecord {
            state: TcpState::from_u8(record.buffer.as_ref()[field::STATE])?,
            flags: record.u16(field::FLAGS),
            old_core: record.u16(field::OLD_CORE),
            peer_ip: record.bytes(field::PEER_IP),
            local_ip: record.bytes(field::LOCAL_IP),
            peer_port: record.u16(field::PEER_PORT),
            local_port: record.u16(field::LOCAL_PORT),
            peer_mac: record.bytes(field::PEER_MAC),
            peer_mss: record.u16(field::PEER_MSS),
            peer_window_scale: (ws != 0xff).then_some(ws),
            our_mss: record.u16(field::OUR_MSS),
            peer_window: record.u16(field::PEER_WINDOW),
            snd_una: record.u32(field::SND_UNA),
            rcv_nxt: record.u32(field::RCV_NXT),
            peer_tsval: record.u32(field::PEER_TSVAL),
            rx_capacity: record.u32(field::RX_CAPACITY),
            tx_capacity: record.u32(field::TX_CAPACITY),
            pool: record.u32(field::POOL),
            pool_name_hash: record.u32(field::POOL_NAME_HASH),
            user_name_hash: record.u32(field::USER_NAME_HASH),
            streams: Streams {
                at: u64::from_be_bytes(record.bytes(field::STREAMS)),
                tx: record.u32(field::TX_LEN),
                held: record.u32(field::HELD_LEN),
                rx: record.u32(field::RX_LEN),
            },
        })
    }

    /// Writes the record (every byte of it, reserved ones zeroed).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, record: &mut Record<T>) {
        record.buffer.as_mut()[..LEN].fill(0);
        record.put(field::VERSION, &VERSION.to_be_bytes());
        record.buffer.as_mut()[field::STATE] = self.state as u8;
        record.buffer.as_mut()[field::PEER_WS] = self.peer_window_scale.unwrap_or(0xff);
        record.put(field::FLAGS, &self.flags.to_be_bytes());
        record.put(field::OLD_CORE, &self.old_core.to_be_bytes());
        record.put(field::PEER_IP, &self.peer_ip);
        record.put(field::LOCAL_IP, &self.local_ip);
        record.put(field::PEER_PORT, &self.peer_port.to_be_bytes());
        record.put(field::LOCAL_PORT, &self.local_port.to_be_bytes());
        record.put(field::PEER_MAC, &self.peer_mac);
        record.put(field::PEER_MSS, &self.peer_mss.to_be_bytes());
        record.put(field::OUR_MSS, &self.our_mss.to_be_bytes());
        record.put(field::PEER_WINDOW, &self.peer_window.to_be_bytes());
        record.put(field::SND_UNA, &self.snd_una.to_be_bytes());
        record.put(field::RCV_NXT, &self.rcv_nxt.to_be_bytes());
        record.put(field::PEER_TSVAL, &self.peer_tsval.to_be_bytes());
        record.put(field::RX_CAPACITY, &self.rx_capacity.to_be_bytes());
        record.put(field::TX_CAPACITY, &self.tx_capacity.to_be_bytes());
        record.put(field::POOL, &self.pool.to_be_bytes());
        record.put(field::POOL_NAME_HASH, &self.pool_name_hash.to_be_bytes());
        record.put(field::USER_NAME_HASH, &self.user_name_hash.to_be_bytes());
        record.put(field::TX_LEN, &self.streams.tx.to_be_bytes());
        record.put(field::HELD_LEN, &self.streams.held.to_be_bytes());
        record.put(field::RX_LEN, &self.streams.rx.to_be_bytes());
        record.put(field::STREAMS, &self.streams.at.to_be_bytes());
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// A stable 32-bit hash of a pool's name (FNV-1a), so a successor finds
/// the pool a session belonged to even if the pools were reordered.
pub fn name_hash(name: &str) -> u32 {
    name.bytes()
        .fold(0x811c_9dc5, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ConnRecord {
        ConnRecord {
            state: TcpState::CloseWait,
            flags: flags::SACK_OK | flags::RESP3 | flags::PEER_CLOSED,
            old_core: 3,
            peer_ip: [198, 18, 0, 1],
            local_ip: [198, 18, 0, 2],
            peer_port: 40001,
            local_port: 6379,
            peer_mac: [2, 0, 0, 0, 0, 9],
            peer_mss: 1460,
            peer_window_scale: Some(7),
            our_mss: 1460,
            peer_window: 501,
            snd_una: 0xdead_beef,
            rcv_nxt: 17,
            peer_tsval: 0,
            rx_capacity: 32 << 10,
            tx_capacity: 8 << 10,
            pool: 1,
            pool_name_hash: name_hash("alpha"),
            user_name_hash: name_hash("reporting"),
            streams: Streams {
                at: 4096,
                tx: 75_000,
                held: 3,
                rx: 0,
            },
        }
    }

    #[test]
    fn a_record_round_trips() {
        let mut bytes = [0xaau8; LEN];
        let record = sample();
        record.emit(&mut Record::new_unchecked(&mut bytes[..]));
        assert!(bytes[84..].iter().all(|&b| b == 0), "reserved bytes zeroed");
        let view = Record::new_checked(&bytes[..]).unwrap();
        assert_eq!(ConnRecord::parse(&view).unwrap(), record);
    }

    #[test]
    fn other_layouts_and_short_buffers_are_refused() {
        let mut bytes = [0u8; LEN];
        sample().emit(&mut Record::new_unchecked(&mut bytes[..]));
        assert_eq!(
            Record::new_checked(&bytes[..LEN - 1]).unwrap_err(),
            Error::Truncated
        );
        bytes[1] = 2;
        assert_eq!(
            Record::new_checked(&bytes[..]).unwrap_err(),
            Error::Version(2)
        );
        bytes[1] = 1;
        bytes[field::STATE] = 0;
        let view = Record::new_checked(&bytes[..]).unwrap();
        assert_eq!(ConnRecord::parse(&view).unwrap_err(), Error::State(0));
        assert!(Error::Version(2).to_string().contains("reads 1"));
    }

    #[test]
    fn pool_names_hash_apart() {
        assert_ne!(name_hash("alpha"), name_hash("beta"));
        assert_eq!(name_hash(""), 0x811c_9dc5);
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_refuse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..160)) {
            if let Ok(view) = Record::new_checked(&bytes[..]) {
                if let Ok(record) = ConnRecord::parse(&view) {
                    let mut again = [0u8; LEN];
                    record.emit(&mut Record::new_unchecked(&mut again[..]));
                    let back = ConnRecord::parse(&Record::new_checked(&again[..]).unwrap()).unwrap();
                    prop_assert_eq!(back, record);
                }
            }
        }
    }
}
