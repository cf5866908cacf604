//! Modula: `hash % total weight`, as twemproxy's `nc_modula.c` does it.
//!
//! twemproxy lays out one slot per unit of weight, each server's slots
//! together, servers in its own (name) order, and takes slot
//! `hash % slots`. The same slots are kept here as cumulative ends, so a
//! weight of millions costs one entry, and found by binary search.

use super::{Member, Strategy};

/// Weight units laid end to end: server `servers[i]` owns the slots from
/// `ends[i - 1]` (0 for the first) up to, not including, `ends[i]`.
#[derive(Debug, Clone)]
pub(super) struct Slots {
    ends: Vec<u32>,
    servers: Vec<u32>,
}

impl Slots {
    /// The server owning `slot`, which must be below [`Slots::total`].
    pub(super) fn owner(&self, slot: u32) -> u32 {
        self.servers[self.ends.partition_point(|&end| end <= slot)]
    }

    /// The number of slots: the live servers' total weight.
    pub(super) fn total(&self) -> u32 {
        self.ends.last().copied().unwrap_or(0)
    }
}

impl Strategy for Slots {
    fn build(live: &[Member<'_>]) -> Slots {
        let mut end = 0u32;
        let ends = live
            .iter()
            .map(|m| {
                end += m.weight;
                end
            })
            .collect();
        Slots {
            ends,
            servers: live.iter().map(|m| m.index).collect(),
        }
    }

    fn pick(&self, hash: u32, _random: u32) -> u32 {
        self.owner(hash % self.total())
    }
}
