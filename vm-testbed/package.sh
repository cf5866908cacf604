#!/usr/bin/env bash
# The Debian package as an operator meets it: installed with apt on a
# Debian system that boots with systemd, then started, scraped, reloaded
# (with a good and a bad configuration), checked offline and stopped.
#
#   vm-testbed/package.sh FERROX.deb    (root; the exit code is the verdict)
#
# The guest: a Debian root of the host's release made by debootstrap
# (systemd as init, redis-server, python3-prometheus-client), cached under
# $VM_CACHE; the package installed into it with `apt-get install ./…deb`,
# which fetches the DPDK libraries its Depends name; booted by QEMU from
# RAM (the root is the initramfs, so no disk image is needed), on the
# kernel the vm-testbed uses. Inside it a veth pair stands for the NIC:
# the dataplane on veth1 through net_af_packet, two redis-server backends
# on veth0. A unit of the test's own (package-guest-test.sh) runs the
# operator's steps after boot and reports on the serial console.
#
# Environment: VM_CACHE (as vm-testbed/run.sh), PKG_ACCEL (tcg, the
# default, or kvm), BOOT_WAIT (seconds for the whole guest run, default 900).
set -euo pipefail
DEB=$(readlink -f "${1:?usage: vm-testbed/package.sh FERROX.deb}")
cd "$(dirname "$(readlink -f "$0")")/.."
CACHE=${VM_CACHE:-/var/cache/ferrox-vm-testbed}
ACCEL=${PKG_ACCEL:-tcg}
BOOT_WAIT=${BOOT_WAIT:-900}
SUITE=$(. /etc/os-release && echo "$VERSION_CODENAME")
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# What the guest has besides the package: systemd as init, the backends
# and clients, the exposition parser, and what the test unit runs.
INCLUDE=systemd,systemd-sysv,dbus,kmod,iproute2,procps,redis-server,redis-tools,python3,python3-prometheus-client,ca-certificates
WORK=$(mktemp -d /tmp/ferrox-pkg-XXXXXX)
QEMU_PID=""

log() { printf '==> package guest: %s\n' "$*" >&2; }
fail() {
  echo "package guest: FAILED: $*" >&2
  exit 1
}
cleanup() {
  local rc=$? i
  set +e
  if [ -n "$QEMU_PID" ]; then
    kill "$QEMU_PID" 2>/dev/null
    for ((i = 0; i < 50; i++)); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$QEMU_PID" 2>/dev/null
    wait "$QEMU_PID" 2>/dev/null
  fi
  if [ "$rc" -ne 0 ] && [ -s "$WORK/console.log" ]; then
    echo "---- guest console (last 150 lines) ----" >&2
    tail -n 150 "$WORK/console.log" >&2
    echo "---- end ----" >&2
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" = 0 ] || fail "needs root"
for p in debootstrap qemu-system-x86 cpio kmod; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || apt-get install -y -q "$p" >/dev/null
done

# ---- the kernel: the vm-testbed's (run.sh downloads and caches it) --------
KDIR=$(find "$CACHE" -maxdepth 1 -type d -name 'linux-image-*' | sort | tail -n 1)
if [ -z "$KDIR" ] || [ ! -s "$KDIR/vmlinuz" ]; then
  KPKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  [ -n "$KPKG" ] || fail "cannot find the kernel package behind linux-image-amd64"
  log "downloading $KPKG"
  (cd "$WORK" && apt-get download -q "$KPKG" >/dev/null) || fail "apt-get download $KPKG"
  KDIR=$CACHE/$KPKG
  mkdir -p "$KDIR"
  dpkg-deb --fsys-tarfile "$WORK/$KPKG"_*.deb | tar -x -C "$WORK" ./boot
  cp "$WORK/boot/vmlinuz-${KPKG#linux-image-}" "$KDIR/vmlinuz"
  rm -rf "$WORK/boot" "$WORK/$KPKG"_*.deb
fi
KPKG=$(basename "$KDIR")
KVER=${KPKG#linux-image-}
# The guest's one module: veth (for the pair that stands for the NIC).
if [ ! -s "$KDIR/veth.ko" ]; then
  (cd "$WORK" && apt-get download -q "$KPKG" >/dev/null) || fail "apt-get download $KPKG"
  dpkg-deb --fsys-tarfile "$WORK/$KPKG"_*.deb | tar -x -C "$WORK" --wildcards '*/veth.ko*'
  ko=$(find "$WORK/lib" -name 'veth.ko*' | head -n 1)
  case "$ko" in
    *.xz) xz -dc "$ko" >"$KDIR/veth.ko" ;;
    *.zst) zstd -qdc "$ko" >"$KDIR/veth.ko" ;;
    *) cp "$ko" "$KDIR/veth.ko" ;;
  esac
  rm -rf "$WORK/lib" "$WORK/$KPKG"_*.deb
fi

# ---- the Debian root: debootstrap once per release and package list ------
BASE=$CACHE/debian-$SUITE-$(echo "$INCLUDE" | sha256sum | cut -c1-12).tar
if [ ! -s "$BASE" ]; then
  log "debootstrap $SUITE from $MIRROR (once; cached as $BASE)"
  rm -f "$CACHE"/debian-"$SUITE"-*.tar
  debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$WORK/base" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1 || { tail -n 30 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
  tar -C "$WORK/base" -cf "$BASE.part" . && mv "$BASE.part" "$BASE"
  rm -rf "$WORK/base"
fi
R=$WORK/root
mkdir -p "$R"
tar -C "$R" -xf "$BASE"

# ---- the package, installed as an operator would -------------------------
log "apt-get install ./$(basename "$DEB") in the guest's root"
cp "$DEB" "$R/tmp/ferrox.deb"
cp /etc/resolv.conf "$R/etc/resolv.conf"
# Nothing starts inside the chroot; /proc is not mounted there, so the
# package's sysctl step cannot touch the host's hugepages.
printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
chmod 0755 "$R/usr/sbin/policy-rc.d"
chroot "$R" apt-get update -q >"$WORK/apt.log" 2>&1 || { tail -n 20 "$WORK/apt.log" >&2; fail "apt-get update in the guest's root"; }
chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /tmp/ferrox.deb \
  >>"$WORK/apt.log" 2>&1 || { tail -n 30 "$WORK/apt.log" >&2; fail "apt-get install of the package"; }
grep -E '^(Get|Setting up)' "$WORK/apt.log" | sed 's/^/    /' | grep -E 'librte-eal|ferrox' >&2 || true
rm -f "$R/usr/sbin/policy-rc.d" "$R/tmp/ferrox.deb"
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb \
  "$R"/usr/share/doc/* "$R"/usr/share/locale/* "$R"/usr/share/man/man[1-7]

# ---- what the operator sets, and the test's own units --------------------
# /etc/default/ferrox: the dataplane on veth1, the twemproxy stats port on.
cat >"$R/etc/default/ferrox" <<'EOF'
FERROX_ARGS="--address 198.18.0.2/24 --vdev net_af_packet0,iface=veth1,framecnt=4096 --lcores 0 --stats-port 22222 -- --memory-mb 256"
EOF
# Fewer hugepages than the package asks for: the guest has 3 GiB in all.
echo "vm.nr_hugepages = 320" >"$R/etc/sysctl.d/90-ferrox-test.conf"
mkdir -p "$R/lib/modules/$KVER/kernel/drivers/net"
cp "$KDIR/veth.ko" "$R/lib/modules/$KVER/kernel/drivers/net/veth.ko"
for f in modules.order modules.builtin modules.builtin.modinfo; do
  if [ -f "$KDIR/modules/$f" ]; then cp "$KDIR/modules/$f" "$R/lib/modules/$KVER/"; else : >"$R/lib/modules/$KVER/$f"; fi
done
depmod -b "$R" "$KVER"
install -m 0755 vm-testbed/package-guest-test.sh "$R/usr/local/sbin/ferrox-package-test"
cat >"$R/etc/systemd/system/ferrox-test-net.service" <<'EOF'
[Unit]
Description=the test's NIC (a veth pair) and Redis backends
Before=ferrox.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/sbin/modprobe veth
ExecStart=/sbin/ip link add veth0 type veth peer name veth1
ExecStart=/sbin/ip addr add 198.18.0.1/24 dev veth0
ExecStart=/sbin/ip link set veth0 up
ExecStart=/sbin/ip link set veth1 up
ExecStart=/usr/bin/redis-server --port 7001 --bind 198.18.0.1 --protected-mode no --save "" --daemonize yes
ExecStart=/usr/bin/redis-server --port 7002 --bind 198.18.0.1 --protected-mode no --save "" --daemonize yes
EOF
cat >"$R/etc/systemd/system/ferrox-package-test.service" <<'EOF'
[Unit]
Description=the package test: an operator's steps on ferrox
Requires=ferrox-test-net.service
After=ferrox-test-net.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/ferrox-package-test
[Install]
WantedBy=default.target
EOF
chroot "$R" systemctl enable ferrox-package-test.service >/dev/null 2>&1
ln -sf /lib/systemd/systemd "$R/init"
# The guest's console is the test's only output: no login prompt on it.
chroot "$R" systemctl mask serial-getty@ttyS0.service getty@tty1.service >/dev/null 2>&1

log "packing the guest's root ($(du -sh "$R" | cut -f1))"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) >"$WORK/initrd"
rm -rf "$R"

# ---- boot, and wait for the verdict ---------------------------------------
case "$ACCEL" in
  kvm) accel=(-accel kvm -cpu host) ;;
  *) accel=(-accel tcg -cpu max) ;; # DPDK needs SSE4.2
esac
log "booting ($ACCEL, $(du -h "$WORK/initrd" | cut -f1) initramfs)"
started=$SECONDS
qemu-system-x86_64 "${accel[@]}" -m 3072 -smp 2 -nodefaults -no-reboot \
  -kernel "$KDIR/vmlinuz" -initrd "$WORK/initrd" \
  -append "console=ttyS0 rdinit=/init panic=-1 systemd.show_status=0 loglevel=4" \
  -display none -serial "file:$WORK/console.log" -monitor none -nic none \
  >"$WORK/qemu.log" 2>&1 &
QEMU_PID=$!
verdict=""
while [ $((SECONDS - started)) -lt "$BOOT_WAIT" ]; do
  verdict=$(grep -a -m 1 -E 'FERROX-PKGTEST: (PASS|FAIL)' "$WORK/console.log" 2>/dev/null || true)
  [ -n "$verdict" ] && break
  kill -0 "$QEMU_PID" 2>/dev/null || { cat "$WORK/qemu.log" >&2; fail "QEMU exited before the test ended"; }
  sleep 1
done
grep -a 'FERROX-PKGTEST:' "$WORK/console.log" | sed 's/^/    /' >&2 || true
[ -n "$verdict" ] || fail "no verdict within ${BOOT_WAIT}s"
case "$verdict" in
  *PASS*) ;;
  *) sleep 3; fail "${verdict#*FERROX-PKGTEST: }" ;;
esac
# The guest powers itself off.
for ((i = 0; i < 60; i++)); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
log "passed, $((SECONDS - started))s from boot to power-off ($ACCEL)"
