//! Overload protection end to end: 10,000 clients connected at once, all
//! pipelining, against `[overload]` watermarks far below what they send.
//! Every request is answered (served, each reply checked against a model
//! of the client's keys, or refused with `-ERR ferrox: overloaded`), the
//! requests in flight stay under the watermark, the dataplane's memory
//! stays bounded while the flood runs, and ferrox is whole afterwards.
#![allow(clippy::disallowed_methods)] // tests wait for processes

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrox_testbed::*;

/// What the dataplane holds: resident memory and hugepages, in KiB.
fn memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("VmRSS:") || l.starts_with("HugetlbPages:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

const MAX_IN_FLIGHT: u64 = 4000;

#[test]
fn ten_thousand_pipelining_clients_are_served_or_refused_in_bounded_memory() {
    let config = ConfigFile::new(
        "toml",
        &format!(
            r#"
[overload]
max_in_flight = {MAX_IN_FLIGHT}
max_client_buffer_memory = "16 MiB"
max_backend_queue = 2000
max_connections = 12000

[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
timeout_ms = 20000
servers = ["{KERNEL_IP}:7501:1 a", "{KERNEL_IP}:7502:1 b"]
"#
        ),
    );
    let (ns, dp) = setup_with(Pmd::AfPacket, 1, &["--config", config.path()]);
    let mut servers = Children::default();
    for port in [7501, 7502] {
        servers.add(&ns, port, redis_server(&ns, port));
    }

    // The dataplane's memory, sampled every 20 ms from here on.
    let pid = dp.pid();
    let before = memory_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(memory_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let seed = std::env::var("FERROX_FLOOD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                % 100_000
        });
    eprintln!("flood seed {seed} (FERROX_FLOOD_SEED={seed} repeats it)");
    const CLIENTS: u64 = 10_000;
    const DEPTH: u64 = 16;
    const ROUNDS: u64 = 2;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/flood.py");
    let started = Instant::now();
    let mut flood = ns
        .command(&[
            "timeout",
            "300",
            "/usr/bin/python3",
            script,
            FERROX_IP,
            "6379",
            &CLIENTS.to_string(),
            &DEPTH.to_string(),
            &ROUNDS.to_string(),
            &seed.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its first line comes once every client is connected: what the
    // dataplane holds for 10,000 idle connections.
    let mut connected = String::new();
    {
        use std::io::BufRead;
        let stdout = flood.stdout.as_mut().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut connected)
            .unwrap();
    }
    let idle = memory_kib(pid);
    peak.store(idle, Ordering::Relaxed);
    let out = flood.wait_with_output().unwrap();
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "memory: {} MiB before, {} MiB with {CLIENTS} idle clients, peak {} MiB under the flood",
        before / 1024,
        idle / 1024,
        peak / 1024
    );
    // Idle clients sit on 2 KiB idle buffers: about 6 KiB each in all.
    let per_idle_kib = idle.saturating_sub(before) / CLIENTS;
    assert!(per_idle_kib <= 12, "{per_idle_kib} KiB per idle client");
    let text = connected + &String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "flood ({:?}): {text}{}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the flood failed (seed {seed})");
    let (served, refused) = (stat(&text, "served"), stat(&text, "refused"));
    assert_eq!(served + refused, CLIENTS * DEPTH * ROUNDS, "seed {seed}");
    assert!(refused > 0, "the watermark never engaged");
    assert!(served > CLIENTS, "{served} served");

    // The requests in flight stay at the watermark, as each stats line
    // saw them (the gauge counts every open slot, refusals not yet
    // written out included, so it may pass the watermark by those).
    let peak_in_flight = dp
        .lines_with("stats;")
        .iter()
        .map(|l| stat(l, "in_flight"))
        .max()
        .unwrap_or(0);
    assert!(
        peak_in_flight < MAX_IN_FLIGHT * 5 / 4,
        "{peak_in_flight} in flight"
    );
    // Memory: the flood (320,000 requests, 220 MiB of them and their
    // replies, values up to 16 KiB) moves every client from its idle
    // buffers to full ones (32 + 8 KiB, in a pool that grows by half),
    // and adds what the watermarks let through: 16 MiB of replies held,
    // 4,000 requests in flight, each client's queue of 16 answered slots
    // (about 40 MiB in all), and the allocator's slack; queued without
    // bound it would take hundreds more.
    let full_buffers_mib = CLIENTS * 40 * 3 / 2 / 1024;
    let grown_mib = peak.saturating_sub(idle) / 1024;
    assert!(
        grown_mib <= full_buffers_mib + 128,
        "the flood grew the dataplane by {grown_mib} MiB"
    );

    // Whole afterwards: every connection closed, nothing in flight, and
    // a new client served.
    let deadline = Instant::now() + Duration::from_secs(30);
    let latest = loop {
        let latest = dp.latest_stats().unwrap();
        if stat(&latest, "closed") == stat(&latest, "accepted") {
            break latest;
        }
        assert!(Instant::now() < deadline, "clients stayed open: {latest}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stat(&latest, "in_flight"), 0, "{latest}");
    assert_eq!(cli(&ns, FERROX_IP, 6379, "SET after flood"), "OK");
    assert_eq!(cli(&ns, FERROX_IP, 6379, "GET after"), "flood");
}
