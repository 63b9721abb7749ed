//! [`BackendAdmin`] for Redis: `SCAN` for the stream keys, and a Lua script for each view
//! and each change, so every figure is one consistent snapshot and every move one atomic
//! step, from any client while consumers run.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use super::ordered::LEAVE;
use ::redis::Value;

use super::{
    created_at, deadlines_key, escape, fields, parse_claimed, parse_start_id, retry_key,
    stream_key, unexpected, RedisBackend, PARKED,
};
use crate::admin::{GroupStats, PendingEntry, ReadFrom, StreamInfo};
use crate::backend::{BackendAdmin, BoxFuture};
use crate::error::Result;
use crate::message::{Message, MessageId, NewMessage};

/// `{length, first id or nil, last id or nil}` of a stream key; nil when it is not a stream.
static STREAM_INFO: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(
        r"
local key = KEYS[1]
if redis.call('TYPE', key).ok ~= 'stream' then return false end
local first = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
return {redis.call('XLEN', key), first[1] and first[1][1] or false, last[1] and last[1][1] or false}
",
    )
});

/// Per group: `{name, last-delivered-id, lag, pending, longest idle ms of the pending entries
/// or nil}`.
///
/// Redis's own lag counts entries trimmed before the group read them, and is nil after
/// some deletions: when the stream holds nothing up to the cursor, every entry is lag;
/// when Redis cannot tell, the entries after the cursor are counted.
static GROUPS: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(
        r"
local key = KEYS[1]
if redis.call('TYPE', key).ok ~= 'stream' then return {} end
local out = {}
for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local cursor = f['last-delivered-id']
  local lag = f['lag']
  if #redis.call('XRANGE', key, '-', cursor, 'COUNT', 1) == 0 then
    lag = redis.call('XLEN', key)
  elseif not lag then
    lag = 0
    local from = '(' .. cursor
    while true do
      local page = redis.call('XRANGE', key, from, '+', 'COUNT', 1000)
      lag = lag + #page
      if #page < 1000 then break end
      from = '(' .. page[#page][1]
    end
  end
  local summary = redis.call('XPENDING', key, f['name'])
  -- The longest idle time of the pending entries: since their last claim (XCLAIM and
  -- XREADGROUP reset it; parking keeps it).
  local idle = false
  if summary[1] > 0 then
    local from = '-'
    while true do
      local page = redis.call('XPENDING', key, f['name'], from, '+', 1000)
      for _, e in ipairs(page) do
        if not idle or e[3] > idle then idle = e[3] end
      end
      if #page < 1000 then break end
      from = '(' .. page[#page][1]
    end
  end
  out[#out + 1] = {f['name'], cursor, lag, summary[1], idle}
end
return out
",
    )
});

/// Up to ARGV[2] pending entries of group ARGV[1]:
/// `{id, consumer, deliveries, deadline ms or nil, retry ms or nil}`.
/// KEYS: stream, the group's retry schedule, the group's claim deadlines.
static PENDING: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(
        r"
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[2]))
if type(p) ~= 'table' or p.err then return {} end
local function parts(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms) or 0, tonumber(seq) or 0
end
local function after(a, b)
  local am, as = parts(a)
  local bm, bs = parts(b)
  return am > bm or (am == bm and as > bs)
end
-- A claim of new messages has one deadline for all of them: the deadline set's member
-- '@<cursor before> <cursor after> <count> <consumer>' (read once, when first needed).
local batches
local function batch_deadline(id, consumer)
  if not batches then
    batches = {}
    local all = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
    for i = 1, #all, 2 do
      local lo, hi, _, owner = string.match(all[i], '^@(%S+) (%S+) (%d+) (.*)$')
      if lo then batches[#batches + 1] = {lo, hi, owner, all[i + 1]} end
    end
  end
  for _, b in ipairs(batches) do
    if b[3] == consumer and after(id, b[1]) and not after(id, b[2]) then return b[4] end
  end
  return false
end
local out = {}
for i, e in ipairs(p) do
  local deadline = redis.call('ZSCORE', KEYS[3], e[1])
  if not deadline then deadline = batch_deadline(e[1], e[2]) end
  out[i] = {e[1], e[2], e[4], deadline, redis.call('ZSCORE', KEYS[2], e[1])}
end
return out
",
    )
});

/// `remove(stream, id)`: deletes an entry and drops it from every group's pending list and
/// schedules; whether it was there.
pub(super) const REMOVE: &str = r"
local function remove(stream, id)
  if redis.call('XDEL', stream, id) == 0 then return false end
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local name
    for i = 1, #g, 2 do if g[i] == 'name' then name = g[i + 1] end end
    redis.call('XACK', stream, name, id)
    redis.call('ZREM', stream .. ':retry:' .. name, id)
    redis.call('ZREM', stream .. ':deadlines:' .. name, id)
    -- A group ordered by key: the entry leaves its key's queue.
    leave(stream .. ':keys:' .. name, stream .. ':keyof:' .. name, stream .. ':retry:' .. name,
      id, now_ms())
  end
  return true
end
";

/// Moves entry ARGV[1] of KEYS[1] to KEYS[2] as a new entry with the field/value strings
/// that follow; returns the new id, or nil when KEYS[1] does not hold it.
static MOVE: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(&format!(
        "{LEAVE}{REMOVE}
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' or not remove(KEYS[1], ARGV[1]) then
  return false
end
local args = {{'XADD', KEYS[2], '*'}}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
return redis.call(unpack(args))
"
    ))
});

/// Deletes entries ARGV of KEYS[1]; returns the ids of those it held.
static DELETE: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(&format!(
        "{LEAVE}{REMOVE}
if redis.call('TYPE', KEYS[1]).ok ~= 'stream' then return {{}} end
local deleted = {{}}
for _, id in ipairs(ARGV) do
  if remove(KEYS[1], id) then deleted[#deleted + 1] = id end
end
return deleted
"
    ))
});

/// A stream name from its key, `streams:{N}` (percent-decoded), or `None` for side keys.
fn stream_of_key(key: &str) -> Option<String> {
    let escaped = key.strip_prefix("streams:{")?.strip_suffix('}')?;
    if escaped.contains(['{', '}']) {
        return None;
    }
    Some(
        escaped
            .replace("%7B", "{")
            .replace("%7D", "}")
            .replace("%25", "%"),
    )
}

/// `text` with glob metacharacters escaped, for `SCAN MATCH`.
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn string(value: Value) -> Option<String> {
    match value {
        Value::BulkString(b) => String::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

/// A score in milliseconds (as `ZSCORE` returns it) as a time.
fn time_of_score(value: &Value) -> Option<std::time::SystemTime> {
    let ms: f64 = match value {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok()?,
        Value::Int(n) => *n as f64,
        Value::Double(d) => *d,
        _ => return None,
    };
    let ms = if ms.is_finite() && ms > 0.0 {
        ms as u64
    } else {
        0
    };
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

fn rows(what: &str, reply: Value) -> Result<Vec<Vec<Value>>> {
    match reply {
        Value::Array(rows) => rows
            .into_iter()
            .map(|row| match row {
                Value::Array(cells) => Ok(cells),
                other => Err(unexpected(what, &other)),
            })
            .collect(),
        Value::Nil => Ok(Vec::new()),
        other => Err(unexpected(what, &other)),
    }
}

impl BackendAdmin for RedisBackend {
    fn list_streams<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<StreamInfo>>> {
        Box::pin(async move {
            self.closed.check()?;
            let mut conn = self.conn.clone();
            let pattern = format!("streams:{{{}*", glob_literal(&escape(prefix)));
            let mut cursor = 0u64;
            let mut names = Vec::new();
            if self.is_cluster() {
                names.extend(
                    self.scan_cluster(&pattern)
                        .await?
                        .iter()
                        .filter_map(|k| stream_of_key(k)),
                );
            } else {
                loop {
                    let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                        .map_err(|e| self.error("listing streams".to_owned(), e))?;
                    names.extend(keys.iter().filter_map(|k| stream_of_key(k)));
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            names.sort();
            names.dedup();
            let mut streams = Vec::with_capacity(names.len());
            for name in names {
                let reply: Value = STREAM_INFO
                    .key(stream_key(&name))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.error(format!("reading stream {name}"), e))?;
                let Value::Array(cells) = reply else {
                    continue; // not a stream (any more)
                };
                let [length, first, last]: [Value; 3] = cells
                    .try_into()
                    .map_err(|cells| unexpected("the stream info script", &Value::Array(cells)))?;
                let last = string(last);
                streams.push(StreamInfo {
                    stream: name,
                    length: int(&length).unwrap_or(0),
                    first_id: string(first).map(MessageId::new),
                    last_append: last.as_deref().map(created_at),
                    last_id: last.map(MessageId::new),
                });
            }
            Ok(streams)
        })
    }

    fn list_groups<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<Vec<GroupStats>>> {
        Box::pin(async move {
            self.closed.check()?;
            let what = "the groups script";
            let reply: Value = GROUPS
                .key(stream_key(stream))
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.error(format!("listing the groups of {stream}"), e))?;
            let now = SystemTime::now();
            let mut groups = rows(what, reply)?
                .into_iter()
                .map(|cells| {
                    let bad = || unexpected(what, &Value::Array(cells.clone()));
                    let [name, cursor, lag, pending, oldest]: [Value; 5] =
                        cells.clone().try_into().map_err(|_| bad())?;
                    Ok(GroupStats {
                        group: string(name).ok_or_else(bad)?,
                        cursor: MessageId::new(string(cursor).ok_or_else(bad)?),
                        lag: int(&lag).ok_or_else(bad)?,
                        pending: int(&pending).ok_or_else(bad)?,
                        oldest_claimed_at: int(&oldest).map(|idle_ms| {
                            now.checked_sub(Duration::from_millis(idle_ms))
                                .unwrap_or(SystemTime::UNIX_EPOCH)
                        }),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            groups.sort_by(|a, b| a.group.cmp(&b.group));
            Ok(groups)
        })
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        from: &'a ReadFrom,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Message>>> {
        Box::pin(async move {
            self.closed.check()?;
            if max == 0 {
                return Ok(Vec::new());
            }
            let key = stream_key(stream);
            let mut command = match from {
                ReadFrom::Start => ::redis::cmd("XRANGE").arg(&key).arg("-").arg("+").clone(),
                ReadFrom::After(id) => ::redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(format!("({}", parse_start_id(id.as_str())?))
                    .arg("+")
                    .clone(),
                ReadFrom::Last => ::redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .clone(),
            };
            let reply: Value = command
                .arg("COUNT")
                .arg(max)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.error(format!("reading {stream}"), e))?;
            let shared: Arc<str> = Arc::from(stream);
            let mut messages = rows("XRANGE", reply)?
                .into_iter()
                .map(|cells| {
                    let [id, entry]: [Value; 2] = cells
                        .try_into()
                        .map_err(|cells| unexpected("XRANGE", &Value::Array(cells)))?;
                    // The claim script's entry shape, with no delivery.
                    parse_claimed(&shared, Value::Array(vec![id, Value::Int(0), entry]))
                        .map(|c| c.message)
                })
                .collect::<Result<Vec<_>>>()?;
            if matches!(from, ReadFrom::Last) {
                messages.reverse();
            }
            Ok(messages)
        })
    }

    fn list_pending<'a>(
        &'a self,
        stream: &'a str,
        group: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<PendingEntry>>> {
        Box::pin(async move {
            self.closed.check()?;
            if max == 0 {
                return Ok(Vec::new());
            }
            let what = "the pending script";
            let reply: Value = PENDING
                .key(stream_key(stream))
                .key(retry_key(stream, group))
                .key(deadlines_key(stream, group))
                .arg(group)
                .arg(i64::try_from(max).unwrap_or(i64::MAX))
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| {
                    self.error(
                        format!("listing the pending messages of {stream} for group {group}"),
                        e,
                    )
                })?;
            rows(what, reply)?
                .into_iter()
                .map(|cells| {
                    let bad = || unexpected(what, &Value::Array(cells.clone()));
                    let [id, consumer, deliveries, deadline, retry]: [Value; 5] =
                        cells.clone().try_into().map_err(|_| bad())?;
                    let consumer = string(consumer).ok_or_else(bad)?;
                    let parked = consumer == PARKED;
                    Ok(PendingEntry {
                        id: MessageId::new(string(id).ok_or_else(bad)?),
                        attempt: int(&deliveries)
                            .and_then(|n| u32::try_from(n).ok())
                            .ok_or_else(bad)?,
                        deadline: if parked {
                            None
                        } else {
                            time_of_score(&deadline)
                        },
                        retry_at: if parked { time_of_score(&retry) } else { None },
                        consumer: (!parked).then_some(consumer),
                    })
                })
                .collect()
        })
    }

    fn move_message<'a>(
        &'a self,
        from: &'a str,
        id: &'a MessageId,
        to: &'a str,
        message: NewMessage,
    ) -> BoxFuture<'a, Result<Option<MessageId>>> {
        Box::pin(async move {
            self.closed.check()?;
            let Ok(id) = parse_start_id(id.as_str()) else {
                return Ok(None);
            };
            if self.is_cluster() {
                let moved = self.move_across_slots(from, &id, to, message).await?;
                if moved.is_some() {
                    self.wakeups.notify(to);
                }
                return Ok(moved.map(MessageId::new));
            }
            let mut invocation = MOVE.prepare_invoke();
            invocation
                .key(stream_key(from))
                .key(stream_key(to))
                .arg(&id)
                .arg(fields(message));
            let moved: Option<String> = invocation
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.error(format!("moving {id} of {from} to {to}"), e))?;
            if moved.is_some() {
                self.wakeups.notify(to);
            }
            Ok(moved.map(MessageId::new))
        })
    }

    fn delete_messages<'a>(
        &'a self,
        stream: &'a str,
        ids: &'a [MessageId],
    ) -> BoxFuture<'a, Result<Vec<MessageId>>> {
        Box::pin(async move {
            self.closed.check()?;
            let ids: Vec<String> = ids
                .iter()
                .filter_map(|id| parse_start_id(id.as_str()).ok())
                .collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = DELETE.prepare_invoke();
            invocation.key(stream_key(stream)).arg(ids);
            let deleted: Vec<String> = invocation
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| self.error(format!("deleting messages of {stream}"), e))?;
            Ok(deleted.into_iter().map(MessageId::new).collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_keys_decode_and_side_keys_do_not() {
        assert_eq!(stream_of_key("streams:{a.b.c}").as_deref(), Some("a.b.c"));
        assert_eq!(
            stream_of_key(&stream_key("a}b{c%")).as_deref(),
            Some("a}b{c%")
        );
        assert_eq!(stream_of_key("streams:{a.b.c}:retry:g"), None);
        assert_eq!(glob_literal("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
