//! Health checks: a `PING` (Redis) or `version` (memcached) to every
//! server, from the control process on the kernel stack, and what follows
//! from the answers.
//!
//! [`Health`] is the decision, with no I/O and no clock of its own: a
//! server failing `server_failure_limit` checks in a row is ejected from a
//! pool with `auto_eject_hosts` (its keys rehash onto the others, as
//! twemproxy's do) and comes back at the first good check once
//! `server_retry_timeout_ms` has passed; in a pool without it the server
//! is only reported down. An operator's `server eject` holds a server out
//! whatever its checks say, until `server restore`. [`probe`] is the I/O.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::time::Duration;

use ferrox_config::{Config, Pool, Protocol};

/// What a check result changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Ejected,
    Returned,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ServerHealth {
    /// Checks failed in a row.
    failures: u32,
    /// Out of the pool since then (milliseconds on the caller's clock).
    ejected_at: Option<u64>,
    /// Held out by an operator.
    held: bool,
    ejections: u64,
}

/// Every server's health, by pool name and address (so it survives a
/// reconfiguration that keeps the server).
#[derive(Debug, Default)]
pub struct Health {
    servers: HashMap<(String, SocketAddrV4), ServerHealth>,
}

impl Health {
    /// Takes one check's result for `addr` of `pool` at `now_ms`.
    pub fn record(
        &mut self,
        pool: &Pool,
        addr: SocketAddrV4,
        ok: bool,
        now_ms: u64,
    ) -> Option<Event> {
        let health = self.servers.entry((pool.name.clone(), addr)).or_default();
        if ok {
            health.failures = 0;
            let back = health
                .ejected_at
                .is_some_and(|at| now_ms.saturating_sub(at) >= pool.server_retry_timeout_ms);
            if back {
                health.ejected_at = None;
                return Some(Event::Returned);
            }
            return None;
        }
        health.failures = health.failures.saturating_add(1);
        if pool.auto_eject_hosts
            && health.ejected_at.is_none()
            && health.failures >= pool.server_failure_limit
        {
            health.ejected_at = Some(now_ms);
            health.ejections += 1;
            return Some(Event::Ejected);
        }
        None
    }

    /// Holds a server out (`held`) or lets it back, by an operator's word.
    pub fn hold(&mut self, pool: &str, addr: SocketAddrV4, held: bool) {
        self.servers
            .entry((pool.to_string(), addr))
            .or_default()
            .held = held;
    }

    /// Forgets servers the configuration no longer has.
    pub fn retain(&mut self, config: &Config) {
        self.servers.retain(|(pool, addr), _| {
            config
                .pools
                .iter()
                .any(|p| p.name == *pool && p.all_servers().any(|(a, _)| a == *addr))
        });
    }

    fn get(&self, pool: &str, addr: SocketAddrV4) -> Option<&ServerHealth> {
        self.servers.get(&(pool.to_string(), addr))
    }

    /// Whether the server is out of its pool.
    pub fn is_out(&self, pool: &str, addr: SocketAddrV4) -> bool {
        self.get(pool, addr)
            .is_some_and(|h| h.held || h.ejected_at.is_some())
    }

    /// "up", "down" (failing, still in the pool), "ejected" or "held".
    pub fn state(&self, pool: &str, addr: SocketAddrV4) -> &'static str {
        match self.get(pool, addr) {
            Some(h) if h.held => "held",
            Some(h) if h.ejected_at.is_some() => "ejected",
            Some(h) if h.failures > 0 => "down",
            _ => "up",
        }
    }

    pub fn failures(&self, pool: &str, addr: SocketAddrV4) -> u32 {
        self.get(pool, addr).map_or(0, |h| h.failures)
    }

    pub fn ejections(&self, pool: &str, addr: SocketAddrV4) -> u64 {
        self.get(pool, addr).map_or(0, |h| h.ejections)
    }

    /// Per pool of `config`, a bit per server that is out (the control
    /// block's held-out board).
    pub fn masks(&self, config: &Config) -> Vec<u64> {
        config
            .pools
            .iter()
            .map(|pool| {
                pool.all_servers()
                    .take(64)
                    .enumerate()
                    .filter(|(_, (addr, _))| self.is_out(&pool.name, *addr))
                    .fold(0, |mask, (i, _)| mask | 1 << i)
            })
            .collect()
    }
}

/// One check of a server: connect, authenticate where the pool does, and
/// expect `+PONG` (Redis) or `VERSION` (memcached) within `timeout`.
pub fn probe(pool: &Pool, addr: SocketAddrV4, timeout: Duration) -> Result<(), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr.into(), timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // The request, and the line that begins each expected answer in order.
    let (request, expect): (Vec<u8>, &[&[u8]]) = match pool.protocol {
        Protocol::Redis => {
            let mut request = Vec::new();
            let mut expect: &[&[u8]] = &[b"+PONG"];
            if let Some(auth) = &pool.auth {
                request.extend_from_slice(
                    format!("*2\r\n$4\r\nAUTH\r\n${}\r\n", auth.len()).as_bytes(),
                );
                request.extend_from_slice(auth.as_bytes());
                request.extend_from_slice(b"\r\n");
                expect = &[b"+OK", b"+PONG"];
            }
            request.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
            (request, expect)
        }
        Protocol::Memcache => (b"version\r\n".to_vec(), &[b"VERSION "]),
    };
    stream
        .write_all(&request)
        .map_err(|e| format!("send: {e}"))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 512];
    let mut answered = 0;
    while answered < expect.len() {
        // Every whole line so far must be the answer expected next.
        while let Some(end) = reply.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = reply.drain(..end + 2).take(end).collect();
            if !line.starts_with(expect[answered]) {
                return Err(format!("answered {}", String::from_utf8_lossy(&line)));
            }
            answered += 1;
            if answered == expect.len() {
                return Ok(());
            }
        }
        if reply.len() > 4096 {
            return Err("answered something else".into());
        }
        let n = stream.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed the connection".into());
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pool(eject: bool) -> Pool {
        let mut pool = Pool::new(
            "cache",
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6379),
            Protocol::Redis,
        );
        pool.auto_eject_hosts = eject;
        pool.server_failure_limit = 2;
        pool.server_retry_timeout_ms = 1_000;
        pool
    }

    const A: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7001);

    #[test]
    fn a_server_failing_the_limit_is_ejected_and_returns_after_the_retry_time() {
        let pool = pool(true);
        let mut health = Health::default();
        assert_eq!(health.record(&pool, A, false, 0), None);
        assert_eq!(health.state("cache", A), "down");
        assert_eq!(health.record(&pool, A, false, 100), Some(Event::Ejected));
        assert_eq!(health.state("cache", A), "ejected");
        assert_eq!(health.record(&pool, A, false, 200), None);
        // A good check before the retry time keeps it out.
        assert_eq!(health.record(&pool, A, true, 900), None);
        assert!(health.is_out("cache", A));
        assert_eq!(health.record(&pool, A, true, 1_100), Some(Event::Returned));
        assert_eq!(health.state("cache", A), "up");
        assert_eq!(health.ejections("cache", A), 1);
    }

    #[test]
    fn without_auto_eject_a_failing_server_is_only_reported() {
        let pool = pool(false);
        let mut health = Health::default();
        for t in 0..5 {
            assert_eq!(health.record(&pool, A, false, t), None);
        }
        assert_eq!(health.state("cache", A), "down");
        assert!(!health.is_out("cache", A));
    }

    #[test]
    fn an_operator_holds_a_server_out_whatever_its_checks_say() {
        let pool = pool(true);
        let mut health = Health::default();
        health.hold("cache", A, true);
        health.record(&pool, A, true, 0);
        assert_eq!(health.state("cache", A), "held");
        let mut config = Config {
            pools: vec![pool.clone()],
            limits: Default::default(),
            users: Vec::new(),
            overload: Default::default(),
        };
        config.pools[0].servers = vec![
            ferrox_config::Server::new(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000), 1, "x"),
            ferrox_config::Server::new(A, 1, "a"),
        ];
        assert_eq!(health.masks(&config), [0b10]);
        health.hold("cache", A, false);
        assert_eq!(health.masks(&config), [0]);
        // A server the configuration dropped is forgotten.
        health.hold("cache", A, true);
        config.pools[0].servers.pop();
        health.retain(&config);
        assert_eq!(health.state("cache", A), "up");
    }
}
