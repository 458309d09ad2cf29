#!/usr/bin/env bash
# The walk-through: a real Kubernetes control plane (upstream v1.36 built from
# Go modules, on loopback), Trellis's CRDs, the shop's MeshServices and
# ResiliencePolicies, and the operator reconciling them into Deployments with
# the sidecar injected.
#
#   bash scripts/walkthrough.sh          # run it, show the result, tear down
#   bash scripts/walkthrough.sh --keep   # leave the control plane and operator running
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[[ ${1:-} == --keep ]] && keep=true
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building trellis-operator"
cargo build -q -p trellis-operator
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

say "starting the control plane (first run builds kube-apiserver from Go modules: minutes)"
bash e2e/control-plane.sh deps >/dev/null
eval "$(bash e2e/control-plane.sh up)"
operator_pid=
cleanup() {
  [[ -n $operator_pid ]] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null
  bash e2e/control-plane.sh down >/dev/null 2>&1 || true
}
if $keep; then
  trap 'echo; echo "left running: export KUBECONFIG=$KUBECONFIG; stop with: kill $operator_pid; TRELLIS_CP_DIR=$TRELLIS_CP_DIR bash e2e/control-plane.sh down"' EXIT
else
  trap cleanup EXIT
fi

say "kubectl apply -f crds/"
kubectl apply --server-side -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/meshservices.mesh.trellis.dev crd/resiliencepolicies.mesh.trellis.dev

say "kubectl apply -f examples/"
kubectl apply -f examples/shop/00-namespace.yaml
kubectl apply -f examples/shop/ -f examples/policies/

say "running the operator (log: $TRELLIS_CP_DIR/logs/trellis-operator.log)"
"$target_dir/debug/trellis-operator" run \
  --webhook=false --leader-election=false \
  --metrics-bind 127.0.0.1:0 \
  >"$TRELLIS_CP_DIR/logs/trellis-operator.log" 2>&1 &
operator_pid=$!

kubectl wait --for=condition=Progressing --timeout=60s -n shop msvc --all
kubectl wait --for=condition=Accepted --timeout=60s -n shop rpol --all

say "kubectl get msvc,rpol -n shop"
kubectl get msvc,rpol -n shop

say "the rendered Deployments carry the sidecar (a native sidecar: an init container that keeps running)"
kubectl get deploy -n shop -o custom-columns='NAME:.metadata.name,SIDECAR:.spec.template.spec.initContainers[0].name,RESTART:.spec.template.spec.initContainers[0].restartPolicy,APP:.spec.template.spec.containers[0].name,CONFIG-HASH:.spec.template.metadata.annotations.mesh\.trellis\.dev/config-hash'

say "pods stay Pending (this control plane has no node), so MeshServices say Progressing, not Ready"
kubectl get msvc -n shop payments -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'

say "the orders sidecar's config: the payments upstream with its resolved policy"
kubectl get configmap -n shop orders-proxy -o jsonpath='{.data.proxy\.yaml}' | sed -n '/- name: payments/,/- name: products/p' | head -60
