//! The control process end to end: `ferrox-control` starts the dataplane
//! on `net_af_packet` in a network namespace this test creates, with four
//! `redis-server` backends on the kernel side, and `ferroxctl` changes the
//! configuration while `redis-benchmark` runs. Then a backend is killed
//! (ejected by health checks) and started again (it returns).
#![allow(clippy::disallowed_methods)] // tests wait for processes

#[path = "../../dataplane/tests/support/netns.rs"]
mod netns;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netns::{cli, ketama_ports, redis_server, wait_for_port, Netns, FERROX_IP, KERNEL_IP};

const CONTROL: &str = env!("CARGO_BIN_EXE_ferrox-control");
const CTL: &str = env!("CARGO_BIN_EXE_ferroxctl");
/// A child stopped (by PID) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` on `port`, up and stopped when dropped.
fn backend(ns: &Netns, port: u16) -> Process {
    let child = redis_server(ns, port);
    wait_for_port(ns, port);
    Process(child)
}

/// Runs `ferroxctl ARGS` against `socket`; (success, stdout + stderr).
fn ctl(socket: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ctl_ok(socket: &str, args: &[&str]) -> String {
    let (ok, text) = ctl(socket, args);
    assert!(ok, "ferroxctl {args:?}: {text}");
    text
}

fn json(socket: &str, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ctl_ok(socket, args)).unwrap()
}

fn server_state(socket: &str, port: u16) -> String {
    let status = json(socket, &["status", "--json"]);
    status["pools"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == format!("{KERNEL_IP}:{port}"))
        .map(|s| s["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn wait_for(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SETs keys `load:N` one at a time for argv[2] seconds through ferrox at
/// argv[1]; prints how many succeeded and which failed.
const LOAD_SCRIPT: &str = r#"
import json, sys, time
import redis
r = redis.Redis(host=sys.argv[1], port=6379, socket_timeout=5)
ok, failed = 0, []
deadline = time.time() + float(sys.argv[2])
i = 0
while time.time() < deadline and i < 200000:
    key = "load:%d" % i
    try:
        r.set(key, i)
        ok += 1
    except redis.RedisError:
        failed.append(key)
    i += 1
print(json.dumps({"ok": ok, "failed": failed}))
"#;

fn pool_toml(servers: &str) -> String {
    format!(
        "[pools.cache]\nlisten = \"0.0.0.0:6379\"\nprotocol = \"redis\"\nhash = \"murmur\"\ndistribution = \"ketama\"\n\
         timeout_ms = 2000\nauto_eject_hosts = true\nserver_failure_limit = 2\nserver_retry_timeout_ms = 1000\n\
         servers = [{servers}]\n"
    )
}

/// ferrox-control (with its dataplane) in a namespace of its own; stopped
/// (by PID), then the namespace and files removed, when dropped.
struct Appliance {
    control: Option<Process>,
    ns: Netns,
    dir: std::path::PathBuf,
    socket: String,
}

impl Appliance {
    /// Starts ferrox-control on a configuration of one pool over
    /// `servers`, with `control_args`, and `dataplane_args` for the
    /// dataplane; returns once the proxy answers and every core publishes.
    /// `start_backends` runs once the namespace exists.
    fn start(
        tag: &str,
        servers: &[u16],
        control_args: &[&str],
        dataplane_args: &[&str],
        start_backends: impl FnOnce(&Netns),
    ) -> Appliance {
        let ns = Netns::new(tag);
        ns.add_veth();
        start_backends(&ns);
        let dir = std::env::temp_dir().join(format!("fxc-{}{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("ferrox.toml");
        let list: Vec<String> = servers
            .iter()
            .map(|p| format!("\"{KERNEL_IP}:{p}:1\""))
            .collect();
        std::fs::write(&config, pool_toml(&list.join(", "))).unwrap();
        let socket = dir.join("admin.sock").display().to_string();
        let region = format!("fxc-{}{tag}", std::process::id());
        let address = format!("{FERROX_IP}/24");
        let mut args = vec![
            CONTROL,
            "--config",
            config.to_str().unwrap(),
            "--address",
            &address,
            "--lcores",
            "0-1",
            "--vdev",
            "net_af_packet0,iface=veth1,qpairs=2",
            "--admin-socket",
            &socket,
            "--metrics",
            "127.0.0.1:9638",
            "--region",
            &region,
            "--health-interval-ms",
            "200",
        ];
        args.extend_from_slice(control_args);
        args.extend_from_slice(&["--", "--memory-mb", "256"]);
        args.extend_from_slice(dataplane_args);
        let control = Process(ns.command(&args).stdout(Stdio::null()).spawn().unwrap());
        let appliance = Appliance {
            control: Some(control),
            ns,
            dir,
            socket,
        };
        wait_for("the proxy answers", Duration::from_secs(30), || {
            cli(&appliance.ns, FERROX_IP, 6379, "PING") == "PONG"
        });
        wait_for("the dataplane publishes", Duration::from_secs(10), || {
            json(&appliance.socket, &["status", "--json"])["dataplane"]["alive"] == true
        });
        appliance
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        drop(self.control.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn changes_while_traffic_flows_and_a_dead_backend_is_ejected_and_returns() {
    let mut backends: Vec<(u16, Process)> = Vec::new();
    let appliance = Appliance::start("c", &[7001, 7002, 7003], &[], &[], |ns| {
        backends = [7001, 7002, 7003, 7004]
            .into_iter()
            .map(|p| (p, backend(ns, p)))
            .collect();
    });
    let ns = &appliance.ns;
    let socket = appliance.socket.as_str();
    let dir = &appliance.dir;

    // Changes under load: a server added, a weight changed, a command
    // blocked, shared memory grown, a server removed.
    let bench = ns
        .command(&[
            "timeout",
            "120",
            "redis-benchmark",
            "-h",
            FERROX_IP,
            "-t",
            "set,get",
            "-n",
            "100000",
            "-c",
            "20",
            "-P",
            "4",
            "-r",
            "10000",
            "-q",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let before = json(socket, &["shm", "show", "--json"]);
    ctl_ok(
        socket,
        &["server", "add", "cache", &format!("{KERNEL_IP}:7004:1")],
    );
    ctl_ok(
        socket,
        &[
            "server",
            "weight",
            "cache",
            &format!("{KERNEL_IP}:7001"),
            "3",
        ],
    );
    ctl_ok(socket, &["block", "keys"]);
    assert!(cli(ns, FERROX_IP, 6379, "KEYS '*'").contains("blocked"));
    let grown = ctl_ok(socket, &["shm", "resize", "--add-mb", "32"]);
    assert!(grown.contains("client"), "{grown}");
    ctl_ok(
        socket,
        &["server", "remove", "cache", &format!("{KERNEL_IP}:7002")],
    );
    let after = json(socket, &["shm", "show", "--json"]);
    assert!(
        after["classes"][0]["total"].as_u64() > before["classes"][0]["total"].as_u64(),
        "{before} -> {after}"
    );
    let out = bench.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert_eq!(report.matches("requests per second").count(), 2, "{report}");
    assert!(!report.to_lowercase().contains("error"), "{report}");
    // Idle cores publish before they sleep.
    std::thread::sleep(Duration::from_millis(300));
    let stats = json(socket, &["stats", "--json"]);
    // The one error is the blocked KEYS.
    assert_eq!(stats["pools"][0]["errors"], 1, "{stats}");
    let commands = stats["commands"].as_array().unwrap();
    let count = |name: &str| {
        commands
            .iter()
            .find(|c| c["command"] == name)
            .map_or(0, |c| c["requests"].as_u64().unwrap())
    };
    assert!(
        count("SET") >= 100_000 && count("GET") >= 100_000,
        "{stats}"
    );
    assert_eq!(count("KEYS"), 1, "{stats}");
    let accepted: u64 = stats["cores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            c["counters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|kv| kv[0] == "accepted")
                .unwrap()[1]
                .as_u64()
                .unwrap()
        })
        .sum();
    // 20 benchmark clients per test (plus its CONFIG GET) and the few
    // redis-cli calls: none was closed and opened again.
    assert!(accepted <= 2 * 21 + 6, "accepted {accepted}");

    // Every key on the backend the new table names.
    let port_of = ketama_ports("murmur", &[(7001, 3), (7003, 1), (7004, 1)]);
    for i in 0..40 {
        let key = format!("after:{i}");
        assert_eq!(cli(ns, FERROX_IP, 6379, &format!("SET {key} {i}")), "OK");
        let port = port_of(&key);
        assert_eq!(
            cli(ns, KERNEL_IP, port, &format!("GET {key}")),
            i.to_string(),
            "{key} on {port}"
        );
    }

    // Bad input changes nothing.
    let version = json(socket, &["status", "--json"])["config_version"].clone();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[pools.cache]\nlisten = \"0.0.0.0:6379\"\nprotocol = \"redis\"\nhash = \"sha1\"\nservers = [\"198.18.0.1:7001:1\"]\n").unwrap();
    let (ok, text) = ctl(socket, &["config", "reload", bad.to_str().unwrap()]);
    assert!(
        !ok && text.contains("bad.toml:4:") && text.contains("sha1"),
        "{text}"
    );
    let (ok, text) = ctl(socket, &["server", "weight", "cache", "10.9.9.9:1", "2"]);
    assert!(!ok && text.contains("no server 10.9.9.9:1"), "{text}");
    let raw = {
        use std::io::{BufRead, BufReader, Write};
        let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
        stream
            .write_all(b"hello\n{\"v\":1,\"cmd\":\"server.add\"}\n")
            .unwrap();
        let mut lines = BufReader::new(stream).lines();
        [
            lines.next().unwrap().unwrap(),
            lines.next().unwrap().unwrap(),
        ]
    };
    assert!(
        raw[0].contains("\"ok\":false") && raw[0].contains("not a JSON object"),
        "{raw:?}"
    );
    assert!(raw[1].contains("missing field `pool`"), "{raw:?}");
    assert_eq!(
        json(socket, &["status", "--json"])["config_version"],
        version
    );

    // Metrics on the kernel stack.
    let metrics = ns.shell(
        "exec 3<>/dev/tcp/127.0.0.1/9638; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; timeout 5 cat <&3",
    );
    assert!(
        metrics.contains("ferrox_pool_requests_total{pool=\"cache\"}"),
        "{metrics}"
    );

    // A backend dies under load (redis-py, one request at a time): only
    // requests for its keys fail, health checks eject it, and its keys go
    // elsewhere; started again, it returns.
    let load = ns
        .command(&["/usr/bin/python3", "-c", LOAD_SCRIPT, FERROX_IP, "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let at = backends.iter().position(|(p, _)| *p == 7003).unwrap();
    drop(backends.remove(at));
    wait_for("7003 ejected", Duration::from_secs(10), || {
        server_state(socket, 7003) == "ejected"
    });
    let out = load.wait_with_output().unwrap();
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(load["ok"].as_u64().unwrap() > 100, "{load}");
    eprintln!(
        "while 7003 died: {} requests answered, {} failed",
        load["ok"],
        load["failed"].as_array().unwrap().len()
    );
    for key in load["failed"].as_array().unwrap() {
        let key = key.as_str().unwrap();
        let port = port_of(key);
        assert_eq!(port, 7003, "{key} failed but lives on {port}: {load}");
    }
    for i in 0..20 {
        assert_eq!(
            cli(ns, FERROX_IP, 6379, &format!("SET dead:{i} {i}")),
            "OK",
            "dead:{i}"
        );
    }
    backends.push((7003, backend(ns, 7003)));
    wait_for("7003 back", Duration::from_secs(10), || {
        server_state(socket, 7003) == "up"
    });
    let status = ctl_ok(socket, &["status"]);
    assert!(status.contains("7003"), "{status}");

    // An operator's eject and restore.
    ctl_ok(
        socket,
        &["server", "eject", "cache", &format!("{KERNEL_IP}:7004")],
    );
    assert_eq!(server_state(socket, 7004), "held");
    ctl_ok(
        socket,
        &["server", "restore", "cache", &format!("{KERNEL_IP}:7004")],
    );
    assert_eq!(server_state(socket, 7004), "up");

    drop(appliance);
    drop(backends);
}

/// Opens argv[2] connections to ferrox at argv[1], PINGs on each, says
/// "open", and keeps them for argv[3] seconds.
const CONNECTIONS_SCRIPT: &str = r#"
import socket, sys, time
conns = []
for _ in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 6379), timeout=10)
    s.sendall(b"PING\r\n")
    assert s.recv(64) == b"+PONG\r\n"
    conns.append(s)
print("open", flush=True)
time.sleep(float(sys.argv[3]))
"#;

#[test]
fn the_dataplane_uses_socket_buffers_added_while_it_runs() {
    use std::io::BufRead;

    // A pool for 32 clients (64 buffers), no automatic growth, and little
    // room in the region: the 100 connections below need the memory that
    // `shm resize` adds.
    let mut backends = Vec::new();
    let appliance = Appliance::start(
        "m",
        &[7001],
        &["--shm-mb", "8", "--shm-grow-below", "0"],
        &["--socket-pool-clients", "32"],
        |ns| backends.push(backend(ns, 7001)),
    );
    let socket = appliance.socket.as_str();
    // Client buffers: one class to receive, one to send (their sizes
    // differ), grown together.
    let client_totals = |shm: &serde_json::Value| -> Vec<u64> {
        shm["classes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["role"] == "client")
            .map(|c| c["total"].as_u64().unwrap())
            .collect()
    };
    let before = json(socket, &["shm", "show", "--json"]);
    let initial = client_totals(&before);
    assert_eq!(initial.len(), 2, "{before}");
    assert!(initial.iter().all(|&n| n < 200), "{before}");
    let grown = ctl_ok(socket, &["shm", "resize", "--add-mb", "16"]);
    assert!(
        grown.contains("growing the socket pool by 16 MiB"),
        "{grown}"
    );
    let after = json(socket, &["shm", "show", "--json"]);
    // 16 MiB is some 400 connections' worth of 32 + 8 KiB.
    for (was, now) in initial.iter().zip(client_totals(&after)) {
        assert!(now >= was + 300, "{after}");
    }
    let mut clients = appliance
        .ns
        .command(&[
            "/usr/bin/python3",
            "-c",
            CONNECTIONS_SCRIPT,
            FERROX_IP,
            "100",
            "5",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(clients.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "open");
    let open = json(socket, &["shm", "show", "--json"]);
    // A receive and a send buffer per client connection, more of each than
    // the pool started with.
    for (class, was) in open["classes"].as_array().unwrap().iter().zip(&initial) {
        let in_use = class["in_use"].as_u64().unwrap();
        assert!(in_use >= 100 && in_use > *was, "{before}\n{open}");
    }
    let _ = clients.wait();

    // A dataplane that dies is started again on the same region: it takes
    // over the socket pool (and its grown memory) and the configuration.
    let status = json(socket, &["status", "--json"]);
    let pid = status["dataplane"]["pid"].as_u64().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("a new dataplane", Duration::from_secs(30), || {
        let status = json(socket, &["status", "--json"]);
        status["dataplane"]["restarts"] == 1 && status["dataplane"]["alive"] == true
    });
    wait_for("the proxy answers again", Duration::from_secs(30), || {
        cli(&appliance.ns, FERROX_IP, 6379, "PING") == "PONG"
    });
    let again = json(socket, &["shm", "show", "--json"]);
    assert_eq!(
        again["classes"][0]["total"], after["classes"][0]["total"],
        "{again}"
    );
    drop(appliance);
    drop(backends);
}
