//! Hot handover in memory: the smoltcp peer's clients keep their
//! connections while the stack serving them is exported, dropped, and
//! restored in a fresh stack (another Interface, another random seed,
//! hence another ISN on every connection), with frames buffered or lost
//! during the pause. Each test checks the exact byte stream every client
//! receives, that no client connection ever leaves its state, and that
//! the stack never sends a client a RST.

use ferrox_handover::segment::{flags, Segment};

use super::*;
use crate::net::stack::{Export, HandoverStats};

/// What happens to frames on the wire while no stack serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pause {
    /// The port buffers them (af_packet overlap, a secondary's queue).
    Buffered,
    /// They are lost (af_xdp reopen): the peer retransmits.
    Dropped,
}

/// The segments among `link`'s sent frames that go to clients (from the
/// proxy's port, not to the servers').
fn to_clients(link: &MemoryLink) -> impl Iterator<Item = Segment> + '_ {
    link.sent
        .iter()
        .filter_map(|f| Segment::parse(f))
        .filter(|s| s.src_port == PROXY_PORT)
}

impl Net {
    /// RSTs among the frames the stack sent, toward clients.
    pub(super) fn resets_to_clients(&self) -> usize {
        to_clients(&self.link).filter(|s| s.has(flags::RST)).count()
    }

    /// Moves the stack's frames to the peer, counting RSTs to clients.
    fn deliver(&mut self) {
        self.client_resets += self.resets_to_clients();
        self.peer.wire.rx.extend(self.link.sent.drain(..));
    }

    fn assert_no_client_reset(&mut self) {
        self.deliver();
        assert_eq!(self.client_resets, 0, "the stack reset a client");
    }

    /// One step of the peer alone (no stack serves): its frames are kept
    /// in `held` or lost.
    fn peer_step(&mut self, pause: Pause, held: &mut Vec<Vec<u8>>) {
        self.now += smoltcp::time::Duration::from_micros(100);
        let now = self.now;
        let peer = &mut self.peer;
        peer.iface.poll(now, &mut peer.wire, &mut peer.sockets);
        self.collect();
        let peer = &mut self.peer;
        peer.run_apps();
        peer.iface.poll(now, &mut peer.wire, &mut peer.sockets);
        let frames = self.peer.wire.tx.drain(..);
        if pause == Pause::Buffered {
            held.extend(frames);
        }
    }

    /// Drains the stack, exports it, pauses `pause_steps` steps, and
    /// restores every connection in a fresh stack of the same
    /// configuration (generation `generation` picks the pool core bank and
    /// the seed). Returns what export and restore counted.
    fn hand_over(
        &mut self,
        generation: u64,
        pause: Pause,
        pause_steps: usize,
        translate: bool,
    ) -> (HandoverStats, HandoverStats) {
        self.stack.begin_drain();
        for _ in 0..20_000 {
            if self.stack.drained() {
                break;
            }
            self.step();
        }
        assert!(self.stack.drained(), "requests in flight never finished");
        let mut export = Export::default();
        let exported = self.stack.export(self.now, &mut self.link, &mut export);
        self.deliver();
        // Through the handover file, as between processes.
        let path = std::env::temp_dir().join(format!(
            "ferrox-stack-handover-{}-{generation}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let facts = crate::handover::Facts {
            mac: StackConfig::default().mac,
            address: StackConfig::default().address.octets(),
            mtu: 1500,
        };
        crate::handover::write(&path, facts, &[Export::default(), export]).unwrap();
        let (_, export) = crate::handover::read(&path).unwrap().expect("written");
        std::fs::remove_file(&path).unwrap();
        let mut held = Vec::new();
        // The old stack is gone: a fresh one on the other bank of pool
        // cores, with another seed.
        let config = ferrox_config::parse_toml(CONFIG, "test").expect("valid");
        let pools = ferrox_engine::configure::pools(&config).expect("builds");
        let proxy = Proxy::new(pools, vec![(PROXY_PORT, 0)], 7 + generation);
        let memory = self
            .pool
            .core((generation % 2) as usize)
            .expect("the other bank is free");
        let fresh = Stack::new(
            StackConfig::default(),
            proxy,
            memory,
            self.now,
            1000 + generation,
        );
        drop(std::mem::replace(&mut self.stack, fresh));
        for _ in 0..pause_steps {
            self.peer_step(pause, &mut held);
        }
        self.stack.translate = translate;
        let restored = self.stack.restore(&export, self.now, &mut self.link);
        for frame in held {
            self.stack.handle_frame(self.now, &frame, &mut self.link);
        }
        self.stack.poll(self.now, &mut self.link);
        (exported, restored)
    }
}

/// The segments sent to clients numbered `seqs` all lie within 64 KiB of
/// the first: the few kilobytes a test sends, in one sequence space
/// (not some Δ away, in the socket's own).
fn assert_one_sequence_space(seqs: &[u32]) {
    let first = seqs[0];
    let strays = seqs
        .iter()
        .filter(|&&s| s.wrapping_sub(first) > 1 << 16)
        .count();
    assert_eq!(
        strays,
        0,
        "{strays} of {} segments in another sequence space",
        seqs.len()
    );
}

/// A client's model: the requests it sends and the replies they must get.
struct Script {
    requests: Vec<Vec<u8>>,
    replies: Vec<u8>,
}

/// SETs and GETs of values sized around the buffer boundaries, keyed per
/// client so that the model is exact.
fn script(client: usize, n: usize, seed: u64) -> Script {
    let mut rng = XorShift(seed | 1);
    let sizes = [1usize, 100, 1400, 1460, 4096, 8191, 8192, 8193, 20_000];
    let mut model = Model::default();
    let mut requests = Vec::new();
    for i in 0..n {
        let key = format!("c{client}:{}", rng.below(8)).into_bytes();
        requests.push(if rng.below(2) == 0 {
            let len = sizes[rng.below(sizes.len() as u64) as usize];
            let value: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
            model.set(key, value)
        } else {
            model.get(&key)
        });
    }
    Script {
        requests,
        replies: model.replies,
    }
}

/// Runs `clients` clients through `handovers` handovers, each client
/// pipelining its script in batches; returns whether every client got
/// exactly its replies.
fn pipelines_across_handovers(
    handovers: u64,
    pause: Pause,
    translate: bool,
    read_per_step: usize,
) -> Result<(), String> {
    let mut net = Net::new();
    let clients: Vec<(usize, Script)> = (0..3)
        .map(|i| (net.client(read_per_step), script(i, 60, 7 + i as u64)))
        .collect();
    let mut sent = vec![0usize; clients.len()];
    let states_ok = |net: &Net, clients: &[(usize, Script)]| {
        clients
            .iter()
            .all(|(c, _)| net.state(*c) == tcp::State::Established)
    };
    let mut generation = 0;
    for round in 0..200 {
        for (i, (c, script)) in clients.iter().enumerate() {
            // A batch of up to 8 requests whenever the last has been sent.
            if net.peer.clients[*c].pending.is_empty() && sent[i] < script.requests.len() {
                let end = (sent[i] + 8).min(script.requests.len());
                for request in &script.requests[sent[i]..end] {
                    net.write(*c, request);
                }
                sent[i] = end;
            }
        }
        for _ in 0..50 {
            net.step();
            net.deliver();
        }
        if round % 10 == 5 && generation < handovers {
            generation += 1;
            let (exported, restored) = net.hand_over(generation, pause, 30, translate);
            if exported.exported != clients.len() as u64 || restored.restored != exported.exported {
                return Err(format!(
                    "handover {generation}: exported {exported:?}, restored {restored:?}"
                ));
            }
        }
        if !states_ok(&net, &clients) {
            return Err(format!("a client left ESTABLISHED in round {round}"));
        }
        let done = clients
            .iter()
            .all(|(c, s)| net.received(*c).len() >= s.replies.len());
        if done && generation == handovers {
            break;
        }
    }
    for _ in 0..20_000 {
        let done = clients
            .iter()
            .all(|(c, s)| net.received(*c).len() >= s.replies.len());
        if done {
            break;
        }
        net.step();
        net.deliver();
    }
    if net.client_resets != 0 {
        return Err(format!("{} RSTs sent to clients", net.client_resets));
    }
    for (c, script) in &clients {
        let got = net.received(*c);
        if got != &script.replies[..] {
            let at = got
                .iter()
                .zip(&script.replies)
                .position(|(a, b)| a != b)
                .unwrap_or(got.len().min(script.replies.len()));
            return Err(format!(
                "client {c}: {} of {} reply bytes, first difference at {at}",
                got.len(),
                script.replies.len()
            ));
        }
    }
    if generation != handovers {
        return Err(format!("only {generation} of {handovers} handovers ran"));
    }
    Ok(())
}

#[test]
fn pipelined_clients_keep_their_connections_across_a_handover_with_frames_buffered() {
    within(120, || {
        pipelines_across_handovers(1, Pause::Buffered, true, usize::MAX).unwrap();
    });
}

#[test]
fn pipelined_clients_keep_their_connections_when_frames_are_lost_in_the_pause() {
    within(120, || {
        pipelines_across_handovers(1, Pause::Dropped, true, usize::MAX).unwrap();
    });
}

#[test]
fn ten_chained_handovers_of_slow_readers() {
    within(240, || {
        pipelines_across_handovers(10, Pause::Dropped, true, 3000).unwrap();
    });
}

/// The negative control: without translation the restored connections
/// cannot go on (the test above can fail).
#[test]
fn without_translation_the_restored_connections_stall() {
    within(240, || {
        let result = pipelines_across_handovers(1, Pause::Buffered, false, usize::MAX);
        assert!(
            result.is_err(),
            "a handover without translation went through"
        );
    });
}

/// A client that reads nothing: the proxy's replies fill its window, so
/// the peer's window is zero at the freeze, and unsent replies wait in
/// the output. Once it reads, every byte arrives.
#[test]
fn a_zero_window_and_replies_owed_survive_a_handover() {
    replies_owed_to_a_zero_window_across_a_handover(Pause::Buffered);
}

/// As above, but the client starts reading while no stack serves and
/// its frames are lost: the window update that would have reopened the
/// flow never arrives, so the successor starts with a zero window for a
/// peer that has room, and must find out by probing.
#[test]
fn a_window_update_lost_in_the_pause_does_not_stall_the_replies_owed() {
    replies_owed_to_a_zero_window_across_a_handover(Pause::Dropped);
}

/// A 20 KB SET and ten GETs of it from a client that reads nothing until
/// the handover (`Buffered`) or from its pause on (`Dropped`: what it
/// says meanwhile is lost).
fn replies_owed_to_a_zero_window_across_a_handover(pause: Pause) {
    within(120, move || {
        let mut net = Net::new();
        let c = net.client(0);
        let value = vec![b'v'; 20_000];
        net.write(c, &command(&[b"SET", b"big", &value]));
        let get = command(&[b"GET", b"big"]);
        for _ in 0..10 {
            net.write(c, &get);
        }
        net.run_until(3000, |_| false);
        net.deliver();
        if pause == Pause::Dropped {
            net.peer.clients[c].read_per_step = usize::MAX;
        }
        let (exported, restored) = net.hand_over(1, pause, 20, true);
        assert_eq!((exported.exported, restored.restored), (1, 1));
        net.peer.clients[c].read_per_step = usize::MAX;
        let reply_len = 5 + "$20000\r\n".len() + 20_000 + 2;
        let want = 5 + 10 * (reply_len - 5);
        assert!(
            net.run_until(50_000, |n| n.received(c).len() >= want),
            "{} of {want} bytes",
            net.received(c).len()
        );
        net.deliver();
        assert_eq!(&net.received(c)[..5], b"+OK\r\n");
        assert_eq!(count(net.received(c), &value), 10);
        assert_eq!(net.client_resets, 0);
    });
}

/// A client that closed after its reply, and whose proxy side closed in
/// turn: frozen in LAST-ACK with the proxy's FIN lost, the successor sends
/// the FIN again (in the real sequence space) and the client finishes.
#[test]
fn a_connection_in_last_ack_finishes_after_a_handover() {
    within(60, || {
        let mut net = Net::new();
        let c = net.client(usize::MAX);
        net.write(c, PING);
        assert!(net.run_until(2000, |n| n.received(c) == b"+PONG\r\n"));
        let s = net.peer.clients[c].handle;
        net.peer.sockets.get_mut::<tcp::Socket>(s).close();
        let proxy_fin = |n: &Net| to_clients(&n.link).any(|s| s.has(flags::FIN));
        assert!(net.run_until(2000, proxy_fin), "the proxy never closed");
        // Its FIN is lost: the proxy's side waits in LAST-ACK.
        net.link.sent.clear();
        assert_eq!(net.stack.client_states(), [tcp::State::LastAck]);
        let (exported, restored) = net.hand_over(1, Pause::Dropped, 10, true);
        assert_eq!((exported.exported, restored.restored), (1, 1));
        assert!(
            net.run_until(50_000, |n| matches!(
                n.state(c),
                tcp::State::TimeWait | tcp::State::Closed
            )),
            "the client is left in {}",
            net.state(c)
        );
        assert_eq!(net.received(c), b"+PONG\r\n");
        net.assert_no_client_reset();
    });
}

/// smoltcp answers some segments at once, while it takes them in (a
/// retransmission of bytes it has, data out of order): those answers leave
/// through the ingress path, and must be translated like everything else.
/// Untranslated, a Linux peer drops them as out of its window and never
/// learns that its bytes arrived: it resends them for good, and smoltcp
/// keeps answering in the wrong space (the soak's stall under upgrades).
#[test]
fn answers_to_segments_of_a_restored_flow_are_in_the_real_sequence_space() {
    within(60, || {
        let mut net = Net::new();
        let c = net.client(usize::MAX);
        net.write(c, &command(&[b"SET", b"k", b"v"]));
        assert!(net.run_until(3000, |n| n.received(c).len() >= 5));
        let (exported, restored) = net.hand_over(1, Pause::Buffered, 5, true);
        assert_eq!((exported.exported, restored.restored), (1, 1));
        net.duplicate_peer_frames = true;
        let get = command(&[b"GET", b"k"]);
        let mut seqs = Vec::new();
        for _ in 0..20 {
            net.write(c, &get);
            for _ in 0..30 {
                seqs.extend(to_clients(&net.link).map(|s| s.seq));
                net.step();
            }
        }
        let want = 5 + 20 * "$1\r\nv\r\n".len();
        assert!(net.run_until(5000, |n| n.received(c).len() >= want));
        // The replies are a few hundred bytes: every segment's number lies
        // within them, whatever path it left by.
        assert!(
            seqs.len() > 20,
            "the stack answered too little: {}",
            seqs.len()
        );
        assert_one_sequence_space(&seqs);
        assert_eq!(net.client_resets, 0);
    });
}

/// SACK after loss, both ways, on a restored flow. A segment of a
/// client's large request is lost on its way in: smoltcp answers the
/// later, out-of-order ones at once, with SACK blocks (and must do so in
/// the real sequence space). A segment of the large reply is lost on its
/// way out: the client's duplicate ACKs carry SACK blocks, whose edges the
/// ingress translation moves into the socket's space. Both holes are
/// repaired by retransmission, the replies arrive exact, every segment the
/// stack sends is in the real space, and no client is reset.
#[test]
fn sack_after_loss_both_ways_on_a_restored_flow() {
    within(120, || {
        let mut net = Net::new();
        let c = net.client(usize::MAX);
        net.write(c, PING);
        assert!(net.run_until(5000, |n| n.received(c) == b"+PONG\r\n"));
        let (exported, restored) = net.hand_over(1, Pause::Buffered, 5, true);
        assert_eq!((exported.exported, restored.restored), (1, 1));
        let value = vec![b'x'; 12_000];
        let mut want = b"+PONG\r\n+OK\r\n".to_vec();
        // In: the request's second data segment is lost.
        net.lose_peer_data = Some(1);
        net.write(c, &command(&[b"SET", b"big", &value]));
        let mut seqs = Vec::new();
        let mut stack_sacks = 0;
        let mut watch = |net: &mut Net| {
            seqs.extend(to_clients(&net.link).map(|s| s.seq));
            stack_sacks += net
                .link
                .sent
                .iter()
                .filter(|f| !sack_blocks(f).is_empty())
                .count();
        };
        for _ in 0..50_000 {
            if net.received(c) == want.as_slice() {
                break;
            }
            watch(&mut net);
            net.step();
        }
        assert_eq!(net.received(c), want.as_slice(), "the SET was not answered");
        assert!(net.lose_peer_data.is_none(), "no request segment was lost");
        // Out: the reply's second data segment to the client is lost.
        net.write(c, &command(&[b"GET", b"big"]));
        want.extend_from_slice(b"$12000\r\n");
        want.extend_from_slice(&value);
        want.extend_from_slice(b"\r\n");
        let mut data_out = 0;
        let mut lost_out = false;
        for _ in 0..50_000 {
            if net.received(c) == want.as_slice() {
                break;
            }
            watch(&mut net);
            if !lost_out {
                net.link.sent.retain(|f| {
                    let data = Segment::parse(f)
                        .is_some_and(|s| s.src_port == PROXY_PORT && s.payload_len > 0);
                    data_out += usize::from(data);
                    let lose = data && data_out == 2;
                    lost_out |= lose;
                    !lose
                });
            }
            net.step();
        }
        assert!(lost_out, "no reply segment was lost");
        assert_eq!(net.received(c).len(), want.len());
        assert!(net.received(c) == want.as_slice(), "the reply differs");
        assert!(
            stack_sacks > 0,
            "the stack sent no SACK for the hole in the request"
        );
        assert!(
            net.peer_sacks > 0,
            "the client sent no SACK for the hole in the reply"
        );
        assert_one_sequence_space(&seqs);
        net.assert_no_client_reset();
    });
}

/// Requests sent while the stack drains stay unread in the socket, and
/// part of a request waits in the stack: both cross the handover and are
/// answered by the successor.
#[test]
fn unread_and_partial_input_is_answered_after_the_handover() {
    within(120, || {
        let mut net = Net::new();
        let c = net.client(usize::MAX);
        assert!(net.pings(5000));
        net.stack.begin_drain();
        let request = [PING.repeat(20), b"*1\r\n$4\r\nPI".to_vec()].concat();
        net.write(c, &request);
        net.run_until(200, |_| false);
        net.deliver();
        assert_eq!(net.received(c), b"", "nothing is answered while draining");
        net.hand_over(1, Pause::Buffered, 10, true);
        net.write(c, b"NG\r\n");
        assert!(net.run_until(20_000, |n| n.received(c).len() >= 21 * 7));
        assert_eq!(net.received(c), &b"+PONG\r\n".repeat(21)[..]);
        net.assert_no_client_reset();
    });
}

/// A client that half-closed after a pipeline it reads slowly
/// (CLOSE-WAIT, replies owed), and one the proxy closed after a protocol
/// error while it had not read the error yet (FIN-WAIT): both end
/// cleanly after the handover, with every byte.
#[test]
fn half_closed_and_closing_connections_finish_after_a_handover() {
    within(120, || {
        let mut model = Model::default();
        let mut pipeline = model.set(b"h".to_vec(), vec![b'h'; 20_000]);
        for _ in 0..10 {
            pipeline.extend(model.get(b"h"));
        }
        let expected = model.replies;
        let mut net = Net::new();
        let half = net.client(0);
        net.write(half, &pipeline);
        let s = net.peer.clients[half].handle;
        // Its FIN once the pipeline is out.
        assert!(net.run_until(2000, |n| n.peer.clients[half].pending.is_empty()));
        net.peer.sockets.get_mut::<tcp::Socket>(s).close();
        let bad = net.client(0);
        net.write(bad, b"*x\r\n");
        net.run_until(20, |_| false);
        net.deliver();
        assert!(
            matches!(net.state(half), tcp::State::FinWait1 | tcp::State::FinWait2),
            "half-closed, replies owed: {}",
            net.state(half)
        );
        assert_eq!(
            net.state(bad),
            tcp::State::CloseWait,
            "closed by the proxy, unread"
        );
        let (exported, restored) = net.hand_over(1, Pause::Dropped, 10, true);
        assert_eq!(exported.exported, 2, "{exported:?}");
        assert_eq!(restored.restored, 2, "{restored:?}");
        net.peer.clients[bad].read_per_step = usize::MAX;
        net.peer.clients[half].read_per_step = 3000;
        assert!(
            net.run_until(50_000, |n| n.received(half).len() >= expected.len()
                && !n.received(bad).is_empty())
        );
        assert!(
            net.received(half) == &expected[..],
            "{} of {} bytes",
            net.received(half).len(),
            expected.len()
        );
        assert!(
            net.received(bad).starts_with(b"-ERR"),
            "{:?}",
            net.received(bad)
        );
        // Both finish closing.
        assert!(net.run_until(50_000, |n| matches!(
            n.state(half),
            tcp::State::Closed | tcp::State::TimeWait
        ) && matches!(
            n.state(bad),
            tcp::State::CloseWait | tcp::State::Closed
        )));
        net.assert_no_client_reset();
    });
}

/// A client still in its handshake at the freeze (its ACK lost): the
/// restored half-open connection completes with its retransmission.
#[test]
fn a_connection_in_its_handshake_is_restored_half_open() {
    within(120, || {
        let mut net = Net::new();
        let c = net.client(usize::MAX);
        // SYN to the stack; SYN-ACK to the peer; the peer's ACK is lost.
        let syn_ack = |n: &Net| to_clients(&n.link).any(|s| s.has(flags::SYN) && s.has(flags::ACK));
        assert!(net.run_until(1000, syn_ack));
        net.deliver();
        let peer = &mut net.peer;
        peer.iface.poll(net.now, &mut peer.wire, &mut peer.sockets);
        peer.wire.tx.clear();
        assert_eq!(
            net.state(c),
            tcp::State::Established,
            "the client thinks it is open"
        );
        let (exported, restored) = net.hand_over(1, Pause::Dropped, 5, true);
        assert_eq!((exported.exported, restored.restored), (1, 1));
        net.write(c, PING);
        assert!(
            net.run_until(50_000, |n| n.received(c) == b"+PONG\r\n"),
            "{:?}",
            net.received(c)
        );
        net.assert_no_client_reset();
    });
}

/// Several cores' stacks behind one link: frames of a flow go to the core
/// its hash names, anything else to every core.
struct Cores {
    stacks: Vec<Stack<Proxy>>,
    link: MemoryLink,
    peer: Peer,
    pool: SocketPool,
    now: Instant,
    client_resets: usize,
}

impl Cores {
    fn new(cores: usize) -> Cores {
        let sizes = Sizes {
            client: 32 << 10,
            client_send: 8 << 10,
            server: 256 << 10,
            idle: 2 << 10,
        };
        let pool = SocketPool::heap(sizes, 64);
        let now = Instant::from_millis(1);
        let mut this = Cores {
            stacks: Vec::new(),
            link: MemoryLink::new(1500),
            peer: Peer::new(now),
            pool,
            now,
            client_resets: 0,
        };
        this.stacks = this.fresh_stacks(cores, 0);
        this
    }

    /// `cores` stacks of generation `generation` (its bank of pool cores).
    fn fresh_stacks(&self, cores: usize, generation: u64) -> Vec<Stack<Proxy>> {
        (0..cores)
            .map(|core| {
                let config = ferrox_config::parse_toml(CONFIG, "test").expect("valid");
                let pools = ferrox_engine::configure::pools(&config).expect("builds");
                let proxy = Proxy::new(pools, vec![(PROXY_PORT, 0)], 7 + core as u64);
                let bank = (generation % 2) as usize * 32;
                let memory = self.pool.core(bank + core).expect("a free core slot");
                let stack_config = StackConfig {
                    core,
                    cores,
                    ..StackConfig::default()
                };
                Stack::new(
                    stack_config,
                    proxy,
                    memory,
                    self.now,
                    100 * generation + core as u64 + 1,
                )
            })
            .collect()
    }

    fn step(&mut self) {
        self.now += smoltcp::time::Duration::from_micros(100);
        let now = self.now;
        self.client_resets += to_clients(&self.link).filter(|s| s.has(flags::RST)).count();
        let peer = &mut self.peer;
        peer.wire.rx.extend(self.link.sent.drain(..));
        peer.iface.poll(now, &mut peer.wire, &mut peer.sockets);
        for client in &mut peer.clients {
            let s = peer.sockets.get_mut::<tcp::Socket>(client.handle);
            while s.can_recv() {
                let _ = s.recv(|d| {
                    client.received.extend_from_slice(d);
                    (d.len(), ())
                });
            }
        }
        peer.run_apps();
        peer.iface.poll(now, &mut peer.wire, &mut peer.sockets);
        let cores = self.stacks.len();
        while let Some(frame) = self.peer.wire.tx.pop_front() {
            match crate::net::flow::classify(&frame) {
                crate::net::flow::Frame::Tcp { key, .. } => {
                    self.stacks[key.owner(cores)].handle_frame(now, &frame, &mut self.link)
                }
                crate::net::flow::Frame::Other => {
                    for stack in &mut self.stacks {
                        stack.handle_frame(now, &frame, &mut self.link);
                    }
                }
            }
        }
        for stack in &mut self.stacks {
            stack.poll(now, &mut self.link);
        }
    }

    /// Every core drains and exports; `cores` fresh ones restore.
    fn hand_over(&mut self, cores: usize, generation: u64) -> (u64, u64) {
        for stack in &mut self.stacks {
            stack.begin_drain();
        }
        for _ in 0..20_000 {
            if self.stacks.iter().all(|s| s.drained()) {
                break;
            }
            self.step();
        }
        let mut export = Export::default();
        let mut exported = 0;
        for stack in &mut self.stacks {
            exported += stack.export(self.now, &mut self.link, &mut export).exported;
        }
        let fresh = self.fresh_stacks(cores, generation);
        drop(std::mem::replace(&mut self.stacks, fresh));
        let mut restored = 0;
        for stack in &mut self.stacks {
            let stats = stack.restore(&export, self.now, &mut self.link);
            assert_eq!(stats.reset_on_restore, 0);
            restored += stats.restored;
        }
        (exported, restored)
    }
}

/// Two cores hand their clients to three: each record goes to the core
/// its flow now hashes to, and every client goes on where it was.
#[test]
fn connections_rehome_from_two_cores_to_three() {
    within(120, || {
        let mut net = Cores::new(2);
        let clients: Vec<usize> = (0..12)
            .map(|_| net.peer.connect(PROXY_PORT, usize::MAX))
            .collect();
        for &c in &clients {
            net.peer.clients[c].pending.extend(command(&[
                b"SET",
                format!("k{c}").as_bytes(),
                b"before",
            ]));
        }
        let all_got = |net: &Cores, want: &[u8]| {
            clients
                .iter()
                .all(|&c| net.peer.clients[c].received.ends_with(want))
        };
        for _ in 0..5000 {
            if all_got(&net, b"+OK\r\n") {
                break;
            }
            net.step();
        }
        assert!(all_got(&net, b"+OK\r\n"), "served by two cores");
        let (exported, restored) = net.hand_over(3, 1);
        assert_eq!((exported, restored), (12, 12));
        for &c in &clients {
            net.peer.clients[c]
                .pending
                .extend(command(&[b"GET", format!("k{c}").as_bytes()]));
        }
        for _ in 0..20_000 {
            if all_got(&net, b"$6\r\nbefore\r\n") {
                break;
            }
            net.step();
        }
        for &c in &clients {
            assert_eq!(
                net.peer.clients[c].received, b"+OK\r\n$6\r\nbefore\r\n",
                "client {c}"
            );
            let s = net
                .peer
                .sockets
                .get::<tcp::Socket>(net.peer.clients[c].handle);
            assert_eq!(s.state(), tcp::State::Established);
        }
        assert_eq!(net.client_resets, 0);
    });
}
