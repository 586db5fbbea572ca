#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (cargo-fuzz, libFuzzer, nightly Rust): each
# one, or the ones named, for SECONDS (default 60), one after the other,
# then prints a table of target, executions and result.
#
#   scripts/fuzz.sh [--quick] [--runs N] [SECONDS] [TARGET...]
#       --runs N: stop a target after N executions (still at most SECONDS).
#       --quick: an unoptimized build without AddressSanitizer (cargo fuzz
#       --dev --sanitizer none): about 2 min to build from cold instead of
#       about 5, slower per input; for the test command's smoke run (the
#       fuzzed code has no unsafe, so the sanitizer finds little more).
#
# Each target starts from its seed corpus fuzz/corpus/TARGET, copied to a
# scratch directory first: what the fuzzer adds does not end up in the
# repository. An input that crashes a target (a panic, a failed assertion,
# a timeout of 10 s, more than 2 GiB of memory) is kept in
# fuzz/artifacts/TARGET/ (untracked) and the script exits non-zero;
# reproduce it with `cargo +nightly fuzz run TARGET FILE` in fuzz/.
#
# Installs what it needs: a nightly toolchain (rustup) and cargo-fuzz.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/deps.sh

runs=""
build=()
if [ "${1:-}" = "--quick" ]; then
    build=(--dev --sanitizer none)
    shift
fi
if [ "${1:-}" = "--runs" ]; then
    runs=${2:?"fuzz: --runs needs a number"}
    shift 2
fi
seconds=${1:-60}
[ $# -gt 0 ] && shift
case "$seconds" in
    '' | *[!0-9]*) echo "fuzz: SECONDS must be a whole number, not '$seconds'" >&2; exit 2 ;;
esac

# The fuzz crate alone needs nightly (libFuzzer's instrumentation); the
# product builds with stable.
if ! command -v rustup >/dev/null; then
    echo "fuzz: needs rustup for a nightly toolchain (https://rustup.rs)" >&2
    exit 1
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "deps: installing the nightly Rust toolchain" >&2
    rustup toolchain install nightly --profile minimal >/dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "deps: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz >/dev/null
fi

cd fuzz
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One build of every target first: they share the crate, and a build
# error is not a crash.
echo "== cargo +nightly fuzz build"
started=$SECONDS
if ! cargo +nightly fuzz build "${build[@]}" >/dev/null 2>/tmp/mpbond-fuzz-build.log; then
    tail -30 /tmp/mpbond-fuzz-build.log >&2
    echo "fuzz: the fuzz targets do not build (log: /tmp/mpbond-fuzz-build.log)" >&2
    exit 1
fi
echo "built in $((SECONDS - started)) s"

scratch=$(mktemp -d /tmp/mpbond-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

failed=0
rows=()
for target in "${targets[@]}"; do
    mkdir -p "$scratch/$target"
    if [ -d "corpus/$target" ]; then
        cp -r "corpus/$target/." "$scratch/$target/"
    fi
    log="$scratch/$target.log"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
    [ -n "$runs" ] && args+=(-runs="$runs")
    echo "== fuzz $target (${seconds} s${runs:+, at most $runs runs})"
    status=0
    cargo +nightly fuzz run "${build[@]}" "$target" "$scratch/$target" -- "${args[@]}" </dev/null >"$log" 2>&1 || status=$?
    execs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log" | tail -1)
    if [ "$status" = 0 ]; then
        result=ok
    else
        failed=1
        artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
        kept="fuzz/artifacts/$target/$target.log"
        mkdir -p "artifacts/$target"
        cp "$log" "artifacts/$target/$target.log"
        if [ -n "$artifact" ]; then
            result="CRASH: input fuzz/${artifact#./}, log $kept"
        else
            result="FAILED (exit $status): log $kept"
        fi
        grep -m1 -A8 -E "panicked at|ERROR: libFuzzer" "$log" >&2 || tail -20 "$log" >&2
    fi
    rows+=("$(printf '%-10s %14s  %s' "$target" "${execs:-?}" "$result")")
done

echo
printf '%-10s %14s  %s\n' target executions result
printf '%s\n' "${rows[@]}"
exit "$failed"
