//! Twenty thousand client connections on one core, opened as fast as the
//! clients can and held idle while others pipeline: none is refused, the
//! idle ones keep their small buffers, the pipelining ones move to full
//! buffers and are served, and once every connection has closed the
//! socket buffers the core holds are back at what they were before (no
//! chunk leaked).
#![allow(clippy::disallowed_methods)] // tests wait for processes

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ferrox_testbed::*;

/// A process may hold 20,000 descriptors on these machines: two holders.
const HOLDERS: u64 = 2;
const PER_HOLDER: u64 = 10_000;
const IDLE: u64 = HOLDERS * PER_HOLDER;

/// A holder of `PER_HOLDER` idle connections (tests/hold.py).
struct Holder {
    child: Child,
    lines: BufReader<std::process::ChildStdout>,
}

impl Holder {
    fn start(ns: &Netns) -> Holder {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hold.py");
        let mut child = ns
            .command(&[
                "timeout",
                "300",
                "/usr/bin/python3",
                script,
                FERROX_IP,
                "6379",
                &PER_HOLDER.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        Holder { child, lines }
    }

    /// Its next line: `held=N connect_s=S`, then `closed=N`.
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.lines.read_line(&mut line).unwrap();
        line
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn twenty_thousand_idle_connections_are_held_and_give_every_buffer_back() {
    let config = ConfigFile::new(
        "toml",
        &format!(
            r#"
[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
servers = ["{KERNEL_IP}:7501:1 a", "{KERNEL_IP}:7502:1 b"]
"#
        ),
    );
    let (ns, dp) = setup_with(
        Pmd::AfPacket,
        1,
        &["--config", config.path(), "--max-connections", "30000"],
    );
    let mut servers = Children::default();
    for port in [7501, 7502] {
        servers.add(&ns, port, redis_server(&ns, port));
    }
    // The servers' connections open with the first request.
    assert_eq!(cli(&ns, FERROX_IP, 6379, "SET before hold"), "OK");
    assert_eq!(cli(&ns, FERROX_IP, 6379, "SET before2 hold"), "OK");
    let settled = |dp: &Dataplane| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let latest = dp.latest_stats().unwrap_or_default();
            if !latest.is_empty() && stat(&latest, "closed") == stat(&latest, "accepted") {
                return latest;
            }
            assert!(Instant::now() < deadline, "clients stayed open: {latest}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let baseline = settled(&dp);
    let baseline_bytes = stat(&baseline, "socket_buffer_bytes");
    assert!(baseline_bytes > 0, "{baseline}");

    // All at once, as fast as two clients can open them.
    let started = Instant::now();
    let mut holders: Vec<Holder> = (0..HOLDERS).map(|_| Holder::start(&ns)).collect();
    for holder in &mut holders {
        let line = holder.line();
        assert!(
            line.starts_with(&format!("held={PER_HOLDER}")),
            "a holder failed: {line:?}"
        );
    }
    eprintln!("{IDLE} connections held after {:?}", started.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    let held = dp.latest_stats().unwrap();
    assert_eq!(stat(&held, "refused"), 0, "{held}");
    assert_eq!(stat(&held, "limit_drops"), 0, "{held}");
    // Each idle one holds its two 2 KiB buffers, nothing more.
    let idle_bytes = stat(&held, "socket_buffer_bytes") - baseline_bytes;
    assert_eq!(idle_bytes, IDLE * 4096, "{held}");

    // Pipelining clients beside them: served in full, with no error.
    let bench = redis_benchmark(
        &ns,
        FERROX_IP,
        "-p 6379 -c 50 -P 16 -n 200000 -d 1024 -t set,get -q",
    );
    let report = bench_report(bench);
    assert!(rps(&report) > 0.0, "{report}");
    let busy = dp.latest_stats().unwrap();
    assert!(stat(&busy, "buffer_moves") >= 50, "{busy}");

    // Every idle one still answers; then all close.
    for holder in &mut holders {
        writeln!(holder.child.stdin.as_mut().unwrap()).unwrap();
    }
    for holder in &mut holders {
        let line = holder.line();
        assert!(
            line.starts_with(&format!("closed={PER_HOLDER}")),
            "a holder failed after the load: {line:?}"
        );
    }
    let after = settled(&dp);
    assert_eq!(
        stat(&after, "socket_buffer_bytes"),
        baseline_bytes,
        "socket buffers not given back: {after}"
    );
    assert_eq!(stat(&after, "in_flight"), 0, "{after}");
    assert_eq!(cli(&ns, FERROX_IP, 6379, "GET before"), "hold");
}
