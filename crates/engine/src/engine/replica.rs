//! Replicas: reads sent by the pool's read policy, and taken back to the
//! primary (or another replica) when their replica fails.
//!
//! A shard's replicas are servers of the pool after its shards (role
//! [`Role::Replica`]); placement never sees them. A read (see
//! `Scratch::read`) goes to one of its shard's live replicas chosen by the
//! session, so one client's reads keep to one replica (they see its
//! writes in the order the replica applied them; a write the client just
//! made may not have reached it yet: no read-your-writes). A request sent
//! to a replica keeps a copy of its bytes in its slot; when the replica's
//! connection fails (killed, reset, timed out), each read it held is sent
//! again elsewhere rather than failed, and the replica is left out of
//! reads for the pool's retry time.

use ferrox_config::ReadPolicy;

use super::backend::InFlight;
use super::{Engine, Micros, Role};

impl Engine {
    /// Where a read of `shard` of `pool` goes for session `session`:
    /// by the read policy, among the shard's live replicas (and, for
    /// `any`, the shard itself), never `exclude`. `None`: the policy
    /// allows only replicas and none is up.
    pub(super) fn read_server(
        &self,
        pool: usize,
        shard: usize,
        session: usize,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let p = &self.pools[pool];
        let policy = p.spec.read_policy;
        let replica = |s: usize| {
            p.spec.servers[s].role == Role::Replica(shard) && p.live[s] && Some(s) != exclude
        };
        let servers = p.spec.servers.len();
        let primary = usize::from(policy == ReadPolicy::Any && Some(shard) != exclude);
        let up = (0..servers).filter(|&s| replica(s)).count() + primary;
        if up == 0 {
            return (policy != ReadPolicy::Replica).then_some(shard);
        }
        // The same choice for the same session while the set is the same.
        let pick = session % up;
        if pick < primary {
            return Some(shard);
        }
        (0..servers).filter(|&s| replica(s)).nth(pick - primary)
    }

    /// Whether `server` of `pool` is a replica.
    pub(super) fn is_replica(&self, pool: usize, server: usize) -> bool {
        matches!(self.pools[pool].spec.servers[server].role, Role::Replica(_))
    }

    /// Sends `request`, which replica `server` of `pool` held when its
    /// connection failed, to another server of its shard. False when it
    /// cannot go (no copy kept, its session gone, or no server left by
    /// the policy): it fails.
    pub(super) fn replica_retry(
        &mut self,
        pool: usize,
        server: usize,
        request: &InFlight,
        now: Micros,
    ) -> bool {
        let Role::Replica(shard) = self.pools[pool].spec.servers[server].role else {
            return false;
        };
        let index = request.at.session as usize;
        let Some(target) = self.read_server(pool, shard, index, Some(server)) else {
            return false;
        };
        let Some(sent) = self.kept_request(request.at) else {
            return false;
        };
        let resp3 = self.sessions[index].resp3;
        let b = self.pick_backend(pool, target, resp3, index, now);
        self.backends[b].output_tail().extend_from_slice(&sent);
        self.pools[pool].counters.replica_retries += 1;
        self.queue_on(b, request.at, request.expect, now);
        true
    }
}
