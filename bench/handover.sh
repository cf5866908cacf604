#!/usr/bin/env bash
# Hot handover benchmark: the pause of `ferroxctl upgrade` with many open
# client connections, as the control process measures it and as a client
# sees it.
#
#   bench/handover.sh   (CONNS: idle client connections per run, default
#                        "1000 10000"; UPGRADES: upgrades per run, default 3;
#                        KEEP_LOG: a file to keep the processes' log in)
#
# One namespace holds the clients and two redis-server backends on the
# kernel side; ferrox-control runs the dataplane on DPDK af_xdp (PMD=af_xdp,
# the default: the port is reopened) or af_packet (PMD=af_packet: the
# successor's socket overlaps, nothing is lost) behind a veth pair, or on
# a tap held by the port holder (PMD=tap: frames wait in the tap, nothing
# is lost) (one lcore, MTU 1500), with 4 KiB socket buffers so that 10,000
# connections fit. For each CONNS, a holder opens that many connections
# (each answers one PING, then idles) and a probe client sends a PING every
# millisecond on a connection of its own; then the dataplane is upgraded
# UPGRADES times, alternating two copies of its binary. Figures per
# upgrade, from the handover board: connections exported and restored,
# the brownout (drain: requests in flight finish), the blackout (the old
# process freezes .. the new one receives its first frame), the whole
# pause (SIGUSR2 .. the new one committed) with its two halves, and the
# probe's longest wait for a PONG around it (which adds the client's
# retransmission of what was lost while the port was closed). Needs root,
# hugepages; not a pass/fail test. Then (THROUGHPUT=0 leaves it out) the
# GET throughput of restored and of fresh flows, before and after an
# upgrade (ROUNDS of each, default 3).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

NS=fxh$$
CONNS=${CONNS:-1000 10000}
UPGRADES=${UPGRADES:-3}
PMD=${PMD:-af_xdp}
case "$PMD" in
  af_xdp) VDEV=net_af_xdp0,iface=veth1,start_queue=0,queue_count=1,busy_budget=0 ;;
  af_packet) VDEV=net_af_packet0,iface=veth1,framecnt=4096 ;;
  tap) VDEV=net_tap0,iface=fxtap0 ;;
  *) echo "PMD is af_xdp, af_packet or tap, not $PMD" >&2; exit 2 ;;
esac
DIR=$(mktemp -d /tmp/ferrox-bench-handover-XXXXXX)
PIDS=()
CONTROL_PID=""

cleanup() {
  [ -n "$CONTROL_PID" ] && kill -INT "$CONTROL_PID" 2>/dev/null && sleep 3
  [ -n "$CONTROL_PID" ] && kill -KILL "$CONTROL_PID" 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  # KEEP_LOG=FILE keeps the control process's log (both dataplanes' too).
  [ -n "${KEEP_LOG:-}" ] && cp "$DIR/control.log" "$KEEP_LOG"
  rm -rf "$DIR"
}
trap cleanup EXIT

in_ns() { ip netns exec "$NS" "$@"; }

cargo build --release --locked -q -p ferrox-dataplane -p ferrox-control
for build in a b; do cp target/release/ferrox-dataplane "$DIR/ferrox-dataplane-$build"; done

ip netns add "$NS"
in_ns ip link set lo up
in_ns sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
start_backends() {
  for port in 7001 7002; do
    ip netns exec "$NS" redis-server --bind 198.18.0.1 --port "$port" --save '' --appendonly no \
      --protected-mode no --daemonize no --loglevel warning >/dev/null &
    PIDS+=("$!")
  done
}
if [ "$PMD" != tap ]; then
  in_ns ip link add veth0 type veth peer name veth1
  in_ns ip addr add 198.18.0.1/24 dev veth0
  in_ns ip link set veth0 up
  in_ns ip link set veth1 up
  start_backends
fi

cat >"$DIR/ferrox.toml" <<'EOF'
[pools.bench]
listen = "0.0.0.0:6379"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
timeout_ms = 2000
backlog = 16384
servers = ["198.18.0.1:7001:1", "198.18.0.1:7002:1"]
EOF

ip netns exec "$NS" target/release/ferrox-control --config "$DIR/ferrox.toml" \
  --address 198.18.0.2/24 --vdev "$VDEV" \
  --lcores 0 --admin-socket "$DIR/admin.sock" --region "bench-handover-$$" --metrics off \
  --dataplane "$DIR/ferrox-dataplane-a" -- \
  --memory-mb 256 --mtu 1500 --client-buffer-kib 4 --client-send-buffer-kib 4 \
  --max-connections 30000 --socket-pool-clients 12000 --drain-ms 200 \
  >"$DIR/control.log" 2>&1 &
CONTROL_PID=$!
if [ "$PMD" = tap ]; then
  # The port holder makes the tap; the backends listen on its kernel side.
  for _ in $(seq 300); do in_ns ip link show fxtap0 >/dev/null 2>&1 && break; sleep 0.1; done
  in_ns ip addr add 198.18.0.1/24 dev fxtap0
  in_ns ip link set fxtap0 txqueuelen 10000 up
  start_backends
fi
for _ in $(seq 60); do
  in_ns timeout 2 redis-cli -h 198.18.0.2 -p 6379 PING 2>/dev/null | grep -q PONG && break
  sleep 0.5
done
in_ns timeout 2 redis-cli -h 198.18.0.2 -p 6379 PING | grep -q PONG \
  || { echo "ferrox did not answer" >&2; tail -20 "$DIR/control.log" >&2; exit 1; }

cat >"$DIR/hold.py" <<'PY'
import socket, sys
n = int(sys.argv[1])
socks = []
for _ in range(n):
    s = socket.create_connection(("198.18.0.2", 6379), timeout=30)
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    socks.append(s)
for s in socks:
    assert s.recv(64).startswith(b"+PONG")
print("ready", flush=True)
sys.stdin.readline()
# Each connection still works after the upgrades.
for s in socks:
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
bad = sum(1 for s in socks if not s.recv(64).startswith(b"+PONG"))
print(f"after: {n - bad} of {n} connections answered", flush=True)
PY
cat >"$DIR/probe.py" <<'PY'
import socket, sys, time
# A PING every millisecond for argv[1] seconds; the longest wait for a PONG.
s = socket.create_connection(("198.18.0.2", 6379), timeout=30)
worst, end = 0.0, time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t = time.monotonic()
    s.sendall(b"*1\r\n$4\r\nPING\r\n")
    assert s.recv(64).startswith(b"+PONG")
    worst = max(worst, time.monotonic() - t)
    time.sleep(0.001)
print(f"{worst * 1000:.1f}", flush=True)
PY

printf '%-12s %-9s %-9s %-12s %-12s %-10s %-10s %-10s %-12s\n' connections exported restored brownout_ms blackout_ms pause_ms hand_ms take_ms probe_max_ms
build=b
for n in $CONNS; do
  coproc HOLD { in_ns bash -c "ulimit -n $((n + 256)); exec timeout 600 /usr/bin/python3 $DIR/hold.py $n"; }
  read -r ready <&"${HOLD[0]}" || true
  [ "$ready" = ready ] || { echo "could not hold $n connections" >&2; tail -20 "$DIR/control.log" >&2; exit 1; }
  for _ in $(seq "$UPGRADES"); do
    in_ns timeout 300 /usr/bin/python3 "$DIR/probe.py" 3 >"$DIR/probe.out" &
    probe=$!
    sleep 0.5
    done_json=$(in_ns target/release/ferroxctl --socket "$DIR/admin.sock" upgrade \
      --binary "$DIR/ferrox-dataplane-$build" --json --timeout-ms 30000)
    wait "$probe" || true
    probe_ms=$(cat "$DIR/probe.out" 2>/dev/null || echo "?")
    /usr/bin/python3 - "$n" "$probe_ms" <<PY
import json, sys
d = json.loads('''$done_json''')
opt = lambda v: "-" if v is None else f"{v:.1f}"
print(f"{sys.argv[1]:<12} {d['exported']:<9} {d['restored']:<9} {opt(d['brownout_ms']):<12} "
      f"{opt(d['blackout_ms']):<12} {d['pause_ms']:<10.1f} {d['hand_over_ms']:<10.1f} "
      f"{d['take_over_ms']:<10.1f} {sys.argv[2]:<12}", end=" ")
PY
    echo
    build=$([ "$build" = a ] && echo b || echo a)
  done
  echo >&"${HOLD[1]}"
  read -r after <&"${HOLD[0]}" || after="?"
  echo "  $n idle connections: $after"
  wait "$HOLD_PID" 2>/dev/null || true
done
echo "$PMD, MTU 1500, 1 dataplane lcore, $(nproc) vCPU; pause = SIGUSR2 to the old dataplane .. the new one committed"

# ---- throughput before and after an upgrade ---------------------------------
# Restored flows: one redis-benchmark (GET, 50 connections, pipelines of
# 16) runs across an upgrade; its rate is read off the backends' own
# command counters over 5 s before and 5 s after (its connections are the
# restored ones, their segments translated). Fresh flows: the same
# benchmark on new connections, before and after another upgrade.
[ "${THROUGHPUT:-1}" = 1 ] || exit 0
served() { # commands the backends processed so far
  local total=0 b n
  for b in 7001 7002; do
    n=$(in_ns timeout 5 redis-cli -h 198.18.0.1 -p "$b" INFO stats | tr -d '\r' \
      | sed -n 's/^total_commands_processed://p')
    total=$((total + n))
  done
  echo "$total"
}
rate_over() { # seconds -> requests/s the backends saw
  local a b
  a=$(served)
  sleep "$1"
  b=$(served)
  echo $(((b - a) / $1))
}
upgrade_quietly() {
  in_ns target/release/ferroxctl --socket "$DIR/admin.sock" upgrade \
    --binary "$DIR/ferrox-dataplane-$build" --json --timeout-ms 30000 >/dev/null
  build=$([ "$build" = a ] && echo b || echo a)
}
bench_get() { # -n requests -> requests/s redis-benchmark reports
  in_ns timeout 120 redis-benchmark -h 198.18.0.2 -p 6379 -t get -P 16 -c 50 -r 100000 -n "$1" -q 2>/dev/null \
    | tr '\r' '\n' | sed -n 's/^GET: \([0-9.]*\) requests per second.*/\1/p' | tail -n 1
}
for round in $(seq "${ROUNDS:-3}"); do
  echo "round $round:"
  in_ns timeout 60 redis-benchmark -h 198.18.0.2 -p 6379 -t get -P 16 -c 50 -r 100000 -n 100000000 -q \
    >/dev/null 2>&1 &
  long=$!
  sleep 2
  before=$(rate_over 5)
  upgrade_quietly
  sleep 1
  after=$(rate_over 5)
  kill "$long" 2>/dev/null || true
  wait "$long" 2>/dev/null || true
  fresh_before=$(bench_get 1000000)
  upgrade_quietly
  fresh_after=$(bench_get 1000000)
  /usr/bin/python3 - "$before" "$after" "$fresh_before" "$fresh_after" <<'PY'
import sys
b, a, fb, fa = (float(x) for x in sys.argv[1:])
print(f"restored flows (one benchmark across an upgrade): {b:,.0f} -> {a:,.0f} GET/s ({a / b:.3f}x)")
print(f"fresh flows (a new benchmark after an upgrade):   {fb:,.0f} -> {fa:,.0f} GET/s ({fa / fb:.3f}x)")
PY
done

