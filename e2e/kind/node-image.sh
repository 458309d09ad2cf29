#!/usr/bin/env bash
# Builds a kind node image for Kubernetes $KUBE_VERSION without any container
# registry, the way kind's own builders do it but from local parts:
#   1. a debootstrapped Debian rootfs (systemd, containerd, runc, CNI plugins);
#   2. kind's base image files on it (base.Dockerfile);
#   3. one image per control-plane component, from the binaries of
#      e2e/kube/build.sh and e2e/kind/tools.sh;
#   4. the node: the base plus kubeadm/kubelet/kubectl and the component
#      images pre-imported into its containerd (what `kind build node-image`
#      does, minus the pulls that cannot work offline).
# The result is tagged by a key over every input and saved under
# ${TRELLIS_KIND_CACHE:-~/.cache/trellis/kind}/images, so a fresh clone (or a
# Docker without the image) loads it instead of building it again.
#
#   e2e/kind/node-image.sh        # prints the image name; builds or loads it if needed
#   e2e/kind/node-image.sh name   # prints the name only
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
e2e="$(dirname "$here")"
cache="${TRELLIS_KIND_CACHE:-$HOME/.cache/trellis/kind}"
DOCKER="${DOCKER:-docker}"
log() { echo "node-image: $*" >&2; }

KUBE_BIN="$("$e2e/kube/build.sh" node | tail -n1)"
KUBE_VERSION="$(basename "$(dirname "$KUBE_BIN")")"
eval "$("$here/tools.sh")"   # KIND ETCD COREDNS CRICTL PAUSE
ETCD_VERSION="$(basename "$(dirname "$ETCD")")"
COREDNS_VERSION="$(basename "$(dirname "$COREDNS")")"
KIND_DIR="$(go env GOMODCACHE)/sigs.k8s.io/kind@$(basename "$(dirname "$KIND")")"
[[ -d "$KIND_DIR/images/base/files" ]] || (cd "$here/pause" && go mod download "sigs.k8s.io/kind@$(basename "$(dirname "$KIND")")")
# Suite and packages of the node's Debian.
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,e2fsprogs,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins

# Everything the image is made from; a change to any of it is a new image.
key="$(
  {
    echo "$KUBE_VERSION $ETCD $COREDNS $CRICTL $PAUSE $KIND $SUITE $PACKAGES"
    cat "${BASH_SOURCE[0]}"
    find "$here/node" -type f -print0 | sort -z | xargs -0 cat
    find "$KIND_DIR/images/base/files" -type f -print0 | sort -z | xargs -0 cat
  } | sha256sum | cut -c1-12
)"
IMAGE="trellis/kind-node:$KUBE_VERSION-$key"
TAR="$cache/images/kind-node-$KUBE_VERSION-$key.tar"

if [[ "${1:-}" == name ]]; then
  echo "$IMAGE"
  exit 0
fi
if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi
if [[ -f "$TAR" ]]; then
  start=$SECONDS
  "$DOCKER" load -i "$TAR" >/dev/null
  log "loaded $IMAGE from $TAR in $((SECONDS - start)) s"
  echo "$IMAGE"
  exit 0
fi

work="$(mktemp -d /tmp/trellis-node-image.XXXXXX)"
container=""
tags=()
cleanup() {
  [[ -n "$container" ]] && "$DOCKER" rm -f "$container" >/dev/null 2>&1
  ((${#tags[@]})) && "$DOCKER" rmi -f "${tags[@]}" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
total=$SECONDS
step=$SECONDS
lap() { log "$1 in $((SECONDS - step)) s"; step=$SECONDS; }

# 1. rootfs, from the machine's own Debian mirror; cached on its own, so a
#    change to the rest of the recipe does not debootstrap again.
ROOTFS_KEY="$(echo "$SUITE $PACKAGES" | sha256sum | cut -c1-12)"
ROOTFS="trellis/kind-rootfs:$ROOTFS_KEY"
ROOTFS_TAR="$("$here/debian-rootfs.sh" kind-rootfs "$SUITE" "$PACKAGES" "$ROOTFS_KEY")"
"$DOCKER" import - "$ROOTFS" <"$ROOTFS_TAR" >/dev/null
tags+=("$ROOTFS")
lap "rootfs $ROOTFS"

# 2. base: kind's files (modes set here; the legacy builder keeps them) and ours.
ctx="$work/base"
mkdir -p "$ctx"
cp -a "$here/node/root" "$ctx/root"
files="$KIND_DIR/images/base/files"
install -D -m 0755 -t "$ctx/root/usr/local/bin" "$files"/usr/local/bin/* "$CRICTL"
install -D -m 0755 -t "$ctx/root/kind/bin" "$files"/kind/bin/*
install -D -m 0644 -t "$ctx/root/kind" "$files"/kind/README.txt
install -D -m 0644 -t "$ctx/root/LICENSES" "$files"/LICENSES/*
install -D -m 0644 -t "$ctx/root/etc" "$files"/etc/crictl.yaml
install -D -m 0644 -t "$ctx/root/etc/containerd" "$files"/etc/containerd/*
install -D -m 0644 -t "$ctx/root/etc/default" "$files"/etc/default/*
install -D -m 0644 -t "$ctx/root/etc/sysctl.d" "$files"/etc/sysctl.d/*
install -D -m 0644 -t "$ctx/root/etc/systemd/system" "$files"/etc/systemd/system/*.service "$files"/etc/systemd/system/*.slice
install -D -m 0644 -t "$ctx/root/etc/systemd/system/kubelet.service.d" "$files"/etc/systemd/system/kubelet.service.d/*
cp "$here/node/base.Dockerfile" "$ctx/Dockerfile"
BASE="trellis/kind-base:$key"
DOCKER_BUILDKIT=0 "$DOCKER" build -q --build-arg ROOTFS="$ROOTFS" -t "$BASE" "$ctx" >/dev/null
tags+=("$BASE")
lap "base $BASE"

# 3. component images, saved as tars for the node's containerd.
mkdir -p "$work/tars"
component() { # TAG BINARY [ENTRYPOINT]
  local tag=$1 bin=$2 entry=${3:-} dir
  dir="$(mktemp -d "$work/c.XXXXXX")"
  cp "$bin" "$dir/$(basename "$bin")"
  {
    echo "FROM scratch"
    if [[ -n $entry ]]; then
      echo "COPY $(basename "$bin") /$(basename "$bin")"
      echo "ENTRYPOINT [\"/$(basename "$bin")\"]"
    else
      echo "COPY $(basename "$bin") /usr/local/bin/$(basename "$bin")"
      echo "ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    fi
  } >"$dir/Dockerfile"
  DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "$tag" "$dir" >/dev/null
  tags+=("$tag")
}
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  component "registry.k8s.io/$c:$KUBE_VERSION" "$KUBE_BIN/$c"
done
component "registry.k8s.io/etcd:${ETCD_VERSION#v}-0" "$ETCD"
component "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$COREDNS" entrypoint
component "registry.k8s.io/pause:3.10.2" "$PAUSE" entrypoint
"$DOCKER" tag "registry.k8s.io/pause:3.10.2" "registry.k8s.io/pause:3.10"   # kind's sandbox_image
tags+=("registry.k8s.io/pause:3.10")
proxy_ctx="$(mktemp -d "$work/c.XXXXXX")"
cp "$KUBE_BIN/kube-proxy" "$proxy_ctx/"
cp "$here/node/kube-proxy.Dockerfile" "$proxy_ctx/Dockerfile"
# Its first stage is tagged too, so that cleaning up leaves no untagged image behind.
DOCKER_BUILDKIT=0 "$DOCKER" build -q --build-arg ROOTFS="$ROOTFS" --target tools -t "trellis/kind-proxy-tools:$key" "$proxy_ctx" >/dev/null
tags+=("trellis/kind-proxy-tools:$key")
DOCKER_BUILDKIT=0 "$DOCKER" build -q --build-arg ROOTFS="$ROOTFS" -t "registry.k8s.io/kube-proxy:$KUBE_VERSION" "$proxy_ctx" >/dev/null
tags+=("registry.k8s.io/kube-proxy:$KUBE_VERSION")
for t in "${tags[@]}"; do
  case "$t" in registry.k8s.io/*) "$DOCKER" save "$t" >"$work/tars/$(tr '/:' '__' <<<"$t").tar" ;; esac
done
lap "component images ($(du -sh "$work/tars" | cut -f1))"

# 4. the node: binaries, version, and the images imported into containerd.
container="$("$DOCKER" run -d --privileged --entrypoint=sleep "$BASE" infinity)"
for b in kubeadm kubelet kubectl; do
  "$DOCKER" cp "$KUBE_BIN/$b" "$container:/usr/bin/$b"
done
"$DOCKER" exec "$container" sh -c "echo $KUBE_VERSION > /kind/version"
"$DOCKER" exec -d "$container" sh -c 'containerd >/tmp/containerd.log 2>&1 & echo $! >/tmp/containerd.pid; wait'
for _ in $(seq 100); do
  "$DOCKER" exec "$container" ctr version >/dev/null 2>&1 && break
  sleep 0.1
done
for tar in "$work"/tars/*.tar; do
  "$DOCKER" exec -i "$container" ctr -n k8s.io images import --label=io.cri-containerd.pinned=pinned \
    --all-platforms --no-unpack --digests - <"$tar" >/dev/null
done
"$DOCKER" exec "$container" sh -c 'kill "$(cat /tmp/containerd.pid)"; rm -f /tmp/containerd.log /tmp/containerd.pid'
"$DOCKER" commit \
  --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
  --change 'CMD []' "$container" "$IMAGE" >/dev/null
"$DOCKER" rm -f "$container" >/dev/null
container=""
lap "node image"

mkdir -p "$(dirname "$TAR")"
# Older node images of this version are superseded.
rm -f "$cache/images/kind-node-$KUBE_VERSION"-*.tar
"$DOCKER" save "$IMAGE" >"$TAR.tmp"
mv "$TAR.tmp" "$TAR"
lap "saved $TAR ($(du -h "$TAR" | cut -f1))"
log "built $IMAGE in $((SECONDS - total)) s"
echo "$IMAGE"
