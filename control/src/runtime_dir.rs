//! DPDK's runtime directories of the dataplanes (`/var/run/dpdk/ferrox-<pid>`,
//! empty with `--in-memory`). A dataplane that stops cleanly removes its
//! own; one that was killed leaves it behind, named after its pid.

use std::path::Path;

/// Where DPDK puts them.
pub const DPDK_RUN: &str = "/var/run/dpdk";

/// Removes dataplane `pid`'s directory once the process is reaped (only
/// if empty).
pub fn remove(pid: u32) {
    let _ = std::fs::remove_dir(Path::new(DPDK_RUN).join(format!("ferrox-{pid}")));
}

/// Removes, under `dir`, the empty `ferrox-<pid>` directories of processes
/// that no longer run: those a control process that was killed (its
/// dataplane dying with it) could not remove, and its successor cannot
/// name. A live
/// process's directory, a directory with files in it and other prefixes
/// (the port holder's `ferrox-port-…`) are left alone. Returns how many
/// went.
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("ferrox-"))
                .and_then(|p| p.parse::<u32>().ok());
            // remove_dir takes only an empty directory.
            pid.is_some_and(|pid| !crate::process_runs(pid))
                && std::fs::remove_dir(entry.path()).is_ok()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid no process has now.
    fn gone_pid() -> u32 {
        (100_000..4_000_000)
            .rev()
            .step_by(7)
            .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
            .unwrap()
    }

    #[test]
    fn sweeps_only_the_empty_directories_of_processes_that_are_gone() {
        let dir = std::env::temp_dir().join(format!("ferrox-sweep-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let gone = gone_pid();
        let mine = std::process::id();
        for name in [
            format!("ferrox-{gone}"),
            format!("ferrox-{mine}"),
            format!("ferrox-{}", gone - 1),
            "ferrox-port-control".to_string(),
            "other-1".to_string(),
        ] {
            std::fs::create_dir(dir.join(name)).unwrap();
        }
        // A directory with something in it stays, whoever made it.
        let busy = format!("ferrox-{}", gone - 1);
        std::fs::write(dir.join(&busy).join("config"), b"").unwrap();

        assert_eq!(sweep(&dir), 1);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut expected = vec![
            busy,
            format!("ferrox-{mine}"),
            "ferrox-port-control".to_string(),
            "other-1".to_string(),
        ];
        expected.sort();
        assert_eq!(left, expected);
        assert_eq!(sweep(&dir.join("absent")), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
