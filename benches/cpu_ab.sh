#!/usr/bin/env bash
# CPU per request of two tollgate builds (and nginx, when installed, as the peer) in front of
# one mock backend, measured in the same run, alternating: the gateway's own utime + stime from
# /proc/PID/stat across a closed-loop `tollgate bench` run, divided by the requests it served.
#
#   benches/cpu_ab.sh OLD_BIN NEW_BIN [requests per measurement, default 30000] [rounds, default 3]
#
# Both gateways get the same configuration (auth, both buckets, estimation, reconciliation and
# metrics on; quotas too high to reject). The load generator is NEW_BIN's `bench`.
set -euo pipefail
OLD=$(realpath "$1") NEW=$(realpath "$2") REQUESTS=${3:-30000} ROUNDS=${4:-3}
cd "$(dirname "$0")/.."
SKIP_BUILD=1 source benches/common.sh
KEY=BenchKey0123456789abcdefghijklmn MOCK=127.0.0.1:18500
"$NEW" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
gateway_config "$WORK/old.toml" 127.0.0.1:18510 127.0.0.1:18511 "$MOCK" "$KEY" bench
gateway_config "$WORK/new.toml" 127.0.0.1:18520 127.0.0.1:18521 "$MOCK" "$KEY" bench
TOLLGATE_LOG=warn "$OLD" serve --config "$WORK/old.toml" >/dev/null 2>&1 &
OLD_PID=$!
TOLLGATE_LOG=warn "$NEW" serve --config "$WORK/new.toml" >/dev/null 2>&1 &
NEW_PID=$!
targets=("old $OLD_PID http://127.0.0.1:18510/openai/deployments/bench" "new $NEW_PID http://127.0.0.1:18520/openai/deployments/bench")
if command -v nginx >/dev/null; then
  nginx_config "$WORK/nginx.conf" 127.0.0.1:18530 "$MOCK"
  nginx -c "$WORK/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
  sleep 0.5
  targets+=("nginx $(cat "$WORK/nginx/nginx.pid" 2>/dev/null || pgrep -n nginx) http://127.0.0.1:18530")
fi
sleep 1
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for target in "${targets[@]}"; do
    read -r name pid url <<<"$target"
    # nginx forks a worker: count the master and its children.
    pids=("$pid" $(pgrep -P "$pid" || true))
    before=0; for p in "${pids[@]}"; do before=$((before + $(ticks "$p"))); done
    report=$("$NEW" bench --url "$url" --key "$KEY" --concurrency 16 --requests "$REQUESTS" --json)
    after=0; for p in "${pids[@]}"; do after=$((after + $(ticks "$p"))); done
    python3 - "$name" "$round" "$before" "$after" "$HZ" "$report" <<'PY'
import json, sys
name, rnd, before, after, hz, report = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
ok = report["status_2xx"]
cpu_us = (after - before) / hz * 1e6
print(f"round {rnd} {name:6} {ok:6} ok  {report['throughput_per_second']:9.0f} req/s  CPU {cpu_us / max(ok, 1):6.1f} us/request")
PY
  done
done
