#!/usr/bin/env bash
# The test suite: unit and process tests, and the tests against a real
# kube-apiserver + etcd + kube-controller-manager started for this run
# (e2e/control-plane.sh; binaries built from upstream Go modules, cached).
set -euo pipefail
cd "$(dirname "$0")/.."

bash e2e/control-plane.sh deps >/dev/null
eval "$(bash e2e/control-plane.sh up)"
trap 'bash e2e/control-plane.sh down >/dev/null 2>&1 || true' EXIT
export TRELLIS_TEST_KUBECONFIG="$KUBECONFIG" TRELLIS_KUBECTL="$KUBECTL"

cargo test --workspace
