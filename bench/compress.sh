#!/usr/bin/env bash
# Compression's price, side by side in one run (about 1.5 minutes): nginx
# serves a JSON document from disk (no compression of its own), one release
# sidecar (embedded store, Validate) in front of it, and bounded wrk runs on
# loopback fetch it with compress off, gzip, br and zstd, at two sizes. For
# each: requests per second, the sidecar's CPU time per request (utime +
# stime from /proc/PID/stat, before and after the run, divided by the
# requests wrk completed) and the body bytes a client receives.
# Writes bench/results/compression.md (BENCH_OUT=dir: elsewhere).
#
#   bash bench/compress.sh            # DURATION=6 CONNS=16 by default
set -euo pipefail
cd "$(dirname "$0")/.."

duration="${DURATION:-6}"
conns="${CONNS:-16}"
out="${BENCH_OUT:-bench/results}"
target="${CARGO_TARGET_DIR:-target}"

for t in nginx wrk curl python3; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || {
    echo "bench: missing $t; install: apt-get install -y nginx-light wrk curl python3" >&2
    exit 1
  }
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

echo "[compress] building the release sidecar"
cargo build --release -q -p sametag-sidecar --bin sametag-sidecar
sidecar="$target/release/sametag-sidecar"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The documents: JSON like an API list, ~2 KiB and ~32 KiB, under /off (no
# compress route) and /c (compress: [br, zstd, gzip]).
mkdir -p "$work/site/off" "$work/site/c" "$work/nginx/logs" "$work/nginx/tmp"
python3 - "$work/site" <<'EOF'
import json, sys
root = sys.argv[1]
for name, n in (("small", 12), ("large", 200)):
    items = [{"id": i, "name": f"item {i}", "sku": f"SKU-{i * 7919 % 100000:05d}",
              "price": round((i * 37 % 1000) / 7, 2), "tags": ["a%d" % (i % 5), "b%d" % (i % 11)],
              "inStock": i % 3 != 0, "description": "A fine item for everyday use, number %d." % i}
             for i in range(n)]
    text = json.dumps({"items": items, "total": n}, indent=1)
    for d in ("off", "c"):
        open(f"{root}/{d}/{name}.json", "w").write(text)
EOF
chmod -R a+rX "$work"

app_port=$(free_port)
user=""
[ "$(id -u)" = 0 ] && user="user root;"
cat >"$work/nginx/nginx.conf" <<EOF
daemon off;
master_process off;
worker_processes 1;
$user
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/nginx/tmp;
  types { application/json json; }
  server { listen 127.0.0.1:$app_port; root $work/site; gzip off; }
}
EOF
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/logs/error.log" &
pids+=($!)

cat >"$work/policy.yaml" <<'EOF'
routes:
  - path: /c/**
    compress: [br, zstd, gzip]
EOF
listen_port=$(free_port)
admin_port=$(free_port)
RUST_LOG=warn "$sidecar" --listen "127.0.0.1:$listen_port" --admin "127.0.0.1:$admin_port" \
  --upstream "127.0.0.1:$app_port" --policy "$work/policy.yaml" 2>"$work/sidecar.log" &
sidecar_pid=$!
pids+=($sidecar_pid)
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$listen_port/off/small.json" && break
  sleep 0.1
done
base="http://127.0.0.1:$listen_port"
curl -sf -o /dev/null "$base/off/small.json" || { echo "bench: sidecar did not come up" >&2; exit 1; }

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

rows=()
for size in small large; do
  identity_bytes=$(curl -s "$base/off/$size.json" | wc -c)
  for variant in off gzip br zstd; do
    if [ "$variant" = off ]; then
      path="/off/$size.json"; ae="gzip, deflate, br, zstd"
    else
      path="/c/$size.json"; ae="$variant"
    fi
    got=$(curl -s -D "$work/headers" -H "Accept-Encoding: $ae" "$base$path" | wc -c)
    ce=$(awk -F': ' 'tolower($1)=="content-encoding" { gsub("\r",""); print $2 }' "$work/headers")
    [ "$variant" = off ] || [ "$ce" = "$variant" ] || { echo "bench: $variant answered with '$ce'" >&2; exit 1; }
    echo "[compress] $size ($identity_bytes B) $variant: wrk -d${duration}s -c$conns"
    # Warm up (and tag) before measuring.
    wrk -t1 -c4 -d1s -H "Accept-Encoding: $ae" "$base$path" >/dev/null
    before=$(cpu_ticks "$sidecar_pid")
    wrk -t2 -c"$conns" -d"${duration}s" -H "Accept-Encoding: $ae" "$base$path" >"$work/wrk.txt"
    after=$(cpu_ticks "$sidecar_pid")
    requests=$(awk '/requests in/ { print $1 }' "$work/wrk.txt")
    rps=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' "$work/wrk.txt")
    errors=$(awk '/Non-2xx|Socket errors/ { print }' "$work/wrk.txt")
    [ -z "$errors" ] || echo "[compress]   wrk: $errors"
    rows+=("$(python3 -c "
ticks, reqs = $after - $before, $requests
us = ticks / $ticks / reqs * 1e6
print(f'| $size | $identity_bytes | $variant | $got | {$got / $identity_bytes:.2f} | $rps | {us:.1f} |')
")")
  done
done

mkdir -p "$out"
{
  echo "# Compression: CPU and bytes per request"
  echo
  echo "\`bash bench/compress.sh\` on $(date -u +%Y-%m-%d), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo))."
  echo "One release sidecar (embedded store, Validate) in front of nginx serving a JSON file"
  echo "(gzip off), wrk -t2 -c$conns for ${duration}s per row on loopback, same run;"
  echo "the sidecar's CPU time (user + system, /proc/PID/stat) divided by the requests served."
  echo "\`off\`: a route without \`compress\` (a browser's Accept-Encoding); the others: a"
  echo "\`compress: [br, zstd, gzip]\` route asked for that coding alone. Levels: gzip 6, br 5, zstd 3."
  echo "Every request is a full 200 (no revalidation), so each one is compressed: the worst case."
  echo "wrk, nginx and the sidecar share the machine, so requests/s is indicative; CPU per request is the figure."
  echo
  echo "| body | identity bytes | coding | bytes sent | ratio | requests/s | sidecar CPU µs/request |"
  echo "|---|---:|---|---:|---:|---:|---:|"
  printf '%s\n' "${rows[@]}"
} >"$out/compression.md"
echo "[compress] done: $out/compression.md"
cat "$out/compression.md"
