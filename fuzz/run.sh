#!/bin/sh
# Runs every fuzz target for a bounded time: `fuzz/run.sh [seconds-per-target] [target...]`
# (default 60 s each, all targets). Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and
# a nightly toolchain; without one, the stable toolchain is told to accept nightly flags
# (RUSTC_BOOTSTRAP=1: cargo-fuzz passes -Z options). `FUZZ_SANITIZER` (default address)
# is handed to cargo-fuzz: `none` where ASan is unavailable. Seeds are in fuzz/corpus/<target>/ (checked in); what a run
# adds goes to fuzz/corpus-new/<target>/ (ignored), crashes to fuzz/artifacts/<target>/.
set -eu
cd "$(dirname "$0")"
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^vc-fuzz$')}
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz() { cargo +nightly fuzz "$@"; }
else
    fuzz() { RUSTC_BOOTSTRAP=1 cargo fuzz "$@"; }
fi
sanitizer=${FUZZ_SANITIZER:-address}
fuzz build --sanitizer "$sanitizer"
failed=0
for t in $targets; do
    mkdir -p "corpus-new/$t"
    echo "== $t for ${secs}s"
    if ! fuzz run --sanitizer "$sanitizer" "$t" "corpus-new/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        echo "!! $t failed (see fuzz/artifacts/$t)"
        failed=1
    fi
done
exit $failed
