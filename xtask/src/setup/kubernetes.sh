#!/usr/bin/env bash
# Builds Kubernetes' binaries, etcd and CoreDNS at the given releases from the Go module proxy
# (TESTING.md §2) into "$1/kubernetes-v<version>/bin", "$1/etcd-v<version>/bin" and
# "$1/coredns-v<version>/bin". Called by
# `cargo xtask setup` when a cached binary is missing. Every step is idempotent, so an interrupted run
# resumes; the module and build caches live under "$1/go", shared by every release, so another
# release downloads only what changed.
#
# k8s.io/kubernetes cannot be built by path: its go.mod points the staging modules (k8s.io/api,
# k8s.io/client-go, ...) at local directories. A small wrapper module requires it and replaces each
# staging module with its published v0.<minor>.<patch> twin; its `tool` lines name the commands.
# etcd's main module has replace lines of its own, so it gets the same treatment: a wrapper whose
# main calls etcdmain, as etcd's own main.go does.
set -euo pipefail
out=${1:?usage: kubernetes.sh CACHE_DIR KUBERNETES_VERSION ETCD_VERSION COREDNS_VERSION}
kube_version=${2:?kubernetes version, e.g. 1.37.2}
etcd_version=${3:?etcd version, e.g. 3.6.16}
coredns_version=${4:?coredns version, e.g. 1.15.0}

# The machine's Go, never a downloaded toolchain; no cgo, so the binaries are static.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
export GOMODCACHE="$out/go/mod" GOCACHE="$out/go/build"
kube_bin="$out/kubernetes-v$kube_version/bin" etcd_bin="$out/etcd-v$etcd_version/bin"
coredns_bin="$out/coredns-v$coredns_version/bin"
mkdir -p "$kube_bin" "$etcd_bin" "$coredns_bin" "$GOMODCACHE" "$GOCACHE"

# The control plane, and what a real node runs (the harness's real-node mode): kubelet, kube-proxy,
# and kubectl for users and tests.
kube_commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

build_kubernetes() {
  local module="$out/modules/kubernetes-$kube_version"
  mkdir -p "$module"
  cd "$module"
  # The marker names the commands tidied for: a command added since means tidying again.
  if [ "$(cat .weft-tidy 2>/dev/null)" != "${kube_commands[*]}" ]; then
    echo "resolving k8s.io/kubernetes v$kube_version (a large download the first time)"
    printf 'module weft.invalid/kubernetes\n\ngo 1.26.0\n' > go.mod
    go mod edit -require="k8s.io/kubernetes@v$kube_version"
    local upstream
    upstream=$(go mod download -json "k8s.io/kubernetes@v$kube_version" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
    [ -f "$upstream" ] || { echo "no go.mod for k8s.io/kubernetes v$kube_version" >&2; exit 1; }
    local staging minor_patch=${kube_version#*.}
    staging=$(sed -n 's#^\s*\(k8s.io/[A-Za-z0-9._-]*\) => \./staging/.*#\1#p' "$upstream")
    [ -n "$staging" ] || { echo "found no staging replace lines in $upstream" >&2; exit 1; }
    for m in $staging; do go mod edit -replace="$m=$m@v0.$minor_patch"; done
    for c in "${kube_commands[@]}"; do go mod edit -tool="k8s.io/kubernetes/cmd/$c"; done
    go mod tidy
    echo "${kube_commands[*]}" > .weft-tidy
  fi
  # What `hack/lib/version.sh` stamps, so `--version` and the API's /version name the release.
  local pkg=k8s.io/component-base/version minor=${kube_version#*.}
  minor=${minor%%.*}
  local ldflags="-s -w -X $pkg.gitVersion=v$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=v$kube_version"
  for c in "${kube_commands[@]}"; do
    [ -x "$kube_bin/$c" ] && continue
    echo "building $c v$kube_version (several minutes on a cold cache)"
    go build -trimpath -ldflags "$ldflags" -o "$kube_bin/$c.tmp" "k8s.io/kubernetes/cmd/$c"
    mv "$kube_bin/$c.tmp" "$kube_bin/$c"
  done
  "$kube_bin/kube-apiserver" --version
}

# A wrapper module in "$out/modules/$1" that requires module $2 at v$3, with stdin as its
# main.go; tidied once (the marker says so).
wrapper_module() {
  local dir="$out/modules/$1"
  mkdir -p "$dir"
  cd "$dir"
  if [ ! -f .weft-tidy ]; then
    echo "resolving $2 v$3"
    printf 'module weft.invalid/wrapper\n\ngo 1.26.0\n' > go.mod
    cat > main.go
    go mod edit -require="$2@v$3"
    go mod tidy
    touch .weft-tidy
  else
    cat > /dev/null
  fi
}

# Builds the wrapper module in the current directory into $1 (a binary path), then runs it with $2.
build_wrapper() {
  echo "building $(basename "$1")"
  go build -trimpath -ldflags "-s -w" -o "$1.tmp" .
  mv "$1.tmp" "$1"
  "$1" "$2"
}

build_etcd() {
  [ -x "$etcd_bin/etcd" ] && return
  wrapper_module "etcd-$etcd_version" go.etcd.io/etcd/server/v3 "$etcd_version" <<'GO'
// etcd's own main: the server package's entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  build_wrapper "$etcd_bin/etcd" --version
}

# The cluster DNS of the harness's real nodes, built like CoreDNS's own main.go: every plugin of
# its default plugin.cfg, registered by importing core/plugin.
build_coredns() {
  [ -x "$coredns_bin/coredns" ] && return
  wrapper_module "coredns-$coredns_version" github.com/coredns/coredns "$coredns_version" <<'GO'
// CoreDNS's own main: every default plugin, then the server.
package main

import (
	_ "github.com/coredns/coredns/core/plugin"
	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
GO
  build_wrapper "$coredns_bin/coredns" -version
}

build_etcd
build_coredns
build_kubernetes
