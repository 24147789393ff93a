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
if [ -n "${1:-}" ]; then BIN=$(realpath "$1"); SKIP_BUILD=1; fi
SECONDS_PER_RUN=${2:-5}
source benches/common.sh
need_tools nginx wrk strace
start_lineup 18800
sleep 0.5
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
