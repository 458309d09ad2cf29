#!/usr/bin/env bash
# Proxy overhead benchmark: direct vs trellis-proxy vs HAProxy vs a sidecar pair.
#   bench/proxy-overhead/run.sh            full run (20 s per point, ~25 min)
#   bench/proxy-overhead/run.sh --quick    sanity run (~2.5 s per point, ~3 min)
# Extra flags go to the driver (see `proxy-overhead --help`). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v haproxy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing haproxy (Debian package)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  else
    echo "haproxy not found: the haproxy arm will be skipped" >&2
  fi
fi

cargo build --release -p trellis-proxy -p trellis-bench-proxy-overhead
bin="${CARGO_TARGET_DIR:-target}/release"
exec "$bin/proxy-overhead" --proxy-bin "$bin/trellis-proxy" "$@"
