#!/usr/bin/env bash
# Part of the demo: a download with lte cut mid-transfer and brought
# back, with each uplink's rate every second; then what is not TCP from mpb-lan (a UDP echo, a DNS query
# to dnsmasq, ping) goes through the datagram tunnel and leaves from the
# concentrator's address (10.77.9.2), and keeps going when dsl is
# blackholed; then what `mpbond status` says of the lines. Builds its own
# lab and removes it, also on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LAB=scripts/lab.sh
# The binaries demo.sh built: under CARGO_TARGET_DIR when that is set.
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
export MPBOND=${MPBOND:-$TARGET/release/mpbond}
export MPBOND_LINKEM=${MPBOND_LINKEM:-$TARGET/release/mpbond-linkem}
exec 8>/run/mpbond-lab-user.lock
flock -w 900 8 || { echo "demo: another lab user holds /run/mpbond-lab-user.lock" >&2; exit 1; }
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    $LAB down >/dev/null 2>&1 || true
}
trap cleanup EXIT
$LAB down >/dev/null 2>&1 || true
$LAB up >/dev/null
$LAB start | tail -n 1
echo "  a 12 s download from the LAN host; lte loses its carrier at 4 s and comes back at 8 s:"
ip netns exec mpb-srv python3 scripts/lib/bulk.py serve 5300 >/tmp/mpbond-demo-bulk.log 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q listening /tmp/mpbond-demo-bulk.log && break; sleep 0.1; done
ip netns exec mpb-cli python3 scripts/lib/live_rates.py &
PIDS+=($!)
ip netns exec mpb-lan timeout 60 python3 scripts/lib/bulk.py run 198.51.100.10 5300 10 >/tmp/mpbond-demo-bulk.json &
download=$!
sleep 4
$LAB link lte down >/dev/null
echo "  -- lte down (carrier lost)"
sleep 4
$LAB link lte up >/dev/null
echo "  -- lte back"
wait "$download" || { echo "demo: the download through the tunnel failed" >&2; exit 1; }
kill "${PIDS[-1]}" 2>/dev/null || true
python3 - /tmp/mpbond-demo-bulk.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("  the transfer went on: %.1f Mbit/s over the last 10 s; longest wait for a byte %d ms"
      % (r["goodput_bps"] / 1e6, r["stall_ms"]))
PY
rm -f /tmp/mpbond-demo-bulk.log /tmp/mpbond-demo-bulk.json
echo
echo "  now what is not TCP:"
ip netns exec mpb-srv python3 -u -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("198.51.100.10", 7400))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(("%s\n" % a[0]).encode() + d, a)
' &
PIDS+=($!)
ip netns exec mpb-srv dnsmasq --keep-in-foreground --no-resolv --no-hosts --port=53 \
    --bind-interfaces --listen-address=198.51.100.10 --address=/bonded.lab.test/198.51.100.77 \
    --pid-file= --log-queries --log-facility=- 2>/tmp/mpbond-demo-dnsmasq.log &
PIDS+=($!)
sleep 0.5
udp() {
    ip netns exec mpb-lan python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
for i in range(3):
    s.sendto(b"hello", ("198.51.100.10", 7400))
    try:
        print("  UDP echo: the server saw the datagram from", s.recv(2048).split(b"\n")[0].decode()); break
    except OSError:
        pass
else:
    print("  UDP echo: no answer"); sys.exit(1)
'
}
udp
ip netns exec mpb-lan python3 -c '
import socket, struct
q = struct.pack(">HHHHHH", 0x6d70, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l for l in b"bonded.lab.test".split(b".")) + b"\0\0\1\0\1"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
s.sendto(q, ("198.51.100.10", 53)); r = s.recv(1500)
print("  DNS: bonded.lab.test is", ".".join(map(str, r[-4:])))
'
grep -o 'query\[A\] bonded.lab.test from [0-9.]*' /tmp/mpbond-demo-dnsmasq.log | sed 's/^/  dnsmasq: /' | head -n 1
echo "  ping from mpb-lan to 198.51.100.10 (both lines up):"
ip netns exec mpb-lan ping -n -q -c 5 -i 0.2 198.51.100.10 | tail -n 2 | sed 's/^/    /'
$LAB link dsl blackhole >/dev/null
echo "  dsl blackholed; ping again (the tunnel moves to lte):"
ip netns exec mpb-lan ping -n -q -c 10 -i 0.1 198.51.100.10 | tail -n 2 | sed 's/^/    /'
udp
echo
echo "== what the client says of its uplinks now (mpbond status, as on a real router)"
ip netns exec mpb-cli "$MPBOND" status --config deploy/lab/client.toml | sed 's/^/  /'
echo "  The same live in a browser: the status page the client serves to its LAN"
echo "  (http://192.168.77.1:9310/ in the lab; try: scripts/lab.sh up && scripts/lab.sh start,"
echo "  then ip netns exec mpb-lan curl -s http://192.168.77.1:9310/status.json),"
echo "  and Prometheus metrics at /metrics. scripts/lab.sh status shows both ends."
rm -f /tmp/mpbond-demo-dnsmasq.log
