"""A flood of pipelining Redis clients, every reply checked.

    flood.py HOST PORT CLIENTS DEPTH ROUNDS SEED

Opens CLIENTS connections all at once (none may be refused), holds them
all, then every client sends DEPTH requests at once (SET, GET and DEL of
four keys of its own, values from 1 byte to 16 KiB), ROUNDS times. Each reply must be its
request's answer by an in-order model of the client's keys, or ferrox's
overload refusal (which changes nothing). Prints `name=value` counts;
exits non-zero on the first wrong reply, a connection lost or refused, or
a reply missing after 120 s, naming the seed.
"""

import asyncio
import random
import resource
import sys
import time

OVERLOADED = b"-ERR ferrox: overloaded"
SIZES = [(1, 64)] * 16 + [(1000, 1500)] * 3 + [(4000, 16384)]


def command(*words):
    out = [b"*%d\r\n" % len(words)]
    for w in words:
        out.append(b"$%d\r\n%s\r\n" % (len(w), w))
    return b"".join(out)


async def reply(reader):
    line = await reader.readline()
    if not line.endswith(b"\r\n"):
        raise EOFError("the connection closed")
    if line[:1] == b"$":
        n = int(line[1:-2])
        if n < 0:
            return None
        return (await reader.readexactly(n + 2))[:-2]
    return line[:-2]


class Client:
    def __init__(self, index, seed):
        self.index = index
        self.rng = random.Random(seed * 1_000_003 + index)
        self.model = {}
        self.served = self.refused = 0

    async def connect(self, host, port):
        self.reader, self.writer = await asyncio.open_connection(host, port)

    async def round(self, depth):
        sent = []
        for j in range(depth):
            key = b"c%d:k%d" % (self.index, self.rng.randrange(4))
            op = self.rng.random()
            if op < 0.5:
                low, high = self.rng.choice(SIZES)
                value = (b"%d:%d:" % (self.index, j)).ljust(self.rng.randint(low, high), b"v")
                sent.append((b"SET", key, value))
            elif op < 0.9:
                sent.append((b"GET", key, None))
            else:
                sent.append((b"DEL", key, None))
        self.writer.write(b"".join(command(*[w for w in r if w is not None]) for r in sent))
        await self.writer.drain()
        for name, key, value in sent:
            got = await reply(self.reader)
            if got is not None and got.startswith(OVERLOADED):
                self.refused += 1
                continue
            self.served += 1
            if name == b"SET":
                expect = b"+OK"
                self.model[key] = value
            elif name == b"GET":
                expect = self.model.get(key)
            else:
                expect = b":1" if self.model.pop(key, None) is not None else b":0"
            if got != expect:
                shown = got if got is None else got[:60]
                raise AssertionError(f"client {self.index}: {name} {key} got {shown!r}")


async def main(host, port, clients, depth, rounds, seed):
    resource.setrlimit(resource.RLIMIT_NOFILE, (clients + 1024, clients + 1024))
    all_clients = [Client(i, seed) for i in range(clients)]
    started = time.time()
    await asyncio.gather(*(c.connect(host, port) for c in all_clients))
    connected = time.time()
    print(f"connect_s={connected - started:.2f}", flush=True)
    for _ in range(rounds):
        await asyncio.wait_for(asyncio.gather(*(c.round(depth) for c in all_clients)), 120)
    print(f"flood_s={time.time() - connected:.2f}")
    for c in all_clients:
        c.writer.close()
    print(f"served={sum(c.served for c in all_clients)}")
    print(f"refused={sum(c.refused for c in all_clients)}")


if __name__ == "__main__":
    host, port, clients, depth, rounds, seed = sys.argv[1:7]
    try:
        asyncio.run(main(host, int(port), int(clients), int(depth), int(rounds), int(seed)))
    except BaseException as e:
        print(f"flood failed (seed {seed}): {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
