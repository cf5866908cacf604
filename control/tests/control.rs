//! The control process end to end: `ferrox-control` starts the dataplane
//! on `net_af_packet` in a network namespace this test creates, with four
//! `redis-server` backends on the kernel side, and `ferroxctl` changes the
//! configuration while `redis-benchmark` runs. Then a backend is killed
//! (ejected by health checks) and started again (it returns).
//!
//! The supervisor's own tests: a core wedged on purpose (`--test-hooks`)
//! is found by the watchdog and the dataplane restarted; a killed control
//! process takes its dataplane with it and its region is reclaimed by the
//! next one; SIGHUP reloads the configuration file; silent clients hold up
//! no scrape and no admin command.
#![allow(clippy::disallowed_methods)] // tests wait for processes

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrox_control::process_runs as running;
use ferrox_testbed::{
    assert_incr_load_kept, assert_no_client_reset, capture_client_flags, cli, ketama_ports, python,
    redis_benchmark, redis_server, single_connection_incr, wait_for_port, Netns, FERROX_IP,
    KERNEL_IP,
};
use rustix::process::{kill_process, Pid, Signal};

const CONTROL: &str = env!("CARGO_BIN_EXE_ferrox-control");
const CTL: &str = env!("CARGO_BIN_EXE_ferroxctl");
/// A child stopped (by PID) when dropped.
struct Process(Child);

impl Process {
    /// Sends `signal` (the child is not reaped before `wait`, so its pid
    /// is still its own).
    fn signal(&self, signal: Signal) {
        let _ = kill_process(Pid::from_child(&self.0), signal);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Reaped already (its pid may be another process's by now).
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        self.signal(Signal::INT);
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
    let (code, text) = ctl_exit(socket, args);
    (code == 0, text)
}

/// Runs `ferroxctl ARGS` against `socket`; (exit code, stdout + stderr).
fn ctl_exit(socket: &str, args: &[&str]) -> (i32, String) {
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
    (out.status.code().unwrap_or(-1), text)
}

/// Runs `ferroxctl ARGS --json` against `socket`; its exit code and its
/// answer (JSON on stdout, errors included).
fn ctl_json(socket: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let out = Command::new(CTL)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("ferroxctl {args:?} --json said {stdout:?}: {e}"));
    (out.status.code().unwrap_or(-1), value)
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

/// The port most tests run on: af_packet with two queues, on two lcores.
const AF_PACKET: (&str, &str) = ("net_af_packet0,iface=veth1,qpairs=2", "0-1");

/// ferrox-control (with its dataplane) in a namespace of its own, logging
/// to `control.log` in its directory; stopped (by PID), then the
/// namespace, files and region removed, when dropped (the log is printed
/// when the test failed).
struct Appliance {
    control: Option<Process>,
    ns: Netns,
    dir: PathBuf,
    socket: String,
    region: String,
    /// ferrox-control's command line.
    args: Vec<String>,
    /// Its environment, beyond the test's own.
    env: Vec<(String, String)>,
    /// `redis-server`s on the kernel side, by port; stopped after the
    /// namespace is removed, as fields drop in order.
    backends: Vec<(u16, Process)>,
}

impl Appliance {
    /// Starts ferrox-control on `port` (a vdev and the lcores), on a
    /// configuration of one pool over `servers`, with `control_args`, and
    /// `dataplane_args` for the dataplane; returns once the proxy answers
    /// and every core publishes.
    /// A `redis-server` is started on each of `backends` once the namespace
    /// exists.
    fn start(
        port: (&str, &str),
        tag: &str,
        servers: &[u16],
        backends: &[u16],
        control_args: &[&str],
        dataplane_args: &[&str],
    ) -> Appliance {
        Appliance::start_with_env(
            port,
            tag,
            servers,
            backends,
            control_args,
            dataplane_args,
            &[],
        )
    }

    /// [`Appliance::start`], with `env` in ferrox-control's environment.
    fn start_with_env(
        (vdev, lcores): (&str, &str),
        tag: &str,
        servers: &[u16],
        backends: &[u16],
        control_args: &[&str],
        dataplane_args: &[&str],
        env: &[(&str, &str)],
    ) -> Appliance {
        let ns = Netns::new(tag);
        // A tap appears with its port (the port holder makes it), so its
        // backends start once it is there; a veth pair is made here.
        let tap = vdev.starts_with("net_tap");
        if !tap {
            ns.add_veth();
        }
        let start_backends = |ns: &Netns| backends.iter().map(|&p| (p, backend(ns, p))).collect();
        let backends = if tap { Vec::new() } else { start_backends(&ns) };
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
            "--config",
            config.to_str().unwrap(),
            "--address",
            &address,
            "--lcores",
            lcores,
            "--vdev",
            vdev,
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
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut appliance = Appliance {
            control: None,
            ns,
            dir,
            socket,
            region,
            args,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            backends,
        };
        appliance.spawn_control();
        if tap {
            appliance.tap_up();
            appliance.backends = start_backends(&appliance.ns);
        }
        appliance.wait_ready();
        if tap {
            // Health checks found them unreachable before the tap was up.
            for &port in servers {
                wait_for("the backends return", Duration::from_secs(20), || {
                    server_state(&appliance.socket, port) == "up"
                });
            }
        }
        appliance
    }

    /// Once the dataplane's tap is there: its kernel side at [`KERNEL_IP`],
    /// up, with room for bursts of frames in its queue.
    fn tap_up(&self) {
        wait_for("the port holder's tap", Duration::from_secs(30), || {
            self.ns
                .command(&["ip", "link", "show", "fxtap0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        self.ns.tap_up(&["txqueuelen", "10000"]);
    }

    /// Starts ferrox-control (again), its log appended to `control.log`.
    fn spawn_control(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("control.log"))
            .unwrap();
        let mut command = self.ns.command(&[CONTROL]);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log);
        self.control = Some(Process(command.spawn().unwrap()));
    }

    /// Until the proxy answers and every core publishes.
    fn wait_ready(&self) {
        wait_for("the proxy answers", Duration::from_secs(30), || {
            cli(&self.ns, FERROX_IP, 6379, "PING") == "PONG"
        });
        wait_for("the dataplane publishes", Duration::from_secs(10), || {
            json(&self.socket, &["status", "--json"])["dataplane"]["alive"] == true
        });
    }

    /// What ferrox-control and its dataplanes logged so far: on stderr,
    /// and in the log file of a test that asked for one (`--log-file
    /// DIR/ferrox.log`, rotated to `ferrox.log.1`).
    fn log(&self) -> String {
        ["control.log", "ferrox.log.1", "ferrox.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect()
    }

    fn control(&mut self) -> &mut Process {
        self.control.as_mut().expect("ferrox-control runs")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("ferrox.toml")
    }

    fn status(&self) -> serde_json::Value {
        json(&self.socket, &["status", "--json"])
    }

    fn dataplane_pid(&self) -> u32 {
        self.status()["dataplane"]["pid"].as_u64().unwrap() as u32
    }

    /// `GET /metrics` in the namespace.
    fn metrics(&self) -> String {
        self.get("/metrics")
    }

    /// `GET path` of the metrics endpoint, in the namespace: the whole
    /// answer, status line first.
    fn get(&self, path: &str) -> String {
        self.ns.shell(&format!(
            "exec 3<>/dev/tcp/127.0.0.1/9638; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; timeout 5 cat <&3"
        ))
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        drop(self.control.take());
        if std::thread::panicking() {
            eprintln!("--- ferrox-control's log ---\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // Left behind when ferrox-control was killed.
        let _ = hugepage_pool::Region::remove(&self.region, &Default::default());
    }
}

/// A dataplane that must not outlive the test: SIGKILLed on drop if it
/// still runs (the test failed).
struct Orphan(u32);

impl Drop for Orphan {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if running(self.0) && String::from_utf8_lossy(&cmdline).contains("ferrox-dataplane") {
            let pid = Pid::from_raw(self.0 as i32).unwrap();
            let _ = kill_process(pid, Signal::KILL);
        }
    }
}

#[test]
fn changes_while_traffic_flows_and_a_dead_backend_is_ejected_and_returns() {
    let mut appliance = Appliance::start(
        AF_PACKET,
        "c",
        &[7001, 7002, 7003],
        &[7001, 7002, 7003, 7004],
        &["--stats-port", "22222"],
        &[],
    );
    let ns = &appliance.ns;
    let socket = appliance.socket.as_str();
    let dir = &appliance.dir;

    // Changes under load: a server added, a weight changed, a command
    // blocked, shared memory grown, a server removed.
    let bench = redis_benchmark(ns, FERROX_IP, "-t set,get -n 100000 -c 20 -P 4 -r 10000 -q");
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
    // A change that cannot be: refused (exit 4), nothing changed; with
    // --json, the answer to a change is JSON too.
    let (code, answer) = ctl_json(socket, &["server", "add", "nopool", "198.18.0.1:7009:1"]);
    assert_eq!(
        (code, &answer["kind"]),
        (4, &serde_json::json!("refused")),
        "{answer}"
    );
    let (code, answer) = ctl_json(socket, &["unblock", "keys"]);
    assert_eq!(
        (code, &answer["applied"]),
        (0, &serde_json::json!(true)),
        "{answer}"
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
    // The log has it too, as for SIGHUP (`systemctl reload` is this call).
    let log = appliance.log();
    assert!(
        log.lines()
            .any(|l| l.contains("reload refused") && l.contains("bad.toml:4:")),
        "{log}"
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
    let at = appliance
        .backends
        .iter()
        .position(|(p, _)| *p == 7003)
        .unwrap();
    drop(appliance.backends.remove(at));
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
    appliance.backends.push((7003, backend(ns, 7003)));
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

    // After all that traffic: the exposition as a Prometheus parser reads
    // it, and every metric the shipped dashboard and alerts use is there.
    let families = assert_exposition_is_valid(&appliance.metrics());
    assert_dashboards_use_existing_metrics(&families);

    // The twemproxy stats port: the keys of nutcracker's own document for
    // the same pool, and figures that add up.
    let ours = read_stats_port(ns, 22222);
    let theirs = nutcracker_stats(ns, dir, &["7001", "7003", "7004"]);
    assert_same_keys(&ours, &theirs, "");
    let pool = &ours["cache"];
    let server = |port: u16| &pool[format!("{KERNEL_IP}:{port}")];
    let total = |field: &str| -> u64 {
        pool.as_object()
            .unwrap()
            .values()
            .filter_map(|s| s[field].as_u64())
            .sum()
    };
    assert!(total("requests") >= 200_000, "{ours}");
    assert!(
        total("responses") >= 200_000 && total("responses") <= total("requests"),
        "{ours}"
    );
    assert!(total("request_bytes") > 20 * total("requests"), "{ours}");
    assert!(total("response_bytes") >= 5 * total("responses"), "{ours}");
    // 7003 died: its connections failed, it was ejected, and it is back.
    assert!(server(7003)["server_err"].as_u64() >= Some(1), "{ours}");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let ejected_at = server(7003)["server_ejected_at"].as_u64().unwrap();
    assert!(
        ejected_at > now_us - 120_000_000 && ejected_at <= now_us,
        "{ours}"
    );
    assert!(
        server(7001)["server_connections"].as_u64() >= Some(1),
        "{ours}"
    );
    assert!(pool["client_eof"].as_u64() >= Some(20), "{ours}");
    assert!(ours["total_connections"].as_u64() >= Some(20), "{ours}");
    drop(appliance);
}

/// The document a twemproxy-style stats port sends on connect.
fn read_stats_port(ns: &Netns, port: u16) -> serde_json::Value {
    let mut text = String::new();
    wait_for("the stats port", Duration::from_secs(10), || {
        text = ns.shell(&format!(
            "exec 3<>/dev/tcp/127.0.0.1/{port} && timeout 5 cat <&3 || true"
        ));
        !text.is_empty()
    });
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// nutcracker's stats document for a pool `cache` over `ports` of the
/// kernel side (it need not reach them: only the shape is read).
fn nutcracker_stats(ns: &Netns, dir: &Path, ports: &[&str]) -> serde_json::Value {
    let yml = dir.join("nutcracker.yml");
    let servers: String = ports
        .iter()
        .map(|p| format!("   - {KERNEL_IP}:{p}:1\n"))
        .collect();
    std::fs::write(
        &yml,
        format!("cache:\n  listen: 127.0.0.1:22121\n  redis: true\n  servers:\n{servers}"),
    )
    .unwrap();
    let nutcracker = Process(
        ns.command(&[
            "nutcracker",
            "-c",
            yml.to_str().unwrap(),
            "-s",
            "22223",
            "-a",
            "127.0.0.1",
            "-o",
            dir.join("nutcracker.log").to_str().unwrap(),
        ])
        .spawn()
        .expect("nutcracker (Debian's package nutcracker)"),
    );
    let doc = read_stats_port(ns, 22223);
    drop(nutcracker);
    doc
}

/// `ours` has exactly the keys of `theirs` at every level, object for
/// object; values may differ.
fn assert_same_keys(ours: &serde_json::Value, theirs: &serde_json::Value, at: &str) {
    let (Some(a), Some(b)) = (ours.as_object(), theirs.as_object()) else {
        assert_eq!(
            ours.is_object(),
            theirs.is_object(),
            "{at}: {ours} vs {theirs}"
        );
        return;
    };
    let keys = |o: &serde_json::Map<String, serde_json::Value>| {
        o.keys().cloned().collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(keys(a), keys(b), "keys at {at:?}");
    for (key, value) in a {
        assert_eq!(
            value.is_number(),
            b[key].is_number(),
            "{at}.{key}: {value} vs {}",
            b[key]
        );
        assert_same_keys(value, &b[key], &format!("{at}.{key}"));
    }
}

/// The body of a `GET /metrics` answer.
fn exposition(answer: &str) -> &str {
    answer
        .split_once("\r\n\r\n")
        .map_or(answer, |(_, body)| body)
}

/// Parses the exposition in `answer` with Python's `prometheus_client`
/// (a real parser, not ours) and checks Prometheus's conventions:
/// counters end in `_total`, a histogram has its buckets, sum and count,
/// no family is declared twice. Returns every sample name.
fn assert_exposition_is_valid(answer: &str) -> std::collections::BTreeSet<String> {
    let text = exposition(answer);
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = [{"name": f.name, "type": f.type, "samples": sorted({s.name for s in f.samples})}
            for f in text_string_to_metric_families(sys.stdin.read())]
print(json.dumps(families))
"#;
    let mut parser = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        parser
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(families.len() >= 15, "{families:?}");
    let mut declared = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().unwrap(), words.next().unwrap());
        assert!(declared.insert(name.to_owned()), "{name} declared twice");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} without _total");
        }
    }
    let mut samples = std::collections::BTreeSet::new();
    for family in &families {
        let names: Vec<String> = family["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
        if family["type"] == "histogram" {
            let name = family["name"].as_str().unwrap();
            for part in ["_bucket", "_sum", "_count"] {
                assert!(
                    names.contains(&format!("{name}{part}")),
                    "histogram {name} has no {part}: {names:?}"
                );
            }
        }
        samples.extend(names);
    }
    samples
}

/// Every `ferrox_…` metric that `deploy/grafana/ferrox.json` and
/// `deploy/prometheus/ferrox-alerts.yml` name is among `samples`.
fn assert_dashboards_use_existing_metrics(samples: &std::collections::BTreeSet<String>) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for file in ["grafana/ferrox.json", "prometheus/ferrox-alerts.yml"] {
        let text = std::fs::read_to_string(deploy.join(file)).unwrap();
        if file.ends_with(".json") {
            serde_json::from_str::<serde_json::Value>(&text).expect("the dashboard is JSON");
        }
        let mut used = 0;
        let mut rest = text.as_str();
        while let Some(at) = rest.find("ferrox_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                samples.contains(&name),
                "{file} uses {name}, which ferrox does not export: {samples:?}"
            );
            used += 1;
            rest = &rest[at + name.len()..];
        }
        assert!(used >= 8, "{file} names only {used} metrics");
    }
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
    let appliance = Appliance::start(
        AF_PACKET,
        "m",
        &[7001],
        &[7001],
        &["--shm-mb", "8", "--shm-grow-below", "0"],
        &["--socket-pool-clients", "32"],
    );
    let socket = appliance.socket.as_str();
    // Client buffers: one class for idle connections (both ways), one to
    // receive and one to send once a connection needs more (their sizes
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
    assert_eq!(initial.len(), 3, "{before}");
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
    // Two idle buffers per client connection (small requests move none to
    // full buffers), more than the pool started with.
    let idle = open["classes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["role"] == "client")
        .min_by_key(|c| c["chunk_size"].as_u64())
        .unwrap();
    let in_use = idle["in_use"].as_u64().unwrap();
    assert!(in_use >= 200 && in_use > initial[0], "{before}\n{open}");
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
}

/// Milliseconds in the watchdog's log line ("no heartbeat for N ms").
fn silent_ms(log: &str) -> Option<u64> {
    let (_, rest) = log.split_once("no heartbeat for ")?;
    rest.split_once(" ms")?.0.parse().ok()
}

#[test]
fn a_stuck_core_is_found_and_the_dataplane_restarted() {
    let mut appliance = Appliance::start(AF_PACKET, "s", &[7001], &[7001], &[], &["--test-hooks"]);
    let socket = appliance.socket.clone();
    assert_eq!(
        cli(&appliance.ns, FERROX_IP, 6379, "SET stall:before 1"),
        "OK"
    );
    let first = appliance.dataplane_pid();
    let _first = Orphan(first);
    let status = appliance.status();
    assert_eq!(status["dataplane"]["restarts"], 0, "{status}");
    assert_eq!(status["dataplane"]["stalls"], 0, "{status}");

    // Core 0 wedges itself, as a livelocked core would.
    let triggered = Instant::now();
    ctl_ok(&socket, &["debug", "stall-core", "0"]);
    wait_for("the stall logged", Duration::from_secs(10), || {
        appliance.log().contains("stalled: no heartbeat")
    });
    let detected = triggered.elapsed();
    wait_for("a new dataplane", Duration::from_secs(10), || {
        let status = appliance.status();
        let pid = status["dataplane"]["pid"].as_u64();
        status["dataplane"]["restarts"] == 1
            && pid.is_some_and(|p| p != first as u64)
            && status["dataplane"]["alive"] == true
    });
    let restarted = triggered.elapsed();
    wait_for("the proxy answers again", Duration::from_secs(10), || {
        cli(&appliance.ns, FERROX_IP, 6379, "PING") == "PONG"
    });
    let serving = triggered.elapsed();

    assert!(!running(first), "the stuck dataplane {first} is gone");
    let status = appliance.status();
    assert_eq!(status["dataplane"]["restarts"], 1, "{status}");
    assert_eq!(status["dataplane"]["stalls"], 1, "{status}");
    let metrics = appliance.metrics();
    assert!(
        metrics.contains("\nferrox_core_stalls_total 1\n"),
        "{metrics}"
    );
    // Serving again: ready, and the main alert's metric says so.
    wait_for("the appliance is ready", Duration::from_secs(5), || {
        appliance.get("/ready").starts_with("HTTP/1.1 200")
    });
    assert!(appliance.get("/healthz").starts_with("HTTP/1.1 200"));
    assert!(appliance.metrics().contains("\nferrox_dataplane_up 1\n"));
    assert!(
        metrics.contains("\nferrox_dataplane_restarts_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ferrox_core_heartbeat_age_seconds{core=\"1\"}"),
        "{metrics}"
    );
    let log = appliance.log();
    assert!(log.contains("test hook: this core wedges itself"), "{log}");
    assert!(log.contains("dataplane core 0 stalled"), "{log}");
    assert!(log.contains("starting the dataplane again"), "{log}");
    let silent = silent_ms(&log).unwrap();
    assert!((2000..4000).contains(&silent), "{log}");
    assert_eq!(cli(&appliance.ns, FERROX_IP, 6379, "GET stall:before"), "1");
    eprintln!(
        "core 0 wedged: stall logged after {:.2} s (no heartbeat for {silent} ms, --stall-ms 2000), \
         new dataplane alive after {:.2} s, PING answered after {:.2} s",
        detected.as_secs_f64(),
        restarted.as_secs_f64(),
        serving.as_secs_f64()
    );

    // Stopping with a wedged core: SIGINT, then SIGKILL after the grace
    // (--stop-grace-ms, 3 s).
    let second = appliance.dataplane_pid();
    let _second = Orphan(second);
    ctl_ok(&socket, &["debug", "stall-core", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut control = appliance.control.take().unwrap();
    let stopping = Instant::now();
    control.signal(Signal::INT);
    wait_for("ferrox-control stops", Duration::from_secs(10), || {
        control.0.try_wait().unwrap().is_some()
    });
    let stopped = stopping.elapsed();
    assert!(!running(second), "dataplane {second} is gone");
    let log = appliance.log();
    assert!(log.contains("the dataplane did not stop; SIGKILL"), "{log}");
    assert!(
        !log.contains("the dataplane exited\n") && !log.contains("the dataplane exited "),
        "{log}"
    );
    assert!(stopped < Duration::from_secs(6), "stopped in {stopped:?}");
    eprintln!(
        "stop with a wedged core took {:.2} s",
        stopped.as_secs_f64()
    );
    drop(appliance);
}

#[test]
fn a_killed_control_process_takes_its_dataplane_along_and_its_region_is_reclaimed() {
    let mut appliance = Appliance::start(AF_PACKET, "k", &[7001], &[7001], &[], &[]);
    let dataplane = appliance.dataplane_pid();
    let _dataplane = Orphan(dataplane);
    let control = appliance.control().0.id();
    assert_eq!(appliance.status()["control_pid"], control);

    appliance.control().signal(Signal::KILL);
    let killed = Instant::now();
    appliance.control().0.wait().unwrap();
    wait_for("the dataplane dies too", Duration::from_secs(5), || {
        !running(dataplane)
    });
    eprintln!(
        "the dataplane died {:.3} s after its control process was killed",
        killed.elapsed().as_secs_f64()
    );
    // The region outlived its owner, and so did the dataplane's DPDK
    // runtime directory ...
    drop(hugepage_pool::Region::attach(&appliance.region, &Default::default()).unwrap());
    let runtime_dir = std::path::PathBuf::from(format!("/var/run/dpdk/ferrox-{dataplane}"));
    assert!(runtime_dir.exists(), "{}", runtime_dir.display());

    // ... and the next control process takes them back and serves.
    appliance.spawn_control();
    appliance.wait_ready();
    assert!(!runtime_dir.exists(), "{}", runtime_dir.display());
    let log = appliance.log();
    assert!(
        log.contains(&format!(
            "removed the region a control process that is gone (pid {control}) left behind"
        )),
        "{log}"
    );
    assert_eq!(appliance.status()["dataplane"]["restarts"], 0);
    drop(appliance);
}

#[test]
fn hot_keys_and_compression_are_shown_by_ferroxctl_and_exported() {
    let mut appliance = Appliance::start(AF_PACKET, "hk", &[7001], &[7001], &[], &[]);
    let socket = appliance.socket.clone();
    let v0 = appliance.status()["config_version"].as_u64().unwrap();
    let features = "[pools.cache.compression]\nmin_size = 256\n\
                    [pools.cache.hot_key_cache]\nmin_rate = 50\nmemory = \"4 MiB\"\n";
    std::fs::write(
        appliance.config(),
        pool_toml(&format!("\"{KERNEL_IP}:7001:1\"")) + features,
    )
    .unwrap();
    appliance.control().signal(Signal::HUP);
    wait_for(
        "the features on every core",
        Duration::from_secs(10),
        || {
            let status = appliance.status();
            status["applied"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| *v == v0 + 1)
        },
    );
    // One hot key, read on one connection (one core) far above min_rate.
    let out = python(
        &appliance.ns,
        &format!(
            r#"
import redis
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
r.set("hot:1", b"x" * 2000)
for _ in range(3000):
    assert r.get("hot:1") == b"x" * 2000
print("ok")
"#
        ),
    );
    assert_eq!(out.trim(), "ok");
    // Cores publish every few milliseconds.
    wait_for("the hot key listed", Duration::from_secs(5), || {
        ctl_ok(&socket, &["hotkeys"]).contains("hot:1")
    });
    let listed = json(&socket, &["hotkeys", "--json", "--pool", "cache"]);
    let key = &listed.as_array().unwrap()[0];
    assert_eq!(key["key"], "hot:1", "{listed}");
    assert!(key["rate"].as_u64().unwrap() >= 50, "{listed}");
    let stats = json(&socket, &["stats", "--json"]);
    let pool = &stats["pools"][0];
    assert!(
        pool["features"]["cache_hits"].as_u64().unwrap() > 2000,
        "{pool}"
    );
    assert!(pool["cache_hit_ratio"].as_f64().unwrap() > 0.9, "{pool}");
    assert_eq!(pool["features"]["compressed_values"], 1, "{pool}");
    assert!(pool["compression_ratio"].as_f64().unwrap() < 0.1, "{pool}");
    let table = ctl_ok(&socket, &["stats"]);
    assert!(table.contains("HIT%") && table.contains("hot:1"), "{table}");
    let metrics = appliance.metrics();
    for family in [
        "ferrox_pool_cache_hits_total{pool=\"cache\"}",
        "ferrox_pool_compressed_values_total{pool=\"cache\"} 1",
        "ferrox_pool_hot_key_reads_per_second{pool=\"cache\",core=",
    ] {
        assert!(metrics.contains(family), "{family} in {metrics}");
    }
}

#[test]
fn sighup_reloads_the_configuration_file_and_a_bad_one_changes_nothing() {
    // Logging to a file, as a log-rotated installation does.
    let log_file = std::env::temp_dir()
        .join(format!("fxc-{}h", std::process::id()))
        .join("ferrox.log");
    let log_arg = log_file.to_str().unwrap();
    let mut appliance = Appliance::start(
        AF_PACKET,
        "h",
        &[7001],
        &[7001, 7002],
        &["--log-file", log_arg],
        &[],
    );
    let socket = appliance.socket.clone();
    let v0 = appliance.status()["config_version"].as_u64().unwrap();

    std::fs::write(
        appliance.config(),
        pool_toml(&format!("\"{KERNEL_IP}:7001:1\", \"{KERNEL_IP}:7002:1\"")),
    )
    .unwrap();
    appliance.control().signal(Signal::HUP);
    wait_for(
        "the new version on every core",
        Duration::from_secs(10),
        || {
            let status = appliance.status();
            status["config_version"] == v0 + 1
                && status["applied"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|v| *v == v0 + 1)
        },
    );
    let shown = ctl_ok(&socket, &["config", "show"]);
    assert!(shown.contains(&format!("{KERNEL_IP}:7002")), "{shown}");
    assert!(appliance
        .log()
        .contains("SIGHUP: configuration file read again"));

    // A bad file is refused with its line and reason; the process and the
    // running configuration stay.
    std::fs::write(
        appliance.config(),
        "[pools.cache]\nlisten = \"0.0.0.0:6379\"\nprotocol = \"redis\"\nhash = \"sha1\"\nservers = [\"198.18.0.1:7001:1\"]\n",
    )
    .unwrap();
    appliance.control().signal(Signal::HUP);
    wait_for("the refusal logged", Duration::from_secs(10), || {
        appliance.log().contains("reload refused")
    });
    let log = appliance.log();
    let refusal = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        refusal.contains("ferrox.toml:4:") && refusal.contains("sha1"),
        "{refusal}"
    );
    assert!(appliance.control().0.try_wait().unwrap().is_none());
    let status = appliance.status();
    assert_eq!(status["config_version"], v0 + 1, "{status}");
    assert_eq!(status["pools"][0]["servers"].as_array().unwrap().len(), 2);
    assert_eq!(cli(&appliance.ns, FERROX_IP, 6379, "PING"), "PONG");

    // Fault injection is refused without --test-hooks.
    let (ok, text) = ctl(&socket, &["debug", "stall-core", "0"]);
    assert!(!ok && text.contains("--test-hooks"), "{text}");

    // The log filter changes while ferrox runs, in the control process
    // and the dataplane alike; one that is not a filter is refused.
    let (code, answer) = ctl_json(&socket, &["log-level", "ferrox=verbose"]);
    assert_eq!(
        (code, &answer["kind"]),
        (4, &serde_json::json!("refused")),
        "{answer}"
    );
    assert!(
        !appliance.log().contains(" DEBUG "),
        "debug lines before asked for"
    );
    ctl_ok(&socket, &["log-level", "debug"]);
    wait_for(
        "the dataplane takes the filter",
        Duration::from_secs(10),
        || {
            appliance
                .log()
                .contains("log filter from the control process")
        },
    );
    assert_eq!(cli(&appliance.ns, FERROX_IP, 6379, "PING"), "PONG");
    wait_for(
        "debug events in both processes",
        Duration::from_secs(10),
        || {
            let log = appliance.log();
            ["control", "dataplane"].iter().all(|p| {
                log.lines().any(|l| {
                    l.contains(" DEBUG ")
                        && l.contains("log filter in force")
                        && l.contains(&format!("process=\"{p}\""))
                })
            })
        },
    );
    ctl_ok(&socket, &["log-level", "info"]);

    // logrotate: the file moved away, then SIGUSR1 to ferrox-control (as
    // `kill -USR1 $MAINPID` sends it); it and the dataplane it passes the
    // signal on to write to a new file at the path, and nothing stops.
    assert!(std::fs::metadata(&log_file).unwrap().len() > 0);
    assert!(
        !appliance.log().contains('\x1b'),
        "colour codes in a log file"
    );
    std::fs::rename(&log_file, appliance.dir.join("ferrox.log.1")).unwrap();
    appliance.control().signal(Signal::USR1);
    wait_for(
        "both processes writing to the new file",
        Duration::from_secs(10),
        || {
            let new = std::fs::read_to_string(&log_file).unwrap_or_default();
            ["ferrox_control", "ferrox_dataplane"].iter().all(|p| {
                new.lines()
                    .any(|l| l.contains(p) && l.contains("SIGUSR1: log file opened again"))
            })
        },
    );
    assert!(appliance.control().0.try_wait().unwrap().is_none());
    assert_eq!(cli(&appliance.ns, FERROX_IP, 6379, "PING"), "PONG");
    assert_eq!(appliance.status()["dataplane"]["restarts"], 0);

    // Stopped (SIGTERM, as systemd stops it), it leaves no shared region.
    assert!(!region_files(&appliance.region).is_empty());
    appliance.control().signal(Signal::TERM);
    let status = appliance.control().0.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(region_files(&appliance.region), Vec::<PathBuf>::new());
    drop(appliance);
}

/// The files of shared region `region` (hugetlbfs or /dev/shm).
fn region_files(region: &str) -> Vec<PathBuf> {
    let prefix = format!("ferrox-{region}.");
    ["/dev/hugepages", "/dev/shm"]
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

/// Holds argv[1] silent connections and one that sent half a request line
/// to the metrics endpoint, then scrapes; prints how long the scrape took,
/// its status line, and how long the server took to close the silent
/// connections.
const SILENT_METRICS_SCRIPT: &str = r#"
import json, socket, sys, time
addr = ("127.0.0.1", 9638)
silent = [socket.create_connection(addr) for _ in range(int(sys.argv[1]))]
slow = socket.create_connection(addr)
slow.sendall(b"GET /met")
start = time.time()
s = socket.create_connection(addr, timeout=10)
s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
scrape = time.time() - start
for c in silent + [slow]:
    c.settimeout(10)
    try:
        assert c.recv(1) == b""
    except ConnectionResetError:
        pass
closed = time.time() - start
print(json.dumps({"scrape_s": scrape, "status": data.split(b"\r\n")[0].decode(),
                  "body": b"ferrox_config_version" in data, "closed_s": closed}))
"#;

#[test]
fn silent_clients_hold_up_no_scrape_and_no_admin_command() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;

    let appliance = Appliance::start(AF_PACKET, "q", &[7001], &[7001], &[], &[]);

    // Metrics: ten silent clients and a slow one.
    let out = appliance
        .ns
        .run(&["/usr/bin/python3", "-c", SILENT_METRICS_SCRIPT, "10"]);
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["status"], "HTTP/1.1 200 OK", "{result}");
    assert_eq!(result["body"], true, "{result}");
    assert!(result["scrape_s"].as_f64().unwrap() < 1.0, "{result}");
    // The server closed them at its 2 s deadline.
    assert!(result["closed_s"].as_f64().unwrap() < 5.0, "{result}");
    eprintln!("scrape beside 11 silent clients: {result}");

    // Admin: silent clients and one that stops mid-line.
    let silent: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&appliance.socket).unwrap())
        .collect();
    let mut half = UnixStream::connect(&appliance.socket).unwrap();
    half.write_all(b"{\"v\":1,\"cmd\":").unwrap();
    let asked = Instant::now();
    ctl_ok(&appliance.socket, &["status"]);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(&half).read_line(&mut line).unwrap();
    assert!(line.contains("no whole request line within 2 s"), "{line}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    drop(silent);
    drop(appliance);
}

/// Without a control process on the socket, ferroxctl exits 3 and, with
/// `--json`, says so as JSON; a wrong command line exits 2, as JSON too.
#[test]
fn ferroxctl_exit_codes_say_what_happened() {
    let (code, answer) = ctl_json("/nonexistent/admin.sock", &["status"]);
    assert_eq!(code, 3, "{answer}");
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["kind"], "not_running");
    let (code, answer) = ctl_json("/nonexistent/admin.sock", &["no-such-command"]);
    assert_eq!(
        (code, &answer["kind"]),
        (2, &serde_json::json!("usage")),
        "{answer}"
    );
    let (code, text) = ctl_exit("/nonexistent/admin.sock", &["stats"]);
    assert!(
        code == 3 && text.starts_with("ferroxctl: cannot reach"),
        "{text}"
    );
}

/// Started as a systemd `Type=notify` service would be (`NOTIFY_SOCKET`,
/// `WATCHDOG_USEC`), ferrox-control says READY once the dataplane serves,
/// feeds the watchdog while its cores beat, brackets a SIGHUP reload with
/// RELOADING and READY, and says STOPPING when it stops.
#[test]
fn systemd_hears_ready_the_watchdog_a_reload_and_stopping() {
    let path = std::env::temp_dir().join(format!("fxc-notify-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (heard, done) = (heard.clone(), done.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = listener.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    heard.lock().unwrap().push(text);
                }
            }
        })
    };
    let count = |what: &str| {
        heard
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.starts_with(what))
            .count()
    };
    let mut appliance = Appliance::start_with_env(
        ("net_af_packet0,iface=veth1", "0"),
        "n",
        &[7001],
        &[7001],
        &[],
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    wait_for("READY=1", Duration::from_secs(10), || count("READY=1") == 1);
    let ready = heard
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.starts_with("READY=1"))
        .cloned();
    assert!(
        ready
            .as_deref()
            .unwrap()
            .contains("\nSTATUS=serving: dataplane pid "),
        "{ready:?}"
    );
    // Fed every 200 ms (half the timeout).
    let fed = count("WATCHDOG=1");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        count("WATCHDOG=1") >= fed + 4,
        "{:?}",
        heard.lock().unwrap()
    );
    appliance.control().signal(Signal::HUP);
    wait_for("RELOADING=1, then READY=1", Duration::from_secs(10), || {
        count("RELOADING=1") == 1 && count("READY=1") == 2
    });
    appliance.control().signal(Signal::INT);
    wait_for("STOPPING=1", Duration::from_secs(20), || {
        count("STOPPING=1") >= 1
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let _ = std::fs::remove_file(&path);
}

/// Two copies of the dataplane binary (two "builds" to alternate), in a
/// directory of their own.
fn two_builds(tag: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = std::env::temp_dir().join(format!("fxc-bins-{}{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let built = PathBuf::from(CONTROL).with_file_name("ferrox-dataplane");
    let builds = ["a", "b"]
        .iter()
        .map(|name| {
            let path = dir.join(format!("ferrox-dataplane-{name}"));
            std::fs::copy(&built, &path).unwrap();
            path
        })
        .collect();
    (dir, builds)
}

/// A wrapper beside `build` that runs it with the handover fault
/// injection `fault` (FERROX_HANDOVER_FAULT).
fn faulty_build(build: &Path, fault: &str) -> PathBuf {
    let wrapper = build.with_file_name(format!("ferrox-dataplane-{fault}"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nFERROX_HANDOVER_FAULT={fault} exec {} \"$@\"\n",
            build.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// `count` upgrades alternating `builds`, under the INCR load of at least
/// 51 connections: each one counted, every connection restored, none
/// reset. Returns the blackouts (ms).
fn upgrades_under_load(socket: &str, builds: &[PathBuf], count: usize) -> Vec<f64> {
    let mut blackouts = Vec::new();
    for (i, build) in builds.iter().cycle().take(count).enumerate() {
        let done = json(
            socket,
            &["upgrade", "--binary", build.to_str().unwrap(), "--json"],
        );
        assert_eq!(done["generation"], i as u64 + 1, "{done}");
        assert_eq!(done["reset_on_restore"], 0, "{done}");
        assert_eq!(done["exported"], done["restored"], "{done}");
        assert!(done["restored"].as_u64().unwrap() >= 51, "{done}");
        blackouts.push(done["blackout_ms"].as_f64().unwrap_or(f64::NAN));
        std::thread::sleep(Duration::from_millis(300));
    }
    blackouts
}

/// On af_packet the successor opens its own socket in standby, beside its
/// predecessor's (the overlap path): from the freeze on, frames wait in
/// its ring. Two lcores, three upgrades under the INCR load: the counter
/// exact, no client reset (capture), every connection exported restored.
#[test]
fn upgrades_on_af_packet_with_the_successor_port_open_in_standby() {
    let (dir, builds) = two_builds("p");
    let appliance = Appliance::start(AF_PACKET, "v", &[7001, 7002], &[7001, 7002], &[], &[]);
    let ns = &appliance.ns;
    let socket = appliance.socket.as_str();
    let single = single_connection_incr(ns, 10);
    let n = 2_000_000;
    let bench = redis_benchmark(ns, FERROX_IP, &format!("-t incr -P 16 -c 50 -n {n} -q"));
    std::thread::sleep(Duration::from_millis(800));
    let capture = capture_client_flags(ns, "veth0", 6379);
    let blackouts = upgrades_under_load(socket, &builds, 3);
    assert_eq!(cli(ns, FERROX_IP, 6379, "PING"), "PONG");
    // The PING's connection shows the capture saw ferrox's segments.
    assert_no_client_reset(capture);
    let worst_ms = assert_incr_load_kept(ns, bench, single, n);
    eprintln!(
        "af_packet overlap: blackouts (ms) {blackouts:?}; redis-py's longest wait {worst_ms} ms"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Frames the kernel could not hand to the tap's queues (full, or no
/// reader): its TX drops.
fn tap_drops(ns: &Netns) -> u64 {
    ns.shell("cat /sys/class/net/fxtap0/statistics/tx_dropped")
        .trim()
        .parse()
        .unwrap()
}

/// On tap, a port holder keeps the port while dataplanes come and go:
/// between the old one's freeze and the new one's first poll, frames wait
/// in the tap's queue. Two lcores, five upgrades under the INCR load: the
/// counter exact, no client reset, every connection restored, and no
/// frame dropped by the tap. Then the port holder is killed: the
/// supervisor stops the dataplane, starts both again, and the proxy
/// answers.
#[test]
fn upgrades_on_tap_through_the_port_holder_lose_no_frame() {
    let (dir, builds) = two_builds("t");
    let appliance = Appliance::start(
        ("net_tap0,iface=fxtap0", "0-1"),
        "t",
        &[7001, 7002],
        &[7001, 7002],
        &[],
        &[],
    );
    let ns = &appliance.ns;
    let socket = appliance.socket.as_str();
    let holder = appliance.status()["dataplane"]["port_holder_pid"]
        .as_u64()
        .expect("a port holder on tap") as u32;
    let single = single_connection_incr(ns, 10);
    let n = 2_000_000;
    let bench = redis_benchmark(ns, FERROX_IP, &format!("-t incr -P 16 -c 50 -n {n} -q"));
    std::thread::sleep(Duration::from_millis(800));
    let capture = capture_client_flags(ns, "fxtap0", 6379);
    let drops = tap_drops(ns);
    let blackouts = upgrades_under_load(socket, &builds, 5);
    assert_eq!(
        tap_drops(ns),
        drops,
        "the tap dropped frames in the upgrades"
    );
    assert_eq!(
        appliance.status()["dataplane"]["port_holder_pid"],
        holder,
        "one port holder throughout"
    );
    assert_eq!(cli(ns, FERROX_IP, 6379, "PING"), "PONG");
    assert_no_client_reset(capture);
    let worst_ms = assert_incr_load_kept(ns, bench, single, n);
    eprintln!("tap through the port holder: blackouts (ms) {blackouts:?}; redis-py's longest wait {worst_ms} ms");

    // The port holder dies: its dataplane is stopped (the port went with
    // it) and both start again; the tap is made anew.
    let _orphan = Orphan(holder);
    kill_process(Pid::from_raw(holder as i32).unwrap(), Signal::KILL).unwrap();
    wait_for("a new port holder", Duration::from_secs(30), || {
        let status = appliance.status();
        status["dataplane"]["port_holder_restarts"] == 1
            && status["dataplane"]["port_holder_pid"]
                .as_u64()
                .is_some_and(|pid| pid as u32 != holder)
    });
    appliance.tap_up();
    wait_for("the proxy answers again", Duration::from_secs(30), || {
        cli(ns, FERROX_IP, 6379, "PING") == "PONG"
    });
    assert!(
        appliance.log().contains("the port holder exited"),
        "the supervisor said why it stopped the dataplane"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ferroxctl upgrade` ten times, alternating two copies of the dataplane
/// binary, on af_xdp, while redis-py holds one connection
/// doing INCR every millisecond and redis-benchmark pipelines INCRs on 50
/// connections: every reply follows the one before, the connections stay
/// the same, the counter equals the INCRs sent, no client is reset, no
/// socket buffer is leaked, and the generation counts the upgrades. Then the failures: a binary that is
/// not a dataplane is refused with nothing changed, and one that dies
/// after taking the port is rolled back (the running binary takes the
/// connections back from the file).
#[test]
fn upgrades_the_dataplane_binary_with_every_client_connection_open() {
    let (dir, builds) = two_builds("x");
    let port = ("net_af_xdp0,iface=veth1,start_queue=0,queue_count=1", "0");
    let appliance = Appliance::start(
        port,
        "u",
        &[7001, 7002],
        &[7001, 7002],
        &[],
        &["--drain-ms", "300"],
    );
    let ns = &appliance.ns;
    let socket = appliance.socket.as_str();
    let single = single_connection_incr(ns, 20);
    let n = 6_000_000;
    let bench = redis_benchmark(ns, FERROX_IP, &format!("-t incr -P 16 -c 50 -n {n} -q"));
    std::thread::sleep(Duration::from_millis(800));
    // Socket buffers in use, per class: the same connections hold them
    // before and after (each upgrade gives the old process's back).
    let in_use = || -> Vec<u64> {
        json(socket, &["shm", "show", "--json"])["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["in_use"].as_u64().unwrap())
            .collect()
    };
    let before = in_use();
    // Every segment ferrox sends its clients with SYN, FIN or RST, from
    // here to the end of the rollback: a RST would be a dropped client.
    let capture = capture_client_flags(ns, "veth0", 6379);
    let mut pauses = Vec::new();
    for i in 0..10 {
        let binary = builds[i % 2].to_str().unwrap();
        // Every other one with a drain of its own.
        let drain: &[&str] = if i % 2 == 1 {
            &["--drain-ms", "50"]
        } else {
            &[]
        };
        let done = json(
            socket,
            &[&["upgrade", "--binary", binary, "--json"], drain].concat(),
        );
        assert_eq!(done["generation"], i as u64 + 1, "{done}");
        assert_eq!(done["reset_on_restore"], 0, "{done}");
        assert!(done["restored"].as_u64().unwrap() >= 51, "{done}");
        assert_eq!(done["exported"], done["restored"], "{done}");
        // The board measured both (under load the new process's first
        // frame comes at once); the drain asked for bounds the brownout
        // (with a wide margin: a timing, on a shared machine).
        let brownout = done["brownout_ms"].as_f64().expect("a brownout");
        assert!(done["blackout_ms"].as_f64().is_some(), "{done}");
        assert!(
            brownout <= if drain.is_empty() { 300.0 } else { 50.0 } + 1000.0,
            "{done}"
        );
        pauses.push(done["pause_ms"].as_f64().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(in_use(), before, "socket buffers leaked across upgrades");
    let status = appliance.status();
    assert_eq!(status["dataplane"]["generation"], 10);
    assert!(status["dataplane"]["binary"]
        .as_str()
        .unwrap()
        .ends_with("ferrox-dataplane-b"));
    // A binary that is not a dataplane: refused, nothing changes.
    let pid = appliance.dataplane_pid();
    let (ok, text) = ctl(socket, &["upgrade", "--binary", "/bin/true"]);
    assert!(!ok && text.contains("preflight"), "{text}");
    // Refused: exit 4, and the error as JSON.
    let (code, answer) = ctl_json(socket, &["upgrade", "--binary", "/bin/true"]);
    assert_eq!(
        (code, &answer["kind"]),
        (4, &serde_json::json!("refused")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("preflight"),
        "{answer}"
    );
    assert_eq!(appliance.dataplane_pid(), pid);
    // One that hangs in standby: refused after the step's timeout, the
    // running one never asked to hand over.
    let hanging = faulty_build(&builds[0], "hang-in-standby");
    let hanging = hanging.to_str().unwrap();
    let (ok, text) = ctl(
        socket,
        &["upgrade", "--binary", hanging, "--timeout-ms", "3000"],
    );
    assert!(!ok && text.contains("did not reach standby"), "{text}");
    assert_eq!(appliance.dataplane_pid(), pid);
    // One that dies once told to go: the running binary takes its
    // connections back.
    let failing = faulty_build(&builds[0], "after-go");
    let (code, text) = ctl_exit(socket, &["upgrade", "--binary", failing.to_str().unwrap()]);
    // Carried out and failed: exit 1.
    assert!(code == 1 && text.contains("rolled back"), "{code}: {text}");
    // ferroxctl showed the steps as they came (standby lasts long enough
    // to be seen by its polling).
    assert!(text.contains("  standby: "), "{text}");
    wait_for(
        "the rolled-back dataplane serves",
        Duration::from_secs(20),
        || cli(ns, FERROX_IP, 6379, "PING") == "PONG",
    );
    // The PING's connection shows the capture saw ferrox's segments.
    assert_no_client_reset(capture);
    let worst_ms = assert_incr_load_kept(ns, bench, single, n);
    eprintln!("pauses (ms) of 10 upgrades: {pauses:?}; redis-py's longest wait {worst_ms} ms");
    let _ = std::fs::remove_dir_all(&dir);
}
