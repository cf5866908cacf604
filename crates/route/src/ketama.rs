//! Ketama: consistent hashing on a continuum of points, as twemproxy's
//! `nc_ketama.c` builds and searches it.
//!
//! Each live server gets `floor(weight / total * 40 * live) * 4` points
//! (160 for equal weights), computed in `f32` exactly as twemproxy does so
//! rounding lands on the same counts. Point group `i` of server `name` is
//! the MD5 of `"{name}-{i}"`, cut into four little-endian 32-bit values. A
//! key belongs to the first point at or after its hash, wrapping to the
//! first point. Points are sorted stably, so equal values keep server and
//! group order: what glibc's merge-sort `qsort` gives twemproxy.

use super::{md5, Member, Strategy};

/// Points per server at equal weights.
const POINTS_PER_SERVER: f32 = 160.0;
/// Points cut from one MD5 digest.
const POINTS_PER_HASH: u32 = 4;
/// twemproxy formats `"{name}-{i}"` into a buffer of this size and hashes
/// at most its length minus the NUL.
const MAX_HOST: usize = 273;

/// The sorted continuum: point values and, at the same index, the server.
#[derive(Debug, Clone)]
pub(super) struct Continuum {
    points: Vec<u32>,
    servers: Vec<u32>,
}

/// How many points a server of `weight` gets among `live` servers of
/// `total` weight.
fn points_for(weight: u32, total: u32, live: usize) -> u32 {
    let pct = weight as f32 / total as f32;
    let share = pct * POINTS_PER_SERVER / 4.0 * live as f32;
    // twemproxy adds a `double` epsilon, rounds back to `float`, floors.
    let floored = ((f64::from(share) + 0.000_000_000_1) as f32).floor();
    (floored * 4.0) as u32
}

impl Strategy for Continuum {
    fn build(live: &[Member<'_>]) -> Continuum {
        let total = live.iter().map(|m| m.weight).sum::<u32>();
        let mut points = Vec::with_capacity(live.len() * POINTS_PER_SERVER as usize);
        let mut host = Vec::with_capacity(MAX_HOST);
        for m in live {
            for group in 0..points_for(m.weight, total, live.len()) / POINTS_PER_HASH {
                host.clear();
                host.extend_from_slice(m.name);
                host.push(b'-');
                host.extend_from_slice(group.to_string().as_bytes());
                host.truncate(MAX_HOST - 1);
                let digest = md5::digest(&host);
                for value in digest.chunks_exact(4) {
                    let value = u32::from_le_bytes([value[0], value[1], value[2], value[3]]);
                    points.push((value, m.index));
                }
            }
        }
        points.sort_by_key(|&(value, _)| value);
        Continuum {
            points: points.iter().map(|&(value, _)| value).collect(),
            servers: points.iter().map(|&(_, server)| server).collect(),
        }
    }

    fn pick(&self, hash: u32, _random: u32) -> u32 {
        let at = self.points.partition_point(|&p| p < hash);
        if at == self.points.len() {
            self.servers[0]
        } else {
            self.servers[at]
        }
    }
}

#[cfg(test)]
impl Continuum {
    /// The points in order, each with its server.
    pub(super) fn points(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.points
            .iter()
            .copied()
            .zip(self.servers.iter().copied())
    }
}
