//! The Lua scripts that keep a deployment's two buckets in Redis.
//!
//! One hash per deployment (`<prefix>{<deployment>}`) holds both buckets, so taking from both is a
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

/// A lease renewal or top-up (see [`crate::core::quota::lease`]): ARGV[3] = the renewing
/// request's tokens, ARGV[4] and ARGV[5] = the requests and tokens asked for (a renewal's
/// include the request's own), ARGV[6] and ARGV[7] = requests and tokens the replica's lease
/// held, given back first (never past capacity), ARGV[8] = "1" for a renewal, which must admit
/// the request, "0" for a top-up. A renewal takes what was asked, or as much as the buckets
/// hold, if they hold one request and ARGV[3] tokens (at least those are taken); else nothing.
/// A top-up takes what was asked or what the buckets hold. Returns {admitted (0/1; a top-up: 1
/// unless the tokens bucket is in debt), requests level, tokens level, requests granted,
/// tokens granted}.
const LEASE: &str = r#"
local back_r, back_t = tonumber(ARGV[6]) * U, tonumber(ARGV[7]) * U
if back_r > 0 then r = math.min(rcap, r + back_r) end
if back_t > 0 then tk = math.min(tcap, tk + back_t) end
local renewal = ARGV[8] == '1'
local want = renewal and tonumber(ARGV[3]) or 0
local admitted, gr, gt = 0, 0, 0
if (r >= U or not renewal) and tk >= want * U then
  gr = math.min(tonumber(ARGV[4]), math.floor(r / U))
  gt = math.min(math.max(tonumber(ARGV[5]), want), math.floor(tk / U))
  r = r - gr * U
  tk = tk - gt * U
  admitted = 1
end
if gr > 0 or gt > 0 or back_r > 0 or back_t > 0 then save() end
return {admitted, r, tk, gr, gt}
"#;

/// A consumer's admission, every level in one script, all or none.
///
/// KEYS: the deployment's buckets, then (as ARGV says) the grant's buckets, the grant's period
/// quotas, the consumer's period quotas. ARGV[1..3] as [`ADMIT`] (`take` always); ARGV[4..5] the
/// grant's requests and tokens per minute (-1: no buckets of its own); ARGV[6..8] the grant's
/// tokens per day, tokens per month, requests per day, ARGV[9..11] the consumer's (-1: none;
/// all three -1: no hash); ARGV[12] the UTC day (days since the epoch) and ARGV[13] the month
/// (`year × 12 + month - 1`) the request counts in, by the gateway's clock (as its ledger line);
/// ARGV[14] when a period hash may expire (Unix seconds: a day after the month ends).
///
/// A period hash holds `d`/`dt`/`dr` (the day, its tokens and requests) and `m`/`mt` (the
/// month and its tokens); a later day or month than the one stored starts from zero. Checks in
/// the order of the in-process admission (`core::quota::admit_levels`): the period quotas (grant,
/// then consumer; requests per day, tokens per day, tokens per month), then room in both
/// buckets. Returns {status, deployment r, t, grant r, t, grant dt, mt, dr, consumer dt, mt,
/// dr} (-1 for a level that is not there): status 1 admitted, 0 a bucket lacks room (nothing
/// taken), 2 the grant's period quota and 3 the consumer's is used up, and then a twelfth field
/// names which (1 requests per day, 2 tokens per day, 3 tokens per month).
const ADMIT_CONSUMER: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local U = 60000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local want = tonumber(ARGV[3])
local day, month, expire_at = tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14]
local function bucket(key, rpm, tpm)
  local saved = redis.call('HMGET', key, 'r', 't', 'at')
  local b = {key = key, rpm = rpm, tpm = tpm, rcap = rpm * U, tcap = tpm * U}
  b.r, b.t = tonumber(saved[1]) or b.rcap, tonumber(saved[2]) or b.tcap
  local elapsed = math.max(0, now - (tonumber(saved[3]) or now))
  b.r = math.min(b.rcap, b.r + elapsed * rpm)
  b.t = math.min(b.tcap, b.t + elapsed * tpm)
  return b
end
local function save_bucket(b)
  local full_in = math.max(math.ceil((b.rcap - b.r) / b.rpm), math.ceil((b.tcap - b.t) / b.tpm), 0)
  redis.call('HSET', b.key, 'r', string.format('%.0f', b.r), 't', string.format('%.0f', b.t),
    'at', string.format('%.0f', now))
  redis.call('PEXPIRE', b.key, string.format('%.0f', full_in + 1000))
end
local function period(key, first)
  local limits = {tonumber(ARGV[first]), tonumber(ARGV[first + 1]), tonumber(ARGV[first + 2])}
  local saved = redis.call('HMGET', key, 'd', 'dt', 'dr', 'm', 'mt')
  local p = {key = key, tpd = limits[1], tpmo = limits[2], rpd = limits[3]}
  p.d, p.dt, p.dr = tonumber(saved[1]) or day, tonumber(saved[2]) or 0, tonumber(saved[3]) or 0
  p.m, p.mt = tonumber(saved[4]) or month, tonumber(saved[5]) or 0
  if day > p.d then p.d, p.dt, p.dr = day, 0, 0 end
  if month > p.m then p.m, p.mt = month, 0 end
  return p
end
local function exceeded(p)
  if p.rpd >= 0 and p.dr + 1 > p.rpd then return 1 end
  if p.tpd >= 0 and p.dt + want > p.tpd then return 2 end
  if p.tpmo >= 0 and p.mt + want > p.tpmo then return 3 end
  return 0
end
local k = 1
local deployment = bucket(KEYS[k], tonumber(ARGV[1]), tonumber(ARGV[2]))
local grant, gp, cp
if tonumber(ARGV[4]) >= 0 then k = k + 1; grant = bucket(KEYS[k], tonumber(ARGV[4]), tonumber(ARGV[5])) end
if tonumber(ARGV[6]) >= 0 or tonumber(ARGV[7]) >= 0 or tonumber(ARGV[8]) >= 0 then k = k + 1; gp = period(KEYS[k], 6) end
if tonumber(ARGV[9]) >= 0 or tonumber(ARGV[10]) >= 0 or tonumber(ARGV[11]) >= 0 then k = k + 1; cp = period(KEYS[k], 9) end
local function reply(status)
  local out = {status, deployment.r, deployment.t, -1, -1, -1, -1, -1, -1, -1, -1}
  if grant then out[4], out[5] = grant.r, grant.t end
  if gp then out[6], out[7], out[8] = gp.dt, gp.mt, gp.dr end
  if cp then out[9], out[10], out[11] = cp.dt, cp.mt, cp.dr end
  return out
end
if gp then local why = exceeded(gp); if why > 0 then local out = reply(2); out[12] = why; return out end end
if cp then local why = exceeded(cp); if why > 0 then local out = reply(3); out[12] = why; return out end end
local function room(b) return b.r >= U and b.t >= want * U end
if not room(deployment) or (grant and not room(grant)) then return reply(0) end
for _, b in ipairs({deployment, grant}) do
  b.r = b.r - U
  b.t = b.t - want * U
  save_bucket(b)
end
local periods = {}
if gp then table.insert(periods, gp) end
if cp then table.insert(periods, cp) end
for _, p in ipairs(periods) do
  p.dr = p.dr + 1
  p.dt = p.dt + want
  p.mt = p.mt + want
  redis.call('HSET', p.key, 'd', string.format('%.0f', p.d), 'dt', string.format('%.0f', p.dt),
    'dr', string.format('%.0f', p.dr), 'm', string.format('%.0f', p.m), 'mt', string.format('%.0f', p.mt))
  redis.call('EXPIREAT', p.key, expire_at)
end
return reply(1)
"#;

/// A consumer's own period quotas taken alone, on Redis Cluster, where its hash (over all its
/// deployments) is in another slot than the deployment's keys: KEYS[1] the period hash; ARGV[1..3]
/// tokens per day, tokens per month, requests per day (-1: none), ARGV[4] the tokens reserved,
/// ARGV[5] the day, ARGV[6] the month, ARGV[7] when the hash may expire (as in
/// [`ADMIT_CONSUMER`]). Returns {status, dt, mt, dr, why}: status 1 taken, 3 used up (nothing
/// taken; `why` as the twelfth field of [`ADMIT_CONSUMER`]).
const TAKE_PERIOD: &str = r#"
local want, day, month = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local tpd, tpmo, rpd = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local saved = redis.call('HMGET', KEYS[1], 'd', 'dt', 'dr', 'm', 'mt')
local d, dt, dr = tonumber(saved[1]) or day, tonumber(saved[2]) or 0, tonumber(saved[3]) or 0
local m, mt = tonumber(saved[4]) or month, tonumber(saved[5]) or 0
if day > d then d, dt, dr = day, 0, 0 end
if month > m then m, mt = month, 0 end
local why = 0
if rpd >= 0 and dr + 1 > rpd then why = 1
elseif tpd >= 0 and dt + want > tpd then why = 2
elseif tpmo >= 0 and mt + want > tpmo then why = 3 end
if why > 0 then return {3, dt, mt, dr, why} end
dr, dt, mt = dr + 1, dt + want, mt + want
redis.call('HSET', KEYS[1], 'd', string.format('%.0f', d), 'dt', string.format('%.0f', dt),
  'dr', string.format('%.0f', dr), 'm', string.format('%.0f', m), 'mt', string.format('%.0f', mt))
redis.call('EXPIREAT', KEYS[1], ARGV[7])
return {1, dt, mt, dr, 0}
"#;

/// A period hash's reconciliation: ARGV[1] the UTC day and ARGV[2] the month the requests
/// counted in, ARGV[3] and ARGV[4] the tokens to charge there (the real counts less the
/// reservations; negative gives back, never below zero), ARGV[5] the replica's id and ARGV[6]
/// the batch's number (a number already applied answers 0, as in [`RECONCILE`]), ARGV[7] when
/// the hash may expire, ARGV[8] requests of the day given back (a cluster admission undone). A day or month that has ended changes nothing (its usage starts again
/// from zero); a newer one than the hash holds starts it (a budget's spend hash is written only
/// by these charges). Returns 1 when applied.
const RECONCILE_PERIOD: &str = r#"
local seen = tonumber(redis.call('HGET', KEYS[1], 'q:' .. ARGV[5]) or '0')
if tonumber(ARGV[6]) <= seen then
  return 0
end
redis.call('HSET', KEYS[1], 'q:' .. ARGV[5], ARGV[6])
local saved = redis.call('HMGET', KEYS[1], 'd', 'dt', 'm', 'mt')
local d, m = tonumber(saved[1]), tonumber(saved[3])
local day, month = tonumber(ARGV[1]), tonumber(ARGV[2])
local function n(v) return string.format('%.0f', math.max(0, v)) end
if d == nil or day > d then
  redis.call('HSET', KEYS[1], 'd', ARGV[1], 'dt', n(tonumber(ARGV[3])), 'dr', '0')
elseif day == d then
  redis.call('HSET', KEYS[1], 'dt', n((tonumber(saved[2]) or 0) + tonumber(ARGV[3])))
  local back = tonumber(ARGV[8] or '0')
  if back > 0 then
    redis.call('HSET', KEYS[1], 'dr', n((tonumber(redis.call('HGET', KEYS[1], 'dr')) or 0) - back))
  end
end
if m == nil or month > m then
  redis.call('HSET', KEYS[1], 'm', ARGV[2], 'mt', n(tonumber(ARGV[4])))
elseif month == m then
  redis.call('HSET', KEYS[1], 'mt', n((tonumber(saved[4]) or 0) + tonumber(ARGV[4])))
end
redis.call('EXPIREAT', KEYS[1], ARGV[7])
return 1
"#;

pub fn admit_consumer() -> String {
    ADMIT_CONSUMER.to_owned()
}

pub fn take_period() -> String {
    TAKE_PERIOD.to_owned()
}

pub fn reconcile_period() -> String {
    RECONCILE_PERIOD.to_owned()
}

pub fn admit() -> String {
    [PRELUDE, ADMIT].concat()
}

pub fn reconcile() -> String {
    [PRELUDE, RECONCILE].concat()
}

pub fn lease() -> String {
    [PRELUDE, LEASE].concat()
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
        assert!(ADMIT_CONSUMER.contains(&format!("local U = {LEVEL_UNITS}\n")));
        assert_eq!(LEVEL_TO_SCALED * LEVEL_UNITS, crate::core::quota::bucket::SCALE);
    }
}
