#!/usr/bin/env bash
# System calls per request of each proxy in `benches/fast_backend.sh`'s line-up (nginx as a
# proxy, the bare hyper floor, tollgate with everything on), counted by `strace -f -c` attached
# while wrk posts the short chat for a few seconds. A system call costs a microsecond or more on
# this VM, so this tells where CPU above the instruction count (callgrind) goes. strace slows
# each proxy down; the counts per request, not the rates, are what this measures.
#
#   benches/syscalls.sh [tollgate binary] [seconds, default 5]
#
# Needs nginx, wrk and strace (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${1:-}" ]; then GIVEN=$(realpath "$1"); SKIP_BUILD=1; fi
SECONDS_PER_RUN=${2:-5}
source benches/common.sh
BIN=${GIVEN:-$BIN}
for tool in nginx wrk strace; do command -v $tool >/dev/null || { echo "$tool is not installed (apt-get install $tool)" >&2; exit 1; }; done
FLOOR=$(cargo bench --bench floor_proxy --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floor_proxy" and m.get("executable"):
        print(m["executable"])')
KEY=BenchKey0123456789abcdefghijklmn
BACKEND=127.0.0.1:18800 NGINX=127.0.0.1:18810 FLOORADDR=127.0.0.1:18820 GATEWAY=127.0.0.1:18830
ANSWER='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"Meta-Llama-3-8B-Instruct","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello! How can I help you today?","tool_calls":null},"logprobs":null}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}'
static_nginx_config "$WORK/backend.conf" "$BACKEND" "$ANSWER"
nginx -c "$WORK/backend.conf" -g 'daemon off;' >/dev/null 2>&1 &
nginx_config "$WORK/nginx.conf" "$NGINX" "$BACKEND" 2
nginx -c "$WORK/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
"$FLOOR" --listen "$FLOORADDR" --upstream "$BACKEND" --workers 2 &
FLOOR_PID=$!
gateway_config "$WORK/g.toml" "$GATEWAY" 127.0.0.1:18831 "$BACKEND" "$KEY" bench "[ledger]
path = \"$WORK/usage.jsonl\""
"$BIN" serve --config "$WORK/g.toml" >/dev/null 2>"$WORK/tollgate.log" &
GATEWAY_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18831/healthz" && break; sleep 0.1; done
sleep 0.5
cat > "$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["api-key"] = "BenchKey0123456789abcdefghijklmn"
LUA
targets=(
  "nginx $(pgrep -P "$(cat "$WORK/nginx/nginx.pid")" | paste -sd,) http://$NGINX/chat/completions"
  "floor $FLOOR_PID http://$FLOORADDR/chat/completions"
  "tollgate $GATEWAY_PID http://$GATEWAY/openai/deployments/bench/chat/completions"
)
for target in "${targets[@]}"; do
  read -r name pids url <<<"$target"
  strace -f -c -o "$WORK/$name.strace" $(printf -- '-p %s ' ${pids//,/ }) 2>/dev/null &
  STRACE=$!
  sleep 0.5
  out=$(wrk -t1 -c32 -d"${SECONDS_PER_RUN}s" -s "$WORK/post.lua" "$url")
  kill -INT "$STRACE"; wait "$STRACE" 2>/dev/null || true
  python3 - "$name" "$WORK/$name.strace" "$out" <<'PY'
import re, sys
name, path, out = sys.argv[1], sys.argv[2], sys.argv[3]
requests = int(re.search(r"(\d+) requests in", out).group(1))
calls = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[-1] not in ("syscall", "total") and f[3].isdigit():
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = ", ".join(f"{n} {c / requests:.2f}" for n, c in sorted(calls.items(), key=lambda x: -x[1])[:8])
print(f"{name:9s} {total / requests:5.2f} system calls per request ({requests} requests): {top}")
PY
done
