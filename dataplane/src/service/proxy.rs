//! The proxy on the stack: `ferrox-proxy`'s engine behind [`App`].
//!
//! Each core runs its own engine with its own backend connections
//! (shared-nothing); a connection the engine opens gets a local port whose
//! flow hashes to the same core, so replies come back to it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferrox_block::{Block, CoreRecord, Counter};
use ferrox_config::{self as config, Config};
use ferrox_engine::{configure, Action, Engine, Handle, PoolSpec, Tag};
use smoltcp::wire::Ipv4Address;

use crate::lcore::CoreService;
use crate::net::stack::{App, Carry};
use ferrox_handover::record::name_hash;

/// One core's proxy.
#[derive(Debug)]
pub struct Proxy {
    engine: Engine,
    /// Listening port → pool.
    ports: Vec<(u16, usize)>,
    /// The engine's index of each pool of the running configuration.
    pool_index: Vec<usize>,
    reload: Option<CoreReload>,
    /// When the proxy started, and when `INFO`'s dataplane-wide figures
    /// were last taken (with the requests counted then, for the rate).
    started: std::time::Instant,
    totals_taken: Option<(std::time::Instant, u64)>,
}

/// How often a core takes the dataplane-wide figures `INFO` shows.
const TOTALS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a core finds new configurations, and (under a control process)
/// where it reports.
#[derive(Debug)]
struct CoreReload {
    board: Arc<ReloadBoard>,
    /// The version this core runs.
    version: u64,
    cores: usize,
    core: usize,
    /// The control process's block: the core records there which
    /// configuration it runs, reads the held-out servers and publishes
    /// its statistics.
    block: Option<Block>,
    /// The held-out board's sequence and the configuration version when
    /// this core last applied it.
    held_out_seen: (u64, u64),
}

/// A validated configuration published to every core: each takes it at
/// its next safe point (between two bursts), so no core ever runs half of
/// one, and none waits for another. It is the only way configurations
/// reach the cores: one thread reads and checks each configuration once
/// (the control block's follower, or the SIGHUP reloader) and publishes
/// it here.
#[derive(Debug, Default)]
pub struct ReloadBoard {
    version: AtomicU64,
    latest: Mutex<Option<Arc<Loaded>>>,
}

impl ReloadBoard {
    /// Publishes `loaded` as `version` (the control block's, so that what
    /// a core records as applied is what the control process published).
    pub fn publish_as(&self, version: u64, loaded: Loaded) {
        let mut latest = self.latest.lock().expect("no core panics holding it");
        *latest = Some(Arc::new(loaded));
        // Under the lock, so a core that sees the version sees the config.
        self.version.store(version, Ordering::Release);
    }

    /// Publishes `loaded` as the next version; returns it.
    pub fn publish(&self, loaded: Loaded) -> u64 {
        let version = self.version() + 1;
        self.publish_as(version, loaded);
        version
    }

    /// The version last published (0: none since start).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    fn latest(&self) -> Option<(u64, Arc<Loaded>)> {
        let latest = self.latest.lock().expect("no core panics holding it");
        Some((self.version(), latest.clone()?))
    }
}

/// Until `stop`: reads each configuration the control process publishes
/// in `block`, checks it for the dataplane answering on `address`, and
/// publishes it on `board`, starting after `version` (what the cores were
/// built with). A configuration that fails the check is logged and left
/// out: the cores keep what they run, and the control process, which
/// checked it the same way, sees them never apply it.
#[allow(clippy::disallowed_methods)] // a follower thread, not a poll loop
pub fn follow_block(
    block: &Block,
    board: &ReloadBoard,
    address: Ipv4Address,
    mut version: u64,
    stop: &std::sync::atomic::AtomicBool,
) {
    // Configurations are rare; a change reaches the cores within about a
    // millisecond of being published.
    const POLL: std::time::Duration = std::time::Duration::from_millis(1);
    let mut text = String::new();
    let mut log_filter = 0;
    while !stop.load(Ordering::Relaxed) {
        // The log filter the control process published (`ferroxctl
        // log-level`), once per change; the one published before this
        // process started too.
        let published = block.log_filter_sequence();
        if published != log_filter && published > 0 {
            if let Some((sequence, filter)) = block.log_filter() {
                log_filter = sequence;
                match ferrox_log::set_level(&filter) {
                    Ok(()) => {
                        tracing::info!(%filter, "log filter from the control process");
                        tracing::debug!(process = "dataplane", "log filter in force");
                    }
                    Err(why) => tracing::warn!("log filter {filter:?} refused: {why}"),
                }
            }
        }
        if block.config_version() == version {
            std::thread::sleep(POLL);
            continue;
        }
        let (read, loaded) = read_block(block, address, &mut text);
        version = read;
        match loaded {
            Ok(loaded) => board.publish_as(version, loaded),
            Err(error) => tracing::error!(version, "configuration refused: {error:#}"),
        }
    }
}

impl Proxy {
    /// Sets the overload watermarks.
    pub fn with_overload(mut self, overload: ferrox_config::Overload) -> Proxy {
        self.engine.set_overload(overload);
        self
    }

    /// A proxy for `pools`, the pool of each listening port in `ports`.
    pub fn new(pools: Vec<PoolSpec>, ports: Vec<(u16, usize)>, seed: u64) -> Proxy {
        Proxy {
            pool_index: (0..pools.len()).collect(),
            engine: Engine::new(pools, seed),
            ports,
            reload: None,
            started: std::time::Instant::now(),
            totals_taken: None,
        }
    }

    /// Gives the engine every core's figures for `INFO`, once a
    /// [`TOTALS_EVERY`], under a control process (whose block holds every
    /// core's record); alone, `INFO` shows this core's own.
    fn take_totals(&mut self) {
        let Some(block) = self.reload.as_ref().and_then(|r| r.block.as_ref()) else {
            return;
        };
        let now = std::time::Instant::now();
        if self
            .totals_taken
            .is_some_and(|(at, _)| now.duration_since(at) < TOTALS_EVERY)
        {
            return;
        }
        let snapshot = block.snapshot();
        let pools = snapshot.pools();
        let requests = snapshot.total(Counter::Requests);
        let ops_per_sec = self.totals_taken.map_or(0, |(at, before)| {
            (requests.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64()) as u64
        });
        self.totals_taken = Some((now, requests));
        self.engine.set_totals(ferrox_engine::Totals {
            cores: snapshot.cores.len() as u64,
            uptime_s: self.started.elapsed().as_secs(),
            connected_clients: pools.iter().map(|p| p.sessions).sum(),
            total_connections: snapshot.total(Counter::Accepted),
            total_commands: requests,
            ops_per_sec,
            error_replies: snapshot.total(Counter::Errors),
            net_input_bytes: pools.iter().map(|p| p.bytes_in).sum(),
            net_output_bytes: pools.iter().map(|p| p.bytes_out).sum(),
            used_memory: resident_bytes(),
            rejected_connections: snapshot.total(Counter::Refused)
                + snapshot.total(Counter::LimitDrops)
                + snapshot.total(Counter::BacklogDrops),
            commands: snapshot.commands(),
        });
    }

    /// Takes new configurations from `board`, as core `core` of `cores`,
    /// starting with version `version`; under a control process, records
    /// what it runs in `block`, takes the held-out servers from there and
    /// publishes its statistics there.
    pub fn with_board(
        mut self,
        board: Arc<ReloadBoard>,
        version: u64,
        block: Option<Block>,
        core: usize,
        cores: usize,
    ) -> Proxy {
        if let Some(block) = &block {
            block.set_applied(core, version);
        }
        // Writes through one core drop hot keys on the others.
        self.engine.set_peers(cores > 1);
        self.reload = Some(CoreReload {
            board,
            version,
            cores,
            core,
            block,
            held_out_seen: (0, 0),
        });
        self
    }

    /// Takes the control process's held-out servers when its board moved
    /// or this core took a new configuration: one load per loop otherwise.
    /// Masks published for another configuration wait for the next
    /// publish, which the control process makes after every configuration.
    fn poll_held_out(&mut self) {
        let Some(CoreReload {
            block: Some(block),
            version,
            held_out_seen,
            ..
        }) = &mut self.reload
        else {
            return;
        };
        let seen = (block.held_out_sequence(), *version);
        if seen == *held_out_seen {
            return;
        }
        *held_out_seen = seen;
        let held = block.held_out();
        if held.config_version != *version {
            return;
        }
        for (config_pool, &engine_pool) in self.pool_index.iter().enumerate() {
            let mask = held.masks.get(config_pool).copied().unwrap_or(0);
            self.engine.hold_out(engine_pool, mask);
        }
    }
}

/// A configuration checked against the dataplane it will run on.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Listening port → pool index.
    pub ports: Vec<(u16, usize)>,
}

impl Loaded {
    /// The engine's pools for one of `cores` cores (each core routes on
    /// its own). A pool's client connection limit is shared out among the
    /// cores.
    pub fn pools(&self, cores: usize) -> Vec<PoolSpec> {
        let mut pools = configure::pools(&self.config).expect("checked by load");
        for pool in &mut pools {
            pool.client_connections = pool.client_connections.div_ceil(cores.max(1));
        }
        pools
    }

    /// The overload watermarks (each core applies them to itself).
    pub fn overload(&self) -> ferrox_config::Overload {
        self.config.overload.clone()
    }

    /// The largest handshake backlog any pool asks for.
    pub fn backlog(&self) -> usize {
        self.config
            .pools
            .iter()
            .map(|p| p.backlog as usize)
            .max()
            .unwrap_or(0)
    }
}

/// Reads and validates the configuration at `path` for a dataplane
/// answering on `address`: every error names the file, the line and the
/// reason.
pub fn load(path: &Path, address: Ipv4Address) -> anyhow::Result<Loaded> {
    let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    check(config, address, &path.display().to_string())
}

/// Reads the configuration the control process published in `block`, and
/// its version.
pub fn load_block(block: &Block, address: Ipv4Address) -> anyhow::Result<(u64, Loaded)> {
    let (version, loaded) = read_block(block, address, &mut String::new());
    anyhow::ensure!(
        version > 0,
        "the control process has published no configuration"
    );
    Ok((version, loaded?))
}

/// The configuration published in `block` (read into `text`), its
/// version, and whether it checks for the dataplane answering on
/// `address`.
fn read_block(
    block: &Block,
    address: Ipv4Address,
    text: &mut String,
) -> (u64, anyhow::Result<Loaded>) {
    let version = block.read_config(text);
    let loaded = config::parse_toml(text, "<control block>")
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|config| check(config, address, "<control block>"));
    (version, loaded)
}

/// Checks a parsed configuration against the dataplane: its pools must
/// build, and listen on the dataplane's address (or 0.0.0.0), as the
/// control process checks them.
fn check(config: Config, address: Ipv4Address, source: &str) -> anyhow::Result<Loaded> {
    configure::pools(&config)?;
    config::check_listen(&config, address, source).map_err(anyhow::Error::msg)?;
    let ports = config
        .pools
        .iter()
        .enumerate()
        .map(|(i, pool)| (pool.listen.port(), i))
        .collect();
    Ok(Loaded { config, ports })
}

/// The process's resident memory (`/proc/self/statm`), 0 when unknown:
/// what `INFO` calls `used_memory` for the proxy.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * rustix::param::page_size() as u64
}

/// Copies one pool's figures into its shared record. `to_unix_us` turns
/// an engine time into microseconds since the Unix epoch.
fn publish_pool(
    slot: &ferrox_block::PoolRecord,
    pool: &ferrox_engine::PoolView<'_>,
    to_unix_us: impl Fn(u64) -> u64,
) {
    const _: () = assert!(ferrox_engine::LATENCY_BUCKETS == ferrox_block::LATENCY_BUCKETS);
    if !slot.name_is(pool.name) {
        slot.set_name(pool.name);
    }
    let c = pool.counters;
    slot.requests.store(c.requests, Ordering::Relaxed);
    slot.errors.store(c.errors, Ordering::Relaxed);
    slot.bytes_in.store(c.bytes_in, Ordering::Relaxed);
    slot.bytes_out.store(c.bytes_out, Ordering::Relaxed);
    slot.sessions.store(pool.sessions as u64, Ordering::Relaxed);
    for (shared, &n) in slot.latency.iter().zip(&c.latency) {
        shared.store(n, Ordering::Relaxed);
    }
    slot.latency_sum_us
        .store(c.latency_sum_us, Ordering::Relaxed);
    slot.client_eof.store(c.client_eof, Ordering::Relaxed);
    slot.client_err.store(c.client_err, Ordering::Relaxed);
    slot.forward_errors
        .store(c.forward_errors, Ordering::Relaxed);
    slot.fragments.store(c.fragments, Ordering::Relaxed);
    slot.server_ejects.store(c.server_ejects, Ordering::Relaxed);
    slot.acl_refused.store(c.acl_refused, Ordering::Relaxed);
    slot.validation_refused
        .store(c.validation_refused, Ordering::Relaxed);
    slot.rate_limited.store(c.rate_limited, Ordering::Relaxed);
    slot.overload_refused
        .store(c.overload_refused, Ordering::Relaxed);
    slot.replica_retries
        .store(c.replica_retries, Ordering::Relaxed);
    for (record, feature) in slot.features.iter().zip(ferrox_block::FEATURES) {
        let value = match feature.name {
            "compressed_values" => c.compressed_values,
            "compressed_bytes_in" => c.compressed_bytes_in,
            "compressed_bytes_out" => c.compressed_bytes_out,
            "decompressed_values" => c.decompressed_values,
            "corrupt_values" => c.corrupt_values,
            "compression_ns" => c.compress_ns,
            "cache_hits" => c.cache_hits,
            "cache_misses" => c.cache_misses,
            "cache_fills" => c.cache_fills,
            "cache_evictions" => c.cache_evictions,
            "cache_invalidations_write" => c.cache_invalidations_write,
            "cache_invalidations_server" => c.cache_invalidations_server,
            "cache_invalidations_lost" => c.cache_invalidations_lost,
            "cache_expirations" => c.cache_expirations,
            "cache_memory_bytes" => c.cache_memory,
            "hot_keys" => c.hot_keys,
            _ => 0,
        };
        record.store(value, Ordering::Relaxed);
    }
    slot.set_hot_keys(pool.hot_keys());
    let mut count = 0;
    for (record, server) in slot.servers.iter().zip(pool.servers()) {
        if record.addr() != server.addr {
            // Another server took this place (a reconfiguration).
            record.ejected_at_us.store(0, Ordering::Relaxed);
            record.set_addr(server.addr);
        }
        for (field, value) in [
            (&record.requests, server.requests),
            (&record.request_bytes, server.request_bytes),
            (&record.responses, server.responses),
            (&record.response_bytes, server.response_bytes),
            (&record.failures, server.failures),
            (&record.timeouts, server.timeouts),
            (&record.eofs, server.eofs),
            (&record.connections, server.connections),
            (&record.in_flight, server.in_flight),
            (&record.ejected, server.ejected.into()),
        ] {
            field.store(value, Ordering::Relaxed);
        }
        // The time of the latest ejection stays after the server is back,
        // as twemproxy's `server_ejected_at` does.
        if let Some(since) = server.ejected_since {
            record
                .ejected_at_us
                .store(to_unix_us(since), Ordering::Relaxed);
        }
        count += 1;
    }
    slot.server_count.store(count, Ordering::Relaxed);
}

impl App for Proxy {
    fn accept(&mut self, handle: Handle, local_port: u16) -> Option<Tag> {
        let &(_, pool) = self.ports.iter().find(|(port, _)| *port == local_port)?;
        self.engine.accept(pool, handle)
    }

    fn bind(&mut self, tag: Tag, handle: Handle) {
        self.engine.bind(tag, handle);
    }

    fn handle_input(&mut self, tag: Tag, data: &[u8], now: u64) -> usize {
        self.engine.handle_input(tag, data, now)
    }

    fn wants_input(&self, tag: Tag) -> bool {
        self.engine.wants_input(tag)
    }

    fn output(&mut self, tag: Tag) -> &[u8] {
        self.engine.output(tag)
    }

    fn output_acked(&mut self, tag: Tag, n: usize) {
        self.engine.output_acked(tag, n);
    }

    fn begin_drain(&mut self) {
        self.engine.begin_drain();
    }

    fn end_drain(&mut self) {
        self.engine.end_drain();
    }

    fn drained(&self) -> bool {
        self.engine.drained()
    }

    fn export(&mut self, tag: Tag) -> Option<Carry> {
        let carried = self.engine.export_session(tag)?;
        let pool = self.engine.pools().nth(carried.pool)?;
        let user_name_hash = carried
            .user
            .and_then(|u| pool.user_name(u as usize))
            .map_or(0, name_hash);
        Some(Carry {
            pool: carried.pool as u32,
            pool_name_hash: name_hash(pool.name),
            user_name_hash,
            resp3: carried.resp3,
            authed: carried.authed,
            peer_closed: carried.peer_closed,
            closing: carried.closing,
        })
    }

    fn import(&mut self, handle: Handle, carry: Carry, output: &[u8]) -> Option<Tag> {
        // The pool by name: its index may have moved with a new
        // configuration.
        let pool = self
            .engine
            .pools()
            .position(|pool| name_hash(pool.name) == carry.pool_name_hash)?;
        // The user by name; one the configuration no longer has must
        // authenticate again.
        let user = match carry.user_name_hash {
            0 => None,
            hash => self
                .engine
                .pools()
                .nth(pool)?
                .user_names()
                .position(|name| name_hash(name) == hash)
                .map(|u| u as u16),
        };
        let known_user = carry.user_name_hash == 0 || user.is_some();
        let carried = ferrox_engine::Carried {
            pool,
            resp3: carry.resp3,
            authed: carry.authed && known_user,
            user,
            peer_closed: carry.peer_closed,
            closing: carry.closing,
        };
        self.engine.import_session(handle, carried, output)
    }

    fn handle_connected(&mut self, tag: Tag, now: u64) {
        self.engine.handle_connected(tag, now);
    }

    fn handle_peer_closed(&mut self, tag: Tag, now: u64) {
        self.engine.handle_peer_closed(tag, now);
    }

    fn handle_gone(&mut self, tag: Tag, handle: Handle, now: u64) {
        self.engine.handle_gone(tag, handle, now);
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.engine.poll_action()
    }

    fn has_actions(&self) -> bool {
        self.engine.has_actions()
    }

    fn poll_timeout(&self) -> Option<u64> {
        self.engine.poll_timeout()
    }

    fn handle_timeout(&mut self, now: u64) {
        self.engine.handle_timeout(now);
    }
}

impl CoreService for Proxy {
    fn start(&mut self, now: u64) {
        // Pools that preconnect open their connections now, from the core
        // that will own them.
        self.engine.preconnect(now);
    }

    fn poll_reconfigure(&mut self) -> Option<Vec<u16>> {
        let reload = self.reload.as_mut()?;
        let mut ports = None;
        if reload.board.version() != reload.version {
            if let Some((version, loaded)) = reload.board.latest() {
                reload.version = version;
                let (indices, changes) = self.engine.reconfigure(loaded.pools(reload.cores));
                self.engine.set_overload(loaded.overload());
                self.ports = loaded
                    .ports
                    .iter()
                    .map(|&(port, pool)| (port, indices[pool]))
                    .collect();
                self.pool_index = indices;
                if let Some(block) = &reload.block {
                    block.set_applied(reload.core, version);
                }
                if reload.core == 0 {
                    tracing::info!(version, ?changes, "configuration reloaded");
                }
                ports = Some(self.ports.iter().map(|&(port, _)| port).collect());
            }
        }
        self.poll_held_out();
        ports
    }

    fn take_peer_messages(&mut self, each: &mut dyn FnMut(&[u8])) {
        self.engine.take_peer_invalidations(each);
    }

    fn peer_message(&mut self, message: &[u8]) {
        self.engine.handle_peer_invalidation(message);
    }

    fn publish(&mut self, record: &CoreRecord) {
        self.take_totals();
        let engine = self.engine.stats();
        record.set_all([
            (Counter::Requests, engine.requests),
            (Counter::Errors, engine.errors),
            (Counter::SplitRequests, engine.split_requests),
            (Counter::BackendConnects, engine.backend_connects),
            (Counter::BackendFailures, engine.backend_failures),
            (Counter::Timeouts, engine.timeouts),
            (Counter::Ejections, engine.ejections),
            (Counter::Reconfigurations, engine.reconfigurations),
            (Counter::ConnectRetries, engine.connect_retries),
        ]);
        let (in_flight, buffered) = self.engine.load();
        record.set_all([
            (Counter::InFlight, in_flight as u64),
            (Counter::ClientBuffered, buffered as u64),
        ]);
        const _: () = assert!(ferrox_engine::command::COMMAND_IDS == ferrox_block::COMMANDS);
        for (shared, &n) in record.commands.iter().zip(&engine.commands) {
            shared.store(n, Ordering::Relaxed);
        }
        let mut slots = record.pools.iter();
        let engine_now = self.engine.now();
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let to_unix_us = |at: u64| unix_now.saturating_sub(engine_now.saturating_sub(at));
        for pool in self.engine.pools() {
            let Some(slot) = slots.next() else { break };
            publish_pool(slot, &pool, to_unix_us);
        }
        for unused in slots {
            unused.name_len.store(0, Ordering::Relaxed);
        }
    }
}
