#!/bin/bash
# Runs inside the package guest (vm-testbed/package.sh), as a systemd unit
# after boot: the operator's steps on an installed ferrox package, each
# checked. Every line it says goes to the console, where the host reads
# "FERROX-PKGTEST: PASS" or "FERROX-PKGTEST: FAIL: why"; the guest then
# powers off.
set -u
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
PROXY=198.18.0.2
CONF=/etc/ferrox/ferrox.toml

say() { echo "FERROX-PKGTEST: $*" >/dev/console; }
fail() {
  say "FAIL: $*"
  {
    echo "---- systemctl status ferrox ----"
    systemctl status --no-pager ferrox
    echo "---- journalctl -u ferrox ----"
    journalctl -u ferrox --no-pager | tail -n 60
  } >/dev/console 2>&1
  systemctl poweroff --no-block
  exit 1
}
# until SECONDS WHAT COMMAND...: COMMAND succeeds within SECONDS.
until_ok() {
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds * 4; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.25
  done
  fail "$what (after ${seconds}s)"
}
proxied() { redis-cli -h "$PROXY" -p 6379 "$@"; }
config_version() { ferroxctl --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["config_version"])'; }

say "installed: $(dpkg-query -W -f='${Package} ${Version} ${Status}' ferrox)"
[ -x /usr/bin/ferrox-control ] && [ -f /lib/systemd/system/ferrox.service ] || fail "the package's files are missing"
man -w ferroxctl >/dev/null 2>&1 || [ -f /usr/share/man/man8/ferroxctl.8.gz ] || fail "no manual page"

say "systemctl start ferrox (Type=notify: returns once READY=1)"
started=$SECONDS
systemctl start ferrox || fail "systemctl start ferrox failed"
[ "$(systemctl is-active ferrox)" = active ] || fail "ferrox is not active after start"
say "active after $((SECONDS - started))s: $(systemctl show -p StatusText --value ferrox)"
[ "$(proxied PING)" = PONG ] || fail "no PONG through the proxy right after READY"

say "GET /metrics: a valid exposition, the dataplane up"
python3 - <<'EOF' || fail "the metrics exposition"
import urllib.request
from prometheus_client.parser import text_string_to_metric_families
body = urllib.request.urlopen("http://127.0.0.1:9638/metrics", timeout=5).read().decode()
samples = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
assert samples.get("ferrox_dataplane_up") == 1, samples.get("ferrox_dataplane_up")
assert samples.get("ferrox_build_info") == 1
assert "ferrox_pool_request_duration_seconds_sum" in samples
ready = urllib.request.urlopen("http://127.0.0.1:9638/ready", timeout=5).status
assert ready == 200, ready
EOF

say "the twemproxy stats port (--stats-port in /etc/default/ferrox)"
python3 - <<'EOF' || fail "the stats port"
import json, socket
s = socket.create_connection(("127.0.0.1", 22222), timeout=5)
doc = b""
while chunk := s.recv(65536):
    doc += chunk
doc = json.loads(doc)
assert doc["service"] == "nutcracker" and "alpha" in doc["cache"], doc
EOF

say "systemctl reload ferrox: a changed configuration"
before=$(config_version) || fail "ferroxctl status"
cat >"$CONF" <<'EOF'
[pools.cache]
listen = "0.0.0.0:6379"
protocol = "redis"
hash = "fnv1a_64"
distribution = "ketama"
servers = ["198.18.0.1:7001:1 alpha", "198.18.0.1:7002:1 beta"]
EOF
systemctl reload ferrox || fail "systemctl reload failed"
# ExecReload waits until every core runs the new version.
after=$(config_version) || fail "ferroxctl status"
[ "$after" -gt "$before" ] || fail "systemctl reload returned before the new configuration ran (version $after)"
for i in $(seq 1 50); do
  got=$(proxied SET "key:$i" "$i" 2>&1)
  [ "$got" = OK ] || fail "SET key:$i through the proxy: $got"
done
for i in $(seq 1 50); do
  got=$(proxied GET "key:$i" 2>&1)
  [ "$got" = "$i" ] || fail "GET key:$i through the proxy: $got"
done
# Both backends hold some of the keys.
for port in 7001 7002; do
  [ "$(redis-cli -h 198.18.0.1 -p $port DBSIZE)" -gt 0 ] || fail "no key on the backend at $port"
done

say "systemctl reload ferrox: a bad configuration is refused, the running one stays"
good=$(config_version)
cp "$CONF" /root/good.toml
sed -i 's/fnv1a_64/sha1/' "$CONF"
! systemctl reload ferrox 2>/dev/null || fail "systemctl reload accepted a bad file"
until_ok 20 "the refusal in the journal" sh -c 'journalctl -u ferrox --no-pager | grep -q "reload refused"'
journalctl -u ferrox --no-pager | grep "reload refused" | grep -q "ferrox.toml:4:" || fail "the refusal names no line"
[ "$(systemctl is-active ferrox)" = active ] || fail "ferrox is not active after a bad reload"
[ "$(config_version)" = "$good" ] || fail "the configuration version moved on a refused reload"
[ "$(proxied GET key:7)" = 7 ] || fail "traffic after a refused reload"

say "ferrox-control -t -c bad.toml"
out=$(ferrox-control -t -c "$CONF" 2>&1)
code=$?
[ "$code" = 1 ] || fail "ferrox-control -t exited $code on a bad file"
echo "$out" | grep -q "ferrox.toml:4:" || fail "ferrox-control -t named no line: $out"
ferrox-control -t -c /root/good.toml >/dev/null 2>&1 || fail "ferrox-control -t refused a good file"
cp /root/good.toml "$CONF"

say "systemctl stop ferrox"
systemctl stop ferrox || fail "systemctl stop failed"
[ "$(systemctl is-active ferrox)" != active ] || fail "still active after stop"
! pgrep -x ferrox-dataplane >/dev/null || fail "a dataplane outlived the stop"
left=$(ls /dev/hugepages/ferrox-* /dev/shm/ferrox-* 2>/dev/null | tr '\n' ' ')
[ -z "$left" ] || fail "the shared region outlived the stop: $left"

say "PASS"
systemctl poweroff --no-block
