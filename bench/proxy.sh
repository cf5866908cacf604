#!/usr/bin/env bash
# Proxy benchmark: direct Redis, twemproxy (Debian's nutcracker) and ferrox,
# in the same run, on the same four redis-server backends.
#
#   bench/proxy.sh     (N: requests per test, default 100000; SCENARIOS: a
#                       subset of "plain P16 P16-1KiB P16-16KiB", default
#                       the first three; ROUNDS: rounds of
#                       every scenario, default 1; MTU: of ferrox's port
#                       and the veth pair, default 3438, the most af_xdp
#                       carries; IDLE_STEPS: idle client connection counts
#                       for the memory figure, and the GET rate of 100
#                       active clients beside the most, default "1000 2000 5000", ""
#                       or 0 to skip (IDLE=n, the older form: one count;
#                       up to 250,000: five source addresses);
#                       HOST_NIC: inline (default) or gro, below;
#                       DP_ARGS: more ferrox-dataplane arguments, to try a
#                       setting; RESULTS: a file to write every figure to,
#                       tab-separated, for bench/report.py)
#
# One namespace holds the clients, the backends and twemproxy, on the kernel
# stack; ferrox runs on DPDK af_xdp behind a veth pair:
#   fxq (kernel)  clients, redis-server x4 (198.18.0.1:7001-7004),
#                 nutcracker (0.0.0.0:22121)
#                 veth0 198.18.0.1 ── veth1 (ferrox, 198.18.0.2:22121)
# twemproxy and ferrox read the very same nutcracker.yml. Every request to
# ferrox crosses the veth pair twice (client → ferrox → backend) where
# twemproxy's stay on the host's loopback path, so the comparison leans
# against ferrox. The veth pair carries jumbo frames (MTU 3438, the most
# af_xdp takes) where loopback has an MTU of 65536 and GSO; MTU=1500 shows
# ferrox on a standard frame size.
#
# Scenarios (redis-benchmark, 50 clients, random keys out of 100,000): GET/SET
# unpipelined; GET/SET with -P 16; GET/SET of 1 KiB values with -P 16.
# Figures: requests/s, p50/p99 (ms), and the proxy's CPU-seconds per million
# requests (user+system from /proc; ferrox's poll-mode core spins while
# traffic flows, so its CPU time is close to wall time); with PERF_DATA=path,
# a CPU profile of ferrox per scenario goes to path.<scenario> (of the
# whole machine with PERF_SCOPE=system: where the two vCPUs go); and the
# Ethernet frames ferrox sent and received per request (veth0's counters,
# both directions); and, first, each proxy's memory per idle client
# connection at each of IDLE_STEPS (below). Ratios are against
# twemproxy and direct Redis measured in the same run. Needs root, hugepages.
set -euo pipefail
# Before the cd: a relative RESULTS is the caller's.
RESULTS=${RESULTS:+$(readlink -f "$RESULTS")}
cd "$(dirname "$(readlink -f "$0")")/.."

NS=fxq$$
N=${N:-100000}
IDLE_STEPS=${IDLE_STEPS-${IDLE:-1000 2000 5000}}
# Ascending and without 0: the connections of one count stay open for the next.
IDLE_STEPS=$(tr -s ' ' '\n' <<<"$IDLE_STEPS" | awk '$1 > 0' | sort -nu | xargs)
MTU=${MTU:-3438}
ROUNDS=${ROUNDS:-1}
SCENARIOS=${SCENARIOS:-plain P16 P16-1KiB}
DP=${DP:-target/release/ferrox-dataplane}  # another build to compare: DP=path
CONF=$(mktemp /tmp/ferrox-bench-XXXXXX.yml)
PIDS=()
DP_PID=""
NC_PID=""

cleanup() {
  [ -n "$DP_PID" ] && kill -INT "$DP_PID" 2>/dev/null && sleep 1
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  ip netns del "$NS" 2>/dev/null || true
  rm -f "$CONF" "${HOLDER:-}"
}
trap cleanup EXIT

in_ns() { ip netns exec "$NS" "$@"; }

command -v nutcracker >/dev/null || { echo "nutcracker is not installed (apt-get install nutcracker)" >&2; exit 1; }
cargo build --release --locked -q -p ferrox-dataplane

ip netns add "$NS"
in_ns ip link set lo up
in_ns sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
in_ns sysctl -qw net.ipv4.tcp_tw_reuse=1
in_ns ip link add veth0 type veth peer name veth1
in_ns ip link set veth0 mtu "$MTU"
in_ns ip addr add 198.18.0.1/24 dev veth0
# More source addresses for the idle clients: one address has ~64,000
# ephemeral ports toward one proxy port.
for a in 11 12 13 14; do in_ns ip addr add "198.18.0.$a/24" dev veth0; done
in_ns ip link set veth0 up
in_ns ip link set veth1 up
# veth0 stands for the NIC of the hosts ferrox serves. veth by default
# runs its receive inline in the sender's transmit call (here: on ferrox's
# core, frame by frame) and does not coalesce (it expects GSO packets
# whole). HOST_NIC=gro makes it coalesce received frames (GRO) in a NAPI
# thread of its own, as a host's NIC driver does; veth coalesces only
# what comes from a peer without TSO (ferrox's af_xdp transmit never uses
# it). The default stays veth's, as every earlier figure was measured.
HOST_NIC=${HOST_NIC:-inline}
case $HOST_NIC in
  gro)
    in_ns ethtool -K veth1 tso off >/dev/null
    in_ns ethtool -K veth0 gro on >/dev/null
    in_ns sh -c 'echo 1 > /sys/class/net/veth0/threaded' ;;
  inline) ;;
  *) echo "HOST_NIC is gro or inline, not '$HOST_NIC'" >&2; exit 2 ;;
esac

for port in 7001 7002 7003 7004; do
  # Not through in_ns: $! must be the server itself (ip netns exec execs it).
  ip netns exec "$NS" redis-server --bind 198.18.0.1 --port "$port" --save '' --appendonly no \
    --protected-mode no --daemonize no --loglevel warning >/dev/null &
  PIDS+=("$!")
done

cat >"$CONF" <<'EOF'
bench:
  listen: 0.0.0.0:22121
  redis: true
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  server_connections: 1
  servers:
    - 198.18.0.1:7001:1
    - 198.18.0.1:7002:1
    - 198.18.0.1:7003:1
    - 198.18.0.1:7004:1
EOF

# As many descriptors as the idle clients need, up to the hard limit: past
# it twemproxy cannot hold the count, and is not measured there (exec
# keeps $! the server's).
FD_LIMIT=$(ulimit -Hn)
[ "$FD_LIMIT" = unlimited ] && FD_LIMIT=1048576
NC_MOST=$((FD_LIMIT - 64))
ip netns exec "$NS" bash -c "ulimit -n $FD_LIMIT; exec nutcracker -c $CONF -s 22222 -o /tmp/ferrox-bench-nutcracker.log" &
NC_PID=$!
PIDS+=("$NC_PID")
ip netns exec "$NS" "$DP" --vdev net_af_xdp0,iface=veth1,start_queue=0,queue_count=1,busy_budget=0 \
  --address 198.18.0.2/24 --config "$CONF" --memory-mb 512 --mbufs 32767 \
  --mtu "$MTU" --socket-pool-clients 16 --max-connections $(( ${IDLE_STEPS##* } + 4096 )) \
  --file-prefix "fxq$$" ${DP_ARGS:-} >/dev/null 2>/tmp/ferrox-bench-proxy.log &
DP_PID=$!
sleep 2
for target in 198.18.0.1:7001 198.18.0.1:22121 198.18.0.2:22121; do
  in_ns timeout 10 redis-cli -h "${target%:*}" -p "${target#*:}" SET warmup 1 | grep -q OK \
    || { echo "no answer from $target" >&2; cat /tmp/ferrox-bench-proxy.log >&2; exit 1; }
done

# The results file: what each figure needs to be read (the machine, the
# port, the build), then one line per measurement; "-" where a figure does
# not apply (the CPU of direct Redis, the frames of twemproxy's path).
result() {
  if [ -n "$RESULTS" ]; then (IFS=$'\t'; echo "$*") >>"$RESULTS"; fi
}
if [ -n "$RESULTS" ]; then
  cat >"$RESULTS" <<'EOF'
# bench/proxy.sh results, tab-separated, by first field:
# meta	KEY	VALUE
# request	SCENARIO	TEST	TARGET	ROUND	REQ_PER_S	P50_MS	P99_MS	CPU_S_PER_M_REQ	FRAMES_PER_REQ
# memory	TARGET	IDLE_CONNECTIONS	KIB_PER_CONNECTION
# active	TARGET	IDLE_CONNECTIONS	GET_PER_S	RATIO_TO_NO_IDLE
# machine	SCENARIO	TARGET	ROUND	MACHINE_CPU_S_PER_M_REQ
# CPU and frames are per scenario, target and round (GET and SET together).
EOF
  result meta date "$(date -u +%Y-%m-%dT%H:%MZ)"
  result meta kernel "$(uname -r)"
  result meta vcpus "$(nproc)"
  result meta cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  result meta memory "$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
  result meta dpdk "$(pkg-config --modversion libdpdk 2>/dev/null || echo unknown)"
  result meta pmd "net_af_xdp (one queue, busy_budget=0) on a veth pair"
  result meta mtu "$MTU"
  result meta host_nic "$HOST_NIC"
  lcores=$(sed -nE 's/.*--lcores[ =]([^ ]+).*/\1/p' <<<"${DP_ARGS:-}")
  result meta lcores "${lcores:-0}"
  result meta ferrox "$(git describe --always --dirty 2>/dev/null || echo unknown) ($DP)"
  result meta dp_args "${DP_ARGS:--}"
  result meta twemproxy "$(nutcracker --version 2>&1 | sed -n 's/^This is //p')"
  result meta redis "$(redis-server --version | sed -nE 's/.* v=([^ ]+).*/\1/p')"
  result meta requests "$N"
  result meta clients 50
  result meta keys 100000
  result meta rounds "$ROUNDS"
  result meta clk_tck "$(getconf CLK_TCK)"
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Busy ticks of the whole machine, every vCPU: all but idle and iowait.
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
# Frames through ferrox's port, both ways (all of its traffic crosses veth0).
veth_frames() {
  in_ns cat /sys/class/net/veth0/statistics/rx_packets /sys/class/net/veth0/statistics/tx_packets \
    | awk '{ n += $1 } END { print n }'
}

# redis-benchmark --csv: "test","rps","avg","min","p50","p95","p99","max"
run() { # host port extra-args -> lines "TEST rps p50 p99"
  in_ns bash -c "ulimit -n 65536 2>/dev/null; timeout 300 redis-benchmark -h $1 -p $2 -c 50 -n $N \
    -r 100000 -t get,set $3 --csv" | grep -E '^"(GET|SET)"' | tr -d '"' | awk -F, '{print $1, $2, $5, $7}'
}

# Memory per idle client connection: connections that each sent one PING
# (twemproxy answers it itself, as ferrox does) and stay open, against the
# proxy's memory before the first. Each count of IDLE_STEPS adds
# connections to those of the count before, all held: closing them between
# counts would let the next count reuse what the last one grew. Memory is
# everything the process holds: every mapping's resident pages (heap,
# stacks, files, hugepages touched), except its shared-memory regions
# (hugetlbfs or /dev/shm files: ferrox's socket buffers, whose pool starts
# small, --socket-pool-clients 16, and grows with the connections), which
# count whole, touched or not, since they are reserved. DPDK's fixed
# mempool reservation is in both readings, so not in the difference.
# Measured first, on fresh proxies: after the throughput runs their free
# lists would hide what a connection costs.
memory_kib() {
  awk '/^[0-9a-f]+-[0-9a-f]+ / { region = ($6 ~ "^/dev/(hugepages|shm)/") }
       /^Size:/ && region { n += $2 }
       /^(Rss|Shared_Hugetlb|Private_Hugetlb):/ && !region { n += $2 }
       END { print n }' "/proc/$1/smaps"
}
HOLDER=$(mktemp /tmp/ferrox-bench-hold-XXXXXX.py)
cat >"$HOLDER" <<'PY'
# Holds idle connections for bench/proxy.sh: for each count on the command
# line, opens connections up to it (each sends one PING and reads +PONG),
# prints "ready N", and waits for a line before the next count. Worker
# processes hold 15,000 each (a process's descriptors are limited), from
# five source addresses in turn (each has ~64,000 ports toward one proxy
# port); closing its stdin ends them all.
import os, socket, sys
host, steps = sys.argv[1], list(map(int, sys.argv[2:]))
PER = 15000
SOURCES = ["198.18.0.1", "198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"]

def worker(commands, replies):
    held = []
    for line in commands:
        start, count = map(int, line.split())
        new = []
        for i in range(start, start + count):
            s = socket.socket()
            s.settimeout(30)
            s.bind((SOURCES[i // 50000], 0))
            s.connect((host, 22121))
            new.append(s)
        for s in new:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
        for s in new:
            assert s.recv(64).startswith(b"+PONG")
        held += new
        replies.write("ok\n")
        replies.flush()

def spawn():
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    if os.fork() == 0:
        os.close(w1)
        os.close(r2)
        worker(os.fdopen(r1), os.fdopen(w2, "w"))
        os._exit(0)
    os.close(r1)
    os.close(w2)
    return [os.fdopen(w1, "w"), os.fdopen(r2), 0]

workers, total = [], 0
for n in steps:
    while total < n:
        if not workers or workers[-1][2] == PER:
            workers.append(spawn())
        w = workers[-1]
        count = min(PER - w[2], n - total)
        w[0].write(f"{total} {count}\n")
        w[0].flush()
        assert w[1].readline().strip() == "ok", f"a worker failed at {total}"
        w[2] += count
        total += count
    print("ready", n, flush=True)
    if not sys.stdin.readline():
        break
PY
declare -A per_conn active
# GET/s of 100 active clients (unpipelined, like pooled application
# connections), beside however many idle ones are held.
active_rate() {
  in_ns bash -c "ulimit -n 65536 2>/dev/null; timeout 120 redis-benchmark -h $1 -p 22121 -c 100 \
    -n $N -r 100000 -t get --csv" | grep -E '^"GET"' | tr -d '"' | awk -F, '{print $2}'
}
idle_memory() {
  local target host pid before after ready held n steps most
  for target in twemproxy ferrox; do
    case "$target" in
      twemproxy) host=198.18.0.1 pid=$NC_PID ;;
      ferrox) host=198.18.0.2 pid=$DP_PID ;;
    esac
    steps=$IDLE_STEPS
    # twemproxy takes a descriptor a connection.
    [ "$target" = twemproxy ] && steps=$(tr ' ' '\n' <<<"$IDLE_STEPS" | awk -v m="$NC_MOST" '$1 <= m' | xargs)
    [ -n "$steps" ] || continue
    most=${steps##* }
    # The active clients' rate with no idle connection, and (below) beside
    # the most; measured out of the memory readings (they would count
    # what the active connections grew).
    active[$target/0]=$(active_rate "$host")
    result active "$target" 0 "${active[$target/0]}" 1.00
    sleep 2
    before=$(memory_kib "$pid")
    # The holder prints "ready N" once N connections have their reply, opens
    # the next count's on a line from its stdin, and holds the last count's
    # until its stdin closes.
    coproc HOLD { in_ns timeout 900 /usr/bin/python3 "$HOLDER" "$host" $steps; }
    for n in $steps; do
      read -r ready held <&"${HOLD[0]}" || true
      [ "$ready $held" = "ready $n" ] || { echo "could not hold $n connections to $target" >&2; exit 1; }
      sleep 1
      after=$(memory_kib "$pid")
      per_conn[$target/$n]=$(awk -v a="$before" -v b="$after" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')
      result memory "$target" "$n" "${per_conn[$target/$n]}"
      if [ "$n" = "$most" ]; then
        active[$target/$n]=$(active_rate "$host")
        result active "$target" "$n" "${active[$target/$n]}" \
          "$(awk -v a="${active[$target/$n]}" -v b="${active[$target/0]}" 'BEGIN { printf "%.2f", a / b }')"
      fi
      [ "$n" = "$most" ] || echo >&"${HOLD[1]}"
    done
    exec {HOLD[1]}>&-
    wait "$HOLD_PID" 2>/dev/null || true
    sleep 2
  done
}
if [ -n "$IDLE_STEPS" ]; then idle_memory; fi

hz=$(getconf CLK_TCK)
declare -A rps p50 p99 cpu frames machine
# Rounds of every scenario, direct, twemproxy and ferrox back to back in
# each: the machine's load drifts, so each round's ratios compare figures
# taken within seconds of each other; the table shows medians.
for round in $(seq "$ROUNDS"); do
for scenario in $SCENARIOS; do
  case "$scenario" in
    plain) args="" ;;
    P16) args="-P 16" ;;
    P16-1KiB) args="-P 16 -d 1024" ;;
    # 1,000 keys: 16 MiB of values, where 100,000 would hold 1.6 GB.
    P16-16KiB) args="-P 16 -d 16384 -r 1000" ;;
  esac
  for target in direct twemproxy ferrox; do
    case "$target" in
      direct) host=198.18.0.1 port=7001 pid="" ;;
      twemproxy) host=198.18.0.1 port=22121 pid=$NC_PID ;;
      ferrox) host=198.18.0.2 port=22121 pid=$DP_PID ;;
    esac
    # Every target starts from empty servers: GETs must not find values
    # of another scenario's size.
    for p in 7001 7002 7003 7004; do in_ns redis-cli -h 198.18.0.1 -p "$p" FLUSHALL >/dev/null; done
    t0=0 f0=$(veth_frames) m0=$(machine_ticks)
    [ -n "$pid" ] && t0=$(cpu_ticks "$pid")
    perf_pid=""
    if [ -n "${PERF_DATA:-}" ] && [ "$target" = ferrox ] && [ "$round" = 1 ]; then
      perf_scope=(-p "$DP_PID")
      [ "${PERF_SCOPE:-ferrox}" = system ] && perf_scope=(-a)
      perf record -q -e cpu-clock -F 1999 -g "${perf_scope[@]}" -o "$PERF_DATA.$scenario" &
      perf_pid=$!
    fi
    lines=()
    while read -r test r l50 l99; do
      key="$scenario/$test/$target"
      rps[$key]+="$r " p50[$key]+="$l50 " p99[$key]+="$l99 "
      lines+=("$test $r $l50 $l99")
    done < <(run "$host" "$port" "$args")
    [ -n "$perf_pid" ] && kill -INT "$perf_pid" && wait "$perf_pid" || true
    this_cpu=- this_frames=-
    this_machine=$(awk -v a="$m0" -v b="$(machine_ticks)" -v hz="$hz" -v n="$N" \
      'BEGIN { printf "%.2f", (b - a) / hz / (2 * n / 1e6) }')
    machine[$scenario/$target]+="$this_machine "
    result machine "$scenario" "$target" "$round" "$this_machine"
    if [ -n "$pid" ]; then
      t1=$(cpu_ticks "$pid")
      # CPU-seconds per million requests (GET and SET together: 2N requests).
      this_cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v n="$N" \
        'BEGIN { printf "%.2f", (b - a) / hz / (2 * n / 1e6) }')
      cpu[$scenario/$target]+="$this_cpu "
      if [ "$target" = ferrox ]; then
        this_frames=$(awk -v a="$f0" -v b="$(veth_frames)" -v n="$N" \
          'BEGIN { printf "%.2f", (b - a) / (2 * n) }')
        frames[$scenario]+="$this_frames "
      fi
    else
      cpu[$scenario/$target]="n/a"
    fi
    for line in "${lines[@]}"; do
      read -r test r l50 l99 <<<"$line"
      result request "$scenario" "$test" "$target" "$round" "$r" "$l50" "$l99" "$this_cpu" "$this_frames"
    done
  done
done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR] = $1} END { if (NR) print a[int((NR + 1) / 2)]; else print "?" }'; }
# Per-round ratios of two lists, space-separated.
ratios() {
  paste -d' ' <(tr ' ' '\n' <<<"$1" | grep -v '^$') <(tr ' ' '\n' <<<"$2" | grep -v '^$') \
    | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), ($2 > 0 ? $1 / $2 : 0) }'
}
printf '\n| scenario | test | direct req/s | twemproxy req/s | ferrox req/s | ferrox/twemproxy | ferrox/direct | p50 ms (d/t/f) | p99 ms (d/t/f) | CPU-s per M req (t/f) | machine CPU-s per M req (d/t/f) | ferrox frames per req |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for scenario in $SCENARIOS; do
  for test in GET SET; do
    d=$scenario/$test/direct t=$scenario/$test/twemproxy f=$scenario/$test/ferrox
    vs_t=$(ratios "${rps[$f]:-}" "${rps[$t]:-}") vs_d=$(ratios "${rps[$f]:-}" "${rps[$d]:-}")
    # The median ratio, and every round's when there are several.
    show() { if [ "$ROUNDS" -gt 1 ]; then echo "$(median "$1") ($1)"; else echo "$1"; fi; }
    printf '| %s | %s | %s | %s | %s | %s | %s | %s/%s/%s | %s/%s/%s | %s/%s | %s/%s/%s | %s |\n' "$scenario" "$test" \
      "$(median "${rps[$d]:-}")" "$(median "${rps[$t]:-}")" "$(median "${rps[$f]:-}")" \
      "$(show "$vs_t")" "$(show "$vs_d")" \
      "$(median "${p50[$d]:-}")" "$(median "${p50[$t]:-}")" "$(median "${p50[$f]:-}")" \
      "$(median "${p99[$d]:-}")" "$(median "${p99[$t]:-}")" "$(median "${p99[$f]:-}")" \
      "$(median "${cpu[$scenario/twemproxy]}")" "$(median "${cpu[$scenario/ferrox]}")" \
      "$(median "${machine[$scenario/direct]}")" "$(median "${machine[$scenario/twemproxy]}")" \
      "$(median "${machine[$scenario/ferrox]}")" \
      "$(median "${frames[$scenario]}")"
  done
done
if [ -n "$IDLE_STEPS" ]; then
  printf '\n| idle client connections | twemproxy KiB per connection | ferrox KiB per connection | twemproxy GET/s of 100 active | ferrox GET/s of 100 active (vs none idle) |\n|---|---|---|---|---|\n'
  printf '| 0 | - | - | %s | %s |\n' "${active[twemproxy/0]:--}" "${active[ferrox/0]}"
  for n in $IDLE_STEPS; do
    ratio=-
    [ -n "${active[ferrox/$n]:-}" ] &&
      ratio="$(awk -v a="${active[ferrox/$n]}" -v b="${active[ferrox/0]}" 'BEGIN { printf "%.2f", a / b }')×"
    printf '| %s | %s | %s | %s | %s (%s) |\n' "$n" "${per_conn[twemproxy/$n]:--}" "${per_conn[ferrox/$n]}" \
      "${active[twemproxy/$n]:--}" "${active[ferrox/$n]:--}" "$ratio"
  done
fi
if [ -n "$RESULTS" ]; then echo "results: $RESULTS"; fi
