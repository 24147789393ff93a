#!/usr/bin/env bash
# Is CPU per request flat in the number of deployments? Two gateways of the same build run side
# by side in front of one static nginx (faster than either): one with 1 deployment, one with N.
# wrk drives them in turn (random deployment and its key each request, as in scale.sh), ROUNDS
# times SECONDS_PER_ROUND each, in turn 1, N then N, 1, so that both see the same machine: on a shared 2-core VM the
# CPU a request costs drifts by ±15% from minute to minute, and only interleaved rounds compare.
# Each gateway's CPU is its utime + stime from /proc/PID/stat over its rounds, divided by the
# requests it served; printed per round and in total, with the ratio N / 1.
#
#   benches/scale_cpu.sh [N, default 10000] [ROUNDS, default 10]
#   SECONDS_PER_ROUND=6 SKIP_BUILD=1 BIN=path/to/tollgate benches/scale_cpu.sh 10000 10
#   PIN=1 ...: each gateway on core 1 (one worker), nginx and wrk on core 0, so that neither
#   gateway is moved between cores or shares one with the load.
#
# Needs nginx and wrk (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
need_tools nginx wrk
N=${1:-10000} ROUNDS=${2:-10} SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-6}
on_gateway_core=() on_load_core=()
[ -z "${PIN:-}" ] || on_gateway_core=(taskset -c 1) on_load_core=(taskset -c 0)
BACKEND=127.0.0.1:18950
answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello! How can I help you today?"}}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}'
static_nginx_config "$WORK/backend.conf" "$BACKEND" "$answer"
"${on_load_core[@]}" nginx -c "$WORK/backend.conf" -g 'daemon off;' >/dev/null 2>&1 &

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
declare -A PID URL CPU SERVED us
for n in 1 "$N"; do
  mkdir -p "$WORK/$n"
  port=$((18960 + (n == 1 ? 0 : 2)))
  python3 benches/scale_config.py "$n" "$WORK/$n/g.toml" "$WORK/$n/random.lua" 1000000000 "$BACKEND" \
    "127.0.0.1:$port" "127.0.0.1:$((port + 1))" scale-admin-token "$WORK/$n"
  TOLLGATE_LOG=warn "${on_gateway_core[@]}" "$BIN" serve --config "$WORK/$n/g.toml" >/dev/null 2>"$WORK/$n/gateway.log" &
  PID[$n]=$! URL[$n]="http://127.0.0.1:$port" CPU[$n]=0 SERVED[$n]=0
  until curl -s -o /dev/null "http://127.0.0.1:$((port + 1))/healthz"; do sleep 0.02; done
  # Warm-up: every deployment served (its series and pool state made) before anything counts.
  "${on_load_core[@]}" wrk -t1 -c32 -d3s -s "$WORK/$n/random.lua" "${URL[$n]}" >/dev/null
done

echo "| round | CPU/request, 1 deployment | CPU/request, $N deployments | ratio |"
echo "|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  line="| $round"
  # In turn 1, N then N, 1: a drift within a round weighs on both alike.
  order=(1 "$N")
  [ $((round % 2)) = 1 ] || order=("$N" 1)
  for n in "${order[@]}"; do
    before=$(ticks "${PID[$n]}")
    read -r _ requests _ non2xx _ _ < <("${on_load_core[@]}" wrk -t1 -c32 -d"${SECONDS_PER_ROUND}s" -s "$WORK/$n/random.lua" "${URL[$n]}" | grep '^requests ')
    [ "$non2xx" = 0 ] || { echo "$non2xx non-2xx answers from the gateway of $n: $(tail -3 "$WORK/$n/gateway.log")" >&2; exit 1; }
    spent=$(( $(ticks "${PID[$n]}") - before ))
    CPU[$n]=$(( CPU[$n] + spent )) SERVED[$n]=$(( SERVED[$n] + requests ))
    us[$n]=$(echo "scale=2; $spent * 1000000 / $(getconf CLK_TCK) / $requests" | bc)
  done
  echo "$line | ${us[1]} µs | ${us[$N]} µs | $(echo "scale=3; ${us[$N]} / ${us[1]}" | bc) |"
done
one=$(echo "scale=2; ${CPU[1]} * 1000000 / $(getconf CLK_TCK) / ${SERVED[1]}" | bc)
many=$(echo "scale=2; ${CPU[$N]} * 1000000 / $(getconf CLK_TCK) / ${SERVED[$N]}" | bc)
echo "| all | $one µs | $many µs | $(echo "scale=3; $many / $one" | bc) |"
