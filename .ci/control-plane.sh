#!/usr/bin/env bash
# CI preparation for tests that need the e2e Kubernetes control plane:
# installs etcd-server/openssl/curl (Debian) when missing and builds (or finds
# cached) kube-apiserver, kube-controller-manager and kubectl.
# Cold: ~6-10 min on 2 cores; warm (binaries cached): well under a second.
# Prints the bin dir. Source-free: call it from .ci/run before the e2e tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/e2e/control-plane.sh" deps
"$root/e2e/kube/build.sh"
