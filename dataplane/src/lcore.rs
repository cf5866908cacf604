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
//! **Adaptive polling.** The loop spins while frames arrive; after a run of
//! empty polls it sleeps, from a few microseconds doubling up to a ceiling,
//! never past the next TCP deadline, and polls again on waking. (RX
//! interrupts for the PMDs that have them are not wired yet.)
#![allow(clippy::disallowed_methods)] // the adaptive poller is the one place that sleeps

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hugepage_pool::mq::{self, fanin};
use hugepage_pool::Region;

use crate::ffi::RxBurst;
use crate::net::flow::{self, FlowKey, Frame};
use crate::net::stack::{Stack, StackStats};
use crate::port::{Queue, BURST};
use crate::service::Service;

/// When to stop spinning and how long to sleep.
#[derive(Debug, Clone, Copy)]
pub struct IdlePolicy {
    /// Empty polls in a row before the first sleep.
    pub spin_polls: u32,
    pub min_sleep: Duration,
    pub max_sleep: Duration,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            spin_polls: 2000,
            min_sleep: Duration::from_micros(20),
            max_sleep: Duration::from_millis(1),
        }
    }
}

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

/// The core that owns `key` among `cores`.
pub fn owner(key: FlowKey, cores: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = flow::FlowHasher::default();
    key.hash(&mut h);
    (h.finish() % cores as u64) as usize
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

/// Everything one lcore owns.
pub struct Core<'p, S: Service> {
    pub id: usize,
    pub queue: Queue<'p>,
    pub stack: Stack<S>,
    pub steering: Option<Steering>,
    pub stats: LoopStats,
}

impl<S: Service> std::fmt::Debug for Core<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("id", &self.id)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<S: Service> Core<'_, S> {
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
                let to = owner(key, steering.cores());
                if to == steering.me {
                    self.stack.handle(now, frame, class, &mut self.queue);
                } else {
                    let outbox = steering.outboxes[to]
                        .as_mut()
                        .expect("an outbox to every other core");
                    match outbox.write(TAG_FRAME, frame) {
                        Ok(()) => self.stats.steered += 1,
                        Err(_) => self.stats.steer_drops += 1,
                    }
                }
            }
            Frame::Other => {
                for outbox in steering.outboxes.iter_mut().flatten() {
                    match outbox.write(TAG_FRAME, frame) {
                        Ok(()) => self.stats.steered += 1,
                        Err(_) => self.stats.steer_drops += 1,
                    }
                }
                self.stack.handle(now, frame, class, &mut self.queue);
            }
        }
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
                .pop(|_, frame| stack.handle_frame(now, frame, queue))
                .is_some()
        {
            handled += 1;
        }
        handled
    }

    /// Runs this core until `stop` is set.
    pub fn run(&mut self, clock: Clock, idle: IdlePolicy, stop: &AtomicBool) {
        let mut rx = RxBurst::<BURST>::default();
        let mut empty_polls = 0u32;
        let mut sleep = idle.min_sleep;
        while !stop.load(Ordering::Relaxed) {
            self.stats.iterations += 1;
            let now = clock.now();
            let received = self.queue.rx_burst(&mut rx);
            for i in 0..received {
                self.dispatch(now, rx.frame(i));
            }
            rx.clear();
            let steered_in = self.drain_inbox(now);
            self.stack.poll_timers(now, &mut self.queue);
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
                .unwrap_or(idle.max_sleep);
            std::thread::sleep(sleep.min(until_deadline));
            self.stats.sleeps += 1;
            sleep = (sleep * 2).min(idle.max_sleep);
        }
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
