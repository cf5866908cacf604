//! The per-core poll loop: receive a burst, hand each frame to its
//! connection, run due timers, send one burst; sleep when idle.
//!
//! Adaptive polling: the loop spins while frames arrive; after a run of
//! empty polls it sleeps, starting at a few microseconds and doubling up to
//! a ceiling, never past the next TCP deadline, and polls again on waking.
//! (RX interrupts for the PMDs that have them are not wired yet.)
#![allow(clippy::disallowed_methods)] // the adaptive poller is the one place that sleeps

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::ffi::RxBurst;
use crate::net::stack::Stack;
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
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopStats {
    pub iterations: u64,
    pub rx_frames: u64,
    pub sleeps: u64,
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

/// Runs one core until `stop` is set.
pub fn run<S: Service>(
    queue: &mut Queue<'_>,
    stack: &mut Stack<S>,
    clock: Clock,
    idle: IdlePolicy,
    stop: &AtomicBool,
) -> LoopStats {
    let mut rx = RxBurst::<BURST>::default();
    let mut stats = LoopStats::default();
    let mut empty_polls = 0u32;
    let mut sleep = idle.min_sleep;
    while !stop.load(Ordering::Relaxed) {
        stats.iterations += 1;
        let now = clock.now();
        let received = queue.rx_burst(&mut rx);
        for i in 0..received {
            stack.handle_frame(now, rx.frame(i), queue);
        }
        rx.clear();
        stack.poll_timers(now, queue);
        queue.flush();
        stats.rx_frames += received as u64;

        if received > 0 {
            empty_polls = 0;
            sleep = idle.min_sleep;
            continue;
        }
        empty_polls = empty_polls.saturating_add(1);
        if empty_polls < idle.spin_polls {
            std::hint::spin_loop();
            continue;
        }
        let until_deadline = stack
            .next_deadline()
            .map(|at| Duration::from_micros((at - now).total_micros()))
            .unwrap_or(idle.max_sleep);
        std::thread::sleep(sleep.min(until_deadline));
        stats.sleeps += 1;
        sleep = (sleep * 2).min(idle.max_sleep);
    }
    stats
}
