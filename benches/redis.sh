#!/usr/bin/env bash
# The shared quota store's cost: the same gateway build in front of the mock backend twice, one
# with the in-process buckets (store = "memory") and one with the buckets in a local Redis
# (store = "redis"), measured alternately with tollgate bench: open loop at a fixed rate (latency
# from the scheduled send time) and closed loop (throughput). Also prints the Redis round trip the
# gateway itself measured (tollgate_quota_store_duration_seconds{op="admit"}).
#
#   benches/redis.sh [seconds per measurement, default 10] [open-loop rate, default 2000] [rounds, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-10}
RATE=${2:-2000}
ROUNDS=${3:-2}
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
source benches/common.sh
MOCK=127.0.0.1:18600 REDIS_PORT=18679
KEY=RedisBenchKey0123456789abcdefghi
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
"$BIN" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
declare -A GATEWAY ADMIN
GATEWAY[memory]=127.0.0.1:18680 ADMIN[memory]=127.0.0.1:18690
GATEWAY[redis]=127.0.0.1:18681 ADMIN[redis]=127.0.0.1:18691
for store in memory redis; do
  limits='store = "memory"'
  [ "$store" = redis ] && limits=$(printf 'store = "redis"\nredis_url = "redis://127.0.0.1:%s"' "$REDIS_PORT")
  gateway_config "$WORK/$store.toml" "${GATEWAY[$store]}" "${ADMIN[$store]}" "$MOCK" "$KEY" bench "$(printf '[limits]\n%s' "$limits")"
  TOLLGATE_LOG=warn "$BIN" serve --config "$WORK/$store.toml" >/dev/null 2>&1 &
done
sleep 1

json() { python3 -c "import json,sys; r=json.load(sys.stdin); print(r$1)"; }
declare -A P50 P99 TP
for round in $(seq "$ROUNDS"); do
  for store in memory redis; do
    url="http://${GATEWAY[$store]}/openai/deployments/bench"
    curl -s "http://${ADMIN[$store]}/metrics" > "$WORK/$store.before"
    out=$("$BIN" bench --url "$url" --key "$KEY" --rate "$RATE" --duration "${SECONDS_EACH}s" --json)
    curl -s "http://${ADMIN[$store]}/metrics" > "$WORK/$store.after.$round"
    cp "$WORK/$store.before" "$WORK/$store.before.$round"
    P50[$store]+="$(echo "$out" | json "['latency_ms']['p50']") "
    P99[$store]+="$(echo "$out" | json "['latency_ms']['p99']") "
    out=$("$BIN" bench --url "$url" --key "$KEY" --concurrency 32 --duration "${SECONDS_EACH}s" --json)
    TP[$store]+="$(echo "$out" | json "['throughput_per_second']") "
  done
done
mean() { python3 -c "import sys; v=[float(x) for x in sys.argv[1:]]; print(f'{sum(v)/len(v):.${2:-3}f}')" $1; }
printf '%-8s %12s %12s %16s   (open loop %s/s and closed loop 32, %s s x %s rounds)\n' store p50_ms p99_ms requests/s "$RATE" "$SECONDS_EACH" "$ROUNDS"
for store in memory redis; do
  printf '%-8s %12s %12s %16s\n' "$store" "$(mean "${P50[$store]}")" "$(mean "${P99[$store]}")" "$(mean "${TP[$store]}" 0)"
done
python3 - "$(mean "${P50[memory]}")" "$(mean "${P50[redis]}")" "$(mean "${P99[memory]}")" "$(mean "${P99[redis]}")" <<'PY'
import sys
m50, r50, m99, r99 = map(float, sys.argv[1:])
print(f"added by the Redis store at the fixed rate: p50 {(r50 - m50) * 1000:.0f} us, p99 {(r99 - m99) * 1000:.0f} us")
PY
# What the gateways measured themselves during the last open-loop round: the Redis admission
# round trip, and each gateway's own overhead (arrival to forwarding, minus nothing of the backend).
python3 benches/histogram.py "$WORK/redis.before.$ROUNDS" "$WORK/redis.after.$ROUNDS" \
  tollgate_quota_store_duration_seconds 'op="admit"'
for store in memory redis; do
  printf '%-7s ' "$store"
  python3 benches/histogram.py "$WORK/$store.before.$ROUNDS" "$WORK/$store.after.$ROUNDS" \
    tollgate_overhead_seconds 'deployment="bench"'
done
