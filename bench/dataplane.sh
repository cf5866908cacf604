#!/usr/bin/env bash
# End-to-end dataplane benchmark: ferrox (RESP echo on smoltcp over DPDK) on
# each virtual PMD, against redis-server on the kernel stack in the same run.
#
#   bench/dataplane.sh [pmd ...]     (default: af_xdp af_packet tap)
#
# Both paths cross one veth pair between namespaces (tap: the tap device):
#   fxb-c  (clients)  veth0 198.18.0.1 ── veth1 (ferrox on DPDK, 198.18.0.2)
#                     kv0   198.18.1.1 ── kv1 in fxb-k (redis-server, 198.18.1.2)
# Figures: ping-pong (1 client) rate and p50/p99, 50-client rate, the 50-client
# rate with 100 and with 10,000 idle connections open, and the dataplane's idle
# CPU over 10 s. Reported as ratios to the kernel reference where one exists.
# Every load is bounded (request counts and timeouts). Needs root, hugepages.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

PMDS=("$@")
[ ${#PMDS[@]} -gt 0 ] || PMDS=(af_xdp af_packet tap)
C=fxb-c$$
K=fxb-k$$
N_PINGPONG=${N_PINGPONG:-20000}
N_RATE=${N_RATE:-100000}
DP=target/release/ferrox-dataplane
DP_PID=""
REDIS_PID=""

cleanup() {
  [ -n "$DP_PID" ] && kill -INT "$DP_PID" 2>/dev/null && sleep 1
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null
  ip netns del "$C" 2>/dev/null || true
  ip netns del "$K" 2>/dev/null || true
}
trap cleanup EXIT

inc() { ip netns exec "$C" "$@"; }

cargo build --release --locked -q -p ferrox-dataplane

ip netns add "$C"
ip netns add "$K"
inc ip link set lo up
ip netns exec "$K" ip link set lo up
# Every run leaves ~10,000 client connections in TIME_WAIT towards the same
# address: give the clients the whole port range and let them reuse those.
inc sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
inc sysctl -qw net.ipv4.tcp_tw_reuse=1
ip link add kv0 netns "$C" type veth peer name kv1 netns "$K"
inc ip addr add 198.18.1.1/24 dev kv0
inc ip link set kv0 up
ip netns exec "$K" ip addr add 198.18.1.2/24 dev kv1
ip netns exec "$K" ip link set kv1 up
ip netns exec "$K" redis-server --bind 198.18.1.2 --port 6379 --save '' --appendonly no \
  --protected-mode no --maxclients 20000 --daemonize no --loglevel warning >/dev/null &
REDIS_PID=$!
sleep 0.5

# redis-benchmark --csv: "test","rps","avg","min","p50","p95","p99","max"
bench() { # host clients requests
  inc bash -c "ulimit -n 65536 2>/dev/null; timeout 120 redis-benchmark -h $1 -c $2 -n $3 -t ping_mbulk --csv" \
    | grep PING_MBULK | tr -d '"' | awk -F, '{printf "%.0f %s %s\n", $2, $5, $7}'
}

rate_with_idle() { # host idle-connections
  local holder out
  coproc HOLD { inc python3 bench/hold_connections.py "$2" "$1" 6379 120; }
  read -r -t 120 out <&"${HOLD[0]}" || true
  [ "${out:-}" = "held $2" ] || { echo "could not hold $2 connections: ${out:-}" >&2; exit 1; }
  holder=$(bench "$1" 50 "$N_RATE" | awk '{print $1}')
  exec {HOLD[1]}>&-
  wait "$HOLD_PID" 2>/dev/null || true
  echo "$holder"
}

wake() { # host port: median round trip (us) of a PING after 0.2 s idle
  inc python3 bench/idle_wake.py "$1" "$2" 20 0.2 | awk '{print $1}'
}

idle_cpu() { # pid: CPU-seconds used over 10 s of no traffic
  local t0 t1 hz
  hz=$(getconf CLK_TCK)
  t0=$(awk '{print $14 + $15}' "/proc/$1/stat")
  sleep 10
  t1=$(awk '{print $14 + $15}' "/proc/$1/stat")
  awk -v a="$t0" -v b="$t1" -v hz="$hz" 'BEGIN { printf "%.1f%%", (b - a) / hz / 10 * 100 }'
}

read -r k_pp k_p50 k_p99 < <(bench 198.18.1.2 1 "$N_PINGPONG")
read -r k_rate _ _ < <(bench 198.18.1.2 50 "$N_RATE")
k_idle100=$(rate_with_idle 198.18.1.2 100)
k_idle10k=$(rate_with_idle 198.18.1.2 10000)
k_wake=$(wake 198.18.1.2 6379)
printf '\n| path | ping-pong req/s | p50 ms | p99 ms | 50 clients req/s | +100 idle req/s | +10,000 idle req/s | 10k/100 | idle CPU | PING after 0.2 s idle (median us) |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
printf '| kernel stack (redis-server) | %s | %s | %s | %s | %s | %s | %.2f | n/a | %s |\n' \
  "$k_pp" "$k_p50" "$k_p99" "$k_rate" "$k_idle100" "$k_idle10k" "$(echo "$k_idle10k $k_idle100" | awk '{print $1/$2}')" "$k_wake"

for pmd in "${PMDS[@]}"; do
  case "$pmd" in
    tap) vdev="net_tap0,iface=fxtap0" ;;
    af_packet) vdev="net_af_packet0,iface=veth1" ;;
    af_xdp) vdev="net_af_xdp0,iface=veth1,start_queue=0,queue_count=1" ;;
    *) echo "unknown pmd $pmd" >&2; exit 2 ;;
  esac
  inc ip link del veth0 2>/dev/null || true
  if [ "$pmd" != tap ]; then
    inc ip link add veth0 type veth peer name veth1
    inc ip addr add 198.18.0.1/24 dev veth0
    inc ip link set veth0 up
    inc ip link set veth1 up
    # af_packet takes no frame over the MTU: no TSO from the kernel side.
    inc ethtool -K veth0 tso off >/dev/null
  fi
  # Not through `inc`: $! must be the dataplane itself (ip netns exec execs it).
  ip netns exec "$C" "$DP" --vdev "$vdev" --address 198.18.0.2/24 --memory-mb 512 --mbufs 32767 \
    --backlog 16384 --max-connections 20000 --file-prefix "fxb$$" >/dev/null 2>/tmp/ferrox-bench-dp.log &
  DP_PID=$!
  sleep 2
  if [ "$pmd" = tap ]; then
    inc ip addr add 198.18.0.1/24 dev fxtap0
    inc ip link set fxtap0 txqueuelen 10000 up
    sleep 1
  fi
  cpu=$(idle_cpu "$DP_PID")
  read -r pp p50 p99 < <(bench 198.18.0.2 1 "$N_PINGPONG")
  read -r rate _ _ < <(bench 198.18.0.2 50 "$N_RATE")
  idle100=$(rate_with_idle 198.18.0.2 100)
  idle10k=$(rate_with_idle 198.18.0.2 10000)
  wake_us=$(wake 198.18.0.2 6379)
  printf '| ferrox %s | %s (%.2fx) | %s | %s | %s (%.2fx) | %s | %s | %.2f | %s | %s |\n' "$pmd" \
    "$pp" "$(echo "$pp $k_pp" | awk '{print $1/$2}')" "$p50" "$p99" \
    "$rate" "$(echo "$rate $k_rate" | awk '{print $1/$2}')" "$idle100" "$idle10k" \
    "$(echo "$idle10k $idle100" | awk '{print $1/$2}')" "$cpu" "$wake_us"
  kill -INT "$DP_PID"
  wait "$DP_PID" || true
  DP_PID=""
  [ "$pmd" = tap ] || inc ip link del veth0
done
