//go:build tools

// Pins etcd for the kind node image: `go install go.etcd.io/etcd/server/v3@v3.6.8`
// is refused because of its replace directives, so it is built from this module.
package tools

import _ "go.etcd.io/etcd/server/v3"
