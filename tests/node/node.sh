#!/usr/bin/env bash
# Bring a real one-node Kubernetes up (or down) for the node tier's tests.
#
#   tests/node/node.sh up [DIR]     build (cached), start, print DIR/env last
#   tests/node/node.sh down [DIR]   stop everything, remove the network
#   tests/node/node.sh status [DIR]
#
# What runs (all from the pinned Kubernetes release, see tests/harness):
#   host:  controlplane (etcd, kube-apiserver, kube-controller-manager) on
#          loopback; `node forward` on the host end of the node's veth link
#          carries the node's and the pods' apiserver traffic to loopback.
#   netns $NETNS (its own network namespace, no default route, so nothing in
#          it can reach beyond this machine): containerd (private root, state
#          and socket under DIR), kubelet, kube-scheduler, kube-proxy
#          (iptables), cluster DNS; pods on the CNI bridge in $POD_CIDR.
#   host routes: $POD_CIDR and $SERVICE_CIDR via the veth, so the apiserver
#          (webhooks) and the tests reach pods and ClusterIPs.
#
# Needs root, containerd + runc + containernetworking-plugins (Debian), iptables,
# iproute2, util-linux (unshare, nsenter), python3, gcc, go, cargo.
# DIR/env (sourced by the tests) sets KUBECONFIG, SAMETAG_KUBECTL, SAMETAG_HELM,
# SAMETAG_NODE_DIR, SAMETAG_CONTAINERD_SOCK, SAMETAG_NODE_IMAGE_DIR (the image archives).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${SAMETAG_CACHE_DIR:-$repo/tests/.cache}"
NETNS=${SAMETAG_NETNS:-sametag-node}
HOST_IF=stn-host
NODE_IF=stn-node
LINK_HOST_IP=10.243.0.1
LINK_NODE_IP=10.243.0.2
POD_CIDR=${SAMETAG_POD_CIDR:-10.244.0.0/24}
POD_GW=${POD_CIDR%.*}.1
SERVICE_CIDR=10.0.0.0/24 # the control plane's --service-cluster-ip-range
CGROUP_ROOT=sametag-node
# The apiserver reaches the kubelet (exec, logs) at the node's InternalIP; by
# default it would first resolve the node's name with the host's DNS.
CONTROLLERS="nodelifecycle,deployment,replicaset,statefulset,serviceaccount,serviceaccount-token,namespace,garbagecollector,endpointslice,endpointslicemirroring,root-ca-cert-publisher,podgc,disruption"

start=$(date +%s)
log() { echo "node.sh: [$(( $(date +%s) - start ))s] $*" >&2; }
die() { echo "node.sh: $*" >&2; exit 1; }

cmd=${1:-}
dir=${2:-${SAMETAG_NODE_DIR:-$cache/node-run}}

need() {
	[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, containerd, cgroups)"
	local missing=()
	for c in containerd containerd-shim-runc-v2 runc ctr iptables ip unshare nsenter python3 gcc go; do
		command -v "$c" >/dev/null || missing+=("$c")
	done
	[ -x /usr/lib/cni/bridge ] || missing+=("/usr/lib/cni/bridge")
	[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (apt-get install containerd runc containernetworking-plugins iptables iproute2 util-linux python3 gcc)"
}

wait_file() { # file seconds pid what
	local f=$1 secs=$2 pid=$3 what=$4
	for _ in $(seq $((secs * 5))); do
		[ -s "$f" ] && return 0
		kill -0 "$pid" 2>/dev/null || die "$what exited; see its log"
		sleep 0.2
	done
	die "$what not ready after ${secs}s"
}

# The kubelet's cgroup root in every mounted cgroup hierarchy (each v1
# controller, the hybrid unified one, or the single v2 tree).
cgroup_dirs() {
	awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts | sort -u |
		while read -r m; do echo "$m/$CGROUP_ROOT"; done
}

up() {
	need
	ip netns list | grep -qw "$NETNS" && die "netns $NETNS exists: a node is up already (tests/node/node.sh down $dir)"
	# Our ranges must be unused here: routes for them go into the node.
	local net
	for net in "$LINK_HOST_IP/30" "$POD_CIDR" "$SERVICE_CIDR"; do
		if ip -4 route show match "$net" | grep -v '^default' | grep -q .; then
			die "$net is already routed on this machine ($(ip -4 route show match "$net" | grep -v '^default' | head -1)); set SAMETAG_POD_CIDR or free it"
		fi
	done
	rm -rf "$dir"
	mkdir -p "$dir/log"
	dir=$(cd "$dir" && pwd)

	log "building (cached): harness, node binary, images"
	local hbin node
	hbin=${SAMETAG_HARNESS_BIN_DIR:-$(bash "$repo/tests/harness/build.sh" | tail -n 1)}
	node=${SAMETAG_NODE_BIN:-$(bash "$here/build.sh" | tail -n 1)}
	local images
	# shellcheck disable=SC2086 # a list of image names
	images=$(bash "$here/images.sh" ${SAMETAG_NODE_IMAGES:-} | tail -n 1)

	log "control plane"
	"$hbin/controlplane" --kubeconfig "$dir/admin.kubeconfig" --data-dir "$dir/controlplane" \
		--ready-file "$dir/controlplane.ready" --controllers "$CONTROLLERS" \
		--apiserver-args "--kubelet-preferred-address-types=InternalIP" \
		>"$dir/log/controlplane.log" 2>&1 &
	echo $! >"$dir/controlplane.pid"
	wait_file "$dir/controlplane.ready" 180 "$(cat "$dir/controlplane.pid")" "controlplane (log: $dir/log/controlplane.log)"
	local server port
	server=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["server"])' "$dir/controlplane.ready")
	port=${server##*:}

	log "network: netns $NETNS, link $LINK_HOST_IP <-> $LINK_NODE_IP, pods $POD_CIDR"
	ip netns add "$NETNS"
	ip link add "$HOST_IF" type veth peer name "$NODE_IF"
	ip link set "$NODE_IF" netns "$NETNS"
	ip addr add "$LINK_HOST_IP/30" dev "$HOST_IF"
	ip link set "$HOST_IF" up
	ip -n "$NETNS" addr add "$LINK_NODE_IP/30" dev "$NODE_IF"
	ip -n "$NETNS" link set "$NODE_IF" up
	ip -n "$NETNS" link set lo up
	ip netns exec "$NETNS" sysctl -qw net.ipv4.ip_forward=1
	ip netns exec "$NETNS" sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
	ip route add "$POD_CIDR" via "$LINK_NODE_IP" dev "$HOST_IF"
	ip route add "$SERVICE_CIDR" via "$LINK_NODE_IP" dev "$HOST_IF"

	"$node" forward --listen "$LINK_HOST_IP:$port" --to "127.0.0.1:$port" >"$dir/log/forward.log" 2>&1 &
	echo $! >"$dir/forward.pid"

	for d in $(cgroup_dirs); do mkdir -p "$d"; done
	SAMETAG_POD_CIDR=$POD_CIDR bash "$here/containerd.sh" config "$dir/containerd"

	log "node: containerd, kubelet, kube-scheduler, kube-proxy in netns $NETNS"
	unshare --mount --propagation private nsenter "--net=/run/netns/$NETNS" -- \
		"$node" run --dir "$dir" --kubeconfig "$dir/admin.kubeconfig" \
		--apiserver-via "$LINK_HOST_IP:$port" --containerd-config "$dir/containerd/containerd.toml" \
		--node-ip "$LINK_NODE_IP" --pod-cidr "$POD_CIDR" --cluster-dns "$POD_GW" \
		--cgroup-root "/$CGROUP_ROOT" --ready-file "$dir/node.ready" \
		>"$dir/log/node.log" 2>&1 &
	echo $! >"$dir/node.pid"
	local sock=$dir/containerd/containerd.sock
	for _ in $(seq 150); do
		ctr --address "$sock" version >/dev/null 2>&1 && break
		kill -0 "$(cat "$dir/node.pid")" 2>/dev/null || die "node exited (log: $dir/log/node.log)"
		sleep 0.2
	done
	log "importing images from $images"
	bash "$here/containerd.sh" import "$dir/containerd" "$images"/*.tar
	wait_file "$dir/node.ready" 240 "$(cat "$dir/node.pid")" "node (logs: $dir/log)"

	cat >"$dir/env" <<ENV
export KUBECONFIG=$dir/admin.kubeconfig
export SAMETAG_NODE_DIR=$dir
export SAMETAG_KUBECTL=$hbin/kubectl
export SAMETAG_HELM=$hbin/helm
export SAMETAG_CONTAINERD_SOCK=$sock
export SAMETAG_NODE_IMAGE_DIR=$images
export SAMETAG_POD_CIDR=$POD_CIDR
export SAMETAG_SERVICE_CIDR=$SERVICE_CIDR
ENV
	log "node up: source $dir/env"
	echo "$dir/env"
}

stop_pid() { # pidfile seconds
	local f=$1 secs=$2 pid
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq $((secs * 5))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$f"
}

# The network namespaces of this node's pod sandboxes (containerd names them
# /var/run/netns/cni-<uuid>), read from its own metadata so that no other
# runtime's are ever touched; works with containerd stopped or crashed.
node_netns() {
	local db=$dir/containerd/root/io.containerd.metadata.v1.bolt/meta.db
	[ -f "$db" ] || return 0
	grep -aoE '/var/run/netns/cni-[0-9a-f-]{36}' "$db" | sort -u || true
}

down() {
	[ "$(id -u)" = 0 ] || die "must run as root"
	local netns
	netns=$(node_netns)
	log "stopping node (kubelet, proxy, scheduler, pod sandboxes, containerd)"
	# The node stops the kubelet, then stops and removes every pod sandbox
	# through the CRI (CNI DEL, netns removed), then containerd.
	stop_pid "$dir/node.pid" 60
	grep -ho 'removed [0-9]* of [0-9]* pod sandboxes' "$dir/log/node.log" 2>/dev/null | tail -n 1 | sed 's/^/node.sh: /' >&2 || true
	# Shims outlive containerd by design; those of this node name its socket.
	local sock=$dir/containerd/containerd.sock shim
	for shim in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $sock" || true); do
		kill -KILL "$shim" 2>/dev/null || true
	done
	# Container processes whose shim died are orphans in our cgroups.
	for d in $(cgroup_dirs); do
		[ -d "$d" ] || continue
		find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
	done
	stop_pid "$dir/forward.pid" 5
	stop_pid "$dir/controlplane.pid" 30
	if ip netns list 2>/dev/null | grep -qw "$NETNS"; then
		ip netns del "$NETNS"
	fi
	ip link del "$HOST_IF" 2>/dev/null || true
	# What a node killed before it removed its sandboxes left behind (its
	# processes are gone, so these are only mount points or empty files).
	local ns left=()
	for ns in $netns; do
		[ -e "$ns" ] || continue
		umount -l "$ns" 2>/dev/null || true
		rm -f "$ns" 2>/dev/null || true
		[ -e "$ns" ] && left+=("$ns")
	done
	sleep 0.5
	for d in $(cgroup_dirs); do
		[ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
	[ ${#left[@]} -eq 0 ] || die "pod network namespaces left behind: ${left[*]}"
	log "node down"
}

status() {
	for f in controlplane forward node; do
		if [ -f "$dir/$f.pid" ] && kill -0 "$(cat "$dir/$f.pid")" 2>/dev/null; then
			echo "$f: running (pid $(cat "$dir/$f.pid"))"
		else
			echo "$f: stopped"
		fi
	done
	ip netns list | grep -w "$NETNS" || echo "netns $NETNS: absent"
}

case $cmd in
up) up ;;
down) down ;;
status) status ;;
*) die "usage: node.sh up|down|status [DIR]" ;;
esac
