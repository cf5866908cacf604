//! ferrox's control process and its admin client.
//!
//! - `admin`: the admin protocol (JSON lines on a Unix socket), shared by
//!   `ferrox-control` and `ferroxctl`.
//! - `running`: the running configuration and the operator's changes to
//!   it, each checked whole before it is published.
//! - `health`: health checks and the ejection decisions they drive.
//! - `metrics`: statistics from the control block, rates, Prometheus text.
//! - `daemon`: the process itself: the shared region it owns, the threads
//!   that serve the admin socket and metrics, check health and sample.
//! - `notify`: systemd's readiness, reload, status and watchdog
//!   notifications.
//!
//! The control process never touches a packet: it runs on the kernel
//! stack and reaches the dataplane only through the control block and the
//! socket pool in its shared region (`ferrox-block`, `hugepage-pool`).

pub mod admin;
pub mod daemon;
pub mod health;
pub mod metrics;
pub mod notify;
pub mod running;
pub mod runtime_dir;
pub mod twemproxy;

/// Whether process `pid` runs: it exists and is not a zombie (one that
/// died waits for its parent, or init, to reap it, and holds nothing
/// meanwhile).
pub fn process_runs(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may
    // hold anything.
    !matches!(
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next()),
        Some('Z' | 'X')
    )
}

/// How many lcores a DPDK `--lcores` list names (`0`, `0-3`, `0,2-3`).
pub fn lcore_count(spec: &str) -> Option<usize> {
    let mut count = 0;
    for part in spec.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a {
                    return None;
                }
                count += b - a + 1;
            }
            None => {
                part.parse::<usize>().ok()?;
                count += 1;
            }
        }
    }
    (count > 0).then_some(count)
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::disallowed_methods)] // waits for a process to exit
    fn a_zombie_does_not_run() {
        use std::time::{Duration, Instant};
        assert!(super::process_runs(std::process::id()));
        // A child that exited and is not reaped yet.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while super::process_runs(child.id()) {
            assert!(Instant::now() < deadline, "never a zombie");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(std::path::Path::new(&format!("/proc/{}", child.id())).exists());
        child.wait().unwrap();
        assert!(!super::process_runs(child.id()));
    }

    #[test]
    fn lcore_lists_are_counted() {
        assert_eq!(super::lcore_count("0"), Some(1));
        assert_eq!(super::lcore_count("0-1"), Some(2));
        assert_eq!(super::lcore_count("0,2-4"), Some(4));
        assert_eq!(super::lcore_count("3-1"), None);
        assert_eq!(super::lcore_count("x"), None);
    }
}
