//! The kernel calls the poll loop and the port setup make themselves:
//! waiting on descriptors, and naming interfaces and their drivers.

use std::ffi::CStr;

/// Waits until one of `fds` is readable or `timeout` passes (nanosecond
/// resolution, unlike poll's milliseconds). An interrupted wait just
/// returns; any other failure (a descriptor closed under it) is returned,
/// as the wait did not happen.
pub fn wait_readable(
    fds: &[std::os::fd::RawFd],
    timeout: std::time::Duration,
) -> std::io::Result<()> {
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
    let ready = unsafe {
        libc::ppoll(
            pollfds.as_mut_ptr(),
            n as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
    // POLLNVAL: a descriptor that is not open; ppoll reports it ready.
    if let Some(bad) = pollfds[..n]
        .iter()
        .find(|p| p.revents & libc::POLLNVAL != 0)
    {
        return Err(std::io::Error::other(format!(
            "descriptor {} is not open",
            bad.fd
        )));
    }
    Ok(())
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

/// Whether queue `queue` of interface `if_index` still has an AF_XDP
/// socket's memory attached. A closed socket's is detached by deferred
/// kernel work, tens of milliseconds after the close, and no socket can
/// bind to the queue before. The probe asks for a zero-copy bind, which
/// the kernel refuses with EBUSY while the queue is held and, on a driver
/// without zero-copy (veth), with EOPNOTSUPP once it is free, taking
/// nothing: `Some(true)` and `Some(false)`. `None` when the probe tells
/// nothing (no AF_XDP here, another error, or a zero-copy driver that
/// took the bind, undone by closing).
pub(crate) fn xsk_queue_busy(if_index: u32, queue: u32) -> Option<bool> {
    const CHUNK: u32 = 2048;
    const UMEM: usize = 4096;
    // SAFETY: plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor of ours, closed when dropped.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // The umem must be page-aligned: one anonymous page, two chunks.
    // SAFETY: a private anonymous mapping, unmapped below after the
    // socket (which pins it while registered) is closed.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            UMEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if area == libc::MAP_FAILED {
        return None;
    }
    let setsockopt = |name: libc::c_int, value: *const libc::c_void, len: usize| {
        // SAFETY: `value` points at `len` readable bytes for the call.
        unsafe { libc::setsockopt(raw, libc::SOL_XDP, name, value, len as libc::socklen_t) == 0 }
    };
    let umem = libc::xdp_umem_reg_v1 {
        addr: area as u64,
        len: UMEM as u64,
        chunk_size: CHUNK,
        headroom: 0,
    };
    let ring: u32 = 2;
    let ring_ptr = (&ring as *const u32).cast();
    let ready = setsockopt(
        libc::XDP_UMEM_REG,
        (&umem as *const libc::xdp_umem_reg_v1).cast(),
        std::mem::size_of_val(&umem),
    ) && setsockopt(libc::XDP_UMEM_FILL_RING, ring_ptr, 4)
        && setsockopt(libc::XDP_UMEM_COMPLETION_RING, ring_ptr, 4)
        && setsockopt(libc::XDP_RX_RING, ring_ptr, 4);
    let answer = ready.then(|| {
        let address = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: libc::XDP_ZEROCOPY,
            sxdp_ifindex: if_index,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: a valid sockaddr_xdp of the size given.
        let rc = unsafe {
            libc::bind(
                raw,
                (&address as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of_val(&address) as libc::socklen_t,
            )
        };
        match (rc, std::io::Error::last_os_error().raw_os_error()) {
            (0, _) => None,
            (_, Some(libc::EBUSY)) => Some(true),
            (_, Some(libc::EOPNOTSUPP)) => Some(false),
            _ => None,
        }
    });
    drop(fd);
    // SAFETY: the mapping made above, no longer registered (its socket is
    // closed).
    unsafe { libc::munmap(area, UMEM) };
    answer.flatten()
}

/// The index of kernel interface `name` in this network namespace.
pub(crate) fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated name for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn waits_for_readable_or_the_timeout_and_reports_a_closed_descriptor() {
        let (reader, writer) = rustix::pipe::pipe().unwrap();
        let started = Instant::now();
        wait_readable(&[reader.as_raw_fd()], Duration::from_millis(30)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(25));
        rustix::io::write(&writer, b"x").unwrap();
        let started = Instant::now();
        wait_readable(&[reader.as_raw_fd()], Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        // A descriptor that is not open (far above any this process has,
        // so no other test's can take its number): the wait did not happen.
        let error = wait_readable(&[1 << 30], Duration::from_secs(10)).unwrap_err();
        assert!(error.to_string().contains("not open"), "{error}");
    }
}
