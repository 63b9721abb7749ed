//! Ordering by key on Redis ([`crate::key_order`]): one Lua script per call, on the
//! stream's slot, over two more keys of the group (same hash tag):
//!
//! - `streams:{N}:keys:<group>`, a hash: key -> the ids of its pending entries, in id order,
//!   separated by spaces. The first is the key's head: the only one ever claimed.
//! - `streams:{N}:keyof:<group>`, a hash: id -> key, for every id in those queues.
//!
//! A claim takes due retries and expired claims as the plain claim does (they are heads:
//! nothing else of an ordered group is ever claimed, retried or scheduled), then reads new
//! entries: one whose key has no queue starts it and is claimed; one whose key has a queue
//! joins it and waits, pending under the parking consumer with a delivery count of 0 and in
//! no schedule. An ack or dead-letter move of a head drops it from its queue and schedules
//! the next one as a retry due now, so the next claim takes it. An entry found gone (trimmed,
//! deleted) is dropped from its queue the same way, so a key never stays stuck behind it.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Value;

use super::entries::claimed_entries;
use super::keys::{deadlines_key, escape, retry_key, stream_key};
use super::scripts::HELD;
use super::{millis, RedisBackend, PARKED};
use crate::backend::{Claim, Claimed, GroupRef};
use crate::error::Result;
use crate::key_order::KEY_HEADER;
use crate::message::NewMessage;

/// The key queues of a group.
pub(super) fn queues_key(stream: &str, group: &str) -> String {
    format!("streams:{{{}}}:keys:{group}", escape(stream))
}

/// The key of each queued id of a group.
pub(super) fn key_of_key(stream: &str, group: &str) -> String {
    format!("streams:{{{}}}:keyof:{group}", escape(stream))
}

/// `leave(queues, keyof, retries, id, now)`: drops `id` from its key's queue; when it was
/// the head, the next one is scheduled as a retry due `now`.
pub(super) const LEAVE: &str = r"
local function leave(queues, keyof, retries, id, now)
  local key = redis.call('HGET', keyof, id)
  if not key then return end
  redis.call('HDEL', keyof, id)
  local queue = redis.call('HGET', queues, key)
  if not queue then return end
  local rest, head = {}, nil
  for qid in string.gmatch(queue, '%S+') do
    if head == nil then head = qid end
    if qid ~= id then rest[#rest + 1] = qid end
  end
  if #rest == 0 then
    redis.call('HDEL', queues, key)
    return
  end
  redis.call('HSET', queues, key, table.concat(rest, ' '))
  if head == id then redis.call('ZADD', retries, now, rest[1]) end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Claims up to `max` entries of an ordered group.
///
/// KEYS: stream, retry schedule, claim deadlines, key queues, key of each id. ARGV: group,
/// consumer, max, visibility in ms, the parking consumer, the key's field name.
/// Returns `{id, delivery count, {field, value, ...}}` per claimed entry, in id order.
const CLAIM_ORDERED: &str = r"
local stream, retries, deadlines, queues, keyof = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local visibility, parked, key_field = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local now = now_ms()
local deadline = now + visibility

local function failed(r)
  return type(r) == 'table' and r.err ~= nil
end
local function deliveries(id)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if p[1] then return tonumber(p[1][4]) end
  return 1
end

local claimed = {}

-- Takes a head over; one found gone leaves its queue.
local function take(id)
  local got = redis.pcall('XCLAIM', stream, group, consumer, 0, id)
  if failed(got) then return got end
  if got[1] then
    redis.call('ZADD', deadlines, deadline, id)
    claimed[#claimed + 1] = {got[1][1], deliveries(id), got[1][2]}
  else
    redis.call('ZREM', deadlines, id)
    leave(queues, keyof, retries, id, now)
  end
  return nil
end

-- 1. Due retries (and heads whose turn came), then expired claims: all heads.
for _, set in ipairs({retries, deadlines}) do
  local rounds = 0
  while #claimed < max and rounds < 8 do
    rounds = rounds + 1
    local due = redis.call('ZRANGEBYSCORE', set, '-inf', now, 'LIMIT', 0, max - #claimed)
    if #due == 0 then break end
    local before = #claimed
    for _, id in ipairs(due) do
      if set == retries then redis.call('ZREM', retries, id) end
      local err = take(id)
      if err then return err end
    end
    -- Taken expired claims move out of range (unless the visibility is zero).
    if set == deadlines and #claimed == before then break end
    if set == deadlines and visibility == 0 then break end
  end
end

-- 2. New entries: the first of its key is claimed, the others wait in its queue.
local pages = 0
while #claimed < max and pages < 16 do
  pages = pages + 1
  local page = math.max(max - #claimed, 32)
  local r = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', page,
    'STREAMS', stream, '>')
  if failed(r) then return r end
  local entries = {}
  if r and r[1] then entries = r[1][2] end
  for _, e in ipairs(entries) do
    local id, fields = e[1], e[2]
    local key = nil
    for i = 1, #fields, 2 do
      if fields[i] == key_field then key = fields[i + 1] break end
    end
    local head = true
    if key then
      local queue = redis.call('HGET', queues, key)
      if queue then
        redis.call('HSET', queues, key, queue .. ' ' .. id)
        head = false
      else
        redis.call('HSET', queues, key, id)
      end
      redis.call('HSET', keyof, id, key)
    end
    if head and #claimed < max then
      redis.call('ZADD', deadlines, deadline, id)
      claimed[#claimed + 1] = {id, 1, fields}
    else
      -- Waits (or, a head past this claim's size, is due now), with no delivery counted.
      redis.call('XCLAIM', stream, group, parked, 0, id, 'RETRYCOUNT', 0, 'JUSTID')
      if head then redis.call('ZADD', retries, now, id) end
    end
  end
  if #entries < page then break end
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
table.sort(claimed, function(a, b)
  local am, as = parse(a[1])
  local bm, bs = parse(b[1])
  if am ~= bm then return am < bm end
  return as < bs
end)
return claimed
";

/// Acknowledges held claims of an ordered group, releasing their keys.
///
/// KEYS: stream, claim deadlines, retry schedule, key queues, key of each id. ARGV: group,
/// consumer, then id/token pairs. Returns how many were acked.
const ACK_ORDERED: &str = r"
local stream, deadlines, retries, queues, keyof = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local group, consumer = ARGV[1], ARGV[2]
local now = now_ms()
local acked = 0
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  if held(stream, group, consumer, id, ARGV[i + 1]) then
    acked = acked + redis.call('XACK', stream, group, id)
    redis.call('ZREM', deadlines, id)
    leave(queues, keyof, retries, id, now)
  end
end
return acked
";

/// Moves a held claim of an ordered group to the dead-letter stream (in the same slot),
/// releasing its key.
///
/// KEYS: stream, dead-letter stream, retry schedule, claim deadlines, key queues, key of
/// each id. ARGV: group, consumer, id, token, then the dead letter's field/value strings.
/// Returns the dead letter's id, or false when the claim was no longer held.
const DEAD_LETTER_ORDERED: &str = r"
local stream, dead, retries, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local queues, keyof = KEYS[5], KEYS[6]
local group, consumer, id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not held(stream, group, consumer, id, token) then return false end
local args = {'XADD', dead, '*'}
for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
local new_id = redis.call(unpack(args))
redis.call('XACK', stream, group, id)
redis.call('ZREM', retries, id)
redis.call('ZREM', deadlines, id)
leave(queues, keyof, retries, id, now_ms())
return new_id
";

static SCRIPTS: LazyLock<OrderedScripts> = LazyLock::new(|| OrderedScripts {
    claim: ::redis::Script::new(&format!("{LEAVE}{CLAIM_ORDERED}")),
    ack: ::redis::Script::new(&format!("{HELD}{LEAVE}{ACK_ORDERED}")),
    dead_letter: ::redis::Script::new(&format!("{HELD}{LEAVE}{DEAD_LETTER_ORDERED}")),
});

struct OrderedScripts {
    claim: ::redis::Script,
    ack: ::redis::Script,
    dead_letter: ::redis::Script,
}

/// The ordered ack of `claims` (see [`ACK_ORDERED`]).
pub(super) fn ack_invocation(
    group: GroupRef<'_>,
    claims: &[Claim],
) -> ::redis::ScriptInvocation<'static> {
    let mut invocation = SCRIPTS.ack.prepare_invoke();
    invocation
        .key(stream_key(group.stream))
        .key(deadlines_key(group.stream, group.group))
        .key(retry_key(group.stream, group.group))
        .key(queues_key(group.stream, group.group))
        .key(key_of_key(group.stream, group.group))
        .arg(group.group)
        .arg(group.consumer);
    for claim in claims {
        invocation.arg(claim.id.as_str()).arg(claim.token.0);
    }
    invocation
}

/// The key's field name in a stream entry.
fn key_field() -> String {
    format!("{}{KEY_HEADER}", super::HEADER_PREFIX)
}

impl RedisBackend {
    pub(super) async fn claim_by_key(
        &self,
        group: GroupRef<'_>,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<Claimed>> {
        if max == 0 {
            self.closed.check()?;
            return Ok(Vec::new());
        }
        self.claiming(group, || async move {
            let result: ::redis::RedisResult<Value> = SCRIPTS
                .claim
                .key(stream_key(group.stream))
                .key(retry_key(group.stream, group.group))
                .key(deadlines_key(group.stream, group.group))
                .key(queues_key(group.stream, group.group))
                .key(key_of_key(group.stream, group.group))
                .arg(group.group)
                .arg(group.consumer)
                .arg(max)
                .arg(millis(visibility))
                .arg(PARKED)
                .arg(key_field())
                .invoke_async(&mut self.conn.clone())
                .await;
            match result {
                Ok(reply) => {
                    claimed_entries(group.stream, reply, "the ordered claim script").map(Some)
                }
                Err(e) if e.code() == Some("NOGROUP") => Ok(None),
                Err(e) => Err(self.error(
                    format!(
                        "claiming messages of {}/{} (ordered by key)",
                        group.stream, group.group
                    ),
                    e,
                )),
            }
        })
        .await
    }

    pub(super) async fn ack_by_key(&self, group: GroupRef<'_>, claims: &[Claim]) -> Result<()> {
        self.closed.check()?;
        if claims.is_empty() {
            return Ok(());
        }
        let invocation = ack_invocation(group, claims);
        let _acked: u64 = self
            .run_settling(&invocation, || {
                format!("acknowledging messages of {}/{}", group.stream, group.group)
            })
            .await?;
        Ok(())
    }

    pub(super) async fn dead_letter_by_key(
        &self,
        group: GroupRef<'_>,
        claim: &Claim,
        to: &str,
        message: NewMessage,
    ) -> Result<bool> {
        self.closed.check()?;
        if self.is_cluster() {
            // The dead-letter stream may be in another slot: the plain two-step move, whose
            // ack is this group's ordered one.
            return self
                .dead_letter_across_slots(group, claim, to, message, true)
                .await;
        }
        let mut invocation = SCRIPTS.dead_letter.prepare_invoke();
        invocation
            .key(stream_key(group.stream))
            .key(stream_key(to))
            .key(retry_key(group.stream, group.group))
            .key(deadlines_key(group.stream, group.group))
            .key(queues_key(group.stream, group.group))
            .key(key_of_key(group.stream, group.group))
            .arg(group.group)
            .arg(group.consumer)
            .arg(claim.id.as_str())
            .arg(claim.token.0)
            .arg(super::fields(message));
        let moved: Option<String> = self
            .run_settling(&invocation, || {
                format!("moving {} of {} to {to}", claim.id, group.stream)
            })
            .await?;
        if moved.is_some() {
            self.wakeups.notify(to);
        }
        Ok(moved.is_some())
    }
}
