#!/usr/bin/env bash
# Compression and the hot-key cache against the same pool without them,
# in the same run, alternating which goes first:
#
#   0. The most skewed load: redis-benchmark's GETs of one key (100 bytes),
#      50 clients, pipelines of 16, through the plain and the cached pool.
#   1. Zipf-skewed GETs (100,000 keys of 100 bytes, s = 1.1: a few very hot
#      keys) through a plain pool and a pool with a hot-key cache: ferrox's
#      GETs per second, and how many GETs reached the servers.
#   2. SETs and GETs of compressible JSON documents (1, 4, 16 and 64 KiB)
#      through a plain pool, an lz4 pool and a zstd pool: requests per
#      second, bytes the servers received, the compression ratio and the
#      time ferrox spent compressing and decompressing (its INFO).
#
#   bench/features.sh   (ROUNDS: default 3; LOAD_SECONDS: per load, default 5;
#                        MTU: default 1500; CONNS: default 4; SCENARIOS:
#                        default "one zipf docs")
#
# One namespace holds the clients (bench/features_load.py, a process per
# connection) and three redis-servers on the kernel stack; ferrox runs on
# DPDK af_packet behind a veth pair, one lcore. Needs root, hugepages,
# redis-server and redis-tools.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

NS=fxfeat$$
ROUNDS=${ROUNDS:-3}
SECONDS_EACH=${LOAD_SECONDS:-5}
MTU=${MTU:-1500}
CONNS=${CONNS:-4}
SCENARIOS=${SCENARIOS:-one zipf docs}
DIR=$(mktemp -d /tmp/ferrox-bench-features-XXXXXX)
# shellcheck source=bench/lib.sh
. bench/lib.sh

cargo build --release --locked -q -p ferrox-dataplane

setup_netns
for port in 7001 7002 7003; do start_redis "$port"; done
wait_redis 7001 7002 7003

pool() { # name port [extra table]
  cat <<TOML
[pools.$1]
listen = "0.0.0.0:$2"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
timeout_ms = 2000
servers = ["198.18.0.1:7001:1", "198.18.0.1:7002:1", "198.18.0.1:7003:1"]
${3:-}
TOML
}
{
  pool plain 22121
  pool hot 22122 '[pools.hot.hot_key_cache]
min_rate = 200
memory = "64 MiB"'
  pool lz4 22123 '[pools.lz4.compression]
algorithm = "lz4"
min_size = 512'
  pool zstd 22124 '[pools.zstd.compression]
algorithm = "zstd"
level = 1
min_size = 512'
} >"$DIR/ferrox.toml"
start_ferrox "$DIR/ferrox.toml"
in_ns timeout 10 redis-cli -h 198.18.0.2 -p 22121 PING | grep -q PONG \
  || { echo "no answer from ferrox" >&2; cat "$DIR/ferrox.log" >&2; exit 1; }

load() { in_ns timeout $((SECONDS_EACH + 120)) /usr/bin/python3 bench/features_load.py "$@" \
  --seconds "$SECONDS_EACH" --conns "$CONNS"; }
field() { sed -n "s/.*\\b$1=\\([0-9.]*\\).*/\\1/p"; }
servers_stat() { # INFO section, field: summed over the three servers
  local sum=0 port v
  for port in 7001 7002 7003; do
    v=$(in_ns redis-cli -h 198.18.0.1 -p "$port" INFO "$1" | tr -d '\r' \
      | sed -n "s/^$2:\\(calls=\\)\\{0,1\\}\\([0-9]*\\).*/\\2/p")
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
proxy_stat() { # port, field of ferrox's INFO proxy section
  in_ns redis-cli -h 198.18.0.2 -p "$1" INFO proxy | tr -d '\r' | sed -n "s/^$2:\\(.*\\)/\\1/p"
}

echo "# bench/features.sh: $(nproc) vCPUs, MTU $MTU, ferrox on net_af_packet (1 lcore), $CONNS client processes, ${SECONDS_EACH}s a load"
in_ns /usr/bin/python3 bench/features_load.py fill-zipf 198.18.0.2 22121 --keys 100000 --value 100

if [[ " $SCENARIOS " == *" one "* ]]; then
  in_ns redis-cli -h 198.18.0.2 -p 22121 SET key:__rand_int__ "$(head -c 100 /dev/zero | tr '\0' v)" >/dev/null
  echo "# one key: pool GET/s p50_ms p99_ms server_GETs"
  for round in $(seq "$ROUNDS"); do
    order=(plain:22121 hot:22122)
    ((round % 2)) || order=(hot:22122 plain:22121)
    for entry in "${order[@]}"; do
      name=${entry%%:*} port=${entry##*:}
      before=$(servers_stat commandstats cmdstat_get)
      line=$(in_ns timeout 300 redis-benchmark -h 198.18.0.2 -p "$port" -c 50 -n 1000000 -P 16 -t get --csv \
        2>/dev/null | grep '^"GET"' | tr -d '"')
      served=$(($(servers_stat commandstats cmdstat_get) - before))
      awk -F, -v r="$round" -v n="$name" -v s="$served" \
        '{ printf "round %d %-5s %9.0f %6s %6s %9d\n", r, n, $2, $5, $7, s }' <<<"$line"
    done
  done
fi

[[ " $SCENARIOS " == *" zipf "* ]] && echo "# zipf: pool GET/s server_GETs server_share hit_ratio"
for round in $(seq "$ROUNDS"); do
  [[ " $SCENARIOS " == *" zipf "* ]] || break
  order=(plain:22121 hot:22122)
  ((round % 2)) || order=(hot:22122 plain:22121)
  for entry in "${order[@]}"; do
    name=${entry%%:*} port=${entry##*:}
    before=$(servers_stat commandstats cmdstat_get)
    out=$(load zipf 198.18.0.2 "$port" --keys 100000 --s 1.1 --pipeline 32 --seed "$round")
    served=$(($(servers_stat commandstats cmdstat_get) - before))
    ops=$(field ops <<<"$out")
    rate=$(field rate <<<"$out")
    hit=$([ "$name" = hot ] && proxy_stat "$port" cache_hit_ratio || echo -)
    awk -v r="$round" -v n="$name" -v rate="$rate" -v s="$served" -v o="$ops" -v h="$hit" \
      'BEGIN { printf "round %d %-5s %9.0f %9d %6.3f %s\n", r, n, rate, s, s / o, h }'
  done
done

[[ " $SCENARIOS " == *" docs "* ]] && echo "# docs: size pool req/s server_input_MiB ratio compression_ms (per request)"
for size in 1024 4096 16384 65536; do
  [[ " $SCENARIOS " == *" docs "* ]] || break
  for round in $(seq "$ROUNDS"); do
    order=(plain:22121 lz4:22123 zstd:22124)
    ((round % 2)) || order=(zstd:22124 lz4:22123 plain:22121)
    for entry in "${order[@]}"; do
      name=${entry%%:*} port=${entry##*:}
      for p in 7001 7002 7003; do in_ns redis-cli -h 198.18.0.1 -p "$p" FLUSHALL >/dev/null; done
      before=$(servers_stat stats total_net_input_bytes)
      ms_before=$(proxy_stat "$port" compression_ms)
      out=$(load docs 198.18.0.2 "$port" --size "$size" --pipeline 16 --seed "$round")
      input=$(($(servers_stat stats total_net_input_bytes) - before))
      ratio=$(proxy_stat "$port" compression_ratio)
      ms=$(proxy_stat "$port" compression_ms)
      [ -n "$ms" ] && ms=$((ms - ${ms_before:-0}))
      awk -v z="$size" -v r="$round" -v n="$name" -v rate="$(field rate <<<"$out")" -v i="$input" \
        -v q="${ratio:--}" -v m="${ms:--}" -v o="$(field ops <<<"$out")" \
        'BEGIN { printf "size %5d round %d %-5s %8.0f %9.1f %s %s (%.1f us)\n", z, r, n, rate,
                 i / 1048576, q, m, (m == "-" ? 0 : m * 1000 / o) }'
    done
  done
done
