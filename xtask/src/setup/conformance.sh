#!/usr/bin/env bash
# Builds the Gateway API conformance suite (the sigs.k8s.io/gateway-api/conformance module at
# the given release, from the Go module proxy) into the test binary
# "$1/gateway-api-conformance-<version>/bin/conformance.test", run by tests/tests/conformance.rs
# with the suite's own flags, and copies its mesh manifests beside it. Called by `cargo xtask setup` when it is missing; the module and
# build caches are "$1/go", shared with kubernetes.sh.
set -euo pipefail
out=${1:?usage: conformance.sh CACHE_DIR GATEWAY_API_VERSION}
version=${2:?the Gateway API release, e.g. v1.6.3}
here=$(cd "$(dirname "$0")" && pwd)

# The machine's Go, never a downloaded toolchain; no cgo, so the binary is static.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
export GOMODCACHE="$out/go/mod" GOCACHE="$out/go/build"
dest="$out/gateway-api-conformance-$version"
module="$out/modules/gateway-api-conformance-$version"
mkdir -p "$dest/bin" "$module" "$GOMODCACHE" "$GOCACHE"
cp "$here/conformance/conformance_test.go" "$module/conformance_test.go"
cd "$module"
if [ ! -f .weft-tidy ]; then
  echo "resolving sigs.k8s.io/gateway-api/conformance $version"
  printf 'module weft.invalid/conformance\n\ngo 1.26.0\n' > go.mod
  # The suite's go.mod takes the API from its own repository (a replace of ../, which a
  # dependency's replace cannot do): the same release, named.
  go mod edit -require="sigs.k8s.io/gateway-api/conformance@$version" -require="sigs.k8s.io/gateway-api@$version"
  go mod tidy
  touch .weft-tidy
fi
go test -c -trimpath -ldflags "-s -w" -o "$dest/bin/conformance.test.tmp" .
# Its mesh manifests, for the image they name (the harness assembles it): kept beside the binary,
# not read from the module cache, which may be pruned.
cp "$(go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)/mesh/manifests.yaml" "$dest/mesh-manifests.yaml"
mv "$dest/bin/conformance.test.tmp" "$dest/bin/conformance.test"
