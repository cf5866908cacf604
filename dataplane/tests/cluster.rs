//! A Redis Cluster behind ferrox, end to end: six `redis-server` nodes
//! with `--cluster-enabled yes` made a 3-primary/3-replica cluster by
//! `redis-cli --cluster create`, ferrox given one of them as its only seed,
//! and redis-py through ferrox: every key where the cluster says, no
//! client ever seeing `MOVED` or `ASK`, through a slot migration
//! (`redis-cli --cluster reshard`) and a primary's failover under load,
//! which costs only the requests in flight to the failed primary.
#![allow(clippy::disallowed_methods)] // tests wait for processes

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ferrox_testbed::*;

const PORTS: [u16; 6] = [7101, 7102, 7103, 7104, 7105, 7106];

/// The cluster's nodes, stopped (by PID) and their files removed when
/// dropped.
struct Nodes {
    dir: PathBuf,
    children: Vec<(u16, Child)>,
}

impl Nodes {
    fn start(ns: &Netns) -> Nodes {
        let dir = std::env::temp_dir().join(format!("ferrox-cluster-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Nodes {
            dir,
            children: Vec::new(),
        };
        for port in PORTS {
            let config = nodes.dir.join(format!("nodes-{port}.conf"));
            let child = ns
                .command(&[
                    "redis-server",
                    "--bind",
                    KERNEL_IP,
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    config.to_str().unwrap(),
                    "--cluster-node-timeout",
                    "1000",
                    // While a primary is down, the other slots stay served
                    // (by default the whole cluster answers CLUSTERDOWN
                    // until the failover, whatever is in front of it).
                    "--cluster-require-full-coverage",
                    "no",
                    "--dir",
                    nodes.dir.to_str().unwrap(),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                    "--loglevel",
                    "warning",
                ])
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            nodes.children.push((port, child));
        }
        for port in PORTS {
            wait_for_port(ns, port);
        }
        nodes
    }

    fn kill(&mut self, port: u16) {
        let at = self.children.iter().position(|(p, _)| *p == port).unwrap();
        let (_, mut child) = self.children.remove(at);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn shell_ok(ns: &Netns, script: &str) -> String {
    let out = ns.command(&["bash", "-c", script]).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (up to 30 s) until every slot is covered and the nodes agree.
fn wait_for_cluster(ns: &Netns, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let check = ns
            .command(&[
                "redis-cli",
                "--cluster",
                "check",
                &format!("{KERNEL_IP}:{port}"),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&check.stdout);
        let state = cli(ns, KERNEL_IP, port, "CLUSTER INFO");
        if check.status.success()
            && text.contains("All 16384 slots covered")
            && !text.contains("[ERR]")
            && !text.contains("[WARNING]")
            && state.contains("cluster_state:ok")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not settle:\n{text}\n{state}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A load through ferrox, in the background until `stop` exists: single
/// SETs and GETs of `load:N` keys (each read checked against the last
/// write acknowledged), counting errors by kind; prints a summary line
/// `ops=N errors=N moved=N ask=N failed_keys=k1,k2,...`.
fn start_load(ns: &Netns, stop: &str) -> Child {
    let script = format!(
        r#"
import os, random, time, redis
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
rng = random.Random(7)
known = {{}}
ops = errors = moved = ask = wrong = 0
failed = set()
samples = {{}}
deadline = time.time() + 120
while not os.path.exists("{stop}") and time.time() < deadline:
    key = f"load:{{rng.randrange(2000)}}"
    try:
        if rng.random() < 0.5:
            value = str(rng.random())
            known.pop(key, None)
            r.set(key, value)
            known[key] = value
        else:
            got = r.get(key)
            if key in known and got is not None and got.decode() != known[key]:
                wrong += 1
        ops += 1
    except redis.exceptions.ResponseError as e:
        errors += 1
        text = str(e)
        moved += text.startswith("MOVED")
        ask += text.startswith("ASK")
        failed.add(key)
        samples.setdefault(text[:60], time.time())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as e:
        samples.setdefault(type(e).__name__ + str(e)[:60], time.time())
        errors += 1
        failed.add(key)
        r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
import sys
print(samples, file=sys.stderr)
print(f"ops={{ops}} errors={{errors}} moved={{moved}} ask={{ask}} wrong={{wrong}} failed_keys={{','.join(sorted(failed))}}")
"#
    );
    spawn_python(ns, &script)
}

/// Stops the load and reads its summary.
fn stop_load(load: Child, stop: &str) -> (u64, u64, u64, u64, u64, Vec<String>) {
    let text = stop_python(load, stop);
    let n = |name| stat(&text, name);
    let failed = field(&text, "failed_keys")
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    (
        n("ops"),
        n("errors"),
        n("moved"),
        n("ask"),
        n("wrong"),
        failed,
    )
}

/// The slot ranges of the cluster and their primaries' ports, asked of
/// the node at `port`. redis-cli prints the nested reply one value per
/// line: start, end, then the primary's host, port and id, then replicas.
fn slot_map(ns: &Netns, port: u16) -> Vec<(u16, u16, u16)> {
    let slots = cli(ns, KERNEL_IP, port, "CLUSTER SLOTS");
    let lines: Vec<&str> = slots.lines().map(str::trim).collect();
    let mut map = Vec::new();
    for i in 0..lines.len().saturating_sub(3) {
        if let (Ok(start), Ok(end), Ok(primary)) = (
            lines[i].parse::<u16>(),
            lines[i + 1].parse::<u16>(),
            lines[i + 3].parse::<u16>(),
        ) {
            if lines[i + 2] == KERNEL_IP
                && start <= end
                && !map.iter().any(|r: &(u16, u16, u16)| r.0 == start)
            {
                map.push((start, end, primary));
            }
        }
    }
    map
}

fn slot_of(ns: &Netns, port: u16, key: &str) -> u16 {
    cli(ns, KERNEL_IP, port, &format!("CLUSTER KEYSLOT {key}"))
        .trim()
        .parse()
        .unwrap()
}

/// The port of the primary serving `key`, asked of the node at `port`.
fn primary_of(ns: &Netns, port: u16, key: &str) -> Option<u16> {
    let slot = slot_of(ns, port, key);
    slot_map(ns, port)
        .into_iter()
        .find(|&(start, end, _)| (start..=end).contains(&slot))
        .map(|(_, _, primary)| primary)
}

fn node_id(ns: &Netns, port: u16) -> String {
    cli(ns, KERNEL_IP, port, "CLUSTER MYID").trim().to_owned()
}

#[test]
fn fronts_a_redis_cluster_through_a_migration_and_a_failover() {
    let config = ConfigFile::new(
        "toml",
        &format!(
            r#"
[pools.cluster]
listen = "0.0.0.0:6379"
protocol = "redis"
distribution = "redis_cluster"
timeout_ms = 6000
server_retry_timeout_ms = 200
servers = ["{KERNEL_IP}:{}:1"]
"#,
            PORTS[0]
        ),
    );
    let (ns, _dp) = setup_with(Pmd::AfPacket, 1, &["--config", config.path()]);
    let mut nodes = Nodes::start(&ns);
    let addrs: Vec<String> = PORTS.iter().map(|p| format!("{KERNEL_IP}:{p}")).collect();
    shell_ok(
        &ns,
        &format!(
            "redis-cli --cluster create {} --cluster-replicas 1 --cluster-yes",
            addrs.join(" ")
        ),
    );
    wait_for_cluster(&ns, PORTS[0]);
    // Time for ferrox's next refresh of the slot map (every 2 s).
    std::thread::sleep(Duration::from_millis(2500));

    // Plain commands, pipelines, multi-key commands over every slot, and
    // hashtags: each key on the node the cluster says, no redirection
    // seen by the client.
    let out = python(
        &ns,
        &format!(
            r#"
import redis
from redis.cluster import RedisCluster, ClusterNode
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
p = r.pipeline(transaction=False)
for i in range(1000):
    p.set(f"key:{{i}}", f"value {{i}}")
assert all(p.execute())
keys = [f"key:{{i}}" for i in range(1000)]
assert r.mget(keys) == [f"value {{i}}".encode() for i in range(1000)]
assert r.delete(*keys[:100]) == 100
assert r.exists(*keys) == 900
assert r.mset({{"{{user}}:a": "1", "{{user}}:b": "2"}})
p = r.pipeline(transaction=True)
p.incr("{{user}}:a")
p.get("{{user}}:b")
assert p.execute() == [2, b"2"]
assert r.dbsize() == 902
assert sorted(r.scan_iter(match="key:*", count=200)) == sorted(k.encode() for k in keys[100:])
# The cluster itself agrees: redis-py's own cluster client, straight to
# the nodes, finds every value.
c = RedisCluster(startup_nodes=[ClusterNode("{KERNEL_IP}", {port})])
assert [c.get(k) for k in keys[100:]] == [f"value {{i}}".encode() for i in range(100, 1000)]
assert c.get("{{user}}:a") == b"2"
print("ok")
"#,
            port = PORTS[0]
        ),
    );
    assert_eq!(out.trim(), "ok");
    // Pub/sub through the cluster: a sharded subscription on the shard
    // channel's node, a pattern on one node (the cluster passes every
    // PUBLISH to all nodes: on each, the client would get it three times).
    let out = python(
        &ns,
        &format!(
            r#"
import socket, time, redis
def command(s, *args):
    s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
sub = socket.create_connection(("{FERROX_IP}", 6379), timeout=10)
command(sub, b"SSUBSCRIBE", b"news")
command(sub, b"PSUBSCRIBE", b"n*")
time.sleep(0.5)
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
assert r.execute_command("SPUBLISH", "news", "sharded") == 1
r.publish("nope", "patterned")
got = b""
sub.settimeout(0.2)
deadline = time.time() + 3
while time.time() < deadline and not (b"sharded" in got and b"patterned" in got):
    try:
        got += sub.recv(65536)
    except socket.timeout:
        pass
time.sleep(0.5)
try:
    got += sub.recv(65536)
except socket.timeout:
    pass
assert got.count(b"smessage") == 1 and b"sharded" in got, got
assert got.count(b"pmessage") == 1 and b"patterned" in got, got
print("ok")
"#
        ),
    );
    assert_eq!(out.trim(), "ok");
    // Each key on its slot's primary, asked directly.
    for key in ["key:100", "key:555", "key:999"] {
        let port = primary_of(&ns, PORTS[0], key).unwrap();
        assert!(
            cli(&ns, KERNEL_IP, port, &format!("GET {key}")).starts_with("value"),
            "{key} on {port}"
        );
    }

    // A slot migration under load: the load sees no error at all.
    let stop = format!("/tmp/ferrox-cluster-load-stop-{}", std::process::id());
    let _ = std::fs::remove_file(&stop);
    let load = start_load(&ns, &stop);
    std::thread::sleep(Duration::from_millis(500));
    let (from, to) = (
        node_id(&ns, primary_of(&ns, PORTS[0], "load:1").unwrap()),
        {
            // Any other primary.
            let from_port = primary_of(&ns, PORTS[0], "load:1").unwrap();
            let other = PORTS
                .iter()
                .copied()
                .find(|&p| p != from_port && cli(&ns, KERNEL_IP, p, "ROLE").starts_with("master"))
                .unwrap();
            node_id(&ns, other)
        },
    );
    shell_ok(
        &ns,
        &format!(
            "redis-cli --cluster reshard {KERNEL_IP}:{} --cluster-from {from} --cluster-to {to} \
             --cluster-slots 300 --cluster-yes --cluster-pipeline 10 >/dev/null",
            PORTS[0]
        ),
    );
    wait_for_cluster(&ns, PORTS[0]);
    std::thread::sleep(Duration::from_millis(500));
    let (ops, errors, moved, ask, wrong, _) = stop_load(load, &stop);
    println!("migration: {ops} requests, {errors} errors");
    assert!(ops > 100, "the load ran: {ops}");
    assert_eq!(
        (errors, moved, ask, wrong),
        (0, 0, 0, 0),
        "the migration cost nothing"
    );

    // A primary killed under load: the replica takes over. Only what was
    // in flight to the dead primary may fail (the load has one request in
    // flight at a time); requests for its slots that could not reach it
    // wait for the failover (at most timeout_ms) and are then served.
    let load = start_load(&ns, &stop);
    std::thread::sleep(Duration::from_millis(500));
    let victim = primary_of(&ns, PORTS[0], "load:7").unwrap();
    let victim_slots: Vec<(u16, u16)> = slot_map(&ns, PORTS[0])
        .into_iter()
        .filter(|&(_, _, primary)| primary == victim)
        .map(|(start, end, _)| (start, end))
        .collect();
    let alive = *PORTS.iter().find(|&&p| p != victim).unwrap();
    nodes.kill(victim);
    let killed = Instant::now();
    // The replica is promoted after the node timeout (1 s) and a vote.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(&ns, KERNEL_IP, alive, "CLUSTER INFO").contains("cluster_state:ok")
        || primary_of(&ns, alive, "load:7").is_none_or(|p| p == victim)
    {
        assert!(Instant::now() < deadline, "no failover");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("failover took {:?}", killed.elapsed());
    // Past the next refresh of ferrox's map.
    std::thread::sleep(Duration::from_millis(3000));
    let (ops, errors, moved, ask, _wrong, failed) = stop_load(load, &stop);
    println!(
        "failover: {ops} requests, {errors} errors on {} keys",
        failed.len()
    );
    assert_eq!((moved, ask), (0, 0), "no client sees a redirection");
    assert!(
        errors <= 2,
        "only what was in flight fails: {errors} errors"
    );
    // (A read may miss a write acknowledged just before the kill: the
    // replication is asynchronous, so `wrong` is not checked here.)
    for key in &failed {
        let slot = slot_of(&ns, alive, key);
        assert!(
            victim_slots
                .iter()
                .any(|&(start, end)| (start..=end).contains(&slot)),
            "{key} (slot {slot}) failed, but its slot was not the dead primary's"
        );
    }
    // Every key is served again.
    let out = python(
        &ns,
        &format!(
            r#"
import redis
r = redis.Redis(host="{FERROX_IP}", port=6379, socket_timeout=10)
p = r.pipeline(transaction=False)
for i in range(2000):
    p.set(f"load:{{i}}", "after")
assert all(p.execute())
assert r.mget([f"load:{{i}}" for i in range(2000)]) == [b"after"] * 2000
print("ok")
"#
        ),
    );
    assert_eq!(out.trim(), "ok");
}
