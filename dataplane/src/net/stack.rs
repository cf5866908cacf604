//! One core's TCP endpoint: an smoltcp `Interface`, a flow table, and one
//! single-socket `SocketSet` per connection, accepted from clients or
//! opened to servers on behalf of the application ([`App`]).
//!
//! smoltcp visits every socket of the set it is polled with, so a set per
//! connection keeps the cost of a frame independent of how many connections
//! the core holds. Egress is driven the same way: a connection is serviced
//! (input to the application, its output out, `poll_egress`) once after a
//! burst that brought frames for it, when its application has output, or
//! when its deadline (`Interface::poll_at`) is due; deadlines sit in a
//! min-heap, so idle connections cost nothing per loop. Servicing once per
//! burst rather than per frame means one ACK for the burst's segments (as
//! GRO and delayed ACKs give the kernel) and replies batched into fewer,
//! fuller segments.
//!
//! smoltcp has no accept queue (a SYN that meets no listening socket gets a
//! RST), so a SYN to a served port creates a listening socket on demand,
//! bounded by the backlog of connections still in the handshake.
//!
//! **Liveness.** Every call does bounded work: a burst services each
//! connection it brought frames for once; the application's actions are
//! carried out up to [`ACTION_BUDGET`] per poll (the rest wait for the
//! next, and the core does not sleep meanwhile); and a connection asked to
//! send again after a service in the same poll that moved nothing (no
//! input used, no output queued, no state change) waits for the next poll
//! instead of being serviced again. Input held back because the
//! application stopped taking it is offered again only once the
//! application wants input, never on every service.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddrV4;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp::State;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use ferrox_engine::{Action, Handle, Tag};
use ferrox_handover::segment::{Handshake, Segment};

use super::device::{self, FrameDevice};
use super::flow::{self, FlowKey, FlowTable, Frame};
use super::link::Link;
use super::memory::{PooledSocket, Role, SocketMemory};
use crate::port::RxChecksum;

/// What runs on a core's connections, in the engine's vocabulary: events
/// in (`handle_*`, with the time), bytes in and out, and actions out
/// (`poll_*`). Tags ([`Tag`]) are the application's names for
/// connections, handles ([`Handle`]: slot index and generation, so a
/// stale handle never reaches a new connection) the stack's; times are
/// microseconds of the core's clock. `ferrox_engine::Engine` has exactly
/// these methods; reconfiguration and statistics are the core loop's
/// business, not the connection's.
pub trait App {
    /// A client connected to `local_port`; the application's tag for it,
    /// or `None` to refuse it.
    fn accept(&mut self, handle: Handle, local_port: u16) -> Option<Tag>;
    /// The connection the application asked for with `Connect` has `handle`.
    fn bind(&mut self, tag: Tag, handle: Handle);
    /// Bytes arrived; returns how many were used (the rest is kept and
    /// offered again with more). While the application wants input, the
    /// stack keeps reading, so it is the application that bounds what it
    /// leaves unused: it refuses a message longer than its limits.
    fn handle_input(&mut self, tag: Tag, data: &[u8], now: u64) -> usize;
    /// Whether the application takes input on `tag` now.
    fn wants_input(&self, tag: Tag) -> bool;
    /// Output owed on `tag`, oldest first: everything the peer has not
    /// acknowledged, whether the socket took it already or not (the
    /// stack counts what it handed the socket). smoltcp cannot show the
    /// bytes in its send buffer, so this is what a handover resends.
    fn output(&mut self, tag: Tag) -> &[u8];
    /// The peer acknowledged the first `n` bytes of [`App::output`].
    fn output_acked(&mut self, tag: Tag, n: usize);
    /// A connection the application opened is established.
    fn handle_connected(&mut self, tag: Tag, now: u64);
    /// The peer closed its side.
    fn handle_peer_closed(&mut self, tag: Tag, now: u64);
    /// The connection has ended, whoever ended it; `handle` is dead.
    fn handle_gone(&mut self, tag: Tag, handle: Handle, now: u64);
    /// The next thing the application asks of the stack.
    fn poll_action(&mut self) -> Option<Action>;
    /// Whether actions wait (the last poll ran out of budget).
    fn has_actions(&self) -> bool;
    /// When `handle_timeout` next has work.
    fn poll_timeout(&self) -> Option<u64>;
    fn handle_timeout(&mut self, now: u64);

    /// A handover is coming: take no new requests (those in flight go on).
    fn begin_drain(&mut self) {}
    /// The handover was called off.
    fn end_drain(&mut self) {}
    /// Whether no request is in flight.
    fn drained(&self) -> bool {
        true
    }
    /// Hands over client connection `tag`: its state, and the
    /// application forgets it (the stack reports no `handle_gone`). Its
    /// output has been read with [`App::output`] just before.
    fn export(&mut self, tag: Tag) -> Option<Carry>;
    /// Takes over a client connection a predecessor exported, on
    /// `handle`, owing `output`; `None` refuses it (it is reset).
    fn import(&mut self, handle: Handle, carry: Carry, output: &[u8]) -> Option<Tag>;
}

/// What the application keeps of a client connection across a handover,
/// beyond the bytes it owes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Carry {
    /// The pool it belongs to, by index and by name
    /// ([`ferrox_handover::record::name_hash`]).
    pub pool: u32,
    pub pool_name_hash: u32,
    /// The user it authenticated as, by name hash; 0: the default user.
    pub user_name_hash: u32,
    pub resp3: bool,
    pub authed: bool,
    /// The application was told the peer closed.
    pub peer_closed: bool,
    /// The application asked to close it once its output is sent.
    pub closing: bool,
}

/// How a core's stack serves.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub mac: [u8; 6],
    pub address: Ipv4Address,
    pub prefix_len: u8,
    /// Where packets for other subnets go (servers behind a router).
    pub gateway: Option<Ipv4Address>,
    /// TCP ports the application listens on.
    pub ports: Vec<u16>,
    /// Most connections in the handshake at once; further SYNs are dropped
    /// (the client retransmits), not refused.
    pub backlog: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// This core and how many there are: a connection this core opens
    /// gets a local port whose flow hashes to it.
    pub core: usize,
    pub cores: usize,
    /// How long an ACK may wait for data to ride on; `None` (the default)
    /// sends it at once. With a delay, the ACK of a request usually rides
    /// on its reply, but window updates wait too, which stalls pipelines
    /// that fill the window (see docs/performance.md).
    pub ack_delay: Option<smoltcp::time::Duration>,
    /// Listening ports whose connections get TCP keep-alives (every
    /// [`KEEP_ALIVE`]), so a client that vanished is noticed.
    pub keep_alive_ports: Vec<u16>,
    /// The port's MTU: TCP segments are sized to it.
    pub mtu: u16,
    /// Who verifies received checksums.
    pub rx_checksum: RxChecksum,
    /// The NIC fills TCP checksums on transmit.
    pub tx_checksum_offload: bool,
}

/// Keep-alive interval of connections on `keep_alive_ports`.
pub const KEEP_ALIVE: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(60);

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            mac: [2, 0, 0, 0, 0, 1],
            address: Ipv4Address::new(198, 18, 0, 2),
            prefix_len: 24,
            gateway: None,
            ports: vec![6379],
            backlog: 1024,
            max_connections: 65536,
            core: 0,
            cores: 1,
            ack_delay: None,
            keep_alive_ports: Vec::new(),
            mtu: device::DEFAULT_MTU,
            rx_checksum: RxChecksum::Verify,
            tx_checksum_offload: false,
        }
    }
}

/// Counters of one core's stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackStats {
    pub frames: u64,
    pub accepted: u64,
    pub refused: u64,
    pub connects: u64,
    pub closed: u64,
    pub open: u64,
    pub backlog_drops: u64,
    /// SYNs dropped at the connection limit or for want of socket memory.
    pub limit_drops: u64,
    pub tx_no_mbuf: u64,
    /// Sends put off to the next poll (the connection made no progress).
    pub deferred: u64,
    /// Polls that ran out of action budget.
    pub budget_exhausted: u64,
    /// Closing connections reset because the peer never finished closing.
    pub close_timeouts: u64,
    /// Client connections moved from idle buffers to full ones.
    pub upgrades: u64,
    /// Bytes of socket buffers held (a gauge).
    pub socket_buffer_bytes: u64,
}

/// Room for held-back input a connection keeps between messages.
const KEEP_INPUT_CAPACITY: usize = 64 << 10;

/// First local port of connections the stack opens.
const EPHEMERAL: std::ops::Range<u16> = 49152..65535;

/// Most application actions carried out in one poll.
pub const ACTION_BUDGET: usize = 4096;

/// How long a connection may take to finish closing once the stack closed
/// it (a peer that vanished, or never sends its FIN); then it is reset.
pub const CLOSE_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(30);

/// What became of a SYN to a served port.
enum Opened {
    Conn(u32),
    /// Dropped without an answer (backlog, limit, memory): the client
    /// retransmits.
    Dropped,
    /// The application refused it: smoltcp answers with a RST.
    Refused,
}

struct Conn {
    socket: PooledSocket,
    key: FlowKey,
    generation: u32,
    tag: Tag,
    /// Opened by the application (a connection to a server).
    active: bool,
    established: bool,
    peer_closed: bool,
    /// The application asked to close once its output is sent.
    closing: bool,
    /// The application reset it; it no longer owns `tag`'s buffers.
    aborted: bool,
    /// The deadline this connection is filed under in the timer heap.
    timer: Option<Instant>,
    /// Frames arrived for it since the last service (it is in `received`).
    received: bool,
    /// Received bytes the application has not used yet.
    input: Vec<u8>,
    /// The application stopped taking input with `input` (or the socket)
    /// holding some: offer it again once it wants input.
    input_blocked: bool,
    /// The poll of its last service, and whether that service moved
    /// anything.
    serviced_in: u64,
    progressed: bool,
    /// Reset if not closed by then (set when the stack closes it).
    close_deadline: Option<Instant>,
    /// Bytes of the application's output the socket holds (sent and not
    /// yet acknowledged, or waiting to be sent): output is dropped only
    /// once acknowledged, so it can be sent again after a handover.
    in_socket: usize,
    /// What a handover needs that the socket does not show.
    wire: WireTrack,
    /// Accepted with idle buffers (`Sizes::idle`), not yet moved to full
    /// ones.
    small: bool,
}

/// The real sequence numbers of a client connection and the handshake
/// options its peer chose: what a successor needs to take the connection
/// over, and what smoltcp keeps private. Byte counts against bases, so
/// the hot path only adds.
#[derive(Debug, Clone, Copy, Default)]
struct WireTrack {
    /// Options of the peer's SYN.
    handshake: Handshake,
    /// The MAC the peer's frames come from (the next hop).
    peer_mac: [u8; 6],
    /// The window field of the peer's last segment, unscaled.
    peer_window: u16,
    /// The real sequence number just past the furthest data the peer
    /// sent. Past the bytes the socket holds in order, it is data behind
    /// a hole, which smoltcp keeps and may have acknowledged selectively
    /// (or data it dropped, which the peer sends again).
    rcv_high: u32,
    /// The real sequence number of the first byte the socket received
    /// (the peer's ISN + 1), and bytes read from the socket since.
    rcv_base: u32,
    read: u32,
    /// The real sequence number of our first byte (our ISN + 1, learnt
    /// from the SYN-ACK on its way out), and bytes acknowledged since.
    snd_base: Option<u32>,
    acked: u32,
    /// Δ of a restored connection: its socket's sequence numbers plus Δ
    /// are the real ones ([`ferrox_handover::xlate`]).
    xlate: Option<u32>,
}

/// One core's TCP endpoint serving `A`.
pub struct Stack<A: App> {
    iface: Interface,
    config: StackConfig,
    flows: FlowTable,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    generations: Vec<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Connections to service at the end of this burst: frames arrived
    /// for them, or a send was put off from the previous poll.
    received: Vec<u32>,
    /// The list being serviced (the other half of `received`).
    servicing: Vec<u32>,
    /// Polls so far.
    epoch: u64,
    /// Connections the application opened that are not established yet:
    /// serviced again when a frame that may teach a neighbour arrives, so
    /// a SYN held back for address resolution leaves at once rather than
    /// after smoltcp's one-second neighbour-discovery pause.
    opening: Vec<u32>,
    no_sockets: SocketSet<'static>,
    /// Room to translate a restored connection's frame in.
    scratch: Vec<u8>,
    handshaking: usize,
    next_port: u16,
    memory: SocketMemory,
    app: A,
    stats: StackStats,
    /// Whether restored connections are translated; off only in the
    /// negative-control test, which shows that they must be.
    #[cfg(test)]
    translate: bool,
}

impl<A: App> std::fmt::Debug for Stack<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn micros(at: Instant) -> u64 {
    at.total_micros().max(0) as u64
}

fn handle_of(id: u32, generation: u32) -> Handle {
    ((generation as u64) << 32) | id as u64
}

impl<A: App> Stack<A> {
    /// A stack whose sockets take their buffers from `memory`.
    pub fn new(config: StackConfig, app: A, memory: SocketMemory, now: Instant, seed: u64) -> Self {
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = seed;
        let mut iface = Interface::new(
            iface_config,
            &mut CapsOnly(device::capabilities(
                config.mtu,
                config.rx_checksum,
                config.tx_checksum_offload,
            )),
            now,
        );
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(config.address.into(), config.prefix_len))
                .expect("one address fits");
        });
        if let Some(gateway) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gateway)
                .expect("the route table has room for one route");
        }
        let next_port = EPHEMERAL.start + (seed % (EPHEMERAL.len() as u64)) as u16;
        Stack {
            iface,
            config,
            flows: FlowTable::default(),
            conns: Vec::new(),
            free: Vec::new(),
            generations: Vec::new(),
            timers: BinaryHeap::new(),
            received: Vec::new(),
            servicing: Vec::new(),
            epoch: 0,
            opening: Vec::new(),
            no_sockets: SocketSet::new(Vec::new()),
            scratch: Vec::new(),
            handshaking: 0,
            next_port,
            memory,
            app,
            stats: StackStats::default(),
            #[cfg(test)]
            translate: true,
        }
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            open: self.flows.len() as u64,
            socket_buffer_bytes: self.memory.held_bytes(),
            ..self.stats.clone()
        }
    }

    pub fn app(&self) -> &A {
        &self.app
    }

    /// Listens on `ports` from now (a new configuration); connections on
    /// a port no longer served stay until they end.
    pub fn set_ports(&mut self, ports: Vec<u16>) {
        self.config.ports = ports;
    }

    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// The earliest connection or application deadline, for the idle
    /// poller: at once while work waits for the next poll.
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.received.is_empty() || self.app.has_actions() {
            return Some(Instant::from_micros(0));
        }
        let tcp = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let app = self
            .app
            .poll_timeout()
            .map(|at| Instant::from_micros(at as i64));
        tcp.into_iter().chain(app).min()
    }

    /// Handles one received frame.
    pub fn handle_frame<L: Link>(&mut self, now: Instant, frame: &[u8], link: &mut L) {
        self.handle(now, frame, flow::classify(frame), link);
    }

    /// Handles one received frame already classified as `class`.
    pub fn handle<L: Link>(&mut self, now: Instant, frame: &[u8], class: Frame, link: &mut L) {
        self.stats.frames += 1;
        let id = match class {
            Frame::Tcp { key, dst, opens } => match self.flows.get(&key) {
                Some(&id) => Some(id),
                None if opens
                    && dst == self.config.address
                    && self.config.ports.contains(&key.local_port()) =>
                {
                    match self.open(key, frame) {
                        Opened::Conn(id) => Some(id),
                        // Counted; no RST, so the client tries again.
                        Opened::Dropped => return,
                        Opened::Refused => None,
                    }
                }
                None => None,
            },
            Frame::Other => None,
        };
        match id {
            Some(id) => {
                let conn = self.conns[id as usize]
                    .as_mut()
                    .expect("flow table points at a live connection");
                if !conn.active {
                    conn.wire.observe(frame, conn.socket.recv_capacity());
                }
                let xlate = conn.wire.xlate;
                let frame = match xlate {
                    // A restored connection: the peer acknowledges in
                    // the real sequence space, the socket counts in its own.
                    Some(delta) => {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(frame);
                        ferrox_handover::xlate::ingress(&mut self.scratch, delta);
                        &self.scratch[..]
                    }
                    None => frame,
                };
                // What smoltcp answers at once (an ACK for a resent or
                // out-of-order segment) leaves from here, in the real
                // space too.
                let mut device = FrameDevice::ingress(frame, link).translated(xlate);
                conn.socket.poll_ingress(&mut self.iface, now, &mut device);
                self.stats.tx_no_mbuf += device.tx_no_mbuf;
                if !conn.received {
                    conn.received = true;
                    self.received.push(id);
                }
            }
            // ARP, ICMP, and TCP for no connection (answered with RST by
            // smoltcp).
            None => {
                let mut device = FrameDevice::ingress(frame, link);
                self.iface
                    .poll_ingress_single(now, &mut device, &mut self.no_sockets);
                self.stats.tx_no_mbuf += device.tx_no_mbuf;
                if matches!(class, Frame::Other) {
                    self.wake_opening();
                }
            }
        }
    }

    /// After a burst of frames: services the connections they were for
    /// (and those put off from the last poll), polls connections whose
    /// deadline has come (retransmits, timeouts), runs the application's
    /// timers, and carries out its actions.
    pub fn poll<L: Link>(&mut self, now: Instant, link: &mut L) {
        self.epoch += 1;
        // Two lists swapped, so that connections put off during this poll
        // land in the other one and neither loses its room.
        let mut servicing = std::mem::take(&mut self.servicing);
        std::mem::swap(&mut self.received, &mut servicing);
        for &id in &servicing {
            // A connection put off in the last poll may have ended since
            // (its slot is empty, or a new connection with `received`
            // clear holds it).
            match self.conns[id as usize].as_mut() {
                Some(conn) if conn.received => conn.received = false,
                _ => continue,
            }
            self.service_conn(id, now, link);
        }
        servicing.clear();
        self.servicing = servicing;
        while let Some(&Reverse((at, id, generation))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            // A stale entry (the connection was retired, or re-filed
            // earlier) is skipped.
            let live = self.conns[id as usize]
                .as_ref()
                .is_some_and(|c| c.generation == generation && c.timer == Some(at));
            if live {
                self.conns[id as usize]
                    .as_mut()
                    .expect("checked live")
                    .timer = None;
                self.service_conn(id, now, link);
            }
        }
        if self.app.poll_timeout().is_some_and(|at| at <= micros(now)) {
            self.app.handle_timeout(micros(now));
        }
        self.poll_app(now, link);
    }

    /// Carries out what the application asked for, up to
    /// [`ACTION_BUDGET`] actions.
    pub fn poll_app<L: Link>(&mut self, now: Instant, link: &mut L) {
        for _ in 0..ACTION_BUDGET {
            let Some(action) = self.app.poll_action() else {
                return;
            };
            match action {
                Action::Send(handle) => {
                    if let Some(id) = self.live(handle) {
                        self.service_again(id, now, link);
                    }
                }
                Action::Close(handle) => {
                    if let Some(id) = self.live(handle) {
                        self.conn_mut(id).closing = true;
                        self.service_conn(id, now, link);
                    }
                }
                Action::Abort(handle) => {
                    if let Some(id) = self.live(handle) {
                        let conn = self.conn_mut(id);
                        conn.aborted = true;
                        conn.socket.abort();
                        self.service_conn(id, now, link);
                    }
                }
                Action::Connect { tag, addr } => match self.connect(tag, addr) {
                    Some(id) => self.service_conn(id, now, link),
                    None => {
                        // No port or no room: the attempt fails at once.
                        const NONE: Handle = Handle::MAX;
                        self.app.bind(tag, NONE);
                        self.app.handle_gone(tag, NONE, micros(now));
                    }
                },
            }
        }
        if self.app.has_actions() {
            self.stats.budget_exhausted += 1;
        }
    }

    /// Queues a service of every connection still opening (a neighbour
    /// may just have been learned); drops those that no longer open.
    fn wake_opening(&mut self) {
        let (conns, received) = (&mut self.conns, &mut self.received);
        self.opening.retain(|&id| {
            let Some(conn) = conns[id as usize].as_mut() else {
                return false;
            };
            if conn.established || !conn.active {
                return false;
            }
            if !conn.received {
                conn.received = true;
                received.push(id);
            }
            true
        });
    }

    /// Services connection `id` for its application, unless a service in
    /// this poll already found nothing to move: then it waits for the
    /// next poll, so no connection can keep the core to itself.
    fn service_again<L: Link>(&mut self, id: u32, now: Instant, link: &mut L) {
        let epoch = self.epoch;
        let conn = self.conn_mut(id);
        if conn.serviced_in == epoch && !conn.progressed {
            if !conn.received {
                conn.received = true;
                self.received.push(id);
            }
            self.stats.deferred += 1;
            return;
        }
        self.service_conn(id, now, link);
    }

    /// A socket for request/response traffic: send at once (no Nagle), and
    /// acknowledge after the configured delay. `None` when the pool cannot
    /// grow.
    fn new_socket(
        &mut self,
        role: Role,
        keep_alive: Option<smoltcp::time::Duration>,
    ) -> Option<PooledSocket> {
        let ack_delay = self.config.ack_delay;
        let socket = self.memory.socket(role, |socket| {
            socket.set_nagle_enabled(false);
            socket.set_ack_delay(ack_delay);
            socket.set_keep_alive(keep_alive);
        });
        match socket {
            Ok(socket) => Some(socket),
            Err(error) => {
                tracing::warn!(%error, "no memory for a socket");
                None
            }
        }
    }

    /// The TCP states of the client connections (tests).
    #[cfg(test)]
    pub(crate) fn client_states(&self) -> Vec<State> {
        self.conns
            .iter()
            .flatten()
            .filter(|conn| !conn.active)
            .map(|conn| conn.socket.state())
            .collect()
    }

    fn live(&self, handle: Handle) -> Option<u32> {
        let id = handle as u32;
        let generation = (handle >> 32) as u32;
        self.conns
            .get(id as usize)?
            .as_ref()
            .filter(|c| c.generation == generation && !c.aborted)
            .map(|_| id)
    }

    fn conn_mut(&mut self, id: u32) -> &mut Conn {
        self.conns[id as usize].as_mut().expect("a live connection")
    }

    /// A connection slot for `key`.
    fn insert(&mut self, key: FlowKey, socket: PooledSocket, active: bool) -> u32 {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                (self.conns.len() - 1) as u32
            }
        };
        let generation = self.generations[id as usize];
        self.conns[id as usize] = Some(Conn {
            socket,
            key,
            generation,
            tag: Tag::from_raw(u32::MAX),
            active,
            established: false,
            peer_closed: false,
            closing: false,
            aborted: false,
            timer: None,
            received: false,
            input: Vec::new(),
            input_blocked: false,
            serviced_in: 0,
            progressed: false,
            close_deadline: None,
            in_socket: 0,
            wire: WireTrack::default(),
            small: false,
        });
        self.flows.insert(key, id);
        id
    }

    /// A new connection for a SYN to a served port; dropped (and counted)
    /// when the backlog or the connection limit is reached or no socket
    /// memory is left, refused when the application refuses it.
    fn open(&mut self, key: FlowKey, syn: &[u8]) -> Opened {
        if self.handshaking >= self.config.backlog {
            self.stats.backlog_drops += 1;
            return Opened::Dropped;
        }
        if self.flows.len() >= self.config.max_connections {
            self.stats.limit_drops += 1;
            return Opened::Dropped;
        }
        let keep_alive = self
            .config
            .keep_alive_ports
            .contains(&key.local_port())
            .then_some(KEEP_ALIVE);
        let small = self.memory.idle_size() > 0;
        let role = if small { Role::Idle } else { Role::Client };
        let Some(mut socket) = self.new_socket(role, keep_alive) else {
            self.stats.limit_drops += 1;
            return Opened::Dropped;
        };
        socket
            .listen(key.local_port())
            .expect("a fresh socket listens on a non-zero port");
        let id = self.insert(key, socket, false);
        self.conn_mut(id).small = small;
        let handle = handle_of(id, self.generations[id as usize]);
        let Some(tag) = self.app.accept(handle, key.local_port()) else {
            self.stats.refused += 1;
            let conn = self.conns[id as usize].take().expect("just inserted");
            self.memory.release(conn.socket);
            self.flows.remove(&key);
            self.free.push(id);
            return Opened::Refused;
        };
        let conn = self.conn_mut(id);
        conn.tag = tag;
        if let Some(syn) = Segment::parse(syn) {
            conn.wire.handshake = syn.options;
            conn.wire.peer_mac = syn.src_mac;
            conn.wire.rcv_base = syn.seq.wrapping_add(1);
            conn.wire.rcv_high = conn.wire.rcv_base;
        }
        self.handshaking += 1;
        self.stats.accepted += 1;
        Opened::Conn(id)
    }

    /// A connection to `addr` from a local port whose flow this core owns.
    fn connect(&mut self, tag: Tag, addr: SocketAddrV4) -> Option<u32> {
        if self.flows.len() >= self.config.max_connections {
            self.stats.limit_drops += 1;
            return None;
        }
        let peer = *addr.ip();
        let key = (0..EPHEMERAL.len()).find_map(|_| {
            let port = self.next_port;
            self.next_port = if port + 1 == EPHEMERAL.end {
                EPHEMERAL.start
            } else {
                port + 1
            };
            let key = FlowKey::new(peer, addr.port(), port);
            (key.owner(self.config.cores) == self.config.core
                && !self.flows.contains_key(&key)
                && !self.config.ports.contains(&port))
            .then_some(key)
        })?;
        let mut socket = self.new_socket(Role::Server, None)?;
        if socket
            .connect(
                &mut self.iface,
                (peer, addr.port()).into(),
                key.local_port(),
            )
            .is_err()
        {
            self.memory.release(socket);
            return None;
        }
        let id = self.insert(key, socket, true);
        self.conn_mut(id).tag = tag;
        if self.opening.len() >= 64 {
            let conns = &self.conns;
            self.opening.retain(|&id| {
                conns[id as usize]
                    .as_ref()
                    .is_some_and(|c| c.active && !c.established)
            });
        }
        self.opening.push(id);
        self.stats.connects += 1;
        self.app
            .bind(tag, handle_of(id, self.generations[id as usize]));
        Some(id)
    }

    /// Moves data between the socket and the application (output first,
    /// so that room it frees can let input in, then input, then output
    /// again), sends what is ready, files the next deadline, and retires a
    /// closed connection. Records whether anything moved.
    fn service_conn<L: Link>(&mut self, id: u32, now: Instant, link: &mut L) {
        let now_us = micros(now);
        let epoch = self.epoch;
        let conn = self.conns[id as usize].as_mut().expect("a live connection");
        let state = conn.socket.state();
        let tag = conn.tag;
        let mut progressed = false;
        if !conn.established && matches!(state, State::Established | State::CloseWait) {
            conn.established = true;
            progressed = true;
            if conn.active {
                self.app.handle_connected(tag, now_us);
            } else {
                self.handshaking -= 1;
            }
        }

        if conn.small
            && state == State::Established
            && !holds_data_past_a_hole(conn)
            && needs_room(&mut self.app, conn)
        {
            // Outgrown its idle buffers: onto full ones, the client none
            // the wiser.
            match self.upgrade(id, now, link) {
                Ok(()) => self.stats.upgrades += 1,
                Err(why) => tracing::debug!(why, "a connection keeps its idle buffers"),
            }
            progressed = true;
        }
        let conn = self.conns[id as usize].as_mut().expect("a live connection");
        if !conn.aborted {
            progressed |= send_output(&mut self.app, conn);
        }
        let mut more_input = false;
        if !conn.aborted && !conn.closing {
            let (took, more) = take_input(&mut self.app, conn, now_us);
            progressed |= took;
            more_input = more;
            progressed |= send_output(&mut self.app, conn);
        } else if conn.closing {
            // Nothing more is read; drop what arrives, so the window stays
            // open for the peer's FIN.
            while conn.socket.can_recv() {
                let read = conn.socket.recv(|data| (data.len(), data.len()));
                conn.wire.read = conn.wire.read.wrapping_add(read.unwrap_or(0) as u32);
            }
            conn.input = Vec::new();
        }
        let socket = &mut conn.socket;
        if !conn.aborted {
            // The peer's FIN is told only once the application has taken
            // every byte sent before it (what is left is a message the FIN
            // cut short): a client that half-closes after a pipeline gets
            // every reply.
            let input_taken = !socket.can_recv() && !conn.input_blocked;
            if state == State::CloseWait && !conn.peer_closed && (input_taken || conn.closing) {
                conn.peer_closed = true;
                progressed = true;
                self.app.handle_peer_closed(tag, now_us);
            }
            // Close gracefully once every reply is queued (the peer then
            // holds TIME_WAIT).
            if conn.closing
                && conn.close_deadline.is_none()
                && self.app.output(tag).len() <= conn.in_socket
                && socket.may_send()
            {
                socket.close();
                conn.close_deadline = Some(now + CLOSE_TIMEOUT);
                progressed = true;
            }
            if conn.close_deadline.is_some_and(|at| at <= now) {
                // The peer never finished closing (or stopped reading):
                // reset rather than hold its buffers for good.
                socket.abort();
                self.stats.close_timeouts += 1;
            }
        }

        let mut device = FrameDevice::egress(link).translated(conn.wire.xlate);
        let learn_isn = !conn.active && conn.wire.snd_base.is_none();
        if learn_isn {
            device = device.capturing_syn();
        }
        conn.socket.poll_egress(&mut self.iface, now, &mut device);
        self.stats.tx_no_mbuf += device.tx_no_mbuf;
        if learn_isn {
            conn.wire.snd_base = device.syn_seq.map(|isn| isn.wrapping_add(1));
        }
        progressed |= conn.socket.state() != state;
        conn.serviced_in = epoch;
        conn.progressed = progressed;

        // A listening socket that did not take the SYN, or a finished one.
        if matches!(
            conn.socket.state(),
            State::Closed | State::Listen | State::TimeWait
        ) {
            self.retire(id, now_us);
            return;
        }
        if more_input && !conn.received {
            // Out of input rounds: the rest in the next poll.
            conn.received = true;
            self.received.push(id);
        }
        let deadline = conn.socket.poll_at(&mut self.iface, now);
        if let Some(at) = deadline.into_iter().chain(conn.close_deadline).min() {
            let at = at.max(now);
            if conn.timer.is_none_or(|filed| at < filed) {
                conn.timer = Some(at);
                self.timers.push(Reverse((at, id, conn.generation)));
            }
        }
    }

    fn retire(&mut self, id: u32, now: u64) {
        let (tag, handle) = self.forget(id);
        self.stats.closed += 1;
        self.app.handle_gone(tag, handle, now);
    }

    /// Drops connection `id` and gives its socket memory back, without a
    /// word to the application; its tag and handle.
    fn forget(&mut self, id: u32) -> (Tag, Handle) {
        let conn = self.conns[id as usize].take().expect("a live connection");
        if !conn.established && !conn.active {
            self.handshaking -= 1;
        }
        self.flows.remove(&conn.key);
        self.memory.release(conn.socket);
        self.generations[id as usize] = conn.generation.wrapping_add(1);
        self.free.push(id);
        (conn.tag, handle_of(id, conn.generation))
    }
}

/// Whether the socket holds data past a hole. A move waits for the hole
/// to fill: the new socket would not have that data, and a peer that saw
/// it acknowledged selectively need not send it again (until its
/// retransmission timer gives up on the SACK, with the connection
/// stalled meanwhile).
fn holds_data_past_a_hole(conn: &Conn) -> bool {
    // Once the peer's FIN is in, nothing lies past it.
    matches!(
        conn.socket.state(),
        State::Established | State::FinWait1 | State::FinWait2
    ) && seq_after(
        conn.wire.rcv_high,
        conn.wire.rcv_nxt(conn.socket.recv_queue()),
    )
}

/// Whether a connection on idle buffers needs full ones: the peer filled
/// half its receive buffer, or a request is held incomplete, or the
/// socket cannot take the output waiting for it.
fn needs_room<A: App>(app: &mut A, conn: &Conn) -> bool {
    if conn.aborted || conn.closing || conn.peer_closed {
        return false;
    }
    let socket = &conn.socket;
    socket.recv_queue() * 2 >= socket.recv_capacity()
        || !conn.input.is_empty()
        || app.output(conn.tag).len()
            > conn.in_socket + (socket.send_capacity() - socket.send_queue())
}

/// Drops the output the peer acknowledged, then hands the socket what it
/// has not taken yet; whether anything moved.
fn send_output<A: App>(app: &mut A, conn: &mut Conn) -> bool {
    let acked = settle_acked(app, conn);
    let output = app.output(conn.tag);
    if output.len() <= conn.in_socket || !conn.socket.can_send() {
        return acked > 0;
    }
    let sent = conn
        .socket
        .send_slice(&output[conn.in_socket..])
        .unwrap_or(0);
    conn.in_socket += sent;
    acked > 0 || sent > 0
}

/// Drops the output the peer acknowledged since the last look (what the
/// socket no longer holds); how many bytes.
fn settle_acked<A: App>(app: &mut A, conn: &mut Conn) -> usize {
    let acked = conn.in_socket - conn.socket.send_queue().min(conn.in_socket);
    if acked > 0 {
        app.output_acked(conn.tag, acked);
        conn.in_socket -= acked;
        conn.wire.acked = conn.wire.acked.wrapping_add(acked as u32);
    }
    acked
}

/// Rounds of input one service offers a connection's application.
const INPUT_ROUNDS: usize = 8;

/// Offers `conn`'s input to the application while it wants input, for at
/// most [`INPUT_ROUNDS`] rounds: input it held back if that may hold whole
/// messages (the application stopped for room, not for want of bytes),
/// else what the socket has. Returns whether any input was used or read,
/// and whether more waits that a later service should offer.
fn take_input<A: App>(app: &mut A, conn: &mut Conn, now: u64) -> (bool, bool) {
    let tag = conn.tag;
    let mut progressed = false;
    for _ in 0..INPUT_ROUNDS {
        if !app.wants_input(tag) {
            // Offered again when the application asks to be serviced.
            conn.input_blocked |= !conn.input.is_empty();
            return (progressed, false);
        }
        if conn.input_blocked && !conn.input.is_empty() {
            let used = app.handle_input(tag, &conn.input, now);
            conn.input.drain(..used);
            // Nothing used while wanting input: an incomplete message,
            // which only new bytes can finish.
            conn.input_blocked = used > 0 && !conn.input.is_empty();
            progressed |= used > 0;
            continue;
        }
        if !conn.socket.can_recv() {
            break;
        }
        // The application bounds what it leaves unused (a message not yet
        // complete): it refuses one longer than its limits allow.
        let input = &mut conn.input;
        let used_some = conn
            .socket
            .recv(|data| {
                let used = if input.is_empty() {
                    // The common case: parse straight from the socket.
                    let used = app.handle_input(tag, data, now);
                    input.extend_from_slice(&data[used..]);
                    used
                } else {
                    input.extend_from_slice(data);
                    let used = app.handle_input(tag, input, now);
                    input.drain(..used);
                    used
                };
                (data.len(), (used > 0, data.len()))
            })
            .map(|(used_some, read)| {
                conn.wire.read = conn.wire.read.wrapping_add(read as u32);
                used_some
            })
            .unwrap_or(false);
        progressed = true;
        // Used some and left some: the rest may hold whole messages the
        // application stopped short of.
        conn.input_blocked = used_some && !conn.input.is_empty();
    }
    if conn.input.is_empty() {
        conn.input_blocked = false;
        if conn.input.capacity() > KEEP_INPUT_CAPACITY {
            // A large message passed through; do not keep its room.
            conn.input = Vec::new();
        }
    }
    let more = app.wants_input(tag) && (conn.input_blocked || conn.socket.can_recv());
    (progressed, more)
}

impl WireTrack {
    /// Notes what a handover needs from a frame of the peer's (a few
    /// loads; the MAC and options come from its SYN): the window it last
    /// advertised, and how far its data reached within a receive buffer
    /// of `capacity` bytes (smoltcp drops what lies beyond).
    fn observe(&mut self, frame: &[u8], capacity: usize) {
        if let Some(glance) = ferrox_handover::segment::glance(frame) {
            if let Some(window) = glance.window {
                self.peer_window = window;
            }
            let room_end = self.rcv_nxt(capacity);
            let end = if seq_after(glance.data_end, room_end) {
                room_end
            } else {
                glance.data_end
            };
            if seq_after(end, self.rcv_high) {
                self.rcv_high = end;
            }
        }
    }

    /// The real sequence number after the bytes the socket holds in
    /// order (`unread` of them not yet read).
    fn rcv_nxt(&self, unread: usize) -> u32 {
        self.rcv_base
            .wrapping_add(self.read)
            .wrapping_add(unread as u32)
    }
}

/// Whether sequence number `a` comes after `b` (modulo 2³²).
fn seq_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

mod handover;
pub use handover::{Export, HandoverStats};

#[cfg(test)]
mod tests;

/// Gives `Interface::new` the device capabilities; never sends or receives.
struct CapsOnly(smoltcp::phy::DeviceCapabilities);

/// A token that cannot exist.
enum Never {}

impl smoltcp::phy::RxToken for Never {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, _: F) -> R {
        match self {}
    }
}

impl smoltcp::phy::TxToken for Never {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, _: usize, _: F) -> R {
        match self {}
    }
}

impl smoltcp::phy::Device for CapsOnly {
    type RxToken<'a> = Never;
    type TxToken<'a> = Never;
    fn receive(&mut self, _: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        None
    }
    fn transmit(&mut self, _: Instant) -> Option<Self::TxToken<'_>> {
        None
    }
    fn capabilities(&self) -> smoltcp::phy::DeviceCapabilities {
        self.0.clone()
    }
}
