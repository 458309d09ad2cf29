#!/usr/bin/env bash
# A real, node-less Kubernetes control plane for Trellis tests:
# etcd + kube-apiserver + kube-controller-manager (upstream, built from Go
# source by e2e/kube/build.sh), all on 127.0.0.1 with kernel-chosen free ports.
# No kubelet, kube-proxy or CNI: pods are accepted but stay Pending.
#
#   eval "$(e2e/control-plane.sh up)"      # start; prints export lines
#   e2e/control-plane.sh status            # needs TRELLIS_CP_DIR
#   e2e/control-plane.sh env               # reprint the export lines
#   e2e/control-plane.sh restart-apiserver # same port, same etcd
#   e2e/control-plane.sh down              # stop everything, remove the dir
#   e2e/control-plane.sh deps              # apt-get install etcd-server openssl
#
# Everything lives in one dir, ${TRELLIS_CP_DIR:-$(mktemp -d /tmp/trellis-cp.XXXXXX)}:
# certs in pki/, logs in logs/, pids in pids/, the admin kubeconfig in
# kubeconfig. Two runs with different dirs coexist. See e2e/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MARKER=.trellis-control-plane
SERVICE_CIDR=10.96.0.0/16
FIRST_SERVICE_IP=10.96.0.1
SA_ISSUER=https://kubernetes.default.svc.cluster.local
READY_TIMEOUT="${TRELLIS_CP_TIMEOUT:-120}"

log() { echo "control-plane: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- deps
cmd_deps() {
  local need=()
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  ((${#need[@]})) || return 0
  [[ $(id -u) == 0 ]] || die "missing ${need[*]}; run as root: apt-get install -y ${need[*]}"
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get"
  log "installing ${need[*]} (Debian packages)"
  # Keep Debian's etcd service from starting system-wide on the default
  # ports (2379/2380): policy-rc.d exit 101 = "do not start services".
  local policy=/usr/sbin/policy-rc.d created=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >&2 || rc=$?
  ((created)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${need[*]} failed"
  # Belt and braces: if a packaged etcd service still came up, stop it.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
  # The Debian service runs a bare `/usr/bin/etcd` (settings via env) on
  # 2379/2380; etcds with arguments belong to someone else: leave them alone.
  local p
  for p in $(pgrep -x etcd 2>/dev/null || true); do
    if [[ "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" == "/usr/bin/etcd " ]]; then
      log "stopping the system etcd service (pid $p)"; kill "$p" 2>/dev/null || true
    fi
  done
}

# ---------------------------------------------------------------- helpers
# N distinct free TCP ports on 127.0.0.1, chosen by the kernel (bind to :0).
free_ports() {
  local n=$1
  if command -v python3 >/dev/null 2>&1 && python3 -c 'pass' 2>/dev/null; then
    python3 - "$n" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
    return
  fi
  # Fallback: random ports in the ephemeral range that nothing answers on.
  local out=() p
  while ((${#out[@]} < n)); do
    p=$((32768 + RANDOM % 28000))
    [[ " ${out[*]} " == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    out+=("$p")
  done
  echo "${out[*]}"
}

require_dir() {
  [[ -n "${TRELLIS_CP_DIR:-}" ]] || die "TRELLIS_CP_DIR is not set (eval \"\$($0 up)\" sets it)"
  [[ -f "$TRELLIS_CP_DIR/$MARKER" ]] || die "$TRELLIS_CP_DIR is not a control-plane dir (no $MARKER)"
  DIR="$TRELLIS_CP_DIR"
  # shellcheck disable=SC1091
  source "$DIR/cp.env"
}

alive() { [[ -f "$DIR/pids/$1" ]] && kill -0 "$(cat "$DIR/pids/$1")" 2>/dev/null; }

# start NAME BINARY ARGS... : run detached (own session, no stdio tied to the
# caller, so `eval "$(... up)"` returns), log to logs/NAME.log, pid to pids/NAME.
start() {
  local name=$1; shift
  setsid "$@" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
  echo $! >"$DIR/pids/$name"
  disown $!
}

# stop [-g GRACE_SECONDS] NAME...: SIGTERM all, wait up to GRACE (default 5 s)
# for them to exit, then SIGKILL what is left.
stop() {
  local grace=5 name pid i pids=()
  if [[ "${1:-}" == -g ]]; then grace=$2; shift 2; fi
  for name in "$@"; do
    [[ -f "$DIR/pids/$name" ]] || continue
    pid="$(cat "$DIR/pids/$name")"
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  for ((i = 0; i < grace * 20; i++)); do
    local left=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.05
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for ((i = 0; i < 40; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  done
  for name in "$@"; do rm -f "$DIR/pids/$name"; done
}

# wait_http NAME URL [curl args...]: until URL answers 200 or NAME dies.
wait_http() {
  local name=$1 url=$2; shift 2
  local deadline=$((SECONDS + READY_TIMEOUT))
  until curl -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; do
    alive "$name" || { tail -n 30 "$DIR/logs/$name.log" >&2; die "$name exited; see $DIR/logs/$name.log"; }
    ((SECONDS < deadline)) || { tail -n 30 "$DIR/logs/$name.log" >&2; die "$name not ready after ${READY_TIMEOUT}s"; }
    sleep 0.1
  done
}

ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

api_curl_args() { echo --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key"; }

# ---------------------------------------------------------------- pki
gen_pki() {
  local pki="$DIR/pki"
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    ec() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }
    # CA
    ec ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=trellis-test-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" -out ca.crt 2>/dev/null
    # leaf NAME SUBJECT EXT_FILE_CONTENT
    leaf() {
      ec "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 \
        -days 3650 -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    leaf apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:$FIRST_SERVICE_IP,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    client_ext="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    # Admin: group system:masters = cluster-admin, can impersonate.
    leaf admin "/O=system:masters/CN=trellis-admin" "$client_ext"
    # kube-controller-manager's own identity (default RBAC covers it).
    leaf kcm "/CN=system:kube-controller-manager" "$client_ext"
    # Service-account token signing key pair (RSA: RS256, what every JWT lib reads).
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ca.srl
    chmod 644 ./*.crt sa.pub
  )
}

b64() { base64 -w0 <"$1"; }

# kubeconfig FILE USER CERT KEY (credentials embedded, so the file is portable)
write_kubeconfig() {
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: trellis
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(b64 "$DIR/pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$3")
    client-key-data: $(b64 "$4")
contexts:
- name: trellis
  context:
    cluster: trellis
    user: $2
current-context: trellis
EOF
  chmod 600 "$1"
}

# ---------------------------------------------------------------- components
start_etcd() {
  start etcd etcd \
    --name trellis \
    --data-dir "$DIR/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "trellis=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state new \
    --initial-cluster-token "trellis-$ETCD_PORT" \
    --quota-backend-bytes 2147483648 \
    --auto-compaction-mode periodic --auto-compaction-retention 5m \
    --snapshot-count 10000 \
    --heartbeat-interval 10 --election-timeout 100 \
    --log-level warn
}

start_apiserver() {
  start kube-apiserver "$BIN/kube-apiserver" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --cert-dir="$DIR/apiserver-certs" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --tls-cert-file="$DIR/pki/apiserver.crt" \
    --tls-private-key-file="$DIR/pki/apiserver.key" \
    --client-ca-file="$DIR/pki/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --service-account-issuer="$SA_ISSUER" \
    --service-account-key-file="$DIR/pki/sa.pub" \
    --service-account-signing-key-file="$DIR/pki/sa.key" \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --profiling=false \
    --v=1
}

start_kcm() {
  start kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$DIR/kcm.kubeconfig" \
    --bind-address=127.0.0.1 \
    --secure-port="$KCM_PORT" \
    --cert-dir="$DIR/kcm-certs" \
    --leader-elect=false \
    --kube-api-qps=200 --kube-api-burst=400 \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$DIR/pki/sa.key" \
    --root-ca-file="$DIR/pki/ca.crt" \
    --cluster-signing-cert-file="$DIR/pki/ca.crt" \
    --cluster-signing-key-file="$DIR/pki/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allocate-node-cidrs=false \
    --controllers='*,-node-ipam-controller' \
    --profiling=false \
    --v=1
}

wait_apiserver() {
  # shellcheck disable=SC2046
  wait_http kube-apiserver "https://127.0.0.1:$APISERVER_PORT/readyz" $(api_curl_args)
}

print_env() {
  local path="$PATH"
  [[ ":$PATH:" == *":$BIN:"* ]] || path="$BIN:$PATH"
  printf 'export TRELLIS_CP_DIR=%q\n' "$DIR"
  printf 'export KUBECONFIG=%q\n' "$DIR/kubeconfig"
  printf 'export TRELLIS_KUBE_BIN=%q\n' "$BIN"
  printf 'export KUBECTL=%q\n' "$BIN/kubectl"
  printf 'export TRELLIS_APISERVER=%q\n' "https://127.0.0.1:$APISERVER_PORT"
  printf 'export PATH=%q\n' "$path"
}

# ---------------------------------------------------------------- commands
cmd_up() {
  local t0ns
  t0ns=$(date +%s%N)
  if ! command -v etcd >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    [[ -z "${TRELLIS_CP_NO_INSTALL:-}" ]] || die "need etcd, openssl, curl (run $0 deps)"
    cmd_deps
  fi
  BIN="$("$here/kube/build.sh" | tail -n1)"
  [[ -x "$BIN/kube-apiserver" ]] || die "build.sh did not produce binaries in $BIN"

  if [[ -n "${TRELLIS_CP_DIR:-}" ]]; then
    DIR="$TRELLIS_CP_DIR"
    if [[ -f "$DIR/$MARKER" ]]; then
      local p
      for p in "$DIR"/pids/*; do
        [[ -f $p ]] && kill -0 "$(cat "$p")" 2>/dev/null && die "$DIR already has a running control plane (run down first)"
      done
      [[ -L "$DIR/etcd-data" && "$(readlink "$DIR/etcd-data")" == /dev/shm/trellis-etcd.* ]] \
        && rm -rf "$(readlink "$DIR/etcd-data")"
      rm -rf "${DIR:?}"/*
    elif [[ -d "$DIR" && -n "$(ls -A "$DIR")" ]]; then
      # down removes the whole dir: never adopt one that holds other files.
      die "$DIR exists, is not empty and is not a control-plane dir"
    fi
    mkdir -p "$DIR"
  else
    DIR="$(mktemp -d /tmp/trellis-cp.XXXXXX)"
  fi
  DIR="$(cd "$DIR" && pwd)"
  touch "$DIR/$MARKER"
  mkdir -p "$DIR/logs" "$DIR/pids"
  # If anything below fails, do not leave half a control plane running.
  trap 'rc=$?; if ((rc)); then log "up failed; logs in $DIR/logs (tearing down)"; TRELLIS_CP_KEEP_LOGS=1 cmd_down_dir; fi' EXIT

  # etcd data on tmpfs when there is one: tests are write-heavy, fsync is slow.
  if [[ -z "${TRELLIS_CP_ETCD_ON_DISK:-}" && -d /dev/shm && -w /dev/shm ]]; then
    ln -s "$(mktemp -d /dev/shm/trellis-etcd.XXXXXX)" "$DIR/etcd-data"
  fi

  read -r ETCD_PORT ETCD_PEER_PORT APISERVER_PORT KCM_PORT <<<"$(free_ports 4)"
  cat >"$DIR/cp.env" <<EOF
BIN=$BIN
ETCD_PORT=$ETCD_PORT
ETCD_PEER_PORT=$ETCD_PEER_PORT
APISERVER_PORT=$APISERVER_PORT
KCM_PORT=$KCM_PORT
EOF

  # etcd needs no certificates (plain HTTP on loopback): start it first so
  # its start-up overlaps with making the keys.
  start_etcd
  gen_pki
  log "certificates made after $(ms_since "$t0ns") ms"
  write_kubeconfig "$DIR/kubeconfig" trellis-admin "$DIR/pki/admin.crt" "$DIR/pki/admin.key"
  write_kubeconfig "$DIR/kcm.kubeconfig" kube-controller-manager "$DIR/pki/kcm.crt" "$DIR/pki/kcm.key"
  wait_http etcd "http://127.0.0.1:$ETCD_PORT/health"
  log "etcd ready on :$ETCD_PORT after $(ms_since "$t0ns") ms"
  start_apiserver
  wait_apiserver
  log "kube-apiserver ready on :$APISERVER_PORT after $(ms_since "$t0ns") ms"
  start_kcm
  wait_http kube-controller-manager "https://127.0.0.1:$KCM_PORT/healthz" -k
  log "kube-controller-manager healthy after $(ms_since "$t0ns") ms"
  # The default ServiceAccount shows the controllers really run; pods cannot
  # be created in a namespace before it exists.
  local deadline=$((SECONDS + READY_TIMEOUT))
  # shellcheck disable=SC2046
  until curl -fsS -o /dev/null $(api_curl_args) \
      "https://127.0.0.1:$APISERVER_PORT/api/v1/namespaces/default/serviceaccounts/default" 2>/dev/null; do
    alive kube-controller-manager || die "kube-controller-manager exited; see $DIR/logs/kube-controller-manager.log"
    ((SECONDS < deadline)) || die "no default ServiceAccount after ${READY_TIMEOUT}s"
    sleep 0.1
  done
  trap - EXIT
  log "ready in $(ms_since "$t0ns") ms: https://127.0.0.1:$APISERVER_PORT (dir $DIR)"
  print_env
}

cmd_down_dir() {
  stop -g 0 kube-controller-manager kube-apiserver etcd
  if [[ -L "$DIR/etcd-data" ]]; then
    local target; target="$(readlink "$DIR/etcd-data")"
    [[ "$target" == /dev/shm/trellis-etcd.* ]] && rm -rf "$target"
  fi
  if [[ -n "${TRELLIS_CP_KEEP_LOGS:-}" ]]; then
    rm -rf "$DIR/etcd-data"
  else
    rm -rf "${DIR:?}"
  fi
}

cmd_down() {
  if [[ -z "${TRELLIS_CP_DIR:-}" ]]; then die "TRELLIS_CP_DIR is not set"; fi
  if [[ ! -d "$TRELLIS_CP_DIR" ]]; then log "$TRELLIS_CP_DIR is already gone"; return 0; fi
  [[ -f "$TRELLIS_CP_DIR/$MARKER" ]] || die "$TRELLIS_CP_DIR is not a control-plane dir (no $MARKER); not removing it"
  DIR="$TRELLIS_CP_DIR"
  cmd_down_dir
  log "down: $DIR removed"
}

cmd_env() { require_dir; print_env; }

cmd_status() {
  require_dir
  local rc=0 name
  for name in etcd kube-apiserver kube-controller-manager; do
    if alive "$name"; then echo "$name: running (pid $(cat "$DIR/pids/$name"))"
    else echo "$name: not running"; rc=1; fi
  done
  # shellcheck disable=SC2046
  if curl -fsS -o /dev/null --max-time 3 $(api_curl_args) "https://127.0.0.1:$APISERVER_PORT/readyz"; then
    echo "apiserver: ready at https://127.0.0.1:$APISERVER_PORT"
  else echo "apiserver: not ready"; rc=1; fi
  echo "dir: $DIR"
  return $rc
}

cmd_restart_apiserver() {
  require_dir
  alive etcd || die "etcd is not running"
  local t0ns; t0ns=$(date +%s%N)
  # SIGTERM, then SIGKILL after 2 s: a TERMed kube-apiserver drains HTTP/2
  # watch streams for up to a minute (its request timeout) before it exits.
  stop -g 2 kube-apiserver
  log "old kube-apiserver gone after $(ms_since "$t0ns") ms"
  # The port is ours (we just released it); wait for the kernel to free it.
  local i
  for ((i = 0; i < 50; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$APISERVER_PORT") 2>/dev/null || break
    sleep 0.1
  done
  echo "---- restart $(date -Is) ----" >>"$DIR/logs/kube-apiserver.log"
  start_apiserver
  wait_apiserver
  log "kube-apiserver restarted on :$APISERVER_PORT in $(ms_since "$t0ns") ms"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  status) cmd_status ;;
  restart-apiserver) cmd_restart_apiserver ;;
  deps) cmd_deps ;;
  *) echo "usage: $0 up|down|env|status|restart-apiserver|deps" >&2; exit 2 ;;
esac
