#!/usr/bin/env bash
# Build the upstream Kubernetes binaries the e2e control plane needs
# (kube-apiserver, kube-controller-manager, kubectl) from the Go module pinned
# in e2e/kube/go.mod, into a cache dir keyed by version. Skips any binary that
# is already there, so a warm call costs milliseconds.
#
#   e2e/kube/build.sh            # build what is missing, print the bin dir
#   TRELLIS_KUBE_CACHE=/x e2e/kube/build.sh
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
cmds=(kube-apiserver kube-controller-manager kubectl)

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
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
cd "$here"
for c in "${missing[@]}"; do
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
