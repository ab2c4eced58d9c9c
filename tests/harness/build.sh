#!/usr/bin/env bash
# Build the end-to-end test tools into a cache directory keyed by the pinned
# versions, and print that directory on the last line of stdout:
#
#   controlplane  etcd + kube-apiserver + kube-controller-manager in one process
#   kubectl       upstream kubectl, same Kubernetes version
#   helm          helm v3, from the Go module proxy
#
# Idempotent: a tool already in the cache dir is not rebuilt; a warm Go build
# cache makes a rebuild after a source change take seconds.
#
# Usage: tests/harness/build.sh [--force]
# Env:   SAMETAG_CACHE_DIR  cache root (default: <repo>/tests/.cache)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"

force=0
[ "${1:-}" = "--force" ] && force=1

command -v go >/dev/null || { echo "build.sh: go is not installed (need Go >= 1.24)" >&2; exit 1; }

cache="${SAMETAG_CACHE_DIR:-$repo/tests/.cache}"
# The harness sources are part of the key, so an edited harness is rebuilt.
src_hash="$(cd "$here" && cat go.mod go.sum $(find cmd -name '*.go' | sort) | sha256sum | cut -c1-12)"
bin="$cache/bin-k8s-${K8S_VERSION}-helm-${HELM_VERSION}-${src_hash}"
mkdir -p "$bin"

# Stamp the version the way Kubernetes' hack/lib/version.sh does, so that
# /version, `kubectl version` and helm's .Capabilities.KubeVersion are real.
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

start=$(date +%s)
log() { echo "build.sh: [$(( $(date +%s) - start ))s] $*" >&2; }

build_harness() { # name
  local name="$1"
  if [ "$force" = 0 ] && [ -x "$bin/$name" ]; then
    log "$name: cached"
    return
  fi
  log "$name: building (k8s.io/kubernetes ${K8S_VERSION}; a cold build takes a while)"
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$bin/$name.tmp" "./cmd/$name")
  mv "$bin/$name.tmp" "$bin/$name"
  log "$name: done"
}

build_harness controlplane
build_harness kubectl

if [ "$force" = 0 ] && [ -x "$bin/helm" ]; then
  log "helm: cached"
else
  log "helm: go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
  tmp="$(mktemp -d)"
  # Outside our module: helm's own go.mod decides its dependencies.
  (cd "$tmp" && CGO_ENABLED=0 GOBIN="$tmp" GOFLAGS=-mod=mod go install -trimpath -ldflags='-s -w' "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}")
  mv "$tmp/helm" "$bin/helm"
  rmdir "$tmp"
  log "helm: done"
fi

# Older builds of this harness (other versions or sources) are dead weight.
for old in "$cache"/bin-k8s-*; do
  [ "$old" = "$bin" ] || [ ! -d "$old" ] || { rm -rf "$old"; log "removed stale $(basename "$old")"; }
done

log "all tools in $bin"
echo "$bin"
