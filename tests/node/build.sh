#!/usr/bin/env bash
# Build the node binary (tests/harness/cmd/node: kubelet, kube-scheduler,
# kube-proxy, cluster DNS, forwarder) into the cache, keyed by the pinned
# Kubernetes version and its sources. Prints the binary's path last.
#
# A cold build compiles what the kubelet and kube-proxy add to the control
# plane's dependency tree: about 2 minutes on 2 cores once the control plane's
# build has warmed the Go cache (measured in an isolated cache); a warm one
# relinks in 20-40 s, and a cached binary is reused as is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
harness="$repo/tests/harness"
# shellcheck source=../harness/versions.env
. "$harness/versions.env"
cache="${SAMETAG_CACHE_DIR:-$repo/tests/.cache}"
key="$( (cd "$harness" && cat go.mod go.sum cmd/node/*.go) | sha256sum | cut -c1-12)"
bin="$cache/node-bin-k8s-${K8S_VERSION}-$key/node"
if [ -x "$bin" ] && [ "${1:-}" != "--force" ]; then
	echo "build.sh: node binary cached" >&2
	echo "$bin"
	exit 0
fi
command -v go >/dev/null || { echo "build.sh: go is not installed" >&2; exit 1; }
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
start=$(date +%s)
echo "build.sh: building the node binary (kubelet, kube-scheduler, kube-proxy ${K8S_VERSION})" >&2
mkdir -p "$(dirname "$bin")"
(cd "$harness" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$bin.tmp" ./cmd/node)
mv "$bin.tmp" "$bin"
echo "build.sh: node binary built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
