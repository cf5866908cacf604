#!/usr/bin/env python3
"""Opens N TCP connections to HOST:PORT and holds them idle.

Prints "held N" once all are open, then waits until stdin closes or the time
limit passes, and closes them. Used by bench/dataplane.sh to measure request
rate with many idle connections open.
"""
import resource
import socket
import sys
import time


def main() -> None:
    count, host, port, limit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    held = []
    deadline = time.monotonic() + limit
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=10)
        held.append(s)
    # Prove they are live: one request on the first and the last.
    for s in (held[0], held[-1]):
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
    print(f"held {len(held)}", flush=True)
    while time.monotonic() < deadline:
        if sys.stdin.readline() == "":
            break
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
