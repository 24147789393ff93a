#!/usr/bin/env bash
# Instructions per request of a tollgate binary under callgrind (deterministic, unlike CPU time
# on a shared 2-core VM): the mock backend and the load generator run outside valgrind, and
# instrumentation is on only while REQUESTS short chat requests pass (after a warm-up). The ledger
# is on (its writer thread counts too).
#
#   [BODY=file.json] [TOLLGATE_LOG=info] [KEEP=dir] [CONSUMER=1] [PRICES=1] [BUDGET=1] benches/callgrind.sh BIN [requests, default 5000] [path, default /openai/deployments/bench]
#
# TOLLGATE_LOG defaults to warn (no access log); KEEP copies the callgrind output there (for
# callgrind_annotate --inclusive=yes). CONSUMER=1 calls with a consumer's key (consumer_toml in
# common.sh: its own buckets and two period quotas beside the deployment's) instead of the
# deployment's.
set -euo pipefail
BIN=$(realpath "$1") REQUESTS=${2:-5000} ROUTE=${3:-/openai/deployments/bench}
[ -z "${BODY:-}" ] || BODY=$(realpath "$BODY")
cd "$(dirname "$0")/.."
SKIP_BUILD=1 source benches/common.sh
KEY=BenchKey0123456789abcdefghijklmn MOCK=127.0.0.1:18600
EXTRA=""
[ -z "${CONSUMER:-}" ] || EXTRA=$(consumer_toml bench)
# BUDGET=1: a (soft) monthly budget watches the deployment's project (with PRICES=1, it is charged).
[ -z "${BUDGET:-}" ] || EXTRA="$EXTRA
[billing]
[[billing.budgets]]
name = \"bench\"
project = \"default\"
monthly = \"1000000000\""
gateway_config "$WORK/g.toml" 127.0.0.1:18610 127.0.0.1:18611 "$MOCK" "$KEY" bench "[ledger]
path = \"$WORK/usage.jsonl\"
$EXTRA"
[ -z "${CONSUMER:-}" ] || KEY=$CONSUMER_KEY
# PRICES=1: the deployment is priced, so every record computes its cost and counts it.
[ -z "${PRICES:-}" ] || echo 'prices = { input = "0.30", output = "0.61" }' >> "$WORK/g.toml"
"$BIN" mock-backend --listen "$MOCK" >/dev/null 2>&1 &
TOLLGATE_LOG=${TOLLGATE_LOG:-warn} valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
  "$BIN" serve --config "$WORK/g.toml" >/dev/null 2>"$WORK/vg.log" &
VG=$!
for _ in $(seq 300); do curl -s -o /dev/null http://127.0.0.1:18611/healthz && break; sleep 0.1; done
"$BIN" bench --url "http://127.0.0.1:18610$ROUTE" --key "$KEY" --concurrency 8 --requests 500 ${BODY:+--body "$BODY"} --json >/dev/null
callgrind_control -i on "$VG" >/dev/null
"$BIN" bench --url "http://127.0.0.1:18610$ROUTE" --key "$KEY" --concurrency 8 --requests "$REQUESTS" ${BODY:+--body "$BODY"} --json \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print("2xx:", r["status_2xx"], "of", r["requests_sent"])'
callgrind_control -i off "$VG" >/dev/null
callgrind_control -d "$VG" >/dev/null
kill -INT "$VG"; wait "$VG" 2>/dev/null || true
[ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$WORK"/cg.out* "$KEEP"/; }
total=$(cat "$WORK"/cg.out* | awk '/^(summary|totals):/ {s += $2} END {print s}')
echo "instructions: $total total, $((total / REQUESTS)) per request ($BIN, $REQUESTS requests on $ROUTE)"
