#!/usr/bin/env bash
# Builds trellis/jaeger:${TRELLIS_IMAGE_TAG:-dev}, the image of the shop
# chart's optional Jaeger: the Jaeger v2 binary that e2e/kind/tools.sh
# builds from its Go module (static, cached), alone in an image with no
# base, run as a non-root user. Prints the image name on stdout.
#
#   e2e/jaeger-image.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKER="${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}"
image="trellis/jaeger:${TRELLIS_IMAGE_TAG:-dev}"
# The non-root user of every image (as in e2e/images.sh).
UID_GID=65532

jaeger="$(bash "$root/e2e/kind/tools.sh" jaeger | sed -n 's/^JAEGER=//p')"
[[ -x "$jaeger" ]] || { echo "jaeger-image.sh: no Jaeger binary from e2e/kind/tools.sh" >&2; exit 1; }
# The binary's version and size name the build: an unchanged binary keeps the image.
key="$(basename "$(dirname "$jaeger")")-$(stat -c %s "$jaeger")"
if [[ "$("$DOCKER" image inspect -f '{{index .Config.Labels "trellis.jaeger"}}' "$image" 2>/dev/null)" == "$key" ]]; then
  echo "$image"
  exit 0
fi

ctx="$(mktemp -d /tmp/trellis-jaeger-image.XXXXXX)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
cp "$jaeger" "$ctx/rootfs/usr/local/bin/jaeger"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
  "$UID_GID" "$UID_GID" >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$UID_GID" >"$ctx/rootfs/etc/group"
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
USER $UID_GID:$UID_GID
ENTRYPOINT ["/usr/local/bin/jaeger"]
DOCKERFILE
DOCKER_BUILDKIT=0 "$DOCKER" build -q --label "trellis.jaeger=$key" -t "$image" "$ctx" >/dev/null
echo "jaeger-image.sh: $image $("$DOCKER" image inspect -f '{{.Size}}' "$image" | awk '{ printf "%.1f MB", $1 / 1e6 }')" >&2
echo "$image"
