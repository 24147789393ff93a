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
BIN=target/release/tollgate
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }
cargo build --release --quiet --bin tollgate
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

MOCK=127.0.0.1:18600 REDIS_PORT=18679
KEY=RedisBenchKey0123456789abcdefghi
DIGEST="sha256:$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
"$BIN" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
declare -A GATEWAY ADMIN
GATEWAY[memory]=127.0.0.1:18680 ADMIN[memory]=127.0.0.1:18690
GATEWAY[redis]=127.0.0.1:18681 ADMIN[redis]=127.0.0.1:18691
for store in memory redis; do
  limits="store = \"memory\""
  [ "$store" = redis ] && limits=$(printf 'store = "redis"\nredis_url = "redis://127.0.0.1:%s"' "$REDIS_PORT")
  cat > "$WORK/$store.toml" <<TOML
[server]
listen = "${GATEWAY[$store]}"
[admin]
listen = "${ADMIN[$store]}"
state_file = "$WORK/$store.state.json"
[limits]
$limits
[[deployments]]
name = "bench"
model = "m"
backend = "http://$MOCK"
keys = ["$DIGEST"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
TOML
  TOLLGATE_LOG=warn "$BIN" serve --config "$WORK/$store.toml" >/dev/null 2>&1 &
done
sleep 1

json() { python3 -c "import json,sys; r=json.load(sys.stdin); print(r$1)"; }
declare -A P50 P99 TP
for round in $(seq "$ROUNDS"); do
  for store in memory redis; do
    url="http://${GATEWAY[$store]}/openai/deployments/bench"
    out=$("$BIN" bench --url "$url" --key "$KEY" --rate "$RATE" --duration "${SECONDS_EACH}s" --json)
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
curl -s "http://${ADMIN[redis]}/metrics" | python3 -c '
import sys
values = {}
for line in sys.stdin:
    for name in ("sum", "count"):
        prefix = "tollgate_quota_store_duration_seconds_" + name + "{op=\"admit\"}"
        if line.startswith(prefix):
            values[name] = float(line.split()[-1])
count, total = values.get("count", 0), values.get("sum", 0)
if count:
    print(f"Redis admit round trip as the gateway measured it: mean {total / count * 1e6:.0f} us over {count:.0f} admissions")
'
