#!/usr/bin/env bash
# A minimal Debian rootfs with some packages, debootstrapped from the
# machine's own apt mirror (no container registry needed), as a gzipped tar
# cached under ${TRELLIS_KIND_CACHE:-~/.cache/trellis/kind}/images. The kind
# node image (node-image.sh) and the shop's infrastructure images
# (e2e/images/debian-image.sh) start from one.
#
#   e2e/kind/debian-rootfs.sh NAME SUITE PACKAGES KEY [APT_PACKAGE...]
#                                   # prints the tar's path; builds it if missing
#
# PACKAGES is debootstrap's comma-separated --include list. APT_PACKAGEs are
# installed afterwards with apt-get in the chroot (no recommends, no service
# started), for packages whose dependencies debootstrap cannot resolve
# (alternatives, `:any`). KEY names what the rootfs is made of (a hash of the
# package list, or of their versions); a new KEY replaces the older tars of NAME.
set -euo pipefail

name=$1 suite=$2 packages=$3 key=$4
shift 4
cache="${TRELLIS_KIND_CACHE:-$HOME/.cache/trellis/kind}"
tar="$cache/images/$name-$suite-$key.tar.gz"
log() { echo "debian-rootfs: $*" >&2; }

if [[ -f "$tar" ]]; then
  echo "$tar"
  exit 0
fi
mkdir -p "$(dirname "$tar")"
exec 9>"$tar.lock"
flock 9
if [[ ! -f "$tar" ]]; then
  work="$(mktemp -d /tmp/trellis-rootfs.XXXXXX)"
  trap 'rm -rf "$work"' EXIT
  mirror="$(awk '/^URIs:/ { print $2; exit } /^deb / { print $2; exit }' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n1)"
  mirror="${TRELLIS_KIND_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
  log "debootstrap $suite ($packages) from $mirror ..."
  start=$SECONDS
  debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
  if (($#)); then
    log "apt-get install $* ..."
    r="$work/rootfs"
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod 0755 "$r/usr/sbin/policy-rc.d"
    cp -L /etc/resolv.conf "$r/etc/resolv.conf"
    mount -t proc proc "$r/proc"
    trap 'umount "$work/rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
    chroot "$r" /bin/sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $*" \
      >>"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
    umount "$r/proc"
    rm -f "$r/usr/sbin/policy-rc.d" "$r/etc/resolv.conf"
  fi
  rm -rf "$work/rootfs/var/cache/apt/archives"/*.deb "$work/rootfs/var/lib/apt/lists"/*
  rm -f "$cache/images/$name-$suite"-*.tar.gz
  tar -C "$work/rootfs" -c . | gzip -1 >"$tar.tmp"
  mv "$tar.tmp" "$tar"
  log "$tar in $((SECONDS - start)) s ($(du -h "$tar" | cut -f1))"
fi
echo "$tar"
