#!/usr/bin/env bash
# Builds the shop's infrastructure images, RabbitMQ and PostgreSQL, from
# Debian's packages with no registry: a minimal bookworm rootfs with the
# server installed (e2e/kind/debian-rootfs.sh, cached by the packages'
# versions), pruned of docs and of what the server never loads, with our
# entrypoint (e2e/images/NAME/entrypoint.sh), running as the package's own
# non-root user by its numeric id.
#
#   e2e/images/debian-image.sh rabbitmq   # prints trellis/rabbitmq:${TRELLIS_IMAGE_TAG:-dev}
#   e2e/images/debian-image.sh postgres
#
# The image carries the label trellis.image.key (package versions, this script,
# the entrypoint); an image with the current key is not built again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$(dirname "$here")")"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
TAG="${TRELLIS_IMAGE_TAG:-dev}"
SUITE=bookworm
log() { echo "debian-image: $*" >&2; }

name=${1:?usage: $0 rabbitmq|postgres}
case $name in
  rabbitmq)
    packages=(rabbitmq-server)
    user=rabbitmq
    ports=(5672)
    # Each container makes its own Erlang cookie.
    prune=(var/lib/rabbitmq/.erlang.cookie)
    ;;
  postgres)
    packages=(postgresql-15)
    user=postgres
    ports=(5432)
    # The JIT (LLVM and its z3, 130 MB) is off (jit=off); the cluster the
    # package made at install is replaced by the entrypoint's initdb; perl
    # serves only postgresql-common's cluster scripts, which it does not use.
    prune=(usr/lib/postgresql/*/lib/llvmjit* usr/lib/postgresql/*/lib/bitcode usr/lib/x86_64-linux-gnu/libLLVM*
      usr/lib/x86_64-linux-gnu/libz3* usr/share/perl usr/lib/x86_64-linux-gnu/perl var/lib/postgresql/* etc/postgresql/*)
    ;;
  *) log "unknown image $name (known: rabbitmq postgres)"; exit 2 ;;
esac
entrypoint="$here/$name/entrypoint.sh"

# What the packages resolve to on this machine's mirror.
versions="$(apt-cache show --no-all-versions "${packages[@]}" 2>/dev/null | awk '/^Version:/ { print $2 }' | paste -sd, -)"
rootfs_key="$(echo "${packages[*]} $versions" | sha256sum | cut -c1-12)"
key="$(cat "${BASH_SOURCE[0]}" "$entrypoint" | sha256sum | cut -c1-8)-$rootfs_key"
image="trellis/$name:$TAG"
if [[ "$("$DOCKER" image inspect -f '{{index .Config.Labels "trellis.image.key"}}' "$image" 2>/dev/null)" == "$key" ]]; then
  echo "$image"
  exit 0
fi

start=$SECONDS
tar="$("$root/e2e/kind/debian-rootfs.sh" "$name-rootfs" "$SUITE" ca-certificates "$rootfs_key" "${packages[@]}")"
work="$(mktemp -d /tmp/trellis-debian-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
mkdir "$rootfs"
tar -C "$rootfs" -xzf "$tar"
(
  cd "$rootfs"
  rm -rf usr/share/doc/* usr/share/man/* usr/share/info/* usr/share/locale/* usr/share/i18n \
    var/cache/apt/*.bin var/cache/debconf/*-old
  find var/log -type f -delete
  # shellcheck disable=SC2086 # globs
  ((${#prune[@]} == 0)) || rm -rf ${prune[*]}
)
install -m 0755 "$entrypoint" "$rootfs/usr/local/bin/entrypoint"
uid="$(awk -F: -v u="$user" '$1 == u { print $3 }' "$rootfs/etc/passwd")"
gid="$(awk -F: -v u="$user" '$1 == u { print $4 }' "$rootfs/etc/passwd")"
[[ -n "$uid" && -n "$gid" ]] || { log "no user $user in the rootfs"; exit 1; }

previous="$("$DOCKER" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
changes=(--change "USER $uid:$gid" --change 'ENTRYPOINT ["/usr/local/bin/entrypoint"]'
  --change "LABEL trellis.image.key=$key" --change "LABEL org.opencontainers.image.version=$versions"
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8')
for p in "${ports[@]}"; do changes+=(--change "EXPOSE $p"); done
tar -C "$rootfs" -c . | "$DOCKER" import "${changes[@]}" - "$image" >/dev/null
if [[ -n "$previous" && "$previous" != "$("$DOCKER" image inspect -f '{{.Id}}' "$image")" ]]; then
  "$DOCKER" rmi "$previous" >/dev/null 2>&1 || true
fi
size="$("$DOCKER" image inspect -f '{{.Size}}' "$image")"
log "$(awk -v i="$image" -v s="$size" -v v="$versions" -v u="$uid" 'BEGIN { printf "%s %.1f MB (%s, uid %s)", i, s / 1e6, v, u }') in $((SECONDS - start)) s"
echo "$image"
