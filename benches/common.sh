# Shared by the benchmark scripts (sourced): the release binary, a work directory removed at exit,
# and a gateway configuration in front of the mock backend with quotas too high to reject.
BIN=target/release/tollgate
cargo build --release --quiet --bin tollgate
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ulimit -n 65536 2>/dev/null || true

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
