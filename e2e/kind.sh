#!/usr/bin/env bash
# A kind cluster running Trellis, installed with `helm upgrade --install` of
# charts/trellis (CRDs, the operator with two replicas, RBAC, webhooks) on our
# images, for the cluster tests (e2e/tests/cluster.rs) and
# for trying the mesh by hand.
#
#   eval "$(e2e/kind.sh up)"     # create (or reuse) the cluster; exports KUBECONFIG etc.
#   e2e/kind.sh load [NAME...]   # rebuild our images (e2e/images.sh, jaeger: e2e/jaeger-image.sh) and load them
#   e2e/kind.sh env              # the export lines again
#   e2e/kind.sh status           # nodes and the operator
#   e2e/kind.sh restart-apiserver  # stop the API server's static pod, start it again
#   e2e/kind.sh down             # delete the cluster, our images and host rules; stop our dockerd
#
# Offline by default: the node image is built locally from the Kubernetes
# binaries of e2e/kube/build.sh (e2e/kind/node-image.sh, cached). With a
# registry, TRELLIS_KIND_NODE_IMAGE=kindest/node:v1.36.5 uses kind's stock image.
# If no Docker daemon answers, one is started (and stopped by `down`).
# Progress and timings go to stderr; stdout carries only export lines.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
CLUSTER="${TRELLIS_KIND_CLUSTER:-trellis}"
STATE="${TRELLIS_KIND_STATE:-/tmp/trellis-kind-$CLUSTER}"
CACHE="${TRELLIS_KIND_CACHE:-$HOME/.cache/trellis/kind}"
NODE="$CLUSTER-control-plane"
TIMEOUT="${TRELLIS_KIND_TIMEOUT:-180}"
# Where every sidecar exports its spans: the Jaeger of the shop chart
# installed as users do (`-n shop --set jaeger.enabled=true`), a fixed address
# the cluster suite's shop test installs to. "" exports none.
OTLP_ENDPOINT="${TRELLIS_KIND_OTLP_ENDPOINT-http://jaeger.shop:4317}"
# Debian's docker client matches Debian's dockerd; any docker works otherwise.
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER="$(command -v docker || echo docker)"; fi
export DOCKER

t0=$SECONDS
lap_start=$SECONDS
log() { echo "kind.sh: $*" >&2; }
die() { log "$*"; exit 1; }
lap() {
  local took=$((SECONDS - lap_start))
  log "$1 in ${took} s"
  echo "$1: ${took} s" >>"$STATE/timings"
  lap_start=$SECONDS
}

# ---------------------------------------------------------------- tools
tools() {
  KUBE_BIN="$("$root/e2e/kube/build.sh" node | tail -n1)"
  KUBE_VERSION="$(basename "$(dirname "$KUBE_BIN")")"
  eval "$("$here/kind/tools.sh")" # KIND ETCD COREDNS CRICTL PAUSE
  eval "$("$here/kind/tools.sh" helm)" # HELM
  # kind runs `docker` from PATH: make it the one we talk to.
  mkdir -p "$STATE/bin"
  ln -sf "$DOCKER" "$STATE/bin/docker"
  ln -sf "$KUBE_BIN/kubectl" "$STATE/bin/kubectl"
  export PATH="$STATE/bin:$PATH"
}

# Our cluster's kubeconfig; for a cluster `up` did not make (restart-apiserver
# on someone's own kind), the usual one.
kubectl() {
  local config="$STATE/kubeconfig"
  [[ -f "$config" ]] || config="${KUBECONFIG:-$HOME/.kube/config}"
  "$KUBE_BIN/kubectl" --kubeconfig "$config" "$@"
}

deps() {
  local need=()
  if ! "$DOCKER" info >/dev/null 2>&1 && ! command -v dockerd >/dev/null; then need+=(docker.io); fi
  [[ -n "${TRELLIS_KIND_NODE_IMAGE:-}" ]] || command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v jq >/dev/null || need+=(jq)
  command -v iptables >/dev/null || need+=(iptables)
  ((${#need[@]} == 0)) && return 0
  [[ -z "${TRELLIS_KIND_NO_INSTALL:-}" ]] || die "missing: ${need[*]}"
  log "installing ${need[*]} (Debian packages)"
  bash "$root/.ci/install.sh" "${need[@]}" >&2
  [[ -x /usr/bin/docker ]] && DOCKER=/usr/bin/docker
  return 0
}

# ---------------------------------------------------------------- docker
# Whether this VM lets a process hold CAP_SYS_RESOURCE (bit 24).
has_sys_resource() {
  local bnd
  bnd="$(awk '/^CapBnd:/ { print $2 }' /proc/self/status)"
  (((16#$bnd >> 24) & 1))
}

docker_up() {
  if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
  command -v dockerd >/dev/null || die "no Docker daemon answers and dockerd is not installed"
  local args=(--pidfile "$STATE/dockerd.pid" --log-level warn)
  if ! has_sys_resource; then
    # Privileged containers (every kind node) need every capability Docker
    # knows; this VM lacks one. See e2e/kind/runc-wrap.
    mkdir -p "$CACHE/bin"
    install -m 0755 "$here/kind/runc-wrap" "$CACHE/bin/runc-wrap"
    args+=(--add-runtime "kprunc=$CACHE/bin/runc-wrap" --default-runtime kprunc)
  fi
  log "starting dockerd (${args[*]})"
  setsid dockerd "${args[@]}" </dev/null >>"$STATE/dockerd.log" 2>&1 &
  disown $!
  touch "$STATE/dockerd.ours"
  local i
  for ((i = 0; i < 300; i++)); do
    "$DOCKER" info >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  tail -n 20 "$STATE/dockerd.log" >&2
  die "dockerd did not come up; log: $STATE/dockerd.log"
}

docker_down() {
  [[ -f "$STATE/dockerd.ours" && -f "$STATE/dockerd.pid" ]] || return 0
  local pid i
  pid="$(cat "$STATE/dockerd.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "dockerd did not stop in 20 s; killing it"; kill -KILL "$pid"; }
  fi
  rm -f "$STATE/dockerd.ours"
  log "stopped the dockerd we started"
}

# ---------------------------------------------------------------- host firewall
# Cluster traffic must not leave the machine: drop whatever containers send
# out of the uplink, except DNS to the machine's own resolvers (Docker's
# embedded DNS forwards from inside the node). Each rule is recorded so
# `down` removes exactly what `up` added.
firewall_rule() { # TOOL RULE...
  local tool=$1; shift
  "$tool" -C "$@" 2>/dev/null || "$tool" -I "$@"
  # Recorded even when it was there already (left by a run that never ran down).
  grep -qxF "$tool $*" "$STATE/firewall" 2>/dev/null || printf '%s %s\n' "$tool" "$*" >>"$STATE/firewall"
}

firewall_up() {
  [[ "${TRELLIS_KIND_FIREWALL:-1}" == 1 ]] || return 0
  local uplink ns
  uplink="$(ip route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')"
  [[ -n "$uplink" ]] || return 0
  local tag=(-m comment --comment "trellis-kind-$CLUSTER")
  if iptables -nL DOCKER-USER >/dev/null 2>&1; then
    firewall_rule iptables DOCKER-USER -o "$uplink" "${tag[@]}" -j DROP
    for ns in $(awk '$1 == "nameserver" && $2 ~ /^[0-9.]+$/ { print $2 }' /etc/resolv.conf); do
      firewall_rule iptables DOCKER-USER -o "$uplink" -d "$ns" -p udp --dport 53 "${tag[@]}" -j RETURN
      firewall_rule iptables DOCKER-USER -o "$uplink" -d "$ns" -p tcp --dport 53 "${tag[@]}" -j RETURN
    done
  fi
  if command -v ip6tables >/dev/null && ip6tables -nL FORWARD >/dev/null 2>&1; then
    firewall_rule ip6tables FORWARD -o "$uplink" "${tag[@]}" -j DROP
  fi
}

firewall_down() {
  [[ -f "$STATE/firewall" ]] || return 0
  local tool rule
  while read -r tool rule; do
    # shellcheck disable=SC2086
    "$tool" -D $rule 2>/dev/null || true
  done < <(tac "$STATE/firewall")
  rm -f "$STATE/firewall"
}

# ---------------------------------------------------------------- cluster
node_image() {
  if [[ -n "${TRELLIS_KIND_NODE_IMAGE:-}" ]]; then
    echo "$TRELLIS_KIND_NODE_IMAGE"
    return
  fi
  local image
  image="$("$here/kind/node-image.sh" name)"
  if ! "$DOCKER" image inspect "$image" >/dev/null 2>&1; then
    "$here/kind/node-image.sh" >/dev/null
    echo "$image" >>"$STATE/images"   # `down` removes it; the saved tar stays in the cache
  fi
  echo "$image"
}

kind_config() {
  cat <<'EOF'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
EOF
  if [[ -z "${TRELLIS_KIND_NODE_IMAGE:-}" ]]; then
    cat <<'EOF'
networking:
  # Our node image ships a single-node ptp CNI (e2e/kind/node): kindnetd's image needs a registry.
  disableDefaultCNI: true
EOF
  fi
  cat <<'EOF'
containerdConfigPatches:
  # Needed where the VM lacks CAP_SYS_RESOURCE; harmless elsewhere.
  - |-
    [plugins."io.containerd.grpc.v1.cri"]
      restrict_oom_score_adj = true
kubeadmConfigPatches:
  - |
    kind: KubeletConfiguration
    # Hosts still on cgroup v1 (kubelet >= 1.35 refuses them otherwise).
    failCgroupV1: false
    # Mounted ConfigMaps (the sidecars' config) refresh within seconds, not a minute.
    syncFrequency: 5s
EOF
}

cluster_exists() { "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; }

create_cluster() {
  local image=$1
  kind_config >"$STATE/kind.yaml"
  "$KIND" create cluster --name "$CLUSTER" --image "$image" --config "$STATE/kind.yaml" \
    --kubeconfig "$STATE/kubeconfig" --wait "${TIMEOUT}s" >&2
}

# CoreDNS answers for the cluster only: no queries leave for the machine's resolver.
coredns_cluster_only() {
  local corefile
  corefile="$(kubectl -n kube-system get configmap coredns -o jsonpath='{.data.Corefile}')"
  if grep -q 'forward \.' <<<"$corefile"; then
    corefile="$(awk '/^[[:space:]]*forward \. / { skip = 1 } skip { if (/}/) { skip = 0 }; next } { print }' <<<"$corefile")"
    kubectl -n kube-system create configmap coredns --from-literal=Corefile="$corefile" \
      --dry-run=client -o yaml | kubectl apply --server-side --force-conflicts -f - >/dev/null
    kubectl -n kube-system rollout restart deployment coredns >/dev/null
  fi
  kubectl -n kube-system rollout status deployment coredns --timeout="${TIMEOUT}s" >/dev/null
}

# Builds our images in the background (a release build: the longest step of a
# cold start), while the node image is made and the cluster created. Beside
# e2e/images.sh's, `jaeger` is the shop chart's Jaeger (e2e/jaeger-image.sh);
# no names: all of them.
images_start() {
  local names=() jaeger=$(($# == 0)) n
  for n in "$@"; do
    if [[ "$n" == jaeger ]]; then jaeger=1; else names+=("$n"); fi
  done
  (
    if ((jaeger)); then "$root/e2e/jaeger-image.sh"; fi
    if (($# == 0 || ${#names[@]})); then "$root/e2e/images.sh" "${names[@]}"; fi
  ) >"$STATE/images.built" 2>"$STATE/images.log" &
  IMAGES_PID=$!
}

images_load() {
  if ! wait "$IMAGES_PID"; then
    tail -n 40 "$STATE/images.log" >&2
    die "e2e/images.sh failed; log: $STATE/images.log"
  fi
  grep -E '^(images|jaeger-image).sh:' "$STATE/images.log" >&2 || true
  local images=()
  mapfile -t images <"$STATE/images.built"
  ((${#images[@]})) || die "e2e/images.sh built nothing"
  "$KIND" load docker-image --name "$CLUSTER" "${images[@]}" >/dev/null
  printf '%s\n' "${images[@]}" >>"$STATE/images"
}

# The path users take: `helm upgrade --install` of charts/trellis, on the
# images just loaded. Helm installs crds/ only when they are missing and never
# upgrades them, so a reused cluster gets them applied first.
install_trellis() {
  local chart="$root/charts/trellis" tag="${TRELLIS_IMAGE_TAG:-dev}"
  kubectl apply --server-side --force-conflicts -f "$chart/crds/" >/dev/null
  kubectl wait --for condition=Established --timeout=60s crd/meshservices.mesh.trellis.dev crd/resiliencepolicies.mesh.trellis.dev >/dev/null
  # A cluster whose operator came from plain manifests (operator/deploy.yaml):
  # Helm refuses to take over objects it did not make, so they go first.
  if ! "$HELM" --kubeconfig "$STATE/kubeconfig" -n trellis-system status trellis >/dev/null 2>&1 &&
    kubectl get mutatingwebhookconfiguration trellis-injector >/dev/null 2>&1; then
    log "replacing the operator applied from operator/deploy.yaml with the chart"
    kubectl delete --ignore-not-found --wait -f "$root/operator/deploy.yaml" -f "$root/operator/rbac.yaml" >/dev/null
  fi
  # The image's id as a pod annotation: reloaded images (same tag) roll the
  # operator; an unchanged one leaves it alone.
  local image_id
  image_id="$("$DOCKER" image inspect -f '{{.Id}}' "trellis/operator:$tag" | cut -c8-19)"
  if ! "$HELM" --kubeconfig "$STATE/kubeconfig" upgrade --install trellis "$chart" \
    -n trellis-system --create-namespace \
    --set "operator.image.tag=$tag" --set "proxy.image.tag=$tag" \
    --set operator.image.pullPolicy=IfNotPresent --set proxy.image.pullPolicy=IfNotPresent \
    --set-string "operator.podAnnotations.trellis\.dev/image-id=$image_id" \
    --set-string "proxy.otlpEndpoint=$OTLP_ENDPOINT" \
    --wait --timeout "${TIMEOUT}s" >/dev/null; then
    kubectl -n trellis-system get pods -o wide >&2
    kubectl -n trellis-system logs deployment/trellis-operator --tail=30 >&2 || true
    die "the operator did not become ready"
  fi
  # Ready replicas have written the CA into the webhook configurations.
  local i bundle
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    bundle="$(kubectl get mutatingwebhookconfiguration trellis-injector -o jsonpath='{.webhooks[0].clientConfig.caBundle}')"
    [[ -n "$bundle" ]] && return 0
    sleep 0.2
  done
  die "the operator did not write the webhook caBundle"
}

print_env() {
  printf 'export KUBECONFIG=%q\n' "$STATE/kubeconfig"
  printf 'export TRELLIS_CLUSTER_KUBECONFIG=%q\n' "$STATE/kubeconfig"
  printf 'export TRELLIS_KIND_CLUSTER=%q\n' "$CLUSTER"
  printf 'export TRELLIS_CLUSTER_RESTART_APISERVER=%q\n' "$here/kind.sh restart-apiserver"
  printf 'export TRELLIS_KUBECTL=%q\n' "$KUBE_BIN/kubectl"
  printf 'export KUBECTL=%q\n' "$KUBE_BIN/kubectl"
}

# ---------------------------------------------------------------- commands
cmd_up() {
  mkdir -p "$STATE"
  : >"$STATE/timings"
  deps
  tools
  lap "tools (Kubernetes $KUBE_VERSION, kind, etcd, CoreDNS)"
  docker_up
  firewall_up
  lap "docker and host firewall"
  images_start
  if cluster_exists; then
    log "cluster $CLUSTER exists; reusing it"
    "$KIND" export kubeconfig --name "$CLUSTER" --kubeconfig "$STATE/kubeconfig" >/dev/null 2>&1
  else
    local image
    image="$(node_image)"
    lap "node image $image"
    create_cluster "$image"
    lap "kind create cluster"
  fi
  coredns_cluster_only
  lap "CoreDNS available"
  images_load
  lap "our images built (release) and loaded"
  install_trellis
  lap "helm upgrade --install trellis: CRDs, operator (2 replicas), webhooks ready"
  log "cluster $CLUSTER up in $((SECONDS - t0)) s"
  echo "total: $((SECONDS - t0)) s" >>"$STATE/timings"
  print_env
}

cmd_load() {
  [[ -f "$STATE/kubeconfig" ]] || die "no cluster state in $STATE (run up first)"
  tools
  images_start "$@"
  images_load
  lap "images built and loaded"
}

cmd_env() {
  [[ -f "$STATE/kubeconfig" ]] || die "no cluster state in $STATE (run up first)"
  KUBE_BIN="$("$root/e2e/kube/build.sh" | tail -n1)"
  print_env
}

cmd_status() {
  tools
  kubectl get nodes -o wide
  kubectl -n trellis-system get deploy,pods,lease -o wide
  # What the cluster costs the machine: the node container (every pod runs in
  # it) and the Docker daemons.
  "$DOCKER" stats --no-stream --format 'node {{.Name}}: memory {{.MemUsage}}, cpu {{.CPUPerc}}' "$NODE"
  local daemons
  daemons="$(ps -o rss= -C dockerd,containerd 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s / 1024 }')"
  echo "dockerd + containerd on the host: ${daemons} MiB RSS"
}

cmd_restart_apiserver() {
  tools
  local manifest=/etc/kubernetes/manifests/kube-apiserver.yaml parked=/etc/kubernetes/kube-apiserver.yaml.parked
  local start=$SECONDS i
  "$DOCKER" exec "$NODE" mv "$manifest" "$parked"
  # The kubelet stops the static pod once it sees the manifest gone.
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    kubectl get --raw /readyz >/dev/null 2>&1 || break
    sleep 0.2
  done
  log "API server stopped after $((SECONDS - start)) s"
  "$DOCKER" exec "$NODE" mv "$parked" "$manifest"
  for ((i = 0; i < TIMEOUT * 5; i++)); do
    kubectl get --raw /readyz >/dev/null 2>&1 && break
    sleep 0.2
  done
  kubectl get --raw /readyz >/dev/null 2>&1 || die "API server not ready again after ${TIMEOUT} s"
  log "API server restarted in $((SECONDS - start)) s"
}

cmd_down() {
  if command -v "$DOCKER" >/dev/null && "$DOCKER" info >/dev/null 2>&1; then
    local kind_bin
    kind_bin="$("$here/kind/tools.sh" 2>/dev/null | awk -F= '$1 == "KIND" { print $2 }')"
    if [[ -x "$kind_bin" ]] && "$kind_bin" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      PATH="$STATE/bin:$PATH" "$kind_bin" delete cluster --name "$CLUSTER" >&2
    fi
    if [[ -f "$STATE/images" ]]; then
      sort -u "$STATE/images" | xargs -r "$DOCKER" rmi -f >/dev/null 2>&1 || true
    fi
  fi
  firewall_down
  docker_down
  rm -rf "$STATE"
  log "down in $((SECONDS - t0)) s"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  load) shift; cmd_load "$@" ;;
  env) cmd_env ;;
  status) cmd_status ;;
  restart-apiserver) cmd_restart_apiserver ;;
  *) echo "usage: $0 up|down|load [NAME...]|env|status|restart-apiserver" >&2; exit 2 ;;
esac
