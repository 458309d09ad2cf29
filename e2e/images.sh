#!/usr/bin/env bash
# Builds the OCI images of our binaries, from release builds, with no base
# image and no registry: each image holds one binary, the shared libraries it
# loads (found with ldd: glibc, libgcc) and a passwd entry for its non-root
# user. The same images can be built with Docker alone from
# e2e/images/Dockerfile (a multi-stage build on public base images).
# The shop's RabbitMQ and PostgreSQL come from Debian's packages
# (e2e/images/debian-image.sh, cached by the packages' versions).
#
#   e2e/images.sh                  # every image in the table below
#   e2e/images.sh proxy operator   # some of them
#   e2e/images.sh --list           # NAME IMAGE lines, nothing built
#
# Images are named trellis/NAME:${TRELLIS_IMAGE_TAG:-dev}. A new binary is
# one more line in the table. The shop's services need nothing beside their
# binary: their sqlx migrations are embedded.
# Prints one image name per line on stdout, sizes on stderr.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
TAG="${TRELLIS_IMAGE_TAG:-dev}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
# Release builds, kept incremental: a fresh clone (new mtimes, same sources)
# then rebuilds in seconds instead of minutes. Set it to false for a clean build.
export CARGO_PROFILE_RELEASE_INCREMENTAL="${CARGO_PROFILE_RELEASE_INCREMENTAL:-true}"

# NAME      CARGO PACKAGE       BINARY (its first argument, if any, after ;)
table="
operator    trellis-operator    trellis-operator
proxy       trellis-proxy       trellis-proxy
e2e-app     trellis-e2e-app     trellis-e2e-app
gateway     gateway             gateway
users       users               users
products    products            products
orders      orders              orders
payments    payments            payments
notifications notifications     notifications
"
# Servers from Debian's packages, not from our workspace.
debian_images=(rabbitmq postgres)
# The non-root user of every image (distroless' "nonroot").
UID_GID=65532

declare -A package binary
names=()
while read -r name pkg bin; do
  [[ -n "$name" ]] || continue
  package[$name]=$pkg binary[$name]=$bin names+=("$name")
done <<<"$table"

if [[ "${1:-}" == --list ]]; then
  for n in "${names[@]}" "${debian_images[@]}"; do echo "$n trellis/$n:$TAG"; done
  exit 0
fi
requested=("$@")
((${#requested[@]})) || requested=("${names[@]}" "${debian_images[@]}")
wanted=() wanted_debian=()
for n in "${requested[@]}"; do
  if [[ -n "${package[$n]:-}" ]]; then
    wanted+=("$n")
  elif [[ " ${debian_images[*]} " == *" $n "* ]]; then
    wanted_debian+=("$n")
  else
    echo "images.sh: unknown image $n (known: ${names[*]} ${debian_images[*]})" >&2
    exit 2
  fi
done

log() { echo "images.sh: $*" >&2; }
for n in "${wanted_debian[@]}"; do
  start=$SECONDS
  "$root/e2e/images/debian-image.sh" "$n"
  log "trellis/$n:$TAG ready in $((SECONDS - start)) s"
done
((${#wanted[@]})) || exit 0
start=$SECONDS
cargo_args=()
for n in "${wanted[@]}"; do cargo_args+=(-p "${package[$n]}" --bin "${binary[$n]}"); done
nice cargo build --release --locked "${cargo_args[@]}" >&2
log "release build in $((SECONDS - start)) s"

work="$(mktemp -d /tmp/trellis-images.XXXXXX)"
trap 'rm -rf "$work"' EXIT
for n in "${wanted[@]}"; do
  bin="$CARGO_TARGET_DIR/release/${binary[$n]}"
  ctx="$work/$n"
  mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp"
  chmod 1777 "$ctx/rootfs/tmp"
  cp "$bin" "$ctx/rootfs/usr/local/bin/"
  # The loader and every library the binary needs, at the paths ldd reports.
  ldd "$bin" | awk '/=> \// { print $3 } /^[[:space:]]*\/.*ld-linux/ { print $1 }' | while read -r lib; do
    cp -L --parents "$lib" "$ctx/rootfs/"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
    "$UID_GID" "$UID_GID" >"$ctx/rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%s:\n' "$UID_GID" >"$ctx/rootfs/etc/group"
  cat >"$ctx/Dockerfile" <<EOF
FROM scratch
COPY rootfs/ /
USER $UID_GID:$UID_GID
ENTRYPOINT ["/usr/local/bin/${binary[$n]}"]
EOF
  image="trellis/$n:$TAG"
  previous="$("$DOCKER" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
  DOCKER_BUILDKIT=0 "$DOCKER" build -q \
    --label "org.opencontainers.image.source=trellis" \
    --label "org.opencontainers.image.revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$image" "$ctx" >/dev/null
  # The image this one replaces would be left untagged: remove it (unless a container uses it).
  if [[ -n "$previous" && "$previous" != "$("$DOCKER" image inspect -f '{{.Id}}' "$image")" ]]; then
    "$DOCKER" rmi "$previous" >/dev/null 2>&1 || true
  fi
  size="$("$DOCKER" image inspect -f '{{.Size}}' "$image")"
  log "$(awk -v i="$image" -v s="$size" 'BEGIN { printf "%-26s %6.1f MB", i, s / 1e6 }')"
  echo "$image"
done
