//! DPDK's Environment Abstraction Layer: started once per process from our
//! configuration.
//!
//! PCI devices are never probed unless the configuration names them in an
//! allow-list: without one, `--no-pci` is always passed, so the machine's own
//! NIC is never touched.

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
    /// Keep DPDK's memory private to this process (`--in-memory`): no
    /// hugepage files or runtime directory are left behind, whatever way the
    /// process ends. A primary that secondaries attach to needs `false`.
    pub in_memory: bool,
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
            in_memory: true,
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
            "-m".into(),
            self.memory_mb.to_string(),
            "--file-prefix".into(),
            self.file_prefix.clone(),
            "--log-level".into(),
            self.log_level.clone(),
            // Debian's shared DPDK loads its drivers as plugins from here.
            "-d".into(),
            crate::ffi::PMD_DIR.into(),
            // ferrox publishes its own statistics; DPDK's socket would also
            // outlive the process in the runtime directory.
            "--no-telemetry".into(),
        ];
        if self.in_memory {
            args.push("--in-memory".into());
        }
        if self.pci_allow.is_empty() {
            args.push("--no-pci".into());
        }
        for pci in &self.pci_allow {
            args.extend(["-a".to_owned(), pci.clone()]);
        }
        for vdev in &self.vdevs {
            args.extend(["--vdev".to_owned(), vdev.clone()]);
        }
        args
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EalError {
    #[error("DPDK EAL init failed: {0} (args: {1})")]
    Init(String, String),
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
        ffi::eal_init(c_args).map_err(|e| EalError::Init(e, args.join(" ")))?;
        Ok(Eal {
            file_prefix: config.file_prefix.clone(),
        })
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
        let _ = std::fs::remove_dir(format!("/var/run/dpdk/{}", self.file_prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_is_off_unless_allow_listed() {
        let args = EalConfig::default().args();
        assert!(args.contains(&"--no-pci".to_owned()));
        assert!(args.contains(&"--in-memory".to_owned()));
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
}
