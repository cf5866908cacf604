//! The control process: owns the shared region (control block and socket
//! buffer pool), publishes configurations, runs health checks, samples
//! statistics, and answers the admin socket and the metrics endpoint.
//!
//! Threads, none on a data path: the admin socket and the metrics
//! endpoint (a thread per client, each read under a deadline, so a silent
//! client holds up nobody else), the health checker, the sampler
//! (statistics and the socket pool's growth), the reloader (SIGHUP) and
//! the main thread, which supervises the dataplane process and watches its
//! cores' heartbeats ([`Control::watch`]). State they share sits behind one
//! mutex each; a publish to the control block happens under the `running`
//! lock, so the block has one writer at a time.
#![allow(clippy::disallowed_methods)] // threads of a manager process sleep; no poll loop here

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrox_block::{Block, Counter, Snapshot};
use ferrox_config::{self as config, Config};
use hugepage_pool::pool::Pool;

use crate::admin::{self, Request, Response};
use crate::health::{self, Event, Health};
use crate::metrics::{self, Sample};
use crate::running::{self, Change, Refused};

/// Whether class `class` of a socket pool with `classes` classes holds
/// client buffers. The dataplane's `net::memory` orders classes by chunk
/// size, and server buffers (256 KiB) are larger than any client buffer
/// (at most 128 KiB), so the last class is the servers' and the others
/// (receive and send, or one class when both are the same size) the
/// clients'.
fn is_client_class(class: usize, classes: usize) -> bool {
    class + 1 < classes
}

/// What `config show` prints for a password.
const REDACTED: &str = "(redacted)";

/// How long a change waits for every core to take it.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// A core counts as alive while its heartbeat moved this recently (a
/// healthy core beats at least every ~100 ms).
const ALIVE: Duration = Duration::from_secs(1);

/// How long a metrics client has to send its request head, and an admin
/// client to finish a request line once it began.
const READ_DEADLINE: Duration = Duration::from_secs(2);

/// How long an admin connection may sit idle between requests.
const ADMIN_IDLE: Duration = Duration::from_secs(60);

/// Clients served at once (a thread each); more are turned away.
const MAX_ADMIN_CLIENTS: usize = 64;
const MAX_METRICS_CLIENTS: usize = 64;

/// What the control process was started with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_file: PathBuf,
    /// The dataplane's address: pools must listen on it or 0.0.0.0.
    pub address: Ipv4Addr,
    pub health_interval: Duration,
    /// Grow the socket pool when fewer than this share of client chunks is
    /// free.
    pub grow_below: f64,
    /// A core whose heartbeat stands still this long, once the dataplane
    /// served, is stuck; `None`: no watchdog.
    pub stall: Option<Duration>,
    /// The dataplane runs with `--test-hooks`: `debug.stall_core` is
    /// allowed.
    pub test_hooks: bool,
}

/// The running configuration and where it came from.
#[derive(Debug)]
struct Running {
    config: Config,
    file: PathBuf,
    version: u64,
}

/// The dataplane process as the supervisor sees it.
#[derive(Debug, Default)]
pub struct DataplaneState {
    pub pid: Option<u32>,
    pub restarts: u64,
    /// Dataplanes killed for a stuck core.
    pub stalls: u64,
    /// The binary it runs, and the hot handovers so far.
    pub binary: PathBuf,
    pub generation: u64,
    /// The step of a hot upgrade under way, for `status`.
    pub upgrade: Option<&'static str>,
    /// The port holder's pid, where one holds the port.
    pub port_holder_pid: Option<u32>,
    /// Times the port holder was started again after it exited.
    pub port_holder_restarts: u64,
}

/// An operator's request for a hot handover, for the supervisor (the
/// thread that starts dataplanes) to carry out; the result goes back on
/// `reply`.
#[derive(Debug)]
pub struct UpgradeJob {
    pub binary: PathBuf,
    pub timeout: Duration,
    /// The drain the running dataplane is asked for (`None`: its own).
    pub drain: Option<Duration>,
    pub reply: std::sync::mpsc::Sender<Result<serde_json::Value, String>>,
}

/// The watchdog's view of the running dataplane's cores, reset when one
/// starts.
#[derive(Debug)]
struct Watch {
    /// Per core: the heartbeat last seen, and when it last moved (or when
    /// watching began).
    beats: Vec<(u64, Instant)>,
    /// Per core: whether its heartbeat moved since the dataplane started.
    published: Vec<bool>,
    /// When a core of this dataplane first ran a configuration (its port
    /// is up): the watchdog's clock starts there.
    served: Option<Instant>,
}

impl Watch {
    fn new(beats: Vec<u64>, now: Instant) -> Watch {
        Watch {
            published: vec![false; beats.len()],
            beats: beats.into_iter().map(|b| (b, now)).collect(),
            served: None,
        }
    }

    /// Takes the heartbeats and configuration versions read `now`; returns
    /// the core silent longest and for how long, once the dataplane served.
    fn update(
        &mut self,
        beats: &[u64],
        applied: &[u64],
        now: Instant,
    ) -> Option<(usize, Duration)> {
        for ((seen, published), &beat) in self.beats.iter_mut().zip(&mut self.published).zip(beats)
        {
            if beat != seen.0 {
                *seen = (beat, now);
                *published = true;
            }
        }
        if self.served.is_none() && applied.iter().any(|&v| v > 0) {
            // Start-up allowance: every core gets the whole stall time from
            // here, published yet or not.
            self.served = Some(now);
            for seen in &mut self.beats {
                seen.1 = now;
            }
        }
        self.served?;
        self.beats
            .iter()
            .enumerate()
            .map(|(core, (_, at))| (core, now.saturating_duration_since(*at)))
            .max_by_key(|&(_, silent)| silent)
    }
}

/// A core whose heartbeat stood still for `silent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    pub core: usize,
    pub silent: Duration,
    /// Whether the core ever published since this dataplane started.
    pub published: bool,
}

/// The control process's shared state.
#[derive(Debug)]
pub struct Control {
    settings: Settings,
    block: Block,
    running: Mutex<Running>,
    health: Mutex<Health>,
    /// The statistics of the sampling tick before the last, and when:
    /// rates are taken from there to now (one to two seconds).
    rate_base: Mutex<Option<(Snapshot, Instant)>>,
    /// The cores' heartbeats.
    watch: Mutex<Watch>,
    pub dataplane: Mutex<DataplaneState>,
    started: Instant,
    pub stop: Arc<AtomicBool>,
    /// Set by SIGHUP: read the configuration file again.
    pub reload_requested: Arc<AtomicBool>,
    /// A hot handover asked for and not yet taken up by the supervisor.
    upgrade: Mutex<Option<UpgradeJob>>,
    /// systemd's notification socket, when systemd started this process.
    notifier: Option<crate::notify::Notifier>,
    /// When the supervisor (the thread that starts and watches dataplanes)
    /// last went round its loop.
    supervisor_beat: Mutex<Instant>,
}

/// How the supervisor's answer to an upgrade begins when the upgrade was
/// carried out and failed (rather than refused: "upgrade refused").
pub const UPGRADE_FAILED: &str = "upgrade failed";
const SUPERVISOR_SILENT: &str = "the supervisor did not answer";

/// The longest the supervisor may be away from its loop (a step of an
/// upgrade waits up to its timeout) before systemd's watchdog is no
/// longer fed; likewise a dataplane that has not published since it
/// started.
const SUPERVISION_GRACE: Duration = Duration::from_secs(60);

impl Control {
    /// Validates `settings.config_file` and publishes it as the first
    /// configuration in `block`.
    pub fn start(settings: Settings, block: Block) -> anyhow::Result<Arc<Control>> {
        let file = settings.config_file.clone();
        let config = read_config(&file, settings.address)?;
        let cores = block.cores();
        let control = Arc::new(Control {
            settings,
            block,
            running: Mutex::new(Running {
                config: config.clone(),
                file,
                version: 0,
            }),
            health: Mutex::new(Health::default()),
            rate_base: Mutex::new(None),
            watch: Mutex::new(Watch::new(vec![0; cores], Instant::now())),
            dataplane: Mutex::new(DataplaneState::default()),
            started: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            reload_requested: Arc::new(AtomicBool::new(false)),
            upgrade: Mutex::new(None),
            notifier: crate::notify::Notifier::from_env(),
            supervisor_beat: Mutex::new(Instant::now()),
        });
        {
            let mut running = control.running.lock().expect("not poisoned");
            control.publish(&mut running, config)?;
        }
        Ok(control)
    }

    pub fn block(&self) -> &Block {
        &self.block
    }

    /// Publishes `config` and the held-out servers in its order.
    fn publish(&self, running: &mut Running, config: Config) -> Result<u64, Refused> {
        let text = config::emit_toml(&config);
        let version = self
            .block
            .publish_config(&text)
            .map_err(|e| Refused(e.to_string()))?;
        let mut health = self.health.lock().expect("not poisoned");
        health.retain(&config);
        self.block.publish_held_out(version, &health.masks(&config));
        running.config = config;
        running.version = version;
        Ok(version)
    }

    /// Republishes the held-out board after a health change.
    fn publish_health(&self) {
        let running = self.running.lock().expect("not poisoned");
        let health = self.health.lock().expect("not poisoned");
        self.block
            .publish_held_out(running.version, &health.masks(&running.config));
    }

    /// Waits (bounded) until every core runs `version`.
    fn wait_applied(&self, version: u64) -> bool {
        let deadline = Instant::now() + APPLY_WAIT;
        loop {
            if self.block.applied().iter().all(|&v| v >= version) {
                return true;
            }
            if Instant::now() >= deadline || self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Makes `change` and publishes the result.
    fn change(&self, change: Change) -> Result<serde_json::Value, Refused> {
        let version = {
            let mut running = self.running.lock().expect("not poisoned");
            let next = running::apply(&running.config, &change, self.settings.address)?;
            self.publish(&mut running, next)?
        };
        tracing::info!(version, ?change, "configuration changed");
        Ok(self.applied_result(version))
    }

    fn applied_result(&self, version: u64) -> serde_json::Value {
        let applied = self.wait_applied(version);
        serde_json::json!({ "version": version, "applied": applied, "cores": self.block.applied() })
    }

    /// Reads the configuration file again (or `path`, which becomes it).
    /// A refusal is logged whoever asked (`ferroxctl config reload`, which
    /// is also `systemctl reload`, or SIGHUP), so the journal has it.
    fn reload(&self, path: Option<String>) -> Result<serde_json::Value, Refused> {
        let version = {
            let mut running = self.running.lock().expect("not poisoned");
            let file = path.map_or_else(|| running.file.clone(), PathBuf::from);
            let published = read_config(&file, self.settings.address)
                .map_err(|e| Refused(format!("{e:#}")))
                .and_then(|config| {
                    running.file = file;
                    self.publish(&mut running, config)
                });
            if let Err(refused) = &published {
                tracing::error!(
                    version = running.version,
                    "reload refused, the running configuration stays: {refused}"
                );
            }
            published?
        };
        tracing::info!(version, "configuration reloaded");
        Ok(self.applied_result(version))
    }

    /// Reads the configuration file again on SIGHUP: logs the new
    /// version, or why the file was refused (the running configuration
    /// stays).
    pub fn reload_on_signal(&self) {
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        let reloaded = self.reload(None);
        if let Some(notifier) = &self.notifier {
            notifier.ready(&self.service_status().1);
        }
        // A refusal was logged by `reload`.
        if let Ok(result) = reloaded {
            tracing::info!(
                version = %result["version"],
                applied = %result["applied"],
                "SIGHUP: configuration file read again"
            );
        }
    }

    /// The supervisor went round its loop.
    pub fn supervisor_beat(&self) {
        *self.supervisor_beat.lock().expect("not poisoned") = Instant::now();
    }

    /// Tells systemd (when it started this process) that the service
    /// stops.
    pub fn notify_stopping(&self) {
        if let Some(notifier) = &self.notifier {
            notifier.stopping();
        }
    }

    /// Whether the dataplane serves (every core publishes), and a status
    /// line for systemd.
    pub fn service_status(&self) -> (bool, String) {
        let (_, alive) = self.heartbeat_ages();
        let version = self.running.lock().expect("not poisoned").version;
        let dataplane = self.dataplane.lock().expect("not poisoned");
        let serving = alive && dataplane.pid.is_some();
        let status = match (dataplane.upgrade, dataplane.pid, serving) {
            (Some(step), _, _) => format!("upgrading the dataplane: {step}"),
            (None, Some(pid), true) => format!(
                "serving: dataplane pid {pid} on {} core(s), generation {}, configuration version {version}",
                self.block.cores(),
                dataplane.generation
            ),
            (None, Some(pid), false) => format!("dataplane pid {pid} starting or not publishing"),
            (None, None, _) => format!(
                "starting the dataplane ({} restart(s) so far)",
                dataplane.restarts
            ),
        };
        (serving, status)
    }

    /// Whether systemd's watchdog should be fed: the supervisor goes round
    /// its loop, and the dataplane's cores beat, or it is being started
    /// (not published yet, for a bounded time), restarted or upgraded. A
    /// stuck core is the supervisor's to handle (`--stall-ms`); a stuck
    /// supervisor, or a dataplane that never comes up, is systemd's.
    pub fn watchdog_healthy(&self) -> bool {
        if self.supervisor_beat.lock().expect("not poisoned").elapsed() > SUPERVISION_GRACE {
            return false;
        }
        let (ages, alive) = self.heartbeat_ages();
        let published = self
            .watch
            .lock()
            .expect("not poisoned")
            .published
            .iter()
            .all(|&p| p);
        let dataplane = self.dataplane.lock().expect("not poisoned");
        let starting = !published && ages.iter().all(|&age| age < SUPERVISION_GRACE);
        alive || starting || dataplane.pid.is_none() || dataplane.upgrade.is_some()
    }

    /// Before a dataplane starts: it has applied nothing, published
    /// nothing and been asked for no fault; the watchdog starts afresh.
    pub fn dataplane_starting(&self) {
        self.block.clear_applied();
        self.block.clear_stalls();
        *self.watch.lock().expect("not poisoned") =
            Watch::new(self.block.heartbeats(), Instant::now());
    }

    /// The watchdog, called often (every 20 ms) while a dataplane runs:
    /// reads the cores' heartbeats, and names a core whose heartbeat
    /// stood still for the stall time once the dataplane served.
    pub fn watch(&self) -> Option<Stall> {
        let now = Instant::now();
        let (beats, applied) = (self.block.heartbeats(), self.block.applied());
        let mut watch = self.watch.lock().expect("not poisoned");
        let (core, silent) = watch.update(&beats, &applied, now)?;
        let stall = self.settings.stall?;
        (silent >= stall).then(|| Stall {
            core,
            silent,
            published: watch.published[core],
        })
    }

    /// Per core, how long ago its heartbeat moved (or the dataplane
    /// started), and whether every core published within [`ALIVE`].
    fn heartbeat_ages(&self) -> (Vec<Duration>, bool) {
        let watch = self.watch.lock().expect("not poisoned");
        let ages: Vec<Duration> = watch.beats.iter().map(|(_, at)| at.elapsed()).collect();
        let alive = watch.published.iter().all(|&p| p) && ages.iter().all(|&age| age < ALIVE);
        (ages, alive)
    }

    /// Sets the log filter here and publishes it for every dataplane (the
    /// running ones take it within milliseconds, later ones at start).
    pub fn set_log_level(&self, level: &str) -> Result<serde_json::Value, Refused> {
        ferrox_log::check_level(level).map_err(Refused)?;
        if let Err(why) = ferrox_log::set_level(level) {
            tracing::debug!("the control process keeps its log filter: {why}");
        }
        self.block.publish_log_filter(level.trim());
        tracing::info!(level = level.trim(), "log filter changed");
        // Seen only where the new filter lets debug events through.
        tracing::debug!(process = "control", "log filter in force");
        Ok(serde_json::json!({ "level": level.trim() }))
    }

    /// Test hook: asks core `core` to wedge itself.
    fn stall_core(&self, core: usize) -> Result<serde_json::Value, Refused> {
        if !self.settings.test_hooks {
            return Err(Refused(
                "test hooks are off: the dataplane was not started with --test-hooks".into(),
            ));
        }
        if core >= self.block.cores() {
            return Err(Refused(format!(
                "no core {core}; the dataplane has {}",
                self.block.cores()
            )));
        }
        self.block.request_stall(core);
        tracing::warn!(core, "test hook: core asked to wedge itself");
        Ok(serde_json::json!({ "core": core }))
    }

    /// Holds a server out of its pool, or lets it back.
    fn hold(&self, pool: &str, addr: &str, held: bool) -> Result<serde_json::Value, Refused> {
        let addr = {
            let running = self.running.lock().expect("not poisoned");
            let p = running
                .config
                .pools
                .iter()
                .find(|p| p.name == pool)
                .ok_or_else(|| Refused(format!("no pool {pool:?}")))?;
            p.servers[running::server_index(p, pool, addr)?].addr
        };
        self.health
            .lock()
            .expect("not poisoned")
            .hold(pool, addr, held);
        self.publish_health();
        tracing::info!(pool, %addr, held, "operator");
        Ok(serde_json::json!({ "pool": pool, "server": addr.to_string(), "held": held }))
    }

    /// Says which step of a hot upgrade runs (`None`: none any more).
    pub fn upgrade_step(&self, step: Option<&'static str>) {
        self.dataplane.lock().expect("not poisoned").upgrade = step;
    }

    /// The hot handover asked for, if any (the supervisor's poll).
    pub fn take_upgrade(&self) -> Option<UpgradeJob> {
        self.upgrade.lock().expect("not poisoned").take()
    }

    /// Hands the upgrade to the supervisor (which runs the preflight, the
    /// standby start and the handover) and waits for its result.
    fn upgrade(
        &self,
        binary: &str,
        timeout_ms: Option<u64>,
        drain_ms: Option<u64>,
    ) -> Result<serde_json::Value, Refused> {
        let binary = PathBuf::from(binary);
        let timeout = Duration::from_millis(timeout_ms.unwrap_or(10_000).clamp(100, 120_000));
        let drain = drain_ms.map(|ms| Duration::from_millis(ms.clamp(1, 60_000)));
        let (reply, result) = std::sync::mpsc::channel();
        {
            let mut slot = self.upgrade.lock().expect("not poisoned");
            if slot.is_some() {
                return Err(Refused("an upgrade is already under way".into()));
            }
            *slot = Some(UpgradeJob {
                binary,
                timeout,
                drain,
                reply,
            });
        }
        // Preflight, standby, handing over (with its drain) and taking
        // over: four steps at most.
        let drain = drain.unwrap_or(Duration::from_secs(1));
        match result.recv_timeout(timeout * 4 + drain + Duration::from_secs(10)) {
            Ok(outcome) => outcome.map_err(Refused),
            Err(_) => Err(Refused(SUPERVISOR_SILENT.into())),
        }
    }

    /// Answers one admin request.
    pub fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::Status {} => Ok(serde_json::to_value(self.status()).expect("serializes")),
            Request::Stats {} => Ok(serde_json::to_value(self.stats()).expect("serializes")),
            Request::ConfigShow {} => {
                let running = self.running.lock().expect("not poisoned");
                // Passwords are not shown to whoever can read the output.
                let mut shown = running.config.clone();
                for pool in &mut shown.pools {
                    if pool.auth.is_some() {
                        pool.auth = Some(REDACTED.into());
                    }
                }
                for user in &mut shown.users {
                    for password in &mut user.passwords {
                        *password = REDACTED.into();
                    }
                }
                Ok(serde_json::json!({
                    "version": running.version,
                    "file": running.file.display().to_string(),
                    "text": config::emit_toml(&shown),
                }))
            }
            Request::ConfigValidate { text, file } => {
                running::validate(&text, &file, self.settings.address)
                    .map(|c| serde_json::json!({ "valid": true, "pools": c.pools.len() }))
            }
            Request::ConfigReload { path } => self.reload(path),
            Request::ServerAdd { pool, server } => self.change(Change::AddServer { pool, server }),
            Request::ServerRemove { pool, addr } => {
                self.change(Change::RemoveServer { pool, addr })
            }
            Request::ServerWeight { pool, addr, weight } => {
                self.change(Change::Weight { pool, addr, weight })
            }
            Request::ServerEject { pool, addr } => self.hold(&pool, &addr, true),
            Request::ServerRestore { pool, addr } => self.hold(&pool, &addr, false),
            Request::Block { pool, command } => self.change(Change::Block { pool, command }),
            Request::UserSet {
                name,
                passwords,
                pools,
                acl,
            } => self.change(Change::SetUser {
                name,
                passwords,
                pools,
                acl,
            }),
            Request::UserRemove { name } => self.change(Change::RemoveUser { name }),
            Request::Unblock { pool, command } => self.change(Change::Unblock { pool, command }),
            Request::ShmShow {} => self
                .shm()
                .map(|s| serde_json::to_value(s).expect("serializes"))
                .ok_or_else(no_pool_yet),
            Request::ShmResize { add_mb } => self
                .grow(add_mb)
                .map(|s| serde_json::to_value(s).expect("serializes")),
            Request::DebugStallCore { core } => self.stall_core(core),
            Request::LogLevel { level } => self.set_log_level(&level),
            Request::Upgrade {
                binary,
                timeout_ms,
                drain_ms,
            } => self.upgrade(&binary, timeout_ms, drain_ms),
        };
        match result {
            Ok(value) => Response::ok(value),
            // An upgrade that got past its refusals and then failed (rolled
            // back), or whose supervisor never answered, changed things.
            Err(Refused(why)) if why.starts_with(UPGRADE_FAILED) || why == SUPERVISOR_SILENT => {
                Response::error_of(admin::ErrorKind::Failed, why)
            }
            Err(refused) => Response::error(refused),
        }
    }

    pub fn status(&self) -> admin::Status {
        let running = self.running.lock().expect("not poisoned");
        let health = self.health.lock().expect("not poisoned");
        let dataplane = self.dataplane.lock().expect("not poisoned");
        let (ages, alive) = self.heartbeat_ages();
        admin::Status {
            control_pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs(),
            config_file: running.file.display().to_string(),
            config_version: running.version,
            applied: self.block.applied(),
            dataplane: admin::Dataplane {
                pid: dataplane.pid,
                cores: self.block.cores(),
                restarts: dataplane.restarts,
                stalls: dataplane.stalls,
                binary: dataplane.binary.display().to_string(),
                generation: dataplane.generation,
                upgrade: dataplane.upgrade.map(str::to_string),
                port_holder_pid: dataplane.port_holder_pid,
                port_holder_restarts: dataplane.port_holder_restarts,
                alive: alive && dataplane.pid.is_some(),
                heartbeat_age_ms: ages.iter().map(|a| a.as_millis() as u64).collect(),
            },
            pools: running
                .config
                .pools
                .iter()
                .map(|pool| admin::PoolHealth {
                    name: pool.name.clone(),
                    listen: pool.listen.to_string(),
                    protocol: format!("{:?}", pool.protocol).to_lowercase(),
                    servers: pool
                        .all_servers()
                        .enumerate()
                        .map(|(i, (addr, shard))| {
                            let (name, weight) = match shard {
                                // A replica: named after its shard, and
                                // placed by nothing.
                                Some(shard) => (format!("{}/replica", pool.servers[shard].name), 0),
                                // The shards come first.
                                None => (pool.servers[i].name.clone(), pool.servers[i].weight),
                            };
                            admin::ServerHealth {
                                addr: addr.to_string(),
                                name,
                                weight,
                                state: health.state(&pool.name, addr).into(),
                                failures: health.failures(&pool.name, addr),
                                ejections: health.ejections(&pool.name, addr),
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// Totals as the cores published them now, rates since the sampling
    /// tick before the last.
    pub fn stats(&self) -> admin::Stats {
        let current = self.block.snapshot();
        let base = self.rate_base.lock().expect("not poisoned").clone();
        let (previous, seconds) = match base {
            Some((snapshot, at)) => (snapshot, at.elapsed().as_secs_f64()),
            None => (current.clone(), 0.0),
        };
        metrics::stats(&Sample {
            previous,
            current,
            seconds,
        })
    }

    /// The socket pool, once the dataplane has made it.
    fn sockets(&self) -> Option<Pool> {
        Pool::attach(self.block.region(), "sockets").ok()
    }

    pub fn shm(&self) -> Option<admin::Shm> {
        let region = self.block.region().stats();
        let pool = self.sockets()?;
        let stats = pool.stats();
        Some(admin::Shm {
            region: region.name.clone(),
            segments: region.segments.len(),
            size_bytes: region.size(),
            used_bytes: region.used(),
            hugepages: region.segments.iter().all(|s| s.hugepages),
            classes: stats
                .classes
                .iter()
                .enumerate()
                .map(|(i, c)| admin::ShmClass {
                    role: if is_client_class(i, stats.classes.len()) {
                        "client"
                    } else {
                        "server"
                    }
                    .into(),
                    chunk_size: c.chunk_size,
                    total: c.total,
                    in_use: c.in_use,
                    free: c.free,
                })
                .collect(),
        })
    }

    /// Adds `add_mb` MiB of client socket buffers to the pool, growing the
    /// region by a segment when it is full. The client classes grow in
    /// proportion to what they hold, which keeps the receive and send
    /// buffers of a connection in step. The cores find the new chunks at
    /// their next refill; nothing pauses.
    fn grow(&self, add_mb: u64) -> Result<admin::Shm, Refused> {
        if add_mb == 0 || add_mb > 64 << 10 {
            return Err(Refused(format!("{add_mb} MiB: give 1 to 65536")));
        }
        let pool = self.sockets().ok_or_else(no_pool_yet)?;
        let classes = pool.stats().classes;
        let clients: Vec<usize> = (0..classes.len())
            .filter(|&c| is_client_class(c, classes.len()))
            .collect();
        let held: u64 = clients
            .iter()
            .map(|&c| classes[c].total * classes[c].chunk_size as u64)
            .sum();
        let add = add_mb << 20;
        let mut added = 0;
        for &c in &clients {
            let class = &classes[c];
            let chunks = match held {
                0 => add / clients.len() as u64 / class.chunk_size as u64,
                _ => class.total * add / held,
            };
            let chunks = chunks.max(1) as u32;
            pool.add_chunks(c, chunks)
                .map_err(|e| Refused(format!("growing the socket pool: {e}")))?;
            added += chunks;
        }
        tracing::info!(add_mb, chunks = added, "socket pool grown");
        self.shm().ok_or_else(no_pool_yet)
    }

    /// A sampling tick: keeps the rate base; grows the socket pool when it
    /// runs low.
    fn sample(&self, previous: &mut (Snapshot, Instant)) {
        let now = Instant::now();
        let current = self.block.snapshot();
        let base = std::mem::replace(previous, (current, now));
        *self.rate_base.lock().expect("not poisoned") = Some(base);
        if let Some(shm) = self.shm() {
            let clients = shm.classes.iter().filter(|c| c.role == "client");
            let low = clients.clone().any(|c| {
                c.total > 0 && (c.free as f64) < self.settings.grow_below * c.total as f64
            });
            if low {
                // Half as much again: geometric, so the region keeps few
                // segments.
                let held: u64 = clients.map(|c| c.total * c.chunk_size as u64).sum();
                let add_mb = ((held / 2) >> 20).max(1);
                if let Err(e) = self.grow(add_mb) {
                    tracing::warn!("the socket pool is low and cannot grow: {e}");
                }
            }
        }
    }

    /// One round of health checks, all servers at once.
    fn check_health(&self) {
        let config = self.running.lock().expect("not poisoned").config.clone();
        let timeout = self
            .settings
            .health_interval
            .min(Duration::from_millis(1000));
        let results: Vec<(usize, SocketAddrV4, Result<(), String>)> = std::thread::scope(|scope| {
            let probes: Vec<_> = config
                .pools
                .iter()
                .enumerate()
                .flat_map(|(p, pool)| pool.all_servers().map(move |(addr, _)| (p, pool, addr)))
                // A shard named by its Sentinel master: the dataplane
                // follows Sentinel for it.
                .filter(|(_, _, addr)| !addr.ip().is_unspecified())
                .map(|(p, pool, addr)| {
                    scope.spawn(move || (p, addr, health::probe(pool, addr, timeout)))
                })
                .collect();
            probes.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let now_ms = self.started.elapsed().as_millis() as u64;
        let mut changed = false;
        {
            let mut health = self.health.lock().expect("not poisoned");
            for (p, addr, result) in results {
                let pool = &config.pools[p];
                if let Err(reason) = &result {
                    tracing::debug!(pool = %pool.name, %addr, reason, "health check failed");
                }
                match health.record(pool, addr, result.is_ok(), now_ms) {
                    Some(Event::Ejected) => {
                        tracing::warn!(pool = %pool.name, %addr, reason = ?result.err(), "server ejected");
                        changed = true;
                    }
                    Some(Event::Returned) => {
                        tracing::info!(pool = %pool.name, %addr, "server returned");
                        changed = true;
                    }
                    None => {}
                }
            }
        }
        if changed {
            self.publish_health();
        }
    }

    /// The Prometheus text.
    /// Whether the appliance serves: the dataplane runs, every core beats
    /// and runs the newest configuration. `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        let status = self.status();
        if !status.dataplane.alive {
            return Err("the dataplane is not running, or a core is not beating".into());
        }
        let behind = status
            .applied
            .iter()
            .take(status.dataplane.cores)
            .filter(|&&v| v != status.config_version)
            .count();
        if behind > 0 {
            return Err(format!(
                "{behind} core(s) do not run configuration {} yet",
                status.config_version
            ));
        }
        Ok(())
    }

    pub fn prometheus(&self) -> String {
        let version = self.running.lock().expect("not poisoned").version;
        let up = self.ready().is_ok();
        let supervision = {
            let dataplane = self.dataplane.lock().expect("not poisoned");
            metrics::Supervision {
                restarts: dataplane.restarts,
                stalls: dataplane.stalls,
                heartbeat_age: self.heartbeat_ages().0,
                up,
            }
        };
        metrics::prometheus(
            &self.block.snapshot(),
            version,
            self.shm().as_ref(),
            &supervision,
        )
    }

    /// The twemproxy-compatible stats document.
    pub fn twemproxy_stats(&self) -> String {
        let snapshot = self.block.snapshot();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let service = crate::twemproxy::Service {
            source: host.trim(),
            version: env!("CARGO_PKG_VERSION"),
            uptime_s: self.started.elapsed().as_secs(),
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            total_connections: snapshot.total(Counter::Accepted),
            curr_connections: snapshot.total(Counter::Open),
        };
        let running = self.running.lock().expect("not poisoned");
        crate::twemproxy::document(&service, &running.config, &snapshot)
    }
}

fn no_pool_yet() -> Refused {
    Refused("the dataplane has not made its socket pool yet".into())
}

/// Reads and checks the configuration file at `path` for a dataplane on
/// `address`; errors name the file, the line and the reason.
pub fn read_config(path: &Path, address: Ipv4Addr) -> anyhow::Result<Config> {
    let (text, file) = read_text(path)?;
    Ok(running::validate(&text, &file, address)?)
}

/// Like [`read_config`], without knowing the dataplane's address.
pub fn read_config_anywhere(path: &Path) -> anyhow::Result<Config> {
    let (text, file) = read_text(path)?;
    Ok(running::validate_anywhere(&text, &file)?)
}

fn read_text(path: &Path) -> anyhow::Result<(String, String)> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{file}: cannot read: {e}"))?;
    Ok((text, file))
}

/// Runs the health checker, the sampler and the reloader until `stop`.
pub fn spawn_background(control: &Arc<Control>) -> Vec<std::thread::JoinHandle<()>> {
    let health = background(control, "health", |control| {
        while !control.stop.load(Ordering::Relaxed) {
            let round = Instant::now();
            control.check_health();
            sleep_until(round + control.settings.health_interval, &control.stop);
        }
    });
    let sampler = background(control, "sampler", |control| {
        let mut previous = (control.block.snapshot(), Instant::now());
        while !control.stop.load(Ordering::Relaxed) {
            sleep_until(Instant::now() + Duration::from_secs(1), &control.stop);
            control.sample(&mut previous);
        }
    });
    // SIGHUP sets the flag; the reload (which waits for the cores) runs
    // here, off the supervisor's watch.
    let reloader = background(control, "reload", |control| {
        while !control.stop.load(Ordering::Relaxed) {
            sleep_until(Instant::now() + Duration::from_millis(100), &control.stop);
            if control.reload_requested.swap(false, Ordering::Relaxed)
                && !control.stop.load(Ordering::Relaxed)
            {
                control.reload_on_signal();
            }
        }
    });
    let mut threads = vec![health, sampler, reloader];
    if control.notifier.is_some() {
        threads.push(background(control, "notify", notify_systemd));
    }
    threads
}

/// Tells systemd when the dataplane first serves (`READY=1`), how the
/// service is doing when that changes, and feeds its watchdog while
/// [`Control::watchdog_healthy`] holds.
fn notify_systemd(control: &Control) {
    let Some(notifier) = control.notifier.as_ref() else {
        return;
    };
    let mut ready = false;
    let mut said = String::new();
    let mut fed: Option<Instant> = None;
    while !control.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let (serving, status) = control.service_status();
        if !ready && serving {
            notifier.ready(&status);
            ready = true;
            said = status;
        } else if ready && status != said {
            notifier.status(&status);
            said = status;
        }
        if let Some(every) = notifier.watchdog_every() {
            if fed.is_none_or(|at| at.elapsed() >= every) && control.watchdog_healthy() {
                notifier.watchdog();
                fed = Some(now);
            }
        }
        sleep_until(now + Duration::from_millis(100), &control.stop);
    }
}

/// Runs `work` on a thread named `name` with a handle of its own on
/// `control`.
fn background(
    control: &Arc<Control>,
    name: &str,
    work: impl FnOnce(&Control) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let control = control.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || work(&control))
        .expect("a thread")
}

fn sleep_until(deadline: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Clients of one listener being served; a slot is given back when its
/// guard drops.
#[derive(Debug, Clone)]
struct Slots(Arc<std::sync::atomic::AtomicUsize>, usize);

#[derive(Debug)]
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Slots {
    fn new(max: usize) -> Slots {
        Slots(Arc::default(), max)
    }

    fn take(&self) -> Option<Slot> {
        let taken = self.0.fetch_add(1, Ordering::AcqRel);
        if taken >= self.1 {
            self.0.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.0.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves the admin socket at `path` (mode 0600) until `stop`.
pub fn serve_admin(
    control: Arc<Control>,
    path: &Path,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if UnixStream::connect(path).is_ok() {
        anyhow::bail!("{}: another control process answers there", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener =
        UnixListener::bind(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let clients = Clients {
        thread: "admin",
        what: "admin socket",
        max: MAX_ADMIN_CLIENTS,
    };
    let refuse = |mut stream: UnixStream| {
        let _ = stream.set_write_timeout(Some(READ_DEADLINE));
        let _ = writeln!(
            stream,
            "{}",
            Response::error(format!(
                "{MAX_ADMIN_CLIENTS} admin clients already; try again"
            ))
            .line()
        );
    };
    let accept = move || listener.accept().map(|(stream, _)| stream);
    Ok(clients.serve(control, accept, refuse, admin_client)?)
}

/// The clients of a listening socket: each served on a thread of its own
/// (`<thread>-client`), at most `max` at once.
struct Clients {
    /// The accepting thread's name.
    thread: &'static str,
    /// The socket, as accept errors name it in the log.
    what: &'static str,
    max: usize,
}

impl Clients {
    /// Starts the thread that accepts with `accept` until `stop`, and
    /// gives each client to `serve` on a thread of its own, or to `refuse`
    /// when `max` are served already. Accepts block; [`wake`] lets the
    /// thread see `stop`.
    fn serve<S: Send + 'static>(
        self,
        control: Arc<Control>,
        mut accept: impl FnMut() -> std::io::Result<S> + Send + 'static,
        refuse: impl Fn(S) + Send + 'static,
        serve: fn(&Control, S),
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let slots = Slots::new(self.max);
        std::thread::Builder::new()
            .name(self.thread.into())
            .spawn(move || loop {
                let accepted = accept();
                if control.stop.load(Ordering::Relaxed) {
                    return;
                }
                match accepted {
                    Ok(stream) => {
                        let Some(slot) = slots.take() else {
                            refuse(stream);
                            continue;
                        };
                        let control = control.clone();
                        let _ = std::thread::Builder::new()
                            .name(format!("{}-client", self.thread))
                            .spawn(move || {
                                serve(&control, stream);
                                drop(slot);
                            });
                    }
                    Err(e) => tracing::warn!("{}: {e}", self.what),
                }
            })
    }
}

/// Wakes the admin, metrics and stats threads from `accept` once `stop`
/// is set, so that they end.
pub fn wake(admin: &Path, listeners: &[SocketAddr]) {
    let _ = UnixStream::connect(admin);
    for addr in listeners {
        let _ = std::net::TcpStream::connect_timeout(addr, Duration::from_secs(1));
    }
}

/// What an admin client sent next.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Request(Vec<u8>),
    Closed,
    /// Longer than [`admin::MAX_LINE`] (bytes so far).
    TooLong(usize),
    /// Nothing for [`ADMIN_IDLE`], or a line begun and not finished within
    /// [`READ_DEADLINE`].
    TimedOut {
        begun: bool,
    },
}

/// Reads the next request line of `stream`; `pending` holds what was read
/// past the previous one.
fn next_line(
    stream: &mut impl ReadTimeout,
    pending: &mut Vec<u8>,
    idle: Duration,
    deadline: Duration,
) -> Line {
    let mut begun = (!pending.is_empty()).then(Instant::now);
    let mut buf = [0u8; 16 << 10];
    loop {
        if let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=end).collect();
            line.pop();
            return Line::Request(line);
        }
        if pending.len() > admin::MAX_LINE {
            return Line::TooLong(pending.len());
        }
        let timeout = match begun {
            None => idle,
            Some(at) => deadline.saturating_sub(at.elapsed()),
        };
        if timeout.is_zero() {
            return Line::TimedOut { begun: true };
        }
        match stream.read_within(&mut buf, timeout) {
            // The last line may lack its newline.
            Ok(0) if !pending.is_empty() => return Line::Request(std::mem::take(pending)),
            Ok(0) => return Line::Closed,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                begun.get_or_insert_with(Instant::now);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Line::TimedOut {
                    begun: begun.is_some(),
                }
            }
            Err(_) => return Line::Closed,
        }
    }
}

/// A stream read with a time limit.
trait ReadTimeout {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize>;
}

impl ReadTimeout for UnixStream {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
        self.set_read_timeout(Some(timeout))?;
        self.read(buf)
    }
}

impl ReadTimeout for std::net::TcpStream {
    fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
        self.set_read_timeout(Some(timeout))?;
        self.read(buf)
    }
}

/// One admin client: a request per line, an answer per line. It may wait
/// [`ADMIN_IDLE`] between requests, and has [`READ_DEADLINE`] to finish a
/// line it began.
fn admin_client(control: &Control, mut stream: UnixStream) {
    let _ = stream.set_write_timeout(Some(READ_DEADLINE));
    let mut pending = Vec::new();
    loop {
        let (response, close) =
            match next_line(&mut stream, &mut pending, ADMIN_IDLE, READ_DEADLINE) {
                Line::Closed | Line::TimedOut { begun: false } => return,
                Line::TimedOut { begun: true } => (
                    Response::error(format!(
                        "no whole request line within {} s",
                        READ_DEADLINE.as_secs()
                    )),
                    true,
                ),
                Line::TooLong(len) => (Response::error(admin::AdminError::TooLong(len)), true),
                Line::Request(line) => match String::from_utf8(line) {
                    Ok(line) => {
                        let response = match admin::parse_request(line.trim_end()) {
                            Ok(request) => control.handle(request),
                            Err(e) => Response::error(e),
                        };
                        (response, false)
                    }
                    Err(_) => (Response::error("unreadable request: not UTF-8"), true),
                },
            };
        if writeln!(stream, "{}", response.line()).is_err() || close {
            return;
        }
    }
}

/// Serves `GET /metrics` (Prometheus text) on `addr` until `stop`.
pub fn serve_metrics(
    control: Arc<Control>,
    addr: SocketAddr,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener =
        TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("metrics on {addr}: {e}"))?;
    let clients = Clients {
        thread: "metrics",
        what: "metrics",
        max: MAX_METRICS_CLIENTS,
    };
    // Each scrape has [`READ_DEADLINE`] to send its request, so a silent
    // or slow client holds up no other; too many at once are closed
    // unanswered.
    let accept = move || listener.accept().map(|(stream, _)| stream);
    Ok(clients.serve(control, accept, drop, scrape)?)
}

/// Serves the twemproxy-compatible stats document on `addr` until `stop`:
/// each client that connects is sent it, and the connection is closed.
pub fn serve_twemproxy_stats(
    control: Arc<Control>,
    addr: SocketAddr,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).map_err(|e| anyhow::anyhow!("stats on {addr}: {e}"))?;
    let clients = Clients {
        thread: "stats",
        what: "stats",
        max: MAX_METRICS_CLIENTS,
    };
    let accept = move || listener.accept().map(|(stream, _)| stream);
    Ok(clients.serve(control, accept, drop, send_twemproxy_stats)?)
}

fn send_twemproxy_stats(control: &Control, mut stream: std::net::TcpStream) {
    let _ = stream.set_write_timeout(Some(READ_DEADLINE));
    let _ = stream.write_all(control.twemproxy_stats().as_bytes());
    // nutcracker's agents read to the end: a clean close, and what the
    // client may have sent is not waited for.
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Answers one metrics client.
fn scrape(control: &Control, mut stream: std::net::TcpStream) {
    let _ = stream.set_write_timeout(Some(READ_DEADLINE));
    // The whole head, so that closing after the answer leaves nothing
    // unread (which would reset it), within the deadline.
    let deadline = Instant::now() + READ_DEADLINE;
    let mut request = [0u8; 2048];
    let mut n = 0;
    while n < request.len() && !request[..n].windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        match stream.read_within(&mut request[n..], left) {
            Ok(0) => break,
            Ok(read) => n += read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let head = String::from_utf8_lossy(&request[..n]);
    let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
        ("200 OK", control.prometheus())
    } else if head.starts_with("GET /ready ") {
        // For load balancers and orchestrators: serving, or why not.
        match control.ready() {
            Ok(()) => ("200 OK", "ready\n".to_string()),
            Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
        }
    } else if head.starts_with("GET /healthz ") {
        // The control process answers: it is alive.
        ("200 OK", "ok\n".to_string())
    } else {
        (
            "404 Not Found",
            "GET /metrics, /ready or /healthz\n".to_string(),
        )
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A stream that yields its chunks in order, then times out (`None`)
    /// or ends (`Some(0)`), and records the timeouts it was given.
    struct Script {
        chunks: VecDeque<Option<&'static [u8]>>,
        timeouts: Vec<Duration>,
    }

    impl ReadTimeout for Script {
        fn read_within(&mut self, buf: &mut [u8], timeout: Duration) -> std::io::Result<usize> {
            self.timeouts.push(timeout);
            match self.chunks.pop_front() {
                Some(Some(chunk)) => {
                    buf[..chunk.len()].copy_from_slice(chunk);
                    Ok(chunk.len())
                }
                Some(None) => Err(std::io::ErrorKind::WouldBlock.into()),
                None => Ok(0),
            }
        }
    }

    fn script(chunks: &[Option<&'static [u8]>]) -> Script {
        Script {
            chunks: chunks.iter().copied().collect(),
            timeouts: Vec::new(),
        }
    }

    const IDLE: Duration = Duration::from_secs(60);
    const LINE: Duration = Duration::from_secs(2);

    #[test]
    fn request_lines_are_split_and_pipelined_ones_kept() {
        let mut stream = script(&[Some(b"{\"a\"}\n{\"b"), Some(b"\"}\nlast")]);
        let mut pending = Vec::new();
        let mut next = || next_line(&mut stream, &mut pending, IDLE, LINE);
        assert_eq!(next(), Line::Request(b"{\"a\"}".to_vec()));
        assert_eq!(next(), Line::Request(b"{\"b\"}".to_vec()));
        assert_eq!(next(), Line::Request(b"last".to_vec()));
        assert_eq!(next(), Line::Closed);
    }

    #[test]
    fn a_silent_client_times_out_idle_and_a_slow_line_within_its_deadline() {
        let mut pending = Vec::new();
        let mut silent = script(&[None]);
        assert_eq!(
            next_line(&mut silent, &mut pending, IDLE, LINE),
            Line::TimedOut { begun: false }
        );
        assert_eq!(silent.timeouts, [IDLE]);
        // Once a line began, every further read is bounded by what is
        // left of its deadline.
        let mut slow = script(&[Some(b"{\"v\":"), Some(b"1"), None]);
        assert_eq!(
            next_line(&mut slow, &mut pending, IDLE, LINE),
            Line::TimedOut { begun: true }
        );
        assert_eq!(slow.timeouts[0], IDLE);
        assert!(
            slow.timeouts[1..].iter().all(|&t| t <= LINE),
            "{:?}",
            slow.timeouts
        );
    }

    #[test]
    fn an_endless_line_is_refused() {
        static BIG: [u8; 8 << 10] = [b'x'; 8 << 10];
        let chunks: Vec<Option<&'static [u8]>> = (0..admin::MAX_LINE / BIG.len() + 2)
            .map(|_| Some(&BIG[..]))
            .collect();
        let mut stream = script(&chunks);
        let mut pending = Vec::new();
        assert!(matches!(
            next_line(&mut stream, &mut pending, IDLE, Duration::from_secs(3600)),
            Line::TooLong(n) if n > admin::MAX_LINE
        ));
    }

    #[test]
    fn client_slots_are_bounded_and_given_back() {
        let slots = Slots::new(2);
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        assert!(slots.take().is_none());
        drop(a);
        assert!(slots.take().is_some());
    }

    #[test]
    fn the_watchdog_starts_when_the_dataplane_served_and_names_the_silent_core() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A dataplane starting: old heartbeats, nothing applied yet.
        let mut watch = Watch::new(vec![40, 7], t0);
        assert_eq!(watch.update(&[40, 7], &[0, 0], at(30_000)), None);
        // It served at 30 s: the clock starts there for every core.
        assert_eq!(
            watch.update(&[40, 7], &[3, 3], at(30_000)).map(|s| s.1),
            Some(Duration::ZERO)
        );
        assert_eq!(
            watch.update(&[41, 8], &[3, 3], at(30_100)).map(|s| s.1),
            Some(Duration::ZERO)
        );
        assert_eq!(watch.published, [true, true]);
        // Core 1 beats on, core 0 stops.
        for ms in (30_200..=32_100).step_by(100) {
            let silent = watch.update(&[41, ms], &[3, 3], at(ms));
            assert_eq!(silent.map(|s| s.0), Some(0));
        }
        assert_eq!(
            watch.update(&[41, 99_999], &[3, 3], at(32_100)),
            Some((0, Duration::from_millis(2000)))
        );
    }

    #[test]
    fn a_core_that_never_publishes_is_silent_from_when_the_dataplane_served() {
        let t0 = Instant::now();
        let mut watch = Watch::new(vec![5], t0);
        watch.update(&[5], &[1], t0 + Duration::from_secs(10));
        assert_eq!(
            watch.update(&[5], &[1], t0 + Duration::from_secs(13)),
            Some((0, Duration::from_secs(3)))
        );
        assert_eq!(watch.published, [false]);
    }
}
