"""Key placement as twemproxy (and so ferrox) decides it, for the soak's
final check that every key sits on exactly the server the router names.

A Python copy of ferrox's route crate for the distributions and hashes the
soak configures: ketama and modula over twemproxy's hash functions (all but
hsieh and jenkins). `self_test` checks it against the crate's golden
vectors (tests/golden: hashes from twemproxy's C code, placements recorded
from nutcracker itself) before a soak trusts it.
"""

import bisect
import hashlib
import struct
import zlib

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF


def _signed32(b):
    """A key byte as C's signed char converts it to a 32-bit unsigned."""
    return b if b < 0x80 else (b - 256) & MASK32


def one_at_a_time(key):
    h = 0
    for b in key:
        h = (h + _signed32(b)) & MASK32
        h = (h + (h << 10)) & MASK32
        h ^= h >> 6
    h = (h + (h << 3)) & MASK32
    h ^= h >> 11
    return (h + (h << 15)) & MASK32


def md5(key):
    return struct.unpack("<I", hashlib.md5(key).digest()[:4])[0]


def _crc16_table():
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
        table.append(crc)
    return table


_CRC16 = _crc16_table()


def crc16(key):
    crc = 0
    for b in key:
        crc = ((crc << 8) ^ _CRC16[((crc >> 8) ^ b) & 0xFF]) & MASK32
    return crc


def crc32(key):
    return ((zlib.crc32(key) & MASK32) >> 16) & 0x7FFF


def crc32a(key):
    return zlib.crc32(key) & MASK32


def fnv1_64(key):
    h = 0xCBF29CE484222325
    for b in key:
        h = (h * 0x100000001B3) & MASK64
        h ^= b if b < 0x80 else (b - 256) & MASK64
    return h & MASK32


def _fnv1a32(key, init, prime):
    h = init
    for b in key:
        h ^= _signed32(b)
        h = (h * prime) & MASK32
    return h


def fnv1a_64(key):
    return _fnv1a32(key, 0xCBF29CE484222325 & MASK32, 0x100000001B3 & MASK32)


def fnv1a_32(key):
    return _fnv1a32(key, 0x811C9DC5, 0x01000193)


def fnv1_32(key):
    h = 0x811C9DC5
    for b in key:
        h = (h * 0x01000193) & MASK32
        h ^= _signed32(b)
    return h


def murmur(key):
    m = 0x5BD1E995
    n = len(key)
    h = ((0xDEADBEEF * n) & MASK32) ^ n
    whole = n - n % 4
    for i in range(0, whole, 4):
        k = struct.unpack_from("<I", key, i)[0]
        k = (k * m) & MASK32
        k ^= k >> 24
        k = (k * m) & MASK32
        h = ((h * m) & MASK32) ^ k
    tail = key[whole:]
    if tail:
        for i, b in enumerate(tail):
            h ^= b << (8 * i)
        h = (h * m) & MASK32
    h ^= h >> 13
    h = (h * m) & MASK32
    return h ^ (h >> 15)


HASHES = {
    "one_at_a_time": one_at_a_time,
    "md5": md5,
    "crc16": crc16,
    "crc32": crc32,
    "crc32a": crc32a,
    "fnv1_64": fnv1_64,
    "fnv1a_64": fnv1a_64,
    "fnv1_32": fnv1_32,
    "fnv1a_32": fnv1a_32,
    "murmur": murmur,
}
# Column order of golden/hash.txt (twemproxy's order).
HASH_COLUMNS = ["one_at_a_time", "md5", "crc16", "crc32", "crc32a", "fnv1_64",
                "fnv1a_64", "fnv1_32", "fnv1a_32", "hsieh", "murmur", "jenkins"]


def hashtag(key, tag):
    """The part of `key` hashed under a two-byte hash tag (ferrox's
    `route::hashtag`): between the first tag[0] and the first tag[1] after
    it, or the whole key when that is absent or empty."""
    if not tag:
        return key
    open_at = key.find(tag[0:1])
    if open_at < 0:
        return key
    inside = key[open_at + 1:]
    close = inside.find(tag[1:2])
    if close <= 0:
        return key
    return inside[:close]


def server_name(spec):
    """(name, weight) of a twemproxy `host:port:weight [name]` line."""
    address, _, name = spec.partition(" ")
    head, weight = address.rsplit(":", 1)
    host, port = head.rsplit(":", 1)
    if not name:
        name = host if int(port) == 11211 else head
    return name, int(weight)


def _f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def _ketama_points(weight, total, live):
    pct = _f32(_f32(weight) / _f32(total))
    share = _f32(_f32(_f32(pct * 160.0) / 4.0) * _f32(live))
    floored = int(_f32(share + 0.0000000001))
    return floored * 4


class Table:
    """Where a pool's keys go when every server is live."""

    def __init__(self, hash_name, distribution, tag, servers):
        if hash_name not in HASHES:
            raise ValueError(f"hash {hash_name!r} is not implemented here")
        self.hash = HASHES[hash_name]
        self.distribution = distribution
        self.tag = tag
        # (name, weight, index in the caller's list), twemproxy's order.
        members = [(n.encode(), w, i) for i, (n, w) in enumerate(servers)]
        members.sort(key=lambda m: (len(m[0]), m[0]))
        if distribution == "ketama":
            total = sum(w for _, w, _ in members)
            points = []
            for name, weight, index in members:
                for group in range(_ketama_points(weight, total, len(members)) // 4):
                    digest = hashlib.md5(name + b"-" + str(group).encode()).digest()
                    for j in range(4):
                        points.append((struct.unpack_from("<I", digest, 4 * j)[0], index))
            points.sort(key=lambda p: p[0])
            self.points = [p for p, _ in points]
            self.owners = [s for _, s in points]
        elif distribution == "modula":
            self.slots = [index for _, weight, index in members for _ in range(weight)]
        else:
            raise ValueError(f"distribution {distribution!r} is not implemented here")

    def hash_key(self, key):
        key = hashtag(key, self.tag)
        return self.hash(key) if key else 0

    def server_for(self, key):
        h = self.hash_key(key)
        if self.distribution == "ketama":
            at = bisect.bisect_left(self.points, h)
            return self.owners[at if at < len(self.points) else 0]
        return self.slots[h % len(self.slots)]


def self_test(golden_dir):
    """Checks the hashes against twemproxy's C code and the placements
    against nutcracker's, from the golden vectors. Returns (hashes checked,
    placements checked); raises AssertionError on the first difference."""
    hashes = 0
    with open(f"{golden_dir}/hash.txt") as f:
        for line in f:
            if line.startswith("#"):
                continue
            fields = line.rstrip("\n").split(" ")
            key = bytes.fromhex(fields[0])
            for name, want in zip(HASH_COLUMNS, fields[1:]):
                if name in HASHES:
                    got = HASHES[name](key)
                    assert got == int(want, 16), f"{name}({key!r}) = {got:08x}, twemproxy {want}"
                    hashes += 1
    keys, pools = [], []
    with open(f"{golden_dir}/route.txt") as f:
        for line in f:
            if line.startswith("#"):
                continue
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "key":
                keys.append(bytes.fromhex(rest))
            elif kind == "pool":
                name, hash_name, distribution, tag = rest.split(" ")
                pools.append({"name": name, "hash": hash_name, "dist": distribution,
                              "tag": None if tag == "-" else bytes.fromhex(tag),
                              "servers": [], "placed": ""})
            elif kind == "server":
                pools[-1]["servers"].append(server_name(rest))
            elif kind == "placed":
                pools[-1]["placed"] = rest
    placements = 0
    for pool in pools:
        if pool["hash"] not in HASHES or pool["dist"] not in ("ketama", "modula"):
            continue
        table = Table(pool["hash"], pool["dist"], pool["tag"], pool["servers"])
        for key, want in zip(keys, pool["placed"]):
            got = table.server_for(key)
            assert got == int(want), (
                f"pool {pool['name']}: key {key[:40]!r} on server {got}, nutcracker {want}")
            placements += 1
    assert hashes > 5000 and placements > 10000, (hashes, placements)
    return hashes, placements
