#!/usr/bin/env bash
# The bash -c snippets expand $KUBECTL in the child, on purpose.
# shellcheck disable=SC2016
# Smoke test of e2e/control-plane.sh: brings a control plane up, checks that
# it behaves like a real cluster (RBAC, controllers, GC, ServiceAccount
# tokens, API server restart), tears it down. Prints "N passed, N failed".
#
#   e2e/kube/smoke.sh
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cp="$root/e2e/control-plane.sh"
pass=0 fail=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
bad() { echo "FAIL - $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
# eventually SECONDS WHAT CMD...: retry CMD every 0.2 s until it succeeds.
eventually() {
  local t=$1 what=$2; shift 2
  local deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { bad "$what"; return 1; }
    sleep 0.2
  done
  ok "$what"
}

unset TRELLIS_CP_DIR
t0=$(date +%s%N)
if ! envs="$("$cp" up)"; then echo "0 passed, 1 failed"; exit 1; fi
eval "$envs"
echo "# up took $(( ($(date +%s%N) - t0) / 1000000 )) ms; dir $TRELLIS_CP_DIR"
trap '"$cp" down >/dev/null 2>&1 || true' EXIT

k() { "$KUBECTL" "$@"; }
no_rs() { [[ -z "$(k get rs -l app=smoke -o name 2>/dev/null)" ]] && k get rs >/dev/null; }
token_whoami() {
  local tok
  tok="$(k -n smoke create token default --duration=10m)" || return 1
  k --kubeconfig=/dev/null --server="$TRELLIS_APISERVER" \
    --certificate-authority="$TRELLIS_CP_DIR/pki/ca.crt" --token="$tok" auth whoami -o jsonpath='{.status.userInfo.username}' \
    | grep -qx 'system:serviceaccount:smoke:default'
}

check "kubectl version matches the server" bash -c '"$KUBECTL" version -o json | grep -q "\"gitVersion\": \"$(basename "$(dirname "$TRELLIS_KUBE_BIN")")\""'
check "kubectl get ns" k get ns default kube-system
check "admin is cluster-admin" bash -c '[[ "$("$KUBECTL" auth can-i "*" "*")" == yes ]]'
check "create namespace" k create ns smoke
eventually 30 "default ServiceAccount appears in a new namespace" k -n smoke get sa default
eventually 30 "kube-root-ca.crt ConfigMap appears" k -n smoke get cm kube-root-ca.crt
check "TokenRequest token authenticates as the ServiceAccount" token_whoami
check "RBAC denies the ServiceAccount by default" bash -c '[[ "$("$KUBECTL" auth can-i list pods -n smoke --as=system:serviceaccount:smoke:default)" == no ]]'
check "create Deployment" k -n default create deployment smoke --image=localhost/none:1 --replicas=2
eventually 30 "controller manager creates the ReplicaSet" bash -c '"$KUBECTL" get rs -l app=smoke -o name | grep -q replicaset'
eventually 30 "ReplicaSet creates Pending pods" bash -c '[[ "$("$KUBECTL" get pods -l app=smoke --field-selector=status.phase=Pending -o name | wc -l)" == 2 ]]'
check "delete Deployment" k -n default delete deployment smoke --wait=false
eventually 30 "garbage collector removes the ReplicaSet" no_rs
check "kubectl apply (OpenAPI validation)" bash -c 'printf "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: applied, namespace: smoke}\ndata: {a: b}\n" | "$KUBECTL" apply -f -'
check "restart-apiserver" "$cp" restart-apiserver
check "kubectl works after the restart" k -n smoke get cm applied
check "status" "$cp" status
dir="$TRELLIS_CP_DIR"
check "down" "$cp" down
trap - EXIT
check "down removed the dir" test ! -e "$dir"

echo "$pass passed, $fail failed"
((fail == 0))
