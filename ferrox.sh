#!/usr/bin/env bash
# ferrox.sh: the one entry point for people and CI.
#
#   ./ferrox.sh demo    set this machine up and run ferrox's main job
#   ./ferrox.sh test    set this machine up and run every check and test
#   ./ferrox.sh bench   run the benchmarks (criterion, then the dataplane, proxy, control, cluster and policy harnesses)
#   ./ferrox.sh fuzz    run every fuzz target for FUZZ_SECONDS (default 60) each
#   ./ferrox.sh soak [SECONDS] [ARGS]  random clients against the real appliance, every reply checked
#   ./ferrox.sh install  install ferrox as a systemd service (DESTDIR=DIR: staged under DIR)
#   ./ferrox.sh package  build a Debian package of it (target/debian/ferrox_VERSION_ARCH.deb)
#   ./ferrox.sh demo-shm  the shared-memory foundation across three processes
#
# Run as root on Debian. Every step is idempotent: packages are installed only
# when missing, hugepages are reserved only up to what is needed, and what a
# run reserves, mounts or creates is given back when it exits, also on failure.
set -euo pipefail

cd "$(dirname "$(readlink -f "$0")")"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Debian packages the build, the tests and the demo need.
PACKAGES=(build-essential pkg-config procps iproute2 util-linux ethtool
  libdpdk-dev dpdk clang libclang-dev redis-tools redis-server memcached nutcracker
  python3 python3-redis python3-pymemcache python3-pylibmc python3-prometheus-client
  qemu-system-x86 busybox-static cpio kmod pciutils)
# 2 MiB hugepages to have free while ferrox runs (2 GiB: the test suite runs
# several DPDK processes at once).
HUGEPAGES_WANTED=1024
HUGEPAGES_DIR=/dev/hugepages

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'ferrox.sh: %s\n' "$*" >&2; exit 1; }

CLEANUP=()
on_exit() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[i]}" || true; done
}
trap on_exit EXIT

need_root() {
  [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and reserves hugepages)"
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_rust() {
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  if ! command -v cargo >/dev/null; then
    log "no Rust toolchain: installing rustup from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rustup >/dev/null \
      || die "install a Rust toolchain (1.91 or newer), e.g. with rustup, and run again"
    rustup default stable
  fi
  local version
  version=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n1.91.0\n' "$version" | sort -V | head -n1)" != "1.91.0" ]; then
    die "rustc $version is too old: ferrox needs 1.91 or newer (smoltcp 0.14) (rustup update stable)"
  fi
}

# Reserve hugepages and mount hugetlbfs; give back what we took on exit.
setup_hugepages() {
  local nr=/proc/sys/vm/nr_hugepages before free
  if ! mountpoint -q "$HUGEPAGES_DIR" 2>/dev/null; then
    mkdir -p "$HUGEPAGES_DIR"
    if mount -t hugetlbfs -o pagesize=2M nodev "$HUGEPAGES_DIR" 2>/dev/null; then
      CLEANUP+=("umount $HUGEPAGES_DIR")
    fi
  fi
  before=$(cat "$nr")
  free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
  if [ "$free" -lt "$HUGEPAGES_WANTED" ]; then
    if echo $((before + HUGEPAGES_WANTED - free)) >"$nr" 2>/dev/null; then
      CLEANUP+=("echo $before > $nr")
    fi
  fi
  free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
  if [ "$free" -lt "$HUGEPAGES_WANTED" ]; then
    log "only $free free hugepages (wanted $HUGEPAGES_WANTED): ferrox falls back to ordinary shared memory"
  else
    log "hugepages: $free x 2 MiB free at $HUGEPAGES_DIR"
  fi
}

# Remove region files this run created and left behind (a crashed test).
clean_regions_after() {
  local stamp
  stamp=$(mktemp)
  CLEANUP+=("find /dev/shm $HUGEPAGES_DIR -maxdepth 1 -name 'ferrox-*' -newer $stamp -delete 2>/dev/null; rm -f $stamp")
}

# Delete network namespaces this run created and left behind (a test that
# was killed before its own guard ran); never touch pre-existing ones, nor
# one whose creator still runs (a concurrent run's). Every ferrox namespace
# is named fx, letters, its creator's PID, then anything (fx1234p0, fxvm99).
NETNS_BEFORE=""
remove_new_namespaces() {
  local ns owner
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^fx'); do
    case " $NETNS_BEFORE " in
      *" $ns "*) continue ;;
    esac
    owner=$(sed -E 's/^fx[a-z]*([0-9]+).*/\1/' <<<"$ns")
    if [[ "$owner" =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null; then
      continue
    fi
    ip netns del "$ns"
  done
}
clean_namespaces_after() {
  NETNS_BEFORE=$(ip netns list 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
  CLEANUP+=(remove_new_namespaces)
}

setup() {
  need_root
  install_packages
  ensure_rust
  setup_hugepages
  clean_regions_after
  clean_namespaces_after
}

# Miri needs a nightly toolchain with the miri component; skip (and say so)
# where rustup cannot provide one.
run_miri() {
  if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
    echo "miri: SKIPPED (no nightly toolchain on this machine)"
    return 0
  fi
  rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1 || {
    echo "miri: SKIPPED (the miri component cannot be installed here)"
    return 0
  }
  log "miri: heap-backed pool, ring and region tests"
  # Tests that need files, /proc or blocking system calls cannot run under
  # Miri's isolation; everything over heap-backed regions does.
  MIRIFLAGS="-Zmiri-strict-provenance" cargo +nightly miri test -q -p hugepage-pool --lib -- \
    pool:: mq::ends::tests:: region::tests::heap region::tests::offsets region::tests::directory \
    --skip sleeping --skip busy_path --skip fanin --skip grows_the_region
}

cmd_test() {
  setup
  log "format"
  cargo fmt --all -- --check
  log "clippy"
  cargo clippy --workspace --all-targets --locked -- -D warnings
  log "bench report (bench/report_test.py)" && python3 bench/report_test.py
  log "tests"
  cargo test --workspace --locked
  run_soak_ci
  check_install
  check_package
  log "vm-testbed: ferrox on a virtio-net PCI NIC in a QEMU guest"
  bash vm-testbed/run.sh
  log "package: apt-get install in a Debian guest booted with systemd; start, scrape, reload, check, stop"
  bash vm-testbed/package.sh "$PACKAGE_DEB"
  log "loom: ring and doorbell orderings"
  RUSTFLAGS="--cfg loom" cargo test -q --locked -p hugepage-pool --lib --release --target-dir target/loom -- loom
  run_miri
  run_fuzz "${FUZZ_SECONDS:-10}"
}

# The randomized, model-checked soak (tests/soak/README.md): ferrox on
# af_xdp in a namespace of its own with four redis-server and two memcached
# backends, Redis and memcached clients that pipeline, stall, dribble, vanish
# and send garbage, every reply checked against a model and the backends
# checked at the end. Debian's python3 has redis-py and pymemcache.
SOAK_PYTHON=${SOAK_PYTHON:-/usr/bin/python3}
soak_build() {
  log "building (release) for the soak"
  cargo build --release --locked -q -p ferrox-dataplane -p ferrox-control
}

# ./ferrox.sh soak [SECONDS] [ARGS]: SECONDS of load (default 300); ARGS go
# to tests/soak/soak.py (--seed S replays a run, --mtu 1500, --only redis-2).
cmd_soak() {
  local seconds=300
  if [[ "${1:-}" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    seconds=$1
    shift
  fi
  setup
  soak_build
  log "soak: ${seconds}s"
  "$SOAK_PYTHON" tests/soak/soak.py --duration "$seconds" "$@"
}

# In `test`: a fixed seed (the same command streams every run), then a
# random one (printed first, to replay) with a hot upgrade every 10 s, then
# another on af_packet with two lcores and an upgrade every 8 s (the
# overlapping ports), and one on tap with two lcores through the port
# holder (frames wait in the tap), and one with compression and the
# hot-key caches on (--features), SOAK_SECONDS (default 50) each, Redis
# and memcached clients at once. All run; any failing fails the test.
run_soak_ci() {
  local seconds=${SOAK_SECONDS:-50} seed rc=0
  if [ "$seconds" = 0 ]; then
    echo "soak: SKIPPED (SOAK_SECONDS=0)"
    return 0
  fi
  soak_build
  log "soak: fixed seed 1, ${seconds}s"
  "$SOAK_PYTHON" tests/soak/soak.py --seed 1 --duration "$seconds" || rc=1
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  log "soak: random seed $seed, ${seconds}s, an upgrade every 10 s"
  "$SOAK_PYTHON" tests/soak/soak.py --seed "$seed" --duration "$seconds" \
    --upgrade-every 10 || rc=1
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  log "soak: random seed $seed, ${seconds}s, af_packet, two lcores, an upgrade every 8 s"
  "$SOAK_PYTHON" tests/soak/soak.py --seed "$seed" --duration "$seconds" \
    --pmd af_packet --lcores 0-1 --mtu 1500 --upgrade-every 8 || rc=1
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  log "soak: random seed $seed, ${seconds}s, tap through the port holder, two lcores, an upgrade every 8 s"
  "$SOAK_PYTHON" tests/soak/soak.py --seed "$seed" --duration "$seconds" \
    --pmd tap --lcores 0-1 --mtu 1500 --upgrade-every 8 || rc=1
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  log "soak: random seed $seed, ${seconds}s, compression and hot-key caches on, af_packet, two lcores, an upgrade every 8 s"
  "$SOAK_PYTHON" tests/soak/soak.py --seed "$seed" --duration "$seconds" --features \
    --pmd af_packet --lcores 0-1 --mtu 1500 --upgrade-every 8 || rc=1
  return $rc
}

# The appliance's main job on a machine with no DPDK NIC: in network
# namespace 'ferrox', three redis-server and two memcached backends on the
# kernel side (198.18.0.1), and ferrox on an af_xdp virtual NIC
# (198.18.0.2) proxying to them with configs/demo.toml, until Ctrl-C (or
# DEMO_SECONDS).
DEMO_NS=ferrox
DEMO_SOCKET=/run/ferrox/admin.sock
cmd_demo() {
  setup
  log "building (release)"
  cargo build --release --locked -q -p ferrox-dataplane -p ferrox-control
  if ip netns list | grep -qw "$DEMO_NS"; then
    die "namespace '$DEMO_NS' exists: is a demo already running? (ip netns del $DEMO_NS)"
  fi
  ip netns add "$DEMO_NS"
  CLEANUP+=("ip netns del $DEMO_NS")
  local ns="ip netns exec $DEMO_NS" port pid i
  $ns ip link set lo up
  $ns ip link add veth0 type veth peer name veth1
  # Jumbo frames on this host-internal link (the most af_xdp carries; the
  # dataplane sets veth1's MTU itself).
  $ns ip link set veth0 mtu 3438
  $ns ip addr add 198.18.0.1/24 dev veth0
  $ns ip link set veth0 up
  $ns ip link set veth1 up
  log "starting backends: redis-server on 198.18.0.1:7001-7003, memcached on 198.18.0.1:11311-11312"
  for port in 7001 7002 7003; do
    # Not through $ns in a subshell: $! must be the server (ip netns exec execs it).
    ip netns exec "$DEMO_NS" redis-server --bind 198.18.0.1 --port "$port" --save '' --appendonly no \
      --protected-mode no --loglevel warning >/dev/null &
    CLEANUP+=("kill $! 2>/dev/null")
  done
  for port in 11311 11312; do
    ip netns exec "$DEMO_NS" memcached -u root -l 198.18.0.1 -p "$port" -U 0 -m 64 &
    CLEANUP+=("kill $! 2>/dev/null")
  done
  log "starting ferrox (control process and dataplane on net_af_xdp, veth1) with configs/demo.toml"
  # The control process runs in the namespace too: its health checks reach
  # the backends there, and its metrics endpoint is that namespace's
  # 127.0.0.1:9638. ferroxctl talks to it through $DEMO_SOCKET.
  ip netns exec "$DEMO_NS" ./target/release/ferrox-control --config configs/demo.toml \
    --address 198.18.0.2/24 --vdev net_af_xdp0,iface=veth1,start_queue=0,queue_count=1,busy_budget=0 \
    --admin-socket "$DEMO_SOCKET" --region "demo-$$" -- --memory-mb 256 --mtu 3438 2>/tmp/ferrox-demo.log >&2 &
  pid=$!
  CLEANUP+=("kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null")
  for i in $(seq 100); do
    $ns redis-cli -h 198.18.0.2 PING >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat /tmp/ferrox-demo.log >&2; die "ferrox did not start"; }
    sleep 0.2
  done
  local cli="$ns redis-cli -h 198.18.0.2"
  log "redis-cli through ferrox:"
  echo "  SET greeting hello -> $($cli SET greeting hello)"
  echo "  GET greeting       -> $($cli GET greeting)"
  echo "  MSET k1..k6        -> $($cli MSET k1 a k2 b k3 c k4 d k5 e k6 f)"
  echo "  MGET k1..k6        -> $($cli MGET k1 k2 k3 k4 k5 k6 | tr '\n' ' ')"
  echo "  DBSIZE             -> $($cli DBSIZE) (added up over the servers)"
  echo "  --scan             -> $($cli --scan | sort | tr '\n' ' ')(SCAN, server after server)"
  (sleep 0.5 && $cli LPUSH jobs job-1 >/dev/null) &
  echo "  BLPOP jobs 5       -> $($cli BLPOP jobs 5 | tr '\n' ' ')(released by another client's LPUSH)"
  wait $!
  local heard
  heard=$(mktemp)
  $ns timeout 2 stdbuf -oL redis-cli -h 198.18.0.2 SUBSCRIBE news >"$heard" 2>&1 &
  local listener=$!
  sleep 0.5
  echo "  PUBLISH news hello -> $($cli PUBLISH news hello) subscriber(s)"
  wait $listener || true
  echo "  SUBSCRIBE news     -> $(tr '\n' ' ' <"$heard")(another client, listening)"
  rm -f "$heard"
  log "where the keys landed (asking each redis-server directly):"
  for port in 7001 7002 7003; do
    echo "  198.18.0.1:$port: $($ns redis-cli -h 198.18.0.1 -p "$port" --scan | sort | tr '\n' ' ')"
  done
  log "memcached through ferrox:"
  $ns timeout 5 bash -c 'exec 3<>/dev/tcp/198.18.0.2/11211
    printf "set m1 0 0 3\r\none\r\nset m2 0 0 3\r\ntwo\r\nget m1 m2 m3\r\nquit\r\n" >&3
    cat <&3' | sed 's/^/  /'
  log "memcached's binary protocol on the same port (pylibmc in binary mode), reading what the text client wrote:"
  $ns timeout 10 /usr/bin/python3 -c '
import pylibmc
c = pylibmc.Client(["198.18.0.2:11211"], binary=True)
c.set("m3", "three")
print("  get_multi:", c.get_multi(["m1", "m2", "m3"]))' 2>&1
  log "redis-benchmark (GET and SET, 50 clients, pipelines of 16):"
  $ns timeout 120 redis-benchmark -h 198.18.0.2 -t get,set -n 200000 -c 50 -P 16 -r 100000 -q 2>&1 \
    | tr '\r' '\n' | grep 'requests per second' | sed 's/^/  /'
  local ctl=./target/release/ferroxctl # its default socket is $DEMO_SOCKET
  log "hot upgrade under load: the dataplane binary is replaced while redis-benchmark INCRs on 50 connections:"
  local next=/tmp/ferrox-demo-dataplane-next bench_pid n=3000000
  cp target/release/ferrox-dataplane "$next"
  CLEANUP+=("rm -f $next")
  $cli DEL counter:__rand_int__ >/dev/null
  $ns timeout 120 redis-benchmark -h 198.18.0.2 -t incr -n "$n" -c 50 -P 16 -q >/tmp/ferrox-demo-bench.log 2>&1 &
  bench_pid=$!
  sleep 0.5
  $ctl upgrade --binary "$next" | sed 's/^/  /'
  wait "$bench_pid" || true
  echo "  redis-benchmark: $(tr '\r' '\n' </tmp/ferrox-demo-bench.log | grep -c -i error) error(s); INCRs counted $($cli GET counter:__rand_int__) of $n; every client kept its connection"
  sleep 1.5 # one sampling second for the rates
  log "ferroxctl status:"
  $ctl status | sed 's/^/  /'
  log "ferroxctl stats:"
  $ctl stats | sed 's/^/  /'
  cat <<MSG

ferrox is proxying at 198.18.0.2 inside network namespace '$DEMO_NS'
(userspace TCP on DPDK af_xdp): Redis on port 6379 (pool "cache", three
servers, ketama), memcached on port 11211 (pool "sessions", two servers).
The configuration is configs/demo.toml. Try:

  ip netns exec $DEMO_NS redis-cli -h 198.18.0.2
  ip netns exec $DEMO_NS redis-benchmark -h 198.18.0.2 -t get,set -P 16 -q
  ip netns exec $DEMO_NS bash -c 'exec 3<>/dev/tcp/198.18.0.2/11211; printf "get m1\r\n" >&3; timeout 1 cat <&3'

and operate it with ferroxctl while traffic flows:

  $ctl top
  $ctl server weight cache 198.18.0.1:7001 2
  $ctl block keys
  $ctl shm resize --add-mb 64
  $ctl upgrade --binary target/release/ferrox-dataplane   # hot handover, clients stay connected
  $ctl config show
  ip netns exec $DEMO_NS bash -c 'exec 3<>/dev/tcp/127.0.0.1/9638; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3'

Ctrl-C here stops ferrox and the backends and removes the namespace.
Logs: /tmp/ferrox-demo.log
MSG
  if [ -n "${DEMO_SECONDS:-}" ]; then
    sleep "$DEMO_SECONDS"
  else
    wait "$pid" || true
  fi
}

# The shared-memory foundation on its own: two processes move chunks through
# a ring while a third grows the region under them.
cmd_demo_shm() {
  setup
  cargo build --release --locked -q -p ferrox-shm
  ./target/release/ferrox-shm demo "$@"
}

# The benchmarks, then the proxy's figures as a report with SVG plots
# (bench/report.py) in a fresh target/bench-report/, so that no plot of an
# earlier run stays beside it.
cmd_bench() {
  local report=target/bench-report
  setup
  cargo bench --locked -p hugepage-pool -p ferrox-shm -p ferrox-proto -p ferrox-route -p ferrox-engine "$@"
  bench/dataplane.sh
  rm -rf "$report"
  mkdir -p "$report"
  RESULTS=$report/results.tsv bench/proxy.sh
  bench/control.sh
  bench/cluster.sh
  bench/policy.sh
  python3 bench/report.py -o "$report" "$report/results.tsv" >/dev/null
  log "benchmark report: $PWD/$report/report.md"
}

# Every cargo-fuzz target (the protocol crate's parsers, the admin
# protocol), FUZZ_SECONDS each. Needs a nightly toolchain (libFuzzer's
# instrumentation); cargo-fuzz is installed when missing.
FUZZ_DIRS=(crates/proto crates/config crates/handover control)
run_fuzz() {
  local seconds=$1 dir target
  if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz: SKIPPED (no nightly toolchain on this machine)"
    return 0
  fi
  command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz
  for dir in "${FUZZ_DIRS[@]}"; do
    for target in $(cd "$dir" && cargo +nightly fuzz list); do
      log "fuzz: $dir $target for ${seconds}s"
      (cd "$dir" && cargo +nightly fuzz run -s none "$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -n 3)
    done
  done
}

cmd_fuzz() {
  setup
  run_fuzz "${FUZZ_SECONDS:-60}"
}

# ./ferrox.sh install: ferrox as a systemd service. The release binaries go
# to $PREFIX/bin (default /usr/local), the unit to
# /etc/systemd/system/ferrox.service, /etc/default/ferrox (the port and
# address: FERROX_ARGS) and /etc/ferrox/ferrox.toml only when they are not
# there yet, hugepages reserved at boot (/etc/sysctl.d), and ferroxctl's
# bash completions, the manual pages (made by the binaries: --man), the
# Grafana dashboard and Prometheus alert rules in $PREFIX/share. With DESTDIR=DIR all of it is staged under DIR instead,
# and nothing on the machine changes (what `./ferrox.sh test` checks).
# install_files DEST PREFIX [UNIT_DIR SYSCTL_DIR]: a local install puts
# the unit and the sysctl file under /etc, a package under /lib and /usr/lib.
install_files() {
  local dest=$1 prefix=$2 unit_dir=${3:-/etc/systemd/system} sysctl_dir=${4:-/etc/sysctl.d} unit
  cargo build --release --locked -q -p ferrox-control -p ferrox-dataplane
  for bin in ferrox-control ferrox-dataplane ferroxctl; do
    install -D -m 0755 "target/release/$bin" "$dest$prefix/bin/$bin"
  done
  unit=$(mktemp)
  sed "s|@BINDIR@|$prefix/bin|g" deploy/ferrox.service >"$unit"
  install -D -m 0644 "$unit" "$dest$unit_dir/ferrox.service"
  rm -f "$unit"
  [ -e "$dest/etc/default/ferrox" ] || install -D -m 0644 deploy/ferrox.default "$dest/etc/default/ferrox"
  [ -e "$dest/etc/ferrox/ferrox.toml" ] || install -D -m 0644 configs/ferrox.toml "$dest/etc/ferrox/ferrox.toml"
  mkdir -p "$dest$sysctl_dir" "$dest/usr/share/bash-completion/completions"
  printf '# 2 MiB hugepages for ferrox (DPDK and the shared region)\nvm.nr_hugepages = %s\n' \
    "$HUGEPAGES_WANTED" >"$dest$sysctl_dir/80-ferrox-hugepages.conf"
  "$dest$prefix/bin/ferroxctl" completions bash >"$dest/usr/share/bash-completion/completions/ferroxctl"
  mkdir -p "$dest$prefix/share/man/man8"
  for bin in ferrox-control ferrox-dataplane ferroxctl; do
    "$dest$prefix/bin/$bin" --man >"$dest$prefix/share/man/man8/$bin.8"
  done
  install -D -m 0644 deploy/grafana/ferrox.json "$dest$prefix/share/ferrox/grafana/ferrox.json"
  install -D -m 0644 deploy/prometheus/ferrox-alerts.yml "$dest$prefix/share/ferrox/prometheus/ferrox-alerts.yml"
}

cmd_install() {
  local dest=${DESTDIR:-} prefix=${PREFIX:-/usr/local}
  if [ -z "$dest" ]; then
    need_root
    install_packages
  fi
  ensure_rust
  install_files "$dest" "$prefix"
  if [ -n "$dest" ]; then
    log "staged under $dest"
    return 0
  fi
  sysctl -q -p /etc/sysctl.d/80-ferrox-hugepages.conf || true
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
  log "installed: set FERROX_ARGS in /etc/default/ferrox and the pools in /etc/ferrox/ferrox.toml,"
  log "check them with '$prefix/bin/ferrox-control --check -c /etc/ferrox/ferrox.toml',"
  log "then 'systemctl enable --now ferrox' ('systemctl reload ferrox' after a change)"
}

# ./ferrox.sh package: a Debian package of ferrox,
# target/debian/ferrox_VERSION_ARCH.deb: the binaries in /usr/bin, the unit
# in /lib/systemd/system, hugepages in /usr/lib/sysctl.d, /etc/default/ferrox
# and /etc/ferrox/ferrox.toml as configuration files (an upgrade keeps an
# operator's changes), manual pages, completions, the dashboard and alert
# rules. Depends: the packages of the shared libraries the binaries load and
# of the DPDK drivers ferrox uses. Installing it reloads systemd and reserves
# the hugepages; it starts nothing (FERROX_ARGS must be set first).
PACKAGE_DRIVERS=(librte_bus_pci librte_bus_vdev librte_mempool_ring librte_net_af_xdp
  librte_net_af_packet librte_net_tap librte_net_virtio)
build_package() {
  local out=$1 version arch root deps lib pmds drv bin
  version=$(cargo pkgid -p ferrox-control | sed 's/.*[#@]//')
  arch=$(dpkg --print-architecture)
  root=$(mktemp -d /tmp/ferrox-package-XXXXXX)
  install_files "$root" /usr /lib/systemd/system /usr/lib/sysctl.d
  gzip -9n "$root"/usr/share/man/man8/*.8
  install -D -m 0644 README.md "$root/usr/share/doc/ferrox/README.md"
  printf 'ferrox\nLicense: Apache-2.0\n' >"$root/usr/share/doc/ferrox/copyright"
  # DPDK's driver directory (pmds-<ABI>), where its drivers are <name>.so.<ABI major>.
  pmds=$(find "$(pkg-config --variable=libdir libdpdk)/dpdk" -maxdepth 1 -type d -name 'pmds-*' | sort | tail -n 1)
  deps=$( {
    for bin in ferrox-control ferrox-dataplane ferroxctl; do
      for lib in $(ldd "$root/usr/bin/$bin" | awk '/=> \// {print $3}'); do
        dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true
      done
    done
    for drv in "${PACKAGE_DRIVERS[@]}"; do
      dpkg -S "$pmds/$drv.so.$(basename "$pmds" | sed 's/pmds-\([0-9]*\).*/\1/')" 2>/dev/null || true
    done
  } | cut -d: -f1 | sort -u | paste -sd, | sed 's/,/, /g')
  [ -n "$deps" ] || die "package: no dependencies found"
  mkdir -p "$root/DEBIAN"
  {
    echo "Package: ferrox"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: ferrox <ferrox@localhost>"
    echo "Depends: $deps"
    echo "Recommends: dpdk, redis-tools"
    echo "Section: net"
    echo "Priority: optional"
    echo "Description: sharding proxy for Redis and memcached with a DPDK dataplane"
    echo " ferrox shards Redis (RESP2/RESP3) and memcached traffic over pools of"
    echo " servers from poll-mode DPDK cores running a user-space TCP stack, with"
    echo " a control process for live reconfiguration, health checks, statistics"
    echo " and hot upgrades of the dataplane that keep every client connected."
  } >"$root/DEBIAN/control"
  printf '/etc/default/ferrox\n/etc/ferrox/ferrox.toml\n' >"$root/DEBIAN/conffiles"
  printf '%s\n' '#!/bin/sh' 'set -e' \
    'sysctl -q -p /usr/lib/sysctl.d/80-ferrox-hugepages.conf || true' \
    'if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi' >"$root/DEBIAN/postinst"
  printf '%s\n' '#!/bin/sh' 'set -e' \
    'if [ "$1" = remove ] && [ -d /run/systemd/system ]; then systemctl stop ferrox.service || true; fi' \
    >"$root/DEBIAN/prerm"
  printf '%s\n' '#!/bin/sh' 'set -e' \
    'if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi' >"$root/DEBIAN/postrm"
  chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
  mkdir -p "$(dirname "$out")"
  dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
  rm -rf "$root"
}

cmd_package() {
  need_root
  install_packages
  ensure_rust
  local version out
  version=$(cargo pkgid -p ferrox-control | sed 's/.*[#@]//')
  out=target/debian/ferrox_${version}_$(dpkg --print-architecture).deb
  build_package "$out"
  log "built $out ($(du -h "$out" | cut -f1)); install it with 'apt install ./$out'"
}

# The package, checked: its control fields, its files, its unit verified by
# systemd-analyze and its configuration by --check, from what it unpacks.
check_package() {
  log "package: a Debian package, unpacked and checked"
  local dir deb f
  dir=$(mktemp -d /tmp/ferrox-deb-XXXXXX)
  CLEANUP+=("rm -rf $dir")
  deb=$dir/ferrox.deb
  build_package "$deb"
  # For the guest that installs it (vm-testbed/package.sh), later in `test`.
  PACKAGE_DEB=$deb
  dpkg-deb --field "$deb" Depends | grep -q 'librte-eal' || die "package: no DPDK dependency"
  dpkg-deb --field "$deb" Depends | grep -q 'librte-net-af-xdp' || die "package: no af_xdp driver dependency"
  dpkg-deb -x "$deb" "$dir/root"
  dpkg-deb -e "$deb" "$dir/DEBIAN"
  for f in usr/bin/ferrox-control usr/bin/ferrox-dataplane usr/bin/ferroxctl lib/systemd/system/ferrox.service \
    etc/default/ferrox etc/ferrox/ferrox.toml usr/lib/sysctl.d/80-ferrox-hugepages.conf \
    usr/share/man/man8/ferroxctl.8.gz usr/share/bash-completion/completions/ferroxctl \
    usr/share/ferrox/grafana/ferrox.json; do
    [ -s "$dir/root/$f" ] || die "package: $f missing"
  done
  grep -qx /etc/ferrox/ferrox.toml "$dir/DEBIAN/conffiles" || die "package: the configuration is not a conffile"
  verify_unit package "$dir/root/lib/systemd/system/ferrox.service" /usr/bin "$dir/root/usr/bin"
  "$dir/root/usr/bin/ferrox-control" --check -c "$dir/root/etc/ferrox/ferrox.toml" >/dev/null \
    || die "package: its configuration does not pass --check"
}

# verify_unit WHAT UNIT BINDIR STAGED_BINDIR: systemd-analyze accepts UNIT
# without a warning, its ExecStart pointed at the staged binaries.
verify_unit() {
  local what=$1 unit=$2 bindir=$3 staged=$4 copy said
  if ! command -v systemd-analyze >/dev/null; then
    echo "$what: systemd-analyze not found; the unit was not verified"
    return 0
  fi
  copy=$(mktemp -d /tmp/ferrox-unit-XXXXXX)
  sed "s|$bindir|$staged|g" "$unit" >"$copy/ferrox.service"
  said=$(systemd-analyze verify "$copy/ferrox.service" 2>&1) || { rm -rf "$copy"; die "$what: systemd-analyze verify failed: $said"; }
  rm -rf "$copy"
  [ -z "$said" ] || die "$what: systemd-analyze verify warns: $said"
}

# The installation, staged under a scratch root: every file in place, the
# unit accepted by systemd-analyze without a warning (with ExecStart on the
# staged binary), and the installed configuration passing the offline check.
check_install() {
  log "install: staged under a scratch root"
  local root said page
  root=$(mktemp -d /tmp/ferrox-install-XXXXXX)
  CLEANUP+=("rm -rf $root")
  install_files "$root" /usr/local
  for f in usr/local/bin/ferrox-control usr/local/bin/ferrox-dataplane usr/local/bin/ferroxctl \
    etc/systemd/system/ferrox.service etc/default/ferrox etc/ferrox/ferrox.toml \
    etc/sysctl.d/80-ferrox-hugepages.conf usr/share/bash-completion/completions/ferroxctl \
    usr/local/share/ferrox/grafana/ferrox.json usr/local/share/ferrox/prometheus/ferrox-alerts.yml \
    usr/local/share/man/man8/ferrox-control.8 usr/local/share/man/man8/ferrox-dataplane.8 \
    usr/local/share/man/man8/ferroxctl.8; do
    [ -s "$root/$f" ] || die "install: $f missing"
  done
  for page in "$root"/usr/local/share/man/man8/*.8; do
    grep -q '^\.TH ' "$page" || die "install: $page is no manual page"
    if command -v groff >/dev/null; then
      said=$(groff -man -Tutf8 -ww "$page" 2>&1 >/dev/null) || die "install: groff failed on $page"
      [ -z "$said" ] || die "install: groff warns on $page: $said"
    fi
  done
  verify_unit install "$root/etc/systemd/system/ferrox.service" /usr/local/bin "$root/usr/local/bin"
  "$root/usr/local/bin/ferrox-control" --check --config "$root/etc/ferrox/ferrox.toml" >/dev/null \
    || die "install: the installed configuration does not pass --check"
}

case "${1:-}" in
  demo) shift; cmd_demo "$@" ;;
  demo-shm) shift; cmd_demo_shm "$@" ;;
  fuzz) shift; cmd_fuzz "$@" ;;
  test) shift; cmd_test "$@" ;;
  bench) shift; cmd_bench "$@" ;;
  soak) shift; cmd_soak "$@" ;;
  install) shift; cmd_install "$@" ;;
  package) shift; cmd_package "$@" ;;
  *) echo "usage: $0 demo|test|bench|fuzz|soak|install|package|demo-shm" >&2; exit 2 ;;
esac
