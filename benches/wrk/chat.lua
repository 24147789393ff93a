-- wrk script: a short non-streamed chat completion with a key.
-- KEY and DEPLOYMENT come from the environment (see BENCHMARKS.md).
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.headers["api-key"] = os.getenv("KEY") or ""
wrk.body = '{"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hello! How are you today?"}],"max_tokens":16}'
