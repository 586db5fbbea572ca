#!/usr/bin/env bash
# The mpbond lab: a hybrid-access site in network namespaces (see LAB.md).
#
#   scripts/lab.sh up [--dsl PROFILE] [--lte PROFILE] [--second-client]
#                                                         build the lab; --second-client adds
#                                                         mpb-cli2, a road-warrior laptop
#                                                         with one plain line (wan0)
#   scripts/lab.sh down                                   remove everything (idempotent)
#   scripts/lab.sh status                                 namespaces, addresses, link counters
#   scripts/lab.sh link dsl|lte down|up|blackhole         change a line's state live
#   scripts/lab.sh link dsl|lte set RATE DELAY LOSS [up|down|both]
#                                                         new shaping ("-" keeps a value)
#   scripts/lab.sh link dsl|lte renumber HOST             the client's IPv4 address on the line
#                                                         becomes 10.77.N.HOST (as a DHCP
#                                                         renumbering: old address out, new in)
#   scripts/lab.sh link dsl|lte unplug|plug               the client's interface (dsl0/lte0) is
#                                                         deleted / created again with the same
#                                                         name and addresses (a new ifindex), as
#                                                         a USB modem pulled out and plugged back
#                                                         in; unplug before start: the client
#                                                         starts without it
#   scripts/lab.sh start [--client-config FILE] [--concentrator-config FILE] [--no-client]
#                                                         run mpbond in the lab; returns once
#                                                         the tunnel carries traffic (TCP, and
#                                                         datagrams when the config has
#                                                         [datagram]; with
#                                                         --no-client: once the concentrator
#                                                         listens)
#   scripts/lab.sh stop                                   stop mpbond (SIGTERM; SIGKILL after 10 s)
#   scripts/lab.sh restart concentrator|client|client2    stop that one daemon (as stop) and start
#                                                         it again with the same command; returns
#                                                         once it listens (concentrator) or once
#                                                         its tunnel carries traffic (clients)
#   scripts/lab.sh probe [NS] [ADDR]                      ask the probe server which address
#                                                         it sees (default mpb-lan, 198.51.100.10)
#
# PROFILE: a built-in name or a profile file (TOML, see
# linkem/src/profile.rs; any mahimahi trace works with trace = "FILE").
# `mpbond-linkem check PROFILE` prints what a profile means. Built in:
#   dsl         20/5 Mbit/s, 10 ms one way, 50 ms queue
#   lte         40/10 Mbit/s, 30 ms ±5 ms, 0.5 % random loss, 100 ms queue
#   fast        the emulator without shaping; none: a plain veth, no emulator
#   lte-bursty  urban LTE: mean 16/4.7 Mbit/s (down/up), per second 7.5-26
#               Mbit/s down (p10-p90); per minute 23 gaps >= 100 ms, 7 >=
#               200 ms, 1 >= 500 ms; 30 ms one way, 150 ms queue
#   lte-drive   driving: mean 9/3.7 Mbit/s, 1.3-21 Mbit/s down; 21 gaps >=
#               100 ms, 9 >= 200 ms, 3 >= 500 ms, a 1-3 s outage every two
#               minutes; 35/40 ms, 384/128 KiB queues, burst loss (0.26 %)
#   lte-weak    cell edge: mean 4.5/1.3 Mbit/s, 2.3-7 Mbit/s down; 21 gaps
#               >= 100 ms, 6 >= 200 ms; 40 ms, 300 ms queue, burst loss (1 %)
# The lte-* traces are generated (300 s, from the profile's seed): see
# `mpbond-linkem trace gen` and `trace stats` to make and measure them.
#
# Topology and addresses (IPv6 alongside, same shape):
#
#   mpb-lan  eth0  192.168.77.2/24  fd77:77::2/64   default via .1
#   mpb-cli  lan0  192.168.77.1/24  fd77:77::1/64
#            dsl0  10.77.1.2/24     fd77:1::2/64    default via 10.77.1.1 metric 100
#            lte0  10.77.2.2/24     fd77:2::2/64    default via 10.77.2.1 metric 200
#   mpb-dsl  cli <-> wan            link emulator between dsl0 (cli) and dsl0 (wan)
#   mpb-lte  cli <-> wan            link emulator between lte0 (cli) and lte0 (wan)
#   mpb-wan  dsl0  10.77.1.1/24     fd77:1::1/64
#            lte0  10.77.2.1/24     fd77:2::1/64
#            conc0 10.77.9.1/24     fd77:9::1/64
#            srv0  198.51.100.1/24  2001:db8:100::1/64
#            192.168.77.0/24 and fd77:77::/64 via the dsl line (no NAT in the lab)
#   mpb-conc eth0  10.77.9.2/24     fd77:9::2/64    default via 10.77.9.1
#            mpbc0 10.77.0.1/24     fd77::1/64      the datagram tunnel's TUN, made by
#                                                   mpbond concentrator; the lab client's
#                                                   tunnel addresses are 10.77.0.2 and
#                                                   fd77::2 (deploy/lab/*.toml)
#   mpb-srv  eth0  198.51.100.10/24 2001:db8:100::10/64 default via .1
#   mpb-cli2 wan0  10.77.3.2/24     fd77:3::2/64    default via 10.77.3.1 (up --second-client:
#                                                   a plain veth to cli2 in mpb-wan,
#                                                   10.77.3.1 / fd77:3::1; tunnel
#                                                   addresses 10.77.0.3 and fd77::3)
#
# start runs, each in the background with its log and pid file in $RUN:
#   mpb-conc  mpbond concentrator --config deploy/lab/concentrator.toml  (concentrator.log)
#   mpb-cli   mpbond client --config deploy/lab/client.toml              (client.log)
#   mpb-cli2  mpbond client --config deploy/lab/client2.toml, when the lab has
#             the second client                                         (client2.log)
#   mpb-srv   the probe server on port 7 (IPv4 and IPv6): writes the peer's
#             address and a newline, then closes                        (probe.log)
# Status and metrics: each daemon's control socket is /run/mpbond/ROLE-CONFIG.sock
# (status shows `mpbond status` of each); the client serves metrics on
# http://192.168.77.1:9310/metrics (the router's LAN address, from mpb-lan),
# the concentrator on http://127.0.0.1:9311/metrics inside mpb-conc.
# The configs use the key pairs $RUN/client.key(.pub), $RUN/client2.key(.pub)
# and $RUN/concentrator.key(.pub), made by start when missing.
# Datagram tunnel: TUN mpbc0 in mpb-conc (10.77.0.1/24, fd77::1/64, made by
# the concentrator); the client's tunnel addresses are 10.77.0.2 and fd77::2.
# Through the tunnel the probe server sees 10.77.9.2; directly, the sender's
# own address (192.168.77.2 from mpb-lan, 10.77.1.2 from mpb-cli).
#
# Every interface has a fixed MAC (02:77:<link>:<side>...), and the uplinks'
# neighbour entries are pinned, so a join after an outage never waits on ARP.
#
# Environment: MPBOND (binary to use; default target/release/mpbond, built
# when missing), MPBOND_LINKEM (the link emulator; default mpbond-linkem
# next to the mpbond binary), MPB_CC (TCP congestion control pinned in every
# namespace; default bbr), MPB_LAB_RUN (state directory; default
# /run/mpbond-lab), MPB_CLIENT_ENV (VAR=VALUE words that start puts in the
# environment of `mpbond client` in mpb-cli, and only there, e.g. an
# LD_PRELOAD of libfaketime to step the client's clock; restart client
# runs the same command again, environment included).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${MPB_LAB_RUN:-/run/mpbond-lab}
CC=${MPB_CC:-bbr}
NAMESPACES=(mpb-lan mpb-cli mpb-dsl mpb-lte mpb-wan mpb-conc mpb-srv)
# Made by up --second-client only; down removes it too.
OPTIONAL_NAMESPACES=(mpb-cli2)
LINKS=(dsl lte)

# Per line: index (MAC and subnet), client address, wan address.
declare -A LINK_NUM=([dsl]=1 [lte]=2)

die() { echo "lab: $*" >&2; exit 1; }
say() { echo "lab: $*" >&2; }
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

need_root() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces); run as root"
    local tool
    for tool in ip ethtool flock sysctl; do
        command -v "$tool" >/dev/null || die "$tool is missing; install it (apt-get install iproute2 ethtool util-linux procps)"
    done
}

lock() {
    mkdir -p "$(dirname "$RUN")"
    exec 9>"$RUN.lock"
    flock -w 120 9 || die "another lab.sh holds $RUN.lock for over 120 s"
}

mpbond_bin() {
    if [ -n "${MPBOND:-}" ]; then
        [ -x "$MPBOND" ] || die "MPBOND=$MPBOND is not an executable"
        echo "$MPBOND"
        return
    fi
    local bin=$ROOT/target/release/mpbond
    if command -v cargo >/dev/null; then
        (cd "$ROOT" && cargo build --release --quiet) >&2 || die "cargo build --release failed"
    fi
    [ -x "$bin" ] || die "$bin is missing and cargo is not installed; build mpbond first"
    echo "$bin"
}

# The link emulator: MPBOND_LINKEM, or mpbond-linkem from the directory of
# the mpbond binary in use (the workspace builds both there).
linkem_bin() {
    if [ -n "${MPBOND_LINKEM:-}" ]; then
        [ -x "$MPBOND_LINKEM" ] || die "MPBOND_LINKEM=$MPBOND_LINKEM is not an executable"
        echo "$MPBOND_LINKEM"
        return
    fi
    local bin
    bin=$(dirname "$(mpbond_bin)")/mpbond-linkem
    [ -x "$bin" ] || die "$bin is missing; build it (cargo build --release) or set MPBOND_LINKEM"
    echo "$bin"
}

# ---------------------------------------------------------------- down

cmd_down() {
    local ns pids i
    stop_all >/dev/null 2>&1 || true
    for ns in "${NAMESPACES[@]}" "${OPTIONAL_NAMESPACES[@]}"; do
        [ -e "/run/netns/$ns" ] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -n "$pids" ] && kill $pids 2>/dev/null || true
    done
    for i in $(seq 50); do
        pids=""
        for ns in "${NAMESPACES[@]}" "${OPTIONAL_NAMESPACES[@]}"; do
            [ -e "/run/netns/$ns" ] && pids+=$(ip netns pids "$ns" 2>/dev/null || true)
        done
        [ -z "$pids" ] && break
        [ "$i" = 50 ] && kill -9 $pids 2>/dev/null || true
        sleep 0.1
    done
    for ns in "${NAMESPACES[@]}" "${OPTIONAL_NAMESPACES[@]}"; do
        if [ -e "/run/netns/$ns" ]; then
            ip netns del "$ns" 2>/dev/null || { sleep 0.2; ip netns del "$ns"; }
        fi
    done
    rm -rf "$RUN"
}

# ---------------------------------------------------------------- up

mac() { printf '02:77:%02x:00:00:%02x' "$1" "$2"; }

# veth NAME_A NS_A NAME_B NS_B MAC_A MAC_B
veth() {
    ip link add "$1" netns "$2" address "$5" type veth peer name "$3" netns "$4" address "$6"
    nsx "$2" ip link set "$1" up
    nsx "$4" ip link set "$3" up
}

ns_base() {
    local ns=$1
    ip netns add "$ns"
    nsx "$ns" ip link set lo up
    nsx "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$CC"
    nsx "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
    # No duplicate address detection on the lab's own interfaces: nothing
    # can collide here, and waiting for it took half of `up`. The client
    # namespaces get it back once their lines exist (up), so that mpbond's
    # TUN and a re-plugged modem see it as on a real host.
    nsx "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
}

addr() { # NS IF V4/PREFIX V6/PREFIX
    nsx "$1" ip addr add "$3" dev "$2"
    nsx "$1" ip -6 addr add "$4" dev "$2" nodad
}

# The client's end of line NAME: NAME0 in mpb-cli with its peer (the
# emulator's cli in mpb-NAME, or with a plain veth NAME0 in mpb-wan, which
# then gets its address and pinned neighbours too), up, without addresses
# (client_addr). Used by up and by plug.
client_end() { # NAME KIND(veth|emulated)
    local name=$1 kind=$2 n=${LINK_NUM[$1]}
    local cli_if=${name}0 ns=mpb-$name cli_mac wan_mac
    cli_mac=$(mac "$n" 2) wan_mac=$(mac "$n" 1)
    if [ "$kind" = veth ]; then
        veth "$cli_if" mpb-cli "$cli_if" mpb-wan "$cli_mac" "$wan_mac"
        wan_end "$name"
    else
        veth "$cli_if" mpb-cli cli "$ns" "$cli_mac" "$(mac "$n" 0x12)"
        # Frames cross the emulator whole: no partial checksums from the
        # endpoints (tx off also disables TSO) and no GRO on the bridge.
        nsx mpb-cli ethtool -K "$cli_if" tx off >/dev/null
        nsx "$ns" ethtool -K cli gro off tso off gso off >/dev/null 2>&1 || true
    fi
}

# The addresses of the client's end of line NAME and its pinned neighbour
# entries.
client_addr() { # NAME
    local n=${LINK_NUM[$1]} cli_if=${1}0 wan_mac
    wan_mac=$(mac "$n" 1)
    addr mpb-cli "$cli_if" "10.77.$n.2/24" "fd77:$n::2/64"
    nsx mpb-cli ip neigh replace "10.77.$n.1" lladdr "$wan_mac" dev "$cli_if" nud permanent
    nsx mpb-cli ip -6 neigh replace "fd77:$n::1" lladdr "$wan_mac" dev "$cli_if" nud permanent
}

# The wan's end of line NAME (NAME0 in mpb-wan): addresses, pinned
# neighbours.
wan_end() { # NAME
    local n=${LINK_NUM[$1]} dev=${1}0
    addr mpb-wan "$dev" "10.77.$n.1/24" "fd77:$n::1/64"
    nsx mpb-wan ip neigh replace "10.77.$n.2" lladdr "$(mac "$n" 2)" dev "$dev" nud permanent
    nsx mpb-wan ip -6 neigh replace "fd77:$n::2" lladdr "$(mac "$n" 2)" dev "$dev" nud permanent
}

# The link emulator of line NAME in mpb-NAME, between its cli and wan
# interfaces, with profile SPEC; returns once its control socket is there.
start_linkem() { # NAME SPEC BIN
    local name=$1 spec=$2 bin=$3 ns=mpb-$1
    local sock=$RUN/$name.sock log=$RUN/linkem-$name.log
    rm -f "$sock"
    nsx "$ns" setsid "$bin" run --name "$name" --client-if cli --wan-if wan \
        --profile "$spec" --control "$sock" </dev/null >>"$log" 2>&1 8>&- 9>&- &
    local i
    for i in $(seq 100); do
        [ -S "$sock" ] && return 0
        kill -0 $! 2>/dev/null || die "link emulator $name failed: $(tail -n 3 "$log")"
        sleep 0.05
    done
    die "link emulator $name did not come up within 5 s (log: $log)"
}

# line NAME PROFILE_KIND(veth|emulated) PROFILE_SPEC BIN
line() {
    local name=$1 kind=$2 spec=$3 bin=$4 n=${LINK_NUM[$1]}
    local cli_if=${name}0 ns=mpb-$name
    if [ "$kind" = emulated ]; then
        nsx "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
        veth wan "$ns" "$cli_if" mpb-wan "$(mac "$n" 0x11)" "$(mac "$n" 1)"
        nsx mpb-wan ethtool -K "$cli_if" tx off >/dev/null
        nsx "$ns" ethtool -K wan gro off tso off gso off >/dev/null 2>&1 || true
        wan_end "$name"
    fi
    client_end "$name" "$kind"
    client_addr "$name"
    echo "$spec" >"$RUN/$name.profile"
    echo "$kind" >"$RUN/$name.kind"
    if [ "$kind" = emulated ]; then
        start_linkem "$name" "$spec" "$bin"
    fi
}

cmd_up() {
    local dsl=dsl lte=lte second=0
    while [ $# -gt 0 ]; do
        case $1 in
            --dsl) [ $# -ge 2 ] || die "--dsl needs a profile"; dsl=$2; shift 2 ;;
            --lte) [ $# -ge 2 ] || die "--lte needs a profile"; lte=$2; shift 2 ;;
            --second-client) second=1; shift ;;
            *) die "unknown option $1; usage: lab.sh up [--dsl PROFILE] [--lte PROFILE] [--second-client]" ;;
        esac
    done
    local ns
    for ns in "${NAMESPACES[@]}" "${OPTIONAL_NAMESPACES[@]}"; do
        [ -e "/run/netns/$ns" ] && die "the lab is already up ($ns exists); run scripts/lab.sh down first"
    done
    local bin
    bin=$(linkem_bin)
    # Validate everything before building anything: a bad profile leaves no
    # half-built lab.
    declare -A kind
    local name spec out
    for name in "${LINKS[@]}"; do
        spec=$dsl
        [ "$name" = lte ] && spec=$lte
        out=$("$bin" check "$spec" 2>&1) || die "--$name: ${out#mpbond-linkem: }"
        case $out in *"plain veth"*) kind[$name]=veth ;; *) kind[$name]=emulated ;; esac
    done
    [ -r /proc/sys/net/ipv4/tcp_available_congestion_control ] &&
        grep -qw "$CC" /proc/sys/net/ipv4/tcp_available_congestion_control ||
        die "congestion control $CC is not available here (MPB_CC)"

    # Any failure from here on (a failed command or a die) removes what was
    # built.
    trap 'say "up failed; removing the half-built lab"; cmd_down' EXIT
    mkdir -p "$RUN"
    for ns in "${NAMESPACES[@]}"; do ns_base "$ns"; done
    for ns in mpb-cli mpb-wan; do
        nsx "$ns" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    done

    veth eth0 mpb-lan lan0 mpb-cli "$(mac 0x77 2)" "$(mac 0x77 1)"
    addr mpb-lan eth0 192.168.77.2/24 fd77:77::2/64
    addr mpb-cli lan0 192.168.77.1/24 fd77:77::1/64
    nsx mpb-lan ip route add default via 192.168.77.1
    nsx mpb-lan ip -6 route add default via fd77:77::1

    veth conc0 mpb-wan eth0 mpb-conc "$(mac 9 1)" "$(mac 9 2)"
    addr mpb-wan conc0 10.77.9.1/24 fd77:9::1/64
    addr mpb-conc eth0 10.77.9.2/24 fd77:9::2/64
    nsx mpb-conc ip route add default via 10.77.9.1
    nsx mpb-conc ip -6 route add default via fd77:9::1

    veth srv0 mpb-wan eth0 mpb-srv "$(mac 0x64 1)" "$(mac 0x64 0x10)"
    addr mpb-wan srv0 198.51.100.1/24 2001:db8:100::1/64
    addr mpb-srv eth0 198.51.100.10/24 2001:db8:100::10/64
    nsx mpb-srv ip route add default via 198.51.100.1
    nsx mpb-srv ip -6 route add default via 2001:db8:100::1

    line dsl "${kind[dsl]}" "$dsl" "$bin"
    line lte "${kind[lte]}" "$lte" "$bin"
    nsx mpb-cli ip route add default via 10.77.1.1 dev dsl0 metric 100
    nsx mpb-cli ip route add default via 10.77.2.1 dev lte0 metric 200
    nsx mpb-cli ip -6 route add default via fd77:1::1 dev dsl0 metric 100
    nsx mpb-cli ip -6 route add default via fd77:2::1 dev lte0 metric 200
    nsx mpb-wan ip route add 192.168.77.0/24 via 10.77.1.2
    if [ "$second" = 1 ]; then
        ns_base mpb-cli2
        veth wan0 mpb-cli2 cli2 mpb-wan "$(mac 3 2)" "$(mac 3 1)"
        addr mpb-cli2 wan0 10.77.3.2/24 fd77:3::2/64
        addr mpb-wan cli2 10.77.3.1/24 fd77:3::1/64
        nsx mpb-cli2 ip route add default via 10.77.3.1
        nsx mpb-cli2 ip -6 route add default via fd77:3::1
    fi
    nsx mpb-wan ip -6 route add fd77:77::/64 via fd77:1::2
    for ns in mpb-cli mpb-cli2; do
        [ -e "/run/netns/$ns" ] || continue
        nsx "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=1 net.ipv6.conf.default.accept_dad=1
    done
    # Link-local addresses of what was made with detection on (none
    # today) wait for it; until they are ready, neighbour discovery (and
    # so the first IPv6 packets) stalls for a second or two.
    local i tentative
    for i in $(seq 60); do
        tentative=""
        for ns in "${NAMESPACES[@]}" "${OPTIONAL_NAMESPACES[@]}"; do
            [ -e "/run/netns/$ns" ] || continue
            tentative+=$(nsx "$ns" ip -6 -o addr show tentative)
        done
        [ -z "$tentative" ] && break
        sleep 0.05
    done
    trap - EXIT
    local extra=""
    [ "$second" = 1 ] && extra=" second-client=mpb-cli2"
    say "up: dsl=$dsl lte=$lte congestion-control=$CC$extra"
}

# ---------------------------------------------------------------- link

line_kind() {
    [ -e "/run/netns/mpb-$1" ] && [ -r "$RUN/$1.kind" ] || die "the lab is not up; run scripts/lab.sh up"
    cat "$RUN/$1.kind"
}

cmd_link() {
    [ $# -ge 2 ] || die "usage: lab.sh link dsl|lte down|up|blackhole|set RATE DELAY LOSS [up|down|both]|renumber HOST|unplug|plug"
    local name=$1 action=$2
    shift 2
    case $name in dsl | lte) ;; *) die "unknown link $name; use dsl or lte" ;; esac
    case $action in
        unplug | plug)
            [ $# = 0 ] || die "$action takes no arguments"
            "$action" "$name"
            return
            ;;
    esac
    [ ! -e "$RUN/$name.unplugged" ] || die "link $name is unplugged; plug it first (lab.sh link $name plug)"
    if [ "$action" = renumber ]; then
        renumber "$name" "$@"
        return
    fi
    local kind
    kind=$(line_kind "$name")
    if [ "$kind" = emulated ]; then
        local bin out
        bin=$(linkem_bin)
        case $action in
            down | up | blackhole) [ $# = 0 ] || die "$action takes no arguments" ;;
            set)
                [ $# = 3 ] || [ $# = 4 ] || die "usage: lab.sh link $name set RATE DELAY LOSS [up|down|both]"
                set -- "${4:-both}" "$1" "$2" "$3"
                ;;
            *) die "unknown action $action; use down, up, blackhole or set" ;;
        esac
        out=$("$bin" ctl --control "$RUN/$name.sock" "$action" "$@" 2>&1) || die "link $name $action: ${out#mpbond-linkem: }"
        say "link $name $action $*"
        return
    fi
    # Plain veth: carrier through the wan end. Blackhole at the wan end
    # without tc actions (this kernel has no gact): a tbf whose burst is
    # smaller than any packet drops all egress, and a routing rule drops
    # everything forwarded from the line.
    local dev=${name}0
    case $action in
        down) nsx mpb-wan ip link set "$dev" down ;;
        up)
            nsx mpb-wan tc qdisc del dev "$dev" root 2>/dev/null || true
            nsx mpb-wan ip rule del iif "$dev" blackhole pref 10 2>/dev/null || true
            nsx mpb-wan ip -6 rule del iif "$dev" blackhole pref 10 2>/dev/null || true
            nsx mpb-wan ip link set "$dev" up
            ;;
        blackhole)
            nsx mpb-wan tc qdisc replace dev "$dev" root tbf rate 8kbit burst 1 limit 1
            nsx mpb-wan ip rule del iif "$dev" blackhole pref 10 2>/dev/null || true
            nsx mpb-wan ip -6 rule del iif "$dev" blackhole pref 10 2>/dev/null || true
            nsx mpb-wan ip rule add iif "$dev" blackhole pref 10
            nsx mpb-wan ip -6 rule add iif "$dev" blackhole pref 10
            ;;
        set) die "link $name uses a plain veth (profile none); set needs an emulated profile" ;;
        *) die "unknown action $action; use down, up, blackhole or set" ;;
    esac
    say "link $name $action"
}

# unplug NAME: the client's interface of line NAME (dsl0/lte0 in mpb-cli)
# disappears, as a USB modem pulled out: the interface and its peer are
# deleted (with them its addresses and routes); an emulated line's emulator
# stops (it cannot follow a new interface).
unplug() {
    local name=$1 dev=${1}0 kind pids i
    kind=$(line_kind "$name")
    [ ! -e "$RUN/$name.unplugged" ] || die "link $name is already unplugged"
    if [ "$kind" = emulated ]; then
        pids=$(ip netns pids "mpb-$name")
        [ -z "$pids" ] || kill $pids 2>/dev/null || true
        for i in $(seq 50); do
            [ -z "$(ip netns pids "mpb-$name")" ] && break
            sleep 0.1
        done
        [ -z "$(ip netns pids "mpb-$name")" ] || die "the link emulator of $name did not stop within 5 s"
        rm -f "$RUN/$name.sock"
    fi
    echo "$kind" >"$RUN/$name.unplugged"
    nsx mpb-cli ip link del "$dev"
    say "link $name unplugged: $dev is gone from mpb-cli"
}

# plug NAME: the interface comes back with the same name, MAC and addresses
# (a new interface index), as the modem plugged in again: created, up, its
# addresses (as DHCP would give them), its neighbours pinned, its default
# route in the main table, and the emulator started again with the line's
# profile (changes made with `set`, `down` or `blackhole` are not kept).
plug() {
    local name=$1 n=${LINK_NUM[$1]} dev=${1}0 kind metric=100
    [ "$name" = lte ] && metric=200
    [ -e /run/netns/mpb-cli ] && [ -r "$RUN/$name.profile" ] || die "the lab is not up; run scripts/lab.sh up"
    [ -r "$RUN/$name.unplugged" ] || die "link $name is plugged in; unplug it first"
    kind=$(cat "$RUN/$name.unplugged")
    client_end "$name" "$kind"
    # The line forwards before the client gets its address, as a modem
    # that is online once DHCP answers.
    if [ "$kind" = emulated ]; then
        start_linkem "$name" "$(cat "$RUN/$name.profile")" "$(linkem_bin)"
    fi
    client_addr "$name"
    nsx mpb-cli ip route replace default via "10.77.$n.1" dev "$dev" metric "$metric"
    nsx mpb-cli ip -6 route replace default via "fd77:$n::1" dev "$dev" metric "$metric"
    # A plain veth's wan end was re-created: the LAN's route back is on dsl.
    if [ "$name" = dsl ]; then
        nsx mpb-wan ip route replace 192.168.77.0/24 via 10.77.1.2
        nsx mpb-wan ip -6 route replace fd77:77::/64 via fd77:1::2
    fi
    rm -f "$RUN/$name.unplugged"
    say "link $name plugged in again: $dev is back in mpb-cli"
}

# renumber NAME HOST: the client's IPv4 address on line NAME becomes
# 10.77.N.HOST, the way a DHCP renumbering happens: the old address is
# removed (taking the routes via the line's gateway with it), the new one
# added, the default route put back. The wan end learns the new address's
# MAC at once (pinned, like the first).
renumber() {
    [ $# = 2 ] || die "usage: lab.sh link $1 renumber HOST (2-254)"
    local name=$1 host=$2 n=${LINK_NUM[$1]} dev=${1}0 metric=100
    [ "$name" = lte ] && metric=200
    case $host in '' | *[!0-9]*) die "renumber: HOST must be a number, got '$host'" ;; esac
    [ "$host" -ge 2 ] && [ "$host" -le 254 ] || die "renumber: HOST must be 2-254, got $host"
    [ -e /run/netns/mpb-cli ] || die "the lab is not up; run scripts/lab.sh up"
    local old
    for old in $(nsx mpb-cli ip -4 -o addr show dev "$dev" | awk '{print $4}'); do
        nsx mpb-cli ip addr del "$old" dev "$dev"
    done
    nsx mpb-cli ip addr add "10.77.$n.$host/24" dev "$dev"
    nsx mpb-cli ip route replace default via "10.77.$n.1" dev "$dev" metric "$metric"
    nsx mpb-wan ip neigh replace "10.77.$n.$host" lladdr "$(mac "$n" 2)" dev "$dev" nud permanent
    say "link $name renumbered: 10.77.$n.$host"
}

# ---------------------------------------------------------------- start / stop

# The processes start runs: name, namespace.
DAEMONS=(client client2 concentrator probe)
declare -A DAEMON_NS=([client]=mpb-cli [client2]=mpb-cli2 [concentrator]=mpb-conc [probe]=mpb-srv)

# The probe server (python3, no dependencies): one listener per family, a
# thread per connection. It writes the peer's address and a newline, ends
# its side, and drains what the peer sent (so its close is a FIN, not a
# reset) for at most 2 s.
PROBE_PY='
import selectors, socket, threading
def serve(conn, peer):
    try:
        conn.settimeout(2)
        conn.sendall((peer[0] + "\n").encode())
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):
            pass
    except OSError:
        pass
    finally:
        conn.close()
sel = selectors.DefaultSelector()
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, 7))
    s.listen(128)
    sel.register(s, selectors.EVENT_READ)
print("probe server listening on port 7", flush=True)
while True:
    for key, _ in sel.select():
        conn, peer = key.fileobj.accept()
        if threading.active_count() < 64:
            threading.Thread(target=serve, args=(conn, peer), daemon=True).start()
        else:
            conn.close()
'

# Asks the probe server from namespace NS which address it sees; prints it
# (empty on failure). Bounded: 2 s. It sends a newline first: in the
# client's fast connect mode the tunnel may wait for the LAN host's first
# bytes.
PROBE_CLIENT_PY='
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7), timeout=2) as c:
        c.settimeout(2)
        c.sendall(b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = c.recv(256)
            if not chunk:
                break
            data += chunk
        print(data.decode(errors="replace").strip())
except OSError:
    pass
'

probe() { # NS ADDR
    nsx "$1" timeout 5 python3 -c "$PROBE_CLIENT_PY" "$2" 2>/dev/null || true
}

# The start time of process PID (clock ticks since boot; /proc/PID/stat
# field 22), to tell it from a later process given the same pid.
# running PID: whether process PID is alive. A process that exited is a
# zombie until its parent reaps it, and a daemon's parent is init, which
# here may take two seconds to do so (kill -0 still succeeds meanwhile);
# a zombie holds nothing any more (its sockets, TUN and memory are gone).
running() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) } # the command name may hold spaces
    case ${stat%% *} in Z | X | x) return 1 ;; esac
    return 0
}

proc_start() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) } # the command name may hold spaces
    set -- $stat
    echo "${20}"
}

# The pid of daemon NAME if it runs (pid file present and the process the
# one started), else nothing.
daemon_pid() {
    local pidfile=$RUN/$1.pid pid started
    [ -r "$pidfile" ] || return 0
    read -r pid started <"$pidfile" || true
    [[ ${pid:-} =~ ^[0-9]+$ ]] || return 0
    [ -n "${started:-}" ] && [ "$(proc_start "$pid")" = "$started" ] || return 0
    echo "$pid"
}

log_tail() { # NAME
    local log=$RUN/$1.log
    echo "--- last lines of $log:"
    tail -n 20 "$log" 2>/dev/null || echo "(no log)"
}

# spawn NAME COMMAND...: runs COMMAND in NAME's namespace in the background
# (own session, no inherited lock descriptors), log and pid file in $RUN.
spawn() {
    local name=$1 ns=${DAEMON_NS[$1]}
    shift
    # A restart appends to the log (APPEND=1); a start begins a new one.
    [ "${APPEND:-0}" = 1 ] || : >"$RUN/$name.log"
    ip netns exec "$ns" setsid env NO_COLOR=1 "$@" </dev/null >>"$RUN/$name.log" 2>&1 8>&- 9>&- &
    echo "$! $(proc_start $!)" >"$RUN/$name.pid"
    printf '%q ' "$@" >"$RUN/$name.cmd"
}

# daemon_config NAME: the --config daemon NAME was started with (none for
# the probe server).
daemon_config() {
    local cmdfile=$RUN/$1.cmd prev="" arg args=()
    [ -r "$cmdfile" ] || return 0
    eval "args=($(cat "$cmdfile"))"
    for arg in "${args[@]}"; do
        [ "$prev" = --config ] && { echo "$arg"; return 0; }
        prev=$arg
    done
}

# Fails at once, with its log, if daemon NAME is gone.
check_alive() {
    [ -n "$(daemon_pid "$1")" ] && return 0
    rm -f "$RUN/$1.pid"
    log_tail "$1" >&2
    die "$1 exited during start (log: $RUN/$1.log)"
}

# wait_log NAME PATTERN SECONDS: until PATTERN appears in NAME's log.
wait_log() {
    local i
    for i in $(seq $(($3 * 20))); do
        grep -q "$2" "$RUN/$1.log" 2>/dev/null && return 0
        check_alive "$1"
        sleep 0.05
    done
    log_tail "$1" >&2
    die "$1 did not log \"$2\" within $3 s (log: $RUN/$1.log)"
}

# SIGTERM every daemon, wait up to 10 s, then SIGKILL what is left.
stop_all() {
    local name pid pids=() i left
    for name in "${DAEMONS[@]}"; do
        pid=$(daemon_pid "$name")
        [ -n "$pid" ] || { rm -f "$RUN/$name.pid"; continue; }
        kill -TERM "$pid" 2>/dev/null || true
        pids+=("$name:$pid")
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    for i in $(seq 200); do
        left=()
        for pid in "${pids[@]}"; do
            running "${pid#*:}" && left+=("$pid")
        done
        [ ${#left[@]} -eq 0 ] && break
        sleep 0.05
    done
    for pid in "${left[@]}"; do
        say "${pid%%:*} (pid ${pid#*:}) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "${pid#*:}" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        rm -f "$RUN/${pid%%:*}.pid"
    done
    say "stopped: ${pids[*]%%:*}"
}

# wait_tunnel NAME NS SECONDS: until client NAME's tunnel carries traffic,
# that is, until the probe server sees the concentrator's address for a
# connection from namespace NS.
wait_tunnel() {
    local name=$1 ns=$2 seen="" deadline=$((SECONDS + $3))
    while [ "$SECONDS" -lt "$deadline" ]; do
        check_alive concentrator
        check_alive "$name"
        seen=$(probe "$ns" 198.51.100.10)
        [ "$seen" = 10.77.9.2 ] && return 0
        sleep 0.3
    done
    log_tail "$name" >&2
    log_tail concentrator >&2
    die "$name's tunnel carries no traffic after $3 s: the probe server at 198.51.100.10:7 saw \"${seen:-nothing}\" from $ns, not 10.77.9.2"
}

cmd_start() {
    local client_config=$ROOT/deploy/lab/client.toml
    local conc_config=$ROOT/deploy/lab/concentrator.toml with_client=1
    while [ $# -gt 0 ]; do
        case $1 in
            --client-config) [ $# -ge 2 ] || die "--client-config needs a file"; client_config=$2; shift 2 ;;
            --concentrator-config) [ $# -ge 2 ] || die "--concentrator-config needs a file"; conc_config=$2; shift 2 ;;
            --no-client) with_client=0; shift ;;
            *) die "unknown option $1; usage: lab.sh start [--client-config FILE] [--concentrator-config FILE] [--no-client]" ;;
        esac
    done
    local ns name
    for ns in "${NAMESPACES[@]}"; do
        [ -e "/run/netns/$ns" ] || die "the lab is not up ($ns missing); run scripts/lab.sh up first"
    done
    [ -r "$client_config" ] || die "client config $client_config is not readable"
    [ -r "$conc_config" ] || die "concentrator config $conc_config is not readable"
    for name in "${DAEMONS[@]}"; do
        [ -z "$(daemon_pid "$name")" ] || die "$name is already running; run scripts/lab.sh stop first"
    done
    command -v python3 >/dev/null || die "python3 is missing (the probe server); install it"
    local bin out
    bin=$(mpbond_bin)
    local end
    for end in client client2 concentrator; do
        if [ ! -e "$RUN/$end.key" ]; then
            out=$("$bin" keygen --out "$RUN/$end.key" 2>&1) || die "keygen: ${out#mpbond: }"
        fi
    done

    # Any failure from here on stops what was started.
    trap 'say "start failed; stopping what was started"; stop_all' EXIT
    spawn probe python3 -u -c "$PROBE_PY"
    spawn concentrator "$bin" concentrator --config "$conc_config"
    wait_log probe "probe server listening" 5
    wait_log concentrator "concentrator listening" 5
    if [ "$with_client" = 0 ]; then
        trap - EXIT
        say "started: concentrator ($conc_config) and the probe server; no client"
        return 0
    fi
    local client_env=() word
    read -ra client_env <<<"${MPB_CLIENT_ENV:-}"
    for word in "${client_env[@]}"; do
        [[ $word =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "MPB_CLIENT_ENV: \"$word\" is no VAR=VALUE word"
    done
    spawn client env "${client_env[@]}" "$bin" client --config "$client_config"
    local second=0
    if [ -e /run/netns/mpb-cli2 ]; then
        second=1
        spawn client2 "$bin" client --config "$ROOT/deploy/lab/client2.toml"
    fi

    wait_tunnel client mpb-lan 15
    # With [datagram], also until the datagram tunnel's handshake is done.
    if grep -q '^\[datagram\]' "$client_config"; then
        wait_log client "datagram tunnel up" 10
    fi
    if [ "$second" = 1 ]; then
        wait_tunnel client2 mpb-cli2 15
        wait_log client2 "datagram tunnel up" 10
    fi
    trap - EXIT
    local also=""
    [ "$second" = 1 ] && also=", client2 (deploy/lab/client2.toml)"
    say "started: client ($client_config)$also, concentrator ($conc_config); the tunnel carries traffic"
}

cmd_stop() {
    [ -d "$RUN" ] || { say "nothing to stop (the lab is down)"; return 0; }
    local name any=0
    for name in "${DAEMONS[@]}"; do
        [ -n "$(daemon_pid "$name")" ] && any=1
    done
    [ "$any" = 1 ] || { say "nothing to stop"; rm -f "$RUN"/{client,client2,concentrator,probe}.pid; return 0; }
    stop_all
}

cmd_restart() {
    [ $# = 1 ] || die "usage: lab.sh restart concentrator|client|client2"
    local name=$1 pid i
    case $name in concentrator | client | client2) ;; *) die "cannot restart $name; use concentrator, client or client2" ;; esac
    [ -r "$RUN/$name.cmd" ] || die "$name was never started; run scripts/lab.sh start"
    pid=$(daemon_pid "$name")
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 100); do
            running "$pid" || break
            sleep 0.1
        done
        if running "$pid"; then
            say "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    local skip
    skip=$(wc -l <"$RUN/$name.log" 2>/dev/null || echo 0)
    local APPEND=1
    eval "spawn $name $(cat "$RUN/$name.cmd")"
    if [ "$name" = concentrator ]; then
        for i in $(seq 100); do
            tail -n +"$((skip + 1))" "$RUN/$name.log" | grep -q "concentrator listening" && { say "restarted: $name"; return 0; }
            check_alive "$name"
            sleep 0.05
        done
        die "the concentrator did not listen within 5 s of its restart (log: $RUN/$name.log)"
    fi
    local ns=mpb-lan
    [ "$name" = client2 ] && ns=mpb-cli2
    wait_tunnel "$name" "$ns" 15
    say "restarted: $name"
}

cmd_probe() {
    local ns=${1:-mpb-lan} addr=${2:-198.51.100.10}
    [ -e "/run/netns/$ns" ] || die "no namespace $ns; is the lab up?"
    local seen
    seen=$(probe "$ns" "$addr")
    [ -n "$seen" ] || die "no answer from the probe server at $addr port 7 (from $ns)"
    echo "$seen"
}

# ---------------------------------------------------------------- status

cmd_status() {
    local ns any=0
    for ns in "${NAMESPACES[@]}" "${OPTIONAL_NAMESPACES[@]}"; do
        if [ -e "/run/netns/$ns" ]; then
            any=1
            echo "== $ns"
            nsx "$ns" ip -br addr show | grep -v '^lo ' || true
        elif [[ " ${NAMESPACES[*]} " == *" $ns "* ]]; then
            echo "== $ns (missing)"
        fi
    done
    [ "$any" = 1 ] || { echo "lab is down"; return 0; }
    local name bin pid config
    for name in "${DAEMONS[@]}"; do
        pid=$(daemon_pid "$name")
        if [ -n "$pid" ]; then
            echo "== $name: running in ${DAEMON_NS[$name]}, pid $pid, log $RUN/$name.log"
            config=$(daemon_config "$name")
            # mpbond's own view: uplinks, clients, connections.
            if [ -n "$config" ]; then
                nsx "${DAEMON_NS[$name]}" "$(mpbond_bin)" status --config "$config" | sed 's/^/   /' || true
            fi
        else
            echo "== $name: not running"
        fi
    done
    bin=$(linkem_bin)
    for name in "${LINKS[@]}"; do
        [ -r "$RUN/$name.profile" ] || continue
        echo "== line $name: profile $(cat "$RUN/$name.profile")"
        if [ -S "$RUN/$name.sock" ]; then
            "$bin" ctl --control "$RUN/$name.sock" stats || true
        else
            nsx mpb-wan ip -s -br link show "${name}0" 2>/dev/null || true
        fi
    done
}

# ---------------------------------------------------------------- main

[ $# -ge 1 ] || die "usage: lab.sh up|down|status|link|start|stop|restart|probe ..."
cmd=$1
shift
case $cmd in
    up) need_root; lock; cmd_up "$@" ;;
    down) need_root; lock; cmd_down ;;
    status) need_root; cmd_status ;;
    link) need_root; cmd_link "$@" ;;
    start) need_root; lock; cmd_start "$@" ;;
    stop) need_root; lock; cmd_stop ;;
    restart) need_root; lock; cmd_restart "$@" ;;
    probe) need_root; cmd_probe "$@" ;;
    *) die "unknown command $cmd; use up, down, status, link, start, stop, restart or probe" ;;
esac
