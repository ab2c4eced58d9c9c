#!/usr/bin/env bash
# Regenerate the staging-module replace directives in tests/harness/go.mod from
# the pinned Kubernetes release's own go.mod.
#
# Kubernetes requires every staging module (k8s.io/api, k8s.io/client-go, ...)
# at v0.0.0 and replaces it with ./staging/src/k8s.io/<name>. A module of ours
# that requires k8s.io/kubernetes must replace each of them with the published
# k8s.io/<name> v0.<minor>.<patch> instead. The staging set changes between
# releases, so it is read from the release, never typed by hand.
#
# Usage: tests/harness/gen-replaces.sh [v1.34.x]   (default: the version in versions.env)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
# shellcheck source=versions.env
. ./versions.env
k8s="${1:-$K8S_VERSION}"
staging="v0.${k8s#v1.}"

gomod="$(go mod download -json "k8s.io/kubernetes@${k8s}" |
  sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
[ -f "$gomod" ] || { echo "gen-replaces: no go.mod for k8s.io/kubernetes@${k8s}" >&2; exit 1; }

# Lines like: k8s.io/api => ./staging/src/k8s.io/api
mods="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/src/.*$#\1#p' "$gomod")"
[ -n "$mods" ] || { echo "gen-replaces: no staging replaces found in $gomod" >&2; exit 1; }

# Drop every existing k8s.io replace, then add the release's set.
for old in $(go mod edit -json | sed -n 's#^[[:space:]]*"Path": "\(k8s\.io/[^"]*\)"$#\1#p' | sort -u); do
  go mod edit -dropreplace="$old" 2>/dev/null || true
done
args=()
for m in $mods; do
  args+=("-replace=${m}=${m}@${staging}")
done
go mod edit -require="k8s.io/kubernetes@${k8s}" "${args[@]}"
echo "gen-replaces: k8s.io/kubernetes ${k8s}, $(echo "$mods" | wc -l) staging modules -> ${staging}"
