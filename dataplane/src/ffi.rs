//! The dataplane's only door to DPDK: thin safe functions over `dpdk-sys`,
//! each `unsafe` block with the invariant that makes it sound.
//!
//! Raw mbuf pointers never leave this module except inside the owning types
//! [`Mbuf`] and [`RxBurst`], which free them exactly once.

use std::ffi::{CStr, CString};
use std::ptr::NonNull;

use dpdk_sys as sys;

/// Bytes DPDK keeps free before each mbuf's data.
pub const PKTMBUF_HEADROOM: u32 = sys::RTE_PKTMBUF_HEADROOM;
/// DPDK's default mbuf buffer size (2 KiB of data after the headroom).
pub const MBUF_DEFAULT_BUF_SIZE: u32 = sys::RTE_MBUF_DEFAULT_BUF_SIZE;

/// Where Debian's shared DPDK keeps its drivers (plugins).
pub const PMD_DIR: &str = "/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0";

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

pub(crate) fn eal_init(args: Vec<CString>) -> Result<(), String> {
    // DPDK keeps pointers into argv for the life of the process: leak it.
    let args: &'static mut [CString] = Box::leak(args.into_boxed_slice());
    let argv: &'static mut [*mut libc::c_char] = Box::leak(
        args.iter()
            .map(|a| a.as_ptr().cast_mut())
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    // SAFETY: argv holds argc valid NUL-terminated strings that live forever;
    // the caller ensures this runs once per process.
    let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    if rc < 0 {
        Err(errno_string(last_errno()))
    } else {
        Ok(())
    }
}

pub(crate) fn eal_cleanup() {
    // SAFETY: called once, after every port is closed and every lcore joined.
    unsafe { sys::rte_eal_cleanup() };
}

pub(crate) fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local set by the EAL.
    unsafe { sys::ferrox_lcore_id() }
}

/// A pool of packet buffers in DPDK's hugepage memory.
#[derive(Debug)]
pub struct Mempool(NonNull<sys::rte_mempool>);

// SAFETY: DPDK mempools are multi-thread safe (per-lcore caches plus a
// lock-free ring) and live until freed.
unsafe impl Send for Mempool {}
// SAFETY: as above.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// A pool of `mbufs` packet buffers with `data_room` bytes each
    /// (headroom included).
    pub fn create(
        name: &str,
        mbufs: u32,
        cache: u32,
        data_room: u16,
        socket: i32,
    ) -> Result<Mempool, String> {
        let name = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: a valid C string; DPDK copies the name.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(name.as_ptr(), mbufs, cache, 0, data_room, socket)
        };
        NonNull::new(pool)
            .map(Mempool)
            .ok_or_else(|| errno_string(last_errno()))
    }

    pub(crate) fn raw(&self) -> *mut sys::rte_mempool {
        self.0.as_ptr()
    }

    /// Buffers free in the pool (including per-lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is valid while self lives.
        unsafe { sys::rte_mempool_avail_count(self.0.as_ptr()) }
    }

    /// Allocates one mbuf.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is valid while self lives.
        NonNull::new(unsafe { sys::ferrox_pktmbuf_alloc(self.0.as_ptr()) }).map(Mbuf)
    }
}

/// One owned packet buffer (single segment).
#[derive(Debug)]
pub struct Mbuf(NonNull<sys::rte_mbuf>);

impl Mbuf {
    /// Grows the packet by `len` bytes and returns them for writing.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let len16 = u16::try_from(len).ok()?;
        // SAFETY: we own the mbuf; append returns NULL when it has no room.
        let data = unsafe { sys::ferrox_pktmbuf_append(self.0.as_ptr(), len16) };
        // SAFETY: append returned `len` bytes of data room inside our mbuf.
        NonNull::new(data).map(|p| unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) })
    }

    /// Leaves the TCP checksum of this Ethernet/IPv4/TCP frame to the NIC
    /// (the IPv4 header is `l3_len` bytes).
    pub fn offload_tcp_checksum(&mut self, l3_len: u8) {
        // SAFETY: we own the mbuf, and it holds the frame described.
        unsafe { sys::ferrox_pktmbuf_tx_tcp_cksum(self.0.as_ptr(), l3_len) }
    }

    fn into_raw(self) -> *mut sys::rte_mbuf {
        let raw = self.0.as_ptr();
        std::mem::forget(self);
        raw
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf and free it once.
        unsafe { sys::ferrox_pktmbuf_free(self.0.as_ptr()) }
    }
}

/// Packets received by one `rx_burst`, freed together when dropped.
/// What the NIC found of a received frame's L4 checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Checksum {
    /// Correct, or the data verified with the field left partial.
    Good,
    Bad,
    /// Not checked (not TCP/UDP, or the NIC could not tell).
    Unchecked,
}

#[derive(Debug)]
pub struct RxBurst<const N: usize> {
    mbufs: [*mut sys::rte_mbuf; N],
    len: usize,
}

impl<const N: usize> Default for RxBurst<N> {
    fn default() -> Self {
        RxBurst {
            mbufs: [std::ptr::null_mut(); N],
            len: 0,
        }
    }
}

// SAFETY: the burst owns its mbufs; DPDK mbufs may be freed from any thread.
unsafe impl<const N: usize> Send for RxBurst<N> {}

impl<const N: usize> RxBurst<N> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of packet `i` (its first segment: ferrox never enables
    /// scattered RX, so that is the whole frame).
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(i < self.len);
        let m = self.mbufs[i];
        // SAFETY: `m` is a received mbuf we own until `clear`.
        let data = unsafe { sys::ferrox_pktmbuf_data(m) };
        // SAFETY: as above.
        let len = unsafe { sys::ferrox_pktmbuf_data_len(m) } as usize;
        // SAFETY: data pointer and data_len describe the first segment, which
        // stays valid and unwritten until the burst is cleared.
        unsafe { std::slice::from_raw_parts(data, len) }
    }

    /// What the NIC found of packet `i`'s L4 checksum, where the port has
    /// RX checksum offload.
    pub fn l4_checksum(&self, i: usize) -> L4Checksum {
        assert!(i < self.len);
        // SAFETY: `m` is a received mbuf we own until `clear`.
        match unsafe { sys::ferrox_pktmbuf_rx_l4_cksum(self.mbufs[i]) } {
            1 => L4Checksum::Good,
            -1 => L4Checksum::Bad,
            _ => L4Checksum::Unchecked,
        }
    }

    /// Frees every packet of the burst.
    pub fn clear(&mut self) {
        if self.len > 0 {
            // SAFETY: the first `len` pointers are mbufs we own, freed once.
            unsafe { sys::ferrox_pktmbuf_free_bulk(self.mbufs.as_mut_ptr(), self.len as u32) };
            self.len = 0;
        }
    }
}

impl<const N: usize> Drop for RxBurst<N> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Mbufs waiting for one `tx_burst`.
#[derive(Debug)]
pub struct TxBurst<const N: usize> {
    mbufs: [*mut sys::rte_mbuf; N],
    len: usize,
}

impl<const N: usize> Default for TxBurst<N> {
    fn default() -> Self {
        TxBurst {
            mbufs: [std::ptr::null_mut(); N],
            len: 0,
        }
    }
}

// SAFETY: the burst owns its mbufs; DPDK mbufs may be sent or freed from any
// thread.
unsafe impl<const N: usize> Send for TxBurst<N> {}

impl<const N: usize> TxBurst<N> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Queues a packet; the caller flushes when full.
    pub fn push(&mut self, mbuf: Mbuf) {
        assert!(self.len < N, "flush a full TxBurst before pushing");
        self.mbufs[self.len] = mbuf.into_raw();
        self.len += 1;
    }
}

impl<const N: usize> Drop for TxBurst<N> {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the first `len` pointers are mbufs we own, freed once.
            unsafe { sys::ferrox_pktmbuf_free_bulk(self.mbufs.as_mut_ptr(), self.len as u32) };
        }
    }
}

/// Receives up to N packets from `queue` of `port` into `burst` (which
/// must be empty). Returns how many.
pub(crate) fn rx_burst<const N: usize>(port: u16, queue: u16, burst: &mut RxBurst<N>) -> usize {
    debug_assert!(burst.is_empty());
    // SAFETY: the array has room for N pointers; the port and queue were
    // set up and started by `Port`, and only this lcore polls this queue.
    let n = unsafe { sys::ferrox_rx_burst(port, queue, burst.mbufs.as_mut_ptr(), N as u16) };
    burst.len = n as usize;
    burst.len
}

/// Sends the queued packets; those the NIC did not take are freed (the TCP
/// layer retransmits). Returns (sent, dropped).
pub(crate) fn tx_burst<const N: usize>(
    port: u16,
    queue: u16,
    burst: &mut TxBurst<N>,
) -> (usize, usize) {
    if burst.len == 0 {
        return (0, 0);
    }
    // SAFETY: the first `len` entries are valid mbufs we own; the PMD takes
    // ownership of the ones it reports sent.
    let sent =
        unsafe { sys::ferrox_tx_burst(port, queue, burst.mbufs.as_mut_ptr(), burst.len as u16) }
            as usize;
    let dropped = burst.len - sent;
    if dropped > 0 {
        // SAFETY: entries sent..len are still ours; free them once.
        unsafe {
            sys::ferrox_pktmbuf_free_bulk(
                burst.mbufs.as_mut_ptr().wrapping_add(sent),
                dropped as u32,
            )
        };
    }
    burst.len = 0;
    (sent, dropped)
}

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
    })
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

/// Waits until one of `fds` is readable or `timeout` passes (nanosecond
/// resolution, unlike poll's milliseconds). Interrupted waits just return.
pub fn wait_readable(fds: &[std::os::fd::RawFd], timeout: std::time::Duration) {
    let mut pollfds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 4];
    let n = fds.len().min(pollfds.len());
    for (slot, &fd) in pollfds.iter_mut().zip(fds) {
        slot.fd = fd;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pollfds` holds `n` initialised entries; `ts` is a valid
    // timespec; a null sigmask keeps the current one.
    unsafe {
        libc::ppoll(
            pollfds.as_mut_ptr(),
            n as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
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

/// The name of kernel interface `index` in this network namespace.
pub(crate) fn interface_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `struct ethtool_drvinfo` of <linux/ethtool.h>.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The kernel driver of interface `name` in this network namespace
/// (`ethtool -i`), e.g. "veth", "tun", "mlx5_core".
pub(crate) fn interface_driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: both are plain C structs for which all-zero is valid.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, from) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: SIOCETHTOOL with GDRVINFO fills `info`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut request) };
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

pub(crate) fn mac_addr(port: u16) -> [u8; 6] {
    let mut mac = sys::rte_ether_addr::default();
    // SAFETY: valid out-parameter.
    unsafe { sys::rte_eth_macaddr_get(port, &mut mac) };
    mac.addr_bytes
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

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set the returned flag (and nothing else), so
/// the poll loops finish their burst and the process cleans up.
pub fn stop_on_signals() -> &'static std::sync::atomic::AtomicBool {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(signal, on_stop_signal as *const () as libc::sighandler_t) };
    }
    &STOP
}

static RELOAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_reload_signal(_: libc::c_int) {
    RELOAD.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Makes SIGHUP set the returned flag (and nothing else): a request to
/// read the configuration again.
pub fn reload_on_sighup() -> &'static std::sync::atomic::AtomicBool {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGHUP,
            on_reload_signal as *const () as libc::sighandler_t,
        )
    };
    &RELOAD
}

/// The EAL's lcores: the main one first, then the workers, as `-l` listed.
pub fn lcores() -> Vec<u32> {
    // SAFETY: plain queries after EAL init.
    let main = unsafe { sys::rte_get_main_lcore() };
    let mut all = vec![main];
    let mut at = u32::MAX;
    loop {
        // SAFETY: walks the EAL's lcore table; returns RTE_MAX_LCORE at the end.
        at = unsafe { sys::rte_get_next_lcore(at, 1, 0) };
        if at >= sys::RTE_MAX_LCORE {
            return all;
        }
        all.push(at);
    }
}

pub type Task<'a> = Box<dyn FnOnce() + Send + 'a>;

extern "C" fn run_task(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Box<Task>` leaked by `run_on_lcores` for exactly
    // this launch; we take it back once.
    let task = unsafe { Box::from_raw(arg.cast::<Task<'_>>()) };
    // Unwinding into C is undefined: a panicking core reports failure.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// Runs `tasks[0]` on this (the main) lcore and `tasks[i]` on worker lcore
/// `i`, and returns when all have finished (so tasks may borrow from the
/// caller, as with `std::thread::scope`). Returns how many tasks panicked.
pub fn run_on_lcores(tasks: Vec<Task<'_>>) -> usize {
    let lcores = lcores();
    assert!(
        tasks.len() <= lcores.len(),
        "{} tasks for {} lcores",
        tasks.len(),
        lcores.len()
    );
    let mut tasks = tasks.into_iter();
    let first = tasks.next();
    let mut launched = Vec::new();
    for (task, &lcore) in tasks.zip(&lcores[1..]) {
        let arg = Box::into_raw(Box::new(task)).cast::<libc::c_void>();
        // SAFETY: `run_task` takes the box back; the worker lcore is idle
        // (nothing else launches on it), and we wait for it below before
        // anything the task borrows can go away.
        let rc = unsafe { sys::rte_eal_remote_launch(Some(run_task), arg, lcore) };
        if rc != 0 {
            // SAFETY: the launch failed, so the box is still ours to drop.
            drop(unsafe { Box::from_raw(arg.cast::<Task<'_>>()) });
            panic!("cannot launch on lcore {lcore}: {}", errno_string(rc));
        }
        launched.push(lcore);
    }
    let mut failed = 0;
    if let Some(task) = first {
        failed += std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).is_err() as usize;
    }
    for lcore in launched {
        // SAFETY: waits for the task launched on `lcore` above.
        failed += (unsafe { sys::rte_eal_wait_lcore(lcore) } != 0) as usize;
    }
    failed
}
