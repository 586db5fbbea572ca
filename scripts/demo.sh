#!/usr/bin/env bash
# The main job, on a fresh Debian machine as root: build mpbond, bring up the
# lab (a home router with a DSL and a 4G line, see LAB.md), start the
# concentrator and the client, download from the LAN host through the bonded
# tunnel while printing each uplink's throughput every second, then a summary
# table against plain TCP on each line and kernel MPTCP used directly, and
# the time to first byte; then a download with lte cut mid-transfer and
# brought back, UDP, DNS and ping through the datagram tunnel with dsl
# blackholed, and what `mpbond status` says. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/deps.sh
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces); run as root" >&2; exit 1; }
echo "== building mpbond (release)"
cargo build --release
echo "== lab up (dsl: 20/5 Mbit/s 10 ms; lte: 40/10 Mbit/s 30 ms ±5 ms 0.5 % loss), mpbond started, downloads"
scripts/bench.sh tcp --secs 15 --live
echo
echo "== lte cut mid-transfer; the datagram tunnel: UDP, DNS and ping from the LAN host, then dsl blackholed; mpbond status"
bash scripts/lib/datagram_demo.sh
