#!/usr/bin/env bash
# Fixed-rate latency, embedded store against Redis store, side by side: two
# Validate sidecars in front of one app, measured in alternating rounds by
# oha at a fixed rate (coordinated-omission correction), with the Redis
# commands each run cost. Answers one question of bench/run.sh's fixed-rate
# table: is a gap between the two rows store work or noise and queueing?
# Writes bench/results/fixed-rate-ab.md; about a minute per rate.
#
#   bash bench/fixed-rate-ab.sh                 # rates 8000,17572, 3 rounds
#   RATES=12000 ROUNDS=5 bash bench/fixed-rate-ab.sh
#
# Env: RATES (req/s, comma-separated), ROUNDS, SECS (per run), CONNS,
# OUT (the markdown file).
set -euo pipefail
cd "$(dirname "$0")/.."
RATES=${RATES:-8000,17572}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-6}
CONNS=${CONNS:-16}
OUT=${OUT:-bench/results/fixed-rate-ab.md}

echo "==> building the release sidecar and the bench app"
cargo build -q --release -p sametag-sidecar -p sametag-lb-e2e --bins
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v oha >/dev/null || { echo "==> installing oha"; cargo install --locked --quiet oha; }
bin=target/release

dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_up() { # port
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "fixed-rate-ab: nothing listens on 127.0.0.1:$1 (logs in $dir)" >&2
  exit 1
}
rp=$(port) ap=$(port) mp=$(port) ma=$(port) xp=$(port) xa=$(port)
redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" &
pids+=($!)
"$bin/sametag-lb-app" --listen "127.0.0.1:$ap" --replica bench --data-dir "$dir/data" \
  >"$dir/app.log" 2>&1 &
pids+=($!)
wait_up "$rp"; wait_up "$ap"
"$bin/sametag-sidecar" --listen "127.0.0.1:$mp" --upstream "127.0.0.1:$ap" \
  --admin "127.0.0.1:$ma" --store-prefix am: >"$dir/mem.log" 2>&1 &
pids+=($!)
"$bin/sametag-sidecar" --listen "127.0.0.1:$xp" --upstream "127.0.0.1:$ap" \
  --admin "127.0.0.1:$xa" --store-prefix ar: --redis "redis://127.0.0.1:$rp" \
  >"$dir/redis-sidecar.log" 2>&1 &
pids+=($!)
wait_up "$mp"; wait_up "$xp"
url() { echo "http://127.0.0.1:$1/bytes/1024"; }
# Warm: the tag is recorded once; the runs are hot Validate reads.
for p in "$mp" "$xp"; do curl -fsS -o /dev/null "$(url "$p")"; done

commands() { redis-cli -p "$rp" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p'; }
rows=()
for rate in ${RATES//,/ }; do
  for round in $(seq "$ROUNDS"); do
    # Each store goes first in every other round: no order bias.
    order="embedded redis"; [ $((round % 2)) = 0 ] && order="redis embedded"
    for store in $order; do
      p=$mp; [ "$store" = redis ] && p=$xp
      before=$(commands)
      line=$(oha --no-tui --output-format json --latency-correction -z "${SECS}s" -c "$CONNS" \
        -q "$rate" "$(url "$p")" | python3 -c '
import json, sys
j = json.load(sys.stdin)
p = j["latencyPercentiles"]
ok = sum(v for k, v in j["statusCodeDistribution"].items() if k == "200")
# Requests in flight when the time is up are cut off by oha, not failed.
errors = sum(n for why, n in j.get("errorDistribution", {}).items() if "deadline" not in why)
print("%d | %d | %.3f | %.3f | %.3f" % (ok, errors, p["p50"] * 1e3, p["p99"] * 1e3, p["p99.9"] * 1e3))')
      after=$(commands)
      row="| $rate | $round | $store | $line | $((after - before)) |"
      echo "$row"
      rows+=("$row")
    done
  done
done

{
  echo "# Fixed-rate latency: embedded store against Redis store"
  echo
  echo "\`bash bench/fixed-rate-ab.sh\`, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, load average before: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Two Validate sidecars in front of one app, hot 1 KiB reads, oha at a fixed rate"
  echo "($CONNS connections, $SECS s, coordinated-omission correction), each store first in every other round."
  echo "Redis commands: what redis-server processed during the run (the store's health checks"
  echo "and tracking; a hot Validate read makes no round trip)."
  echo
  echo "| rate req/s | round | store | 200s | errors | p50 ms | p99 ms | p99.9 ms | Redis commands |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  echo "| rate req/s | median p99 embedded ms | median p99 Redis ms | Redis / embedded |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
p99 = {}
for line in sys.stdin:
    f = [c.strip() for c in line.strip().strip("|").split("|")]
    p99.setdefault(f[0], {}).setdefault(f[2], []).append(float(f[6]))
for rate, by in p99.items():
    e, r = statistics.median(by["embedded"]), statistics.median(by["redis"])
    print("| %s | %.3f | %.3f | %.2f |" % (rate, e, r, r / e))'
} >"$OUT"
tail -n +$(( $(grep -n '^| rate req/s | median' "$OUT" | cut -d: -f1) )) "$OUT"
echo "==> wrote $OUT"
