//! One poll loop per lcore: receive a burst, hand each frame to the core
//! that owns its flow, run due timers, send one burst; sleep when idle.
//!
//! **Flow ownership.** A TCP flow belongs to core `hash(4-tuple) % cores`.
//! A frame that arrives on another core's queue (PMDs without RSS, such as
//! af_packet and tap, spread flows their own way) is copied to its owner
//! through a hugepage-pool fan-in, one SPSC lane per sending core. Frames
//! that belong to no flow (ARP, ICMP) are handled where they arrive and
//! copied to every other core, so that each core's neighbour cache learns
//! the same peers.
//!
//! **Adaptive polling.** The loop spins while frames arrive. After a run of
//! empty polls it sleeps in `ppoll`: where the PMD has RX interrupts (tap),
//! on the queue's interrupt descriptor until a frame arrives or the next TCP
//! deadline; elsewhere for a short time, from a few microseconds doubling up
//! to a ceiling. Either way the core also wakes when another core steers a
//! frame to it (its inbox's eventfd), and polls again on waking.
//!
//! **Heartbeat.** The core writes its statistics record (the stack's, the
//! loop's and the service's counters, in the control block or one of the
//! dataplane's own) and beats its heartbeat there every [`PUBLISH_EVERY`]
//! while it runs, and before it sleeps; sleeps are at most 100 ms. A healthy core, idle or busy, so
//! beats at least every ~100 ms, and the control process takes a silence of
//! seconds for a stuck core.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrox_block::{Block, CoreRecord, Counter, Step};
use hugepage_pool::mq::{self, fanin, Sleep};
use hugepage_pool::Region;

use crate::alloc_count;
use crate::ffi::{L4Checksum, RxBurst};
use crate::net::flow::{self, Frame};
use crate::net::stack::{App, Export, HandoverStats, Stack, StackStats};
use crate::port::{Queue, RxChecksum, BURST};

/// When to stop spinning and how long to sleep.
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// Empty polls in a row before the first sleep.
    pub spin_polls: u32,
    /// Without RX interrupts: first sleep, doubled up to `max_sleep`.
    pub min_sleep: Duration,
    pub max_sleep: Duration,
    /// With RX interrupts: longest wait (the stop flag is checked after it).
    pub max_wait: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            // Tens of microseconds: past that, spinning on a shared machine
            // takes the CPU the clients and servers need (docs/performance.md).
            spin_polls: 200,
            min_sleep: Duration::from_micros(20),
            max_sleep: Duration::from_millis(1),
            max_wait: Duration::from_millis(100),
        }
    }
}

/// Longest time between two publications of a running core (between
/// sleeps; a sleep is preceded by one).
pub const PUBLISH_EVERY: Duration = Duration::from_millis(50);

/// Test-only fault injection: when this says so, the core wedges itself
/// (see [`Core::test_stall`]).
pub type TestStall = Box<dyn Fn() -> bool + Send>;

/// Counters of one loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    pub iterations: u64,
    pub rx_frames: u64,
    pub sleeps: u64,
    /// Frames copied to their owning core.
    pub steered: u64,
    /// Frames dropped because the owner's mailbox was full (TCP retransmits).
    pub steer_drops: u64,
    /// Frames dropped for a wrong checksum (found by the NIC, or by the
    /// runtime where the NIC did not check).
    pub bad_checksum: u64,
    /// Idle waits that failed and were slept instead.
    pub failed_waits: u64,
}

/// What a core's loop asks of the service it runs, beyond its
/// connections' traffic ([`App`]): a start, configurations at safe
/// points, and its part of the core's statistics record.
pub trait CoreService: App {
    /// Before the first poll (pools that preconnect open their
    /// connections, from the core that will own them).
    fn start(&mut self, _now: u64) {}
    /// A new configuration to take at this safe point (between two
    /// bursts), if one was published: the ports to listen on from now.
    fn poll_reconfigure(&mut self) -> Option<Vec<u16>> {
        None
    }
    /// Writes the service's own counters into the core's record (the
    /// loop has written the stack's and its own).
    fn publish(&mut self, _record: &CoreRecord) {}
    /// Hands `each` the messages for every other core since the last call
    /// (the proxy's: keys written through this core, for the others'
    /// hot-key caches).
    fn take_peer_messages(&mut self, _each: &mut dyn FnMut(&[u8])) {}
    /// Another core's message: taken after the frames of a burst are read
    /// and before the service sees their bytes.
    fn peer_message(&mut self, _message: &[u8]) {}
}

/// Writes everything the core and its stack count into `record`: the one
/// statistics record per core that the stop line, `--stats-every`,
/// `ferroxctl`, Prometheus and the tests all read.
fn write_record(record: &CoreRecord, stack: &StackStats, loops: &LoopStats, tx_dropped: u64) {
    record.set_all([
        (Counter::Frames, stack.frames),
        (Counter::Accepted, stack.accepted),
        (Counter::Refused, stack.refused),
        (Counter::Connects, stack.connects),
        (Counter::Closed, stack.closed),
        (Counter::Open, stack.open),
        (Counter::BacklogDrops, stack.backlog_drops),
        (Counter::LimitDrops, stack.limit_drops),
        (Counter::TxNoMbuf, stack.tx_no_mbuf),
        (Counter::Deferred, stack.deferred),
        (Counter::BudgetExhausted, stack.budget_exhausted),
        (Counter::CloseTimeouts, stack.close_timeouts),
        (Counter::Iterations, loops.iterations),
        (Counter::RxFrames, loops.rx_frames),
        (Counter::Sleeps, loops.sleeps),
        (Counter::Steered, loops.steered),
        (Counter::SteerDrops, loops.steer_drops),
        (Counter::BadChecksum, loops.bad_checksum),
        // Called on the core's own thread.
        (Counter::Allocations, alloc_count::thread_allocations()),
        (Counter::TxDropped, tx_dropped),
        (Counter::FailedWaits, loops.failed_waits),
        (Counter::SocketBufferBytes, stack.socket_buffer_bytes),
        (Counter::BufferMoves, stack.upgrades),
    ]);
}

/// A monotonic clock in smoltcp's terms.
#[derive(Debug, Clone, Copy)]
pub struct Clock(std::time::Instant);

impl Default for Clock {
    fn default() -> Self {
        Clock(std::time::Instant::now())
    }
}

impl Clock {
    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.0.elapsed().as_micros() as i64)
    }
}

/// Mailboxes of one core: its inbox and an outbox to every other core.
#[derive(Debug)]
pub struct Steering {
    me: usize,
    inbox: fanin::Consumer,
    outboxes: Vec<Option<mq::Producer>>,
}

/// Message tag of a steered frame.
const TAG_FRAME: u32 = 1;
/// Message tag of a service's message to the other cores.
const TAG_PEER: u32 = 2;

impl Steering {
    /// Mailboxes for `cores` cores in `region` (one fan-in per core).
    pub fn build(
        region: &Arc<Region>,
        cores: usize,
        capacity: u64,
    ) -> Result<Vec<Steering>, mq::MqError> {
        let name = |core: usize| format!("steer-{core}");
        for core in 0..cores {
            fanin::create(region, &name(core), cores.max(1), capacity)?;
        }
        let mut all = Vec::with_capacity(cores);
        for me in 0..cores {
            let inbox = fanin::Consumer::attach(region, &name(me))?;
            let outboxes = (0..cores)
                .map(|to| {
                    if to == me {
                        Ok(None)
                    } else {
                        fanin::producer(region, &name(to)).map(Some)
                    }
                })
                .collect::<Result<_, _>>()?;
            all.push(Steering {
                me,
                inbox,
                outboxes,
            });
        }
        Ok(all)
    }

    fn cores(&self) -> usize {
        self.outboxes.len()
    }
}

/// Under RX checksum offload: whether a received frame may go on to the
/// stack (which then verifies no TCP checksum itself).
fn checksum_ok(nic: L4Checksum, frame: &[u8]) -> bool {
    match nic {
        L4Checksum::Good => true,
        L4Checksum::Bad => false,
        L4Checksum::Unchecked => flow::tcp_checksum_ok(frame),
    }
}

/// Writes `frame` to another core's `outbox`, counting it as steered or
/// dropped.
fn steer(outbox: &mut mq::Producer, frame: &[u8], stats: &mut LoopStats) {
    match outbox.write(TAG_FRAME, frame) {
        Ok(()) => stats.steered += 1,
        Err(_) => stats.steer_drops += 1,
    }
}

/// Everything one lcore owns.
pub struct Core<'p, A: CoreService> {
    pub id: usize,
    pub queue: Queue<'p>,
    pub stack: Stack<A>,
    pub steering: Option<Steering>,
    pub stats: LoopStats,
    /// Where this core publishes its statistics record and heartbeat:
    /// the control process's block, or one of the dataplane's own.
    pub block: Block,
    /// Test-only (`--test-hooks`): asked at each publication; once it says
    /// so, the core spins in its loop for ever, ignoring its stop flag and
    /// publishing nothing, as a livelocked core does. `None` in service.
    pub test_stall: Option<TestStall>,
    /// Its part in a hot handover, when one may be asked for.
    pub handover: Option<Handover<'p, A>>,
    /// Connections a predecessor exported, restored before the first
    /// frame is read.
    pub inherited: Option<&'p Inherited>,
}

/// A core's part in a hot handover: the requests it follows, how long it
/// lets requests in flight finish, and who takes its connections over.
pub struct Handover<'a, A: CoreService> {
    /// Handovers asked for so far; the core runs one whenever this is
    /// ahead of `done`.
    pub requested: &'static AtomicU64,
    pub done: u64,
    /// The longest wait for requests in flight; then they fail.
    pub drain_for: Duration,
    pub successor: Successor<'a, A>,
}

/// Who takes a core's connections over.
pub enum Successor<'a, A: CoreService> {
    /// A fresh stack in this process (`--handover-on-sigusr2`): a builder
    /// of generation `n`'s stack (another bank of pool cores, another
    /// seed).
    Stack(Box<dyn FnMut(u64) -> anyhow::Result<Stack<A>> + Send + 'a>),
    /// Another process: every core's export goes into the sink, and the
    /// cores stop once all have exported (`stop` is set by the last).
    Process {
        sink: &'a Mutex<Vec<Export>>,
        cores: usize,
        stop: &'a AtomicBool,
    },
}

impl<A: CoreService> std::fmt::Debug for Successor<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Successor::Stack(_) => "Successor::Stack",
            Successor::Process { .. } => "Successor::Process",
        })
    }
}

impl<A: CoreService> std::fmt::Debug for Handover<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// What a predecessor exported, shared by the cores that restore it; the
/// last core to finish reports the totals.
pub struct Inherited {
    pub export: Export,
    left: AtomicUsize,
    totals: Mutex<HandoverStats>,
    done: Box<dyn Fn(HandoverStats) + Send + Sync>,
}

impl Inherited {
    /// `export` for `cores` cores; `done` gets the totals once all restored.
    pub fn new(
        export: Export,
        cores: usize,
        done: impl Fn(HandoverStats) + Send + Sync + 'static,
    ) -> Inherited {
        Inherited {
            export,
            left: AtomicUsize::new(cores),
            totals: Mutex::new(HandoverStats::default()),
            done: Box::new(done),
        }
    }

    fn add(&self, stats: HandoverStats) {
        let totals = {
            let mut totals = self.totals.lock().expect("not poisoned");
            totals.restored += stats.restored;
            totals.reset_on_restore += stats.reset_on_restore;
            *totals
        };
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            (self.done)(totals);
        }
    }
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited")
            .field("records", &self.export.len())
            .finish_non_exhaustive()
    }
}

impl<A: CoreService> std::fmt::Debug for Core<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<A: CoreService> Core<'_, A> {
    pub fn stack_stats(&self) -> StackStats {
        self.stack.stats()
    }

    /// Sends `frame` to its owner, handles it here, or both (broadcast).
    fn dispatch(&mut self, now: smoltcp::time::Instant, frame: &[u8]) {
        let class = flow::classify(frame);
        let Some(steering) = self.steering.as_mut() else {
            self.stack.handle(now, frame, class, &mut self.queue);
            return;
        };
        match class {
            Frame::Tcp { key, .. } => {
                let to = key.owner(steering.cores());
                if to == steering.me {
                    self.stack.handle(now, frame, class, &mut self.queue);
                } else {
                    let outbox = steering.outboxes[to]
                        .as_mut()
                        .expect("an outbox to every other core");
                    steer(outbox, frame, &mut self.stats);
                }
            }
            Frame::Other => {
                for outbox in steering.outboxes.iter_mut().flatten() {
                    steer(outbox, frame, &mut self.stats);
                }
                self.stack.handle(now, frame, class, &mut self.queue);
            }
        }
    }

    /// Dispatches the `received` frames of `rx` (those whose checksum the
    /// NIC found bad are counted and dropped), then empties it.
    fn dispatch_burst(
        &mut self,
        now: smoltcp::time::Instant,
        rx: &mut RxBurst<BURST>,
        received: usize,
    ) {
        let nic_checks = self.queue.port().rx_checksum() == RxChecksum::Nic;
        for i in 0..received {
            let frame = rx.frame(i);
            if nic_checks && !checksum_ok(rx.l4_checksum(i), frame) {
                self.stats.bad_checksum += 1;
                continue;
            }
            self.dispatch(now, frame);
        }
        rx.clear();
    }

    /// Handles frames other cores steered here; returns how many.
    fn drain_inbox(&mut self, now: smoltcp::time::Instant) -> usize {
        let Some(steering) = self.steering.as_mut() else {
            return 0;
        };
        for outbox in steering.outboxes.iter_mut().flatten() {
            outbox.flush();
        }
        let (stack, queue) = (&mut self.stack, &mut self.queue);
        let mut handled = 0;
        while handled < BURST
            && steering
                .inbox
                .pop(|tag, message| match tag {
                    TAG_PEER => stack.app_mut().peer_message(message),
                    _ => stack.handle_frame(now, message, queue),
                })
                .is_some()
        {
            handled += 1;
        }
        handled
    }

    /// Sends what the service has for the other cores (after a poll, so
    /// it leaves before the requests that caused it are answered).
    fn send_peer_messages(&mut self) {
        let Some(steering) = self.steering.as_mut() else {
            return;
        };
        let stats = &mut self.stats;
        let outboxes = &mut steering.outboxes;
        let mut sent = false;
        self.stack.app_mut().take_peer_messages(&mut |message| {
            for outbox in outboxes.iter_mut().flatten() {
                // A full inbox loses the message: the other core's entry
                // then lives until the server's invalidation, its age
                // limit or its eviction.
                if outbox.write(TAG_PEER, message).is_err() {
                    stats.steer_drops += 1;
                }
            }
            sent = true;
        });
        if sent {
            for outbox in outboxes.iter_mut().flatten() {
                outbox.flush();
            }
        }
    }

    /// Writes the core's record (its own, its stack's and its service's
    /// counters) and beats its heartbeat.
    fn publish(&mut self) {
        if let Some(stall) = &self.test_stall {
            if stall() {
                wedge(self.id);
            }
        }
        let record = self.block.core(self.id);
        write_record(
            record,
            &self.stack.stats(),
            &self.stats,
            self.queue.tx_dropped(),
        );
        self.stack.app_mut().publish(record);
        record.beat();
    }

    /// Starts, and finishes, the handover a request asks for: the stack
    /// drains (no new requests; those in flight finish, for at most
    /// `drain_for`), then every connection moves to the successor.
    /// Returns whether the core is done (its connections went to another
    /// process).
    fn poll_handover(
        &mut self,
        clock: Clock,
        now: smoltcp::time::Instant,
        draining: &mut Option<smoltcp::time::Instant>,
    ) -> bool {
        let Some(handover) = self.handover.as_ref() else {
            return false;
        };
        if handover.requested.load(Ordering::Relaxed) <= handover.done {
            return false;
        }
        let drain_default = handover.drain_for;
        let to_process = matches!(handover.successor, Successor::Process { .. });
        let since = *draining.get_or_insert_with(|| {
            self.stack.begin_drain();
            self.block.stamp(Step::Asked);
            now
        });
        let waited = Duration::from_micros((now - since).total_micros());
        // The control process may ask for another drain time than ours.
        let drain_for = self.block.handover_drain().unwrap_or(drain_default);
        if !self.stack.drained() && waited < drain_for {
            return false;
        }
        *draining = None;
        self.block.stamp(Step::Frozen);
        self.block.stamp_latest(Step::AllFrozen);
        if to_process && self.block.stamped(Step::Overlapping) {
            self.read_last_frames(clock);
        }
        let handover = self.handover.as_mut().expect("checked above");
        handover.done += 1;
        let generation = handover.done;
        let started = std::time::Instant::now();
        let mut export = Export::default();
        let (exported, restored) = match &mut handover.successor {
            Successor::Stack(build) => {
                let fresh = match build(generation) {
                    Ok(stack) => stack,
                    Err(error) => {
                        tracing::error!(core = self.id, %error, "handover: no successor stack; this one goes on");
                        self.stack.end_drain();
                        return false;
                    }
                };
                let exported = self.stack.export(clock.now(), &mut self.queue, &mut export);
                self.queue.flush();
                drop(std::mem::replace(&mut self.stack, fresh));
                let now = clock.now();
                self.stack.app_mut().start(now.total_micros().max(0) as u64);
                let restored = self.stack.restore(&export, now, &mut self.queue);
                self.queue.flush();
                (exported, restored)
            }
            Successor::Process { sink, cores, stop } => {
                let exported = self.stack.export(clock.now(), &mut self.queue, &mut export);
                self.queue.flush();
                self.block.add_exported(exported.exported);
                let mut sink = sink.lock().expect("not poisoned");
                sink.push(export);
                if sink.len() == *cores {
                    stop.store(true, Ordering::Relaxed);
                }
                tracing::info!(
                    core = self.id,
                    exported = exported.exported,
                    skipped = exported.skipped,
                    servers_reset = exported.servers_reset,
                    drain_us = waited.as_micros() as u64,
                    "handover: connections exported for the successor"
                );
                return true;
            }
        };
        // The event line on stdout, as for reloads: what scripts and
        // tests wait for.
        println!(
            "ferrox-dataplane: handover done core={} generation={generation} exported={} skipped={} servers_reset={} restored={} reset_on_restore={} drain_us={} blackout_us={}",
            self.id,
            exported.exported,
            exported.skipped,
            exported.servers_reset,
            restored.restored,
            restored.reset_on_restore,
            waited.as_micros(),
            started.elapsed().as_micros()
        );
        tracing::info!(
            core = self.id,
            generation,
            exported = exported.exported,
            restored = restored.restored,
            reset_on_restore = restored.reset_on_restore,
            blackout_us = started.elapsed().as_micros() as u64,
            "handover done"
        );
        false
    }

    /// Frozen, before its export to a successor whose port overlaps
    /// (af_packet): waits (at most 10 ms) until the successor keeps every
    /// frame, then reads its queue one last time, so that each frame is
    /// either read here (and its bytes exported) or kept there.
    fn read_last_frames(&mut self, clock: Clock) {
        let deadline = std::time::Instant::now() + Duration::from_millis(10);
        while !self.block.stamped(Step::Listening) && std::time::Instant::now() < deadline {
            std::hint::spin_loop();
        }
        let mut rx = RxBurst::<BURST>::default();
        // Bounded: a queue that never empties still ends.
        for _ in 0..64 {
            let received = self.queue.rx_burst(&mut rx);
            self.dispatch_burst(clock.now(), &mut rx, received);
            if received == 0 {
                break;
            }
        }
        let now = clock.now();
        self.drain_inbox(now);
        self.stack.poll(now, &mut self.queue);
        self.queue.flush();
    }

    /// After its export to another process, until every core exported:
    /// frames that reach this core's queue for another core's connections
    /// still go there (those cores may be draining: their servers'
    /// replies must reach them), and frames for this core's own, exported,
    /// connections are dropped unanswered (its stack must not answer
    /// them with a RST; the successor has them, or the peer resends).
    ///
    /// On a port held by another process (the port holder) the queue is
    /// not read at all: what arrives waits there for the successor, and a
    /// tap hands a flow's frames to the queue that last sent for it, so
    /// the draining cores' replies are on their own queues.
    fn forward_until_stopped(&mut self, rx: &mut RxBurst<BURST>, stop: &AtomicBool) {
        let mut polls = 0u32;
        let leave_queue = self.queue.port().is_attached();
        while !stop.load(Ordering::Relaxed) {
            let received = if leave_queue {
                0
            } else {
                self.queue.rx_burst(rx)
            };
            if let Some(steering) = self.steering.as_mut() {
                for i in 0..received {
                    if let Frame::Tcp { key, .. } = flow::classify(rx.frame(i)) {
                        // No outbox leads to this core itself: its own
                        // flows' frames are dropped here.
                        let to = key.owner(steering.cores());
                        if let Some(outbox) = steering.outboxes[to].as_mut() {
                            steer(outbox, rx.frame(i), &mut self.stats);
                        }
                    }
                }
                for outbox in steering.outboxes.iter_mut().flatten() {
                    outbox.flush();
                }
                // Frames steered here are for exported connections.
                while steering.inbox.pop(|_, _| ()).is_some() {}
            }
            rx.clear();
            polls = polls.wrapping_add(1);
            if polls.is_multiple_of(1024) {
                self.block.core(self.id).beat();
            }
            std::hint::spin_loop();
        }
    }

    /// Runs this core until `stop` is set.
    pub fn run(&mut self, clock: Clock, idle: IdlePolicy, stop: &AtomicBool) {
        let mut rx = RxBurst::<BURST>::default();
        let mut empty_polls = 0u32;
        let mut sleep = idle.min_sleep;
        let publish_every = smoltcp::time::Duration::from_micros(PUBLISH_EVERY.as_micros() as u64);
        let mut published = clock.now();
        let mut draining = None;
        self.stack
            .app_mut()
            .start(published.total_micros().max(0) as u64);
        if let Some(inherited) = self.inherited {
            // Before the first frame: one for a flow not restored yet
            // would be answered with a RST.
            let restored = self
                .stack
                .restore(&inherited.export, clock.now(), &mut self.queue);
            self.queue.flush();
            tracing::info!(
                core = self.id,
                restored = restored.restored,
                reset_on_restore = restored.reset_on_restore,
                "connections taken over from the predecessor"
            );
            inherited.add(restored);
        }
        // The first frame after taking connections over ends the blackout.
        let mut first_frame_due = self.inherited.is_some();
        while !stop.load(Ordering::Relaxed) {
            self.stats.iterations += 1;
            let now = clock.now();
            if now - published >= publish_every {
                self.publish();
                published = now;
            }
            if self.poll_handover(clock, now, &mut draining) {
                self.forward_until_stopped(&mut rx, stop);
                break;
            }
            let received = self.queue.rx_burst(&mut rx);
            if first_frame_due && received > 0 {
                self.block.stamp(Step::FirstFrame);
                first_frame_due = false;
            }
            self.dispatch_burst(now, &mut rx, received);
            let steered_in = self.drain_inbox(now);
            if let Some(ports) = self.stack.app_mut().poll_reconfigure() {
                self.stack.set_ports(ports);
            }
            self.stack.poll(now, &mut self.queue);
            self.send_peer_messages();
            self.queue.flush();
            self.stats.rx_frames += received as u64;

            if received + steered_in > 0 {
                empty_polls = 0;
                sleep = idle.min_sleep;
                continue;
            }
            empty_polls = empty_polls.saturating_add(1);
            if empty_polls < idle.spin_polls {
                std::hint::spin_loop();
                continue;
            }
            let until_deadline = self
                .stack
                .next_deadline()
                .map(|at| Duration::from_micros((at - now).total_micros()))
                .unwrap_or(Duration::MAX);
            self.publish();
            published = now;
            self.idle_wait(until_deadline, sleep, idle);
            self.stats.sleeps += 1;
            sleep = (sleep * 2).min(idle.max_sleep);
        }
        // What the stop line reports.
        self.publish();
    }

    /// Sleeps until a frame or a steered frame arrives, the next deadline
    /// comes, or (without RX interrupts) `sleep` passes.
    fn idle_wait(&mut self, until_deadline: Duration, sleep: Duration, idle: IdlePolicy) {
        let mut fds = [0; 2];
        let mut n = 0;
        if let Some(steering) = self.steering.as_mut() {
            if !steering.inbox.prepare_sleep() {
                steering.inbox.woken();
                return;
            }
            fds[n] = std::os::fd::AsRawFd::as_raw_fd(&steering.inbox.wake_fd());
            n += 1;
        }
        let rx_fd = self.queue.rx_wake_arm();
        let timeout = match rx_fd {
            Some(fd) => {
                fds[n] = fd;
                n += 1;
                until_deadline.min(idle.max_wait)
            }
            None => until_deadline.min(sleep),
        };
        if let Err(e) = crate::ffi::wait_readable(&fds[..n], timeout) {
            // Sleeping instead keeps the loop from spinning on a wait that
            // returns at once; the poll loop still runs every `timeout`.
            if self.stats.failed_waits == 0 {
                tracing::error!(core = self.id, "idle wait failed ({e}); sleeping instead");
            }
            self.stats.failed_waits += 1;
            // This is the adaptive poller's own sleep.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(timeout);
        }
        if rx_fd.is_some() {
            self.queue.rx_wake_disarm();
        }
        if let Some(steering) = self.steering.as_mut() {
            steering.inbox.woken();
        }
    }
}

/// The test hook's livelock: spins for ever, publishing nothing and
/// ignoring the stop flag, until the process is killed.
#[cold]
fn wedge(core: usize) -> ! {
    tracing::warn!(
        core,
        "test hook: this core wedges itself (spins, ignores stop)"
    );
    loop {
        std::hint::spin_loop();
    }
}

/// Sets `stop` if dropped while panicking, so one failed core stops all.
#[derive(Debug)]
pub struct StopOnPanic<'a>(pub &'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}
