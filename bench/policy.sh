#!/usr/bin/env bash
# Access-layer policy overhead: pipelined GET/SET through a ferrox pool with
# a user (ACL rules checked on every command and key), two rate limits (by
# client and by command, never reached) and validation rules (key pattern,
# value size, expiry) against a pool of the same servers without any, in
# the same run.
#
#   bench/policy.sh    (N: requests per test, default 200000; ROUNDS:
#                       default 3; MTU: default 1500; P: pipeline depth,
#                       default 16)
#
# One namespace holds the clients and three redis-servers on the kernel
# stack; ferrox runs on DPDK af_packet behind a veth pair, one lcore:
#   kernel 198.18.0.1: redis-server x3 (7001-7003), veth0 ── veth1 ferrox
#                      198.18.0.2 (22121: plain pool, 22122: policy pool)
# Needs root, hugepages, redis-server and redis-tools.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

NS=fxpol$$
N=${N:-200000}
ROUNDS=${ROUNDS:-3}
MTU=${MTU:-1500}
P=${P:-16}
DIR=$(mktemp -d /tmp/ferrox-bench-policy-XXXXXX)
# shellcheck source=bench/lib.sh
. bench/lib.sh

cargo build --release --locked -q -p ferrox-dataplane

setup_netns

for port in 7001 7002 7003; do start_redis "$port"; done
wait_redis 7001 7002 7003

cat >"$DIR/ferrox.toml" <<'TOML'
[pools.plain]
listen = "0.0.0.0:22121"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
timeout_ms = 2000
servers = ["198.18.0.1:7001:1", "198.18.0.1:7002:1", "198.18.0.1:7003:1"]

[pools.policy]
listen = "0.0.0.0:22122"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
timeout_ms = 2000
servers = ["198.18.0.1:7001:1", "198.18.0.1:7002:1", "198.18.0.1:7003:1"]
[pools.policy.validate]
key_patterns = ["key:*"]
max_key_bytes = 64
max_value_bytes = "1 KiB"
max_keys = 100
[[pools.policy.rate_limits]]
by = "client"
requests = 100000000
per_ms = 1000
[[pools.policy.rate_limits]]
by = "command"
commands = ["SET"]
requests = 100000000
bytes = "100 GiB"
per_ms = 1000

[[users]]
name = "app"
password = "secret"
pools = ["policy"]
acl = "+@read +@write +@connection -@dangerous ~key:*"
TOML
start_ferrox "$DIR/ferrox.toml"
in_ns timeout 10 redis-cli -h 198.18.0.2 -p 22121 SET key:warmup 1 | grep -q OK \
  || { echo "no answer from the plain pool" >&2; cat "$DIR/ferrox.log" >&2; exit 1; }
in_ns timeout 10 redis-cli -h 198.18.0.2 -p 22122 --user app --pass secret SET key:warmup 1 2>/dev/null | grep -q OK \
  || { echo "no answer from the policy pool" >&2; cat "$DIR/ferrox.log" >&2; exit 1; }

# redis-benchmark --csv: "test","rps",...; prints "TARGET TEST rps p50 p99".
bench() { # label, redis-benchmark arguments
  local label=$1
  shift
  in_ns timeout 300 redis-benchmark -c 50 -n "$N" -r 100000 -P "$P" -t get,set --csv "$@" 2>/dev/null \
    | grep -E '^"(GET|SET)"' | tr -d '"' | awk -F, -v l="$label" '{print l, $1, $2, $5, $7}'
}

echo "# bench/policy.sh: $(nproc) vCPUs, MTU $MTU, ferrox on net_af_packet (1 lcore), -P $P, 50 clients, N=$N"
echo "# target test rps p50_ms p99_ms (redis-benchmark's keys are key:__rand_int__)"
for round in $(seq "$ROUNDS"); do
  echo "# round $round"
  # Which pool goes first alternates, so a drift in the machine's speed
  # does not favour one.
  out=$(
    if ((round % 2)); then
      bench plain -h 198.18.0.2 -p 22121
      bench policy -h 198.18.0.2 -p 22122 --user app -a secret
    else
      bench policy -h 198.18.0.2 -p 22122 --user app -a secret
      bench plain -h 198.18.0.2 -p 22121
    fi
  )
  echo "$out"
  for test in SET GET; do
    awk -v t="$test" '$2 == t { rps[$1] = $3 }
      END { printf "ratio %s policy/plain %.3f\n", t, rps["policy"] / rps["plain"] }' <<<"$out"
  done
done
in_ns redis-cli -h 198.18.0.2 -p 22122 --user app --pass secret INFO stats 2>/dev/null \
  | grep -E '^total_error_replies' || true
