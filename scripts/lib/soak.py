#!/usr/bin/env python3
"""Mixed traffic with every byte checked, for scripts/bench.sh soak.

  soak.py serve PORT
        in mpb-srv, until killed. On TCP PORT each connection starts with
        one line:
          "echo LEN"   reads LEN bytes, writes them back, closes (a short
                       request: the client also checks the close);
          "down SECS"  sends pattern chunks for SECS seconds (at most 600),
                       then the trailer, and closes;
          "up"         reads pattern chunks until the peer's FIN, checks
                       them, answers one JSON line {"bytes": .., "bad": ..,
                       "tail": ..} and closes.
        On UDP PORT it sends every datagram back to its sender. At most
        256 connections at once (more are closed at once).
  soak.py run HOST PORT SECS [--workers N] [--bulk-secs S] [--udp-rate R]
              [--seed S]
        in mpb-lan, for SECS seconds (every thread stops by SECS + 90 s):
        - N workers (default 4) of short requests, one after the other:
          connect, send 64-16384 bytes (seeded per request), read them
          back, see the server's close;
        - downloads of S seconds (default 15) one after the other, and
          uploads likewise, at the same time;
        - a UDP stream of R datagrams a second (default 50) of 64-1200
          bytes, each echoed by the server.
        Prints one JSON line per class: requests, download, upload, udp.

Bulk data is chunks of 64 KiB: an 8-byte index, then a fixed seeded block.
A receiver checks every chunk (index in sequence, body byte for byte); a
download ends with b"SOAK-END" and the count of bytes sent, so a stream cut
short with a clean FIN is caught too. "intact" bytes are those that arrived
in order and checked; a transfer that fails counts what it checked before.
"""
import json
import random
import select
import socket
import sys
import threading
import time

from bulk import read_line

CHUNK = 64 * 1024
TRAILER = b"SOAK-END"
# A transfer or request that hears nothing for this long has failed (a
# line cut mid-transfer stalls for about a second; both at once never
# happen in the soak).
IDLE_TIMEOUT = 30.0
MAX_CONNS = 256
# Every thread of a run stops by SECS + this.
HARD_EXTRA = 90.0


def block(seed):
    return random.Random(seed).randbytes(CHUNK)


def chunk(body, index):
    return index.to_bytes(8, "big") + body[8:]


def recv_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        data = sock.recv(min(n - len(out), 1 << 16))
        if not data:
            break
        out += data
    return bytes(out)


class Checker:
    """Checks a pattern stream as it arrives."""

    def __init__(self, body):
        self.body = body[8:]
        self.buf = bytearray()
        self.index = 0
        self.bad = 0

    def feed(self, data):
        self.buf += data
        done = 0
        while len(self.buf) - done >= CHUNK:
            head = self.buf[done:done + 8]
            if head != self.index.to_bytes(8, "big") or self.buf[done + 8:done + CHUNK] != self.body:
                self.bad += 1
            self.index += 1
            done += CHUNK
        del self.buf[:done]

    def intact(self):
        return 0 if self.bad else self.index * CHUNK


# ---------------------------------------------------------------- server

def serve_conn(conn, body):
    try:
        conn.settimeout(IDLE_TIMEOUT)
        words = read_line(conn).split()
        if len(words) == 2 and words[0] == "echo":
            data = recv_exact(conn, min(int(words[1]), 1 << 20))
            conn.sendall(data)
        elif len(words) == 2 and words[0] == "down":
            end = time.monotonic() + min(float(words[1]), 600)
            index = 0
            while time.monotonic() < end:
                conn.sendall(chunk(body, index))
                index += 1
            conn.sendall(TRAILER + (index * CHUNK).to_bytes(8, "big"))
        elif words == ["up"]:
            checker = Checker(body)
            total = 0
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                total += len(data)
                checker.feed(data)
            reply = {"bytes": total, "bad": checker.bad, "tail": len(checker.buf)}
            conn.sendall((json.dumps(reply) + "\n").encode())
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def serve_udp(port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(data, peer)
        except OSError:
            pass


def serve(port, seed):
    body = block(seed)
    threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(256)
    print(f"soak: listening on TCP and UDP port {port}", flush=True)
    while True:
        conn, _ = lsock.accept()
        if threading.active_count() < MAX_CONNS:
            threading.Thread(target=serve_conn, args=(conn, body), daemon=True).start()
        else:
            conn.close()


# ---------------------------------------------------------------- client

def error_name(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, OSError) and e.errno is not None:
        import errno

        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


class Tally:
    def __init__(self, name):
        self.name = name
        self.lock = threading.Lock()
        self.count = self.ok = self.sent = self.intact = 0
        self.errors = {}
        self.first_error = None

    def add(self, sent, intact, error=None):
        with self.lock:
            self.count += 1
            self.sent += sent
            self.intact += intact
            if error is None:
                self.ok += 1
            else:
                self.errors[error] = self.errors.get(error, 0) + 1
                if self.first_error is None:
                    self.first_error = f"{error} at {time.strftime('%H:%M:%S')}"

    def result(self, **extra):
        return {"class": self.name, "count": self.count, "ok": self.ok, "sent": self.sent,
                "intact": self.intact, "errors": self.errors, "first_error": self.first_error,
                **extra}


def connect(host, port, line):
    sock = socket.create_connection((host, port), timeout=IDLE_TIMEOUT)
    sock.sendall(line.encode())
    return sock


def requests(host, port, end, rng_seed, tally):
    rng = random.Random(rng_seed)
    while time.monotonic() < end:
        n = rng.randint(64, 16384)
        data = rng.randbytes(n)
        got = b""
        try:
            with connect(host, port, f"echo {n}\n") as sock:
                sock.sendall(data)
                got = recv_exact(sock, n)
                if got != data:
                    raise ValueError("corrupt" if len(got) == n else "short")
                if sock.recv(1):
                    raise ValueError("extra")
            tally.add(n, n)
        except (OSError, ValueError) as e:
            name = str(e) if isinstance(e, ValueError) else error_name(e)
            intact = len(got) if got == data[:len(got)] else 0
            tally.add(n, intact, name)
        time.sleep(rng.uniform(0, 0.02))


def download(host, port, secs, body, tally):
    checker = Checker(body)
    try:
        with connect(host, port, f"down {secs}\n") as sock:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                checker.feed(data)
        tail = bytes(checker.buf)
        if checker.bad:
            raise ValueError("corrupt")
        if len(tail) != 16 or tail[:8] != TRAILER:
            raise ValueError("truncated")
        sent = int.from_bytes(tail[8:], "big")
        if sent != checker.index * CHUNK:
            raise ValueError("short")
        tally.add(sent, checker.intact())
    except (OSError, ValueError) as e:
        name = str(e) if isinstance(e, ValueError) else error_name(e)
        got = checker.index * CHUNK + len(checker.buf)
        tally.add(got, checker.intact(), name)


def upload(host, port, secs, body, tally):
    sent = 0
    try:
        with connect(host, port, "up\n") as sock:
            end = time.monotonic() + secs
            index = 0
            while time.monotonic() < end:
                sock.sendall(chunk(body, index))
                index += 1
                sent += CHUNK
            sock.shutdown(socket.SHUT_WR)
            line = b""
            while not line.endswith(b"\n"):
                data = sock.recv(4096)
                if not data:
                    break
                line += data
        reply = json.loads(line)
        if reply["bad"] or reply["tail"]:
            tally.add(sent, 0, "corrupt")
        elif reply["bytes"] != sent:
            tally.add(sent, reply["bytes"], "short")
        else:
            tally.add(sent, sent)
    except (OSError, ValueError) as e:
        name = "no-answer" if isinstance(e, ValueError) else error_name(e)
        tally.add(sent, 0, name)


def bulk_loop(fn, host, port, secs, end, body, tally):
    while time.monotonic() + 1 < end:
        fn(host, port, min(secs, max(1.0, end - time.monotonic())), body, tally)


def udp_stream(host, port, end, rate, seed, out):
    """Sends `rate` datagrams a second until `end`; each carries its
    sequence number and bytes derived from it, and must come back as it
    went."""
    rng = random.Random(seed)
    sizes = [rng.randint(64, 1200) for _ in range(997)]

    def datagram(seq):
        n = sizes[seq % len(sizes)]
        return seq.to_bytes(8, "big") + random.Random(seq).randbytes(n - 8)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    sock.setblocking(False)
    gap = 1.0 / rate
    start = time.monotonic()
    sent = sent_bytes = intact = dups = corrupt = send_errors = 0
    got = set()
    stop = None
    while True:
        now = time.monotonic()
        if stop is None and now >= end:
            stop = now + 2.0  # stragglers
        if stop is not None and now >= stop:
            break
        if stop is None and now >= start + sent * gap:
            data = datagram(sent)
            try:
                sock.send(data)
            except OSError:
                send_errors += 1
            sent += 1
            sent_bytes += len(data)
            continue
        wake = stop if stop is not None else start + sent * gap
        ready, _, _ = select.select([sock], [], [], max(0.0, wake - now))
        while ready:
            try:
                data = sock.recv(4096)
            except OSError:
                break
            seq = int.from_bytes(data[:8], "big") if len(data) >= 8 else -1
            if not 0 <= seq < sent or data != datagram(seq):
                corrupt += 1
            elif seq in got:
                dups += 1
            else:
                got.add(seq)
                intact += len(data)
    longest = run = 0
    for seq in range(sent):
        run = 0 if seq in got else run + 1
        longest = max(longest, run)
    out.append({"class": "udp", "count": sent, "ok": len(got), "sent": sent_bytes,
                "intact": intact, "lost": sent - len(got), "longest_loss_run": longest,
                "dups": dups, "corrupt": corrupt, "send_errors": send_errors})


def run(host, port, secs, workers, bulk_secs, udp_rate, seed):
    body = block(seed)
    end = time.monotonic() + secs
    tallies = {name: Tally(name) for name in ("requests", "download", "upload")}
    udp_out = []
    threads = [threading.Thread(target=requests, args=(host, port, end, seed * 1000 + i,
                                                      tallies["requests"]), daemon=True)
               for i in range(workers)]
    threads.append(threading.Thread(target=bulk_loop, args=(
        download, host, port, bulk_secs, end, body, tallies["download"]), daemon=True))
    threads.append(threading.Thread(target=bulk_loop, args=(
        upload, host, port, bulk_secs, end, body, tallies["upload"]), daemon=True))
    threads.append(threading.Thread(target=udp_stream, args=(
        host, port, end, udp_rate, seed, udp_out), daemon=True))
    for t in threads:
        t.start()
    hard = end + HARD_EXTRA
    for t in threads:
        t.join(max(0.0, hard - time.monotonic()))
    hung = sum(t.is_alive() for t in threads)
    for tally in tallies.values():
        print(json.dumps(tally.result()), flush=True)
    for line in udp_out:
        print(json.dumps(line), flush=True)
    if hung:
        print(json.dumps({"class": "hung", "threads": hung}), flush=True)


def main(argv):
    opts = {"--workers": 4, "--bulk-secs": 15.0, "--udp-rate": 50.0, "--seed": 1}
    args = []
    while argv:
        a = argv.pop(0)
        if a in opts:
            if not argv:
                sys.exit(f"soak.py: {a} needs a value")
            opts[a] = type(opts[a])(argv.pop(0))
        else:
            args.append(a)
    if len(args) == 2 and args[0] == "serve":
        serve(int(args[1]), opts["--seed"])
    elif len(args) == 4 and args[0] == "run":
        if not 1 <= opts["--workers"] <= 64 or not 0 < opts["--udp-rate"] <= 1000:
            sys.exit("soak.py: --workers 1-64, --udp-rate 1-1000")
        run(args[1], int(args[2]), float(args[3]), opts["--workers"], opts["--bulk-secs"],
            opts["--udp-rate"], opts["--seed"])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
