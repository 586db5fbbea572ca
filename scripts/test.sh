#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root on a fresh Debian machine):
# installs what it needs, then formatting, lints, unit tests and the lab
# integration tests (network namespaces, real sockets, the link emulator),
# then each fuzz target briefly (scripts/fuzz.sh --quick 3).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/deps.sh

[ "$(id -u)" = 0 ] || { echo "test: the lab tests need root; run it as root" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo build --release (the link emulator)"
# Only the lab's link emulator: the tests run the mpbond binary cargo
# builds for them (with the dev-dependencies' features unified in), so a
# plain release build of mpbond would compile the crate a second time for
# nothing (a minute or more on two cores). The same command as the lab
# harness runs, so that it finds the emulator built.
cargo build --locked --release --bin mpbond-linkem
echo "== cargo test --release"
# --workspace: the link emulator (linkem/) is a crate of its own.
# --release: the lab runs the release binaries anyway, so the tests share
# their dependencies' build instead of building every crate a second time
# in debug (minutes on two cores); the seeded simulations run faster too.
# Overflow and debug assertions are still exercised by the fuzz targets'
# debug build below.
# No doc tests (there are none): their empty run would close the output.
status=0
cargo test --release --locked --workspace --lib --bins --tests 2>&1 | tee /tmp/mpbond-test.log || status=$?

# Every fuzz target for a few seconds from its seed corpus, so a parser
# that panics on its own seeds or on what a few seconds find fails here.
# Most of the time is the nightly build of fuzz/ (cached in fuzz/target;
# --quick: unoptimized, no sanitizer, about 2 min from cold).
echo "== fuzz (3 s per target)"
fuzz_status=0
scripts/fuzz.sh --quick 3 || fuzz_status=$?

# As every lab user, under the lab lock: a benchmark may hold the lab now.
exec 8>/run/mpbond-lab-user.lock
flock -w 900 8 || { echo "test: another lab user holds /run/mpbond-lab-user.lock for 15 minutes" >&2; exit 1; }
left=$(ip netns list | awk '/^mpb-/ {print $1}')
if [ -n "$left" ]; then
    echo "test: a test left lab namespaces behind: $left" >&2
    scripts/lab.sh down
    exit 1
fi
# Unit tests make namespaces mpbt-*-PID-N and delete them on drop; one
# whose test process is gone was leaked.
leaked=""
for ns in $(ip netns list | awk '/^mpbt-/ {print $1}'); do
    pid=$(echo "$ns" | awk -F- '{print $(NF-1)}')
    [ -d "/proc/$pid" ] || leaked="$leaked $ns"
done
if [ -n "$leaked" ]; then
    echo "test: a unit test left namespaces behind:$leaked" >&2
    for ns in $leaked; do ip netns del "$ns"; done
    exit 1
fi
awk '/^test result:/ {p += $4; f += $6} END {printf "%d passed, %d failed\n", p, f}' /tmp/mpbond-test.log
[ "$fuzz_status" = 0 ] || echo "test: a fuzz target failed (table above)" >&2
[ "$status" = 0 ] || exit "$status"
exit "$fuzz_status"
