#!/usr/bin/env python3
"""Tables of scripts/bench.sh tcp, from the rows it measured.

  tcp_table.py table ROWS GROUP FLOWS   one table: the four paths of a
                                        profile and flow count, with goals;
                                        exit 3 when mpbond misses one
  tcp_table.py summary ROWS             mpbond's line of every table

ROWS holds one tab-separated line per measured row:
  group flows path goodput_bps summed_down_rates_bps default(0|1)
  changes(down/back or -) stall_ms stall_at_s split(dsl:lte % or -)
path is dsl, lte (plain TCP over that line), mptcp (kernel MPTCP used
directly) or mpbond. default is 1 on the default profiles, where the
ceiling goal applies.
"""
import sys

NAMES = {
    "dsl": "plain TCP, dsl only",
    "lte": "plain TCP, lte only",
    "mptcp": "kernel MPTCP direct",
    "mpbond": "mpbond (from mpb-lan)",
}
# MPTCP's DSS option leaves about 1420 payload bytes per 1500-byte packet.
PAYLOAD = 1420 / 1500


def load(path):
    groups = {}
    for line in open(path):
        g, f, p, bps, total, default, changes, stall, at, split = line.rstrip("\n").split("\t")
        groups.setdefault((g, f), {})[p] = dict(
            bps=int(bps), total=int(total), default=default == "1", changes=changes,
            stall=float(stall), at=float(at), split=split)
    return groups


def judge(rows):
    """Ratios and verdict of one table: (best, kernel, {path: ratios}, misses)."""
    best = max(rows.get("dsl", {}).get("bps", 0), rows.get("lte", {}).get("bps", 0))
    kernel = rows.get("mptcp", {}).get("bps", 0)
    misses = []
    r = rows.get("mpbond")
    if r:
        if r["bps"] < best:
            misses.append("best line")
        if r["bps"] < kernel:
            misses.append("MPTCP")
        if r["default"] and r["bps"] < 0.95 * r["total"] * PAYLOAD:
            misses.append("ceiling")
    return best, kernel, misses


def ratio(a, b):
    return "%.3f" % (a / b) if b else "-"


def verdict(misses):
    return "PASS" if not misses else "MISS (below %s)" % ", ".join(misses)


def table(groups, group, flows):
    rows = groups[(group, flows)]
    best, kernel, misses = judge(rows)
    any_row = next(iter(rows.values()))
    ceil = any_row["total"] * PAYLOAD
    print()
    print("%s, %s flow(s): configured down rates sum to %.1f Mbit/s; MPTCP payload ceiling %.1f Mbit/s"
          % (group, flows, any_row["total"] / 1e6, ceil / 1e6))
    print("%-22s | %8s | %6s | %7s | %6s | %9s | %16s | %7s |" % (
        "path", "Mbit/s", "x best", "x MPTCP", "x ceil", "down/back", "longest stall", "dsl:lte"))
    print("-" * 106)
    for p in ("dsl", "lte", "mptcp", "mpbond"):
        if p not in rows:
            continue
        r = rows[p]
        line = "%-22s | %8.2f | %6s | %7s | %6s | %9s | %6.0f ms at %4.1fs | %7s | %s" % (
            NAMES[p], r["bps"] / 1e6, ratio(r["bps"], best), ratio(r["bps"], kernel),
            ratio(r["bps"], ceil), r["changes"], r["stall"], r["at"], r["split"],
            verdict(misses) if p == "mpbond" else "")
        print(line.rstrip())
    goals = "goals: mpbond >= 1.0 x best single line and >= 1.0 x kernel MPTCP"
    if any_row["default"]:
        goals += "; default profiles: >= 0.95 x ceiling"
    print(goals)
    return 3 if misses else 0


def summary(groups):
    print()
    print("mpbond in every table (ratios to the rows of the same table)")
    print("%-36s %5s | %8s | %6s | %7s | %6s | %9s | %8s | %s" % (
        "profiles", "flows", "Mbit/s", "x best", "x MPTCP", "x ceil", "down/back", "stall", "verdict"))
    print("-" * 110)
    for (g, f), rows in groups.items():
        r = rows.get("mpbond")
        if not r:
            continue
        best, kernel, misses = judge(rows)
        print("%-36s %5s | %8.2f | %6s | %7s | %6s | %9s | %5.0f ms | %s" % (
            g, f, r["bps"] / 1e6, ratio(r["bps"], best), ratio(r["bps"], kernel),
            ratio(r["bps"], r["total"] * PAYLOAD), r["changes"], r["stall"], verdict(misses)))


def main(argv):
    if len(argv) == 4 and argv[0] == "table":
        sys.exit(table(load(argv[1]), argv[2], argv[3]))
    if len(argv) == 2 and argv[0] == "summary":
        summary(load(argv[1]))
        return
    sys.exit("usage: tcp_table.py table ROWS GROUP FLOWS | summary ROWS")


if __name__ == "__main__":
    main(sys.argv[1:])
