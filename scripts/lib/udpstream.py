#!/usr/bin/env python3
"""A 50 datagrams/s stream both ways on one UDP socket pair (as a voice or
game session), for scripts/bench.sh udp.

  udpstream.py serve PORT COUNT GAP_MS
        in mpb-srv: waits (at most 30 s) for a hello, then sends COUNT
        datagrams, one every GAP_MS, to where the hello came from, and
        records what the peer sends; exits 1.5 s after its last datagram.
  udpstream.py run HOST PORT COUNT GAP_MS
        the LAN host's end: says hello (every 100 ms until the first
        datagram comes back, at most 5 s), then sends COUNT datagrams, one
        every GAP_MS, and records what comes back; exits 1.5 s after its
        last datagram.

Both print one JSON line: {"sent": N, "first_send": T, "arrivals": [[seq,
T], ...]}, T in wall-clock seconds (time.time(), one clock for every
namespace), so the bench can place its cut on the same time line. A
datagram is 8 bytes of sequence number and padding to 160 bytes (a voice
frame's size). Sends keep their schedule (no drift) and never block.
"""
import json
import select
import socket
import sys
import time

SIZE = 160
HELLO = b"hello"
GRACE = 1.5


def stream(sock, peer, count, gap, arrivals, deadline_extra=GRACE):
    """Sends COUNT datagrams to PEER on schedule while recording arrivals;
    returns the wall time of the first send."""
    sock.setblocking(False)
    start = time.monotonic()
    first = time.time()
    sent = 0
    end = None
    while True:
        now = time.monotonic()
        if sent < count and now >= start + sent * gap:
            try:
                sock.sendto(sent.to_bytes(8, "big") + bytes(SIZE - 8), peer)
            except (BlockingIOError, OSError):
                pass  # a full buffer or no route for a moment: a lost datagram
            sent += 1
            continue
        if sent >= count and end is None:
            end = now + deadline_extra
        if end is not None and now >= end:
            return first
        wake = end if sent >= count else start + sent * gap
        ready, _, _ = select.select([sock], [], [], max(0.0, wake - now))
        if ready:
            drain(sock, arrivals)


def drain(sock, arrivals):
    while True:
        try:
            data, _ = sock.recvfrom(2048)
        except (BlockingIOError, OSError):
            return
        if len(data) >= 8 and data != HELLO:
            arrivals.append([int.from_bytes(data[:8], "big"), round(time.time(), 4)])


def serve(port, count, gap):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    sock.settimeout(30)
    print("listening", file=sys.stderr, flush=True)
    while True:
        data, peer = sock.recvfrom(2048)
        if data == HELLO:
            break
    arrivals = []
    first = stream(sock, peer, count, gap, arrivals)
    print(json.dumps({"peer": peer[0], "sent": count, "first_send": first, "arrivals": arrivals}))


def run(host, port, count, gap):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    arrivals = []
    deadline = time.monotonic() + 5
    while not arrivals:
        if time.monotonic() > deadline:
            sys.exit("udpstream: no datagram back from %s:%d within 5 s" % (host, port))
        sock.send(HELLO)
        sock.setblocking(True)
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            sock.setblocking(False)
            drain(sock, arrivals)
    first = stream(sock, (host, port), count, gap, arrivals)
    print(json.dumps({"sent": count, "first_send": first, "arrivals": arrivals}))


def main(argv):
    if len(argv) == 4 and argv[0] == "serve":
        serve(int(argv[1]), int(argv[2]), float(argv[3]) / 1000)
    elif len(argv) == 5 and argv[0] == "run":
        run(argv[1], int(argv[2]), int(argv[3]), float(argv[4]) / 1000)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
