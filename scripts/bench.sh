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
#       Without --lte: a table on the default lines (the goal), then one
#       with lte on lte-bursty. A 15 s transfer per row (download and
#       upload), the busiest line (lte) cut at 4 s (down, then blackhole)
#       and restored at 9 s; the longest wait between received bytes before
#       the cut (noise), at the cut and in the 5 s after the return, for
#       mpbond and for kernel MPTCP used directly (the baseline, with mpbond
#       stopped). --lte: one table with lte on that profile, a built-in name
#       or a profile file.
#
#   scripts/bench.sh scale [--conns N] [--dsl PROFILE] [--lte PROFILE]
#       N concurrent connections (default 10,000), each echoing its own 512
#       bytes twice (when it opens, and again once all are open), with
#       scripts/lib/conns.py: first straight from mpb-cli over dsl, mpbond
#       stopped (the baseline: the generator and the line), then from the
#       LAN host through mpbond beside a 30 s bulk download. Prints how many
#       opened and were refused (past what the open-file limits carry:
#       both daemons say how many that is), connections opened per second
#       against the baseline's, each daemon's RSS and descriptors idle, with
#       all open (KiB per connection; goal <= 64) and 30 s after they closed, and
#       the download's goodput beside the connections against alone; then
#       bench.sh floods with its defaults. About 4 min.
#
#   scripts/bench.sh udp [--secs N] [--len BYTES] [--only none] [--rate BPS]
#                        [--perf DIR]
#       The datagram tunnel (everything that is not TCP), about 4 min:
#       1. per mode (latency, redundant, aggregate; a client config with the
#          mode appended to [datagram]), UDP downloads from mpb-srv to the LAN
#          host (iperf3 -u -R) with 1 and 8 flows, 1.1 x the summed configured
#          down rates offered in all: goodput as a fraction of that sum and of
#          the best single line, loss, jitter, the address the server saw and
#          each uplink's share of the bytes; baselines: the same download from
#          mpb-cli bound to 10.77.1.2 (dsl) or 10.77.2.2 (lte), mpbond stopped;
#       2. per mode, the round trip (50 pings at 20 ms) from mpb-lan through the
#          tunnel vs from mpb-cli bound to dsl's address: median and p90;
#       3. per mode, a 50/s stream both ways on one socket pair, dsl cut at
#          2 s and back at 5 s (lte's random loss 0 meanwhile): datagrams lost,
#          most lost in a row, duplicates, longest gap at the cut and after the
#          return, and which line carried the stream before and after;
#       4. on profile none (both lines plain veths) with a client that has only
#          the dsl uplink: the tunnel's goodput (iperf3 -u -b 0, one flow, each
#          way) and the CPU seconds of the client and concentrator processes
#          per Gbit delivered, against userspace WireGuard (wireguard-go
#          between mpb-cli and mpb-conc over dsl, the LAN host's traffic to
#          mpb-srv routed into it and masqueraded at the far end; removed
#          afterwards) carrying the same load.
#       Goals (PASS/MISS): aggregate with 8 flows >= 0.9 of the summed rates;
#       one flow in any mode, from 1 s on, >= 0.98 of the best line's ceiling
#       through a tunnel; latency mode adds < 1 ms to the round trip (median);
#       on none, at least wireguard-go's goodput at no more CPU per Gbit.
#       --secs: seconds per iperf3 run (default 10); --len: UDP payload bytes
#       (default 1200, QUIC's size; a payload above about 1410 no longer fits
#       a 1500-byte line once sealed).
#       --only none: part 4 alone (about 1 min), to iterate on the tunnel's
#       speed; --rate: iperf3's -b for part 4 (default 0, unlimited: the
#       sender then outruns both tunnels and most datagrams are lost; a
#       fixed rate both tunnels carry compares CPU at equal work), e.g. 1G;
#       --perf DIR: `perf record -g` of the client and the concentrator
#       during each mpbond row of part 4, into DIR/{client,concentrator}-DIR.data
#       (read them with `perf report -i FILE`).
#
#   scripts/bench.sh quic [--small N] [--bulk N]
#       What the QUIC policy costs a browser, about 90 s: with quic = "tunnel"
#       and with quic = "block", N small requests (10 KB, default 20) and N
#       downloads (24 MiB, default 3) from mpb-srv to the LAN host, each on a
#       new connection, over QUIC (quinn, examples/quicperf.rs) through the
#       datagram tunnel and over TLS 1.3 on TCP (rustls) through the bonded
#       TCP path; under block, how long a browser's connected socket waits
#       for the refusal. Prints the table, the bytes each line carried, and
#       the default the numbers pick (block when TCP downloads gain >= 20 %
#       and a new connection costs at most one round trip more).
#
#   scripts/bench.sh floods [--idle N] [--slow N] [--secs S]
#       What floods from mpb-wan cost the concentrator, about 1 min
#       (scripts/lib/flood.py): in turn N idle TCP/MPTCP connections
#       (default 2000), N slowloris connections sending a connect header one
#       byte a second (200), S seconds (5) of connect headers as fast as
#       they go (garbage, bad MACs, unknown clients), S seconds of datagram
#       handshakes (UDP, valid mac1), and S seconds of strangers' datagrams
#       to the client's uplink sockets (measured at the client). Per flood:
#       its size and rate, the target's RSS and descriptors before, at peak
#       and after, the log lines it caused, and the latency (median, p99) of
#       legitimate requests from mpb-lan through the client (a new
#       connection every 50 ms echoing 4 KiB) during the flood, against the
#       same with no flood in the same run. bench.sh scale calls it too.
#
#   scripts/bench.sh speed [--secs N] [--len BYTES] [--rate BPS] [--part tcp|datagram]
#       The data path's speed and cost on profile none (both lines plain
#       veths), one run, about 2.5 min (--part: only the TCP rows, or only
#       the datagram rows, their direct UDP rows and the pings). iperf3 (-t N, default 8, no -O so CPU
#       and bytes cover the same span) between mpb-srv and:
#         direct   mpb-cli bound to dsl's address, plain TCP over one veth;
#         mptcp    mpb-cli, kernel MPTCP used directly (mptcpize on both
#                  ends; one subflow endpoint per line), mpbond not running;
#         mpbond   mpb-lan through the client's TUN (both uplinks), on a
#                  freshly built lab;
#       with 1 and 4 TCP flows, download (-R) and upload. Then the datagram
#       tunnel (a client with only the dsl uplink, latency mode, as bench.sh
#       udp part 4): one UDP flow each way (iperf3 -u -b RATE -l BYTES -w 4M,
#       defaults 0 = unlimited and 1200), against the same load from mpb-cli
#       bound to dsl's address straight to mpb-srv (direct; iperf3 sends
#       and receives one datagram per system call, so it has a ceiling of
#       its own); then the round trip of 200 pings
#       at 10 ms, unloaded, from mpb-lan through the tunnel against from
#       mpb-cli bound to dsl's address (median and p90; the difference is
#       what the client, the concentrator and the LAN hop add).
#       Columns: goodput (receiver's count, all flows), its ratio to direct
#       TCP and to kernel MPTCP with the same flows and direction, and CPU per Gbit/s (= CPU
#       seconds per Gbit delivered, i.e. cores busy per Gbit/s) of the client
#       and the concentrator processes (/proc/PID/stat utime + stime,
#       threads included) and of softirq on the whole machine (/proc/stat,
#       the softirq column of the cpu line: every namespace's veth and
#       stack work, whoever caused it; noisy when others use the machine).
#       Goals (issue 12) checked: mpbond >= 0.35 of direct both ways,
#       datagram goodput >= 2 Gbit/s, added ping latency < 0.1 ms.
#
#   scripts/bench.sh soak [--minutes N]
#       N minutes (default 5, at most 120) of mixed traffic from mpb-lan
#       through mpbond to mpb-srv (scripts/lib/soak.py, every byte checked):
#       short TCP requests (4 workers, 64-16384 bytes echoed, each on a new
#       connection), 15 s downloads and uploads one after the other, a UDP
#       stream of 50 datagrams/s echoed through the datagram tunnel; while
#       a line changes every 4 s (lte down/up, blackhole/up, renumbered to
#       10.77.2.3 and back; dsl down/up, blackhole/up: never both at once).
#       Prints per class the bytes sent and received intact and the errors,
#       and each daemon's RSS and descriptors idle before, every 5 s under
#       load and idle after (once its descriptors are back and a malloc_trim
#       has run), with a verdict on growth. About N + 2 minutes.
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
# Where cargo put them: CARGO_TARGET_DIR when set (a worktree sharing
# another's build).
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
export MPBOND=$TARGET/release/mpbond
export MPBOND_LINKEM=$TARGET/release/mpbond-linkem

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
    exec ip netns exec mpb-cli python3 scripts/lib/live_rates.py
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
    local ltes=()
    while [ $# -gt 0 ]; do
        case $1 in
            --lte) [ $# -ge 2 ] || die "--lte needs a profile"; ltes=("$2"); shift ;;
            *) die "unknown option $1 for failover; usage: bench.sh failover [--lte PROFILE]" ;;
        esac
        shift
    done
    TMP=$(mktemp -d)
    if [ ${#ltes[@]} = 0 ]; then
        # The default lines (the goal), then a bursty lte if lab.sh has it.
        ltes=(lte)
        profile_ok lte-bursty && ltes+=(lte-bursty)
    fi
    local lte
    for lte in "${ltes[@]}"; do
        failover_table "$lte"
    done
    trap - EXIT
    rm -rf "$TMP"
}

# One table of bench.sh failover: mpbond's rows, then kernel MPTCP's, with
# lte on profile LTE (a freshly built lab).   failover_table LTE
failover_table() {
    local lte=$1
    lab_up --lte "$lte"
    $LAB start >/dev/null
    nsx mpb-srv ip mptcp limits set subflows 8 add_addr_accepted 8
    nsx mpb-srv python3 scripts/lib/stall.py serve 5700 &
    local server=$!
    BG_PIDS+=("$server")
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
    kernel_mptcp_setup
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
    if [ "$lte" = lte ]; then
        echo "goal: mpbond <= 300 ms at the cut and at the return, both directions (kernel alone: ~1.2 s at the cut)"
    else
        echo "no goal on this profile (the goal is on the default lines; lte's own gaps count as noise)"
    fi
    $LAB down
}

# ---------------------------------------------------------------- udp

# Where bench udp's iperf3 server listens (mpb-srv) and its 50/s stream.
UDP_PORT=5210
STREAM_PORT=7420

# A copy of the lab's client config with LINE appended to [datagram] (its
# last table), saved as $TMP/client-NAME.toml; with dsl-only, without the
# lte uplink. Prints the copy's path.
#   client_config_with NAME LINE [dsl-only]
client_config_with() {
    local out=$TMP/client-$1.toml
    python3 - deploy/lab/client.toml "$2" "${3:-}" >"$out" <<'PY' || die "cannot make a client config with $2"
import sys
path, extra, only = sys.argv[1:]
lines = open(path).read().splitlines()
tables = [l.strip() for l in lines if l.strip().startswith("[")]
if not tables or tables[-1] != "[datagram]":
    sys.exit("bench: [datagram] is not the last table of %s" % path)
out, skip = [], False
for i, line in enumerate(lines):
    if line.strip() == "[[uplink]]" and only and i + 1 < len(lines) and lines[i + 1].strip() == 'name = "lte"':
        skip = True
    elif skip and (line.startswith("[") or line.startswith("#") or not line.strip()):
        skip = False
    if not skip:
        out.append(line)
out.append(extra)
print("\n".join(out))
PY
    echo "$out"
}

# The lab's client config with the datagram tunnel in MODE; with dsl-only,
# without the lte uplink.   udp_config MODE [dsl-only]
udp_config() {
    client_config_with "$1${2:+-$2}" "mode = \"$1\"" "${2:-}"
}

# Waits (at most 3 s) until something in mpb-srv listens on UDP port PORT.
srv_udp_listening() {
    local _
    for _ in $(seq 60); do
        [ -n "$(nsx mpb-srv ss -Hlun "sport = :$1")" ] && return 0
        sleep 0.05
    done
    die "nothing listens on UDP port $1 in mpb-srv after 3 s"
}

# One iperf3 UDP run of UDP_SECS seconds between NS and mpb-srv: FLOWS
# streams of RATE bit/s each (0: unlimited) of UDP_LEN-byte datagrams, DIR
# down (mpb-srv -> NS, -R) or up; BIND: the client's address or -. Leaves
# the client's JSON in $TMP/iperf.json, the server's in $TMP/iperf-srv.json.
# iperf3 3.12 does not resend the datagram that opens each UDP stream: when
# it is lost (lte's random loss, or a tunnel not up yet) the run fails or
# hangs. So a run that fails, or has not finished 10 s after its end, is
# tried once more; UDP_TRIES says how many it took. Fails (why in
# $TMP/iperf.fail) when both did: a row that says so beats no table.
#   udp_iperf NS DIR FLOWS RATE BIND
udp_iperf() {
    local try
    for try in 1 2; do
        UDP_TRIES=$try
        udp_iperf_once "$@" && return 0
        echo "  iperf3 UDP $2 from $1 ($3 flow(s), $4 bit/s each), try $try: $(cat "$TMP/iperf.fail")" >&2
    done
    return 1
}

udp_iperf_once() {
    local ns=$1 dir=$2 flows=$3 rate=$4 bind=$5 args=()
    [ "$bind" = - ] || args+=(-B "$bind")
    [ "$dir" = down ] && args+=(-R)
    exec_in mpb-srv timeout $((UDP_SECS + 15)) iperf3 -s -1 -B 198.51.100.10 -p $UDP_PORT -J \
        >"$TMP/iperf-srv.json" 2>&1 &
    local srv=$!
    BG_PIDS+=("$srv")
    local _
    for _ in $(seq 60); do
        [ -n "$(nsx mpb-srv ss -Hltn "sport = :$UDP_PORT")" ] && break
        sleep 0.05
    done
    local rc=0 t0=$SECONDS skip=0
    [ -n "$(daemon_running client)" ] && skip=$(wc -l <"$LAB_RUN/client.log")
    nsx "$ns" timeout $((UDP_SECS + 10)) iperf3 -c 198.51.100.10 -p $UDP_PORT -u -b "$rate" -l "$UDP_LEN" \
        -t "$UDP_SECS" -P "$flows" -J "${args[@]}" >"$TMP/iperf.json" 2>"$TMP/iperf.err" || rc=$?
    if [ $rc = 0 ]; then
        wait "$srv" 2>/dev/null || true
        return 0
    fi
    kill "$srv" 2>/dev/null || true
    wait "$srv" 2>/dev/null || true
    python3 - "$TMP/iperf.json" "$rc" $((SECONDS - t0)) >"$TMP/iperf.fail" <<'PY'
import json, sys
try:
    why = json.load(open(sys.argv[1])).get("error", "?")
except (OSError, ValueError):
    why = "no JSON"
how = "killed after %s s" % sys.argv[3] if sys.argv[2] == "124" else "exit %s" % sys.argv[2]
print("iperf3 %s: %s" % (how, why))
PY
    if [ -n "$(daemon_running client)" ]; then
        tail -n +$((skip + 1)) "$LAB_RUN/client.log" | grep -E 'WARN|ERROR|uplink (down|back)|tunnel' |
            tail -n 10 | sed 's/^/    client log: /' >&2
    fi
    return 1
}

# A download row: FLOWS flows from mpb-srv to NS sharing UDP_OFFERED bit/s.
#   udp_dl NS FLOWS PATH BIND
udp_dl() {
    local ns=$1 flows=$2 path=$3 bind=$4 skip=0 changes=- before after
    [ "$ns" = mpb-lan ] && skip=$(wc -l <"$LAB_RUN/client.log")
    before=$(uplink_rx)
    local ok=1
    udp_iperf "$ns" down "$flows" $((UDP_OFFERED / flows)) "$bind" || ok=0
    after=$(uplink_rx)
    [ "$ns" = mpb-lan ] && changes=$(uplink_changes "$skip")
    if [ $ok = 1 ]; then
        python3 scripts/lib/udp_table.py iperf "$ROWS" "$TMP/iperf.json" "$TMP/iperf-srv.json" kind=dl \
            "path=$path" "flows=$flows" "offered=$UDP_OFFERED" "rx_before=$before" "rx_after=$after" \
            "changes=$changes" "tries=$UDP_TRIES"
    else
        python3 scripts/lib/udp_table.py failed "$ROWS" "$(cat "$TMP/iperf.fail")" kind=dl \
            "path=$path" "flows=$flows" "offered=$UDP_OFFERED" "changes=$changes"
    fi
    echo "  done: $path, $flows flow(s) down" >&2
    # Queues drain and the client's per-line rate estimates settle, so
    # every row starts from idle lines.
    sleep 2
}

# Source routing in mpb-cli for the direct rows (mpbond stopped): traffic
# bound to a line's address leaves by that line. Tables and rules 7751-7752,
# which mpbond does not use.   direct_routes add|del
direct_routes() {
    local n
    for n in 1 2; do
        if [ "$1" = add ]; then
            nsx mpb-cli ip rule add pref $((7750 + n)) from 10.77.$n.2 lookup $((7750 + n))
            nsx mpb-cli ip route add default via 10.77.$n.1 table $((7750 + n))
        else
            nsx mpb-cli ip rule del pref $((7750 + n)) 2>/dev/null || true
            nsx mpb-cli ip route flush table $((7750 + n)) 2>/dev/null || true
        fi
    done
}

# Round trips in MODE: 50 pings at 20 ms through the tunnel, then directly
# over dsl (mpbond's own source routing takes what is bound to 10.77.1.2).
udp_rtt() {
    nsx mpb-lan ping -n -c 50 -i 0.02 -W 1 198.51.100.10 >"$TMP/ping-tunnel.txt" 2>&1 || true
    nsx mpb-cli ping -n -c 50 -i 0.02 -W 1 -I 10.77.1.2 198.51.100.10 >"$TMP/ping-direct.txt" 2>&1 || true
    python3 scripts/lib/udp_table.py rtt "$ROWS" "$1" "$TMP/ping-tunnel.txt" "$TMP/ping-direct.txt"
}

# Frames the two emulators passed so far, both ways: "DSL LTE".
line_frames() {
    local link n out=()
    for link in dsl lte; do
        n=$("$MPBOND_LINKEM" ctl --control "$LAB_RUN/$link.sock" stats --kv |
            awk -F= '$1 == "up.tx_frames" || $1 == "down.tx_frames" {n += $2} END {print n + 0}')
        out+=("$n")
    done
    echo "${out[*]}"
}

now() { date +%s.%N; }

# The 50/s stream both ways in MODE, dsl cut at 2 s and back at 5 s; lte's
# random loss is 0 meanwhile (with one line left, its 0.5 % would lose a
# datagram or two whatever the tunnel does).
udp_cut() {
    local mode=$1 up_loss down_loss f0 f1 f2 f3 cut restore
    up_loss=$(conf lte up.loss_percent) down_loss=$(conf lte down.loss_percent)
    $LAB link lte set - - 0% >/dev/null 2>&1
    exec_in mpb-srv timeout 30 python3 scripts/lib/udpstream.py serve $STREAM_PORT 400 20 \
        >"$TMP/stream-srv.json" 2>"$TMP/stream-srv.err" &
    local srv=$!
    BG_PIDS+=("$srv")
    srv_udp_listening $STREAM_PORT
    exec_in mpb-lan timeout 30 python3 scripts/lib/udpstream.py run 198.51.100.10 $STREAM_PORT 400 20 \
        >"$TMP/stream.json" 2>"$TMP/stream.err" &
    local run=$!
    BG_PIDS+=("$run")
    sleep 0.5
    f0=$(line_frames)
    sleep 1.5
    f1=$(line_frames)
    cut=$(now)
    $LAB link dsl down >/dev/null 2>&1
    sleep 3
    restore=$(now)
    $LAB link dsl up >/dev/null 2>&1
    sleep 1.5
    f2=$(line_frames)
    sleep 1.5
    f3=$(line_frames)
    wait "$run" || die "the 50/s stream from mpb-lan failed ($mode): $(tail -n 3 "$TMP/stream.err")"
    wait "$srv" || die "the 50/s stream's server in mpb-srv failed ($mode): $(tail -n 3 "$TMP/stream-srv.err")"
    $LAB link lte set - - "$up_loss%" up >/dev/null 2>&1
    $LAB link lte set - - "$down_loss%" down >/dev/null 2>&1
    python3 scripts/lib/udp_table.py cut "$ROWS" "$mode" "$TMP/stream.json" "$TMP/stream-srv.json" \
        "$cut" "$restore" "$f0" "$f1" "$f2" "$f3"
    echo "  done: $mode, the cut" >&2
}

# utime + stime of process PID so far, in seconds.
cpu_secs() {
    python3 - "$1" <<'PY'
import os, sys
stat = open("/proc/%s/stat" % sys.argv[1]).read()
fields = stat[stat.rindex(")") + 2:].split()  # from field 3 (state) on
print((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
PY
}

# A row on profile none: one unlimited flow DIR (up: mpb-lan -> mpb-srv;
# down: the reverse) through PATH, with the CPU time the processes
# CLIENT_PID (in mpb-cli) and SERVER_PID (in mpb-conc) used meanwhile.
#   udp_none PATH DIR CLIENT_PID SERVER_PID
udp_none() {
    local path=$1 dir=$2 c0 s0 c1 s1 skip=0 changes=-
    [ "$path" = mpbond ] && skip=$(wc -l <"$LAB_RUN/client.log")
    local perfs=()
    if [ -n "$UDP_PERF" ] && [ "$path" = mpbond ]; then
        perf record -q -g -p "$3" -o "$UDP_PERF/client-$dir.data" >/dev/null 2>&1 &
        perfs+=($!)
        perf record -q -g -p "$4" -o "$UDP_PERF/concentrator-$dir.data" >/dev/null 2>&1 &
        perfs+=($!)
        BG_PIDS+=("${perfs[@]}")
    fi
    c0=$(cpu_secs "$3") s0=$(cpu_secs "$4")
    local ok=0
    udp_iperf mpb-lan "$dir" 1 "$UDP_NONE_RATE" - && ok=1
    if [ ${#perfs[@]} -gt 0 ]; then
        kill -INT "${perfs[@]}" 2>/dev/null || true
        wait "${perfs[@]}" 2>/dev/null || true
    fi
    if [ $ok = 1 ]; then
        c1=$(cpu_secs "$3") s1=$(cpu_secs "$4")
        [ "$path" = mpbond ] && changes=$(uplink_changes "$skip")
        python3 scripts/lib/udp_table.py iperf "$ROWS" "$TMP/iperf.json" "$TMP/iperf-srv.json" kind=none \
            "path=$path" "dir=$dir" "rate=$UDP_NONE_RATE" "changes=$changes" "tries=$UDP_TRIES" \
            "cpu_client=$(python3 -c "print(round($c1 - $c0, 2))")" \
            "cpu_server=$(python3 -c "print(round($s1 - $s0, 2))")"
    else
        python3 scripts/lib/udp_table.py failed "$ROWS" "$(cat "$TMP/iperf.fail")" kind=none \
            "path=$path" "dir=$dir" "rate=$UDP_NONE_RATE"
    fi
    echo "  done: $path, none, $dir" >&2
    sleep 1
}

# Userspace WireGuard for the baseline on profile none: wireguard-go in
# mpb-cli (WG_CLI_IF, 10.78.0.1) and in mpb-conc (WG_CONC_IF, 10.78.0.2,
# port 51820), the tunnel's datagrams over dsl (mpb-cli's default route);
# mpb-lan's traffic to 198.51.100.10 routed into it and masqueraded as
# 10.77.9.2 when it leaves mpb-conc, as mpbond's tunnel does. Sets WG_CLI
# and WG_CONC (pids). The interface names are also the names of the control
# sockets in /var/run/wireguard, which every namespace shares.
WG_CLI_IF=mpbwg-cli
WG_CONC_IF=mpbwg-conc
WG_FORWARD=
wg_up() {
    command -v wireguard-go >/dev/null && command -v wg >/dev/null ||
        die "wireguard-go and wg are missing (Debian packages wireguard-go, wireguard-tools; scripts/deps.sh installs them)"
    local end
    for end in cli conc; do
        (umask 077 && wg genkey >"$TMP/wg-$end.key")
        wg pubkey <"$TMP/wg-$end.key" >"$TMP/wg-$end.pub"
    done
    WG_FORWARD=$(nsx mpb-conc sysctl -n net.ipv4.ip_forward)
    # exec: the pids are wireguard-go's (-f: it stays in the foreground).
    exec_in mpb-cli wireguard-go -f $WG_CLI_IF >"$TMP/wg-cli.log" 2>&1 &
    WG_CLI=$!
    BG_PIDS+=("$WG_CLI")
    exec_in mpb-conc wireguard-go -f $WG_CONC_IF >"$TMP/wg-conc.log" 2>&1 &
    WG_CONC=$!
    BG_PIDS+=("$WG_CONC")
    local _ sock
    for _ in $(seq 100); do
        [ -S /var/run/wireguard/$WG_CLI_IF.sock ] && [ -S /var/run/wireguard/$WG_CONC_IF.sock ] && break
        kill -0 "$WG_CLI" 2>/dev/null && kill -0 "$WG_CONC" 2>/dev/null ||
            die "wireguard-go exited: $(tail -n 3 "$TMP/wg-cli.log" "$TMP/wg-conc.log")"
        sleep 0.05
    done
    for sock in $WG_CLI_IF $WG_CONC_IF; do
        [ -S "/var/run/wireguard/$sock.sock" ] || die "wireguard-go made no control socket /var/run/wireguard/$sock.sock in 5 s"
    done
    nsx mpb-cli wg set $WG_CLI_IF private-key "$TMP/wg-cli.key" \
        peer "$(cat "$TMP/wg-conc.pub")" endpoint 10.77.9.2:51820 allowed-ips 10.78.0.2/32,198.51.100.10/32
    nsx mpb-cli ip addr add 10.78.0.1/24 dev $WG_CLI_IF
    nsx mpb-cli ip link set $WG_CLI_IF up
    nsx mpb-cli ip route add 198.51.100.10/32 dev $WG_CLI_IF
    nsx mpb-conc wg set $WG_CONC_IF listen-port 51820 private-key "$TMP/wg-conc.key" \
        peer "$(cat "$TMP/wg-cli.pub")" allowed-ips 10.78.0.1/32,192.168.77.0/24
    nsx mpb-conc ip addr add 10.78.0.2/24 dev $WG_CONC_IF
    nsx mpb-conc ip link set $WG_CONC_IF up
    nsx mpb-conc ip route add 192.168.77.0/24 dev $WG_CONC_IF
    nsx mpb-conc sysctl -qw net.ipv4.ip_forward=1
    nsx mpb-conc nft -f - <<'NFT'
table ip mpb_bench_wg {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 192.168.77.0/24 oifname "eth0" masquerade
    }
}
NFT
    nsx mpb-lan ping -n -q -c 3 -i 0.2 -W 2 198.51.100.10 >/dev/null ||
        die "no ping from mpb-lan through wireguard-go: $(tail -n 3 "$TMP/wg-cli.log" "$TMP/wg-conc.log")"
}

# Removes what wg_up made (also after a partial wg_up; harmless when there
# is nothing).
wg_down() {
    local pid
    for pid in ${WG_CLI:-} ${WG_CONC:-}; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    WG_CLI='' WG_CONC=''
    if [ -e /run/netns/mpb-cli ]; then
        nsx mpb-cli ip link del $WG_CLI_IF 2>/dev/null || true
    fi
    if [ -e /run/netns/mpb-conc ]; then
        nsx mpb-conc ip link del $WG_CONC_IF 2>/dev/null || true
        nsx mpb-conc nft delete table ip mpb_bench_wg 2>/dev/null || true
        [ -z "$WG_FORWARD" ] || nsx mpb-conc sysctl -qw net.ipv4.ip_forward="$WG_FORWARD" || true
    fi
    WG_FORWARD=
    rm -f /var/run/wireguard/$WG_CLI_IF.sock /var/run/wireguard/$WG_CONC_IF.sock
    if [ -n "${TMP:-}" ]; then rm -f "$TMP"/wg-*.key; fi
}

# Whether lab.sh started daemon NAME and it still runs: prints its pid.
daemon_running() {
    local pid
    [ -r "$LAB_RUN/$1.pid" ] || return 0
    read -r pid _ <"$LAB_RUN/$1.pid" || return 0
    kill -0 "$pid" 2>/dev/null && echo "$pid"
    return 0
}

# lab.sh start with client config FILE, then waits (at most 10 s) for the
# client to log "datagram tunnel up": start only waits until TCP goes
# through, and datagrams sent before the tunnel's handshake completed are
# dropped. Appends how long the wait was to UDP_WAITS.   udp_start FILE
udp_start() {
    labq start --client-config "$1"
    local t0 _
    t0=$(now)
    for _ in $(seq 200); do
        grep -q "datagram tunnel up" "$LAB_RUN/client.log" && break
        sleep 0.05
    done
    grep -q "datagram tunnel up" "$LAB_RUN/client.log" ||
        die "the datagram tunnel is not up 10 s after lab.sh start: $(tail -n 5 "$LAB_RUN/client.log")"
    UDP_WAITS+=("$(awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}')")
}

# The pid lab.sh start recorded for daemon NAME (client, concentrator).
lab_pid() {
    local pid
    read -r pid _ <"$LAB_RUN/$1.pid" || die "no pid file for the $1 in $LAB_RUN"
    echo "$pid"
}

bench_udp() {
    UDP_SECS=10 UDP_LEN=1200 UDP_NONE_RATE=0 UDP_WAITS=() UDP_PERF=''
    local only=''
    while [ $# -gt 0 ]; do
        case $1 in
            --secs) [ $# -ge 2 ] || die "--secs needs a number"; UDP_SECS=$2; shift ;;
            --len) [ $# -ge 2 ] || die "--len needs a number of bytes"; UDP_LEN=$2; shift ;;
            --only) [ "${2:-}" = none ] || die "--only takes none (profile none's rows alone)"; only=none; shift ;;
            --rate) [ $# -ge 2 ] || die "--rate needs a rate (iperf3 -b: 0, 800M, 2G)"; UDP_NONE_RATE=$2; shift ;;
            --perf) [ $# -ge 2 ] || die "--perf needs a directory"; UDP_PERF=$2; shift ;;
            *) die "unknown option $1 for udp; usage: bench.sh udp [--secs N] [--len BYTES] [--only none] [--rate BPS] [--perf DIR]" ;;
        esac
        shift
    done
    [[ $UDP_NONE_RATE =~ ^[0-9]+(\.[0-9]+)?[KMG]?$ ]] || die "--rate must be an iperf3 rate (0, 800M, 2G), got '$UDP_NONE_RATE'"
    if [ -n "$UDP_PERF" ]; then
        command -v perf >/dev/null || die "--perf needs perf (Debian package linux-perf)"
        mkdir -p "$UDP_PERF" || die "cannot make $UDP_PERF"
        UDP_PERF=$(cd "$UDP_PERF" && pwd)
    fi
    [[ $UDP_SECS =~ ^[0-9]+$ ]] && [ "$UDP_SECS" -ge 3 ] && [ "$UDP_SECS" -le 60 ] ||
        die "--secs must be 3-60 seconds, got '$UDP_SECS'"
    [[ $UDP_LEN =~ ^[0-9]+$ ]] && [ "$UDP_LEN" -ge 64 ] && [ "$UDP_LEN" -le 1472 ] ||
        die "--len must be 64-1472 bytes, got '$UDP_LEN'"
    TMP=$(mktemp -d)
    ROWS=$TMP/rows.jsonl
    local start=$SECONDS
    echo
    # Measured here: 229 s with the defaults (14 iperf3 runs, 3 mpbond restarts, 2 labs).
    if [ "$only" = none ]; then
        echo "bench udp: profile none only, ${UDP_SECS}s per iperf3 run, ${UDP_LEN}-byte datagrams; about $(((UDP_SECS * 4 + 40 + 59) / 60)) min"
    else
        echo "bench udp: ${UDP_SECS}s per iperf3 run, ${UDP_LEN}-byte datagrams; about $(((UDP_SECS * 14 + 90 + 59) / 60)) min"
    fi
    local dsl_rate=0 lte_rate=0
    if [ "$only" = none ]; then
        lab_up --dsl none --lte none
        trap 'wg_down; cleanup' EXIT
    else
        lab_up
        trap 'wg_down; cleanup' EXIT
        dsl_rate=$(conf dsl down.rate_bps)
        lte_rate=$(conf lte down.rate_bps)
        UDP_OFFERED=$(((dsl_rate + lte_rate) * 11 / 10))
        bench_udp_modes
        # Profile none: the tunnel's cost, one line, against wireguard-go.
        labq down
        labq up --dsl none --lte none
    fi
    udp_start "$(udp_config latency dsl-only)"
    local cli conc dir
    cli=$(lab_pid client) conc=$(lab_pid concentrator)
    for dir in up down; do
        udp_none mpbond $dir "$cli" "$conc"
    done
    labq stop
    wg_up
    for dir in up down; do
        udp_none wireguard-go $dir "$WG_CLI" "$WG_CONC"
    done
    wg_down
    labq down

    local rc=0
    python3 scripts/lib/udp_table.py print "$ROWS" "$dsl_rate" "$lte_rate" "$UDP_LEN" "$UDP_SECS" || rc=$?
    echo "the client logged \"datagram tunnel up\" this long after lab.sh start returned (latency,"
    echo "redundant, aggregate, none): ${UDP_WAITS[*]} s"
    echo "bench udp: $((SECONDS - start)) s"
    trap - EXIT
    cleanup
    [ $rc = 0 ] || echo "bench: udp missed a goal or measured the wrong path (see above)" >&2
}

# softirq time of the whole machine so far, in seconds (/proc/stat: the
# seventh value of the "cpu" line, in USER_HZ).
softirq_secs() {
    python3 - <<'PY'
import os
for line in open("/proc/stat"):
    if line.startswith("cpu "):
        print(int(line.split()[7]) / os.sysconf("SC_CLK_TCK"))
        break
PY
}

# The iperf3 server of bench speed in mpb-srv, one test, at most SECS + 20 s;
# with mptcp, an MPTCP listener (mptcpize). Waits (at most 3 s) until it
# listens. Sets SPEED_SRV.   speed_server plain|mptcp
SPEED_PORT=5230
speed_server() {
    local wrap=()
    [ "$1" = mptcp ] && wrap=(mptcpize run)
    exec_in mpb-srv timeout $((SPEED_SECS + 20)) "${wrap[@]}" iperf3 -s -1 -B 198.51.100.10 -p $SPEED_PORT \
        >"$TMP/speed-srv.log" 2>&1 &
    SPEED_SRV=$!
    BG_PIDS+=("$SPEED_SRV")
    local _
    for _ in $(seq 60); do
        [ -n "$(nsx mpb-srv ss -Hltn "sport = :$SPEED_PORT")" ] && return 0
        sleep 0.05
    done
    die "iperf3 did not listen in mpb-srv within 3 s: $(tail -n 3 "$TMP/speed-srv.log")"
}

# One row of bench speed: iperf3 from NS to mpb-srv, appended to $ROWS.
#   speed_row PATH NS PROTO DIR FLOWS CLIENT_PID|- CONC_PID|- IPERF_ARGS...
# PROTO: tcp, mptcp (mptcpize on both ends) or udp.
speed_row() {
    local path=$1 ns=$2 proto=$3 dir=$4 flows=$5 cpid=$6 spid=$7
    shift 7
    local args=("$@") wrap=() c0=0 s0=0 c1=0 s1=0 q0 q1 rc=0
    [ "$dir" = down ] && args+=(-R)
    # -w 4M (net.core.rmem_max here): with iperf3's default 208 KiB the
    # receiver itself dropped 40-78 % of what arrived, tunnel or direct;
    # a UDP receiver that means to keep up (quinn, a media client) sizes
    # its socket buffer.
    [ "$proto" = udp ] && args+=(-u -b "$SPEED_RATE" -l "$SPEED_LEN" -w 4M)
    if [ "$proto" = mptcp ]; then
        wrap=(mptcpize run)
        speed_server mptcp
    else
        speed_server plain
    fi
    [ "$cpid" = - ] || c0=$(cpu_secs "$cpid")
    [ "$spid" = - ] || s0=$(cpu_secs "$spid")
    q0=$(softirq_secs)
    nsx "$ns" timeout $((SPEED_SECS + 15)) "${wrap[@]}" iperf3 -c 198.51.100.10 -p $SPEED_PORT \
        -t "$SPEED_SECS" -P "$flows" -J "${args[@]}" >"$TMP/speed.json" 2>"$TMP/speed.err" || rc=$?
    q1=$(softirq_secs)
    [ "$cpid" = - ] || c1=$(cpu_secs "$cpid")
    [ "$spid" = - ] || s1=$(cpu_secs "$spid")
    kill "$SPEED_SRV" 2>/dev/null || true
    wait "$SPEED_SRV" 2>/dev/null || true
    python3 - "$TMP/speed.json" "$rc" "$path" "$proto" "$dir" "$flows" "$cpid" "$spid" \
        "$c0" "$c1" "$s0" "$s1" "$q0" "$q1" >>"$ROWS" <<'PY'
import json, sys
f, rc, path, proto, d, flows, cpid, spid = sys.argv[1:9]
c0, c1, s0, s1, q0, q1 = map(float, sys.argv[9:])
row = {"path": path, "proto": proto, "dir": d, "flows": int(flows)}
try:
    data = json.load(open(f))
except (OSError, ValueError):
    data = {}
end = data.get("end", {})
r = end.get("sum_received") or end.get("sum")
if rc != "0" or not r or data.get("error"):
    row["failed"] = "iperf3 exit %s: %s" % (rc, data.get("error", "no JSON"))
else:
    bps = r["bits_per_second"]
    if "sum_received" not in end and r.get("lost_percent"):
        # A UDP sum without the receiver's own: the sender's rate less the loss.
        bps *= 1 - r["lost_percent"] / 100
    row["bps"] = bps
    row["gbit"] = bps * r["seconds"] / 1e9
    row["lost"] = r.get("lost_percent")
    row["cpu_client"] = None if cpid == "-" else c1 - c0
    row["cpu_conc"] = None if spid == "-" else s1 - s0
    row["softirq"] = q1 - q0
print(json.dumps(row))
PY
    echo "  done: $path $proto $dir, $flows flow(s)" >&2
}

# 200 pings at 10 ms from NS (ping ARGS...) to mpb-srv into FILE.
speed_ping() {
    local ns=$1 out=$2
    shift 2
    nsx "$ns" timeout 15 ping -n -c 200 -i 0.01 -W 1 "$@" 198.51.100.10 >"$out" 2>&1 || true
}

bench_speed() {
    SPEED_SECS=8 SPEED_LEN=1200 SPEED_RATE=0 SPEED_PART=all
    while [ $# -gt 0 ]; do
        case $1 in
            --secs) [ $# -ge 2 ] || die "--secs needs a number"; SPEED_SECS=$2; shift ;;
            --len) [ $# -ge 2 ] || die "--len needs a number of bytes"; SPEED_LEN=$2; shift ;;
            --rate) [ $# -ge 2 ] || die "--rate needs a rate (iperf3 -b: 0, 800M, 2G)"; SPEED_RATE=$2; shift ;;
            --part)
                [ $# -ge 2 ] && [[ $2 =~ ^(tcp|datagram)$ ]] || die "--part needs tcp or datagram"
                SPEED_PART=$2
                shift
                ;;
            *) die "unknown option $1 for speed; usage: bench.sh speed [--secs N] [--len BYTES] [--rate BPS] [--part tcp|datagram]" ;;
        esac
        shift
    done
    [[ $SPEED_SECS =~ ^[0-9]+$ ]] && [ "$SPEED_SECS" -ge 3 ] && [ "$SPEED_SECS" -le 60 ] ||
        die "--secs must be 3-60 seconds, got '$SPEED_SECS'"
    [[ $SPEED_LEN =~ ^[0-9]+$ ]] && [ "$SPEED_LEN" -ge 64 ] && [ "$SPEED_LEN" -le 1472 ] ||
        die "--len must be 64-1472 bytes, got '$SPEED_LEN'"
    [[ $SPEED_RATE =~ ^[0-9]+(\.[0-9]+)?[KMG]?$ ]] || die "--rate must be an iperf3 rate (0, 800M, 2G), got '$SPEED_RATE'"
    TMP=$(mktemp -d)
    ROWS=$TMP/speed.jsonl
    local start=$SECONDS flows dir cli conc
    echo
    # Measured here: 129 s with the defaults (14 iperf3 runs, 2 labs, 2 starts;
    # 16 runs since the direct UDP rows).
    echo "bench speed: profile none, ${SPEED_SECS}s per iperf3 run; about $(((SPEED_SECS * 16 + 20 + 59) / 60)) min"
    lab_up --dsl none --lte none >"$TMP/lab.out" 2>&1 || die "lab.sh up failed: $(tail -n 20 "$TMP/lab.out")"
    if [ "$SPEED_PART" != datagram ]; then
        kernel_mptcp_setup
        for flows in 1 4; do
            for dir in down up; do
                speed_row direct mpb-cli tcp $dir $flows - - -B 10.77.1.2
                speed_row mptcp mpb-cli mptcp $dir $flows - - -B 10.77.1.2
            done
        done
    fi
    if [ "$SPEED_PART" != tcp ]; then
        # The datagram rows' yardstick: the same iperf3 UDP load straight over
        # dsl, so a cap of iperf3 itself (one datagram per system call) shows.
        for dir in down up; do
            speed_row direct mpb-cli udp $dir 1 - - -B 10.77.1.2
        done
    fi
    # mpbond on a lab without the baselines' rules and endpoints.
    labq down
    labq up --dsl none --lte none
    if [ "$SPEED_PART" != datagram ]; then
        labq start
        cli=$(lab_pid client) conc=$(lab_pid concentrator)
        for flows in 1 4; do
            for dir in down up; do
                speed_row mpbond mpb-lan tcp $dir $flows "$cli" "$conc"
            done
        done
        labq stop
    fi
    if [ "$SPEED_PART" != tcp ]; then
        UDP_WAITS=()
        udp_start "$(udp_config latency dsl-only)"
        cli=$(lab_pid client) conc=$(lab_pid concentrator)
        for dir in down up; do
            speed_row datagram mpb-lan udp $dir 1 "$cli" "$conc"
        done
        speed_ping mpb-lan "$TMP/ping-tunnel.txt"
        speed_ping mpb-cli "$TMP/ping-direct.txt" -I 10.77.1.2
    fi
    labq stop
    labq down

    local rc=0
    python3 - "$ROWS" "$TMP/ping-tunnel.txt" "$TMP/ping-direct.txt" "$SPEED_SECS" "$SPEED_LEN" "$SPEED_RATE" <<'PY' || rc=$?
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
secs, length, rate = sys.argv[4:7]

def pings(path):
    out = []
    for line in open(path):
        if "time=" in line:
            out.append(float(line.split("time=")[1].split()[0]))
    return sorted(out)

def pct(v, q):
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")

def per_gbit(cpu, r):
    return "-" if cpu is None or not r.get("gbit") else "%.3f" % (cpu / r["gbit"])

base = {(r["dir"], r["flows"]): r.get("bps") for r in rows if r["path"] == "direct" and r["proto"] == "tcp"}
kernel = {(r["dir"], r["flows"]): r.get("bps") for r in rows if r["path"] == "mptcp"}
misses = []
print()
print("bench speed: profile none, %s s per run; CPU per Gbit/s = CPU seconds per Gbit delivered" % secs)
hdr = "%-8s %-4s %5s | %9s | %8s %7s | %10s %10s %10s | %s"
print(hdr % ("path", "dir", "flows", "Gbit/s", "x direct", "x mptcp", "client", "conc", "softirq", "goal"))
print("-" * 104)
for r in rows:
    if r["proto"] == "udp":
        continue
    if "failed" in r:
        print("%-8s %-4s %5d | FAILED: %s" % (r["path"], r["dir"], r["flows"], r["failed"]))
        if r["path"] == "mpbond":
            misses.append("mpbond %s %d flow(s) failed" % (r["dir"], r["flows"]))
        continue
    b = base.get((r["dir"], r["flows"]))
    ratio = r["bps"] / b if b else float("nan")
    k = kernel.get((r["dir"], r["flows"]))
    kratio = r["bps"] / k if k else float("nan")
    goal = ""
    if r["path"] == "mpbond":
        ok = ratio >= 0.35
        goal = "%s (>= 0.35 x direct)" % ("PASS" if ok else "MISS")
        if not ok:
            misses.append("mpbond %s %d flow(s): %.2f of direct" % (r["dir"], r["flows"], ratio))
    print("%-8s %-4s %5d | %9.2f | %8.2f %7.2f | %10s %10s %10s | %s" % (
        r["path"], r["dir"], r["flows"], r["bps"] / 1e9, ratio, kratio,
        per_gbit(r.get("cpu_client"), r), per_gbit(r.get("cpu_conc"), r), per_gbit(r.get("softirq"), r), goal))
print()
print("datagram tunnel (client with the dsl uplink only, latency mode; iperf3 -u -b %s -l %s -w 4M, one flow)" % (rate, length))
print("%-8s %-4s | %9s %6s %8s | %10s %10s %10s | %s" % ("path", "dir", "Gbit/s", "loss%", "x direct", "client", "conc", "softirq", "goal"))
print("-" * 89)
udp_base = {r["dir"]: r.get("bps") for r in rows if r["proto"] == "udp" and r["path"] == "direct"}
for r in rows:
    if r["proto"] != "udp":
        continue
    if "failed" in r:
        print("%-8s %-4s | FAILED: %s" % (r["path"], r["dir"], r["failed"]))
        if r["path"] == "datagram":
            misses.append("datagram %s failed" % r["dir"])
        continue
    goal = ""
    if r["path"] == "datagram":
        ok = r["bps"] >= 2e9
        if not ok:
            misses.append("datagram %s: %.2f Gbit/s" % (r["dir"], r["bps"] / 1e9))
        goal = "%s (>= 2 Gbit/s)" % ("PASS" if ok else "MISS")
    b = udp_base.get(r["dir"])
    print("%-8s %-4s | %9.2f %6.1f %8.2f | %10s %10s %10s | %s" % (
        r["path"], r["dir"], r["bps"] / 1e9, r.get("lost") or 0.0,
        r["bps"] / b if b else float("nan"),
        per_gbit(r.get("cpu_client"), r), per_gbit(r.get("cpu_conc"), r), per_gbit(r.get("softirq"), r),
        goal))
import os
if not os.path.exists(sys.argv[2]):
    if misses:
        print("missed: " + "; ".join(misses))
        sys.exit(3)
    sys.exit(0)
tun, direct = pings(sys.argv[2]), pings(sys.argv[3])
print()
print("ping to mpb-srv, 200 at 10 ms, unloaded (ms)")
print("%-42s %8s %8s %6s" % ("path", "median", "p90", "n"))
print("%-42s %8.3f %8.3f %6d" % ("mpb-lan through the tunnel", pct(tun, 0.5), pct(tun, 0.9), len(tun)))
print("%-42s %8.3f %8.3f %6d" % ("mpb-cli bound to dsl (direct)", pct(direct, 0.5), pct(direct, 0.9), len(direct)))
if tun and direct:
    added = statistics.median(tun) - statistics.median(direct)
    ok = added < 0.1
    print("added (median): %.3f ms  %s (< 0.1 ms)" % (added, "PASS" if ok else "MISS"))
    if not ok:
        misses.append("ping adds %.3f ms" % added)
else:
    misses.append("no ping answers (tunnel %d, direct %d)" % (len(tun), len(direct)))
if misses:
    print("missed: " + "; ".join(misses))
    sys.exit(3)
PY
    echo "bench speed: $((SECONDS - start)) s"
    trap - EXIT
    cleanup
    [ $rc = 0 ] || echo "bench: speed missed a goal (see above)" >&2
}

# Parts 1-3 of bench udp: per mode on the default profiles (the lab is up).
bench_udp_modes() {
    # Baselines: each line alone, mpbond not running.
    direct_routes add
    local n name flows mode
    for n in 1 2; do
        name=dsl
        [ $n = 2 ] && name=lte
        for flows in 1 8; do
            udp_dl mpb-cli $flows $name 10.77.$n.2
        done
    done
    direct_routes del

    for mode in latency redundant aggregate; do
        udp_start "$(udp_config $mode)"
        for flows in 1 8; do
            udp_dl mpb-lan $flows $mode -
        done
        udp_rtt $mode
        udp_cut $mode
        labq stop
    done
}

# ---------------------------------------------------------------- quic

# Where bench quic's server listens in mpb-srv: QUIC on UDP, TLS on TCP.
QUIC_ADDR=198.51.100.10:443

# The lab's client config with `quic = POLICY`.   quic_config POLICY
quic_config() {
    client_config_with "quic-$1" "quic = \"$1\""
}

# One quicperf run from the LAN host: COUNT requests of BYTES over PROTO
# (quic or tls), each on a new connection; JSON lines appended to OUT.
#   quic_get PROTO BYTES COUNT OUT
# Also appends what each uplink received meanwhile ("split" dsl lte bytes).
quic_get() {
    local before after
    before=$(uplink_rx)
    nsx mpb-lan timeout 300 "$QUICPERF" get "$1" "$QUIC_ADDR" "$TMP/quic-cert.der" "$2" "$3" >>"$4" ||
        die "quicperf get $1 $2 x $3 failed: $(tail -n 3 "$4")"
    after=$(uplink_rx)
    echo "$before $after" | awk '{printf "{\"split\": [%d, %d]}\n", $3 - $1, $4 - $2}' >>"$4"
}

bench_quic() {
    local small=20 bulk=3 bulk_bytes=$((24 * 1024 * 1024))
    while [ $# -gt 0 ]; do
        case $1 in
            --small) [ $# -ge 2 ] || die "--small needs a count"; small=$2; shift ;;
            --bulk) [ $# -ge 2 ] || die "--bulk needs a count"; bulk=$2; shift ;;
            *) die "unknown option $1 for quic; usage: bench.sh quic [--small N] [--bulk N]" ;;
        esac
        shift
    done
    [[ $small =~ ^[0-9]+$ ]] && [ "$small" -ge 3 ] && [ "$small" -le 200 ] || die "--small must be 3-200, got '$small'"
    [[ $bulk =~ ^[0-9]+$ ]] && [ "$bulk" -ge 1 ] && [ "$bulk" -le 10 ] || die "--bulk must be 1-10, got '$bulk'"
    TMP=$(mktemp -d)
    local start=$SECONDS
    cargo build --release --quiet --example quicperf
    QUICPERF=$TARGET/release/examples/quicperf
    echo
    echo "bench quic: $small small requests (10 KB) and $bulk downloads (24 MiB) per protocol and policy; about 2 min"
    lab_up
    local policy proto _
    for policy in tunnel block; do
        udp_start "$(quic_config $policy)"
        rm -f "$TMP/quic-cert.der"
        exec_in mpb-srv "$QUICPERF" serve "$QUIC_ADDR" "$TMP/quic-cert.der" >"$TMP/quic-srv.log" 2>&1 &
        BG_PIDS+=("$!")
        for _ in $(seq 100); do
            [ -s "$TMP/quic-cert.der" ] && [ -n "$(nsx mpb-srv ss -Hltn "sport = :443")" ] && break
            sleep 0.05
        done
        [ -s "$TMP/quic-cert.der" ] || die "quicperf serve did not start: $(tail -n 3 "$TMP/quic-srv.log")"
        for proto in quic tls; do
            if [ $policy = block ] && [ $proto = quic ]; then
                # What a browser's (connected) socket sees of the refusal.
                nsx mpb-lan timeout 120 "$QUICPERF" refuse "$QUIC_ADDR" "$small" \
                    >>"$TMP/$policy-$proto-small.jsonl" || die "quicperf refuse failed"
            else
                quic_get $proto 10240 "$small" "$TMP/$policy-$proto-small.jsonl"
                quic_get $proto "$bulk_bytes" "$bulk" "$TMP/$policy-$proto-bulk.jsonl"
            fi
            echo "  done: quic = $policy, $proto" >&2
        done
        local pid=${BG_PIDS[-1]}
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        labq stop
    done
    local rc=0
    python3 scripts/lib/quic_table.py "$TMP" || rc=$?
    echo "bench quic: $((SECONDS - start)) s"
    trap - EXIT
    cleanup
    [ $rc = 0 ] || echo "bench: quic measured something wrong (see above)" >&2
}

bench_floods() {
    local idle=2000 slow=200 secs=5
    while [ $# -gt 0 ]; do
        case $1 in
            --idle) [ $# -ge 2 ] || die "--idle needs a count"; idle=$2; shift ;;
            --slow) [ $# -ge 2 ] || die "--slow needs a count"; slow=$2; shift ;;
            --secs) [ $# -ge 2 ] || die "--secs needs seconds"; secs=$2; shift ;;
            *) die "unknown option $1 for floods; usage: bench.sh floods [--idle N] [--slow N] [--secs S]" ;;
        esac
        shift
    done
    [[ $idle =~ ^[0-9]+$ ]] && [ "$idle" -ge 1 ] && [ "$idle" -le 20000 ] || die "--idle must be 1-20000, got '$idle'"
    [[ $slow =~ ^[0-9]+$ ]] && [ "$slow" -ge 1 ] && [ "$slow" -le 5000 ] || die "--slow must be 1-5000, got '$slow'"
    [[ $secs =~ ^[0-9]+$ ]] && [ "$secs" -ge 1 ] && [ "$secs" -le 60 ] || die "--secs must be 1-60, got '$secs'"
    TMP=$(mktemp -d)
    local start=$SECONDS
    echo
    echo "bench floods: $idle idle, $slow slowloris, ${secs} s each of headers, handshakes and datagrams to the client; about 1 min"
    lab_up
    labq start
    local rc=0
    timeout 300 python3 scripts/lib/flood.py run --idle "$idle" --slow "$slow" --secs "$secs" --table \
        >"$TMP/floods.out" 2>&1 || rc=$?
    grep -v '^result ' "$TMP/floods.out" || true
    echo "(log: lines the flood made the concentrator write, the client's for the client row;"
    echo " latency: a new connection from mpb-lan through the client, connect to the last of 4 KiB echoed)"
    echo "bench floods: $((SECONDS - start)) s"
    trap - EXIT
    cleanup
    [ $rc = 0 ] || die "flood.py failed (rc $rc)"
}

# RSS (KiB) and open descriptors of process PID: "RSS FDS".
rss_fds() {
    echo "$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status") $(ls "/proc/$1/fd" | wc -l)"
}

# conns.py run from namespace NS to the echo server (COUNT connections),
# holding them open until released: writes its two JSON lines to OUT and,
# once they are all open, "RSS FDS" of each pid in PIDS... to OUT.mem.
#   scale_load NS COUNT OUT PIDS...
scale_load() {
    local ns=$1 count=$2 out=$3 pid i
    shift 3
    rm -f "$out.fifo" && mkfifo "$out.fifo"
    nsx "$ns" python3 scripts/lib/conns.py run 198.51.100.10 7400 "$count" --hold 300 \
        --deadline 400 <"$out.fifo" >"$out" &
    local load=$!
    exec 7>"$out.fifo"
    for i in $(seq 4000); do
        grep -q '"phase": "open"' "$out" && break
        kill -0 "$load" 2>/dev/null || break
        sleep 0.1
    done
    : >"$out.mem"
    for pid in "$@"; do rss_fds "$pid" >>"$out.mem"; done
    echo go >&7
    exec 7>&-
    wait "$load" || die "conns.py from $ns failed: $(tail -n 3 "$out")"
    grep -q '"phase": "done"' "$out" || die "conns.py from $ns did not finish: $(tail -n 3 "$out")"
}

bench_scale() {
    local conns=10000 secs=30 dsl=dsl lte=lte
    while [ $# -gt 0 ]; do
        case $1 in
            --conns) [ $# -ge 2 ] || die "--conns needs a number"; conns=$2; shift ;;
            --dsl) [ $# -ge 2 ] || die "--dsl needs a profile"; dsl=$2; shift ;;
            --lte) [ $# -ge 2 ] || die "--lte needs a profile"; lte=$2; shift ;;
            *) die "unknown option $1 for scale; usage: bench.sh scale [--conns N] [--dsl PROFILE] [--lte PROFILE]" ;;
        esac
        shift
    done
    [[ $conns =~ ^[0-9]+$ ]] && [ "$conns" -ge 100 ] && [ "$conns" -le 60000 ] ||
        die "--conns must be 100-60000, got '$conns'"
    local start=$SECONDS
    TMP=$(mktemp -d)
    lab_up --dsl "$dsl" --lte "$lte" >/dev/null
    # The lab's concentrator config, with room for every connection in the
    # lab client's own limit.
    sed 's/^tunnel_v6 = "fd77::2"/&\nmax_connections = 60000/' deploy/lab/concentrator.toml >"$TMP/concentrator.toml"
    grep -q '^max_connections = 60000' "$TMP/concentrator.toml" || die "deploy/lab/concentrator.toml changed shape"
    exec_in mpb-srv python3 scripts/lib/conns.py serve 198.51.100.10 7400 >"$TMP/echo.log" 2>&1 &
    BG_PIDS+=("$!")
    bulk_server
    sleep 0.5

    # The baseline: the same load from mpb-cli straight over its default
    # line (dsl), mpbond not running: what the generator and the line give.
    echo "  scale: $conns connections direct from mpb-cli (the baseline)" >&2
    scale_load mpb-cli "$conns" "$TMP/direct.json"

    labq start --concentrator-config "$TMP/concentrator.toml"
    local client concentrator
    client=$(lab_pid client)
    concentrator=$(lab_pid concentrator)
    { rss_fds "$client"; rss_fds "$concentrator"; } >"$TMP/idle.mem"
    echo "  scale: a ${secs} s download via mpbond alone" >&2
    nsx mpb-lan python3 scripts/lib/bulk.py run 198.51.100.10 5300 "$secs" >"$TMP/bulk-alone.json" ||
        die "the bulk download alone failed"
    echo "  scale: $conns connections via mpbond from mpb-lan beside the same download" >&2
    nsx mpb-lan python3 scripts/lib/bulk.py run 198.51.100.10 5300 "$secs" >"$TMP/bulk-beside.json" &
    local bulk=$!
    sleep 2
    scale_load mpb-lan "$conns" "$TMP/mpbond.json" "$client" "$concentrator"
    wait "$bulk" || die "the bulk download beside the connections failed"
    # Descriptors back within 30 s of the close.
    local i
    for i in $(seq 300); do
        { rss_fds "$client"; rss_fds "$concentrator"; } >"$TMP/after.mem"
        [ "$(awk 'NR == 1 {print $2}' "$TMP/after.mem")" -le $(($(awk 'NR == 1 {print $2}' "$TMP/idle.mem") + 8)) ] &&
            [ "$(awk 'NR == 2 {print $2}' "$TMP/after.mem")" -le $(($(awk 'NR == 2 {print $2}' "$TMP/idle.mem") + 8)) ] && break
        sleep 0.1
    done
    # The daemons give freed memory back every 30 s (sys::TRIM_EVERY).
    sleep 31
    { rss_fds "$client"; rss_fds "$concentrator"; } >"$TMP/after.mem"
    grep -h "open-file limit\|concentrator listening" "$LAB_RUN/client.log" "$LAB_RUN/concentrator.log" |
        grep -o 'connections=[0-9]*' >"$TMP/caps" || true
    local rc=0
    python3 - "$TMP" "$conns" <<'PY' || rc=$?
import json, os, sys
tmp, asked = sys.argv[1], int(sys.argv[2])
def lines(name):
    return [json.loads(l) for l in open(os.path.join(tmp, name)) if l.startswith("{")]
def mem(name):
    return [tuple(int(v) for v in l.split()) for l in open(os.path.join(tmp, name)) if l.strip()]
caps = [int(l.split("=")[1]) for l in open(os.path.join(tmp, "caps"))]
print()
if caps:
    print(f"{asked} connections asked (and the download); the open-file limits here carry "
          f"{min(caps)} (client and concentrator say: {', '.join(map(str, caps))})")
print(f"{'path':<24} {'opened':>7} {'refused':>7} {'open/s':>7} {'open s':>7} "
      f"{'echo 2':>7} {'lost':>5} {'corrupt':>7}")
print("-" * 80)
rates = {}
for name, label in (("direct.json", "direct (mpb-cli, dsl)"), ("mpbond.json", "mpbond (mpb-lan)")):
    opened, done = lines(name)
    rates[name] = opened["per_sec"]
    print(f"{label:<24} {opened['opened']:>7} {opened['failed']:>7} {opened['per_sec']:>7.0f} "
          f"{opened['open_secs']:>7.1f} {done['echoed']:>7} {done['lost']:>5} "
          f"{opened['corrupt'] + done['corrupt']:>7}")
print(f"mpbond opens connections at {rates['mpbond.json'] / rates['direct.json']:.2f} of the direct rate")
print()
opened = lines("mpbond.json")[0]["opened"]
idle, held, after = mem("idle.mem"), mem("mpbond.json.mem"), mem("after.mem")
print(f"{'daemon':<13} {'idle RSS':>9} {'fds':>6} | {'all open RSS':>12} {'fds':>6} "
      f"{'KiB/conn':>8} | {'30 s after':>10} {'fds':>6}")
print("-" * 80)
worst = 0.0
for i, name in enumerate(("client", "concentrator")):
    per = (held[i][0] - idle[i][0]) / max(opened, 1)
    worst = max(worst, per)
    print(f"{name:<13} {idle[i][0] / 1024:>7.1f}MB {idle[i][1]:>6} | {held[i][0] / 1024:>10.1f}MB "
          f"{held[i][1]:>6} {per:>8.1f} | {after[i][0] / 1024:>8.1f}MB {after[i][1]:>6}")
print(f"goal: <= 64 KiB of user-space memory per connection at both ends: "
      f"{'PASS' if worst <= 64 else 'MISS'} ({worst:.1f})")
alone = json.load(open(os.path.join(tmp, "bulk-alone.json")))
beside = json.load(open(os.path.join(tmp, "bulk-beside.json")))
ratio = beside["goodput_bps"] / alone["goodput_bps"] if alone["goodput_bps"] else 0
print(f"bulk download via mpbond: alone {alone['goodput_bps'] / 1e6:.1f} Mbit/s, beside the "
      f"connections {beside['goodput_bps'] / 1e6:.1f} Mbit/s ({ratio:.2f}); longest stall "
      f"beside them {beside['stall_ms']:.0f} ms")
for name, label in (("direct.json", "direct"), ("mpbond.json", "mpbond")):
    opened, done = lines(name)
    if opened["errors"] or done["errors"]:
        print(f"{label}: errors opening {opened['errors'] or 'none'}, "
              f"echoing again {done['errors'] or 'none'}")
opened, done = lines("mpbond.json")
if done["lost"] or done["corrupt"] or opened["corrupt"]:
    sys.exit("bench: connections through mpbond lost or corrupted")
PY
    echo "bench scale: $((SECONDS - start)) s"
    trap - EXIT
    cleanup
    [ $rc = 0 ] || die "scale measured something wrong (see above)"
    # What floods and slow peers cost the concentrator, on a lab of its own.
    bench_floods
}

# The line events of bench.sh soak, one every PERIOD seconds until
# DEADLINE (epoch seconds), at most COUNT, each logged to FILE as "T EVENT
# rc"; the lines are both up and lte at 10.77.2.2 after each pair.
#   soak_events PERIOD DEADLINE COUNT FILE
soak_events() {
    local period=$1 deadline=$2 count=$3 file=$4 i rc
    local events=("lte down" "lte up" "lte blackhole" "lte up" "lte renumber 3" "lte renumber 2"
        "dsl down" "dsl up" "dsl blackhole" "dsl up")
    for ((i = 0; i < count; i++)); do
        sleep "$period"
        # Stop only between pairs, with both lines up.
        if [ $((i % 2)) = 0 ] && [ "$(date +%s)" -ge "$deadline" ]; then
            break
        fi
        local event=${events[$((i % ${#events[@]}))]}
        rc=0
        # shellcheck disable=SC2086 # the event is words
        timeout 30 "$LAB" link $event >>"$TMP/events.out" 2>&1 || rc=$?
        echo "$(date +%s.%N) $event $rc" >>"$file"
    done
}

# RSS and descriptors of the client and the concentrator every 5 s until
# killed (at most COUNT samples): "T RSS FDS RSS FDS" lines to FILE.
#   soak_samples CLIENT CONCENTRATOR COUNT FILE
soak_samples() {
    local i
    for ((i = 0; i < $3; i++)); do
        echo "$(date +%s) $(rss_fds "$1") $(rss_fds "$2")" >>"$4" 2>/dev/null || return 0
        sleep 5
    done
}

bench_soak() {
    local minutes=5
    while [ $# -gt 0 ]; do
        case $1 in
            --minutes) [ $# -ge 2 ] || die "--minutes needs a number"; minutes=$2; shift ;;
            *) die "unknown option $1 for soak; usage: bench.sh soak [--minutes N]" ;;
        esac
        shift
    done
    [[ $minutes =~ ^[0-9]+$ ]] && [ "$minutes" -ge 1 ] && [ "$minutes" -le 120 ] ||
        die "--minutes must be 1-120, got '$minutes'"
    local secs=$((minutes * 60)) period=4 start=$SECONDS
    TMP=$(mktemp -d)
    echo
    echo "bench soak: $minutes min of mixed traffic with a line event every ${period} s; about $((minutes + 2)) min"
    lab_up >/dev/null
    labq start
    exec_in mpb-srv python3 scripts/lib/soak.py serve 7500 >"$TMP/server.log" 2>&1 &
    BG_PIDS+=("$!")
    local i
    for i in $(seq 100); do
        grep -q listening "$TMP/server.log" && break
        sleep 0.05
    done
    grep -q listening "$TMP/server.log" || die "soak.py serve did not listen: $(tail -n 5 "$TMP/server.log")"
    local client concentrator
    client=$(lab_pid client)
    concentrator=$(lab_pid concentrator)
    { rss_fds "$client"; rss_fds "$concentrator"; } >"$TMP/start.mem"
    local client_lines
    client_lines=$(wc -l <"$LAB_RUN/client.log")

    soak_samples "$client" "$concentrator" $((secs / 5 + 30)) "$TMP/samples" &
    local sampler=$!
    BG_PIDS+=("$sampler")
    soak_events "$period" $(($(date +%s) + secs)) $((secs / period + 2)) "$TMP/events" &
    local events=$!
    BG_PIDS+=("$events")
    local rc=0
    timeout $((secs + 150)) ip netns exec mpb-lan python3 scripts/lib/soak.py run 198.51.100.10 7500 "$secs" \
        >"$TMP/traffic.json" 2>"$TMP/traffic.err" || rc=$?
    [ $rc = 0 ] || echo "bench soak: the traffic generator failed (rc $rc): $(tail -n 5 "$TMP/traffic.err")" >&2
    wait "$events" || true
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    # Whatever the last event left: both lines up, lte at its own address.
    $LAB link lte up >/dev/null
    $LAB link dsl up >/dev/null
    nsx mpb-cli ip -4 addr show dev lte0 | grep -q 'inet 10.77.2.2/' || $LAB link lte renumber 2 >/dev/null
    local changes
    changes=$(uplink_changes "$client_lines")

    # Idle again: descriptors back (at most 60 s), then a malloc_trim (every 30 s).
    # The client's capture loop keeps the uplink sockets it last sent a
    # datagram on: a line renumbered after the last datagram leaves its old
    # socket open until the next one (one per line at most, not a leak).
    local fc0 fk0 fc fk
    read -r _ fc0 < <(sed -n 1p "$TMP/start.mem")
    read -r _ fk0 < <(sed -n 2p "$TMP/start.mem")
    for i in $(seq 600); do
        read -r _ fc < <(rss_fds "$client")
        read -r _ fk < <(rss_fds "$concentrator")
        [ "$fc" -le "$fc0" ] && [ "$fk" -le "$fk0" ] && break
        sleep 0.1
    done
    sleep 31
    { rss_fds "$client"; rss_fds "$concentrator"; } >"$TMP/end.mem"
    # What the descriptors are, for a growth to be explained.
    for f in client concentrator; do
        local p=$client ns=mpb-cli
        [ $f = concentrator ] && p=$concentrator ns=mpb-conc
        { ls -l "/proc/$p/fd" | awk 'NR > 1 {print $NF}' | sed 's/[0-9][0-9]*/N/g' | sort | uniq -c
            nsx $ns ss -tuanp | grep "pid=$p,"
            # Only mpbond uses MPTCP in these namespaces.
            echo "MPTCP sockets in $ns:"; nsx $ns ss -Man; } >"$TMP/$f.fds" 2>&1 || true
    done
    local panics=0 f
    for f in client concentrator; do
        panics=$((panics + $(grep -c 'panicked' "$LAB_RUN/$f.log" || true)))
    done
    local alive=""
    [ -n "$(daemon_running client)" ] && [ "$(daemon_running client)" = "$client" ] || alive="${alive}client "
    [ -n "$(daemon_running concentrator)" ] && [ "$(daemon_running concentrator)" = "$concentrator" ] ||
        alive="${alive}concentrator "
    python3 - "$TMP" "$minutes" "$changes" "$panics" "$alive" <<'PY' || rc=$?
import json, os, statistics, sys
tmp, minutes, changes, panics, gone = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5].split()
rows = {}
for line in open(os.path.join(tmp, "traffic.json")):
    if line.startswith("{"):
        row = json.loads(line)
        rows[row["class"]] = row
events = [l.split() for l in open(os.path.join(tmp, "events"))] if os.path.exists(os.path.join(tmp, "events")) else []
failed_events = [" ".join(e[1:-1]) for e in events if e[-1] != "0"]
cuts = sum(1 for e in events if len(e) >= 3 and e[2] in ("down", "blackhole"))
REQUEST_WORKERS = 4  # soak.py run's default, which bench soak uses
print()
print(f"{minutes} min, default profiles; {len(events)} line events every 4 s "
      f"(lte down/up, blackhole/up, renumber 3/2; dsl down/up, blackhole/up), "
      f"{len(failed_events)} failed; the client logged uplinks down/back {changes}")
print(f"{'class':<10} {'count':>7} {'ok':>7} {'sent MB':>9} {'intact MB':>10}  errors")
print("-" * 78)
bad = []
for name in ("requests", "download", "upload", "udp"):
    r = rows.get(name)
    if r is None:
        print(f"{name:<10} no result")
        bad.append(f"{name}: no result")
        continue
    if name == "udp":
        errs = (f"lost {r['lost']} ({100 * r['lost'] / max(r['count'], 1):.2f} %, at most "
                f"{r['longest_loss_run']} in a row), duplicates {r['dups']}, corrupt {r['corrupt']}")
        if r["corrupt"] or r["dups"]:
            bad.append("udp: datagrams corrupt or duplicated")
    else:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
        if r.get("first_error"):
            errs += f" (first: {r['first_error']})"
        failed = sum(r["errors"].values())
        # A request opened on a line in the instant it is cut can only be
        # reset (the client does so within about 3 s; README, failover):
        # at most one per request worker per cut. Anything else, or more,
        # is a failure.
        resets = r["errors"].get("ECONNRESET", 0) if name == "requests" else 0
        if resets and resets <= cuts * REQUEST_WORKERS:
            errs += f"; {resets} resets allowed: opened as a line was cut ({cuts} cuts)"
            failed -= resets
        if failed:
            bad.append(f"{name}: {failed} failed")
    print(f"{name:<10} {r['count']:>7} {r['ok']:>7} {r['sent'] / 1e6:>9.1f} {r['intact'] / 1e6:>10.1f}  {errs}")
if "hung" in rows:
    bad.append(f"{rows['hung']['threads']} traffic threads still running at the hard deadline")
print("(udp: datagrams echoed by mpb-srv, both ways through the datagram tunnel; intact = came back as sent)")

def mem(name):
    return [tuple(int(v) for v in l.split()) for l in open(os.path.join(tmp, name)) if l.strip()]
start, end = mem("start.mem"), mem("end.mem")
samples = [tuple(int(v) for v in l.split()) for l in open(os.path.join(tmp, "samples")) if len(l.split()) == 5]
third = max(len(samples) // 3, 1)
print()
print(f"{'daemon':<13} {'idle before':>16} | {'under load, RSS MB (median)':>27} {'peak':>6} {'fds max':>7} | {'idle after':>16}")
print(f"{'':<13} {'RSS MB   fds':>16} | {'first third':>13} {'last third':>13} {'':>6} {'':>7} | {'RSS MB   fds':>16}")
print("-" * 92)
verdicts = []
for i, name in enumerate(("client", "concentrator")):
    rss = [s[1 + 2 * i] for s in samples]
    fds = [s[2 + 2 * i] for s in samples]
    first = statistics.median(rss[:third]) if rss else 0
    last = statistics.median(rss[-third:]) if rss else 0
    spread = (max(rss[:third]) - min(rss[:third])) if rss else 0
    print(f"{name:<13} {start[i][0] / 1024:>8.1f} {start[i][1]:>6} | {first / 1024:>13.1f} {last / 1024:>13.1f} "
          f"{max(rss, default=0) / 1024:>6.1f} {max(fds, default=0):>7} | {end[i][0] / 1024:>8.1f} {end[i][1]:>6}")
    # Noise: the spread of the first third, at least 2 MiB or 10 %.
    noise = max(spread, 2048, first * 0.10)
    if last - first > noise:
        verdicts.append(f"{name} RSS under load grew {(last - first) / 1024:.1f} MB from the first "
                        f"third to the last (noise {noise / 1024:.1f} MB)")
    if end[i][1] > start[i][1] + 2:
        verdicts.append(f"{name} holds {end[i][1] - start[i][1]} more descriptors idle after than before")
print("(idle after: descriptors back, then 31 s for malloc_trim; under load: a sample every 5 s)")
if panics:
    bad.append(f"{panics} panics in the daemons' logs")
if gone:
    bad.append(f"not running any more (or restarted): {' '.join(gone)}")
if failed_events:
    bad.append(f"line events failed: {', '.join(failed_events)}")
print()
print("verdict: " + ("no growth beyond noise (RSS under load, first third vs last; descriptors idle before vs after)"
                     if not verdicts else "GROWTH: " + "; ".join(verdicts)))
print("traffic: " + ("every byte intact, no unexpected error, no panic" if not bad else "PROBLEMS: " + "; ".join(bad)))
sys.exit(1 if verdicts or bad else 0)
PY
    # The evidence outlives the lab.
    local keep=/tmp/mpbond-soak-last
    rm -rf "$keep" && mkdir -p "$keep"
    cp "$LAB_RUN/client.log" "$LAB_RUN/concentrator.log" "$TMP"/events "$TMP"/samples "$TMP"/traffic.* \
        "$TMP"/*.mem "$TMP"/*.fds "$keep"/ 2>/dev/null || true
    echo "bench soak: $((SECONDS - start)) s (logs, events and samples kept in $keep)"
    trap - EXIT
    cleanup
    [ $rc = 0 ] || die "soak found problems (see above)"
}

[ $# -ge 1 ] || die "usage: bench.sh linkem [--quick] [--status] | tcp [--secs N] [--live] [--dsl PROFILE] [--lte PROFILE]... [--flows N[,N...]] [--all] | failover [--lte PROFILE] | udp [--secs N] [--len BYTES] | quic [--small N] [--bulk N] | scale [--conns N] | floods [--idle N] [--slow N] [--secs S] | soak [--minutes N] | speed [--secs N] [--len BYTES] [--rate BPS]"
what=$1
shift
case $what in
    linkem) bench_linkem "$@" ;;
    tcp) bench_tcp "$@" ;;
    failover) bench_failover "$@" ;;
    udp) bench_udp "$@" ;;
    quic) bench_quic "$@" ;;
    scale) bench_scale "$@" ;;
    floods) bench_floods "$@" ;;
    soak) bench_soak "$@" ;;
    speed) bench_speed "$@" ;;
    *) die "unknown benchmark $what; available: linkem, tcp, failover, udp, quic, scale, floods, soak, speed" ;;
esac
