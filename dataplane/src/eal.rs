//! DPDK's Environment Abstraction Layer: started once per process from our
//! configuration.
//!
//! PCI devices are never probed unless the configuration names them in an
//! allow-list: without one, `--no-pci` is always passed, so the machine's own
//! NIC is never touched.
//!
//! DPDK reports a machine without free hugepages as `Permission denied`
//! (it sets `EACCES` when it finds no usable page size) or `Cannot allocate
//! memory`. When the init fails, the hugepage figures of `/proc/meminfo`,
//! read before the attempt and after it, decide whether that is the cause,
//! and the error then says so and how to fix it.

use std::ffi::CString;

use crate::ffi;

/// What the EAL is started with.
#[derive(Debug, Clone)]
pub struct EalConfig {
    /// lcores to run on, as DPDK's `-l` list (e.g. "0" or "0-1").
    pub lcores: String,
    /// Hugepage memory in MiB (`-m`).
    pub memory_mb: u32,
    /// Names this DPDK instance's runtime files; two processes with the same
    /// prefix share memory (primary and secondaries).
    pub file_prefix: String,
    /// Virtual devices, e.g. `net_tap0,iface=fx0` or `net_af_xdp0,iface=veth1`.
    pub vdevs: Vec<String>,
    /// PCI addresses DPDK may probe; empty means `--no-pci`.
    pub pci_allow: Vec<String>,
    /// DPDK's own log level (`--log-level`), e.g. "notice".
    pub log_level: String,
    /// Which part this process plays in its DPDK instance.
    pub role: EalRole,
}

/// A DPDK process alone, or one of several sharing memory and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EalRole {
    /// DPDK's memory private to this process (`--in-memory`): no hugepage
    /// files or runtime directory are left behind, whatever way the
    /// process ends.
    Private,
    /// The primary that secondaries attach to (the port holder): its
    /// hugepage files and runtime directory, under its file prefix, stay
    /// until it is gone and someone removes them ([`remove_runtime_files`]).
    Primary,
    /// A secondary of the primary with the same file prefix: it maps that
    /// process's memory and sees its ports, which it neither configures
    /// nor closes.
    Secondary,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalConfig {
            lcores: "0".into(),
            memory_mb: 256,
            file_prefix: "ferrox".into(),
            vdevs: Vec::new(),
            pci_allow: Vec::new(),
            log_level: "notice".into(),
            role: EalRole::Private,
        }
    }
}

impl EalConfig {
    /// The argument vector handed to `rte_eal_init`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "ferrox".to_owned(),
            "-l".into(),
            self.lcores.clone(),
            "--file-prefix".into(),
            self.file_prefix.clone(),
            "--log-level".into(),
            self.log_level.clone(),
            // ferrox publishes its own statistics; DPDK's socket would also
            // outlive the process in the runtime directory.
            "--no-telemetry".into(),
        ];
        // A shared DPDK loads its drivers as plugins from here.
        if !crate::ffi::PMD_DIR.is_empty() {
            args.extend(["-d".into(), crate::ffi::PMD_DIR.into()]);
        }
        match self.role {
            EalRole::Private => args.extend([
                "-m".into(),
                self.memory_mb.to_string(),
                "--in-memory".into(),
            ]),
            EalRole::Primary => args.extend([
                "-m".into(),
                self.memory_mb.to_string(),
                "--proc-type=primary".into(),
            ]),
            // Its memory is the primary's; its virtual devices too (the
            // vdev bus asks the primary for them).
            EalRole::Secondary => args.push("--proc-type=secondary".into()),
        }
        if self.pci_allow.is_empty() {
            args.push("--no-pci".into());
        }
        for pci in &self.pci_allow {
            args.extend(["-a".to_owned(), pci.clone()]);
        }
        if self.role != EalRole::Secondary {
            for vdev in &self.vdevs {
                args.extend(["--vdev".to_owned(), vdev.clone()]);
            }
        }
        args
    }
}

/// Where the DPDK instance named `file_prefix` keeps its runtime files.
fn runtime_dir(file_prefix: &str) -> std::path::PathBuf {
    std::path::Path::new("/var/run/dpdk").join(file_prefix)
}

/// Removes what a primary with `file_prefix` leaves behind (its hugepage
/// files in every hugetlbfs mount, its runtime directory): after it
/// exited, in whatever way (a live primary's secondaries could not attach
/// any more). Returns the hugepage files removed.
pub fn remove_runtime_files(file_prefix: &str) -> std::io::Result<usize> {
    if file_prefix.is_empty() || file_prefix.contains('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a file prefix: {file_prefix:?}"),
        ));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut removed = 0;
    for dir in mounts.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "hugetlbfs").then(|| dir.to_owned())
    }) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // DPDK names them <prefix>map_<n> (or <prefix>map_<list>_<n>).
            let name = entry.file_name();
            let is_ours = name
                .to_str()
                .and_then(|n| n.strip_prefix(file_prefix))
                .is_some_and(|rest| rest.starts_with("map_"));
            if is_ours && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    let dir = runtime_dir(file_prefix);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(removed)
}

#[derive(Debug, thiserror::Error)]
pub enum EalError {
    #[error("DPDK EAL init failed: {0} (args: {1})")]
    Init(String, String),
    /// The init failed for want of hugepages: what is missing and how to
    /// get it, then DPDK's own error and the arguments.
    #[error("{advice} (DPDK EAL init failed: {error}; args: {args})")]
    Hugepages {
        advice: String,
        error: String,
        args: String,
    },
    #[error("the EAL is already initialised in this process")]
    Twice,
    #[error("argument contains a NUL byte: {0:?}")]
    Nul(String),
}

/// Proof that the EAL runs in this process; ports and pools need it.
#[derive(Debug)]
pub struct Eal {
    file_prefix: String,
}

static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Eal {
    /// Starts the EAL. Once per process: DPDK cannot be re-initialised.
    pub fn init(config: &EalConfig) -> Result<Eal, EalError> {
        if STARTED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(EalError::Twice);
        }
        let args = config.args();
        let c_args = args
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| EalError::Nul(a.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(args = %args.join(" "), "starting DPDK EAL");
        let before = Hugepages::read();
        if let Err(error) = ffi::eal_init(c_args) {
            let after = Hugepages::read();
            let args = args.join(" ");
            return Err(
                match hugepage_advice(&error, config.memory_mb, before, after) {
                    Some(advice) => EalError::Hugepages {
                        advice,
                        error,
                        args,
                    },
                    None => EalError::Init(error, args),
                },
            );
        }
        Ok(Eal {
            file_prefix: config.file_prefix.clone(),
        })
    }

    /// Probes a virtual device now (`--vdev`'s argument): a successor in
    /// standby starts the EAL without its port, which its predecessor
    /// still holds, and probes it once that one has closed it (af_xdp
    /// cannot create its socket on a device probed while another process
    /// had one).
    pub fn probe(&self, devargs: &str) -> Result<(), EalError> {
        ffi::dev_probe(devargs).map_err(|e| EalError::Init(e, format!("probe {devargs}")))
    }

    /// Removes a virtual device probed from `devargs` (its port closed).
    pub fn remove(&self, devargs: &str) -> Result<(), EalError> {
        let name = devargs.split(',').next().unwrap_or(devargs);
        ffi::dev_remove("vdev", name).map_err(|e| EalError::Init(e, format!("remove {name}")))
    }

    /// The file prefix that names this DPDK instance.
    pub fn file_prefix(&self) -> &str {
        &self.file_prefix
    }

    /// The lcore this thread runs on.
    pub fn lcore_id(&self) -> u32 {
        ffi::lcore_id()
    }
}

impl Drop for Eal {
    /// Gives DPDK's memory back (ports must be closed first: they borrow
    /// the `Eal`).
    fn drop(&mut self) {
        ffi::eal_cleanup();
        // DPDK leaves its (by now empty) runtime directory behind.
        let _ = std::fs::remove_dir(runtime_dir(&self.file_prefix));
    }
}

/// The default hugepages of `/proc/meminfo`: how many the kernel holds,
/// how many of them are free, and their size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hugepages {
    pub total: u64,
    pub free: u64,
    pub size_kib: u64,
}

impl Hugepages {
    /// The figures of this machine, if `/proc/meminfo` can be read.
    pub fn read() -> Option<Hugepages> {
        Hugepages::parse(&std::fs::read_to_string("/proc/meminfo").ok()?)
    }

    /// The figures in the text of `/proc/meminfo`.
    pub fn parse(meminfo: &str) -> Option<Hugepages> {
        let field = |name: &str| {
            meminfo.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        Some(Hugepages {
            total: field("HugePages_Total")?,
            free: field("HugePages_Free")?,
            size_kib: field("Hugepagesize")?,
        })
    }

    /// "2 MiB", "1 GiB", as page sizes are named.
    fn size(&self) -> String {
        match self.size_kib {
            kib if kib >= 1 << 20 && kib % (1 << 20) == 0 => format!("{} GiB", kib >> 20),
            kib if kib >= 1 << 10 && kib % (1 << 10) == 0 => format!("{} MiB", kib >> 10),
            kib => format!("{kib} KiB"),
        }
    }
}

/// The errno at the end of an error from `ffi::eal_init` ("... (errno 13)").
fn errno_of(error: &str) -> Option<i32> {
    error
        .rsplit_once("(errno ")?
        .1
        .strip_suffix(')')?
        .parse()
        .ok()
}

const EACCES: i32 = 13;
const ENOMEM: i32 = 12;

/// What to tell the operator when the EAL failed with `error` while asked
/// for `memory_mb` MiB, from the hugepage figures read `before` the
/// attempt and `after` it; `None` when hugepages are not the cause (or
/// cannot be known to be).
///
/// Pages free before the attempt may be gone after it (another process
/// took them), so the smaller count decides.
pub fn hugepage_advice(
    error: &str,
    memory_mb: u32,
    before: Option<Hugepages>,
    after: Option<Hugepages>,
) -> Option<String> {
    let pages = match (before, after) {
        (Some(b), Some(a)) => Hugepages {
            free: b.free.min(a.free),
            ..b
        },
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => return None,
    };
    let errno = errno_of(error);
    if !matches!(errno, Some(EACCES | ENOMEM)) {
        return None;
    }
    let size = pages.size();
    let size_kib = pages.size_kib.max(1);
    let needed = (u64::from(memory_mb) * 1024).div_ceil(size_kib);
    // Reserve what is in use, what this dataplane needs, and room for the
    // socket buffer pool: 512 pages (1 GiB of 2 MiB pages) at least.
    let in_use = pages.total - pages.free.min(pages.total);
    let reserve = (in_use + needed).max(512);
    let how = format!(
        "reserve some with 'echo {reserve} > /proc/sys/vm/nr_hugepages' and mount hugetlbfs \
         at /dev/hugepages ('mount -t hugetlbfs -o pagesize={} nodev /dev/hugepages'), or run \
         ./ferrox.sh which does it",
        size.replace(' ', "").replace("iB", "")
    );
    if pages.total == 0 {
        Some(format!(
            "no free {size} hugepages (none are reserved): {how}"
        ))
    } else if pages.free == 0 {
        Some(format!(
            "no free {size} hugepages (all {} in use): {how}",
            pages.total
        ))
    } else if pages.free < needed {
        Some(format!(
            "only {} free {size} hugepages, and DPDK is asked for {memory_mb} MiB \
             (--memory-mb, {needed} pages): {how}, or give --memory-mb less",
            pages.free
        ))
    } else if errno == Some(EACCES) {
        Some(format!(
            "{} free {size} hugepages, but this process may not use them: run the dataplane \
             as root (DPDK maps hugepages and reads physical addresses), or through \
             ./ferrox.sh",
            pages.free
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/meminfo's hugepage lines, among others.
    fn meminfo(total: u64, free: u64) -> String {
        format!(
            "MemTotal:        8135028 kB\n\
             MemFree:          421644 kB\n\
             HugePages_Total:    {total}\n\
             HugePages_Free:     {free}\n\
             HugePages_Rsvd:        0\n\
             HugePages_Surp:        0\n\
             Hugepagesize:       2048 kB\n\
             Hugetlb:          {} kB\n",
            total * 2048
        )
    }

    fn pages(total: u64, free: u64) -> Option<Hugepages> {
        Hugepages::parse(&meminfo(total, free))
    }

    const EACCES_ERROR: &str = "Permission denied (errno 13)";
    const ENOMEM_ERROR: &str = "Cannot allocate memory (errno 12)";

    #[test]
    fn meminfo_gives_the_hugepage_figures() {
        assert_eq!(
            pages(512, 100),
            Some(Hugepages {
                total: 512,
                free: 100,
                size_kib: 2048
            })
        );
        assert_eq!(Hugepages::parse("MemTotal: 1 kB\n"), None);
        assert_eq!(errno_of(EACCES_ERROR), Some(13));
        assert_eq!(errno_of("Unknown error"), None);
    }

    #[test]
    fn no_reserved_hugepages_is_named_with_the_fix() {
        let advice = hugepage_advice(EACCES_ERROR, 256, pages(0, 0), pages(0, 0)).unwrap();
        assert_eq!(
            advice,
            "no free 2 MiB hugepages (none are reserved): reserve some with 'echo 512 > \
             /proc/sys/vm/nr_hugepages' and mount hugetlbfs at /dev/hugepages ('mount -t \
             hugetlbfs -o pagesize=2M nodev /dev/hugepages'), or run ./ferrox.sh which does it"
        );
        let error = EalError::Hugepages {
            advice,
            error: EACCES_ERROR.into(),
            args: "ferrox -l 0".into(),
        };
        assert!(error
            .to_string()
            .starts_with("no free 2 MiB hugepages (none are reserved): "));
        assert!(error
            .to_string()
            .ends_with("(DPDK EAL init failed: Permission denied (errno 13); args: ferrox -l 0)"));
    }

    #[test]
    fn none_free_or_too_few_free_are_told_apart() {
        let advice = hugepage_advice(EACCES_ERROR, 256, pages(512, 0), pages(512, 0)).unwrap();
        assert!(
            advice.starts_with(
                "no free 2 MiB hugepages (all 512 in use): reserve some with 'echo 640 >"
            ),
            "{advice}"
        );
        // Free before the attempt, gone after it: the smaller count decides.
        let advice = hugepage_advice(EACCES_ERROR, 256, pages(512, 300), pages(512, 0)).unwrap();
        assert!(advice.starts_with("no free 2 MiB hugepages"), "{advice}");
        let advice = hugepage_advice(ENOMEM_ERROR, 256, pages(1024, 100), None).unwrap();
        assert!(
            advice.starts_with(
                "only 100 free 2 MiB hugepages, and DPDK is asked for 256 MiB (--memory-mb, 128 \
                 pages): reserve some with 'echo 1052 >"
            ),
            "{advice}"
        );
        assert!(advice.ends_with(", or give --memory-mb less"));
    }

    #[test]
    fn free_hugepages_and_a_refusal_mean_privileges() {
        let advice = hugepage_advice(EACCES_ERROR, 256, pages(512, 512), pages(512, 512)).unwrap();
        assert!(
            advice.starts_with("512 free 2 MiB hugepages, but this process may not use them: run"),
            "{advice}"
        );
    }

    #[test]
    fn other_failures_keep_dpdks_own_error() {
        // Enough hugepages and another errno: not a hugepage problem.
        let busy = "Device or resource busy (errno 16)";
        assert_eq!(hugepage_advice(busy, 256, pages(512, 512), None), None);
        assert_eq!(hugepage_advice(busy, 256, pages(0, 0), None), None);
        assert_eq!(
            hugepage_advice(ENOMEM_ERROR, 256, pages(512, 512), None),
            None
        );
        // Nothing known about hugepages: nothing to add.
        assert_eq!(hugepage_advice(EACCES_ERROR, 256, None, None), None);
    }

    #[test]
    fn the_driver_directory_is_the_one_dpdk_was_built_with() {
        // Debian's DPDK names one; it must exist on this machine.
        assert!(!crate::ffi::PMD_DIR.is_empty());
        assert!(std::path::Path::new(crate::ffi::PMD_DIR).is_dir());
        let args = EalConfig::default().args();
        assert!(args.windows(2).any(|w| w == ["-d", crate::ffi::PMD_DIR]));
    }

    #[test]
    fn pci_is_off_unless_allow_listed() {
        let args = EalConfig::default().args();
        assert!(args.contains(&"--no-pci".to_owned()));
        assert!(args.contains(&"--in-memory".to_owned()));
        assert!(args.windows(2).any(|w| w == ["-m", "256"]));
        let config = EalConfig {
            pci_allow: vec!["0000:00:04.0".into()],
            ..EalConfig::default()
        };
        let args = config.args();
        assert!(!args.contains(&"--no-pci".to_owned()));
        assert!(args.windows(2).any(|w| w == ["-a", "0000:00:04.0"]));
    }

    #[test]
    fn vdevs_are_passed_in_order() {
        let config = EalConfig {
            vdevs: vec!["net_tap0".into(), "net_null0".into()],
            ..EalConfig::default()
        };
        let args = config.args();
        assert!(args
            .windows(4)
            .any(|w| w == ["--vdev", "net_tap0", "--vdev", "net_null0"]));
    }

    #[test]
    fn a_primary_keeps_its_files_and_a_secondary_takes_its_devices() {
        let config = EalConfig {
            vdevs: vec!["net_tap0".into()],
            file_prefix: "ferrox-port-control".into(),
            role: EalRole::Primary,
            ..EalConfig::default()
        };
        let args = config.args();
        assert!(!args.contains(&"--in-memory".to_owned()));
        assert!(args.contains(&"--proc-type=primary".to_owned()));
        assert!(args.windows(2).any(|w| w == ["--vdev", "net_tap0"]));
        let args = EalConfig {
            role: EalRole::Secondary,
            ..config
        }
        .args();
        assert!(args.contains(&"--proc-type=secondary".to_owned()));
        assert!(!args.contains(&"--in-memory".to_owned()));
        assert!(!args.iter().any(|a| a == "--vdev" || a == "-m"));
        assert!(args
            .windows(2)
            .any(|w| w == ["--file-prefix", "ferrox-port-control"]));
    }

    #[test]
    fn runtime_files_are_removed_only_for_a_real_prefix() {
        assert!(remove_runtime_files("").is_err());
        assert!(remove_runtime_files("../etc").is_err());
        // Nothing of this prefix exists: nothing removed, no error.
        assert_eq!(remove_runtime_files("ferrox-test-none").unwrap(), 0);
    }
}
