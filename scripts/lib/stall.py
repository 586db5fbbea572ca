#!/usr/bin/env python3
"""Stall meter for scripts/bench.sh failover.

  stall.py serve PORT                 in mpb-srv: MPTCP listener (plain TCP
                                      clients fall back); "down\\n" -> sends
                                      until the peer closes, "up\\n" -> reads
                                      and reports its stall samples back
  stall.py run HOST PORT down|up SECS [--mptcp] [--bind ADDR]
                                      the site's end; prints one JSON line:
                                      {"events": [[t, bytes], ...]} (receiver)

The receiver records (time since start, bytes so far) at every read; the
bench computes stalls from that. Bounded: SECS seconds, then it closes.
"""
import json
import socket
import sys
import threading
import time

IPPROTO_MPTCP = 262
CHUNK = 64 * 1024


def read_line(sock):
    """One line, byte by byte: nothing after it is consumed."""
    out = bytearray()
    while not out.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        out += byte
    return out.decode()


def receive(sock, secs):
    start = time.monotonic()
    events, total = [], 0
    sock.settimeout(0.5)
    while time.monotonic() - start < secs:
        try:
            data = sock.recv(CHUNK)
        except socket.timeout:
            continue
        if not data:
            break
        total += len(data)
        events.append((round(time.monotonic() - start, 4), total))
    return events


def send(sock, secs):
    payload = bytes(CHUNK)
    start = time.monotonic()
    while time.monotonic() - start < secs:
        sock.sendall(payload)


def serve(port):
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(16)

    def handle(conn):
        with conn:
            try:
                line = read_line(conn).split()
                if line[0] == "down":
                    send(conn, float(line[1]))
                else:
                    events = receive(conn, float(line[1]) + 60)
                    conn.sendall((json.dumps({"events": events}) + "\n").encode())
            except (OSError, IndexError, ValueError):
                pass

    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def run(host, port, direction, secs, mptcp, bind):
    proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    if bind:
        sock.bind((bind, 0))
    sock.settimeout(5)
    sock.connect((host, port))
    sock.sendall(("%s %s\n" % (direction, secs)).encode())
    if direction == "down":
        events = receive(sock, secs)
    else:
        send(sock, secs)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(30)
        events = json.loads(read_line(sock))["events"]
    print(json.dumps({"events": events}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        args = sys.argv[2:]
        mptcp = "--mptcp" in args
        bind = args[args.index("--bind") + 1] if "--bind" in args else None
        run(args[0], int(args[1]), args[2], float(args[3]), mptcp, bind)
