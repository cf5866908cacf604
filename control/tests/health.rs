//! Health probes against real servers on loopback: `redis-server` (with
//! and without a password) and `memcached`.
#![allow(clippy::disallowed_methods)] // tests wait for servers

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrox_config::{Pool, Protocol};
use ferrox_control::health::probe;

/// A server process, killed (by PID) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(program: &str, args: &[&str], port: u16) -> Server {
    let server = Server(
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{program} did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn pool(protocol: Protocol, auth: Option<&str>) -> Pool {
    let mut pool = Pool::new("p", SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1), protocol);
    pool.auth = auth.map(str::to_string);
    pool
}

const TIMEOUT: Duration = Duration::from_secs(2);

fn local(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// A `redis-server` on a free loopback port, with `extra` arguments.
fn redis(extra: &[&str]) -> (u16, Server) {
    let port = free_port();
    let p = port.to_string();
    let mut args = vec![
        "--bind",
        "127.0.0.1",
        "--port",
        &p,
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.extend_from_slice(extra);
    (port, start("redis-server", &args, port))
}

#[test]
fn redis_answers_ping_with_and_without_a_password() {
    let (port, open) = redis(&[]);
    assert_eq!(
        probe(&pool(Protocol::Redis, None), local(port), TIMEOUT),
        Ok(())
    );
    drop(open);

    let (port, _locked) = redis(&["--requirepass", "s3cret"]);
    assert_eq!(
        probe(&pool(Protocol::Redis, Some("s3cret")), local(port), TIMEOUT),
        Ok(())
    );
    let wrong = probe(&pool(Protocol::Redis, Some("nope")), local(port), TIMEOUT).unwrap_err();
    assert!(wrong.starts_with("answered -"), "{wrong}");
    let none = probe(&pool(Protocol::Redis, None), local(port), TIMEOUT).unwrap_err();
    assert!(none.contains("NOAUTH"), "{none}");
}

#[test]
fn memcached_answers_version() {
    let port = free_port();
    let p = port.to_string();
    let _server = start(
        "memcached",
        &[
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &p,
            "-U",
            "0",
            "-m",
            "16",
        ],
        port,
    );
    assert_eq!(
        probe(&pool(Protocol::Memcache, None), local(port), TIMEOUT),
        Ok(())
    );
    // A Redis probe against memcached is not an answer.
    assert!(probe(&pool(Protocol::Redis, None), local(port), TIMEOUT).is_err());
}

#[test]
fn nothing_listening_is_a_failed_check() {
    // The port stays taken on 127.0.0.1 (so no parallel test starts a
    // server on it), and 127.0.0.2 is loopback too, with nothing there.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let nothing = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2), port);
    let error = probe(&pool(Protocol::Redis, None), nothing, TIMEOUT).unwrap_err();
    assert!(error.starts_with("connect:"), "{error}");
}
