//! The handover board: the command the control process gives for a hot
//! handover, and the moments and counts the two dataplanes record.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::layout::HANDOVER_STEPS;
use crate::Block;

/// A step of a hot handover, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The old dataplane saw the request and stopped taking new requests
    /// (the brownout begins: requests in flight still finish).
    Asked,
    /// The old dataplane's first core stopped serving and began
    /// exporting (the blackout begins).
    Frozen,
    /// Its last core did (the brownout ends: with several cores, one may
    /// drain longer than another).
    AllFrozen,
    /// The handover file is written and the port closed: the new
    /// dataplane may open it.
    Sealed,
    /// The new dataplane opened its port beside the old one's (af_packet:
    /// each gets a copy of every frame) and drops what arrives until the
    /// freeze.
    Overlapping,
    /// ...and, the freeze seen, keeps what arrives from now on: the old
    /// one reads its queues one last time after this, so no frame falls
    /// between the two.
    Listening,
    /// The new dataplane restored every connection.
    Restored,
    /// The new dataplane received its first frame after restoring (the
    /// blackout ends).
    FirstFrame,
}

/// The clock every process stamps with: `CLOCK_MONOTONIC`, one for the
/// whole machine, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The board as read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HandoverReport {
    /// By [`Step`]: when it happened (`CLOCK_MONOTONIC` ns), if it did.
    pub stamps: [Option<u64>; HANDOVER_STEPS],
    pub exported: u64,
    pub restored: u64,
    pub reset_on_restore: u64,
}

impl HandoverReport {
    pub fn at(&self, step: Step) -> Option<u64> {
        self.stamps[step as usize]
    }

    /// The time from `from` to `to`, when both happened in that order.
    pub fn between(&self, from: Step, to: Step) -> Option<Duration> {
        let (from, to) = (self.at(from)?, self.at(to)?);
        to.checked_sub(from).map(Duration::from_nanos)
    }
}

impl Block {
    /// Clears the board for a new handover and sets how long the running
    /// dataplane drains (`None`: its own `--drain-ms`). The control
    /// process, before it asks for the handover.
    pub fn begin_handover(&self, drain: Option<Duration>) {
        let board = &self.header().handover;
        for stamp in &board.stamps {
            stamp.store(0, Ordering::Relaxed);
        }
        for count in [&board.exported, &board.restored, &board.reset_on_restore] {
            count.store(0, Ordering::Relaxed);
        }
        let ms = drain.map_or(0, |d| (d.as_millis() as u64).max(1));
        board.drain_ms.store(ms, Ordering::Release);
    }

    /// How long the control process asked the running dataplane to drain.
    pub fn handover_drain(&self) -> Option<Duration> {
        match self.header().handover.drain_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Records that `step` happened now, unless another core (or process)
    /// already did.
    pub fn stamp(&self, step: Step) {
        let stamp = &self.header().handover.stamps[step as usize];
        let _ = stamp.compare_exchange(0, monotonic_ns(), Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Records that `step` happened now, whoever stamped it before: the
    /// last of several cores to get there.
    pub fn stamp_latest(&self, step: Step) {
        let stamp = &self.header().handover.stamps[step as usize];
        stamp.fetch_max(monotonic_ns(), Ordering::AcqRel);
    }

    /// Whether `step` happened.
    pub fn stamped(&self, step: Step) -> bool {
        self.header().handover.stamps[step as usize].load(Ordering::Acquire) != 0
    }

    /// Adds one core's exported connections.
    pub fn add_exported(&self, connections: u64) {
        let board = &self.header().handover;
        board.exported.fetch_add(connections, Ordering::Relaxed);
    }

    /// The new dataplane's totals, once every core restored.
    pub fn set_restored(&self, restored: u64, reset_on_restore: u64) {
        let board = &self.header().handover;
        board.restored.store(restored, Ordering::Relaxed);
        board
            .reset_on_restore
            .store(reset_on_restore, Ordering::Relaxed);
    }

    pub fn handover_report(&self) -> HandoverReport {
        let board = &self.header().handover;
        let mut report = HandoverReport {
            exported: board.exported.load(Ordering::Relaxed),
            restored: board.restored.load(Ordering::Relaxed),
            reset_on_restore: board.reset_on_restore.load(Ordering::Relaxed),
            ..HandoverReport::default()
        };
        for (seen, stamp) in report.stamps.iter_mut().zip(&board.stamps) {
            *seen = match stamp.load(Ordering::Acquire) {
                0 => None,
                at => Some(at),
            };
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hugepage_pool::Region;

    #[test]
    fn each_step_keeps_its_first_stamp_and_a_new_handover_clears_them() {
        let block = Block::create(&Region::heap(Block::size() + (1 << 20)), 2).unwrap();
        block.begin_handover(Some(Duration::from_millis(250)));
        assert_eq!(block.handover_drain(), Some(Duration::from_millis(250)));
        block.stamp(Step::Asked);
        block.stamp(Step::Frozen);
        let frozen = block.handover_report().at(Step::Frozen).unwrap();
        while monotonic_ns() == frozen {}
        block.stamp(Step::Frozen); // a second core: the first stamp stands
        block.stamp_latest(Step::AllFrozen);
        let first = block.handover_report().at(Step::AllFrozen).unwrap();
        while monotonic_ns() == first {}
        block.stamp_latest(Step::AllFrozen); // the last one stands
        block.stamp(Step::FirstFrame);
        block.add_exported(3);
        block.add_exported(4);
        block.set_restored(6, 1);
        let report = block.handover_report();
        assert_eq!(report.at(Step::Frozen), Some(frozen));
        assert_eq!(report.at(Step::Sealed), None);
        assert!(report.at(Step::AllFrozen).unwrap() > first);
        assert!(report.between(Step::Frozen, Step::FirstFrame).unwrap() > Duration::ZERO);
        assert_eq!(report.between(Step::Frozen, Step::Sealed), None);
        assert_eq!(
            (report.exported, report.restored, report.reset_on_restore),
            (7, 6, 1)
        );

        block.begin_handover(None);
        assert_eq!(block.handover_drain(), None);
        assert_eq!(block.handover_report(), HandoverReport::default());
    }
}
