#!/usr/bin/env bash
# Backend pools, measured two ways in one run:
#
# 1. CPU per request of a deployment over a pool of three backends against one over a single
#    backend, on the same gateway process, behind a backend faster than the gateway (one static
#    nginx answering the API's JSON on three ports, so the pool's three URLs are three backends).
#    Alternating rounds of wrk -t1 -c32; CPU = utime + stime of tollgate (/proc/PID/stat) over
#    the round divided by the requests it served, and the ratio pool / one.
# 2. Failover: three `tollgate mock-backend` processes behind a pool; `tollgate bench` sends an
#    open-loop load; one backend is killed (SIGKILL) midway. Reports the client errors (non-2xx and
#    transport errors) of the whole run, the time from the kill to the ejection (metrics polled
#    every 10 ms), the retries it took, and p99 latency; then the same with health checks
#    (health_check_interval_ms = 200).
#
#   benches/pool.sh [seconds per round, default 10] [rounds, default 3] [tollgate binary]
#
# Needs nginx and wrk (Debian packages).
set -euo pipefail
SECONDS_PER_ROUND=${1:-10} ROUNDS=${2:-3}
cd "$(dirname "$0")/.."
if [ -n "${3:-}" ]; then BIN=$(realpath "$3"); SKIP_BUILD=1; fi
source benches/common.sh
need_tools nginx wrk
KEY=BenchKey0123456789abcdefghijklmn
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# --- 1. CPU per request: one backend vs a pool of three ---------------------------------------
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"Meta-Llama-3-8B-Instruct","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello! How can I help you today?","tool_calls":null},"logprobs":null}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}'
{ nginx_head "$WORK/backend" 2; cat <<NGINX
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18801; listen 127.0.0.1:18802; listen 127.0.0.1:18803;
    location / { default_type application/json; return 200 '$answer'; }
  }
}
NGINX
} > "$WORK/backend.conf"
nginx -c "$WORK/backend.conf" -g 'daemon off;' >/dev/null 2>&1 &
cat > "$WORK/g.toml" <<TOML
[server]
listen = "127.0.0.1:18810"
[admin]
listen = "127.0.0.1:18811"
state_file = "$WORK/g.state.json"
[ledger]
path = "$WORK/usage.jsonl"
[[deployments]]
name = "one"
model = "m"
keys = ["$(digest "$KEY")"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
# The same backend as the pool's first, so with the same (own) limits: one URL, one quota.
[[deployments.backends]]
url = "http://127.0.0.1:18801"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
[[deployments]]
name = "pool"
model = "m"
keys = ["$(digest "$KEY")"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
[[deployments.backends]]
url = "http://127.0.0.1:18801"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
[[deployments.backends]]
url = "http://127.0.0.1:18802"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
[[deployments.backends]]
url = "http://127.0.0.1:18803"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
TOML
"$BIN" check --config "$WORK/g.toml" >/dev/null
"$BIN" serve --config "$WORK/g.toml" >/dev/null 2>"$WORK/tollgate.log" &
GATEWAY_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18811/healthz && break; sleep 0.1; done
post_lua "$WORK/post.lua" "$KEY"
sleep 0.5
echo "machine: $(nproc) cores, $(uname -r); $SECONDS_PER_ROUND s per round, wrk -t1 -c32"
echo "1. CPU per request (tollgate, everything on, ledger): one backend vs a pool of three, each with its own limits"
for round in $(seq "$ROUNDS"); do
  for name in one pool; do
    before=$(ticks "$GATEWAY_PID")
    out=$(wrk -t1 -c32 -d"${SECONDS_PER_ROUND}s" -s "$WORK/post.lua" "http://127.0.0.1:18810/openai/deployments/$name/chat/completions")
    after=$(ticks "$GATEWAY_PID")
    python3 - "$name" "$round" "$before" "$after" "$HZ" "$out" <<'PY'
import re, sys
name, rnd, before, after, hz, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
requests = int(re.search(r"(\d+) requests in", out).group(1))
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
bad = f"  NON-2XX {non2xx.group(1)}" if non2xx else ""
print(f"round {rnd} {name:5s} {rate:9.0f} req/s  CPU {(after - before) / hz * 1e6 / max(requests, 1):6.1f} us/request{bad}")
PY
  done
done | tee "$WORK/cpu.txt"
python3 - "$WORK/cpu.txt" <<'PY'
import re, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    m = re.match(r"round \d+ (\S+)\s+(\d+) req/s\s+CPU\s+([\d.]+) us", line)
    if m:
        rows[m.group(1)].append((float(m.group(2)), float(m.group(3))))
mean = lambda xs: sum(xs) / len(xs)
one, pool = mean([c for _, c in rows["one"]]), mean([c for _, c in rows["pool"]])
print(f"  mean: one {one:.1f} us, pool of three {pool:.1f} us per request (pool / one = {pool / one:.2f}x)")
PY
kill "$GATEWAY_PID" 2>/dev/null; wait "$GATEWAY_PID" 2>/dev/null || true
kill "$(cat "$WORK/backend/nginx.pid")" 2>/dev/null || true

# --- 2. Failover: a backend killed under load --------------------------------------------------
failover() {
  local checks=$1 label=$2
  local mocks=() ports=(18821 18822 18823)
  for port in "${ports[@]}"; do
    "$BIN" mock-backend --listen "127.0.0.1:$port" >/dev/null 2>&1 &
    mocks+=($!)
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/info" && break; sleep 0.05; done
  done
  cat > "$WORK/f.toml" <<TOML
[server]
listen = "127.0.0.1:18830"
[admin]
listen = "127.0.0.1:18831"
state_file = "$WORK/f.state.json"
[[deployments]]
name = "pool"
model = "m"
keys = ["$(digest "$KEY")"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
$checks
[[deployments.backends]]
url = "http://127.0.0.1:18821"
name = "a"
[[deployments.backends]]
url = "http://127.0.0.1:18822"
name = "b"
[[deployments.backends]]
url = "http://127.0.0.1:18823"
name = "c"
TOML
  "$BIN" check --config "$WORK/f.toml" >/dev/null
  "$BIN" serve --config "$WORK/f.toml" >/dev/null 2>"$WORK/f.log" &
  local gw=$!
  for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18831/healthz && break; sleep 0.1; done
  "$BIN" bench --url http://127.0.0.1:18830 --deployment pool --key "$KEY" --rate 1000 --duration 6s --json \
    > "$WORK/bench.json" 2>/dev/null &
  local bench=$!
  sleep 2
  local killed_at ejected_at=""
  killed_at=$(date +%s%N)
  kill -9 "${mocks[1]}"
  for _ in $(seq 400); do
    if curl -s http://127.0.0.1:18831/metrics | grep '^tollgate_backend_state{' | grep 'backend="b"' | grep -q 'state="ejected"} 1$'; then
      ejected_at=$(date +%s%N); break
    fi
    sleep 0.01
  done
  wait "$bench" || true
  local retries
  retries=$(curl -s http://127.0.0.1:18831/metrics | awk '/^tollgate_retries_total\{deployment="pool"\}/ {print $2}')
  python3 - "$label" "$WORK/bench.json" "$killed_at" "${ejected_at:-0}" "${retries:-0}" <<'PY'
import json, sys
label, path, killed, ejected, retries = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
r = json.load(open(path))
errors = r["requests_sent"] - r["status_2xx"]
to_eject = f"{(ejected - killed) / 1e6:.0f} ms" if ejected else "not within 4 s"
print(f"  {label}: {r['requests_sent']} requests at 1,000/s, client errors {errors} "
      f"(5xx {r['status_5xx']}, transport {r['transport_errors']}); kill -> ejected {to_eject}; "
      f"retries {float(retries):.0f}; p99 {r['latency_ms']['p99']:.2f} ms, max {r['latency_ms']['max']:.2f} ms")
PY
  kill "$gw" "${mocks[0]}" "${mocks[2]}" 2>/dev/null || true
  wait "$gw" "${mocks[0]}" "${mocks[2]}" 2>/dev/null || true
}
echo "2. Failover: one of three mock backends killed (SIGKILL) 2 s into a 6 s open-loop load"
failover "" "passive (retries + circuit breaker)"
failover "health_check_interval_ms = 200" "with health checks every 200 ms"
