#!/usr/bin/env bash
# Many deployments on one gateway (issue 21). For each N: a config file of N deployments
# (`benches/scale_config.py`: one key each, limits too high to refuse) in front of a static nginx backend
# (faster than the gateway), then:
#   - `tollgate check`: wall time and peak RSS;
#   - start: time until the admin listener answers, and RSS;
#   - random traffic over every deployment (wrk, a random deployment and its key per request):
#     requests/s, p99, and the gateway's CPU per request (utime + stime from /proc/PID/stat over
#     the run, divided by the requests it served);
#   - RSS with every deployment served, one /metrics scrape (bytes and series);
#   - reloads (POST /reload): of the unchanged file, and with one deployment's limit changed
#     (median of 5 each), RSS after them;
#   - traffic again while 20 reloads run, its p99 and non-2xx count beside the quiet run's.
#
#   benches/scale.sh [N ... (default: 1 1000 10000)]
#   SECONDS_PER_RUN=10 SKIP_BUILD=1 BIN=path/to/tollgate benches/scale.sh 10000
#   METRICS=full benches/scale.sh 10000     # [metrics] deployments = "full" (default: summary)
#
# CPU per request here is one run per N, which a shared VM's drift can move by ±15%: whether it
# is flat in N is measured by benches/scale_cpu.sh (interleaved rounds).
#
# Needs nginx and wrk (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
need_tools nginx wrk
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
COUNTS=("$@")
[ ${#COUNTS[@]} -gt 0 ] || COUNTS=(1 1000 10000)
BACKEND=127.0.0.1:18900 GATEWAY=127.0.0.1:18910 ADMIN=127.0.0.1:18911 TOKEN=scale-admin-token
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello! How can I help you today?"}}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}'
static_nginx_config "$WORK/backend.conf" "$BACKEND" "$answer"
nginx -c "$WORK/backend.conf" -g 'daemon off;' >/dev/null 2>&1 &

rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
reload_ms() {
  curl -s -o /dev/null -w '%{time_total}\n' -X POST -H "authorization: Bearer $TOKEN" "http://$ADMIN/reload" \
    | awk '{printf "%.1f\n", $1 * 1000}'
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }

# wrk for SECONDS_PER_RUN; prints "requests N non2xx N p99_ms X".
drive() { wrk -t1 -c32 -d"${SECONDS_PER_RUN}s" -s "$WORK/random.lua" "http://$GATEWAY" | grep '^requests '; }

echo "| deployments | check | check RSS | start | RSS idle | req/s | p99 | CPU/request | RSS served | scrape | series | reload unchanged | reload one changed | RSS after reloads | p99 during 20 reloads | non-2xx during reloads |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for n in "${COUNTS[@]}"; do
  python3 benches/scale_config.py "$n" "$WORK/g.toml" "$WORK/random.lua" 1000000000 "$BACKEND" "$GATEWAY" "$ADMIN" "$TOKEN" "$WORK"
  rm -f "$WORK/state.json"
  /usr/bin/time -o "$WORK/check.time" -f '%e %M' "$BIN" check --config "$WORK/g.toml" >/dev/null
  read -r check_s check_kb < "$WORK/check.time"
  started=$(date +%s.%N)
  TOLLGATE_LOG=warn "$BIN" serve --config "$WORK/g.toml" >/dev/null 2>"$WORK/gateway.log" &
  pid=$!
  until curl -s -o /dev/null "http://$ADMIN/healthz"; do sleep 0.01; done
  probe=$(curl -s -w ' %{http_code}' -X POST "http://$GATEWAY/openai/deployments/d0/chat/completions" \
    -H 'api-key: ScaleKey0000000000abcdefghijklmn' -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hi"}]}')
  [ "${probe##* }" = 200 ] || { echo "the gateway does not answer 200: $probe" >&2; exit 1; }
  start_s=$(echo "$(date +%s.%N) - $started" | bc)
  idle=$(rss $pid)
  before=$(cpu_ticks $pid)
  read -r _ requests _ non2xx _ p99 < <(drive)
  ticks=$(( $(cpu_ticks $pid) - before ))
  cpu_us=$(echo "scale=1; $ticks * 1000000 / $(getconf CLK_TCK) / $requests" | bc)
  served=$(rss $pid)
  curl -s -H "authorization: Bearer $TOKEN" "http://$ADMIN/metrics" > "$WORK/scrape.txt"
  scrape_mb=$(awk -v b="$(wc -c < "$WORK/scrape.txt")" 'BEGIN {printf "%.2f MB", b / 1e6}')
  series=$(grep -vc '^#' "$WORK/scrape.txt" || true)
  unchanged=$(for _ in 1 2 3 4 5; do reload_ms; done | median)
  changed=$(for i in 1 2 3 4 5; do
    python3 benches/scale_config.py "$n" "$WORK/g.toml" "$WORK/random.lua" $((1000000000 - i)) "$BACKEND" "$GATEWAY" "$ADMIN" "$TOKEN" "$WORK"
    reload_ms
  done | median)
  after=$(rss $pid)
  ( for _ in $(seq 20); do reload_ms >/dev/null; sleep "$(echo "scale=3; $SECONDS_PER_RUN / 25" | bc)"; done ) &
  reloader=$!
  read -r _ _ _ reload_non2xx _ reload_p99 < <(drive)
  wait $reloader
  echo "| $n | ${check_s} s | $(awk -v k="$check_kb" 'BEGIN {printf "%.0f", k / 1024}') MB | ${start_s:0:5} s | $idle MB | $((requests / SECONDS_PER_RUN)) | $p99 ms | $cpu_us µs | $served MB | $scrape_mb | $series | $unchanged ms | $changed ms | $after MB | $reload_p99 ms | $reload_non2xx |"
  [ "$non2xx" = 0 ] || echo "  ($non2xx non-2xx answers in the quiet run: $(tail -3 "$WORK/gateway.log"))"
  kill $pid; wait $pid 2>/dev/null || true
done
