#!/usr/bin/env bash
# Redis Cluster pool overhead: pipelined GET/SET through a ferrox pool
# fronting a 3-primary Redis Cluster, against a ketama pool of three
# standalone redis-servers, in the same run on the same machine; direct
# references: one standalone server, and redis-benchmark's own cluster
# mode straight to the cluster.
#
#   bench/cluster.sh   (N: requests per test, default 200000; ROUNDS:
#                       default 3; MTU: default 1500; P: pipeline depth,
#                       default 16)
#
# One namespace holds the clients and the six servers on the kernel
# stack; ferrox runs on DPDK af_packet behind a veth pair, one lcore:
#   kernel 198.18.0.1: redis-server x3 (7001-7003), cluster nodes x3
#                      (7201-7203), veth0 ── veth1 ferrox 198.18.0.2
#                      (22121: ketama pool, 22122: cluster pool)
# Needs root, hugepages, redis-server and redis-tools.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

NS=fxc$$
N=${N:-200000}
ROUNDS=${ROUNDS:-3}
MTU=${MTU:-1500}
P=${P:-16}
DIR=$(mktemp -d /tmp/ferrox-bench-cluster-XXXXXX)
# shellcheck source=bench/lib.sh
. bench/lib.sh

cargo build --release --locked -q -p ferrox-dataplane

setup_netns

for port in 7001 7002 7003; do start_redis "$port"; done
for port in 7201 7202 7203; do
  start_redis "$port" --cluster-enabled yes --cluster-config-file "$DIR/nodes-$port.conf"
done
wait_redis 7001 7002 7003 7201 7202 7203
in_ns redis-cli --cluster create 198.18.0.1:7201 198.18.0.1:7202 198.18.0.1:7203 \
  --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 100); do
  in_ns redis-cli -h 198.18.0.1 -p 7201 CLUSTER INFO | grep -q cluster_state:ok && break
  sleep 0.1
done

cat >"$DIR/ferrox.toml" <<'EOF'
[pools.ketama]
listen = "0.0.0.0:22121"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
timeout_ms = 2000
servers = ["198.18.0.1:7001:1", "198.18.0.1:7002:1", "198.18.0.1:7003:1"]

[pools.cluster]
listen = "0.0.0.0:22122"
protocol = "redis"
distribution = "redis_cluster"
timeout_ms = 2000
servers = ["198.18.0.1:7201:1"]
EOF
start_ferrox "$DIR/ferrox.toml"
for port in 22121 22122; do
  in_ns timeout 10 redis-cli -h 198.18.0.2 -p "$port" SET warmup 1 | grep -q OK \
    || { echo "no answer from ferrox:$port" >&2; cat "$DIR/ferrox.log" >&2; exit 1; }
done

# redis-benchmark --csv: "test","rps",...; prints "TEST rps p50 p99".
bench() { # label, redis-benchmark arguments
  local label=$1
  shift
  in_ns timeout 300 redis-benchmark -c 50 -n "$N" -r 100000 -P "$P" -t get,set --csv "$@" \
    | grep -E '^"(GET|SET)"' | tr -d '"' | awk -F, -v l="$label" '{print l, $1, $2, $5, $7}'
}

echo "# bench/cluster.sh: $(nproc) vCPUs, MTU $MTU, ferrox on net_af_packet (1 lcore), -P $P, 50 clients, N=$N"
echo "# target test rps p50_ms p99_ms"
for round in $(seq "$ROUNDS"); do
  echo "# round $round"
  out=$(
    bench direct-standalone -h 198.18.0.1 -p 7001
    bench direct-cluster --cluster -h 198.18.0.1 -p 7201
    bench ferrox-ketama -h 198.18.0.2 -p 22121
    bench ferrox-cluster -h 198.18.0.2 -p 22122
  )
  echo "$out"
  for test in SET GET; do
    awk -v t="$test" '$2 == t { rps[$1] = $3 }
      END { printf "ratio %s cluster/ketama %.2f  ferrox-cluster/direct-cluster %.2f\n", t,
            rps["ferrox-cluster"] / rps["ferrox-ketama"], rps["ferrox-cluster"] / rps["direct-cluster"] }' <<<"$out"
  done
done
# Redirections ferrox followed (none expected: the slot map was learnt at start).
in_ns redis-cli -h 198.18.0.2 -p 22122 INFO proxy | grep -E '^cluster_' || true
