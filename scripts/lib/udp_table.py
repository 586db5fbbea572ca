#!/usr/bin/env python3
"""Rows and tables of scripts/bench.sh udp.

  udp_table.py iperf ROWS CLIENT_JSON SERVER_JSON KEY=VALUE...
        appends a row from one iperf3 run (the client's JSON holds the
        receiver's counts either way; the server's, the address it saw);
        KEY=VALUE pairs are added to the row (numbers where they parse)
  udp_table.py failed ROWS REASON KEY=VALUE...
        appends a row for an iperf3 run that failed (REASON says how)
  udp_table.py rtt ROWS MODE TUNNEL_PING DIRECT_PING
        appends a row from two `ping -n` outputs
  udp_table.py cut ROWS MODE RUN_JSON SERVE_JSON CUT RESTORE FRAMES...
        appends a row from udpstream.py's two ends (wall-clock times) and
        the emulators' frame counters "DSL LTE" at 0.5 s, at the cut, 1.5 s
        after the return and at the end
  udp_table.py print ROWS DSL_BPS LTE_BPS LEN SECS
        prints the tables and goals; exits 3 when a goal is missed

ROWS is a file of JSON lines, one per measurement.
"""
import json
import statistics
import sys

NAMES = {
    "dsl": "direct, dsl only",
    "lte": "direct, lte only",
    "latency": "mpbond latency",
    "redundant": "mpbond redundant",
    "aggregate": "mpbond aggregate",
    "mpbond": "mpbond (dsl only)",
    "wireguard-go": "wireguard-go (dsl)",
}
MODES = ("latency", "redundant", "aggregate")
# IP bytes per datagram beyond its payload: directly UDP + IPv4; through
# the tunnel also the outer UDP + IPv4, the 17-byte header and the 16-byte
# tag (README, the datagram tunnel's security). The emulators count IP
# bytes.
DIRECT_OVERHEAD = 28
TUNNEL_OVERHEAD = 28 + 28 + 17 + 16
TUNNEL_ADDR = "10.77.9.2"


def value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def append(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def cmd_iperf(rows, client, server, *pairs):
    end = json.load(open(client))["end"]
    r = end.get("sum_received") or end["sum"]
    try:
        connected = json.load(open(server))["start"]["connected"]
        seen = sorted({c["remote_host"] for c in connected})
    except (OSError, ValueError, KeyError):
        seen = []
    # Each flow's goodput as its receiver counted it, from the intervals
    # (iperf3 3.12's per-stream end totals hold the sender's bytes); only
    # where the client received (-R).
    got, secs = {}, {}
    for interval in json.load(open(client)).get("intervals", []):
        for st in interval.get("streams", []):
            if st.get("sender", True):
                continue
            got[st["socket"]] = got.get(st["socket"], 0) + st["bytes"]
            secs[st["socket"]] = secs.get(st["socket"], 0) + st["seconds"]
    flows = sorted(round(got[k] * 8 / secs[k] / 1e6, 1) for k in got if secs[k])
    # Goodput from 1 s on (the scheduler learns the lines in the first
    # few hundred ms), from the receiver's interval sums.
    late_bytes, late_secs = 0, 0.0
    for interval in json.load(open(client)).get("intervals", []):
        s = interval.get("sum", {})
        if s.get("start", 0) >= 1 and not s.get("sender", False):
            late_bytes += s.get("bytes", 0)
            late_secs += s.get("seconds", 0)
    row = {
        "per_flow": flows,
        "bps_settled": late_bytes * 8 / late_secs if late_secs else 0,
        "bps": r["bits_per_second"],
        "bytes": r["bytes"],
        "lost": r["lost_packets"],
        "packets": r["packets"],
        "jitter": r["jitter_ms"],
        "seen": ",".join(seen) or "?",
    }
    for pair in pairs:
        key, _, val = pair.partition("=")
        row[key] = value(val)
    append(rows, row)


def cmd_failed(rows, reason, *pairs):
    row = {"failed": reason}
    for pair in pairs:
        key, _, val = pair.partition("=")
        row[key] = value(val)
    append(rows, row)


def ping_times(path):
    times = []
    for line in open(path):
        if "time=" in line:
            times.append(float(line.split("time=")[1].split()[0]))
    return times


def cmd_rtt(rows, mode, tunnel, direct):
    append(rows, {"kind": "rtt", "path": mode, "tunnel": ping_times(tunnel), "direct": ping_times(direct)})


def stream_stats(data, cut, restore):
    arrivals = sorted(data["arrivals"], key=lambda a: a[1])
    seqs = [s for s, _ in arrivals]
    unique = set(seqs)
    sent = data["sent"]
    # Longest run of sequence numbers that never arrived.
    run = longest = 0
    for s in range(sent):
        run = 0 if s in unique else run + 1
        longest = max(longest, run)
    first = {}
    for s, t in arrivals:
        first.setdefault(s, t)
    times = sorted(first.values())

    def gap(a, b):
        gaps = [t2 - t1 for t1, t2 in zip(times, times[1:]) if a <= t1 < b]
        return max(gaps, default=0) * 1000

    return {
        "sent": sent,
        "lost": sent - len(unique & set(range(sent))),
        "dups": len(seqs) - len(unique),
        "run": longest,
        "gap_cut": gap(cut - 0.3, restore),
        "gap_return": gap(restore, float("inf")),
        "gap_noise": gap(0, cut - 0.3),
    }


def cmd_cut(rows, mode, run, serve, cut, restore, *frames):
    cut, restore = float(cut), float(restore)
    f = [list(map(int, x.split())) for x in frames]

    def per_sec(a, b, secs):
        return [round((f[b][i] - f[a][i]) / secs) for i in range(2)]

    row = {
        "kind": "cut",
        "path": mode,
        # [0.5 s, cut] and [return + 1.5 s, end]: 1.5 s each.
        "before": per_sec(0, 1, 1.5),
        "after": per_sec(2, 3, 1.5),
        "down": stream_stats(json.load(open(run)), cut, restore),
        "up": stream_stats(json.load(open(serve)), cut, restore),
    }
    append(rows, row)


def load(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def pct(sorted_values, q):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def split(row):
    """Each uplink's share of the bytes the client received ("DSL LTE"
    counters before and after)."""
    if "rx_before" not in row:
        return "-"
    d0, l0 = map(int, str(row["rx_before"]).split())
    d1, l1 = map(int, str(row["rx_after"]).split())
    d, l = d1 - d0, l1 - l0
    return "%3.0f:%-3.0f" % (100 * d / max(d + l, 1), 100 * l / max(d + l, 1))


def cmd_print(rows_path, dsl_bps, lte_bps, length, secs):
    rows = load(rows_path)
    dsl_bps, lte_bps, length, secs = int(dsl_bps), int(lte_bps), int(length), int(secs)
    total = dsl_bps + lte_bps
    misses = []
    wrong_path = []

    # 1. Downloads.
    dl = [r for r in rows if r.get("kind") == "dl"]
    if dl:
        best = {f: max([r["bps"] for r in dl if r["path"] in ("dsl", "lte") and r["flows"] == f and "failed" not in r],
                       default=0)
                for f in (1, 8)}
        best_settled = max([r.get("bps_settled", 0) for r in dl
                            if r["path"] in ("dsl", "lte") and r["flows"] == 1 and "failed" not in r], default=0)
        direct_ceiling = length / (length + DIRECT_OVERHEAD)
        tunnel_ceiling = length / (length + TUNNEL_OVERHEAD)
        print()
        print("1. UDP download, mpb-srv -> LAN host (iperf3 -u -R, %d-byte datagrams, %d s); configured down rates:"
              % (length, secs))
        print("   dsl %.0f + lte %.0f = %.0f Mbit/s; offered %.1f Mbit/s in all, split over the flows"
              % (dsl_bps / 1e6, lte_bps / 1e6, total / 1e6, (dl[0]["offered"] if dl else 0) / 1e6))
        print("   payload ceilings (the emulators count IP bytes): direct %.3f, through the tunnel %.3f of the rate"
              % (direct_ceiling, tunnel_ceiling))
        print("   direct rows from mpb-cli bound to the line's address (mpbond stopped); mpbond rows from mpb-lan")
        hdr = "%-18s %5s | %8s %6s %6s | %6s %7s | %-10s %-7s %9s | %s" % (
            "path", "flows", "Mbit/s", "x sum", "x best", "loss%", "jitter", "seen as", "dsl:lte", "down/back", "goal")
        for flows in (1, 8):
            print()
            print(hdr)
            print("-" * len(hdr))
            for path in ("dsl", "lte") + MODES:
                for r in dl:
                    if r["path"] != path or r["flows"] != flows:
                        continue
                    if "failed" in r:
                        print("%-18s %5d | FAILED: %s (down/back %s)" % (NAMES[path], flows, r["failed"], r.get("changes", "-")))
                        misses.append("%s, %d flow(s): %s" % (path, flows, r["failed"]))
                        continue
                    want = {"dsl": "10.77.1.2", "lte": "10.77.2.2"}.get(path, TUNNEL_ADDR)
                    seen = r["seen"]
                    if seen != want:
                        wrong_path.append("%s %d flow(s): the server saw %s, not %s" % (path, flows, seen, want))
                        seen += " (!)"
                    goal = ""
                    if path in MODES and flows == 1:
                        # Against what the best line carries through a tunnel
                        # (its direct goodput x the ratio of the payload
                        # ceilings), from 1 s on in both.
                        # 2 % for noise: lte's random loss and jitter, a
                        # shared machine.
                        line = best_settled * tunnel_ceiling / direct_ceiling
                        got = r.get("bps_settled", 0)
                        ok = line > 0 and got >= 0.98 * line
                        goal = "%s (from 1 s: %.3f x best line's tunnel ceiling, >= 0.98)" % (
                            "PASS" if ok else "MISS", got / line if line else float("nan"))
                        if not ok:
                            misses.append("%s, 1 flow: %.3f of the best line's ceiling through a tunnel (from 1 s)"
                                          % (path, got / line if line else float("nan")))
                    if path == "aggregate" and flows == 8:
                        ok = r["bps"] >= 0.9 * total
                        goal = "%s (>= 0.9 x sum)" % ("PASS" if ok else "MISS")
                        if not ok:
                            misses.append("aggregate, 8 flows: %.3f of the summed rates" % (r["bps"] / total))
                    if r.get("tries", 1) > 1:
                        goal += " [iperf3 tries: %d]" % r["tries"]
                    loss = 100 * r["lost"] / max(r["packets"], 1)
                    print("%-18s %5d | %8.2f %6.3f %6.3f | %6.2f %5.2f ms | %-10s %-7s %9s | %s" % (
                        NAMES[path], flows, r["bps"] / 1e6, r["bps"] / total,
                        r["bps"] / best[flows] if best[flows] else float("nan"),
                        loss, r["jitter"], seen, split(r), r.get("changes", "-"), goal))
                    if flows > 1 and path in MODES and r.get("per_flow"):
                        print("%-24s | each flow: %s Mbit/s" % ("", " ".join("%.1f" % x for x in r["per_flow"])))

    # 2. Round trips.
    rtts = [r for r in rows if r.get("kind") == "rtt"]
    if rtts:
        print()
        print("2. Round trip to mpb-srv: 50 pings at 20 ms from mpb-lan through the tunnel vs from mpb-cli bound to")
        print("   10.77.1.2 (dsl, the best line, directly), measured one after the other in each mode")
        hdr = "%-18s | %15s | %15s | %15s | %5s | %s" % (
            "mode", "tunnel med/p90", "direct med/p90", "added med/p90", "lost", "goal")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            if r.get("kind") != "rtt":
                continue
            t, d = sorted(r["tunnel"]), sorted(r["direct"])
            tm, tp, dm, dp = pct(t, 0.5), pct(t, 0.9), pct(d, 0.5), pct(d, 0.9)
            goal = ""
            if r["path"] == "latency":
                ok = tm - dm < 1.0
                goal = "%s (adds < 1 ms, median)" % ("PASS" if ok else "MISS")
                if not ok:
                    misses.append("latency mode adds %.2f ms (median)" % (tm - dm))
            print("%-18s | %6.2f / %6.2f | %6.2f / %6.2f | %+6.2f / %+6.2f | %2d/%2d | %s" % (
                NAMES[r["path"]], tm, tp, dm, dp, tm - dm, tp - dp, 50 - len(t), 50 - len(d), goal))

    # 3. The cut.
    cuts = [r for r in rows if r.get("kind") == "cut"]
    if cuts:
        print()
        print("3. A 50/s stream both ways on one socket pair (160-byte datagrams, 8 s), dsl cut (carrier down) at 2 s")
        print("   and back at 5 s; lte's random loss set to 0 meanwhile. Longest gap between arrivals at the cut")
        print("   (from 0.3 s before it to the return) and after the return; frames/s on each line (both ways, probes")
        print("   included) in the 1.5 s before the cut and from 1.5 s after the return to the end")
        hdr = "%-18s %-4s | %4s %4s %4s | %8s %8s %8s | %-11s %-11s" % (
            "mode", "dir", "lost", "row", "dups", "noise", "at cut", "return", "before d/l", "after d/l")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            if r.get("kind") != "cut":
                continue
            for direction, label in (("down", "down"), ("up", "up")):
                s = r[direction]
                print("%-18s %-4s | %4d %4d %4d | %5.0f ms %5.0f ms %5.0f ms | %4d / %-4d %4d / %-4d" % (
                    NAMES[r["path"]], label, s["lost"], s["run"], s["dups"], s["gap_noise"], s["gap_cut"],
                    s["gap_return"], r["before"][0], r["before"][1], r["after"][0], r["after"][1]))
        print("   (lost: datagrams never delivered; row: most lost in a row; dups: delivered twice. The lab test")
        print("   tests/datagram_failover.rs bounds latency mode at 15 in a row and redundant mode at 0 lost.)")

    # 4. Profile none: CPU.
    none = [r for r in rows if r.get("kind") == "none"]
    if none:
        print()
        print("4. Profile none (plain veths), one line (dsl): iperf3 -u -b %s, %d-byte datagrams, %d s, 1 flow;"
              % (none[0].get("rate", "0"), length, secs))
        print("   CPU seconds (utime+stime) of the two tunnel processes over the run, per Gbit delivered")
        hdr = "%-20s %-4s | %7s %6s | %-9s %9s | %8s %8s | %8s %7s | %s" % (
            "path", "dir", "Gbit/s", "loss%", "seen as", "down/back", "cli CPU", "srv CPU", "CPU/Gbit", "x wg", "goal")
        print(hdr)
        print("-" * len(hdr))
        wg = {r["dir"]: r for r in none if r["path"] == "wireguard-go" and "failed" not in r}
        for path in ("wireguard-go", "mpbond"):
            for r in none:
                if r["path"] != path:
                    continue
                if "failed" in r:
                    print("%-20s %-4s | FAILED: %s" % (NAMES[path], r["dir"], r["failed"]))
                    misses.append("none, %s %s: %s" % (path, r["dir"], r["failed"]))
                    continue
                gbit = r["bytes"] * 8 / 1e9
                cpu = r["cpu_client"] + r["cpu_server"]
                per = cpu / gbit if gbit else float("inf")
                seen = r["seen"]
                if seen != TUNNEL_ADDR:
                    wrong_path.append("%s %s: the server saw %s, not %s" % (path, r["dir"], seen, TUNNEL_ADDR))
                    seen += " (!)"
                ratio, goal = "", ""
                w = wg.get(r["dir"])
                if path == "mpbond" and w:
                    wgbit = w["bytes"] * 8 / 1e9
                    wper = (w["cpu_client"] + w["cpu_server"]) / wgbit if wgbit else float("inf")
                    ratio = "%.3f" % (per / wper) if wper else "-"
                    ok = r["bps"] >= w["bps"] and per <= wper
                    goal = "%s (goodput >= wg: %.3f, CPU/Gbit <= wg: %s)" % (
                        "PASS" if ok else "MISS", r["bps"] / w["bps"] if w["bps"] else float("nan"), ratio)
                    if not ok:
                        misses.append("none, %s: goodput %.3f x wireguard-go, CPU/Gbit %s x" % (
                            r["dir"], r["bps"] / w["bps"] if w["bps"] else float("nan"), ratio))
                if r.get("tries", 1) > 1:
                    goal += " [iperf3 tries: %d]" % r["tries"]
                print("%-20s %-4s | %7.3f %6.2f | %-9s %9s | %6.2f s %6.2f s | %6.2f s %7s | %s" % (
                    NAMES[path], r["dir"], r["bps"] / 1e9, 100 * r["lost"] / max(r["packets"], 1), seen,
                    r.get("changes", "-"), r["cpu_client"], r["cpu_server"], per, ratio, goal))
        print("   (up: LAN host -> server; down: server -> LAN host. cli: the client end (mpb-cli), srv: the")
        print("   concentrator end (mpb-conc). wireguard-go between the same two namespaces, the LAN host's")
        print("   traffic to mpb-srv routed into it and masqueraded at the far end, as mpbond does.)")

    print()
    for w in wrong_path:
        print("bench: WRONG PATH: " + w)
    if misses:
        print("goals missed: " + "; ".join(misses))
    else:
        print("every goal met")
    if misses or wrong_path:
        sys.exit(3)


def main(argv):
    cmds = {"iperf": (cmd_iperf, 3), "failed": (cmd_failed, 2), "rtt": (cmd_rtt, 4), "cut": (cmd_cut, 6), "print": (cmd_print, 5)}
    if not argv or argv[0] not in cmds or len(argv) - 1 < cmds[argv[0]][1]:
        sys.exit(__doc__)
    cmds[argv[0]][0](*argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
