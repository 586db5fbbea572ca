#!/usr/bin/env bash
# Part of the demo: what is not TCP from mpb-lan (a UDP echo, a DNS query
# to dnsmasq, ping) goes through the datagram tunnel and leaves from the
# concentrator's address (10.77.9.2), and keeps going when dsl is
# blackholed. Builds its own lab and removes it, also on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
LAB=scripts/lab.sh
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
rm -f /tmp/mpbond-demo-dnsmasq.log
