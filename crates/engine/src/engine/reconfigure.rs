//! Live reconfiguration: a new set of pools swapped in between two
//! requests, without closing a client connection.
//!
//! Pools are matched by name and servers by address. A kept pool takes the
//! new settings (placement, limits, blocked commands, timeouts) at once; a
//! kept server keeps its connections, their requests in flight and its
//! health; a new server gets fresh connections; a removed server's
//! connections take no new request and close once they have answered the
//! ones they hold. A removed pool takes no new client: its sessions finish
//! what they asked and are closed. A pool whose protocol changed counts as
//! removed and added.

use super::{Engine, Health, Pool, PoolSpec, ServerConns};

/// What a reconfiguration changed, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub pools_added: usize,
    pub pools_removed: usize,
    pub servers_added: usize,
    pub servers_removed: usize,
}

impl Engine {
    /// Swaps in `pools` (see the module docs). Returns, for each new pool in
    /// order, its index in this engine (the runtime maps listening ports to
    /// them), and what changed.
    pub fn reconfigure(&mut self, pools: Vec<PoolSpec>) -> (Vec<usize>, Changes) {
        self.stats.reconfigurations += 1;
        let mut changes = Changes::default();
        let mut kept = vec![false; self.pools.len()];
        let mut indices = Vec::with_capacity(pools.len());
        for spec in pools {
            let old = self.pools.iter().position(|p| {
                !p.retired && p.spec.name == spec.name && p.spec.protocol == spec.protocol
            });
            let index = match old {
                Some(p) => {
                    kept[p] = true;
                    self.update_pool(p, spec, &mut changes);
                    p
                }
                None => {
                    changes.pools_added += 1;
                    changes.servers_added += spec.servers.len();
                    let p = self.add_pool(spec);
                    kept.push(true);
                    p
                }
            };
            indices.push(index);
        }
        for (p, kept) in kept.into_iter().enumerate() {
            if !kept && !self.pools[p].retired {
                changes.pools_removed += 1;
                changes.servers_removed += self.pools[p].spec.servers.len();
                self.retire_pool(p);
            }
        }
        (indices, changes)
    }

    /// Gives pool `p` its new definition, keeping what carries over.
    fn update_pool(&mut self, p: usize, mut spec: PoolSpec, changes: &mut Changes) {
        self.carry_users(p, &spec);
        // Changed rate limits start counting afresh; unchanged ones keep
        // their windows.
        let old = &self.pools[p].spec;
        if old.rate_limits != spec.rate_limits || old.users.len() != spec.users.len() {
            self.pools[p].limiter =
                super::ratelimit::Limiter::new(&spec.rate_limits, spec.users.len(), self.now);
        }
        if self.pools[p].spec.compression != spec.compression {
            self.pools[p].compression = spec
                .compression
                .as_ref()
                .map(|c| Box::new(super::compression::Compression::new(c)));
        }
        match (self.pools[p].hot.as_mut(), &spec.hot_key_cache) {
            (Some(hot), Some(config)) => hot.reconfigure(config, spec.protocol),
            (None, Some(config)) => {
                self.pools[p].hot = Some(Box::new(super::hot::Hot::new(config, spec.protocol)))
            }
            (Some(_), None) => {
                self.pools[p].hot = None;
                let tracking: Vec<u32> = self.pools[p]
                    .conns
                    .iter_mut()
                    .filter_map(|c| c.tracking.take())
                    .collect();
                for b in tracking {
                    self.backend_retire(b as usize);
                }
            }
            (None, None) => {}
        }
        // Entries name their server by index, which may change.
        let old_addrs: Vec<_> = self.pools[p].spec.servers.iter().map(|s| s.addr).collect();
        if let Some(hot) = self.pools[p].hot.as_mut() {
            if spec.servers.iter().map(|s| s.addr).ne(old_addrs) {
                hot.cache.clear();
            }
        }
        let cluster = match (spec.cluster, self.pools[p].cluster.take()) {
            (true, Some(cluster)) => {
                // The nodes it learnt stay, in their order (the map names
                // them by index); seeds it did not know join them.
                let mut servers = self.pools[p].spec.servers.clone();
                for seed in std::mem::take(&mut spec.servers) {
                    if !servers.iter().any(|s| s.addr == seed.addr) {
                        servers.push(seed);
                    }
                }
                spec.servers = servers;
                Some(cluster)
            }
            (true, None) => Some(Box::new(super::cluster::Cluster::new())),
            (false, _) => None,
        };
        // The same sentinels and masters: what Sentinel said stays (the
        // primaries, replicas and sentinels in their places); else it is
        // asked afresh.
        let old = &self.pools[p].spec;
        let same_sentinels = old.sentinels == spec.sentinels && old.masters == spec.masters;
        let sentinel = match self.pools[p].sentinel.take() {
            Some(sentinel) if same_sentinels && sentinel.masters() == spec.masters => {
                spec.servers = self.pools[p].spec.servers.clone();
                Some(sentinel)
            }
            _ => None,
        };
        let mut old_conns: Vec<Option<ServerConns>> = std::mem::take(&mut self.pools[p].conns)
            .into_iter()
            .map(Some)
            .collect();
        let old_health = std::mem::take(&mut self.pools[p].health);
        let old_servers = std::mem::take(&mut self.pools[p].spec.servers);
        let mut conns: Vec<Option<ServerConns>> = Vec::with_capacity(spec.servers.len());
        let mut health = Vec::with_capacity(spec.servers.len());
        for server in &spec.servers {
            let old = old_servers
                .iter()
                .enumerate()
                .position(|(o, s)| s.addr == server.addr && old_conns[o].is_some());
            match old {
                Some(o) => {
                    conns.push(old_conns[o].take());
                    health.push(old_health[o]);
                }
                None => {
                    changes.servers_added += 1;
                    conns.push(None);
                    health.push(Health::default());
                }
            }
        }
        // Connections of servers that left.
        for gone in old_conns.into_iter().flatten() {
            changes.servers_removed += 1;
            for &b in gone.plain.iter().chain(&gone.resp3).chain(&gone.tracking) {
                self.backend_retire(b as usize);
            }
        }
        let live: Vec<bool> = health.iter().map(Health::is_live).collect();
        let pool = &mut self.pools[p];
        pool.spec = spec;
        pool.health = health;
        pool.live = live;
        pool.place_live();
        // Kept servers may have moved in the list, or changed how many
        // connections they want.
        let mut all = Vec::with_capacity(conns.len());
        for (s, kept) in conns.into_iter().enumerate() {
            let conns = match kept {
                Some(kept) => self.resize_conns(p, s, kept),
                None => self.server_conns(p, s),
            };
            all.push(conns);
        }
        self.pools[p].conns = all;
        self.pools[p].cluster = cluster;
        self.cluster_set_live(p);
        let sentinels = self.pools[p].spec.sentinels.clone();
        match sentinel {
            Some(sentinel) => self.pools[p].sentinel = Some(sentinel),
            None if !sentinels.is_empty() => self.sentinel_start(p, &sentinels),
            None => {}
        }
    }

    /// Sessions of pool `p` authenticated as a user keep it (and take its
    /// new permissions at their next command) if `spec` still has a user
    /// of that name; else they must authenticate again. As in Redis, a
    /// changed password leaves authenticated connections as they are.
    fn carry_users(&mut self, p: usize, spec: &PoolSpec) {
        let old = &self.pools[p].spec;
        let names: Vec<String> = old.users.iter().map(|u| u.name.clone()).collect();
        let needs_auth = spec.needs_auth();
        for session in self.sessions.iter_mut().filter(|s| s.is_in(p)) {
            if let Some(user) = session.user {
                let name = &names[user as usize];
                session.user = spec
                    .users
                    .iter()
                    .position(|u| u.name == *name)
                    .map(|i| i as u16);
                if session.user.is_none() {
                    session.deauthenticate(needs_auth);
                }
            }
        }
    }

    /// A kept server's connections, renumbered to index `s` and grown or
    /// shrunk to the pool's `server_connections`.
    fn resize_conns(&mut self, p: usize, s: usize, mut conns: ServerConns) -> ServerConns {
        let want = self.pools[p].spec.server_connections.max(1);
        for list in [&mut conns.plain, &mut conns.resp3] {
            for &b in list.iter() {
                self.backends[b as usize].renumber(s);
            }
        }
        if let Some(b) = conns.tracking {
            self.backends[b as usize].renumber(s);
        }
        let resp3 = !conns.resp3.is_empty();
        for (list, is_resp3) in [(&mut conns.plain, false), (&mut conns.resp3, true)] {
            if is_resp3 && !resp3 {
                continue;
            }
            while list.len() > want {
                let b = list.pop().expect("longer than wanted");
                self.backend_retire(b as usize);
            }
            while list.len() < want {
                list.push(self.new_backend(p, s, is_resp3));
            }
        }
        conns
    }

    /// Pool `p` left the configuration.
    fn retire_pool(&mut self, p: usize) {
        let pool: &mut Pool = &mut self.pools[p];
        pool.retired = true;
        let conns = std::mem::take(&mut pool.conns);
        for b in conns
            .iter()
            .flat_map(|c| c.plain.iter().chain(&c.resp3).chain(&c.tracking))
        {
            self.backend_retire(*b as usize);
        }
        for index in 0..self.sessions.len() {
            if self.sessions[index].is_in(p) {
                self.session_peer_closed(index);
            }
        }
    }
}
