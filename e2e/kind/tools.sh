#!/usr/bin/env bash
# Builds the Go tools a kind cluster needs beside the Kubernetes binaries of
# e2e/kube/build.sh: kind itself, etcd, CoreDNS, crictl and the pause
# program; and, when named, the delivery tools helm and Jaeger. Each comes
# from its Go module at a pinned version, cached under
# ${TRELLIS_TOOLS_CACHE:-~/.cache/trellis/tools}/NAME/VERSION/NAME. A cached
# tool costs nothing; a fresh clone reuses the cache.
#
#   e2e/kind/tools.sh              # the kind tools: build what is missing; print NAME=PATH lines
#   e2e/kind/tools.sh helm jaeger  # only the tools named
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TRELLIS_TOOLS_CACHE:-$HOME/.cache/trellis/tools}"

KIND_VERSION=v0.33.0
COREDNS_VERSION=v1.14.2   # the version kubeadm v1.36 deploys
CRICTL_VERSION=v1.37.0
HELM_VERSION=v3.22.0
# The Kubernetes version helm assumes without a cluster (`helm template`,
# lint): its client-go's, v0.37 -> 1.37, as helm's own Makefile sets it.
HELM_KUBE_MINOR=37
JAEGER_VERSION="$(awk '$1 == "require" && $2 == "github.com/jaegertracing/jaeger" { print $3 }' "$here/jaeger/go.mod")"
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
# LDFLAGS adds to the linker flags (version stamps).
go_install() {
  local pkg=$1 bin=$2 tmp
  tmp="$(mktemp -d)"
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w ${LDFLAGS:-}" "$pkg"
  mv "$tmp/$bin" "$out"
  rm -rf "$tmp"
}

go_build_in() {
  local dir=$1 pkg=$2
  (cd "$dir" && go build -trimpath -mod=readonly -ldflags "-s -w" -o "$out" "$pkg")
}

build_named() {
  case $1 in
    kind) build kind "$KIND_VERSION" go_install "sigs.k8s.io/kind@$KIND_VERSION" kind ;;
    etcd) build etcd "$ETCD_VERSION" go_build_in "$here/etcd" go.etcd.io/etcd/server/v3 ;;
    coredns) build coredns "$COREDNS_VERSION" go_install "github.com/coredns/coredns@$COREDNS_VERSION" coredns ;;
    crictl) build crictl "$CRICTL_VERSION" go_install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION" crictl ;;
    pause) build pause "$PAUSE_VERSION" go_build_in "$here/pause" . ;;
    helm)
      LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION
        -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_KUBE_MINOR
        -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_KUBE_MINOR" \
        build helm "$HELM_VERSION" go_install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" helm
      ;;
    jaeger) build jaeger "$JAEGER_VERSION" go_build_in "$here/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger ;;
    *) log "unknown tool $1 (kind, etcd, coredns, crictl, pause, helm, jaeger)"; exit 2 ;;
  esac
}

names=("$@")
((${#names[@]})) || names=(kind etcd coredns crictl pause)
for name in "${names[@]}"; do build_named "$name"; done
