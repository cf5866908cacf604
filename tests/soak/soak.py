#!/usr/bin/env python3
"""Randomized, model-checked soak of the real ferrox appliance.

Starts its own network namespace (fxsoak<PID>) with a veth pair (or the
dataplane's tap), four redis-server and two memcached backends on the
kernel side (198.18.0.1), and ferrox-control with its own configuration,
whose dataplane runs on DPDK net_af_xdp (or af_packet, or tap through a
port holder) on the other end (198.18.0.2). Then N client workers
(Redis and memcached) send random pipelines for the given time: commands,
value sizes straddling every buffer size, pipeline depths, and clients
that read slowly, stall, dribble bytes, vanish (FIN or RST) or send
garbage. Every reply is checked against a model of the worker's own keys.
At the end the backends are asked directly: every key the models hold is
on exactly the server the router names, with exactly the model's value,
and nothing else is there.

    tests/soak/soak.py [--seed S] [--duration SECONDS] [--mtu 3438|1500] ...

Needs root, the release binaries (cargo build --release -p
ferrox-dataplane -p ferrox-control), redis-server, memcached and 2 MiB
hugepages; `./ferrox.sh soak` sets all of that up. A run with the same
--seed sends every worker the same command stream. The last line is
`soak: N passed, M failed`; the exit status is non-zero on any failure.
"""

import argparse
import ctypes
import datetime
import glob
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the tree

import common  # noqa: E402
import frame  # noqa: E402
import mc_worker  # noqa: E402
import redis_worker  # noqa: E402
import route  # noqa: E402
import wire  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
KERNEL_IP = "198.18.0.1"
PROXY_IP = "198.18.0.2"
REDIS_PORTS = [7001, 7002, 7003, 7004]
MC_PORTS = [11311, 11312]
CLONE_NEWNET = 0x40000000


def log(msg):
    print(f"soak: {msg}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, help="replay this seed (default: a random one, printed first)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--redis-workers", type=int, default=6)
    p.add_argument("--mc-workers", type=int, default=3)
    p.add_argument("--mtu", type=int, default=3438, help="of the veth pair and the dataplane (3438 or 1500)")
    p.add_argument("--pmd", default="af_xdp", choices=["af_xdp", "af_packet", "tap"],
                   help="the dataplane's port: af_xdp (one queue), af_packet (a queue per lcore; "
                        "its hot upgrades overlap the two processes' sockets) or tap (a queue per "
                        "lcore, held by a port holder: hot upgrades leave frames waiting in the tap)")
    p.add_argument("--lcores", default="0", help="the dataplane's lcores, e.g. 0 or 0-1 (af_packet)")
    p.add_argument("--redis-hash", default="murmur", choices=sorted(route.HASHES))
    p.add_argument("--mc-hash", default="md5", choices=sorted(route.HASHES))
    p.add_argument("--server-connections", type=int, default=1)
    p.add_argument("--timeout-ms", type=int, default=5000, help="the pools' timeout_ms")
    p.add_argument("--max-pipeline", type=int, default=1024,
                   help="[limits] max_pipeline: requests in flight per client before ferrox stops reading")
    p.add_argument("--stuck-timeout", type=float, default=10.0,
                   help="seconds without a byte moving before the proxy counts as stopped")
    p.add_argument("--mc-long-share", type=float, default=0.02,
                   help="share of memcached iterations that send a multi-get over 1,024 keys or 64 KiB")
    p.add_argument("--mc-max-keys", type=int, default=5000, help="most keys in one memcached multi-get")
    p.add_argument("--strict-long-lines", action="store_true",
                   help="a refused long multi-get (line too long, too many keys) is a failure")
    p.add_argument("--dp-arg", action="append", default=[],
                   help="one more ferrox-dataplane argument (repeatable), e.g. --dp-arg=--lcores")
    p.add_argument("--bin", default=os.path.join(REPO, "target", "release"),
                   help="where ferrox-control, ferrox-dataplane and ferroxctl are")
    p.add_argument("--only", help="run only these workers (comma-separated, e.g. redis-1,memcached-0): "
                   "each worker's command stream depends on the seed and its own id alone, so one can "
                   "be replayed on its own")
    p.add_argument("--findings", help="append a timestamped report of any failure to this file")
    p.add_argument("--inject-stall", type=float, metavar="SECONDS",
                   help="wedge dataplane core 0 this many seconds in (ferroxctl debug stall-core; the "
                        "dataplane runs with --test-hooks): the soak must then fail, which checks the soak")
    p.add_argument("--upgrade-every", type=float, metavar="SECONDS",
                   help="hot-upgrade the dataplane this often (ferroxctl upgrade, alternating two copies of "
                        "its binary): every client connection must survive, the load must not notice")
    p.add_argument("--dump-dir", help="save the request and reply bytes of a failing pipeline here")
    p.add_argument("--keep-logs", action="store_true", help="keep the temporary directory and logs")
    p.add_argument("--golden", help="the route crate's golden vectors (default: found in the tree)")
    p.add_argument("--self-test", action="store_true", help="only check the router copy and exit")
    p.add_argument("--features", action="store_true",
                   help="the Redis pool compresses values (lz4, from 64 bytes) and both pools cache "
                        "hot keys (2 reads a second makes a key hot): the model expects ferrox's "
                        "refusal of APPEND and STRLEN, and MULTI holds only SET and DEL")
    p.add_argument("--direct", action="store_true",
                   help="no ferrox: the workers talk to one redis-server and one memcached themselves "
                        "(checks the soak's own models against the real servers)")
    args = p.parse_args()
    args.proxy_host = PROXY_IP
    if args.direct:
        global REDIS_PORTS, MC_PORTS
        REDIS_PORTS, MC_PORTS = [6379], [11211]
        args.proxy_host = KERNEL_IP
    if args.mtu < 576 or args.mtu > 3498:
        p.error("--mtu: af_xdp carries 576 to about 3500")
    if args.pmd in ("af_packet", "tap") and args.mtu > 1500:
        p.error(f"--mtu: DPDK's {args.pmd} carries at most 1500 (give --mtu 1500)")
    return args


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def memory_mib(pid):
    """Resident heap plus hugepages mapped, MiB."""
    kib = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "HugetlbPages:")):
                    kib += int(line.split()[1])
    except (OSError, ValueError):
        return None
    return kib / 1024


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def is_process(pid, name):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return name.encode() in f.read()
    except OSError:
        return False



# --features: what the pools get besides their servers.
FEATURES_CACHE = """
[pools.{name}.hot_key_cache]
min_rate = 2
memory = "16 MiB"
{staleness}"""
FEATURES = """
[pools.{name}.compression]
algorithm = "lz4"
min_size = 64
""" + FEATURES_CACHE

class Appliance:
    """The namespace, backends and ferrox this run starts, and their end."""

    def __init__(self, args):
        self.args = args
        self.pid = os.getpid()
        self.ns = f"fxsoak{self.pid}"
        self.region = f"soak-{self.pid}"
        self.tmp = tempfile.mkdtemp(prefix=f"ferrox-soak-{self.pid}-")
        self.socket = os.path.join(self.tmp, "admin.sock")
        self.config = os.path.join(self.tmp, "soak.toml")
        self.log_path = os.path.join(self.tmp, "ferrox.log")
        self.backends = []
        self.control = None
        self.dataplane_pid = None
        self.ns_created = False
        self.stopped = False
        self.builds = []
        self.upgrades = []

    def binary(self, name):
        path = os.path.join(self.args.bin, name)
        if not os.access(path, os.X_OK):
            raise SystemExit(f"soak: no {path}: build with cargo build --release "
                             "-p ferrox-dataplane -p ferrox-control")
        return path

    def start(self):
        args = self.args
        control = self.binary("ferrox-control")
        dataplane = self.binary("ferrox-dataplane")
        self.ctl = self.binary("ferroxctl")
        # Two copies of the dataplane binary for --upgrade-every to
        # alternate between (distinct files, as two builds would be).
        if args.upgrade_every:
            for name in ("a", "b"):
                path = os.path.join(self.tmp, f"ferrox-dataplane-{name}")
                shutil.copy2(dataplane, path)
                self.builds.append(path)
        for tool in ("redis-server", "memcached", "ip"):
            if not shutil.which(tool):
                raise SystemExit(f"soak: {tool} is not installed")
        free = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("HugePages_Free:"):
                    free = int(line.split()[1])
        if free * 2 < 256 + 64:
            log(f"warning: only {free} free 2 MiB hugepages; the dataplane wants 256 MiB "
                "(./ferrox.sh soak reserves them)")
        run(["ip", "netns", "add", self.ns])
        self.ns_created = True
        ip = ["ip", "-n", self.ns]
        run(ip + ["link", "set", "lo", "up"])
        if args.pmd != "tap":
            run(ip + ["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"])
            run(ip + ["link", "set", "veth0", "mtu", str(args.mtu)])
            run(ip + ["addr", "add", f"{KERNEL_IP}/24", "dev", "veth0"])
            run(ip + ["link", "set", "veth0", "up"])
            run(ip + ["link", "set", "veth1", "up"])
        if args.pmd == "af_packet":
            # af_packet takes no frame over the MTU: the kernel side must
            # not hand it TSO super-frames (they would arrive cut).
            run(["ip", "netns", "exec", self.ns, "ethtool", "-K", "veth0", "tso", "off"])
        # This process's sockets (and so every worker's) live in the
        # namespace from here on; children go through `ip netns exec`,
        # which also gives them the namespace's /sys.
        fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into " + self.ns)
        os.close(fd)
        exec_ns = ["ip", "netns", "exec", self.ns]
        backend_log = open(os.path.join(self.tmp, "backends.log"), "wb")

        def start_backends():
            for port in REDIS_PORTS:
                self.spawn(exec_ns + ["redis-server", "--bind", KERNEL_IP, "--port", str(port), "--save", "",
                                      "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
                           backend_log)
            for port in MC_PORTS:
                # -M: an out-of-memory error rather than a silent eviction,
                # which the models would take for lost data.
                self.spawn(exec_ns + ["memcached", "-u", "root", "-l", KERNEL_IP, "-p", str(port), "-U", "0",
                                      "-m", "256", "-I", "2m", "-M"], backend_log)
            for port in REDIS_PORTS + MC_PORTS:
                wait_port(KERNEL_IP, port, 10)

        if args.direct and args.pmd == "tap":
            raise SystemExit("soak: --direct needs a veth pair (not --pmd tap)")
        if args.pmd != "tap":
            start_backends()
        if args.direct:
            log(f"direct: redis-server {KERNEL_IP}:6379, memcached {KERNEL_IP}:11211, no proxy "
                f"(namespace {self.ns}, logs {self.tmp})")
            return
        with open(self.config, "w") as f:
            f.write(self.config_text())
        if args.pmd == "af_packet":
            queues = len(lcore_list(args.lcores))
            vdev = f"net_af_packet0,iface=veth1,qpairs={queues},framecnt=4096"
        elif args.pmd == "tap":
            vdev = "net_tap0,iface=fxtap0"
        else:
            vdev = "net_af_xdp0,iface=veth1,start_queue=0,queue_count=1,busy_budget=0"
        cmd = exec_ns + [control, "--config", self.config, "--address", f"{PROXY_IP}/24", "--vdev", vdev,
                         "--lcores", args.lcores,
                         "--admin-socket", self.socket, "--region", self.region, "--metrics", "off", "--",
                         "--memory-mb", "256", "--mtu", str(args.mtu)] + args.dp_arg
        if args.inject_stall is not None:
            cmd.append("--test-hooks")
        self.control_log = open(self.log_path, "wb")
        self.control = subprocess.Popen(cmd, stdout=self.control_log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        if args.pmd == "tap":
            # The port holder makes the tap; its kernel side gets the
            # backends' address, then the backends start.
            deadline = time.monotonic() + 60
            while run(ip + ["link", "show", "fxtap0"], check=False).returncode != 0:
                if self.control.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("soak: the port holder made no tap:\n" + self.log_tail())
                time.sleep(0.1)
            run(ip + ["addr", "add", f"{KERNEL_IP}/24", "dev", "fxtap0"])
            run(ip + ["link", "set", "fxtap0", "mtu", str(args.mtu), "txqueuelen", "10000", "up"])
            start_backends()
        deadline = time.monotonic() + 60
        while True:
            if self.control.poll() is not None:
                raise SystemExit("soak: ferrox-control exited at start:\n" + self.log_tail())
            if self.ping(timeout=1.0):
                break
            if time.monotonic() > deadline:
                raise SystemExit("soak: ferrox did not answer PING within 60 s:\n" + self.log_tail())
            time.sleep(0.2)
        status = self.status()
        if args.pmd == "tap":
            # Health checks ran before the tap was up: wait until every
            # server is seen up again, so that the load starts on a
            # healthy pool as on the other ports.
            deadline = time.monotonic() + 30
            while status and any(server["state"] != "up" for pool in status.get("pools", [])
                                 for server in pool.get("servers", [])):
                if time.monotonic() > deadline:
                    raise SystemExit("soak: the backends are not up within 30 s:\n" + self.log_tail())
                time.sleep(0.2)
                status = self.status()
        if status:
            self.dataplane_pid = status.get("dataplane", {}).get("pid")
        if not self.dataplane_pid:
            self.dataplane_pid = self.child_dataplane()
        log(f"ferrox answers on {PROXY_IP} (namespace {self.ns}, MTU {args.mtu}, dataplane pid "
            f"{self.dataplane_pid}, control pid {self.control.pid}, logs {self.tmp})")

    def spawn(self, cmd, out):
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.backends.append(p)
        return p

    def config_text(self):
        a = self.args

        def pool(name, port, protocol, hash_name, tag, servers):
            servers = ", ".join(f'"{KERNEL_IP}:{p}:1"' for p in servers)
            tag_line = f'hash_tag = "{tag}"\n' if tag else ""
            return f"""
[pools.{name}]
listen = "0.0.0.0:{port}"
protocol = "{protocol}"
hash = "{hash_name}"
distribution = "ketama"
{tag_line}timeout_ms = {a.timeout_ms}
server_connections = {a.server_connections}
servers = [{servers}]
"""

        return (f"""# Written by tests/soak/soak.py for one run.
[limits]
max_pipeline = {a.max_pipeline}
"""
                + pool("cache", 6379, "redis", a.redis_hash, "{}", REDIS_PORTS)
                + (FEATURES.format(name="cache", staleness="") if a.features else "")
                + pool("sessions", 11211, "memcache", a.mc_hash, None, MC_PORTS)
                + (FEATURES_CACHE.format(name="sessions", staleness="max_staleness_ms = 1000\n")
                   if a.features else ""))

    def child_dataplane(self):
        if not self.control:
            return None
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.control.pid and is_process(pid, "ferrox-dataplane") \
                    and not is_process(pid, "--hold-port"):
                return int(pid)
        return None

    def upgrade(self, ctx):
        """One hot upgrade to the next copy of the dataplane binary; a
        failure fails the run."""
        binary = self.builds[len(self.upgrades) % 2]
        # Requests in flight get 2 s to finish before the old dataplane
        # freezes (the default is 500 ms). One still in flight after the
        # drain fails with ferrox's usual error, by design, which the
        # model does not take; on a 2-vCPU machine whose two lcores poll
        # flat out, a 256 KiB memcached set once took longer than 500 ms
        # (seed 1076866325, af_packet, two lcores).
        try:
            out = subprocess.run([self.ctl, "--socket", self.socket, "upgrade", "--binary", binary,
                                  "--drain-ms", "2000", "--json"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=90)
        except subprocess.TimeoutExpired:
            ctx.fail("upgrade", "ferroxctl upgrade did not answer within 90 s")
            return
        text = out.stdout.decode(errors="replace")
        if out.returncode != 0:
            ctx.fail("upgrade", f"upgrade {len(self.upgrades) + 1} failed: {text.strip()}")
            return
        done = json.loads(text)
        if done.get("reset_on_restore", 0) != 0:
            ctx.fail("upgrade", f"upgrade {len(self.upgrades) + 1} reset connections: {text.strip()}")
        if done.get("exported") != done.get("restored", 0) + done.get("reset_on_restore", 0):
            ctx.fail("upgrade", f"upgrade {len(self.upgrades) + 1} lost connections between export "
                     f"and restore: {text.strip()}")
        self.upgrades.append(done)
        self.dataplane_pid = done.get("pid", self.dataplane_pid)
        blackout = done.get("blackout_ms")
        log(f"upgrade {len(self.upgrades)}: {done.get('exported')} connection(s) exported, "
            f"{done.get('restored')} taken over, pause {done.get('pause_ms', 0):.1f} ms, blackout "
            + ("?" if blackout is None else f"{blackout:.1f} ms")
            + f", dataplane pid {self.dataplane_pid}")

    def status(self, timeout=5):
        if self.args.direct:
            return None
        try:
            out = subprocess.run([self.ctl, "--socket", self.socket, "status", "--json"], timeout=timeout,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            return None
        if out.returncode != 0:
            return None
        try:
            return json.loads(out.stdout)
        except ValueError:
            return None

    def stats(self, timeout=5):
        try:
            out = subprocess.run([self.ctl, "--socket", self.socket, "stats", "--json"], timeout=timeout,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            return json.loads(out.stdout) if out.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError):
            return None

    def answers(self, port, request, parse, good, timeout):
        """Whether the proxy gives `request` on `port` a reply that `good`
        accepts, within `timeout`."""
        try:
            c = wire.Conn(self.args.proxy_host, port, connect_timeout=timeout)
        except OSError:
            return False
        try:
            return good(wire.exchange(c, request, parse, 1, wire.Plan(), timeout))
        except (wire.Stuck, wire.Closed, wire.ProtocolError):
            return False
        finally:
            c.close(rst=True)

    def ping(self, timeout=3.0):
        return self.answers(6379, wire.encode_command([b"PING"]), wire.parse_resp,
                            lambda replies: replies == ["PONG"], timeout)

    def mc_version(self, timeout=3.0):
        return self.answers(11211, b"version\r\n", lambda b, p: wire.parse_mc(b, p, wire.LINE),
                            lambda replies: replies[0].startswith("VERSION"), timeout)

    def dataplane_cpu(self, seconds=1.0):
        pid = self.dataplane_pid
        if not pid:
            return None
        a = cpu_ticks(pid)
        time.sleep(seconds)
        b = cpu_ticks(pid)
        if a is None or b is None:
            return None
        return 100.0 * (b - a) / os.sysconf("SC_CLK_TCK") / seconds

    def log_tail(self, lines=25):
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join("    | " + line for line in text.splitlines()[-lines:])

    def stop(self):
        if self.stopped:
            return
        self.stopped = True
        # The dataplane now running (the watchdog may have started another).
        self.dataplane_pid = self.child_dataplane() or self.dataplane_pid
        if self.control is not None and self.control.poll() is None:
            try:
                os.kill(self.control.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            try:
                self.control.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.control.kill()
                self.control.wait()
        dp = self.dataplane_pid
        if dp and is_process(dp, "ferrox-dataplane"):
            try:
                os.kill(dp, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for _ in range(50):
                if not is_process(dp, "ferrox-dataplane"):
                    break
                time.sleep(0.1)
        for p in self.backends:
            if p.poll() is None:
                p.terminate()
        for p in self.backends:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for pattern in (f"/dev/shm/ferrox-{self.region}*", f"/dev/hugepages/ferrox-{self.region}*"):
            for path in glob.glob(pattern):
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self.ns_created:
            subprocess.run(["ip", "netns", "del", self.ns], stderr=subprocess.DEVNULL)
        if self.args.keep_logs:
            log(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def wait_port(host, port, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"soak: backend {host}:{port} did not come up") from None
            time.sleep(0.1)


# ------------------------------------------------------------ verification


class Verifier:
    """The backends, asked directly after the run."""

    def __init__(self, ctx, redis_workers, mc_workers):
        self.ctx = ctx
        self.rw = redis_workers
        self.mw = mc_workers
        self.checked = 0

    def redis(self):
        model = final_model(self.rw)
        table = self.ctx.redis_table
        held = {}
        for i, port in enumerate(REDIS_PORTS):
            conn = wire.Conn(KERNEL_IP, port)
            try:
                cursor = b"0"
                keys = set()
                while True:
                    (reply,) = wire.exchange(conn, wire.encode_command([b"SCAN", cursor, b"COUNT", b"1000"]),
                                             wire.parse_resp, 1, wire.Plan(), 30)
                    cursor, batch = reply
                    keys.update(batch)
                    if cursor == b"0":
                        break
                held[i] = keys
                for k in keys:
                    check_written(k, f"redis {KERNEL_IP}:{port}", rb"^r\d+:", model, "deleted, or never written")
                    want = table.server_for(k)
                    if want != i:
                        raise common.Failure(
                            f"key {common.show_bytes(k)} is on {KERNEL_IP}:{port}, the router names "
                            f"{KERNEL_IP}:{REDIS_PORTS[want]}")
                mine = sorted(keys)
                for j in range(0, len(mine), 100):
                    chunk = mine[j:j + 100]
                    commands = [c for k in chunk for c in redis_worker.probe_commands(k)]
                    payload = b"".join(wire.encode_command(c) for c in commands)
                    replies = wire.exchange(conn, payload, wire.parse_resp, len(commands), wire.Plan(), 30)
                    for n, k in enumerate(chunk):
                        st = redis_worker.probe_state(replies[5 * n:5 * n + 5])
                        if self.ctx.args.features and st is not None and st[0] == "s":
                            # Stored compressed: read as a bypassing client would.
                            st = ("s", frame.decode(st[1]))
                        if st != model[k]:
                            raise common.Failure(
                                f"key {common.show_bytes(k)} on {KERNEL_IP}:{port}: "
                                f"{redis_worker.show_state(st)}, the model holds "
                                f"{redis_worker.show_state(model[k])}")
                        self.checked += 1
            finally:
                conn.close()
        for k, st in model.items():
            want = table.server_for(k)
            if k not in held[want]:
                raise common.Failure(f"key {common.show_bytes(k)} ({redis_worker.show_state(st)}) is missing "
                                     f"from {KERNEL_IP}:{REDIS_PORTS[want]}, where the router puts it")
        return len(model)

    def memcached(self):
        model = final_model(self.mw)
        table = self.ctx.mc_table
        conns = [wire.Conn(KERNEL_IP, port) for port in MC_PORTS]
        try:
            # Every key the models hold: on its server with the model's
            # value, and on no other.
            keys = sorted(model)
            for i, port in enumerate(MC_PORTS):
                for j in range(0, len(keys), 20):
                    chunk = keys[j:j + 20]
                    found = mc_get(conns[i], chunk)
                    for k in chunk:
                        obs = found.get(k)
                        want = table.server_for(k)
                        if want == i and not mc_worker.state_in(obs, [model[k]]):
                            raise common.Failure(
                                f"key {common.show_bytes(k)} on {KERNEL_IP}:{port} (where the router puts it): "
                                + ("absent" if obs is None else f"flags {obs[0]} value {common.show_bytes(obs[1])}")
                                + f", the model holds {mc_worker.show_state(model[k])}")
                        if want != i and obs is not None:
                            raise common.Failure(
                                f"key {common.show_bytes(k)} is on {KERNEL_IP}:{port} too; the router names "
                                f"{KERNEL_IP}:{MC_PORTS[want]}")
                        self.checked += 1
            # Anything else a server holds (deleted, never stored, refused,
            # or misplaced), from its key listing, confirmed by a get.
            for i, port in enumerate(MC_PORTS):
                listed = sorted(k for k in metadump(KERNEL_IP, port) if table.server_for(k) != i or k not in model)
                for j in range(0, len(listed), 20):
                    chunk = listed[j:j + 20]
                    found = mc_get(conns[i], chunk)
                    for k in chunk:
                        if k not in found:
                            continue  # gone since the listing
                        check_written(k, f"memcached {KERNEL_IP}:{port}", rb"^m\d+:", model,
                                      "deleted, never stored, or refused")
                        raise common.Failure(f"key {common.show_bytes(k)} is on {KERNEL_IP}:{port}, the router "
                                             f"names {KERNEL_IP}:{MC_PORTS[table.server_for(k)]}")
        finally:
            for c in conns:
                c.close()
        return len(model)


def final_model(workers):
    """The workers' models together; by the end every key is known."""
    model = {}
    for w in workers:
        for k in w.retired:
            raise common.Failure(f"{w.who}: key {common.show_bytes(k)} still uncertain at the end")
        model.update(w.model.data)
    return model


def check_written(k, server, worker_key, model, why_absent):
    """Key `k`, held by `server`, must be a worker's (match `worker_key`)
    and in the model (else it should be gone: `why_absent`)."""
    if not re.match(worker_key, k):
        raise common.Failure(f"{server} holds {common.show_bytes(k)}, which no worker wrote")
    if k not in model:
        raise common.Failure(f"{server} holds {common.show_bytes(k)}, which the model says is absent ({why_absent})")


def mc_get(conn, keys):
    payload = b"get " + b" ".join(keys) + b"\r\n"
    (got,) = wire.exchange(conn, payload, lambda b, p: wire.parse_mc(b, p, wire.RETRIEVAL), 1, wire.Plan(), 30)
    if isinstance(got, str):
        raise common.Failure(f"memcached answered a get with {got!r}")
    return {g[0]: (g[1], g[2]) for g in got}


def metadump(host, port):
    """Every key a memcached holds (lru_crawler metadump all)."""
    for attempt in range(20):
        with socket.create_connection((host, port), timeout=30) as s:
            s.sendall(b"lru_crawler metadump all\r\n")
            data = b""
            while not (data.endswith(b"END\r\n") or data.startswith(b"BUSY") or data.startswith(b"ERROR")
                       or data.startswith(b"CLIENT_ERROR")):
                chunk = s.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        if data.endswith(b"END\r\n"):
            keys = set()
            for line in data.split(b"\r\n"):
                if line.startswith(b"key="):
                    keys.add(urllib.parse.unquote_to_bytes(line.split(b" ", 1)[0][4:]))
            return keys
        time.sleep(0.25)
    raise common.Failure(f"memcached {host}:{port} would not list its keys: {data[:80]!r}")


# ---------------------------------------------------------------- the run


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def replay_command(args, seed):
    """The command line that sends the same streams again: the seed and
    every option that changes what is sent or how it is judged."""
    parts = [f"tests/soak/soak.py --seed {seed} --duration {args.duration:g}"]
    defaults = {"mtu": 3438, "redis_workers": 6, "mc_workers": 3, "redis_hash": "murmur", "mc_hash": "md5",
                "server_connections": 1, "timeout_ms": 5000, "max_pipeline": 1024, "mc_long_share": 0.02, "mc_max_keys": 5000,
                "only": None, "pmd": "af_xdp", "lcores": "0", "upgrade_every": None}
    for name, default in defaults.items():
        value = getattr(args, name)
        if value != default:
            parts.append(f"--{name.replace('_', '-')} {value}")
    if args.strict_long_lines:
        parts.append("--strict-long-lines")
    if args.direct:
        parts.append("--direct")
    parts += [f"--dp-arg={a}" for a in args.dp_arg]
    return " ".join(parts)


def find_golden():
    """The route crate's golden vectors (tests/golden/route.txt and
    hash.txt), wherever the tree keeps the crate."""
    for rel in ("crates/route/tests/golden", "dataplane/proto/tests/golden"):
        path = os.path.join(REPO, rel)
        if os.path.exists(os.path.join(path, "route.txt")):
            return path
    for top, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in ("target", ".git", "node_modules")]
        if top.endswith(os.path.join("tests", "golden")) and "route.txt" in files and "hash.txt" in files:
            return top
    raise SystemExit("soak: no golden route vectors (tests/golden/route.txt) in the tree; give --golden DIR")


def git_head():
    try:
        out = run(["git", "-C", REPO, "log", "-1", "--format=%h %s"], check=False).stdout.decode().strip()
        dirty = run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                    check=False).stdout.strip()
        return out + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "?"


def main():
    args = parse_args()
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    log(f"seed {seed} (replay: {replay_command(args, seed)})")
    golden = args.golden or find_golden()
    hashes, placements = route.self_test(golden)
    log(f"router copy agrees with twemproxy's golden vectors ({hashes} hashes, {placements} placements)")
    if args.self_test:
        print("soak: 1 passed, 0 failed")
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    appliance = Appliance(args)
    failed_checks = []
    passed = 0
    started = time.monotonic()
    workers = []
    ctx = None
    try:
        appliance.start()
        redis_table = route.Table(args.redis_hash, "ketama", b"{}",
                                  [(f"{KERNEL_IP}:{p}", 1) for p in REDIS_PORTS])
        mc_table = route.Table(args.mc_hash, "ketama", None, [(f"{KERNEL_IP}:{p}", 1) for p in MC_PORTS])
        ctx = common.Context(args, seed, redis_table, mc_table, REDIS_PORTS, MC_PORTS)
        workers = ([redis_worker.RedisWorker(ctx, i) for i in range(args.redis_workers)]
                   + [mc_worker.McWorker(ctx, i) for i in range(args.mc_workers)])
        if args.only:
            chosen = set(args.only.split(","))
            unknown = chosen - {w.who for w in workers}
            if unknown:
                raise SystemExit(f"soak: --only: no worker {sorted(unknown)}")
            workers = [w for w in workers if w.who in chosen]
        threads = [threading.Thread(target=w.run, name=w.who, daemon=True) for w in workers]
        log(f"{len(workers)} workers ({', '.join(w.who for w in workers)}) for {args.duration:g} s")
        started = time.monotonic()
        for t in threads:
            t.start()
        monitor(ctx, appliance, workers, threads)
        ctx.stop.set()
        for t in threads:
            t.join(timeout=args.stuck_timeout + 30)
        hung = [t.name for t in threads if t.is_alive()]
        if hung:
            ctx.fail(hung[0], f"workers {hung} did not finish within {args.stuck_timeout + 30:g} s of the end")
        elapsed = time.monotonic() - started
        failed_workers = {who for who, _ in ctx.ordered_failures()}
        passed += sum(1 for w in workers if w.who not in failed_workers)
        if ctx.failures:
            report_failure(ctx, appliance, workers, elapsed)
            failed_checks += [who for who, _ in ctx.ordered_failures()]
        else:
            time.sleep(1.0)  # quiesce
            for w in workers:
                try:
                    w.finish()
                except common.Failure as e:
                    ctx.fail(w.who, f"final read-back: {e}")
            verifier = Verifier(ctx, [w for w in workers if isinstance(w, redis_worker.RedisWorker)],
                                [w for w in workers if isinstance(w, mc_worker.McWorker)])
            for name, check in (("redis backends", verifier.redis), ("memcached backends", verifier.memcached)):
                if ctx.failures:
                    break
                try:
                    n = check()
                    log(f"{name}: {n} keys where the router puts them, with the model's values, "
                        "and nothing else")
                    passed += 1
                except common.Failure as e:
                    ctx.fail(name, str(e))
                except (wire.Stuck, wire.Closed, OSError) as e:
                    ctx.fail(name, f"asking the backends failed: {e}")
            status = {"dataplane": {"restarts": 0}} if args.direct else appliance.status()
            dp = (status or {}).get("dataplane", {})
            if status is None:
                ctx.fail("status", "ferroxctl status did not answer")
            elif dp.get("restarts", 0) != 0 or dp.get("stalls", 0) != 0:
                ctx.fail("status", f"the dataplane was restarted during the run: {json.dumps(dp)}")
            else:
                log(f"dataplane ran throughout: restarts 0, stalls {dp.get('stalls', 0)}, "
                    f"pid {dp.get('pid')}, {len(appliance.upgrades)} hot upgrade(s)")
                passed += 1
            if args.features and not args.direct:
                # The features must have been at work, not only configured
                # (counters of the last dataplane generation).
                stats = appliance.stats() or {}
                pools = {p["name"]: p for p in stats.get("pools", [])}
                cache = pools.get("cache", {}).get("features", {})
                sessions = pools.get("sessions", {}).get("features", {})
                log(f"features: cache pool {json.dumps(cache)}; sessions pool {json.dumps(sessions)}")
                if cache.get("compressed_values", 0) == 0 or cache.get("cache_hits", 0) == 0:
                    ctx.fail("features", "compression or the hot-key cache never engaged on the Redis pool: "
                                         + json.dumps(cache))
                else:
                    passed += 1
            if appliance.upgrades:
                pauses = sorted(u.get("pause_ms", 0) for u in appliance.upgrades)
                log(f"hot upgrades: {len(pauses)}, pause ms min {pauses[0]:.1f}, "
                    f"median {pauses[len(pauses) // 2]:.1f}, max {pauses[-1]:.1f}")
            if ctx.failures:
                report_failure(ctx, appliance, workers, elapsed)
                failed_checks += [who for who, _ in ctx.ordered_failures()]
        report_totals(ctx, workers, elapsed, seed)
    except Interrupted as e:
        log(f"interrupted ({e}); stopping")
        failed_checks.append("interrupted")
        if ctx:
            ctx.stop.set()
    except SystemExit as e:
        if e.code not in (0, None):
            print(e.code if isinstance(e.code, str) else f"soak: exit {e.code}", flush=True)
            failed_checks.append("setup")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if ctx:
            ctx.stop.set()
        appliance.stop()
    print(f"soak: {passed} passed, {len(failed_checks)} failed", flush=True)
    return 1 if failed_checks else 0


def lcore_list(text):
    """The lcores of a DPDK list such as "0", "0-1" or "0,2"."""
    cores = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cores.extend(range(int(first), int(last or first) + 1))
    return cores


def worker_total(workers, key):
    return sum(w.stats.get(key, 0) for w in workers)


def monitor(ctx, appliance, workers, threads):
    """Waits for the end of the run, printing progress every 10 s with the
    dataplane's CPU, so a livelock shows as 100% CPU and no progress."""
    last_t = time.monotonic()
    cpu_pid = appliance.dataplane_pid
    last_cpu = cpu_ticks(cpu_pid) if cpu_pid else None
    next_print = last_t + 10
    stall_at = None if ctx.args.inject_stall is None else last_t + ctx.args.inject_stall
    every = ctx.args.upgrade_every
    upgrade_at = last_t + every if every else None
    while ctx.running() and any(t.is_alive() for t in threads):
        time.sleep(0.25)
        now = time.monotonic()
        # Not in the last seconds: the run's end checks need a settled
        # dataplane.
        if upgrade_at is not None and now >= upgrade_at and ctx.deadline - now > 5:
            appliance.upgrade(ctx)
            upgrade_at = time.monotonic() + every
        if stall_at is not None and now >= stall_at:
            stall_at = None
            out = subprocess.run([appliance.ctl, "--socket", appliance.socket, "debug", "stall-core", "0"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
            log(f"injected a stall of core 0 (ferroxctl debug stall-core 0: "
                f"{out.stdout.decode(errors='replace').strip() or 'ok'})")
        if appliance.dataplane_pid != cpu_pid:
            # A hot upgrade: the new process's CPU time starts afresh.
            cpu_pid = appliance.dataplane_pid
            last_cpu = cpu_ticks(cpu_pid) if cpu_pid else None
            now = last_t = time.monotonic()
            # Print a second later, with a figure for the new process.
            next_print = max(next_print, now + 1)
        if now >= next_print:
            cpu = cpu_ticks(appliance.dataplane_pid) if appliance.dataplane_pid else None
            pct = "?"
            # A zero interval gives no figure.
            if cpu is not None and last_cpu is not None and now - last_t >= 0.5:
                pct = f"{100.0 * (cpu - last_cpu) / os.sysconf('SC_CLK_TCK') / (now - last_t):.0f}%"
            left = max(0, ctx.deadline - now)
            log(f"{ctx.args.duration - left:5.0f}s: redis ops {worker_total(workers, 'redis ops checked')}, "
                f"memcached ops {worker_total(workers, 'memcached ops checked')}, "
                f"pipelines {worker_total(workers, 'redis pipelines') + worker_total(workers, 'memcached pipelines')}, "
                f"vanishes {worker_total(workers, 'vanishes')}, dataplane CPU {pct}, memory "
                + (f"{mem:.0f} MiB" if (mem := memory_mib(appliance.dataplane_pid)) is not None else "?"))
            last_t, last_cpu, next_print = now, cpu, now + 10


def client_sockets():
    """The kernel's view of every client connection to ferrox (sequence
    numbers, windows, retransmissions, timers), for a stall's report."""
    try:
        out = run(["ss", "-tinoH", "dst", PROXY_IP], check=False, timeout=5).stdout.decode()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return "\n".join("    | " + line.strip() for line in out.splitlines() if line.strip())


def report_failure(ctx, appliance, workers, elapsed):
    failures = ctx.ordered_failures()
    who, message = failures[0]
    lines = [f"FAILED after {elapsed:.1f} s (seed {ctx.seed}): {who}", "    " + message.replace("\n", "\n    ")]
    for other, msg in failures[1:6]:
        lines.append(f"  also {other}: {msg.splitlines()[0][:300]}")
    ping = appliance.ping()
    mc = appliance.mc_version()
    lines.append(f"  a fresh connection's PING: {'answered' if ping else 'NO ANSWER'}; "
                 f"memcached version: {'answered' if mc else 'NO ANSWER'}")
    cpu = appliance.dataplane_cpu(1.0)
    alive = appliance.dataplane_pid and is_process(appliance.dataplane_pid, "ferrox-dataplane")
    lines.append(f"  dataplane pid {appliance.dataplane_pid}: "
                 + ("gone" if not alive else f"CPU {cpu:.0f}% over the last second" if cpu is not None else "?"))
    if cpu is not None and cpu > 80 and not ping:
        lines.append("  -> the dataplane spins at full CPU and answers nothing: a livelock")
    status = appliance.status(timeout=3)
    if status:
        dp = status.get("dataplane") or {}
        lines.append(f"  ferroxctl status: dataplane {json.dumps(dp)}")
        if dp.get("pid") and dp.get("pid") != appliance.dataplane_pid:
            appliance.dataplane_pid = dp["pid"]
        if dp.get("stalls", 0) or dp.get("restarts", 0):
            lines.append(f"  -> the dataplane was restarted {dp.get('restarts', 0)} time(s), "
                         f"{dp.get('stalls', 0)} of them by the watchdog for a core whose heartbeat stood still")
    sockets = client_sockets()
    if sockets:
        lines.append("  the clients' TCP sockets (ss -tin, the kernel's side):\n" + sockets)
    lines.append("  ferrox log (last lines):\n" + appliance.log_tail())
    text = "\n".join(lines)
    print("soak: " + text, flush=True)
    if ctx.args.findings:
        with open(ctx.args.findings, "a") as f:
            stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            f.write(f"\n## {stamp}: soak failure, seed {ctx.seed}\n\n")
            f.write(f"tree: {git_head()}; MTU {ctx.args.mtu}; replay: `{replay_command(ctx.args, ctx.seed)}`"
                    + "\n\n```\n" + text + "\n```\n")


def report_totals(ctx, workers, elapsed, seed):
    totals = common.Stats()
    for w in workers:
        totals.update(w.stats)
    log(f"totals after {elapsed:.1f} s, seed {seed}:")
    main_keys = ["redis ops checked", "memcached ops checked", "redis pipelines", "memcached pipelines",
                 "bytes_sent", "bytes_received", "connections", "resp3 connections", "vanishes",
                 "keys made uncertain", "uncertain keys resolved"]
    for k in main_keys:
        print(f"    {k:<40} {totals.get(k, 0):>14,}", flush=True)
    for k in sorted(totals):
        if k not in main_keys:
            print(f"    {k:<40} {totals[k]:>14,}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
