#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root on a fresh Debian machine):
# installs what it needs, then formatting, lints, unit tests and the lab
# integration tests (network namespaces, real sockets, the link emulator).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/deps.sh

[ "$(id -u)" = 0 ] || { echo "test: the lab tests need root; run as root (sudo scripts/test.sh)" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo build --release"
cargo build --locked --release
echo "== cargo test"
cargo test --locked

left=$(ip netns list | awk '/^mpb-/ {print $1}')
if [ -n "$left" ]; then
    echo "test: a test left lab namespaces behind: $left" >&2
    scripts/lab.sh down
    exit 1
fi
