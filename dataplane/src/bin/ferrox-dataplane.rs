//! `ferrox-dataplane`: one dataplane process on a DPDK port.
//!
//! Until the control process exists it is configured from the command line
//! and serves the RESP echo service (PING, ECHO) on the userspace TCP stack.
use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Parser;
use ferrox_dataplane::eal::{Eal, EalConfig};
use ferrox_dataplane::lcore::{self, Clock, IdlePolicy};
use ferrox_dataplane::net::stack::{Stack, StackConfig};
use ferrox_dataplane::port::{format_mac, Port};
use ferrox_dataplane::service::resp_echo::RespEcho;
use smoltcp::wire::Ipv4Address;

#[derive(Parser, Debug)]
#[command(version, about = "ferrox dataplane: smoltcp on a DPDK port")]
struct Args {
    /// DPDK virtual device, e.g. net_af_packet0,iface=veth1 (repeatable).
    #[arg(long = "vdev")]
    vdevs: Vec<String>,
    /// PCI device DPDK may use (repeatable); none means --no-pci.
    #[arg(long = "pci")]
    pci_allow: Vec<String>,
    /// Address and prefix the stack answers on, e.g. 198.18.0.2/24.
    #[arg(long)]
    address: String,
    /// TCP port to serve (repeatable).
    #[arg(long = "listen", default_value = "6379")]
    ports: Vec<u16>,
    #[arg(long, default_value = "0")]
    lcores: String,
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
    /// DPDK runtime file prefix; default ferrox-<pid>.
    #[arg(long)]
    file_prefix: Option<String>,
    #[arg(long, default_value_t = 1024)]
    backlog: usize,
    #[arg(long, default_value_t = 65536)]
    max_connections: usize,
    #[arg(long, default_value_t = 16383)]
    mbufs: u32,
    /// Log as JSON lines.
    #[arg(long)]
    json: bool,
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
        eprintln!("ferrox-dataplane: {e:#}");
        std::process::exit(1);
    }
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

fn run(args: Args) -> Result<()> {
    let (address, prefix_len) = parse_cidr(&args.address)?;
    if args.vdevs.is_empty() && args.pci_allow.is_empty() {
        bail!("name a port: --vdev (e.g. net_af_packet0,iface=veth1) or --pci");
    }
    let stop = ferrox_dataplane::ffi::stop_on_signals();
    let eal = Eal::init(&EalConfig {
        lcores: args.lcores.clone(),
        memory_mb: args.memory_mb,
        file_prefix: args
            .file_prefix
            .clone()
            .unwrap_or_else(|| format!("ferrox-{}", std::process::id())),
        vdevs: args.vdevs.clone(),
        pci_allow: args.pci_allow.clone(),
        ..EalConfig::default()
    })?;
    let ports = Port::available();
    tracing::info!(?ports, "ports found");
    let port = Port::start(&eal, 0, 1, args.mbufs)?;
    let clock = Clock::default();
    let config = StackConfig {
        mac: port.mac(),
        address,
        prefix_len,
        ports: args.ports.clone(),
        backlog: args.backlog,
        max_connections: args.max_connections,
        ..StackConfig::default()
    };
    let seed = std::process::id() as u64 ^ 0x5eed_f00d;
    let mut stack = Stack::new(config, RespEcho, clock.now(), seed);
    let mut queue = port.queue(0);
    println!(
        "ferrox-dataplane: serving {address}:{:?} on {} ({}, mac {})",
        args.ports,
        port.name(),
        port.driver(),
        format_mac(&port.mac())
    );
    std::io::stdout().flush()?;

    let loop_stats = lcore::run(&mut queue, &mut stack, clock, IdlePolicy::default(), stop);

    let s = stack.stats();
    let p = port.stats();
    println!(
        "ferrox-dataplane: stopped; frames={} accepted={} closed={} open={} backlog_drops={} protocol_errors={} \
         rx_packets={} tx_packets={} rx_missed={} tx_dropped={} tx_no_mbuf={} iterations={} sleeps={}",
        s.frames, s.accepted, s.closed, s.open, s.backlog_drops, s.protocol_errors, p.rx_packets, p.tx_packets,
        p.rx_missed, queue.tx_dropped(), s.tx_no_mbuf, loop_stats.iterations, loop_stats.sleeps
    );
    Ok(())
}
