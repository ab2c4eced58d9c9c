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
# One directory per pinned version pair. Each harness binary also carries a
# stamp of its own sources (go.mod, go.sum, cmd/<name>/), so an edited command
# is rebuilt (seconds, with a warm Go build cache) and the others are not.
# Binaries are replaced with an atomic rename: a running test keeps its copy.
bin="$cache/bin-k8s-${K8S_VERSION}-helm-${HELM_VERSION}"
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
  local name="$1" stamp
  stamp="$(cd "$here" && cat go.mod go.sum $(find "cmd/$name" -name '*.go' | sort) | sha256sum | cut -c1-16)"
  if [ "$force" = 0 ] && [ -x "$bin/$name" ] && [ "$(cat "$bin/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$name: cached"
    return
  fi
  log "$name: building (k8s.io/kubernetes ${K8S_VERSION}; cold: ~22 CPU-minutes for all tools, warm: under a minute)"
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$bin/.$name.$$" "./cmd/$name")
  mv -f "$bin/.$name.$$" "$bin/$name"
  echo "$stamp" > "$bin/.$name.stamp"
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
  mv -f "$tmp/helm" "$bin/helm"
  rmdir "$tmp"
  log "helm: done"
fi

log "all tools in $bin"
echo "$bin"
