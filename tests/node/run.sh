#!/usr/bin/env bash
# The node tier on its own: bring the one-node Kubernetes up (builds are
# cached under tests/.cache), run the e2e tests in tests/node/e2e against it,
# and always tear it down. Needs root and containerd (see README.md).
#
#   tests/node/run.sh [go test args...]     e.g. -run TestNodeRunsPods
# Env: SAMETAG_NODE_KEEP=1 leaves the node up after the tests (node.sh down).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
dir="${SAMETAG_NODE_DIR:-${SAMETAG_CACHE_DIR:-$repo/tests/.cache}/node-run}"
started=$(date +%s)

bash "$here/setup-packages.sh"
bash "$here/node.sh" down "$dir" >/dev/null 2>&1 || true
cni_netns() { ls /var/run/netns 2>/dev/null | grep '^cni-' | sort || true; }
netns_before=$(cni_netns)
# Down, then check that no pod network namespace outlived the node: one left
# behind fails the run.
teardown() {
	local rc=$? left
	bash "$here/node.sh" down "$dir" || rc=1
	left=$(comm -13 <(echo "$netns_before") <(cni_netns))
	if [ -n "$left" ]; then
		echo "run.sh: network namespaces left behind after node.sh down: $(echo "$left" | tr '\n' ' ')" >&2
		rc=1
	else
		echo "run.sh: node down, no pod network namespace left behind" >&2
	fi
	exit "$rc"
}
if [ "${SAMETAG_NODE_KEEP:-0}" != 1 ]; then
	trap teardown EXIT
fi
env_file=$(bash "$here/node.sh" up "$dir" | tail -n 1)
# shellcheck disable=SC1090
. "$env_file"
export SAMETAG_REPO="$repo"
echo "run.sh: node up in $(( $(date +%s) - started ))s; running tests" >&2
cd "$here/e2e"
go test -count=1 -timeout 30m -v "$@" ./...
