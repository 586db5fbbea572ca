#!/usr/bin/env python3
"""Floods against the concentrator, and what they cost it (issue 10, item 5).

Runs as root on the lab's host; every part that sends runs in its namespace
through `ip netns exec`:

  flood.py run [--kinds idle,slowloris,headers,handshakes] [--idle N]
               [--slow N] [--secs S] [--timeout S] [--table]
      Starts an echo server (TCP and UDP) in mpb-srv, measures legitimate
      requests from mpb-lan without a flood (the baseline), then per kind
      runs the flood from mpb-wan while mpb-lan keeps making requests
      through the client, and samples the concentrator (/proc/PID/status
      VmRSS, /proc/PID/fd) every 20 ms. Prints one `result kind=... k=v ...`
      line per kind (and the baseline), and with --table a table.

  flood.py worker flood KIND ...   (in mpb-wan; what `run` starts)
  flood.py worker legit ...        (in mpb-lan)
  flood.py worker echo ...         (in mpb-srv)

Flood kinds (each bounded in count and time):
  idle        N TCP/MPTCP connections (half each) that send nothing
  slowloris   N connections sending a well-formed connect header 1 byte/s
  headers     S seconds of connect headers as fast as 64 connections in
              flight allow: garbage, well-formed with a bad MAC for a
              configured client, well-formed for an unknown client
  handshakes  S seconds of datagram-tunnel initiations (UDP) as fast as one
              socket sends: valid mac1 (made with the concentrator's public
              key), garbage noise payload; 1 in 8 plain garbage
  client      S seconds of datagrams of every tunnel type to the client's
              uplink sockets (found with ss), half from a stranger's address,
              half forged from the concentrator's (raw socket); measured at
              the client (its RSS, fds and log)

Legitimate traffic (mpb-lan, through the client): every 50 ms (--every) a new TCP
connection to the echo server sends 4 KiB and must read the same 4 KiB
back (latency: connect to last byte); with --udp, a UDP datagram to the
echo server every 20 ms (it rides the datagram tunnel) must come back.
"""

import argparse
import base64
import errno
import hashlib
import json
import os
import random
import resource
import selectors
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time

CONC = ("10.77.9.2", 7300)
FLOOD_SRC = "10.77.9.1"
ECHO = ("198.51.100.10", 7007)
RUN = os.environ.get("MPB_LAB_RUN", "/run/mpbond-lab")
IPPROTO_MPTCP = 262
HERE = os.path.abspath(__file__)
# Nothing here runs longer than this, whatever the arguments say.
HARD_LIMIT = 120.0
REQUEST = 4096


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---------------------------------------------------------------- messages

def connect_header(client_id, rng, now_ms):
    """A well-formed connect header (wire::convert) with a random MAC."""
    cid = client_id.encode()
    words = (68 + len(cid) + 3) // 4
    total = 1 + 5 + words
    msg = bytearray(4 * total)
    msg[0:4] = bytes([1, total, 0x22, 0x63])
    # Connect TLV to 198.51.100.10:7 (as ::ffff:a.b.c.d).
    msg[4:6] = bytes([10, 5])
    msg[6:8] = struct.pack(">H", 7)
    msg[8:24] = b"\0" * 10 + b"\xff\xff" + socket.inet_aton(ECHO[0])
    a = 24
    msg[a] = 200
    msg[a + 1] = words
    msg[a + 2] = len(cid)
    msg[a + 4:a + 12] = struct.pack(">Q", now_ms)
    msg[a + 12:a + 28] = rng.randbytes(16)
    msg[a + 28:a + 60] = rng.randbytes(32)  # the MAC: wrong
    msg[a + 60:a + 68] = rng.randbytes(8)   # some epoch
    msg[a + 68:a + 68 + len(cid)] = cid
    return bytes(msg)


def mac1_key(public):
    return hashlib.blake2s(b"mac1----" + public).digest()


def initiation(key, rng, i):
    """A datagram-tunnel initiation (wire::tunnel) with a valid mac1."""
    msg = bytearray(149)
    msg[0] = 1
    msg[4:117] = rng.randbytes(113)
    msg[117:133] = hashlib.blake2s(bytes(msg[:117]), key=key, digest_size=16).digest()
    return bytes(msg)


# ---------------------------------------------------------------- TCP flood engine

class Conn:
    __slots__ = ("sock", "opened", "closed", "out", "sent_at", "kind")

    def __init__(self, sock, kind):
        self.sock = sock
        self.opened = time.monotonic()
        self.closed = None
        self.out = b""
        self.sent_at = 0.0
        self.kind = kind


def new_socket(mptcp):
    proto = IPPROTO_MPTCP if mptcp else 0
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
    except OSError:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((FLOOD_SRC, 0))
    s.setblocking(False)
    try:
        s.connect(CONC)
    except BlockingIOError:
        pass
    return s


def hold(conns, sel, until, drip=None):
    """Waits for the concentrator to close `conns`; `drip(conn)` is called
    for each live one once a second. Returns when all closed or at `until`."""
    next_drip = time.monotonic() + 1.0
    live = len([c for c in conns if c.closed is None])
    buf = bytearray(4096)
    while live and time.monotonic() < until:
        for key, _ in sel.select(0.05):
            c = key.data
            try:
                n = c.sock.recv_into(buf)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n == 0:
                c.closed = time.monotonic()
                sel.unregister(c.sock)
                c.sock.close()
                live -= 1
        if drip and time.monotonic() >= next_drip:
            next_drip += 1.0
            for c in conns:
                if c.closed is None:
                    drip(c)
    for c in conns:
        if c.closed is None:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()


def open_many(n, sel):
    conns = []
    t0 = time.monotonic()
    for i in range(n):
        try:
            s = new_socket(mptcp=i % 2 == 1)
        except OSError as e:
            print(f"flood: socket {i}: {e}", file=sys.stderr)
            break
        c = Conn(s, "idle")
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    return conns, time.monotonic() - t0


def closes(conns):
    times = sorted(c.closed - c.opened for c in conns if c.closed is not None)
    early = sum(1 for t in times if t < 1.0)
    return {
        "closed": len(times),
        "closed_early": early,
        "close_max_s": round(times[-1], 2) if times else -1,
        "open_at_end": len(conns) - len(times),
    }


def flood_idle(args):
    sel = selectors.DefaultSelector()
    conns, took = open_many(args.count, sel)
    hold(conns, sel, time.monotonic() + args.timeout + 3)
    out = {"size": len(conns), "rate": round(len(conns) / max(took, 1e-3))}
    out.update(closes(conns))
    return out


def flood_slowloris(args):
    rng = random.Random(7)
    header = connect_header("lab", rng, int(time.time() * 1000))
    sel = selectors.DefaultSelector()
    conns, took = open_many(args.count, sel)
    progress = {}

    def drip(c):
        i = progress.get(id(c), 0)
        if i < len(header):
            try:
                c.sock.send(header[i:i + 1])
            except OSError:
                return
            progress[id(c)] = i + 1

    hold(conns, sel, time.monotonic() + args.timeout + 3, drip)
    out = {"size": len(conns), "rate": 1}
    out.update(closes(conns))
    return out


def flood_headers(args):
    """Connect, send one header, wait for the close; 64 in flight."""
    rng = random.Random(11)
    sel = selectors.DefaultSelector()
    until = time.monotonic() + args.secs
    inflight = 0
    done = 0
    started = 0
    refused = 0
    answered = 0
    t0 = time.monotonic()
    kinds = ("garbage", "badmac", "unknown")
    while time.monotonic() < until or inflight:
        if time.monotonic() > until + args.timeout + 3:
            break
        while inflight < 64 and time.monotonic() < until and started < 200_000:
            try:
                s = new_socket(mptcp=started % 2 == 1)
            except OSError:
                refused += 1
                break
            c = Conn(s, kinds[started % 3])
            if c.kind == "garbage":
                c.out = rng.randbytes(96)
            elif c.kind == "badmac":
                c.out = connect_header("lab", rng, int(time.time() * 1000))
            else:
                c.out = connect_header("mallory%d" % (started % 1000), rng, int(time.time() * 1000))
            sel.register(s, selectors.EVENT_WRITE, c)
            inflight += 1
            started += 1
        for key, ev in sel.select(0.05):
            c = key.data
            if ev & selectors.EVENT_WRITE:
                try:
                    c.sock.send(c.out)
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                except BlockingIOError:
                    pass
                except OSError:
                    sel.unregister(c.sock)
                    c.sock.close()
                    inflight -= 1
                    refused += 1
                continue
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                answered += 1  # the concentrator must never answer these
                continue
            sel.unregister(c.sock)
            c.sock.close()
            inflight -= 1
            done += 1
    took = time.monotonic() - t0
    return {"size": started, "rate": round(done / max(took, 1e-3)), "closed": done,
            "failed": refused, "answered": answered}


def flood_handshakes(args):
    rng = random.Random(13)
    with open(os.path.join(RUN, "concentrator.key.pub")) as f:
        public = base64.b64decode(f.read().split()[-1])
    key = mac1_key(public)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((FLOOD_SRC, 0))
    s.setblocking(False)
    # A pool of messages: making each costs more than sending it.
    pool = [initiation(key, rng, i) if i % 8 else rng.randbytes(149) for i in range(512)]
    until = time.monotonic() + args.secs
    t0 = time.monotonic()
    sent = answers = 0
    i = 0
    while time.monotonic() < until and sent < 2_000_000:
        try:
            s.sendto(pool[i % len(pool)], CONC)
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
        except OSError:
            pass
        i += 1
        if i % 64 == 0:
            answers += drain(s)
    took = time.monotonic() - t0
    time.sleep(0.2)
    answers += drain(s)
    return {"size": sent, "rate": round(sent / max(took, 1e-3)), "answers": answers}


def drain(sock):
    """Reads every answer queued on non-blocking `sock`: how many."""
    count = 0
    while True:
        try:
            sock.recv(2048)
        except OSError:
            return count
        count += 1


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def spoofed(src, dst, payload):
    """An IPv4/UDP packet from `src` (the concentrator's address: what an
    attacker on the path can forge) to `dst`."""
    udp_len = 8 + len(payload)
    pseudo = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", src[1], dst[1], udp_len, 0) + payload
    csum = checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


def flood_client(args):
    """Strangers' datagrams to the client's uplink sockets: from our own
    address, and forged from the concentrator's; every tunnel type."""
    rng = random.Random(17)
    targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in args.targets.split(",") if t]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((FLOOD_SRC, 0))
    s.setblocking(False)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    kinds = [(1, 149), (2, 93), (3, 64), (4, 64), (4, 1200), (0, 40), (0x22, 60)]
    until = time.monotonic() + args.secs
    sent = answers = 0
    i = 0
    while time.monotonic() < until and sent < 50_000:
        kind, length = kinds[i % len(kinds)]
        msg = bytearray(rng.randbytes(length))
        msg[0] = kind
        if kind != 0x22:
            msg[1:4] = b"\0\0\0"
        dst = targets[i % len(targets)]
        try:
            if i % 2:
                raw.sendto(spoofed(CONC, dst, bytes(msg)), (dst[0], 0))
            else:
                s.sendto(bytes(msg), dst)
            sent += 1
        except OSError:
            pass
        i += 1
        if i % 50 == 0:
            time.sleep(0.005)
            answers += drain(s)
    time.sleep(0.2)
    answers += drain(s)
    return {"size": sent, "rate": round(sent / max(args.secs, 1e-3)), "answers": answers}


# ---------------------------------------------------------------- legitimate traffic

def legit(args):
    """Requests through the client until `--secs` pass or stdin closes."""
    stop = time.monotonic() + args.secs
    lat = []
    bad = []
    udp = {"sent": 0, "back": 0}
    seq = 0

    def udp_loop():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.02)
        n = 0
        while time.monotonic() < stop:
            payload = struct.pack(">Q", n) + b"u" * 200
            s.sendto(payload, ECHO)
            udp["sent"] += 1
            t = time.monotonic() + 0.02
            while time.monotonic() < t:
                try:
                    data = s.recv(2048)
                except OSError:
                    break
                if len(data) == len(payload) and data[8:] == payload[8:]:
                    udp["back"] += 1
            n += 1

    thread = None
    if args.udp:
        thread = threading.Thread(target=udp_loop, daemon=True)
        thread.start()
    while time.monotonic() < stop:
        seq += 1
        body = random.Random(seq).randbytes(REQUEST)
        t0 = time.monotonic()
        try:
            s = socket.create_connection(ECHO, timeout=args.deadline)
            s.settimeout(args.deadline)
            s.sendall(body)
            got = bytearray()
            while len(got) < len(body):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            s.close()
            took = time.monotonic() - t0
            if got != body:
                bad.append(f"request {seq}: {len(got)} of {len(body)} bytes came back or they differ")
            elif took > args.deadline:
                bad.append(f"request {seq}: {took:.2f} s")
            else:
                lat.append(took)
        except OSError as e:
            bad.append(f"request {seq}: {e} after {time.monotonic() - t0:.2f} s")
        time.sleep(max(0.0, args.every - (time.monotonic() - t0)))
    if thread:
        thread.join()
    return {"requests": seq, "ok": len(lat), "bad": bad[:5], "bad_count": len(bad),
            "latencies": lat, "udp_sent": udp["sent"], "udp_back": udp["back"]}


def echo(args):
    until = time.monotonic() + args.secs
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(ECHO)
    tcp.listen(256)
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(ECHO)
    udp.settimeout(0.2)

    def udp_loop():
        while time.monotonic() < until:
            try:
                data, peer = udp.recvfrom(65535)
                udp.sendto(data, peer)
            except OSError:
                pass

    def serve(c):
        c.settimeout(10)
        try:
            got = bytearray()
            while len(got) < REQUEST:
                chunk = c.recv(65536)
                if not chunk:
                    break
                got += chunk
            c.sendall(got)
        except OSError:
            pass
        c.close()

    threading.Thread(target=udp_loop, daemon=True).start()
    print("listening", flush=True)
    while time.monotonic() < until:
        try:
            c, _ = tcp.accept()
        except OSError:
            continue
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def worker(argv):
    p = argparse.ArgumentParser(prog="flood.py worker")
    p.add_argument("role", choices=["flood", "legit", "echo"])
    p.add_argument("kind", nargs="?", default="")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--secs", type=float, default=5)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--deadline", type=float, default=2)
    p.add_argument("--udp", action="store_true")
    p.add_argument("--targets", default="")
    p.add_argument("--every", type=float, default=0.05)
    a = p.parse_args(argv)
    a.secs = min(a.secs, HARD_LIMIT)
    a.timeout = min(a.timeout, HARD_LIMIT / 2)
    a.count = min(a.count, 20_000)
    raise_nofile()
    if a.role == "echo":
        echo(a)
        return
    if a.role == "legit":
        out = legit(a)
    else:
        out = {"idle": flood_idle, "slowloris": flood_slowloris,
               "headers": flood_headers, "handshakes": flood_handshakes,
               "client": flood_client}[a.kind](a)
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------- orchestration

def in_ns(ns, *argv):
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, HERE, "worker", *argv],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)


def finish(proc, limit):
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise SystemExit(f"flood.py: a worker overran {limit:.0f} s")
    line = out.strip().splitlines()[-1] if out.strip() else "{}"
    return json.loads(line)


def lab_pid(name):
    with open(os.path.join(RUN, name + ".pid")) as f:
        return int(f.read().split()[0])


def client_sockets(pid):
    """The client's UDP sockets on its uplinks (ip:port), from ss."""
    out = subprocess.run(["ip", "netns", "exec", "mpb-cli", "ss", "-Hunap"],
                         capture_output=True, text=True).stdout
    found = []
    for l in out.splitlines():
        f = l.split()
        if len(f) >= 5 and f"pid={pid}," in l and f[3].startswith(("10.77.1.2:", "10.77.2.2:")):
            found.append(f[3])
    return ",".join(sorted(set(found)))


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def log_lines(name="concentrator"):
    try:
        with open(os.path.join(RUN, name + ".log"), "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def log_since(start):
    """The concentrator's log lines from line `start` on that the flood
    caused: all but those of the legitimate client's own connections."""
    with open(os.path.join(RUN, "concentrator.log"), errors="replace") as f:
        return [l for l in f.read().splitlines()[start:] if 'client="lab"' not in l]


def udp_rcvbuf_errors():
    out = subprocess.run(["ip", "netns", "exec", "mpb-conc", "nstat", "-az", "UdpRcvbufErrors"],
                         capture_output=True, text=True).stdout
    for l in out.splitlines():
        if l.startswith("UdpRcvbufErrors"):
            return int(l.split()[1])
    return -1


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = sample(pid)
        self.running = True

    def run(self):
        while self.running:
            rss, fds = sample(self.pid)
            self.peak = (max(self.peak[0], rss), max(self.peak[1], fds))
            time.sleep(0.02)


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def settle(pid, fds_before, limit):
    """Waits (at most `limit` s) for the fd count to come back near where it was."""
    until = time.monotonic() + limit
    while time.monotonic() < until:
        rss, fds = sample(pid)
        if fds <= fds_before + 4:
            return rss, fds
        time.sleep(0.05)
    return sample(pid)


def measure(kind, a, pid):
    if kind == "client":
        # The flood goes to the client: its process and its log.
        pid = lab_pid("client")
    line0 = log_lines()
    client0 = log_lines("client")
    rcvbuf0 = udp_rcvbuf_errors()
    rss0, fds0 = sample(pid)
    sampler = Sampler(pid)
    sampler.start()
    if kind == "baseline":
        flood = None
        legit_secs = a.base_secs
    else:
        extra = {"idle": ["--count", str(a.idle)], "slowloris": ["--count", str(a.slow)],
                 "client": ["--targets", client_sockets(pid)]}.get(kind, [])
        flood = in_ns("mpb-wan", "flood", kind, "--secs", str(a.secs), "--timeout", str(a.timeout), *extra)
        # Requests run while the flood holds the concentrator: the whole
        # flood for the timed ones, the hold for the others.
        legit_secs = a.secs if kind in ("headers", "handshakes", "client") else min(a.timeout, 6)
        time.sleep(0.3)
    legit = in_ns("mpb-lan", "legit", "--secs", str(legit_secs), "--deadline", str(a.deadline),
                  "--every", str(a.every),
                  *(["--udp"] if kind in ("handshakes", "baseline", "client") else []))
    got = finish(legit, legit_secs + 30)
    flooded = finish(flood, a.secs + a.timeout + 30) if flood else {}
    sampler.running = False
    sampler.join()
    rss2, fds2 = settle(pid, fds0, 3)
    time.sleep(0.2)
    lines = log_since(line0)
    with open(os.path.join(RUN, "client.log"), errors="replace") as f:
        client_lines = f.read().splitlines()[client0:]
    lat = got.get("latencies", [])
    res = {
        "kind": kind,
        "size": flooded.get("size", 0),
        "rate": flooded.get("rate", 0),
        "rss_before_kib": rss0, "rss_peak_kib": sampler.peak[0], "rss_after_kib": rss2,
        "fds_before": fds0, "fds_peak": sampler.peak[1], "fds_after": fds2,
        "log_lines": len(lines),
        "log_summaries": sum(1 for l in lines if "more " in l and "in the last" in l),
        "legit_requests": got.get("requests", 0), "legit_ok": got.get("ok", 0),
        "legit_bad": got.get("bad_count", 0),
        "p50_ms": round(1000 * pct(lat, 50), 1), "p99_ms": round(1000 * pct(lat, 99), 1),
        "max_ms": round(1000 * max(lat), 1) if lat else float("nan"),
        "udp_sent": got.get("udp_sent", 0), "udp_back": got.get("udp_back", 0),
        "udp_rcvbuf_errors": udp_rcvbuf_errors() - rcvbuf0,
    }
    for k in ("closed", "closed_early", "close_max_s", "open_at_end", "answers", "answered", "failed"):
        if k in flooded:
            res[k] = flooded[k]
    res["client_log_lines"] = len(client_lines)
    return res, got.get("bad", []), lines + ["client: " + l for l in client_lines]


def run(argv):
    p = argparse.ArgumentParser(prog="flood.py run")
    p.add_argument("--kinds", default="idle,slowloris,headers,handshakes,client")
    p.add_argument("--idle", type=int, default=2000)
    p.add_argument("--slow", type=int, default=200)
    p.add_argument("--secs", type=float, default=5)
    p.add_argument("--base-secs", type=float, default=None, help="the baseline's (default: --secs)")
    p.add_argument("--timeout", type=float, default=10, help="the concentrator's handshake_timeout")
    p.add_argument("--deadline", type=float, default=2, help="a legitimate request's limit")
    p.add_argument("--every", type=float, default=0.05, help="seconds between legitimate requests")
    p.add_argument("--table", action="store_true")
    p.add_argument("--show-log", action="store_true")
    a = p.parse_args(argv)
    a.idle = min(a.idle, 20_000)
    a.slow = min(a.slow, 5_000)
    a.secs = min(a.secs, 60)
    a.base_secs = min(a.secs if a.base_secs is None else a.base_secs, 60)
    pid = lab_pid("concentrator")
    server = in_ns("mpb-srv", "echo", "--secs", str(HARD_LIMIT * 3))
    try:
        assert server.stdout.readline().strip() == "listening", "the echo server did not start"
        results = []
        for kind in ["baseline"] + [k for k in a.kinds.split(",") if k]:
            res, bad, lines = measure(kind, a, pid)
            results.append(res)
            print("result " + " ".join(f"{k}={v}" for k, v in res.items()), flush=True)
            for b in bad:
                print(f"  legit {kind}: {b}", flush=True)
            if a.show_log:
                for l in lines[-20:]:
                    print(f"  log {kind}: {l}", flush=True)
    finally:
        server.kill()
        server.wait()
    if a.table:
        table(results)


def table(results):
    base = next(r for r in results if r["kind"] == "baseline")
    print()
    print(f"{'flood':<11} {'size':>7} {'rate/s':>7}  {'RSS KiB before/peak/after':>27}  "
          f"{'fds before/peak/after':>21}  {'log':>4}  {'requests ok':>11}  "
          f"{'p50 ms':>7} {'p99 ms':>7}  {'no flood p50/p99':>16}  udp back")
    for r in results:
        rss = f"{r['rss_before_kib']}/{r['rss_peak_kib']}/{r['rss_after_kib']}"
        fds = f"{r['fds_before']}/{r['fds_peak']}/{r['fds_after']}"
        udp = f"{r['udp_back']}/{r['udp_sent']}" if r["udp_sent"] else "-"
        log = r["client_log_lines"] if r["kind"] == "client" else r["log_lines"]
        print(f"{r['kind']:<11} {r['size']:>7} {r['rate']:>7}  {rss:>27}  {fds:>21}  "
              f"{log:>4}  {r['legit_ok']:>5}/{r['legit_requests']:<5}  "
              f"{r['p50_ms']:>7} {r['p99_ms']:>7}  {base['p50_ms']:>7}/{base['p99_ms']:<8}  {udp}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "run":
        run(sys.argv[2:])
    else:
        print(__doc__)
        sys.exit(2)
