//! `ferrox-control`: the appliance's manager on the kernel stack.
//!
//! Validates the configuration completely before anything starts, creates
//! the shared region (control block and room for the socket buffer pool),
//! starts `ferrox-dataplane` attached to it and restarts it if it dies or
//! a core of it stops beating (the watchdog), and serves `ferroxctl` on a
//! Unix socket and Prometheus on 127.0.0.1. SIGINT or SIGTERM stops the
//! dataplane (SIGINT, then SIGKILL after a grace), then the control
//! process, and removes the region; SIGHUP reads the configuration file
//! again. A region left by a control process that died is reclaimed.
#![allow(clippy::disallowed_methods)] // a manager process: it sleeps and waits

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ferrox_block::{Block, Step};
use ferrox_control::daemon::{self, Control, Settings, Stall};
use ferrox_control::runtime_dir;
use hugepage_pool::{Region, RegionError, RegionOptions};
use rustix::process::{Pid, PidfdFlags, Signal};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "ferrox control process: configuration, health, statistics, shared memory"
)]
struct Args {
    /// Proxy configuration: ferrox TOML, or twemproxy YAML (.yml/.yaml).
    #[arg(short = 'c', long, default_value = "/etc/ferrox/ferrox.toml")]
    config: PathBuf,
    /// Check the configuration completely (with --address, also that its
    /// pools listen where the dataplane answers) and exit: 0 when it is
    /// valid, 1 with every error's line and reason. nutcracker's -t.
    #[arg(short = 't', long = "check", visible_alias = "test-conf")]
    check: bool,
    /// The dataplane's address and prefix, e.g. 198.18.0.2/24.
    #[arg(long, required_unless_present = "check")]
    address: Option<String>,
    /// DPDK lcores of the dataplane.
    #[arg(long, default_value = "0")]
    lcores: String,
    /// DPDK virtual device for the dataplane (repeatable).
    #[arg(long = "vdev")]
    vdevs: Vec<String>,
    /// PCI device the dataplane may use (repeatable).
    #[arg(long = "pci")]
    pci_allow: Vec<String>,
    /// The admin socket (created mode 0600).
    #[arg(long, default_value = "/run/ferrox/admin.sock")]
    admin_socket: PathBuf,
    /// Prometheus endpoint; "off" for none.
    #[arg(long, default_value = "127.0.0.1:9638")]
    metrics: String,
    /// Serve twemproxy's stats document (the JSON nutcracker writes to
    /// whoever connects) on this TCP port, for the agents and dashboards
    /// built for nutcracker; 0: off. nutcracker's -s (its default port is
    /// 22222).
    #[arg(short = 's', long, default_value_t = 0)]
    stats_port: u16,
    /// The address the stats port listens on. nutcracker's -a (whose
    /// default is 0.0.0.0).
    #[arg(short = 'a', long, default_value = "127.0.0.1")]
    stats_addr: std::net::IpAddr,
    /// Name of the shared region (files ferrox-NAME.* in hugetlbfs or
    /// /dev/shm).
    #[arg(long, default_value = "control")]
    region: String,
    /// Shared region to start with, MiB (socket buffers grow it).
    #[arg(long, default_value_t = 160)]
    shm_mb: u64,
    /// Grow the socket buffer pool on its own when less than this share
    /// of its client buffers is free (0: only `ferroxctl shm resize`).
    #[arg(long, default_value_t = 0.125)]
    shm_grow_below: f64,
    /// Health check period, milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    health_interval_ms: u64,
    /// A dataplane core whose heartbeat stands still this long (once the
    /// dataplane served) is stuck: the dataplane is killed and started
    /// again. 0: no watchdog.
    #[arg(long, default_value_t = 2000)]
    stall_ms: u64,
    /// On stop, how long the dataplane has after SIGINT before SIGKILL.
    #[arg(long, default_value_t = 3000)]
    stop_grace_ms: u64,
    /// Hold the port in a process of its own, the port holder (a DPDK
    /// primary), that each dataplane attaches to as a secondary: between a
    /// dataplane and its successor (a hot handover, or a restart) frames
    /// wait in the device instead of being lost. `auto`: for tap ports; `on`
    /// also for PCI NICs; af_xdp and af_packet ports cannot be polled by a
    /// secondary process (DPDK 22.11) and reopen instead.
    #[arg(long, value_enum, default_value_t = PortHolderMode::Auto)]
    port_holder: PortHolderMode,
    /// The dataplane binary; default: ferrox-dataplane next to this one.
    #[arg(long)]
    dataplane: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    json: bool,
    /// Log filter, for this process and every dataplane it starts
    /// (`RUST_LOG`'s syntax: `info`, `debug`, `warn,ferrox_dataplane=debug`;
    /// default: `RUST_LOG`, else `info`); `ferroxctl log-level` changes it
    /// while ferrox runs.
    #[arg(long)]
    log_level: Option<String>,
    /// Append the log to this file (this process's, the dataplanes' and the
    /// port holder's) instead of writing to stderr; SIGUSR1 opens it again
    /// (logrotate's postrotate: `kill -USR1 $MAINPID`).
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Further dataplane arguments, after `--`.
    #[arg(last = true)]
    dataplane_args: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum PortHolderMode {
    Auto,
    On,
    Off,
}

/// Why the port holder cannot hold the PCI device `address`, if it
/// cannot: under `uio_pci_generic` every process that closes the device
/// turns its DMA off (the kernel driver's release clears bus mastering),
/// so the first dataplane to exit would stop the NIC under its successor.
fn port_holder_refuses(address: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/bus/pci/devices/{address}/driver")).ok()?;
    let driver = link.file_name()?.to_string_lossy().into_owned();
    (driver == "uio_pci_generic").then(|| {
        format!(
            "--port-holder on: {address} is bound to uio_pci_generic, which turns the NIC's DMA \
             off whenever a process closes it (a dataplane exiting under the port holder would \
             stop the NIC): bind it to vfio-pci (or igb_uio), or give --port-holder off"
        )
    })
}

impl PortHolderMode {
    /// Whether the dataplanes of these ports attach to a port holder.
    fn wanted(self, vdevs: &[String], pci: &[String]) -> bool {
        match self {
            PortHolderMode::On => true,
            PortHolderMode::Off => false,
            PortHolderMode::Auto => {
                pci.is_empty() && vdevs.iter().any(|v| v.starts_with("net_tap"))
            }
        }
    }
}

fn main() {
    // `--man`: the manual page, from the same definitions as `--help`.
    if std::env::args().nth(1).as_deref() == Some("--man") {
        use clap::CommandFactory;
        let _ = clap_mangen::Man::new(Args::command().name("ferrox-control"))
            .section("8")
            .render(&mut std::io::stdout());
        return;
    }
    let args = Args::parse();
    if let Err(e) = ferrox_log::init(ferrox_log::Options {
        json: args.json,
        targets: true,
        level: args.log_level.clone(),
        file: args.log_file.clone(),
    }) {
        let path = args.log_file.unwrap_or_default();
        eprintln!("ferrox-control: --log-file {}: {e}", path.display());
        std::process::exit(1);
    }
    if let Err(e) = run(args) {
        eprintln!("ferrox-control: {e:#}");
        std::process::exit(1);
    }
}

/// `--address`'s IPv4 address; its prefix, when given, must be one (the
/// dataplane takes `ADDRESS/PREFIX`, /24 when none is given, and refuses
/// a bad one: refused here first, before anything starts).
fn parse_address(text: &str) -> Result<Ipv4Addr> {
    let (address, prefix) = text.split_once('/').unwrap_or((text, "24"));
    match prefix.parse::<u8>() {
        Ok(prefix) if prefix <= 32 => {}
        _ => anyhow::bail!("--address {text:?}: {prefix:?} is not a prefix length (0 to 32)"),
    }
    address
        .parse()
        .with_context(|| format!("--address {text:?} is not an IPv4 address"))
}

/// `--check`: the whole check the running daemon makes, offline.
fn check(args: &Args) -> Result<()> {
    let config = match &args.address {
        Some(address) => daemon::read_config(&args.config, parse_address(address)?)?,
        None => daemon::read_config_anywhere(&args.config)?,
    };
    println!(
        "ferrox-control: {} is valid: {} pool(s), {} server(s)",
        args.config.display(),
        config.pools.len(),
        config.pools.iter().map(|p| p.servers.len()).sum::<usize>()
    );
    Ok(())
}

fn run(args: Args) -> Result<()> {
    if args.check {
        return check(&args);
    }
    let address_text = args.address.clone().unwrap_or_default();
    let address = parse_address(&address_text)?;
    let cores = ferrox_control::lcore_count(&args.lcores)
        .with_context(|| format!("--lcores {:?} is not an lcore list", args.lcores))?;
    let dataplane = match &args.dataplane {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("ferrox-dataplane"),
    };
    anyhow::ensure!(
        dataplane.exists(),
        "no dataplane binary at {}",
        dataplane.display()
    );
    let metrics: Option<SocketAddr> = match args.metrics.as_str() {
        "off" => None,
        addr => Some(
            addr.parse()
                .with_context(|| format!("--metrics {addr:?}"))?,
        ),
    };

    // The whole configuration is checked before anything is created.
    daemon::read_config(&args.config, address)?;
    let wants_holder = args.port_holder.wanted(&args.vdevs, &args.pci_allow);
    if wants_holder {
        if let Some(why) = args.pci_allow.iter().find_map(|a| port_holder_refuses(a)) {
            anyhow::bail!(why);
        }
    }
    let options = RegionOptions {
        size: Block::size() + (args.shm_mb << 20),
        ..RegionOptions::default()
    };
    // Files a control process that died left behind are taken back
    // (hugepages would leak otherwise); a live owner's are not touched.
    match Region::remove_if_orphaned(&args.region, &options) {
        Ok(Some(pid)) => tracing::warn!(
            region = %args.region,
            pid,
            "removed the region a control process that is gone (pid {pid}) left behind"
        ),
        Ok(None) => {}
        Err(e @ RegionError::OwnerAlive { .. }) => {
            anyhow::bail!("{e}: another control process runs on region {:?}", args.region)
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "region {:?} is left from an earlier run and cannot be checked; `ferrox-shm remove {}` takes it away",
                    args.region, args.region
                )
            })
        }
    }
    // So are the DPDK runtime directories of its dataplanes (their pids
    // died with it).
    let swept = runtime_dir::sweep(std::path::Path::new(runtime_dir::DPDK_RUN));
    if swept > 0 {
        tracing::info!(
            swept,
            "removed the DPDK runtime directories of dataplanes that are gone"
        );
    }
    let region = Region::create(&args.region, &options)
        .with_context(|| format!("creating region {:?}", args.region))?;
    let block = Block::create(&region, cores)?;
    let settings = Settings {
        config_file: args.config.clone(),
        address,
        health_interval: Duration::from_millis(args.health_interval_ms),
        grow_below: args.shm_grow_below,
        stall: (args.stall_ms > 0).then(|| Duration::from_millis(args.stall_ms)),
        test_hooks: args.dataplane_args.iter().any(|a| a == "--test-hooks"),
    };
    let control = Control::start(settings, block)?;
    if let Some(level) = &args.log_level {
        // The dataplanes take it from the control block as they start.
        control
            .set_log_level(level)
            .map_err(|refused| anyhow::anyhow!("--log-level: {}", refused.0))?;
    }
    let stop = control.stop.clone();
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    // Caught, so that its default action (the end of the process, leaving
    // the region behind) cannot happen.
    signal_hook::flag::register(
        signal_hook::consts::SIGHUP,
        control.reload_requested.clone(),
    )?;
    reopen_logs_on_sigusr1(&control)?;

    let mut threads = daemon::spawn_background(&control);
    threads.push(daemon::serve_admin(control.clone(), &args.admin_socket)?);
    if let Some(addr) = metrics {
        threads.push(daemon::serve_metrics(control.clone(), addr)?);
    }
    let stats = (args.stats_port != 0).then(|| SocketAddr::new(args.stats_addr, args.stats_port));
    if let Some(addr) = stats {
        threads.push(daemon::serve_twemproxy_stats(control.clone(), addr)?);
    }
    println!(
        "ferrox-control: admin socket {}, metrics {}, twemproxy stats {}, region {}, dataplane {} on {cores} core(s)",
        args.admin_socket.display(),
        metrics.map_or("off".into(), |a| format!("http://{a}/metrics")),
        stats.map_or("off".into(), |a| a.to_string()),
        args.region,
        dataplane.display()
    );

    // Where a dataplane leaves its connections for its successor (hot
    // handover). One left by an earlier run is stale: its peers are gone.
    let handover_file = std::env::temp_dir().join(format!("ferrox-{}.handover", args.region));
    let _ = std::fs::remove_file(&handover_file);
    let mut dataplane_args: Vec<std::ffi::OsString> = Vec::new();
    for arg in [
        "--control-region",
        &args.region,
        "--address",
        &address_text,
        "--lcores",
        &args.lcores,
    ] {
        dataplane_args.push(arg.into());
    }
    for vdev in &args.vdevs {
        dataplane_args.extend(["--vdev".into(), vdev.into()]);
    }
    for pci in &args.pci_allow {
        dataplane_args.extend(["--pci".into(), pci.into()]);
    }
    dataplane_args.extend(["--handover-file".into(), handover_file.clone().into()]);
    if let Some(path) = &args.log_file {
        dataplane_args.extend(["--log-file".into(), path.into()]);
    }
    dataplane_args.extend(args.dataplane_args.iter().map(Into::into));
    // The port holder runs the first binary with the dataplane's own
    // arguments (port, lcores, MTU, mbufs), so that what it starts is
    // what every dataplane expects; they attach to it by its file prefix.
    let mut holder = wants_holder.then(|| {
        let prefix = format!("ferrox-port-{}", args.region);
        let mut holder_args = dataplane_args.clone();
        holder_args.extend([
            "--hold-port".into(),
            "--file-prefix".into(),
            prefix.clone().into(),
        ]);
        dataplane_args.extend(["--attach".into(), prefix.into()]);
        PortHolder {
            binary: dataplane.clone(),
            args: holder_args,
            process: None,
        }
    });
    control.dataplane.lock().expect("not poisoned").binary = dataplane.clone();
    let mut template = Template {
        binary: dataplane.clone(),
        args: dataplane_args,
        bank: 0,
    };
    let stop_grace = Duration::from_millis(args.stop_grace_ms);
    let supervised = supervise(&control, &mut template, holder.as_mut(), stop_grace);
    control.notify_stopping();
    if let Some(holder) = &mut holder {
        holder.stop(&control, stop_grace);
    }
    let _ = std::fs::remove_file(&handover_file);

    stop.store(true, Ordering::Relaxed);
    let listeners: Vec<SocketAddr> = metrics.into_iter().chain(stats).collect();
    daemon::wake(&args.admin_socket, &listeners);
    for thread in threads {
        let _ = thread.join();
    }
    let _ = std::fs::remove_file(&args.admin_socket);
    drop(control);
    drop(region);
    println!("ferrox-control: stopped");
    supervised
}

/// Runs the dataplane until the control process is told to stop; a
/// dataplane that exits on its own, or is killed for a stuck core, is
/// started again after a pause (the region, its configuration and its
/// socket pool wait for it). One that fails before it ever served (a wrong
/// port or lcore list) stops the control process with its exit status.
///
/// Runs on the main thread, which must spawn the dataplane: its
/// parent-death signal follows the thread that forked it.
fn supervise(
    control: &Arc<Control>,
    template: &mut Template,
    mut holder: Option<&mut PortHolder>,
    stop_grace: Duration,
) -> Result<()> {
    let mut first = true;
    let mut backoff = Duration::from_millis(500);
    while !control.stop.load(Ordering::Relaxed) {
        if let Some(holder) = holder.as_deref_mut() {
            if let Err(why) = holder.ensure(control) {
                if first {
                    anyhow::bail!("the port holder did not start: {why}; its errors are above");
                }
                tracing::error!("the port holder did not start again: {why}");
                sleep_unless_stopped(control, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        }
        control.dataplane_starting();
        let child = match template.command(false).spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!("cannot start the dataplane: {e}");
                sleep_unless_stopped(control, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let started = Instant::now();
        let mut dataplane = Dataplane::new(child);
        control.dataplane.lock().expect("not poisoned").pid = Some(dataplane.pid());
        tracing::info!(pid = dataplane.pid(), "dataplane started");
        let exit = wait_or_stop(
            control,
            &mut dataplane,
            template,
            holder.as_deref_mut(),
            stop_grace,
        );
        control.dataplane.lock().expect("not poisoned").pid = None;
        runtime_dir::remove(dataplane.pid());
        if stopping(control) {
            tracing::info!(status = ?exit.status, "dataplane stopped");
            return Ok(());
        }
        // A core records the configuration it runs once its port is up.
        let ever_served = control.block().applied().iter().any(|&v| v > 0);
        if first && !ever_served && exit.stall.is_none() {
            anyhow::bail!(
                "the dataplane did not start ({:?}); its errors are above",
                exit.status
            );
        }
        first = false;
        match (exit.stall, exit.holder_gone) {
            (Some(_), _) => {
                tracing::error!(status = ?exit.status, "the dataplane was killed for a stuck core")
            }
            (None, true) => tracing::error!(
                status = ?exit.status,
                "the dataplane was stopped: the port holder is gone, and the port with it"
            ),
            (None, false) => tracing::error!(status = ?exit.status, "the dataplane exited"),
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        sleep_unless_stopped(control, backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
        if control.stop.load(Ordering::Relaxed) {
            break;
        }
        let restarts = {
            let mut state = control.dataplane.lock().expect("not poisoned");
            state.restarts += 1;
            state.restarts
        };
        tracing::warn!(restarts, "starting the dataplane again");
    }
    Ok(())
}

/// Whether the control process is stopping. A dataplane that exits just
/// before the flag is seen was most likely hit by the same signal (a
/// terminal's Ctrl-C, a service manager's stop to the whole group): wait a
/// moment for it before taking the exit for a failure.
fn stopping(control: &Control) -> bool {
    if !control.stop.load(Ordering::Relaxed) {
        sleep_unless_stopped(control, Duration::from_millis(200));
    }
    control.stop.load(Ordering::Relaxed)
}

/// The dataplane process, signalled through a pidfd (by pid where pidfds
/// are missing; the child is not reaped before `wait`, so its pid cannot
/// name another process meanwhile).
struct Dataplane {
    child: Child,
    pidfd: Option<OwnedFd>,
}

impl Drop for Dataplane {
    /// A dataplane that was killed (a stuck core, a stop past its grace)
    /// leaves its DPDK runtime directory behind, empty (`--in-memory`):
    /// removed once it is reaped, as it is named after its pid.
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            runtime_dir::remove(self.child.id());
        }
    }
}

impl Dataplane {
    fn new(child: Child) -> Dataplane {
        let pidfd = rustix::process::pidfd_open(Pid::from_child(&child), PidfdFlags::empty())
            .map_err(|e| tracing::debug!("no pidfd for the dataplane ({e}); signals go by pid"))
            .ok();
        Dataplane { child, pidfd }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        let sent = match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, signal),
            None => rustix::process::kill_process(Pid::from_child(&self.child), signal),
        };
        // ESRCH: it exited meanwhile, which `try_wait` sees next.
        if let Err(e) = sent {
            tracing::debug!(pid = self.pid(), ?signal, "signal not delivered: {e}");
        }
    }
}

/// How the dataplane ended.
#[derive(Debug)]
struct Exit {
    status: Option<ExitStatus>,
    /// It was killed for this stuck core.
    stall: Option<Stall>,
    /// It was killed because the port holder exited (its port went too).
    holder_gone: bool,
}

/// The grace a dataplane killed for a stuck core has between SIGINT and
/// SIGKILL: its healthy cores stop at once, the stuck one never does.
const STALL_GRACE: Duration = Duration::from_millis(500);

/// Waits for the dataplane to exit, watching its cores' heartbeats. On
/// stop, sends it SIGINT (its own clean shutdown) and, after `stop_grace`,
/// SIGKILL; on a stuck core, the same with a shorter grace.
fn wait_or_stop(
    control: &Control,
    dataplane: &mut Dataplane,
    template: &mut Template,
    mut holder: Option<&mut PortHolder>,
    stop_grace: Duration,
) -> Exit {
    let mut stall: Option<Stall> = None;
    let mut kill_at: Option<Instant> = None;
    loop {
        control.supervisor_beat();
        if let Some(status) = holder.as_deref_mut().and_then(|h| h.exited(control)) {
            if !control.stop.load(Ordering::Relaxed) {
                tracing::error!(
                    ?status,
                    pid = dataplane.pid(),
                    "the port holder exited; its port is gone: stopping the dataplane (SIGKILL)"
                );
                dataplane.signal(Signal::KILL);
                return Exit {
                    status: dataplane.child.wait().ok(),
                    stall,
                    holder_gone: true,
                };
            }
        }
        if kill_at.is_none() {
            if let Some(job) = control.take_upgrade() {
                let outcome = upgrade(control, dataplane, template, &job);
                if let Err(why) = &outcome {
                    tracing::error!("upgrade: {why}");
                }
                let _ = job.reply.send(outcome);
                continue;
            }
        }
        if let Ok(Some(status)) = dataplane.child.try_wait() {
            return Exit {
                status: Some(status),
                stall,
                holder_gone: false,
            };
        }
        let now = Instant::now();
        if kill_at.is_none() {
            if control.stop.load(Ordering::Relaxed) {
                control.notify_stopping();
                tracing::info!(
                    pid = dataplane.pid(),
                    grace_ms = stop_grace.as_millis() as u64,
                    "stopping the dataplane (SIGINT, then SIGKILL after the grace)"
                );
                dataplane.signal(Signal::INT);
                kill_at = Some(now + stop_grace);
            } else if let Some(stuck) = control.watch() {
                tracing::error!(
                    core = stuck.core,
                    silent_ms = stuck.silent.as_millis() as u64,
                    published = stuck.published,
                    pid = dataplane.pid(),
                    "dataplane core {} stalled: no heartbeat for {} ms; stopping the dataplane",
                    stuck.core,
                    stuck.silent.as_millis()
                );
                control.dataplane.lock().expect("not poisoned").stalls += 1;
                stall = Some(stuck);
                dataplane.signal(Signal::INT);
                kill_at = Some(now + STALL_GRACE);
            }
        }
        if kill_at.is_some_and(|at| now >= at) {
            tracing::warn!(pid = dataplane.pid(), "the dataplane did not stop; SIGKILL");
            dataplane.signal(Signal::KILL);
            return Exit {
                status: dataplane.child.wait().ok(),
                stall,
                holder_gone: false,
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sleep_unless_stopped(control: &Control, pause: Duration) {
    let deadline = Instant::now() + pause;
    while Instant::now() < deadline && !control.stop.load(Ordering::Relaxed) {
        control.supervisor_beat();
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How to start a dataplane: its binary, its arguments, and which half of
/// the socket pool's core slots it claims (a successor takes the other
/// half while its predecessor still holds its own).
#[derive(Debug, Clone)]
struct Template {
    binary: PathBuf,
    args: Vec<std::ffi::OsString>,
    bank: u8,
}

impl Template {
    fn command(&self, standby: bool) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(&self.args)
            .args(["--core-bank", &self.bank.to_string()])
            // The dataplane dies with this process (its parent-death
            // signal).
            .env("FERROX_CONTROL_PID", std::process::id().to_string());
        if standby {
            command.arg("--standby");
        }
        command
    }
}

/// The process that holds the port (`ferrox-dataplane --hold-port`, a
/// DPDK primary) for the dataplanes that attach to it: started before the
/// first dataplane, again after it exited (the dataplane is then stopped:
/// its port went with it), and stopped after the last.
struct PortHolder {
    binary: PathBuf,
    args: Vec<std::ffi::OsString>,
    process: Option<Dataplane>,
}

/// How long a port holder has to start its port.
const PORT_HOLDER_START: Duration = Duration::from_secs(30);

impl PortHolder {
    /// Starts the port holder unless it runs, and waits until it holds
    /// the port. A holder left by an earlier one that died (its hugepage
    /// files) is taken back by DPDK when the new one starts.
    fn ensure(&mut self, control: &Control) -> std::result::Result<(), String> {
        if self.process.is_some() {
            return Ok(());
        }
        let io = |e: std::io::Error| format!("port holder: {e}");
        let (notify_read, notify_write) = pipe_for_child().map_err(io)?;
        keep_here(&notify_read).map_err(io)?;
        let mut command = Command::new(&self.binary);
        {
            use std::os::fd::AsRawFd;
            command
                .args(&self.args)
                .env("FERROX_CONTROL_PID", std::process::id().to_string())
                .env("FERROX_NOTIFY_FD", notify_write.as_raw_fd().to_string());
        }
        let child = command
            .spawn()
            .map_err(|e| format!("{} does not start: {e}", self.binary.display()))?;
        drop(notify_write);
        let mut holder = Dataplane::new(child);
        let lines = notify_lines(notify_read);
        if let Err(why) = wait_line(&lines, &mut holder, "holding", PORT_HOLDER_START) {
            discard(holder);
            return Err(why);
        }
        tracing::info!(pid = holder.pid(), "port holder started: it holds the port");
        control
            .dataplane
            .lock()
            .expect("not poisoned")
            .port_holder_pid = Some(holder.pid());
        self.process = Some(holder);
        Ok(())
    }

    /// Its exit status, once it exited (then it is started again by the
    /// next `ensure`).
    fn exited(&mut self, control: &Control) -> Option<ExitStatus> {
        let status = self.process.as_mut()?.child.try_wait().ok()??;
        self.process = None;
        let mut state = control.dataplane.lock().expect("not poisoned");
        state.port_holder_pid = None;
        state.port_holder_restarts += 1;
        Some(status)
    }

    /// SIGINT (it closes the port and removes its files), SIGKILL after
    /// `grace`.
    fn stop(&mut self, control: &Control, grace: Duration) {
        let Some(mut holder) = self.process.take() else {
            return;
        };
        holder.signal(Signal::INT);
        let deadline = Instant::now() + grace;
        let status = loop {
            match holder.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => {
                    tracing::warn!(
                        pid = holder.pid(),
                        "the port holder did not stop; SIGKILL (its hugepage files are taken back at the next start)"
                    );
                    holder.signal(Signal::KILL);
                    break holder.child.wait().ok();
                }
            }
        };
        tracing::info!(?status, "port holder stopped");
        control
            .dataplane
            .lock()
            .expect("not poisoned")
            .port_holder_pid = None;
    }
}

/// A pipe whose `child` end the next dataplane inherits (its number in
/// the environment) and whose other end stays here, closed on exec.
fn pipe_for_child() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    Ok((read, write))
}

fn keep_here(fd: &OwnedFd) -> std::io::Result<()> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(())
}

/// Lines a dataplane tells the control process, read on a thread of their
/// own so that waiting for one can time out.
fn notify_lines(read: OwnedFd) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (send, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(std::fs::File::from(read))
            .lines()
            .map_while(Result::ok)
        {
            if send.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

/// Waits up to `timeout` for a line starting with `want` from a
/// dataplane; `Err` says why not (it exited, or said nothing in time).
fn wait_line(
    lines: &std::sync::mpsc::Receiver<String>,
    child: &mut Dataplane,
    want: &str,
    timeout: Duration,
) -> std::result::Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        match lines.recv_timeout(Duration::from_millis(20)) {
            Ok(line) if line.starts_with(want) => return Ok(line),
            Ok(_) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.child.wait().ok();
                return Err(format!("it exited ({status:?}) before saying {want:?}"));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(status)) = child.child.try_wait() {
            return Err(format!("it exited ({status}) before saying {want:?}"));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "it did not say {want:?} within {} ms",
                timeout.as_millis()
            ));
        }
    }
}

/// Kills a dataplane that failed its part in an upgrade.
fn discard(mut dataplane: Dataplane) {
    dataplane.signal(Signal::KILL);
    let _ = dataplane.child.wait();
    runtime_dir::remove(dataplane.pid());
}

/// The field `name=` of a dataplane's line.
fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs `next` with `--check` (its arguments, the configuration, the
/// control block's layout): a binary that would not start is refused
/// before anything changes.
fn preflight(next: &Template, timeout: Duration) -> std::result::Result<(), String> {
    use std::io::Read;
    let refused = |why: String| {
        format!(
            "upgrade refused: preflight of {}: {why}; nothing changed",
            next.binary.display()
        )
    };
    let mut check = next
        .command(false)
        .arg("--check")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| refused(format!("it does not start: {e}")))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match check.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = check.kill();
                let _ = check.wait();
                return Err(refused(format!(
                    "--check did not finish within {} ms",
                    timeout.as_millis()
                )));
            }
        }
    };
    let (mut said, mut complained) = (String::new(), String::new());
    if let Some(mut out) = check.stdout.take() {
        let _ = out.read_to_string(&mut said);
    }
    if let Some(mut err) = check.stderr.take() {
        let _ = err.read_to_string(&mut complained);
    }
    if status.success() && said.contains("ferrox-dataplane: check passed") {
        return Ok(());
    }
    let why = complained
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .or_else(|| said.lines().next())
        .unwrap_or("it said nothing");
    Err(refused(format!("--check ended {status}: {}", why.trim())))
}

/// Waits until `enough` says so (then `None`: it may still run) or the
/// old dataplane exits (its status); past `deadline` it is killed.
fn wait_for_old(
    dataplane: &mut Dataplane,
    deadline: Instant,
    enough: impl Fn() -> bool,
) -> Option<ExitStatus> {
    loop {
        if enough() {
            return None;
        }
        if let Ok(Some(status)) = dataplane.child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            tracing::error!(
                pid = dataplane.pid(),
                "the old dataplane did not hand over or exit in time; SIGKILL"
            );
            dataplane.signal(Signal::KILL);
            return dataplane.child.wait().ok();
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

/// Waits up to `timeout` for the old dataplane to exit, then kills it.
fn reap(dataplane: &mut Dataplane, timeout: Duration) -> Option<ExitStatus> {
    wait_for_old(dataplane, Instant::now() + timeout, || false)
}

/// A hot handover from the running dataplane to `job.binary`:
///
/// 1. preflight: the new binary checks its arguments, the configuration
///    and the control block's layout (`--check`);
/// 2. it starts in standby (EAL up, port not opened) on the other half of
///    the pool's core slots; if it does not get there, it is killed and
///    nothing changed;
/// 3. the old one is asked (the handover board, then SIGUSR2) to drain,
///    freeze, write its connections to the handover file and close its
///    port (sealed on the board), then it exits;
/// 4. the new one is told to go: it opens the port, restores every
///    connection, and says `committed`. Should it fail before, the old
///    binary is started again and restores the same file (rollback).
///
/// The answer has the board's measures: the brownout (drain: requests in
/// flight finish, new ones wait), the blackout (freeze to the new
/// process's first frame), and the connections exported and restored.
fn upgrade(
    control: &Control,
    current: &mut Dataplane,
    template: &mut Template,
    job: &daemon::UpgradeJob,
) -> std::result::Result<serde_json::Value, String> {
    let outcome = upgrade_steps(control, current, template, job);
    control.upgrade_step(None);
    outcome
}

fn upgrade_steps(
    control: &Control,
    current: &mut Dataplane,
    template: &mut Template,
    job: &daemon::UpgradeJob,
) -> std::result::Result<serde_json::Value, String> {
    let begun = Instant::now();
    control.upgrade_step(Some("preflight"));
    let next = Template {
        binary: job.binary.clone(),
        args: template.args.clone(),
        bank: 1 - template.bank,
    };
    preflight(&next, job.timeout)?;
    control.upgrade_step(Some("standby"));
    // A clean board before the successor starts: it watches for the
    // freeze (af_packet overlap), which must be this handover's.
    let board = control.block();
    board.begin_handover(job.drain);
    tracing::info!(binary = %next.binary.display(), "upgrade: preflight passed; starting the new dataplane in standby");
    let io = |e: std::io::Error| format!("upgrade: {e}");
    let (notify_read, notify_write) = pipe_for_child().map_err(io)?;
    let (go_read, go_write) = pipe_for_child().map_err(io)?;
    keep_here(&notify_read).map_err(io)?;
    keep_here(&go_write).map_err(io)?;
    let mut command = next.command(true);
    {
        use std::os::fd::AsRawFd;
        command
            .env("FERROX_NOTIFY_FD", notify_write.as_raw_fd().to_string())
            .env("FERROX_GO_FD", go_read.as_raw_fd().to_string());
    }
    let child = command.spawn().map_err(|e| {
        format!(
            "upgrade refused: {} does not start: {e}",
            next.binary.display()
        )
    })?;
    drop((notify_write, go_read));
    let mut new = Dataplane::new(child);
    let lines = notify_lines(notify_read);
    if let Err(why) = wait_line(&lines, &mut new, "standby", job.timeout) {
        discard(new);
        return Err(format!("upgrade refused: the new dataplane did not reach standby: {why}; the running one goes on"));
    }
    let standby = begun.elapsed();
    tracing::info!(
        standby_ms = standby.as_millis() as u64,
        "upgrade: standby; handing over"
    );
    control.upgrade_step(Some("handing over"));
    let asked = Instant::now();
    current.signal(Signal::USR2);
    // Sealed (the file written, the port closed) is enough to go on: the
    // old process may still be winding down. Drain, then export, at most.
    let deadline = asked + job.drain.unwrap_or(Duration::from_secs(1)) + job.timeout;
    let old_status = wait_for_old(current, deadline, || board.stamped(Step::Sealed));
    let sealed = Instant::now();
    let handed_over = board.stamped(Step::Sealed) || old_status.and_then(|s| s.code()) == Some(75);
    if !handed_over {
        tracing::error!(status = ?old_status, "upgrade: the old dataplane did not hand over; its connections are lost");
    }
    control.dataplane_starting();
    control.dataplane.lock().expect("not poisoned").pid = Some(new.pid());
    control.upgrade_step(Some("taking over"));
    {
        use std::io::Write;
        let mut go = std::fs::File::from(go_write);
        let _ = go.write_all(b"go\n");
    }
    match wait_line(&lines, &mut new, "committed", job.timeout) {
        Ok(line) => {
            let done = Instant::now();
            let mut old = std::mem::replace(current, new);
            *template = next;
            let generation = {
                let mut state = control.dataplane.lock().expect("not poisoned");
                state.binary = template.binary.clone();
                state.generation += 1;
                state.generation
            };
            // The blackout ends with the first frame the new process
            // receives: with clients talking, within a moment.
            let waiting = Instant::now();
            while !board.stamped(Step::FirstFrame) && waiting.elapsed() < Duration::from_millis(250)
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            let report = board.handover_report();
            let old_status = old_status.or_else(|| reap(&mut old, job.timeout));
            runtime_dir::remove(old.pid());
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let brownout = report.between(Step::Asked, Step::AllFrozen);
            let blackout = report.between(Step::Frozen, Step::FirstFrame);
            let restored = field(&line, "restored");
            let reset = field(&line, "reset_on_restore");
            tracing::info!(
                generation,
                exported = report.exported,
                restored,
                reset_on_restore = reset,
                brownout_ms = brownout.map(ms),
                blackout_ms = blackout.map(ms),
                pause_ms = ms(done - asked),
                old_exit = ?old_status,
                "upgrade: done"
            );
            Ok(serde_json::json!({
                "generation": generation,
                "binary": template.binary.display().to_string(),
                "pid": current.pid(),
                "handed_over": handed_over,
                "exported": report.exported,
                "restored": restored,
                "reset_on_restore": reset,
                "standby_ms": ms(standby),
                "brownout_ms": brownout.map(ms),
                "blackout_ms": blackout.map(ms),
                "sealed_to_restored_ms": report.between(Step::Sealed, Step::Restored).map(ms),
                "hand_over_ms": ms(sealed - asked),
                "take_over_ms": ms(done - sealed),
                "pause_ms": ms(done - asked),
            }))
        }
        Err(why) => {
            discard(new);
            // The old process must be gone before its binary starts again
            // on the same half of the pool.
            if old_status.is_none() {
                reap(current, job.timeout);
            }
            // The old binary takes its connections back from the file
            // (a normal start on the old half restores it).
            tracing::error!(
                "upgrade: the new dataplane failed ({why}); rolling back to {}",
                template.binary.display()
            );
            control.dataplane_starting();
            let back = template.command(false).spawn().map_err(|e| {
                format!(
                    "{} ({why}) and the rollback did not start: {e}",
                    daemon::UPGRADE_FAILED
                )
            })?;
            *current = Dataplane::new(back);
            control.dataplane.lock().expect("not poisoned").pid = Some(current.pid());
            Err(format!(
                "{}: the new dataplane {why}; rolled back to {} (pid {}), which takes the connections back",
                daemon::UPGRADE_FAILED,
                template.binary.display(),
                current.pid()
            ))
        }
    }
}

/// SIGUSR1 (logrotate's postrotate) opens the log file again, here and,
/// passed on, in the dataplane and the port holder, which write to the
/// same file. Caught in any case: its default action ends the process.
/// The thread is never joined, so it holds the control state weakly: the
/// shared region is removed when the rest lets go of it.
fn reopen_logs_on_sigusr1(control: &Arc<Control>) -> anyhow::Result<()> {
    let control = Arc::downgrade(control);
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])?;
    std::thread::Builder::new()
        .name("sigusr1".into())
        .spawn(move || {
            for _ in signals.forever() {
                match ferrox_log::reopen() {
                    Ok(Some(path)) => {
                        tracing::info!(path = %path.display(), "SIGUSR1: log file opened again")
                    }
                    Ok(None) => tracing::info!("SIGUSR1: logging to stderr; no file to open again"),
                    Err(e) => tracing::error!(
                        "SIGUSR1: the log file could not be opened again ({e}); the log goes on to the old one"
                    ),
                }
                let Some(control) = control.upgrade() else {
                    return;
                };
                let state = control.dataplane.lock().expect("not poisoned");
                for pid in [state.pid, state.port_holder_pid].into_iter().flatten() {
                    // Our own children, not yet reaped while their pid is
                    // kept: the pid cannot have been reused.
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::USR1);
                    }
                }
            }
        })?;
    Ok(())
}
