module github.com/trellis/trellis/e2e/kind/pause

go 1.26.0
