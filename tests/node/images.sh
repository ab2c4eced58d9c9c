#!/usr/bin/env bash
# Build the node tier's container images as OCI archives, with no registry
# and no Docker. Prints the output directory on the last line of stdout.
#
#   sametag.local/sametag-sidecar:dev   sidecar/Containerfile  } the release's
#   sametag.local/sametag-operator:dev  operator/Containerfile } Containerfiles
#       built with buildah from static binaries of this checkout
#       (crt-static, target/<host triple>/<profile>/), as a release builds them
#   sametag.local/pause:dev             tests/node/pause/pause.c, gcc -static
#   sametag.local/demoapp:dev           tests/node/demoapp (Go, static)
#   sametag.local/redis:dev             Debian's redis-server + redis-cli + libs
# The last three are test fixtures: one layer made from a root filesystem
# staged here and packed by lib/ocitar.py.
#
# Usage: tests/node/images.sh [IMAGE...]   (default: all five)
# Env:   SAMETAG_CACHE_DIR     cache root (default: <repo>/tests/.cache)
#        SAMETAG_NODE_PROFILE  cargo profile of the Rust binaries (default: release)
#        SAMETAG_SKIP_CARGO=1  use the static binaries already in target/ as they are
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${SAMETAG_CACHE_DIR:-$repo/tests/.cache}"
out="$cache/node-images"
profile="${SAMETAG_NODE_PROFILE:-release}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$out"
start=$(date +%s)
log() { echo "images.sh: [$(( $(date +%s) - start ))s] $*" >&2; }
die() { echo "images.sh: $*" >&2; exit 1; }

# stage_binary SRC ROOTFS DEST: copy SRC to ROOTFS/DEST plus every shared
# library it loads (ldd's resolved paths, symlinks followed) and the loader.
stage_binary() {
	local src=$1 root=$2 dest=$3
	install -D -m 0755 "$src" "$root$dest"
	local lib
	for lib in $(ldd "$src" 2>/dev/null | grep -oE '/[^ ]+' | sort -u); do
		[ -e "$lib" ] || continue
		install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
	done
}

# base_fs ROOTFS: the few files every image wants (users, tmp, CA roots).
base_fs() {
	local root=$1
	mkdir -p "$root/etc" "$root/tmp" "$root/data" "$root/etc/ssl/certs"
	chmod 1777 "$root/tmp"
	cat >"$root/etc/passwd" <<PW
root:x:0:0:root:/root:/sbin/nologin
redis:x:999:999:redis:/data:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
PW
	cat >"$root/etc/group" <<GR
root:x:0:
redis:x:999:
nonroot:x:65532:
nogroup:x:65534:
GR
	echo "hosts: files dns" >"$root/etc/nsswitch.conf"
	[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
	return 0
}

# pack NAME ROOTFS OCITAR-ARGS...: build $out/NAME.tar unless its inputs
# (the staged tree and the arguments) are unchanged since the last build.
pack() {
	local name=$1 root=$2
	shift 2
	local key
	key=$( (cd "$root" && find . -printf '%p %m %s\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum; echo "$*"; sha256sum "$here/lib/ocitar.py") | sha256sum | cut -c1-16)
	if [ -f "$out/$name.tar" ] && [ "$(cat "$out/$name.key" 2>/dev/null)" = "$key" ]; then
		log "$name: unchanged"
		return
	fi
	python3 "$here/lib/ocitar.py" --ref "sametag.local/$name:dev" --out "$out/$name.tar" "$@" "$root"
	echo "$key" >"$out/$name.key"
	log "$name: built ($(du -h "$out/$name.tar" | cut -f1))"
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

img_pause() {
	command -v gcc >/dev/null || die "gcc missing (apt-get install gcc libc6-dev)"
	mkdir -p "$work/pause"
	gcc -static -Os -o "$work/pause/pause" "$here/pause/pause.c"
	pack pause "$work/pause" --entrypoint '["/pause"]' --user 65535:65535
}

img_demoapp() {
	command -v go >/dev/null || die "go missing"
	mkdir -p "$work/demoapp"
	base_fs "$work/demoapp"
	(cd "$here/demoapp" && CGO_ENABLED=0 go build -trimpath -ldflags=-s -o "$work/demoapp/usr/local/bin/demoapp" .)
	pack demoapp "$work/demoapp" --entrypoint '["/usr/local/bin/demoapp"]' --user 65532:65532
}

img_redis() {
	local r=$work/redis
	command -v redis-server >/dev/null || die "redis-server missing (apt-get install redis-server)"
	base_fs "$r"
	stage_binary "$(command -v redis-server)" "$r" /usr/local/bin/redis-server
	stage_binary "$(command -v redis-cli)" "$r" /usr/local/bin/redis-cli
	# A shell and the usual tools for the operator's start script and exec
	# probes (`sh -c "redis-cli ping | grep -q PONG"`): busybox-static.
	[ -x /bin/busybox ] || die "/bin/busybox missing (apt-get install busybox-static)"
	install -D -m 0755 /bin/busybox "$r/bin/busybox"
	local applet
	for applet in $(/bin/busybox --list); do
		[ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"
	done
	mkdir -p "$r/etc/redis"
	pack redis "$r" --entrypoint '["/usr/local/bin/redis-server"]' --workdir /data --owner data=999:999
}

# The Rust images are the release's: the same Containerfiles, fed static
# binaries. crt-static needs an explicit --target (so build scripts and proc
# macros stay dynamic), hence a second target directory,
# target/<triple>/<profile>; both binaries come from one cargo call, like
# the release workflow's.
triple=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
case $(uname -m) in
x86_64) arch=amd64 ;;
aarch64) arch=arm64 ;;
*) arch=$(uname -m) ;;
esac
static_built=0
build_static() {
	[ "$static_built" = 1 ] && return
	static_built=1
	[ "${SAMETAG_SKIP_CARGO:-0}" = 1 ] && return
	[ -n "$triple" ] || die "rustc missing"
	local flag=(--profile "$profile")
	[ "$profile" = debug ] && flag=()
	log "static binaries: cargo build ${flag[*]} --target $triple (crt-static)"
	(cd "$repo" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
		cargo build -q "${flag[@]}" --target "$triple" --bin sametag-operator --bin sametag-sidecar) ||
		die "static cargo build failed"
	log "static binaries built"
}

# buildah with its own storage under the cache (vfs: works anywhere, no
# overlay mounts), so it never touches a system container store.
bh() {
	buildah --root "$cache/buildah/root" --runroot "$cache/buildah/run" --storage-driver vfs "$@"
}

img_rust() { # crate
	local crate=$1 component=${1#sametag-}
	command -v buildah >/dev/null || die "buildah missing (apt-get install buildah; tests/node/setup-packages.sh)"
	build_static
	local bin="$target_dir/$triple/$profile/$crate"
	[ -x "$bin" ] || die "$bin missing"
	file -L "$bin" 2>/dev/null | grep -qE 'static(-pie)? linked' || ldd "$bin" 2>&1 | grep -q 'statically linked' ||
		die "$bin is not statically linked"
	# The build context the Containerfile documents: the binary per
	# platform and the CA roots.
	local ctx=$work/ctx-$crate
	mkdir -p "$ctx/linux-$arch"
	# Line tables are for the developer's backtraces, not for the image.
	strip --strip-debug -o "$ctx/linux-$arch/$crate" "$bin"
	cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
	local containerfile="$repo/$component/Containerfile" ref="sametag.local/$crate:dev"
	local key
	key=$( (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum; sha256sum "$containerfile"; buildah --version; echo "$arch") | sha256sum | cut -c1-16)
	if [ -f "$out/$crate.tar" ] && [ "$(cat "$out/$crate.key" 2>/dev/null)" = "$key" ]; then
		log "$crate: unchanged"
		return
	fi
	bh bud -q --platform "linux/$arch" --timestamp 0 -f "$containerfile" -t "$ref" "$ctx" >/dev/null
	rm -f "$out/$crate.tar"
	bh push -q "$ref" "oci-archive:$out/$crate.tar:$ref"
	bh rmi "$ref" >/dev/null
	echo "$key" >"$out/$crate.key"
	log "$crate: built from $component/Containerfile ($(du -h "$out/$crate.tar" | cut -f1))"
}

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(pause demoapp redis sametag-sidecar sametag-operator)
for i in "${images[@]}"; do
	case $i in
	pause) img_pause ;;
	demoapp) img_demoapp ;;
	redis) img_redis ;;
	sametag-sidecar | sametag-operator) img_rust "$i" ;;
	*) die "unknown image $i" ;;
	esac
done
echo "$out"
