#!/usr/bin/env bash
# End-to-end benchmark on one machine: the mock backend alone, nginx in front of it (when
# installed), and tollgate in front of it (auth, both buckets, estimation, reconciliation and
# metrics on; quotas too high to reject), measured in the same run, alternating.
#
#   benches/e2e.sh [seconds per measurement, default 10] [rounds, default 2]
#
# Prints throughput and latency per target (tollgate bench, and wrk when installed), the ratios
# tollgate/backend and tollgate/nginx, the latency tollgate adds at a fixed open-loop rate (half
# the backend's saturation throughput), and tollgate's RSS idle and with 10,000 open connections.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-10}
ROUNDS=${2:-2}
source benches/common.sh
MOCK=127.0.0.1:18300 GATEWAY=127.0.0.1:18380 ADMIN=127.0.0.1:18390 NGINX=127.0.0.1:18480
KEY=BenchKey0123456789abcdefghijklmn
"$BIN" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
gateway_config "$WORK/tollgate.toml" "$GATEWAY" "$ADMIN" "$MOCK" "$KEY" bench
TOLLGATE_LOG=warn "$BIN" serve --config "$WORK/tollgate.toml" >/dev/null 2>&1 &
GATEWAY_PID=$!

targets=("backend http://$MOCK" "tollgate http://$GATEWAY/openai/deployments/bench")
if command -v nginx >/dev/null; then
  nginx_config "$WORK/nginx.conf" "$NGINX" "$MOCK"
  nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
  targets+=("nginx http://$NGINX")
else
  echo "nginx is not installed: measuring without it (apt-get install nginx)" >&2
fi
sleep 1

json() { python3 -c "import json,sys; r=json.load(sys.stdin); print(r$1)"; }
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' "/proc/$GATEWAY_PID/status"; }
open_connections() { curl -s "http://$ADMIN/metrics" | awk '/^tollgate_open_connections / {print $2}'; }
# RSS idle, then with 10,000 open keep-alive connections (counted by the gateway itself before
# sampling), then idle again once they are closed.
rss_with_connections() {
  echo "tollgate RSS $1, idle: $(rss)"
  python3 - "$GATEWAY" <<'PY' &
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
conns = [socket.create_connection((host, int(port))) for _ in range(10000)]
time.sleep(60)
PY
  local opener=$!
  for _ in $(seq 600); do
    [ "$(open_connections)" -ge 10000 ] 2>/dev/null && break
    sleep 0.1
  done
  echo "tollgate RSS $1, with $(open_connections) open connections: $(rss)"
  kill "$opener" 2>/dev/null; wait "$opener" 2>/dev/null || true
}
rss_with_connections "fresh (no request served yet)"
declare -A THROUGHPUT P50 P99
for round in $(seq "$ROUNDS"); do
  for target in "${targets[@]}"; do
    set -- $target
    name=$1 url=$2
    out=$("$BIN" bench --url "$url" --key "$KEY" --concurrency 32 --duration "${SECONDS_EACH}s" --json)
    THROUGHPUT[$name]+="$(echo "$out" | json "['throughput_per_second']") "
    P50[$name]+="$(echo "$out" | json "['latency_ms']['p50']") "
    P99[$name]+="$(echo "$out" | json "['latency_ms']['p99']") "
    if command -v wrk >/dev/null; then
      printf 'wrk %-9s round %s: ' "$name" "$round"
      KEY=$KEY wrk -t1 -c32 -d"${SECONDS_EACH}s" -s benches/wrk/chat.lua "$url/chat/completions" | awk '/Requests\/sec/ {print $2 " requests/s"}'
    fi
  done
done

mean() { python3 -c "import sys; v=[float(x) for x in sys.argv[1:]]; print(f'{sum(v)/len(v):.${2:-1}f}')" $1; }
echo
printf '%-10s %14s %10s %10s   (tollgate bench, closed loop, 32 in flight, %s s x %s rounds)\n' target requests/s p50_ms p99_ms "$SECONDS_EACH" "$ROUNDS"
for target in "${targets[@]}"; do
  set -- $target
  printf '%-10s %14s %10s %10s\n' "$1" "$(mean "${THROUGHPUT[$1]}")" "$(mean "${P50[$1]}" 3)" "$(mean "${P99[$1]}" 3)"
done
backend=$(mean "${THROUGHPUT[backend]}") tollgate=$(mean "${THROUGHPUT[tollgate]}")
echo "tollgate/backend throughput: $(python3 -c "print(f'{$tollgate/$backend:.2f}')")"
if [ -n "${THROUGHPUT[nginx]:-}" ]; then
  nginx_tp=$(mean "${THROUGHPUT[nginx]}")
  echo "tollgate/nginx throughput:   $(python3 -c "print(f'{$tollgate/$nginx_tp:.2f}')")"
fi

# Overhead at half the backend's saturation, open loop (latency from the scheduled send time),
# alternating backend / tollgate for the same rounds, means of the percentiles.
RATE=$(python3 -c "print(int($backend/2))")
runs=()
for round in $(seq "$ROUNDS"); do
  runs+=("$("$BIN" bench --url "http://$MOCK" --rate "$RATE" --duration "${SECONDS_EACH}s" --json)")
  curl -s "http://$ADMIN/metrics" > "$WORK/overhead.before.$round"
  runs+=("$("$BIN" bench --url "http://$GATEWAY/openai/deployments/bench" --key "$KEY" --rate "$RATE" --duration "${SECONDS_EACH}s" --json)")
  curl -s "http://$ADMIN/metrics" > "$WORK/overhead.after.$round"
done
python3 - "$RATE" "${runs[@]}" <<'PY'
import json, sys
rate, runs = sys.argv[1], [json.loads(r) for r in sys.argv[2:]]
backend, tollgate = runs[0::2], runs[1::2]
mean = lambda rs, q: sum(r["latency_ms"][q] for r in rs) / len(rs)
for q in ("p50", "p99"):
    b, t = mean(backend, q), mean(tollgate, q)
    print(f"added latency at {rate} requests/s (open loop, {len(backend)} rounds), {q}: {(t - b) * 1000:.0f} us "
          f"(backend {b:.3f} ms, through tollgate {t:.3f} ms)")
PY
# The same, as tollgate measures itself (arrival to forwarding, excluding the backend's time),
# over the last open-loop round: free of the load generator's and the backend's share of the CPU.
python3 benches/histogram.py "$WORK/overhead.before.$ROUNDS" "$WORK/overhead.after.$ROUNDS" \
  tollgate_overhead_seconds 'deployment="bench"' 0.5 0.99

rss_with_connections "after the runs"
