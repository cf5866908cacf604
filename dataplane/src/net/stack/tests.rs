//! The stack in memory: an smoltcp peer plays the clients and a small
//! Redis server, the stack runs the real proxy engine, and frames move
//! between them through [`MemoryLink`] on a fake clock. No DPDK, no root.
//!
//! Every exchange runs on a thread watched by a deadline, so a stack that
//! livelocks fails the test instead of hanging it.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::time::Duration;

use ferrox_proto::resp;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use super::{Stack, StackConfig};
use crate::net::link::MemoryLink;
use crate::net::memory::{Sizes, SocketPool};
use crate::service::proxy::Proxy;

const PEER_IP: IpAddress = IpAddress::v4(198, 18, 0, 1);
const PROXY_IP: IpAddress = IpAddress::v4(198, 18, 0, 2);
const REDIS_PORT: u16 = 7001;
/// The port the proxy's pool listens on.
const PROXY_PORT: u16 = 6379;

/// Runs `f` on its own thread; fails if it has not finished within
/// `seconds` (a livelocked stack never returns from `poll`).
fn within<T: Send + 'static>(seconds: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    match result.recv_timeout(Duration::from_secs(seconds)) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("no answer within {seconds} s: the stack is stuck")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the exchange panicked"),
    }
}

/// The peer's side of the wire.
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    caps: DeviceCapabilities,
}

struct WireRx(Vec<u8>);
struct WireTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for WireRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = WireRx;
    type TxToken<'a> = WireTx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(WireRx, WireTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((WireRx(frame), WireTx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<WireTx<'_>> {
        Some(WireTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}

/// A connection of a test client.
struct Client {
    handle: SocketHandle,
    /// Bytes still to write.
    pending: VecDeque<u8>,
    received: Vec<u8>,
    /// Most bytes read per step (a slow reader); 0 reads nothing.
    read_per_step: usize,
}

/// A Redis server on the peer: SET, GET, PING and the handshake.
struct Backend {
    handle: SocketHandle,
    input: Vec<u8>,
    output: VecDeque<u8>,
}

struct Peer {
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    clients: Vec<Client>,
    backends: Vec<Backend>,
    store: HashMap<Vec<u8>, Vec<u8>>,
    next_port: u16,
}

fn socket(rx: usize, tx: usize) -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; rx]),
        tcp::SocketBuffer::new(vec![0; tx]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s
}

impl Peer {
    fn new(now: Instant) -> Peer {
        let mut wire = Wire {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            caps: MemoryLink::new(1500).caps,
        };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress([
            2, 0, 0, 0, 0, 9,
        ])));
        let mut iface = Interface::new(config, &mut wire, now);
        iface.update_ip_addrs(|a| a.push(IpCidr::new(PEER_IP, 24)).unwrap());
        let mut peer = Peer {
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            clients: Vec::new(),
            backends: Vec::new(),
            store: HashMap::new(),
            next_port: 40000,
        };
        // Room for the engine's connections (and reconnections).
        for _ in 0..8 {
            let mut s = socket(256 << 10, 256 << 10);
            s.listen(REDIS_PORT).unwrap();
            let handle = peer.sockets.add(s);
            peer.backends.push(Backend {
                handle,
                input: Vec::new(),
                output: VecDeque::new(),
            });
        }
        peer
    }

    /// A client connection to the proxy on `port`; its index.
    fn connect(&mut self, port: u16, read_per_step: usize) -> usize {
        let mut s = socket(64 << 10, 128 << 10);
        self.next_port += 1;
        s.connect(self.iface.context(), (PROXY_IP, port), self.next_port)
            .unwrap();
        let handle = self.sockets.add(s);
        self.clients.push(Client {
            handle,
            pending: VecDeque::new(),
            received: Vec::new(),
            read_per_step,
        });
        self.clients.len() - 1
    }

    /// Writes what clients have pending and serves the Redis backends
    /// (clients read in [`Net::collect`]).
    fn run_apps(&mut self) {
        for client in &mut self.clients {
            let s = self.sockets.get_mut::<tcp::Socket>(client.handle);
            send_pending(s, &mut client.pending);
        }
        for backend in &mut self.backends {
            let s = self.sockets.get_mut::<tcp::Socket>(backend.handle);
            if s.state() == tcp::State::Closed {
                // A server takes connections again after one ends.
                s.listen(REDIS_PORT).unwrap();
                backend.input.clear();
                backend.output.clear();
            }
            while s.can_recv() {
                let _ = s.recv(|d| {
                    backend.input.extend_from_slice(d);
                    (d.len(), ())
                });
            }
            serve_redis(&mut backend.input, &mut backend.output, &mut self.store);
            send_pending(s, &mut backend.output);
        }
    }
}

/// Sends what of `pending` the socket takes.
fn send_pending(socket: &mut tcp::Socket, pending: &mut VecDeque<u8>) {
    while !pending.is_empty() && socket.can_send() {
        let (front, _) = pending.as_slices();
        let n = socket.send_slice(front).unwrap_or(0);
        pending.drain(..n);
        if n == 0 {
            break;
        }
    }
}

/// Answers every complete request in `input`.
fn serve_redis(
    input: &mut Vec<u8>,
    output: &mut VecDeque<u8>,
    store: &mut HashMap<Vec<u8>, Vec<u8>>,
) {
    let limits = resp::Limits::default();
    let mut args = Vec::new();
    let mut used = 0;
    while let Ok(Some(n)) = resp::parse_request(&input[used..], &limits, &mut args) {
        let req = &input[used..used + n];
        let arg = |i: usize| req[args[i].clone()].to_vec();
        let name = arg(0).to_ascii_uppercase();
        let reply: Vec<u8> = match name.as_slice() {
            b"SET" => {
                store.insert(arg(1), arg(2));
                b"+OK\r\n".to_vec()
            }
            b"GET" => match store.get(&arg(1)) {
                Some(v) => {
                    let mut r = format!("${}\r\n", v.len()).into_bytes();
                    r.extend_from_slice(v);
                    r.extend_from_slice(b"\r\n");
                    r
                }
                None => b"$-1\r\n".to_vec(),
            },
            b"PING" => b"+PONG\r\n".to_vec(),
            _ => b"+OK\r\n".to_vec(),
        };
        output.extend(reply);
        used += n;
    }
    input.drain(..used);
}

/// The stack running the proxy, the peer, and the clock.
struct Net {
    stack: Stack<Proxy>,
    link: MemoryLink,
    peer: Peer,
    pool: SocketPool,
    now: Instant,
    /// RSTs the stack sent toward clients.
    client_resets: usize,
    /// Every frame of the peer reaches the stack twice (as a retransmission
    /// of what already arrived would).
    duplicate_peer_frames: bool,
    /// Of the data segments the peer sends from now on, this one (counted
    /// from 0) is lost on its way to the stack.
    lose_peer_data: Option<usize>,
    /// The peer's segments that reached the stack with SACK blocks.
    peer_sacks: usize,
    /// The peer never sends again data the stack acknowledged selectively
    /// (as Linux does until it suspects reneging): such a segment is
    /// dropped on its way.
    sack_faithful: bool,
    /// The ranges the stack acknowledged selectively, by client port.
    stack_sacked: Vec<(u16, u32, u32)>,
}

const CONFIG: &str = r#"
[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
timeout_ms = 5000
servers = ["198.18.0.1:7001:1"]
"#;

impl Net {
    fn new() -> Net {
        Net::with_config(CONFIG)
    }

    fn with_config(text: &str) -> Net {
        Net::with(text, StackConfig::default())
    }

    fn with(text: &str, stack_config: StackConfig) -> Net {
        let config = ferrox_config::parse_toml(text, "test").expect("valid");
        let pools = ferrox_engine::configure::pools(&config).expect("builds");
        let proxy = Proxy::new(pools, vec![(PROXY_PORT, 0)], 7);
        let sizes = Sizes {
            client: 32 << 10,
            client_send: 8 << 10,
            server: 256 << 10,
            idle: 2 << 10,
        };
        let pool = SocketPool::heap(sizes, 64);
        let memory = pool.core(0).expect("core 0");
        let now = Instant::from_millis(1);
        let stack = Stack::new(stack_config, proxy, memory, now, 1);
        Net {
            stack,
            link: MemoryLink::new(1500),
            peer: Peer::new(now),
            pool,
            now,
            client_resets: 0,
            duplicate_peer_frames: false,
            lose_peer_data: None,
            peer_sacks: 0,
            sack_faithful: false,
            stack_sacked: Vec::new(),
        }
    }

    /// One round: the peer takes the stack's frames and answers, the
    /// stack takes the peer's and polls. Time moves 100 µs.
    fn step(&mut self) {
        self.now += smoltcp::time::Duration::from_micros(100);
        let now = self.now;
        self.client_resets += self.resets_to_clients();
        let peer = &mut self.peer;
        for frame in self.link.sent.drain(..) {
            if let Some(seg) = ferrox_handover::segment::Segment::parse(&frame) {
                if seg.src_port == PROXY_PORT {
                    self.stack_sacked.extend(
                        sack_blocks(&frame)
                            .into_iter()
                            .map(|(left, right)| (seg.dst_port, left, right)),
                    );
                }
            }
            peer.wire.rx.push_back(frame);
        }
        peer.iface.poll(now, &mut peer.wire, &mut peer.sockets);
        self.collect();
        let peer = &mut self.peer;
        peer.run_apps();
        peer.iface.poll(now, &mut peer.wire, &mut peer.sockets);
        while let Some(mut frame) = self.peer.wire.tx.pop_front() {
            let segment = ferrox_handover::segment::Segment::parse(&frame)
                .filter(|s| s.dst_port == PROXY_PORT && s.payload_len > 0);
            if let Some(seg) = segment.filter(|_| self.sack_faithful) {
                // What the stack acknowledged selectively is left out.
                let end = seg.seq.wrapping_add(seg.payload_len as u32);
                let within = |at: u32, from: u32, to: u32| {
                    at.wrapping_sub(from) as i32 >= 0 && to.wrapping_sub(at) as i32 >= 0
                };
                let blocks = self.stack_sacked.iter().filter(|b| b.0 == seg.src_port);
                if blocks
                    .clone()
                    .any(|&(_, l, r)| within(seg.seq, l, r) && within(end, l, r))
                {
                    continue;
                }
                let (mut from, mut to) = (0, seg.payload_len);
                for &(_, l, r) in blocks {
                    if within(seg.seq, l, r) {
                        from = from.max(r.wrapping_sub(seg.seq) as usize);
                    } else if within(l, seg.seq, end) {
                        to = to.min(l.wrapping_sub(seg.seq) as usize);
                    }
                }
                if from >= to {
                    continue;
                }
                keep_payload(&mut frame, from..to);
            }
            if segment.is_some() {
                if let Some(n) = self.lose_peer_data.as_mut() {
                    if *n == 0 {
                        self.lose_peer_data = None;
                        continue;
                    }
                    *n -= 1;
                }
            }
            self.peer_sacks += usize::from(!sack_blocks(&frame).is_empty());
            self.stack.handle_frame(now, &frame, &mut self.link);
            if self.duplicate_peer_frames {
                self.stack.handle_frame(now, &frame, &mut self.link);
            }
        }
        self.stack.poll(now, &mut self.link);
    }

    /// Reads what slow clients may read this step.
    fn collect(&mut self) {
        for client in &mut self.peer.clients {
            let s = self.peer.sockets.get_mut::<tcp::Socket>(client.handle);
            let mut budget = client.read_per_step;
            while budget > 0 && s.can_recv() {
                let got = s
                    .recv(|d| {
                        let n = d.len().min(budget);
                        (n, d[..n].to_vec())
                    })
                    .unwrap_or_default();
                if got.is_empty() {
                    break;
                }
                budget -= got.len();
                client.received.extend_from_slice(&got);
            }
        }
    }

    /// Steps until `done` holds, at most `steps` times.
    fn run_until(&mut self, steps: usize, mut done: impl FnMut(&Net) -> bool) -> bool {
        for _ in 0..steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    fn client(&mut self, read_per_step: usize) -> usize {
        self.peer.connect(PROXY_PORT, read_per_step)
    }

    /// Whether a new client's PING gets its PONG within `steps`.
    fn pings(&mut self, steps: usize) -> bool {
        let c = self.client(usize::MAX);
        self.write(c, PING);
        self.run_until(steps, |n| n.received(c) == b"+PONG\r\n")
    }

    fn write(&mut self, client: usize, bytes: &[u8]) {
        self.peer.clients[client].pending.extend(bytes);
    }

    fn received(&self, client: usize) -> &[u8] {
        &self.peer.clients[client].received
    }

    fn state(&self, client: usize) -> tcp::State {
        self.peer
            .sockets
            .get::<tcp::Socket>(self.peer.clients[client].handle)
            .state()
    }
}

/// Keeps bytes `keep` of `frame`'s TCP payload (its sequence number
/// moved to match), checksums filled again.
fn keep_payload(frame: &mut Vec<u8>, keep: std::ops::Range<usize>) {
    use smoltcp::wire::{Ipv4Packet, TcpPacket};
    let b = ferrox_handover::segment::bounds(frame).expect("a TCP frame");
    frame.truncate(b.payload + keep.end);
    frame.drain(b.payload..b.payload + keep.start);
    let end = frame.len();
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[b.ip..]);
    ip.set_total_len((end - b.ip) as u16);
    ip.fill_checksum();
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let mut tcp = TcpPacket::new_unchecked(&mut frame[b.tcp..]);
    let seq = tcp.seq_number() + keep.start;
    tcp.set_seq_number(seq);
    tcp.fill_checksum(&src.into(), &dst.into());
}

/// The blocks of `frame`'s SACK option (left and right edges).
fn sack_blocks(frame: &[u8]) -> Vec<(u32, u32)> {
    const SACK: u8 = 5;
    let Some(ip) = frame.get(14..) else {
        return Vec::new();
    };
    let ihl = usize::from(ip.first().copied().unwrap_or(0) & 0x0f) * 4;
    let Some(tcp) = ip.get(ihl..) else {
        return Vec::new();
    };
    let data_offset = usize::from(tcp.get(12).copied().unwrap_or(0) >> 4) * 4;
    let mut options = tcp.get(20..data_offset).unwrap_or(&[]);
    let mut blocks = Vec::new();
    while let [kind, rest @ ..] = options {
        match *kind {
            0 => break,
            1 => options = rest,
            kind => {
                let len = usize::from(rest.first().copied().unwrap_or(0));
                if len < 2 || len > options.len() {
                    break;
                }
                if kind == SACK {
                    let edge = |at: usize| {
                        u32::from_be_bytes(options[at..at + 4].try_into().expect("four bytes"))
                    };
                    blocks.extend(
                        (2..len)
                            .step_by(8)
                            .filter(|at| at + 8 <= len)
                            .map(|at| (edge(at), edge(at + 4))),
                    );
                }
                options = &options[len..];
            }
        }
    }
    blocks
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What a client's SETs and GETs must get back: each request made through
/// it appends its reply to `replies`.
#[derive(Default)]
struct Model {
    values: HashMap<Vec<u8>, Vec<u8>>,
    replies: Vec<u8>,
}

impl Model {
    /// The request `SET key value`.
    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> Vec<u8> {
        let request = command(&[b"SET", &key, &value]);
        self.replies.extend_from_slice(b"+OK\r\n");
        self.values.insert(key, value);
        request
    }

    /// The request `GET key`.
    fn get(&mut self, key: &[u8]) -> Vec<u8> {
        match self.values.get(key) {
            Some(v) => {
                let header = format!("${}\r\n", v.len());
                self.replies.extend_from_slice(header.as_bytes());
                self.replies.extend_from_slice(v);
                self.replies.extend_from_slice(b"\r\n");
            }
            None => self.replies.extend_from_slice(b"$-1\r\n"),
        }
        command(&[b"GET", key])
    }
}

/// xorshift64: the same numbers on every run from the same seed.
struct XorShift(u64);

impl XorShift {
    fn step(&mut self) -> u64 {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        *x
    }

    /// The next number below `n`.
    fn below(&mut self, n: u64) -> u64 {
        self.step() % n
    }
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

#[test]
fn a_ping_answers_over_the_in_memory_link() {
    within(30, || {
        assert!(Net::new().pings(2000));
    });
}

/// The first request to a server does not wait out smoltcp's one-second
/// neighbour-discovery pause: the SYN held back for ARP leaves as soon as
/// the reply teaches the neighbour.
#[test]
fn a_first_request_to_a_server_waits_only_for_address_resolution() {
    within(30, || {
        // Preconnect: the server connections open before any client has
        // taught the stack the server's address.
        let mut net =
            Net::with_config(&CONFIG.replace("timeout_ms", "preconnect = true\ntimeout_ms"));
        let start = net.now;
        net.run_until(3, |_| false);
        let c = net.client(usize::MAX);
        net.write(c, &command(&[b"SET", b"k", b"v"]));
        assert!(net.run_until(20_000, |n| n.received(c) == b"+OK\r\n"));
        let took = net.now - start;
        assert!(
            took < smoltcp::time::Duration::from_millis(100),
            "the first request took {took} of fake time"
        );
    });
}

/// The reliability issue's simplest reproduction: 4,681 pipelined PINGs
/// (64 KiB) in one write from a client that reads slowly. Held-back
/// input (a PING cut by a segment boundary) and a full send buffer used
/// to make every service queue another, forever.
#[test]
fn a_deep_ping_pipeline_from_a_slow_reader_is_answered_in_full() {
    within(60, || {
        let mut net = Net::new();
        let ping = PING;
        let c = net.client(512);
        let other = net.client(usize::MAX);
        net.write(c, &ping.repeat(4681));
        // Another client is served while the first reads slowly.
        net.run_until(500, |_| false);
        net.write(other, ping);
        assert!(
            net.run_until(20_000, |n| n.received(other) == b"+PONG\r\n"),
            "a second client is served meanwhile"
        );
        let done = net.run_until(200_000, |n| n.received(c).len() == 4681 * 7);
        assert!(done, "{} of {} PONG bytes", net.received(c).len(), 4681 * 7);
        assert_eq!(count(net.received(c), b"+PONG\r\n"), 4681);
    });
}

/// 64 KiB of random bytes gets a protocol error and a close; the stack
/// keeps serving.
#[test]
fn random_bytes_get_an_error_and_a_close_and_others_are_still_served() {
    within(60, || {
        let mut net = Net::new();
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let garbage: Vec<u8> = (0..64 << 10).map(|_| (rng.step() >> 24) as u8).collect();
        let c = net.client(usize::MAX);
        net.write(c, &garbage);
        let closed = net.run_until(20_000, |n| {
            n.received(c).starts_with(b"-ERR")
                && matches!(n.state(c), tcp::State::CloseWait | tcp::State::Closed)
        });
        assert!(
            closed,
            "got {:?}, state {}",
            String::from_utf8_lossy(&net.received(c)[..net.received(c).len().min(300)]),
            net.state(c)
        );
        assert!(net.pings(5000), "others are still served");
    });
}

/// The redis-py pipeline that wedged the core: a batch that stores 50
/// values, then ~40 commands mixing SETs of 5–19 KB and GETs, read back
/// slowly; every reply checked.
#[test]
fn large_set_and_get_pipelines_are_answered_in_order() {
    within(120, || {
        let mut net = Net::new();
        let c = net.client(2048);
        let mut model = Model::default();
        let mut rng = XorShift(12345);
        for round in 0..4 {
            let mut request = Vec::new();
            for i in 0..(if round == 0 { 50u64 } else { 40 }) {
                let key =
                    format!("key:{}", if round == 0 { i } else { rng.below(50) }).into_bytes();
                if round == 0 || rng.below(2) == 0 {
                    let len = 5000 + rng.below(14_000) as usize;
                    let value: Vec<u8> = (0..len)
                        .map(|j| b'a' + ((j as u64 + i) % 26) as u8)
                        .collect();
                    request.extend(model.set(key, value));
                } else {
                    request.extend(model.get(&key));
                }
            }
            let expected = std::mem::take(&mut model.replies);
            let before = net.received(c).len();
            net.write(c, &request);
            let want = before + expected.len();
            assert!(
                net.run_until(400_000, |n| n.received(c).len() >= want),
                "round {round}: {} of {} reply bytes",
                net.received(c).len() - before,
                expected.len()
            );
            assert!(
                net.received(c)[before..] == expected[..],
                "round {round}: replies differ"
            );
        }
        // It started on idle buffers and outgrew them, unseen.
        assert_eq!(net.stack.stats().upgrades, 1);
    });
}

/// A client that only pings keeps its idle buffers; one that sends a
/// request larger than them moves to full ones and is answered in full,
/// then goes on pipelining.
#[test]
fn an_idle_client_keeps_small_buffers_until_a_request_outgrows_them() {
    within(60, || {
        let mut net = Net::new();
        let idle = net.client(4096);
        let busy = net.client(4096);
        assert!(net.pings(2000));
        assert_eq!(net.stack.stats().upgrades, 0);
        let mut model = Model::default();
        let value = vec![b'v'; 20_000];
        let mut request = model.set(b"big".to_vec(), value);
        request.extend(model.get(b"big"));
        for _ in 0..200 {
            request.extend(model.get(b"big"));
        }
        let expected = std::mem::take(&mut model.replies);
        net.write(busy, &request);
        assert!(net.run_until(400_000, |n| n.received(busy).len() >= expected.len()));
        assert!(net.received(busy) == &expected[..], "replies differ");
        assert_eq!(net.stack.stats().upgrades, 1);
        // The idle one still answers, on its small buffers.
        net.write(idle, b"*1\r\n$4\r\nPING\r\n");
        assert!(net.run_until(10_000, |n| n.received(idle).ends_with(b"+PONG\r\n")));
        assert_eq!(net.stack.stats().upgrades, 1);
    });
}

/// A connection on idle buffers does not move while its socket holds
/// data past a hole: the new socket would not have it, and a peer that
/// saw it acknowledged selectively does not send it again. Here the
/// segment after a large request's first is lost, and the peer never
/// resends what the stack acknowledged selectively.
#[test]
fn a_move_to_full_buffers_waits_for_a_hole_to_fill() {
    within(60, || {
        let mut net = Net::new();
        net.sack_faithful = true;
        let c = net.client(4096);
        net.write(c, PING);
        assert!(net.run_until(10_000, |n| n.received(c) == b"+PONG\r\n"));
        net.lose_peer_data = Some(1);
        let mut model = Model::default();
        let mut request = model.set(b"big".to_vec(), vec![b'v'; 20_000]);
        request.extend(model.get(b"big"));
        let expected = [&b"+PONG\r\n"[..], &model.replies].concat();
        // Its first pieces one at a time: the first is held as an
        // incomplete request (a reason to move), the second is lost, the
        // third arrives past the hole.
        for piece in request[..1200].chunks(400) {
            net.write(c, piece);
            net.step();
        }
        net.write(c, &request[1200..]);
        let answered = net.run_until(200_000, |n| n.received(c).len() >= expected.len());
        assert!(
            !net.stack_sacked.is_empty(),
            "the stack never acknowledged data past the hole selectively"
        );
        assert!(
            answered,
            "{} of {} bytes of replies",
            net.received(c).len(),
            expected.len()
        );
        assert!(net.received(c) == &expected[..], "replies differ");
        assert_eq!(net.stack.stats().upgrades, 1);
    });
}

/// A client that half-closes right after a pipeline longer than the
/// session takes at once (so part of it is still unread when the FIN
/// arrives) gets every reply, then the close.
#[test]
fn a_half_close_after_a_long_pipeline_still_gets_every_reply() {
    within(120, || {
        // A short pipeline limit, so that most of the requests are still
        // unread when the FIN arrives.
        let mut net = Net::with_config(&format!("[limits]\nmax_pipeline = 4\n{CONFIG}"));
        let c = net.client(4096);
        let value = vec![b'v'; 100_000];
        net.write(c, &command(&[b"SET", b"big", &value]));
        assert!(net.run_until(20_000, |n| n.received(c) == b"+OK\r\n"));
        let gets = 40; // 4 MB of replies against a 1 MiB max_output
        net.write(c, &command(&[b"GET", b"big"]).repeat(gets));
        let written = net.run_until(20_000, |n| n.peer.clients[c].pending.is_empty());
        assert!(written);
        net.peer
            .sockets
            .get_mut::<tcp::Socket>(net.peer.clients[c].handle)
            .close();
        let reply_len = format!("${}\r\n", value.len()).len() + value.len() + 2;
        let done = net.run_until(1_000_000, |n| {
            matches!(n.state(c), tcp::State::TimeWait | tcp::State::Closed)
        });
        assert!(done, "state {}", net.state(c));
        assert_eq!(net.received(c).len(), 5 + gets * reply_len, "every reply");
    });
}

/// SYNs beyond the handshake backlog are dropped without an answer (no
/// RST): the clients retransmit and are all served.
#[test]
fn a_full_backlog_drops_syns_and_the_clients_get_in_on_retry() {
    within(60, || {
        let config = StackConfig {
            backlog: 2,
            ..StackConfig::default()
        };
        let mut net = Net::with(CONFIG, config);
        let clients: Vec<usize> = (0..6).map(|_| net.client(usize::MAX)).collect();
        for &c in &clients {
            net.write(c, PING);
        }
        let all = net.run_until(200_000, |n| {
            clients.iter().all(|&c| n.received(c) == b"+PONG\r\n")
        });
        let stats = net.stack.stats();
        assert!(all, "{stats:?}");
        assert!(stats.backlog_drops > 0, "{stats:?}");
        assert_eq!(stats.accepted, 6);
        assert_eq!(stats.refused, 0);
    });
}

/// Every connection's end is told to the application exactly once, and
/// its socket memory comes back: after clients and the server connection
/// close, nothing is open and the stack counts each close once.
#[test]
fn every_connection_ends_once() {
    within(60, || {
        let mut net = Net::new();
        let baseline = net.pool.in_use();
        let c = net.client(usize::MAX);
        net.write(c, &command(&[b"SET", b"k", b"v"]));
        assert!(net.run_until(20_000, |n| n.received(c) == b"+OK\r\n"));
        assert!(net.pings(20_000));
        for client in &net.peer.clients {
            net.peer
                .sockets
                .get_mut::<tcp::Socket>(client.handle)
                .close();
        }
        // The server side goes too: the engine sees its connection fail.
        for backend in &net.peer.backends {
            net.peer
                .sockets
                .get_mut::<tcp::Socket>(backend.handle)
                .abort();
        }
        let ended = net.run_until(400_000, |n| n.stack.stats().open == 0);
        let stats = net.stack.stats();
        assert!(ended, "{stats:?}");
        assert_eq!(stats.closed, stats.accepted + stats.connects, "{stats:?}");
        assert_eq!(net.pool.in_use(), baseline);
    });
}

/// Connections that got an error and then closed normally give every
/// socket buffer back, as do reset ones.
#[test]
fn every_kind_of_close_gives_the_socket_memory_back() {
    within(60, || {
        let mut net = Net::new();
        let baseline = net.pool.in_use();
        let mut clients = Vec::new();
        for i in 0..12 {
            let c = net.client(usize::MAX);
            match i % 3 {
                0 => net.write(c, b"\x01\x02garbage\r\n"),
                1 => net.write(c, PING),
                _ => net.write(c, &b"x".repeat(40 << 10)),
            }
            clients.push(c);
        }
        net.run_until(5000, |_| false);
        for (i, &c) in clients.iter().enumerate() {
            let s = net
                .peer
                .sockets
                .get_mut::<tcp::Socket>(net.peer.clients[c].handle);
            if i % 2 == 0 {
                s.close();
            } else {
                s.abort();
            }
        }
        // The stack's own close deadline bounds the slowest case.
        let released = net.run_until(400_000, |n| {
            n.stack.stats().open == 0 && n.pool.in_use() == baseline
        });
        assert!(
            released,
            "open={} in_use={} (baseline {baseline})",
            net.stack.stats().open,
            net.pool.in_use()
        );
    });
}

mod handover;
