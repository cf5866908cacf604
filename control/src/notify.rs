//! systemd's service notifications (`sd_notify`): readiness, reloads,
//! stopping, status lines and the watchdog, as datagrams to the socket
//! systemd names in `$NOTIFY_SOCKET`. Without that variable (not started
//! by systemd with `Type=notify`), nothing is sent.
//!
//! The protocol is a few `KEY=value` lines per datagram; a socket path
//! starting with `@` is in the abstract namespace.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, and how often systemd wants to hear from the
/// watchdog.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd set up for this process, if any.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(
            path.to_str()?,
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
            std::process::id(),
        )
        .map_err(|e| tracing::warn!("NOTIFY_SOCKET={path:?}: {e}; no systemd notifications"))
        .ok()
    }

    /// A notifier for `path`, with the watchdog of `watchdog_usec` when
    /// `watchdog_pid` is unset or names `pid`.
    pub fn new(
        path: &str,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> std::io::Result<Notifier> {
        let to = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
            None => SocketAddr::from_pathname(path)?,
        };
        let ours = watchdog_pid.is_none_or(|p| p.trim().parse() == Ok(pid));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours)
            .map(|usec| Duration::from_micros(usec / 2));
        Ok(Notifier {
            socket: UnixDatagram::unbound()?,
            to,
            watchdog,
        })
    }

    /// How often to send `WATCHDOG=1` (half of systemd's timeout), when
    /// the watchdog is on.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `lines` (`READY=1`, `STATUS=…`). A lost notification is
    /// logged, never an error of the service.
    pub fn send(&self, lines: &str) {
        if let Err(e) = self.socket.send_to_addr(lines.as_bytes(), &self.to) {
            tracing::debug!("systemd notification not sent: {e}");
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// A reload begins (`READY=1` ends it), stamped with the monotonic
    /// clock as systemd asks.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

/// `CLOCK_MONOTONIC` in microseconds.
fn monotonic_usec() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(tag: &str) -> (UnixDatagram, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("ferrox-notify-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (socket, path)
    }

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_the_socket_systemd_named() {
        let (socket, path) = listener("send");
        let notifier = Notifier::new(path.to_str().unwrap(), None, None, 1).unwrap();
        assert_eq!(notifier.watchdog_every(), None);
        notifier.ready("serving");
        assert_eq!(received(&socket), "READY=1\nSTATUS=serving");
        notifier.reloading();
        let reloading = received(&socket);
        assert!(
            reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{reloading}"
        );
        notifier.stopping();
        assert_eq!(received(&socket), "STOPPING=1\nSTATUS=stopping");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn the_watchdog_is_half_the_timeout_and_only_for_its_own_pid() {
        let (_socket, path) = listener("watchdog");
        let path = path.to_str().unwrap();
        let every = |usec, pid| Notifier::new(path, usec, pid, 42).unwrap().watchdog_every();
        assert_eq!(every(Some("10000000"), None), Some(Duration::from_secs(5)));
        assert_eq!(
            every(Some("10000000"), Some("42")),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            every(Some("10000000"), Some("43")),
            None,
            "another process's"
        );
        assert_eq!(every(Some("0"), None), None);
        assert_eq!(every(Some("soon"), None), None);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn an_abstract_socket_is_named_with_an_at_sign() {
        let name = format!("ferrox-notify-test-{}", std::process::id());
        let socket =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::new(&format!("@{name}"), None, None, 1)
            .unwrap()
            .watchdog();
        assert_eq!(received(&socket), "WATCHDOG=1");
    }
}
