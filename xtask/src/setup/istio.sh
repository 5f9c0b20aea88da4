#!/usr/bin/env bash
# Builds Istio's control plane, `pilot-discovery` (istiod), and its echo app (`echo-server`,
# `echo-client`: the Gateway API mesh conformance suite's echo-advanced image is that app) at the
# given istio.io/istio module version from the Go module proxy into "$1/istio-<version>/bin",
# and copies Istio's CRDs and the echo app's serving certificate from the same module to
# "$1/istio-<version>/". Called by `cargo xtask setup` when either
# is missing; the module and build caches are "$1/go", shared with kubernetes.sh. Istio tags its
# releases without the `v` Go wants, so the module proxy serves its commits as pseudo-versions.
set -euo pipefail
out=${1:?usage: istio.sh CACHE_DIR ISTIO_MODULE_VERSION}
version=${2:?istio.io/istio module version, e.g. v0.0.0-20260827124520-eed52ebb66ad}

# The machine's Go, never a downloaded toolchain; no cgo, so the binary is static.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
export GOMODCACHE="$out/go/mod" GOCACHE="$out/go/build"
dest="$out/istio-$version"
module="$out/modules/istio-$version"
mkdir -p "$dest/bin" "$module" "$GOMODCACHE" "$GOCACHE"
cd "$module"
if [ ! -f .weft-tidy-echo ]; then
  echo "resolving istio.io/istio $version (a large download the first time)"
  printf 'module weft.invalid/istio\n\ngo 1.26.0\n' > go.mod
  go mod edit -require="istio.io/istio@$version" -tool=istio.io/istio/pilot/cmd/pilot-discovery \
    -tool=istio.io/istio/pkg/test/echo/cmd/server -tool=istio.io/istio/pkg/test/echo/cmd/client
  go mod tidy
  touch .weft-tidy-echo
fi
if [ ! -x "$dest/bin/pilot-discovery" ]; then
  echo "building pilot-discovery (a few minutes on a cold cache)"
  go build -trimpath -ldflags "-s -w" -o "$dest/bin/pilot-discovery.tmp" istio.io/istio/pilot/cmd/pilot-discovery
  mv "$dest/bin/pilot-discovery.tmp" "$dest/bin/pilot-discovery"
fi
for app in server client; do
  if [ ! -x "$dest/bin/echo-$app" ]; then
    echo "building Istio's echo $app"
    go build -trimpath -ldflags "-s -w" -o "$dest/bin/echo-$app.tmp" "istio.io/istio/pkg/test/echo/cmd/$app"
    mv "$dest/bin/echo-$app.tmp" "$dest/bin/echo-$app"
  fi
done
source_dir=$(go list -m -f '{{.Dir}}' istio.io/istio)
mkdir -p "$dest/echo-certs"
cp "$source_dir/tests/testdata/certs/dns/cert-chain.pem" "$dest/echo-certs/cert.crt"
cp "$source_dir/tests/testdata/certs/dns/key.pem" "$dest/echo-certs/cert.key"
cp "$source_dir/manifests/charts/base/files/crd-all.gen.yaml" "$dest/crd-all.gen.yaml.tmp"
mv "$dest/crd-all.gen.yaml.tmp" "$dest/crd-all.gen.yaml"
