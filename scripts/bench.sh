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
#
#   scripts/bench.sh tcp [--secs N] [--live] [--dsl PROFILE] [--lte PROFILE]...
#                        [--flows N[,N...]] [--all]
#       Per profile and flow count, four rows, each on a freshly built lab (so
#       every row sees a trace from its start): a download of N seconds
#       (default 30, after 2 s omitted) to the site over FLOWS parallel
#       connections (default 1) via plain TCP over dsl only, plain TCP over
#       lte only, kernel MPTCP used directly from mpb-cli to mpb-srv (the
#       baseline: no proxy), and mpbond from mpb-lan. Columns: goodput (all
#       flows summed), its ratio to the best single line, to kernel MPTCP and
#       to the MPTCP payload ceiling of the summed configured down rates
#       (x 1420/1500); the uplink state changes mpbond's client logged
#       (down/back); the longest time the receiver got no byte on any flow
#       (after 1 s); the bytes each uplink carried. mpbond rows are marked
#       PASS/MISS against the goals. Then (not with --all) the time to first
#       byte of a small request via mpbond (Fast Open cookie held) against
#       the same request straight over the best single uplink.
#       --dsl/--lte: a built-in profile name or a profile file (lab.sh up);
#       --lte may be repeated, one set of tables each.
#       --flows: parallel connections per row; a list runs each.
#       --all: lte, every bursty built-in profile lab.sh accepts (lte-bursty,
#       lte-drive, lte-weak, found at run time) and any --lte given, each
#       with 1, 4 and 16 flows (unless --flows), 20 s per row (unless --secs).
#       --live: print per-uplink throughput every second during mpbond's rows.
#
#   scripts/bench.sh failover [--lte PROFILE]
#       A 15 s transfer per row (download and upload), the busiest line (lte)
#       cut at 4 s (down, then blackhole) and restored at 9 s; the longest
#       wait between received bytes before the cut (noise), at the cut and in
#       the 5 s after the return, for mpbond and for kernel MPTCP used
#       directly (the baseline, with mpbond stopped). --lte: lte's profile
#       (default lte), a built-in name or a profile file.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/deps.sh

LAB=scripts/lab.sh
CC=${MPB_CC:-bbr}
export MPB_CC=$CC

die() { echo "bench: $*" >&2; exit 1; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
# As nsx, replacing the calling (sub)shell: for background servers.
exec_in() { local ns=$1; shift; exec ip netns exec "$ns" "$@"; }

[ "$(id -u)" = 0 ] || die "needs root (the lab); run as root"
# One user of the lab at a time (tests, benchmarks, demo): they all tear it down.
exec 8>/run/mpbond-lab-user.lock
flock -w 900 8 || die "another lab user (test or benchmark) holds /run/mpbond-lab-user.lock"
cargo build --release --quiet
export MPBOND=$PWD/target/release/mpbond
export MPBOND_LINKEM=$PWD/target/release/mpbond-linkem

lab_up() {
    $LAB down
    trap cleanup EXIT
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
    "$MPBOND_LINKEM" ctl --control /run/mpbond-lab/"$1".sock stats --kv | awk -F= -v k="$2" '$1 == k {print $2}'
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

# Bytes received so far on the client's uplinks: "DSL LTE".
uplink_rx() {
    echo "$(nsx mpb-cli cat /sys/class/net/dsl0/statistics/rx_bytes) $(nsx mpb-cli cat /sys/class/net/lte0/statistics/rx_bytes)"
}

# Prints per-uplink receive throughput every second until killed.
live_rates() {
    # exec: the caller's kill must reach python, not a subshell.
    exec ip netns exec mpb-cli python3 - <<'PY'
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
PY
}

# Median time to first byte in ms of COUNT small requests from NS (a 1 KiB
# answer to a one-line request, like an HTTP GET), after one warm-up request.
#   ttfb NS COUNT [BIND_ADDR]
ttfb() {
    nsx "$1" python3 - "$2" "${3:-}" <<'PY'
import socket, statistics, sys, time
count, bind = int(sys.argv[1]), sys.argv[2]
samples = []
for i in range(count + 1):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    if bind:
        s.bind((bind, 0))
    t = time.monotonic()
    s.connect(("198.51.100.10", 8080))
    s.sendall(b"GET /1k HTTP/1.0\r\n\r\n")
    first = s.recv(4096)
    elapsed = time.monotonic() - t
    if not first:
        sys.exit("ttfb: empty answer")
    while s.recv(4096):
        pass
    s.close()
    if i > 0:
        samples.append(elapsed * 1000)
    time.sleep(0.05)
print("%.1f" % statistics.median(samples))
PY
}

# The answer ttfb asks for: 1 KiB after reading the request line.
ttfb_server() {
    # exec: the pid is python's, so a kill reaches it, not a subshell.
    exec_in mpb-srv python3 - <<'PY' &
import socket, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.51.100.10", 8080))
s.listen(64)
body = b"HTTP/1.0 200 OK\r\nContent-Length: 1024\r\n\r\n" + b"x" * 1024
def serve(c):
    with c:
        c.settimeout(5)
        try:
            c.recv(4096)
            c.sendall(body)
        except OSError:
            pass
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
PY
    TTFB_SERVER=$!
    sleep 0.3
}

# The lab's state directory (lab.sh's MPB_LAB_RUN): logs of lab.sh start.
LAB_RUN=${MPB_LAB_RUN:-/run/mpbond-lab}

# Background processes to end on exit (their pids).
BG_PIDS=()

# Ends what this script started in the background, removes the lab and the
# scratch directory. The EXIT trap of every benchmark that builds a lab.
cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BG_PIDS=()
    $LAB down || true
    if [ -n "${TMP:-}" ]; then rm -rf "$TMP"; fi
}

# Runs lab.sh quietly; on failure dies with what it said.
#   labq up|start|stop|down ARGS...
labq() {
    "$LAB" "$@" >"$TMP/lab.out" 2>&1 || die "scripts/lab.sh $* failed:
$(tail -n 30 "$TMP/lab.out")"
}

# Source routing and one MPTCP subflow endpoint per uplink in mpb-cli, as
# the kernel's documentation says (no mpbond): plain TCP bound to an
# uplink's address leaves through that uplink, and an MPTCP connection gets
# a subflow on each. Also lets the server accept the joins.
kernel_mptcp_setup() {
    local n
    for n in 1 2; do
        nsx mpb-cli ip rule add pref $((7700 + n)) from 10.77.$n.2 lookup $((7700 + n))
        nsx mpb-cli ip route add default via 10.77.$n.1 table $((7700 + n))
    done
    nsx mpb-cli ip mptcp limits set subflows 2 add_addr_accepted 2
    nsx mpb-cli ip mptcp endpoint add 10.77.1.2 dev dsl0 subflow
    nsx mpb-cli ip mptcp endpoint add 10.77.2.2 dev lte0 subflow
    nsx mpb-srv ip mptcp limits set subflows 8 add_addr_accepted 8
}

# Starts the bulk sender in mpb-srv on port 5300 (MPTCP listener with
# --mptcp) and waits until it listens (at most 5 s). Sets BULK_SERVER.
bulk_server() {
    # exec: the pid is python's, so a kill reaches it, not a subshell.
    exec_in mpb-srv python3 scripts/lib/bulk.py serve 5300 "$@" >"$TMP/bulk-server.log" 2>&1 &
    BULK_SERVER=$!
    BG_PIDS+=("$BULK_SERVER")
    local i
    for i in $(seq 100); do
        grep -q listening "$TMP/bulk-server.log" && return 0
        kill -0 "$BULK_SERVER" 2>/dev/null || die "the bulk sender in mpb-srv exited: $(tail -n 5 "$TMP/bulk-server.log")"
        sleep 0.05
    done
    die "the bulk sender in mpb-srv did not listen within 5 s: $(tail -n 5 "$TMP/bulk-server.log")"
}

# Counts the client's log lines about uplinks going down and coming back
# (src/client/health.rs) after line SKIP of its log: "DOWN/BACK".
uplink_changes() {
    local log=$LAB_RUN/client.log
    [ -r "$log" ] || die "the client's log $log is missing"
    tail -n +"$(($1 + 1))" "$log" |
        awk '/uplink down/ {d++} /uplink back/ {b++} END {printf "%d/%d\n", d, b}'
}

# One row of bench.sh tcp on a freshly built lab: a download of SECS seconds
# (after 2 s omitted) over FLOWS connections; appends a line to $TMP/rows.tsv.
#   tcp_row GROUP DEFAULT PATH DSL LTE FLOWS SECS LIVE TTFB
# PATH: dsl, lte (plain TCP over that line), mptcp (kernel MPTCP used
# directly from mpb-cli), mpbond (from mpb-lan through the client's TUN).
tcp_row() {
    local group=$1 default=$2 path=$3 dsl=$4 lte=$5 flows=$6 secs=$7 live=$8 want_ttfb=$9
    local ns=mpb-cli args=() server=() skip=0 changes=- before=- after=- live_pid=
    labq down
    labq up --dsl "$dsl" --lte "$lte"
    case $path in
        dsl) kernel_mptcp_setup; args=(--bind 10.77.1.2) ;;
        lte) kernel_mptcp_setup; args=(--bind 10.77.2.2) ;;
        mptcp) kernel_mptcp_setup; args=(--mptcp --bind 10.77.1.2); server=(--mptcp) ;;
        mpbond)
            labq start
            ns=mpb-lan
            skip=$(wc -l <"$LAB_RUN/client.log")
            ;;
    esac
    local dsl_rate lte_rate
    dsl_rate=$(conf dsl down.rate_bps)
    lte_rate=$(conf lte down.rate_bps)
    bulk_server "${server[@]}"
    if [ "$live" = 1 ] && [ "$path" = mpbond ]; then
        echo "  mpbond, $flows flow(s): each uplink every second:"
        live_rates &
        live_pid=$!
        BG_PIDS+=("$live_pid")
    fi
    [ "$path" = dsl ] || [ "$path" = lte ] || before=$(uplink_rx)
    nsx "$ns" timeout $((secs + 60)) python3 scripts/lib/bulk.py run 198.51.100.10 5300 "$secs" \
        --flows "$flows" "${args[@]}" >"$TMP/bulk.json" 2>"$TMP/bulk.err" ||
        die "the $path download ($group, $flows flows) failed: $(tail -n 3 "$TMP/bulk.err")"
    [ "$path" = dsl ] || [ "$path" = lte ] || after=$(uplink_rx)
    [ "$path" = mpbond ] && changes=$(uplink_changes "$skip")
    if [ -n "$live_pid" ]; then
        kill "$live_pid" 2>/dev/null || true
        wait "$live_pid" 2>/dev/null || true
    fi
    kill "$BULK_SERVER" 2>/dev/null || true
    wait "$BULK_SERVER" 2>/dev/null || true
    if [ "$want_ttfb" = 1 ]; then
        ttfb_server
        BG_PIDS+=("$TTFB_SERVER")
        TTFB_DIRECT=$(ttfb mpb-cli 20 10.77.1.2)
        TTFB_VIA=$(ttfb mpb-lan 20)
        kill "$TTFB_SERVER" 2>/dev/null || true
    fi
    [ "$path" = mpbond ] && labq stop
    python3 - "$TMP/bulk.json" "$group" "$flows" "$path" "$dsl_rate" "$lte_rate" "$default" "$changes" "$before" "$after" \
        >>"$TMP/rows.tsv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
group, flows, path, dsl_rate, lte_rate, default, changes, before, after = sys.argv[2:]
split = "-"
if before != "-":
    d0, l0 = map(int, before.split()); d1, l1 = map(int, after.split())
    d, l = d1 - d0, l1 - l0
    split = "%2.0f:%2.0f" % (100 * d / max(d + l, 1), 100 * l / max(d + l, 1))
print("\t".join(map(str, [group, flows, path, r["goodput_bps"], int(dsl_rate) + int(lte_rate),
                          default, changes, r["stall_ms"], r["stall_at"], split])))
PY
    echo "  done: $group, $flows flow(s), $path" >&2
}

# Whether lab.sh accepts NAME as an lte profile: builds a lab with it (the
# only test lab.sh's contract offers), then removes it. Prints why not.
profile_ok() {
    $LAB down >/dev/null 2>&1 || true
    if "$LAB" up --lte "$1" >"$TMP/lab.out" 2>&1; then
        $LAB down >/dev/null 2>&1 || true
        return 0
    fi
    echo "  profile $1: not available ($(grep -m1 'lab:' "$TMP/lab.out" | sed 's/^lab: //'))"
    return 1
}

# Short name of a profile for the tables: a file's base name.
profile_label() {
    local p=${1##*/}
    echo "${p%.toml}"
}

bench_tcp() {
    local secs= live=0 all=0 dsl=dsl ltes=() flows_list=
    while [ $# -gt 0 ]; do
        case $1 in
            --secs) [ $# -ge 2 ] || die "--secs needs a number"; secs=$2; shift ;;
            --live) live=1 ;;
            --all) all=1 ;;
            --dsl) [ $# -ge 2 ] || die "--dsl needs a profile"; dsl=$2; shift ;;
            --lte) [ $# -ge 2 ] || die "--lte needs a profile"; ltes+=("$2"); shift ;;
            --flows) [ $# -ge 2 ] || die "--flows needs a number (or a list: 1,4,16)"; flows_list=$2; shift ;;
            *) die "unknown option $1 for tcp; usage: bench.sh tcp [--secs N] [--live] [--dsl PROFILE] [--lte PROFILE]... [--flows N[,N...]] [--all]" ;;
        esac
        shift
    done
    [ -n "$secs" ] || { secs=30; [ $all = 1 ] && secs=20; }
    [[ $secs =~ ^[0-9]+$ ]] && [ "$secs" -ge 3 ] && [ "$secs" -le 600 ] || die "--secs must be 3-600 seconds, got '$secs'"
    [ -n "$flows_list" ] || { flows_list=1; [ $all = 1 ] && flows_list=1,4,16; }
    local flows_arr=() f
    IFS=, read -r -a flows_arr <<<"$flows_list"
    for f in "${flows_arr[@]}"; do
        [[ $f =~ ^[0-9]+$ ]] && [ "$f" -ge 1 ] && [ "$f" -le 64 ] || die "--flows takes 1-64 (or a list: 1,4,16), got '$flows_list'"
    done
    TMP=$(mktemp -d)
    trap cleanup EXIT
    local p
    if [ $all = 1 ]; then
        echo "looking for the bursty lte profiles (lab.sh up --lte NAME):"
        local found=(lte)
        for p in lte-bursty lte-drive lte-weak; do
            profile_ok "$p" && found+=("$p") && echo "  profile $p: available"
        done
        ltes=("${found[@]}" "${ltes[@]}")
    fi
    [ ${#ltes[@]} -gt 0 ] || ltes=(lte)
    local groups=$((${#ltes[@]} * ${#flows_arr[@]}))
    # Measured here: about 6 s per row beyond the download and the 2 s
    # omitted (rebuilding the lab, starting mpbond, connecting the flows).
    local estimate=$((groups * (4 * (secs + 2 + 5) + 3)))
    local want_ttfb=0
    [ $all = 0 ] && want_ttfb=1 && estimate=$((estimate + 10))
    echo
    echo "bench tcp: dsl=$dsl, lte=${ltes[*]}; flows ${flows_list}; ${secs}s per row (after 2 s omitted), congestion control $CC"
    echo "$groups table(s) of 4 rows, each row on a freshly built lab: expect about $(((estimate + 59) / 60)) min"
    local lte group rc=0 default
    for lte in "${ltes[@]}"; do
        group="dsl=$(profile_label "$dsl") lte=$(profile_label "$lte")"
        default=0
        [ "$dsl" = dsl ] && [ "$lte" = lte ] && default=1
        for f in "${flows_arr[@]}"; do
            local path ttfb_now
            for path in dsl lte mptcp mpbond; do
                ttfb_now=0
                # The time to first byte once, after the last mpbond row.
                [ $want_ttfb = 1 ] && [ $path = mpbond ] && [ "$lte" = "${ltes[-1]}" ] &&
                    [ "$f" = "${flows_arr[-1]}" ] && ttfb_now=1
                tcp_row "$group" $default $path "$dsl" "$lte" "$f" "$secs" $live $ttfb_now
            done
            python3 scripts/lib/tcp_table.py table "$TMP/rows.tsv" "$group" "$f" || rc=1
        done
    done
    labq down
    if [ "$groups" -gt 1 ]; then
        python3 scripts/lib/tcp_table.py summary "$TMP/rows.tsv"
    fi
    if [ $want_ttfb = 1 ]; then
        echo
        echo "time to first byte of a small request (median of 20, after one warm-up; dsl=$(profile_label "$dsl") lte=$(profile_label "${ltes[-1]}"))"
        printf '%-40s | %8s\n' path TTFB
        printf '%s\n' "-----------------------------------------------------"
        printf '%-40s | %5.1f ms\n' "direct TCP over dsl (best single uplink)" "$TTFB_DIRECT"
        printf '%-40s | %5.1f ms\n' "mpbond, fast mode (from mpb-lan)" "$TTFB_VIA"
        python3 -c "import sys; print('mpbond / direct: %.2f (goal <= 0.6)' % (float(sys.argv[1]) / float(sys.argv[2])))" "$TTFB_VIA" "$TTFB_DIRECT"
    fi
    trap - EXIT
    cleanup
    [ $rc = 0 ] || echo "bench: an mpbond row missed a goal (see MISS above)" >&2
}

# One transfer with lte cut at 4 s and restored at 9 s; prints the stall
# meter's JSON.   cut_run NS HOW DIR [stall.py run options...]
cut_run() {
    local ns=$1 how=$2 dir=$3
    shift 3
    nsx "$ns" python3 scripts/lib/stall.py run 198.51.100.10 5700 "$dir" 15 "$@" >"$TMP/stall.json" &
    local run=$!
    sleep 4
    $LAB link lte "$how" >/dev/null
    sleep 5
    $LAB link lte up >/dev/null
    wait $run || die "the $dir transfer in $ns failed"
    cat "$TMP/stall.json"
}

# "NOISE CUT RETURN MB" from the stall meter's JSON: longest gaps (ms)
# starting in [1 s, 3.5 s), [3.5 s, 8.9 s), [8.9 s, 14 s), and MB moved.
# (A stall at the cut starts at the last byte before it, a little before
# 4 s on the meter's clock.)
stalls() {
    python3 - "$1" <<'PY'
import json, sys
events = json.load(open(sys.argv[1]))["events"]
def longest(a, b):
    gaps = [t2 - t1 for (t1, _), (t2, _) in zip(events, events[1:]) if a <= t1 < b]
    return max(gaps, default=float("nan")) * 1000
moved = events[-1][1] / 1e6 if events else 0
print("%.0f %.0f %.0f %.1f" % (longest(1, 3.5), longest(3.5, 8.9), longest(8.9, 14), moved))
PY
}

bench_failover() {
    local lte=lte
    while [ $# -gt 0 ]; do
        case $1 in
            --lte) [ $# -ge 2 ] || die "--lte needs a profile"; lte=$2; shift ;;
            *) die "unknown option $1 for failover; usage: bench.sh failover [--lte PROFILE]" ;;
        esac
        shift
    done
    TMP=$(mktemp -d)
    lab_up --lte "$lte"
    $LAB start >/dev/null
    nsx mpb-srv ip mptcp limits set subflows 8 add_addr_accepted 8
    nsx mpb-srv python3 scripts/lib/stall.py serve 5700 &
    local server=$!
    sleep 0.3
    local rows=() how dir
    for how in down blackhole; do
        for dir in down up; do
            cut_run mpb-lan $how $dir >"$TMP/r.json"
            rows+=("mpbond|$how|$dir|$(stalls "$TMP/r.json")")
        done
    done
    # The baseline: mpbond stopped, the kernel set up by hand as its own
    # documentation says (source routing, one subflow endpoint per uplink).
    $LAB stop >/dev/null
    local n
    for n in 1 2; do
        nsx mpb-cli ip rule add pref $((7700 + n)) from 10.77.$n.2 lookup $((7700 + n))
        nsx mpb-cli ip route add default via 10.77.$n.1 table $((7700 + n))
    done
    nsx mpb-cli ip mptcp limits set subflows 2 add_addr_accepted 2
    nsx mpb-cli ip mptcp endpoint add 10.77.1.2 dev dsl0 subflow
    nsx mpb-cli ip mptcp endpoint add 10.77.2.2 dev lte0 subflow
    for how in down blackhole; do
        for dir in down up; do
            cut_run mpb-cli $how $dir --mptcp --bind 10.77.1.2 >"$TMP/r.json"
            rows+=("kernel MPTCP direct|$how|$dir|$(stalls "$TMP/r.json")")
        done
    done
    kill $server 2>/dev/null || true

    echo
    local which="lte (the busiest line)"
    [ "$lte" = lte ] || which="lte (profile $(profile_label "$lte"))"
    echo "$which cut at 4 s and back at 9 s during a 15 s transfer; longest wait"
    echo "between received bytes (ms) before the cut, at the cut and within 5 s of the return"
    printf '%-22s %-9s %-4s | %7s %7s %7s | %7s\n' path cut dir noise cut return MB
    printf '%s\n' "-----------------------------------------------------------------------------"
    local row name
    for row in "${rows[@]}"; do
        IFS='|' read -r name how dir values <<<"$row"
        read -r noise cut back moved <<<"$values"
        printf '%-22s %-9s %-4s | %7s %7s %7s | %7s\n' "$name" "$how" "$dir" "$noise" "$cut" "$back" "$moved"
    done
    echo "goal: mpbond <= 300 ms at the cut and at the return, both directions (kernel alone: ~1.2 s at the cut)"
    $LAB down
    trap - EXIT
    rm -rf "$TMP"
}

[ $# -ge 1 ] || die "usage: bench.sh linkem [--quick] [--status] | tcp [--secs N] [--live] [--dsl PROFILE] [--lte PROFILE]... [--flows N[,N...]] [--all] | failover [--lte PROFILE]"
what=$1
shift
case $what in
    linkem) bench_linkem "$@" ;;
    tcp) bench_tcp "$@" ;;
    failover) bench_failover "$@" ;;
    *) die "unknown benchmark $what; available: linkem, tcp, failover" ;;
esac
