#!/usr/bin/env bash
# Every side-by-side benchmark in one command (issue 13), each against its baseline in the same
# run: TURN vs coturn (coturn's turnutils_uclient through ../shared/turn-bench), signaling vs
# the Node.js `ws` reference router (../shared/signaling-baseline), the control API on SQLite
# and Postgres, and TLS/QUIC (issue 10: idle WS/WSS/QUIC camera links, TURN over TLS vs coturn
# over TLS, `tls_load`). Writes one markdown report with the date, commit and machine:
#
#   benches/run-all.sh [-r REPS] [-o DIR] [--quick] [--only turn,signaling,control,tls]
#
# REPS (default 3) runs of each; the report gives medians with min-max. --quick: 1 rep, short
# phases (a smoke run of the whole command, not figures to quote). Speed is never asserted:
# this reports, it does not pass or fail on numbers. Run it on a quiet box: it prints the load
# average before each part and turn-bench waits for a quiet machine itself.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
reps=3
quick=0
only="turn,signaling,control,tls"
out="${TMPDIR:-/tmp}/vc-bench-$(date -u +%Y%m%dT%H%M%SZ)"
while [ $# -gt 0 ]; do
  case "$1" in
    -r) reps=$2; shift 2 ;;
    -o) out=$2; shift 2 ;;
    --quick) quick=1; reps=1; shift ;;
    --only) only=$2; shift 2 ;;
    *) echo "usage: $0 [-r REPS] [-o DIR] [--quick] [--only turn,signaling,control,tls]" >&2; exit 2 ;;
  esac
done
kit="$root/../shared"
mkdir -p "$out"
report="$out/report.md"
want() { [[ ",$only," == *",$1,"* ]]; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

cargo build --release --locked -p relay -p control -p vc-benches --bins
bin="$root/target/release"

{
  echo "# VisionConnect benchmarks"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "- commit: $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)')"
  echo "- machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr)"
  echo "- runs: $reps per benchmark (medians, min-max in brackets)$( [ $quick = 1 ] && echo '; QUICK smoke run, not figures to quote')"
} > "$report"

# `repeated NAME TITLE CMD...`: CMD $reps times into $out/NAME-<i>.md, then one section of
# medians in the report, headed with the load average taken before the first run.
repeated() {
  local name=$1 title=$2 at_start
  shift 2
  at_start=$(load)
  echo "$name (load average $at_start)" >&2
  local runs=()
  for i in $(seq 1 "$reps"); do
    "$@" > "$out/$name-$i.md"
    runs+=("$out/$name-$i.md")
  done
  { echo; echo "## $title (load average at start $at_start)";
    python3 "$root/benches/scripts/median_tables.py" "${runs[@]}"; } >> "$report"
}

if want signaling; then
  if [ $quick = 1 ]; then sargs=(--idle 1000 --pairs 100 --rates 20000 --secs 2)
  else sargs=(--idle 1000,10000 --pairs 100,1000 --rates 20000,50000 --secs 5); fi
  repeated signaling "Signaling: vc-relay vs the Node.js ws reference router" \
    "$bin/signaling_load" "${sargs[@]}" --baseline "$kit/signaling-baseline"
fi

if want control; then
  secs=$([ $quick = 1 ] && echo 2 || echo 5)
  repeated control "Control API" "$bin/control_load" --db both --seconds "$secs" --concurrency 32
fi

if want turn; then
  echo "TURN vs coturn (load average $(load))" >&2
  command -v turnutils_uclient >/dev/null || { echo "coturn is not installed (apt-get install coturn)" >&2; exit 1; }
  cat > "$out/relay.toml" <<'TOML'
ticket_secret = "benchsecret-benchsecret-benchsecret"
admin_listen = "127.0.0.1:0"
drain_secs = 0
[turn]
listen = "127.0.0.1:3479"
realm = "vc.test"
users = ["bench:bench"]
allow_loopback_peers = true
user_quota = 0
[signaling]
listen = "127.0.0.1:0"
control_url = ""
TOML
  variants=$([ $quick = 1 ] && echo "a b" || echo "a b c as bs cs y p ps")
  # A quick run does not wait long for a quiet box (its figures are not to be quoted anyway).
  [ $quick = 1 ] && export QUIET_WAIT=${QUIET_WAIT:-5} NOISY_RETRIES=${NOISY_RETRIES:-0}
  (cd "$kit/turn-bench" && ./bench.sh -r "$reps" -v "$variants" -o "$out/turn" \
     -t coturn=coturn \
     -t vc-relay="cmd:127.0.0.1:3479:$bin/vc-relay --config $out/relay.toml") > "$out/turn.log" 2>&1 \
     || { echo "turn-bench failed, see $out/turn.log" >&2; exit 1; }
  { echo; echo "## TURN: vc-relay vs coturn (turnutils_uclient, turn-bench kit)"; echo;
    cat "$out/turn/summary.md" 2>/dev/null || tail -40 "$out/turn.log"; } >> "$report"
fi

if want tls; then
  # tls_load runs its reps itself (interleaved, fresh relay per run) and prints medians.
  echo "TLS and QUIC (load average $(load))" >&2
  command -v turnserver >/dev/null || { echo "coturn is not installed (apt-get install coturn)" >&2; exit 1; }
  if [ $quick = 1 ]; then targs=(--n 1000 --hold 5 --variants a,b --reps 1)
  else targs=(--reps "$reps"); fi
  "$bin/tls_load" "${targs[@]}" > "$out/tls.md"
  { echo; sed 's/^#/##/' "$out/tls.md"; } >> "$report"
fi

echo "report: $report" >&2
cat "$report"
