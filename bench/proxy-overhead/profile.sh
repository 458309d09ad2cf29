#!/usr/bin/env bash
# Where trellis-proxy spends its instructions, under the benchmark's load.
#
#   bench/proxy-overhead/profile.sh [--protocols h1,h2] [--rate 200] [--out DIR]
#
# Runs the `trellis` (one hop: outbound) and `pair` (outbound + inbound) arms
# of proxy-overhead with every trellis-proxy under callgrind, twice per
# protocol: a short and a long run at the same rate. Instructions per request
# = (long − short) / (requests long − requests short), so start-up, warm-up
# and shutdown cancel out. Callgrind counts user-space instructions only, so
# other load on the machine does not change them (the kernel's share: perf).
# Prints instructions per request per role, and the top functions (self
# cost) of each long run; the raw profiles stay in --out for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/../.."

protocols=h1,h2
rate=200
short=4
long=12
out=""
while (($#)); do
  case $1 in
    --protocols) protocols=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
done
out="${out:-$(mktemp -d /tmp/trellis-profile.XXXXXX)}"
mkdir -p "$out"

command -v valgrind >/dev/null 2>&1 || {
  echo "valgrind not found (apt-get install valgrind)" >&2
  exit 1
}
cargo build --release -p trellis-proxy -p trellis-bench-proxy-overhead >&2
bin="${CARGO_TARGET_DIR:-target}/release"

# run PROTO SECONDS: one profiled run; profiles in $out/PROTO-SECONDS-ROLE.cg
run() {
  "$bin/proxy-overhead" --proxy-bin "$bin/trellis-proxy" \
    --arms trellis,pair --protocols "$1" --sizes 10 --rates "$rate" \
    --warmup 1 --seconds "$2" \
    --proxy-wrapper "valgrind --tool=callgrind --callgrind-out-file=$out/$1-$2-%q{TRELLIS_BENCH_PROXY}.cg" \
    >"$out/$1-$2.table" 2>"$out/$1-$2.log"
}

total() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }

for proto in ${protocols//,/ }; do
  echo "profiling $proto at $rate req/s: ${short} s and ${long} s runs" >&2
  run "$proto" "$short"
  run "$proto" "$long"
  n=$((rate * (long - short)))
  echo "## $proto, $rate req/s, 10-byte bodies"
  echo
  echo "| proxy | role | instructions per request |"
  echo "|---|---|---|"
  for role in one:outbound client:outbound server:inbound; do
    name=${role%%:*}
    a=$(total "$out/$proto-$short-$name.cg")
    b=$(total "$out/$proto-$long-$name.cg")
    arm=$([[ $name == one ]] && echo "trellis (one hop)" || echo "pair $name")
    echo "| $arm | ${role#*:} | $(((b - a) / n)) |"
  done
  echo
  for name in one server; do
    echo "Top functions, $name ($proto, ${long} s run, self cost):"
    echo
    echo '```'
    callgrind_annotate --inclusive=no --threshold=90 "$out/$proto-$long-$name.cg" 2>/dev/null |
      grep -E '^ *[0-9,]+ \(' | head -25 || true
    echo '```'
    echo
  done
done
echo "profiles and logs: $out" >&2
