//! An Ethernet port owned by the dataplane: its queues, its mbuf pool, its
//! counters.

use crate::eal::Eal;
use crate::ffi::{self, DevInfo, Mempool, RxBurst, TxBurst};
use crate::net::device::MAX_MTU;

/// Frames handled per rx/tx burst.
pub const BURST: usize = 32;

/// Bytes of each mbuf's buffer for a port with this MTU: one frame per mbuf,
/// after DPDK's headroom and, for af_xdp (which receives straight into the
/// mbuf), the kernel's XDP headroom; never less than DPDK's default.
fn data_room(mtu: u16) -> u16 {
    let needed = FRAME_HEADROOM + u32::from(mtu) + ETHERNET_OVERHEAD;
    needed.max(ffi::MBUF_DEFAULT_BUF_SIZE) as u16
}

/// Room before a received frame in its mbuf: DPDK's headroom, then the
/// kernel's XDP headroom (af_xdp).
const FRAME_HEADROOM: u32 = ffi::PKTMBUF_HEADROOM + 256;
/// Ethernet header and CRC around the MTU's payload.
const ETHERNET_OVERHEAD: u32 = 14 + 4;

/// The largest MTU ferrox can use on this driver: what the driver reports
/// (in DPDK 22.11, tap and af_packet take no frame over 1518 bytes), at most
/// [`MAX_MTU`].
///
/// af_xdp receives straight into the mbuf, and the kernel takes a UMEM chunk
/// (the whole mempool object) of at most a page. DPDK 22.11's own figure
/// forgets that the mempool pads objects to an odd number of cache lines, so
/// the object must stay within 63 lines: 64 bytes of object header, 128 of
/// `rte_mbuf`, and 3840 of data room.
fn max_mtu(info: &DevInfo) -> u16 {
    const AF_XDP_MAX_DATA_ROOM: u32 = 63 * 64 - 64 - 128;
    let frames = info.max_rx_pktlen.saturating_sub(ETHERNET_OVERHEAD);
    let mut max = info.max_mtu.min(MAX_MTU).min(frames.min(65535) as u16);
    if info.driver == "net_af_xdp" {
        let fits = (AF_XDP_MAX_DATA_ROOM - FRAME_HEADROOM - ETHERNET_OVERHEAD) as u16;
        max = max.min(fits);
    }
    max
}

/// DPDK's af_packet driver.
pub const AF_PACKET_DRIVER: &str = "net_af_packet";

/// The driver whose port two processes may open at once, each socket
/// receiving a copy of every frame: a hot handover's successor opens it
/// beside its predecessor's (zero-drop).
pub const OVERLAPPING_DRIVER: &str = AF_PACKET_DRIVER;

/// Frames in each ring of an af_packet queue when its vdev names none.
pub const AF_PACKET_FRAMES: u32 = 4096;

/// `vdev` with a ring of [`AF_PACKET_FRAMES`] frames when it is an
/// af_packet vdev that does not size its own (`framecnt=`); any other
/// vdev as it is. DPDK's default ring of 512 frames overflows on the
/// burst many clients send at once (a window opening, a reconnect
/// storm), and DPDK 22.11 counts none of those drops: clients stall on
/// their retransmission timers with every counter clean.
pub fn with_af_packet_ring(vdev: &str) -> std::borrow::Cow<'_, str> {
    let mut parts = vdev.split(',');
    let is_af_packet = parts
        .next()
        .is_some_and(|name| name.starts_with(AF_PACKET_DRIVER));
    if !is_af_packet || parts.any(|part| part.starts_with("framecnt=")) {
        return vdev.into();
    }
    format!("{vdev},framecnt={AF_PACKET_FRAMES}").into()
}

/// The interface and the queues a `net_af_xdp` vdev's sockets bind:
/// `iface=`, and `queue_count` (default 1) queues from `start_queue`
/// (default 0). `None` for any other vdev.
fn af_xdp_queues(vdev: &str) -> Option<(String, std::ops::Range<u32>)> {
    let mut parts = vdev.split(',');
    if !parts.next()?.starts_with("net_af_xdp") {
        return None;
    }
    let (mut iface, mut start, mut count) = (None, 0u32, 1u32);
    for part in parts {
        match part.split_once('=') {
            Some(("iface", v)) => iface = Some(v.to_owned()),
            Some(("start_queue", v)) => start = v.parse().ok()?,
            Some(("queue_count", v)) => count = v.parse().ok()?,
            _ => {}
        }
    }
    Some((iface?, start..start + count))
}

/// Waits, at most `within`, until the kernel has released the AF_XDP
/// queues `vdev` binds, which a predecessor's sockets held: a closed
/// socket's memory leaves its queue by deferred work, 20–40 ms after the
/// close, and a queue setup before that fails (after building the whole
/// port, about 10–20 ms). A bind probe a few microseconds long, every
/// 200 µs, finds the moment instead. Returns how long it waited, or
/// `None` when it cannot tell (not af_xdp, or the probe says nothing on
/// this driver): the caller then tries and retries the port itself.
pub fn wait_for_af_xdp_queues(
    vdev: &str,
    within: std::time::Duration,
) -> Option<std::time::Duration> {
    let (iface, queues) = af_xdp_queues(vdev)?;
    let index = ffi::interface_index(&iface)?;
    let begun = std::time::Instant::now();
    loop {
        let mut busy = false;
        for queue in queues.clone() {
            busy |= ffi::xsk_queue_busy(index, queue)?;
        }
        if !busy || begun.elapsed() >= within {
            return Some(begun.elapsed());
        }
        // Start-up, before any poll loop: a pause is what it needs.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// A started port. Dropping it stops and closes the device.
#[derive(Debug)]
pub struct Port {
    id: u16,
    name: String,
    info: DevInfo,
    queues: u16,
    mtu: u16,
    mac: [u8; 6],
    tx_checksum_offload: bool,
    rx_checksum: RxChecksum,
    rx_wake: RxWake,
    pool: Mempool,
    /// Started by another process (the port holder), which closes it.
    attached: bool,
}

/// How a port is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortConfig {
    /// RX/TX queue pairs: one per lcore.
    pub queues: u16,
    /// Packet buffers in the port's mempool.
    pub mbufs: u32,
    pub mtu: u16,
    /// Who checks received checksums; `None` decides from the link.
    pub rx_checksum: Option<RxChecksum>,
}

/// Who checks the IPv4 and TCP checksums of received frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxChecksum {
    /// smoltcp verifies every frame in software.
    Verify,
    /// Frames are taken as they are: they were built in this host's memory
    /// and crossed no wire (a veth pair, a tap), where the kernel does not
    /// check them either (a veth marks them `CHECKSUM_UNNECESSARY`). The
    /// kernel may then also leave its transmit checksums to the receiver,
    /// as veth does with `tx` checksumming on.
    Trust,
    /// The NIC verifies (RX checksum offload): a frame it found bad is
    /// dropped, one it did not check is verified in software.
    Nic,
}

/// The kernel drivers of host-internal links: what arrives on them was
/// built in this host's memory.
const HOST_INTERNAL_DRIVERS: &[&str] = &["veth", "tun"];

/// `Trust` when the port is a kernel interface whose driver is a
/// host-internal link; else `Nic` where the driver offers TCP checksum
/// offload, and `Verify` (in software) where it does not.
fn rx_checksum_of(info: &DevInfo) -> (RxChecksum, Option<String>) {
    let driver = (info.if_index != 0)
        .then(|| ffi::interface_name(info.if_index))
        .flatten()
        .and_then(|name| ffi::interface_driver(&name));
    let trusted = driver
        .as_deref()
        .is_some_and(|d| HOST_INTERNAL_DRIVERS.contains(&d));
    let policy = if trusted {
        RxChecksum::Trust
    } else if info.rx_offload_capa & ffi::rx_offload_tcp_cksum() != 0 {
        RxChecksum::Nic
    } else {
        RxChecksum::Verify
    };
    (policy, driver)
}

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("no DPDK port is available (check the vdev / PCI allow-list)")]
    NoPort,
    #[error("port {port} ({name}): {what}")]
    Setup {
        port: u16,
        name: String,
        what: String,
    },
}

/// Per-port counters, from the driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_missed: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
}

/// What both ways of taking a port (starting it, attaching to it) decide
/// alike from the driver's figures and the configuration.
struct Plan {
    name: String,
    info: DevInfo,
    rx_checksum: RxChecksum,
    kernel_driver: Option<String>,
    tx_checksum_offload: bool,
}

impl Plan {
    fn of(id: u16, config: PortConfig) -> Result<Plan, PortError> {
        let PortConfig {
            queues,
            mtu,
            rx_checksum,
            ..
        } = config;
        if id >= ffi::port_count() {
            return Err(PortError::NoPort);
        }
        let name = ffi::port_name(id);
        let setup = |what: String| PortError::Setup {
            port: id,
            name: name.clone(),
            what,
        };
        let info = ffi::dev_info(id).map_err(setup)?;
        if queues > info.max_rx_queues.min(info.max_tx_queues) {
            return Err(setup(format!(
                "{queues} queues requested, driver {} has {} rx / {} tx",
                info.driver, info.max_rx_queues, info.max_tx_queues
            )));
        }
        let max_mtu = max_mtu(&info);
        if mtu < info.min_mtu || mtu > max_mtu {
            return Err(setup(format!(
                "MTU {mtu} is outside what driver {} supports ({}..={max_mtu})",
                info.driver, info.min_mtu
            )));
        }
        let (link_checksum, kernel_driver) = rx_checksum_of(&info);
        let tx_checksum_offload = info.tx_offload_capa & ffi::tx_offload_tcp_cksum() != 0;
        Ok(Plan {
            name,
            info,
            rx_checksum: rx_checksum.unwrap_or(link_checksum),
            kernel_driver,
            tx_checksum_offload,
        })
    }

    fn error(&self, id: u16, what: String) -> PortError {
        PortError::Setup {
            port: id,
            name: self.name.clone(),
            what,
        }
    }
}

/// The name of the mbuf pool of port `id`, which a secondary looks up.
fn pool_name(id: u16) -> String {
    format!("mbufs_p{id}")
}

impl Port {
    /// Starts port `id` as `config` says.
    pub fn start(_eal: &Eal, id: u16, config: PortConfig) -> Result<Port, PortError> {
        let plan = Plan::of(id, config)?;
        let PortConfig {
            queues, mbufs, mtu, ..
        } = config;
        let pool = Mempool::create(
            &pool_name(id),
            mbufs,
            256,
            data_room(mtu),
            ffi::socket_of(id),
        )
        .map_err(|e| plan.error(id, e))?;
        let eth = ffi::EthConf {
            queues,
            rss_hf: plan.info.flow_type_rss_offloads & ffi::rss_hf_ip_tcp(),
            rx_offloads: match plan.rx_checksum {
                RxChecksum::Nic => ffi::rx_offload_tcp_cksum(),
                _ => 0,
            },
            tx_offloads: match plan.tx_checksum_offload {
                true => ffi::tx_offload_tcp_cksum(),
                false => 0,
            },
            mtu,
        };
        let configured = match ffi::port_start(id, &eth, 1024, &pool) {
            Ok(configured) => configured,
            Err(e) => {
                // Leave nothing behind, so that the device can be probed
                // and started again.
                ffi::port_stop(id);
                pool.free();
                return Err(plan.error(id, e));
            }
        };
        let rx_wake = if configured {
            rx_wake_of(id, &plan.info.driver)
        } else {
            RxWake::Poll
        };
        Ok(Port::from_plan(id, plan, config, rx_wake, pool, false))
    }

    /// Takes port `id` as the primary process of this DPDK instance (the
    /// port holder) started it with the same `config`: its queues, its
    /// MTU and its mbuf pool, without configuring, starting or (when
    /// dropped) closing anything. The queues' frames wait in the device
    /// while no process polls them.
    ///
    /// Idle cores sleep and poll (no RX interrupts): the interrupt
    /// descriptors are the primary's.
    pub fn attach(_eal: &Eal, id: u16, config: PortConfig) -> Result<Port, PortError> {
        let plan = Plan::of(id, config)?;
        if plan.info.nb_rx_queues != config.queues {
            let what = format!(
                "the port holder set up {} queue(s); this dataplane runs {} core(s)",
                plan.info.nb_rx_queues, config.queues
            );
            return Err(plan.error(id, what));
        }
        let mtu = ffi::mtu(id).map_err(|e| plan.error(id, e))?;
        if mtu != config.mtu {
            let what = format!(
                "the port holder set MTU {mtu}; this dataplane is asked for {}",
                config.mtu
            );
            return Err(plan.error(id, what));
        }
        let pool = Mempool::lookup(&pool_name(id))
            .map_err(|e| plan.error(id, format!("the port holder's mbuf pool: {e}")))?;
        Ok(Port::from_plan(id, plan, config, RxWake::Poll, pool, true))
    }

    fn from_plan(
        id: u16,
        plan: Plan,
        config: PortConfig,
        rx_wake: RxWake,
        pool: Mempool,
        attached: bool,
    ) -> Port {
        let mac = ffi::mac_addr(id);
        let Plan {
            name,
            info,
            rx_checksum,
            kernel_driver,
            tx_checksum_offload,
        } = plan;
        tracing::info!(
            port = id, %name, driver = %info.driver, ?kernel_driver, queues = config.queues,
            mtu = config.mtu, tx_checksum_offload, ?rx_checksum, ?rx_wake, attached,
            mac = %format_mac(&mac), "port started"
        );
        Port {
            id,
            name,
            info,
            queues: config.queues,
            mtu: config.mtu,
            mac,
            tx_checksum_offload,
            rx_checksum,
            rx_wake,
            pool,
            attached,
        }
    }

    /// Every port DPDK found (vdevs and allowed PCI devices).
    pub fn available() -> Vec<(u16, String)> {
        (0..ffi::port_count())
            .map(|id| (id, ffi::port_name(id)))
            .collect()
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn driver(&self) -> &str {
        &self.info.driver
    }

    /// Whether another process (the port holder) started this port and
    /// keeps it open when this one goes.
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// How many queue pairs the port has.
    pub fn queue_count(&self) -> u16 {
        self.queues
    }

    /// Largest IP packet the port sends and accepts.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Who checks the checksums of received frames.
    pub fn rx_checksum(&self) -> RxChecksum {
        self.rx_checksum
    }

    /// Whether the NIC fills the TCP checksums of frames sent (smoltcp then
    /// leaves them to it).
    pub fn tx_checksum_offload(&self) -> bool {
        self.tx_checksum_offload
    }

    /// How an idle core on this port learns that frames arrived.
    pub fn rx_wake(&self) -> RxWake {
        self.rx_wake
    }

    pub fn pool(&self) -> &Mempool {
        &self.pool
    }

    /// (up, speed in Mb/s).
    pub fn link(&self) -> (bool, u32) {
        ffi::link(self.id)
    }

    pub fn stats(&self) -> PortStats {
        let (rx_packets, tx_packets, rx_missed, rx_errors, tx_errors) = ffi::stats(self.id);
        PortStats {
            rx_packets,
            tx_packets,
            rx_missed,
            rx_errors,
            tx_errors,
        }
    }

    pub fn xstats(&self) -> Vec<(String, u64)> {
        ffi::xstats(self.id)
    }

    /// Every queue pair of this port, each for the one lcore that polls
    /// it. The port is borrowed mutably while they live, so no queue can
    /// be handed out twice and polled from two threads.
    pub fn queues(&mut self) -> Vec<Queue<'_>> {
        let port: &Port = self;
        (0..port.queues)
            .map(|queue| {
                let wake_fd = match port.rx_wake {
                    RxWake::Poll => None,
                    _ => ffi::rx_intr_fd(port.id, queue),
                };
                Queue {
                    port,
                    queue,
                    tx: TxBurst::default(),
                    tx_dropped: 0,
                    wake_fd,
                }
            })
            .collect()
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        if !self.attached {
            ffi::port_stop(self.id);
        }
    }
}

/// One RX/TX queue pair, polled by exactly one lcore.
#[derive(Debug)]
pub struct Queue<'p> {
    port: &'p Port,
    queue: u16,
    tx: TxBurst<BURST>,
    tx_dropped: u64,
    /// The descriptor an idle core waits on (see [`RxWake`]), looked up once.
    wake_fd: Option<std::os::fd::RawFd>,
}

impl Queue<'_> {
    pub fn port(&self) -> &Port {
        self.port
    }

    /// Receives a burst into `burst` (which must be empty).
    pub fn rx_burst(&mut self, burst: &mut RxBurst<BURST>) -> usize {
        ffi::rx_burst(self.port.id, self.queue, burst)
    }

    /// Queues a frame for the next TX burst, flushing when the burst is full.
    pub fn send(&mut self, mbuf: ffi::Mbuf) {
        if self.tx.is_full() {
            self.flush();
        }
        self.tx.push(mbuf);
    }

    /// Sends what is queued. Frames the NIC refuses are dropped and counted
    /// (TCP retransmits them).
    pub fn flush(&mut self) {
        let (_, dropped) = ffi::tx_burst(self.port.id, self.queue, &mut self.tx);
        self.tx_dropped += dropped as u64;
    }

    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }

    /// Arms the queue's wake-up and returns the descriptor that turns
    /// readable when a frame arrives; `None` when the port has none (the
    /// idle core then sleeps for a short time instead). Call
    /// [`Queue::rx_wake_disarm`] after waking.
    pub fn rx_wake_arm(&mut self) -> Option<std::os::fd::RawFd> {
        match self.port.rx_wake {
            RxWake::Poll => None,
            RxWake::Readable => self.wake_fd,
            RxWake::Interrupt => {
                let fd = self.wake_fd?;
                (ffi::rx_intr_enable(self.port.id, self.queue) == 0).then_some(fd)
            }
        }
    }

    pub fn rx_wake_disarm(&mut self) {
        if self.port.rx_wake == RxWake::Interrupt {
            ffi::rx_intr_disable(self.port.id, self.queue);
        }
    }
}

/// How an idle core learns that its queue has frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxWake {
    /// No RX interrupt (af_xdp, af_packet): sleep briefly and poll again.
    Poll,
    /// An interrupt descriptor that must be armed before waiting.
    Interrupt,
    /// A descriptor that is the queue itself (tap's tun queue): readable
    /// whenever frames wait, nothing to arm (the PMD has no enable op).
    Readable,
}

/// Decides once, on queue 0 of a port configured for RX interrupts, how
/// its idle cores will wait, so the idle path never asks again.
fn rx_wake_of(port: u16, driver: &str) -> RxWake {
    if ffi::rx_intr_fd(port, 0).is_none() {
        return RxWake::Poll;
    }
    match ffi::rx_intr_enable(port, 0) {
        0 => {
            ffi::rx_intr_disable(port, 0);
            RxWake::Interrupt
        }
        rc if rc == -libc::ENOTSUP && driver == "net_tap" => RxWake::Readable,
        _ => RxWake::Poll,
    }
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(driver: &str, max_mtu: u16, max_rx_pktlen: u32) -> DevInfo {
        DevInfo {
            driver: driver.into(),
            max_rx_queues: 1,
            max_tx_queues: 1,
            rx_offload_capa: 0,
            tx_offload_capa: 0,
            flow_type_rss_offloads: 0,
            min_mtu: 68,
            max_mtu,
            max_rx_pktlen,
            if_index: 0,
            nb_rx_queues: 0,
        }
    }

    #[test]
    fn the_largest_mtu_is_what_the_driver_carries_in_one_mbuf() {
        // DPDK 22.11's af_xdp reports 3542; its UMEM chunk holds 3438.
        assert_eq!(max_mtu(&info("net_af_xdp", 3542, 3560)), 3438);
        // af_packet and tap take no frame over 1518 bytes.
        assert_eq!(max_mtu(&info("net_af_packet", u16::MAX, 1518)), 1500);
        // A NIC with jumbo frames stops at ferrox's own limit.
        assert_eq!(max_mtu(&info("net_ice", 9702, 9728)), MAX_MTU);
    }

    #[test]
    fn an_af_packet_vdev_gets_a_ring_that_absorbs_bursts() {
        assert_eq!(
            with_af_packet_ring("net_af_packet0,iface=veth1"),
            "net_af_packet0,iface=veth1,framecnt=4096"
        );
        assert_eq!(
            with_af_packet_ring("net_af_packet1,iface=eth1,qpairs=2"),
            "net_af_packet1,iface=eth1,qpairs=2,framecnt=4096"
        );
        // The user's own size stands, whatever it is.
        for vdev in [
            "net_af_packet0,iface=veth1,framecnt=512",
            "net_af_packet0,framecnt=8192,iface=veth1",
        ] {
            assert_eq!(with_af_packet_ring(vdev), vdev);
        }
        // Other drivers, and an option that only ends in "framecnt=".
        for vdev in [
            "net_af_xdp0,iface=veth1",
            "net_tap0",
            "net_null0,xframecnt=1",
        ] {
            assert_eq!(with_af_packet_ring(vdev), vdev);
        }
        assert_eq!(
            with_af_packet_ring("net_af_packet0,iface=v,xframecnt=1"),
            "net_af_packet0,iface=v,xframecnt=1,framecnt=4096"
        );
    }

    #[test]
    fn an_af_xdp_vdev_names_its_interface_and_queues() {
        assert_eq!(
            af_xdp_queues("net_af_xdp0,iface=veth1,start_queue=2,queue_count=3,busy_budget=0"),
            Some(("veth1".to_owned(), 2..5))
        );
        assert_eq!(
            af_xdp_queues("net_af_xdp1,iface=eth0"),
            Some(("eth0".to_owned(), 0..1))
        );
        assert_eq!(af_xdp_queues("net_af_xdp0"), None, "no interface");
        assert_eq!(af_xdp_queues("net_af_packet0,iface=veth1"), None);
        assert_eq!(af_xdp_queues("net_af_xdp0,iface=v,start_queue=x"), None);
    }

    #[test]
    fn an_mbuf_holds_a_whole_frame_after_both_headrooms() {
        assert_eq!(u32::from(data_room(1500)), ffi::MBUF_DEFAULT_BUF_SIZE);
        // af_xdp's largest: the mempool object is exactly 63 cache lines.
        assert_eq!(data_room(3438), 3840);
        assert_eq!(
            u32::from(data_room(MAX_MTU)),
            FRAME_HEADROOM + u32::from(MAX_MTU) + ETHERNET_OVERHEAD
        );
    }
}
