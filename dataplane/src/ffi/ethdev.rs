//! Ports: capabilities, configuration, start and stop, RX interrupts,
//! link state and counters.

use std::ffi::CStr;

use dpdk_sys as sys;

use super::errno_string;
use super::mbuf::Mempool;

/// What a port can do, from `rte_eth_dev_info_get`.
#[derive(Debug, Clone)]
pub struct DevInfo {
    pub driver: String,
    pub max_rx_queues: u16,
    pub max_tx_queues: u16,
    pub rx_offload_capa: u64,
    pub tx_offload_capa: u64,
    pub flow_type_rss_offloads: u64,
    pub min_mtu: u16,
    pub max_mtu: u16,
    /// Largest frame the driver receives (Ethernet header and CRC included).
    pub max_rx_pktlen: u32,
    /// The kernel interface behind the port (kernel-backed PMDs), else 0.
    pub if_index: u32,
    /// RX queues configured now (by whichever process configured it).
    pub nb_rx_queues: u16,
}

pub(crate) fn dev_info(port: u16) -> Result<DevInfo, String> {
    let mut info = sys::rte_eth_dev_info::default();
    // SAFETY: `info` is a valid out-parameter.
    let rc = unsafe { sys::rte_eth_dev_info_get(port, &mut info) };
    if rc != 0 {
        return Err(errno_string(rc));
    }
    let driver = if info.driver_name.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string owned by the driver.
        unsafe { CStr::from_ptr(info.driver_name) }
            .to_string_lossy()
            .into_owned()
    };
    Ok(DevInfo {
        driver,
        max_rx_queues: info.max_rx_queues,
        max_tx_queues: info.max_tx_queues,
        rx_offload_capa: info.rx_offload_capa,
        tx_offload_capa: info.tx_offload_capa,
        flow_type_rss_offloads: info.flow_type_rss_offloads,
        min_mtu: info.min_mtu,
        max_mtu: info.max_mtu,
        max_rx_pktlen: info.max_rx_pktlen,
        if_index: info.if_index,
        nb_rx_queues: info.nb_rx_queues,
    })
}

/// The MTU the port is configured with.
pub(crate) fn mtu(port: u16) -> Result<u16, String> {
    let mut mtu = 0u16;
    // SAFETY: valid out-parameter.
    let rc = unsafe { sys::rte_eth_dev_get_mtu(port, &mut mtu) };
    if rc != 0 {
        return Err(errno_string(rc));
    }
    Ok(mtu)
}

/// RSS hash types ferrox asks for: IP and TCP.
pub(crate) fn rss_hf_ip_tcp() -> u64 {
    // SAFETY: returns a constant.
    unsafe { sys::ferrox_rss_hf_ip_tcp() }
}

/// The TCP checksum TX offload bit.
pub(crate) fn tx_offload_tcp_cksum() -> u64 {
    // SAFETY: returns a constant.
    unsafe { sys::ferrox_tx_offload_tcp_cksum() }
}

/// The TCP checksum RX offload bit.
pub(crate) fn rx_offload_tcp_cksum() -> u64 {
    // SAFETY: returns a constant.
    unsafe { sys::ferrox_rx_offload_tcp_cksum() }
}

pub(crate) fn port_count() -> u16 {
    // SAFETY: plain query.
    unsafe { sys::rte_eth_dev_count_avail() }
}

pub(crate) fn port_name(port: u16) -> String {
    let mut buf = [0 as libc::c_char; 64];
    // SAFETY: the buffer holds RTE_ETH_NAME_MAX_LEN (64) bytes.
    let rc = unsafe { sys::rte_eth_dev_get_name_by_port(port, buf.as_mut_ptr()) };
    if rc != 0 {
        return format!("port{port}");
    }
    // SAFETY: DPDK wrote a NUL-terminated name into the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn socket_of(port: u16) -> i32 {
    // SAFETY: plain query.
    let s = unsafe { sys::rte_eth_dev_socket_id(port) };
    s.max(0)
}

/// What a port is configured with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EthConf {
    /// RX and TX queues.
    pub queues: u16,
    /// RSS hash types (used with more than one queue).
    pub rss_hf: u64,
    pub rx_offloads: u64,
    pub tx_offloads: u64,
    pub mtu: u16,
}

/// Configures `port` (see [`port_start`]); RX interrupts when `rx_intr`.
fn port_configure(port: u16, eth: &EthConf, rx_intr: bool) -> i32 {
    let mut conf = sys::rte_eth_conf::default();
    conf.rxmode.mtu = eth.mtu as u32;
    if eth.queues > 1 && eth.rss_hf != 0 {
        conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode_RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = eth.rss_hf;
    }
    conf.rxmode.offloads = eth.rx_offloads;
    conf.txmode.offloads = eth.tx_offloads;
    conf.intr_conf.set_rxq(rx_intr as u32);
    // SAFETY: `conf` is a valid configuration that DPDK copies.
    unsafe { sys::rte_eth_dev_configure(port, eth.queues, eth.queues, &conf) }
}

/// Configures `port` as `eth` says, with RX interrupts when the driver has
/// them, and starts it. Returns whether RX interrupts are on.
pub(crate) fn port_start(
    port: u16,
    eth: &EthConf,
    descriptors: u16,
    pool: &Mempool,
) -> Result<bool, String> {
    let (queues, mtu) = (eth.queues, eth.mtu);
    let mut rx_intr = true;
    let mut rc = port_configure(port, eth, true);
    if rc != 0 {
        rx_intr = false;
        rc = port_configure(port, eth, false);
    }
    if rc != 0 {
        return Err(format!("configure: {}", errno_string(rc)));
    }
    // Configuring only records the MTU; this applies it (the kernel-backed
    // PMDs set their interface's MTU), before the queues size their buffers.
    // SAFETY: plain call on a configured port.
    let rc = unsafe { sys::rte_eth_dev_set_mtu(port, mtu) };
    if rc != 0 && !(rc == -libc::ENOTSUP && u32::from(mtu) == sys::RTE_ETHER_MTU) {
        return Err(format!("MTU {mtu}: {}", errno_string(rc)));
    }
    let (mut rxd, mut txd) = (descriptors, descriptors);
    // SAFETY: valid out-parameters.
    let rc = unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port, &mut rxd, &mut txd) };
    if rc != 0 {
        return Err(format!("descriptors: {}", errno_string(rc)));
    }
    let socket = socket_of(port) as u32;
    for q in 0..queues {
        // SAFETY: a configured port; NULL rxconf means driver defaults; the
        // pool outlives the port (the runtime drops the port first).
        let rc = unsafe {
            sys::rte_eth_rx_queue_setup(port, q, rxd, socket, std::ptr::null(), pool.raw())
        };
        if rc != 0 {
            return Err(format!("rx queue {q}: {}", errno_string(rc)));
        }
        // SAFETY: as above; NULL txconf means driver defaults (plus the
        // port-level offloads configured above).
        let rc = unsafe { sys::rte_eth_tx_queue_setup(port, q, txd, socket, std::ptr::null()) };
        if rc != 0 {
            return Err(format!("tx queue {q}: {}", errno_string(rc)));
        }
    }
    // SAFETY: all queues are set up.
    let rc = unsafe { sys::rte_eth_dev_start(port) };
    if rc != 0 {
        return Err(format!("start: {}", errno_string(rc)));
    }
    Ok(rx_intr)
}

/// The file descriptor that becomes readable when `queue` has frames, once
/// [`rx_intr_enable`] armed it; `None` where the PMD has no RX interrupts.
pub(crate) fn rx_intr_fd(port: u16, queue: u16) -> Option<std::os::fd::RawFd> {
    // SAFETY: plain query on a started port.
    let fd = unsafe { sys::rte_eth_dev_rx_intr_ctl_q_get_fd(port, queue) };
    (fd >= 0).then_some(fd)
}

/// Arms `queue`'s RX interrupt; 0 or a negative errno.
pub(crate) fn rx_intr_enable(port: u16, queue: u16) -> i32 {
    // SAFETY: plain call on a started port and one of its queues.
    unsafe { sys::rte_eth_dev_rx_intr_enable(port, queue) }
}

pub(crate) fn rx_intr_disable(port: u16, queue: u16) {
    // SAFETY: as above.
    unsafe { sys::rte_eth_dev_rx_intr_disable(port, queue) };
}

pub(crate) fn port_stop(port: u16) {
    // SAFETY: stopping and closing a started port; no lcore polls it any more
    // (the runtime joins its lcores first).
    unsafe {
        sys::rte_eth_dev_stop(port);
    }
    // SAFETY: as above.
    unsafe {
        sys::rte_eth_dev_close(port);
    }
}

/// Link state: (up, speed in Mb/s).
pub(crate) fn link(port: u16) -> (bool, u32) {
    let mut link = sys::rte_eth_link::default();
    // SAFETY: valid out-parameter.
    unsafe { sys::rte_eth_link_get_nowait(port, &mut link) };
    let up = link.link_status() != 0;
    (up, link.link_speed)
}

/// Basic counters: (rx packets, tx packets, rx missed, rx errors, tx errors).
pub(crate) fn stats(port: u16) -> (u64, u64, u64, u64, u64) {
    let mut s = sys::rte_eth_stats::default();
    // SAFETY: valid out-parameter.
    unsafe { sys::rte_eth_stats_get(port, &mut s) };
    (s.ipackets, s.opackets, s.imissed, s.ierrors, s.oerrors)
}

/// Extended statistics as (name, value).
pub(crate) fn xstats(port: u16) -> Vec<(String, u64)> {
    // SAFETY: a NULL array with size 0 asks for the count.
    let n = unsafe { sys::rte_eth_xstats_get_names(port, std::ptr::null_mut(), 0) };
    if n <= 0 {
        return Vec::new();
    }
    let mut names = vec![sys::rte_eth_xstat_name::default(); n as usize];
    let mut values = vec![sys::rte_eth_xstat::default(); n as usize];
    // SAFETY: both arrays hold `n` entries.
    let got_names = unsafe { sys::rte_eth_xstats_get_names(port, names.as_mut_ptr(), n as u32) };
    // SAFETY: as above.
    let got = unsafe { sys::rte_eth_xstats_get(port, values.as_mut_ptr(), n as u32) };
    if got_names != n || got != n {
        return Vec::new();
    }
    values
        .iter()
        .filter_map(|v| {
            let name = names.get(v.id as usize)?;
            // SAFETY: DPDK NUL-terminates xstat names within their array.
            let name = unsafe { CStr::from_ptr(name.name.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            Some((name, v.value))
        })
        .collect()
}

pub(crate) fn mac_addr(port: u16) -> [u8; 6] {
    let mut mac = sys::rte_ether_addr::default();
    // SAFETY: valid out-parameter.
    unsafe { sys::rte_eth_macaddr_get(port, &mut mac) };
    mac.addr_bytes
}
