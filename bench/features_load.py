"""Load for bench/features.sh, from one process per connection, bounded in
time: pipelined GETs of keys drawn from a Zipf distribution (`zipf`), or
SETs and GETs of compressible JSON documents (`docs`). Prints the totals
as `ops=N seconds=S` (and `bytes=N`, the value bytes sent and received).

    features_load.py zipf HOST PORT --keys 100000 --s 1.1 --value 100
    features_load.py docs HOST PORT --size 4096
    features_load.py fill-zipf HOST PORT --keys 100000 --value 100
"""

import argparse
import bisect
import json
import multiprocessing
import random
import socket
import time


def command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def read_exactly(sock, n):
    got = 0
    while got < n:
        chunk = sock.recv(min(1 << 20, n - got))
        if not chunk:
            raise SystemExit("the proxy closed the connection")
        got += len(chunk)


def read_replies(sock, count, buf=b""):
    """Reads `count` RESP replies (simple, bulk or nil); returns leftover."""
    while count:
        while b"\r\n" not in buf:
            buf += sock.recv(1 << 20)
        line, _, rest = buf.partition(b"\r\n")
        if line[:1] == b"$" and line != b"$-1":
            n = int(line[1:]) + 2
            while len(rest) < n:
                rest += sock.recv(max(1 << 16, n - len(rest)))
            rest = rest[n:]
        elif line[:1] == b"-":
            raise SystemExit(f"error reply: {line!r}")
        buf = rest
        count -= 1
    return buf


def zipf_keys(n, s, rng, count):
    weights = [1.0 / (i + 1) ** s for i in range(n)]
    cumulative, total = [], 0.0
    for w in weights:
        total += w
        cumulative.append(total)
    return [bisect.bisect_left(cumulative, rng.random() * total) for _ in range(count)]


def doc(n, rng):
    items, text = [], ""
    while len(text) < n:
        items += [{"id": rng.randrange(10**6), "user": f"user{rng.randrange(1000)}",
                   "tags": ["cache", "redis", "proxy"], "score": rng.random()} for _ in range(n // 80 + 1)]
        text = json.dumps(items)
    return text[:n].encode()


def worker(args, wid, out):
    rng = random.Random(args.seed * 1000 + wid)
    sock = socket.create_connection((args.host, args.port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    batches = []
    if args.mode == "zipf":
        keys = zipf_keys(args.keys, args.s, rng, args.pipeline * 64)
        for i in range(0, len(keys), args.pipeline):
            batches.append((b"".join(command("GET", b"k:%d" % k) for k in keys[i:i + args.pipeline]),
                            args.pipeline))
    else:
        docs = [doc(args.size, rng) for _ in range(8)]
        for i in range(16):
            payload = b"".join(command("SET", b"doc:%d:%d" % (wid, j), docs[(i + j) % 8])
                               for j in range(args.pipeline // 2))
            payload += b"".join(command("GET", b"doc:%d:%d" % (wid, j)) for j in range(args.pipeline // 2))
            batches.append((payload, args.pipeline))
    ops = 0
    buf = b""
    deadline = time.monotonic() + args.seconds
    start = time.monotonic()
    i = 0
    while time.monotonic() < deadline:
        payload, n = batches[i % len(batches)]
        sock.sendall(payload)
        buf = read_replies(sock, n, buf)
        ops += n
        i += 1
    out.put((ops, time.monotonic() - start))


def fill(args):
    sock = socket.create_connection((args.host, args.port), timeout=30)
    value = b"v" * args.value
    for start in range(0, args.keys, 1000):
        batch = range(start, min(start + 1000, args.keys))
        sock.sendall(b"".join(command("SET", b"k:%d" % k, value) for k in batch))
        read_replies(sock, len(batch))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["zipf", "docs", "fill-zipf"])
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--s", type=float, default=1.1)
    p.add_argument("--value", type=int, default=100)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--pipeline", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.mode == "fill-zipf":
        fill(args)
        return
    out = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=worker, args=(args, w, out)) for w in range(args.conns)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=args.seconds + 60) for _ in procs]
    for proc in procs:
        proc.join(timeout=10)
    ops = sum(r[0] for r in results)
    seconds = max(r[1] for r in results)
    print(f"ops={ops} seconds={seconds:.2f} rate={ops / seconds:.0f}")


if __name__ == "__main__":
    main()
