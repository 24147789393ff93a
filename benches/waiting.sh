#!/usr/bin/env bash
# Waiting instead of 429 against 429-and-retry, under the same overload: a deployment of 12,000
# tokens a minute (200 a second) whose bucket starts drained, offered 3 requests a second of
# ~110 tokens each (the mock answers every token of max_tokens 100) for SECS seconds, about 1.8
# times what refills. Two runs, one gateway each:
#
#   retry:   max_wait_ms = 0 and `tollgate bench --retry-429` (clients sleep retry-after-ms and
#            send again, as SDKs do);
#   waiting: max_wait_ms = 60000 and no retries (the gateway holds each request until it fits).
#
# For each: the requests the clients sent (first sends + retries), the HTTP requests the gateway
# answered (its tollgate_requests_total), goodput, and p50/p99 completion time.
#
#   benches/waiting.sh [seconds, default 30]
set -euo pipefail
SECS=${1:-30}
cd "$(dirname "$0")/.."
source benches/common.sh
MOCK=127.0.0.1:18960 KEY=BenchKey0123456789abcdefghijklmn
"$BIN" mock-backend --listen "$MOCK" --completion-tokens 100000 >/dev/null 2>&1 &
for mode in retry waiting; do
  port=$([ "$mode" = retry ] && echo 18961 || echo 18963)
  gateway_config "$WORK/$mode.toml" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" "$MOCK" "$KEY" bench
  # The deployment's own limits, in place of common.sh's unlimited ones.
  sed -i 's/^requests_per_minute = .*/requests_per_minute = 100000/; s/^tokens_per_minute = .*/tokens_per_minute = 12000/' "$WORK/$mode.toml"
  [ "$mode" = waiting ] && echo "max_wait_ms = 60000" >> "$WORK/$mode.toml"
  "$BIN" serve --config "$WORK/$mode.toml" >/dev/null 2>"$WORK/$mode.log" &
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$((port + 1))/healthz" && break; sleep 0.1; done
  # Drain the bucket: one request spending nearly all of it.
  curl -s -o /dev/null -H "api-key: $KEY" -H "x-mock-completion-tokens: 11900" -H 'content-type: application/json' \
    -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":11900}' "http://127.0.0.1:$port/openai/deployments/bench/chat/completions"
  extra=$([ "$mode" = retry ] && echo --retry-429 || true)
  "$BIN" bench --url "http://127.0.0.1:$port" --deployment bench --key "$KEY" --rate 3 --duration "${SECS}s" \
    --max-tokens 100 --timeout 120s $extra --json > "$WORK/$mode.json"
  curl -s "http://127.0.0.1:$((port + 1))/metrics" > "$WORK/$mode.metrics"
done
python3 - "$WORK" <<'PY'
import json, re, sys
work = sys.argv[1]
print(f"{'':8} {'sent':>6} {'answered':>9} {'2xx':>5} {'429':>5} {'goodput/s':>10} {'p50 s':>8} {'p99 s':>8} {'max s':>8}")
for mode in ("retry", "waiting"):
    r = json.load(open(f"{work}/{mode}.json"))
    text = open(f"{work}/{mode}.metrics").read()
    answered = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                   if l.startswith("tollgate_requests_total{") and 'deployment="bench"' in l) - 1
    sent = r["requests_sent"] + r["retries_after_429"]
    l = r["latency_ms"]
    print(f"{mode:8} {sent:>6} {answered:>9.0f} {r['status_2xx']:>5} {r['status_429']:>5} {r['goodput_per_second']:>10.2f} "
          f"{l['p50'] / 1000:>8.2f} {l['p99'] / 1000:>8.2f} {l['max'] / 1000:>8.2f}")
PY
