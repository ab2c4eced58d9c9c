#!/usr/bin/env bash
# Installs the Debian packages the node tier needs (idempotent): containerd
# and runc, the CNI plugins, iptables/iproute2/util-linux for the network
# namespace, busybox-static (the Redis image's shell), gcc (the pause image),
# redis-server (whose binary goes into the Redis image) and buildah (the
# operator and sidecar images, from their Containerfiles).
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables iproute2 util-linux busybox-static gcc libc6-dev redis-server python3 buildah)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	echo "node tier packages present" >&2
	exit 0
fi
echo "installing: ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package may start a system containerd; the node tier runs its own
# (private root, state and socket), so a freshly installed one is not needed.
if printf '%s\n' "${missing[@]}" | grep -qx containerd; then
	$SUDO systemctl disable --now containerd >/dev/null 2>&1 || true
fi
