#!/usr/bin/env bash
# Proxies in front of a backend faster than any of them: a static nginx that answers every chat
# completion at once with the API's JSON (and `usage`). In one run, alternating rounds, for the
# backend alone, nginx as a plain reverse proxy, the bare hyper floor (`benches/floor_proxy.rs`)
# and tollgate with everything on (auth, both buckets, bpe estimate, reconciliation, metrics,
# ledger, access log at the default level), called with the deployment's key and, as
# "tollgate-consumer", with a consumer's (its own buckets and two period quotas on top): throughput, p99, CPU µs per request from
# /proc/PID/stat (utime + stime of the proxy's processes over the round, divided by the requests
# it served) and the ratio to nginx.
#
#   benches/fast_backend.sh [seconds per round, default 10] [rounds, default 3] [tollgate binary]
#                           [an older tollgate binary, measured beside it as "tollgate-old"]
#
# Load: wrk -t1 -c32 posting a short chat body. Needs nginx and wrk (Debian packages).
set -euo pipefail
SECONDS_PER_ROUND=${1:-10} ROUNDS=${2:-3}
cd "$(dirname "$0")/.."
if [ -n "${3:-}" ]; then BIN=$(realpath "$3"); SKIP_BUILD=1; fi
OLD=${4:+$(realpath "$4")}
source benches/common.sh
need_tools nginx wrk
start_lineup 18700
if [ -n "$OLD" ]; then
  gateway_config "$WORK/old.toml" 127.0.0.1:18740 127.0.0.1:18741 "$BACKEND" "$KEY" bench "[ledger]
path = \"$WORK/usage-old.jsonl\""
  "$OLD" serve --config "$WORK/old.toml" >/dev/null 2>"$WORK/tollgate-old.log" &
  OLD_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18741/healthz" && break; sleep 0.1; done
fi
sleep 0.5

master() { cat "$1" 2>/dev/null || true; }
targets=(
  "backend $(master "$WORK/backend/nginx.pid") http://$BACKEND/chat/completions"
  "nginx $(master "$WORK/nginx/nginx.pid") http://$NGINX/chat/completions"
  "floor $FLOOR_PID http://$FLOORADDR/chat/completions"
  "tollgate $GATEWAY_PID http://$GATEWAY/openai/deployments/bench/chat/completions"
  "tollgate-consumer $GATEWAY_PID http://$GATEWAY/openai/deployments/bench/chat/completions consumer.lua"
)
[ -z "$OLD" ] || targets+=("tollgate-old $OLD_PID http://127.0.0.1:18740/openai/deployments/bench/chat/completions")
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
echo "machine: $(nproc) cores, $(uname -r); $SECONDS_PER_ROUND s per round, wrk -t1 -c32"
for round in $(seq "$ROUNDS"); do
  for target in "${targets[@]}"; do
    read -r name pid url script <<<"$target"
    pids=("$pid" $(pgrep -P "$pid" || true))
    before=0; for p in "${pids[@]}"; do before=$((before + $(ticks "$p"))); done
    out=$(wrk -t1 -c32 -d"${SECONDS_PER_ROUND}s" --latency -s "$WORK/${script:-post.lua}" "$url")
    after=0; for p in "${pids[@]}"; do after=$((after + $(ticks "$p"))); done
    python3 - "$name" "$round" "$before" "$after" "$HZ" "$out" <<'PY'
import re, sys
name, rnd, before, after, hz, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
requests = int(re.search(r"(\d+) requests in", out).group(1))
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p99 = re.search(r"99%\s+([\d.]+\w+)", out).group(1)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
bad = f"  NON-2XX {non2xx.group(1)}" if non2xx else ""
cpu_us = (after - before) / hz * 1e6 / max(requests, 1)
print(f"round {rnd} {name:12s} {rate:9.0f} req/s  p99 {p99:>8s}  CPU {cpu_us:6.1f} us/request{bad}")
PY
  done
done 2>&1 | tee "$WORK/results.txt"
python3 - "$WORK/results.txt" <<'PY'
import re, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (\S+)\s+(\d+) req/s .* CPU\s+([\d.]+) us", line)
    if m:
        rows[m.group(1)].append((float(m.group(2)), float(m.group(3))))
mean = lambda xs: sum(xs) / len(xs)
ng_rate = mean([r for r, _ in rows["nginx"]]); ng_cpu = mean([c for _, c in rows["nginx"]])
print("mean over rounds (ratio to nginx as a proxy):")
for name, vals in rows.items():
    rate, cpu = mean([r for r, _ in vals]), mean([c for _, c in vals])
    print(f"  {name:12s} {rate:9.0f} req/s ({rate / ng_rate:4.2f}x)  CPU {cpu:6.1f} us/request ({cpu / ng_cpu:4.2f}x)")
PY
