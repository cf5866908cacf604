#!/usr/bin/env python3
"""Wake-up latency: PING round trips on one connection after idle gaps.

  idle_wake.py HOST PORT ROUNDS GAP_SECONDS

Prints the median and the worst round trip in microseconds. The server has
gone idle during each gap, so this measures how fast it wakes for a frame.
"""
import socket
import statistics
import sys
import time


def main() -> None:
    host, port, rounds, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rtts = []
    for _ in range(rounds):
        time.sleep(gap)
        start = time.perf_counter()
        s.sendall(b"PING\r\n")
        assert s.recv(64) == b"+PONG\r\n"
        rtts.append((time.perf_counter() - start) * 1e6)
    print(f"{statistics.median(rtts):.0f} {max(rtts):.0f}")


if __name__ == "__main__":
    main()
