"""The server-side scripts: every change to shared state is one atomic Lua call on Redis's clock.

Each script touches the keys of one endpoint (or one budget scope) only, and those keys
share a hash tag, so they work on a Redis Cluster too. Times are the server's
(``TIME``), so processes whose clocks disagree still agree on every bucket and deadline;
what a script returns about time is *relative* (seconds from now), and each process maps
it onto its own event-loop clock. Numbers go back as strings: Redis would truncate a Lua
number to an integer.

The breaker steps are :mod:`runtime.endpoint.breaker`'s for the part of the record that
is shared (state, open-until, open period, streak, trips, isolation, trial permits and
successes); the failure counting that leads to a trip stays per process.
"""

from __future__ import annotations

__all__ = ["ADMIT", "BREAKER", "BUDGET_HOLD", "BUDGET_SETTLE", "CACHE_PULL", "CACHE_PUT", "RELEASE", "SNAPSHOT", "SPEND", "THROTTLE"]

# States are pybreaker's strings ('closed', 'open', 'half-open'), as in the local record.
# One endpoint's hash (KEYS[1]) holds the breaker fields b_* and the limiter fields:
# rl/ra and tl/ta (RPM and TPM bucket level and the time it was last leaked) and thr
# (throttled until). KEYS[2] is the sorted set of concurrency leases, scored by expiry.
_PRELUDE = r"""
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function s(x) if x == nil then return '' end return tostring(x) end
local function load(key)
  local v = redis.call('HMGET', key, 'b_state', 'b_until', 'b_for', 'b_streak', 'b_trips', 'b_iso',
    'b_permits', 'b_succ', 'b_expire', 'thr')
  return {state = v[1] or 'closed', open_until = tonumber(v[2]), open_for = tonumber(v[3]),
    streak = tonumber(v[4]) or 0, trips = tonumber(v[5]) or 0, iso = v[6] == '1',
    permits = tonumber(v[7]) or 0, succ = tonumber(v[8]) or 0, expire = tonumber(v[9]),
    thr = tonumber(v[10]) or 0}
end
local function save(key, b)
  redis.call('HSET', key, 'b_state', b.state, 'b_until', s(b.open_until), 'b_for', s(b.open_for),
    'b_streak', b.streak, 'b_trips', b.trips, 'b_iso', b.iso and '1' or '0', 'b_permits', b.permits,
    'b_succ', b.succ, 'b_expire', s(b.expire))
end
-- The record as the process mirrors it: state, seconds until open ends (or ''), open period,
-- trips, streak, isolated, trial permits out, trial successes, seconds of throttle left.
local function view(b, now)
  local left = ''
  if b.open_until ~= nil then left = tostring(b.open_until - now) end
  return {b.state, left, s(b.open_for), s(b.trips), s(b.streak), b.iso and '1' or '0',
    s(b.permits), s(b.succ), tostring(math.max(0, b.thr - now))}
end
local function move(b, to, reason)
  if b.state == to then return nil end
  local from = b.state
  b.state = to
  b.permits = 0
  b.succ = 0
  b.expire = nil
  if to == 'closed' then
    b.streak = 0
    b.open_until = nil
  end
  return {from, to, reason}
end
-- P: open_for, max_open_for, half_open_calls (the endpoint's BreakerPolicy).
local function period(P, streak, retry_after, jitter)
  local cap = P[2]
  if retry_after ~= nil and retry_after > 0 then return math.min(cap, retry_after * (1 + 0.1 * jitter)) end
  local base = math.min(cap, P[1] * 2 ^ math.min(streak - 1, 62))
  local p = base * (0.9 + 0.2 * jitter)
  if p > cap then return 2 * cap - p end
  return p
end
local function trip(b, P, now, reason, retry_after, jitter)
  b.streak = b.streak + 1
  b.trips = b.trips + 1
  b.open_for = period(P, b.streak, retry_after, jitter)
  b.open_until = now + b.open_for
  b.iso = false
  return move(b, 'open', reason)
end
local function elapsed(b, P, now)
  if b.iso then return nil end
  if b.open_until == nil then b.open_until = now + P[1] end
  if now < b.open_until then return nil end
  return move(b, 'half-open', 'open period elapsed')
end
local function admit(b, P, now)
  local moved = nil
  if b.state == 'closed' then return true, nil end
  if b.state == 'open' then
    moved = elapsed(b, P, now)
    if moved == nil then return false, nil end
  end
  if b.permits > 0 and b.expire ~= nil and now >= b.expire then b.permits = 0 end
  if b.permits + b.succ < P[3] then
    b.permits = b.permits + 1
    b.expire = now + P[2]
    return true, moved
  end
  return false, moved
end
local function reply(ok, reason, wait, b, now, t)
  local r = {ok, reason, tostring(wait)}
  for _, x in ipairs(view(b, now)) do r[#r + 1] = x end
  if t ~= nil then
    r[#r + 1] = t[1]; r[#r + 1] = t[2]; r[#r + 1] = t[3]
  end
  return r
end
local function leak(level, at, rate, now)
  if level == nil then return 0 end
  local l = level - (now - (at or now)) * rate
  if l < 0 then return 0 end
  return l
end
"""

ADMIT = _PRELUDE + r"""
-- ARGV: rpm, tpm, tokens, max_concurrency, lease id, lease ttl, check breaker (0/1),
--       open_for, max_open_for, half_open_calls. Refuses or takes everything at once.
local rpm, tpm, need, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local P = {tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])}
local now = clock()
local b = load(KEYS[1])
local t = nil
if ARGV[7] == '1' or b.state ~= 'closed' then
  local ok
  ok, t = admit(b, P, now)
  if not ok then
    local wait = 0.05
    if b.state == 'open' and b.open_until ~= nil then wait = math.max(0.05, b.open_until - now) end
    return reply('0', 'breaker', wait, b, now, nil)
  end
end
if now < b.thr then return reply('0', 'throttled', b.thr - now, load(KEYS[1]), now, nil) end
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= cap then return reply('0', 'concurrency', 0.05, load(KEYS[1]), now, nil) end
end
local lim = redis.call('HMGET', KEYS[1], 'rl', 'ra', 'tl', 'ta')
local rl, tl = 0, 0
if rpm > 0 then
  rl = leak(tonumber(lim[1]), tonumber(lim[2]), rpm / 60, now)
  if rl + 1 > rpm then return reply('0', 'rpm', (rl + 1 - rpm) * 60 / rpm, load(KEYS[1]), now, nil) end
end
if tpm > 0 then
  need = math.min(need, tpm)
  tl = leak(tonumber(lim[3]), tonumber(lim[4]), tpm / 60, now)
  if tl + need > tpm then return reply('0', 'tpm', (tl + need - tpm) * 60 / tpm, load(KEYS[1]), now, nil) end
end
if rpm > 0 then redis.call('HSET', KEYS[1], 'rl', tostring(rl + 1), 'ra', tostring(now)) end
if tpm > 0 then redis.call('HSET', KEYS[1], 'tl', tostring(tl + need), 'ta', tostring(now)) end
if cap > 0 then redis.call('ZADD', KEYS[2], now + tonumber(ARGV[6]), ARGV[5]) end
if b.state ~= 'closed' or t ~= nil then save(KEYS[1], b) end
return reply('1', 'ok', 0, b, now, t)
"""

RELEASE = _PRELUDE + r"""
-- ARGV: lease id ('' for none), tpm, tokens reserved, tokens used (-1: unknown, keep the estimate).
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[2], ARGV[1]) end
local tpm, reserved, used = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if tpm > 0 and used >= 0 then
  local now = clock()
  local lim = redis.call('HMGET', KEYS[1], 'tl', 'ta')
  local tl = leak(tonumber(lim[1]), tonumber(lim[2]), tpm / 60, now) + used - reserved
  redis.call('HSET', KEYS[1], 'tl', tostring(math.max(0, tl)), 'ta', tostring(now))
end
return 1
"""

THROTTLE = _PRELUDE + r"""
-- ARGV: seconds. Only ever extends: a shorter Retry-After arriving late does not cut a throttle
-- short; 0 or less ends the throttle (a reset by hand).
local now = clock()
local b = load(KEYS[1])
local seconds = tonumber(ARGV[1])
if seconds <= 0 then
  redis.call('HSET', KEYS[1], 'thr', '0')
elseif now + seconds > b.thr then
  redis.call('HSET', KEYS[1], 'thr', tostring(now + seconds))
end
return 1
"""

BREAKER = _PRELUDE + r"""
-- ARGV: step (trip, trial, tick, isolate, reset, probe), open_for, max_open_for, half_open_calls,
--       reason, retry_after ('' for none), jitter, outcome (success, failure, ignored).
local P = {tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])}
local step, reason, retry_after, jitter = ARGV[1], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local now = clock()
local b = load(KEYS[1])
local t = nil
if step == 'trip' then
  if b.state ~= 'open' then
    t = trip(b, P, now, reason, retry_after, jitter)
  elseif retry_after ~= nil and retry_after > 0 and not b.iso then
    local p = period(P, math.max(b.streak, 1), retry_after, jitter)
    if b.open_until == nil or now + p > b.open_until then
      b.open_until = now + p
      b.open_for = p
    end
  end
elseif step == 'trial' then
  if b.state == 'half-open' and b.permits > 0 then
    b.permits = b.permits - 1
    if ARGV[8] == 'success' then
      b.succ = b.succ + 1
      if b.succ >= P[3] then t = move(b, 'closed', 'trial calls succeeded') end
    elseif ARGV[8] == 'failure' then
      t = trip(b, P, now, 'trial call failed', retry_after, jitter)
    end
  end
elseif step == 'tick' then
  if b.state == 'open' then t = elapsed(b, P, now) end
elseif step == 'isolate' then
  b.iso = true
  b.open_until = nil
  t = move(b, 'open', 'isolated by hand')
elseif step == 'reset' then
  b.iso = false
  b.open_until = nil
  b.streak = 0
  t = move(b, 'closed', 'reset by hand')
elseif step == 'probe' then
  if b.state == 'open' and not b.iso then t = move(b, 'half-open', 'probe succeeded') end
end
save(KEYS[1], b)
return reply('1', step, 0, b, now, t)
"""

SNAPSHOT = _PRELUDE + r"""
-- What a process mirrors between its own calls: the breaker record and the throttle.
local now = clock()
return reply('1', 'snapshot', 0, load(KEYS[1]), now, nil)
"""

SPEND = r"""
-- KEYS: the day's and the month's hash of one budget scope. ARGV: tokens, usd, day ttl, month ttl.
-- Returns the totals after adding (tokens and usd for the day, then for the month).
local out = {}
for i, key in ipairs(KEYS) do
  local tokens = redis.call('HINCRBY', key, 'tokens', ARGV[1])
  local usd = redis.call('HINCRBYFLOAT', key, 'usd', ARGV[2])
  redis.call('EXPIRE', key, ARGV[2 + i])
  out[#out + 1] = tostring(tokens)
  out[#out + 1] = tostring(usd)
end
return out
"""

# A budget scope's requests in flight: KEYS[3] is a hash of the amounts held (tokens, usd),
# KEYS[4] a sorted set of the holds, member '<process>:<n> <tokens> <usd>', scored by expiry
# (a process that died mid-request frees its holds by then). KEYS[1] and KEYS[2] are the
# day's and the month's totals, as for SPEND.
_HOLDS = r"""
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function unhold(held, member)
  local tokens, usd = string.match(member, ' (%S+) (%S+)$')
  redis.call('HINCRBY', held, 'tokens', -tonumber(tokens))
  redis.call('HINCRBYFLOAT', held, 'usd', -tonumber(usd))
end
local function settled(held, holds)
  if redis.call('ZCARD', holds) == 0 then
    redis.call('HSET', held, 'tokens', 0, 'usd', 0)  -- no float residue once nothing is held
  end
end
local function totals()
  local d = redis.call('HMGET', KEYS[1], 'tokens', 'usd')
  local m = redis.call('HMGET', KEYS[2], 'tokens', 'usd')
  return {tonumber(d[1]) or 0, tonumber(d[2]) or 0, tonumber(m[1]) or 0, tonumber(m[2]) or 0}
end
local function out(t)
  return {tostring(t[1]), tostring(t[2]), tostring(t[3]), tostring(t[4])}
end
"""

BUDGET_HOLD = _HOLDS + r"""
-- ARGV: tokens, usd, member, ttl, then the limits daily_tokens, daily_usd, monthly_tokens,
-- monthly_usd ('' for none). Holds the amounts if used + held + them fits every limit.
-- Returns the day's and the month's totals (as SPEND), then '' (held) or the limit refused
-- and what was used or held of it.
local now = clock()
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
for _, member in ipairs(expired) do unhold(KEYS[3], member) end
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  settled(KEYS[3], KEYS[4])
end
local held = redis.call('HMGET', KEYS[3], 'tokens', 'usd')
local ht, hu = tonumber(held[1]) or 0, tonumber(held[2]) or 0
local t = totals()
local need_t, need_u = tonumber(ARGV[1]), tonumber(ARGV[2])
local checks = {{'daily_tokens', t[1] + ht, need_t}, {'daily_usd', t[2] + hu, need_u},
  {'monthly_tokens', t[3] + ht, need_t}, {'monthly_usd', t[4] + hu, need_u}}
local reply = out(t)
for i, c in ipairs(checks) do
  local limit = ARGV[4 + i]
  if limit ~= '' and c[2] + c[3] > tonumber(limit) then
    reply[5] = c[1]
    reply[6] = tostring(c[2])
    return reply
  end
end
local ttl = tonumber(ARGV[4])
redis.call('ZADD', KEYS[4], now + ttl, ARGV[3])
redis.call('HINCRBY', KEYS[3], 'tokens', need_t)
redis.call('HINCRBYFLOAT', KEYS[3], 'usd', need_u)
-- Every hold expires before these keys do, so an idle scope leaves nothing behind.
redis.call('EXPIRE', KEYS[3], math.ceil(ttl) + 1)
redis.call('EXPIRE', KEYS[4], math.ceil(ttl) + 1)
reply[5] = ''
return reply
"""

BUDGET_SETTLE = _HOLDS + r"""
-- ARGV: member, tokens, usd (what the request used: 0 for one that sent nothing), day ttl,
-- month ttl. Frees the hold (unless it expired meanwhile) and adds the usage to the totals.
-- Returns the totals after adding (as SPEND).
if redis.call('ZREM', KEYS[4], ARGV[1]) == 1 then
  unhold(KEYS[3], ARGV[1])
  settled(KEYS[3], KEYS[4])
end
for i = 1, 2 do
  redis.call('HINCRBY', KEYS[i], 'tokens', ARGV[2])
  redis.call('HINCRBYFLOAT', KEYS[i], 'usd', ARGV[3])
  redis.call('EXPIRE', KEYS[i], ARGV[3 + i])
end
return out(totals())
"""

# The shared response cache is a capped stream of writes (KEYS[1]); each process replays it
# into its own near-cache, so a lookup never leaves the process.
CACHE_PUT = r"""
-- ARGV: cache key ('' with an empty value: clear everything), encoded reply ('' : delete), ttl, cap.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'k', ARGV[1], 'v', ARGV[2], 'at', tostring(now),
  'ttl', ARGV[3])
return 1
"""

CACHE_PULL = r"""
-- ARGV: the last entry id read ('0': from the start), how many at most. Returns the server's
-- time, then id, key, value, seconds of life left, for each newer entry.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {tostring(now)}
local from = ARGV[1]
if from ~= '0' then from = '(' .. from end
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', ARGV[2])) do
  local f = {}
  for i = 1, #entry[2], 2 do f[entry[2][i]] = entry[2][i + 1] end
  out[#out + 1] = entry[1]
  out[#out + 1] = f.k
  out[#out + 1] = f.v
  out[#out + 1] = tostring(tonumber(f.at) + tonumber(f.ttl) - now)
end
return out
"""
