//! The dataplane on real DPDK virtual NICs, in network namespaces these
//! tests create, driven by real Redis clients from the kernel side.
//!
//! Each test builds its own namespace (veth pair or tap), starts
//! `ferrox-dataplane` inside it, and removes both on every path (guards
//! below), failure included. Addresses are in 198.18.0.0/24, inside the
//! namespace only.
#![allow(clippy::disallowed_methods)] // tests wait for processes

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DATAPLANE: &str = env!("CARGO_BIN_EXE_ferrox-dataplane");
const KERNEL_IP: &str = "198.18.0.1";
const FERROX_IP: &str = "198.18.0.2";

#[derive(Debug, Clone, Copy)]
enum Pmd {
    Tap,
    AfPacket,
    AfXdp,
}

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fx{}{tag}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A shell command in the namespace; returns its stdout.
    fn shell(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.run(&["bash", "-c", script]).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A running dataplane; stopped with SIGINT (then SIGKILL) when dropped.
/// Its stdout lines (banner, periodic statistics, closing line) are
/// collected by a reader thread.
struct Dataplane {
    child: Option<Child>,
    banner: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Dataplane {
    fn start(ns: &Netns, vdev: &str, lcores: &str) -> Dataplane {
        Dataplane::start_with(ns, vdev, lcores, &[])
    }

    fn start_with(ns: &Netns, vdev: &str, lcores: &str, extra: &[&str]) -> Dataplane {
        let prefix = format!("{}-{}", ns.0, std::process::id());
        let mut child = ns
            .command(&[
                DATAPLANE,
                "--vdev",
                vdev,
                "--lcores",
                lcores,
                "--address",
                &format!("{FERROX_IP}/24"),
                "--memory-mb",
                "128",
                "--mbufs",
                "8191",
                "--backlog",
                "8192",
                "--stats-every",
                "200",
                "--file-prefix",
                &prefix,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        stdout.read_line(&mut banner).unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        let mut dp = Dataplane {
            child: Some(child),
            banner,
            lines,
            reader: Some(reader),
        };
        assert!(
            dp.banner.contains("serving"),
            "dataplane did not start: {:?}",
            dp.banner
        );
        assert!(dp.child.as_mut().unwrap().try_wait().unwrap().is_none());
        dp
    }

    /// The newest periodic statistics line.
    fn latest_stats(&self) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains("stats;"))
            .cloned()
    }

    /// Waits until ferrox itself reports no open connection.
    fn wait_until_all_closed(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let latest = self.latest_stats();
            if latest.as_deref().is_some_and(|l| stat(l, "open") == 0) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "connections stayed open in ferrox: {latest:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the dataplane and returns its closing statistics line.
    fn stop(mut self) -> String {
        let mut child = self.child.take().unwrap();
        sh(&["kill", "-INT", &child.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "dataplane ignored SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            child.wait().unwrap().success(),
            "dataplane exited with an error"
        );
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .find(|l| l.contains("stopped;"))
            .cloned()
            .expect("a closing statistics line")
    }

    /// Stops the dataplane and returns every line it printed after the banner.
    fn stop_all_lines(self) -> Vec<String> {
        let lines = self.lines.clone();
        self.stop();
        let all = lines.lock().unwrap().clone();
        all
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_millis(300));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A namespace with ferrox on `pmd` (on `cores` lcores) and the kernel side
/// at KERNEL_IP.
fn setup(pmd: Pmd, cores: usize) -> (Netns, Dataplane) {
    let lcores = if cores == 1 {
        "0".to_owned()
    } else {
        format!("0-{}", cores - 1)
    };
    let ns = Netns::new(match pmd {
        Pmd::Tap => "t",
        Pmd::AfPacket => "p",
        Pmd::AfXdp => "x",
    });
    let dp = match pmd {
        Pmd::Tap => {
            let dp = Dataplane::start(&ns, "net_tap0,iface=fxtap0", &lcores);
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("{KERNEL_IP}/24"),
                "dev",
                "fxtap0",
            ]);
            // Bursts of thousands of connections overflow the default queue.
            ns.run(&["ip", "link", "set", "fxtap0", "txqueuelen", "10000", "up"]);
            dp
        }
        Pmd::AfPacket | Pmd::AfXdp => {
            ns.run(&[
                "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
            ]);
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("{KERNEL_IP}/24"),
                "dev",
                "veth0",
            ]);
            ns.run(&["ip", "link", "set", "veth0", "up"]);
            ns.run(&["ip", "link", "set", "veth1", "up"]);
            // veth hands over partial checksums; make the kernel fill them.
            ns.run(&["ethtool", "-K", "veth0", "tx", "off"]);
            let vdev = match pmd {
                Pmd::AfPacket => format!("net_af_packet0,iface=veth1,qpairs={cores}"),
                _ => format!("net_af_xdp0,iface=veth1,start_queue=0,queue_count={cores}"),
            };
            Dataplane::start(&ns, &vdev, &lcores)
        }
    };
    (ns, dp)
}

fn redis_cli(ns: &Netns, args: &str) -> String {
    ns.shell(&format!("timeout 10 redis-cli -h {FERROX_IP} {args}"))
        .trim()
        .to_owned()
}

/// Requests per second from `redis-benchmark -q` output (last test line).
fn rps(output: &str) -> f64 {
    let line = output
        .split(['\r', '\n'])
        .rfind(|l| l.contains("requests per second"))
        .unwrap_or("");
    line.split(':')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

fn stat(stats: &str, name: &str) -> u64 {
    stats
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
}

/// Everything a client should see, on one PMD.
fn serves_redis_clients(pmd: Pmd, cores: usize) {
    let (ns, dp) = setup(pmd, cores);

    assert_eq!(redis_cli(&ns, "PING"), "PONG");
    assert_eq!(redis_cli(&ns, "ECHO 'hello ferrox'"), "hello ferrox");
    assert!(redis_cli(&ns, "GET k").contains("unknown command 'GET'"));

    // A malformed request gets a protocol error and a clean close...
    let reply = ns.shell(&format!(
        "exec 3<>/dev/tcp/{FERROX_IP}/6379; printf '*1\\r\\n!4\\r\\nPING\\r\\n' >&3; timeout 5 cat <&3"
    ));
    assert!(
        reply.starts_with("-ERR Protocol error: expected '$'"),
        "{reply:?}"
    );
    // ...and a closed port a reset, while other clients go on working.
    let refused = ns
        .command(&["bash", "-c", &format!("exec 3<>/dev/tcp/{FERROX_IP}/6380")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("refused"),
        "{refused:?}"
    );
    assert_eq!(redis_cli(&ns, "PING"), "PONG");

    let bench = ns.shell(&format!(
        "timeout 60 redis-benchmark -h {FERROX_IP} -t ping -n 20000 -c 50 -q"
    ));
    assert!(rps(&bench) > 0.0, "{bench}");
    let pipelined = ns.shell(&format!(
        "timeout 60 redis-benchmark -h {FERROX_IP} -t ping -n 50000 -c 20 -P 16 -q"
    ));
    assert!(rps(&pipelined) > 0.0, "{pipelined}");

    // 5,000 clients connected at once (redis-benchmark opens them all first).
    let many = ns.shell(&format!(
        "ulimit -n 65536; timeout 120 redis-benchmark -h {FERROX_IP} -t ping_mbulk -n 20000 -c 5000 -q"
    ));
    assert!(rps(&many) > 0.0, "{many}");
    assert_eq!(redis_cli(&ns, "PING"), "PONG");

    // Every connection closes (the clients close first and keep TIME_WAIT;
    // FINs lost in a burst are retransmitted, so allow some seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = ns.shell("ss -Htan exclude time-wait | awk '{print $1}' | sort | uniq -c");
        if states.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections stayed open: {states}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // On ferrox's side, a FIN whose ACK was lost is retransmitted on its
    // timer: wait for ferrox's own count, not a fixed time.
    dp.wait_until_all_closed(Duration::from_secs(30));
    let stats = dp.stop();
    assert!(stat(&stats, "accepted") >= 5000 + 20 + 50, "{stats}");
    assert_eq!(stat(&stats, "open"), 0, "{stats}");
    assert_eq!(stat(&stats, "protocol_errors"), 1, "{stats}");
    for core in 0..cores {
        assert!(
            stat(&stats, &format!("core{core}_accepted")) > 100,
            "core {core} served too little: {stats}"
        );
    }
}

#[test]
fn serves_redis_clients_over_net_tap() {
    serves_redis_clients(Pmd::Tap, 1);
}

#[test]
fn serves_redis_clients_over_net_af_packet() {
    serves_redis_clients(Pmd::AfPacket, 1);
}

#[test]
fn serves_redis_clients_over_net_af_xdp() {
    serves_redis_clients(Pmd::AfXdp, 1);
}

/// Two lcores on a multi-queue tap: the kernel spreads flows over the
/// queues its own way, ferrox steers each frame to the core that owns it.
#[test]
fn serves_redis_clients_over_net_tap_on_two_cores() {
    serves_redis_clients(Pmd::Tap, 2);
}

/// Two lcores on af_packet with two queue pairs (kernel fanout).
#[test]
fn serves_redis_clients_over_net_af_packet_on_two_cores() {
    serves_redis_clients(Pmd::AfPacket, 2);
}

/// Debian's shared DPDK loads PMDs as plugins: the vdevs must turn into ports.
#[test]
fn plugin_pmds_are_found() {
    for (pmd, driver) in [
        (Pmd::Tap, "net_tap"),
        (Pmd::AfXdp, "net_af_xdp"),
        (Pmd::AfPacket, "net_af_packet"),
    ] {
        let (_ns, dp) = setup(pmd, 1);
        assert!(
            dp.banner.contains(&format!("({driver}, mac ")),
            "{pmd:?}: {}",
            dp.banner
        );
    }
}

/// The port layer's own counters: extended statistics from the driver.
#[test]
fn extended_statistics_count_the_traffic() {
    let ns = Netns::new("s");
    let dp = Dataplane::start_with(&ns, "net_tap0,iface=fxtap0", "0", &["--xstats"]);
    ns.run(&[
        "ip",
        "addr",
        "add",
        &format!("{KERNEL_IP}/24"),
        "dev",
        "fxtap0",
    ]);
    ns.run(&["ip", "link", "set", "fxtap0", "up"]);
    for _ in 0..10 {
        assert_eq!(redis_cli(&ns, "PING"), "PONG");
    }
    let lines = dp.stop_all_lines();
    let xstats = lines
        .iter()
        .find(|l| l.contains("xstats;"))
        .expect("an xstats line");
    let packets = stat(xstats, "rx_good_packets");
    assert!(
        packets >= 30,
        "10 connections of at least 3 frames each: {xstats}"
    );
    assert!(stat(xstats, "tx_good_packets") >= 30, "{xstats}");
}

#[test]
fn a_bad_command_line_is_refused_with_a_reason() {
    let out = Command::new(DATAPLANE)
        .args(["--address", "198.18.0.2/24"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name a port"));
    let out = Command::new(DATAPLANE)
        .args(["--vdev", "net_null0", "--address", "300.1.2.3/24"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad IPv4 address"));
}
