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

# oha: the fixed-rate latency runs (rate limiting with coordinated-omission
# correction, which wrk's closed loop cannot do).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v oha >/dev/null 2>&1; then
  echo "[bench] installing oha (cargo install --locked oha, a few minutes once)"
  cargo install --locked --quiet oha
fi

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

# --- Control plane (sametag-cp-bench on the k8s tier's real kube-apiserver) ---
# Webhook admission latency, ETagStore create -> children, Redis ready -> Ready.
# Writes controlplane.json/.md into $out and appends controlplane.md to
# RESULTS.md. Needs the harness binaries: $SAMETAG_HARNESS_BIN_DIR, else
# tests/harness/build.sh (cached in $SAMETAG_CACHE_DIR, default
# ~/.cache/sametag as tests/run uses; a cold build needs Go and ~20
# CPU-minutes). BENCH_CONTROLPLANE=0 skips it; BENCH_CP_ARGS (e.g.
# "--quick" or "--rate 20 --seconds 15 --stores 10") and BENCH_CP_NOTE (a
# remark printed in the section) go to sametag-cp-bench.
cp_failed=0
controlplane() {
  local bin_dir="${SAMETAG_HARNESS_BIN_DIR:-}"
  if [ -z "$bin_dir" ]; then
    if ! command -v go >/dev/null 2>&1; then
      echo "[bench] control plane: skipped (no Go to build the harness: tests/harness/README.md)"
      return 0
    fi
    echo "[bench] control plane: harness binaries (bash tests/harness/build.sh, cached)"
    if ! bin_dir=$(SAMETAG_CACHE_DIR="${SAMETAG_CACHE_DIR:-$HOME/.cache/sametag}" \
      bash tests/harness/build.sh | tail -n 1); then
      echo "[bench] control plane: skipped (tests/harness/build.sh failed)" >&2
      cp_failed=1
      return 0
    fi
  fi
  echo "[bench] control plane: building release sametag-operator and sametag-cp-bench"
  cargo build --release -p sametag-operator -p sametag-k8s-e2e --bins
  rm -f "$out/controlplane.md"
  # shellcheck disable=SC2086 # BENCH_CP_ARGS is a list of flags
  if SAMETAG_HARNESS_BIN_DIR="$bin_dir" SAMETAG_OPERATOR_BIN="$target/release/sametag-operator" \
    "$target/release/sametag-cp-bench" --out "$out" --note "${BENCH_CP_NOTE:-}" ${BENCH_CP_ARGS:-}; then
    cat "$out/controlplane.md" >>"$out/RESULTS.md"
  else
    echo "[bench] control plane: sametag-cp-bench failed; RESULTS.md has no Control plane section" >&2
    cp_failed=1
  fi
}
if [ "${BENCH_CONTROLPLANE:-1}" != 0 ]; then
  controlplane
fi

echo "[bench] done: $out/RESULTS.md"
exit "$cp_failed"
