//! The dataplane on real DPDK virtual NICs, in network namespaces these
//! tests create, driven by real Redis clients from the kernel side.
//!
//! Each test builds its own namespace (veth pair or tap), starts
//! `ferrox-dataplane` inside it, and removes both on every path (guards
//! below), failure included. Addresses are in 198.18.0.0/24, inside the
//! namespace only.
#![allow(clippy::disallowed_methods)] // tests wait for processes

use std::process::Command;
use std::time::{Duration, Instant};

use ferrox_testbed::*;

fn redis_cli(ns: &Netns, args: &str) -> String {
    ns.shell(&format!("timeout 10 redis-cli -h {FERROX_IP} {args}"))
        .trim()
        .to_owned()
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

/// A test of [`serves_redis_clients`] per PMD and core count.
macro_rules! serves_redis_clients_over {
    ($($(#[$doc:meta])* $test:ident: $pmd:ident on $cores:literal;)*) => {
        $(
            $(#[$doc])*
            #[test]
            fn $test() {
                serves_redis_clients(Pmd::$pmd, $cores);
            }
        )*
    };
}

serves_redis_clients_over! {
    serves_redis_clients_over_net_tap: Tap on 1;
    serves_redis_clients_over_net_af_packet: AfPacket on 1;
    serves_redis_clients_over_net_af_xdp: AfXdp on 1;
    /// Two lcores on a multi-queue tap: the kernel spreads flows over the
    /// queues its own way, ferrox steers each frame to the core that owns it.
    serves_redis_clients_over_net_tap_on_two_cores: Tap on 2;
    /// Two lcores on af_packet with two queue pairs (kernel fanout).
    serves_redis_clients_over_net_af_packet_on_two_cores: AfPacket on 2;
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
    ns.tap_up(&[]);
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

/// The kernel leaves TCP checksums partial on a veth (checksum offload is
/// on by default): ferrox trusts them there, as the kernel does, and when
/// told to verify it really drops every frame that fails.
#[test]
fn trusts_checksums_on_a_veth_and_verifies_when_told() {
    let (ns, dp) = setup(Pmd::AfPacket, 1);
    assert_eq!(redis_cli(&ns, "PING"), "PONG");
    drop(dp);
    drop(ns);

    let (ns, _dp) = setup_with(Pmd::AfPacket, 1, &["--rx-checksum", "verify"]);
    let refused = ns.shell(&format!(
        "timeout 3 redis-cli -h {FERROX_IP} PING 2>&1; echo exit=$?"
    ));
    assert!(
        refused.contains("exit=124"),
        "partial checksums passed: {refused}"
    );
    // With the kernel filling its checksums, the verified path serves.
    ns.run(&["ethtool", "-K", "veth0", "tx", "off"]);
    assert_eq!(redis_cli(&ns, "PING"), "PONG");
    let bench = ns.shell(&format!(
        "timeout 60 redis-benchmark -h {FERROX_IP} -t ping -n 20000 -c 20 -P 8 -q"
    ));
    assert!(rps(&bench) > 0.0, "{bench}");
}

#[test]
fn a_bad_command_line_is_refused_with_a_reason() {
    let out = Command::new(dataplane_binary())
        .args(["--address", "198.18.0.2/24"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name a port"));
    let out = Command::new(dataplane_binary())
        .args(["--vdev", "net_null0", "--address", "300.1.2.3/24"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad IPv4 address"));
}
