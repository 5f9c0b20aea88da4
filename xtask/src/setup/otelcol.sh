#!/usr/bin/env bash
# Builds an OpenTelemetry Collector for the tracing test from the Go module proxy: the
# collector's own packages at the given release (an OTLP receiver, a file exporter writing OTLP
# JSON lines), put together by otelcol/main.go, into "$1/otelcol-<version>/bin/otelcol". Called
# by `cargo xtask setup` when it is missing; the module and build caches are "$1/go", shared
# with kubernetes.sh.
set -euo pipefail
out=${1:?usage: otelcol.sh CACHE_DIR COLLECTOR_VERSION}
version=${2:?the collector release, e.g. v0.161.0}
here=$(cd "$(dirname "$0")" && pwd)

# The machine's Go, never a downloaded toolchain; no cgo, so the binary is static.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
export GOMODCACHE="$out/go/mod" GOCACHE="$out/go/build"
dest="$out/otelcol-$version"
module="$out/modules/otelcol-$version"
mkdir -p "$dest/bin" "$module" "$GOMODCACHE" "$GOCACHE"
cp "$here/otelcol/main.go" "$module/main.go"
cd "$module"
if [ ! -f .weft-tidy ]; then
  echo "resolving the OpenTelemetry Collector $version"
  printf 'module weft.invalid/otelcol\n\ngo 1.26.0\n' > go.mod
  # Every collector module at one release: the core's and contrib's share its number.
  go mod edit \
    -require="go.opentelemetry.io/collector/otelcol@$version" \
    -require="go.opentelemetry.io/collector/receiver/otlpreceiver@$version" \
    -require="go.opentelemetry.io/collector/service@$version" \
    -require="github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter@$version"
  go mod tidy
  touch .weft-tidy
fi
go build -trimpath -ldflags "-s -w" -o "$dest/bin/otelcol.tmp" .
mv "$dest/bin/otelcol.tmp" "$dest/bin/otelcol"
