#!/usr/bin/env bash
# Soak: tollgate (release build) in front of the mock backend under a steady open-loop load for
# a while, its RSS sampled every 10 s. Prints the samples, then first / max / last and the growth
# from the first sample after warm-up (the first minute) to the end.
#
#   benches/soak.sh [seconds, default 300] [requests/s, default 4000] [mix, default short-chat]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-300}
RATE=${2:-4000}
MIX=${3:-short-chat}
source benches/common.sh
MOCK=127.0.0.1:18500 GATEWAY=127.0.0.1:18580 ADMIN=127.0.0.1:18590
KEY=SoakKey0123456789abcdefghijklmno
"$BIN" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
gateway_config "$WORK/tollgate.toml" "$GATEWAY" "$ADMIN" "$MOCK" "$KEY" soak "$(printf '[ledger]\npath = "%s"' "$WORK/usage.jsonl")"
TOLLGATE_LOG=warn "$BIN" serve --config "$WORK/tollgate.toml" >/dev/null 2>&1 &
GATEWAY_PID=$!
sleep 1
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$GATEWAY_PID/status"; }

"$BIN" bench --url "http://$GATEWAY/openai/deployments/soak" --key "$KEY" --mix "$MIX" --rate "$RATE" \
  --duration "${DURATION}s" --json > "$WORK/report.json" &
BENCH_PID=$!
samples=()
echo "seconds rss_mib"
for ((t = 0; t <= DURATION; t += 10)); do
  sample=$(rss)
  samples+=("$sample")
  echo "$t $sample"
  [ "$t" -lt "$DURATION" ] && sleep 10
done
wait "$BENCH_PID"
python3 - "$WORK/report.json" "${samples[@]}" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
rss = [float(x) for x in sys.argv[2:]]
warm = rss[min(6, len(rss) - 1)]
print(f"requests: {report['requests_sent']} ({report['status_2xx']} x 2xx, {report['transport_errors']} transport errors), "
      f"{report['throughput_per_second']:.0f}/s, p99 {report['latency_ms']['p99']:.3f} ms")
print(f"RSS MiB: first {rss[0]:.1f}, after warm-up {warm:.1f}, max {max(rss):.1f}, last {rss[-1]:.1f}; "
      f"growth after warm-up {rss[-1] - warm:+.1f} MiB")
PY
