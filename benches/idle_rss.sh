#!/usr/bin/env bash
# Resident memory of tollgate builds: fresh, after a short load (wrk -c64, 5 s, through the gateway
# to the mock backend in its own process), and with 10,000 idle connections open (counted by the
# gateway itself before RSS is read). Issue 15 keeps it at or below 64 MiB.
#
#   benches/idle_rss.sh BIN [another BIN ...]
set -euo pipefail
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
cd "$(dirname "$0")/.."
SKIP_BUILD=1 source benches/common.sh
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 1; }
KEY=BenchKey0123456789abcdefghijklmn MOCK=127.0.0.1:18800
"${BINS[0]}" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
cat > "$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["api-key"] = "$KEY"
LUA
port=18810
for bin in "${BINS[@]}"; do
  gateway_config "$WORK/g$port.toml" "127.0.0.1:$port" "127.0.0.1:$((port + 1))" "$MOCK" "$KEY" bench
  TOLLGATE_LOG=warn "$bin" serve --config "$WORK/g$port.toml" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$((port + 1))/healthz" && break; sleep 0.1; done
  fresh=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  wrk -t1 -c64 -d5s -s "$WORK/post.lua" "http://127.0.0.1:$port/openai/deployments/bench/chat/completions" >/dev/null
  loaded=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status")
  idle=$(python3 - "$port" "$pid" <<'PY'
import socket, sys, time, urllib.request
port, pid = int(sys.argv[1]), sys.argv[2]
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(10000)]
for _ in range(150):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/metrics").read().decode()
    open_now = [l for l in text.splitlines() if l.startswith("tollgate_open_connections ")]
    if open_now and float(open_now[0].split()[-1]) >= 10000:
        break
    time.sleep(0.2)
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"{int(rss) / 1024:.1f}")
PY
)
  echo "$bin: RSS fresh $fresh MiB, after load $loaded MiB, with 10,000 idle connections $idle MiB"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  port=$((port + 10))
done
