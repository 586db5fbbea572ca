#!/usr/bin/env python3
"""Prints the client's per-uplink receive throughput every second until
killed (in mpb-cli: dsl0 and lte0 byte counters), for bench.sh tcp --live
and the demo."""
import time


def rx():
    out = []
    for dev in ("dsl0", "lte0"):
        with open("/sys/class/net/%s/statistics/rx_bytes" % dev) as f:
            out.append(int(f.read()))
    return time.monotonic(), out


t0, b0 = rx()
while True:
    time.sleep(1)
    t1, b1 = rx()
    d, l = ((b1[i] - b0[i]) * 8 / (t1 - t0) / 1e6 for i in range(2))
    print("  dsl0 %6.1f Mbit/s  lte0 %6.1f Mbit/s  sum %6.1f Mbit/s (on the wire)" % (d, l, d + l), flush=True)
    t0, b0 = t1, b1
