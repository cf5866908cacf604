"""Holds many idle Redis connections, opened as fast as one client can.

    hold.py HOST PORT CONNECTIONS

Opens CONNECTIONS connections at once (asyncio, no pacing), sends one
PING on each and checks its +PONG, then prints `held=N connect_s=S` and
holds them until a line arrives on stdin; then every connection must
still answer a PING, and all close. Exits non-zero, saying why, on a
connection refused, reset or lost, or a reply missing after 60 s.
"""

import asyncio
import resource
import sys
import time

PING = b"*1\r\n$4\r\nPING\r\n"


async def ping(reader, writer):
    writer.write(PING)
    await writer.drain()
    line = await reader.readline()
    if line != b"+PONG\r\n":
        raise AssertionError(f"PING answered {line!r}")


async def open_one(host, port):
    reader, writer = await asyncio.open_connection(host, port)
    await ping(reader, writer)
    return reader, writer


async def main(host, port, count):
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 256, count + 256))
    started = time.time()
    conns = await asyncio.wait_for(
        asyncio.gather(*(open_one(host, port) for _ in range(count))), 60
    )
    print(f"held={len(conns)} connect_s={time.time() - started:.2f}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await asyncio.wait_for(asyncio.gather(*(ping(r, w) for r, w in conns)), 60)
    for _, writer in conns:
        writer.close()
    print(f"closed={len(conns)}", flush=True)


if __name__ == "__main__":
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        asyncio.run(main(host, port, count))
    except BaseException as e:
        print(f"hold failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
