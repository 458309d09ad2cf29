#!/usr/bin/env bash
# The test suite: unit and process tests, and the operator's tests against a
# real kube-apiserver + etcd started for the run (e2e/control-plane.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
