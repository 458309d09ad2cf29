//go:build tools

// Package kube only records, as blank imports, the upstream commands that
// e2e/kube/build.sh compiles, so that go.mod/go.sum pin all of their deps.
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
