#!/usr/bin/env bash
# Installs what mpbond's scripts, tests and benchmarks need on Debian (as
# root), and puts cargo on PATH. Source it (`. scripts/deps.sh`) so the PATH
# change sticks; it does nothing when everything is already there.

_mpb_pkgs=(iproute2 ethtool iperf3 iputils-ping procps psmisc util-linux python3 gcc libc6-dev ca-certificates mptcpize nftables dnsmasq-base tcpdump faketime)
# The package (scripts/package.sh, tests/package.rs): dpkg-shlibdeps
# (dpkg-dev) for its dependencies, systemd-analyze (systemd) to verify the
# units, man (man-db) for the man pages they name. cargo-deb itself comes
# from crates.io (scripts/package.sh).
_mpb_pkgs+=(dpkg-dev systemd man-db)
# Userspace WireGuard, bench.sh udp's baseline. Without recommends:
# wireguard-tools recommends the kernel module, which apt satisfies with a
# whole kernel image (and initramfs-tools, udev, ...).
# prometheus: promtool checks the metrics (tests/status.rs); without
# recommends, which would add the node exporter.
# chromium: the status page test loads the page in headless Chromium
# (tests/status.rs); without recommends (udev, upower, printing, ...).
_mpb_norec=(wireguard-go wireguard-tools prometheus chromium)
_mpb_missing=()
_mpb_missing_norec=()
for _p in "${_mpb_pkgs[@]}"; do
    dpkg -s "$_p" >/dev/null 2>&1 || _mpb_missing+=("$_p")
done
for _p in "${_mpb_norec[@]}"; do
    dpkg -s "$_p" >/dev/null 2>&1 || _mpb_missing_norec+=("$_p")
done
if [ ${#_mpb_missing[@]} -gt 0 ] || [ ${#_mpb_missing_norec[@]} -gt 0 ]; then
    echo "deps: installing ${_mpb_missing[*]} ${_mpb_missing_norec[*]}" >&2
    apt-get update -qq
fi
if [ ${#_mpb_missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${_mpb_missing[@]}" >/dev/null
fi
if [ ${#_mpb_missing_norec[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${_mpb_missing_norec[@]}" >/dev/null
fi
unset _p _mpb_pkgs _mpb_norec _mpb_missing _mpb_missing_norec

# Rust: the rustup toolchain when there is one (also under sudo, whose PATH
# lacks ~/.cargo/bin), else Debian's packages.
if ! command -v cargo >/dev/null; then
    for _home in "$HOME" /root; do
        if [ -x "$_home/.cargo/bin/cargo" ]; then
            export PATH="$_home/.cargo/bin:$PATH"
            break
        fi
    done
    unset _home
fi
if ! command -v cargo >/dev/null; then
    echo "deps: installing Debian's Rust toolchain" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc rustfmt rust-clippy >/dev/null ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc >/dev/null
fi
if command -v rustup >/dev/null; then
    for _c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$_c" || rustup component add "$_c" >/dev/null 2>&1 || true
    done
    unset _c
fi
