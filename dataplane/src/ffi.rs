//! The dataplane's only door to DPDK and to the few kernel calls the
//! runtime makes itself: thin safe functions, one module per subsystem,
//! each `unsafe` block with the invariant that makes it sound.
//!
//! Raw mbuf pointers never leave [`mbuf`] except inside the owning types
//! [`Mbuf`], [`RxBurst`] and [`TxBurst`], which free them exactly once.

use std::ffi::CStr;

use dpdk_sys as sys;

mod eal;
mod ethdev;
mod kernel;
mod mbuf;

pub(crate) use eal::{dev_probe, dev_remove, eal_cleanup, eal_init, lcore_id};
pub use eal::{lcores, run_on_lcores, Task};
pub(crate) use ethdev::*;
pub use kernel::wait_readable;
pub(crate) use kernel::{interface_driver, interface_index, interface_name, xsk_queue_busy};
pub use mbuf::{rx_burst, tx_burst, L4Checksum, Mbuf, Mempool, RxBurst, TxBurst};

/// Bytes DPDK keeps free before each mbuf's data.
pub const PKTMBUF_HEADROOM: u32 = sys::RTE_PKTMBUF_HEADROOM;
/// DPDK's default mbuf buffer size (2 KiB of data after the headroom).
pub const MBUF_DEFAULT_BUF_SIZE: u32 = sys::RTE_MBUF_DEFAULT_BUF_SIZE;

/// Where the shared DPDK ferrox was built against keeps its drivers
/// (plugins), from DPDK's own build configuration (e.g. Debian 12's
/// `/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0`); empty when it names none.
pub const PMD_DIR: &str = sys::EAL_PMD_PATH;

fn errno_string(code: i32) -> String {
    // SAFETY: plain call; any code is accepted.
    let msg = unsafe { sys::rte_strerror(code.abs()) };
    // SAFETY: rte_strerror returns a NUL-terminated static or thread-local string.
    let msg = unsafe { CStr::from_ptr(msg) };
    format!("{} (errno {})", msg.to_string_lossy(), code.abs())
}

fn last_errno() -> i32 {
    // SAFETY: reads DPDK's per-thread errno.
    unsafe { sys::ferrox_errno() }
}
