#!/usr/bin/env bash
# The whole shop with its sidecars on this machine: installs what it needs
# (RabbitMQ, protoc, a C toolchain; Debian packages), builds `trellis` and
# runs `trellis dev`, which builds the services and the sidecar, starts
# RabbitMQ, every service with its own trellis-proxy, and a status page.
# Ctrl-C stops everything.
#
#   bash scripts/dev.sh                      # examples/shop + examples/policies
#   bash scripts/dev.sh --load 10            # with shop traffic, 10 flows/s
#   bash scripts/dev.sh --load --chaos payments=50%
#   bash scripts/dev.sh my/manifests/        # any MeshService/ResiliencePolicy YAML
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1m== %s\033[0m\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  cat >&2 <<'MSG'
Rust is not installed. Install it with rustup (Debian's own rustc is too old), then run this again:
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
  . "$HOME/.cargo/env"
MSG
  exit 1
fi

if [[ $(id -u) == 0 ]]; then
  say "installing Debian packages (rabbitmq-server, protobuf-compiler, build tools) if missing"
  bash .ci/install.sh rabbitmq-server protobuf-compiler build-essential pkg-config
else
  missing=()
  for pkg in rabbitmq-server protobuf-compiler build-essential pkg-config; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    echo "missing Debian packages; install them as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

say "building trellis (cargo build --release -p trellis-cli; the first build takes minutes)"
cargo build --release -p trellis-cli
exec cargo run --release -q -p trellis-cli -- dev "$@"
