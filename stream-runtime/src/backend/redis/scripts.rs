//! The Lua scripts behind every multi-step operation, so each runs atomically on the server.
//!
//! Every script takes the keys it touches in `KEYS` (all of one stream share a hash tag).
//! Ownership of a claim is checked the same way everywhere ([`HELD`]): the entry's pending
//! record (`XPENDING key group id id 1`) must name our consumer and carry the delivery count
//! our claim got. A claim taken over since has another consumer or a higher count.

/// `held(stream, group, consumer, id, token)`: the entry's pending record
/// `{id, consumer, idle ms, deliveries}` if the claim is still ours, else false.
pub(super) const HELD: &str = r"
local function held(stream, group, consumer, id, token)
  local p = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(p) ~= 'table' or p.err or not p[1] then return false end
  if p[1][2] == consumer and tonumber(p[1][4]) == tonumber(token) then return p[1] end
  return false
end
";

/// Appends messages and trims the stream: used for appends with an age trim (the cutoff is
/// the newest id's time, known only on the server); others are a `MULTI`/`EXEC` of `XADD`s.
///
/// KEYS: stream. ARGV: max_len (0 = none), max_age in ms (0 = none), then per message the
/// number of field/value strings that follow and those strings.
/// Returns the new ids in order.
const APPEND: &str = r"
local stream = KEYS[1]
-- max_len stays a string: Lua numbers lose precision past 2^53.
local max_len, max_age = ARGV[1], tonumber(ARGV[2])
local ids = {}
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  i = i + 1
  local args = {'XADD', stream}
  if max_len ~= '0' then
    args[#args + 1] = 'MAXLEN'
    args[#args + 1] = '='
    args[#args + 1] = max_len
  end
  args[#args + 1] = '*'
  for j = i, i + n - 1 do args[#args + 1] = ARGV[j] end
  i = i + n
  ids[#ids + 1] = redis.call(unpack(args))
end
if max_age > 0 and #ids > 0 then
  -- The newest id's time part is the server's clock (never going back): trim by it.
  local newest = tonumber(string.match(ids[#ids], '^(%d+)-'))
  local cutoff = newest - max_age
  if cutoff > 0 then redis.call('XTRIM', stream, 'MINID', '=', cutoff) end
end
return ids
";

/// How every claim script starts: its keys and arguments (KEYS: stream, the group's retry
/// schedule, the group's claim deadlines, and for `CLAIM_BEGIN` the claim's scratch key;
/// ARGV: group, consumer, max, visibility in ms), the server's time and the new deadline.
const CLAIM_START: &str = r"
local stream, retries, deadlines, scratch = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local visibility = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + visibility

local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end
";

/// `group_info(stream, group)`: the fields of the group's `XINFO GROUPS` entry by name
/// (`last-delivered-id`, `entries-read`, ...), or nil when the stream or the group is missing.
const GROUP_INFO: &str = r"
local function group_info(stream, group)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) ~= 'table' or groups.err then return nil end
  for _, g in ipairs(groups) do
    local f = {}
    for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
    if f['name'] == group then return f end
  end
  return nil
end
";

/// The first step of a claim: retries that are due and claims whose deadline passed.
///
/// A claim is one transaction (`MULTI`/`EXEC`, so nothing runs between its steps):
/// `CLAIM_BEGIN`, then a plain `XREADGROUP ... COUNT max ... >` for new messages (their
/// entries go straight to the client, never through Lua), then [`CLAIM_END`], which records
/// the new claims' deadlines. Every claim records its deadline (now + the visibility it was
/// claimed with) in the deadline set, so a claim expires at its own deadline whatever
/// visibility the worker reclaiming it uses (S6, S13); settling removes it.
///
/// KEYS: stream, the group's retry schedule (sorted set), the group's claim deadlines
/// (sorted set), the claim's scratch key. ARGV: group, consumer, max, visibility in ms.
///
/// 1. retries that are due (scheduled by `PARK`): `XCLAIM` each to the consumer;
/// 2. claims whose deadline passed, from the deadline set: `XCLAIM` each (a claim of new
///    messages stands there for all of them, see [`CLAIM_END`]). An entry that is gone
///    (trimmed away, or settled) is dropped from the pending list by `XCLAIM` itself and
///    from the set here.
///
/// The group's cursor (last delivered id and entries read), the deadline and how many were
/// reclaimed go to the scratch key for [`CLAIM_END`].
///
/// Returns `{id, delivery count, {field, value, ...}}` for each reclaimed entry, in id order.
/// A missing group (the data was lost) is the `NOGROUP` error of the `XREADGROUP` that
/// follows, which the backend answers by creating the group again.
///
/// `CLAIM_BEGIN` is [`claim_begin`]: [`CLAIM_START`], [`GROUP_INFO`], this part (the cursor
/// and the scratch key's first value), [`RECLAIM`] and [`CLAIM_BEGIN_TAIL`].
const CLAIM_BEGIN_HEAD: &str = r"
-- The group's cursor, before anything is read: a missing group is left to XREADGROUP.
local info = group_info(stream, group)
if not info then return {} end
local cursor, entries_read = info['last-delivered-id'], info['entries-read']
-- What CLAIM_END needs. Until the reclaims below are done, it says all `max` were
-- reclaimed: if this script stops on an error, the claim keeps none of what it reads.
local function save(n)
  redis.call('SET', scratch, cursor .. ' ' .. tostring(entries_read or '-') .. ' ' ..
    deadline .. ' ' .. n)
end
save(max)

";

/// Steps 1 and 2 of a claim, shared by `CLAIM_BEGIN` and `CLAIM`: due retries, then
/// expired claims, into `reclaimed`, in id order. Needs `stream`, `retries`, `deadlines`,
/// `group`, `consumer`, `max`, `now`, `deadline` and `failed` defined before it.
const RECLAIM: &str = r"
local function deliveries(id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if p[1] then return tonumber(p[1][4]) end
  return 1
end

local reclaimed = {}

-- Takes a pending entry over; returns an error reply, or nil.
local function take(id)
  local got = redis.pcall('XCLAIM', stream, group, consumer, 0, id)
  if failed(got) then return got end
  if got[1] then
    redis.call('ZADD', deadlines, deadline, id)
    reclaimed[#reclaimed + 1] = {got[1][1], deliveries(id), got[1][2]}
  else
    redis.call('ZREM', deadlines, id)
  end
  return nil
end

-- 1. Retries that are due.
local due = redis.call('ZRANGEBYSCORE', retries, '-inf', now, 'LIMIT', 0, max)
for _, id in ipairs(due) do
  redis.call('ZREM', retries, id)
  local err = take(id)
  if err then return err end
end

-- A claim of new messages records one deadline for all of them (see CLAIM_END): member
-- '@<cursor before> <cursor after> <count> <consumer>'. Its entries still pending for that
-- consumer without a deadline of their own (a reclaim or an extension gives one) expire
-- with it. The member goes once all of them are taken.
local function expand(member)
  local lo, hi, n, owner = string.match(member, '^@(%S+) (%S+) (%d+) (.*)$')
  if lo then
    local rows = redis.call('XPENDING', stream, group, '(' .. lo, hi, tonumber(n), owner)
    for _, row in ipairs(rows) do
      if not redis.call('ZSCORE', deadlines, row[1]) then
        if #reclaimed >= max then return nil end
        local err = take(row[1])
        if err then return err end
      end
    end
  end
  redis.call('ZREM', deadlines, member)
  return nil
end

-- 2. Expired claims. Entries found gone are dropped, so look again (a few times) for
-- others; those looked at here (a zero visibility keeps them in range) are skipped.
local seen, looked, rounds = {}, 0, 0
while #reclaimed < max and rounds < 8 do
  rounds = rounds + 1
  local expired = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0,
    max - #reclaimed + looked)
  local fresh = false
  for _, member in ipairs(expired) do
    if not seen[member] and #reclaimed < max then
      seen[member] = true
      looked = looked + 1
      fresh = true
      local err
      if string.byte(member, 1) == 64 then err = expand(member) else err = take(member) end
      if err then return err end
    end
  end
  if not fresh then break end
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
table.sort(reclaimed, function(a, b)
  local am, as = parse(a[1])
  local bm, bs = parse(b[1])
  if am ~= bm then return am < bm end
  return as < bs
end)

";

/// `CLAIM_BEGIN`'s ending: what [`CLAIM_END`] needs, and the reclaimed entries.
const CLAIM_BEGIN_TAIL: &str = r"
save(#reclaimed)
return reclaimed
";

/// A small claim in one script (the engine claims at most a few messages at a time at a low
/// concurrency, where a transaction's extra commands cost more than passing a few entries
/// through Lua): [`RECLAIM`], then `XREADGROUP ... COUNT max-reclaimed ... >` for new
/// messages, each with its own deadline. Same keys and arguments as `CLAIM_BEGIN` without
/// the scratch key; returns `{id, delivery count, {field, value, ...}}` for each claimed
/// entry: reclaimed ones in id order, then new ones. A missing group is the `NOGROUP` error.
///
/// `CLAIM` is [`CLAIM_START`], [`RECLAIM`] and this ending: new messages, each with its own
/// deadline.
const CLAIM_TAIL: &str = r"
if #reclaimed < max then
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max - #reclaimed,
    'STREAMS', stream, '>')
  if failed(r) then return r end
  if r and r[1] then
    local scores = {}
    for _, e in ipairs(r[1][2]) do
      scores[#scores + 1] = deadline
      scores[#scores + 1] = e[1]
      reclaimed[#reclaimed + 1] = {e[1], 1, e[2]}
    end
    if #scores > 0 then redis.call('ZADD', deadlines, unpack(scores)) end
  end
end
return reclaimed
";

/// Claims of at most this many messages run `CLAIM`; larger ones the transaction of
/// `CLAIM_BEGIN`, `XREADGROUP` and [`CLAIM_END`]. Measured with `stream-bench --backend
/// redis --only consume`: at concurrency 8 the script is ahead, at 64 the transaction.
pub(super) const SMALL_CLAIM: usize = 16;

/// The last step of a claim (see `CLAIM_BEGIN`), after the `XREADGROUP` of new messages.
///
/// The entries read are those between the cursor `CLAIM_BEGIN` saw and the cursor now
/// (nothing else ran in between, and all of them are now the consumer's). When nothing was
/// reclaimed, the claim keeps them all under one deadline: the member
/// `@<cursor before> <cursor after> <max> <consumer>` of the deadline set, which
/// `CLAIM_BEGIN` expands when it expires (one `ZADD` of one member per claim, and none of
/// the entries passes through Lua). Otherwise the first `max - reclaimed` get a deadline
/// each, and any beyond (the read took up to `max` while some were reclaimed) are given back
/// as never read: acked off the pending list and the group's cursor set back to the last
/// one kept, with its entries-read count, so the next read delivers them again as new.
///
/// KEYS: stream, the group's claim deadlines, the claim's scratch key. ARGV: group,
/// consumer, max. Returns how many of the read entries the claim keeps, -1 for all.
pub(super) const CLAIM_END: &str = r"
local stream, deadlines, scratch = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local saved = redis.call('GET', scratch)
if not saved then return 0 end
redis.call('DEL', scratch)
local cursor, entries_read, deadline, reclaimed =
  string.match(saved, '^(%S+) (%S+) (%S+) (%S+)$')
local info = group_info(stream, group)
local now = info and info['last-delivered-id']
if not now or now == cursor then return 0 end
if tonumber(reclaimed) == 0 then
  -- Nothing reclaimed: the claim keeps all it read, under one deadline.
  redis.call('ZADD', deadlines, deadline, '@' .. cursor .. ' ' .. now .. ' ' .. max .. ' ' ..
    consumer)
  return -1
end
local read = redis.call('XPENDING', stream, group, '(' .. cursor, now, max, consumer)
local keep = math.max(math.min(#read, max - tonumber(reclaimed)), 0)
local scores = {}
for i = 1, keep do
  scores[#scores + 1] = deadline
  scores[#scores + 1] = read[i][1]
end
if #scores > 0 then redis.call('ZADD', deadlines, unpack(scores)) end
if keep < #read then
  local back = {}
  for i = keep + 1, #read do back[#back + 1] = read[i][1] end
  redis.call('XACK', stream, group, unpack(back))
  local last = cursor
  if keep > 0 then last = read[keep][1] end
  if entries_read ~= '-' then
    redis.call('XGROUP', 'SETID', stream, group, last, 'ENTRIESREAD',
      tonumber(entries_read) + keep)
  else
    redis.call('XGROUP', 'SETID', stream, group, last)
  end
end
return keep
";

/// Acknowledges held claims.
///
/// KEYS: stream, the group's claim deadlines. ARGV: group, consumer, the lowest and the
/// highest id of the batch, then id/token pairs. Returns how many were acked.
///
/// Which claims are still held is read with one `XPENDING` of the consumer's entries over
/// the batch's id range (an entry is held if it is there with the claim's delivery count, as
/// [`HELD`] checks one by one); only when that reply was cut at its count (or the range was
/// refused) are the ids it did not show checked one by one. Then one `XACK` and one `ZREM`
/// per 1000 held ids.
const ACK: &str = r"
local stream, deadlines, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local n = (#ARGV - 4) / 2
local count = n + 64
local owned, cut = {}, true
local p = redis.pcall('XPENDING', stream, group, ARGV[3], ARGV[4], count, consumer)
if type(p) == 'table' and not p.err then
  for _, e in ipairs(p) do owned[e[1]] = tonumber(e[4]) end
  cut = #p >= count
end
local ids = {}
local acked = 0
local function flush()
  if #ids > 0 then
    acked = acked + redis.call('XACK', stream, group, unpack(ids))
    redis.call('ZREM', deadlines, unpack(ids))
    ids = {}
  end
end
for i = 5, #ARGV, 2 do
  local id, token = ARGV[i], tonumber(ARGV[i + 1])
  local deliveries = owned[id]
  if deliveries == nil and cut then
    local entry = held(stream, group, consumer, id, token)
    if entry then deliveries = tonumber(entry[4]) end
  end
  if deliveries ~= nil and deliveries == token then
    ids[#ids + 1] = id
    if #ids == 1000 then flush() end
  end
end
flush()
return acked
";

/// Parks held claims until a retry time: the retry and release of the contract.
///
/// The entry stays pending but moves to the parking consumer (`XCLAIM ... JUSTID`, which
/// keeps the delivery count, with `IDLE` keeping its time since the claim), so the old claim's token no longer holds, and its retry time
/// goes into the group's retry schedule, which `CLAIM` consults.
///
/// A release (`refund` = 1) also gives the delivery back (`RETRYCOUNT` one less than the
/// claim's), so the next claim has the released one's attempt. Its token cannot come back:
/// the released claim's consumer is closing and claims nothing more.
///
/// KEYS: stream, the group's retry schedule, the group's claim deadlines. ARGV: group,
/// consumer, parking consumer, delay in ms, refund (0 or 1), then id/token pairs. Returns
/// how many were parked.
const PARK: &str = r"
local stream, retries, deadlines = KEYS[1], KEYS[2], KEYS[3]
local group, consumer, parked, delay = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local refund = ARGV[5] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = 0
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  local entry = held(stream, group, consumer, id, ARGV[i + 1])
  if entry then
    -- `IDLE` keeps the entry's idle time: the admin API's claim age counts from the claim.
    local idle = entry[3]
    if refund then
      local count = math.max(tonumber(ARGV[i + 1]) - 1, 0)
      redis.call('XCLAIM', stream, group, parked, 0, id, 'IDLE', idle, 'RETRYCOUNT', count,
        'JUSTID')
    else
      redis.call('XCLAIM', stream, group, parked, 0, id, 'IDLE', idle, 'JUSTID')
    end
    redis.call('ZADD', retries, now + delay, id)
    redis.call('ZREM', deadlines, id)
    n = n + 1
  end
end
return n
";

/// Moves a held claim to the dead-letter stream: append there, ack here, in one step.
///
/// KEYS: stream, dead-letter stream, the group's retry schedule, the group's claim
/// deadlines. ARGV: group, consumer, id, token, then the dead letter's field/value strings.
/// Returns the dead letter's id, or false when the claim was no longer held.
const DEAD_LETTER: &str = r"
local stream, dead, retries, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not held(stream, group, consumer, id, token) then return false end
local args = {'XADD', dead, '*'}
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
local new_id = redis.call(unpack(args))
redis.call('XACK', stream, group, id)
redis.call('ZREM', retries, id)
redis.call('ZREM', deadlines, id)
return new_id
";

/// Extends held claims: their deadlines in the deadline set move to now + visibility. The
/// pending entry itself is not touched (its idle time stays the claim's age).
///
/// KEYS: stream, the group's claim deadlines. ARGV: group, consumer, visibility in ms, then
/// id/token pairs. Returns 1 or 0 per pair: whether that claim was held and extended.
const EXTEND: &str = r"
local stream, deadlines, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now + tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  if held(stream, group, consumer, ARGV[i], ARGV[i + 1]) then
    redis.call('ZADD', deadlines, deadline, ARGV[i])
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
";

/// Deletes a consumer of ours if it holds no pending entry (`XGROUP DELCONSUMER` would drop
/// them).
///
/// KEYS: stream. ARGV: group, consumer. Returns 1 if deleted.
const REMOVE_IDLE_CONSUMER: &str = r"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if type(p) ~= 'table' or p.err or p[1] then return 0 end
redis.pcall('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// The loaded scripts (each is sent by SHA, and loaded again after a server restart), and
/// the claim's two steps, which run inside its transaction and so are sent as text (`EVAL`:
/// an `EVALSHA` refused there for a script the server lost would still let the transaction's
/// read go ahead), without comments or indentation, so the server hashes less of them.
pub(super) struct Scripts {
    pub claim: redis::Script,
    pub claim_begin: String,
    pub claim_end: String,
    pub append: redis::Script,
    pub ack: redis::Script,
    pub park: redis::Script,
    pub dead_letter: redis::Script,
    pub remove_idle_consumer: redis::Script,
    pub extend: redis::Script,
}

impl Scripts {
    pub fn new() -> Self {
        let with_held = |body: &str| redis::Script::new(&format!("{HELD}{body}"));
        Scripts {
            claim: redis::Script::new(&format!("{CLAIM_START}{RECLAIM}{CLAIM_TAIL}")),
            claim_begin: compact(&claim_begin()),
            claim_end: compact(&format!("{GROUP_INFO}{CLAIM_END}")),
            append: redis::Script::new(APPEND),
            ack: with_held(ACK),
            park: with_held(PARK),
            dead_letter: with_held(DEAD_LETTER),
            remove_idle_consumer: redis::Script::new(REMOVE_IDLE_CONSUMER),
            extend: with_held(EXTEND),
        }
    }
}

/// `CLAIM_BEGIN`: the shared start, the group's cursor, the reclaims, the scratch key.
fn claim_begin() -> String {
    format!("{CLAIM_START}{GROUP_INFO}{CLAIM_BEGIN_HEAD}{RECLAIM}{CLAIM_BEGIN_TAIL}")
}

/// `script` without its comment lines, indentation and blank lines (none of the scripts has
/// a multi-line string).
fn compact(script: &str) -> String {
    script
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_scripts_keep_their_code() {
        assert_eq!(
            compact("\n-- a comment\nlocal a = 1 -- kept\n\n  if a then\n    return a\n  end\n"),
            "local a = 1 -- kept\nif a then\nreturn a\nend"
        );
        for script in [claim_begin(), CLAIM_END.to_owned()] {
            let short = compact(&script);
            assert!(short.len() < script.len());
            assert!(short.lines().all(|line| !line.starts_with("--")));
        }
    }
}
