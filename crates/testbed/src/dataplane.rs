//! A running `ferrox-dataplane` in a network namespace, both removed on
//! every path (guards), failure included.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::netns::*;

/// The `ferrox-dataplane` binary under test: `$FERROX_DATAPLANE`, or the
/// one cargo built next to the running test (`target/<profile>/`).
pub fn dataplane_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("FERROX_DATAPLANE") {
        return path.into();
    }
    let test = std::env::current_exe().expect("the test binary's path");
    let profile = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    profile.join("ferrox-dataplane")
}

#[derive(Debug, Clone, Copy)]
pub enum Pmd {
    Tap,
    AfPacket,
    AfXdp,
}

/// A running dataplane; stopped with SIGINT (then SIGKILL) when dropped.
/// Its stdout lines (banner, periodic statistics, closing line) are
/// collected by a reader thread.
#[derive(Debug)]
pub struct Dataplane {
    child: Option<Child>,
    pub banner: String,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Dataplane {
    pub fn start(ns: &Netns, vdev: &str, lcores: &str) -> Dataplane {
        Dataplane::start_with(ns, vdev, lcores, &[])
    }

    pub fn start_with(ns: &Netns, vdev: &str, lcores: &str, extra: &[&str]) -> Dataplane {
        let prefix = format!("{}-{}", ns.0, std::process::id());
        let binary = dataplane_binary();
        let mut child = ns
            .command(&[
                binary.to_str().expect("a UTF-8 path"),
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

    /// The process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for a printed line containing `text`, after `skip` earlier
    /// matches; returns it.
    pub fn wait_for_line(&self, text: &str, skip: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains(text))
                .nth(skip)
            {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no line with {text:?} printed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lines containing `text` printed so far.
    pub fn count_lines(&self, text: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(text))
            .count()
    }

    /// Every line so far that contains `text`.
    pub fn lines_with(&self, text: &str) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// The newest periodic statistics line.
    pub fn latest_stats(&self) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains("stats;"))
            .cloned()
    }

    /// Waits until ferrox itself reports no open connection.
    pub fn wait_until_all_closed(&self, within: Duration) {
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
    pub fn stop(mut self) -> String {
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

    /// Waits (at most `within`) for the dataplane to exit by itself; its
    /// exit code and every line it printed after the banner.
    pub fn wait_exit(mut self, within: Duration) -> (Option<i32>, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the dataplane did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let code = child.wait().unwrap().code();
        self.reader.take().unwrap().join().unwrap();
        let lines = self.lines.lock().unwrap().clone();
        (code, lines)
    }

    /// Stops the dataplane and returns every line it printed after the banner.
    pub fn stop_all_lines(self) -> Vec<String> {
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
            // A killed dataplane leaves its (empty) DPDK runtime directory.
            let _ = std::fs::remove_dir(format!("/var/run/dpdk/ferrox-{}", child.id()));
        }
    }
}

/// A namespace with ferrox on `pmd` (on `cores` lcores) and the kernel side
/// at KERNEL_IP.
pub fn setup(pmd: Pmd, cores: usize) -> (Netns, Dataplane) {
    setup_with(pmd, cores, &[])
}

/// [`setup`], with more arguments for the dataplane.
pub fn setup_with(pmd: Pmd, cores: usize, extra: &[&str]) -> (Netns, Dataplane) {
    setup_with_mtu(pmd, cores, 1500, extra)
}

/// [`setup_with`] on a link with this MTU (both ends of the veth pair).
pub fn setup_with_mtu(pmd: Pmd, cores: usize, mtu: u16, extra: &[&str]) -> (Netns, Dataplane) {
    let mtu = mtu.to_string();
    let extra: Vec<&str> = ["--mtu", mtu.as_str()]
        .iter()
        .chain(extra)
        .copied()
        .collect();
    let extra = extra.as_slice();
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
            let dp = Dataplane::start_with(&ns, "net_tap0,iface=fxtap0", &lcores, extra);
            // Bursts of thousands of connections overflow the default queue.
            ns.tap_up(&["txqueuelen", "10000"]);
            dp
        }
        Pmd::AfPacket | Pmd::AfXdp => {
            ns.add_veth();
            // The dataplane sets veth1's MTU through its driver.
            ns.run(&["ip", "link", "set", "veth0", "mtu", &mtu]);
            let vdev = match pmd {
                // A ring of 8,192 frames: the default 512 drops the burst
                // thousands of clients send at once when their windows
                // open, and DPDK 22.11 counts none of it (`rx_missed`
                // stays 0); those clients then back off for minutes.
                Pmd::AfPacket => {
                    format!("net_af_packet0,iface=veth1,qpairs={cores},framecnt=8192")
                }
                _ => format!("net_af_xdp0,iface=veth1,start_queue=0,queue_count={cores}"),
            };
            Dataplane::start_with(&ns, &vdev, &lcores, extra)
        }
    };
    (ns, dp)
}

/// Requests per second from `redis-benchmark -q` output (last test line).
pub fn rps(output: &str) -> f64 {
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

/// The value of the word `name=value` in `text`.
pub fn field<'a>(text: &'a str, name: &str) -> &'a str {
    text.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name} in {text:?}"))
}

/// The number in the word `name=N` of a statistics line (or any text).
pub fn stat(stats: &str, name: &str) -> u64 {
    field(stats, name)
        .parse()
        .unwrap_or_else(|_| panic!("{name} is no number in {stats:?}"))
}

/// The number that follows `prefix` on the first line of `output` that
/// starts with it.
pub fn line_value(output: &str, prefix: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} line in {output:?}"))
}
