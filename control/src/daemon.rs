//! The control process: owns the shared region (control block and socket
//! buffer pool), publishes configurations, runs health checks, samples
//! statistics, and answers the admin socket and the metrics endpoint.
//!
//! Threads, none on a data path: the admin socket (a thread per client),
//! the metrics endpoint, the health checker, the sampler (statistics and
//! the socket pool's growth) and the main thread, which supervises the
//! dataplane process. State they share sits behind one mutex each; a
//! publish to the control block happens under the `running` lock, so the
//! block has one writer at a time.
#![allow(clippy::disallowed_methods)] // threads of a manager process sleep; no poll loop here

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrox_block::{Block, Snapshot};
use ferrox_proto::config::{self, Config};
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
    /// When each core's heartbeat last moved.
    heartbeats: Mutex<Vec<(u64, Instant)>>,
    pub dataplane: Mutex<DataplaneState>,
    started: Instant,
    pub stop: Arc<AtomicBool>,
}

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
            heartbeats: Mutex::new(vec![(0, Instant::now()); cores]),
            dataplane: Mutex::new(DataplaneState::default()),
            started: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
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
    fn reload(&self, path: Option<String>) -> Result<serde_json::Value, Refused> {
        let version = {
            let mut running = self.running.lock().expect("not poisoned");
            let file = path.map_or_else(|| running.file.clone(), PathBuf::from);
            let config =
                read_config(&file, self.settings.address).map_err(|e| Refused(format!("{e:#}")))?;
            running.file = file;
            self.publish(&mut running, config)?
        };
        tracing::info!(version, "configuration reloaded");
        Ok(self.applied_result(version))
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
            Request::Unblock { pool, command } => self.change(Change::Unblock { pool, command }),
            Request::ShmShow {} => self
                .shm()
                .map(|s| serde_json::to_value(s).expect("serializes"))
                .ok_or_else(no_pool_yet),
            Request::ShmResize { add_mb } => self
                .grow(add_mb)
                .map(|s| serde_json::to_value(s).expect("serializes")),
        };
        match result {
            Ok(value) => Response::ok(value),
            Err(refused) => Response::error(refused),
        }
    }

    pub fn status(&self) -> admin::Status {
        let running = self.running.lock().expect("not poisoned");
        let health = self.health.lock().expect("not poisoned");
        let dataplane = self.dataplane.lock().expect("not poisoned");
        let alive = self
            .heartbeats
            .lock()
            .expect("not poisoned")
            .iter()
            .all(|(beat, at)| *beat > 0 && at.elapsed() < Duration::from_secs(3));
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
                alive,
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
                        .servers
                        .iter()
                        .map(|s| admin::ServerHealth {
                            addr: s.addr.to_string(),
                            name: s.name.clone(),
                            weight: s.weight,
                            state: health.state(&pool.name, s.addr).into(),
                            failures: health.failures(&pool.name, s.addr),
                            ejections: health.ejections(&pool.name, s.addr),
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

    /// A sampling tick: notes which cores published and keeps the rate
    /// base; grows the socket pool when it runs low.
    fn sample(&self, previous: &mut (Snapshot, Instant)) {
        let now = Instant::now();
        let current = self.block.snapshot();
        {
            let mut beats = self.heartbeats.lock().expect("not poisoned");
            for (seen, core) in beats.iter_mut().zip(&current.cores) {
                if core.heartbeat != seen.0 {
                    *seen = (core.heartbeat, now);
                }
            }
        }
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
                .flat_map(|(p, pool)| pool.servers.iter().map(move |s| (p, pool, s.addr)))
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
    pub fn prometheus(&self) -> String {
        let version = self.running.lock().expect("not poisoned").version;
        metrics::prometheus(&self.block.snapshot(), version, self.shm().as_ref())
    }
}

fn no_pool_yet() -> Refused {
    Refused("the dataplane has not made its socket pool yet".into())
}

/// Reads and checks the configuration file at `path` for a dataplane on
/// `address`; errors name the file, the line and the reason.
pub fn read_config(path: &Path, address: Ipv4Addr) -> anyhow::Result<Config> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{file}: cannot read: {e}"))?;
    Ok(running::validate(&text, &file, address)?)
}

/// Runs the health checker and the sampler until `stop`.
pub fn spawn_background(control: &Arc<Control>) -> Vec<std::thread::JoinHandle<()>> {
    let health = {
        let control = control.clone();
        std::thread::Builder::new()
            .name("health".into())
            .spawn(move || {
                while !control.stop.load(Ordering::Relaxed) {
                    let round = Instant::now();
                    control.check_health();
                    sleep_until(round + control.settings.health_interval, &control.stop);
                }
            })
            .expect("a thread")
    };
    let sampler = {
        let control = control.clone();
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let mut previous = (control.block.snapshot(), Instant::now());
                while !control.stop.load(Ordering::Relaxed) {
                    sleep_until(Instant::now() + Duration::from_secs(1), &control.stop);
                    control.sample(&mut previous);
                }
            })
            .expect("a thread")
    };
    vec![health, sampler]
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
    // Accepts block; [`wake`] lets the thread see `stop`.
    Ok(std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || loop {
            let accepted = listener.accept();
            if control.stop.load(Ordering::Relaxed) {
                return;
            }
            match accepted {
                Ok((stream, _)) => {
                    let control = control.clone();
                    let _ = std::thread::Builder::new()
                        .name("admin-client".into())
                        .spawn(move || admin_client(&control, stream));
                }
                Err(e) => tracing::warn!("admin socket: {e}"),
            }
        })?)
}

/// Wakes the admin and metrics threads from `accept` once `stop` is set,
/// so that they end.
pub fn wake(admin: &Path, metrics: Option<SocketAddr>) {
    let _ = UnixStream::connect(admin);
    if let Some(addr) = metrics {
        let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    }
}

/// One admin client: a request per line, an answer per line.
fn admin_client(control: &Control, stream: UnixStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    // One byte over the limit tells a long line from a full one.
    let mut reader = BufReader::new(stream).take(admin::MAX_LINE as u64 + 1);
    let mut line = String::new();
    loop {
        line.clear();
        reader.set_limit(admin::MAX_LINE as u64 + 1);
        match reader.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                let _ = writeln!(
                    writer,
                    "{}",
                    Response::error(format!("unreadable request: {e}")).line()
                );
                return;
            }
        }
        let too_long = !line.ends_with('\n') && line.len() > admin::MAX_LINE;
        let response = match admin::parse_request(line.trim_end()) {
            _ if too_long => Response::error(admin::AdminError::TooLong(line.len())),
            Ok(request) => control.handle(request),
            Err(e) => Response::error(e),
        };
        if writeln!(writer, "{}", response.line()).is_err() || too_long {
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
    // Accepts block; [`wake`] lets the thread see `stop`.
    Ok(std::thread::Builder::new().name("metrics".into()).spawn(move || {
        loop {
            let accepted = listener.accept();
            if control.stop.load(Ordering::Relaxed) {
                return;
            }
            match accepted {
                Ok((mut stream, _)) => {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    // The whole head, so that closing after the answer
                    // leaves nothing unread (which would reset it).
                    let mut request = [0u8; 2048];
                    let mut n = 0;
                    while n < request.len() && !request[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut request[n..]) {
                            Ok(0) | Err(_) => break,
                            Ok(read) => n += read,
                        }
                    }
                    let head = String::from_utf8_lossy(&request[..n]);
                    let (status, body) = if head.starts_with("GET /metrics ") || head.starts_with("GET / ") {
                        ("200 OK", control.prometheus())
                    } else {
                        ("404 Not Found", "GET /metrics\n".to_string())
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(e) => tracing::warn!("metrics: {e}"),
            }
        }
    })?)
}
