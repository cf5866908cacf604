//! Random: any live server, as twemproxy's `nc_random.c` picks it.
//!
//! twemproxy takes `random() % live servers`, one slot per server whatever
//! its weight, servers in its own (name) order. The random number is the
//! caller's, so this stays deterministic under test and free of global
//! state.

use super::{Member, Strategy};

/// The live servers, one slot each.
#[derive(Debug, Clone)]
pub(super) struct Live {
    servers: Vec<u32>,
}

impl Strategy for Live {
    fn build(live: &[Member<'_>]) -> Live {
        Live {
            servers: live.iter().map(|m| m.index).collect(),
        }
    }

    fn pick(&self, _hash: u32, random: u32) -> u32 {
        self.servers[random as usize % self.servers.len()]
    }
}
