#!/usr/bin/env bash
# Builds kube-apiserver from Debian bookworm's `kubernetes` source package (TESTING.md §2) into
# "$1/bin". Called by `cargo xtask setup` when the cached binary is missing; every step is
# idempotent, so an interrupted run resumes. Needs golang-go, dpkg-dev and Debian's reflect2 and
# json-iterator Go sources installed first.
set -euo pipefail
root=${1:?usage: kube_apiserver.sh CACHE_DIR}
version=1.20.5+really1.20.2-1.1+deb12u1
mkdir -p "$root/apt/lists/partial" "$root/apt/archives/partial" "$root/src" "$root/bin" "$root/gopath/src/k8s.io"

# A private apt configuration with deb-src twins of the machine's Debian stanzas, so the system's
# own sources stay untouched.
sources="$root/apt/sources.list"
: > "$sources"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  awk -v RS='' '/debian-archive-keyring/ && /Types:[ \t]*deb/' "$f" | while read -r key value rest; do
    case "$key" in
      URIs:) uri=$value ;;
      Suites:) suites="$value $rest" ;;
      Signed-By:) keyring=$value ;;
    esac
    if [ -n "${uri:-}" ] && [ -n "${suites:-}" ] && [ -n "${keyring:-}" ]; then
      for s in $suites; do echo "deb-src [signed-by=$keyring] $uri $s main" >> "$sources"; done
      uri= suites= keyring=
    fi
  done
done
if [ -f /etc/apt/sources.list ]; then
  sed -n 's/^deb \(.*\)$/deb-src \1/p' /etc/apt/sources.list >> "$sources"
fi
[ -s "$sources" ] || { echo "no Debian apt sources found to derive a deb-src line from" >&2; exit 1; }
apt_opts=(-o "Dir::Etc::SourceList=$sources" -o Dir::Etc::SourceParts=/dev/null -o APT::Sandbox::User=root
          -o "Dir::State::Lists=$root/apt/lists" -o "Dir::Cache=$root/apt")

tree="$root/src/kubernetes-1.20.5+really1.20.2"
if [ ! -f "$tree/.weft-prepared" ]; then
  echo "fetching the kubernetes $version source package"
  apt-get "${apt_opts[@]}" -q update
  (cd "$root/src" && apt-get "${apt_opts[@]}" -q source --download-only "kubernetes=$version")
  rm -rf "$tree"
  (cd "$root/src" && dpkg-source -q --no-check -x kubernetes_*.dsc "$tree")
  # The vendored reflect2 1.0.1 crashes under Go >= 1.18; Debian's packaged copies work.
  for dir in github.com/modern-go/reflect2 github.com/json-iterator/go; do
    rm -rf "$tree/vendor/$dir"
    cp -r "/usr/share/gocode/src/$dir" "$tree/vendor/$dir"
  done
  touch "$tree/.weft-prepared"
fi

export GOPATH="$root/gopath" GO111MODULE=off CGO_ENABLED=0 GOCACHE="$root/gocache"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

openapi=pkg/generated/openapi/zz_generated.openapi.go
if [ ! -s "$openapi" ]; then
  echo "generating $openapi"
  go build -o "$root/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  pkgs=$(grep -rl --include='*.go' '+k8s:openapi-gen=' pkg staging/src vendor/k8s.io 2>/dev/null \
    | xargs -n1 dirname \
    | sed -e 's#^staging/src/##' -e 's#^vendor/##' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' | sort -u | paste -sd, -)
  "$root/bin/openapi-gen" --input-dirs "$pkgs" --output-package k8s.io/kubernetes/pkg/generated/openapi \
    --output-base "$GOPATH/src" -O zz_generated.openapi \
    --go-header-file hack/boilerplate/boilerplate.generatego.txt \
    --report-filename /dev/null
fi
echo "building kube-apiserver (several minutes on a cold cache)"
go build -o "$root/bin/kube-apiserver.tmp" ./cmd/kube-apiserver
mv "$root/bin/kube-apiserver.tmp" "$root/bin/kube-apiserver"
"$root/bin/kube-apiserver" --version
