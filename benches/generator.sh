#!/usr/bin/env bash
# The load generator itself, `tollgate bench`, measured two ways (and GuideLLM beside it when
# GUIDELLM names its `guidellm` command, with GUIDELLM_TOKENIZER a tokenizer directory, e.g. one
# made by `benches/guidellm_tokenizer.py DIR`; `pip install guidellm==0.8.1` in a venv):
#
# 1. Accuracy: against the mock backend told its pacing (--latency-ms 100, --tokens-per-second
#    50, 64-token answers), the TTFT, ITL and stream pace each tool measures, next to what the
#    mock was told. The mock sleeps on tokio's millisecond timer, so each of its 20 ms pauses
#    lasts 20 to 21 ms: "told" is a floor.
# 2. Cost: against a static nginx (one worker on core 1) that answers every request at once
#    with a 16-event stream and its usage, the generator pinned to core 0 in a closed loop of 32
#    (and wrk -t1 -c32, which reads no stream, as the floor of an HTTP load generator):
#    its CPU per request (utime + stime of its processes from /proc/PID/stat over the middle of
#    the run, divided by the requests it finished then) and the rate it reaches from that core.
#
# 3. Where the time goes: tollgate in front of a mock answering in 20 ms, `tollgate bench` at
#    200 requests/s reading `Server-Timing`: the gateway's share and the backend's per percentile.
#
#   benches/generator.sh [seconds per run, default 10] [an older tollgate, costed as "tollgate-old"]
set -euo pipefail
SECS=${1:-10}
OLD=${2:+$(realpath "$2")}
cd "$(dirname "$0")/.."
source benches/common.sh
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx)" >&2; exit 1; }
MOCK=127.0.0.1:18910 STATIC=127.0.0.1:18911
"$BIN" mock-backend --listen "$MOCK" --latency-ms 100 --tokens-per-second 50 --completion-tokens 64 >/dev/null 2>&1 &
python3 - "$WORK/stream.txt" <<'PY'
import json, sys
events = [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
events += [{"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": " word"}, "finish_reason": None}]} for _ in range(16)]
events.append({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 19, "completion_tokens": 16, "total_tokens": 35}})
body = "".join(f"data: {json.dumps(e, separators=(',', ':'))}\n\n" for e in events) + "data: [DONE]\n\n"
open(sys.argv[1], "w").write(body)
PY
{ nginx_head "$WORK/backend" 1; cat <<NGINX
  keepalive_requests 1000000;
  server {
    listen $STATIC;
    location / { default_type text/event-stream; return 200 '$(cat "$WORK/stream.txt")'; }
  }
}
NGINX
} > "$WORK/static.conf"
taskset -c 1 nginx -c "$WORK/static.conf" -g 'daemon off;' >/dev/null 2>&1 &
sleep 1

# cpu_of PID: utime + stime (clock ticks) of PID and every process under it.
cpu_of() {
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1]); stats = {}
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            stats[int(pid)] = (int(f[1]), int(f[11]) + int(f[12]))
        except OSError:
            pass
def tree(p):
    return [p] + [q for c, (pp, _) in stats.items() if pp == p for q in tree(c)]
print(sum(stats.get(p, (0, 0))[1] for p in tree(root)))
PY
}

# measure NAME COMMAND...: runs COMMAND on core 0 for SECS; samples its CPU from a fifth of the
# way in to four fifths; prints "NAME cpu_ticks seconds" to $WORK/cpu.
measure() {
  local name=$1; shift
  taskset -c 0 "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" &
  local pid=$! a b
  python3 -c "import time; time.sleep($SECS * 0.2)"; a=$(cpu_of $pid)
  python3 -c "import time; time.sleep($SECS * 0.6)"; b=$(cpu_of $pid)
  wait $pid || { echo "$name failed:"; tail -5 "$WORK/$name.err"; }
  echo "$name $((b - a)) $(python3 -c "print($SECS * 0.6)")" >> "$WORK/cpu"
}

# GuideLLM's HTTP backend at ADDR: our routes (no /v1), no health check, a fixed model name.
guidellm_backend() {
  echo "kind=openai_http,target=http://$1,model=m,validate_backend=false,api_routes./v1/chat/completions=chat/completions"
}

echo "1. accuracy against the mock (told: TTFT >= 120 ms, ITL >= 20 ms, pace <= 50 tokens/s)"
"$BIN" bench --url "http://$MOCK" --mix stream-chat --max-tokens 64 --concurrency 8 --duration "${SECS}s" --json > "$WORK/acc.json"
python3 - "$WORK/acc.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"  tollgate bench: {r['status_2xx']} requests; TTFT p50 {r['time_to_first_token_ms']['p50']:.2f} ms, "
      f"ITL p50 {r['inter_token_latency_ms']['p50']:.3f} ms/token (between events {r['inter_event_latency_ms']['p50']:.3f}), "
      f"pace p50 {r['tokens_per_second']['p50']:.2f} tokens/s, output tokens p50 {r['output_tokens']['p50']:.0f}")
PY
if [ -n "${GUIDELLM:-}" ]; then
  (cd "$WORK" && "$GUIDELLM" run --backend "$(guidellm_backend "$MOCK")" \
     --profile kind=concurrent,streams=8 --constraint kind=max_duration,seconds="$SECS" \
     --data kind=synthetic_text,prompt_tokens=16,output_tokens=64 --tokenizer kind=hf_auto,model="$GUIDELLM_TOKENIZER" \
     --output kind=json,path="$WORK/g-acc.json" --disable-console-interactive > "$WORK/g-acc.log" 2>&1) \
    || { echo "  guidellm failed:"; tail -5 "$WORK/g-acc.log"; }
  [ -f "$WORK/g-acc.json" ] && python3 benches/guidellm_summary.py "$WORK/g-acc.json" "  guidellm"
fi

echo "2. cost against a static nginx, closed loop of 32, generator on core 0, ${SECS}s"
measure tollgate "$BIN" bench --url "http://$STATIC" --mix stream-chat --concurrency 32 --duration "${SECS}s" --json
[ -z "$OLD" ] || measure tollgate-old "$OLD" bench --url "http://$STATIC" --mix stream-chat --concurrency 32 --duration "${SECS}s" --json
if command -v wrk >/dev/null; then
  post_lua "$WORK/post.lua" none
  measure wrk wrk -t1 -c32 -d "${SECS}s" -s "$WORK/post.lua" "http://$STATIC/chat/completions"
fi
if [ -n "${GUIDELLM:-}" ]; then
  measure guidellm "$GUIDELLM" run --backend "$(guidellm_backend "$STATIC")" \
    --profile kind=concurrent,streams=32 --constraint kind=max_duration,seconds="$SECS" \
    --data kind=synthetic_text,prompt_tokens=16,output_tokens=16 --tokenizer kind=hf_auto,model="$GUIDELLM_TOKENIZER" \
    --output kind=json,path="$WORK/g-cost.json" --disable-console-interactive
fi
python3 - "$WORK" <<'PY'
import json, os, sys
work = sys.argv[1]; hz = os.sysconf("SC_CLK_TCK")
for line in open(f"{work}/cpu"):
    name, ticks, seconds = line.split(); ticks, seconds = int(ticks), float(seconds)
    if name.startswith("tollgate"):
        rate = json.load(open(f"{work}/{name}.out"))["throughput_per_second"]
    elif name == "wrk":
        rate = float(next(l for l in open(f"{work}/wrk.out") if l.startswith("Requests/sec")).split()[1])
    else:
        rate = json.load(open(f"{work}/g-cost.json"))["benchmarks"][0]["metrics"]["requests_per_second"]["successful"]["mean"]
    # Requests finished in the sampled stretch, at the run's steady rate.
    cpu_ms = ticks / hz * 1000 / (rate * seconds)
    print(f"  {name:9} {rate:9.0f} requests/s, {cpu_ms:6.3f} ms CPU per request, core 0 {ticks / hz / seconds * 100:5.1f}% busy")
PY

echo "3. Server-Timing through tollgate (mock answering in 20 ms, 200 requests/s, ${SECS}s)"
"$BIN" mock-backend --listen 127.0.0.1:18912 --latency-ms 20 >/dev/null 2>&1 &
KEY=BenchKey0123456789abcdefghijklmn
gateway_config "$WORK/g.toml" 127.0.0.1:18913 127.0.0.1:18914 127.0.0.1:18912 "$KEY" bench
"$BIN" serve --config "$WORK/g.toml" >/dev/null 2>"$WORK/tollgate.log" &
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:18914/healthz" && break; sleep 0.1; done
"$BIN" bench --url http://127.0.0.1:18913 --deployment bench --key "$KEY" --rate 200 --duration "${SECS}s" --json > "$WORK/split.json"
python3 - "$WORK/split.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for name in ("latency_ms", "gateway_ms", "backend_ms"):
    s = r[name]
    print(f"  {name:11} p50 {s['p50']:8.3f}  p90 {s['p90']:8.3f}  p99 {s['p99']:8.3f}  p99.9 {s['p999']:8.3f}  max {s['max']:8.3f} ms")
PY
