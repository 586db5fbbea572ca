#!/usr/bin/env python3
"""Bulk download meter for scripts/bench.sh tcp: goodput and longest stall.

  bulk.py serve PORT [--mptcp]
        in mpb-srv: a listener (an MPTCP one with --mptcp; plain TCP clients
        fall back on it); each connection reads one line "down MAXSECS\\n"
        and then sends until the peer closes, at most MAXSECS seconds
  bulk.py run HOST PORT SECS [--flows N] [--omit S] [--warmup S] [--mptcp]
              [--bind ADDR]
        the receiving end: opens N connections, asks each for data and reads
        all of them for OMIT + SECS seconds, then closes; prints one JSON
        line:
          {"flows": N, "bytes": .., "goodput_bps": ..,   over [OMIT, OMIT+SECS)
           "stall_ms": .., "stall_at": ..}               over [WARMUP, OMIT+SECS)

The stall is the longest interval in which no byte arrived on any of the
connections (the aggregate: one flow stalling while others deliver is not
a stall), measured from the receiver's reads (one thread, epoll, timestamp
per read), so head-of-line blocking inside MPTCP counts as it does for an
application. Defaults: --flows 1, --omit 2 (as iperf3 -O 2), --warmup 1.
Bounded: the receiver stops at OMIT + SECS, the sender at MAXSECS.
"""
import json
import selectors
import socket
import sys
import threading
import time

IPPROTO_MPTCP = 262
CHUNK = 128 * 1024


def read_line(sock):
    """One line, byte by byte: nothing after it is consumed."""
    out = bytearray()
    while not out.endswith(b"\n") and len(out) < 64:
        byte = sock.recv(1)
        if not byte:
            break
        out += byte
    return out.decode(errors="replace")


def send(conn):
    try:
        conn.settimeout(10)
        words = read_line(conn).split()
        if len(words) != 2 or words[0] != "down":
            return
        deadline = time.monotonic() + min(float(words[1]), 600)
        # One flow of many on a weak, bursty line can wait in retransmission
        # backoff for more than 10 s and is still alive (seen: 16 flows on
        # lte-weak): only a receiver gone for a minute ends it early.
        conn.settimeout(60)
        payload = bytes(CHUNK)
        while time.monotonic() < deadline:
            conn.sendall(payload)
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def serve(port, mptcp):
    proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(64)
    print("bulk: listening on port %d%s" % (port, " (MPTCP)" if mptcp else ""), flush=True)
    while True:
        conn, _ = lsock.accept()
        if threading.active_count() < 128:
            threading.Thread(target=send, args=(conn,), daemon=True).start()
        else:
            conn.close()


def connect(host, port, proto, bind, maxsecs):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    if bind:
        sock.bind((bind, 0))
    sock.settimeout(30)
    sock.connect((host, port))
    sock.sendall(("down %d\n" % maxsecs).encode())
    sock.setblocking(False)
    return sock


def run(host, port, secs, flows, omit, warmup, mptcp, bind):
    proto = IPPROTO_MPTCP if mptcp else socket.IPPROTO_TCP
    end = omit + secs
    # The sender stops on its own a while after we close (bounded).
    maxsecs = int(end + 30)
    socks, errors = [], []

    def opener():
        try:
            socks.append(connect(host, port, proto, bind, maxsecs))
        except OSError as e:
            errors.append(e)

    # In parallel: through a tunnel each connect may take a round trip or two.
    threads = [threading.Thread(target=opener) for _ in range(flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in socks:
            s.close()
        sys.exit("bulk: %d of %d connections to %s:%d failed: %s" % (len(errors), flows, host, port, errors[0]))

    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start = time.monotonic()
    total = counted = 0
    last = None  # time of the last read at or after the warm-up
    stall, stall_at = 0.0, warmup
    open_flows = flows
    while open_flows:
        now = time.monotonic() - start
        if now >= end:
            break
        for key, _ in sel.select(timeout=min(0.05, end - now)):
            try:
                n = key.fileobj.recv_into(view)
            except BlockingIOError:
                continue
            except OSError as e:
                sys.exit("bulk: a connection failed after %.1f s: %s" % (time.monotonic() - start, e))
            t = time.monotonic() - start
            if n == 0:
                sel.unregister(key.fileobj)
                open_flows -= 1
                continue
            total += n
            if omit <= t < end:
                counted += n
            if t >= warmup:
                prev = warmup if last is None else last
                if t - prev > stall:
                    stall, stall_at = t - prev, prev
                last = t
    t = min(time.monotonic() - start, end)
    # Nothing at all until the end is a stall too.
    prev = warmup if last is None else last
    if t - prev > stall:
        stall, stall_at = t - prev, prev
    for s in socks:
        s.close()
    if open_flows < flows:
        sys.exit("bulk: %d of %d connections closed early (after %.1f s)" % (flows - open_flows, flows, t))
    print(json.dumps({
        "flows": flows,
        "bytes": total,
        "goodput_bps": int(counted * 8 / secs),
        "stall_ms": round(stall * 1000, 1),
        "stall_at": round(stall_at, 2),
    }))


def main(argv):
    def opt(name, default, conv):
        if name in argv:
            i = argv.index(name)
            value = conv(argv[i + 1])
            del argv[i:i + 2]
            return value
        return default

    def flag(name):
        if name in argv:
            argv.remove(name)
            return True
        return False

    try:
        mptcp = flag("--mptcp")
        if argv[:1] == ["serve"] and len(argv) == 2:
            serve(int(argv[1]), mptcp)
            return
        flows = opt("--flows", 1, int)
        omit = opt("--omit", 2.0, float)
        warmup = opt("--warmup", 1.0, float)
        bind = opt("--bind", None, str)
        if argv[:1] != ["run"] or len(argv) != 4 or not 1 <= flows <= 64:
            raise ValueError
        run(argv[1], int(argv[2]), float(argv[3]), flows, omit, warmup, mptcp, bind)
    except (ValueError, IndexError):
        sys.exit("usage: bulk.py serve PORT [--mptcp] | run HOST PORT SECS [--flows N (1-64)] "
                 "[--omit S] [--warmup S] [--mptcp] [--bind ADDR]")


if __name__ == "__main__":
    main(sys.argv[1:])
