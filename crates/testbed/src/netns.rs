//! Network namespaces (removed when dropped, failure included), the veth
//! pair the dataplane runs on, `redis-server` backends and `redis-cli`.
//! Addresses are in 198.18.0.0/24, inside the namespace only.

use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The kernel side of the namespace's link, where backends listen.
pub const KERNEL_IP: &str = "198.18.0.1";
/// The dataplane's address.
pub const FERROX_IP: &str = "198.18.0.2";

pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace that is deleted when dropped.
#[derive(Debug)]
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fx{}{tag}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0]).args(args);
        cmd
    }

    /// The kernel side of the dataplane's tap, `fxtap0`: [`KERNEL_IP`], and
    /// the link up with `link` settings (`txqueuelen N`, ...).
    pub fn tap_up(&self, link: &[&str]) {
        let address = format!("{KERNEL_IP}/24");
        self.run(&["ip", "addr", "add", &address, "dev", "fxtap0"]);
        self.run(&[&["ip", "link", "set", "fxtap0"], link, &["up"]].concat());
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {}: {}",
            self.0,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A veth pair: `veth0` on the kernel side at [`KERNEL_IP`], `veth1`
    /// for the dataplane.
    pub fn add_veth(&self) {
        self.run(&[
            "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        self.run(&[
            "ip",
            "addr",
            "add",
            &format!("{KERNEL_IP}/24"),
            "dev",
            "veth0",
        ]);
        self.run(&["ip", "link", "set", "veth0", "up"]);
        self.run(&["ip", "link", "set", "veth1", "up"]);
        // veth0 keeps checksum offload on (it hands ferrox partial TCP
        // checksums, which ferrox trusts on a veth as the kernel does), but
        // not TSO: af_packet takes no frame over the MTU. (Attaching af_xdp's
        // XDP program turns TSO off by itself.)
        self.run(&["ethtool", "-K", "veth0", "tso", "off"]);
    }

    /// A shell command in the namespace; returns its stdout.
    pub fn shell(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.run(&["bash", "-c", script]).stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A `redis-server` on [`KERNEL_IP`]:`port`, without persistence; the
/// caller stops it.
pub fn redis_server(ns: &Netns, port: u16) -> Child {
    redis_server_at(ns, KERNEL_IP, port)
}

/// A `redis-server` on `ip`:`port` in `ns`, without persistence; the
/// caller stops it.
pub fn redis_server_at(ns: &Netns, ip: &str, port: u16) -> Child {
    redis_server_with(ns, ip, port, &[])
}

/// [`redis_server_at`] with more arguments (`--replicaof ...`).
pub fn redis_server_with(ns: &Netns, ip: &str, port: u16, extra: &[&str]) -> Child {
    let port = port.to_string();
    let args = [
        "redis-server",
        "--bind",
        ip,
        "--port",
        &port,
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--loglevel",
        "warning",
    ];
    let args: Vec<&str> = args.iter().chain(extra).copied().collect();
    ns.command(&args).stdout(Stdio::null()).spawn().unwrap()
}

/// Server processes of a test by port, SIGKILLed (by PID) when dropped.
#[derive(Debug, Default)]
pub struct Children(Vec<(u16, Child)>);

impl Children {
    /// Keeps `child`, the server on `port`, once something listens there.
    pub fn add(&mut self, ns: &Netns, port: u16, child: Child) {
        self.0.push((port, child));
        wait_for_port(ns, port);
    }

    /// SIGKILLs the server on `port`.
    pub fn kill(&mut self, port: u16) {
        let at = self.0.iter().position(|(p, _)| *p == port).unwrap();
        let (_, mut child) = self.0.remove(at);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (up to 10 s) until something listens on [`KERNEL_IP`]:`port`.
pub fn wait_for_port(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = format!("exec 3<>/dev/tcp/{KERNEL_IP}/{port}");
    while !ns
        .command(&["bash", "-c", &probe])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "backend on {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-benchmark -h host ARGS` (words split at spaces) in the
/// namespace, in the background for at most two minutes, its output piped
/// for `wait_with_output`: traffic that runs while a test changes things.
pub fn redis_benchmark(ns: &Netns, host: &str, args: &str) -> Child {
    let command = ["timeout", "120", "redis-benchmark", "-h", host].into_iter();
    let words: Vec<&str> = command.chain(args.split_whitespace()).collect();
    ns.command(&words)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// redis-py on one connection doing INCR (of key `single`) every
/// millisecond for `seconds`, in the background: it fails unless every
/// reply is the one before plus one and its local port never changes.
/// [`single_connection_result`] reads what it found.
pub fn single_connection_incr(ns: &Netns, seconds: u32) -> Child {
    let script = format!(
        r#"
import time, redis
r = redis.Redis(host="{FERROX_IP}", port=6379, single_connection_client=True, socket_timeout=20)
r.set("single", 0)
port = r.connection._sock.getsockname()[1]
last, calls, worst = 0, 0, 0.0
end = time.time() + {seconds}
while time.time() < end:
    t = time.time()
    value = r.incr("single")
    worst = max(worst, time.time() - t)
    calls += 1
    assert value == last + 1, (value, last)
    last = value
    time.sleep(0.001)
assert r.connection._sock.getsockname()[1] == port, "the connection changed"
print(calls, last, int(worst * 1000))
"#
    );
    spawn_python(ns, &script)
}

/// Starts `script` in Debian's interpreter (which has python3-redis and
/// python3-pymemcache) in `ns`, its output piped.
pub fn spawn_python(ns: &Netns, script: &str) -> Child {
    ns.command(&["/usr/bin/python3", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a background Python load started with [`spawn_python`], which
/// runs until the file `stop` exists: creates it, waits for the load,
/// removes it, and returns the load's standard output (its standard
/// error printed). The load must succeed.
pub fn stop_python(load: Child, stop: &str) -> String {
    std::fs::write(stop, b"").unwrap();
    let out = load.wait_with_output().unwrap();
    let _ = std::fs::remove_file(stop);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    eprintln!("load: {text}{errors}");
    assert!(out.status.success(), "the load failed: {text}{errors}");
    text
}

/// Runs `script` as [`spawn_python`] does, for at most two minutes, and
/// returns its standard output; it must succeed.
pub fn python(ns: &Netns, script: &str) -> String {
    let out = ns
        .command(&["timeout", "120", "/usr/bin/python3", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The memcached form of [`single_connection_incr`]: one raw connection
/// to ferrox's memcached pool on `port` sends `incr` every millisecond for
/// `seconds`; every reply must be the previous plus one, on the same
/// connection. Read its result with [`single_connection_result`].
pub fn single_connection_memcached_incr(ns: &Netns, port: u16, seconds: u32) -> Child {
    let script = format!(
        r#"
import socket, time
s = socket.create_connection(("{FERROX_IP}", {port}), timeout=20)
port = s.getsockname()[1]
def ask(line):
    s.sendall(line)
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = s.recv(64)
        assert chunk, "the connection closed"
        reply += chunk
    return reply
assert ask(b"set single 0 0 1\r\n0\r\n") == b"STORED\r\n"
last, calls, worst = 0, 0, 0.0
end = time.time() + {seconds}
while time.time() < end:
    t = time.time()
    value = int(ask(b"incr single 1\r\n"))
    worst = max(worst, time.time() - t)
    calls += 1
    assert value == last + 1, (value, last)
    last = value
    time.sleep(0.001)
assert s.getsockname()[1] == port, "the connection changed"
print(calls, last, int(worst * 1000))
"#
    );
    spawn_python(ns, &script)
}

/// What [`single_connection_incr`] found, checked (it succeeded, and its
/// last value is its number of calls: none lost, none repeated): the
/// calls and the longest wait in milliseconds.
pub fn single_connection_result(child: Child) -> (u64, u64) {
    let figures = figures_of(child, "the client on one connection");
    assert_eq!(
        figures[0], figures[1],
        "every INCR counted once: {figures:?}"
    );
    (figures[0], figures[2])
}

/// The numbers a helper script printed on its last line, once it ended
/// well (`what` names it in the failure).
fn figures_of(child: Child, what: &str) -> Vec<u64> {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect()
}

/// Starts a capture on `iface` in `ns` of the TCP segments ferrox sends
/// from its listening `port`, i.e. to its clients, that carry SYN, FIN or
/// RST: a kernel filter (classic BPF) passes only those, so a busy load
/// does not swamp it. It runs until [`capture_result`] ends it.
pub fn capture_client_flags(ns: &Netns, iface: &str, port: u16) -> Child {
    let script = format!(
        r#"
import socket, struct, select, sys
ETH_P_ALL, SOL_PACKET, PACKET_STATISTICS, SO_ATTACH_FILTER = 3, 263, 6, 26
# ip, tcp, not a fragment, from ferrox, source port {port}, SYN|FIN|RST
program = [
    (0x28, 0, 0, 12), (0x15, 0, 12, 0x0800),
    (0x30, 0, 0, 23), (0x15, 0, 10, 6),
    (0x28, 0, 0, 20), (0x45, 8, 0, 0x1fff),
    (0x20, 0, 0, 26), (0x15, 0, 6, int.from_bytes(socket.inet_aton("{FERROX_IP}"), "big")),
    (0xb1, 0, 0, 14),
    (0x48, 0, 0, 14), (0x15, 0, 3, {port}),
    (0x50, 0, 0, 27), (0x45, 0, 1, 0x07),
    (0x06, 0, 0, 0xffff), (0x06, 0, 0, 0),
]
code = b"".join(struct.pack("HBBI", *insn) for insn in program)
import ctypes
blob = ctypes.create_string_buffer(code)
fprog = struct.pack("HL", len(program), ctypes.addressof(blob))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(("{iface}", 0))
# What arrived before the filter was attached is thrown away.
s.setblocking(False)
try:
    while True:
        s.recv(65535)
except BlockingIOError:
    pass
# Reading the statistics resets them: drops count from here.
s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
print("ready", flush=True)
syn = fin = rst = 0
def count(frame):
    global syn, fin, rst
    ihl = (frame[14] & 0x0f) * 4
    flags = frame[14 + ihl + 13]
    syn += bool(flags & 0x02)
    fin += bool(flags & 0x01)
    rst += bool(flags & 0x04)
while True:
    readable, _, _ = select.select([s, sys.stdin], [], [], 1.0)
    if sys.stdin in readable:
        # A starved capture may wake to both at once: what is queued
        # arrived before the end was asked for, so it still counts.
        try:
            while True:
                count(s.recv(65535))
        except BlockingIOError:
            pass
        break
    if s in readable:
        count(s.recv(65535))
_, drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
print(syn, fin, rst, drops, flush=True)
"#
    );
    let mut child = ns
        .command(&["/usr/bin/python3", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready", "the capture did not start");
    child
}

/// What a [`capture_client_flags`] saw: segments with SYN, FIN and RST,
/// and frames the kernel dropped before the capture read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub syn: u64,
    pub fin: u64,
    pub rst: u64,
    pub dropped: u64,
}

/// Ends a capture that must have seen ferrox's segments (at least one
/// SYN-ACK) and not one RST toward a client, nor dropped a frame.
pub fn assert_no_client_reset(capture: Child) -> ClientFlags {
    let flags = capture_result(capture);
    assert!(flags.syn >= 1, "the capture saw nothing: {flags:?}");
    assert_eq!(
        (flags.rst, flags.dropped),
        (0, 0),
        "a client was reset: {flags:?}"
    );
    flags
}

/// Ends a capture and says what it saw.
pub fn capture_result(mut child: Child) -> ClientFlags {
    drop(child.stdin.take());
    let n = figures_of(child, "the capture");
    ClientFlags {
        syn: n[0],
        fin: n[1],
        rst: n[2],
        dropped: n[3],
    }
}

/// The report of a redis-benchmark run that must have succeeded with no
/// error.
pub fn bench_report(bench: Child) -> String {
    let out = bench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}{errors}");
    assert!(
        !report.contains("rror") && !errors.contains("rror"),
        "the clients saw errors: {report}{errors}"
    );
    report
}

/// The INCR load of a handover test, checked at its end: the benchmark
/// (`redis-benchmark -t incr -n n`, still running when this is called, so
/// that it spanned all that came before) saw no error, the one-connection
/// client kept its connection and sequence, and the benchmark's counter
/// through ferrox is exactly `n` (no INCR lost or run twice). Returns the
/// longest wait of the one-connection client, in ms.
pub fn assert_incr_load_kept(ns: &Netns, mut bench: Child, single: Child, n: u64) -> u64 {
    if bench.try_wait().unwrap().is_some() {
        let out = bench.wait_with_output().unwrap();
        panic!(
            "the benchmark ended before the last change: raise its -n ({}{})",
            String::from_utf8_lossy(&out.stdout).replace('\r', "\n"),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bench_report(bench);
    let (_, worst_ms) = single_connection_result(single);
    assert_eq!(
        cli(ns, FERROX_IP, 6379, "GET counter:__rand_int__"),
        n.to_string(),
        "INCRs lost or run twice"
    );
    worst_ms
}

/// `redis-cli -h host -p port ARGS` (a shell line) in the namespace.
pub fn cli(ns: &Netns, host: &str, port: u16, args: &str) -> String {
    ns.shell(&format!("timeout 10 redis-cli -h {host} -p {port} {args}"))
        .trim()
        .to_owned()
}

/// Keys of the Redis backend on [`KERNEL_IP`]:`port` that match
/// `pattern`, asked directly.
pub fn keys_on(ns: &Netns, port: u16, pattern: &str) -> Vec<String> {
    let out = cli(
        ns,
        KERNEL_IP,
        port,
        &format!("--scan --pattern '{pattern}'"),
    );
    out.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Checks that every key matching `pattern` on each Redis backend (`ports`
/// in the order of `table`'s servers) is on the server `table` places it
/// on; returns how many keys there are.
pub fn assert_keys_placed(
    ns: &Netns,
    table: &ferrox_route::Table,
    ports: &[u16],
    pattern: &str,
) -> usize {
    let mut found = 0;
    for (i, &port) in ports.iter().enumerate() {
        for key in keys_on(ns, port, pattern) {
            assert_eq!(
                table.server_for(key.as_bytes(), 0),
                Some(i),
                "{key} is on {port}"
            );
            found += 1;
        }
    }
    found
}

/// Where the router puts keys over servers on [`KERNEL_IP`] given as
/// (port, weight), with `hash` and ketama: the port of each key's server.
pub fn ketama_ports(hash: &str, servers: &[(u16, u32)]) -> impl Fn(&str) -> u16 {
    use ferrox_route::{Distribution, HashFn, Server, Table};
    let list: Vec<Server> = servers
        .iter()
        .map(|(port, weight)| Server::new(format!("{KERNEL_IP}:{port}"), *weight))
        .collect();
    let live = vec![true; list.len()];
    let table = Table::build(
        HashFn::from_name(hash).unwrap(),
        Distribution::Ketama,
        None,
        &list,
        &live,
    )
    .unwrap();
    let ports: Vec<u16> = servers.iter().map(|(port, _)| *port).collect();
    move |key| ports[table.server_for(key.as_bytes(), 0).unwrap()]
}
