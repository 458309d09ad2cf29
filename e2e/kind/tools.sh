#!/usr/bin/env bash
# Builds the Go tools a kind cluster needs beside the Kubernetes binaries of
# e2e/kube/build.sh: kind itself, etcd, CoreDNS, crictl and the pause
# program, each from its Go module at a pinned version, cached under
# ${TRELLIS_TOOLS_CACHE:-~/.cache/trellis/tools}/NAME/VERSION/NAME. A cached
# tool costs nothing; a fresh clone reuses the cache.
#
#   e2e/kind/tools.sh          # build what is missing; print NAME=PATH lines
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TRELLIS_TOOLS_CACHE:-$HOME/.cache/trellis/tools}"

KIND_VERSION=v0.33.0
COREDNS_VERSION=v1.14.2   # the version kubeadm v1.36 deploys
CRICTL_VERSION=v1.37.0
ETCD_VERSION="$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" { print $3 }' "$here/etcd/go.mod")"
# pause has no upstream module: its version is the tag it is loaded as plus a
# hash of its source, so an edit rebuilds it.
PAUSE_VERSION="3.10.2-$(cat "$here/pause/go.mod" "$here/pause/main.go" | sha256sum | cut -c1-12)"

log() { echo "tools.sh: $*" >&2; }
# Builds share the machine: stay behind interactive work.
renice -n 10 $$ >/dev/null 2>&1 || true

# build NAME VERSION COMMAND...: COMMAND writes the binary to $out.
build() {
  local name=$1 version=$2; shift 2
  local dir="$cache/$name/$version"
  if [[ ! -x "$dir/$name" ]]; then
    command -v go >/dev/null || { log "go is not installed (needed to build $name $version)"; exit 1; }
    mkdir -p "$dir"
    exec 8>"$dir/.build.lock"
    flock 8
    if [[ ! -x "$dir/$name" ]]; then
      log "building $name $version ..."
      local start=$SECONDS
      out="$dir/.$name.tmp.$$"
      CGO_ENABLED=0 "$@"
      mv -f "$out" "$dir/$name"
      log "built $name in $((SECONDS - start)) s"
    fi
    exec 8>&-
  fi
  printf '%s=%s\n' "$(tr 'a-z-' 'A-Z_' <<<"$name")" "$dir/$name"
}

# go install into a temp GOBIN, then move the binary to $out.
go_install() {
  local pkg=$1 bin=$2 tmp
  tmp="$(mktemp -d)"
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$pkg"
  mv "$tmp/$bin" "$out"
  rm -rf "$tmp"
}

go_build_in() {
  local dir=$1 pkg=$2
  (cd "$dir" && go build -trimpath -mod=readonly -ldflags "-s -w" -o "$out" "$pkg")
}

build kind "$KIND_VERSION" go_install "sigs.k8s.io/kind@$KIND_VERSION" kind
build etcd "$ETCD_VERSION" go_build_in "$here/etcd" go.etcd.io/etcd/server/v3
build coredns "$COREDNS_VERSION" go_install "github.com/coredns/coredns@$COREDNS_VERSION" coredns
build crictl "$CRICTL_VERSION" go_install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" crictl
build pause "$PAUSE_VERSION" go_build_in "$here/pause" .
