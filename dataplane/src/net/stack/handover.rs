//! Hot handover of a core's client connections: export them from a stack
//! that is about to go, restore them in a fresh one (another Interface,
//! another random seed; in H2 another process), with no RST and no byte
//! lost or repeated.
//!
//! smoltcp's sequence numbers and buffers are private, so nothing of the
//! old socket is copied. The record holds the real (wire) numbers, which
//! the stack keeps as byte counts against bases ([`super::WireTrack`]),
//! the peer's handshake options, and the bytes still owed either way. The
//! new socket is brought to the same place through its public API: a
//! synthetic SYN from the peer whose sequence number makes the peer's side
//! exact, a synthetic ACK, the unread bytes as data, the peer's FIN if it
//! had sent one. Our side differs by the new socket's random ISN; that Δ
//! is added to every sequence number we send and taken off every
//! acknowledgment we receive ([`ferrox_handover::xlate`]). Whatever the
//! peer has not acknowledged is queued again: the application keeps its
//! output until it is acknowledged, so it still has those bytes.
//!
//! Server connections are not carried: they are reset at the freeze (the
//! requests still on them fail with the usual error, never replayed), and
//! the successor opens new ones.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::State;
use smoltcp::time::Instant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
    TcpRepr, TcpSeqNumber,
};

use ferrox_handover::record::{self, flags, ConnRecord, Record, Streams, TcpState};
use ferrox_handover::segment::{self, Handshake, Segment};

use super::{handle_of, micros, settle_acked, App, Carry, Stack, WireTrack, KEEP_ALIVE};
use crate::net::device::FrameDevice;
use crate::net::flow::FlowKey;
use crate::net::link::{Link, MemoryLink};
use crate::net::memory::{PooledSocket, Role};

/// Exported connections in memory: records of [`record::LEN`] bytes, and
/// the byte streams they point into. (Across processes the same records
/// and streams live in the control region.)
#[derive(Debug, Default, Clone)]
pub struct Export {
    pub records: Vec<u8>,
    pub streams: Vec<u8>,
}

impl Export {
    pub fn len(&self) -> usize {
        self.records.len() / record::LEN
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn push(&mut self, mut conn: ConnRecord, tx: &[u8], held: &[u8], rx: &[u8]) {
        conn.streams = Streams {
            at: self.streams.len() as u64,
            tx: tx.len() as u32,
            held: held.len() as u32,
            rx: rx.len() as u32,
        };
        for stream in [tx, held, rx] {
            self.streams.extend_from_slice(stream);
        }
        let at = self.records.len();
        self.records.resize(at + record::LEN, 0);
        conn.emit(&mut Record::new_unchecked(&mut self.records[at..]));
    }

    /// Appends `other`'s records (another core's), their streams with
    /// them.
    pub fn extend(&mut self, other: &Export) {
        let base = self.streams.len() as u64;
        self.streams.extend_from_slice(&other.streams);
        for bytes in other.records.chunks(record::LEN) {
            let at = self.records.len();
            self.records.extend_from_slice(bytes);
            let mut view = Record::new_unchecked(&mut self.records[at..]);
            if let Ok(mut conn) = ConnRecord::parse(&Record::new_unchecked(bytes)) {
                conn.streams.at += base;
                conn.emit(&mut view);
            }
        }
    }

    /// The records, each with its tx, held and rx streams; a record that
    /// cannot be read, or whose streams lie outside, is an error.
    fn iter(&self) -> impl Iterator<Item = Result<(ConnRecord, [&[u8]; 3]), record::Error>> + '_ {
        self.records.chunks(record::LEN).map(|bytes| {
            let conn = ConnRecord::parse(&Record::new_checked(bytes)?)?;
            let s = conn.streams;
            let start = usize::try_from(s.at).map_err(|_| record::Error::Truncated)?;
            let bytes = self
                .streams
                .get(start..start + s.total())
                .ok_or(record::Error::Truncated)?;
            let (tx, rest) = bytes.split_at(s.tx as usize);
            let (held, rx) = rest.split_at(s.held as usize);
            Ok((conn, [tx, held, rx]))
        })
    }
}

/// What an export or a restore did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoverStats {
    pub exported: u64,
    /// Connections not carried: closing ones past the point of return
    /// (TIME-WAIT), or still in their very first step.
    pub skipped: u64,
    /// Server connections reset at the freeze.
    pub servers_reset: u64,
    pub restored: u64,
    /// Records this stack could not take over; their peers got a RST.
    pub reset_on_restore: u64,
}

/// The record's name for a state a connection can be exported in.
fn exported_state(state: State) -> Option<TcpState> {
    Some(match state {
        State::SynReceived => TcpState::SynReceived,
        State::Established => TcpState::Established,
        State::CloseWait => TcpState::CloseWait,
        State::FinWait1 => TcpState::FinWait1,
        State::FinWait2 => TcpState::FinWait2,
        State::Closing => TcpState::Closing,
        State::LastAck => TcpState::LastAck,
        _ => return None,
    })
}

/// What the wire says of an established connection (`unread`: bytes it
/// received that are not yet counted as read), for a synthetic handshake:
/// addresses, options, windows and sequence numbers; no application state.
fn wire_record(
    conn: &super::Conn,
    snd_base: u32,
    unread: usize,
    address: Ipv4Address,
    mtu: u16,
) -> ConnRecord {
    let wire = conn.wire;
    let (peer_ip, peer_port) = conn.key.peer();
    ConnRecord {
        state: TcpState::Established,
        flags: if wire.handshake.sack_permitted {
            flags::SACK_OK
        } else {
            0
        },
        old_core: 0,
        peer_ip: peer_ip.octets(),
        local_ip: address.octets(),
        peer_port,
        local_port: conn.key.local_port(),
        peer_mac: wire.peer_mac,
        // RFC 9293: 536 when the SYN named none.
        peer_mss: wire.handshake.mss.unwrap_or(536),
        peer_window_scale: wire.handshake.window_scale,
        our_mss: mss(mtu),
        peer_window: wire.peer_window,
        snd_una: snd_base.wrapping_add(wire.acked),
        rcv_nxt: wire.rcv_nxt(unread),
        peer_tsval: 0,
        rx_capacity: 0,
        tx_capacity: 0,
        pool: 0,
        pool_name_hash: 0,
        user_name_hash: 0,
        streams: Streams::default(),
    }
}

/// What another socket needs to carry `conn` on: the bytes its socket
/// received and did not give out yet (taken out of it), and the output
/// the peer has not acknowledged (what it acknowledged since the last
/// service is dropped first).
fn take_streams<A: App>(app: &mut A, conn: &mut super::Conn) -> (Vec<u8>, Vec<u8>) {
    settle_acked(app, conn);
    let mut rx = Vec::new();
    while conn.socket.can_recv() {
        let _ = conn.socket.recv(|data| {
            rx.extend_from_slice(data);
            (data.len(), ())
        });
    }
    (rx, app.output(conn.tag).to_vec())
}

/// The MSS a port of `mtu` announces (IPv4 and TCP headers without
/// options), as smoltcp computes it.
fn mss(mtu: u16) -> u16 {
    mtu.saturating_sub(40)
}

impl<A: App> Stack<A> {
    /// A handover is coming: the application takes no new requests; those
    /// in flight go on. Poll on until [`Stack::drained`].
    pub fn begin_drain(&mut self) {
        self.app.begin_drain();
    }

    pub fn end_drain(&mut self) {
        self.app.end_drain();
    }

    /// No request is in flight, and no client socket holds data past a
    /// hole (a successor would not have it, and a peer that saw it
    /// acknowledged selectively would not send it again).
    pub fn drained(&self) -> bool {
        self.app.drained()
            && !self
                .conns
                .iter()
                .flatten()
                .any(|conn| !conn.active && super::holds_data_past_a_hole(conn))
    }

    /// Freezes the core: resets every server connection (their requests
    /// fail with the usual error), then appends every client connection
    /// to `out` and forgets it without a word to the peer. The stack
    /// serves nothing afterwards; drop it, and flush the link so that the
    /// last acknowledgments reach the peers.
    pub fn export<L: Link>(
        &mut self,
        now: Instant,
        link: &mut L,
        out: &mut Export,
    ) -> HandoverStats {
        let mut stats = HandoverStats::default();
        let ids: Vec<u32> = (0..self.conns.len() as u32)
            .filter(|&id| self.conns[id as usize].is_some())
            .collect();
        for &id in &ids {
            let conn = self.conns[id as usize].as_mut().expect("a live connection");
            if conn.active {
                conn.socket.abort();
                let mut device = FrameDevice::egress(link);
                conn.socket.poll_egress(&mut self.iface, now, &mut device);
                self.retire(id, micros(now));
                stats.servers_reset += 1;
            }
        }
        for &id in &ids {
            if self.conns[id as usize].is_none() {
                continue;
            }
            if self.export_conn(id, out) {
                stats.exported += 1;
                self.forget(id);
            } else {
                stats.skipped += 1;
                self.retire(id, micros(now));
            }
        }
        stats
    }

    /// Writes connection `id`'s record; false when it cannot be carried.
    fn export_conn(&mut self, id: u32, out: &mut Export) -> bool {
        let (cfg_address, cfg_core, mtu) = (self.config.address, self.config.core, self.config.mtu);
        let conn = self.conns[id as usize].as_mut().expect("a live connection");
        let Some(state) = exported_state(conn.socket.state()) else {
            return false;
        };
        let Some(snd_base) = conn.wire.snd_base else {
            // Our SYN-ACK never left: the peer retries its SYN.
            return false;
        };
        if conn.aborted {
            return false;
        }
        let (rx, tx) = take_streams(&mut self.app, conn);
        let Some(carry) = self.app.export(conn.tag) else {
            return false;
        };
        let wire = conn.wire;
        let mut record_flags = 0;
        for (on, flag) in [
            (wire.handshake.sack_permitted, flags::SACK_OK),
            (carry.resp3, flags::RESP3),
            (carry.authed, flags::AUTHED),
            (conn.peer_closed, flags::PEER_CLOSED),
            (carry.closing || conn.closing, flags::CLOSING),
        ] {
            if on {
                record_flags |= flag;
            }
        }
        let record = ConnRecord {
            state,
            flags: record_flags,
            old_core: cfg_core as u16,
            rx_capacity: conn.socket.recv_capacity() as u32,
            tx_capacity: conn.socket.send_capacity() as u32,
            pool: carry.pool,
            pool_name_hash: carry.pool_name_hash,
            user_name_hash: carry.user_name_hash,
            ..wire_record(conn, snd_base, rx.len(), cfg_address, mtu)
        };
        out.push(record, &tx, &conn.input, &rx);
        true
    }

    /// Restores the connections of `export` this core owns (by the flow's
    /// hash, so the core count may differ from the exporter's). A record
    /// that cannot be taken over gets its peer a RST. Call before the
    /// first frame reaches the stack: a frame for a flow not yet restored
    /// would be answered with a RST.
    pub fn restore<L: Link>(
        &mut self,
        export: &Export,
        now: Instant,
        link: &mut L,
    ) -> HandoverStats {
        let mut stats = HandoverStats::default();
        let mut primed = None;
        for entry in export.iter() {
            let Ok((record, [tx, held, rx])) = entry else {
                stats.reset_on_restore += 1;
                continue;
            };
            let key = FlowKey::new(
                Ipv4Address::from_octets(record.peer_ip),
                record.peer_port,
                record.local_port,
            );
            if key.owner(self.config.cores) != self.config.core {
                continue;
            }
            if primed != Some((record.peer_ip, record.peer_mac)) {
                self.prime_neighbour(&record, now);
                primed = Some((record.peer_ip, record.peer_mac));
            }
            match self.restore_conn(key, &record, tx, held, rx, now, link) {
                Ok(()) => stats.restored += 1,
                Err(why) => {
                    tracing::warn!(peer = %key.peer().0, port = key.peer().1, why, "connection not restored; reset");
                    self.send_reset(&record, link);
                    stats.reset_on_restore += 1;
                }
            }
        }
        stats
    }

    /// Teaches the fresh interface the MAC of the record's next hop, as an
    /// ARP reply would: otherwise its first segment would become an ARP
    /// request, and smoltcp silences a flow for a second after one.
    fn prime_neighbour(&mut self, record: &ConnRecord, now: Instant) {
        let peer = Ipv4Address::from_octets(record.peer_ip);
        let cidr = smoltcp::wire::Ipv4Cidr::new(self.config.address, self.config.prefix_len);
        let next_hop = match self.config.gateway {
            Some(gateway) if !cidr.contains_addr(&peer) => gateway,
            _ => peer,
        };
        let arp = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr: EthernetAddress(record.peer_mac),
            source_protocol_addr: next_hop,
            target_hardware_addr: EthernetAddress(self.config.mac),
            target_protocol_addr: self.config.address,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress(record.peer_mac),
            dst_addr: EthernetAddress(self.config.mac),
            ethertype: EthernetProtocol::Arp,
        };
        let mut frame = vec![0; eth.buffer_len() + arp.buffer_len()];
        let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.emit(&mut ethernet);
        arp.emit(&mut ArpPacket::new_unchecked(ethernet.payload_mut()));
        let mut scratch = MemoryLink::new(self.config.mtu);
        let mut device = FrameDevice::ingress(&frame, &mut scratch);
        self.iface
            .poll_ingress_single(now, &mut device, &mut self.no_sockets);
    }

    /// A fresh socket for `role`, brought to the record's state by a
    /// synthetic handshake that never leaves this stack: the peer's SYN
    /// (so that its next byte is the first one unread), our SYN-ACK
    /// captured for its ISN, the peer's ACK, the unread bytes `rx`, and
    /// its FIN if it sent one. Returns the socket, the Δ from its
    /// sequence numbers to the real ones, and the SYN's sequence number.
    fn synthesize<L: Link>(
        &mut self,
        key: FlowKey,
        record: &ConnRecord,
        rx: &[u8],
        role: Role,
        now: Instant,
        link: &mut L,
    ) -> Result<(PooledSocket, u32, u32), &'static str> {
        if mss(self.config.mtu) < record.our_mss {
            return Err("the MTU is smaller than the one the peer was told");
        }
        let keep_alive = self
            .config
            .keep_alive_ports
            .contains(&key.local_port())
            .then_some(KEEP_ALIVE);
        let mut socket = self
            .new_socket(role, keep_alive)
            .ok_or("no socket memory")?;
        socket.listen(key.local_port()).expect("a non-zero port");
        let synthetic = Synthetic::new(record, self.config.mac);
        let mut capture = MemoryLink {
            caps: link.capabilities(),
            sent: Default::default(),
        };
        let syn_seq = record.rcv_nxt.wrapping_sub(rx.len() as u32).wrapping_sub(1);
        let syn = synthetic.frame(syn_seq, None, TcpControl::Syn, true, &[]);
        socket.poll_ingress(
            &mut self.iface,
            now,
            &mut FrameDevice::ingress(&syn, &mut capture),
        );
        if socket.state() != State::SynReceived {
            self.memory.release(socket);
            return Err("the synthetic SYN was not taken");
        }
        capture.sent.clear();
        socket.poll_egress(&mut self.iface, now, &mut FrameDevice::egress(&mut capture));
        let Some(isn) = capture
            .sent
            .iter()
            .filter_map(|f| Segment::parse(f))
            .find(|s| s.has(segment::flags::SYN))
            .map(|s| s.seq)
        else {
            self.memory.release(socket);
            return Err("no SYN-ACK (the neighbour is unknown?)");
        };
        let delta = record.snd_una.wrapping_sub(isn.wrapping_add(1));
        let ack = Some(isn.wrapping_add(1));
        let mut seq = syn_seq.wrapping_add(1);
        if record.state != TcpState::SynReceived {
            let frame = synthetic.frame(seq, ack, TcpControl::None, false, &[]);
            socket.poll_ingress(
                &mut self.iface,
                now,
                &mut FrameDevice::ingress(&frame, &mut capture),
            );
            for piece in rx.chunks(record.peer_mss.max(1) as usize) {
                let frame = synthetic.frame(seq, ack, TcpControl::Psh, false, piece);
                socket.poll_ingress(
                    &mut self.iface,
                    now,
                    &mut FrameDevice::ingress(&frame, &mut capture),
                );
                seq = seq.wrapping_add(piece.len() as u32);
            }
            if record.state.peer_closed() {
                let frame = synthetic.frame(seq, ack, TcpControl::Fin, false, &[]);
                socket.poll_ingress(
                    &mut self.iface,
                    now,
                    &mut FrameDevice::ingress(&frame, &mut capture),
                );
            }
            let want = if record.state.peer_closed() {
                State::CloseWait
            } else {
                State::Established
            };
            if socket.state() != want || socket.recv_queue() != rx.len() {
                self.memory.release(socket);
                return Err("the synthetic handshake did not reach the record's state");
            }
            // smoltcp's answers to all this were captured, yet it now
            // believes the peer heard them: it would send no window
            // update when its window opens, and a peer that last heard of
            // a full (or idle-sized) window would wait on its persist
            // timer, backing off. An old byte, resent, is
            // answered at once with an ACK that tells the peer the window.
            let rcv_nxt = seq.wrapping_add(u32::from(record.state.peer_closed()));
            let old_byte =
                synthetic.frame(rcv_nxt.wrapping_sub(1), ack, TcpControl::None, false, b"\0");
            let mut device = FrameDevice::ingress(&old_byte, link).translated(Some(delta));
            socket.poll_ingress(&mut self.iface, now, &mut device);
            self.stats.tx_no_mbuf += device.tx_no_mbuf;
        }
        Ok((socket, delta, syn_seq))
    }

    /// Moves client connection `id` from its idle buffers to full ones:
    /// a new socket brought to the connection's state by a synthetic
    /// handshake (as a successor restores one), holding the bytes the old
    /// one had received and not yet given out, and the output the peer
    /// has not acknowledged; the old socket is dropped without a word to
    /// the peer. Both receive buffers are under 64 KiB, so neither uses a
    /// window scale: the peer's view of the window stays right. On `Err`
    /// the connection keeps its idle buffers for good.
    pub(super) fn upgrade<L: Link>(
        &mut self,
        id: u32,
        now: Instant,
        link: &mut L,
    ) -> Result<(), &'static str> {
        let (cfg_address, mtu) = (self.config.address, self.config.mtu);
        let conn = self.conns[id as usize].as_mut().expect("a live connection");
        conn.small = false;
        let Some(snd_base) = conn.wire.snd_base else {
            return Err("our SYN-ACK was not seen");
        };
        let (rx, tx) = take_streams(&mut self.app, conn);
        let record = wire_record(conn, snd_base, rx.len(), cfg_address, mtu);
        let key = conn.key;
        let (socket, delta, syn_seq) =
            match self.synthesize(key, &record, &rx, Role::Client, now, link) {
                Ok(done) => done,
                Err(why) => {
                    // The old socket gave its unread bytes out: they wait
                    // as held input instead.
                    let conn = self.conns[id as usize].as_mut().expect("a live connection");
                    conn.wire.read = conn.wire.read.wrapping_add(rx.len() as u32);
                    conn.input.extend_from_slice(&rx);
                    conn.input_blocked |= !conn.input.is_empty();
                    return Err(why);
                }
            };
        let conn = self.conns[id as usize].as_mut().expect("a live connection");
        let old = std::mem::replace(&mut conn.socket, socket);
        conn.wire.rcv_base = syn_seq.wrapping_add(1);
        conn.wire.read = 0;
        conn.wire.snd_base = Some(record.snd_una);
        conn.wire.acked = 0;
        conn.wire.xlate = Some(delta);
        #[cfg(test)]
        if !self.translate {
            conn.wire.xlate = None;
        }
        conn.in_socket = conn.socket.send_slice(&tx).unwrap_or(0);
        if !conn.received {
            conn.received = true;
            self.received.push(id);
        }
        self.memory.release(old);
        Ok(())
    }

    /// Brings a fresh socket to the record's state through a synthetic
    /// handshake, and files it as a connection of this stack.
    #[allow(clippy::too_many_arguments)]
    fn restore_conn<L: Link>(
        &mut self,
        key: FlowKey,
        record: &ConnRecord,
        tx: &[u8],
        held: &[u8],
        rx: &[u8],
        now: Instant,
        link: &mut L,
    ) -> Result<(), &'static str> {
        if self.flows.contains_key(&key) {
            return Err("the flow is already open");
        }
        // Idle buffers for a connection that had them.
        let idle = self.memory.idle_size();
        let role = if idle > 0 && record.rx_capacity == idle {
            Role::Idle
        } else {
            Role::Client
        };
        if self.memory.recv_size(role) != record.rx_capacity {
            // Our window scale follows the receive buffer; the peer keeps
            // applying the old one.
            return Err("the receive buffer size differs");
        }
        let (socket, delta, syn_seq) = self.synthesize(key, record, rx, role, now, link)?;
        let id = self.insert(key, socket, false);
        let handle = handle_of(id, self.generations[id as usize]);
        let carry = Carry {
            pool: record.pool,
            pool_name_hash: record.pool_name_hash,
            user_name_hash: record.user_name_hash,
            resp3: record.has(flags::RESP3),
            authed: record.has(flags::AUTHED),
            peer_closed: record.has(flags::PEER_CLOSED),
            closing: record.has(flags::CLOSING),
        };
        let Some(tag) = self.app.import(handle, carry, tx) else {
            self.forget_new(id);
            return Err("the application has no pool for it");
        };
        let established = record.state != TcpState::SynReceived;
        if !established {
            self.handshaking += 1;
        }
        let conn = self.conns[id as usize].as_mut().expect("just inserted");
        conn.tag = tag;
        conn.established = established;
        conn.peer_closed = record.has(flags::PEER_CLOSED);
        conn.closing = record.state.we_closed();
        conn.input = held.to_vec();
        conn.input_blocked = !held.is_empty();
        conn.wire = WireTrack {
            handshake: Handshake {
                mss: Some(record.peer_mss),
                window_scale: record.peer_window_scale,
                sack_permitted: record.has(flags::SACK_OK),
                timestamp: None,
            },
            peer_mac: record.peer_mac,
            peer_window: record.peer_window,
            rcv_base: syn_seq.wrapping_add(1),
            rcv_high: record.rcv_nxt,
            read: 0,
            snd_base: Some(record.snd_una),
            acked: 0,
            xlate: Some(delta),
        };
        #[cfg(test)]
        if !self.translate {
            conn.wire.xlate = None;
        }
        // Everything the peer has not acknowledged goes back into the
        // socket before any frame of the peer's is processed: smoltcp
        // drops an ACK for bytes it does not hold, with the data on it.
        conn.in_socket = conn.socket.send_slice(tx).unwrap_or(0);
        // Serviced in the next poll: it sends what it holds and files its
        // timer.
        if !conn.received {
            conn.received = true;
            self.received.push(id);
        }
        Ok(())
    }

    /// Undoes a restore that the application refused.
    fn forget_new(&mut self, id: u32) {
        let conn = self.conns[id as usize].take().expect("just inserted");
        self.flows.remove(&conn.key);
        self.memory.release(conn.socket);
        self.free.push(id);
    }

    /// Resets the record's peer (a connection that cannot be taken over is
    /// told so rather than left hanging).
    fn send_reset<L: Link>(&mut self, record: &ConnRecord, link: &mut L) {
        let frame = Synthetic::new(record, self.config.mac).reset();
        link.transmit(frame.len(), |buf| buf.copy_from_slice(&frame));
    }
}

/// Frames of a record's flow, as if from its peer.
struct Synthetic<'r> {
    record: &'r ConnRecord,
    our_mac: [u8; 6],
}

impl<'r> Synthetic<'r> {
    fn new(record: &'r ConnRecord, our_mac: [u8; 6]) -> Synthetic<'r> {
        Synthetic { record, our_mac }
    }

    fn ips(&self) -> (Ipv4Address, Ipv4Address) {
        (
            Ipv4Address::from_octets(self.record.peer_ip),
            Ipv4Address::from_octets(self.record.local_ip),
        )
    }

    /// A segment from the peer. The SYN carries the peer's options as it
    /// sent them; omitting one would turn it off.
    fn frame(
        &self,
        seq: u32,
        ack: Option<u32>,
        control: TcpControl,
        syn: bool,
        payload: &[u8],
    ) -> Vec<u8> {
        let r = self.record;
        let tcp = TcpRepr {
            src_port: r.peer_port,
            dst_port: r.local_port,
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            // The SYN's window is never scaled; the ACK's is the peer's.
            window_len: if syn { u16::MAX } else { r.peer_window },
            window_scale: if syn { r.peer_window_scale } else { None },
            max_seg_size: syn.then_some(r.peer_mss),
            sack_permitted: syn && r.has(flags::SACK_OK),
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let (peer, local) = self.ips();
        emit((r.peer_mac, self.our_mac), (peer, local), &tcp)
    }

    /// A RST to the peer, in the real sequence space.
    fn reset(&self) -> Vec<u8> {
        let r = self.record;
        let tcp = TcpRepr {
            src_port: r.local_port,
            dst_port: r.peer_port,
            control: TcpControl::Rst,
            seq_number: TcpSeqNumber(r.snd_una as i32),
            ack_number: Some(TcpSeqNumber(r.rcv_nxt as i32)),
            window_len: 0,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        let (peer, local) = self.ips();
        emit((self.our_mac, r.peer_mac), (local, peer), &tcp)
    }
}

/// An Ethernet/IPv4 frame carrying `tcp`, checksums filled.
fn emit(macs: ([u8; 6], [u8; 6]), ips: (Ipv4Address, Ipv4Address), tcp: &TcpRepr) -> Vec<u8> {
    let ip = Ipv4Repr {
        src_addr: ips.0,
        dst_addr: ips.1,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(macs.0),
        dst_addr: EthernetAddress(macs.1),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; eth.buffer_len() + ip.buffer_len() + tcp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    let checksums = ChecksumCapabilities::default();
    ip.emit(&mut packet, &checksums);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &IpAddress::Ipv4(ips.0),
        &IpAddress::Ipv4(ips.1),
        &checksums,
    );
    buf
}
