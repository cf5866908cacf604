#!/usr/bin/env python3
"""Records where twemproxy places keys, as golden vectors for `route`.

Starts five redis-server backends and one nutcracker (twemproxy) on
127.0.0.1, with one nutcracker pool per (hash, distribution, hash_tag,
servers) case. For each pool it SETs every key through nutcracker, asks
each backend directly (KEYS *) which keys it holds, records the holder's
index in the pool's server list, and FLUSHALLs before the next pool.

Usage (needs Debian's nutcracker and redis-server on PATH):

    python3 crates/route/tests/golden/route_gen.py \
        crates/route/tests/golden/route.txt

Every process this script starts is stopped by its PID on every exit path;
nothing else is touched. Ports are fixed (below) so the server names that
ketama hashes, and so the vectors, do not change from run to run; the script
refuses to run if one of them is taken.
"""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
# Ports of different digit counts, so that twemproxy's name order (length
# first, then bytes) differs from the order servers are written in.
BACKENDS = [27311, 7312, 27313, 7314, 17315]
POOL_PORT_BASE = 27400
STATS_PORT = 27399

HASHES = [
    "one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64",
    "fnv1a_64", "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins",
]


def spec(backend, weight, name=None):
    line = "%s:%d:%d" % (HOST, BACKENDS[backend], weight)
    return line + " " + name if name else line


def pools():
    """(name, hash, distribution, hash_tag or None, [(backend, spec)])."""
    out = []
    weighted = [(b, spec(b, w)) for b, w in [(0, 1), (1, 2), (2, 3), (3, 1)]]
    for dist in ["ketama", "modula"]:
        for h in HASHES:
            out.append(("%s_%s" % (dist, h), h, dist, None, weighted))
    named = [
        (b, spec(b, w, n))
        for b, w, n in [
            (0, 1, "redis-zeta"), (1, 2, "alpha"), (2, 1, "mu"),
            (3, 3, "b"), (4, 1, "server-five"),
        ]
    ]
    out.append(("named_ketama", "fnv1a_64", "ketama", None, named))
    out.append(("named_modula", "crc32a", "modula", None, named))
    even = [(b, spec(b, 1)) for b in range(5)]
    out.append(("even_ketama", "fnv1a_64", "ketama", None, even))
    heavy = [(b, spec(b, w)) for b, w in [(0, 100), (1, 1), (2, 37), (3, 5), (4, 250)]]
    out.append(("heavy_ketama", "one_at_a_time", "ketama", None, heavy))
    out.append(("heavy_modula", "md5", "modula", None, heavy))
    out.append(("tag_braces_ketama", "fnv1a_64", "ketama", "{}", weighted))
    out.append(("tag_braces_modula", "crc32a", "modula", "{}", weighted))
    out.append(("tag_dollars_ketama", "murmur", "ketama", "$$", even))
    out.append(("tag_dollars_modula", "hsieh", "modula", "$$", weighted))
    out.append(("tag_angles_ketama", "jenkins", "ketama", "<>", named))
    return out


# Numbered keys: (pattern, how many), tagged, half-tagged and untagged.
NUMBERED_KEYS = [
    (b"key:%d", 150), (b"{user:%d}:profile", 20), (b"{}x%d", 8), (b"x{%d", 8),
    (b"{%d}{y}", 8), (b"a}b{c}%d", 8), (b"{{%d}}", 4), (b"$tag%d$rest", 12),
    (b"$$%d", 6), (b"%d$x", 6), (b"pre{%d}$q$<a>post", 12), (b"<slot%d>", 8),
]


def keys():
    rng = random.Random(20240611)
    ks = [b""]
    for pattern, count in NUMBERED_KEYS:
        ks += [pattern % i for i in range(count)]
    ks += [b"{", b"}", b"{}", b"$", b"$$", b"<>", b"{x}", b"$x$"]
    ks += [s.encode() for s in ["ключ", "日本語キー", "🔑emoji", "café", "{ключ}:1"]]
    # Every tail length of the block-wise hashes, with bytes >= 0x80 (where
    # twemproxy's signed `char` shows).
    ks += [bytes((j * 37 + 11 + n) % 256 for j in range(n)) for n in range(1, 41)]
    ks += [bytes([0x80 + n]) * n for n in range(1, 17)]
    ks += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 65))) for _ in range(150)]
    ks += [b"L" * 300, bytes(rng.randrange(256) for _ in range(1000)), b"long:" + b"x" * 250]
    ks += [b"%016x" % rng.getrandbits(64) for _ in range(100)]
    seen = set()
    unique = []
    for k in ks:
        if k not in seen:
            seen.add(k)
            unique.append(k)
    return unique


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise IOError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def exact(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise IOError("connection closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise IOError("error reply: %r" % rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.exact(n)
        if kind == b"*":
            return [self.reply() for _ in range(int(rest))]
        raise IOError("unexpected reply %r" % line)


def connect(port, timeout=10.0):
    deadline = time.time() + timeout
    while True:
        try:
            s = socket.create_connection((HOST, port), timeout=10)
            return s, Reader(s)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def command(port, *args):
    s, r = connect(port)
    try:
        s.sendall(resp(*args))
        return r.reply()
    finally:
        s.close()


def port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def yaml_pools(defs):
    lines = []
    for i, (name, h, dist, tag, servers) in enumerate(defs):
        lines += [
            "%s:" % name,
            "  listen: %s:%d" % (HOST, POOL_PORT_BASE + i),
            "  hash: %s" % h,
            "  distribution: %s" % dist,
            "  redis: true",
            "  auto_eject_hosts: false",
            "  timeout: 5000",
        ]
        if tag:
            lines.append("  hash_tag: \"%s\"" % tag)
        lines.append("  servers:")
        lines += ["   - %s" % s for _, s in servers]
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: route_gen.py OUTPUT")
    output = sys.argv[1]
    defs = pools()
    ks = keys()
    ports = BACKENDS + [STATS_PORT] + [POOL_PORT_BASE + i for i in range(len(defs))]
    taken = [p for p in ports if not port_free(p)]
    if taken:
        sys.exit("ports in use: %s" % taken)
    version = subprocess.run(
        ["nutcracker", "-V"], capture_output=True, text=True
    )
    version = (version.stdout + version.stderr).splitlines()[0].strip()
    version = version.replace("This is ", "")

    work = tempfile.mkdtemp(prefix="route-gen-")
    procs = []

    def stop(signum, frame):
        raise SystemExit("stopped by signal %d" % signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for port in BACKENDS:
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", HOST,
                 "--save", "", "--appendonly", "no", "--daemonize", "no",
                 "--dir", work],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        for port in BACKENDS:
            deadline = time.time() + 10
            while True:
                try:
                    if command(port, "PING") == b"PONG":
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("redis-server on %d did not start" % port)
                time.sleep(0.05)
            command(port, "FLUSHALL")

        conf = os.path.join(work, "nutcracker.yml")
        with open(conf, "w") as f:
            f.write(yaml_pools(defs))
        procs.append(subprocess.Popen(
            ["nutcracker", "-c", conf, "-s", str(STATS_PORT), "-a", HOST,
             "-o", os.path.join(work, "nutcracker.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))

        placements = []
        for i, (name, h, dist, tag, servers) in enumerate(defs):
            s, r = connect(POOL_PORT_BASE + i)
            try:
                s.sendall(b"".join(resp(b"SET", k, b"1") for k in ks))
                for k in ks:
                    if r.reply() != b"OK":
                        raise SystemExit("SET %r via %s failed" % (k, name))
            finally:
                s.close()
            where = {}
            for index, (backend, _) in enumerate(servers):
                for k in command(BACKENDS[backend], "KEYS", "*"):
                    where[k] = index
            for port in BACKENDS:
                command(port, "FLUSHALL")
            missing = [k for k in ks if k not in where]
            if missing or len(where) != len(ks):
                raise SystemExit("pool %s: %d keys not found" % (name, len(missing)))
            placements.append("".join(str(where[k]) for k in ks))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)

    with open(output, "w") as f:
        f.write("# Key placements recorded from twemproxy (%s, Debian package %s,\n"
                "# %s) through real redis-server %s backends on 127.0.0.1, by\n"
                "#   python3 crates/route/tests/golden/route_gen.py "
                "crates/route/tests/golden/route.txt\n"
                % (version, package_version("nutcracker"), os.uname().machine,
                   package_version("redis-server")))
        f.write("# key HEX            one key per line, in order\n"
                "# pool NAME HASH DISTRIBUTION TAG   TAG is the hash_tag in hex, or -\n"
                "# server SPEC        the pool's server lines, as written in nutcracker's YAML\n"
                "# placed DIGITS      per key, the index of the server holding it\n")
        for k in ks:
            f.write("key %s\n" % k.hex())
        for (name, h, dist, tag, servers), placed in zip(defs, placements):
            f.write("pool %s %s %s %s\n" % (name, h, dist, tag.encode().hex() if tag else "-"))
            for _, line in servers:
                f.write("server %s\n" % line)
            f.write("placed %s\n" % placed)


def package_version(package):
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                             capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
