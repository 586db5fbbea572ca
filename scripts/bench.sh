#!/usr/bin/env bash
# Benchmarks, each printed as a table with its baseline measured in the same
# run. The machines are shared and noisy: read ratios, not absolutes.
#
#   scripts/bench.sh linkem [--quick] [--status]
#       Per line and direction: configured vs measured TCP goodput, RTT and
#       UDP loss through the link emulator (default profiles); then the
#       emulator's own ceiling (profile fast) against a plain veth (none).
#       --quick: shorter runs, no ceiling phase (the demo uses it);
#       --status: print the emulator's counters afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/deps.sh

LAB=scripts/lab.sh
CC=${MPB_CC:-bbr}
export MPB_CC=$CC

die() { echo "bench: $*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

[ "$(id -u)" = 0 ] || die "needs root (the lab); run as root"
# One user of the lab at a time (tests, benchmarks, demo): they all tear it down.
exec 8>/run/mpbond-lab-user.lock
flock -w 900 8 || die "another lab user (test or benchmark) holds /run/mpbond-lab-user.lock"
cargo build --release --quiet
export MPBOND=$PWD/target/release/mpbond

lab_up() {
    $LAB down
    trap '$LAB down' EXIT
    $LAB up "$@"
}

# iperf3 TCP goodput in bit/s, from mpb-cli to/from the wan end of a line.
#   tcp_goodput ADDR SECONDS up|down [CC]   (CC: the sender's congestion control)
tcp_goodput() {
    local addr=$1 secs=$2 dir=$3 cc=${4:-$CC} rev=()
    [ "$dir" = down ] && rev=(-R)
    nsx mpb-wan iperf3 -s -1 -B "$addr" -p 5201 >/dev/null 2>&1 &
    local srv=$!
    sleep 0.3
    nsx mpb-cli iperf3 -c "$addr" -p 5201 -t "$secs" -O 2 -C "$cc" -J "${rev[@]}" >"$TMP/iperf.json" ||
        { kill $srv 2>/dev/null; die "iperf3 TCP to $addr ($dir) failed: $(tail -c 300 "$TMP/iperf.json")"; }
    wait $srv 2>/dev/null || true
    python3 - "$TMP/iperf.json" "$cc" <<'PY'
import json, sys
end = json.load(open(sys.argv[1]))["end"]
used = end.get("sender_tcp_congestion", sys.argv[2])
if used != sys.argv[2]:
    sys.exit("bench: iperf3 sender ran %s, not %s" % (used, sys.argv[2]))
print(int(end["sum_received"]["bits_per_second"]))
PY
}

# UDP loss seen by the receiver: "LOST PACKETS".
#   udp_loss ADDR SECONDS up|down BITS_PER_SECOND
udp_loss() {
    local addr=$1 secs=$2 dir=$3 bps=$4 rev=()
    [ "$dir" = down ] && rev=(-R)
    nsx mpb-wan iperf3 -s -1 -B "$addr" -p 5202 >/dev/null 2>&1 &
    local srv=$!
    sleep 0.3
    nsx mpb-cli iperf3 -c "$addr" -p 5202 -u -b "$bps" -l 1200 -t "$secs" -J "${rev[@]}" >"$TMP/udp.json" ||
        { kill $srv 2>/dev/null; die "iperf3 UDP to $addr ($dir) failed"; }
    wait $srv 2>/dev/null || true
    python3 - "$TMP/udp.json" <<'PY'
import json, sys
end = json.load(open(sys.argv[1]))["end"]
s = end.get("sum_received") or end["sum"]
print(s["lost_packets"], s["packets"])
PY
}

# "MIN AVG" RTT in ms over COUNT pings.
rtt() {
    nsx mpb-cli ping -n -q -c "$2" -i 0.02 -W 1 "$1" |
        awk -F'[/ =]+' '/min\/avg/ {print $6, $7}'
}

# Configured value from the running emulator: conf LINK KEY (e.g. up.rate_bps).
conf() {
    "$MPBOND" linkem ctl --control /run/mpbond-lab/"$1".sock stats --kv | awk -F= -v k="$2" '$1 == k {print $2}'
}

bench_linkem() {
    local quick=0 status=0
    while [ $# -gt 0 ]; do
        case $1 in
            --quick) quick=1 ;;
            --status) status=1 ;;
            *) die "unknown option $1 for linkem" ;;
        esac
        shift
    done
    local tcp_secs=12 udp_secs=8 pings=150
    [ $quick = 1 ] && tcp_secs=5 udp_secs=3 pings=30
    TMP=$(mktemp -d)
    lab_up

    echo
    echo "link emulator: configured vs measured (TCP ${tcp_secs}s after 2s omitted; UDP at 40 % of the rate ${udp_secs}s; ${pings} pings)"
    echo "TCP payload ceiling: 1448 of 1500 IP bytes = 0.965 of the rate; lab congestion control: $CC"
    printf '%-4s %-4s | %9s | %15s %15s | %7s %8s %6s | %6s %7s %6s |\n' \
        link dir rate "bbr goodput" "cubic goodput" "RTT cfg" "RTT avg" diff loss meas 3σ
    printf '%s\n' "------------------------------------------------------------------------------------------------------"
    local link n dir rate delay_up delay_down loss bbr cubic rtt_cfg avg lp
    local misses=0
    for link in dsl lte; do
        n=1; [ $link = lte ] && n=2
        delay_up=$(conf $link up.delay_us) delay_down=$(conf $link down.delay_us)
        rtt_cfg=$(python3 -c "print(($delay_up + $delay_down) / 1000)")
        avg=$(rtt "10.77.$n.1" $pings)
        avg=${avg#* }
        for dir in down up; do
            rate=$(conf $link $dir.rate_bps)
            loss=$(conf $link $dir.loss_percent)
            bbr=$(tcp_goodput "10.77.$n.1" $tcp_secs $dir bbr)
            cubic=$(tcp_goodput "10.77.$n.1" $tcp_secs $dir cubic)
            # 40 % of the line: many samples, no queueing.
            lp=$(udp_loss "10.77.$n.1" $udp_secs $dir $((rate * 2 / 5)))
            python3 - "$link" "$dir" "$rate" "$bbr" "$cubic" "$rtt_cfg" "$avg" "$loss" $lp <<'PY' || misses=$((misses + 1))
import math, sys
link, d, rate, bbr, cubic, rtt_cfg, avg, loss, lost, pkts = sys.argv[1:]
rate, bbr, cubic = int(rate), int(bbr), int(cubic)
rtt_cfg, avg, loss = float(rtt_cfg), float(avg), float(loss) / 100
lost, pkts = int(lost), max(int(pkts), 1)
meas = lost / pkts
sigma3 = 3 * math.sqrt(loss * (1 - loss) / pkts)
best = max(bbr, cubic) / rate
ok = best >= 0.95 and abs(avg - rtt_cfg) <= 1.0 and abs(meas - loss) <= max(sigma3, 1.5 / pkts)
print("%-4s %-4s | %6.2f Mb | %6.2f Mb %.3f  %6.2f Mb %.3f | %4.1f ms %5.2f ms %+5.2f | %5.2f%% %6.2f%% %5.2f%% | %s" % (
    link, d, rate / 1e6, bbr / 1e6, bbr / rate, cubic / 1e6, cubic / rate, rtt_cfg, avg, avg - rtt_cfg,
    loss * 100, meas * 100, sigma3 * 100, "ok" if ok else "MISS"))
sys.exit(0 if ok else 3)
PY
        done
    done
    echo "targets: goodput (the better algorithm) >= 0.95 of the rate; RTT within 1 ms of the configured round trip; UDP loss within 3σ"
    if [ $status = 1 ]; then
        echo
        $LAB status | sed -n '/== line/,$p'
    fi

    if [ $quick = 0 ]; then
        lab_up --dsl fast --lte none
        local emu veth
        emu=$(tcp_goodput 10.77.1.1 8 down)
        veth=$(tcp_goodput 10.77.2.1 8 down)
        echo
        echo "emulator ceiling: one TCP flow, 8 s (baseline: plain veth in the same lab)"
        printf '%-34s %12s\n' path "goodput"
        printf '%-34s %9.2f Gb\n' "dsl line, profile fast (emulator)" "$(python3 -c "print($emu/1e9)")"
        printf '%-34s %9.2f Gb\n' "lte line, profile none (veth)" "$(python3 -c "print($veth/1e9)")"
        printf '%-34s %12.2f\n' "emulator / veth" "$(python3 -c "print($emu/$veth)")"
        echo "target: the emulator sustains >= 1 Gbit/s"
    fi
    $LAB down
    trap - EXIT
    rm -rf "$TMP"
    [ $misses = 0 ] || echo "bench: $misses row(s) missed a target" >&2
}

[ $# -ge 1 ] || die "usage: bench.sh linkem [--quick] [--status]"
what=$1
shift
case $what in
    linkem) bench_linkem "$@" ;;
    *) die "unknown benchmark $what; available: linkem" ;;
esac
