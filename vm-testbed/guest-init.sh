#!/bin/busybox sh
# /init of the testbed guest, the steps of README's "Running on a real NIC"
# in order: the kernel's own driver takes the virtio-net NIC first, as on
# any machine; then hugepages, dpdk-devbind.py moves the NIC to vfio-pci
# (behind the guest's virtual IOMMU), and ferrox (its control process, a
# port holder and the dataplane) runs on it with a PCI allow-list naming
# that NIC alone. It stops ferrox when the host writes "stop" on the
# console.
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
# The guest's virtual IOMMU has no interrupt remapping, which VFIO asks
# for unless told otherwise (a test machine with one user).
modprobe vfio_iommu_type1 allow_unsafe_interrupts=1 || fail "modprobe vfio_iommu_type1"
modprobe vfio-pci || fail "modprobe vfio-pci"

# 1. Hugepages: 2 MiB pages reserved and mounted.
mkdir -p /dev/hugepages
mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages || fail "mounting hugetlbfs"
# The region of the control process (socket buffers, 160 MiB) and the
# port holder's DPDK memory (128 MiB).
echo 256 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
echo "ferrox-vm: hugepages $(cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages) x 2 MiB"

# 2. The NIC, from its kernel driver to one DPDK can use.
echo "ferrox-vm: binding at $(up)s"
dpdk-devbind.py --status-dev net
dpdk-devbind.py --bind=vfio-pci "$NIC" || fail "dpdk-devbind.py --bind=vfio-pci $NIC"
dpdk-devbind.py --status-dev net
driver=$(basename "$(readlink "/sys/bus/pci/devices/$NIC/driver")")
[ "$driver" = vfio-pci ] || fail "$NIC is on $driver, not vfio-pci"
echo "ferrox-vm: $NIC bound to $driver at $(up)s"

# 3. ferrox on that NIC only, on the lcores the host names (fxlcores= on
# the kernel command line: one vCPU each), as an operator runs it:
# ferrox-control holds the NIC in a port holder (a DPDK primary) and runs
# the dataplane attached to it. On "upgrade" from the host, `ferroxctl
# upgrade` hands every connection over to a second copy of the dataplane
# binary: it starts in standby (its EAL up, attached to the port) while
# the first still serves; at the switch, frames wait in the NIC's rings.
mkdir -p /run/ferrox /dev/shm
mount -t tmpfs tmpfs /dev/shm
cp /usr/local/bin/ferrox-dataplane /usr/local/bin/ferrox-dataplane-b
out=/tmp/ferrox.out
ferrox-control --config /etc/ferrox.toml --address 198.18.2.2/24 --lcores "${fxlcores:-0}" \
  --pci "$NIC" --port-holder on --metrics off -- \
  --memory-mb 128 --mbufs 4095 --idle-max-sleep-us 200 > "$out" 2>&1 &
pid=$!
i=0
until grep -q "ferrox-dataplane: serving" "$out"; do
  kill -0 "$pid" 2>/dev/null || { cat "$out"; fail "ferrox-control exited"; }
  i=$((i + 1))
  [ "$i" -lt 1200 ] || { cat "$out"; fail "ferrox did not start in 120s"; }
  sleep 0.1
done
grep -i "EAL\|virtio\|holding\|serving" "$out"
echo "ferrox-vm: READY at $(up)s"

while read -r line; do
  case "$line" in
    stop) break ;;
    upgrade)
      asked=$(up)
      ferroxctl upgrade --binary /usr/local/bin/ferrox-dataplane-b --timeout-ms 60000 > /tmp/upgrade.out 2>&1 \
        || { cat /tmp/upgrade.out; cat "$out"; fail "ferroxctl upgrade failed"; }
      cat /tmp/upgrade.out
      echo "ferrox-vm: UPGRADED $(grep -o 'connections: .*' /tmp/upgrade.out); $(grep -o 'blackout [0-9.]* ms' /tmp/upgrade.out); $(grep -o 'pause [0-9.]* ms' /tmp/upgrade.out) (from ${asked}s to $(up)s)"
      ;;
  esac
done < /dev/console
kill -INT "$pid"
wait "$pid"
echo "ferrox-vm: ferrox-control exited with $?"
grep "ferrox-dataplane: stopped;" "$out"
echo "ferrox-vm: DONE"
poweroff -f
