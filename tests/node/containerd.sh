#!/usr/bin/env bash
# A private containerd for the node tier: its own root, state, socket and CNI
# config under one directory, so it never touches (or needs) a system
# containerd. Debian's containerd 1.6 + runc, CRI plugin on, cgroupfs driver.
#
#   containerd.sh config DIR [NETNS]   write DIR/containerd.toml and the CNI conf
#   containerd.sh start  DIR [NETNS]   start it (inside netns NETNS if given),
#                                      wait for the socket, write DIR/containerd.pid
#   containerd.sh stop   DIR           stop it and the shims it started
#   containerd.sh import DIR TAR...    import OCI image archives (namespace k8s.io)
#
# Pod network (CNI bridge + host-local, Debian's containernetworking-plugins):
# bridge $SAMETAG_BRIDGE (default stnode0), pods in $SAMETAG_POD_CIDR
# (default 10.244.0.0/24), no masquerade: pods only reach the node.
set -euo pipefail

BRIDGE=${SAMETAG_BRIDGE:-stnode0}
POD_CIDR=${SAMETAG_POD_CIDR:-10.244.0.0/24}
PAUSE_IMAGE=${SAMETAG_PAUSE_IMAGE:-sametag.local/pause:dev}
CNI_BIN=${SAMETAG_CNI_BIN:-/usr/lib/cni}

die() { echo "containerd.sh: $*" >&2; exit 1; }

config() {
	local dir=$1
	mkdir -p "$dir/root" "$dir/state" "$dir/cni/net.d" "$dir/cni/cache" "$dir/opt" "$dir/log"
	cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.ttrpc.sock"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  disable_apparmor = true
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which some sandboxes
  # (this project's CI machines among them) do not grant even to root; the
  # kubelet asks -998 for every pod sandbox. Cap requests at containerd's own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
TOML
	# The gateway (.1 of the pod range) is the node's address on the bridge.
	cat >"$dir/cni/net.d/10-sametag.conflist" <<JSON
{
  "cniVersion": "0.4.0",
  "name": "sametag-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}
JSON
}

start() {
	local dir=$1 netns=${2:-}
	command -v containerd >/dev/null || die "containerd not installed (apt-get install containerd runc containernetworking-plugins)"
	[ -x "$CNI_BIN/bridge" ] || die "$CNI_BIN/bridge missing (apt-get install containernetworking-plugins)"
	config "$dir"
	local run=()
	[ -n "$netns" ] && run=(nsenter "--net=/run/netns/$netns" --)
	"${run[@]}" containerd --config "$dir/containerd.toml" >"$dir/log/containerd.log" 2>&1 &
	echo $! >"$dir/containerd.pid"
	for _ in $(seq 100); do
		if ctr --address "$dir/containerd.sock" version >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null || { tail -20 "$dir/log/containerd.log" >&2; die "containerd exited"; }
		sleep 0.2
	done
	tail -20 "$dir/log/containerd.log" >&2
	die "containerd did not answer on $dir/containerd.sock in 20s"
}

stop() {
	local dir=$1
	[ -f "$dir/containerd.pid" ] || return 0
	local pid
	pid=$(cat "$dir/containerd.pid")
	# Kill the task processes first (shims outlive containerd by design).
	if ctr --address "$dir/containerd.sock" version >/dev/null 2>&1; then
		for ns in $(ctr --address "$dir/containerd.sock" namespaces ls -q 2>/dev/null); do
			for t in $(ctr --address "$dir/containerd.sock" -n "$ns" tasks ls -q 2>/dev/null); do
				ctr --address "$dir/containerd.sock" -n "$ns" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
			done
		done
	fi
	kill "$pid" 2>/dev/null || true
	for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	kill -9 "$pid" 2>/dev/null || true
	# Shims of this containerd carry its state dir on their command line.
	for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $dir/containerd.sock" || true); do
		kill -9 "$shim" 2>/dev/null || true
	done
	rm -f "$dir/containerd.pid"
}

import() {
	local dir=$1
	shift
	for tar in "$@"; do
		ctr --address "$dir/containerd.sock" -n k8s.io images import "$tar" >/dev/null
	done
}

cmd=${1:-}
[ $# -ge 2 ] || die "usage: containerd.sh config|start|stop|import DIR [...]"
shift
case $cmd in
config) config "$@" ;;
start) start "$@" ;;
stop) stop "$@" ;;
import) import "$@" ;;
*) die "unknown command $cmd" ;;
esac
