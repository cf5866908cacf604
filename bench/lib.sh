# Shared by bench/cluster.sh and bench/policy.sh: a namespace with a veth
# pair (ferrox on veth1 over DPDK af_packet, everything else on the kernel
# side at 198.18.0.1), redis-servers in it, and a cleanup that gives all of
# it back. The caller sets NS, MTU and DIR, and keeps PIDS and DP_PID.

PIDS=()
DP_PID=""

cleanup() {
  set +e
  if [ -n "$DP_PID" ]; then
    kill -INT "$DP_PID" 2>/dev/null && sleep 1
    kill -KILL "$DP_PID" 2>/dev/null
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

in_ns() { ip netns exec "$NS" "$@"; }

# The namespace, its veth pair at MTU, and the kernel side's address.
setup_netns() {
  ip netns add "$NS"
  in_ns ip link set lo up
  in_ns sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
  in_ns ip link add veth0 type veth peer name veth1
  in_ns ip link set veth0 mtu "$MTU"
  in_ns ip addr add 198.18.0.1/24 dev veth0
  in_ns ip link set veth0 up
  in_ns ip link set veth1 up
  # af_packet takes no frame over the MTU.
  in_ns ethtool -K veth0 tso off >/dev/null 2>&1 || true
}

# A redis-server on 198.18.0.1:PORT with more arguments; its files in DIR.
start_redis() {
  local port=$1
  shift
  # Not through in_ns: $! must be the server itself (ip netns exec execs it).
  ip netns exec "$NS" redis-server --bind 198.18.0.1 --port "$port" --save '' --appendonly no \
    --protected-mode no --daemonize no --loglevel warning --dir "$DIR" "$@" >/dev/null &
  PIDS+=("$!")
}

# Waits (5 s at most each) until every port answers PING.
wait_redis() {
  local port
  for port in "$@"; do
    for _ in $(seq 50); do
      in_ns redis-cli -h 198.18.0.1 -p "$port" PING 2>/dev/null | grep -q PONG && break
      sleep 0.1
    done
  done
}

# ferrox on veth1 at 198.18.0.2 with the configuration file $1.
start_ferrox() {
  ip netns exec "$NS" target/release/ferrox-dataplane --vdev net_af_packet0,iface=veth1 \
    --address 198.18.0.2/24 --config "$1" --memory-mb 512 --mbufs 32767 \
    --mtu "$MTU" --file-prefix "$NS" >/dev/null 2>"$DIR/ferrox.log" &
  DP_PID=$!
  sleep 3
}
