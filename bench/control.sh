#!/usr/bin/env bash
# Control-plane figures: how long a configuration change takes to run on
# every dataplane core (the admin answer comes once it does), idle and
# under pipelined load, and how long a dead backend takes to leave its
# pool. (A ferroxctl command adds its own process start, a few ms.)
#
#   bench/control.sh     (CHANGES: changes per phase, default 40; root,
#                         hugepages reserved; release build)
#
# One namespace: three redis-server backends on the kernel side
# (198.18.0.1), ferrox-control with its dataplane on net_af_xdp (198.18.0.2,
# one lcore), redis-benchmark as the load.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

NS=fxb$$
CHANGES=${CHANGES:-40}
WORK=$(mktemp -d /tmp/ferrox-bench-control-XXXXXX)
SOCKET=$WORK/admin.sock
CTL=target/release/ferroxctl
PIDS=()
CONTROL_PID=""

cleanup() {
  set +e
  [ -n "$CONTROL_PID" ] && kill -INT "$CONTROL_PID" 2>/dev/null && wait "$CONTROL_PID" 2>/dev/null
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --locked -q -p ferrox-dataplane -p ferrox-control
in_ns() { ip netns exec "$NS" "$@"; }
ip netns add "$NS"
in_ns ip link set lo up
in_ns ip link add veth0 type veth peer name veth1
in_ns ip addr add 198.18.0.1/24 dev veth0
in_ns ip link set veth0 up
in_ns ip link set veth1 up
for port in 7001 7002 7003; do
  ip netns exec "$NS" redis-server --bind 198.18.0.1 --port "$port" --save '' --appendonly no \
    --protected-mode no --loglevel warning >/dev/null &
  PIDS+=("$!")
done
cat >"$WORK/ferrox.toml" <<EOF
[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
hash = "murmur"
auto_eject_hosts = true
server_failure_limit = 2
server_retry_timeout_ms = 1000
servers = ["198.18.0.1:7001:1", "198.18.0.1:7002:1", "198.18.0.1:7003:1"]
EOF
ip netns exec "$NS" target/release/ferrox-control --config "$WORK/ferrox.toml" --address 198.18.0.2/24 \
  --vdev net_af_xdp0,iface=veth1,start_queue=0,queue_count=1 --admin-socket "$SOCKET" \
  --region "bench-$$" --metrics off --health-interval-ms 100 -- --memory-mb 256 >"$WORK/control.log" 2>&1 &
CONTROL_PID=$!
for _ in $(seq 100); do
  [ "$(in_ns redis-cli -h 198.18.0.2 PING 2>/dev/null)" = PONG ] && break
  sleep 0.2
done

# CHANGES block/unblock pairs over one admin connection: each answer
# comes once every core runs the change (publish, every core's next loop,
# the engine's reconfiguration). Median and worst of the block requests.
changes() {
  /usr/bin/python3 - "$SOCKET" "$CHANGES" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
took = []
for i in range(int(sys.argv[2])):
    for cmd in ("block", "unblock"):
        t = time.perf_counter()
        f.write(json.dumps({"v": 1, "cmd": cmd, "command": "bench"}) + "\n")
        f.flush()
        answer = json.loads(f.readline())
        assert answer["ok"] and answer["result"]["applied"], answer
        if cmd == "block":
            took.append((time.perf_counter() - t) * 1000)
took.sort()
print("median %.2f ms, max %.2f ms over %d changes" % (took[len(took) // 2], took[-1], len(took)))
PY
}

echo "change to every core, idle:        $(changes)"
in_ns timeout 120 redis-benchmark -h 198.18.0.2 -t get,set -n 2000000 -c 50 -P 16 -r 100000 -q \
  >"$WORK/bench.log" 2>&1 &
BENCH=$!
PIDS+=("$BENCH")
sleep 1
echo "change to every core, under load:  $(changes)"
kill "$BENCH" 2>/dev/null || true

# A backend dies: time until the control process has ejected it (health
# checks every 100 ms, two failures).
t0=$(date +%s%N)
deadline=$((SECONDS + 10))
kill "${PIDS[2]}"
until $CTL --socket "$SOCKET" status --json | grep -q '"state": "ejected"'; do
  [ "$SECONDS" -lt "$deadline" ] || { echo "not ejected in 10 s" >&2; exit 1; }
  sleep 0.01
done
t1=$(date +%s%N)
echo "dead backend out of its pool after: $(((t1 - t0) / 1000000)) ms (health checks every 100 ms, 2 failures)"
