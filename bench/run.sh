#!/usr/bin/env bash
# One command for the whole benchmark: builds the release binaries, runs
# sametag-bench (wrk against app / nginx / sidecar / hello, memory, Redis
# round trips, seed scenario, perf profile; one progress line per step) and
# draws the plots. Results: bench/results/RESULTS.md (+ results.json, PNGs).
# Extra arguments go to sametag-bench (e.g. --duration 3 --conns 16);
# BENCH_OUT=dir writes somewhere else than bench/results.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for t in nginx haproxy redis-server wrk; do
  command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: missing ${missing[*]}; install: apt-get install -y redis-server haproxy nginx-light wrk" >&2
  exit 1
fi

echo "[bench] building release binaries (sametag-sidecar, sametag-lb-e2e bins)"
cargo build --release -p sametag-sidecar -p sametag-lb-e2e --bins

if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
  echo "[bench] installing matplotlib (pip)"
  python3 -m pip install --quiet matplotlib
fi

target="${CARGO_TARGET_DIR:-target}"
out="${BENCH_OUT:-bench/results}"
mkdir -p "$out"
SAMETAG_SIDECAR_BIN="$target/release/sametag-sidecar" \
  "$target/release/sametag-bench" --out "$out" "$@"

echo "[bench] drawing plots"
python3 bench/plot.py "$out"
echo "[bench] done: $out/RESULTS.md"
