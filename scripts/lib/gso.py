#!/usr/bin/env python3
"""UDP bursts sent as one super-packet each (UDP_SEGMENT), as QUIC stacks
send, both ways through the datagram tunnel; every datagram checked.

  gso.py serve ADDR PORT
      In mpb-srv. Answers each datagram: a burst request `B N SEG TAG`
      with one send of N datagrams of SEG bytes (UDP_SEGMENT), else with
      `A` and the datagram's SHA-256, so the sender learns what arrived.
      Stops after 60 s or 10 s without a datagram.

  gso.py check ADDR PORT ROUNDS N SEG
      In mpb-lan. ROUNDS times: one send of N datagrams of SEG bytes with
      UDP_SEGMENT to ADDR (the upload), then a burst request (the
      download), 0.1 s apart. Prints one JSON object: datagrams sent and
      acknowledged intact up, asked for and received intact down.

Each datagram carries its round, index and a pattern derived from them,
so a datagram cut wrong, joined wrong or damaged is told from a lost one.
Bounded: ROUNDS at most 200, N at most 64, 10 s per round at most.
"""

import hashlib
import json
import socket
import sys
import time

SOL_UDP = 17
UDP_SEGMENT = 103


def payload(tag, index, size):
    head = b"%s %d " % (tag, index)
    body = hashlib.sha256(head).digest() * (size // 32 + 1)
    return (head + body)[:size]


def udp_socket(addr):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    return socket.socket(family, socket.SOCK_DGRAM)


def serve(addr, port):
    s = udp_socket(addr)
    s.bind((addr, port))
    s.settimeout(10.0)
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            data, peer = s.recvfrom(65536)
        except socket.timeout:
            return
        if data.startswith(b"B "):
            _, n, seg, tag = data.split(b" ", 3)
            n, seg = int(n), int(seg)
            if not (1 <= n <= 64 and 1 <= seg <= 1400):
                continue
            burst = b"".join(payload(tag, i, seg) for i in range(n))
            s.setsockopt(SOL_UDP, UDP_SEGMENT, seg)
            s.sendto(burst, peer)
            s.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
        else:
            s.sendto(b"A " + hashlib.sha256(data).hexdigest().encode(), peer)


def check(addr, port, rounds, n, seg):
    assert 1 <= rounds <= 200 and 1 <= n <= 64 and 16 <= seg <= 1400
    s = udp_socket(addr)
    s.connect((addr, port))
    result = {"sent": 0, "acked": 0, "asked": 0, "received": 0, "bad": 0}
    for r in range(rounds):
        up = [payload(b"up%d" % r, i, seg) for i in range(n)]
        # The last one shorter, as a burst's last datagram may be.
        up[-1] = up[-1][: seg // 2]
        want = {hashlib.sha256(p).hexdigest().encode() for p in up}
        s.setsockopt(SOL_UDP, UDP_SEGMENT, seg)
        s.send(b"".join(up))
        s.setsockopt(SOL_UDP, UDP_SEGMENT, 0)
        result["sent"] += n
        tag = b"down%d" % r
        s.send(b"B %d %d %s" % (n, seg, tag))
        result["asked"] += n
        down = {payload(tag, i, seg) for i in range(n)}
        deadline = time.monotonic() + 10
        while (want or down) and time.monotonic() < deadline:
            s.settimeout(max(0.01, min(2.0, deadline - time.monotonic())))
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if data.startswith(b"A "):
                digest = data[2:]
                if digest in want:
                    want.discard(digest)
                    result["acked"] += 1
                else:
                    result["bad"] += 1
            elif data in down:
                down.discard(data)
                result["received"] += 1
            else:
                result["bad"] += 1
        time.sleep(0.1)
    print(json.dumps(result))


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 7 and sys.argv[1] == "check":
        check(sys.argv[2], int(sys.argv[3]), *map(int, sys.argv[4:7]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
