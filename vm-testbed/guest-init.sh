#!/bin/busybox sh
# /init of the testbed guest, the steps of README's "Running on a real NIC"
# in order: the kernel's own driver takes the virtio-net NIC first, as on
# any machine; then hugepages, dpdk-devbind.py moves the NIC to
# uio_pci_generic, and ferrox runs on it with a PCI allow-list naming that
# NIC alone. It stops ferrox when the host writes "stop" on the console.
# Lines starting "ferrox-vm:" are for the host script.

/bin/busybox --install -s
export PATH=/usr/local/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
up() { cut -d' ' -f1 /proc/uptime; }
echo "ferrox-vm: booted $(uname -r) at $(up)s"

fail() {
  echo "ferrox-vm: FAILED $*"
  poweroff -f
}

NIC=$(cat /etc/ferrox-nic)
modprobe virtio_pci || fail "modprobe virtio_pci"
modprobe virtio_net || fail "modprobe virtio_net"
modprobe uio_pci_generic || fail "modprobe uio_pci_generic"

# 1. Hugepages: 2 MiB pages reserved and mounted.
mkdir -p /dev/hugepages
mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages || fail "mounting hugetlbfs"
echo 128 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
echo "ferrox-vm: hugepages $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages) x 2 MiB"

# 2. The NIC, from its kernel driver to one DPDK can use.
echo "ferrox-vm: binding at $(up)s"
dpdk-devbind.py --status-dev net
dpdk-devbind.py --bind=uio_pci_generic "$NIC" || fail "dpdk-devbind.py --bind=uio_pci_generic $NIC"
dpdk-devbind.py --status-dev net
driver=$(basename "$(readlink "/sys/bus/pci/devices/$NIC/driver")")
[ "$driver" = uio_pci_generic ] || fail "$NIC is on $driver, not uio_pci_generic"
echo "ferrox-vm: $NIC bound to $driver at $(up)s"

# 3. ferrox on that NIC only, on the lcores the host names (fxlcores= on
# the kernel command line: one vCPU each). With a handover file: on
# "upgrade" from the host, it hands every connection over to a new
# process on the same NIC (SIGUSR2; exit 75 once the file is written and
# the port closed), which restores them before its first frame.
HANDOVER=/tmp/ferrox.handover
start_ferrox() { # output file
  out=$1
  ferrox-dataplane --pci "$NIC" --lcores "${fxlcores:-0}" --address 198.18.2.2/24 --config /etc/ferrox.toml \
    --memory-mb 128 --mbufs 4095 --idle-max-sleep-us 200 --handover-file "$HANDOVER" > "$out" 2>&1 &
  pid=$!
  i=0
  until grep -q "serving" "$out"; do
    kill -0 "$pid" 2>/dev/null || { cat "$out"; fail "ferrox exited"; }
    i=$((i + 1))
    [ "$i" -lt 1200 ] || { cat "$out"; fail "ferrox did not start in 120s"; }
    sleep 0.1
  done
}
start_ferrox /tmp/ferrox.out
grep -i "EAL\|virtio\|serving" "$out"
echo "ferrox-vm: READY at $(up)s"

while read -r line; do
  case "$line" in
    stop) break ;;
    upgrade)
      asked=$(up)
      kill -USR2 "$pid"
      wait "$pid"
      rc=$?
      [ "$rc" = 75 ] || { cat "$out"; fail "the old dataplane exited with $rc, not 75 (handed over)"; }
      grep "handed over" "$out"
      start_ferrox /tmp/ferrox-upgraded.out
      i=0
      until grep -q "took over" "$out"; do
        i=$((i + 1))
        [ "$i" -lt 300 ] || { cat "$out"; fail "the new dataplane restored nothing in 30s"; }
        sleep 0.1
      done
      echo "ferrox-vm: UPGRADED $(grep -o 'took over.*' "$out") (from ${asked}s to $(up)s)"
      ;;
  esac
done < /dev/console
kill -INT "$pid"
wait "$pid"
echo "ferrox-vm: ferrox exited with $?"
grep "stopped;" "$out"
echo "ferrox-vm: DONE"
poweroff -f
