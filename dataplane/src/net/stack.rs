//! One core's TCP endpoint: an smoltcp `Interface`, a flow table, and one
//! single-socket `SocketSet` per connection.
//!
//! smoltcp visits every socket of the set it is polled with, so a set per
//! connection keeps the cost of a frame independent of how many connections
//! the core holds. Egress is driven the same way: a connection is polled
//! when a frame for it arrived, when its service wrote output, or when its
//! deadline (`Interface::poll_at`) is due; deadlines sit in a min-heap, so
//! idle connections cost nothing per loop.
//!
//! smoltcp has no accept queue (a SYN that meets no listening socket gets a
//! RST), so a SYN to a served port creates a listening socket on demand,
//! bounded by the backlog of connections still in the handshake.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use super::device::{self, FrameDevice};
use super::flow::{self, FlowKey, FlowTable, Frame};
use crate::port::Queue;
use crate::service::{Service, Verdict};

/// How a core's stack serves.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub mac: [u8; 6],
    pub address: Ipv4Address,
    pub prefix_len: u8,
    /// TCP ports the service listens on.
    pub ports: Vec<u16>,
    /// Most connections in the handshake at once; further SYNs are dropped
    /// (the client retransmits), not refused.
    pub backlog: usize,
    /// Most connections at once.
    pub max_connections: usize,
    pub rx_buffer: usize,
    pub tx_buffer: usize,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            mac: [2, 0, 0, 0, 0, 1],
            address: Ipv4Address::new(198, 18, 0, 2),
            prefix_len: 24,
            ports: vec![6379],
            backlog: 1024,
            max_connections: 65536,
            rx_buffer: 16 << 10,
            tx_buffer: 16 << 10,
        }
    }
}

/// Counters of one core's stack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackStats {
    pub frames: u64,
    pub accepted: u64,
    pub closed: u64,
    pub open: u64,
    pub backlog_drops: u64,
    pub limit_drops: u64,
    pub protocol_errors: u64,
    pub tx_no_mbuf: u64,
}

struct Conn<C> {
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    key: FlowKey,
    generation: u32,
    established: bool,
    /// The deadline this connection is filed under in the timer heap.
    timer: Option<Instant>,
    /// Received bytes the service has not consumed yet.
    input: Vec<u8>,
    /// Service output the socket had no room for yet.
    output: Vec<u8>,
    closing: bool,
    app: C,
}

/// One core's TCP endpoint serving `S`.
pub struct Stack<S: Service> {
    iface: Interface,
    config: StackConfig,
    flows: FlowTable,
    conns: Vec<Option<Conn<S::Conn>>>,
    free: Vec<u32>,
    generations: Vec<u32>,
    timers: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    no_sockets: SocketSet<'static>,
    handshaking: usize,
    service: S,
    stats: StackStats,
}

impl<S: Service> std::fmt::Debug for Stack<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S: Service> Stack<S> {
    pub fn new(config: StackConfig, service: S, now: Instant, seed: u64) -> Self {
        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut CapsOnly, now);
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(config.address.into(), config.prefix_len))
                .expect("one address fits");
        });
        Stack {
            iface,
            config,
            flows: FlowTable::default(),
            conns: Vec::new(),
            free: Vec::new(),
            generations: Vec::new(),
            timers: BinaryHeap::new(),
            no_sockets: SocketSet::new(Vec::new()),
            handshaking: 0,
            service,
            stats: StackStats::default(),
        }
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            open: self.flows.len() as u64,
            ..self.stats.clone()
        }
    }

    /// The earliest connection deadline, for the idle poller.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Handles one received frame.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8], queue: &mut Queue<'_>) {
        self.handle(now, frame, flow::classify(frame), queue);
    }

    /// Handles one received frame already classified as `class`.
    pub fn handle(&mut self, now: Instant, frame: &[u8], class: Frame, queue: &mut Queue<'_>) {
        self.stats.frames += 1;
        let id = match class {
            Frame::Tcp { key, dst, opens } => match self.flows.get(&key) {
                Some(&id) => Some(id),
                None if opens
                    && dst == self.config.address
                    && self.config.ports.contains(&key.local_port()) =>
                {
                    self.open(key)
                }
                None => None,
            },
            Frame::Other => None,
        };
        let mut device = FrameDevice::ingress(frame, queue);
        match id {
            Some(id) => {
                let conn = self.conns[id as usize]
                    .as_mut()
                    .expect("flow table points at a live connection");
                self.iface
                    .poll_ingress_single(now, &mut device, &mut conn.sockets);
                self.stats.tx_no_mbuf += device.tx_no_mbuf;
                self.service_conn(id, now, queue);
            }
            // ARP, ICMP, and TCP for no connection (answered with RST by
            // smoltcp) or dropped for lack of backlog.
            None => {
                self.iface
                    .poll_ingress_single(now, &mut device, &mut self.no_sockets);
                self.stats.tx_no_mbuf += device.tx_no_mbuf;
            }
        }
    }

    /// Polls connections whose deadline has come (retransmits, timeouts).
    pub fn poll_timers(&mut self, now: Instant, queue: &mut Queue<'_>) {
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
                self.service_conn(id, now, queue);
            }
        }
    }

    /// A new connection for a SYN to a served port, or `None` (dropped) when
    /// the backlog or the connection limit is reached.
    fn open(&mut self, key: FlowKey) -> Option<u32> {
        if self.handshaking >= self.config.backlog {
            self.stats.backlog_drops += 1;
            return None;
        }
        if self.flows.len() >= self.config.max_connections {
            self.stats.limit_drops += 1;
            return None;
        }
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.config.rx_buffer]),
            tcp::SocketBuffer::new(vec![0; self.config.tx_buffer]),
        );
        // Request/response traffic: send at once, acknowledge at once.
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket
            .listen(key.local_port())
            .expect("a fresh socket listens on a non-zero port");
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
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
            sockets,
            handle,
            key,
            generation,
            established: false,
            timer: None,
            input: Vec::new(),
            output: Vec::new(),
            closing: false,
            app: S::Conn::default(),
        });
        self.flows.insert(key, id);
        self.handshaking += 1;
        self.stats.accepted += 1;
        Some(id)
    }

    /// Moves data between the socket and the service, sends what is ready,
    /// files the next deadline, and retires a closed connection.
    fn service_conn(&mut self, id: u32, now: Instant, queue: &mut Queue<'_>) {
        let conn = self.conns[id as usize].as_mut().expect("a live connection");
        let socket = conn.sockets.get_mut::<tcp::Socket>(conn.handle);
        let state = socket.state();
        if !conn.established && state != State::Listen && state != State::SynReceived {
            conn.established = true;
            self.handshaking -= 1;
        }

        // Input → service → output, as far as the socket's buffers allow.
        if !conn.closing {
            while socket.can_recv() && conn.output.is_empty() {
                let _ = socket.recv(|data| {
                    conn.input.extend_from_slice(data);
                    (data.len(), ())
                });
                let (used, verdict) =
                    self.service
                        .on_input(&mut conn.app, &conn.input, &mut conn.output);
                conn.input.drain(..used);
                if verdict == Verdict::Close {
                    conn.closing = true;
                    self.stats.protocol_errors += 1;
                    break;
                }
            }
        }
        if !conn.output.is_empty() && socket.can_send() {
            let sent = socket.send_slice(&conn.output).unwrap_or(0);
            conn.output.drain(..sent);
        }
        // Close gracefully: after the peer closed, or when the service asked,
        // once every reply is queued (the peer then holds TIME_WAIT).
        if conn.output.is_empty()
            && (conn.closing || state == State::CloseWait)
            && socket.may_send()
        {
            socket.close();
        }

        let mut device = FrameDevice::egress(queue);
        self.iface.poll_egress(now, &mut device, &mut conn.sockets);
        self.stats.tx_no_mbuf += device.tx_no_mbuf;

        let socket = conn.sockets.get::<tcp::Socket>(conn.handle);
        // A listening socket that did not take the SYN, or a finished one.
        if matches!(
            socket.state(),
            State::Closed | State::Listen | State::TimeWait
        ) {
            self.retire(id);
            return;
        }
        if let Some(at) = self.iface.poll_at(now, &conn.sockets) {
            let at = at.max(now);
            if conn.timer.is_none_or(|filed| at < filed) {
                conn.timer = Some(at);
                self.timers.push(Reverse((at, id, conn.generation)));
            }
        }
    }

    fn retire(&mut self, id: u32) {
        let conn = self.conns[id as usize].take().expect("a live connection");
        if !conn.established {
            self.handshaking -= 1;
        }
        self.flows.remove(&conn.key);
        self.generations[id as usize] = conn.generation.wrapping_add(1);
        self.free.push(id);
        self.stats.closed += 1;
    }
}

/// Gives `Interface::new` the device capabilities; never sends or receives.
struct CapsOnly;

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
        device::capabilities()
    }
}
