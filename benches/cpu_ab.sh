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
OLD=$1 NEW=$2 REQUESTS=${3:-30000} ROUNDS=${4:-3}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true
digest() { printf 'sha256:%s' "$(printf %s "$1" | sha256sum | cut -d' ' -f1)"; }
KEY=BenchKey0123456789abcdefghijklmn MOCK=127.0.0.1:18500
config() {
  cat > "$WORK/$1.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
[admin]
listen = "127.0.0.1:$3"
[[deployments]]
name = "bench"
model = "m"
backend = "http://$MOCK"
keys = ["$(digest "$KEY")"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
TOML
}
"$NEW" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
config old 18510 18511
config new 18520 18521
TOLLGATE_LOG=warn "$OLD" serve --config "$WORK/old.toml" >/dev/null 2>&1 &
OLD_PID=$!
TOLLGATE_LOG=warn "$NEW" serve --config "$WORK/new.toml" >/dev/null 2>&1 &
NEW_PID=$!
targets=("old $OLD_PID http://127.0.0.1:18510/openai/deployments/bench" "new $NEW_PID http://127.0.0.1:18520/openai/deployments/bench")
if command -v nginx >/dev/null; then
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx; uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  upstream mock { server $MOCK; keepalive 64; }
  server {
    listen 127.0.0.1:18530;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGINX
  nginx -c "$WORK/nginx.conf" >/dev/null 2>&1 &
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
