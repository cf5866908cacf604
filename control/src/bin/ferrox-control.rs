//! `ferrox-control`: the appliance's manager on the kernel stack.
//!
//! Validates the configuration completely before anything starts, creates
//! the shared region (control block and room for the socket buffer pool),
//! starts `ferrox-dataplane` attached to it and restarts it if it dies,
//! and serves `ferroxctl` on a Unix socket and Prometheus on 127.0.0.1.
//! SIGINT or SIGTERM stops the dataplane, then the control process, and
//! removes the region.
#![allow(clippy::disallowed_methods)] // a manager process: it sleeps and waits

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ferrox_block::Block;
use ferrox_control::daemon::{self, Control, Settings};
use hugepage_pool::{Region, RegionOptions};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "ferrox control process: configuration, health, statistics, shared memory"
)]
struct Args {
    /// Proxy configuration: ferrox TOML, or twemproxy YAML (.yml/.yaml).
    #[arg(long)]
    config: PathBuf,
    /// The dataplane's address and prefix, e.g. 198.18.0.2/24.
    #[arg(long)]
    address: String,
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
    /// The dataplane binary; default: ferrox-dataplane next to this one.
    #[arg(long)]
    dataplane: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    json: bool,
    /// Further dataplane arguments, after `--`.
    #[arg(last = true)]
    dataplane_args: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.json {
        logs.json().init();
    } else {
        logs.init();
    }
    if let Err(e) = run(args) {
        eprintln!("ferrox-control: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let address: Ipv4Addr = args
        .address
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("--address {:?} is not an IPv4 address", args.address))?;
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
    let options = RegionOptions {
        size: Block::size() + (args.shm_mb << 20),
        ..RegionOptions::default()
    };
    let region = Region::create(&args.region, &options).with_context(|| {
        format!(
            "creating region {:?} (another control process? else `ferrox-shm remove`)",
            args.region
        )
    })?;
    let block = Block::create(&region, cores)?;
    let settings = Settings {
        config_file: args.config.clone(),
        address,
        health_interval: Duration::from_millis(args.health_interval_ms),
        grow_below: args.shm_grow_below,
    };
    let control = Control::start(settings, block)?;
    let stop = control.stop.clone();
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;

    let mut threads = daemon::spawn_background(&control);
    threads.push(daemon::serve_admin(control.clone(), &args.admin_socket)?);
    if let Some(addr) = metrics {
        threads.push(daemon::serve_metrics(control.clone(), addr)?);
    }
    println!(
        "ferrox-control: admin socket {}, metrics {}, region {}, dataplane {} on {cores} core(s)",
        args.admin_socket.display(),
        metrics.map_or("off".into(), |a| format!("http://{a}/metrics")),
        args.region,
        dataplane.display()
    );

    let mut command = Command::new(&dataplane);
    command
        .args([
            "--control-region",
            &args.region,
            "--address",
            &args.address,
            "--lcores",
            &args.lcores,
        ])
        .args(args.vdevs.iter().flat_map(|v| ["--vdev", v.as_str()]))
        .args(args.pci_allow.iter().flat_map(|p| ["--pci", p.as_str()]))
        .args(&args.dataplane_args);
    let supervised = supervise(&control, &mut command);

    stop.store(true, Ordering::Relaxed);
    daemon::wake(&args.admin_socket, metrics);
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
/// dataplane that exits on its own is started again after a pause (the
/// region, its configuration and its socket pool wait for it). One that
/// fails before it ever served (a wrong port or lcore list) stops the
/// control process with its exit status.
fn supervise(control: &Arc<Control>, command: &mut Command) -> Result<()> {
    let mut first = true;
    let mut backoff = Duration::from_millis(500);
    while !control.stop.load(Ordering::Relaxed) {
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                tracing::error!("cannot start the dataplane: {e}");
                sleep_unless_stopped(control, backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        let started = Instant::now();
        control.dataplane.lock().expect("not poisoned").pid = Some(child.id());
        tracing::info!(pid = child.id(), "dataplane started");
        let status = wait_or_stop(control, &mut child);
        control.dataplane.lock().expect("not poisoned").pid = None;
        if control.stop.load(Ordering::Relaxed) {
            tracing::info!(?status, "dataplane stopped");
            return Ok(());
        }
        // A core records the configuration it runs once its port is up.
        let ever_served = control.block().applied().iter().any(|&v| v > 0);
        if first && !ever_served {
            anyhow::bail!("the dataplane did not start ({status:?}); its errors are above");
        }
        first = false;
        tracing::error!(?status, "the dataplane exited; starting it again");
        control.dataplane.lock().expect("not poisoned").restarts += 1;
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(500);
        }
        sleep_unless_stopped(control, backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    Ok(())
}

/// Waits for the dataplane to exit; on stop, sends it SIGINT (its own
/// clean shutdown) and, after 10 s, SIGKILL.
fn wait_or_stop(control: &Control, child: &mut Child) -> Option<std::process::ExitStatus> {
    let mut interrupted: Option<Instant> = None;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if control.stop.load(Ordering::Relaxed) {
            match interrupted {
                None => {
                    let _ = Command::new("kill")
                        .args(["-INT", &child.id().to_string()])
                        .status();
                    interrupted = Some(Instant::now());
                }
                Some(at) if at.elapsed() > Duration::from_secs(10) => {
                    let _ = child.kill();
                    return child.wait().ok();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sleep_unless_stopped(control: &Control, pause: Duration) {
    let deadline = Instant::now() + pause;
    while Instant::now() < deadline && !control.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}
