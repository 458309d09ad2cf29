#!/usr/bin/env bash
# The operator at scale against a real control plane (etcd, kube-apiserver,
# kube-controller-manager from e2e/control-plane.sh; binaries cached in
# ~/.cache/trellis/kube): 1,000 MeshServices and 200 ResiliencePolicies.
#   bench/operator-scale/run.sh                  convergence, a policy change, memory steps
#   bench/operator-scale/run.sh --no-steps       convergence and the policy change only
# Extra flags go to the driver (`operator-scale --help`). Uses the control
# plane in KUBECONFIG when TRELLIS_CP_DIR is set, else starts (and stops) one.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release -p trellis-operator -p trellis-bench-operator-scale
bin="${CARGO_TARGET_DIR:-target}/release"

if [[ -z "${TRELLIS_CP_DIR:-}" ]]; then
  eval "$(e2e/control-plane.sh up)"
  trap 'e2e/control-plane.sh down' EXIT
fi
"$bin/operator-scale" --operator-bin "$bin/trellis-operator" "$@"
