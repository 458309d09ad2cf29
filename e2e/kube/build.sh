#!/usr/bin/env bash
# Build upstream Kubernetes binaries from the Go module pinned in
# e2e/kube/go.mod, into a cache dir keyed by version. Skips any binary that is
# already there, so a warm call costs milliseconds.
#
#   e2e/kube/build.sh            # the test control plane's: kube-apiserver, kube-controller-manager, kubectl
#   e2e/kube/build.sh node       # those plus a kind node's: kubeadm, kubelet, kube-scheduler, kube-proxy
#   e2e/kube/build.sh kubelet    # just the commands named
#   TRELLIS_KUBE_CACHE=/x e2e/kube/build.sh
#
# Prints the bin dir.
#
# The Go build cache and module cache stay in their default locations.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Single source of truth for the version: the require line in go.mod.
KUBE_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" { print $3 }' "$here/go.mod")"
if [[ -z "$KUBE_VERSION" ]]; then
  echo "build.sh: cannot read the k8s.io/kubernetes version from $here/go.mod" >&2
  exit 1
fi
minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"

cache="${TRELLIS_KUBE_CACHE:-$HOME/.cache/trellis/kube}"
bindir="$cache/$KUBE_VERSION/bin"
control_plane=(kube-apiserver kube-controller-manager kubectl)
cmds=()
for arg in "$@"; do
  case "$arg" in
    node) cmds+=("${control_plane[@]}" kubeadm kubelet kube-scheduler kube-proxy) ;;
    kube-apiserver | kube-controller-manager | kubectl | kubeadm | kubelet | kube-scheduler | kube-proxy) cmds+=("$arg") ;;
    *) echo "build.sh: unknown command $arg (want node or a command of e2e/kube/tools.go)" >&2; exit 2 ;;
  esac
done
((${#cmds[@]})) || cmds=("${control_plane[@]}")

missing=()
for c in "${cmds[@]}"; do
  [[ -x "$bindir/$c" ]] || missing+=("$c")
done
if ((${#missing[@]} == 0)); then
  echo "$bindir"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: go is not installed (need Go >= 1.26 to build Kubernetes $KUBE_VERSION)" >&2
  exit 1
fi
gov="$(go env GOVERSION)"; gov="${gov#go}"
gomaj="${gov%%.*}"; gomin="${gov#*.}"; gomin="${gomin%%.*}"
if ((gomaj == 1 && gomin < 26)); then
  echo "build.sh: Go $gov is too old; Kubernetes $KUBE_VERSION needs Go >= 1.26" >&2
  exit 1
fi
# Go >= 1.27 enables the jsonv2 experiment by default, which breaks the 1.36
# API server's OpenAPI handler ("$root has invalid property: Extensions").
if ((gomaj > 1 || gomin >= 27)); then
  case ",${GOEXPERIMENT:-}," in
    *,nojsonv2,*) ;;
    *) export GOEXPERIMENT="${GOEXPERIMENT:+$GOEXPERIMENT,}nojsonv2" ;;
  esac
fi

mkdir -p "$bindir"
# One build at a time per cache (CI and a developer's shell may share it);
# whoever waited rebuilds only what is still missing.
exec 9>"$bindir/.build.lock"
flock 9
still=()
for c in "${missing[@]}"; do
  [[ -x "$bindir/$c" ]] || still+=("$c")
done
missing=("${still[@]}")
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
cd "$here"
for c in "${missing[@]+"${missing[@]}"}"; do
  echo "build.sh: building $c $KUBE_VERSION (Go $gov${GOEXPERIMENT:+, GOEXPERIMENT=$GOEXPERIMENT}) ..." >&2
  start=$SECONDS
  # Build to a temp name and rename, so an interrupted build never leaves a
  # half-written binary that a later run would take as cached.
  CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -trimpath -ldflags "$ldflags" \
    -o "$bindir/.$c.tmp.$$" "k8s.io/kubernetes/cmd/$c"
  mv -f "$bindir/.$c.tmp.$$" "$bindir/$c"
  echo "build.sh: built $c in $((SECONDS - start)) s" >&2
done
echo "$bindir"
