#!/usr/bin/env python3
"""bench.sh quic's table: the same requests over QUIC through the datagram
tunnel and over TLS on TCP (bonded by MPTCP), with quic = "tunnel" and
quic = "block", and the default the numbers pick.

    quic_table.py DIR    (DIR holds POLICY-PROTO-small.jsonl and -bulk.jsonl)
"""

import json
import os
import statistics
import sys


def load(path):
    """The requests of a file, and the bytes each uplink received."""
    if not os.path.exists(path):
        return [], (0, 0)
    rows, split = [], [0, 0]
    for line in open(path):
        if not line.strip():
            continue
        r = json.loads(line)
        if "split" in r:
            split = [a + b for a, b in zip(split, r["split"])]
        else:
            rows.append(r)
    return rows, tuple(split)


def share(split):
    d, l = split
    return "%3.0f:%-3.0f" % (100 * d / max(d + l, 1), 100 * l / max(d + l, 1))


def main(tmp):
    rows = {}
    for policy in ("tunnel", "block"):
        for proto in ("quic", "tls"):
            rows[(policy, proto)] = (load("%s/%s-%s-small.jsonl" % (tmp, policy, proto))[0],
                                     load("%s/%s-%s-bulk.jsonl" % (tmp, policy, proto)))
    print()
    print("A 10 KB request and a 24 MiB download from mpb-srv to the LAN host, each on a new connection")
    print("(handshake included): QUIC (quinn) through the datagram tunnel, TLS 1.3 on TCP (rustls) through")
    print("the bonded TCP path; latency mode, default profiles")
    hdr = "%-12s %-5s | %5s %18s %18s | %5s %18s %7s | %s" % (
        "quic =", "over", "small", "total med/p90 ms", "first byte med ms", "bulk", "Mbit/s med (min)",
        "dsl:lte", "failed")
    print(hdr)
    print("-" * len(hdr))
    summary = {}
    wrong = []
    for (policy, proto), (small, (bulk, split)) in rows.items():
        ok_small = [r for r in small if "error" not in r]
        ok_bulk = [r for r in bulk if "error" not in r]
        failed = [r for r in small + bulk if "error" in r]
        def med(xs):
            return statistics.median(xs) if xs else float("nan")
        def p90(xs):
            xs = sorted(xs)
            return xs[min(len(xs) - 1, int(len(xs) * 0.9))] if xs else float("nan")
        totals = [r["total_ms"] for r in ok_small]
        firsts = [r["first_ms"] for r in ok_small]
        rates = [r["bytes"] * 8 / r["total_ms"] / 1e3 for r in ok_bulk]
        fail = ""
        if failed:
            fail = "%d: %s in %.1f ms (median)" % (len(failed), failed[0]["error"][:40],
                                                   med([r["total_ms"] for r in failed]))
        print("%-12s %-5s | %5d %8.1f / %7.1f %18.1f | %5d %9.1f (%6.1f) %7s | %s" % (
            policy, proto, len(ok_small), med(totals), p90(totals), med(firsts), len(ok_bulk),
            med(rates), min(rates) if rates else float("nan"), share(split) if ok_bulk else "-", fail))
        summary[(policy, proto)] = (med(totals), med(rates), failed, med([r["total_ms"] for r in failed]))
        if policy == "tunnel" and failed:
            wrong.append("quic = tunnel: %d %s request(s) failed" % (len(failed), proto))
        if policy == "block" and proto == "tls" and failed:
            wrong.append("quic = block: %d TLS request(s) failed" % len(failed))
    block_quic = summary[("block", "quic")]
    if not block_quic[2] or any(r["error"] != "refused" for r in block_quic[2]):
        wrong.append("quic = block: QUIC was not refused every time")
    print()
    q_small, q_bulk = summary[("tunnel", "quic")][:2]
    t_small, t_bulk = summary[("block", "tls")][:2]
    refuse = block_quic[3]
    # What a browser gets: under tunnel, QUIC; under block, the refusal
    # and then TLS on TCP.
    print("a browser with quic = tunnel: QUIC, %.1f ms per small request, %.1f Mbit/s per download" % (q_small, q_bulk))
    print("a browser with quic = block:  refused in %.1f ms, then TLS on TCP: %.1f ms + %.1f ms, %.1f Mbit/s"
          % (refuse, refuse, t_small, t_bulk))
    extra = refuse + t_small - q_small
    print("block / tunnel: downloads %.2f x the goodput; a new connection %+.1f ms (%.2f x the time)"
          % (t_bulk / q_bulk, extra, (refuse + t_small) / q_small))
    # A QUIC request on a new connection takes two round trips (handshake,
    # request): half of it is one round trip. Blocking pays when downloads
    # gain a fifth and a new connection costs at most one round trip more.
    better = "block" if t_bulk >= 1.2 * q_bulk and extra <= q_small / 2 else "tunnel"
    print("the numbers pick: quic = \"%s\" (block when downloads gain >= 20 %% and a new connection"
          " costs at most one round trip more)" % better)
    if wrong:
        print("wrong: " + "; ".join(wrong))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
