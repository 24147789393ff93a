//! The Lua scripts that keep a deployment's two buckets in Redis.
//!
//! One hash per deployment (`{prefix}{deployment}`) holds both buckets, so taking from both is a
//! single atomic script: `r` and `t` are the levels of the requests and tokens buckets and `at`
//! is when they were brought up to date (milliseconds, from Redis's own clock, `TIME`, so that
//! replicas with skewed clocks still share one timeline).
//!
//! Levels are in units of 1/60,000 of a request or token, the same idea as the in-process
//! buckets' scaled units (see [`crate::core::quota::bucket`]) at millisecond resolution: refilling
//! `elapsed_ms × per_minute` units is exact. Lua numbers are doubles, exact for integers below
//! 2^53; the largest level, 10^9 tokens a minute × 60,000, is 6 × 10^13, so the arithmetic is
//! exact for every limit the configuration accepts. Numbers are written back with `%.0f`
//! (Lua's default `%.14g` would round 15-digit levels).
//!
//! A missing hash is a pair of full buckets; the hash expires once both would be full again
//! (plus a second), so idle deployments leave nothing behind.

/// Refill both buckets to now. ARGV[1] = requests per minute, ARGV[2] = tokens per minute.
const PRELUDE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local U = 60000
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local rcap, tcap = rpm * U, tpm * U
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local saved = redis.call('HMGET', KEYS[1], 'r', 't', 'at')
local r, tk, at = tonumber(saved[1]) or rcap, tonumber(saved[2]) or tcap, tonumber(saved[3]) or now
local elapsed = math.max(0, now - at)
r = math.min(rcap, r + elapsed * rpm)
tk = math.min(tcap, tk + elapsed * tpm)
local function save()
  local full_in = math.max(math.ceil((rcap - r) / rpm), math.ceil((tcap - tk) / tpm), 0)
  redis.call('HSET', KEYS[1], 'r', string.format('%.0f', r), 't', string.format('%.0f', tk),
    'at', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[1], string.format('%.0f', full_in + 1000))
end
"#;

/// Admission: ARGV[3] = tokens to reserve, ARGV[4] = "1" to take (one request and the tokens,
/// both or neither) or "0" only to read. Returns {admitted (0/1), requests level, tokens level}.
const ADMIT: &str = r#"
local want = tonumber(ARGV[3]) * U
local admitted = 0
if ARGV[4] == '1' and r >= U and tk >= want then
  r = r - U
  tk = tk - want
  admitted = 1
  save()
end
return {admitted, r, tk}
"#;

/// Reconciliation: ARGV[3] = tokens to give back (positive, never past capacity) or to charge
/// (negative, may go below zero: debt that later requests wait out); ARGV[4] = the sending
/// replica's id, ARGV[5] = the batch's number; ARGV[6] = requests to give back (a pool backend's
/// refused attempts; 0 or absent for deployments), never past capacity. The hash records the last number applied per
/// replica (`q:<replica>`): a batch sent again after a timeout, which Redis may already have run,
/// answers 0 and changes nothing. Returns 1 when applied.
const RECONCILE: &str = r#"
local seen = tonumber(redis.call('HGET', KEYS[1], 'q:' .. ARGV[4]) or '0')
if tonumber(ARGV[5]) <= seen then
  return 0
end
redis.call('HSET', KEYS[1], 'q:' .. ARGV[4], ARGV[5])
local delta = tonumber(ARGV[3]) * U
if delta > 0 then
  tk = math.min(tcap, tk + delta)
else
  tk = math.max(-9e15, tk + delta)
end
local requests = tonumber(ARGV[6] or '0') * U
if requests > 0 then
  r = math.min(rcap, r + requests)
end
save()
return 1
"#;

pub fn admit() -> String {
    [PRELUDE, ADMIT].concat()
}

pub fn reconcile() -> String {
    [PRELUDE, RECONCILE].concat()
}

/// The scripts' units per request or token (`local U` in `PRELUDE`): milliseconds in a minute.
pub const LEVEL_UNITS: i128 = 60_000;

/// Scaled units of the in-process buckets (1/60e9, [`crate::core::quota::bucket::SCALE`]) per unit of
/// the scripts' levels.
pub const LEVEL_TO_SCALED: i128 = crate::core::quota::bucket::SCALE / LEVEL_UNITS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scripts_and_the_conversion_agree_on_the_unit() {
        assert!(PRELUDE.contains(&format!("local U = {LEVEL_UNITS}\n")));
        assert_eq!(LEVEL_TO_SCALED * LEVEL_UNITS, crate::core::quota::bucket::SCALE);
    }
}
