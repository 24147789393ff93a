#!/usr/bin/env python3
"""The configuration of N deployments for benches/scale.sh and benches/scale_cpu.sh: one key
each, limits too high to refuse, an owner admin token, and a wrk script that calls a random
deployment with its key on every request.

    scale_config.py N CONFIG LUA TOKENS_OF_D0 BACKEND GATEWAY ADMIN TOKEN WORKDIR
(METRICS=full in the environment adds `[metrics] deployments = "full"`.)
"""
import hashlib, os, sys
n, path, lua = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tpm0 = sys.argv[4]
backend, gateway, admin, token, work = sys.argv[5:10]
key = lambda i: f"ScaleKey{i:010d}abcdefghijklmn"
with open(path, "w") as f:
    f.write(f'[server]\nlisten = "{gateway}"\n[admin]\nlisten = "{admin}"\nstate_file = "{work}/state.json"\n')
    f.write(f'[[admin.tokens]]\nname = "ops"\nrole = "owner"\ntoken = "sha256:{hashlib.sha256(token.encode()).hexdigest()}"\n')
    if os.environ.get("METRICS"):
        f.write(f'[metrics]\ndeployments = "{os.environ["METRICS"]}"\n')
    for i in range(n):
        tpm = tpm0 if i == 0 else "1000000000"
        f.write(f'[[deployments]]\nname = "d{i}"\nmodel = "m"\nbackend = "http://{backend}"\n'
                f'keys = ["sha256:{hashlib.sha256(key(i).encode()).hexdigest()}"]\n'
                f'requests_per_minute = 1000000000\ntokens_per_minute = {tpm}\n')
with open(lua, "w") as f:
    f.write(f'''math.randomseed(os.time())
local body = '{{"messages":[{{"role":"user","content":"Say hello in one short sentence."}}],"max_tokens":16}}'
request = function()
  local i = math.random(0, {n - 1})
  return wrk.format("POST", "/openai/deployments/d" .. i .. "/chat/completions",
    {{["Content-Type"] = "application/json", ["api-key"] = string.format("ScaleKey%010dabcdefghijklmn", i)}}, body)
end
done = function(summary, latency, requests)
  io.write(string.format("requests %d non2xx %d p99_ms %.3f\\n", summary.requests,
    summary.errors.status, latency:percentile(99) / 1000))
end
''')
