#!/usr/bin/env bash
# The real PCI path, end to end: a QEMU guest with one virtio-net NIC, which
# the guest's kernel first drives (virtio-pci) and dpdk-devbind.py then
# rebinds to uio_pci_generic; ferrox on that NIC through a PCI allow-list
# naming it alone; Redis backends and clients on the host side of the NIC's
# tap, in a network namespace this script creates.
#
#   vm-testbed/run.sh              (root; the exit code is the verdict)
#   vm-testbed/run.sh --self-test  (any user, a few seconds: the KVM probe,
#                                   its stop and the TCG fallback, against
#                                   a stand-in QEMU; every run starts with it)
#
# The guest is built from Debian packages only (see vm-testbed/README.md)
# and cached under $VM_CACHE, rebuilt when any input changes. KVM is used
# when it brings the guest to /init within KVM_WAIT seconds; otherwise TCG
# with -cpu max (DPDK needs SSE4.2, which QEMU's default qemu64 lacks).
#
# Environment: VM_PROFILE (debug: the binary `cargo test` builds anyway;
# release), VM_LCORES (vCPUs, NIC queue pairs and ferrox lcores; default
# 2), VM_REQUESTS (redis-benchmark requests per test, default 20000),
# VM_ACCEL (auto, kvm or tcg), KVM_WAIT, BOOT_WAIT, VM_CACHE, VM_BUILD=0
# (use the binaries already built), VM_SELF_TEST=0 (skip the self-test).
set -euo pipefail
SCRIPT=$(readlink -f "$0")
cd "$(dirname "$SCRIPT")/.."
SELF_TEST=""
[ "${1:-}" = --self-test ] && SELF_TEST=1

PROFILE=${VM_PROFILE:-debug}
REQUESTS=${VM_REQUESTS:-20000}
ACCEL=${VM_ACCEL:-auto}
LCORES=${VM_LCORES:-2}
KVM_WAIT=${KVM_WAIT:-8}
BOOT_WAIT=${BOOT_WAIT:-180}
CACHE=${VM_CACHE:-/var/cache/ferrox-vm-testbed}
NS=fxvm$$
TAP=fxvmtap0
HOST_IP=198.18.2.1
GUEST_IP=198.18.2.2
BACKENDS=("$HOST_IP:7001:1" "$HOST_IP:7002:1")
# The NIC's slot on QEMU's i440fx root bus, and so its PCI address in the
# guest: the one address the dataplane's allow-list names.
NIC=0000:00:04.0
# Debian's Python, whatever else is first on PATH (pyenv and the like).
PYTHON=/usr/bin/python3
DEVBIND=/usr/bin/dpdk-devbind.py
WORK=$(mktemp -d /tmp/ferrox-vm-XXXXXX)
QEMU_PID=""
CON_PID=""
PIDS=()
# How QEMU is started: in the namespace (the self-test puts a stand-in here).
QEMU_RUN=(ip netns exec "$NS" qemu-system-x86_64)
# Tenths of a second a process has after SIGTERM before SIGKILL.
STOP_WAIT=50

# SIGTERM, then SIGKILL if it is still there after STOP_WAIT tenths of a
# second (a vCPU stuck in KVM ignores SIGTERM), so no way out waits
# forever. Whatever state the process is in, gone already included, no
# step fails: this runs under `set -e`. STOP_KILLED says whether it took
# SIGKILL.
stop_pid() {
  local pid=$1 i
  STOP_KILLED=0
  [ -n "$pid" ] || return 0
  if kill "$pid" 2>/dev/null; then
    for ((i = 0; i < STOP_WAIT; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null; then
      STOP_KILLED=1
    fi
  fi
  wait "$pid" 2>/dev/null || true
  return 0
}

log() { printf '\033[1m==> vm-testbed: %s\033[0m\n' "$*" >&2; }
fail() {
  echo "vm-testbed: FAILED: $*" >&2
  # Another run of ferrox.sh removes the fx* namespaces it did not have
  # when it started: say so rather than leave it to be guessed.
  if [ -n "${NS_MADE:-}" ] && ! ip netns list | grep -qw "$NS"; then
    echo "vm-testbed: (namespace $NS was deleted from outside this script)" >&2
  fi
  exit 1
}

# Every path out: QEMU, the console reader and the backends (by PID, all
# started here), then the namespace, which takes the tap with it. On
# failure, the guest's console and QEMU's own messages.
cleanup() {
  local rc=$? pid
  set +e
  [ -n "$QEMU_PID" ] && stop_pid "$QEMU_PID"
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  [ -n "${NS_MADE:-}" ] && ip netns del "$NS" 2>/dev/null
  if [ "$rc" -ne 0 ] && [ "$ACCEL_USED" != none ]; then
    echo "---- guest console ($ACCEL_USED) ----" >&2
    cat "$WORK/console.log" >&2 2>/dev/null
    if [ -s "$WORK/qemu.log" ]; then
      echo "---- qemu ----" >&2
      cat "$WORK/qemu.log" >&2
    fi
    echo "---- end ----" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
ACCEL_USED=none
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- booting: KVM probe, stop, TCG fallback (also run by --self-test) -------
# The serial console is a pair of FIFOs: QEMU opens both read-write, so
# neither side blocks; the reader copies the guest's output into the log.
# Each boot gets new ones, so nothing a killed QEMU wrote is read as the
# next one's output.
new_console() {
  [ -n "${CON_IN:-}" ] && exec {CON_IN}>&-
  rm -f "$WORK/con.in" "$WORK/con.out"
  mkfifo "$WORK/con.in" "$WORK/con.out"
  exec {CON_IN}<>"$WORK/con.in"
}

boot() { # accel cpu
  new_console
  : >"$WORK/console.log"
  ACCEL_USED=$1
  # q35 with a virtual IOMMU (VT-d), and the NIC behind it: vfio-pci, the
  # driver real machines use, needs one (Debian's kernel has no VFIO
  # no-IOMMU mode). 48-bit addresses: DPDK maps its memory at its virtual
  # addresses (IOVA as VA), beyond the default 39 bits.
  "${QEMU_RUN[@]}" -accel "$1" -cpu "$2" -m 1024 -smp "$LCORES" \
    -machine q35 -device intel-iommu,intremap=off,aw-bits=48 \
    -kernel "$KDIR/vmlinuz" -initrd "$INITRD" \
    -append "console=ttyS0 panic=-1 quiet intel_iommu=on fxlcores=0-$((LCORES - 1))" \
    -nodefaults -display none -no-reboot \
    -chardev pipe,id=con,path="$WORK/con" -serial chardev:con \
    -netdev tap,id=n0,ifname="$TAP",script=no,downscript=no,vhost=off"$NIC_QUEUES" \
    -device virtio-net-pci,netdev=n0,addr=0x4,mac=52:54:00:f0:0f:01,iommu_platform=on,disable-legacy=on"$NIC_MQ" \
    >"$WORK/qemu.log" 2>&1 &
  QEMU_PID=$!
  cat "$WORK/con.out" >>"$WORK/console.log" &
  CON_PID=$!
  PIDS+=("$CON_PID")
}

wait_console() { # text seconds
  local deadline=$((SECONDS + $2))
  until grep -q "$1" "$WORK/console.log"; do
    grep -q "ferrox-vm: FAILED" "$WORK/console.log" && return 1
    kill -0 "$QEMU_PID" 2>/dev/null || return 1
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# Stops QEMU and its console reader; QEMU_KILLED says whether QEMU took
# SIGKILL.
stop_qemu() {
  stop_pid "$QEMU_PID"
  QEMU_KILLED=$STOP_KILLED
  stop_pid "$CON_PID"
  QEMU_PID=""
}

kvm_usable() { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }

# KVM with -cpu host first, kept if the guest reaches /init within
# KVM_WAIT seconds; otherwise (or without /dev/kvm) TCG with -cpu max.
# Sets accel, started, and KVM_KILLED (the KVM QEMU ignored SIGTERM).
start_guest() {
  local why
  accel=""
  KVM_KILLED=0
  started=$SECONDS
  if [ "$ACCEL" != tcg ] && kvm_usable; then
    log "booting with KVM (up to ${KVM_WAIT}s to reach /init)"
    boot kvm host
    if wait_console "ferrox-vm: booted" "$KVM_WAIT"; then
      accel=kvm
    else
      if kill -0 "$QEMU_PID" 2>/dev/null; then
        why="no /init after ${KVM_WAIT}s"
      else
        why=$(grep -v '^$' "$WORK/qemu.log" | head -n 1 || true)
        why=${why:-QEMU exited}
      fi
      stop_qemu
      KVM_KILLED=$QEMU_KILLED
      if [ "$KVM_KILLED" = 1 ]; then
        why="$why; QEMU ignored SIGTERM and was killed"
      fi
      if [ "$ACCEL" = kvm ]; then
        fail "KVM: $why"
      fi
      log "KVM did not work ($why): TCG instead"
    fi
  elif [ "$ACCEL" = kvm ]; then
    fail "no usable /dev/kvm"
  fi
  if [ -z "$accel" ]; then
    log "booting with TCG (-cpu max, $LCORES vCPUs)"
    started=$SECONDS
    boot tcg max
    wait_console "ferrox-vm: booted" "$BOOT_WAIT" || fail "the guest did not boot"
    accel=tcg
  fi
}

# --self-test: start_guest as a real run calls it, against a stand-in for
# qemu-system-x86_64 that opens the console FIFOs as QEMU does and then,
# under KVM, behaves as each way KVM has failed here: it aborts at once;
# it hangs but dies on SIGTERM (the QEMU that stop_pid once tripped over,
# ending the script before TCG started); it hangs and ignores SIGTERM (a
# vCPU stuck in KVM, which only SIGKILL ends); or it boots. Under TCG it
# boots, and notes whether the KVM one still ran.
self_test() {
  STOP_WAIT=10 KVM_WAIT=1 BOOT_WAIT=10 ACCEL=auto LCORES=1
  KDIR=$WORK INITRD=$WORK/initrd TAP=none NIC_QUEUES="" NIC_MQ=""
  kvm_usable() { return 0; }
  export FAKE_LOG=$WORK/fake-qemu.log
  QEMU_RUN=("$WORK/fake-qemu")
  cat >"$WORK/fake-qemu" <<'FAKE'
#!/usr/bin/env bash
accel="" con=""
while [ $# -gt 0 ]; do
  case "$1" in
    -accel) accel=$2; shift ;;
    -chardev) con=${2##*path=}; con=${con%%,*}; shift ;;
  esac
  shift
done
exec 3<>"$con.out" 4<>"$con.in"
echo "$accel $$" >>"$FAKE_LOG"
if [ "$accel" = kvm ]; then
  case "$FAKE_KVM" in
    abort) echo "qemu-system-x86_64: error: failed to set MSR 0x10a" >&2; exit 1 ;;
    hang) exec sleep 600 ;;
    stuck) trap '' TERM; exec sleep 600 ;;
  esac
else
  kvm=$(awk '$1 == "kvm" {print $2}' "$FAKE_LOG")
  if [ -n "$kvm" ] && kill -0 "$kvm" 2>/dev/null; then echo "kvm-alive" >>"$FAKE_LOG"; fi
fi
echo "ferrox-vm: booted ($accel)" >&3
exec sleep 600
FAKE
  chmod +x "$WORK/fake-qemu"
  local case want kvm_pid guest_pid
  for case in abort hang stuck works; do
    export FAKE_KVM=$case
    : >"$FAKE_LOG"
    want=tcg
    [ "$case" = works ] && want=kvm
    start_guest
    [ "$accel" = "$want" ] || fail "self-test $case: booted with $accel, not $want"
    grep -q "ferrox-vm: booted ($want)" "$WORK/console.log" \
      || fail "self-test $case: no boot on the console: $(cat "$WORK/console.log")"
    if [ "$want" = tcg ]; then
      kvm_pid=$(awk '$1 == "kvm" {print $2}' "$FAKE_LOG")
      if kill -0 "$kvm_pid" 2>/dev/null; then fail "self-test $case: the KVM QEMU still runs"; fi
      if grep -q kvm-alive "$FAKE_LOG"; then
        fail "self-test $case: TCG started while the KVM QEMU still ran"
      fi
      if [ "$case" = stuck ] && [ "$KVM_KILLED" != 1 ]; then
        fail "self-test $case: the KVM QEMU ignored SIGTERM but was not killed"
      fi
    fi
    guest_pid=$QEMU_PID
    stop_qemu
    if kill -0 "$guest_pid" 2>/dev/null; then fail "self-test $case: QEMU still runs"; fi
  done
  log "self-test passed: KVM aborting, hanging, ignoring SIGTERM and working"
}

if [ -n "$SELF_TEST" ]; then
  self_test
  exit 0
fi
# Every run checks first, in seconds, that a KVM that fails in any of the
# ways seen here leads to TCG.
if [ "${VM_SELF_TEST:-1}" = 1 ]; then
  if ! self_test_out=$("$SCRIPT" --self-test 2>&1); then
    echo "$self_test_out" >&2
    fail "the self-test of the KVM probe and the TCG fallback failed"
  fi
  log "self-test: a KVM that aborts, hangs or ignores SIGTERM leads to TCG"
fi

[ "$(id -u)" -eq 0 ] || fail "run as root (network namespace, tap, hugepages in the guest)"

# ---- inputs -----------------------------------------------------------------
apt_updated=""
apt_update() { [ -n "$apt_updated" ] || DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1; }
missing=()
for p in qemu-system-x86 busybox-static cpio kmod pciutils dpdk python3 redis-server redis-tools; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${VM_BUILD:-1}" = 1 ]; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  flags=(--locked -q)
  [ "$PROFILE" = release ] && flags+=(--release)
  cargo build "${flags[@]}" -p ferrox-dataplane -p ferrox-control
  cargo build "${flags[@]}" -p ferrox-route --example place
fi
DATAPLANE=target/$PROFILE/ferrox-dataplane
CONTROL=target/$PROFILE/ferrox-control
CTL=target/$PROFILE/ferroxctl
PLACE=target/$PROFILE/examples/place

# The kernel: whatever linux-image-amd64 depends on, from the package
# lists; downloaded and unpacked, never installed on the host.
kernel_package() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
KPKG=$(kernel_package)
[ -n "$KPKG" ] || { apt_update; KPKG=$(kernel_package); }
[ -n "$KPKG" ] || fail "cannot find the kernel package behind linux-image-amd64"
# What the guest loads: its virtio-net driver, and the driver DPDK uses.
GUEST_MODULES=(virtio_pci virtio_net vfio vfio_iommu_type1 vfio-pci)
if [ "$(cat "$CACHE/$KPKG/done" 2>/dev/null)" != "${GUEST_MODULES[*]}" ]; then
  log "downloading $KPKG"
  if ! (cd "$WORK" && apt-get download -q "$KPKG" >/dev/null 2>&1); then
    # Stale package lists: the archive has moved to a newer kernel.
    apt_update
    KPKG=$(kernel_package)
    (cd "$WORK" && apt-get download -q "$KPKG" >/dev/null 2>&1) || fail "apt-get download $KPKG failed"
  fi
fi
KVER=${KPKG#linux-image-}
KDIR=$CACHE/$KPKG
if [ "$(cat "$KDIR/done" 2>/dev/null)" != "${GUEST_MODULES[*]}" ]; then
  rm -rf "$KDIR" && mkdir -p "$KDIR"
  dpkg-deb -x "$WORK/$KPKG"_*.deb "$WORK/kernel"
  # The modules the guest loads, with everything they depend on
  # (modules.dep is made by depmod at install time, so make it here), and
  # the lists of built-in ones, from which depmod makes the indexes that
  # lspci -k (through libkmod) reads.
  mods=$WORK/kernel/lib/modules/$KVER
  depmod -b "$WORK/kernel" "$KVER"
  mkdir -p "$KDIR/modules"
  cp "$mods"/modules.{builtin,builtin.modinfo,order} "$KDIR/modules/"
  # Compressed modules (Debian 13 ships .ko.xz) are stored plain, for
  # busybox's modprobe.
  for m in "${GUEST_MODULES[@]}"; do
    grep -E "^kernel/.*/$m\.ko(\.xz|\.zst)?:" "$mods/modules.dep" | tr -d ':' | tr ' ' '\n'
  done | sort -u | while read -r ko; do
    [ -n "$ko" ] || continue
    mkdir -p "$KDIR/modules/$(dirname "$ko")"
    case "$ko" in
      *.xz) xz -dc "$mods/$ko" >"$KDIR/modules/${ko%.xz}" ;;
      *.zst) zstd -qdc "$mods/$ko" >"$KDIR/modules/${ko%.zst}" ;;
      *) cp "$mods/$ko" "$KDIR/modules/$ko" ;;
    esac
  done
  for m in "${GUEST_MODULES[@]}"; do
    find "$KDIR/modules" -name "$m.ko" | grep -q . || fail "no $m module in $KPKG"
  done
  cp "$WORK/kernel/boot/vmlinuz-$KVER" "$KDIR/vmlinuz"
  rm -rf "$WORK/kernel" "$WORK/$KPKG"_*.deb
  echo "${GUEST_MODULES[*]}" >"$KDIR/done"
fi
# Kernels of earlier point releases.
find "$CACHE" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -name "$KPKG" -exec rm -rf {} +

CONFIG=$WORK/ferrox.toml
servers=$(printf '"%s", ' "${BACKENDS[@]}")
cat >"$CONFIG" <<EOF
[pools.vm]
listen = "0.0.0.0:6379"
protocol = "redis"
hash = "murmur"
distribution = "ketama"
timeout_ms = 5000
servers = [${servers%, }]
EOF

# ---- the guest's initramfs, cached by the hash of everything in it --------
PMDS=$(find /usr/lib/x86_64-linux-gnu/dpdk -maxdepth 1 -name 'pmds-*' | sort | tail -n 1)
[ -d "$PMDS" ] || fail "no DPDK driver directory under /usr/lib/x86_64-linux-gnu/dpdk"
# The drivers (EAL plugins) the dataplane needs here: the PCI bus, the
# virtio PMD and the ring mempool; the vdev bus is probed whatever the
# allow-list says.
PLUGINS=(librte_bus_pci.so librte_bus_vdev.so librte_mempool_ring.so librte_net_virtio.so)
# The Python modules dpdk-devbind.py imports, found by running it.
python_modules() {
  "$PYTHON" -E -v "$DEVBIND" --help 2>&1 >/dev/null \
    | sed -n "s/^# code object from '\(.*\)'$/\1/p; s/^# extension module .* from '\(.*\)'$/\1/p" | sort -u
}
PYFILES=$(python_modules)
[ -n "$PYFILES" ] || fail "cannot list the Python modules $DEVBIND imports"
PYLIB=$("$PYTHON" -E -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
PYEXE=$(readlink -f "$PYTHON")
EXES=("$DATAPLANE" "$CONTROL" "$CTL" "$PYEXE" /usr/bin/lspci)

inputs=$( {
  sha256sum "${EXES[@]}" "$KDIR/vmlinuz" vm-testbed/guest-init.sh vm-testbed/run.sh "$CONFIG" /bin/busybox "$DEVBIND"
  find "$KDIR/modules" -type f -exec sha256sum {} +
  for p in "${PLUGINS[@]}"; do sha256sum "$PMDS/$p"; done
  echo "$PYFILES"
} | sha256sum | cut -c1-16)
INITRD=$CACHE/initrd-$inputs.cpio.gz
if [ ! -f "$INITRD" ]; then
  log "building the guest"
  rm -f "$CACHE"/initrd-*.cpio.gz
  R=$WORK/root
  # Merged /usr, as on Debian: every path below is the host's own.
  mkdir -p "$R"/{proc,sys,dev,tmp,run,etc,root,var,usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin}
  for d in bin sbin lib lib64; do ln -s "usr/$d" "$R/$d"; done
  ln -s ../run "$R/var/run"
  # A file at its host path, with each symbolic link on the way to it.
  copy_path() {
    local p=$1 t
    while [ -L "$p" ]; do
      mkdir -p "$R$(dirname "$p")"
      [ -e "$R$p" ] || [ -L "$R$p" ] || cp -P "$p" "$R$p"
      t=$(readlink "$p")
      case "$t" in /*) p=$t ;; *) p=$(realpath -ms "$(dirname "$p")/$t") ;; esac
    done
    mkdir -p "$R$(dirname "$p")"
    [ -e "$R$p" ] || cp -p "$p" "$R$p"
  }
  cp /bin/busybox "$R/usr/bin/busybox"
  cp vm-testbed/guest-init.sh "$R/init"
  cp "$CONFIG" "$R/etc/ferrox.toml"
  echo "$NIC" >"$R/etc/ferrox-nic"
  mkdir -p "$R/usr/lib/modules"
  cp -r "$KDIR/modules" "$R/usr/lib/modules/$KVER"
  depmod -b "$R" "$KVER"
  # The binaries, stripped of their debug info (the guest has no debugger).
  for exe in "$DATAPLANE" "$CONTROL" "$CTL"; do
    objcopy --strip-debug "$exe" "$R/usr/local/bin/$(basename "$exe")"
  done
  # dpdk-devbind.py as Debian ships it, and what it runs: Python with the
  # modules it imports (byte code with its source, so nothing compiles in
  # the guest), lspci and the PCI ID list.
  copy_path "$DEVBIND"
  copy_path "$PYTHON"
  while read -r f; do
    copy_path "$f"
    case "$f" in
      */__pycache__/*.pyc)
        src=$(dirname "$(dirname "$f")")/$(basename "$f" | sed 's/\.cpython-[0-9]*\.pyc$/.py/')
        [ -f "$src" ] && copy_path "$src" ;;
    esac
  done <<<"$PYFILES"
  # The landmarks by which Python finds its standard library.
  copy_path "$PYLIB/os.py"
  mkdir -p "$R$PYLIB/lib-dynload"
  copy_path /usr/bin/lspci
  [ -f /usr/share/misc/pci.ids ] && copy_path /usr/share/misc/pci.ids
  # The plugins, through the same links as on the host, so that a driver
  # loaded as a plugin and as another's dependency is one file, loaded once.
  for p in "${PLUGINS[@]}"; do copy_path "$PMDS/$p"; done
  # Every shared library the programs and the plugins load, at its path.
  { for e in "${EXES[@]}"; do ldd "$e"; done; for p in "${PLUGINS[@]}"; do ldd "$PMDS/$p"; done; } \
    | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u | while read -r lib; do
      copy_path "$lib"
    done
  (cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initrd"
  mv "$WORK/initrd" "$INITRD"
fi
log "guest: Debian kernel $KVER, $(du -h "$INITRD" | cut -f1) initramfs, $PROFILE dataplane"

# ---- the host side: namespace, tap, backends --------------------------------
in_ns() { ip netns exec "$NS" "$@"; }
ip netns add "$NS"
NS_MADE=1
in_ns ip link set lo up
# One queue pair per lcore: a multi-queue tap, and virtio-net with as many
# queue pairs (QEMU opens a single-queue tap without the flag).
if [ "$LCORES" -gt 1 ]; then
  in_ns ip tuntap add dev "$TAP" mode tap multi_queue
  NIC_QUEUES=",queues=$LCORES"
  NIC_MQ=",mq=on,vectors=$((2 * LCORES + 2))"
else
  in_ns ip tuntap add dev "$TAP" mode tap
  NIC_QUEUES="" NIC_MQ=""
fi
in_ns ip addr add "$HOST_IP/24" dev "$TAP"
in_ns ip link set "$TAP" up
for b in "${BACKENDS[@]}"; do
  port=${b#*:}
  port=${port%:*}
  # Not through in_ns in a subshell: $! must be the server itself.
  ip netns exec "$NS" redis-server --bind "$HOST_IP" --port "$port" --save '' --appendonly no \
    --protected-mode no --loglevel warning >"$WORK/redis-$port.log" 2>&1 &
  PIDS+=("$!")
done

# ---- boot -------------------------------------------------------------------
start_guest
boot_s=$((SECONDS - started))
wait_console "ferrox-vm: READY" "$BOOT_WAIT" || fail "the guest did not bring ferrox up"
ready_s=$((SECONDS - started))
log "guest at /init after ${boot_s}s, ferrox serving after ${ready_s}s ($accel)"
sed -n '/ferrox-vm: booted/,$p' "$WORK/console.log" | sed 's/^/  | /' >&2

# ---- traffic through the guest ----------------------------------------------
cli() { in_ns timeout 20 redis-cli -h "$GUEST_IP" "$@"; }
backend() { # host:port:weight, then a command
  local b=$1
  shift
  in_ns timeout 10 redis-cli -h "${b%%:*}" -p "$(cut -d: -f2 <<<"$b")" "$@"
}
for _ in $(seq 40); do
  [ "$(cli PING 2>/dev/null)" = PONG ] && break
  sleep 0.5
done
[ "$(cli PING)" = PONG ] || fail "no PONG through the guest"
KEYS=40
for i in $(seq 1 "$KEYS"); do
  [ "$(cli SET "vm:$i" "v$i")" = OK ] || fail "SET vm:$i through the guest"
done
for i in 1 17 "$KEYS"; do
  [ "$(cli GET "vm:$i")" = "v$i" ] || fail "GET vm:$i through the guest"
done
log "redis-cli: $KEYS SETs and 3 GETs through ferrox in the guest"

# ---- a hot upgrade on the PCI NIC --------------------------------------------
# One client connection INCRs a counter without pause while the guest's
# dataplane hands its connections to a new process on the same virtio NIC:
# every reply must be the previous one plus one, on the same connection.
cat >"$WORK/incr.py" <<'PY'
import socket, sys, os, time
host, ready, stop = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.create_connection((host, 6379), timeout=60)
expected, worst, deadline = 1, 0.0, time.monotonic() + 300
while time.monotonic() < deadline and not os.path.exists(stop):
    t = time.monotonic()
    s.sendall(b"*2\r\n$4\r\nINCR\r\n$7\r\nup:incr\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = s.recv(64)
        if not chunk:
            sys.exit(f"the connection closed after INCR {expected - 1}")
        reply += chunk
    if reply != b":%d\r\n" % expected:
        sys.exit(f"INCR {expected} answered {reply!r}")
    worst = max(worst, time.monotonic() - t)
    if expected == 100:
        open(ready, "w").close()
    expected += 1
    time.sleep(0.002)
print(f"{expected - 1} {worst * 1000:.0f}", flush=True)
PY
in_ns timeout 400 "$PYTHON" "$WORK/incr.py" "$GUEST_IP" "$WORK/incr.ready" "$WORK/incr.stop" >"$WORK/incr.out" 2>&1 &
incr_pid=$!
PIDS+=("$incr_pid")
for _ in $(seq 300); do
  [ -f "$WORK/incr.ready" ] && break
  kill -0 "$incr_pid" 2>/dev/null || break
  sleep 0.1
done
[ -f "$WORK/incr.ready" ] || fail "the INCR client did not get going: $(cat "$WORK/incr.out")"
echo upgrade >&"$CON_IN"
wait_console "ferrox-vm: UPGRADED" 120 || fail "the guest did not upgrade its dataplane"
sleep 1
touch "$WORK/incr.stop"
wait "$incr_pid" || fail "the INCR client failed across the upgrade: $(cat "$WORK/incr.out")"
read -r incrs incr_worst_ms <"$WORK/incr.out"
[ "$(cli GET up:incr)" = "$incrs" ] || fail "the counter is $(cli GET up:incr), not $incrs"
log "hot upgrade on the PCI NIC: $(grep -o 'UPGRADED.*' "$WORK/console.log" | tr -d '\r' | head -n 1 | cut -c10-); one connection's $incrs INCRs all in order, longest wait ${incr_worst_ms} ms"
bench_started=$SECONDS
# (redis-benchmark asks for CONFIG first; ferrox refuses administrative
# commands, and the benchmark says so and goes on with its defaults.)
bench=$(in_ns timeout 240 redis-benchmark -h "$GUEST_IP" -t set,get -n "$REQUESTS" -c 20 -P 8 \
  -r 1000 -q 2>&1 | tr '\r' '\n' | grep -v '^[[:space:]]*$' | grep -v "rps=\|Could not fetch server CONFIG" || true)
grep -qi "error" <<<"$bench" && fail "redis-benchmark saw errors: $bench"
[ "$(grep -c "requests per second" <<<"$bench")" = 2 ] || fail "redis-benchmark did not finish: $bench"
log "redis-benchmark: $REQUESTS SETs and $REQUESTS GETs (20 clients, pipelines of 8) in $((SECONDS - bench_started))s"
sed 's/^/  /' <<<"$bench" >&2

# Every request reached a backend once: the backends' own call counts.
sets=0 gets=0
for b in "${BACKENDS[@]}"; do
  stats=$(backend "$b" INFO commandstats | tr -d '\r')
  s=$(sed -n 's/^cmdstat_set:calls=\([0-9]*\),.*/\1/p' <<<"$stats")
  g=$(sed -n 's/^cmdstat_get:calls=\([0-9]*\),.*/\1/p' <<<"$stats")
  echo "  ${b%:*}: ${s:-0} SET, ${g:-0} GET" >&2
  sets=$((sets + ${s:-0})) gets=$((gets + ${g:-0}))
done
[ "$sets" -eq $((KEYS + REQUESTS)) ] || fail "the backends saw $sets SETs, not $((KEYS + REQUESTS))"
# The testbed's 3 GETs, the upgrade's GET of its counter, the benchmark's.
[ "$gets" -eq $((4 + REQUESTS)) ] || fail "the backends saw $gets GETs, not $((4 + REQUESTS))"
# Every key, the testbed's and the benchmark's, on the backend the router
# names (the routing code itself, through the place example).
: >"$WORK/found"
for b in "${BACKENDS[@]}"; do
  backend "$b" --scan | tr -d '\r' | sed "s|\$|\t${b%:*}|" >>"$WORK/found"
done
mapfile -t all_keys < <(cut -f1 "$WORK/found")
[ "$(grep -c '^vm:' "$WORK/found")" -eq "$KEYS" ] || fail "not all $KEYS testbed keys are on the backends"
"$PLACE" murmur ketama "${BACKENDS[@]}" -- "${all_keys[@]}" | sort >"$WORK/placed"
sort "$WORK/found" | diff -u "$WORK/placed" - >&2 || fail "keys not on the backend the router names"
for b in "${BACKENDS[@]}"; do
  n=$(grep -c "${b%:*}\$" "$WORK/found" || true)
  [ "$n" -gt 0 ] || fail "no key on ${b%:*}: the test shows nothing about placement"
done
log "${#all_keys[@]} keys, each on the backend the router names; every SET and GET reached its backend once"

# ---- stop --------------------------------------------------------------------
echo stop >&"$CON_IN"
wait_console "ferrox-vm: DONE" 60 || fail "the guest did not stop ferrox"
stats=$(grep "ferrox-dataplane: stopped;" "$WORK/console.log" | tail -n 1 | tr -d '\r')
echo "  ferrox: $(grep -o "requests=[0-9]* errors=[0-9]*\|steered=[0-9]*\|bad_checksum=[0-9]*\|core[0-9]*_accepted=[0-9]*" <<<"$stats" | tr '\n' ' ')" >&2
grep -q " errors=0 " <<<"$stats" || fail "ferrox counted errors: $stats"
grep -q " bad_checksum=0 " <<<"$stats" || fail "ferrox dropped frames for their checksum: $stats"
# QEMU's virtio-net offers checksum offload both ways: the NIC checks what
# arrives (software only where it did not) and fills what leaves.
port=$(grep -o "port started.*" "$WORK/console.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -n 1)
grep -q "tx_checksum_offload=true rx_checksum=Nic" <<<"$port" || fail "checksum offload is not on: $port"
for c in $(seq 0 $((LCORES - 1))); do
  grep -q " core${c}_accepted=[1-9]" <<<"$stats" || fail "lcore $c accepted no connection: $stats"
done
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=""
log "passed in $((SECONDS - started))s on $accel with $LCORES lcores (boot ${boot_s}s, serving after ${ready_s}s)"
