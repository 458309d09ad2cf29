//go:build tools

// Pins Jaeger (the OTLP receiver and query API of the trace tests):
// `go install github.com/jaegertracing/jaeger/cmd/jaeger@VERSION` is refused
// because of its replace directive, so it is built from this module.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
