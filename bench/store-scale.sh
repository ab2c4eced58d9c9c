#!/usr/bin/env bash
# The store at scale: up to 200 sidecars' store handles (each its own
# connection and client-side tracking, as in production) on one real
# redis-server, as clients and resources grow. Measures write latency,
# invalidation pushes per write, server CPU and memory per resource and per
# client, and projects them to 1,000 pods and 10 million resources.
# Writes bench/results/store-scale.{json,md}; a few minutes.
#
#   bash bench/store-scale.sh
#   SERVER=/path/to/valkey-server bash bench/store-scale.sh   # Valkey instead
#   CLIENTS=25,50 RESOURCES=1000 bash bench/store-scale.sh --write-secs 1
#   bash bench/store-scale.sh --client-cache false   # sidecars without tracking
#   target/release/examples/store_scale --render-only --out bench/results/store-scale
#
# Env: PROFILE (release|debug, default release), SERVER (default
# redis-server), CLIENTS, RESOURCES, OUT (path without extension); extra
# arguments go to the simulation (`--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
SERVER=${SERVER:-redis-server}
CLIENTS=${CLIENTS:-25,50,100,200}
RESOURCES=${RESOURCES:-1000,10000,100000}
OUT=${OUT:-bench/results/store-scale}

flag=(); [ "$PROFILE" = release ] && flag=(--release)
echo "==> building the simulation ($PROFILE)"
cargo build -q "${flag[@]}" -p sametag-sidecar --example store_scale
sim="target/$PROFILE/examples/store_scale"

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$SERVER" --port "$port" --bind 127.0.0.1 --save '' --appendonly no --protected-mode no \
  --dir "$dir" --maxclients 10000 --logfile "$dir/server.log" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
echo "==> $("$SERVER" --version | cut -d' ' -f1-3) on 127.0.0.1:$port; $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
ulimit -n 65536 2>/dev/null || true
mkdir -p "$(dirname "$OUT")"
# Bounded: the grid takes a few minutes; a stuck run is killed.
note="Machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start (other work running); client build: $PROFILE; server: $("$SERVER" --version | cut -d' ' -f1-3)."
timeout 1200 "$sim" --redis "redis://127.0.0.1:$port" --clients "$CLIENTS" \
  --resources "$RESOURCES" --out "$OUT" --note "$note" "$@"
