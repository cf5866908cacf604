//! Replicas and Sentinel behind ferrox, end to end: real `redis-server`
//! primaries with `replicaof` replicas, redis-py through ferrox. Reads go
//! where the read policy says (the servers' own command statistics tell),
//! writes to the primaries, and a replica killed under read load costs no
//! read. With shards named by their Sentinel master and three real
//! sentinels (`redis-server --sentinel`, what `redis-sentinel` runs), a
//! primary killed under write load costs only the writes sent before the
//! failover completed.
#![allow(clippy::disallowed_methods)] // tests wait for processes

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ferrox_testbed::*;

/// Redis processes of a test, stopped (by PID) when dropped.
#[derive(Default)]
struct Servers(Children);

impl Servers {
    /// A `redis-server` on `port`, a replica of `primary` if given.
    fn start(&mut self, ns: &Netns, port: u16, primary: Option<u16>) {
        let primary = primary.map(|p| p.to_string());
        let replicaof = match &primary {
            Some(primary) => vec!["--replicaof", KERNEL_IP, primary],
            None => Vec::new(),
        };
        let child = redis_server_with(ns, KERNEL_IP, port, &replicaof);
        self.0.add(ns, port, child);
    }

    /// A sentinel on `port` watching `masters` (name, primary port), with
    /// a quorum of 2 and a one-second down-after, and `extra` lines of
    /// configuration; its config file (which it rewrites) in `dir`.
    fn start_sentinel(
        &mut self,
        ns: &Netns,
        port: u16,
        masters: &[(&str, u16)],
        dir: &str,
        extra: &str,
    ) {
        let mut conf =
            format!("port {port}\nbind {KERNEL_IP}\nprotected-mode no\ndir {dir}\n{extra}");
        for (name, primary) in masters {
            conf += &format!(
                "sentinel monitor {name} {KERNEL_IP} {primary} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 10000\n\
                 sentinel parallel-syncs {name} 1\n"
            );
        }
        let path = format!("{dir}/sentinel-{port}.conf");
        std::fs::write(&path, conf).unwrap();
        let child = ns
            .command(&["redis-server", &path, "--sentinel", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.0.add(ns, port, child);
    }

    /// SIGKILLs the server on `port`.
    fn kill(&mut self, port: u16) {
        self.0.kill(port);
    }
}

/// Waits (up to 10 s) until the replica on `port` is in sync.
fn wait_for_sync(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cli(ns, KERNEL_IP, port, "INFO replication").contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "replica {port} did not sync");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many times the server on `port` ran `command` (its INFO
/// commandstats).
fn calls(ns: &Netns, port: u16, command: &str) -> u64 {
    let stats = cli(ns, KERNEL_IP, port, "INFO commandstats");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// Reads through ferrox in the background until `stop` exists (at most
/// 60 s), each checked against the value every key was given before;
/// prints `reads=N errors=N wrong=N`.
fn start_reads(ns: &Netns, stop: &str, keys: usize) -> Child {
    let script = format!(
        r#"
import collections, os, random, sys, threading, time, redis
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
rng = random.Random(11)
reads = errors = wrong = 0
deadline = time.time() + 60
while not os.path.exists("{stop}") and time.time() < deadline:
    batch = [f"k:{{rng.randrange({keys})}}" for _ in range(20)]
    try:
        p = r.pipeline(transaction=False)
        for key in batch[:10]:
            p.get(key)
        got = p.execute() + r.mget(batch[10:])
        reads += len(batch)
        wrong += sum(g != f"v:{{k}}".encode() for k, g in zip(batch, got))
    except Exception as e:
        print(type(e).__name__, e, file=sys.stderr)
        errors += 1
        r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
print(f"reads={{reads}} errors={{errors}} wrong={{wrong}}")
"#
    );
    spawn_python(ns, &script)
}

fn stop_reads(load: Child, stop: &str) -> (u64, u64, u64) {
    let text = stop_python(load, stop);
    let n = |name| stat(&text, name);
    (n("reads"), n("errors"), n("wrong"))
}

#[test]
fn reads_go_to_replicas_and_a_killed_replica_costs_no_read() {
    // Two shards: 7201 with replicas 7211 and 7212, 7202 with 7221.
    let config = ConfigFile::new(
        "toml",
        &format!(
            r#"
[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
timeout_ms = 5000
read_policy = "prefer_replica"
servers = [
    {{ addr = "{KERNEL_IP}:7201", name = "a", replicas = ["{KERNEL_IP}:7211", "{KERNEL_IP}:7212"] }},
    {{ addr = "{KERNEL_IP}:7202", name = "b", replicas = ["{KERNEL_IP}:7221"] }},
]
"#
        ),
    );
    let (ns, _dp) = setup_with(Pmd::AfPacket, 1, &["--config", config.path()]);
    let mut servers = Servers::default();
    for port in [7201, 7202] {
        servers.start(&ns, port, None);
    }
    for (port, primary) in [(7211, 7201), (7212, 7201), (7221, 7202)] {
        servers.start(&ns, port, Some(primary));
    }
    for port in [7211, 7212, 7221] {
        wait_for_sync(&ns, port);
    }

    // Writes reach the primaries, and once replicated every read is
    // answered by a replica (a client per connection keeps to one).
    const KEYS: usize = 2000;
    let out = python(
        &ns,
        &format!(
            r#"
import time, redis
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
p = r.pipeline(transaction=False)
for i in range({KEYS}):
    p.set(f"k:{{i}}", f"v:k:{{i}}")
assert all(p.execute())
assert r.incr("counter") == 1
time.sleep(0.5)  # replication is asynchronous
clients = [redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10) for _ in range(8)]
for c in clients:
    keys = [f"k:{{i}}" for i in range(0, {KEYS}, 7)]
    assert c.mget(keys) == [f"v:{{k}}".encode() for k in keys]
    assert c.get("counter") == b"1"
print("ok")
"#
        ),
    );
    assert_eq!(out.trim(), "ok");
    assert_eq!(calls(&ns, 7201, "get") + calls(&ns, 7201, "mget"), 0);
    assert_eq!(calls(&ns, 7202, "get") + calls(&ns, 7202, "mget"), 0);
    assert!(calls(&ns, 7201, "set") > 0 && calls(&ns, 7202, "set") > 0);
    let replica_reads: u64 = [7211, 7212, 7221]
        .iter()
        .map(|&p| calls(&ns, p, "get") + calls(&ns, p, "mget"))
        .sum();
    assert!(replica_reads >= 8, "{replica_reads}");
    assert!(
        calls(&ns, 7211, "mget") > 0 && calls(&ns, 7212, "mget") > 0,
        "both replicas of shard a take sessions"
    );

    // A replica killed under read load: its reads go to the primary (or
    // the other replica), none fails.
    let stop = format!("/tmp/ferrox-replica-load-stop-{}", std::process::id());
    let _ = std::fs::remove_file(&stop);
    let load = start_reads(&ns, &stop, KEYS);
    std::thread::sleep(Duration::from_millis(1500));
    servers.kill(7211);
    std::thread::sleep(Duration::from_millis(1500));
    servers.kill(7221);
    std::thread::sleep(Duration::from_millis(1500));
    let (reads, errors, wrong) = stop_reads(load, &stop);
    assert!(reads > 1000, "{reads} reads");
    assert_eq!((errors, wrong), (0, 0), "{reads} reads");
    // Shard b, its only replica gone, is read from its primary.
    assert!(calls(&ns, 7202, "get") + calls(&ns, 7202, "mget") > 0);
}

/// Seconds since the epoch, as the Python load writes its times.
fn epoch_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A directory for the sentinels' files, removed when dropped.
struct SentinelDir(std::path::PathBuf);

impl SentinelDir {
    fn new(test: &str) -> SentinelDir {
        let dir = std::env::temp_dir().join(format!("ferrox-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        SentinelDir(dir)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SentinelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn follows_a_sentinel_failover_under_write_load() {
    let dir = SentinelDir::new("sentinel-test");
    let sentinels = [26379, 26380, 26381];
    let config = ConfigFile::new(
        "toml",
        &format!(
            r#"
[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
timeout_ms = 3000
sentinels = [{}]
servers = [{{ master = "shard-a", name = "a" }}, {{ master = "shard-b", name = "b" }}]
"#,
            sentinels
                .iter()
                .map(|p| format!("\"{KERNEL_IP}:{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let (ns, _dp) = setup_with(Pmd::AfPacket, 1, &["--config", config.path()]);
    let mut servers = Servers::default();
    servers.start(&ns, 7301, None);
    servers.start(&ns, 7302, None);
    servers.start(&ns, 7311, Some(7301));
    servers.start(&ns, 7321, Some(7302));
    wait_for_sync(&ns, 7311);
    wait_for_sync(&ns, 7321);
    for port in sentinels {
        servers.start_sentinel(
            &ns,
            port,
            &[("shard-a", 7301), ("shard-b", 7302)],
            dir.path(),
            "",
        );
    }
    // The sentinels find the replicas and each other.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(&ns, KERNEL_IP, sentinels[0], "SENTINEL MASTER shard-a")
        .contains("num-other-sentinels\n2")
    {
        assert!(Instant::now() < deadline, "the sentinels did not meet");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A write load through ferrox, with the time of each error.
    let stop = format!("/tmp/ferrox-sentinel-load-stop-{}", std::process::id());
    let _ = std::fs::remove_file(&stop);
    let script = format!(
        r#"
import collections, os, random, sys, threading, time, redis
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
deadline = time.time() + 20
while True:  # until Sentinel has named the primaries to ferrox
    try:
        r.set("ready", "1")
        break
    except redis.exceptions.ResponseError:
        assert time.time() < deadline, "ferrox never learnt the primaries"
        time.sleep(0.05)
# When Sentinel completes the failover: the first +switch-master any
# sentinel publishes.
switched = []
def watch(port):
    p = redis.Redis(host="{KERNEL_IP}", port=port).pubsub()
    p.subscribe("+switch-master")
    for m in p.listen():
        if m["type"] == "message":
            switched.append(time.time())
for port in {sentinels:?}:
    threading.Thread(target=watch, args=(port,), daemon=True).start()
print("ready", flush=True)
rng = random.Random(3)
writes = errors = 0
failed, first_error, last_error = set(), 0.0, 0.0
kinds = collections.Counter()
deadline = time.time() + 60
while not os.path.exists("{stop}") and time.time() < deadline:
    key = f"w:{{rng.randrange(500)}}"
    try:
        assert r.set(key, str(writes))
        writes += 1
    except Exception as e:
        errors += 1
        failed.add(key)
        last_error = time.time()
        first_error = first_error or last_error
        kinds[f"{{type(e).__name__}} {{str(e)[:80]}}"] += 1
        if not isinstance(e, redis.exceptions.ResponseError):
            r.close()
            r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
print(dict(kinds), file=sys.stderr)
print(f"writes={{writes}} errors={{errors}} first_error={{first_error}} last_error={{last_error}} switched={{min(switched, default=0)}} failed={{','.join(sorted(failed))}}")
"#
    );
    let mut load = spawn_python(&ns, &script);
    let mut ready = String::new();
    {
        use std::io::BufRead;
        let stdout = load.stdout.as_mut().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut ready)
            .unwrap();
    }
    assert_eq!(ready.trim(), "ready");
    std::thread::sleep(Duration::from_millis(1000));

    // shard-a's primary dies; the sentinels promote its replica.
    servers.kill(7301);
    let killed_at = epoch_s();
    let killed = Instant::now();
    while !cli(&ns, KERNEL_IP, 7311, "ROLE").starts_with("master") {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "Sentinel did not fail shard-a over"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "killed at {killed_at:.3}, promoted after {:?}",
        killed.elapsed()
    );
    // Writes go on, to the new primary.
    std::thread::sleep(Duration::from_millis(3000));
    let text = stop_python(load, &stop);
    let field = |name| field(&text, name);
    let writes = stat(&text, "writes");
    let last_error: f64 = field("last_error").parse().unwrap();
    let switched: f64 = field("switched").parse().unwrap();
    assert!(writes > 500, "{writes} writes");
    assert!(switched > killed_at, "no +switch-master was published");
    // Only writes sent before the failover completed failed: ferrox hears
    // of it on its own subscription, or asks within 100 ms while the
    // primary fails (a sentinel that has not heard yet costs a round).
    eprintln!(
        "Sentinel switched {:.2} s after the kill; the last error {:.2} s after the switch",
        switched - killed_at,
        last_error - switched
    );
    assert!(
        last_error < switched + 0.5,
        "an error {:.2} s after the switch",
        last_error - switched
    );
    // And only shard-a's keys: none of them is on shard-b's primary.
    for key in field("failed").split(',').filter(|k| !k.is_empty()) {
        assert_eq!(
            cli(&ns, KERNEL_IP, 7302, &format!("EXISTS {key}")),
            "0",
            "{key}"
        );
    }
    // Writes after the failover are on the promoted replica.
    let on_new = keys_on(&ns, 7311, "w:*").len();
    let on_b = keys_on(&ns, 7302, "w:*").len();
    assert!(
        on_new > 100 && on_b > 100,
        "{on_new} on 7311, {on_b} on 7302"
    );
}

/// Sentinels that want a password (`requirepass`, and an ACL user): a
/// pool logs in with `sentinel_auth`, as Sentinel's default user or as
/// `sentinel_user`, and learns its primary; a pool with a wrong password
/// learns nothing, and its requests fail with an error that says so.
#[test]
fn sentinels_with_a_password_are_logged_into() {
    let dir = SentinelDir::new("sentinel-auth");
    let sentinel = 26390;
    let pool = |name: &str, port: u16, login: &str| {
        format!(
            "[pools.{name}]\nlisten = \"0.0.0.0:{port}\"\nprotocol = \"redis\"\ntimeout_ms = 3000\n\
             sentinels = [\"{KERNEL_IP}:{sentinel}\"]\n{login}\n\
             servers = [{{ master = \"shard-a\", name = \"a\" }}]\n"
        )
    };
    let config = ConfigFile::new(
        "toml",
        &[
            pool("as_default", 6379, "sentinel_auth = \"s3cret\""),
            pool(
                "as_user",
                6380,
                "sentinel_user = \"watcher\"\nsentinel_auth = \"w4tch\"",
            ),
            pool("wrong", 6381, "sentinel_auth = \"nope\""),
        ]
        .join("\n"),
    );
    let (ns, _dp) = setup_with(Pmd::AfPacket, 1, &["--config", config.path()]);
    let mut servers = Servers::default();
    servers.start(&ns, 7331, None);
    servers.start_sentinel(
        &ns,
        sentinel,
        &[("shard-a", 7331)],
        dir.path(),
        "requirepass s3cret\nuser watcher on >w4tch allchannels +@all\n",
    );
    // Without a login the sentinel answers nothing.
    assert!(
        cli(
            &ns,
            KERNEL_IP,
            sentinel,
            "SENTINEL GET-MASTER-ADDR-BY-NAME shard-a"
        )
        .contains("NOAUTH"),
        "the sentinel wants no password"
    );

    let deadline = Instant::now() + Duration::from_secs(15);
    while cli(&ns, FERROX_IP, 6379, "SET k from-default") != "OK" {
        assert!(
            Instant::now() < deadline,
            "the pool never learnt its primary"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    while cli(&ns, FERROX_IP, 6380, "SET j from-user") != "OK" {
        assert!(
            Instant::now() < deadline,
            "the ACL user's pool never learnt its primary"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cli(&ns, KERNEL_IP, 7331, "GET k"), "from-default");
    assert_eq!(cli(&ns, FERROX_IP, 6380, "GET k"), "from-default");
    assert_eq!(cli(&ns, FERROX_IP, 6379, "GET j"), "from-user");

    // The wrong password: asked as often as the others, never answered.
    std::thread::sleep(Duration::from_millis(1500));
    let refused = cli(&ns, FERROX_IP, 6381, "SET k wrong");
    assert!(
        refused.contains("no primary of master shard-a is known yet"),
        "{refused}"
    );
    assert_eq!(cli(&ns, KERNEL_IP, 7331, "GET k"), "from-default");
}
