# Shared by the benchmark scripts (sourced): the release binary, a work directory removed at exit,
# and a gateway configuration in front of the mock backend with quotas too high to reject.
# SKIP_BUILD=1: the caller brings its own binaries (A/B of two builds); BIN=path/to/tollgate
# (from the environment, or set by the script before sourcing) measures that binary instead.
BIN=${BIN:-target/release/tollgate}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --quiet --bin tollgate
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true

# need_tools nginx wrk ...: exits, naming the Debian package, when one is not installed.
need_tools() {
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install $tool)" >&2; exit 1; }
  done
}

# The digest of a key, as a deployment's `keys` entry.
digest() { printf 'sha256:%s' "$(printf %s "$1" | sha256sum | cut -d' ' -f1)"; }

# gateway_config FILE GATEWAY_ADDR ADMIN_ADDR MOCK_ADDR KEY DEPLOYMENT [extra top-level TOML]
gateway_config() {
  cat > "$1" <<TOML
[server]
listen = "$2"
[admin]
listen = "$3"
state_file = "$1.state.json"
${7:-}
[[deployments]]
name = "$6"
model = "m"
backend = "http://$4"
keys = ["$(digest "$5")"]
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
TOML
}

# A consumer's key, for consumer_toml.
CONSUMER_KEY=BenchConsumerKey0123456789abcdef

# consumer_toml DEPLOYMENT: a consumer (CONSUMER_KEY) on DEPLOYMENT with every level it can
# have, none of them binding: its own buckets there, a daily quota on the grant and a monthly
# one over all its deployments.
consumer_toml() {
  cat <<TOML
[[consumers]]
name = "bench-app"
keys = ["$(digest "$CONSUMER_KEY")"]
tokens_per_month = 10000000000000
[[consumers.grants]]
deployment = "$1"
requests_per_minute = 1000000000
tokens_per_minute = 1000000000
tokens_per_day = 10000000000000
TOML
}

# nginx_head DIR WORKERS: the part of an nginx config every one here shares (its pid, logs and
# temp files under DIR, no access log).
nginx_head() {
  mkdir -p "$1"
  cat <<NGINX
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $1; proxy_temp_path $1;
  fastcgi_temp_path $1; uwsgi_temp_path $1; scgi_temp_path $1;
NGINX
}

# nginx_config FILE LISTEN_ADDR MOCK_ADDR [WORKERS, default 1]: nginx (keep-alive upstream, no
# buffering) in front of the mock backend, its files under $WORK/nginx; run it with
# `nginx -c FILE -g 'daemon off;'`.
nginx_config() {
  { nginx_head "$WORK/nginx" "${4:-1}"; cat <<NGINX
  upstream mock { server $3; keepalive 64; }
  server {
    listen $2;
    location / { proxy_pass http://mock; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGINX
  } > "$1"
}

# static_nginx_config FILE LISTEN_ADDR BODY: nginx (two workers) answering every request at once
# with BODY as JSON, its files under $WORK/backend: a backend faster than any proxy.
static_nginx_config() {
  { nginx_head "$WORK/backend" 2; cat <<NGINX
  keepalive_requests 1000000;
  server {
    listen $2;
    location / { default_type application/json; return 200 '$3'; }
  }
}
NGINX
  } > "$1"
}

# start_lineup BASE_PORT: what `fast_backend.sh` and `syscalls.sh` measure, started in the
# background on 127.0.0.1 from BASE_PORT up: the static backend (BACKEND, two workers, an answer
# shaped like the API's with `usage`), nginx as a keep-alive proxy in front of it (NGINX, two
# workers, one per core as tollgate's runtime), the bare hyper floor on tollgate's runtime design
# (FLOORADDR, FLOOR_PID: two workers, a current-thread runtime and a pool each), and $BIN with
# everything on and the ledger (GATEWAY, GATEWAY_PID, admin on the port after it); and
# $WORK/post.lua, wrk posting a short chat with KEY ($WORK/consumer.lua: with a consumer's key).
# Waits until tollgate answers.
start_lineup() {
  local base=$1 floor
  floor=$(cargo bench --bench floor_proxy --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "floor_proxy" and m.get("executable"):
        print(m["executable"])')
  KEY=BenchKey0123456789abcdefghijklmn
  BACKEND=127.0.0.1:$base NGINX=127.0.0.1:$((base + 10)) FLOORADDR=127.0.0.1:$((base + 20))
  GATEWAY=127.0.0.1:$((base + 30))
  local answer='{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"Meta-Llama-3-8B-Instruct","choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"Hello! How can I help you today?","tool_calls":null},"logprobs":null}],"usage":{"prompt_tokens":19,"completion_tokens":9,"total_tokens":28}}'
  static_nginx_config "$WORK/backend.conf" "$BACKEND" "$answer"
  nginx -c "$WORK/backend.conf" -g 'daemon off;' >/dev/null 2>&1 &
  nginx_config "$WORK/nginx.conf" "$NGINX" "$BACKEND" 2
  nginx -c "$WORK/nginx.conf" -g 'daemon off;' >/dev/null 2>&1 &
  "$floor" --listen "$FLOORADDR" --upstream "$BACKEND" --workers 2 &
  FLOOR_PID=$!
  gateway_config "$WORK/g.toml" "$GATEWAY" 127.0.0.1:$((base + 31)) "$BACKEND" "$KEY" bench "[ledger]
path = \"$WORK/usage.jsonl\"
$(consumer_toml bench)"
  "$BIN" serve --config "$WORK/g.toml" >/dev/null 2>"$WORK/tollgate.log" &
  GATEWAY_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$((base + 31))/healthz" && break; sleep 0.1; done
  post_lua "$WORK/post.lua" "$KEY"
  post_lua "$WORK/consumer.lua" "$CONSUMER_KEY"
}

# post_lua FILE KEY: a wrk script posting a short chat with KEY.
post_lua() {
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.body = '{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["api-key"] = "$2"
LUA
}
