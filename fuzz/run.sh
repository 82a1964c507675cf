#!/bin/sh
# Runs every fuzz target for a bounded time: `fuzz/run.sh [seconds-per-target] [target...]`
# (default 60 s each, all targets). Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Seeds are in fuzz/corpus/<target>/ (checked in); what a run
# adds goes to fuzz/corpus-new/<target>/ (ignored), crashes to fuzz/artifacts/<target>/.
set -eu
cd "$(dirname "$0")"
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^vc-fuzz$')}
cargo +nightly fuzz build
failed=0
for t in $targets; do
    mkdir -p "corpus-new/$t"
    echo "== $t for ${secs}s"
    if ! cargo +nightly fuzz run "$t" "corpus-new/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        echo "!! $t failed (see fuzz/artifacts/$t)"
        failed=1
    fi
done
exit $failed
