#!/usr/bin/env bash
# Leases on the shared buckets: three replicas of the gateway share one deployment's buckets in
# one local Redis, in front of a static nginx backend (faster than any gateway), at a fixed total
# rate (tollgate bench, open loop: rate / 3 at each replica, all three at once; latency from the
# scheduled send time). Three line-ups, measured in turn in each round:
#   memory  store = "memory" (each replica its own buckets: the floor, no Redis at all)
#   redis   store = "redis", no leases: one script call per admission
#   leased  store = "redis", lease_requests = LEASE (and lease_tokens = LEASE x 10,000)
# Prints, per line-up: Redis script calls per second (INFO commandstats), Redis CPU and the three gateways' CPU per request (/proc), latency p50 / p99 (mean over
# the three replicas and the rounds), and requests that were not 2xx.
#
#   benches/leases.sh [seconds each, default 10] [total rate, default 3000] [rounds, default 2] [LEASE, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-10}
RATE=${2:-3000}
ROUNDS=${3:-2}
LEASE=${4:-100}
source benches/common.sh
need_tools redis-server redis-cli nginx
BACKEND=127.0.0.1:18700 REDIS_PORT=18701
KEY=LeaseBenchKey0123456789abcdefghi
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello! How can I help you today?"}}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}'
static_nginx_config "$WORK/backend.conf" "$BACKEND" "$answer"
nginx -c "$WORK/backend.conf" -g 'daemon off;' >/dev/null 2>&1 &
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null 2>&1 &
REDIS_PID=$!
LINEUPS="memory redis leased"
declare -A PIDS
port=18710
for lineup in $LINEUPS; do
  for replica in 1 2 3; do
    name=$lineup-$replica
    limits='store = "memory"'
    [ "$lineup" != memory ] && limits=$(printf 'store = "redis"\nredis_url = "redis://127.0.0.1:%s"\nreplicas = 3' "$REDIS_PORT")
    gateway_config "$WORK/$name.toml" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" "$BACKEND" "$KEY" "$lineup" \
      "$(printf '[limits]\n%s' "$limits")"
    [ "$lineup" = leased ] && printf 'lease_requests = %s\nlease_tokens = %s\n' "$LEASE" $((LEASE * 10000)) >> "$WORK/$name.toml"
    TOLLGATE_LOG=warn "$BIN" serve --config "$WORK/$name.toml" >/dev/null 2>"$WORK/$name.log" &
    PIDS[$lineup]+="$! "
    echo "127.0.0.1:$port" >> "$WORK/$lineup.addrs"
    port=$((port + 2))
  done
done
for addr in $(cat "$WORK"/*.addrs); do
  admin=${addr%:*}:$((${addr##*:} + 1))
  for _ in $(seq 100); do curl -s -o /dev/null "http://$admin/healthz" && break; sleep 0.1; done
done
for pid in ${PIDS[*]}; do
  kill -0 "$pid" 2>/dev/null || { echo "a gateway did not start:" >&2; cat "$WORK"/*.log >&2; exit 1; }
done

cpu() { local sum=0; for pid in "$@"; do sum=$((sum + $(awk '{print $14 + $15}' "/proc/$pid/stat"))); done; echo $sum; }
# Script calls Redis ran (EVALSHA, and EVAL): one per admission, lease or reconciliation batch
# key. (INFO stats' total_commands_processed would count each script's own calls inside it too.)
calls() { redis-cli -p "$REDIS_PORT" INFO commandstats | awk -F'[=,:]' '/^cmdstat_eval(sha)?:/ {s += $3} END {print s + 0}'; }
declare -A GW_US REDIS_US CMDS P50 P99 BAD
for round in $(seq "$ROUNDS"); do
  for lineup in $LINEUPS; do
    # A second's warm-up (connections, a first lease), not measured.
    warm=""
    for addr in $(cat "$WORK/$lineup.addrs"); do
      "$BIN" bench --url "http://$addr" --deployment "$lineup" --key "$KEY" --rate $((RATE / 3)) --duration 1s --json >/dev/null &
      warm+="$! "
    done
    wait $warm
    sleep 0.2
    g0=$(cpu ${PIDS[$lineup]}) r0=$(cpu "$REDIS_PID") c0=$(calls)
    benches=""
    i=0
    for addr in $(cat "$WORK/$lineup.addrs"); do
      i=$((i + 1))
      "$BIN" bench --url "http://$addr" --deployment "$lineup" --key "$KEY" --rate $((RATE / 3)) \
        --duration "${SECONDS_EACH}s" --json > "$WORK/$lineup.$round.$i.json" &
      benches+="$! "
    done
    wait $benches
    sleep 0.2 # settlements in flight, and the reconciler's last batch
    g1=$(cpu ${PIDS[$lineup]}) r1=$(cpu "$REDIS_PID") c1=$(calls)
    read -r requests p50 p99 bad < <(python3 - "$WORK/$lineup.$round".*.json <<'PY'
import json, sys
runs = [json.load(open(p)) for p in sys.argv[1:]]
requests = sum(r["requests_measured"] for r in runs)
bad = sum(r["requests_measured"] - r["status_2xx"] for r in runs)
print(requests, sum(r["latency_ms"]["p50"] for r in runs) / len(runs), sum(r["latency_ms"]["p99"] for r in runs) / len(runs), bad)
PY
)
    hz=$(getconf CLK_TCK)
    GW_US[$lineup]+="$(echo "scale=2; ($g1 - $g0) * 1000000 / $hz / $requests" | bc) "
    REDIS_US[$lineup]+="$(echo "scale=2; ($r1 - $r0) * 1000000 / $hz / $requests" | bc) "
    CMDS[$lineup]+="$(echo "scale=1; ($c1 - $c0) / $SECONDS_EACH" | bc) "
    P50[$lineup]+="$p50 " P99[$lineup]+="$p99 " BAD[$lineup]+="$bad "
  done
done
mean() { python3 -c "import sys; v=[float(x) for x in sys.argv[2:]]; print(f'{sum(v)/len(v):.{sys.argv[1]}f}')" "$1" ${2}; }
printf '%-8s %14s %16s %18s %9s %9s %8s   (%s requests/s over 3 replicas, %s s x %s rounds, lease %s)\n' \
  lineup redis_calls/s redis_us/request gateway_us/request p50_ms p99_ms non_2xx "$RATE" "$SECONDS_EACH" "$ROUNDS" "$LEASE"
for lineup in $LINEUPS; do
  printf '%-8s %14s %16s %18s %9s %9s %8s\n' "$lineup" "$(mean 0 "${CMDS[$lineup]}")" "$(mean 2 "${REDIS_US[$lineup]}")" \
    "$(mean 2 "${GW_US[$lineup]}")" "$(mean 3 "${P50[$lineup]}")" "$(mean 3 "${P99[$lineup]}")" "$(mean 0 "${BAD[$lineup]}")"
done
echo "per round (gateway us/request): $(for l in $LINEUPS; do printf '%s [%s] ' "$l" "${GW_US[$l]% }"; done)"
