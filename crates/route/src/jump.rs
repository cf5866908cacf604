//! Jump: Lamping and Veach's jump consistent hash ("A Fast, Minimal
//! Memory, Consistent Hash Algorithm", 2014), which twemproxy lacks.
//!
//! The jump key is the pool's 32-bit key hash, zero-extended: the
//! algorithm's linear congruential steps spread it over all 64 bits, and
//! the hash tag and empty-key rules stay those of the other
//! distributions. Buckets are the live servers' weight units, servers in
//! config order (not twemproxy's name order), so that appending a server
//! to the config, the one change jump handles gracefully, moves keys only
//! onto it.

use super::modula::Slots;
use super::{Member, Strategy};

/// Weight units of the live servers in config order.
#[derive(Debug, Clone)]
pub(super) struct Buckets {
    slots: Slots,
}

impl Strategy for Buckets {
    fn build(live: &[Member<'_>]) -> Buckets {
        let mut in_config_order = live.to_vec();
        in_config_order.sort_by_key(|m| m.index);
        Buckets {
            slots: Slots::build(&in_config_order),
        }
    }

    fn pick(&self, hash: u32, _random: u32) -> u32 {
        self.slots
            .owner(bucket(u64::from(hash), self.slots.total()))
    }
}

/// The bucket in `0..buckets` (`buckets` at least 1) that jump consistent
/// hashing gives `key`, computed as the paper's reference code does,
/// double-precision division included.
pub(crate) fn bucket(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}
