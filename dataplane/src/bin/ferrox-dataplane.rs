//! `ferrox-dataplane`: one dataplane process on a DPDK port.
//!
//! Until the control process exists it is configured from the command line
//! (the port, the address, cores) and a proxy config file (`--config`,
//! ferrox TOML or a twemproxy `nutcracker.yml`). Without a config it serves
//! the RESP echo service (PING, ECHO), which proves the dataplane alone.
//!
//! Started by `ferrox-control` (which says so with `FERROX_CONTROL_PID`),
//! it dies with it: the parent-death signal is SIGKILL, so no orphan keeps
//! polling the NIC queue at 100% CPU.
use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferrox_dataplane::eal::{Eal, EalConfig, EalRole};
use std::sync::{Arc, Mutex};

use ferrox_block::{Block, Counter, Snapshot, Step};
use ferrox_dataplane::lcore::{
    Clock, Core, CoreService, Handover, IdlePolicy, Inherited, LoopStats, Steering, StopOnPanic,
    Successor, TestStall,
};
use ferrox_dataplane::net::device::{DEFAULT_MTU, MAX_MTU};
use ferrox_dataplane::net::memory::{Sizes, SocketPool};
use ferrox_dataplane::net::stack::{Stack, StackConfig};
use ferrox_dataplane::port::{format_mac, Port, PortConfig, RxChecksum};
use ferrox_dataplane::service::proxy::{follow_block, Proxy, ReloadBoard};
use ferrox_dataplane::service::resp_echo::RespEcho;
use ferrox_dataplane::service::PerConnection;
use hugepage_pool::{Region, RegionOptions};
use smoltcp::wire::Ipv4Address;

#[derive(Parser, Debug)]
#[command(version, about = "ferrox dataplane: smoltcp on a DPDK port")]
struct Args {
    /// Check the arguments, the configuration (or the control block's
    /// layout and configuration) and exit, starting nothing: the preflight
    /// of `ferroxctl upgrade`.
    #[arg(long)]
    check: bool,
    /// DPDK virtual device, e.g. net_af_packet0,iface=veth1 (repeatable).
    #[arg(long = "vdev")]
    vdevs: Vec<String>,
    /// PCI device DPDK may use (repeatable); none means --no-pci.
    #[arg(long = "pci")]
    pci_allow: Vec<String>,
    /// Address and prefix the stack answers on, e.g. 198.18.0.2/24.
    #[arg(long)]
    address: String,
    /// Router for servers outside the address's subnet.
    #[arg(long)]
    gateway: Option<Ipv4Address>,
    /// Proxy configuration: ferrox TOML, or twemproxy YAML (.yml/.yaml).
    /// Without it, the RESP echo service answers on --listen.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The control process's shared region: the configuration comes from
    /// its control block (and changes there live), and statistics go there.
    #[arg(long)]
    control_region: Option<String>,
    /// TCP port of the echo service (repeatable; ignored with --config).
    #[arg(long = "listen", default_value = "6379")]
    ports: Vec<u16>,
    #[arg(long, default_value = "0")]
    lcores: String,
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
    /// DPDK runtime file prefix; default ferrox-<pid>.
    #[arg(long)]
    file_prefix: Option<String>,
    /// Most connections in the handshake at once, per core; default: the
    /// largest `backlog` of the configuration's pools, else 1024.
    #[arg(long)]
    backlog: Option<usize>,
    #[arg(long, default_value_t = 65536)]
    max_connections: usize,
    #[arg(long, default_value_t = 16383)]
    mbufs: u32,
    /// MTU of the port, up to 9000 (jumbo frames) where the driver allows
    /// it: af_xdp up to about 3500, af_packet as its framesz allows. The
    /// kernel side of a veth pair needs the same MTU.
    #[arg(long, default_value_t = DEFAULT_MTU, value_parser = clap::value_parser!(u16).range(576..=MAX_MTU as i64))]
    mtu: u16,
    /// Who checks received IPv4/TCP checksums: `auto` trusts frames on a
    /// host-internal link (a veth or tap, as the kernel does), lets a NIC
    /// with checksum offload check them, and verifies the rest in software.
    #[arg(long, value_enum, default_value_t = RxChecksumArg::Auto)]
    rx_checksum: RxChecksumArg,
    /// Client connections' worth of socket buffers to start with (the pool
    /// grows past it); default: --max-connections, at most 1024.
    #[arg(long)]
    socket_pool_clients: Option<u32>,
    /// Log as JSON lines.
    #[arg(long)]
    json: bool,
    /// Log filter (`RUST_LOG`'s syntax; default: `RUST_LOG`, else `info`).
    /// Under a control process, the filter it publishes (`ferroxctl
    /// log-level`) replaces it.
    #[arg(long)]
    log_level: Option<String>,
    /// Append the log to this file instead of writing to stderr; SIGUSR1
    /// opens it again (after logrotate moved it).
    #[arg(long)]
    log_file: Option<std::path::PathBuf>,
    /// Print the port's extended statistics (name=value, non-zero ones) on
    /// stdout when stopping.
    #[arg(long)]
    xstats: bool,
    /// On PMDs without RX interrupts (af_xdp, af_packet), the longest sleep of
    /// an idle core in microseconds: lower wakes faster and costs more idle
    /// CPU (see docs/performance.md).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(20..=100_000))]
    idle_max_sleep_us: u64,
    /// Empty polls in a row before an idle core first sleeps: more keeps
    /// latency low on a dedicated core, fewer leaves CPU to other processes
    /// on a shared one (see docs/performance.md).
    #[arg(long, default_value_t = IdlePolicy::default().spin_polls)]
    idle_spin_polls: u32,
    /// Receive buffer of each client connection, in KiB (a chunk of the
    /// socket pool). A pipeline larger than this waits for the window.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(4..=128))]
    client_buffer_kib: u32,
    /// Send buffer of each client connection, in KiB: replies beyond it
    /// wait in the proxy's output until the client acknowledges. Small by
    /// default: every connection holds it from accept to close, and larger
    /// did not serve pipelines faster (docs/performance.md).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(4..=128))]
    client_send_buffer_kib: u32,
    /// Receive and send buffers of a client connection until it needs
    /// more, in KiB: a connection moves to the buffers above (without the
    /// client noticing) once a request or reply outgrows these, so an
    /// idle one holds little. 0: the full buffers from accept on.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=16))]
    client_idle_buffer_kib: u32,
    /// How long an ACK may wait to ride on outgoing data, in microseconds
    /// (0: acknowledge at once).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    ack_delay_us: u64,
    /// Print a statistics line on stdout this often (milliseconds; 0: never).
    #[arg(long, default_value_t = 0)]
    stats_every: u64,
    /// With each statistics line, and at the stop, print the same figures
    /// as one JSON line (per core and in total), for scripts.
    #[arg(long)]
    stats_json: bool,
    /// Honour the control block's fault-injection requests (`ferroxctl
    /// debug stall-core N` wedges core N). For tests only.
    #[arg(long, hide = true)]
    test_hooks: bool,
    /// On each SIGUSR2, every core hands its client connections over to a
    /// fresh stack of its own (new sockets, new sequence numbers), with
    /// no client noticing: the in-process form of the hot handover, for
    /// tests.
    #[arg(long, hide = true, conflicts_with = "handover_file")]
    handover_on_sigusr2: bool,
    /// Hot handover between processes: on SIGUSR2, drain, write every
    /// client connection to this file, close the port and exit 75; at
    /// start, take over the connections a predecessor wrote here. Set by
    /// `ferrox-control`.
    #[arg(long)]
    handover_file: Option<std::path::PathBuf>,
    /// Start the EAL, then wait for `go` on FERROX_GO_FD before opening
    /// the port (the successor of a hot handover, started by
    /// `ferrox-control` while its predecessor still serves).
    #[arg(long, requires = "handover_file")]
    standby: bool,
    /// Which half of the socket pool's core slots this process claims (0
    /// or 1): a successor takes the other half while its predecessor
    /// still holds its own.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    core_bank: u8,
    /// Be the port holder: start the EAL as the DPDK primary under
    /// --file-prefix, start the port (its queues for --lcores, its MTU and
    /// mbuf pool) and hold it until SIGINT or SIGTERM, serving nothing.
    /// Dataplanes attach to it (--attach) and poll its queues; between
    /// one dataplane and its successor the frames wait in the device.
    /// Started by `ferrox-control` for tap and PCI ports.
    #[arg(long, conflicts_with_all = ["attach", "standby", "handover_on_sigusr2"])]
    hold_port: bool,
    /// Attach, as a DPDK secondary, to the port holder with this file
    /// prefix and poll the port it started (same --lcores and --mtu),
    /// instead of opening a port of its own.
    #[arg(long, value_name = "FILE_PREFIX")]
    attach: Option<String>,
    /// How long a handover waits for requests in flight before they fail.
    #[arg(long, default_value_t = 500, hide = true)]
    drain_ms: u64,
}

/// Set by `ferrox-control` to its pid in the dataplane's environment.
const CONTROL_PID_ENV: &str = "FERROX_CONTROL_PID";

/// Under a control process: dies (SIGKILL) when it does. The check of the
/// parent's pid after `prctl` closes the race with a parent that died
/// before it.
fn die_with_control_process() -> Result<()> {
    let Some(control) = std::env::var_os(CONTROL_PID_ENV) else {
        return Ok(());
    };
    let control: i32 = control
        .to_str()
        .and_then(|pid| pid.parse().ok())
        .with_context(|| format!("{CONTROL_PID_ENV}={control:?} is not a pid"))?;
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .context("setting the parent-death signal")?;
    let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get());
    if parent != control {
        bail!("the control process (pid {control}) is gone");
    }
    Ok(())
}

/// Counts each thread's allocations, for `core_allocations`.
#[global_allocator]
static ALLOCATOR: ferrox_dataplane::alloc_count::CountingAllocator =
    ferrox_dataplane::alloc_count::CountingAllocator;

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RxChecksumArg {
    Auto,
    Verify,
    Trust,
}

fn main() {
    // `--man`: the manual page, from the same definitions as `--help`.
    if std::env::args().nth(1).as_deref() == Some("--man") {
        use clap::CommandFactory;
        let _ = clap_mangen::Man::new(Args::command().name("ferrox-dataplane"))
            .section("8")
            .render(&mut std::io::stdout());
        return;
    }
    let mut args = Args::parse();
    if let Err(e) = ferrox_log::init(ferrox_log::Options {
        json: args.json,
        targets: true,
        level: args.log_level.clone(),
        file: args.log_file.clone(),
    }) {
        let path = args.log_file.unwrap_or_default();
        eprintln!("ferrox-dataplane: --log-file {}: {e}", path.display());
        std::process::exit(1);
    }
    ferrox_dataplane::signals::reopen_log_on_sigusr1();
    for vdev in &mut args.vdevs {
        let sized = ferrox_dataplane::port::with_af_packet_ring(vdev).into_owned();
        if sized != *vdev {
            tracing::info!(vdev = %sized, "af_packet rings of {} frames (framecnt= sets another size)",
                ferrox_dataplane::port::AF_PACKET_FRAMES);
            *vdev = sized;
        }
    }
    match die_with_control_process().and_then(|()| run(args)) {
        Ok(Served::Stopped) => {}
        Ok(Served::HandedOver(_)) => {
            std::process::exit(ferrox_dataplane::handover::EXIT_HANDED_OVER)
        }
        Err(e) => {
            eprintln!("ferrox-dataplane: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Core `core`'s seed for its stack and engine: the process's random
/// number, apart per core.
fn core_seed(core: usize) -> u64 {
    ferrox_dataplane::net::flow::process_seed() ^ (core as u64) << 32
}

fn parse_cidr(text: &str) -> Result<(Ipv4Address, u8)> {
    let (ip, prefix) = text.split_once('/').unwrap_or((text, "24"));
    let ip: Ipv4Address = ip
        .parse()
        .map_err(|_| anyhow::anyhow!("bad IPv4 address {ip:?}"))?;
    let prefix: u8 = prefix.parse().context("bad prefix length")?;
    if prefix > 32 {
        bail!("prefix length {prefix} is over 32");
    }
    Ok((ip, prefix))
}

/// How the cores ended.
#[derive(Debug)]
enum Served {
    Stopped,
    /// Their connections go to a successor process: what each core
    /// exported, for the handover file.
    HandedOver(HandoverFile),
}

/// The handover file to write, once the port is closed.
#[derive(Debug)]
struct HandoverFile {
    path: std::path::PathBuf,
    facts: ferrox_dataplane::handover::Facts,
    exports: Vec<ferrox_dataplane::net::stack::Export>,
}

fn run(args: Args) -> Result<Served> {
    let (address, prefix_len) = parse_cidr(&args.address)?;
    if args.vdevs.is_empty() && args.pci_allow.is_empty() && args.attach.is_none() {
        bail!("name a port: --vdev (e.g. net_af_packet0,iface=veth1) or --pci");
    }
    // The whole configuration is checked before anything starts.
    let (proxy, block) = match (&args.config, &args.control_region) {
        (Some(_), Some(_)) => bail!("give --config or --control-region, not both"),
        (Some(path), None) => (
            Some(ferrox_dataplane::service::proxy::load(path, address)?),
            None,
        ),
        (None, Some(name)) => {
            let region = Region::attach(name, &RegionOptions::default())
                .with_context(|| format!("attaching the control region {name:?}"))?;
            let block = Block::attach(&region)?;
            let (version, proxy) = ferrox_dataplane::service::proxy::load_block(&block, address)?;
            (Some(proxy), Some((block, version)))
        }
        (None, None) => (None, None),
    };
    if args.check {
        println!(
            "ferrox-dataplane: check passed; {} {} pool(s)",
            env!("CARGO_PKG_VERSION"),
            proxy.as_ref().map_or(0, |p| p.config.pools.len())
        );
        return Ok(Served::Stopped);
    }
    for pool in proxy.iter().flat_map(|p| &p.config.pools) {
        tracing::info!(pool = %pool.name, listen = %pool.listen, servers = pool.servers.len(), "pool");
    }
    let stop = ferrox_dataplane::signals::stop_on_signals();
    // A successor on af_packet opens its own socket on the interface
    // while its predecessor still serves (each gets a copy of every
    // frame): from the predecessor's freeze on, what arrives waits in its
    // ring instead of being lost. Other PMDs give the port to one process
    // at a time: the successor probes it after `go`.
    let overlap = args.standby
        && args.attach.is_none()
        && args.vdevs.len() == 1
        && args.vdevs[0].starts_with(ferrox_dataplane::port::OVERLAPPING_DRIVER);
    let role = match (args.hold_port, &args.attach) {
        (true, _) => EalRole::Primary,
        (false, Some(_)) => EalRole::Secondary,
        (false, None) => EalRole::Private,
    };
    let eal = Eal::init(&EalConfig {
        lcores: args.lcores.clone(),
        memory_mb: args.memory_mb,
        file_prefix: args
            .attach
            .clone()
            .or_else(|| args.file_prefix.clone())
            .unwrap_or_else(|| format!("ferrox-{}", std::process::id())),
        vdevs: if args.standby && !overlap {
            Vec::new()
        } else {
            args.vdevs.clone()
        },
        pci_allow: args.pci_allow.clone(),
        role,
        ..EalConfig::default()
    })?;
    let cores = ferrox_dataplane::ffi::lcores().len();
    let port_config = PortConfig {
        queues: cores as u16,
        mbufs: args.mbufs,
        mtu: args.mtu,
        rx_checksum: match args.rx_checksum {
            RxChecksumArg::Auto => None,
            RxChecksumArg::Verify => Some(RxChecksum::Verify),
            RxChecksumArg::Trust => Some(RxChecksum::Trust),
        },
    };
    if args.hold_port {
        return hold_port(eal, port_config, stop);
    }
    // A port holder's port is there from the start: a successor attaches
    // to it in standby already (frames wait in the device until it polls).
    let mut opened = match &args.attach {
        Some(_) => Some(Port::attach(&eal, 0, port_config)?),
        None => None,
    };
    if args.standby {
        // Fault injection for the rollback tests: hang before standby, or
        // fail once told to go.
        let fault = std::env::var("FERROX_HANDOVER_FAULT").unwrap_or_default();
        if fault == "hang-in-standby" {
            tracing::warn!("fault injection: hanging in standby");
            loop {
                std::thread::park();
            }
        }
        let go = ferrox_dataplane::handover::GoSignal::listen();
        if overlap {
            let mut port = Port::start(&eal, 0, port_config)?;
            ferrox_dataplane::handover::notify("standby");
            tracing::info!("standby with the port open: waiting for the predecessor to freeze");
            let board = block.as_ref().map(|(block, _)| block);
            let discarded = ferrox_dataplane::handover::discard_until_frozen(&mut port, board, &go);
            tracing::info!(
                discarded,
                "standby: the predecessor froze; frames wait in the ring"
            );
            opened = Some(port);
        } else if opened.is_some() {
            ferrox_dataplane::handover::notify("standby");
            tracing::info!(
                "standby, attached to the port holder: waiting for the predecessor to hand over"
            );
        } else {
            // The EAL is up; the port is the predecessor's until it exits.
            ferrox_dataplane::handover::notify("standby");
            tracing::info!("standby: waiting for the predecessor to hand over");
        }
        if !go.wait() {
            tracing::info!("standby: the upgrade was called off");
            return Ok(Served::Stopped);
        }
        if fault == "after-go" {
            bail!("fault injection: failing after go");
        }
        if opened.is_none() {
            for vdev in &args.vdevs {
                let wait = std::time::Duration::from_secs(2);
                if let Some(waited) = ferrox_dataplane::port::wait_for_af_xdp_queues(vdev, wait) {
                    tracing::info!(
                        waited_us = waited.as_micros() as u64,
                        "the kernel released the predecessor's AF_XDP queues"
                    );
                }
                eal.probe(vdev)?;
            }
        }
    }
    let ports = Port::available();
    tracing::info!(?ports, "ports found");
    // Right after a predecessor closed its port, the kernel may still be
    // releasing its AF_XDP socket (the queue is freed by deferred work),
    // and the queue setup fails. The successor waited for that above where
    // the probe can tell; where it cannot, it removes the device, probes
    // it again and retries for a moment.
    let opening = std::time::Instant::now();
    let mut port = match opened {
        Some(port) => port,
        None => loop {
            match Port::start(&eal, 0, port_config) {
                Ok(port) => break port,
                Err(e)
                    if args.handover_file.is_some()
                        && args.vdevs.len() == 1
                        && opening.elapsed() < std::time::Duration::from_secs(2) =>
                {
                    tracing::debug!("port not ready yet ({e}); probing it again");
                    eal.remove(&args.vdevs[0])?;
                    // Start-up, before any poll loop: a pause is what it needs.
                    #[allow(clippy::disallowed_methods)]
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    eal.probe(&args.vdevs[0])?;
                }
                Err(e) => return Err(e.into()),
            }
        },
    };
    if opening.elapsed() > std::time::Duration::from_millis(50) {
        tracing::info!(
            waited_ms = opening.elapsed().as_millis() as u64,
            "port opened after waiting for it"
        );
    }
    let (link_up, speed) = port.link();
    tracing::info!(link_up, speed_mbps = speed, "link");
    let mut config = StackConfig {
        mac: port.mac(),
        address,
        prefix_len,
        gateway: args.gateway,
        ports: args.ports.clone(),
        backlog: args.backlog.unwrap_or(1024),
        max_connections: args.max_connections,
        cores,
        ack_delay: (args.ack_delay_us > 0)
            .then(|| smoltcp::time::Duration::from_micros(args.ack_delay_us)),
        mtu: port.mtu(),
        rx_checksum: port.rx_checksum(),
        tx_checksum_offload: port.tx_checksum_offload(),
        ..StackConfig::default()
    };
    match proxy {
        None => {
            let served = serve(
                &args,
                None,
                stop,
                &mut port,
                config,
                |_| PerConnection::new(RespEcho::default()),
                |echo| {
                    let errors: u64 = echo.iter().map(|e| e.protocol_errors).sum();
                    format!(" protocol_errors={errors}")
                },
            )?;
            if let Served::HandedOver(handover) = &served {
                seal(port, None, handover)?;
            }
            Ok(served)
        }
        Some(proxy) => {
            config.ports = proxy.ports.iter().map(|&(port, _)| port).collect();
            config.backlog = args.backlog.unwrap_or(proxy.backlog());
            config.keep_alive_ports = proxy
                .config
                .pools
                .iter()
                .filter(|p| p.tcp_keepalive)
                .map(|p| p.listen.port())
                .collect();
            if let Some((block, _)) = &block {
                anyhow::ensure!(
                    block.cores() >= cores,
                    "the control block has room for {} cores; the dataplane runs {cores}",
                    block.cores()
                );
            }
            // One thread reads and checks each new configuration once and
            // publishes it on the board, where every core takes it at a
            // safe point: with a config file, on SIGHUP; with a control
            // block, when the control process publishes there.
            let board = Arc::new(ReloadBoard::default());
            let start_version = block.as_ref().map_or(0, |(_, version)| *version);
            let reloader = match (&block, args.config.clone()) {
                (Some((block, version)), _) => {
                    // The control process reloads on SIGHUP; a hangup of
                    // the terminal both run from must not end the
                    // dataplane. The flag is never read.
                    ferrox_dataplane::signals::reload_on_sighup();
                    let (block, board, version) = (block.clone(), board.clone(), *version);
                    Some(std::thread::spawn(move || {
                        follow_block(&block, &board, address, version, stop)
                    }))
                }
                (None, Some(path)) => {
                    let board = board.clone();
                    let hup = ferrox_dataplane::signals::reload_on_sighup();
                    Some(std::thread::spawn(move || {
                        reload_on_signal(&path, address, &board, hup, stop)
                    }))
                }
                (None, None) => None,
            };
            let served = serve(
                &args,
                block.as_ref().map(|(block, _)| block.region()),
                stop,
                &mut port,
                config,
                |core| {
                    Proxy::new(proxy.pools(cores), proxy.ports.clone(), core_seed(core))
                        .with_overload(proxy.overload())
                        .with_board(
                            board.clone(),
                            start_version,
                            block.as_ref().map(|(block, _)| block.clone()),
                            core,
                            cores,
                        )
                },
                |_| format!(" reloads={}", board.version().saturating_sub(start_version)),
            );
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Ok(Served::HandedOver(handover)) = &served {
                seal(port, block.as_ref().map(|(block, _)| block), handover)?;
            }
            if let Some(reloader) = reloader {
                let _ = reloader.join();
            }
            served
        }
    }
}

/// The port holder (`--hold-port`): starts the port and holds it, with
/// the EAL's memory that dataplanes attach to, until told to stop; then
/// closes it and removes its hugepage files and runtime directory.
fn hold_port(eal: Eal, config: PortConfig, stop: &std::sync::atomic::AtomicBool) -> Result<Served> {
    let port = Port::start(&eal, 0, config)?;
    let prefix = eal.file_prefix().to_owned();
    ferrox_dataplane::handover::notify("holding");
    println!(
        "ferrox-dataplane: holding port {} ({}), {} queue(s), MTU {}, mac {}, file prefix {prefix}",
        port.name(),
        port.driver(),
        port.queue_count(),
        port.mtu(),
        ferrox_dataplane::port::format_mac(&port.mac())
    );
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Nothing to poll: the dataplanes do. A sleep is this loop's work.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(port);
    drop(eal);
    match ferrox_dataplane::eal::remove_runtime_files(&prefix) {
        Ok(pages) => tracing::info!(pages, "port holder stopped; its files removed"),
        Err(e) => tracing::warn!("port holder stopped; its files stay: {e}"),
    }
    Ok(Served::Stopped)
}

/// The last step of handing over to another process: the port closed,
/// the handover file written whole, and "sealed" on the board. A port
/// the successor reopens (af_xdp) is closed first: the kernel releases a
/// closed AF_XDP socket's queue only tens of milliseconds later, and that
/// wait then runs while the file is written. A successor on an
/// overlapping port (af_packet) has its own socket open already: it is
/// told at once, and the close (tens of milliseconds in the kernel)
/// comes after. A port held by the port holder is not closed at all.
fn seal(port: Port, block: Option<&Block>, handover: &HandoverFile) -> Result<()> {
    let overlapping = port.driver() == ferrox_dataplane::port::OVERLAPPING_DRIVER;
    let mut port = Some(port);
    if !overlapping {
        drop(port.take());
    }
    let records =
        ferrox_dataplane::handover::write(&handover.path, handover.facts, &handover.exports)?;
    if let Some(block) = block {
        block.stamp(Step::Sealed);
    }
    drop(port);
    println!(
        "ferrox-dataplane: handed over {records} connection(s) in {}",
        handover.path.display()
    );
    tracing::info!("handover sealed; port closed");
    Ok(())
}

/// Runs one core loop per lcore, each with the application `make_app`
/// builds for it, until a signal; then prints the totals (with the
/// applications' `summary`) on stdout. Socket buffers come from the control
/// process's region when there is one, else from a region of this process.
fn serve<A: CoreService + Send>(
    args: &Args,
    control_region: Option<&Arc<Region>>,
    stop: &'static std::sync::atomic::AtomicBool,
    port: &mut Port,
    config: StackConfig,
    make_app: impl Fn(usize) -> A + Sync,
    summary: impl Fn(&[&A]) -> String,
) -> Result<Served> {
    let lcores = ferrox_dataplane::ffi::lcores();
    let cores = lcores.len();
    let clock = Clock::default();
    // Mailboxes between cores; private to this process for now.
    let steering_region = Region::heap((cores * cores) as u64 * (STEER_RING + 8192) + (1 << 20));
    let mut steering: Vec<Option<Steering>> = if cores > 1 {
        Steering::build(&steering_region, cores, STEER_RING)?
            .into_iter()
            .map(Some)
            .collect()
    } else {
        vec![None]
    };
    // Socket buffers: chunks of a pool in hugepages (or /dev/shm); a
    // region of our own is removed when the process ends.
    let sizes = Sizes {
        client: args.client_buffer_kib << 10,
        client_send: args.client_send_buffer_kib << 10,
        server: SERVER_SOCKET_BUFFER,
        idle: args.client_idle_buffer_kib << 10,
    };
    let clients = args
        .socket_pool_clients
        .unwrap_or((args.max_connections as u32).min(1024));
    let sockets = match control_region {
        Some(region) => SocketPool::in_region(region, sizes, clients)?,
        None => SocketPool::create(&format!("dataplane-{}", std::process::id()), sizes, clients)?,
    };
    // Fault injection, for tests only: the control block's stall
    // requests.
    let hooks = match (args.test_hooks, control_region) {
        (false, _) => None,
        (true, None) => {
            tracing::warn!("--test-hooks needs --control-region; ignored");
            None
        }
        (true, Some(region)) => {
            tracing::warn!("test hooks on: the control block may wedge a core");
            Some(Block::attach(region)?)
        }
    };
    let test_stall = |core: usize| {
        hooks
            .clone()
            .map(|block| Box::new(move || block.stall_requested(core)) as TestStall)
    };
    // Each core's statistics record and heartbeat: in the control
    // process's block, or in one of this process's own.
    let block = match control_region {
        Some(region) => Block::attach(region)?,
        None => Block::create(&Region::heap(Block::size() + (1 << 20)), cores)?,
    };
    // Hot handover. In process (a test trigger): each core builds its
    // successor stack on the other bank of pool cores (the old one still
    // holds its own), with another seed, hence other initial sequence
    // numbers. Between processes: each core's export goes to `sink`, and
    // the file is written once all stopped.
    let half = hugepage_pool::pool::MAX_CORES / 2;
    let bank = |generation: u64| ((args.core_bank as u64 + generation) % 2) as usize * half;
    let requested = (args.handover_on_sigusr2 || args.handover_file.is_some())
        .then(ferrox_dataplane::signals::handovers_on_sigusr2);
    let sink = Mutex::new(Vec::new());
    let (sockets, make_app, clock_ref, sink_ref) = (&sockets, &make_app, &clock, &sink);
    let handover = |id: usize| {
        let config = StackConfig {
            core: id,
            ..config.clone()
        };
        let successor = if args.handover_on_sigusr2 {
            Successor::Stack(Box::new(move |generation: u64| {
                Ok(Stack::new(
                    config.clone(),
                    make_app(id),
                    sockets.core(bank(generation) + id)?,
                    clock_ref.now(),
                    core_seed(id).wrapping_add(generation << 48),
                ))
            })
                as Box<dyn FnMut(u64) -> Result<Stack<A>> + Send + '_>)
        } else {
            Successor::Process {
                sink: sink_ref,
                cores,
                stop,
            }
        };
        requested.map(|requested| Handover {
            requested,
            done: 0,
            drain_for: std::time::Duration::from_millis(args.drain_ms),
            successor,
        })
    };
    // What a predecessor handed over, if anything: restored by each core
    // before its first frame, then the file is removed.
    let inherited = match &args.handover_file {
        Some(path) => inherit(path, port, &config, cores, &block)?,
        None => None,
    };
    if inherited.is_none() {
        ferrox_dataplane::handover::notify("committed restored=0 reset_on_restore=0");
    }
    let mut all = Vec::with_capacity(cores);
    let mut queues = port.queues().into_iter();
    for (id, steering) in steering.iter_mut().enumerate() {
        all.push(Core {
            id,
            queue: queues
                .next()
                .context("the port has a queue for every lcore")?,
            stack: Stack::new(
                StackConfig {
                    core: id,
                    ..config.clone()
                },
                make_app(id),
                sockets.core(bank(0) + id)?,
                clock.now(),
                core_seed(id),
            ),
            steering: steering.take(),
            stats: LoopStats::default(),
            block: block.clone(),
            test_stall: test_stall(id),
            handover: handover(id),
            inherited: inherited.as_ref(),
        });
    }
    // The queues hold the port now; it is reached through them.
    let port = all[0].queue.port();
    println!(
        "ferrox-dataplane: serving {}:{:?} on {} ({}, mac {}) with {cores} core(s) on lcores {lcores:?}",
        config.address,
        config.ports,
        port.name(),
        port.driver(),
        format_mac(&port.mac())
    );
    std::io::stdout().flush()?;

    let idle = IdlePolicy {
        spin_polls: args.idle_spin_polls,
        max_sleep: std::time::Duration::from_micros(args.idle_max_sleep_us),
        ..IdlePolicy::default()
    };
    let tasks: Vec<ferrox_dataplane::ffi::Task<'_>> = all
        .iter_mut()
        .map(|core| {
            Box::new(move || {
                let _guard = StopOnPanic(stop);
                core.run(clock, idle, stop);
            }) as ferrox_dataplane::ffi::Task<'_>
        })
        .collect();
    let failed = std::thread::scope(|scope| {
        if args.stats_every > 0 {
            let every = std::time::Duration::from_millis(args.stats_every);
            let (block, json) = (&block, args.stats_json);
            scope.spawn(move || report_every(every, block, cores, json, stop));
        }
        ferrox_dataplane::ffi::run_on_lcores(tasks)
    });

    // The cores wrote their records one last time as they stopped.
    let snapshot = block.snapshot();
    let mut per_core = String::new();
    for (id, core) in snapshot.cores.iter().take(cores).enumerate() {
        per_core.push_str(&format!(
            " core{id}_accepted={} core{id}_frames={}",
            core.counters[Counter::Accepted as usize],
            core.counters[Counter::Frames as usize]
        ));
    }
    let apps: Vec<&A> = all.iter().map(|c| c.stack.app()).collect();
    let app_summary = summary(&apps);
    let port = all[0].queue.port();
    let p = port.stats();
    println!(
        "ferrox-dataplane: stopped; {} rx_packets={} tx_packets={} rx_missed={}{app_summary}{per_core}",
        counters_line(&snapshot, cores),
        p.rx_packets,
        p.tx_packets,
        p.rx_missed
    );
    if args.stats_json {
        println!("{}", stats_json(&snapshot, cores));
    }
    if args.xstats {
        let shown: Vec<String> = port
            .xstats()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(name, v)| format!("{name}={v}"))
            .collect();
        println!("ferrox-dataplane: xstats; {}", shown.join(" "));
    }
    if failed > 0 {
        bail!("{failed} core(s) failed");
    }
    let exports = std::mem::take(&mut *sink.lock().expect("not poisoned"));
    if let (false, Some(path)) = (exports.is_empty(), &args.handover_file) {
        let facts = ferrox_dataplane::handover::Facts {
            mac: port.mac(),
            address: config.address.octets(),
            mtu: port.mtu(),
        };
        return Ok(Served::HandedOver(HandoverFile {
            path: path.clone(),
            facts,
            exports,
        }));
    }
    Ok(Served::Stopped)
}

/// Reads what a predecessor handed over in `path`, if it suits this
/// process (the same MAC and address, an MTU no smaller), for `cores`
/// cores to restore; the last one reports to the control process and
/// removes the file.
fn inherit(
    path: &std::path::Path,
    port: &Port,
    config: &StackConfig,
    cores: usize,
    block: &Block,
) -> Result<Option<Inherited>> {
    let Some((facts, export)) = ferrox_dataplane::handover::read(path)? else {
        return Ok(None);
    };
    if facts.mac != port.mac() || facts.address != config.address.octets() || facts.mtu > port.mtu()
    {
        // The peers would not reach these connections here: they are
        // lost, as in a restart.
        tracing::error!(?facts, mac = ?port.mac(), address = %config.address, mtu = port.mtu(), "the handed-over connections do not fit this port; not restored");
        std::fs::remove_file(path)?;
        return Ok(None);
    }
    tracing::info!(
        records = export.len(),
        "taking over connections from the predecessor"
    );
    let (path, block) = (path.to_owned(), block.clone());
    Ok(Some(Inherited::new(export, cores, move |totals| {
        let _ = std::fs::remove_file(&path);
        block.set_restored(totals.restored, totals.reset_on_restore);
        block.stamp(Step::Restored);
        println!(
            "ferrox-dataplane: took over {} connection(s), {} reset",
            totals.restored, totals.reset_on_restore
        );
        ferrox_dataplane::handover::notify(&format!(
            "committed restored={} reset_on_restore={}",
            totals.restored, totals.reset_on_restore
        ));
    })))
}

/// Until `stop`: on SIGHUP (`hup`), reads and validates the configuration
/// at `path` again and publishes it to the cores, or refuses it with the
/// reason and keeps the running one. Says which on stdout.
#[allow(clippy::disallowed_methods)] // a control thread, not a poll loop
fn reload_on_signal(
    path: &std::path::Path,
    address: Ipv4Address,
    board: &ReloadBoard,
    hup: &std::sync::atomic::AtomicBool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if !hup.swap(false, Relaxed) {
            continue;
        }
        match ferrox_dataplane::service::proxy::load(path, address) {
            Ok(loaded) => {
                let version = board.publish(loaded);
                println!(
                    "ferrox-dataplane: reloaded {}; version={version}",
                    path.display()
                );
            }
            Err(error) => {
                tracing::error!("reload refused: {error:#}");
                println!(
                    "ferrox-dataplane: reload refused, the running configuration stays; {}",
                    format!("{error:#}").replace('\n', " | ")
                );
            }
        }
        let _ = std::io::stdout().flush();
    }
}

/// Prints the sum of the cores' records every `every` until `stop`: a
/// `stats;` line, and with `json` a JSON line per core and in total.
#[allow(clippy::disallowed_methods)] // a reporting thread, not a poll loop
fn report_every(
    every: std::time::Duration,
    block: &Block,
    cores: usize,
    json: bool,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while !stop.load(Relaxed) {
        std::thread::sleep(every);
        let snapshot = block.snapshot();
        println!(
            "ferrox-dataplane: stats; {}",
            counters_line(&snapshot, cores)
        );
        if json {
            println!("{}", stats_json(&snapshot, cores));
        }
        let _ = std::io::stdout().flush();
    }
}

/// Every counter of the first `cores` records, summed: `name=value ...`.
fn counters_line(snapshot: &Snapshot, cores: usize) -> String {
    let line: Vec<String> = Counter::ALL
        .iter()
        .map(|&c| {
            let sum: u64 = snapshot
                .cores
                .iter()
                .take(cores)
                .map(|r| r.counters[c as usize])
                .sum();
            format!("{}={sum}", c.name())
        })
        .collect();
    line.join(" ")
}

/// The records as one JSON object: `{"cores":[{...},...],"total":{...}}`.
fn stats_json(snapshot: &Snapshot, cores: usize) -> String {
    let object = |value: &dyn Fn(Counter) -> u64| {
        let fields: Vec<String> = Counter::ALL
            .iter()
            .map(|&c| format!("\"{}\":{}", c.name(), value(c)))
            .collect();
        format!("{{{}}}", fields.join(","))
    };
    let records = &snapshot.cores[..cores.min(snapshot.cores.len())];
    let per_core: Vec<String> = records
        .iter()
        .map(|r| object(&|c| r.counters[c as usize]))
        .collect();
    let total = object(&|c| records.iter().map(|r| r.counters[c as usize]).sum());
    format!("{{\"cores\":[{}],\"total\":{total}}}", per_core.join(","))
}

/// Receive and send buffer of each connection to a server (it carries
/// many clients' requests).
const SERVER_SOCKET_BUFFER: u32 = 256 << 10;

/// Bytes of each steering lane between two cores.
const STEER_RING: u64 = 1 << 20;
